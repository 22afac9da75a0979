//! R6 (the reliability suite's Load item, timed): the CNPG switchover's steps run by `recoverd
//! serve` while its webhook takes a steady mixed load, against the same switchover with the
//! webhook idle — same process, same clusters, same minute. `tests/reliability_load.rs` asserts
//! what must hold under load (no run lost, health answered, memory bounded); this measures how
//! much the load slows the run.

use super::*;

/// The reactors' fixed delays (2 × 300 ms), which neither side controls.
const REACTOR_DELAYS_MS: f64 = 600.0;
/// Worker plans whose new incidents the load starts runs of.
const WORKERS: usize = 6;

/// One alert of the load's mix: `n` picks which. Without `runs`, the new incidents are of
/// alerts no plan matches: the webhook's work without the runs it would start.
fn load_body(n: u64, runs: bool) -> String {
    let worker = |i: u64| {
        if runs {
            format!("load-{}", i % WORKERS as u64)
        } else {
            format!("nothing-{}", i % WORKERS as u64)
        }
    };
    let alert = |name: &str, fingerprint: &str| {
        json!({"status": "firing", "labels": {"alertname": name, "severity": "critical"},
               "annotations": {"summary": "load"}, "startsAt": "2026-12-02T00:00:00Z",
               "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": fingerprint})
    };
    let alerts = match n % 4 {
        // A new incident of a worker plan: a run starts unless the plan is busy.
        0 => vec![alert(&worker(n), &format!("w{n}"))],
        // Alertmanager re-sending one incident.
        1 => vec![alert("load-0", "resent")],
        // A batch of three new incidents.
        2 => (0..3).map(|k| alert(&worker(n + k), &format!("b{n}-{k}"))).collect(),
        // Nothing matches.
        _ => vec![alert("SomethingElse", &format!("x{n}"))],
    };
    json!({"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
           "receiver": "recoverd", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
           "externalURL": "http://alertmanager", "alerts": alerts})
    .to_string()
}

/// Sends the load mix at `rate` requests a second until `stop`, on its own runtime thread (the
/// reactors and the measurement keep theirs). Returns (requests answered 202, others).
fn start_load(
    url: String,
    rate: u64,
    runs: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use std::sync::atomic::{AtomicU64, Ordering};
            let http = reqwest::Client::new();
            let ok = Arc::new(AtomicU64::new(0));
            let bad = Arc::new(AtomicU64::new(0));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u64;
            let mut inflight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let (http, url, ok, bad) = (http.clone(), url.clone(), ok.clone(), bad.clone());
                inflight.spawn(async move {
                    let r = http
                        .post(&url)
                        .bearer_auth(support::server::SERVE_TOKEN)
                        .header("content-type", "application/json")
                        .body(load_body(n, runs))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().as_u16() == 202) {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        bad.fetch_add(1, Ordering::SeqCst);
                    }
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
            (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst))
        })
    })
}

