//! `recoverd demo`: the whole story with no cluster at all. Three simulated clusters start in
//! this process (north with the CloudNativePG primary, south with its replica, edge with the
//! HAProxy configuration), an Alertmanager alert says the primary is unavailable, the
//! `cnpg-switchover` plan runs step by step until the replica is promoted and the proxy
//! redirected, and the demo shows the final state, the run record, and where to look next.
//!
//! The alert is delivered in process for now ([`Delivery::InProcess`]: match, then execute, as
//! `rehearse` does). When `recoverd serve` is available, [`deliver`] is where the same payload
//! gets POSTed to its `/api/v1/alerts` webhook instead, exactly as Alertmanager would.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::{json, Value};

use super::print::Printer;
use crate::alert::{self, Alert};
use crate::cluster::Registry;
use crate::executor::{Executor, RunInput, RunnablePlan};
use crate::fieldpath::{as_text, FieldPath};
use crate::run::record::{Phase, RunRecord};
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

/// How the demo's alert reaches recoverd.
enum Delivery {
    /// Matched and executed in this process, as `rehearse` does.
    InProcess,
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
        crate::sim::store::new_uid("demo")
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

    println!(
        "1. Three clusters run in this process (recoverd's built-in Kubernetes API simulator):"
    );
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

    let loaded = super::load_one(&plan_path)?;
    let report = crate::plan::validate(&loaded.plan.spec, Some(&registry.names()));
    if !report.is_valid() {
        anyhow::bail!("the demo plan is invalid: {:?}", report.problems);
    }
    let alerts = alert::parse(demo::ALERT).map_err(|e| anyhow::anyhow!(e))?;
    let firing = alerts
        .iter()
        .find(|a| a.is_firing())
        .context("the demo alert is not firing")?;
    println!(
        "2. Alertmanager fires {} (severity {}) for {}: {}.",
        firing.labels.get("alertname").map_or("", String::as_str),
        firing.labels.get("severity").map_or("", String::as_str),
        firing.labels.get("cluster").map_or("", String::as_str),
        firing.annotations.get("summary").map_or("", String::as_str)
    );
    println!(
        "   Plan {} matches its labels; recoverd runs it:\n",
        loaded.plan.metadata.name.as_deref().unwrap_or("")
    );
    let runnable = RunnablePlan {
        plan: loaded.plan.clone(),
        base_dir: plan_path.parent().map(|p| p.to_path_buf()),
    };
    let record = deliver(Delivery::InProcess, &registry, &runnable, firing).await;

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
    println!("   • the plan: recoverd's plans/cnpg-switchover.yaml (validate yours with `recoverd check`)");
    println!("   • rehearse your own plan on simulated clusters: recoverd rehearse PLAN --world WORLD --alert ALERT");
    println!("   • serve a world for kubectl and your CI: recoverd sim --world WORLD --kubeconfig-out sim.kubeconfig");
    match (&kubeconfig, args.hold) {
        (Some(k), true) => {
            println!(
                "   • these clusters stay up until Ctrl-C: kubectl --kubeconfig {} --context south get clusters -n db -o yaml",
                k.display()
            );
            super::sim::wait_for_stop().await;
        }
        _ => println!("   • keep these clusters running to look around: recoverd demo --hold"),
    }
    drop(sandbox);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Hands the alert to recoverd and returns the run it started.
async fn deliver(
    how: Delivery,
    registry: &Arc<Registry>,
    plan: &RunnablePlan,
    alert: &Alert,
) -> RunRecord {
    match how {
        Delivery::InProcess => {
            let input = RunInput {
                params: Default::default(),
                alert: Some(alert.context()),
            };
            let executor = Executor::new(registry.clone());
            let mut record = executor.new_record("demo", &plan.plan, &input);
            record.trigger.kind = "alert".into();
            record.trigger.fingerprint = Some(alert.fingerprint.clone());
            record.trigger.starts_at = Some(alert.starts_at.clone());
            let cancel = tokio_util::sync::CancellationToken::new();
            executor
                .execute(plan, &input, &mut record, &Printer::new(), &cancel)
                .await;
            record
        }
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
    let api = crate::executor::api_for_object(registry, cluster, &resolved, Some(ns))?;
    Ok(serde_json::to_value(api.get(name).await?)?)
}

fn print_record(r: &RunRecord) {
    let took = r
        .duration_ms
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_default();
    println!(
        "   run {} of plan {}: {:?} in {took}",
        r.id, r.plan, r.phase
    );
    println!("   trigger: {}", r.trigger.kind);
    for s in &r.steps {
        let on = s.cluster.as_deref().unwrap_or("-");
        let ms = s
            .duration_ms
            .map(|ms| format!("{ms} ms"))
            .unwrap_or_default();
        println!(
            "     {:<20} {:<9} {:<6} {:?} {ms}",
            s.name, s.step_type, on, s.status
        );
    }
    for (k, v) in &r.outputs {
        println!("   output {k} = {}", as_text(v));
    }
    if let Some(e) = &r.error {
        println!("   error: {e}");
    }
}
