//! `recoverd serve --store kube` against real apiservers: runs are `RecoveryRun` resources and
//! Leases decide which replica executes what. Two replicas told of one alert by two clustered
//! Alertmanagers (the real `prometheus-alertmanager`) run it once; a replica killed with SIGKILL
//! mid-run has its run finished by the other from the first unfinished step, counting every
//! write; `kubectl get recoveryruns` shows the columns. The store's own rules (one active run per
//! plan across replicas, cooldown, optimistic writes, the size limit, pages, retention) are
//! tested on `KubeStore` directly, each test in its own namespace of the shared clusters.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use recoverd::record::{Phase, RunMode, RunRecord, StepRecord, Trigger, TriggerKind};
use recoverd::run::store::kube::{KubeStore, KubeStoreConfig, MAX_STATUS_BYTES, TRUNCATED};
use recoverd::run::store::{ClaimRules, Refusal, Retention, RunStore, StoreError};
use serde_json::{json, Value};
use support::alertmanager::{AlertmanagerPair, Timings};
use support::clusters::repo_dir;
use support::server::{counting_hook, counts, eventually, serve_token_file, ServeProcess};

const HOME: &str = "north";
const LIMIT: Duration = Duration::from_secs(60);

fn clusters() -> &'static support::clusters::TestClusters {
    support::shared()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// recoverd's CRDs in the home cluster, once.
