//! Reliability suite, Load (README: Reliability): `recoverd serve` as a process on real
//! kube-apiservers, its webhook under sustained load — re-sends, new incidents that start short
//! runs of six worker plans, batches, alerts matching nothing, resolutions, run listings — while
//! the CNPG switchover runs. What must hold, whatever the timing:
//!
//! - every webhook call is answered `202`, and every run a `202` names exists in the store;
//!   every run in the store was announced `started` exactly once (no run without its `202`,
//!   no `202` without its run), and every one of them succeeded;
//! - the switchover succeeds and leaves the clusters switched;
//! - `/healthz` and `/readyz` answer every probe (a probe waits at most 10 s, as a generous
//!   kubelet would);
//! - resident memory stays within a fixed budget above idle.
//!
//! The load lasts `RECOVERD_LOAD_SECS` seconds (10 by default, what CI runs on two shared cores;
//! the documented variant is `RECOVERD_LOAD_SECS=30 cargo test --test reliability_load`). How
//! much the load slows the switchover's steps is a timing, so it is a benchmark figure (R6 in
//! BENCHMARKS.md, `bash benches/run.sh --only R6`); this test prints what it saw.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::clusters::repo_dir;
use support::run::{cnpg_world, field};
use support::server::{eventually, ServeProcess, SERVE_TOKEN};

/// Worker plans, each with its own alert and ConfigMap.
const WORKERS: usize = 6;
/// Concurrent webhook clients.
const CLIENTS: usize = 8;
/// What resident memory may grow by above idle under the load.
const RSS_BUDGET_MIB: f64 = 96.0;
/// The longest a health probe may go unanswered before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn load_secs() -> u64 {
    std::env::var("RECOVERD_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn alert(status: &str, labels: Value, fingerprint: &str) -> Value {
    json!({"status": status, "labels": labels, "annotations": {"summary": "load"},
           "startsAt": "2026-12-02T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
           "generatorURL": "", "fingerprint": fingerprint})
}

fn payload(alerts: Vec<Value>) -> Value {
    json!({"version": "4", "groupKey": "{}:{alertname=\"load\"}", "truncatedAlerts": 0,
           "status": "firing", "receiver": "recoverd", "groupLabels": {}, "commonLabels": {},
           "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": alerts})
}

fn switchover_alert() -> Value {
    alert(
        "firing",
        json!({"alertname": "CNPGPrimaryUnavailable", "severity": "critical", "cluster": "pg-north"}),
        "5917c4f0a1b2c3d4",
    )
}

fn worker_alert(worker: usize, fingerprint: &str) -> Value {
    alert("firing", json!({"alertname": format!("load-{worker}")}), fingerprint)
}

/// What the webhook answered, over the whole load.
#[derive(Default)]
struct Tally {
    requests: usize,
    /// Answers other than 202, or requests that got no answer: (status or 0, body).
    refused: Vec<(u16, String)>,
    /// (action, run id) of every outcome that names a run.
    named: Vec<(String, String)>,
    actions: BTreeMap<String, usize>,
}

/// One webhook client: sends its mix of payloads until `stop`.
async fn client(
    n: usize,
    serve_url: String,
    http: reqwest::Client,
    fired: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let url = format!("{serve_url}/api/v1/alerts");
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let fresh = |k: usize| format!("c{n}-{i}-{k}");
        let worker = (n + i) % WORKERS;
        let body = match i % 6 {
            // A new incident of a worker plan: starts a run unless the plan is busy.
            0 | 1 => payload(vec![worker_alert(worker, &fresh(0))]),
            // A batch: three new incidents and a resolution.
            2 => payload(vec![
                worker_alert(worker, &fresh(0)),
                worker_alert((worker + 1) % WORKERS, &fresh(1)),
                worker_alert((worker + 2) % WORKERS, &fresh(2)),
                alert("resolved", json!({"alertname": format!("load-{worker}")}), &fresh(3)),
            ]),
            // Alertmanager re-sending the switchover's alert (once it has fired).
            3 | 4 if fired.load(Ordering::SeqCst) => payload(vec![switchover_alert()]),
            // Alerts no plan matches.
            _ => payload(vec![alert(
                "firing",
                json!({"alertname": "SomethingElse", "severity": "page"}),
                &fresh(0),
            )]),
        };
        let answer = http.post(&url).bearer_auth(SERVE_TOKEN).json(&body).send().await;
        let (status, reply) = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        };
        let mut t = tally.lock().unwrap();
        t.requests += 1;
        if status != 202 {
            t.refused.push((status, reply.chars().take(300).collect()));
            continue;
        }
        let reply: Value = serde_json::from_str(&reply).unwrap_or(Value::Null);
        for outcome in reply["alerts"].as_array().into_iter().flatten() {
            let action = outcome["action"].as_str().unwrap_or("?").to_string();
            *t.actions.entry(action.clone()).or_default() += 1;
            if let Some(id) = outcome["runId"].as_str() {
                t.named.push((action, id.to_string()));
            }
        }
    }
}

