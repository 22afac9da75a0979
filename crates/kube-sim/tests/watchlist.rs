//! Streaming lists against kube-rs's watcher (`InitialListStrategy::StreamingList`: a watch
//! with `sendInitialEvents=true`, whose initial objects end with a bookmark annotated
//! `k8s.io/initial-events-end`), and the raw events behind them. The differential suite's test
//! servers cannot answer these (their etcd lacks progress notifications), so they are held to
//! the protocol as the Kubernetes documentation and kube-rs define it. Every wait is bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::Api;
use kube_sim::Simulator;
use serde_json::{json, Value};

async fn start() -> (Simulator, tempfile::TempDir) {
    let sim = Simulator::start(&["north".to_string()], None, &BTreeMap::new())
        .await
        .unwrap();
    let objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "db"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "db"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "db"}}),
    ];
    sim.seed("north", &objects).unwrap();
    let dir = tempfile::tempdir().unwrap();
    sim.write_kubeconfig(&dir.path().join("kubeconfig")).unwrap();
    (sim, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_streaming_lists_get_the_objects_then_the_changes() {
    let (_sim, dir) = start().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(dir.path().join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "db");
    let mut events = watcher::watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let run = async {
        let mut initial = Vec::new();
        loop {
            match events.try_next().await.unwrap().unwrap() {
                Event::Init => {}
                Event::InitApply(cm) => initial.push(cm.metadata.name.unwrap()),
                Event::InitDone => break,
                other => panic!("before the end of the initial events: {other:?}"),
            }
        }
        initial.sort();
        assert_eq!(initial, ["a", "b"]);
        cms.create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap(),
        )
        .await
        .unwrap();
        match events.try_next().await.unwrap().unwrap() {
            Event::Apply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("c")),
            other => panic!("expected c: {other:?}"),
        }
    };
    // Not a timing assertion: a server that never ends the initial events never answers.
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the streaming list ends its initial events");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_initial_events_end_with_an_annotated_bookmark_at_the_list_resource_version() {
    let (sim, _dir) = start().await;
    let base = sim.server("north").unwrap();
    let list: Value = reqwest::get(format!("{base}/api/v1/namespaces/db/configmaps"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let url = format!(
        "{base}/api/v1/namespaces/db/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"
    );
    let body = reqwest::get(url).await.unwrap().text().await.unwrap();
    let events: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ADDED", "ADDED", "BOOKMARK"], "{body}");
    assert_eq!(
        events[2]["object"],
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": rv,
            "creationTimestamp": null,
            "annotations": {"k8s.io/initial-events-end": "true"}}})
    );
}
