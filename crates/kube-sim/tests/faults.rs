//! Faults the simulator injects per cluster (`tests/data/faults.yaml`): error rates, latency,
//! cut watches, a dead cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube_sim::{FaultSpec, Simulator};

async fn simulator() -> Simulator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/faults.yaml");
    let faults: BTreeMap<String, FaultSpec> = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let names: Vec<String> = faults.keys().cloned().collect();
    Simulator::start(&names, None, &faults).await.unwrap()
}

#[tokio::test]
async fn half_the_requests_to_a_flaky_cluster_fail_with_503_and_a_status() {
    let sim = simulator().await;
    let base = sim.server("flaky").unwrap();
    let client = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = client
            .get(format!("{base}/api/v1/namespaces/default/configmaps"))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
        if r.status().as_u16() == 503 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["reason"], "ServiceUnavailable");
        }
    }
    assert_eq!(codes, [200, 503, 200, 503]);
    // Other paths are left alone.
    let ns = client.get(format!("{base}/api/v1/namespaces")).send().await.unwrap();
    assert_eq!(ns.status().as_u16(), 200);
}

#[tokio::test]
async fn a_slow_cluster_answers_late_and_throttles_with_retry_after() {
    let sim = simulator().await;
    let base = sim.server("slow").unwrap();
    let started = Instant::now();
    let r = reqwest::get(format!("{base}/api/v1/namespaces/default/secrets"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
}

#[tokio::test]
async fn watches_on_a_cutting_cluster_end_after_the_event_limit() {
    let sim = simulator().await;
    let base = sim.server("cut").unwrap();
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::get(format!("{base}/api/v1/namespaces?watch=1")),
    )
    .await
    .unwrap()
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(body.lines().count(), 2, "{body}");
}

#[tokio::test]
async fn nothing_answers_on_a_dead_cluster() {
    let sim = simulator().await;
    let base = sim.server("dead").unwrap();
    let err = reqwest::get(format!("{base}/api")).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
    assert!(sim.kubeconfig().contains("name: dead"));
}

#[tokio::test]
async fn the_first_requests_fail_then_the_cluster_answers() {
    let sim = simulator().await;
    let base = sim.server("first").unwrap();
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(
            reqwest::get(format!("{base}/api/v1/namespaces"))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, [500, 500, 200]);
}

#[tokio::test]
async fn a_hanging_cluster_never_answers_until_the_client_gives_up() {
    let sim = simulator().await;
    let base = sim.server("hanging").unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = client
        .get(format!("{base}/api/v1/namespaces/default/configmaps"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let ok = client.get(format!("{base}/api/v1/namespaces")).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}
