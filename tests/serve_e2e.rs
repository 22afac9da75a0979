//! `recoverd serve` end to end, as a process: two real clustered Alertmanagers deliver an alert
//! over and over, and the plan runs exactly once against real clusters; and a server killed in
//! the middle of a run leaves it Interrupted, to be resumed without repeating finished steps.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recoverd::cluster::WriteMode;
use serde_json::{json, Value};
use support::alertmanager::{AlertmanagerPair, Timings};
use support::clusters::{free_port, repo_dir};
use support::run::{field, registry, seed, world_in_namespace};
use support::server::metric;

const TOKEN: &str = "e2e-token-0123456789abcdef0123456789";

/// A `recoverd serve` child process, killed when dropped.
struct Serve {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Serve {
    async fn start(plans: &Path, kubeconfig: &Path, store: &Path, token_file: &Path, port: u16) -> Serve {
        let log = std::fs::File::create(store.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_recoverd"))
            .args(["serve", "--plans"])
            .arg(plans)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--reload-interval", "200ms"])
            .arg("--token-file")
            .arg(token_file)
            .arg("--store")
            .arg(format!("sqlite:{}", store.display()))
            .env("RECOVERD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let serve = Serve {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        for _ in 0..200 {
            if serve
                .http
                .get(format!("{}/readyz", serve.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return serve;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "recoverd serve did not become ready; log: {}",
            std::fs::read_to_string(store.with_extension("log")).unwrap_or_default()
        );
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGKILL: no graceful shutdown, no last write.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_alertmanager_deliveries_from_an_ha_pair_make_exactly_one_run() {
    let clusters = support::shared();
    let ns = clusters.namespace("am-e2e").await;
    let reg = registry(clusters, WriteMode::Live).await;
    let (world_dir, world) = world_in_namespace("cnpg.yaml", &ns);
    let (_seeded, reactors) = seed(reg.clone(), &world).await;
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let plan = std::fs::read_to_string(repo_dir().join("plans/cnpg-switchover.yaml"))
        .unwrap()
        .replace("ns: db", &format!("ns: {ns}"))
        // The test apiservers have no kubelet: the plan's exec checks cannot run there.
        .replace("execChecks: true", "execChecks: false");
    std::fs::write(plans.join("cnpg-switchover.yaml"), plan).unwrap();
    let tokens = token_file(dir.path());
    let port = free_port();
    let serve = Serve::start(
        &plans,
        clusters.kubeconfig(),
        &dir.path().join("runs.db"),
        &tokens,
        port,
    )
    .await;

    let webhook = format!("http://127.0.0.1:{port}/api/v1/alerts");
    let timings = Timings {
        group_wait: Duration::from_secs(1),
        group_interval: Duration::from_secs(2),
        repeat_interval: Duration::from_secs(3),
    };
    let am = tokio::task::block_in_place(|| AlertmanagerPair::start(2, &webhook, &tokens, timings));
    let labels = [
        ("alertname", "CNPGPrimaryUnavailable"),
        ("severity", "critical"),
        ("cluster", "pg-north"),
        ("namespace", "db"),
    ];
    tokio::task::block_in_place(|| am.fire(&labels, &[("summary", "pg-north primary unavailable")]));

    // The run happens…
    eventually("a run to succeed", Duration::from_secs(60), || async {
        serve.get("/api/v1/runs").await["runs"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["phase"] == "Succeeded"))
    })
    .await;
    // …and Alertmanager keeps re-sending the firing alert: each resend is deduplicated.
    eventually("three deduplicated resends", Duration::from_secs(45), || async {
        metric(
            &serve.metrics().await,
            "recoverd_runs_deduplicated_total{plan=\"recoverd/cnpg-switchover\",reason=\"same-incident\"}",
        ) >= 3.0
    })
    .await;

    let runs = serve.get("/api/v1/runs").await;
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["phase"], "Succeeded");
    assert_eq!(runs[0]["trigger"]["kind"], "alert");
    // Once each: the demotion, the promotion and the proxy's rollout.
    assert_eq!(reactors.fired(), 3);
    assert_eq!(
        field(
            &reg,
            "south",
            "postgresql.cnpg.io/v1",
            "clusters",
            &ns,
            "pg-south",
            "spec.replica.primary"
        )
        .await,
        Some(json!("pg-south"))
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
    assert!(cfg.as_str().unwrap().contains("server pg-south"), "{cfg}");
    let m = serve.metrics().await;
    assert!(
        metric(&m, "recoverd_alerts_received_total{status=\"firing\"}") >= 4.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "recoverd_runs_total{plan=\"recoverd/cnpg-switchover\",result=\"Succeeded\"}"
        ),
        1.0,
        "{m}"
    );

    // Resolving the alert starts nothing.
    tokio::task::block_in_place(|| am.resolve(&labels));
    eventually("the resolution to arrive", Duration::from_secs(30), || async {
        metric(
            &serve.metrics().await,
            "recoverd_alerts_received_total{status=\"resolved\"}",
        ) >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(serve.get("/api/v1/runs").await["runs"].as_array().unwrap().len(), 1);
    drop(world_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_step_is_interrupted_and_resumes_without_repeating_finished_steps() {
    use std::sync::atomic::Ordering;
    let (hook_url, hits) = support::server::counting_hook(2).await;

    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let plan = std::fs::read_to_string(repo_dir().join("tests/data/plans/serve-restart/held.yaml"))
        .unwrap()
        .replace("http://hook", &hook_url);
    std::fs::write(plans.join("held.yaml"), plan).unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let tokens = token_file(dir.path());
    let store = dir.path().join("runs.db");
    let port = free_port();
    let mut serve = Serve::start(&plans, &kubeconfig, &store, &tokens, port).await;

    let (status, run) = serve
        .post("/api/v1/plans/ops/held/runs", json!({"idempotencyKey": "restart-test"}))
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    eventually("the hold step to be running", Duration::from_secs(10), || async {
        serve.get(&format!("/api/v1/runs/{id}")).await["steps"][1]["status"] == "running"
    })
    .await;
    let before = serve.get(&format!("/api/v1/runs/{id}")).await;
    serve.kill();

    let serve = Serve::start(&plans, &kubeconfig, &store, &tokens, port).await;
    let run = serve.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["phase"], "Interrupted", "{run:#}");
    assert_eq!(run["steps"][0]["status"], "succeeded");
    assert!(run["error"].as_str().unwrap().contains("resume"), "{run:#}");
    // An interrupted run still blocks a new one of the same plan until it is resumed or cancelled.
    let (status, _) = serve.post("/api/v1/plans/ops/held/runs", json!({})).await;
    assert_eq!(status, 409);

    let (status, _) = serve.post(&format!("/api/v1/runs/{id}/resume"), json!({})).await;
    assert_eq!(status, 200);
    eventually("the resumed run to succeed", Duration::from_secs(20), || async {
        serve.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Succeeded"
    })
    .await;
    let after = serve.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(
        hits[0].load(Ordering::SeqCst),
        1,
        "the finished first step was not repeated"
    );
    assert_eq!(hits[1].load(Ordering::SeqCst), 1);
    assert_eq!(after["steps"][0]["startedAt"], before["steps"][0]["startedAt"]);
    assert_eq!(after["steps"][0]["attempts"], 1);
    assert!(
        after["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "succeeded"),
        "{after:#}"
    );
    let (status, _) = serve.post(&format!("/api/v1/runs/{id}/resume"), json!({})).await;
    assert_eq!(status, 409, "a finished run cannot be resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_step_finish_records_it_and_leaves_the_run_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    // The hook is nowhere: the first step fails fast, so use a plan of waits only.
    let plan = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: waits, namespace: ops}\nspec:\n  mode: manual\n  steps:\n  - {name: one, type: wait, wait: {duration: 10ms}}\n  - {name: two, type: wait, wait: {duration: 2s}}\n  - {name: three, type: wait, wait: {duration: 10ms}}\n";
    std::fs::write(plans.join("waits.yaml"), plan).unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let tokens = token_file(dir.path());
    let store = dir.path().join("runs.db");
    let port = free_port();
    let mut serve = Serve::start(&plans, &kubeconfig, &store, &tokens, port).await;
    let (_, run) = serve.post("/api/v1/plans/ops/waits/runs", json!({})).await;
    let id = run["id"].as_str().unwrap().to_string();
    eventually("step two to be running", Duration::from_secs(10), || async {
        serve.get(&format!("/api/v1/runs/{id}")).await["steps"][1]["status"] == "running"
    })
    .await;

    let status = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::block_in_place(|| serve.child.wait()).unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");

    let serve = Serve::start(&plans, &kubeconfig, &store, &tokens, port).await;
    let run = serve.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["phase"], "Interrupted", "{run:#}");
    assert_eq!(
        run["steps"][1]["status"], "succeeded",
        "the running step finished before exit: {run:#}"
    );
    assert_eq!(run["steps"][2]["status"], "pending");
    let (status, _) = serve.post(&format!("/api/v1/runs/{id}/resume"), json!({})).await;
    assert_eq!(status, 200);
    eventually("the resumed run to succeed", Duration::from_secs(10), || async {
        serve.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Succeeded"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_speaks_tls_and_picks_up_a_new_plan_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new("bash")
        .arg(repo_dir().join("tests/kube/mkpki.sh"))
        .arg(&pki)
        .output()
        .unwrap();
    assert!(out.status.success());
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let tokens = token_file(dir.path());
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(["serve", "--plans"])
        .arg(&plans)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--reload-interval",
            "100ms",
            "--metrics-public",
        ])
        .arg("--token-file")
        .arg(&tokens)
        .arg("--tls-cert")
        .arg(pki.join("apiserver.crt"))
        .arg("--tls-key")
        .arg(pki.join("apiserver.key"))
        .arg("--store")
        .arg(format!("sqlite:{}", dir.path().join("runs.db").display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let serve = Serve {
        child,
        url: format!("https://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.crt")).unwrap()).unwrap();
    let https = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if https
            .get(format!("{}/readyz", serve.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "{}",
        std::fs::read_to_string(dir.path().join("serve.log")).unwrap()
    );
    // Plain HTTP on the TLS port gets no API.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .map_or(true, |r| !r.status().is_success()));
    // --metrics-public: no token needed for /metrics, still needed for the API.
    assert_eq!(
        https
            .get(format!("{}/metrics", serve.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        https
            .get(format!("{}/api/v1/plans", serve.url))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let plans_now = || async {
        let v: Value = https
            .get(format!("{}/api/v1/plans", serve.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["plans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(plans_now().await.is_empty());
    let plan = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: late, namespace: ops}\nspec:\n  steps:\n  - {name: one, type: wait, wait: {duration: 10ms}}\n";
    std::fs::write(plans.join("late.yaml"), plan).unwrap();
    eventually("the new plan to be loaded", Duration::from_secs(10), || async {
        plans_now().await == ["ops/late"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recoverd_trigger_starts_a_run_waits_for_it_and_repeats_safely_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let plan = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: waits, namespace: ops}\nspec:\n  mode: manual\n  params: {x: 0}\n  overridableParams: [x]\n  steps:\n  - {name: one, type: wait, wait: {duration: 10ms}}\n  - {name: two, type: wait, wait: {duration: 300ms}}\n";
    std::fs::write(plans.join("waits.yaml"), plan).unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let tokens = token_file(dir.path());
    let port = free_port();
    let serve = Serve::start(&plans, &kubeconfig, &dir.path().join("runs.db"), &tokens, port).await;
    let trigger = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recoverd"));
        cmd.args(["trigger", "ops/waits", "--url", &serve.url, "--token-file"])
            .arg(&tokens)
            .args(extra);
        tokio::task::block_in_place(|| cmd.output().unwrap())
    };

    let out = trigger(&["--wait", "--idempotency-key", "INC-7"]);
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{t}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        t.contains("started") && t.contains("✔ one (") && t.contains("✔ two (") && t.contains("succeeded"),
        "{t}"
    );

    let again = trigger(&["--idempotency-key", "INC-7"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exists"));
    assert_eq!(
        serve.get("/api/v1/runs?plan=ops/waits").await["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let missing = trigger(&["--param", "x=1"]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recoverd"));
    cmd.args(["trigger", "ops/nope", "--url", &serve.url, "--token-file"])
        .arg(&tokens);
    let nope = tokio::task::block_in_place(|| cmd.output().unwrap());
    assert!(missing.status.success());
    assert!(!nope.status.success());
    assert!(
        String::from_utf8_lossy(&nope.stderr).contains("404 Not Found: no plan named ops/nope"),
        "{}",
        String::from_utf8_lossy(&nope.stderr)
    );

    // The other commands an SRE types.
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recoverd"));
        cmd.args(args).args(["--url", &serve.url, "--token-file"]).arg(&tokens);
        tokio::task::block_in_place(|| cmd.output().unwrap())
    };
    let listed = cli(&["runs", "--plan", "ops/waits"]);
    let listed_text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.status.success() && listed_text.contains("ops/waits") && listed_text.contains("Succeeded"),
        "{listed_text}"
    );
    let runs = serve.get("/api/v1/runs?plan=ops/waits").await;
    let done = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["trigger"]["idempotencyKey"] == "INC-7")
        .unwrap();
    let id = done["id"].as_str().unwrap().to_string();
    let shown = cli(&["runs", &id]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("\"phase\": \"Succeeded\""));
    let resume = cli(&["resume", &id]);
    assert!(!resume.status.success());
    let err = String::from_utf8_lossy(&resume.stderr);
    assert!(
        err.contains("409 Conflict") && err.contains("resuming needs a run that is Interrupted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_beyond_keep_runs_are_pruned_and_unfinished_ones_kept() {
    use support::server::{eventually as until, ServeProcess};
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let quick = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: quick, namespace: ops}\nspec:\n  mode: manual\n  steps:\n  - {name: one, type: wait, wait: {duration: 10ms}}\n";
    let gated = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: gated, namespace: ops}\nspec:\n  mode: approval\n  steps:\n  - {name: one, type: wait, wait: {duration: 10ms}}\n";
    std::fs::write(plans.join("quick.yaml"), quick).unwrap();
    std::fs::write(plans.join("gated.yaml"), gated).unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let mut serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    for i in 0..4 {
        let (status, _) = serve
            .post(
                "/api/v1/plans/ops/quick/runs",
                &json!({"idempotencyKey": format!("k{i}")}),
            )
            .await;
        assert_eq!(status, 201);
        until("the run to finish", Duration::from_secs(20), || async {
            serve.get("/api/v1/runs?plan=ops/quick").await["runs"][0]["phase"] == "Succeeded"
        })
        .await;
    }
    let (status, waiting) = serve.post("/api/v1/plans/ops/gated/runs", &json!({})).await;
    assert_eq!(status, 201, "{waiting}");
    serve.kill();

    let serve = ServeProcess::start(
        dir.path(),
        &plans,
        &kubeconfig,
        &["--keep-runs", "1", "--reload-interval", "200ms"],
    )
    .await;
    until("old runs to be pruned", Duration::from_secs(20), || async {
        serve.get("/api/v1/runs").await["runs"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
    })
    .await;
    let runs = serve.get("/api/v1/runs").await;
    let phases: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    assert!(
        phases.contains(&"WaitingForApproval") && phases.contains(&"Succeeded"),
        "the newest finished run and the unfinished one are kept: {runs:#}"
    );
}