fn install_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        ok(clusters()
            .kubectl(HOME)
            .args(["apply", "-f"])
            .arg(repo_dir().join("crds/recoverd.io.yaml")));
        for attempt in 0.. {
            let out = clusters()
                .kubectl(HOME)
                .args(["wait", "--for=condition=established", "--timeout=60s"])
                .args(["crd/recoveryplans.recoverd.io", "crd/recoveryruns.recoverd.io"])
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(attempt < 50, "{}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

async fn store(ns: &str, identity: &str, lease: Duration) -> KubeStore {
    install_crds();
    let store = KubeStore::new(
        clusters().client(HOME).await,
        KubeStoreConfig {
            namespace: ns.into(),
            identity: identity.into(),
            lease_duration: lease,
        },
    );
    store.check().await.unwrap();
    store
}

fn record(id: &str, plan: &str, kind: TriggerKind) -> RunRecord {
    RunRecord {
        id: id.into(),
        plan: plan.into(),
        trigger: Trigger {
            kind,
            fingerprint: Some("fp".into()),
            ..Default::default()
        },
        // (v1.20.2 reads an empty string here as null, which the schema refuses.)
        plan_generation: "1".into(),
        created_at: Some(recoverd::record::now()),
        ..Default::default()
    }
}

const ONE_ACTIVE: ClaimRules = ClaimRules {
    one_active_per_plan: true,
    cooldown: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_is_claimed_once_and_one_plan_has_one_active_run_across_replicas() {
    let ns = clusters().namespace("kstore-claims").await;
    let (a, b) = (
        store(&ns, "replica-a", Duration::from_secs(15)).await,
        store(&ns, "replica-b", Duration::from_secs(15)).await,
    );
    let plan = format!("{ns}/p");
    // The plan is a resource in the runs' namespace: its runs are owned by it.
    let file = std::env::temp_dir().join(format!("{ns}-plan.yaml"));
    std::fs::write(
        &file,
        "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: p}\nspec:\n  alertLabels: {alertname: X}\n  steps:\n  - {name: s, type: http, http: {url: \"http://127.0.0.1:9/\"}}\n",
    )
    .unwrap();
    ok(clusters().kubectl(HOME).args(["apply", "-n", &ns, "-f"]).arg(&file));
    let uid =
        ok(clusters()
            .kubectl(HOME)
            .args(["get", "recoveryplan", "p", "-n", &ns, "-o", "jsonpath={.metadata.uid}"]));
    // The same incident at both replicas at once: one creates it, the other is told it exists.
    let first = record("a-0001", &plan, TriggerKind::Alert);
    let (x, y) = tokio::join!(a.claim(&first, ONE_ACTIVE), b.claim(&first, ONE_ACTIVE));
    let outcomes = [x.unwrap(), y.unwrap()];
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(Refusal::SameRun { existing }) if existing == "a-0001")),
        "{outcomes:?}"
    );
    let owners = ok(clusters().kubectl(HOME).args([
        "get",
        "recoveryrun",
        "a-0001",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].uid}",
    ]));
    assert_eq!(owners, format!("RecoveryPlan/{uid}"));
    // Two new incidents of the plan at two replicas at once: exactly one run starts.
    let mut running = b.get("a-0001").await.unwrap().expect("claimed");
    running.phase = Phase::Succeeded;
    // Only the replica whose claim created it may write it.
    let (winner, loser) = if outcomes[0].is_ok() { (&a, &b) } else { (&b, &a) };
    assert!(matches!(loser.save(&running).await, Err(StoreError::Conflict { .. })));
    winner.save(&running).await.unwrap();
    let (second, third) = (
        record("a-0002", &plan, TriggerKind::Alert),
        record("a-0003", &plan, TriggerKind::Alert),
    );
    let (x, y) = tokio::join!(a.claim(&second, ONE_ACTIVE), b.claim(&third, ONE_ACTIVE));
    let outcomes = [x.unwrap(), y.unwrap()];
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| matches!(o, Err(Refusal::ActiveRun { .. }))),
        "{outcomes:?}"
    );
    // Another plan is not held up, and a dry run never holds the slot.
    a.claim(
        &record("a-0004", &format!("{ns}/other"), TriggerKind::Alert),
        ONE_ACTIVE,
    )
    .await
    .unwrap()
    .unwrap();
    let mut dry = record("m-0005", &plan, TriggerKind::Manual);
    dry.mode = RunMode::DryRun;
    a.claim(&dry, ONE_ACTIVE).await.unwrap().unwrap();
    // Lists read a watch cache: they see the writes within moments.
    let mut active = 0;
    for _ in 0..100 {
        active = b.active_count().await.unwrap();
        if active == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(active, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooldown_holds_across_replicas_for_alert_runs() {
    let ns = clusters().namespace("kstore-cooldown").await;
    let (a, b) = (
        store(&ns, "replica-a", Duration::from_secs(15)).await,
        store(&ns, "replica-b", Duration::from_secs(15)).await,
    );
    let plan = format!("{ns}/p");
    let rules = ClaimRules {
        one_active_per_plan: true,
        cooldown: Some(Duration::from_secs(600)),
    };
    let mut first = record("a-0001", &plan, TriggerKind::Alert);
    a.claim(&first, rules).await.unwrap().unwrap();
    first.phase = Phase::Failed;
    a.save(&first).await.unwrap();
    assert_eq!(
        b.claim(&record("a-0002", &plan, TriggerKind::Alert), rules)
            .await
            .unwrap(),
        Err(Refusal::Cooldown { last: "a-0001".into() })
    );
    // A manual trigger has no cooldown (its rules carry none).
    b.claim(&record("m-0003", &plan, TriggerKind::Manual), ONE_ACTIVE)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_a_replica_that_lost_the_run_is_refused_and_transitions_race_safely() {
    let ns = clusters().namespace("kstore-writes").await;
    let (a, b) = (
        store(&ns, "replica-a", Duration::from_secs(15)).await,
        store(&ns, "replica-b", Duration::from_secs(15)).await,
    );
    let plan = format!("{ns}/p");
    let mut r = record("a-0001", &plan, TriggerKind::Alert);
    r.phase = Phase::WaitingForApproval;
    a.claim(&r, ONE_ACTIVE).await.unwrap().unwrap();
    // A double approval at two replicas: one wins.
    let mut approved = r.clone();
    approved.phase = Phase::Pending;
    let (x, y) = tokio::join!(
        a.transition(&approved, &[Phase::WaitingForApproval]),
        b.transition(&approved, &[Phase::WaitingForApproval])
    );
    assert_eq!([x.unwrap(), y.unwrap()].iter().filter(|w| **w).count(), 1);
    // Replica a writes a run; replica b then writes it (it took the run over): a's next write,
    // from its stale resourceVersion, is refused instead of overwriting b's.
    let mut running = record("a-0002", &format!("{ns}/q"), TriggerKind::Alert);
    running.phase = Phase::Running;
    a.claim(&running, ONE_ACTIVE).await.unwrap().unwrap();
    a.save(&running).await.unwrap();
    // b cannot write a run it has not acquired (fenced), then takes it over.
    let err = b.save(&running).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(b.acquire("a-0002").await.unwrap().is_some());
    running.error = Some("b's truth".into());
    b.save(&running).await.unwrap();
    running.error = Some("a's stale view".into());
    let err = a.save(&running).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(
        b.get("a-0002").await.unwrap().unwrap().error.as_deref(),
        Some("b's truth")
    );
}

/// A run's Lease reads as client-go's leader election writes one: its holder, when that holder
/// acquired it (kept across renewals), and how many times it changed hands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_lease_keeps_its_acquire_time_across_renewals_and_counts_a_takeover() {
    use k8s_openapi::api::coordination::v1::Lease;
    let ns = clusters().namespace("kstore-tenure").await;
    let leases: kube::Api<Lease> = kube::Api::namespaced(clusters().client(HOME).await, &ns);
    let lease_of = |id: &str| format!("recoverd-run-{id}");
    let read = |name: String| {
        let leases = leases.clone();
        async move {
            let spec = leases.get(&name).await.unwrap().spec.unwrap();
            (
                spec.holder_identity.unwrap_or_default(),
                spec.acquire_time.map(|t| t.0),
                spec.lease_transitions,
                spec.renew_time.map(|t| t.0),
            )
        }
    };
    let a = store(&ns, "replica-a", Duration::from_secs(3)).await;
    let mut running = record("a-0003", &format!("{ns}/p"), TriggerKind::Alert);
    running.phase = Phase::Running;
    a.claim(&running, ONE_ACTIVE).await.unwrap().unwrap();
    assert!(a.acquire("a-0003").await.unwrap().is_some());
    let (holder, acquired, transitions, renewed) = read(lease_of("a-0003")).await;
    assert_eq!(holder, "replica-a");
    assert!(acquired.is_some(), "acquireTime is set");
    assert_eq!(transitions, Some(0));
    // Renewed (every second with a 3 s Lease): the acquire time stays.
    eventually("the Lease to be renewed", Duration::from_secs(10), || {
        let read = read(lease_of("a-0003"));
        async move { read.await.3 != renewed }
    })
    .await;
    let (_, still, transitions, _) = read(lease_of("a-0003")).await;
    assert_eq!(still, acquired, "a renewal keeps acquireTime");
    assert_eq!(transitions, Some(0));
    // Replica a stops; b sees the Lease unchanged for its duration and takes the run over.
    drop(a);
    let b = store(&ns, "replica-b", Duration::from_secs(3)).await;
    eventually("replica b to find the run orphaned", Duration::from_secs(20), || {
        let b = &b;
        async move { b.orphaned().await.unwrap().iter().any(|r| r.id == "a-0003") }
    })
    .await;
    assert!(b.acquire("a-0003").await.unwrap().is_some());
    let (holder, taken, transitions, _) = read(lease_of("a-0003")).await;
    assert_eq!(holder, "replica-b");
    assert_eq!(transitions, Some(1), "a takeover is a transition");
    assert!(
        taken > acquired,
        "acquired anew at the takeover: {taken:?} after {acquired:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_object_size_limit_is_truncated_with_a_marker() {
    let ns = clusters().namespace("kstore-size").await;
    let a = store(&ns, "replica-a", Duration::from_secs(15)).await;
    let mut r = record("a-0001", &format!("{ns}/p"), TriggerKind::Alert);
    a.claim(&r, ClaimRules::default()).await.unwrap().unwrap();
    r.steps = (0..4)
        .map(|i| StepRecord {
            name: format!("dump-{i}"),
            outputs: [("stdout".to_string(), json!("x".repeat(600_000)))].into(),
            ..Default::default()
        })
        .collect();
    r.phase = Phase::Succeeded;
    a.save(&r).await.expect("a 2.4 MB record is written, cut to fit");
    let back = a.get("a-0001").await.unwrap().unwrap();
    assert_eq!(back.phase, Phase::Succeeded);
    assert_eq!(back.steps.len(), 4, "every step is kept");
    let out = back.steps[0].outputs["stdout"].as_str().unwrap();
    assert!(out.ends_with(TRUNCATED), "{}", &out[out.len() - 80..]);
    assert!(serde_json::to_vec(&back).unwrap().len() <= MAX_STATUS_BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_run_newest_first_and_retention_deletes_only_finished_runs() {
    let ns = clusters().namespace("kstore-pages").await;
    let a = store(&ns, "replica-a", Duration::from_secs(15)).await;
    let plan = format!("{ns}/p");
    for i in 0..5 {
        let mut r = record(&format!("a-000{i}"), &plan, TriggerKind::Alert);
        a.claim(&r, ClaimRules::default()).await.unwrap().unwrap();
        r.phase = if i == 4 { Phase::Running } else { Phase::Succeeded };
        a.save(&r).await.unwrap();
        // creationTimestamp has second resolution: the order needs distinct seconds.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Lists read a watch cache: wait until it has every run.
    for _ in 0..100 {
        if a.list(None, 10).await.unwrap().len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = a.page(Some(&plan), 2, token.as_deref()).await.unwrap();
        assert!(page.runs.len() <= 2);
        seen.extend(page.runs.into_iter().map(|r| r.id));
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, ["a-0004", "a-0003", "a-0002", "a-0001", "a-0000"]);
    let deleted = a
        .prune(Retention {
            max_runs: 1,
            max_age: Duration::from_secs(3600),
        })
        .await
        .unwrap();
    assert_eq!(deleted, 3, "the newest finished run and the running one stay");
    let mut left = Vec::new();
    for _ in 0..100 {
        left = a.list(None, 10).await.unwrap().into_iter().map(|r| r.id).collect();
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, ["a-0004", "a-0003"]);
}

/// A plan of three http steps to the counting hook, with a pause between the first two (where
/// a test kills the replica executing it).
fn write_plan(dir: &Path, ns: &str, hook: &str, pause: &str) -> std::path::PathBuf {
    let plans = dir.join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(
        plans.join("ha.yaml"),
        format!(
            r#"apiVersion: recoverd.io/v1alpha1
kind: RecoveryPlan
metadata: {{name: ha, namespace: {ns}}}
spec:
  alertLabels: {{alertname: HaFired, testns: {ns}}}
  steps:
  - {{name: first, type: http, http: {{url: "{hook}/step/0", method: POST}}}}
  - {{name: hold, type: wait, wait: {{duration: {pause}}}}}
  - {{name: second, type: http, http: {{url: "{hook}/step/1", method: POST}}}}
  - {{name: third, type: http, http: {{url: "{hook}/step/2", method: POST}}}}
"#
        ),
    )
    .unwrap();
    plans
}

async fn replica(dir: &Path, plans: &Path, ns: &str, name: &str, lease: &str) -> ServeProcess {
    replica_with(dir, plans, ns, name, lease, &[]).await
}

async fn replica_with(dir: &Path, plans: &Path, ns: &str, name: &str, lease: &str, extra: &[&str]) -> ServeProcess {
    install_crds();
    let own = dir.join(name);
    std::fs::create_dir_all(&own).unwrap();
    let kubeconfig = clusters().kubeconfig().to_path_buf();
    let store = format!("kube:{ns}");
    let mut args = vec![
        "--store",
        &store,
        "--home-cluster",
        HOME,
        "--replica-id",
        name,
        "--lease-duration",
        lease,
    ];
    args.extend_from_slice(extra);
    ServeProcess::start(&own, plans, &kubeconfig, &args).await
}

fn runs(ns: &str) -> Vec<Value> {
    let out = ok(clusters()
        .kubectl(HOME)
        .args(["get", "recoveryruns", "-n", ns, "-o", "json"]));
    serde_json::from_str::<Value>(&out).unwrap()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_told_by_two_alertmanagers_run_an_alert_once() {
    let ns = clusters().namespace("kstore-ha").await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, hits) = counting_hook(3).await;
    let plans = write_plan(dir.path(), &ns, &hook, "100ms");
    let a = replica(dir.path(), &plans, &ns, "replica-a", "15s").await;
    let b = replica(dir.path(), &plans, &ns, "replica-b", "15s").await;
    let token = serve_token_file(dir.path());
    let urls = format!("{}/api/v1/alerts,{}/api/v1/alerts", a.url, b.url);
    let timings = Timings {
        group_wait: Duration::from_secs(1),
        group_interval: Duration::from_secs(2),
        repeat_interval: Duration::from_secs(3),
    };
    let am = tokio::task::block_in_place(|| AlertmanagerPair::start(2, &urls, &token, timings));
    tokio::task::block_in_place(|| {
        am.fire(&[("alertname", "HaFired"), ("testns", &ns)], &[]);
    });
    eventually("the run succeeded", LIMIT, || async {
        runs(&ns).iter().any(|r| r["status"]["phase"] == "Succeeded")
    })
    .await;
    // Let Alertmanager re-send the unchanged group a few times, to both replicas.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(counts(&hits), [1, 1, 1], "every step ran exactly once");
    let all = runs(&ns);
    assert_eq!(all.len(), 1, "{all:#?}");
    let id = all[0]["metadata"]["name"].as_str().unwrap().to_string();
    // Either replica answers for the run.
    for r in [&a, &b] {
        assert_eq!(r.get(&format!("/api/v1/runs/{id}")).await["phase"], "Succeeded");
    }
    let metrics = format!("{}\n{}", a.get_text("/metrics").await, b.get_text("/metrics").await);
    assert!(
        metrics.contains("recoverd_runs_deduplicated_total{"),
        "the other deliveries were deduplicated:\n{metrics}"
    );
    // kubectl shows what happened to the run as Events.
    let mut events = String::new();
    for _ in 0..100 {
        events = ok(clusters().kubectl(HOME).args([
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            &format!("involvedObject.name={id}"),
        ]));
        if ["Started", "Succeeded", "Deduplicated"]
            .iter()
            .all(|r| events.contains(r))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        ["Started", "Succeeded", "Deduplicated"]
            .iter()
            .all(|r| events.contains(r)),
        "{events}\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    // `kubectl describe` finds them (it selects Events by the run's uid).
    let described = ok(clusters()
        .kubectl(HOME)
        .args(["describe", "recoveryrun", &id, "-n", &ns]));
    assert!(
        described.contains("Succeeded") && described.contains("Started"),
        "{described}"
    );
    let table = ok(clusters().kubectl(HOME).args(["get", "recoveryruns", "-n", &ns]));
    let header = table.lines().next().unwrap();
    for column in ["PLAN", "PHASE", "CURRENT STEP", "TRIGGER", "AGE"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("Succeeded") && table.contains("alert"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_s_run_is_finished_by_the_other_without_repeating_steps() {
    let ns = clusters().namespace("kstore-takeover").await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, hits) = counting_hook(3).await;
    let plans = write_plan(dir.path(), &ns, &hook, "4s");
    let mut a = replica(dir.path(), &plans, &ns, "replica-a", "3s").await;
    let b = replica(dir.path(), &plans, &ns, "replica-b", "3s").await;
    let (status, body) = a
        .post(
            "/api/v1/alerts",
            &support::server::payload(
                "firing",
                json!({"alertname": "HaFired", "testns": ns}),
                "fp-takeover",
                "2026-12-02T10:00:00Z",
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    eventually("replica a is in the pause", LIMIT, || async { counts(&hits)[0] == 1 }).await;
    a.kill();
    eventually("replica b finished the run", LIMIT, || async {
        b.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(
        counts(&hits),
        [1, 1, 1],
        "the step finished before the kill ran once; the rest ran once, on b"
    );
    let record = b.get(&format!("/api/v1/runs/{id}")).await;
    let decisions = record["decisions"].as_array().cloned().unwrap_or_default();
    assert!(
        decisions
            .iter()
            .any(|d| d["action"] == "takenOver" && d["by"] == "replica-b"),
        "{record:#}"
    );
    let steps: Vec<&str> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["succeeded"; 4], "{record:#}");
    let events = ok(clusters().kubectl(HOME).args([
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        &format!("involvedObject.name={id}"),
    ]));
    assert!(
        events.contains("Interrupted") && events.contains("Succeeded"),
        "{events}"
    );
    // b released the run's Lease when the run ended.
    let leases = ok(clusters()
        .kubectl(HOME)
        .args(["get", "leases", "-n", &ns, "-o", "name"]));
    assert!(!leases.contains("recoverd-run-"), "{leases}");
}

/// An approval step waiting on one replica is approved through the other, and a run executing
/// on one is cancelled through the other: the other answers 202 naming the replica executing it
/// and hands the decision over through the run's Lease (no token leaves the replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_or_cancelling_at_any_replica_reaches_the_one_executing_the_run() {
    let ns = clusters().namespace("kstore-relay").await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, hits) = counting_hook(3).await;
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(
        plans.join("ask.yaml"),
        format!(
            r#"apiVersion: recoverd.io/v1alpha1
kind: RecoveryPlan
metadata: {{name: ask, namespace: {ns}}}
spec:
  alertLabels: {{alertname: AskFired, testns: {ns}}}
  steps:
  - {{name: first, type: http, http: {{url: "{hook}/step/0", method: POST}}}}
  - {{name: decide, type: approval, approval: {{message: "go on?", timeout: 5m}}}}
  - {{name: second, type: http, http: {{url: "{hook}/step/1", method: POST}}}}
  - {{name: hold, type: wait, wait: {{duration: 5m}}}}
  - {{name: never, type: http, http: {{url: "{hook}/step/2", method: POST}}}}
"#
        ),
    )
    .unwrap();
    let a = replica(dir.path(), &plans, &ns, "replica-a", "3s").await;
    let b = replica(dir.path(), &plans, &ns, "replica-b", "3s").await;
    let (status, body) = a
        .post(
            "/api/v1/alerts",
            &support::server::payload(
                "firing",
                json!({"alertname": "AskFired", "testns": ns}),
                "fp-relay",
                "2026-12-02T10:00:00Z",
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    eventually("the approval step waits on replica a", LIMIT, || async {
        b.get(&format!("/api/v1/runs/{id}")).await["steps"][1]["status"] == "waitingForApproval"
    })
    .await;
    // A wrong step is refused at b itself, before anything is handed over.
    let (status, body) = b
        .post(&format!("/api/v1/runs/{id}/approve"), &json!({"step": "nope"}))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = b
        .post(
            &format!("/api/v1/runs/{id}/approve"),
            &json!({"step": "decide", "actor": "sre at b"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["relayedTo"], "replica-a", "{body}");
    eventually("the approved run goes on, on replica a", LIMIT, || async {
        counts(&hits)[1] == 1
    })
    .await;
    let record = b.get(&format!("/api/v1/runs/{id}")).await;
    assert!(
        record.to_string().contains("sre at b"),
        "the approval names who gave it: {record:#}"
    );
    // Now in a 5-minute wait on a: cancelled through b.
    let (status, body) = b
        .post(&format!("/api/v1/runs/{id}/cancel"), &json!({"actor": "sre at b"}))
        .await;
    assert_eq!(status, 202, "{body}");
    eventually("the run ends Cancelled", LIMIT, || async {
        b.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Cancelled"
    })
    .await;
    assert_eq!(counts(&hits), [1, 1, 0]);
    let record = b.get(&format!("/api/v1/runs/{id}")).await;
    assert!(record.to_string().contains("sre at b"), "{record:#}");
    assert!(!a.log_text().contains("refused"), "{}", a.log_text());
}

/// A replica stopped with SIGTERM (a rolling update) lets its running step finish, records the
/// run Interrupted and releases its Lease; the other replica takes the run over and finishes
/// it from the next step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_gracefully_hands_its_run_to_the_other() {
    let ns = clusters().namespace("kstore-graceful").await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, hits) = counting_hook(3).await;
    let plans = write_plan(dir.path(), &ns, &hook, "2s");
    let mut a = replica(dir.path(), &plans, &ns, "replica-a", "3s").await;
    let b = replica(dir.path(), &plans, &ns, "replica-b", "3s").await;
    let (status, body) = a
        .post(
            "/api/v1/alerts",
            &support::server::payload(
                "firing",
                json!({"alertname": "HaFired", "testns": ns}),
                "fp-graceful",
                "2026-12-02T10:00:00Z",
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    eventually("replica a is in the pause", LIMIT, || async { counts(&hits)[0] == 1 }).await;
    ok(Command::new("kill").args(["-TERM", &a.child.id().to_string()]));
    let exit = tokio::task::block_in_place(|| a.child.wait().unwrap());
    assert!(exit.success(), "{exit:?}\n{}", a.log_text());
    assert_eq!(counts(&hits), [1, 0, 0], "a stopped before the next step");
    eventually("replica b finished the run", LIMIT, || async {
        b.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(counts(&hits), [1, 1, 1]);
    let record = b.get(&format!("/api/v1/runs/{id}")).await;
    assert!(
        record["decisions"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["action"] == "takenOver")),
        "{record:#}"
    );
    assert_eq!(record["steps"][1]["status"], "succeeded", "the pause finished on a");
}

/// A replica frozen mid-run (SIGSTOP: a partition, a long GC pause) loses its run to the other,
/// which finishes it; when it wakes (SIGCONT) it writes nothing more and runs no further step:
/// the record stays the other replica's, and every step ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_wakes_after_losing_its_run_writes_nothing_and_runs_no_step() {
    let ns = clusters().namespace("kstore-partition").await;
    let dir = tempfile::tempdir().unwrap();
    let (hook, hits) = counting_hook(3).await;
    let plans = write_plan(dir.path(), &ns, &hook, "4s");
    let a = replica(dir.path(), &plans, &ns, "replica-a", "3s").await;
    let b = replica(dir.path(), &plans, &ns, "replica-b", "3s").await;
    let (status, body) = a
        .post(
            "/api/v1/alerts",
            &support::server::payload(
                "firing",
                json!({"alertname": "HaFired", "testns": ns}),
                "fp-partition",
                "2026-12-02T10:00:00Z",
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    eventually("replica a is in the pause", LIMIT, || async { counts(&hits)[0] == 1 }).await;
    ok(Command::new("kill").args(["-STOP", &a.child.id().to_string()]));
    eventually("replica b finished the run", LIMIT, || async {
        b.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Succeeded"
    })
    .await;
    let finished = b.get(&format!("/api/v1/runs/{id}")).await;
    ok(Command::new("kill").args(["-CONT", &a.child.id().to_string()]));
    // Long enough for a's pause to end, its next write to be refused and its Lease to be lost.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(counts(&hits), [1, 1, 1], "{}", a.log_text());
    let now = b.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(now, finished, "a wrote over b's record:\n{}", a.log_text());
    assert!(
        a.log_text().contains("no longer holds the run")
            || a.log_text().contains("another replica holds this run's Lease"),
        "{}",
        a.log_text()
    );
}
