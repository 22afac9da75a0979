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
use recoverd::executor::RunnablePlan;
use recoverd::run::record::{Phase, StepStatus};
use serde_json::json;
use support::clusters::modern_apiserver;
use support::run::{cnpg_world, field, plan_in, registry, run};

const CNPG: &str = "postgresql.cnpg.io/v1";

fn truth(file: &str) -> RunnablePlan {
    plan_in("truth", file)
}

#[tokio::test]
async fn kubectl_jsonpath_braces_read_and_write_the_field_they_name() {
    let world = cnpg_world("kubectl-paths").await;

    let record = run(
        world.registry.clone(),
        &truth("kubectl-paths.yaml"),
        &world.ns,
        &[],
    )
    .await;

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

    let record = run(
        world.registry.clone(),
        &truth("misspelled-apply.yaml"),
        &world.ns,
        &[],
    )
    .await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[0];
    assert_eq!(step.reason.as_deref(), Some("not-applied"), "{step:#?}");
    assert!(
        step.error.as_deref().unwrap().contains("primry"),
        "{step:#?}"
    );
}

#[tokio::test]
async fn a_dry_run_stands_in_only_for_fields_its_own_writes_would_produce() {
    let world = cnpg_world("dry-reads").await;
    let dry = registry(support::shared(), WriteMode::DryRun).await;

    let record = run(dry.clone(), &truth("dry-run-reads.yaml"), &world.ns, &[]).await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    // pg-north was (dry-run) demoted: its token would appear.
    assert_eq!(record.outputs["Token"], json!("dry-run-token"));

    let record = run(
        dry,
        &truth("dry-run-reads.yaml"),
        &world.ns,
        &[("typo", json!("true"))],
    )
    .await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let typo = &record.steps[2];
    assert_eq!(typo.reason.as_deref(), Some("field-missing"), "{typo:#?}");
    assert!(
        typo.error
            .as_deref()
            .unwrap()
            .contains("status.demotionTokn"),
        "{typo:#?}"
    );
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
    let derived = field(
        &reg,
        "south",
        "v1",
        "configmaps",
        &ns,
        "derived",
        "data.shout",
    )
    .await;
    assert_eq!(derived, Some(json!(plain.to_uppercase())));
    let text = serde_json::to_string(&record).unwrap();
    assert!(leaks(&text).is_empty(), "secret in the record: {text}");
    let debug = format!("{record:?}");
    assert!(
        leaks(&debug).is_empty(),
        "secret in the record's Debug: {debug}"
    );

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
    assert!(
        stderr.contains("✔ read-key"),
        "progress goes to stderr: {stderr}"
    );
    assert!(leaks(&stdout).is_empty(), "secret on stdout: {stdout}");
    assert!(leaks(&stderr).is_empty(), "secret on stderr: {stderr}");
}

#[tokio::test]
async fn a_deleted_object_does_not_satisfy_not_equals_its_old_uid() {
    let clusters = support::shared();
    let ns = clusters.namespace("recreated").await;
    let cms: Api<ConfigMap> = Api::namespaced(clusters.client("north").await, &ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "instance"}, "data": {"v": "1"}}))
            .unwrap();
    let old = cms.create(&PostParams::default(), &cm).await.unwrap();
    let old_uid = old.metadata.uid.unwrap();
    let reg = registry(clusters, WriteMode::Live).await;
    let plan = truth("wait-recreated.yaml");
    let ns2 = ns.clone();
    let running = tokio::spawn(async move { run(reg, &plan, &ns2, &[]).await });

    // The plan is waiting: delete the object, and only later create it again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    cms.delete("instance", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        !running.is_finished(),
        "the wait passed while the object was gone"
    );
    let new = cms.create(&PostParams::default(), &cm).await.unwrap();
    let record = running.await.unwrap();

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let observed = &record.steps[1].inputs.as_ref().unwrap()["observed"];
    assert_eq!(observed, &json!(new.metadata.uid.unwrap()), "{record:#?}");
    assert_ne!(observed, &json!(old_uid));
}
