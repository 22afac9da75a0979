//! Building recoverd's HTTP API for tests, with `server::router` as `serve` does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use recoverd::app::{App, Config};
use recoverd::cluster::{Registry, WriteMode};
use recoverd::plan::set::PlanSet;
use recoverd::run::service::Runs;
use recoverd::run::store::sqlite::SqliteStore;
use recoverd::server::{Settings, Tokens};
use serde_json::Value;
use tower::ServiceExt;

use super::clusters::repo_dir;

pub const TOKEN: &str = "alertmanager-token";

pub struct TestApp {
    pub router: Router,
    pub runs: Arc<Runs>,
    pub dir: tempfile::TempDir,
}

/// A kubeconfig whose one cluster, `north`, is nowhere: for plans that never touch a cluster.
pub fn nowhere_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: north\n  cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: north\n  context: {cluster: north, user: u}\ncurrent-context: north\n",
    )
    .unwrap();
    path
}

pub const APPROVER: &str = "approver-token";
pub const OPERATOR: &str = "operator-token";

/// Which token sets the API is given besides [`TOKEN`] (the alert sender's).
#[derive(Clone, Copy, Default)]
pub struct Split {
    pub approvers: bool,
    pub operators: bool,
}

/// The API over the plans in `tests/data/plans/serve/` plus `extra` (file name, text).
pub async fn app(extra: &[(&str, String)]) -> TestApp {
    app_with(extra, false).await
}

/// Like [`app`]; with `approvers`, only [`APPROVER`] may approve, cancel or resume.
pub async fn app_with(extra: &[(&str, String)], approvers: bool) -> TestApp {
    app_split(
        extra,
        Split {
            approvers,
            operators: false,
        },
    )
    .await
}

/// Like [`app`], with [`APPROVER`] and/or [`OPERATOR`] tokens in their own roles.
pub async fn app_split(extra: &[(&str, String)], split: Split) -> TestApp {
    app_full(extra, split, None).await
}

/// Like [`app`], telling `notify` about every live run.
pub async fn app_notifying(extra: &[(&str, String)], notify: recoverd::notify::Notifier) -> TestApp {
    app_full(extra, Split::default(), Some(notify)).await
}

