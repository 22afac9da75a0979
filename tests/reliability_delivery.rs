//! Reliability suite R1 (delivery): however often and from wherever an alert arrives, one
//! incident makes one run; many incidents at once each make theirs; and a dry run in flight
//! changes none of it. `recoverd serve` runs as a process; real clustered Alertmanagers deliver
//! beside direct POSTs; each run's step calls a hook here that counts executions.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use support::alertmanager::{AlertmanagerPair, Timings};
use support::server::{counting_hook, eventually, nowhere_kubeconfig, payload, serve_token_file, ServeProcess};

/// An auto plan matching `labels` whose first step calls `hook/step/{n}` and whose second holds
/// it active for a while (a dry run sends no POST, but does pause).
fn plan(name: &str, labels: &str, hook: &str, n: usize) -> String {
    format!(
        "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: {name}, namespace: ops}}\nspec:\n  alertLabels: {labels}\n  steps:\n  - {{name: call, type: http, http: {{url: \"{hook}/step/{n}\", method: POST}}}}\n  - {{name: hold, type: wait, wait: {{duration: 2s}}}}\n"
    )
}

async fn runs_of(serve: &ServeProcess, plan: &str) -> Vec<Value> {
    serve.get(&format!("/api/v1/runs?plan={plan}&limit=1000")).await["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn live(runs: &[Value]) -> Vec<&Value> {
    runs.iter().filter(|r| r["mode"] == "live").collect()
}

async fn start_dry_run(serve: &ServeProcess, plan: &str) {
    let (status, run) = serve
        .post(&format!("/api/v1/plans/{plan}/runs"), &json!({"dryRun": true}))
        .await;
    assert_eq!(status, 201, "{run}");
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_resends_from_two_ha_alertmanagers_and_direct_posts_make_one_run() {
    let (hook_url, hits) = counting_hook(1).await;
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    write(
        &plans,
        "resend.yaml",
        &plan("resend", "{alertname: R1Down}", &hook_url, 0),
    );
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    start_dry_run(&serve, "ops/resend").await;

    let am = AlertmanagerPair::start(
        2,
        &format!("{}/api/v1/alerts", serve.url),
        &serve_token_file(dir.path()),
        Timings {
            group_wait: Duration::from_millis(100),
            group_interval: Duration::from_millis(500),
            repeat_interval: Duration::from_millis(500),
        },
    );
    let labels = [("alertname", "R1Down"), ("instance", "pg-north")];
    tokio::task::block_in_place(|| am.fire(&labels, &[("summary", "pg-north down")]));
    eventually("the alert's run", Duration::from_secs(60), || async {
        live(&runs_of(&serve, "ops/resend").await).len() == 1
    })
    .await;
    let id = live(&runs_of(&serve, "ops/resend").await)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = serve.get(&format!("/api/v1/runs/{id}")).await;
    let fingerprint = run["trigger"]["fingerprint"].as_str().unwrap().to_string();
    let starts_at = run["trigger"]["startsAt"].as_str().unwrap().to_string();

    // The same incident, posted directly 1000 times, 50 at a time, while the pair keeps resending.
    let body = payload(
        "firing",
        json!({"alertname": "R1Down", "instance": "pg-north"}),
        &fingerprint,
        &starts_at,
    );
    for _ in 0..20 {
        let replies = futures::future::join_all((0..50).map(|_| serve.post("/api/v1/alerts", &body))).await;
        for (status, reply) in replies {
            assert_eq!(status, 202, "{reply}");
            assert_eq!(reply["alerts"][0]["action"], "deduplicated", "{reply}");
            assert_eq!(reply["alerts"][0]["runId"], id.as_str(), "{reply}");
        }
    }
    eventually("the run to finish", Duration::from_secs(60), || async {
        serve.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Succeeded"
    })
    .await;
    let runs = runs_of(&serve, "ops/resend").await;
    assert_eq!(live(&runs).len(), 1, "{runs:#?}");
    assert_eq!(hits[0].load(Ordering::SeqCst), 1, "the step ran once");
    assert!(
        !serve.log_text().contains("alert deduplicated"),
        "resends are logged at debug, not info"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_incidents_of_fifty_plans_at_once_make_fifty_runs_each_once() {
    const N: usize = 50;
    let (hook_url, hits) = counting_hook(N).await;
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    for i in 0..N {
        write(
            &plans,
            &format!("p{i}.yaml"),
            &plan(
                &format!("p{i}"),
                &format!("{{alertname: Incident, service: s{i}}}"),
                &hook_url,
                i,
            ),
        );
    }
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    // Dry runs of every tenth plan are in flight throughout.
    for i in (0..N).step_by(10) {
        start_dry_run(&serve, &format!("ops/p{i}")).await;
    }
    // Every incident delivered three times, all at once.
    let bodies: Vec<Value> = (0..N)
        .flat_map(|i| {
            let body = payload(
                "firing",
                json!({"alertname": "Incident", "service": format!("s{i}")}),
                &format!("fp-{i}"),
                "2026-11-21T10:00:00Z",
            );
            [body.clone(), body.clone(), body]
        })
        .collect();
    let replies = futures::future::join_all(bodies.iter().map(|b| serve.post("/api/v1/alerts", b))).await;
    let mut started = 0;
    for (status, reply) in &replies {
        assert_eq!(*status, 202, "{reply}");
        let action = reply["alerts"][0]["action"].as_str().unwrap();
        assert!(action == "started" || action == "deduplicated", "{reply}");
        started += usize::from(action == "started");
    }
    assert_eq!(started, N, "one start per incident");
    eventually("every incident's step to run", Duration::from_secs(60), || async {
        hits.iter().all(|h| h.load(Ordering::SeqCst) >= 1)
    })
    .await;
    for i in 0..N {
        let runs = runs_of(&serve, &format!("ops/p{i}")).await;
        assert_eq!(live(&runs).len(), 1, "plan p{i}: {runs:#?}");
        assert_eq!(hits[i].load(Ordering::SeqCst), 1, "plan p{i} ran once");
    }
}