/// Triggers the switchover in `ns` through the API and waits for it; the sum of its steps'
/// recorded durations, reactor delays subtracted.
async fn switchover(serve: &support::server::ServeProcess, ns: &str, key: &str) -> f64 {
    let (status, run) = serve
        .post(
            "/api/v1/plans/recoverd/cnpg-switchover/runs",
            &json!({"params": {"ns": ns}, "idempotencyKey": key}),
        )
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    for _ in 0..600 {
        let run = serve.get(&format!("/api/v1/runs/{id}")).await;
        match run["phase"].as_str() {
            Some("Succeeded") => {
                let steps: f64 = run["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["durationMs"].as_f64().unwrap_or(0.0))
                    .sum();
                return steps - REACTOR_DELAYS_MS;
            }
            Some(p) if !recoverd::run::store::ACTIVE.iter().any(|a| a.as_str() == p) => {
                panic!("the switchover did not succeed: {run:#}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the switchover did not finish in 30 s");
}

/// R6a: switchover step time under webhook load ÷ idle; R6b: the server's RSS under the load;
/// R6c: R6a with a load whose new incidents start no runs.
pub(super) async fn r6(opts: &Opts, tc: &clusters::TestClusters, setting: &str) -> Vec<Figure> {
    let rounds = if opts.quick { 1 } else { 3 };
    let load_secs = if opts.quick { 5 } else { 30 };
    let rate = 500;
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let workers_ns = tc.namespace("r6-workers").await;
    let plan = std::fs::read_to_string(clusters::repo_dir().join("tests/data/plans/run/cnpg-switchover.yaml"))
        .unwrap()
        .replace("  params:\n", "  overridableParams: [ns]\n  params:\n");
    std::fs::write(plans.join("cnpg-switchover.yaml"), plan).unwrap();
    let worker = std::fs::read_to_string(clusters::repo_dir().join("tests/data/plans/load/worker.yaml"))
        .unwrap()
        .replace("ns: db", &format!("ns: {workers_ns}"));
    for i in 0..WORKERS {
        std::fs::write(
            plans.join(format!("load-{i}.yaml")),
            worker.replace("WORKER", &format!("load-{i}")),
        )
        .unwrap();
    }
    let serve = support::server::ServeProcess::start(dir.path(), &plans, tc.kubeconfig(), &[]).await;
    let pid = serve.pid();

    // Every switchover gets a freshly seeded namespace; seed them all before any clock starts.
    let mut worlds = Vec::new();
    for r in 0..3 * rounds {
        worlds.push(support::run::cnpg_world(&format!("r6-{r}")).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_mib(pid);
    let mut idle = Vec::new();
    for (r, w) in worlds[..rounds].iter().enumerate() {
        idle.push(switchover(&serve, &w.ns, &format!("idle-{r}")).await);
    }

    // Two windows of load: the full mix (its new incidents start runs), then the webhook's work
    // alone (the same requests, but no plan matches the new incidents).
    let window = Duration::from_secs(load_secs);
    let mut results = Vec::new();
    for (k, runs) in [true, false].into_iter().enumerate() {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = start_load(format!("{}/api/v1/alerts", serve.url), rate, runs, stop.clone());
        let started = Instant::now();
        let mut loaded = Vec::new();
        let mut peak_rss = 0.0f64;
        let mine = &worlds[rounds * (k + 1)..rounds * (k + 2)];
        for (r, w) in mine.iter().enumerate() {
            // Spread the runs over the window: the load is established before the first.
            let at = window * (r as u32 + 1) / (rounds as u32 + 1);
            while started.elapsed() < at {
                peak_rss = peak_rss.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            loaded.push(switchover(&serve, &w.ns, &format!("loaded-{k}-{r}")).await);
        }
        while started.elapsed() < window {
            peak_rss = peak_rss.max(rss_mib(pid));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (ok, bad) = load.join().unwrap();
        let achieved = (ok + bad) as f64 / started.elapsed().as_secs_f64();
        assert_eq!(bad, 0, "webhook calls not answered 202 under load");
        results.push((loaded, peak_rss, ok, achieved));
        // Let the runs the load started finish before the next window.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(worlds);
    let (with_runs, peak_rss, ok, achieved) = &results[0];
    let (alone, _, ok_alone, achieved_alone) = &results[1];
    vec![
        figure(
            "R6a",
            "switchover step time under webhook load, reactor delays subtracted",
            setting,
            median(with_runs),
            "ms",
            Some((median(&idle), "the same switchover, webhook idle")),
            Compare::RatioAtMost(2.0),
            rounds,
            format!(
                "{load_secs} s of webhook load at {achieved:.0} req/s (new incidents of {WORKERS} worker plans, re-sends, batches, no-match; all {ok} answered 202); median of {rounds}; idle runs first, same server"
            ),
        ),
        figure(
            "R6b",
            "RSS of recoverd serve during the load",
            setting,
            *peak_rss,
            "MiB",
            Some((idle_rss, "idle, same process")),
            Compare::DeltaAtMost(96.0),
            1,
            "peak of samples every 200 ms".into(),
        ),
        figure(
            "R6c",
            "the same, the webhook's work alone (new incidents match no plan)",
            setting,
            median(alone),
            "ms",
            Some((median(&idle), "the same switchover, webhook idle")),
            Compare::RatioAtMost(2.0),
            rounds,
            format!(
                "{load_secs} s at {achieved_alone:.0} req/s, all {ok_alone} answered 202: no run but the switchover's; what R6a costs beyond this is the load's own runs on the API servers"
            ),
        ),
    ]
}
