//! The plan language beyond patch/read/wait: `delete` (by name with preconditions, by selector
//! with a bound, waiting until gone), `assert`, templated clusters, `now()`, and wait conditions
//! on numbers, other fields, several fields and absence — each on the real test clusters,
//! with its failure modes.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use recoverd::cluster::WriteMode;
use recoverd::plan::Plan;
use recoverd::run::record::{Phase, StepStatus};
use serde_json::json;
use support::run::{plan_in, registry, run};

fn language(file: &str) -> Plan {
    plan_in("language", file)
}

/// A namespace in every test cluster, and the ConfigMaps API of one of them.
async fn setup(test: &str, cluster: &str) -> (String, Api<ConfigMap>) {
    let clusters = support::shared();
    let ns = clusters.namespace(test).await;
    for c in ["south", "edge"] {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(clusters.client(c).await)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await;
    }
    let api = Api::namespaced(clusters.client(cluster).await, &ns);
    (ns, api)
}

async fn create(api: &Api<ConfigMap>, name: &str, labels: serde_json::Value, data: serde_json::Value) -> ConfigMap {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap()
}

#[tokio::test]
async fn delete_removes_exactly_the_object_read_and_waits_until_it_is_gone() {
    let (ns, cms) = setup("delete-one", "north").await;
    create(&cms, "instance", json!({}), json!({"v": "1"})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg.clone(), &language("delete-instance.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert!(cms.get_opt("instance").await.unwrap().is_none());
    let objects = &record.steps[1].inputs.as_ref().unwrap()["objects"];
    assert_eq!(objects, &json!([{"name": "instance", "result": "gone"}]));

    // Resumed or repeated: an object already gone counts as deleted.
    create(&cms, "instance", json!({}), json!({"v": "2"})).await;
    let record = run(
        reg.clone(),
        &language("delete-instance.yaml"),
        &ns,
        &[("uid", json!("0000-stale-uid"))],
    )
    .await;
    // A re-created object (another uid than the precondition's) is not deleted.
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[1];
    assert_eq!(step.reason.as_deref(), Some("delete-refused"), "{step:#?}");
    assert!(step.error.as_deref().unwrap().contains("preconditions"), "{step:#?}");
    assert!(cms.get_opt("instance").await.unwrap().is_some());
}

#[tokio::test]
async fn deleting_an_object_held_by_a_finalizer_times_out_waiting_for_it_to_be_gone() {
    let (ns, cms) = setup("delete-finalizer", "north").await;
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "instance", "finalizers": ["recoverd.io/test-hold"]}}))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("delete-instance.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[1];
    assert_eq!(step.reason.as_deref(), Some("wait-timeout"), "{step:#?}");
    assert!(
        step.error.as_deref().unwrap().contains("to be gone") && step.error.as_deref().unwrap().contains("terminating"),
        "{step:#?}"
    );
    // Let it go.
    cms.patch(
        "instance",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_selector_matching_more_than_max_objects_deletes_nothing() {
    let (ns, cms) = setup("delete-selected", "north").await;
    for n in ["stale-0", "stale-1", "stale-2"] {
        create(&cms, n, json!({"app": "stale"}), json!({})).await;
    }
    create(&cms, "keep", json!({"app": "live"}), json!({})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg.clone(), &language("delete-selected.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let error = record.steps[0].error.as_deref().unwrap();
    assert!(
        error.contains("3 objects match, more than maxObjects 2; nothing was deleted"),
        "{error}"
    );
    assert_eq!(cms.list(&Default::default()).await.unwrap().items.len(), 4);

    cms.delete("stale-2", &DeleteParams::default()).await.unwrap();
    let record = run(reg, &language("delete-selected.yaml"), &ns, &[]).await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let left: Vec<_> = cms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(left, ["keep"]);
}

#[tokio::test]
async fn a_delete_in_a_dry_run_deletes_nothing() {
    let (ns, cms) = setup("delete-dry", "north").await;
    create(&cms, "instance", json!({}), json!({})).await;
    let dry = registry(support::shared(), WriteMode::DryRun).await;

    let record = run(dry, &language("delete-instance.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert!(cms.get_opt("instance").await.unwrap().is_some());
    let objects = &record.steps[1].inputs.as_ref().unwrap()["objects"];
    assert_eq!(objects[0]["result"], json!("would be deleted (dry run)"));
}

#[tokio::test]
async fn an_assert_stops_the_run_with_the_authors_message() {
    let (ns, cms) = setup("assert", "south").await;
    create(
        &cms,
        "replica",
        json!({}),
        json!({"lagBytes": "50000000", "role": "replica"}),
    )
    .await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg.clone(), &language("assert-lag.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[1];
    assert_eq!(step.reason.as_deref(), Some("assertion"));
    assert!(
        step.error
            .as_deref()
            .unwrap()
            .contains("replica is 50000000 bytes behind; refusing to promote"),
        "{step:#?}"
    );
    assert_eq!(record.steps[2].status, StepStatus::Pending, "promote must not run");
    assert_eq!(cms.get("replica").await.unwrap().data.unwrap()["role"], "replica");

    cms.patch(
        "replica",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"lagBytes": "1024"}})),
    )
    .await
    .unwrap();
    let record = run(reg, &language("assert-lag.yaml"), &ns, &[]).await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(cms.get("replica").await.unwrap().data.unwrap()["role"], "primary");
}

#[tokio::test]
async fn a_templated_cluster_acts_where_the_param_says_and_an_unknown_one_fails() {
    let (ns, south) = setup("templated-cluster", "south").await;
    let clusters = support::shared();
    let edge: Api<ConfigMap> = Api::namespaced(clusters.client("edge").await, &ns);
    for api in [&south, &edge] {
        create(api, "role", json!({}), json!({"role": "replica"})).await;
    }
    let reg = registry(clusters, WriteMode::Live).await;

    let record = run(
        reg.clone(),
        &language("templated-cluster.yaml"),
        &ns,
        &[("to", json!("edge"))],
    )
    .await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(record.steps[0].cluster.as_deref(), Some("edge"));
    let role = edge.get("role").await.unwrap().data.unwrap()["role"].clone();
    assert!(role.starts_with("primary since 20"), "{role}");
    assert_eq!(south.get("role").await.unwrap().data.unwrap()["role"], "replica");

    let record = run(reg, &language("templated-cluster.yaml"), &ns, &[("to", json!("moon"))]).await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let error = record.steps[0].error.as_deref().unwrap();
    assert!(error.contains("\"moon\" is not in the cluster registry"), "{error}");
}

#[tokio::test]
async fn waits_compare_numbers_and_fields_and_see_an_object_go() {
    let (ns, cms) = setup("wait-conditions", "north").await;
    create(&cms, "instances", json!({}), json!({"ready": "1", "wanted": "3"})).await;
    create(&cms, "old", json!({}), json!({})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;
    let plan = language("wait-conditions.yaml");
    let ns2 = ns.clone();
    let running = tokio::spawn(async move { run(reg, &plan, &ns2, &[]).await });

    let set = |ready: &str| {
        let mut data = BTreeMap::new();
        data.insert("ready".to_string(), ready.to_string());
        Patch::Merge(json!({"data": data}))
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    cms.patch("instances", &PatchParams::default(), &set("2"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!running.is_finished(), "2 of 3 ready satisfied the wait");
    cms.patch("instances", &PatchParams::default(), &set("3"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!running.is_finished(), "the old object still exists");
    cms.delete("old", &DeleteParams::default()).await.unwrap();
    let record = running.await.unwrap();

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let ready = record.steps[0].inputs.as_ref().unwrap();
    assert_eq!(ready["observed"], json!(["3", ["3", "3"]]), "{ready}");
    assert_eq!(record.steps[1].inputs.as_ref().unwrap()["observed"], json!("gone"));
}

#[test]
fn the_plan_reference_quotes_the_tested_plans_unchanged() {
    let root = support::clusters::repo_dir();
    let doc = std::fs::read_to_string(root.join("docs/plans.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 9, "{} examples", blocks.len());
    let mut files = Vec::new();
    for dir in ["truth", "language", "run"] {
        for entry in std::fs::read_dir(root.join("tests/data/plans").join(dir)).unwrap() {
            files.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
    }
    for block in blocks {
        assert!(
            files.iter().any(|f| f.trim_end() == block.trim_end()),
            "docs/plans.md quotes a plan that is not a tested file:\n{block}"
        );
    }
}

/// A pod that exists but never runs: the test apiservers have no kubelet.
async fn pending_pod(ns: &str) -> Api<k8s_openapi::api::core::v1::Pod> {
    let pods = Api::namespaced(support::shared().client("south").await, ns);
    let pod = serde_json::from_value(json!({
        "metadata": {"name": "pg-south-1"},
        "spec": {"containers": [{"name": "postgres", "image": "postgres:17"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods
}

#[tokio::test]
async fn an_exec_in_a_dry_run_runs_nothing_and_says_what_it_would_run() {
    let (ns, _) = setup("exec-dry", "south").await;
    pending_pod(&ns).await;
    let dry = registry(support::shared(), WriteMode::DryRun).await;

    let record = run(dry, &language("exec-is-primary.yaml"), &ns, &[]).await;

    // The assert on the stand-in output is not decided, and says so.
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert!(
        record.steps[1].inputs.as_ref().unwrap()["dryRun"]
            .as_str()
            .unwrap()
            .contains("Values.InRecovery"),
        "{record:#?}"
    );
    let exec = &record.steps[0];
    assert_eq!(exec.status, StepStatus::Succeeded, "{record:#?}");
    assert_eq!(
        exec.inputs.as_ref().unwrap()["dryRun"],
        json!("would exec psql -tAc 'select pg_is_in_recovery()'")
    );
    assert_eq!(record.outputs["InRecovery"], json!("dry-run-inrecovery"));
}

#[tokio::test]
async fn an_exec_in_a_pod_that_is_not_running_fails_naming_the_pod() {
    let (ns, _) = setup("exec-pending", "south").await;
    pending_pod(&ns).await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("exec-is-primary.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let exec = &record.steps[0];
    assert_eq!(exec.status, StepStatus::Failed);
    let error = exec.error.as_deref().unwrap();
    assert!(error.contains("pg-south-1") && error.contains("south"), "{error}");
    assert_eq!(record.steps[1].status, StepStatus::Pending, "the assert must not run");
}
