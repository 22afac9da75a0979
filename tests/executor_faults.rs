//! The executor when clusters misbehave: the fault-injecting proxy in front of a real
//! kube-apiserver returns errors, resets connections, hangs, cuts watches, or goes away.

mod support;

use std::time::Duration;

use recoverd::run::record::{Phase, StepStatus};
use serde_json::json;
use support::proxy::Faults;
use support::run::{field, plan, run, FaultyWorld};

const CNPG: &str = "postgresql.cnpg.io/v1";

/// The CNPG world, with `north` behind a fault-injecting proxy.
async fn rig(test: &str) -> FaultyWorld {
    FaultyWorld::new(test, &["north"]).await
}

#[tokio::test]
async fn retries_get_a_patch_through_injected_server_errors() {
    let r = rig("retry-500").await;
    // kube's own client retries 503/429 by itself; 500s reach recoverd's retries.
    r.proxy("north").set(Faults {
        fail_next: 2,
        error_status: 500,
        ..Default::default()
    });

    let record = run(r.proxied.clone(), &plan("retried-demote.yaml"), &r.ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(record.steps[0].attempts, 3, "two failed attempts, then success");
    assert!(r.proxy("north").stats().errors >= 2);
    assert_eq!(
        field(
            &r.direct,
            "north",
            CNPG,
            "clusters",
            &r.ns,
            "pg-north",
            "spec.replica.primary"
        )
        .await,
        Some(json!("pg-south"))
    );
}

#[tokio::test]
async fn retries_get_a_patch_through_connections_reset_mid_response() {
    let r = rig("retry-reset").await;
    // Every patch (the only requests with recoverd's field manager) is cut mid-response until
    // two have been; then the proxy behaves.
    r.proxy("north").set(Faults {
        reset_rate: 1.0,
        only_path: Some("fieldManager=recoverd".into()),
        ..Default::default()
    });
    let demote = plan("retried-demote.yaml");
    let runner = run(r.proxied.clone(), &demote, &r.ns, &[]);
    let healer = async {
        while r.proxy("north").stats().resets < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        r.proxy("north").clear();
    };
    let (record, ()) = tokio::join!(runner, healer);

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert!(record.steps[0].attempts >= 3, "{:#?}", record.steps[0]);
    assert_eq!(r.proxy("north").stats().resets, 2);
    assert_eq!(
        field(
            &r.direct,
            "north",
            CNPG,
            "clusters",
            &r.ns,
            "pg-north",
            "spec.replica.primary"
        )
        .await,
        Some(json!("pg-south"))
    );
}

#[tokio::test]
async fn a_hanging_apiserver_costs_one_attempt_timeout_per_try_then_fails_the_step() {
    let r = rig("hang").await;
    r.proxy("north").set(Faults {
        timeout_rate: 1.0,
        ..Default::default()
    });

    let started = std::time::Instant::now();
    let record = run(r.proxied.clone(), &plan("retried-demote.yaml"), &r.ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed);
    let step = &record.steps[0];
    assert_eq!(step.attempts, 5, "retries: 4");
    assert_eq!(step.reason.as_deref(), Some("timeout"));
    assert!(
        step.error.as_deref().unwrap().contains("attempt timed out after 3s"),
        "{step:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "bounded: 5 × 3s plus backoff"
    );
    assert_eq!(
        field(
            &r.direct,
            "north",
            CNPG,
            "clusters",
            &r.ns,
            "pg-north",
            "spec.replica.primary"
        )
        .await,
        Some(json!("pg-north"))
    );
}

#[tokio::test]
async fn persistent_server_errors_exhaust_the_retries_with_a_clear_reason() {
    let r = rig("exhaust").await;
    r.proxy("north").set(Faults {
        error_rate: 1.0,
        error_status: 500,
        ..Default::default()
    });

    let record = run(r.proxied.clone(), &plan("retried-demote.yaml"), &r.ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed);
    let step = &record.steps[0];
    assert_eq!(step.attempts, 5);
    assert_eq!(step.status, StepStatus::Failed);
    assert!(
        matches!(step.reason.as_deref(), Some("server-error" | "unreachable")),
        "{step:#?}"
    );
    assert!(step.error.as_deref().unwrap().contains("injected fault"), "{step:#?}");
    assert!(
        record.error.as_deref().unwrap().contains("demote-north") && record.error.as_deref().unwrap().contains("north")
    );
}

#[tokio::test]
async fn a_wait_survives_its_watch_being_cut_and_still_sees_the_condition() {
    let r = rig("watch-cut").await;
    // Every watch ends after one event; the reactor's token arrives later, on a new watch.
    r.proxy("north").set(Faults {
        watch_event_limit: Some(1),
        ..Default::default()
    });

    let record = run(r.proxied.clone(), &plan("retried-demote.yaml"), &r.ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(
        record.steps[1].inputs.as_ref().unwrap()["observed"],
        json!("eyJ0b2tlbiI6ImRlbW90aW9uLTAwMSJ9")
    );
}

#[tokio::test]
async fn a_wait_rides_out_the_cluster_being_unreachable_for_a_while() {
    let r = rig("down-up").await;
    let proxy = r.proxy("north");
    let demote = plan("retried-demote.yaml");
    let runner = run(r.proxied.clone(), &demote, &r.ns, &[]);
    let flapper = async {
        // Once the demote went through, take north away for 3 seconds, then bring it back.
        for _ in 0..200 {
            if field(
                &r.direct,
                "north",
                CNPG,
                "clusters",
                &r.ns,
                "pg-north",
                "spec.replica.primary",
            )
            .await
                == Some(json!("pg-south"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.update(|f| f.down = true);
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.update(|f| f.down = false);
    };
    let (record, ()) = tokio::join!(runner, flapper);

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(record.steps[1].status, StepStatus::Succeeded);
    assert!(proxy.stats().aborted_connections >= 1 || proxy.stats().connections >= 2);
}
