//! The receiver's hot path, measured: matching an alert against many plans, and answering
//! Alertmanager's webhook (the 202 must come back in milliseconds, whatever runs after it).
//!
//! `cargo bench --bench receiver` prints a table; BENCHMARKS.md records the numbers and the
//! targets. This is a plain `harness = false` binary: std::time and medians, no extra crates.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use recoverd::app::{App, Config};
use recoverd::cluster::{Registry, WriteMode};
use recoverd::plan::set::PlanSet;
use recoverd::run::store::sqlite::SqliteStore;
use recoverd::server::{Settings, Tokens};
use tower::ServiceExt;

fn plans_dir(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for i in 0..n {
        text += &format!(
            "---\napiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: p{i}, namespace: ops}}\nspec:\n  alertLabels: {{alertname: Alert{i}, team: db}}\n  alertMatchers: ['severity=~\"critical|page\"', 'env!=\"test\"']\n  steps:\n  - {{name: pause, type: wait, wait: {{duration: 1ms}}}}\n"
        );
    }
    std::fs::write(dir.join("plans.yaml"), text).unwrap();
}

fn labels(i: usize) -> BTreeMap<String, String> {
    [
        ("alertname", format!("Alert{i}")),
        ("team", "db".into()),
        ("severity", "page".into()),
        ("env", "prod".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn median(mut xs: Vec<Duration>) -> (Duration, Duration) {
    xs.sort();
    (xs[xs.len() / 2], xs[xs.len() * 99 / 100])
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("{:<52} {:>12} {:>12}", "benchmark", "median", "p99");
    for n in [10, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        plans_dir(&dir.path().join("plans"), n);
        let started = Instant::now();
        let set = PlanSet::load(&[dir.path().join("plans")], None);
        let load = started.elapsed();
        assert_eq!(set.len(), n);
        let samples: Vec<Duration> = (0..2_000)
            .map(|k| {
                let l = labels(k * 7 % n);
                let t = Instant::now();
                let m = set.matching(&l);
                let d = t.elapsed();
                assert_eq!(m.len(), 1);
                d
            })
            .collect();
        let (med, p99) = median(samples);
        println!(
            "{:<52} {:>12?} {:>12?}",
            format!("match one alert against {n} plans"),
            med,
            p99
        );
        println!(
            "{:<52} {:>12?} {:>12}",
            format!("load and validate {n} plans"),
            load,
            ""
        );
    }

    // The webhook, end to end through the router (no network): a firing alert that matches a
    // plan already run for this incident (the common case: Alertmanager re-sending).
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        plans_dir(&dir.path().join("plans"), 1_000);
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n").unwrap();
        let live = Arc::new(Registry::from_kubeconfig(Some(&kubeconfig), WriteMode::Live).await.unwrap());
        let dry = Arc::new(Registry::from_kubeconfig(Some(&kubeconfig), WriteMode::DryRun).await.unwrap());
        let set = PlanSet::load(&[dir.path().join("plans")], Some(&live.names()));
        let store = Arc::new(SqliteStore::open(&dir.path().join("runs.db")).unwrap());
        let built = App::build(Config { live, dry, store, plans: set, settings: Settings::new(Tokens::from_list(&["t"])), notify: None });
        let (runs, app) = (built.runs.clone(), built.router());
        let body = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/alerts/firing-one-alert.json"))
            .unwrap()
            .replace("CNPGPrimaryUnavailable", "Alert7")
            .replace("\"severity\":\"critical\"", "\"severity\":\"page\",\"team\":\"db\"");
        let post = || {
            Request::post("/api/v1/alerts")
                .header("content-type", "application/json")
                .header("authorization", "Bearer t")
                .body(Body::from(body.clone()))
                .unwrap()
        };
        let first = app.clone().oneshot(post()).await.unwrap();
        assert_eq!(first.status(), 202);
        runs.idle().await;
        let mut samples = Vec::new();
        for _ in 0..2_000 {
            let t = Instant::now();
            let resp = app.clone().oneshot(post()).await.unwrap();
            let _ = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            samples.push(t.elapsed());
        }
        let (med, p99) = median(samples);
        println!("{:<52} {:>12?} {:>12?}", "webhook 202 for a re-sent alert (1000 plans)", med, p99);
    });
}
