//! A ✔ is a fact about the cluster: each write is read back from what the API server answered,
//! a dry run stands in only for what its own writes would have produced, secrets read from the
//! cluster stay secret, and a missing object never satisfies a comparison. On the real test
//! apiservers (v1.20.2 prunes unknown fields silently; v1.25+ also refuses them with
//! `fieldValidation=Strict`).

mod support;

use std::process::Command;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use recoverd::cluster::WriteMode;
use recoverd::plan::Plan;
use recoverd::run::record::{Phase, StepStatus};
use serde_json::json;
use support::clusters::modern_apiserver;
use support::run::{cnpg_world, field, plan_in, registry, run};

const CNPG: &str = "postgresql.cnpg.io/v1";

fn truth(file: &str) -> Plan {
    plan_in("truth", file)
}

#[tokio::test]
async fn kubectl_jsonpath_braces_read_and_write_the_field_they_name() {
    let world = cnpg_world("kubectl-paths").await;

    let record = run(world.registry.clone(), &truth("kubectl-paths.yaml"), &world.ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(record.outputs["Primary"], json!("pg-north"));
    let primary = field(
        &world.registry,
        "north",
        CNPG,
        "clusters",
        &world.ns,
        "pg-north",
        "spec.replica.primary",
    )
    .await;
    assert_eq!(primary, Some(json!("pg-south")));
}

#[tokio::test]
async fn a_misspelled_override_fails_live_and_in_a_dry_run_and_changes_nothing() {
    let world = cnpg_world("misspelled").await;
    let clusters = support::shared();

    for mode in [WriteMode::DryRun, WriteMode::Live] {
        let reg = registry(clusters, mode).await;
        let record = run(reg, &truth("misspelled-override.yaml"), &world.ns, &[]).await;

        assert_eq!(record.phase, Phase::Failed, "{mode:?}: {record:#?}");
        let step = &record.steps[0];
        assert_eq!(step.status, StepStatus::Failed);
        assert_eq!(step.reason.as_deref(), Some("not-applied"), "{step:#?}");
        let error = step.error.as_deref().unwrap();
        assert!(error.contains("primry"), "{error}");
        if modern_apiserver() {
            // v1.25+: fieldValidation=Strict refuses the unknown field outright.
            assert!(error.contains("not in the schema"), "{error}");
        } else {
            // v1.20: pruned with a 200; the read-back catches it.
            assert!(
                error.contains("the API server dropped spec.replica.primry: the field is not in the schema of clusters.postgresql.cnpg.io"),
                "{error}"
            );
        }
    }
    let replica = field(
        &world.registry,
        "north",
        CNPG,
        "clusters",
        &world.ns,
        "pg-north",
        "spec.replica",
    )
    .await
    .unwrap();
    assert_eq!(replica["primary"], json!("pg-north"));
    assert!(replica.get("primry").is_none(), "{replica}");
}

#[tokio::test]
async fn a_status_written_through_the_main_resource_is_not_a_success() {
    let world = cnpg_world("status-main").await;

    let record = run(
        world.registry.clone(),
        &truth("status-through-main-resource.yaml"),
        &world.ns,
        &[],
    )
    .await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[0];
    assert_eq!(step.reason.as_deref(), Some("not-applied"), "{step:#?}");
    let error = step.error.as_deref().unwrap();
    assert!(
        error.contains("status.demotionToken") && error.contains("subresourceStatus: true"),
        "{error}"
    );
}

#[tokio::test]
async fn an_applied_manifest_with_a_field_the_schema_lacks_fails() {
    let world = cnpg_world("misspelled-apply").await;

    let record = run(world.registry.clone(), &truth("misspelled-apply.yaml"), &world.ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[0];
    assert_eq!(step.reason.as_deref(), Some("not-applied"), "{step:#?}");
    assert!(step.error.as_deref().unwrap().contains("primry"), "{step:#?}");
}

#[tokio::test]
async fn a_dry_run_stands_in_only_for_fields_its_own_writes_would_produce() {
    let world = cnpg_world("dry-reads").await;
    let dry = registry(support::shared(), WriteMode::DryRun).await;

    let record = run(dry.clone(), &truth("dry-run-reads.yaml"), &world.ns, &[]).await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    // pg-north was (dry-run) demoted: its token would appear.
    assert_eq!(record.outputs["Token"], json!("dry-run-token"));

    let record = run(dry, &truth("dry-run-reads.yaml"), &world.ns, &[("typo", json!("true"))]).await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let typo = &record.steps[2];
    assert_eq!(typo.reason.as_deref(), Some("field-missing"), "{typo:#?}");
    assert!(
        typo.error.as_deref().unwrap().contains("status.demotionTokn"),
        "{typo:#?}"
    );

    // Of an object the dry run wrote, only a status (what the operator writes in response)
    // is stood in for: a misspelled spec path fails as live.
    let record = run(
        registry(support::shared(), WriteMode::DryRun).await,
        &truth("dry-run-reads.yaml"),
        &world.ns,
        &[("typo", json!("written"))],
    )
    .await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let typo = &record.steps[3];
    assert_eq!(typo.reason.as_deref(), Some("field-missing"), "{typo:#?}");
}

#[tokio::test]
async fn a_value_read_from_a_secret_is_used_but_never_shown() {
    let clusters = support::shared();
    let ns = clusters.namespace("secret-copy").await;
    for cluster in ["north", "south"] {
        let client = clusters.client(cluster).await;
        if cluster == "south" {
            let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
                )
                .await;
        }
        if cluster == "north" {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": "replication-tls", "namespace": ns},
                "stringData": {"tls.key": "-----BEGIN PRIVATE KEY----- hunter2-key-bytes"}
            }))
            .unwrap();
            Api::<Secret>::namespaced(client, &ns)
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
        }
    }
    let plain = "-----BEGIN PRIVATE KEY----- hunter2-key-bytes";
    let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
    let leaks = |text: &str| -> Vec<&str> {
        ["hunter2", "HUNTER2", encoded.trim_end_matches('=')]
            .into_iter()
            .filter(|n| text.contains(n))
            .collect()
    };
    let reg = registry(clusters, WriteMode::Live).await;

    let record = run(reg.clone(), &truth("copy-secret.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(record.outputs["Key"], json!("<redacted>"));
    let copied = field(
        &reg,
        "south",
        "v1",
        "secrets",
        &ns,
        "replication-tls",
        "data[\"tls.key\"]",
    )
    .await;
    assert_eq!(copied, Some(json!(encoded)), "the secret was used");
    let derived = field(&reg, "south", "v1", "configmaps", &ns, "derived", "data.shout").await;
    assert_eq!(derived, Some(json!(plain.to_uppercase())));
    let text = serde_json::to_string(&record).unwrap();
    assert!(leaks(&text).is_empty(), "secret in the record: {text}");
    let debug = format!("{record:?}");
    assert!(leaks(&debug).is_empty(), "secret in the record's Debug: {debug}");

    // The CLI: progress, the JSON record and the logs.
    let out = Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(["run", "--json", "--log", "debug", "--kubeconfig"])
        .arg(clusters.kubeconfig())
        .arg(support::clusters::repo_dir().join("tests/data/plans/truth/copy-secret.yaml"))
        .args(["--param", &format!("ns={ns}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is only the record with --json ({e}): {stdout}"));
    assert_eq!(json["phase"], "Succeeded");
    assert!(stderr.contains("✔ read-key"), "progress goes to stderr: {stderr}");
    assert!(leaks(&stdout).is_empty(), "secret on stdout: {stdout}");
    assert!(leaks(&stderr).is_empty(), "secret on stderr: {stderr}");
}

#[tokio::test]
async fn a_deleted_object_does_not_satisfy_not_equals_its_old_uid() {
    let clusters = support::shared();
    let ns = clusters.namespace("recreated").await;
    let cms: Api<ConfigMap> = Api::namespaced(clusters.client("north").await, &ns);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "instance"}, "data": {"v": "1"}})).unwrap();
    let old = cms.create(&PostParams::default(), &cm).await.unwrap();
    let old_uid = old.metadata.uid.unwrap();
    let reg = registry(clusters, WriteMode::Live).await;
    let plan = truth("wait-recreated.yaml");
    let ns2 = ns.clone();
    let running = tokio::spawn(async move { run(reg, &plan, &ns2, &[]).await });

    // The plan is waiting: delete the object, and only later create it again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    cms.delete("instance", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!running.is_finished(), "the wait passed while the object was gone");
    let new = cms.create(&PostParams::default(), &cm).await.unwrap();
    let record = running.await.unwrap();

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let observed = &record.steps[1].inputs.as_ref().unwrap()["observed"];
    assert_eq!(observed, &json!(new.metadata.uid.unwrap()), "{record:#?}");
    assert_ne!(observed, &json!(old_uid));
}

