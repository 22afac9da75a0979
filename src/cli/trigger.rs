//! `recoverd trigger NAMESPACE/PLAN`: start a run through a running `recoverd serve` (the HTTP
//! API's manual trigger), optionally wait for it and print its steps.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::exit::Exit;
use super::follow::{Follow, Followed};
use super::output::{self, Format};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The plan, as `namespace/name`.
    pub plan: String,
    #[command(flatten)]
    pub api: super::api::ApiArgs,
    /// Override a param: `--param north=pg-north`.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Send every write with dryRun=All.
    #[arg(long)]
    pub dry_run: bool,
    /// The same key always means the same run (safe to repeat).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait for the run to finish and print its steps; exit as `recoverd run` does (0, 1, 3 or
    /// 4: see `recoverd --help`), or 5 when --timeout passes first.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (the run goes on; exit 5).
    #[arg(long, default_value = "1h", value_parser = |s: &str| crate::duration::parse(s).map_err(|e| e.to_string()))]
    pub timeout: Duration,
    /// text, json or yaml (the run as started or, with --wait, as it ended), or junit (with
    /// --wait: a test case per step). With a machine format, progress goes to stderr.
    #[arg(short, long, value_name = "FORMAT", default_value = "text", requires_if("junit", "wait"),
          value_parser = output::formats(&[Format::Text, Format::Json, Format::Yaml, Format::Junit]))]
    pub output: Format,
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let (namespace, name) = args
        .plan
        .split_once('/')
        .context("the plan is namespace/name, e.g. recoverd/cnpg-switchover")?;
    let api = super::api::Api::new(&args.api)?;
    let body = json!({
        "params": super::plan_input::parse_params(&args.params)?,
        "dryRun": args.dry_run,
        "idempotencyKey": args.idempotency_key,
        "actor": std::env::var("USER").ok().map(|u| format!("{u} (recoverd trigger)")),
    });
    let (status, run) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/plans/{namespace}/{name}/runs"),
            Some(&body),
        )
        .await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    let verb = if status == 201 {
        "started"
    } else {
        "already exists (same idempotency key)"
    };
    let printer = args.output.printer();
    printer.say(format_args!("run {id} of plan {} {verb}", args.plan));
    if !args.wait {
        if let Some(out) = output::serialized(args.output, &run)? {
            print!("{out}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let follow = Follow {
        interval: Duration::from_millis(250),
        timeout: args.timeout,
    };
    let (record, exit) = match follow.run(&api, &id, &printer).await? {
        Followed::Finished(record) => {
            let exit = Exit::for_runs([&record]);
            (record, exit)
        }
        Followed::StillGoing(record) => {
            printer.say(format_args!(
                "stopped waiting after {}; run {id} is still {}",
                crate::duration::format(args.timeout),
                record.phase.as_str()
            ));
            (record, Exit::TimedOut)
        }
    };
    match args.output {
        Format::Junit => print!(
            "{}",
            output::junit_document("recoverd trigger", &[output::run_suite(&record)])
        ),
        format => {
            if let Some(out) = output::serialized(format, &record)? {
                print!("{out}");
            }
        }
    }
    Ok(exit.into())
}
