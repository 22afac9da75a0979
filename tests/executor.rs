//! The executor against real kube-apiservers: every step type, on the clusters it names.

mod support;

use recoverd::cluster::WriteMode;
use recoverd::run::record::{Phase, StepStatus};
use serde_json::json;
use support::run::{cnpg_world, field, plan, registry, run};

const CNPG: &str = "postgresql.cnpg.io/v1";
const TOKEN: &str = "eyJ0b2tlbiI6ImRlbW90aW9uLTAwMSJ9";

#[tokio::test]
async fn cnpg_switchover_demotes_hands_over_the_token_promotes_and_redirects_the_proxy() {
    let world = cnpg_world("switchover").await;
    let (ns, reg) = (world.ns.clone(), world.registry.clone());
    let reactors = &world.reactors;

    let record = run(reg.clone(), &plan("cnpg-switchover.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{:#?}", record);
    let names: Vec<_> = record.steps.iter().map(|s| (s.name.as_str(), s.status)).collect();
    assert!(names.iter().all(|(_, s)| *s == StepStatus::Succeeded), "{names:?}");
    assert_eq!(record.outputs["DemotionToken"], json!(TOKEN));
    assert_eq!(reactors.fired(), 2);
    assert_eq!(
        field(&reg, "north", CNPG, "clusters", &ns, "pg-north", "spec.replica.primary").await,
        Some(json!("pg-south"))
    );
    assert_eq!(
        field(&reg, "south", CNPG, "clusters", &ns, "pg-south", "spec.replica.primary").await,
        Some(json!("pg-south"))
    );
    assert_eq!(
        field(
            &reg,
            "south",
            CNPG,
            "clusters",
            &ns,
            "pg-south",
            "spec.replica.promotionToken"
        )
        .await,
        Some(json!(TOKEN))
    );
    let cfg = field(
        &reg,
        "edge",
        "v1",
        "configmaps",
        &ns,
        "haproxy-config",
        "data[\"haproxy.cfg\"]",
    )
    .await
    .unwrap();
    assert!(
        cfg.as_str()
            .unwrap()
            .contains("server pg-south pg-south-rw.db.svc:5432 check"),
        "{cfg}"
    );
    assert!(!cfg.as_str().unwrap().contains("pg-north"), "{cfg}");
    // The run record says what each write changed, on which cluster and object.
    let demote = &record.steps[0];
    assert_eq!(demote.cluster.as_deref(), Some("north"));
    assert!(demote.object.as_deref().unwrap().contains(&format!("{ns}/pg-north")));
    assert_eq!(
        demote.diff,
        Some(json!([{"op": "replace", "path": "/spec/replica/primary", "value": "pg-south"}]))
    );
    assert!(record
        .steps
        .iter()
        .all(|s| s.duration_ms.is_some() && s.started_at.is_some()));
}

#[tokio::test]
async fn a_step_against_an_unreachable_cluster_fails_and_the_run_continues_when_told_to() {
    let clusters = support::shared();
    let world = cnpg_world("unreachable").await;
    let ns = world.ns.clone();
    // The same clusters, but edge's API server address leads nowhere.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let servers = [("edge".to_string(), "https://127.0.0.1:1".to_string())].into();
    clusters.write_kubeconfig(&kubeconfig, &servers);
    let reg = support::run::registry_from(&kubeconfig, WriteMode::Live).await;

    let record = run(reg.clone(), &plan("continue-past-unreachable.yaml"), &ns, &[]).await;

    // The run did its job, and shows that something it tried did not happen.
    assert_eq!(record.phase, Phase::SucceededWithErrors, "{record:#?}");
    assert!(
        record.error.as_deref().unwrap().contains("annotate-edge"),
        "{record:#?}"
    );
    let edge = &record.steps[0];
    assert_eq!(edge.status, StepStatus::Failed);
    assert!(edge.continued);
    assert_eq!(edge.attempts, 2, "one retry on a transient error");
    assert_eq!(edge.reason.as_deref(), Some("unreachable"), "{edge:#?}");
    assert_eq!(edge.cluster.as_deref(), Some("edge"));
    assert!(edge.error.as_deref().unwrap().contains("edge"), "{edge:#?}");
    assert_eq!(record.steps[1].status, StepStatus::Succeeded);
    assert_eq!(
        field(&reg, "north", CNPG, "clusters", &ns, "pg-north", "spec.replica.primary").await,
        Some(json!("pg-south"))
    );
}

#[tokio::test]
async fn a_wait_that_never_sees_its_condition_fails_with_a_clear_timeout() {
    let world = cnpg_world("wait-timeout").await;
    let (ns, reg) = (world.ns.clone(), world.registry.clone());

    let started = std::time::Instant::now();
    let record = run(reg, &plan("wait-times-out.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed);
    let wait = &record.steps[0];
    assert_eq!(wait.reason.as_deref(), Some("wait-timeout"));
    let err = wait.error.as_deref().unwrap();
    assert!(
        err.contains("timed out after 1.5s waiting for status.demotionToken to be non-empty"),
        "{err}"
    );
    assert!(err.contains(&format!("{ns}/pg-north on cluster north")), "{err}");
    assert!(err.contains("last value: <missing>"), "{err}");
    assert_eq!(
        record.steps[1].status,
        StepStatus::Pending,
        "steps after an aborting failure never run"
    );
    assert!(record.error.as_deref().unwrap().contains("wait-for-token"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the wait is bounded by its timeout"
    );
}

#[tokio::test]
async fn a_missing_field_aborts_the_run_and_on_failure_steps_run() {
    let world = cnpg_world("on-failure").await;
    let (ns, reg) = (world.ns.clone(), world.registry.clone());

    let record = run(reg.clone(), &plan("on-failure.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed);
    let read = &record.steps[0];
    assert_eq!(read.reason.as_deref(), Some("field-missing"));
    let err = read.error.as_deref().unwrap();
    assert!(
        err.contains("status.nothingHere") && err.contains(&format!("{ns}/pg-north")) && err.contains("cluster north"),
        "{err}"
    );
    assert_eq!(record.steps[1].status, StepStatus::Pending);
    assert_eq!(record.on_failure.len(), 1);
    assert_eq!(
        record.on_failure[0].status,
        StepStatus::Succeeded,
        "{:#?}",
        record.on_failure
    );
    let flagged = field(
        &reg,
        "edge",
        "v1",
        "configmaps",
        &ns,
        "haproxy-config",
        "metadata.annotations[\"recoverd/failed-run\"]",
    )
    .await;
    assert_eq!(flagged, Some(json!("test")));
    assert_eq!(
        field(&reg, "north", CNPG, "clusters", &ns, "pg-north", "spec.replica.primary").await,
        Some(json!("pg-north"))
    );
}

#[tokio::test]
async fn dry_run_leaves_every_object_untouched_but_records_what_would_change() {
    let clusters = support::shared();
    let world = cnpg_world("dry-run").await;
    let (ns, live) = (world.ns.clone(), world.registry.clone());
    let seeded = &world.seeded;
    let reactors = &world.reactors;
    let dry = registry(clusters, WriteMode::DryRun).await;

    // The whole switchover: every write is validated by the API servers and stored nowhere;
    // waits for what those writes would cause are recorded, not waited out.
    let record = run(dry.clone(), &plan("cnpg-switchover.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(
        record.steps[0].diff,
        Some(json!([{"op": "replace", "path": "/spec/replica/primary", "value": "pg-south"}]))
    );
    let wait = record.steps[1].inputs.as_ref().unwrap();
    assert_eq!(
        wait["dryRun"],
        json!("would wait up to 1m for status.demotionToken to be non-empty")
    );
    assert_eq!(record.outputs["DemotionToken"], json!("dry-run-demotiontoken"));
    assert_eq!(
        record.steps[3].diff.as_ref().unwrap()[1]["value"],
        json!("dry-run-demotiontoken"),
        "{:#?}",
        record.steps[3]
    );
    assert!(record.steps[5]
        .diff
        .as_ref()
        .is_some_and(|d| !d.as_array().unwrap().is_empty()));
    let changed = recoverd::world::changes(&live, seeded).await;
    assert!(
        changed.is_empty(),
        "dry run changed {:?}",
        changed.iter().map(|(s, _)| s.describe()).collect::<Vec<_>>()
    );
    assert_eq!(reactors.fired(), 0, "no operator saw a change");

    // Not even a write that forgets to ask for a dry run gets through a dry-run client.
    let resolved = dry.resolve("north", "v1", "configmaps").await.unwrap();
    let api = recoverd::cluster::api_for_object(&dry, "north", &resolved, Some(&ns)).unwrap();
    let cm = serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sneaky"}}))
        .unwrap();
    api.create(&Default::default(), &cm).await.unwrap();
    api.delete("sneaky", &Default::default()).await.ok();
    let live_api = recoverd::cluster::api_for_object(&live, "north", &resolved, Some(&ns)).unwrap();
    assert!(live_api.get_opt("sneaky").await.unwrap().is_none());
}

#[tokio::test]
async fn an_indexed_path_is_patched_with_a_tested_json_patch_and_when_false_skips() {
    let world = cnpg_world("array").await;
    let (ns, reg) = (world.ns.clone(), world.registry.clone());

    let record = run(reg.clone(), &plan("array-and-when.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let patch = &record.steps[0];
    assert_eq!(
        patch.inputs.as_ref().unwrap()["patchType"],
        "application/json-patch+json"
    );
    assert_eq!(patch.inputs.as_ref().unwrap()["patch"][0]["op"], "test");
    let host = "spec.externalClusters[1].connectionParameters.host";
    assert_eq!(
        field(&reg, "north", CNPG, "clusters", &ns, "pg-north", host).await,
        Some(json!("pg-south-new.db.svc"))
    );
    assert_eq!(record.steps[1].status, StepStatus::Skipped);
    assert_eq!(
        field(&reg, "north", CNPG, "clusters", &ns, "pg-north", "spec.instances").await,
        Some(json!(3))
    );
    assert_eq!(
        record.outputs["SouthHost"],
        json!("pg-south-new.db.svc"),
        "JSONPath filter read"
    );
}

#[tokio::test]
async fn an_http_step_sends_its_secret_and_keeps_it_out_of_the_record() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hooks/{plan}",
        axum::routing::post(
            move |headers: axum::http::HeaderMap,
                  axum::extract::Path(plan): axum::extract::Path<String>,
                  body: String| {
                let s = s.clone();
                async move {
                    let auth = headers.get("authorization").unwrap().to_str().unwrap().to_string();
                    s.lock().unwrap().push((plan, auth, body));
                    (axum::http::StatusCode::CREATED, "accepted")
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    std::env::set_var("RECOVERD_TEST_HOOK_TOKEN", "s3cr3t-t0ken");
    let clusters = support::shared();
    let reg = registry(clusters, WriteMode::Live).await;

    let record = run(reg, &plan("http-notify.yaml"), "db", &[("url", json!(url))]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "http-notify");
    assert_eq!(got[0].1, "Bearer s3cr3t-t0ken");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&got[0].2).unwrap(),
        json!({"text": "switching db", "token": "s3cr3t-t0ken"})
    );
    // The request carried a secret, so its response is secret too (an endpoint may echo it):
    // recorded as redacted, still usable by the next step.
    assert_eq!(record.outputs["Reply"], json!("<redacted>"));
    assert_eq!(record.secret_outputs, ["Reply"]);
    assert_eq!(
        record.steps[1].status,
        StepStatus::Succeeded,
        "when used the http output"
    );
    let text = serde_json::to_string(&record).unwrap();
    assert!(!text.contains("s3cr3t-t0ken"), "secret leaked into the record: {text}");
    assert!(text.contains("\"Authorization\":\"<redacted>\""), "{text}");
}

#[tokio::test]
async fn apply_renders_a_configmap_key_from_a_template_kept_in_the_cluster() {
    let clusters = support::shared();
    let world = cnpg_world("templates").await;
    let (ns, reg) = (world.ns.clone(), world.registry.clone());
    let template = "backend primary\n  server db {{ Values.backend }}:5432 check\n";
    let out = clusters
        .kubectl("edge")
        .args([
            "create",
            "configmap",
            "haproxy-template",
            "-n",
            &ns,
            &format!("--from-literal=haproxy.cfg.j2={template}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let original = plan("templates-and-changes.yaml");
    let text = serde_json::to_string(&original.resource)
        .unwrap()
        .replace("\"namespace\":\"db\"", &format!("\"namespace\":\"{ns}\""));
    let loaded = recoverd::plan::LoadedPlan {
        plan: serde_json::from_str(&text).unwrap(),
        source: original.source.clone(),
        nova: false,
    };
    let plan = recoverd::plan::compile_one(&loaded, None).unwrap();

    let record = run(reg.clone(), &plan, &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let cfg = field(
        &reg,
        "edge",
        "v1",
        "configmaps",
        &ns,
        "haproxy-config",
        "data[\"haproxy.cfg\"]",
    )
    .await;
    assert_eq!(
        cfg,
        Some(json!("backend primary\n  server db pg-south-rw.db.svc:5432 check\n"))
    );
    assert_eq!(
        field(
            &reg,
            "edge",
            "v1",
            "configmaps",
            &ns,
            "haproxy-config",
            "metadata.labels[\"recoverd.io/primary\"]"
        )
        .await,
        Some(json!("pg-south"))
    );
    assert_eq!(
        record.steps[1].inputs.as_ref().unwrap()["patchType"],
        "application/strategic-merge-patch+json"
    );
    let observed = &record.steps[3].inputs.as_ref().unwrap()["observed"];
    assert_eq!(observed, &json!(TOKEN), "the wait saw the token the reactor wrote");
}

#[tokio::test]
async fn a_clusters_file_names_clusters_independently_of_kubeconfig_contexts() {
    let clusters = support::shared();
    let world = cnpg_world("clusters-file").await;
    let ns = world.ns.clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(clusters.kubeconfig(), dir.path().join("all.kubeconfig")).unwrap();
    let file = dir.path().join("clusters.yaml");
    std::fs::write(&file, "default: primary\nclusters:\n  primary: {kubeconfig: all.kubeconfig, context: north}\n  standby: {kubeconfig: all.kubeconfig, context: south}\n").unwrap();

    let reg = recoverd::cluster::Registry::from_clusters_file(&file, WriteMode::Live)
        .await
        .unwrap();

    assert_eq!(reg.names().into_iter().collect::<Vec<_>>(), ["primary", "standby"]);
    assert_eq!(reg.default_cluster(), "primary");
    assert_eq!(
        field(&reg, "primary", CNPG, "clusters", &ns, "pg-north", "spec.replica.self").await,
        Some(json!("pg-north"))
    );
    assert_eq!(
        field(&reg, "standby", CNPG, "clusters", &ns, "pg-south", "spec.replica.self").await,
        Some(json!("pg-south"))
    );
    let err = recoverd::cluster::Registry::from_clusters_file(&dir.path().join("nope.yaml"), WriteMode::Live)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope.yaml"), "{err}");
    std::fs::write(
        &file,
        "default: elsewhere\nclusters:\n  primary: {kubeconfig: all.kubeconfig, context: north}\n",
    )
    .unwrap();
    let err = recoverd::cluster::Registry::from_clusters_file(&file, WriteMode::Live)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("default cluster \"elsewhere\""), "{err}");
}

/// A patch step remembers the object the API server answered with, and the next patch of the
/// same object sends that object's resourceVersion as a precondition instead of reading it
/// first. The record's diff stays true: after a write by someone else the precondition fails
/// and the step reads the object again, so its diff is against what the other writer left.
#[tokio::test]
async fn a_patch_after_a_write_by_someone_else_diffs_against_what_that_write_left() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let clusters = support::shared();
    let ns = clusters.namespace("patch-seen").await;
    let cms: Api<ConfigMap> = Api::namespaced(clusters.client("north").await, &ns);
    let cm = serde_json::from_value(json!({"metadata": {"name": "seen"}, "data": {"a": "0"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let reg = registry(clusters, WriteMode::Live).await;
    let step = |name: &str, key: &str, value: &str| {
        format!(
            "  - name: {name}\n    type: patch\n    cluster: north\n    patch: {{apiVersion: v1, resource: configmaps, namespace: {ns}, name: seen, override: {{fieldPath: data.{key}, value: {{raw: \"{value}\"}}}}}}\n"
        )
    };
    let compile = |steps: String| {
        let text = format!(
            "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: seen, namespace: ops}}\nspec:\n  steps:\n{steps}"
        );
        let (mut plans, errors) = recoverd::plan::load_str(std::path::Path::new("seen.yaml"), &text);
        assert!(errors.is_empty(), "{errors:?}");
        recoverd::plan::compile_one(&plans.remove(0), None).unwrap()
    };

    let first = compile(step("a", "a", "1") + &step("b", "b", "1") + &step("a-again", "a", "2"));
    let record = run(reg.clone(), &first, &ns, &[]).await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let diffs: Vec<_> = record.steps.iter().map(|s| s.diff.clone().unwrap()).collect();
    assert_eq!(
        diffs,
        [
            json!([{"op": "replace", "path": "/data/a", "value": "1"}]),
            json!([{"op": "add", "path": "/data/b", "value": "1"}]),
            json!([{"op": "replace", "path": "/data/a", "value": "2"}]),
        ]
    );

    // Someone else writes in between: the next patch's diff does not show their change.
    let other = json!({"data": {"c": "theirs", "b": "2"}});
    cms.patch("seen", &PatchParams::default(), &Patch::Merge(&other))
        .await
        .unwrap();
    let second = compile(step("a", "a", "3"));
    let record = run(reg.clone(), &second, &ns, &[]).await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(
        record.steps[0].diff,
        Some(json!([{"op": "replace", "path": "/data/a", "value": "3"}]))
    );
    let now = cms.get("seen").await.unwrap().data.unwrap();
    assert_eq!(
        now.into_iter().collect::<Vec<_>>(),
        [("a", "3"), ("b", "2"), ("c", "theirs")].map(|(k, v)| (k.to_string(), v.to_string()))
    );

    // Deleted and created again (a new object, a new resourceVersion): read again, not refused.
    cms.delete("seen", &Default::default()).await.unwrap();
    let cm = serde_json::from_value(json!({"metadata": {"name": "seen"}, "data": {"a": "new"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let record = run(reg, &compile(step("a", "a", "4")), &ns, &[]).await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(
        record.steps[0].diff,
        Some(json!([{"op": "replace", "path": "/data/a", "value": "4"}]))
    );
}