#[tokio::test]
async fn two_plans_applying_different_keys_keep_each_others_and_a_conflict_names_the_owner() {
    let clusters = support::shared();
    let ns = clusters.namespace("keys").await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(clusters.client("edge").await)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await;
    let reg = registry(clusters, WriteMode::Live).await;

    for plan in ["keys-a.yaml", "keys-b.yaml"] {
        let record = run(reg.clone(), &truth(plan), &ns, &[]).await;
        assert_eq!(record.phase, Phase::Succeeded, "{plan}: {record:#?}");
    }
    let data = field(&reg, "edge", "v1", "configmaps", &ns, "shared", "data")
        .await
        .unwrap();
    assert_eq!(
        data,
        json!({"a.cfg": "written by plan a", "b.cfg": "written by plan b"}),
        "plan b's apply removed plan a's key"
    );

    let record = run(reg.clone(), &truth("keys-conflict.yaml"), &ns, &[]).await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[0];
    assert_eq!(step.reason.as_deref(), Some("conflict"), "{step:#?}");
    let error = step.error.as_deref().unwrap();
    assert!(
        error.contains("recoverd/recoverd/keys-a") && error.contains("force: true"),
        "{error}"
    );
    let a = field(&reg, "edge", "v1", "configmaps", &ns, "shared", "data[\"a.cfg\"]").await;
    assert_eq!(a, Some(json!("written by plan a")));
}