async fn app_full(extra: &[(&str, String)], split: Split, notify: Option<recoverd::notify::Notifier>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    for entry in std::fs::read_dir(repo_dir().join("tests/data/plans/serve"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(entry.path(), plans.join(entry.file_name())).unwrap();
    }
    for (name, text) in extra {
        std::fs::write(plans.join(name), text).unwrap();
    }
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let live = Arc::new(
        Registry::from_kubeconfig(Some(&kubeconfig), WriteMode::Live)
            .await
            .unwrap(),
    );
    let dry = Arc::new(
        Registry::from_kubeconfig(Some(&kubeconfig), WriteMode::DryRun)
            .await
            .unwrap(),
    );
    let set = PlanSet::load(&[plans], Some(&live.names()));
    let store = Arc::new(SqliteStore::open(&dir.path().join("runs.db")).unwrap());
    let mut settings = Settings::new(Tokens::from_list(&[TOKEN]));
    settings.auth.approvers = split.approvers.then(|| Tokens::from_list(&[APPROVER]));
    settings.auth.operators = split.operators.then(|| Tokens::from_list(&[OPERATOR]));
    let app = App::build(Config {
        live,
        dry,
        store,
        plans: set,
        settings,
        notify,
    });
    TestApp {
        router: app.router(),
        runs: app.runs,
        dir,
    }
}

impl TestApp {
    /// Sends a request; returns status and JSON body (or the body as a JSON string).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_as(TOKEN, path, body).await
    }

    /// POSTs with another bearer token.
    pub async fn post_as(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(
            Request::post(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(TOKEN, path).await
    }

    /// GETs with another bearer token.
    pub async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.send(
            Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// Waits until the run has finished and returns its record.
    pub async fn finished(&self, id: &str) -> Value {
        self.finished_as(TOKEN, id).await
    }

    /// Like [`TestApp::finished`], reading with another token.
    pub async fn finished_as(&self, token: &str, id: &str) -> Value {
        for _ in 0..500 {
            let (_, run) = self.get_as(token, &format!("/api/v1/runs/{id}")).await;
            // Any phase but the unfinished ones (so a finished phase added later counts too).
            let phase = run["phase"].as_str().unwrap_or("");
            if !phase.is_empty() && !recoverd::run::store::ACTIVE.iter().any(|p| p.as_str() == phase) {
                return run;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("run {id} did not finish");
    }

    pub async fn metrics(&self) -> String {
        let (_, body) = self.get("/metrics").await;
        body.as_str().unwrap().to_string()
    }
}

pub fn authed(b: axum::http::request::Builder) -> axum::http::request::Builder {
    b.header("authorization", format!("Bearer {TOKEN}"))
}

/// An Alertmanager webhook payload with one alert.
pub fn payload(status: &str, labels: Value, fingerprint: &str, starts_at: &str) -> Value {
    serde_json::json!({
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status, "receiver": "recoverd",
        "groupLabels": {}, "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{"status": status, "labels": labels, "annotations": {}, "startsAt": starts_at,
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": fingerprint}],
        "notification_reason": "new", "routeLabels": {"x": "y"}
    })
}

/// A token long enough for `recoverd serve` (which refuses short ones).
pub const SERVE_TOKEN: &str = "serve-token-0123456789abcdef0123456789";

/// A `recoverd serve` child process with its own directory, killed when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub url: String,
    pub port: u16,
    pub store: PathBuf,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

/// Writes [`SERVE_TOKEN`] to `dir/token`.
pub fn serve_token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{SERVE_TOKEN}\n")).unwrap();
    path
}

impl ServeProcess {
    /// Starts `recoverd serve --plans PLANS --kubeconfig K --store sqlite:DIR/runs.db` with the
    /// token file `DIR/token` and `extra` arguments, and waits until `/healthz` answers.
    pub async fn start(dir: &Path, plans: &Path, kubeconfig: &Path, extra: &[&str]) -> Self {
        // `--listen 127.0.0.1:PORT` in `extra` picks the port (a test that must know it first).
        let given = extra
            .iter()
            .position(|a| *a == "--listen")
            .and_then(|i| extra.get(i + 1))
            .and_then(|l| l.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok());
        let port = given.unwrap_or_else(super::clusters::free_port);
        let store = dir.join("runs.db");
        let log = dir.join("serve.log");
        let token = serve_token_file(dir);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_recoverd"))
            .args(["serve", "--plans"])
            .arg(plans)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(if given.is_some() {
                vec![]
            } else {
                vec!["--listen".to_string(), format!("127.0.0.1:{port}")]
            })
            .arg("--token-file")
            .arg(&token)
            .args(if extra.contains(&"--store") {
                vec![]
            } else {
                vec!["--store".to_string(), format!("sqlite:{}", store.display())]
            })
            .args(extra)
            .env("RECOVERD_LOG", "info")
            .stdout(std::process::Stdio::null())
            // A pipe, as under a container runtime, copied to the log file by this process: a
            // test may limit what the server can write to files (RLIMIT_FSIZE).
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        let mut stderr = child.stderr.take().unwrap();
        let mut file = std::fs::File::create(&log).unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stderr, &mut file);
        });
        let tls = extra.contains(&"--tls-cert");
        let serve = ServeProcess {
            child,
            url: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
            port,
            store,
            log,
            // No pooled connections: a test counting connections sees only its own.
            http: reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap(),
        };
        for _ in 0..400 {
            // (Over TLS the caller brings a client that trusts the server's CA.)
            let up = if tls {
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            } else {
                serve
                    .http
                    .get(format!("{}/healthz", serve.url))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            };
            if up {
                return serve;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("recoverd serve did not start; log:\n{}", serve.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn status(&self, path: &str) -> u16 {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(SERVE_TOKEN)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(SERVE_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(SERVE_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(SERVE_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    /// SIGKILL: no graceful shutdown, no last write.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it holds; panics naming `what` after `limit` (a hang guard, not a
/// timing assertion).
pub async fn eventually<F, Fut>(what: &str, limit: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// Counts of calls to a [`counting_hook`], by step number.
pub type Hits = Arc<Vec<std::sync::atomic::AtomicUsize>>;

/// An HTTP server on loopback counting POSTs to `/step/{n}` for `n < steps` — where a test's
/// plan steps land, so "ran once" is counted outside recoverd. Returns its URL and the counts.
pub async fn counting_hook(steps: usize) -> (String, Hits) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits: Hits = Arc::new((0..steps).map(|_| AtomicUsize::new(0)).collect());
    let h = hits.clone();
    let app = Router::new().route(
        "/step/{n}",
        axum::routing::post(move |axum::extract::Path(n): axum::extract::Path<usize>| {
            let h = h.clone();
            async move {
                h[n].fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

/// The counts of a [`counting_hook`] now.
pub fn counts(hits: &Hits) -> Vec<usize> {
    hits.iter()
        .map(|h| h.load(std::sync::atomic::Ordering::SeqCst))
        .collect()
}

/// The value of one series in Prometheus text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
