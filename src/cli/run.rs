//! `recoverd run PLAN`: execute once against live clusters.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::exit::Exit;
use super::output::{self, Format};
use super::plan_input::{load_one, PlanInput};
use super::ClusterArgs;
use crate::alert::Alert;
use crate::cluster::WriteMode;
use crate::executor::{Executor, RunInput};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The plan file.
    pub plan: PathBuf,
    #[command(flatten)]
    pub with: PlanInput,
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Send every write with dryRun=All: the API servers validate it, nothing is stored.
    #[arg(long)]
    pub dry_run: bool,
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

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let format = if args.json { Format::Json } else { args.output };
    let loaded = load_one(&args.plan)?;
    // Before anything touches a cluster: an alert the plan does not match runs nothing.
    let alerts = args.with.alerts(&loaded)?;
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
    let params = args.with.params(&loaded)?;
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
        let control = args.with.control();
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