#[tokio::test]
async fn a_template_file_symlinked_out_of_the_plan_directory_is_not_read() {
    let clusters = support::shared();
    let ns = clusters.namespace("confined").await;
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("t.j2")).unwrap();
    let plan_file = dir.path().join("plan.yaml");
    std::fs::write(
        &plan_file,
        "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: confined, namespace: recoverd}\n\
         spec:\n  params: {ns: db}\n  steps:\n  - name: render\n    type: apply\n    cluster: edge\n    apply:\n      \
         target: {kind: ConfigMap, namespace: \"{{ Values.ns }}\", name: leaked, key: content}\n      templateFrom: {file: t.j2}\n",
    )
    .unwrap();
    let (mut plans, errors) = recoverd::plan::load_paths(std::slice::from_ref(&plan_file));
    assert!(errors.is_empty(), "{errors:?}");
    let plan = recoverd::plan::compile_one(&plans.remove(0), None).unwrap();
    assert_eq!(plan.base_dir.as_deref(), Some(dir.path()));
    let reg = registry(clusters, WriteMode::Live).await;

    let record = run(reg, &plan, &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let error = record.steps[0].error.as_deref().unwrap();
    assert!(error.contains("out of the plan's directory"), "{error}");
}

#[tokio::test]
async fn a_value_printed_into_a_url_cannot_change_the_endpoint_called() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(uri.to_string());
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let reg = registry(support::shared(), WriteMode::Live).await;
    let evil = "../../admin?x=1&fixed=0#";

    let record = run(
        reg,
        &truth("http-url-values.yaml"),
        "db",
        &[("url", json!(url)), ("target", json!(evil))],
    )
    .await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let called = seen.lock().unwrap().clone();
    let encoded = "..%2F..%2Fadmin%3Fx%3D1%26fixed%3D0%23";
    assert_eq!(called, [format!("/hooks/{encoded}?who={encoded}")]);
    // The record shows the URL actually called.
    let shown = record.steps[0].object.as_deref().unwrap();
    assert!(shown.ends_with(&format!("/hooks/{encoded}?who={encoded}")), "{shown}");
}

/// A delete of a namespaced kind that names no namespace fails, saying so, and deletes nothing:
/// it never acts in whatever namespace the kubeconfig defaults to, nor reports ✔ for objects
/// it looked for in the wrong place.
#[tokio::test]
async fn a_delete_without_a_namespace_fails_and_deletes_nothing() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    let clusters = support::shared();
    let ns = clusters.namespace("no-ns-delete").await;
    let cms: Api<ConfigMap> = Api::namespaced(clusters.client("north").await, &ns);
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "keep", "labels": {"app": "x"}}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: p, namespace: ops}\n\
         spec:\n  mode: manual\n  steps:\n\
         \x20 - name: by-selector\n    type: delete\n    cluster: north\n\
         \x20   delete: {apiVersion: v1, resource: configmaps, labelSelector: app=x}\n",
    )
    .unwrap();
    let (mut plans, errors) = recoverd::plan::load_paths(std::slice::from_ref(&path));
    assert!(errors.is_empty(), "{errors:?}");
    let plan = recoverd::plan::compile_one(&plans.remove(0), None).unwrap();
    let reg = support::run::registry(clusters, recoverd::cluster::WriteMode::Live).await;
    let record = support::run::run(reg, &plan, &ns, &[]).await;
    assert_eq!(record.phase, recoverd::record::Phase::Failed, "{record:#?}");
    assert_eq!(record.steps[0].reason.as_deref(), Some("no-namespace"));
    assert!(
        record.steps[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("names no `namespace`"),
        "{record:#?}"
    );
    assert!(cms.get_opt("keep").await.unwrap().is_some(), "nothing was deleted");
}
