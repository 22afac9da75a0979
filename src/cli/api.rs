//! A small client for a running `recoverd serve`, for the commands an SRE types: `trigger`,
//! `runs`, `approve`, `cancel`, `resume`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use super::output::{self, Format};

/// Where the API is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The recoverd API.
    #[arg(long, env = "RECOVERD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// File holding the bearer token (its first line).
    #[arg(long, env = "RECOVERD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Api> {
        let token = match &args.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Api::with_token(&args.url, token)
    }

    /// The API at `url`, authenticating with this bearer token.
    pub fn with_token(url: &str, token: Option<String>) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Api {
            http,
            base: url.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// Sends a request; returns the status and JSON body, or fails with the API's own words.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.with_context(|| format!("calling {}", self.base))?;
        let status = resp.status();
        let value: Value = resp.json().await.context("reading the reply")?;
        if !status.is_success() {
            anyhow::bail!("{status}: {}", value["error"].as_str().unwrap_or("request failed"));
        }
        Ok((status.as_u16(), value))
    }
}

#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    /// One run to show in full; without it, the latest runs.
    pub id: Option<String>,
    /// Only runs of this plan (`namespace/name`).
    #[arg(long)]
    pub plan: Option<String>,
    /// How many runs to list (newest first; at most 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue a previous listing from the token it printed.
    #[arg(long = "continue")]
    pub after: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    /// text (a table; one run: its record as JSON), json or yaml (the API's answer).
    #[arg(short, long, value_name = "FORMAT", default_value = "text",
          value_parser = output::formats(&[Format::Text, Format::Json, Format::Yaml]))]
    pub output: Format,
}

pub async fn runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    if let Some(id) = &args.id {
        let (_, run) = api
            .call(reqwest::Method::GET, &format!("/api/v1/runs/{id}"), None)
            .await?;
        let out = match output::serialized(args.output, &run)? {
            Some(out) => out,
            None => serde_json::to_string_pretty(&run)? + "\n",
        };
        print!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut path = format!("/api/v1/runs?limit={}", args.limit);
    if let Some(p) = &args.plan {
        path.push_str(&format!("&plan={p}"));
    }
    if let Some(c) = &args.after {
        path.push_str(&format!("&continue={c}"));
    }
    let (_, body) = api.call(reqwest::Method::GET, &path, None).await?;
    if let Some(out) = output::serialized(args.output, &body)? {
        print!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<32} {:<20} {:<10} STARTED", "RUN", "PLAN", "PHASE", "TRIGGER");
    for r in body["runs"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<32} {:<20} {:<10} {}",
            r["id"].as_str().unwrap_or(""),
            r["plan"].as_str().unwrap_or(""),
            r["phase"].as_str().unwrap_or(""),
            r["trigger"]["kind"].as_str().unwrap_or(""),
            r["startedAt"].as_str().or(r["createdAt"].as_str()).unwrap_or("")
        );
    }
    if let Some(next) = body["continue"].as_str() {
        println!("(more: --continue {next})");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct DecideArgs {
    /// The run's id.
    pub id: String,
    /// The approval step you approve (required while the run executes: an answer approves
    /// only the question it was given to). `recoverd runs ID` shows the step waiting.
    #[arg(long)]
    pub step: Option<String>,
    /// The waiting step's `startedAt` as `recoverd runs ID` shows it: the approval is refused
    /// when that wait is over and another one (a resumed run, a later iteration) waits now.
    #[arg(long, value_name = "TIME")]
    pub started_at: Option<String>,
    /// Your name, recorded with the decision (with which token you used).
    #[arg(long, env = "RECOVERD_ACTOR")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    /// text (one line), json or yaml (the run as the API answered).
    #[arg(short, long, value_name = "FORMAT", default_value = "text",
          value_parser = output::formats(&[Format::Text, Format::Json, Format::Yaml]))]
    pub output: Format,
}

/// `approve`, `cancel` or `resume` one run.
pub async fn decide(verb: &str, args: DecideArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let mut body = serde_json::Map::new();
    if let Some(a) = &args.actor {
        body.insert("actor".into(), Value::String(a.clone()));
    }
    if let Some(s) = &args.step {
        body.insert("step".into(), Value::String(s.clone()));
    }
    if let Some(t) = &args.started_at {
        body.insert("startedAt".into(), Value::String(t.clone()));
    }
    let body = (!body.is_empty() && verb != "resume").then_some(Value::Object(body));
    let (_, run) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{}/{verb}", args.id),
            body.as_ref(),
        )
        .await?;
    if let Some(out) = output::serialized(args.output, &run)? {
        print!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "run {} of plan {}: {verb} accepted (now {})",
        args.id,
        run["plan"].as_str().unwrap_or("?"),
        run["phase"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}
