//! The command line (one binary, clap): `check`, `run`, `rehearse`, `crd`, `serve`, `trigger`,
//! `runs`, `approve`, `cancel`, `resume`, `sim`, `demo`, `completions`. Each command is a thin
//! layer over the library. What they share lives here: `-o/--output` ([`output`]), the exit
//! codes ([`exit`], listed in `recoverd --help`), following a run through the API (`follow`),
//! waiting for a stop signal (`signal`), printing a run as it happens (`print`) and what `run` and
//! `rehearse` run a plan with (`plan_input`).

mod api;
pub mod check;
mod cluster_plans;
pub mod crd;
#[cfg(feature = "sim")]
mod demo;
pub mod exit;
mod follow;
pub mod output;
mod plan_input;
pub use plan_input::load_one;
mod print;
#[cfg(feature = "sim")]
mod rehearse;
mod run;
mod serve;
mod signal;
#[cfg(feature = "sim")]
mod sim;
mod trigger;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

use exit::Exit;

/// `0.1.0 (abc1234)`: the crate version and the git commit it was built from (build.rs; the
/// `RECOVERD_GIT_COMMIT` environment variable at build time overrides it, and a build outside
/// a git checkout says `unknown`).
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            option_env!("RECOVERD_GIT_COMMIT")
                .filter(|c| !c.is_empty())
                .unwrap_or("unknown")
        )
    })
}

#[derive(Parser, Debug)]
#[command(
    name = "recoverd",
    version = version(),
    about = "Turns an alert into a safe, recorded recovery across Kubernetes clusters",
    after_help = exit::TABLE
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, e.g. `info` or `recoverd=debug` (logs go to stderr). Default: `info` for
    /// `serve`, `warn` otherwise (where the command prints its own progress); `RUST_LOG` is used
    /// when this is not given.
    #[arg(long, global = true, env = "RECOVERD_LOG")]
    pub log: Option<String>,
    /// Log as JSON lines.
    #[arg(long, global = true, env = "RECOVERD_LOG_JSON")]
    pub log_json: bool,
}

/// Where the clusters come from.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Kubeconfig whose contexts are the clusters (context name = cluster name; the current
    /// context is the default cluster). Default: $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "RECOVERD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// A clusters.yaml mapping cluster names to kubeconfig files and contexts.
    #[arg(long, env = "RECOVERD_CLUSTERS")]
    pub clusters: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and validate plans, and render every template with a sample alert; exit 1 when
    /// anything is invalid.
    Check(check::Args),
    /// Execute a plan once against live clusters, printing each step.
    Run(run::Args),
    /// Seed throwaway clusters from a world file, run its reactors and the plan, show every
    /// change and check expectations.
    #[cfg(feature = "sim")]
    Rehearse(rehearse::Args),
    /// Print the RecoveryPlan and RecoveryRun CRDs (`--nova`: Nova's RecoveryPlan CRD).
    Crd(crd::Args),
    /// Serve the HTTP API Alertmanager calls, and execute runs.
    Serve(Box<serve::Args>),
    /// Start a run of a plan through a running `recoverd serve`.
    Trigger(trigger::Args),
    /// List runs (or show one) from a running `recoverd serve`.
    Runs(api::RunsArgs),
    /// Approve a run that waits for approval.
    Approve(api::DecideArgs),
    /// Cancel a run (waiting, interrupted or executing).
    Cancel(api::DecideArgs),
    /// Resume an interrupted run from its first unfinished step.
    Resume(api::DecideArgs),
    /// Serve a world's clusters from the built-in simulator (plain HTTP on loopback), with
    /// its reactors, until stopped.
    #[cfg(feature = "sim")]
    Sim(sim::Args),
    /// The whole story on simulated clusters: an alert, a CloudNativePG switchover step by
    /// step, the proxy redirected, the run record.
    #[cfg(feature = "sim")]
    Demo(demo::Args),
    /// Print a shell completion script: `source <(recoverd completions bash)`, or write it
    /// where your shell loads completions from.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    crate::telemetry::init(cli.log.as_deref(), default, cli.log_json);
    let result = match cli.command {
        Command::Check(a) => check::main(a).await,
        Command::Run(a) => run::main(a).await,
        #[cfg(feature = "sim")]
        Command::Rehearse(a) => rehearse::main(a).await,
        Command::Crd(a) => crd::main(a),
        Command::Serve(a) => serve::main(*a).await,
        Command::Trigger(a) => trigger::main(a).await,
        Command::Runs(a) => api::runs(a).await,
        Command::Approve(a) => api::decide("approve", a).await,
        Command::Cancel(a) => api::decide("cancel", a).await,
        Command::Resume(a) => api::decide("resume", a).await,
        #[cfg(feature = "sim")]
        Command::Sim(a) => sim::main(a).await,
        #[cfg(feature = "sim")]
        Command::Demo(a) => demo::main(a).await,
        Command::Completions { shell } => completions(shell),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            Exit::for_error(&e).into()
        }
    }
}

/// An error and its causes in one line, each cause once: an error whose message already
/// includes its cause's (as a step's recorded error must) does not print it again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// `recoverd completions SHELL`: the script on stdout (a closed pipe, `| head`, is not an
/// error).
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "recoverd", &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

impl ClusterArgs {
    /// The registry these arguments describe; with neither flag, the default kubeconfig, or the
    /// in-cluster config when running in a pod.
    pub async fn registry(
        &self,
        mode: crate::cluster::WriteMode,
    ) -> Result<crate::cluster::Registry, crate::cluster::ClusterError> {
        use crate::cluster::Registry;
        match (&self.clusters, &self.kubeconfig) {
            (Some(c), _) => Registry::from_clusters_file(c, mode).await,
            (None, Some(k)) => Registry::from_kubeconfig(Some(k), mode).await,
            (None, None)
                if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                    && std::env::var_os("KUBECONFIG").is_none() =>
            {
                Registry::in_cluster(mode)
            }
            (None, None) => Registry::from_kubeconfig(None, mode).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_its_error_s_message_is_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to read x: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Outer { source: io }).context("loading the plan");
        assert_eq!(error_chain(&e), "loading the plan: failed to read x: no such file");
        let plain = anyhow::anyhow!("bad").context("outer");
        assert_eq!(error_chain(&plain), "outer: bad");
    }
}
