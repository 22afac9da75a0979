//! `recoverd run PLAN`: execute once against live clusters.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value;

use super::exit::Exit;
use super::output::{self, Format};
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
    /// Approve every `approval` step as the run reaches it: you are the approver. Without it,
    /// an approval step fails the run (nobody can answer it here).
    #[arg(long)]
    pub approve: bool,
    /// text (progress and result on stdout), json or yaml (the final run record on stdout —
    /// an array of records when several alerts match), or junit (a test suite per run, a test
    /// case per step). With a machine format, progress goes to stderr.
    #[arg(short, long, value_name = "FORMAT", default_value = "text",
          value_parser = output::formats(&[Format::Text, Format::Json, Format::Yaml, Format::Junit]))]
    pub output: Format,
    /// The same as `-o json` (kept for scripts written before -o).
    #[arg(long, hide = true, conflicts_with = "output")]
    pub json: bool,
}

pub fn parse_params(params: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, Value>> {
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

/// `--param` values for a plan: parsed, and each one a param the plan has.
pub fn plan_params(
    params: &[String],
    spec: &crate::plan::RecoveryPlanSpec,
) -> anyhow::Result<std::collections::BTreeMap<String, Value>> {
    let params = parse_params(params)?;
    if let Some(key) = params.keys().find(|k| !spec.params.contains_key(*k)) {
        let known: Vec<_> = spec.params.keys().cloned().collect();
        anyhow::bail!(
            "the plan has no param {key:?} (its params: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    Ok(params)
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let format = if args.json { Format::Json } else { args.output };
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
    let params = plan_params(&args.params, &loaded.plan.spec)?;
    let executor = Executor::new(registry);
    // With a machine format, stdout carries only the result.
    let printer = format.printer();
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
        let control = super::run_control(args.approve);
        let cancel = control.cancel.clone();
        // Listening before the run starts: a signal during its first step cancels it.
        let stop = super::signal::Stop::listen();
        let watcher = tokio::spawn(async move {
            stop.recv().await;
            cancel.cancel();
        });
        executor.execute(&plan, &input, &mut record, &printer, &control).await;
        watcher.abort();
        records.push(record);
    }
    // One alert, one record; several, an array of them: stdout is always one document.
    let out = match (format, records.as_slice()) {
        (Format::Junit, runs) => Some(output::junit_document(
            "recoverd run",
            &runs.iter().map(output::run_suite).collect::<Vec<_>>(),
        )),
        (format, [one]) => output::serialized(format, one)?,
        (format, many) => output::serialized(format, &many)?,
    };
    if let Some(out) = out {
        print!("{out}");
    }
    Ok(Exit::for_runs(&records).into())
}
