//! `recoverd run PLAN`: execute once against live clusters.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value;

use super::print::Printer;
use super::ClusterArgs;
use crate::alert::Alert;
use crate::cluster::WriteMode;
use crate::executor::{Executor, RunInput};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The plan file.
    pub plan: PathBuf,
    /// An Alertmanager webhook payload or a single alert; each firing alert that matches the
    /// plan runs it once.
    #[arg(long)]
    pub alert: Option<PathBuf>,
    /// Override a param: `--param north=pg-north` (values are YAML: numbers and booleans keep
    /// their type).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Send every write with dryRun=All: the API servers validate it, nothing is stored.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the final run record as JSON on stdout (progress goes to stderr); an array of
    /// records when several alerts match.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_params(
    params: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, Value>> {
    params
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--param {p:?}: expected KEY=VALUE"))?;
            let v: Value = serde_yaml::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
            Ok((k.to_string(), v))
        })
        .collect()
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = super::load_one(&args.plan)?;
    // Before anything touches a cluster: an alert the plan does not match runs nothing.
    let alerts: Vec<Option<Alert>> = match &args.alert {
        None => vec![None],
        Some(path) => super::matching_alerts(path, &super::compile_unchecked(&loaded)?)?
            .into_iter()
            .map(Some)
            .collect(),
    };
    let mode = if args.dry_run {
        WriteMode::DryRun
    } else {
        WriteMode::Live
    };
    let registry = Arc::new(args.clusters.registry(mode).await?);
    let plan = match crate::plan::compile_one(&loaded, Some(&registry.names())) {
        Ok(plan) => plan,
        Err(invalid) => {
            super::check::eprint_problems(&loaded, &invalid.problems);
            anyhow::bail!("the plan is invalid; nothing was run");
        }
    };
    let params = parse_params(&args.params)?;
    if let Some(key) = params
        .keys()
        .find(|k| !loaded.plan.spec.params.contains_key(*k))
    {
        let known: Vec<_> = loaded.plan.spec.params.keys().cloned().collect();
        anyhow::bail!(
            "the plan has no param {key:?} (its params: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    let executor = Executor::new(registry);
    // With --json, stdout carries only the record.
    let printer = if args.json {
        Printer::to_stderr()
    } else {
        Printer::new()
    };
    let mut phases = Vec::new();
    let mut records = Vec::new();
    for alert in alerts {
        let input = RunInput {
            params: params.clone(),
            alert: alert.as_ref().map(Alert::context),
        };
        let id = format!("cli-{}", jiff::Timestamp::now().as_millisecond());
        let mut record = executor.new_record(&id, &plan, &input);
        record.trigger = crate::record::Trigger {
            kind: crate::record::TriggerKind::Cli,
            fingerprint: alert.as_ref().map(|a| a.fingerprint.clone()),
            starts_at: alert.as_ref().map(|a| a.starts_at.clone()),
            ..Default::default()
        };
        let control = crate::executor::RunControl::default();
        let ctrl_c = control.cancel.clone();
        let watcher = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                ctrl_c.cancel();
            }
        });
        executor
            .execute(&plan, &input, &mut record, &printer, &control)
            .await;
        watcher.abort();
        phases.push(record.phase);
        records.push(record);
    }
    if args.json {
        // One alert, one record; several, an array of them: stdout is always one document.
        let out = match records.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            many => serde_json::to_string_pretty(many)?,
        };
        println!("{out}");
    }
    Ok(super::exit_code_for(phases))
}
