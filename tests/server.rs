//! The HTTP API through `server::router` and `oneshot`: status codes, matching, and every rule
//! that keeps runs exactly-once.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use support::server::{app, authed, metric, payload};

const T0: &str = "2026-11-21T10:00:00Z";

fn primary_down() -> Value {
    json!({"alertname": "PrimaryDown", "severity": "critical", "cluster": "pg-north"})
}

#[tokio::test]
async fn a_firing_alert_starts_its_plan_and_the_reply_says_so() {
    let app = app(&[]).await;
    let (status, body) = app
        .post("/api/v1/alerts", &payload("firing", primary_down(), "fp1", T0))
        .await;

    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let out = &body["alerts"][0];
    assert_eq!(out["action"], "started");
    assert_eq!(out["plan"], "ops/auto");
    let id = out["runId"].as_str().unwrap();
    let run = app.finished(id).await;
    assert_eq!(run["phase"], "Succeeded");
    assert_eq!(run["trigger"]["fingerprint"], "fp1");
    assert_eq!(run["alert"]["labels"]["cluster"], "pg-north");
    assert_eq!(run["steps"][0]["status"], "succeeded");
}

#[tokio::test]
async fn a_resent_alert_does_not_start_a_second_run() {
    let app = app(&[]).await;
    let p = payload("firing", primary_down(), "fp1", T0);
    let (_, first) = app.post("/api/v1/alerts", &p).await;
    let id = first["alerts"][0]["runId"].as_str().unwrap().to_string();
    app.finished(&id).await;

    for _ in 0..3 {
        let (status, again) = app.post("/api/v1/alerts", &p).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(again["alerts"][0]["action"], "deduplicated");
        assert_eq!(again["alerts"][0]["reason"], "same-incident");
        assert_eq!(again["alerts"][0]["runId"], id.as_str());
    }
    let (_, runs) = app.get("/api/v1/runs?plan=ops/auto").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            "recoverd_runs_deduplicated_total{plan=\"ops/auto\",reason=\"same-incident\"}"
        ),
        3.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_new_incident_while_the_plan_runs_is_deduplicated_not_queued() {
    let app = app(&[]).await;
    let (_, first) = app
        .post("/api/v1/alerts", &payload("firing", primary_down(), "fp1", T0))
        .await;
    let (_, second) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", primary_down(), "fp2", "2026-11-21T10:05:00Z"),
        )
        .await;
    assert_eq!(second["alerts"][0]["action"], "deduplicated");
    assert_eq!(second["alerts"][0]["reason"], "active-run");
    assert_eq!(second["alerts"][0]["runId"], first["alerts"][0]["runId"]);
    app.finished(first["alerts"][0]["runId"].as_str().unwrap()).await;
    // Once the first run is over, a new incident runs the plan again (it has no cooldown).
    let (_, third) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", primary_down(), "fp3", "2026-11-21T10:06:00Z"),
        )
        .await;
    assert_eq!(third["alerts"][0]["action"], "started");
}

#[tokio::test]
async fn a_new_incident_within_the_cooldown_is_deduplicated() {
    let app = app(&[]).await;
    let lag = json!({"alertname": "ReplicaLag"});
    let (_, first) = app
        .post("/api/v1/alerts", &payload("firing", lag.clone(), "a", T0))
        .await;
    app.finished(first["alerts"][0]["runId"].as_str().unwrap()).await;
    let (_, second) = app
        .post("/api/v1/alerts", &payload("firing", lag, "b", "2026-11-21T11:00:00Z"))
        .await;
    assert_eq!(second["alerts"][0]["action"], "deduplicated");
    assert_eq!(second["alerts"][0]["reason"], "cooldown");
}

