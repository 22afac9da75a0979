//! Reliability suite R4 (hostile input), part 2: property tests (proptest, a bounded number of
//! cases so they run in plain `cargo test`) over everything that reads untrusted text — the
//! webhook parser behind the real router, the plan loader and validator, templates and field
//! paths. More cases: `PROPTEST_CASES=20000 cargo test --test reliability_fuzz`.

mod support;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use recoverd::fieldpath::FieldPath;
use recoverd::plan::load::load_str;
use recoverd::template;
use serde_json::{json, Value};
use support::server::{app, authed, payload, TestApp};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A well-formed payload with one field replaced by anything.
fn mangled_payload() -> impl Strategy<Value = Value> {
    let fields = prop::sample::select(vec![
        "version",
        "status",
        "alerts",
        "groupLabels",
        "commonLabels",
        "receiver",
        "truncatedAlerts",
    ]);
    let alert_fields = prop::sample::select(vec![
        "status",
        "labels",
        "annotations",
        "startsAt",
        "fingerprint",
        "endsAt",
    ]);
    (fields, alert_fields, json_value(), any::<bool>()).prop_map(|(f, af, v, in_alert)| {
        let mut p = payload(
            "firing",
            json!({"alertname": "PrimaryDown", "severity": "critical"}),
            "fp",
            "2026-11-21T10:00:00Z",
        );
        if in_alert {
            p["alerts"][0][af] = v;
        } else {
            p[f] = v;
        }
        p
    })
}

async fn post_raw(app: &TestApp, body: Vec<u8>) -> u16 {
    let req = authed(Request::post("/api/v1/alerts"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    app.send(req).await.0.as_u16()
}

#[test]
fn the_webhook_answers_any_body_with_a_2xx_or_4xx_and_never_panics() {
    let rt = runtime();
    let app = rt.block_on(app(&[]));
    proptest!(config(256), |(bytes in prop::collection::vec(any::<u8>(), 0..512))| {
        let status = rt.block_on(post_raw(&app, bytes));
        prop_assert!((200..500).contains(&status), "status {status}");
    });
    proptest!(config(256), |(body in mangled_payload())| {
        let status = rt.block_on(post_raw(&app, body.to_string().into_bytes()));
        prop_assert!(status == 202 || status == 400, "status {status} for {body}");
    });
}

/// A valid plan, to mutate.
const PLAN: &str = r#"apiVersion: recoverd.io/v1alpha1
kind: RecoveryPlan
metadata: {name: fuzz, namespace: ops}
spec:
  alertLabels: {alertname: PrimaryDown}
  params: {north: pg-north}
  steps:
  - name: demote
    type: patch
    cluster: north
    patch:
      apiVersion: postgresql.cnpg.io/v1
      resource: clusters
      namespace: db
      name: "{{ Values.north }}"
      override: {fieldPath: spec.replica.primary, value: {raw: pg-south}}
  - name: wait
    type: wait
    wait: {duration: 10ms}
"#;

#[test]
fn the_plan_loader_and_validator_survive_any_text() {
    let file = std::path::Path::new("fuzz.yaml");
    proptest!(config(256), |(text in ".{0,400}")| {
        let (plans, _errors) = load_str(file, &text);
        for p in plans {
            let _ = recoverd::plan::validate::validate(&p.plan.spec, None);
        }
    });
    // Mutations of a valid plan: a byte range replaced by arbitrary text.
    proptest!(config(512), |(at in 0..PLAN.len(), len in 0usize..20, insert in ".{0,20}")| {
        let mut text = PLAN.as_bytes().to_vec();
        let end = (at + len).min(text.len());
        text.splice(at..end, insert.bytes());
        let text = String::from_utf8_lossy(&text).to_string();
        let (plans, errors) = load_str(file, &text);
        for p in &plans {
            let _ = recoverd::plan::validate::validate(&p.plan.spec, None);
        }
        for e in errors {
            prop_assert!(!e.message.is_empty());
        }
    });
}

#[test]
fn templates_render_or_fail_cleanly_and_label_values_never_change_a_manifests_structure() {
    let ctx = |label: &str| json!({"Values": {"n": 1}, "alert": {"labels": {"x": label}, "annotations": {}}});
    proptest!(config(256), |(src in ".{0,80}", label in ".{0,40}")| {
        let _ = template::render(&src, &ctx(&label));
        let _ = template::render_bool(&src, &ctx(&label));
        let _ = template::render_yaml(&src, &ctx(&label));
    });
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m, namespace: ns}\ndata:\n  k: \"{{ alert.labels.x }}\"\n  plain: {{ alert.labels.x }}\n";
    proptest!(config(512), |(label in "\\PC{0,60}")| {
        let out = template::render_yaml(manifest, &ctx(&label)).unwrap();
        let data = out["data"].as_object().unwrap();
        prop_assert_eq!(data.len(), 2, "no key was added: {}", out);
        prop_assert_eq!(out["metadata"]["name"].as_str(), Some("m"));
        prop_assert_eq!(data["k"].as_str(), Some(label.as_str()));
    });
}

#[test]
fn field_paths_parse_or_fail_cleanly_and_a_merge_patch_puts_the_value_where_get_finds_it() {
    proptest!(config(512), |(text in ".{0,60}")| {
        if let Ok(p) = FieldPath::parse(&text) {
            let _ = p.get(&json!({"a": {"b": [1, 2]}}));
        }
    });
    proptest!(config(256), |(keys in prop::collection::vec("[a-z][a-zA-Z0-9]{0,8}", 1..6), value in json_value())| {
        let path = FieldPath::parse(&keys.join(".")).unwrap();
        let patch = path.merge_patch(value.clone()).unwrap();
        prop_assert_eq!(path.get(&patch).unwrap(), Some(value));
    });
}

#[test]
fn alert_labels_of_any_content_reach_a_run_record_unchanged() {
    let rt = runtime();
    let app = rt.block_on(app(&[]));
    let n = std::sync::atomic::AtomicU32::new(0);
    proptest!(config(64), |(value in "\\PC{0,80}")| {
        let n = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // An approval plan: its run waits, and cancelling it frees the plan at once.
        let labels: BTreeMap<&str, &str> =
            BTreeMap::from([("alertname", "RegionDown"), ("x", value.as_str())]);
        let body = payload("firing", json!(labels), &format!("fp{n}"), "2026-11-21T10:00:00Z");
        let (status, reply) = rt.block_on(app.post("/api/v1/alerts", &body));
        prop_assert_eq!(status.as_u16(), 202);
        prop_assert_eq!(reply["alerts"][0]["action"].as_str(), Some("awaitingApproval"), "{}", reply);
        let id = reply["alerts"][0]["runId"].as_str().unwrap();
        let (_, run) = rt.block_on(app.get(&format!("/api/v1/runs/{id}")));
        prop_assert_eq!(run["alert"]["labels"]["x"].as_str(), Some(value.as_str()));
        let (status, _) = rt.block_on(app.post(&format!("/api/v1/runs/{id}/cancel"), &json!({})));
        prop_assert_eq!(status.as_u16(), 200);
    });
}
