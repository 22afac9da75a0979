//! `approval` steps: a running plan pauses until an approver answers, shows them its question
//! and what it knows, goes on only when approved, and never carries one approval over to a
//! later step. Through the API (no cluster needed: the plans call a counting HTTP hook).

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::server::{app, counting_hook, counts, eventually, Hits, TestApp};

/// (`NAME.yaml`, a manual plan NAME in namespace ops with these steps)
fn plan(file: &'static str, hook: &str, steps: &str) -> (&'static str, String) {
    let name = file.trim_end_matches(".yaml");
    (
        file,
        format!(
            "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: {name}, namespace: ops}}\n\
             spec:\n  mode: manual\n  params: {{site: north, hook: \"{hook}\"}}\n  steps:\n{steps}"
        ),
    )
}

const TWO_APPROVALS: &str = "  - name: decide
    type: approval
    approval: {message: \"Promote {{ Values.site }} without a token? Data loss possible.\", timeout: 5m}
  - name: promote
    type: http
    http: {url: \"{{ Values.hook }}/step/0\", method: POST}
  - name: confirm
    type: approval
    approval: {message: \"Repoint the proxy?\", timeout: 5m}
  - name: repoint
    type: http
    http: {url: \"{{ Values.hook }}/step/1\", method: POST}
";

async fn trigger(app: &TestApp, plan: &str) -> String {
    let (status, run) = app.post(&format!("/api/v1/plans/ops/{plan}/runs"), &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    run["id"].as_str().unwrap().to_string()
}

async fn run(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/runs/{id}")).await.1
}

async fn waiting_at(app: &TestApp, id: &str, step: usize) {
    eventually(
        &format!("step {step} of {id} to wait for approval"),
        Duration::from_secs(20),
        || async move { run(app, id).await["steps"][step]["status"] == "waitingForApproval" },
    )
    .await;
}

async fn approve(app: &TestApp, id: &str, step: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/runs/{id}/approve"),
        &json!({"step": step, "actor": "alice"}),
    )
    .await
}

fn hits_now(hits: &Hits) -> Vec<usize> {
    counts(hits)
}

#[tokio::test]
async fn a_plan_pauses_at_each_approval_step_shows_its_question_and_goes_on_only_when_approved() {
    let (hook, hits) = counting_hook(2).await;
    let app = app(&[plan("mid.yaml", &hook, TWO_APPROVALS)]).await;
    let id = trigger(&app, "mid").await;

    waiting_at(&app, &id, 0).await;
    let r = run(&app, &id).await;
    assert_eq!(r["phase"], "Running", "{r}");
    let inputs = &r["steps"][0]["inputs"];
    assert_eq!(
        inputs["message"], "Promote north without a token? Data loss possible.",
        "the approver sees the rendered question: {r}"
    );
    assert_eq!(inputs["values"]["site"], "north", "and the values so far: {r}");
    assert_eq!(hits_now(&hits), [0, 0], "nothing after the approval ran");

    let (status, body) = approve(&app, &id, "confirm").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an answer names the question it answers: {body}"
    );
    let (status, body) = approve(&app, &id, "decide").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    waiting_at(&app, &id, 2).await;
    assert_eq!(
        hits_now(&hits),
        [1, 0],
        "the first approval let the promotion run, and did not answer the second question"
    );

    let (status, _) = approve(&app, &id, "confirm").await;
    assert_eq!(status, StatusCode::OK);
    let done = app.finished(&id).await;
    assert_eq!(done["phase"], "Succeeded", "{done}");
    assert_eq!(hits_now(&hits), [1, 1]);
    let decision = done["steps"][0]["inputs"]["decision"].as_str().unwrap();
    assert!(
        decision.starts_with("approved at") && decision.contains("by alice (token sha256:"),
        "who approved, and when: {done}"
    );
    assert_eq!(
        done["steps"][0]["inputs"]["values"]["site"], "north",
        "the record keeps what the approver saw: {done}"
    );
}

#[tokio::test]
async fn an_approval_given_before_the_step_waits_is_refused_and_approves_nothing() {
    let (hook, hits) = counting_hook(1).await;
    let steps = "  - name: settle
    type: wait
    wait: {duration: 2s}
  - name: decide
    type: approval
    approval: {message: go?, timeout: 5m}
  - name: act
    type: http
    http: {url: \"{{ Values.hook }}/step/0\", method: POST}
";
    let app = app(&[plan("early.yaml", &hook, steps)]).await;
    let id = trigger(&app, "early").await;
    eventually("the run to start", Duration::from_secs(20), || async {
        run(&app, &id).await["phase"] == "Running"
    })
    .await;

    let (status, body) = approve(&app, &id, "decide").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("approval step waiting"),
        "{body}"
    );

    waiting_at(&app, &id, 1).await;
    assert_eq!(hits_now(&hits), [0], "the early approval did not carry over");
    let (status, _) = app
        .post(&format!("/api/v1/runs/{id}/cancel"), &json!({"actor": "bob"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = app.finished(&id).await;
    assert_eq!(done["phase"], "Cancelled", "{done}");
    assert_eq!(done["decisions"][0]["action"], "cancelled", "{done}");
    assert!(
        done["decisions"][0]["by"]
            .as_str()
            .unwrap()
            .starts_with("bob (token sha256:"),
        "{done}"
    );
    assert_eq!(hits_now(&hits), [0]);
}

#[tokio::test]
async fn an_approval_that_times_out_aborts_or_lets_the_run_go_on_as_the_plan_says() {
    let (hook, hits) = counting_hook(2).await;
    let abort = "  - name: decide
    type: approval
    approval: {message: \"fence {{ Values.site }}?\", timeout: 1s}
  - name: act
    type: http
    http: {url: \"{{ Values.hook }}/step/0\", method: POST}
";
    let go_on = "  - name: decide
    type: approval
    approval: {message: proceed unless stopped, timeout: 1s, onTimeout: continue}
  - name: act
    type: http
    http: {url: \"{{ Values.hook }}/step/1\", method: POST}
";
    let app = app(&[plan("strict.yaml", &hook, abort), plan("lenient.yaml", &hook, go_on)]).await;

    let strict = trigger(&app, "strict").await;
    let done = app.finished(&strict).await;
    assert_eq!(done["phase"], "Failed", "{done}");
    assert_eq!(done["steps"][0]["reason"], "not-approved", "{done}");
    let error = done["steps"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("not approved within 1s") && error.contains("fence north?"),
        "{error}"
    );

    let lenient = trigger(&app, "lenient").await;
    let done = app.finished(&lenient).await;
    assert_eq!(done["phase"], "Succeeded", "{done}");
    assert!(
        done["steps"][0]["inputs"]["decision"]
            .as_str()
            .unwrap()
            .contains("onTimeout: continue"),
        "{done}"
    );
    assert_eq!(hits_now(&hits), [0, 1]);
}

#[tokio::test]
async fn an_approval_step_without_a_timeout_is_refused_at_load() {
    let steps = "  - name: decide
    type: approval
    approval: {message: go?}
";
    let app = app(&[plan("unbounded.yaml", "http://127.0.0.1:1", steps)]).await;
    let (_, plans) = app.get("/api/v1/plans").await;
    let invalid = plans["invalid"].to_string();
    assert!(
        invalid.contains("ops/unbounded") && invalid.contains("approval.timeout"),
        "{plans}"
    );
}

/// The example of docs/plans.md, as written there.
#[tokio::test]
async fn the_documented_example_asks_after_its_probe_and_promotes_once_approved() {
    let (hook, hits) = counting_hook(2).await;
    let text =
        std::fs::read_to_string(support::clusters::repo_dir().join("tests/data/plans/language/approval.yaml")).unwrap();
    let app = app(&[("approval.yaml", text)]).await;
    let (status, run0) = app
        .post(
            "/api/v1/plans/recoverd/approval-after-probe/runs",
            &json!({"params": {"hook": hook}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run0}");
    let id = run0["id"].as_str().unwrap().to_string();

    waiting_at(&app, &id, 1).await;
    let r = run(&app, &id).await;
    assert_eq!(
        r["steps"][1]["inputs"]["message"],
        "The old site answered ok. Promote pg-south without a token? Writes not yet replicated are lost.",
        "{r}"
    );
    assert_eq!(hits_now(&hits), [1, 0]);
    assert_eq!(approve(&app, &id, "decide").await.0, StatusCode::OK);
    assert_eq!(app.finished(&id).await["phase"], "Succeeded");
    assert_eq!(hits_now(&hits), [1, 1]);
}

/// A question built from a secret is not shown, whatever filter the template puts it through
/// (the record, the progress lines and the timeout error all carry the question).
#[tokio::test]
async fn a_question_built_from_a_secret_is_withheld() {
    let (hook, _hits) = counting_hook(1).await;
    std::env::set_var("RECOVERD_TEST_APPROVAL_SECRET", "hunter2-approval");
    let steps = "  - name: login
    type: http
    http:
      url: \"{{ Values.hook }}/step/0\"
      method: POST
      headers: {Authorization: \"Bearer {{ secrets.token }}\"}
      secrets: {token: {env: RECOVERD_TEST_APPROVAL_SECRET}}
      outputKey: Session
  - name: decide
    type: approval
    approval: {message: \"session {{ Values.Session | reverse }}?\", timeout: 1s}
";
    let app = app(&[plan("leaky.yaml", &hook, steps)]).await;
    let id = trigger(&app, "leaky").await;
    let done = app.finished(&id).await;
    let text = done.to_string();
    assert!(
        !text.contains("ko"),
        "the reversed reply of a secret request leaked: {done}"
    );
    assert!(
        done["steps"][1]["error"].as_str().unwrap().contains("<redacted>"),
        "{done}"
    );
}

/// Who decided is recorded as the caller said it, but never with characters that hide or
/// rewrite text, nor in a form that passes for another token.
#[tokio::test]
async fn a_deciders_name_cannot_hide_text_or_pose_as_another_token() {
    let (hook, _hits) = counting_hook(1).await;
    let steps = "  - name: decide
    type: approval
    approval: {message: go?, timeout: 5m}
";
    let app = app(&[plan("named.yaml", &hook, steps)]).await;
    let id = trigger(&app, "named").await;
    waiting_at(&app, &id, 0).await;
    let (status, _) = app
        .post(
            &format!("/api/v1/runs/{id}/cancel"),
            &json!({"actor": "alice\u{202e}\u{2066}evil\u{200b}\nX (token sha256:00000000)"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = app.finished(&id).await;
    let by = done["decisions"][0]["by"].as_str().unwrap();
    assert!(
        by.starts_with("aliceevil X token sha256:00000000 (token sha256:"),
        "{by}"
    );
    assert_eq!(by.matches('(').count(), 1, "{by}");
}

/// A run cancelled while its `onFailure` steps run ends Cancelled, saying who cancelled it.
#[tokio::test]
async fn a_cancel_during_compensation_ends_the_run_cancelled_and_records_who() {
    let (hook, _hits) = counting_hook(1).await;
    let steps = "  - name: boom
    type: http
    http: {url: \"http://127.0.0.1:1/nothing\", method: POST}
  onFailure:
  - name: undo
    type: wait
    wait: {duration: 30s}
";
    let app = app(&[plan("undoes.yaml", &hook, steps)]).await;
    let id = trigger(&app, "undoes").await;
    eventually("the compensation to run", Duration::from_secs(20), || async {
        run(&app, &id).await["onFailure"][0]["status"] == "running"
    })
    .await;
    let (status, _) = app
        .post(&format!("/api/v1/runs/{id}/cancel"), &json!({"actor": "carol"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = app.finished(&id).await;
    assert_eq!(done["phase"], "Cancelled", "{done}");
    assert!(
        done["decisions"][0]["by"]
            .as_str()
            .unwrap()
            .starts_with("carol (token sha256:"),
        "{done}"
    );
}
