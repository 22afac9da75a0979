//! Grafana alerting's webhook (`"version": "1"`) through the receiver's HTTP API: the same
//! matching and exactly-once rules as Alertmanager's, keyed on Grafana's alert identity.

mod support;

use axum::http::StatusCode;
use serde_json::Value;
use support::server::app;

fn fixture(name: &str) -> Value {
    let path = support::clusters::repo_dir()
        .join("tests/data/alerts/grafana")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn plan() -> (&'static str, String) {
    let path = support::clusters::repo_dir().join("tests/data/deploy/grafana-approval-plan.yaml");
    ("grafana-cnpg.yaml", std::fs::read_to_string(path).unwrap())
}

#[tokio::test]
async fn a_grafana_alert_starts_one_run_its_resends_are_deduplicated_and_its_resolution_withdraws_it() {
    let app = app(&[plan()]).await;
    let (status, first) = app.post("/api/v1/alerts", &fixture("firing.json")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["alerts"][0]["action"], "awaitingApproval", "{first}");
    let id = first["alerts"][0]["runId"].as_str().unwrap().to_string();

    let (status, again) = app.post("/api/v1/alerts", &fixture("firing.json")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["alerts"][0]["action"], "deduplicated", "{again}");
    assert_eq!(again["alerts"][0]["reason"], "same-incident", "{again}");
    assert_eq!(again["alerts"][0]["runId"], id.as_str());

    let (status, resolved) = app.post("/api/v1/alerts", &fixture("resolved.json")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resolved}");
    assert_eq!(resolved["alerts"][0]["action"], "cancelled", "{resolved}");
    let (_, run) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["phase"], "Cancelled", "{run}");
}

#[tokio::test]
async fn a_grafana_alert_that_matches_no_plan_is_answered_not_refused() {
    let app = app(&[]).await;
    let (status, body) = app.post("/api/v1/alerts", &fixture("firing.json")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["alerts"][0]["action"], "noMatch", "{body}");
}

#[tokio::test]
async fn a_payload_of_another_version_is_a_400_naming_the_versions_recoverd_reads() {
    let app = app(&[plan()]).await;
    let mut payload = fixture("firing.json");
    payload["version"] = "2".into();
    let (status, body) = app.post("/api/v1/alerts", &payload).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let text = body.to_string();
    assert!(text.contains("Grafana") && text.contains("Alertmanager"), "{text}");
}