/// Every run summary in the store, paging through `GET /api/v1/runs`.
async fn all_runs(serve: &ServeProcess) -> Vec<Value> {
    let mut runs = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(c) => format!("/api/v1/runs?limit=1000&continue={c}"),
            None => "/api/v1/runs?limit=1000".to_string(),
        };
        let page = serve.get(&path).await;
        runs.extend(page["runs"].as_array().cloned().unwrap_or_default());
        match page["continue"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => return runs,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_load_while_the_switchover_runs_loses_no_run_and_keeps_health_and_memory_bounded() {
    let secs = load_secs();
    let w = cnpg_world("load").await;
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let in_ns = |text: String| text.replace("ns: db", &format!("ns: {}", w.ns));
    std::fs::write(
        plans.join("cnpg-switchover.yaml"),
        in_ns(std::fs::read_to_string(repo_dir().join("tests/data/plans/run/cnpg-switchover.yaml")).unwrap()),
    )
    .unwrap();
    let worker = std::fs::read_to_string(repo_dir().join("tests/data/plans/load/worker.yaml")).unwrap();
    for i in 0..WORKERS {
        std::fs::write(
            plans.join(format!("load-{i}.yaml")),
            in_ns(worker.replace("WORKER", &format!("load-{i}"))),
        )
        .unwrap();
    }
    let serve = ServeProcess::start(dir.path(), &plans, support::shared().kubeconfig(), &[]).await;
    assert_eq!(
        serve.get("/api/v1/plans").await["plans"].as_array().map(Vec::len),
        Some(WORKERS + 1),
        "every plan loads"
    );
    let pid = serve.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_mib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));

    // Health, as a kubelet probes it, on its own connections.
    let probes = {
        let (stop, url) = (stop.clone(), serve.url.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(PROBE_TIMEOUT)
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let (mut failed, mut answered, mut slowest) = (Vec::new(), 0usize, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                for path in ["/healthz", "/readyz"] {
                    let start = Instant::now();
                    match http.get(format!("{url}{path}")).send().await {
                        Ok(r) if r.status().is_success() => answered += 1,
                        Ok(r) => failed.push(format!("{path}: {}", r.status())),
                        Err(e) => failed.push(format!("{path}: {e}")),
                    }
                    slowest = slowest.max(start.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (failed, answered, slowest)
        })
    };
    // Resident memory, sampled.
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak.max(rss_mib(pid))
        })
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            tokio::spawn(client(
                n,
                serve.url.clone(),
                http.clone(),
                fired.clone(),
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();

    // A third of the way in, the incident the switchover is for.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs) / 3).await;
    let (status, reply) = serve.post("/api/v1/alerts", &payload(vec![switchover_alert()])).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["alerts"][0]["action"], "started", "{reply}");
    let switchover = reply["alerts"][0]["runId"].as_str().unwrap().to_string();
    fired.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let loaded_for = started.elapsed();
    let (failed_probes, answered_probes, slowest_probe) = probes.await.unwrap();
    let peak = sampler.await.unwrap();

    // Every run finishes (a hang guard, not a timing assertion).
    eventually("every run to finish", Duration::from_secs(120), || async {
        all_runs(&serve).await.iter().all(|r| {
            let phase = r["phase"].as_str().unwrap_or("Pending");
            !recoverd::run::store::ACTIVE.iter().any(|p| p.as_str() == phase)
        })
    })
    .await;
    let runs = all_runs(&serve).await;
    let t = std::mem::take(&mut *tally.lock().unwrap());

    // Every webhook call was accepted.
    assert!(
        t.refused.is_empty(),
        "{} of {} webhook calls were not answered 202, e.g. {:?}",
        t.refused.len(),
        t.requests,
        &t.refused[..t.refused.len().min(5)]
    );
    // Every run a 202 named exists; every run in the store was announced started exactly once.
    let stored: BTreeMap<&str, &Value> = runs.iter().map(|r| (r["id"].as_str().unwrap(), r)).collect();
    let missing: BTreeSet<&str> = t
        .named
        .iter()
        .map(|(_, id)| id.as_str())
        .filter(|id| !stored.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "202s named runs that are not in the store: {missing:?}"
    );
    let mut announced: BTreeMap<&str, usize> = BTreeMap::new();
    for (action, id) in &t.named {
        if action == "started" {
            *announced.entry(id).or_default() += 1;
        }
    }
    announced.insert(switchover.as_str(), 1);
    let twice: Vec<_> = announced.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "runs announced started twice: {twice:?}");
    let stored_ids: BTreeSet<&str> = stored.keys().copied().collect();
    let announced_ids: BTreeSet<&str> = announced.keys().copied().collect();
    assert_eq!(
        stored_ids, announced_ids,
        "the runs in the store are exactly the runs a 202 said were started"
    );
    let unsuccessful: Vec<_> = runs
        .iter()
        .filter(|r| r["phase"] != "Succeeded")
        .map(|r| format!("{} {} {}", r["id"], r["phase"], r["error"]))
        .collect();
    assert!(unsuccessful.is_empty(), "runs that did not succeed: {unsuccessful:#?}");
    // The load was the intended mix.
    assert!(runs.len() > WORKERS, "the load started runs: {:?}", t.actions);
    for action in ["started", "deduplicated", "noMatch", "ignored"] {
        assert!(
            t.actions.get(action).copied().unwrap_or(0) > 0,
            "no {action} outcome: {:?}",
            t.actions
        );
    }

    // The switchover ran once and switched the clusters.
    let record = serve.get(&format!("/api/v1/runs/{switchover}")).await;
    assert_eq!(record["phase"], "Succeeded", "{record:#}");
    assert_eq!(w.reactors.fired(), 2, "each reactor fired once");
    assert_eq!(
        field(
            &w.registry,
            "south",
            "postgresql.cnpg.io/v1",
            "clusters",
            &w.ns,
            "pg-south",
            "spec.replica.promotionToken"
        )
        .await,
        Some(json!("eyJ0b2tlbiI6ImRlbW90aW9uLTAwMSJ9"))
    );

    // Health answered throughout, and memory stayed within its budget.
    assert!(
        failed_probes.is_empty() && answered_probes > 0,
        "health probes failed under load ({answered_probes} answered): {failed_probes:?}"
    );
    assert!(
        peak - idle <= RSS_BUDGET_MIB,
        "resident memory grew from {idle:.1} MiB idle to {peak:.1} MiB under load (budget +{RSS_BUDGET_MIB} MiB)"
    );

    let steps: Vec<String> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {} ms", s["name"].as_str().unwrap(), s["durationMs"]))
        .collect();
    println!(
        "load: {} webhook calls in {:.1} s ({:.0}/s) from {CLIENTS} clients; outcomes {:?}; {} runs, all succeeded",
        t.requests,
        loaded_for.as_secs_f64(),
        t.requests as f64 / loaded_for.as_secs_f64(),
        t.actions,
        runs.len()
    );
    println!(
        "switchover under load: {} ms: {}",
        record["durationMs"],
        steps.join(", ")
    );
    println!(
        "health: {answered_probes} probes answered, slowest {} ms; RSS {idle:.1} MiB idle, {peak:.1} MiB peak",
        slowest_probe.as_millis()
    );
}
