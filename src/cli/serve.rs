//! `recoverd serve`: the receiver Alertmanager calls. Loads plans (and reloads them when the
//! directory changes), serves the HTTP API, executes runs in the background.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tracing::{info, warn};

use super::ClusterArgs;
use crate::app::{App, Config};
use crate::cluster::{Registry, WriteMode};
use crate::plan::cluster_source::PlanSources;
use crate::plan::set::PlanSet;
use crate::run::service::Runs;
use crate::run::store::kube::{KubeStore, KubeStoreConfig};
use crate::run::store::sqlite::SqliteStore;
use crate::run::store::{Retention, RunStore};
use crate::server::limits::{self, ConnLimits, Guard};
use crate::server::{Auth, Settings, Tokens, DEFAULT_BODY_LIMIT};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory (or files) of RecoveryPlans; reloaded when they change.
    #[arg(long, env = "RECOVERD_PLANS", required_unless_present = "plans_from_cluster")]
    pub plans: Vec<PathBuf>,
    #[command(flatten)]
    pub from_cluster: Box<super::cluster_plans::PlansFromClusterArgs>,
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Address to listen on.
    #[arg(long, env = "RECOVERD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// File of bearer tokens (one per line) that every API call must carry. Without it the API
    /// is open, so `serve` then refuses any but a loopback --listen address.
    #[arg(long, env = "RECOVERD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// File of approver tokens: when given, only these may approve, cancel or resume runs, so
    /// the token Alertmanager holds cannot approve what its alerts started; the --token-file
    /// tokens may then only send alerts.
    #[arg(long, env = "RECOVERD_APPROVER_TOKEN_FILE")]
    pub approver_token_file: Option<PathBuf>,
    /// File of operator tokens: these may read plans and runs and trigger plans (a triggered run
    /// of an approval plan still waits for an approver); the --token-file tokens may then only
    /// send alerts.
    #[arg(long, env = "RECOVERD_OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
    /// TLS certificate (PEM); with --tls-key, serve HTTPS.
    #[arg(long, env = "RECOVERD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "RECOVERD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where runs are recorded: `sqlite:PATH` (one process), or `kube` / `kube:NAMESPACE` —
    /// `RecoveryRun` resources in the home cluster (`--home-cluster`; default namespace:
    /// recoverd's own), for several replicas: any replica answers for any run, a Lease per
    /// executing run decides which replica executes it, and another replica takes a run over
    /// when its replica dies.
    #[arg(long, env = "RECOVERD_STORE", default_value = "sqlite:recoverd.db")]
    pub store: String,
    /// With `--store kube`: this replica's name in Leases (unique per process). Default: the
    /// host name (a pod's name) and the process id.
    #[arg(long, env = "RECOVERD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// With `--store kube`: how long a run's Lease holds without renewal. A run whose replica
    /// died is taken over this long after its last renewal (as the other replica observed it).
    #[arg(long, env = "RECOVERD_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Serve /metrics without a token.
    #[arg(long, env = "RECOVERD_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// A file holding the URL of a chat or paging webhook (it usually carries a token, so it
    /// is read from a file such as a mounted Secret) to tell about each live run: started,
    /// awaiting approval, a step failed, succeeded, succeeded with errors, failed, cancelled.
    #[arg(long, env = "RECOVERD_NOTIFY_URL_FILE")]
    pub notify_url_file: Option<PathBuf>,
    /// `slack` (`{"text": …}`, also Mattermost and Rocket.Chat) or `json` (event, run, plan,
    /// phase, step, error, at, text).
    #[arg(long, env = "RECOVERD_NOTIFY_FORMAT", value_enum, default_value = "slack")]
    pub notify_format: crate::notify::NotifyFormat,
    /// A minijinja template for the notice's text (variables: event, summary, run, plan,
    /// phase, step, error, at). Default: one line naming run, plan, what happened and why.
    #[arg(long, env = "RECOVERD_NOTIFY_TEMPLATE", requires = "notify_url_file")]
    pub notify_template: Option<PathBuf>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "RECOVERD_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// How often to look for changed plan files.
    #[arg(long, env = "RECOVERD_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// On shutdown, how long running steps may take to reach a recorded state.
    #[arg(long, env = "RECOVERD_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Retention and connection limits.
    #[command(flatten)]
    pub limits: Box<LimitArgs>,
}

