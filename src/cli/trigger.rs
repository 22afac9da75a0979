//! `recoverd trigger NAMESPACE/PLAN`: start a run through a running `recoverd serve` (the HTTP
//! API's manual trigger), optionally wait for it and print its steps.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

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
    /// Wait for the run to finish and print its steps; exit 0 when it succeeded, 3 when it
    /// succeeded with tolerated failures, 1 otherwise.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (the run goes on).
    #[arg(long, default_value = "1h", value_parser = |s: &str| crate::duration::parse(s).map_err(|e| e.to_string()))]
    pub timeout: Duration,
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let (namespace, name) = args
        .plan
        .split_once('/')
        .context("the plan is namespace/name, e.g. recoverd/cnpg-switchover")?;
    let api = super::api::Api::new(&args.api)?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let body = json!({
        "params": super::run::parse_params(&args.params)?,
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
    println!("run {id} of plan {} {verb}", args.plan);
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut printed = 0;
    loop {
        let (_, run) = api
            .call(reqwest::Method::GET, &format!("/api/v1/runs/{id}"), None)
            .await?;
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        while printed < steps.len()
            && matches!(
                steps[printed]["status"].as_str(),
                Some("succeeded" | "failed" | "skipped")
            )
        {
            let s = &steps[printed];
            let mark = match s["status"].as_str() {
                Some("succeeded") => "✔",
                Some("skipped") => "↷",
                _ => "✘",
            };
            let took = s["durationMs"]
                .as_u64()
                .map(|ms| crate::duration::format(Duration::from_millis(ms)))
                .unwrap_or_default();
            let err = s["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            println!("{mark} {} ({took}){err}", s["name"].as_str().unwrap_or(""));
            printed += 1;
        }
        match run["phase"].as_str() {
            Some("Succeeded") => {
                println!("run {id} succeeded");
                return Ok(ExitCode::SUCCESS);
            }
            Some("SucceededWithErrors") => {
                println!(
                    "run {id} succeeded with errors: {}",
                    run["error"].as_str().unwrap_or("")
                );
                return Ok(ExitCode::from(super::EXIT_SUCCEEDED_WITH_ERRORS));
            }
            Some(p @ ("Failed" | "Cancelled" | "Interrupted")) => {
                println!("run {id} {p}: {}", run["error"].as_str().unwrap_or(""));
                return Ok(ExitCode::FAILURE);
            }
            _ if tokio::time::Instant::now() >= deadline => {
                println!(
                    "stopped waiting after {}; run {id} is still {}",
                    crate::duration::format(args.timeout),
                    run["phase"].as_str().unwrap_or("?")
                );
                return Ok(ExitCode::FAILURE);
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
