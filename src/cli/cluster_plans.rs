//! `recoverd serve --plans-from-cluster`: the flags, and which cluster is home.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::cluster::Registry;
use crate::plan::cluster_source::{self, PlanSources, Scope, WatchConfig};

/// Plans from the home cluster.
#[derive(clap::Args, Debug, Default)]
pub struct PlansFromClusterArgs {
    /// Also take plans from `RecoveryPlan` resources in the home cluster (recoverd.io, and Nova's
    /// recovery.elotl.co when its CRD is installed, even later), watched and reloaded as they
    /// change. Each is validated like a plan file; the result is on its status
    /// (`kubectl get recoveryplans` shows VALID; the Valid condition's message names the field
    /// to fix) and in an Event. A plan file's namespace/name wins over a resource's, and a
    /// recoverd.io resource's over a Nova one's; the other is reported NameClash.
    #[arg(long, env = "RECOVERD_PLANS_FROM_CLUSTER")]
    pub plans_from_cluster: bool,
    /// The namespace whose RecoveryPlans are watched. Default: recoverd's own (the pod's, or the
    /// home context's namespace).
    #[arg(
        long,
        env = "RECOVERD_NAMESPACE",
        requires = "plans_from_cluster",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: Option<String>,
    /// Watch RecoveryPlans in every namespace (needs a ClusterRole).
    #[arg(long, env = "RECOVERD_ALL_NAMESPACES", requires = "plans_from_cluster")]
    pub all_namespaces: bool,
    /// The cluster (a name in the registry) whose RecoveryPlans are watched and, with
    /// `--store kube`, where runs and Leases live. Default: in a pod, the cluster it runs in
    /// (its service account); otherwise the default cluster.
    #[arg(long, env = "RECOVERD_HOME_CLUSTER")]
    pub home_cluster: Option<String>,
}

/// The newest live runs, for the plans' `status.lastRun`/`lastResult` (one page of the store).
pub fn last_runs(runs: Arc<crate::run::service::Runs>) -> cluster_source::LastRuns {
    Arc::new(move || {
        let runs = runs.clone();
        Box::pin(async move {
            let Ok(page) = runs.page(None, 200, None).await else {
                return Vec::new();
            };
            page.runs
                .into_iter()
                .filter(|r| r.mode == crate::run::record::RunMode::Live)
                .map(|r| cluster_source::LastRun {
                    plan: r.plan,
                    id: r.id,
                    phase: r.phase.as_str().to_string(),
                })
                .collect()
        })
    })
}

/// The home cluster's client: `--home-cluster NAME` from the registry; in a pod, its own
/// cluster; otherwise the registry's default cluster.
pub fn home_client(name: Option<&str>, registry: &Registry) -> anyhow::Result<kube::Client> {
    Ok(match name {
        Some(name) => registry
            .client(name)
            .with_context(|| format!("--home-cluster {name}"))?,
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            let config = kube::Config::incluster().context("reading the in-cluster config for the home cluster")?;
            crate::cluster::client_from_config(config, "home").context("building a client for the home cluster")?
        }
        None => registry.client(registry.default_cluster())?,
    })
}

/// Starts watching when asked to; returns once the cluster's plans are published.
pub async fn start(
    args: &PlansFromClusterArgs,
    registry: &Registry,
    sources: Arc<PlanSources>,
    nova_poll: Duration,
    last_runs: cluster_source::LastRuns,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !args.plans_from_cluster {
        return Ok(None);
    }
    let client = home_client(args.home_cluster.as_deref(), registry)?;
    let scope = match (&args.namespace, args.all_namespaces) {
        (_, true) => Scope::All,
        (Some(ns), false) => Scope::Namespace(ns.clone()),
        (None, false) => Scope::Namespace(client.default_namespace().to_string()),
    };
    let config = WatchConfig {
        client,
        scope,
        clusters: registry.names(),
        nova_poll,
        sync_limit: Duration::from_secs(30),
        last_runs: Some((last_runs, nova_poll / 5)),
    };
    Ok(Some(cluster_source::start(config, sources).await?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed_and_plans_come_from_files_or_the_cluster() {
        use clap::{CommandFactory, Parser};
        super::super::Cli::command().debug_assert();
        let parse = |args: &[&str]| super::super::Cli::try_parse_from(args);
        assert!(parse(&["recoverd", "serve"]).is_err(), "no plans at all");
        assert!(parse(&["recoverd", "serve", "--plans-from-cluster"]).is_ok());
        assert!(parse(&["recoverd", "serve", "--plans", "p"]).is_ok());
        assert!(parse(&["recoverd", "serve", "--plans", "p", "--namespace", "x"]).is_err());
        assert!(parse(&[
            "recoverd",
            "serve",
            "--plans-from-cluster",
            "--namespace",
            "x",
            "--all-namespaces"
        ])
        .is_err());
    }
}