/// Limits on what `serve` keeps and on its clients.
#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// How many finished runs to keep; older ones are deleted (unfinished runs never are).
    #[arg(long, env = "RECOVERD_KEEP_RUNS", default_value_t = 10_000)]
    pub keep_runs: u64,
    /// How long to keep finished runs.
    #[arg(long, env = "RECOVERD_KEEP_RUNS_FOR", default_value = "90d", value_parser = parse_duration)]
    pub keep_runs_for: Duration,
    /// Most connections open at once; more are closed when accepted.
    #[arg(long, env = "RECOVERD_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Most connections open at once from one client address (0: no such limit), so that one
    /// client cannot hold every connection and lock out the others (Alertmanager, the kubelet);
    /// raise it (or 0) when one proxy address, such as a mesh sidecar's, carries every client.
    #[arg(long, env = "RECOVERD_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256)]
    pub max_connections_per_client: usize,
    /// A connection with no traffic for this long is closed.
    #[arg(long, env = "RECOVERD_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A client must send a request's headers within this long.
    #[arg(long, env = "RECOVERD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// A client must send a request's body within this long.
    #[arg(long, env = "RECOVERD_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// SIGXFSZ on Linux: sent when a write passes the file-size limit (RLIMIT_FSIZE).
#[cfg(unix)]
const SIGXFSZ: i32 = 25;

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    // A store write over a file-size limit must fail as a write error — the run stops,
    // /readyz says why — instead of the signal killing recoverd mid-run.
    #[cfg(unix)]
    let _xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ));
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Without tokens anyone who reaches the API can trigger, approve and resume recoveries: a
    // missing or misspelt flag in a deployment must not open it (fail closed).
    if args.token_file.is_none() && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {} without --token-file would let anyone who can reach that address trigger, approve and resume recoveries; give --token-file FILE (one token a line, e.g. `head -c 32 /dev/urandom | base64 > FILE`), or listen on a loopback address such as 127.0.0.1",
            args.listen
        );
    }
    let live = Arc::new(args.clusters.registry(WriteMode::Live).await?);
    let dry = Arc::new(args.clusters.registry(WriteMode::DryRun).await?);
    let names = live.names();
    let store = open_store(&args, &live).await?;
    let plan_paths = args.plans.clone();
    let plan_names = names.clone();
    let plans = blocking(move || load_plans(&plan_paths, &plan_names)).await;
    let read =
        |flag: &str, f: &PathBuf| Tokens::from_file(f).with_context(|| format!("reading --{flag} {}", f.display()));
    let tokens = match &args.token_file {
        Some(f) => read("token-file", f)?,
        None => {
            warn!(
                "no --token-file: the API is open to anyone who can reach {}",
                args.listen
            );
            Tokens::default()
        }
    };
    let mut settings = Settings::new(tokens);
    settings.auth.approvers = match &args.approver_token_file {
        Some(f) => Some(read("approver-token-file", f)?),
        None => None,
    };
    settings.auth.operators = match &args.operator_token_file {
        Some(f) => Some(read("operator-token-file", f)?),
        None => None,
    };
    settings.body_limit = args.body_limit;
    settings.body_timeout = args.limits.body_timeout;
    settings.metrics_public = args.metrics_public;
    let notify = match &args.notify_url_file {
        None => None,
        Some(f) => {
            let url = std::fs::read_to_string(f)
                .with_context(|| format!("reading --notify-url-file {}", f.display()))?
                .trim()
                .to_string();
            reqwest::Url::parse(&url).with_context(|| format!("--notify-url-file {}: not a URL", f.display()))?;
            let template = match &args.notify_template {
                Some(t) => {
                    std::fs::read_to_string(t).with_context(|| format!("reading --notify-template {}", t.display()))?
                }
                None => crate::notify::DEFAULT_TEMPLATE.to_string(),
            };
            Some(
                crate::notify::Notifier::start(crate::notify::NotifyConfig {
                    url,
                    format: args.notify_format,
                    template,
                })
                .map_err(anyhow::Error::msg)?,
            )
        }
    };
    let app = App::build(Config {
        live: live.clone(),
        dry,
        store,
        plans: PlanSet::default(),
        settings,
        notify,
    });
    let runs = app.runs.clone();
    // File plans and, with --plans-from-cluster, the home cluster's: one set, swapped whole.
    let sources = PlanSources::new({
        let runs = runs.clone();
        move |set| runs.set_plans(set)
    });
    sources.set_files(plans);
    let watch = super::cluster_plans::start(
        &args.from_cluster,
        &live,
        sources.clone(),
        args.reload_interval * 5,
        super::cluster_plans::last_runs(runs.clone()),
    )
    .await?;
    let interrupted = runs.recover().await?;
    runs.serve_relayed();
    // With several replicas (`--store kube`): take over the runs of replicas that stopped.
    tokio::spawn({
        let runs = runs.clone();
        let every = (args.lease_duration / 3).max(Duration::from_secs(1));
        async move {
            while runs.accepting() {
                tokio::time::sleep(every).await;
                if let Err(e) = runs.take_over().await {
                    warn!(error = %e, "failed to look for runs to take over");
                }
            }
        }
    });
    if !interrupted.is_empty() {
        warn!(runs = ?interrupted, "runs interrupted by the last shutdown; resume them with POST /api/v1/runs/{{id}}/resume");
    }
    let auth = app.state.settings.auth.clone();
    let app = app.router();

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls {
            config: axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .context("loading TLS certificate and key")?,
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    let reload = tokio::spawn(housekeeping_loop(
        runs.clone(),
        sources,
        auth,
        tls.clone(),
        args.plans.clone(),
        names,
        args.reload_interval,
        Retention {
            max_runs: args.limits.keep_runs,
            max_age: args.limits.keep_runs_for,
        },
    ));
    let limits = ConnLimits {
        max_connections: args.limits.max_connections,
        max_per_client: args.limits.max_connections_per_client,
        idle_timeout: args.limits.idle_timeout,
        header_timeout: args.limits.header_timeout,
    };
    let handle = axum_server::Handle::new();
    let shutdown = {
        let handle = handle.clone();
        let runs = runs.clone();
        let grace = args.shutdown_grace;
        tokio::spawn(async move {
            super::signal::wait_for_stop().await;
            info!("shutting down: no new runs; letting running steps finish");
            runs.shutdown(grace).await;
            runs.flush_notices(Duration::from_secs(5)).await;
            handle.graceful_shutdown(Some(Duration::from_secs(2)));
        })
    };
    info!(listen = %args.listen, "recoverd serving");
    println!("recoverd listening on {}", args.listen);
    match tls {
        Some(tls) => {
            let acceptor =
                axum_server::tls_rustls::RustlsAcceptor::new(tls.config).acceptor(Guard::new(limits, runs.metrics()));
            let mut server = axum_server::bind(args.listen).acceptor(acceptor).handle(handle);
            limits::configure(&mut server, limits);
            server.serve(app.into_make_service()).await?;
        }
        None => {
            let mut server = axum_server::bind(args.listen)
                .acceptor(Guard::new(limits, runs.metrics()))
                .handle(handle);
            limits::configure(&mut server, limits);
            server.serve(app.into_make_service()).await?;
        }
    }
    reload.abort();
    shutdown.abort();
    if let Some(watch) = watch {
        watch.abort();
    }
    Ok(ExitCode::SUCCESS)
}

