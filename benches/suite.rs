//! The performance suite (issue #16): every figure next to its baseline or limit, measured in the
//! same run, as a ratio or a difference, with its target.
//!
//! `bash benches/run.sh` is the documented command (it installs `wrk`, picks the test
//! kube-apiserver and runs `cargo bench --bench suite -- ARGS`). Arguments:
//! `--quick` (short runs, small sizes: the CI smoke mode), `--json FILE`, `--only P1,P2`,
//! `--no-clusters` (only the figures that need no API server). Timings are reported, never judged:
//! the `met` column says whether the target held in this run, and the exit status ignores it.
//!
//! Local figures run in this process or against `recoverd serve` (this package's binary) on
//! loopback; cluster figures against genuine kube-apiservers started by the tests' harness
//! (`tests/support/clusters.rs`, `$RECOVERD_TEST_APISERVER`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams, ValidationDirective, WatchEvent, WatchParams};
use recoverd::app::{App, Config};
use recoverd::cluster::{Registry, WriteMode};
use recoverd::executor::{Executor, NoObserver, RunControl, RunInput};
use recoverd::plan::set::PlanSet;
use recoverd::plan::Plan;
use recoverd::run::service::Runs;
use recoverd::run::store::sqlite::SqliteStore;
use recoverd::server::{Settings, Tokens};
use serde::Serialize;
use serde_json::{json, Value};
use tower::ServiceExt;

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use support::clusters;

#[path = "suite/load.rs"]
mod load;

// recoverd serve refuses tokens shorter than 32 bytes.
const TOKEN: &str = "bench-token-0123456789abcdef0123456789";

struct Opts {
    quick: bool,
    json: Option<PathBuf>,
    only: Option<Vec<String>>,
    clusters: bool,
}

impl Opts {
    fn wants(&self, id: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| id.starts_with(x.as_str())))
    }
}