#[tokio::test]
async fn each_alert_is_judged_by_its_own_status_not_the_groups() {
    let app = app(&[]).await;
    let mut p = payload("firing", primary_down(), "fp1", T0);
    p["alerts"][0]["status"] = json!("resolved");
    let (status, body) = app.post("/api/v1/alerts", &p).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["alerts"][0]["action"], "ignored");
    let (_, runs) = app.get("/api/v1/runs").await;
    assert!(runs["runs"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn an_alert_matching_no_plan_or_failing_a_matcher_starts_nothing() {
    let app = app(&[]).await;
    let (_, body) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", json!({"alertname": "Other"}), "x", T0),
        )
        .await;
    assert_eq!(body["alerts"][0]["action"], "noMatch");
    let info = json!({"alertname": "PrimaryDown", "severity": "info"});
    let (_, body) = app.post("/api/v1/alerts", &payload("firing", info, "y", T0)).await;
    assert_eq!(
        body["alerts"][0]["action"], "noMatch",
        "severity=~critical|page must hold; manual plans never match"
    );
}

#[tokio::test]
async fn an_approval_plan_waits_and_a_resolution_cancels_it() {
    let app = app(&[]).await;
    let down = json!({"alertname": "RegionDown"});
    let (_, body) = app
        .post("/api/v1/alerts", &payload("firing", down.clone(), "r1", T0))
        .await;
    assert_eq!(body["alerts"][0]["action"], "awaitingApproval");
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    let (_, run) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["phase"], "WaitingForApproval");

    // Alertmanager's resolution can carry a different startsAt: matched by fingerprint alone.
    let (_, body) = app
        .post(
            "/api/v1/alerts",
            &payload("resolved", down, "r1", "2026-11-21T10:00:01Z"),
        )
        .await;
    assert_eq!(body["alerts"][0]["action"], "cancelled");
    assert_eq!(body["alerts"][0]["runId"], id.as_str());
    let (_, run) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["phase"], "Cancelled");
    let (status, _) = app.post(&format!("/api/v1/runs/{id}/approve"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn an_approved_run_executes_once() {
    let app = app(&[]).await;
    let (_, body) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", json!({"alertname": "RegionDown"}), "r2", T0),
        )
        .await;
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    let (status, _) = app.post(&format!("/api/v1/runs/{id}/approve"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.finished(&id).await["phase"], "Succeeded");
    let (status, body) = app.post(&format!("/api/v1/runs/{id}/approve"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("Succeeded"), "{body}");
}

#[tokio::test]
async fn a_manual_trigger_with_the_same_idempotency_key_returns_the_same_run() {
    let app = app(&[]).await;
    let req = json!({"idempotencyKey": "ticket-42", "params": {"x": 1}, "actor": "sre@example"});
    let (status, first) = app.post("/api/v1/plans/ops/manual/runs", &req).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["trigger"]["actor"], "sre@example");
    app.finished(first["id"].as_str().unwrap()).await;
    let (status, again) = app.post("/api/v1/plans/ops/manual/runs", &req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
    let (_, runs) = app.get("/api/v1/runs?plan=ops/manual").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_manual_trigger_while_the_plan_runs_is_a_conflict_and_cancel_stops_the_run() {
    let app = app(&[]).await;
    let (status, run) = app.post("/api/v1/plans/ops/long/runs", &json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = run["id"].as_str().unwrap().to_string();
    let (status, body) = app.post("/api/v1/plans/ops/long/runs", &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains(&id), "{body}");
    // A dry run changes nothing, so it may run beside the live one.
    let (status, _) = app.post("/api/v1/plans/ops/long/runs", &json!({"dryRun": true})).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, _) = app.post(&format!("/api/v1/runs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let run = app.finished(&id).await;
    assert_eq!(run["phase"], "Cancelled");
    assert_eq!(run["steps"][1]["status"], "pending");
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused_but_health_is_open() {
    let app = app(&[]).await;
    let body = payload("firing", primary_down(), "fp1", T0).to_string();
    let req = Request::post("/api/v1/alerts")
        .header("content-type", "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    assert_eq!(app.send(req).await.0, StatusCode::UNAUTHORIZED);
    let req = Request::post("/api/v1/alerts")
        .header("content-type", "application/json")
        .header("authorization", "Bearer wrong")
        .body(Body::from(body))
        .unwrap();
    let (status, err) = app.send(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err["error"], "missing or invalid bearer token");
    for path in ["/api/v1/runs", "/metrics", "/api/v1/plans"] {
        assert_eq!(
            app.send(Request::get(path).body(Body::empty()).unwrap()).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            app.send(Request::get(path).body(Body::empty()).unwrap()).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    let (_, runs) = app.get("/api/v1/runs").await;
    assert!(
        runs["runs"].as_array().unwrap().is_empty(),
        "refused requests started nothing"
    );
}

#[tokio::test]
async fn bad_requests_get_a_4xx_that_says_what_was_wrong() {
    let app = app(&[]).await;
    let post = |ct: &str, body: String| {
        authed(Request::post("/api/v1/alerts"))
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap()
    };

    let (status, err) = app.send(post("text/plain", "{}".into())).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(err["error"].as_str().unwrap().contains("application/json"));

    let (status, err) = app.send(post("application/json", "{\"version\": \"4\", ".into())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("invalid JSON body"), "{err}");

    let (status, err) = app
        .send(post(
            "application/json",
            json!({"version": "4", "status": "firing"}).to_string(),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"].as_str().unwrap().contains("missing field `alerts`"),
        "{err}"
    );

    let mut old = payload("firing", primary_down(), "fp", T0);
    old["version"] = json!("3");
    let (status, err) = app.send(post("application/json", old.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("version"), "{err}");

    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let (status, err) = app.send(post("application/json", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(err["error"].as_str().unwrap().contains("larger than"), "{err}");

    assert_eq!(app.get("/api/v1/runs/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.post("/api/v1/plans/ops/nope/runs", &json!({})).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get("/api/v1/nothing").await.0, StatusCode::NOT_FOUND);
    let (status, err) = app.post("/api/v1/plans/ops/manual/runs", &json!({"parms": {}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"].as_str().unwrap().contains("unknown field `parms`"),
        "{err}"
    );
}

#[tokio::test]
async fn an_invalid_plan_is_reported_and_skipped_while_the_others_work() {
    let app = app(&[]).await;
    let (status, plans) = app.get("/api/v1/plans").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ops/auto") && !names.contains(&"ops/broken"),
        "{names:?}"
    );
    let invalid = &plans["invalid"][0];
    assert_eq!(invalid["plan"], "ops/broken");
    assert!(
        invalid["problems"][0].as_str().unwrap().contains("Values.B"),
        "{invalid}"
    );
    let m = app.metrics().await;
    assert_eq!(metric(&m, "recoverd_plans_invalid"), 1.0, "{m}");
    assert!(metric(&m, "recoverd_plans_loaded") >= 5.0, "{m}");
}

#[tokio::test]
async fn a_label_value_full_of_template_syntax_reaches_the_template_only_as_data() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let hook = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: String| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    let plan = std::fs::read_to_string(support::clusters::repo_dir().join("tests/data/plans/serve/echo.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:1/", &url);
    let app = app(&[("echo.yaml", plan)]).await;
    let evil = "{{ Values.url }}\", \"injected\": \"1\" {% raw %}\n}";

    let (_, body) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", json!({"alertname": "Echo", "cluster": evil}), "e1", T0),
        )
        .await;
    let run = app.finished(body["alerts"][0]["runId"].as_str().unwrap()).await;

    assert_eq!(run["phase"], "Succeeded", "{run}");
    let got: Value = serde_json::from_str(&seen.lock().unwrap()[0]).unwrap();
    assert_eq!(got, json!({"cluster": evil, "note": "from Echo"}));
}

#[tokio::test]
async fn metrics_count_alerts_matches_runs_and_steps_with_bounded_labels() {
    let app = app(&[]).await;
    let (_, body) = app
        .post("/api/v1/alerts", &payload("firing", primary_down(), "fp1", T0))
        .await;
    app.finished(body["alerts"][0]["runId"].as_str().unwrap()).await;
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, "recoverd_alerts_received_total{status=\"firing\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "recoverd_plan_matches_total{plan=\"ops/auto\"}"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "recoverd_runs_total{plan=\"ops/auto\",result=\"Succeeded\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "recoverd_step_duration_seconds_count{plan=\"ops/auto\",type=\"wait\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "recoverd_active_runs"), 0.0, "{m}");
    assert!(
        !m.contains("pg-north"),
        "an alert label value leaked into a metric label"
    );
}

#[tokio::test]
async fn with_approver_tokens_the_alertmanager_token_cannot_approve() {
    let app = support::server::app_with(&[], true).await;
    let (_, body) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", json!({"alertname": "RegionDown"}), "r9", T0),
        )
        .await;
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    let (status, err) = app.post(&format!("/api/v1/runs/{id}/approve"), &json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(err["error"].as_str().unwrap().contains("approver token"), "{err}");
    let approve = Request::post(format!("/api/v1/runs/{id}/approve"))
        .header("authorization", format!("Bearer {}", support::server::APPROVER))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(approve).await.0, StatusCode::OK);
    assert_eq!(
        app.finished_as(support::server::APPROVER, &id).await["phase"],
        "Succeeded"
    );
}

#[tokio::test]
async fn a_run_not_approved_in_time_is_cancelled_and_frees_the_plan() {
    let app = app(&[]).await;
    let flapping = json!({"alertname": "RegionFlapping"});
    let (_, body) = app
        .post("/api/v1/alerts", &payload("firing", flapping.clone(), "f1", T0))
        .await;
    assert_eq!(body["alerts"][0]["action"], "awaitingApproval");
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    assert!(app.runs.expire_approvals().await.unwrap().is_empty(), "not yet");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    assert_eq!(app.runs.expire_approvals().await.unwrap(), std::slice::from_ref(&id));

    let (_, run) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["phase"], "Cancelled");
    assert!(
        run["error"].as_str().unwrap().contains("no approval within 200ms"),
        "{run}"
    );
    let (_, again) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", flapping, "f2", "2026-11-21T10:30:00Z"),
        )
        .await;
    assert_eq!(
        again["alerts"][0]["action"], "awaitingApproval",
        "the plan is free again"
    );
}

#[tokio::test]
async fn manual_triggers_refuse_unknown_params_and_invalid_plans_and_keep_dry_and_live_apart() {
    let app = app(&[]).await;
    let (status, err) = app
        .post(
            "/api/v1/plans/ops/manual/runs",
            &json!({"params": {"nrth": "pg-south"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"].as_str().unwrap().contains("no param \"nrth\""), "{err}");
    let (status, err) = app.post("/api/v1/plans/ops/broken/runs", &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        err["error"].as_str().unwrap().contains("invalid") && err["error"].as_str().unwrap().contains("Values.B"),
        "{err}"
    );

    let (status, dry) = app
        .post(
            "/api/v1/plans/ops/manual/runs",
            &json!({"idempotencyKey": "INC-1", "dryRun": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(dry["mode"], "dryRun");
    app.finished(dry["id"].as_str().unwrap()).await;
    let (status, live) = app
        .post("/api/v1/plans/ops/manual/runs", &json!({"idempotencyKey": "INC-1"}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "previewing with a key must not swallow the live run"
    );
    assert_eq!(live["mode"], "live");
    assert_ne!(live["id"], dry["id"]);
}

#[tokio::test]
async fn a_payload_with_one_bad_alert_is_refused_whole_before_anything_runs() {
    let app = app(&[]).await;
    let mut p = payload("firing", primary_down(), "fp1", T0);
    let mut second = p["alerts"][0].clone();
    second["fingerprint"] = json!("");
    p["alerts"].as_array_mut().unwrap().push(second);
    let (status, err) = app.post("/api/v1/alerts", &p).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"].as_str().unwrap().contains("alerts[1] has no fingerprint"),
        "{err}"
    );
    let (_, runs) = app.get("/api/v1/runs").await;
    assert!(runs["runs"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_dry_run_in_flight_never_blocks_a_live_alert_or_trigger() {
    let app = app(&[]).await;
    let (status, dry) = app.post("/api/v1/plans/ops/long/runs", &json!({"dryRun": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{dry}");
    let (status, body) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", json!({"alertname": "SlowBurn"}), "sb1", T0),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        body["alerts"][0]["action"], "started",
        "the real alert is not deduplicated against the dry run: {body}"
    );
    let live = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    // And the other way round: a second dry run beside the live one.
    let (status, _) = app.post("/api/v1/plans/ops/long/runs", &json!({"dryRun": true})).await;
    assert_eq!(status, StatusCode::CREATED);
    for id in [live.as_str(), dry["id"].as_str().unwrap()] {
        app.post(&format!("/api/v1/runs/{id}/cancel"), &json!({})).await;
        app.finished(id).await;
    }
    // With the live run gone, a live trigger is free even though dry runs remain.
    let (status, again) = app.post("/api/v1/plans/ops/long/runs", &json!({"dryRun": true})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, live2) = app.post("/api/v1/plans/ops/long/runs", &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{live2}");
    for id in [&again["id"], &live2["id"]] {
        app.post(&format!("/api/v1/runs/{}/cancel", id.as_str().unwrap()), &json!({}))
            .await;
    }
}

#[tokio::test]
async fn a_manual_trigger_of_an_approval_plan_waits_for_an_approver() {
    use support::server::{app_split, Split, APPROVER, OPERATOR};
    let app = app_split(
        &[],
        Split {
            approvers: true,
            operators: true,
        },
    )
    .await;
    let (status, _) = app.post("/api/v1/plans/ops/approval/runs", &json!({})).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the alert sender's token may only send alerts"
    );
    let (status, run) = app
        .post_as(OPERATOR, "/api/v1/plans/ops/approval/runs", &json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["phase"], "WaitingForApproval");
    let id = run["id"].as_str().unwrap();
    let (status, _) = app
        .post_as(OPERATOR, &format!("/api/v1/runs/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, still) = app.get_as(OPERATOR, &format!("/api/v1/runs/{id}")).await;
    assert_eq!(still["phase"], "WaitingForApproval", "nothing ran");
    assert!(still["steps"][0]["startedAt"].is_null(), "{still}");
    let (status, _) = app
        .post_as(APPROVER, &format!("/api/v1/runs/{id}/approve"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.finished_as(OPERATOR, id).await["phase"], "Succeeded");
}

#[tokio::test]
async fn a_trigger_may_set_only_the_params_the_plan_declares_overridable() {
    let plan = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: guarded, namespace: ops}\nspec:\n  mode: manual\n  params: {target: pg-south, url: 'http://safe.example/'}\n  overridableParams: [target]\n  steps:\n  - {name: hold, type: wait, wait: {duration: 10ms}}\n";
    let app = app(&[("guarded.yaml", plan.to_string())]).await;
    let (status, err) = app
        .post(
            "/api/v1/plans/ops/guarded/runs",
            &json!({"params": {"url": "http://evil.example/"}}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("\"url\"") && msg.contains("may set: target") && msg.contains("overridableParams"),
        "{msg}"
    );
    let (status, run) = app
        .post(
            "/api/v1/plans/ops/guarded/runs",
            &json!({"params": {"target": "pg-east"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["params"]["target"], "pg-east");
    assert_eq!(run["params"]["url"], "http://safe.example/");
}

#[tokio::test]
async fn a_resolved_alert_cancels_only_waiting_runs_of_plans_its_labels_match() {
    let other = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: other-approval, namespace: ops}\nspec:\n  alertLabels: {alertname: DiskFull}\n  mode: approval\n  steps:\n  - {name: hold, type: wait, wait: {duration: 10ms}}\n";
    let app = app(&[("other.yaml", other.to_string())]).await;
    let (_, body) = app
        .post(
            "/api/v1/alerts",
            &payload("firing", json!({"alertname": "DiskFull"}), "shared-fp", T0),
        )
        .await;
    assert_eq!(body["alerts"][0]["action"], "awaitingApproval");
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    // The same fingerprint with another plan's labels: not this run's alert.
    let (_, body) = app
        .post(
            "/api/v1/alerts",
            &payload("resolved", json!({"alertname": "RegionDown"}), "shared-fp", T0),
        )
        .await;
    assert_eq!(body["alerts"][0]["action"], "ignored", "{body}");
    let (_, run) = app.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["phase"], "WaitingForApproval");
    let (_, body) = app
        .post(
            "/api/v1/alerts",
            &payload("resolved", json!({"alertname": "DiskFull"}), "shared-fp", T0),
        )
        .await;
    assert_eq!(body["alerts"][0]["action"], "cancelled", "{body}");
}

#[tokio::test]
async fn runs_are_listed_as_summaries_a_page_at_a_time() {
    let app = app(&[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, run) = app
            .post(
                "/api/v1/plans/ops/manual/runs",
                &json!({"idempotencyKey": format!("k{i}"), "dryRun": true}),
            )
            .await;
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(t) => format!("/api/v1/runs?limit=2&continue={t}"),
            None => "/api/v1/runs?limit=2".to_string(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let runs = page["runs"].as_array().unwrap();
        assert!(runs.len() <= 2);
        for r in runs {
            assert!(r.get("steps").is_none(), "a summary, not the record: {r}");
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        match page["continue"].as_str() {
            Some(t) => next = Some(t.to_string()),
            None => break,
        }
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    let (status, err) = app.get("/api/v1/runs?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, err) = app.get("/api/v1/runs?continue=garbage!").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
}

#[tokio::test]
async fn a_run_keeps_at_most_a_bounded_part_of_a_huge_alert() {
    let app = app(&[]).await;
    let mut p = payload("firing", primary_down(), "huge", T0);
    let big = "x".repeat(200 * 1024);
    p["alerts"][0]["annotations"] = json!({"a": big, "b": big, "c": big});
    let (status, body) = app.post("/api/v1/alerts", &p).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["alerts"][0]["runId"].as_str().unwrap();
    let (_, run) = app.get(&format!("/api/v1/runs/{id}")).await;
    let kept = run["alert"]["annotations"].to_string().len();
    assert!(kept < 40 * 1024, "the record kept {kept} bytes of annotations");
    assert!(run["alert"]["annotations"]["a"]
        .as_str()
        .unwrap()
        .ends_with("[truncated by recoverd]"));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_an_oversized_body_is_refused_before_it_is_read() {
    let app = app(&[]).await;
    let req = Request::get("/api/v1/runs")
        .header("authorization", format!("bEaReR {}", support::server::TOKEN))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.0, StatusCode::OK);
    // A declared length over the limit is answered before the body is polled: the body here
    // would fail if read, so a 413 proves it never was.
    let failing = Body::from_stream(futures::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::other("the body must not be read"))
    }));
    let req = authed(Request::post("/api/v1/alerts"))
        .header("content-type", "application/json")
        .header("expect", "100-continue")
        .header("content-length", (2 * 1024 * 1024).to_string())
        .body(failing)
        .unwrap();
    let (status, body) = app.send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}
