//! `recoverd demo`: the whole story with no cluster at all. Three simulated clusters start in
//! this process (north with the CloudNativePG primary, south with its replica, edge with the
//! HAProxy configuration), and so does the receiver (`recoverd serve`'s router, on loopback,
//! with a bearer token). The demo POSTs an Alertmanager webhook payload to it exactly as
//! Alertmanager would, follows the run it started through the HTTP API, narrating each step
//! until the replica is promoted and the proxy redirected, re-sends the alert as Alertmanager
//! does (deduplicated), and shows the final state, the run record, and where to look next.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::{json, Value};

use super::print::Printer;
use crate::alert;
use crate::app::{App, Config};
use crate::cluster::{Registry, WriteMode};
use crate::fieldpath::{as_text, FieldPath};
use crate::plan::set::PlanSet;
use crate::record::{Phase, RunRecord};
use crate::run::service::Runs;
use crate::run::store::sqlite::SqliteStore;
use crate::server::{Settings, Tokens};
use crate::sim::{demo, Sandbox};
use crate::world;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Keep the simulated clusters running after the run, until Ctrl-C, to look around with
    /// kubectl.
    #[arg(long, env = "RECOVERD_DEMO_HOLD")]
    pub hold: bool,
    /// Where to write the kubeconfig of the simulated clusters. Default: a temporary file
    /// (`./recoverd-demo.kubeconfig` with --hold).
    #[arg(long, env = "RECOVERD_DEMO_KUBECONFIG_OUT")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Also write the run record and the final objects as JSON to this file.
    #[arg(long, env = "RECOVERD_DEMO_STATE_OUT")]
    pub state_out: Option<PathBuf>,
}

/// An object the demo changes: (cluster, apiVersion, resource, namespace, name, fields shown).
type Watched = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

