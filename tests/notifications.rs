//! Notifications: a live run's lifecycle reaches the configured webhook — Slack-compatible or
//! JSON, the text from the template — without ever holding up the run, and a dry run tells
//! nobody. Through the API (no cluster: the plans call HTTP hooks).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use recoverd::notify::{Notifier, NotifyConfig, NotifyFormat, DEFAULT_TEMPLATE};
use serde_json::{json, Value};
use support::server::{app_notifying, eventually};

type Received = Arc<Mutex<Vec<Value>>>;

/// A webhook on loopback that records every JSON body; its first `fail` posts answer 503.
async fn webhook(fail: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (g, seen) = (g.clone(), seen.clone());
            async move {
                if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < fail {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                g.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// Notices as JSON with the default text, to `url`.
fn json_notifier(url: String) -> Notifier {
    Notifier::start(NotifyConfig {
        url,
        format: NotifyFormat::Json,
        template: DEFAULT_TEMPLATE.into(),
    })
    .unwrap()
}

fn plan(file: &'static str, steps: &str) -> (&'static str, String) {
    let name = file.trim_end_matches(".yaml");
    (
        file,
        format!(
            "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: {name}, namespace: ops}}\n\
             spec:\n  mode: manual\n  steps:\n{steps}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_runs_lifecycle_reaches_the_webhook_as_json_and_a_dry_run_tells_nobody() {
    let (url, got) = webhook(1).await;
    let notifier = json_notifier(url);
    let steps = "  - name: probe
    type: http
    onError: continue
    http: {url: \"http://127.0.0.1:1/nothing\", method: POST}
  - name: pause
    type: wait
    wait: {duration: 10ms}
";
    let app = app_notifying(&[plan("noisy.yaml", steps)], notifier).await;
    let (status, dry) = app.post("/api/v1/plans/ops/noisy/runs", &json!({"dryRun": true})).await;
    assert_eq!(status, StatusCode::CREATED);
    app.finished(dry["id"].as_str().unwrap()).await;
    let (_, live) = app.post("/api/v1/plans/ops/noisy/runs", &json!({})).await;
    let id = live["id"].as_str().unwrap().to_string();
    assert_eq!(app.finished(&id).await["phase"], "SucceededWithErrors");

    eventually("three notices", Duration::from_secs(30), || async {
        got.lock().unwrap().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().unwrap().clone();
    let events: Vec<&str> = got.iter().map(|n| n["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["started", "stepFailed", "degraded"],
        "one notice per lifecycle event of the live run, none of the dry run (the first post \
         answered 503 and was retried): {got:#?}"
    );
    assert!(got.iter().all(|n| n["run"] == id.as_str() && n["plan"] == "ops/noisy"));
    assert_eq!(got[1]["step"], "probe");
    let text = got[2]["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("recoverd: run {id} of ops/noisy succeeded with errors")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_wait_is_announced_in_slacks_format_from_the_template() {
    let (url, got) = webhook(0).await;
    let notifier = Notifier::start(NotifyConfig {
        url,
        format: NotifyFormat::Slack,
        template: "{{ plan }}: {{ summary }} at {{ step }}".into(),
    })
    .unwrap();
    let steps = "  - name: decide
    type: approval
    approval: {message: go?, timeout: 5m}
";
    let app = app_notifying(&[plan("asks.yaml", steps)], notifier).await;
    let (_, run) = app.post("/api/v1/plans/ops/asks/runs", &json!({})).await;
    let id = run["id"].as_str().unwrap().to_string();
    eventually("the approval notice", Duration::from_secs(30), || async {
        got.lock().unwrap().len() >= 2
    })
    .await;
    assert_eq!(
        got.lock().unwrap()[1],
        json!({"text": "ops/asks: is waiting for approval at decide"})
    );
    app.post(&format!("/api/v1/runs/{id}/cancel"), &json!({})).await;
    app.finished(&id).await;
}

#[test]
fn a_template_that_does_not_parse_is_refused_when_the_notifier_starts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(async {
            Notifier::start(NotifyConfig {
                url: "http://127.0.0.1:1".into(),
                format: NotifyFormat::Slack,
                template: "{{ run ".into(),
            })
        })
        .unwrap_err();
    assert!(err.contains("--notify-template"), "{err}");
}

/// A cancel is told once, as the run's end — for a run that never started (waiting for its
/// plan's approval) as for one stopped mid-step — never as a failed step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_told_once_whether_the_run_had_started_or_not() {
    let (url, got) = webhook(0).await;
    let notifier = json_notifier(url);
    let gated = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: gated, namespace: ops}\n\
                 spec:\n  mode: approval\n  steps:\n  - {name: pause, type: wait, wait: {duration: 10ms}}\n";
    let steps = "  - name: decide
    type: approval
    approval: {message: go?, timeout: 5m}
";
    let app = app_notifying(&[("gated.yaml", gated.to_string()), plan("asks.yaml", steps)], notifier).await;
    for plan in ["gated", "asks"] {
        let (_, run) = app.post(&format!("/api/v1/plans/ops/{plan}/runs"), &json!({})).await;
        let id = run["id"].as_str().unwrap().to_string();
        let announced = if plan == "gated" { 1 } else { 2 };
        eventually("the approval notice", Duration::from_secs(30), || async {
            got.lock().unwrap().iter().filter(|n| n["run"] == id.as_str()).count() >= announced
        })
        .await;
        app.post(&format!("/api/v1/runs/{id}/cancel"), &json!({})).await;
        app.finished(&id).await;
        eventually("the cancel notice", Duration::from_secs(30), || async {
            got.lock()
                .unwrap()
                .iter()
                .any(|n| n["run"] == id.as_str() && n["event"] == "cancelled")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let events: Vec<String> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["run"] == id.as_str())
            .map(|n| n["event"].as_str().unwrap().to_string())
            .collect();
        let expected: &[&str] = if plan == "gated" {
            &["awaitingApproval", "cancelled"]
        } else {
            &["started", "awaitingApproval", "cancelled"]
        };
        assert_eq!(events, expected, "{plan}");
    }
}

/// A step of a forEach iteration that fails while the run goes on (`onError: continue`) is told
/// as a failed step, naming the iteration's step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tolerated_failure_inside_a_for_each_iteration_is_told() {
    let (url, got) = webhook(0).await;
    let notifier = json_notifier(url);
    let steps = "  - name: each
    type: forEach
    forEach:
      items: [a]
      steps:
      - name: probe
        type: http
        onError: continue
        http: {url: \"http://127.0.0.1:1/nothing\", method: POST}
";
    let app = app_notifying(&[plan("iterating.yaml", steps)], notifier).await;
    let (_, live) = app.post("/api/v1/plans/ops/iterating/runs", &json!({})).await;
    let id = live["id"].as_str().unwrap().to_string();
    assert_eq!(app.finished(&id).await["phase"], "SucceededWithErrors");
    eventually("three notices", Duration::from_secs(30), || async {
        got.lock().unwrap().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().unwrap().clone();
    let events: Vec<&str> = got.iter().map(|n| n["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["started", "stepFailed", "degraded"], "{got:#?}");
    // (An iteration of one step is named by its index alone.)
    assert_eq!(got[1]["step"], "each[0]", "{got:#?}");
}