fn load_plans(paths: &[PathBuf], names: &std::collections::BTreeSet<String>) -> PlanSet {
    let set = PlanSet::load(paths, Some(names));
    for bad in &set.invalid {
        for p in &bad.problems {
            warn!(file = %bad.file, plan = ?bad.plan, problem = %p, "invalid plan skipped");
        }
    }
    info!(valid = set.len(), invalid = set.invalid.len(), "plans loaded");
    set
}

/// Plan files with their modification times, to notice changes.
fn signature(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut errors = Vec::new();
    crate::plan::load::plan_files(paths, &mut errors)
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let (mtime, len) = (
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            );
            (p, mtime, len)
        })
        .collect()
}

/// The run store `--store` names.
async fn open_store(args: &Args, live: &Registry) -> anyhow::Result<Arc<dyn RunStore>> {
    if let Some(path) = args.store.strip_prefix("sqlite:") {
        return Ok(Arc::new(SqliteStore::open(std::path::Path::new(path))?));
    }
    let namespace = match args.store.as_str() {
        "kube" => None,
        other => match other.strip_prefix("kube:") {
            Some(ns) if !ns.is_empty() => Some(ns.to_string()),
            _ => anyhow::bail!("--store {other:?}: expected sqlite:PATH, kube, or kube:NAMESPACE"),
        },
    };
    let client = super::cluster_plans::home_client(args.from_cluster.home_cluster.as_deref(), live)?;
    let identity = match &args.replica_id {
        Some(id) => id.clone(),
        None => format!(
            "{}-{}",
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "recoverd".into()),
            std::process::id()
        ),
    };
    let store = KubeStore::new(
        client.clone(),
        KubeStoreConfig {
            namespace: namespace.unwrap_or_else(|| client.default_namespace().to_string()),
            identity,
            lease_duration: args.lease_duration,
        },
    );
    store.check().await?;
    info!(replica = %store.identity(), "runs are RecoveryRun resources in the home cluster");
    Ok(Arc::new(store))
}