const WATCHED: &[Watched] = &[
    (
        "north",
        "postgresql.cnpg.io/v1",
        "clusters",
        "db",
        "pg-north",
        &["spec.replica.primary", "status.demotionToken"],
    ),
    (
        "south",
        "postgresql.cnpg.io/v1",
        "clusters",
        "db",
        "pg-south",
        &[
            "spec.replica.primary",
            "spec.replica.promotionToken",
            "status.lastPromotionToken",
        ],
    ),
    (
        "edge",
        "v1",
        "configmaps",
        "db",
        "haproxy-config",
        &["data[\"haproxy.cfg\"]"],
    ),
];

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!(
        "recoverd-demo-{}-{}",
        std::process::id(),
        kube_sim::new_uid("demo")
    ));
    let result = run(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(args: &Args, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (world_path, plan_path) = demo::write(dir).context("writing the demo's files")?;
    let kubeconfig = match (&args.kubeconfig_out, args.hold) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(PathBuf::from("recoverd-demo.kubeconfig")),
        (None, false) => None,
    };

    println!("recoverd demo — a CloudNativePG switchover on simulated clusters\n");
    let sandbox = Sandbox::start(&world_path, None, kubeconfig.as_deref()).await?;
    let registry = Arc::new(sandbox.registry().await?);
    let (w, base) = world::load(&world_path)?;
    let seeded = world::seed(&registry, &w, &base)
        .await
        .context("seeding the demo world")?;
    let _reactors = crate::reactor::start(registry.clone(), &w.reactors).await?;

    println!("1. Three clusters run in this process (recoverd's built-in Kubernetes API simulator):");
    let role = |name: &str| match name {
        "north" => "pg-north, the CloudNativePG primary",
        "south" => "pg-south, its replica",
        _ => "haproxy-config, sending clients to pg-north",
    };
    for c in sandbox.simulator.clusters() {
        println!("     {:<6} http://{:<16} {}", c.name, c.addr, role(&c.name));
    }
    println!(
        "   {} objects seeded; two reactors play the CloudNativePG operator (a demoted primary\n   writes a demotion token; a replica given that token promotes itself).\n",
        seeded.len()
    );

    let receiver = Receiver::start(&sandbox, &plan_path, dir).await?;
    println!(
        "2. The receiver (`recoverd serve`) listens on http://{} with the plan cnpg-switchover loaded.",
        receiver.addr
    );
    let alerts = alert::parse(demo::ALERT).map_err(|e| anyhow::anyhow!(e))?;
    let firing = alerts
        .iter()
        .find(|a| a.is_firing())
        .context("the demo alert is not firing")?;
    println!(
        "   Alertmanager fires {} (severity {}) for {}: {}.",
        firing.labels.get("alertname").map_or("", String::as_str),
        firing.labels.get("severity").map_or("", String::as_str),
        firing.labels.get("cluster").map_or("", String::as_str),
        firing.annotations.get("summary").map_or("", String::as_str)
    );
    let reply = receiver.post_alert().await?;
    println!("   POST /api/v1/alerts → {}", reply.summary);
    let id = reply.run_id.context("the receiver started no run for the demo alert")?;
    println!();
    let record = receiver.follow(&id).await?;
    let again = receiver.post_alert().await?;
    println!(
        "\n   Alertmanager re-sends the alert (repeat_interval, HA peers): POST /api/v1/alerts → {}",
        again.summary
    );

    println!("\n3. Where things stand now:");
    let mut objects = serde_json::Map::new();
    for (cluster, api_version, resource, ns, name, fields) in WATCHED {
        let obj = read(&registry, cluster, api_version, resource, ns, name).await?;
        println!("   {cluster}: {resource} {ns}/{name}");
        for f in *fields {
            let v = FieldPath::parse(f)?.get(&obj)?;
            let shown = v.as_ref().map_or("<missing>".to_string(), as_text);
            println!("     {f} = {}", shown.trim_end().replace('\n', "\n       "));
        }
        objects.insert(format!("{cluster}/{ns}/{name}"), obj);
    }
    let failures = world::check(&registry, &seeded, &demo::expectations()).await;

    println!("\n4. The run record:");
    print_record(&record);

    if let Some(path) = &args.state_out {
        let state = json!({"run": record, "objects": objects, "failures": failures});
        std::fs::write(path, serde_json::to_string_pretty(&state)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let ok = record.phase == Phase::Succeeded && failures.is_empty();
    for f in &failures {
        println!("   ✘ {f}");
    }
    println!("\nWhere to look next:");
    println!("   • the plan: plans/cnpg-switchover.yaml (validate yours with `recoverd check PLAN`)");
    println!("   • rehearse your plan on simulated clusters: recoverd rehearse PLAN --world WORLD --alert ALERT");
    println!("   • serve a world for kubectl and CI: recoverd sim --world WORLD --kubeconfig-out sim.kubeconfig");
    println!("   • run the receiver against it: recoverd serve --plans plans/ --kubeconfig sim.kubeconfig");
    match (&kubeconfig, args.hold) {
        (Some(k), true) => {
            println!(
                "   • these clusters and the receiver stay up until Ctrl-C:\n       kubectl --kubeconfig {} --context south get clusters -n db -o yaml\n       curl -H 'Authorization: Bearer {}' http://{}/api/v1/runs/{id}",
                k.display(),
                receiver.token,
                receiver.addr
            );
            super::signal::wait_for_stop().await;
        }
        _ => println!("   • keep these clusters and the receiver up to look around: recoverd demo --hold"),
    }
    receiver.stop().await;
    drop(sandbox);
    if args.hold && args.kubeconfig_out.is_none() {
        // It names ports nothing listens on any more.
        if let Some(k) = &kubeconfig {
            let _ = std::fs::remove_file(k);
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The receiver, in process: `recoverd serve`'s router over a SQLite store, on loopback.
struct Receiver {
    addr: std::net::SocketAddr,
    token: String,
    runs: Arc<Runs>,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

/// What the webhook answered.
struct Reply {
    summary: String,
    run_id: Option<String>,
}

impl Receiver {
    async fn start(sandbox: &Sandbox, plan: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<Self> {
        let live = Arc::new(sandbox.registry().await?);
        let dry = Arc::new(Registry::from_kubeconfig(Some(&sandbox.kubeconfig), WriteMode::DryRun).await?);
        let plans = PlanSet::load(&[plan.to_path_buf()], Some(&live.names()));
        if !plans.invalid.is_empty() {
            anyhow::bail!("the demo plan is invalid: {:?}", plans.invalid);
        }
        let store = Arc::new(SqliteStore::open(&dir.join("recoverd.db"))?);
        let token = kube_sim::new_uid("demo-token");
        let built = App::build(Config {
            live,
            dry,
            store,
            plans,
            settings: Settings::new(Tokens::from_list(&[&token])),
            notify: None,
        });
        let (runs, app) = (built.runs.clone(), built.router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            addr,
            token,
            runs,
            http: reqwest::Client::new(),
            task,
        })
    }

    /// POSTs the demo payload as Alertmanager does (JSON, bearer token).
    async fn post_alert(&self) -> anyhow::Result<Reply> {
        let resp = self
            .http
            .post(format!("http://{}/api/v1/alerts", self.addr))
            .bearer_auth(&self.token)
            .header("Content-Type", "application/json")
            .body(demo::ALERT)
            .send()
            .await?;
        let code = resp.status();
        let body: Value = resp.json().await?;
        let outcome = &body["alerts"][0];
        let action = outcome["action"].as_str().unwrap_or("?");
        let run_id = outcome["runId"].as_str().map(str::to_string);
        let summary = format!(
            "{} {}: {action}{}",
            code.as_u16(),
            code.canonical_reason().unwrap_or(""),
            run_id.as_deref().map(|id| format!(" run {id}")).unwrap_or_default()
        );
        Ok(Reply { summary, run_id })
    }

    /// Follows a run through `GET /api/v1/runs/{id}`, narrating each step as it starts and
    /// ends, until it is finished; returns its record.
    async fn follow(&self, id: &str) -> anyhow::Result<RunRecord> {
        let api = super::api::Api::with_token(&format!("http://{}", self.addr), Some(self.token.clone()))?;
        let follow = super::follow::Follow {
            interval: std::time::Duration::from_millis(50),
            timeout: std::time::Duration::from_secs(300),
        };
        match follow.run(&api, id, &Printer::new()).await? {
            super::follow::Followed::Finished(record) => Ok(record),
            super::follow::Followed::StillGoing(_) => {
                anyhow::bail!("the run {id} did not finish within 5 minutes")
            }
        }
    }

    async fn stop(self) {
        self.runs.idle().await;
        self.runs.shutdown(std::time::Duration::from_secs(5)).await;
        self.task.abort();
    }
}

async fn read(
    registry: &Registry,
    cluster: &str,
    api_version: &str,
    resource: &str,
    ns: &str,
    name: &str,
) -> anyhow::Result<Value> {
    let resolved = registry.resolve(cluster, api_version, resource).await?;
    let api = crate::cluster::api_for_object(registry, cluster, &resolved, Some(ns))?;
    Ok(serde_json::to_value(api.get(name).await?)?)
}

fn print_record(r: &RunRecord) {
    let took = r.duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_default();
    println!("   run {} of plan {}: {:?} in {took}", r.id, r.plan, r.phase);
    println!("   trigger: {}", r.trigger.kind);
    for s in &r.steps {
        let on = s.cluster.as_deref().unwrap_or("-");
        let ms = s.duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_default();
        println!("     {:<20} {:<9} {:<6} {:?} {ms}", s.name, s.step_type, on, s.status);
    }
    for (k, v) in &r.outputs {
        println!("   output {k} = {}", as_text(v));
    }
    if let Some(e) = &r.error {
        println!("   error: {e}");
    }
}
