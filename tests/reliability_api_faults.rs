//! Suite R3 (README: Reliability): recoverd against API servers that misbehave, through the
//! fault-injecting proxy in front of a real kube-apiserver. A plan with retries gets through a
//! cluster failing about 30 % of its requests (server errors, requests never answered,
//! connections reset mid-response, watches cut); a cluster that stays down fails its step after
//! exactly retries + 1 bounded attempts, names cluster and reason, and runs `onFailure`.

mod support;

use recoverd::run::record::{Phase, StepStatus};
use serde_json::json;
use support::proxy::Faults;
use support::run::{field, plan_in, run, FaultyWorld};

const CNPG: &str = "postgresql.cnpg.io/v1";
const TOKEN: &str = "eyJ0b2tlbiI6ImRlbW90aW9uLTAwMSJ9";

/// The CNPG world, with `north` and `south` behind fault-injecting proxies.
async fn rig(test: &str) -> FaultyWorld {
    FaultyWorld::new(test, &["north", "south"]).await
}

#[tokio::test]
async fn the_switchover_succeeds_with_a_third_of_the_api_requests_failing() {
    let r = rig("r3-flaky").await;
    let flaky = Faults {
        error_rate: 0.15,
        error_status: 500,
        timeout_rate: 0.05,
        reset_rate: 0.1,
        watch_event_limit: Some(1),
        ..Default::default()
    };
    r.proxy("north").set(flaky.clone());
    r.proxy("south").set(flaky);

    let record = run(
        r.proxied.clone(),
        &plan_in("reliability", "switchover-retried.yaml"),
        &r.ns,
        &[],
    )
    .await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    // The faults were really there, and recoverd's retries met some of them.
    let (n, s) = (r.proxy("north").stats(), r.proxy("south").stats());
    let faults = n.errors + n.timeouts + n.resets + s.errors + s.timeouts + s.resets;
    assert!(faults > 0, "no fault was injected: {n:?} {s:?}");
    assert!(
        record.steps.iter().any(|s| s.attempts > 1) || n.watch_cuts + s.watch_cuts > 0,
        "nothing was retried or resumed: {record:#?}"
    );
    // And the end state is the switchover's, read directly from the clusters.
    let promoted = field(
        &r.direct,
        "south",
        CNPG,
        "clusters",
        &r.ns,
        "pg-south",
        "spec.replica.promotionToken",
    )
    .await;
    assert_eq!(promoted, Some(json!(TOKEN)));
    let primary = field(
        &r.direct,
        "north",
        CNPG,
        "clusters",
        &r.ns,
        "pg-north",
        "spec.replica.primary",
    )
    .await;
    assert_eq!(primary, Some(json!("pg-south")));
}

#[tokio::test]
async fn a_cluster_that_stays_down_fails_after_its_bounded_attempts_and_compensation_runs() {
    let r = rig("r3-down").await;
    r.proxy("north").set(Faults {
        down: true,
        ..Default::default()
    });

    let record = run(
        r.proxied.clone(),
        &plan_in("reliability", "demote-or-compensate.yaml"),
        &r.ns,
        &[],
    )
    .await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let demote = &record.steps[0];
    assert_eq!(demote.status, StepStatus::Failed);
    assert_eq!(demote.attempts, 3, "retries: 2 means three bounded attempts");
    assert_eq!(demote.reason.as_deref(), Some("unreachable"), "{demote:#?}");
    assert_eq!(demote.cluster.as_deref(), Some("north"));
    let error = record.error.as_deref().unwrap();
    assert!(error.contains("north") && error.contains("demote-north"), "{error}");
    // Each attempt was bounded by the step's timeout (2s): three of them, with backoff between.
    assert!(demote.duration_ms.unwrap() < 3 * 2000 + 2000, "{demote:#?}");
    assert_eq!(record.on_failure[0].status, StepStatus::Succeeded, "{record:#?}");
    let flagged = field(
        &r.direct,
        "edge",
        "v1",
        "configmaps",
        &r.ns,
        "haproxy-config",
        "metadata.annotations[\"recoverd/failed-run\"]",
    )
    .await;
    assert_eq!(flagged, Some(json!("test")));
}
