//! The command line (one binary, clap): `check`, `run`, `rehearse`, `crd`, `serve`, `trigger`,
//! `sim`, `demo`. Each command is a thin layer over the library; output formats live in the
//! command's own file.
//!
//! Exit codes of the commands that run a plan (`run`, `rehearse`, `trigger --wait`): 0 the run
//! succeeded; 1 it
//! failed or was cancelled (or an expectation failed); 2 nothing ran (bad arguments, an invalid
//! plan, an alert that does not match); 3 it succeeded with tolerated failures
//! (`SucceededWithErrors`: a step with `onError: continue` failed).

mod api;
pub mod check;
pub mod crd;
#[cfg(feature = "sim")]
mod demo;
mod print;
#[cfg(feature = "sim")]
mod rehearse;
mod run;
mod serve;
#[cfg(feature = "sim")]
mod sim;
mod trigger;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "recoverd",
    version,
    about = "Turns an alert into a safe, recorded recovery across Kubernetes clusters"
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
    /// Print the RecoveryPlan and RecoveryRun CRDs.
    Crd,
    /// Serve the HTTP API Alertmanager calls, and execute runs.
    Serve(serve::Args),
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
        Command::Crd => crd::main(),
        Command::Serve(a) => serve::main(a).await,
        Command::Trigger(a) => trigger::main(a).await,
        Command::Runs(a) => api::runs(a).await,
        Command::Approve(a) => api::decide("approve", a).await,
        Command::Cancel(a) => api::decide("cancel", a).await,
        Command::Resume(a) => api::decide("resume", a).await,
        #[cfg(feature = "sim")]
        Command::Sim(a) => sim::main(a).await,
        #[cfg(feature = "sim")]
        Command::Demo(a) => demo::main(a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
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

/// Exit code 3: the run succeeded, but a step with `onError: continue` failed.
pub const EXIT_SUCCEEDED_WITH_ERRORS: u8 = 3;

/// The exit code for runs that ended in these phases: the worst of them.
pub fn exit_code_for(phases: impl IntoIterator<Item = crate::record::Phase>) -> ExitCode {
    use crate::record::Phase;
    let mut code = 0;
    for phase in phases {
        code = match phase {
            Phase::Succeeded => code,
            Phase::SucceededWithErrors if code == 0 => EXIT_SUCCEEDED_WITH_ERRORS,
            Phase::SucceededWithErrors => code,
            _ => 1,
        };
    }
    ExitCode::from(code)
}

/// The firing alerts in an alert file (a webhook payload or one alert) that match a plan; an
/// error when there is none, so that no command runs a plan for an alert it does not match.
pub fn matching_alerts(
    path: &std::path::Path,
    plan: &crate::plan::Plan,
) -> anyhow::Result<Vec<crate::alert::Alert>> {
    let all = crate::alert::load_file(path)?;
    let matching: Vec<_> = all
        .into_iter()
        .filter(|a| a.is_firing() && plan.matches(&a.labels))
        .collect();
    if matching.is_empty() {
        anyhow::bail!(
            "no firing alert in {} matches the plan's alertLabels/alertMatchers; nothing was run",
            path.display()
        );
    }
    Ok(matching)
}

/// A plan validated without a cluster registry (cluster names unchecked), for what must be
/// decided before any cluster is reached: which alerts it matches.
pub fn compile_unchecked(loaded: &crate::plan::LoadedPlan) -> anyhow::Result<crate::plan::Plan> {
    crate::plan::compile_one(loaded, None).map_err(|invalid| {
        check::eprint_problems(loaded, &invalid.problems);
        anyhow::anyhow!("the plan is invalid; nothing was run")
    })
}

/// Loads exactly one plan from a file (or fails saying why).
pub fn load_one(path: &std::path::Path) -> anyhow::Result<crate::plan::LoadedPlan> {
    let (mut plans, errors) = crate::plan::load_paths(&[path.to_path_buf()]);
    if let Some(e) = errors.first() {
        anyhow::bail!("{e}");
    }
    match plans.len() {
        1 => Ok(plans.remove(0)),
        0 => anyhow::bail!("{} holds no RecoveryPlan", path.display()),
        n => anyhow::bail!(
            "{} holds {n} plans; give a file with exactly one",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Phase;

    #[test]
    fn the_exit_code_is_the_worst_outcome_and_tolerated_failures_have_their_own() {
        let code = |phases: &[Phase]| format!("{:?}", exit_code_for(phases.iter().copied()));
        assert_eq!(
            code(&[Phase::Succeeded]),
            format!("{:?}", ExitCode::from(0))
        );
        assert_eq!(
            code(&[Phase::Succeeded, Phase::SucceededWithErrors]),
            format!("{:?}", ExitCode::from(EXIT_SUCCEEDED_WITH_ERRORS))
        );
        assert_eq!(
            code(&[Phase::SucceededWithErrors, Phase::Failed]),
            format!("{:?}", ExitCode::from(1))
        );
        assert_eq!(
            code(&[Phase::Failed, Phase::SucceededWithErrors]),
            format!("{:?}", ExitCode::from(1))
        );
        assert_eq!(
            code(&[Phase::Cancelled]),
            format!("{:?}", ExitCode::from(1))
        );
    }
}