/// Every `every`: reloads changed plans and token files, expires approvals, checks the store
/// (and writes runs that stopped on a failed write), and prunes old runs. The file and store
/// work runs on the blocking pool, and a reload swaps the plan set in one step.
#[allow(clippy::too_many_arguments)]
async fn housekeeping_loop(
    runs: Arc<Runs>,
    sources: Arc<PlanSources>,
    auth: Auth,
    tls: Option<Tls>,
    paths: Vec<PathBuf>,
    names: std::collections::BTreeSet<String>,
    every: Duration,
    keep: Retention,
) {
    let sig_paths = paths.clone();
    let mut last = blocking(move || signature(&sig_paths)).await;
    let mut last_prune: Option<std::time::Instant> = None;
    let mut tls_seen = tls.as_ref().map(Tls::signature);
    loop {
        tokio::time::sleep(every).await;
        if let Some(tls) = &tls {
            let now = Some(tls.signature());
            if now != tls_seen {
                tls_seen = now;
                match tls.config.reload_from_pem_file(&tls.cert, &tls.key).await {
                    Ok(()) => info!("TLS certificate or key changed; reloaded"),
                    Err(e) => {
                        warn!(error = %e, "TLS certificate or key changed but cannot be loaded; serving the previous one")
                    }
                }
            }
        }
        let (sig_paths, load_paths, names) = (paths.clone(), paths.clone(), names.clone());
        let now = blocking(move || signature(&sig_paths)).await;
        if now != last {
            info!("plan files changed; reloading");
            let set = blocking(move || load_plans(&load_paths, &names)).await;
            sources.set_files(set);
            last = now;
        }
        for tokens in auth.all() {
            let tokens = tokens.clone();
            match blocking(move || tokens.reload()).await {
                Ok(true) => info!("token file changed; tokens reloaded"),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "token file changed but is not valid; keeping the tokens it had")
                }
            }
        }
        let r = runs.clone();
        let prune_due = last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if prune_due {
            last_prune = Some(std::time::Instant::now());
        }
        if let Err(e) = r.expire_approvals().await {
            warn!(error = %e, "failed to expire approvals");
        }
        // Logged and counted by the store check itself.
        if r.check_store().await.is_ok() && prune_due {
            if let Err(e) = r.prune(keep).await {
                warn!(error = %e, "failed to prune old runs");
            }
        }
    }
}

/// The TLS configuration and where it came from, to reload it when the files change (a mounted
/// Secret is updated in place).
#[derive(Clone)]
struct Tls {
    config: axum_server::tls_rustls::RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
}

type FileSig = Option<(SystemTime, u64, u64)>;

impl Tls {
    fn signature(&self) -> (FileSig, FileSig) {
        let sig = |p: &PathBuf| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        };
        (sig(&self.cert), sig(&self.key))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task panicked")
}
