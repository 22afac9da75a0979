//! The executor against real kube-apiservers: every step type, on the clusters it names.

mod support;

use recoverd::cluster::WriteMode;
use recoverd::run::record::{Phase, StepStatus};
use serde_json::json;
use support::run::{field, plan, registry, run, seed, world_in_namespace};

const CNPG: &str = "postgresql.cnpg.io/v1";
const TOKEN: &str = "eyJ0b2tlbiI6ImRlbW90aW9uLTAwMSJ9";

#[tokio::test]
async fn cnpg_switchover_demotes_hands_over_the_token_promotes_and_redirects_the_proxy() {
    let clusters = support::shared();
    let ns = clusters.namespace("switchover").await;
    let reg = registry(clusters, WriteMode::Live).await;
    let (_dir, world) = world_in_namespace("cnpg.yaml", &ns);
    let (_seeded, reactors) = seed(reg.clone(), &world).await;

    let record = run(reg.clone(), &plan("cnpg-switchover.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{:#?}", record);
    let names: Vec<_> = record
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.status))
        .collect();
    assert!(
        names.iter().all(|(_, s)| *s == StepStatus::Succeeded),
        "{names:?}"
    );
    assert_eq!(record.outputs["DemotionToken"], json!(TOKEN));
    assert_eq!(reactors.fired(), 2);
    assert_eq!(
        field(
            &reg,
            "north",
            CNPG,
            "clusters",
            &ns,
            "pg-north",
            "spec.replica.primary"
        )
        .await,
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
            "spec.replica.primary"
        )
        .await,
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
    assert!(demote
        .object
        .as_deref()
        .unwrap()
        .contains(&format!("{ns}/pg-north")));
    assert_eq!(
        demote.diff,
        Some(json!([{"op": "replace", "path": "/spec/replica/primary", "value": "pg-south"}]))
    );
    assert!(record
        .steps
        .iter()
        .all(|s| s.duration_ms.is_some() && s.started_at.is_some()));
}
