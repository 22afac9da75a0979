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
use crate::cluster::WriteMode;
use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::plan::set::PlanSet;
use crate::run::service::Runs;
use crate::run::store::Store;
use crate::server::{router, AppState, Tokens, DEFAULT_BODY_LIMIT};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory (or files) of RecoveryPlans; reloaded when they change.
    #[arg(long, env = "RECOVERD_PLANS", required = true)]
    pub plans: Vec<PathBuf>,
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Address to listen on.
    #[arg(long, env = "RECOVERD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// File of bearer tokens (one per line) that every API call must carry. Without it the API
    /// is open, which is only acceptable on loopback.
    #[arg(long, env = "RECOVERD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// File of approver tokens: when given, only these may approve, cancel or resume runs, so
    /// the token Alertmanager holds cannot approve what its alerts started.
    #[arg(long, env = "RECOVERD_APPROVER_TOKEN_FILE")]
    pub approver_token_file: Option<PathBuf>,
    /// TLS certificate (PEM); with --tls-key, serve HTTPS.
    #[arg(long, env = "RECOVERD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "RECOVERD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where runs are recorded: `sqlite:PATH`.
    #[arg(long, env = "RECOVERD_STORE", default_value = "sqlite:recoverd.db")]
    pub store: String,
    /// Serve /metrics without a token.
    #[arg(long, env = "RECOVERD_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "RECOVERD_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// How often to look for changed plan files.
    #[arg(long, env = "RECOVERD_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// On shutdown, how long running steps may take to reach a recorded state.
    #[arg(long, env = "RECOVERD_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let live = Arc::new(args.clusters.registry(WriteMode::Live).await?);
    let dry = Arc::new(args.clusters.registry(WriteMode::DryRun).await?);
    let names = live.names();
    let path = args
        .store
        .strip_prefix("sqlite:")
        .with_context(|| format!("--store {:?}: expected sqlite:PATH", args.store))?;
    let store = Store::open(std::path::Path::new(path))?;
    let plans = load_plans(&args.plans, &names);
    let runs = Runs::new(
        store,
        plans,
        Arc::new(Executor::new(live)),
        Arc::new(Executor::new(dry)),
        Arc::new(Metrics::new()),
    );
    let interrupted = runs.recover()?;
    if !interrupted.is_empty() {
        warn!(runs = ?interrupted, "runs interrupted by the last shutdown; resume them with POST /api/v1/runs/{{id}}/resume");
    }
    let tokens = match &args.token_file {
        Some(f) => {
            Tokens::from_file(f).with_context(|| format!("reading --token-file {}", f.display()))?
        }
        None => {
            warn!(
                "no --token-file: the API is open to anyone who can reach {}",
                args.listen
            );
            Tokens::default()
        }
    };
    let approvers = match &args.approver_token_file {
        Some(f) => Some(
            Tokens::from_file(f)
                .with_context(|| format!("reading --approver-token-file {}", f.display()))?,
        ),
        None => None,
    };
    let state = AppState {
        runs: runs.clone(),
        tokens,
        approvers,
        body_limit: args.body_limit,
        metrics_public: args.metrics_public,
    };
    let app = router(state);

    let reload = tokio::spawn(reload_loop(
        runs.clone(),
        args.plans.clone(),
        names,
        args.reload_interval,
    ));
    let handle = axum_server::Handle::new();
    let shutdown = {
        let handle = handle.clone();
        let runs = runs.clone();
        let grace = args.shutdown_grace;
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutting down: no new runs; letting running steps finish");
            runs.shutdown(grace).await;
            handle.graceful_shutdown(Some(Duration::from_secs(2)));
        })
    };
    info!(listen = %args.listen, "recoverd serving");
    println!("recoverd listening on {}", args.listen);
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .context("loading TLS certificate and key")?;
            axum_server::bind_rustls(args.listen, config)
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
        _ => {
            axum_server::bind(args.listen)
                .handle(handle)
                .serve(app.into_make_service())
                .await?;
        }
    }
    reload.abort();
    shutdown.abort();
    Ok(ExitCode::SUCCESS)
}

fn load_plans(paths: &[PathBuf], names: &std::collections::BTreeSet<String>) -> PlanSet {
    let set = PlanSet::load(paths, Some(names));
    for bad in &set.invalid {
        for p in &bad.problems {
            warn!(file = %bad.file, plan = ?bad.plan, problem = %p, "invalid plan skipped");
        }
    }
    info!(
        valid = set.len(),
        invalid = set.invalid.len(),
        "plans loaded"
    );
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

async fn reload_loop(
    runs: Arc<Runs>,
    paths: Vec<PathBuf>,
    names: std::collections::BTreeSet<String>,
    every: Duration,
) {
    let mut last = signature(&paths);
    loop {
        tokio::time::sleep(every).await;
        let now = signature(&paths);
        if now != last {
            info!("plan files changed; reloading");
            runs.set_plans(load_plans(&paths, &names));
            last = now;
        }
        if let Err(e) = runs.expire_approvals() {
            warn!(error = %e, "failed to expire approvals");
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