/// How a figure is held to its baseline.
#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
enum Compare {
    /// value ÷ baseline must be at least this.
    RatioAtLeast(f64),
    /// value ÷ baseline must be at most this.
    RatioAtMost(f64),
    /// value − baseline must be at most this (in the figure's unit).
    DeltaAtMost(f64),
    /// value itself must be at most this (no baseline).
    AtMost(f64),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Figure {
    id: String,
    what: String,
    /// `local` or the API server it ran against.
    setting: String,
    value: f64,
    unit: String,
    baseline_what: String,
    baseline: Option<f64>,
    ratio: Option<f64>,
    delta: Option<f64>,
    target: String,
    compare: Compare,
    met: bool,
    samples: usize,
    note: String,
}

#[allow(clippy::too_many_arguments)]
fn figure(
    id: &str,
    what: &str,
    setting: &str,
    value: f64,
    unit: &str,
    baseline: Option<(f64, &str)>,
    compare: Compare,
    samples: usize,
    note: String,
) -> Figure {
    let b = baseline.map(|(b, _)| b);
    let ratio = b.filter(|b| *b != 0.0).map(|b| value / b);
    let delta = b.map(|b| value - b);
    let (target, met) = match compare {
        Compare::RatioAtLeast(x) => (format!("≥ {x}×"), ratio.is_some_and(|r| r >= x)),
        Compare::RatioAtMost(x) => (format!("≤ {x}×"), ratio.is_some_and(|r| r <= x)),
        Compare::DeltaAtMost(x) => (format!("≤ +{x} {unit}"), delta.is_some_and(|d| d <= x)),
        Compare::AtMost(x) => (format!("≤ {x} {unit}"), value <= x),
    };
    let f = Figure {
        id: id.into(),
        what: what.into(),
        setting: setting.into(),
        value,
        unit: unit.into(),
        baseline_what: baseline.map(|(_, w)| w.to_string()).unwrap_or_default(),
        baseline: b,
        ratio,
        delta,
        target,
        compare,
        met,
        samples,
        note,
    };
    print_figure(&f);
    f
}

fn print_figure(f: &Figure) {
    let num = |x: f64| {
        if x.abs() >= 100.0 {
            format!("{x:.0}")
        } else if x.abs() >= 1.0 {
            format!("{x:.2}")
        } else {
            format!("{x:.3}")
        }
    };
    let base = f
        .baseline
        .map(|b| format!("{} {}", num(b), f.unit))
        .unwrap_or_else(|| "—".into());
    let cmp = match (f.compare, f.ratio, f.delta) {
        (Compare::DeltaAtMost(_), _, Some(d)) => format!("{:+.3} {}", d, f.unit),
        (_, Some(r), _) if r < 1.0 => format!("{r:.3}×"),
        (_, Some(r), _) => format!("{r:.2}×"),
        _ => "—".into(),
    };
    println!(
        "{:<5} {:<58} {:>14} {:>14} {:>12} {:>14} {:<4} {}",
        f.id,
        f.what,
        format!("{} {}", num(f.value), f.unit),
        base,
        cmp,
        f.target,
        if f.met { "met" } else { "MISS" },
        f.setting
    );
    if !f.note.is_empty() {
        println!("      {}", f.note);
    }
    let _ = std::io::stdout().flush();
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Opts {
        quick: false,
        json: None,
        only: None,
        clusters: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--no-clusters" => opts.clusters = false,
            "--json" => opts.json = Some(PathBuf::from(it.next().expect("--json FILE"))),
            "--only" => {
                opts.only = Some(
                    it.next()
                        .expect("--only P1,P2")
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            "--bench" => {}
            other => panic!("unknown argument {other:?}: --quick, --json FILE, --only P1,P2, --no-clusters"),
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    println!(
        "recoverd performance suite ({}), {} cores, load average {}",
        if opts.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<5} {:<58} {:>14} {:>14} {:>12} {:>14} {:<4} setting",
        "", "figure", "measured", "baseline", "ratio/diff", "target", ""
    );
    let mut figures = Vec::new();
    if opts.wants("P1") || opts.wants("P7") {
        figures.extend(p1_p7(&opts));
    }
    if opts.wants("P2") {
        figures.extend(p2(&opts));
    }
    if opts.wants("P9") {
        figures.extend(p9(&opts));
    }
    if opts.wants("L1") {
        figures.extend(l1(&opts));
    }
    if opts.clusters && ["B2", "P3", "P4", "P5", "P6", "P8", "R6"].iter().any(|f| opts.wants(f)) {
        figures.extend(cluster_figures(&opts));
    }
    println!("({:.0} s)", started.elapsed().as_secs_f64());
    if let Some(path) = &opts.json {
        let doc = json!({
            "quick": opts.quick,
            "date": jiff::Timestamp::now().to_string(),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "figures": figures,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("JSON written to {}", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Local figures: no API server.

fn write_plans(dir: &Path, n: usize, shared_first_label: bool) {
    std::fs::create_dir_all(dir).unwrap();
    // Files of at most 1 000 plans: recoverd refuses a plan file over 1 MiB.
    for (file, chunk) in (0..n).collect::<Vec<_>>().chunks(1_000).enumerate() {
        let mut text = String::new();
        for &i in chunk {
            let labels = if shared_first_label {
                format!("{{alertname: PostgresDown, namespace: ns{i}}}")
            } else {
                format!("{{alertname: Alert{i}, team: db}}")
            };
            text += &format!(
                "---\napiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: p{i}, namespace: ops}}\nspec:\n  alertLabels: {labels}\n  alertMatchers: ['severity=~\"critical|page\"', 'env!=\"test\"']\n  steps:\n  - {{name: pause, type: wait, wait: {{duration: 1ms}}}}\n"
            );
        }
        std::fs::write(dir.join(format!("plans-{file}.yaml")), text).unwrap();
    }
}

fn alert_labels(i: usize, shared_first_label: bool) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = [("severity", "page"), ("env", "prod")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if shared_first_label {
        l.insert("alertname".into(), "PostgresDown".into());
        l.insert("namespace".into(), format!("ns{i}"));
    } else {
        l.insert("alertname".into(), format!("Alert{i}"));
        l.insert("team".into(), "db".into());
    }
    l
}

/// P2's large plan set: 10 000, or 1 000 in the smoke mode.
fn large_set(opts: &Opts) -> usize {
    if opts.quick {
        1_000
    } else {
        10_000
    }
}

/// A webhook body carrying one firing alert with exactly these labels.
fn body_with_labels(labels: &BTreeMap<String, String>) -> String {
    let mut v: Value = serde_json::from_str(&alert_body("X", false)).unwrap();
    v["alerts"][0]["labels"] = json!(labels);
    v.to_string()
}

/// P2a/P2b: one re-sent alert through the webhook (router in-process), 10 000 plans ÷ 10 plans,
/// in both layouts; P2c/P2d: matching alone.
fn p2(opts: &Opts) -> Vec<Figure> {
    let mut out = p2_webhook(opts);
    out.extend(p2_matching(opts));
    out
}

fn p2_webhook(opts: &Opts) -> Vec<Figure> {
    let samples = if opts.quick { 200 } else { 2_000 };
    let rounds = if opts.quick { 1 } else { 3 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut out = Vec::new();
    for (shared, layout) in [(false, "distinct first label"), (true, "shared first label")] {
        let per_n: Vec<f64> = [10, large_set(opts)]
            .into_iter()
            .map(|n| {
                let dir = tempfile::tempdir().unwrap();
                write_plans(&dir.path().join("plans"), n, shared);
                rt.block_on(async {
                    let kc = unreachable_kubeconfig(dir.path());
                    let live = Arc::new(Registry::from_kubeconfig(Some(&kc), WriteMode::Live).await.unwrap());
                    let dry = Arc::new(Registry::from_kubeconfig(Some(&kc), WriteMode::DryRun).await.unwrap());
                    let set = PlanSet::load(&[dir.path().join("plans")], None);
                    assert_eq!(set.len(), n);
                    let (app, runs) = receiver(dir.path(), set, live, dry).await;
                    let body = body_with_labels(&alert_labels(n / 2, shared));
                    assert_eq!(post(&app, body.clone()).await, 202);
                    runs.idle().await;
                    let mut medians = Vec::new();
                    for _ in 0..rounds {
                        let mut xs = Vec::with_capacity(samples);
                        for _ in 0..samples {
                            let t = Instant::now();
                            assert_eq!(post(&app, body.clone()).await, 202);
                            xs.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        medians.push(median(&xs));
                    }
                    median(&medians)
                })
            })
            .collect();
        out.push(figure(
            if shared { "P2b" } else { "P2a" },
            &format!("webhook, one re-sent alert, {} plans ({layout})", large_set(opts)),
            "local",
            per_n[1],
            "µs",
            Some((per_n[0], "10 plans")),
            Compare::RatioAtMost(2.0),
            rounds * samples,
            format!("median of {rounds} medians; router in-process, dedupe path"),
        ));
    }
    out
}

/// Matching alone (`PlanSet::matching`), 10 000 plans ÷ 10 plans, in both layouts.
fn p2_matching(opts: &Opts) -> Vec<Figure> {
    let samples = if opts.quick { 500 } else { 5_000 };
    let rounds = if opts.quick { 1 } else { 3 };
    let mut out = Vec::new();
    for (shared, layout) in [(false, "distinct first label"), (true, "shared first label")] {
        let sets: Vec<(usize, PlanSet)> = [10, large_set(opts)]
            .into_iter()
            .map(|n| {
                let dir = tempfile::tempdir().unwrap();
                write_plans(&dir.path().join("plans"), n, shared);
                let set = PlanSet::load(&[dir.path().join("plans")], None);
                assert_eq!(set.len(), n);
                (n, set)
            })
            .collect();
        let mut per_round = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (j, (n, set)) in sets.iter().enumerate() {
                let mut xs = Vec::with_capacity(samples);
                for k in 0..samples {
                    let l = alert_labels(k * 7 % n, shared);
                    let t = Instant::now();
                    let m = set.matching(&l);
                    xs.push(t.elapsed().as_secs_f64() * 1e6);
                    assert_eq!(m.len(), 1);
                }
                per_round[j].push(median(&xs));
            }
        }
        let (small, large) = (median(&per_round[0]), median(&per_round[1]));
        out.push(figure(
            if shared { "P2d" } else { "P2c" },
            &format!("matching alone, {} plans ({layout})", large_set(opts)),
            "local",
            large,
            "µs",
            Some((small, "10 plans")),
            Compare::RatioAtMost(2.0),
            rounds * samples,
            format!("median of {rounds} medians of {samples}"),
        ));
    }
    out
}

/// A `recoverd serve` process on loopback, stopped on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(plans: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_plans(&dir.path().join("plans"), plans, false);
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n").unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let port = clusters::free_port();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_recoverd"))
            .arg("serve")
            .arg("--plans")
            .arg(dir.path().join("plans"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--token-file")
            .arg(dir.path().join("token"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--store")
            .arg(format!("sqlite:{}", dir.path().join("runs.db").display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start recoverd serve");
        let server = Server { child, port, _dir: dir };
        for _ in 0..600 {
            if http_status(port, "GET", "/readyz", "") == Some(200) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("recoverd serve with {plans} plans did not become ready");
    }

    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// One HTTP/1.1 request on a fresh connection; the status code.
fn http_status(port: u16, method: &str, path: &str, body: &str) -> Option<u16> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

fn alert_body(alertname: &str, team: bool) -> String {
    let text = std::fs::read_to_string(clusters::repo_dir().join("tests/data/alerts/firing-one-alert.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let labels = &mut v["alerts"][0]["labels"];
    labels["alertname"] = json!(alertname);
    labels["severity"] = json!("page");
    if team {
        labels["team"] = json!("db");
    }
    v.to_string()
}

/// Requests per second and requests sent, from `wrk` posting `body` for `secs`.
fn wrk(port: u16, body: &str, secs: u64) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("body.json"), body).unwrap();
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "local f = io.open(\"{}\", \"rb\")\nwrk.method = \"POST\"\nwrk.body = f:read(\"*a\")\nf:close()\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {TOKEN}\"\n",
            dir.path().join("body.json").display()
        ),
    )
    .unwrap();
    let out = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{secs}s"), "-s"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/api/v1/alerts"))
        .output()
        .expect("wrk (apt-get install wrk; benches/run.sh does)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("Non-2xx"),
        "wrk failed or got errors:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("wrk printed Requests/sec");
    let sent = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .expect("wrk printed the request count");
    (rps, sent)
}

/// The baseline webhook: a minimal axum server whose handler parses the same body with
/// serde_json and answers 202 with a small JSON body, on a runtime like recoverd's.
fn baseline_server() -> (u16, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    async fn handler(body: axum::body::Bytes) -> (axum::http::StatusCode, axum::Json<Value>) {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => (
                axum::http::StatusCode::ACCEPTED,
                axum::Json(json!({"alerts": v["alerts"].as_array().map_or(0, Vec::len)})),
            ),
            Err(e) => (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": e.to_string()})),
            ),
        }
    }
    let app = axum::Router::new().route("/api/v1/alerts", axum::routing::post(handler));
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, rt)
}

/// P1a/P1b (webhook throughput against a minimal server) and P7 (resident memory).
fn p1_p7(opts: &Opts) -> Vec<Figure> {
    let mut out = Vec::new();
    let secs = if opts.quick { 1 } else { 5 };
    let rounds = if opts.quick { 1 } else { 3 };
    let server = Server::start(1_000);
    let idle_1000 = server.rss_mib();
    let (base_port, _base_rt) = baseline_server();
    let no_match = alert_body("NoSuchAlert", true);
    let resent = alert_body("Alert7", true);
    // The first notification starts the run (a 1 ms wait); every later one is a re-send.
    assert_eq!(http_status(server.port, "POST", "/api/v1/alerts", &resent), Some(202));
    std::thread::sleep(Duration::from_millis(300));
    let mut sent = 0;
    let (mut a, mut b, mut base_a, mut base_b) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (r, n) = wrk(server.port, &no_match, secs);
        a.push(r);
        sent += n;
        base_a.push(wrk(base_port, &no_match, secs).0);
        let (r, n) = wrk(server.port, &resent, secs);
        b.push(r);
        sent += n;
        base_b.push(wrk(base_port, &resent, secs).0);
    }
    let note = format!("wrk -t1 -c8 -d{secs}s, median of {rounds}; baseline: minimal axum + serde_json handler");
    if opts.wants("P1") {
        out.push(figure(
            "P1a",
            "webhook throughput, alert matching no plan, 1 000 plans",
            "local",
            median(&a),
            "req/s",
            Some((median(&base_a), "minimal axum + serde_json")),
            Compare::RatioAtLeast(0.9),
            rounds,
            note.clone(),
        ));
        out.push(figure(
            "P1b",
            "webhook throughput, re-sent (deduplicated) alert",
            "local",
            median(&b),
            "req/s",
            Some((median(&base_b), "minimal axum + serde_json")),
            Compare::RatioAtLeast(0.7),
            rounds,
            note,
        ));
    }
    if !opts.wants("P7") {
        return out;
    }
    // Top up to 100 000 requests (10 000 in quick mode) before reading memory again.
    let want = if opts.quick { 10_000 } else { 100_000 };
    while sent < want {
        sent += wrk(server.port, &no_match, secs).1;
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = server.rss_mib();
    drop(server);
    let mut idle = BTreeMap::from([(1_000, idle_1000)]);
    for n in [10, 10_000] {
        let s = Server::start(n);
        std::thread::sleep(Duration::from_secs(1));
        idle.insert(n, s.rss_mib());
    }
    for (n, target) in [(10, 20.0), (1_000, 32.0), (10_000, 64.0)] {
        out.push(figure(
            &format!(
                "P7{}",
                match n {
                    10 => "a",
                    1_000 => "b",
                    _ => "c",
                }
            ),
            &format!("idle RSS of recoverd serve with {n} plans"),
            "local",
            idle[&n],
            "MiB",
            None,
            Compare::AtMost(target),
            1,
            String::new(),
        ));
    }
    out.push(figure(
        "P7d",
        &format!("RSS after {sent} webhook requests (1 000 plans)"),
        "local",
        after,
        "MiB",
        Some((idle_1000, "idle, same process")),
        Compare::DeltaAtMost(2.0),
        1,
        "target: no growth (≤ +2 MiB of allocator noise)".into(),
    ));
    out
}

/// L1: `recoverd check` of 10 000 plans (load, validate, render), timed by hyperfine: what a
/// reload of that many plans costs.
fn l1(opts: &Opts) -> Vec<Figure> {
    let n = if opts.quick { 1_000 } else { 10_000 };
    let runs = if opts.quick { 3 } else { 5 };
    let dir = tempfile::tempdir().unwrap();
    write_plans(&dir.path().join("plans"), n, false);
    let json = dir.path().join("hyperfine.json");
    let status = Command::new("hyperfine")
        .args(["--style", "none", "--warmup", "1", "--runs", &runs.to_string()])
        .arg("--export-json")
        .arg(&json)
        .arg(format!(
            "{} check {}",
            env!("CARGO_BIN_EXE_recoverd"),
            dir.path().join("plans").display()
        ))
        .stdout(Stdio::null())
        .status()
        .expect("hyperfine (apt-get install hyperfine; benches/run.sh does)");
    assert!(status.success(), "hyperfine or recoverd check failed");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let median_s = v["results"][0]["median"].as_f64().unwrap();
    vec![figure(
        "L1",
        &format!("recoverd check of {n} plans (load, validate, render)"),
        "local",
        median_s * 1e3,
        "ms",
        None,
        Compare::AtMost(2_000.0),
        runs,
        format!("hyperfine, median of {runs}; informational: a reload costs about this"),
    )]
}

/// In-process receiver (router + run service + SQLite store), as `recoverd serve` builds it.
async fn receiver(
    dir: &Path,
    plans: PlanSet,
    registry: Arc<Registry>,
    dry: Arc<Registry>,
) -> (axum::Router, Arc<Runs>) {
    let store = Arc::new(SqliteStore::open(&dir.join("runs.db")).unwrap());
    let app = App::build(Config {
        live: registry,
        dry,
        store,
        plans,
        settings: Settings::new(Tokens::from_list(&[TOKEN])),
        notify: None,
    });
    let runs = app.runs.clone();
    let app = app.router();
    (app, runs)
}

async fn post(app: &axum::Router, body: String) -> u16 {
    let req = Request::post("/api/v1/alerts")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = axum::body::to_bytes(resp.into_body(), usize::MAX).await;
    status
}

fn plan_set(dir: &Path, text: &str, clusters: Option<&std::collections::BTreeSet<String>>) -> PlanSet {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("plan.yaml"), text).unwrap();
    let set = PlanSet::load(&[dir.to_path_buf()], clusters);
    assert!(set.invalid.is_empty(), "{:?}", set.invalid);
    set
}

fn unreachable_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n").unwrap();
    path
}

fn incident(i: usize) -> String {
    let mut v: Value = serde_json::from_str(&alert_body("P9", false)).unwrap();
    v["alerts"][0]["startsAt"] = json!(format!(
        "2026-11-22T{:02}:{:02}:{:02}Z",
        i / 3600 % 24,
        i / 60 % 60,
        i % 60
    ));
    v.to_string()
}

/// Adds `n` finished runs to the store by copying one (SQL, so that 10⁶ takes seconds): every
/// column kept but the id (made unique) and any `*_ms` column (spread back in time).
fn seed_past_runs(db: &Path, n: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('runs')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| match c.as_str() {
            "id" => "t.id || '-' || c.x".to_string(),
            c if c.ends_with("_ms") => format!("t.{c} - c.x * 1000"),
            c => format!("t.{c}"),
        })
        .collect();
    conn.execute_batch(&format!(
        "BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n})
         INSERT INTO runs ({cols}) SELECT {exprs} FROM c, (SELECT * FROM runs LIMIT 1) t; COMMIT;",
        cols = cols.join(", "),
        exprs = exprs.join(", ")
    ))
    .unwrap();
}

/// P9: new-incident webhook latency with many past runs ÷ with an empty store.
fn p9(opts: &Opts) -> Vec<Figure> {
    let past = if opts.quick { 10_000 } else { 1_000_000 };
    let samples = if opts.quick { 10 } else { 30 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut p50 = Vec::new();
    for n in [0, past] {
        let dir = tempfile::tempdir().unwrap();
        p50.push(rt.block_on(async {
            let kc = unreachable_kubeconfig(dir.path());
            let live = Arc::new(Registry::from_kubeconfig(Some(&kc), WriteMode::Live).await.unwrap());
            let dry = Arc::new(Registry::from_kubeconfig(Some(&kc), WriteMode::DryRun).await.unwrap());
            let set = || plan_set(&dir.path().join("plans"), "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: p9, namespace: ops}\nspec:\n  alertLabels: {alertname: P9}\n  steps:\n  - {name: pause, type: wait, wait: {duration: 1ms}}\n", None);
            // One real run to copy; the store is locked by its process, so the receiver is
            // closed while the copies are made, then opened again as a restarted recoverd would.
            let (app, runs) = receiver(dir.path(), set(), live.clone(), dry.clone()).await;
            assert_eq!(post(&app, incident(0)).await, 202);
            runs.idle().await;
            drop((app, runs));
            if n > 0 {
                seed_past_runs(&dir.path().join("runs.db"), n);
            }
            let (app, runs) = receiver(dir.path(), set(), live, dry).await;
            let mut xs = Vec::new();
            for i in 1..=samples {
                let t = Instant::now();
                assert_eq!(post(&app, incident(i)).await, 202);
                xs.push(ms(t.elapsed()));
                runs.idle().await;
            }
            median(&xs)
        }));
    }
    vec![figure(
        "P9",
        &format!("new-incident webhook latency, {past} past runs"),
        "local",
        p50[1],
        "ms",
        Some((p50[0], "empty store")),
        Compare::RatioAtMost(2.0),
        samples,
        "median; router in-process (no network), SQLite store in a temp dir".into(),
    )]
}

// ---------------------------------------------------------------------------------------------
// Cluster figures: genuine kube-apiservers.

fn cm(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

fn runnable(text: &str) -> Plan {
    let (mut plans, errors) = recoverd::plan::load_str(Path::new("bench.yaml"), text);
    assert!(errors.is_empty(), "{errors:?}");
    recoverd::plan::compile_one(&plans.remove(0), None).unwrap_or_else(|e| panic!("{e}"))
}

async fn execute(executor: &Executor, plan: &Plan) -> recoverd::run::RunRecord {
    let input = RunInput {
        params: BTreeMap::new(),
        alert: None,
    };
    let mut record = executor.new_record("bench", plan, &input);
    executor
        .execute(plan, &input, &mut record, &NoObserver, &RunControl::default())
        .await;
    record
}

fn succeeded(record: &recoverd::run::RunRecord) {
    let v = serde_json::to_value(record).unwrap();
    assert_eq!(v["phase"], "Succeeded", "{v:#}");
}

fn patch_step(name: &str, ns: &str, object: &str, key: &str, value: &str) -> String {
    format!(
        "  - name: {name}\n    type: patch\n    cluster: north\n    patch: {{apiVersion: v1, resource: configmaps, namespace: {ns}, name: {object}, override: {{fieldPath: data.{key}, value: {{raw: \"{value}\"}}}}}}\n"
    )
}

fn plan_text(name: &str, extra: &str, steps: &str) -> String {
    format!("apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n{extra}  steps:\n{steps}")
}

/// Waits (30 s at most) for the watch to report a change of the ConfigMap, with `key` =
/// `value` when given; the instant it did.
async fn seen(
    events: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
    key: &str,
    value: Option<&str>,
) -> Instant {
    let wait = async {
        while let Some(ev) = events.try_next().await.unwrap() {
            if let WatchEvent::Modified(o) = ev {
                let got = o.data.as_ref().and_then(|d| d.get(key)).map(String::as_str);
                if value.is_none() || got == value {
                    return Instant::now();
                }
            }
        }
        panic!("watch ended before {key}={value:?}");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no change {key}={value:?} seen within 30 s"))
}

async fn watch_from_now(
    api: &Api<ConfigMap>,
    name: &str,
) -> impl futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin {
    let rv = api.get(name).await.unwrap().metadata.resource_version.unwrap();
    api.watch(
        &WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(290),
        &rv,
    )
    .await
    .unwrap()
    .boxed()
}

fn merge(key: &str, value: &str) -> Patch<Value> {
    Patch::Merge(json!({"data": {key: value}}))
}

fn cluster_figures(opts: &Opts) -> Vec<Figure> {
    let bin = clusters::apiserver_binary();
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace("Kubernetes ", ""))
        .unwrap_or_default();
    let setting = format!("kube-apiserver {version}");
    // north, south and edge, stopped when this process ends.
    let test_clusters = support::shared();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cluster_figures_on(opts, test_clusters, &setting))
}

async fn cluster_figures_on(opts: &Opts, tc: &clusters::TestClusters, setting: &str) -> Vec<Figure> {
    let mut out = Vec::new();
    let n = if opts.quick { 5 } else { 30 };
    let ns = tc.namespace("bench").await;
    let registry = Arc::new(
        Registry::from_kubeconfig(Some(tc.kubeconfig()), WriteMode::Live)
            .await
            .unwrap(),
    );
    let client = registry.client("north").unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in ["b2", "p3", "p4", "p5"] {
        api.create(&PostParams::default(), &cm(name, json!({"k": "0"})))
            .await
            .unwrap();
    }

    if opts.wants("B2") {
        // A request on a new connection, right after a watch was dropped (what a readField
        // after a wait step does): kube's default client, as recoverd built it before, and
        // recoverd's client (TCP_NODELAY).
        let kube_default: Api<ConfigMap> = Api::namespaced(tc.client("north").await, &ns);
        let mut per = [Vec::new(), Vec::new()];
        for _ in 0..n {
            for (j, a) in [&kube_default, &api].into_iter().enumerate() {
                a.get("b2").await.unwrap();
                let mut w = a
                    .watch(&WatchParams::default().fields("metadata.name=b2"), "0")
                    .await
                    .unwrap()
                    .boxed();
                w.next().await.unwrap().unwrap();
                drop(w);
                let t = Instant::now();
                a.get("b2").await.unwrap();
                per[j].push(ms(t.elapsed()));
            }
        }
        out.push(figure(
            "B2",
            "GET on a new connection after a dropped watch (mean)",
            setting,
            mean(&per[1]),
            "ms",
            Some((mean(&per[0]), "kube's default client (before)")),
            Compare::AtMost(5.0),
            n,
            format!(
                "bug 2: p50/p99 {:.2}/{:.2} ms with TCP_NODELAY, {:.2}/{:.2} ms without",
                pct(&per[1], 0.5),
                pct(&per[1], 0.99),
                pct(&per[0], 0.5),
                pct(&per[0], 0.99)
            ),
        ));
    }

    if opts.wants("P3") {
        let dir = tempfile::tempdir().unwrap();
        let dry = Arc::new(
            Registry::from_kubeconfig(Some(tc.kubeconfig()), WriteMode::DryRun)
                .await
                .unwrap(),
        );
        let set = plan_set(
            &dir.path().join("plans"),
            &plan_text(
                "p3",
                "  alertLabels: {alertname: P9}\n",
                &patch_step("write", &ns, "p3", "k", "{{ alert.startsAt }}"),
            ),
            Some(&registry.names()),
        );
        let (app, runs) = receiver(dir.path(), set, registry.clone(), dry).await;
        let (mut via, mut raw) = (Vec::new(), Vec::new());
        for i in 0..n {
            let mut w = watch_from_now(&api, "p3").await;
            let t = Instant::now();
            assert_eq!(post(&app, incident(i + 1)).await, 202);
            via.push(ms(seen(&mut w, "k", None).await - t));
            runs.idle().await;
            let mut w = watch_from_now(&api, "p3").await;
            let value = format!("raw-{i}");
            let t = Instant::now();
            api.patch("p3", &PatchParams::default(), &merge("k", &value))
                .await
                .unwrap();
            raw.push(ms(seen(&mut w, "k", Some(&value)).await - t));
        }
        for (id, p, max) in [("P3a", 0.5, 2.0), ("P3b", 0.99, 5.0)] {
            out.push(figure(
                id,
                &format!("alert received → first write seen, p{}", (p * 100.0) as u32),
                setting,
                pct(&via, p),
                "ms",
                Some((pct(&raw, p), "one raw PATCH, seen the same way")),
                Compare::DeltaAtMost(max),
                n,
                if id == "P3a" {
                    "both timed from the request to a watch event showing the write".into()
                } else {
                    String::new()
                },
            ));
        }
    }

    if opts.wants("P4") {
        let steps: usize = 50;
        let rounds = if opts.quick { 1 } else { 3 };
        let (mut exec_ms, mut raw_ms, mut plain_ms) = (Vec::new(), Vec::new(), Vec::new());
        let executor = Executor::new(registry.clone());
        for r in 0..rounds {
            let text = plan_text(
                "p4",
                "",
                &(0..steps)
                    .map(|i| patch_step(&format!("s{i}"), &ns, "p4", "k", &format!("e{r}-{i}")))
                    .collect::<String>(),
            );
            let plan = runnable(&text);
            let t = Instant::now();
            succeeded(&execute(&executor, &plan).await);
            exec_ms.push(ms(t.elapsed()));
            // The same PATCHes as the executor sends them (its field manager, strict field
            // validation), and plain ones (what this figure's baseline was until 2026-12-02).
            let same = PatchParams {
                field_manager: Some("recoverd/bench/p4".into()),
                field_validation: Some(ValidationDirective::Strict),
                ..Default::default()
            };
            let t = Instant::now();
            for i in 0..steps {
                api.patch("p4", &same, &merge("k", &format!("r{r}-{i}"))).await.unwrap();
            }
            raw_ms.push(ms(t.elapsed()));
            let t = Instant::now();
            for i in 0..steps {
                api.patch("p4", &PatchParams::default(), &merge("k", &format!("d{r}-{i}")))
                    .await
                    .unwrap();
            }
            plain_ms.push(ms(t.elapsed()));
        }
        let per_step = |xs: &[f64]| median(xs) / steps as f64;
        out.push(figure(
            "P4",
            "executor time per patch step, 50-step plan",
            setting,
            per_step(&exec_ms),
            "ms",
            Some((per_step(&raw_ms), "the same PATCHes raw, one keep-alive connection")),
            Compare::DeltaAtMost(0.5),
            rounds,
            format!(
                "median of {rounds} runs; the difference is the executor's overhead per step. Raw PATCHes without \
                 fieldManager and fieldValidation=Strict: {:.2} ms",
                per_step(&plain_ms)
            ),
        ));
    }

    if opts.wants("P5") {
        let executor = Arc::new(Executor::new(registry.clone()));
        let (mut via, mut raw) = (Vec::new(), Vec::new());
        for i in 0..n {
            let value = format!("go-{i}");
            let plan = runnable(&plan_text(
                "p5",
                "",
                &format!("  - name: wait\n    type: wait\n    cluster: north\n    wait: {{apiVersion: v1, resource: configmaps, namespace: {ns}, name: p5, fieldPath: data.k, condition: {{equals: \"{value}\"}}, timeout: 60s}}\n"),
            ));
            let ex = executor.clone();
            let task = tokio::spawn(async move {
                let record = execute(&ex, &plan).await;
                (Instant::now(), record)
            });
            // Let the wait step establish its watch (and a plain watch of our own).
            let mut w = watch_from_now(&api, "p5").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t = Instant::now();
            api.patch("p5", &PatchParams::default(), &merge("k", &value))
                .await
                .unwrap();
            raw.push(ms(seen(&mut w, "k", Some(&value)).await - t));
            let (done, record) = task.await.unwrap();
            succeeded(&record);
            via.push(ms(done - t));
        }
        out.push(figure(
            "P5",
            "wait step reaction after the field changes, p99",
            setting,
            pct(&via, 0.99),
            "ms",
            Some((pct(&raw, 0.99), "a plain watch client on the same object")),
            Compare::DeltaAtMost(1.0),
            n,
            format!(
                "p50 {:.2} ms vs {:.2} ms; timed from the PATCH to the run's end / the event",
                pct(&via, 0.5),
                pct(&raw, 0.5)
            ),
        ));
    }

    if opts.wants("P6") {
        out.extend(p6(opts, tc, setting).await);
    }

    if opts.wants("R6") {
        out.extend(load::r6(opts, tc, setting).await);
    }

    if opts.wants("P8") {
        let runs_n = if opts.quick { 10 } else { 100 };
        let executor = Arc::new(Executor::new(registry.clone()));
        for i in 0..runs_n {
            api.create(&PostParams::default(), &cm(&format!("p8-{i}"), json!({"k": "0"})))
                .await
                .unwrap();
        }
        // a: what a recovery looks like, mostly waiting (patch, 300 ms, patch, 300 ms, patch);
        // b: five PATCH steps back to back, bound by the API server's throughput.
        for (id, waits) in [("P8a", true), ("P8b", false)] {
            let plan_for = |i: usize, r: usize| {
                let object = format!("p8-{i}");
                let steps: String = (0..if waits { 3 } else { 5 })
                    .map(|s| {
                        let patch = patch_step(&format!("s{s}"), &ns, &object, "k", &format!("{id}-{r}-{s}"));
                        if waits && s < 2 {
                            format!("{patch}  - {{name: w{s}, type: wait, wait: {{duration: 300ms}}}}\n")
                        } else {
                            patch
                        }
                    })
                    .collect();
                Arc::new(runnable(&plan_text(&object, "", &steps)))
            };
            let rounds = if opts.quick { 1 } else { 3 };
            let (mut one, mut many, mut raw) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..rounds {
                let plan = plan_for(0, r * 2);
                let t = Instant::now();
                succeeded(&execute(&executor, &plan).await);
                one.push(ms(t.elapsed()));
                let t = Instant::now();
                let tasks: Vec<_> = (0..runs_n)
                    .map(|i| {
                        let (ex, plan) = (executor.clone(), plan_for(i, r * 2 + 1));
                        tokio::spawn(async move { execute(&ex, &plan).await })
                    })
                    .collect();
                for task in tasks {
                    succeeded(&task.await.unwrap());
                }
                many.push(ms(t.elapsed()));
                if !waits {
                    // The limit: the requests those runs send, sent raw by as many tasks at
                    // once over the same client. A run's first patch step reads its object;
                    // the next ones patch with the resourceVersion the last answer showed.
                    let t = Instant::now();
                    let tasks: Vec<_> = (0..runs_n)
                        .map(|i| {
                            let api = api.clone();
                            tokio::spawn(async move {
                                let object = format!("p8-{i}");
                                let params = PatchParams {
                                    field_manager: Some("recoverd".into()),
                                    field_validation: Some(ValidationDirective::Strict),
                                    ..Default::default()
                                };
                                api.get(&object).await.unwrap();
                                for s in 0..5 {
                                    api.patch(&object, &params, &merge("k", &format!("raw-{r}-{s}")))
                                        .await
                                        .unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    raw.push(ms(t.elapsed()));
                }
            }
            out.push(figure(
                id,
                &if waits {
                    format!("{runs_n} concurrent runs (3 patches, 2 × 300 ms waits)")
                } else {
                    format!("{runs_n} concurrent runs (5 patches back to back)")
                },
                setting,
                median(&many),
                "ms",
                Some((median(&one), "one run alone")),
                Compare::RatioAtMost(2.0),
                rounds,
                format!("wall time, median of {rounds}; one cluster, each run its own ConfigMap"),
            ));
            if !waits {
                out.push(figure(
                    "P8c",
                    &format!("{runs_n} concurrent runs (5 patches) ÷ their requests sent raw"),
                    setting,
                    median(&many),
                    "ms",
                    Some((
                        median(&raw),
                        "the same GET + 5 PATCHes per run, as many tasks at once",
                    )),
                    Compare::RatioAtMost(1.2),
                    rounds,
                    format!(
                        "recoverd's share of P8b: the raw requests are bound by the API server (one run alone: {:.2} ms)",
                        median(&one)
                    ),
                ));
            }
        }
    }
    out
}

/// The CNPG switchover as an SRE would type it, with kubectl; `$K` is kubectl with the test
/// kubeconfig, `$NS` the namespace.
const RUNBOOK: &str = r#"set -euo pipefail
C=clusters.postgresql.cnpg.io
$K --context north -n "$NS" patch $C pg-north --type merge -p '{"spec":{"replica":{"primary":"pg-south"}}}' >/dev/null
$K --context north -n "$NS" wait $C/pg-north --for=jsonpath='{.status.demotionToken}' --timeout=60s >/dev/null
TOKEN=$($K --context north -n "$NS" get $C pg-north -o jsonpath='{.status.demotionToken}')
$K --context south -n "$NS" patch $C pg-south --type merge -p "{\"spec\":{\"replica\":{\"primary\":\"pg-south\",\"promotionToken\":\"$TOKEN\"}}}" >/dev/null
$K --context south -n "$NS" wait $C/pg-south --for=jsonpath="{.status.lastPromotionToken}=$TOKEN" --timeout=60s >/dev/null
$K --context edge apply --server-side --force-conflicts --field-manager=runbook -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: haproxy-config, namespace: $NS}
data:
  haproxy.cfg: |
    frontend pg
      bind *:5432
      default_backend primary
    backend primary
      server pg-south pg-south-rw.db.svc:5432 check
EOF
"#;

/// P6: the CNPG switchover (`tests/data/plans/run/cnpg-switchover.yaml`) on three real
/// clusters with the reactors playing the operator, against the same steps as a kubectl
/// runbook; both with the reactors' fixed delays (2 × 300 ms) subtracted.
async fn p6(opts: &Opts, tc: &clusters::TestClusters, setting: &str) -> Vec<Figure> {
    const REACTOR_DELAYS_MS: f64 = 600.0;
    let rounds = if opts.quick { 1 } else { 3 };
    let plan = support::run::plan("cnpg-switchover.yaml");
    let (mut via, mut bash) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let world = support::run::cnpg_world(&format!("p6-recoverd-{r}")).await;
        // The reactors' watches are established in the background: give them time, on both
        // sides, so that neither waits for a reactor that missed the change.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let record = support::run::run(world.registry.clone(), &plan, &world.ns, &[]).await;
        via.push(ms(t.elapsed()) - REACTOR_DELAYS_MS);
        succeeded(&record);
        drop(world);
        let world = support::run::cnpg_world(&format!("p6-runbook-{r}")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let status = tokio::process::Command::new("bash")
            .args(["-c", RUNBOOK])
            .env("K", format!("kubectl --kubeconfig {}", tc.kubeconfig().display()))
            .env("NS", &world.ns)
            .status()
            .await
            .unwrap();
        bash.push(ms(t.elapsed()) - REACTOR_DELAYS_MS);
        assert!(status.success(), "the kubectl runbook failed");
        drop(world);
    }
    vec![figure(
        "P6",
        "CNPG switchover end to end, 3 clusters, reactor delays subtracted",
        setting,
        median(&via),
        "ms",
        Some((median(&bash), "the same steps as a kubectl runbook")),
        Compare::RatioAtMost(0.1),
        rounds,
        format!("median of {rounds}; each run in a freshly seeded namespace"),
    )]
}
