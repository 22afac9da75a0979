//! `recoverd rehearse PLAN --world W [--kubeconfig F]`: seed throwaway clusters from a world
//! (the built-in simulator's unless a kubeconfig or clusters file is given), start its
//! reactors, run the plan through the normal client path, print every change and check
//! expectations.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::print::Printer;
use super::ClusterArgs;
use crate::alert::Alert;
use crate::cluster::WriteMode;
use crate::executor::{Executor, RunInput};
use crate::world;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The plan file.
    pub plan: PathBuf,
    /// The world: CRDs and objects per cluster, and reactors.
    #[arg(long)]
    pub world: PathBuf,
    /// Expectations to check afterwards.
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// An Alertmanager webhook payload or single alert to run the plan with.
    #[arg(long)]
    pub alert: Option<PathBuf>,
    /// Throwaway clusters to rehearse on (they are written to). Default: the built-in
    /// simulator, serving the world's clusters on free loopback ports.
    #[command(flatten)]
    pub clusters: ClusterArgs,
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = super::load_one(&args.plan)?;
    // Before any cluster is started or seeded: an alert the plan does not match runs nothing.
    let alert = match &args.alert {
        Some(p) => super::matching_alerts(p, &super::compile_unchecked(&loaded)?)?
            .into_iter()
            .next(),
        None => None,
    };
    let sandbox = match (&args.clusters.kubeconfig, &args.clusters.clusters) {
        (None, None) => Some(crate::sim::Sandbox::start(&args.world, None, None).await?),
        _ => None,
    };
    let registry = Arc::new(match &sandbox {
        Some(s) => {
            let names: Vec<&str> = s
                .simulator
                .clusters()
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            println!("clusters: built-in simulator ({})", names.join(", "));
            s.registry().await?
        }
        None => args.clusters.registry(WriteMode::Live).await?,
    });
    let plan = match crate::plan::compile_one(&loaded, Some(&registry.names())) {
        Ok(plan) => plan,
        Err(invalid) => {
            super::check::eprint_problems(&loaded, &invalid.problems);
            anyhow::bail!("the plan is invalid; nothing was run");
        }
    };
    let (w, base) = world::load(&args.world)?;
    let seeded = world::seed(&registry, &w, &base)
        .await
        .context("seeding the world")?;
    println!(
        "world: {} object(s) in {} cluster(s), {} reactor(s)",
        seeded.len(),
        w.clusters.len(),
        w.reactors.len()
    );
    let _reactors = crate::reactor::start(registry.clone(), &w.reactors).await?;

    let input = RunInput {
        params: Default::default(),
        alert: alert.as_ref().map(Alert::context),
    };
    let executor = Executor::new(registry.clone());
    let mut record = executor.new_record("rehearsal", &plan, &input);
    record.trigger.kind = crate::record::TriggerKind::Rehearsal;
    let control = crate::executor::RunControl::default();
    executor
        .execute(&plan, &input, &mut record, &Printer::new(), &control)
        .await;

    println!("\nchanges:");
    let needles = record.secrets.needles();
    let changed = world::changes(&registry, &seeded).await;
    let seeded_objects: std::collections::BTreeSet<String> =
        seeded.iter().map(as_in_record).collect();
    // Objects the world did not seed that the plan wrote: created by the plan (their step's
    // diff starts from nothing).
    let created: Vec<_> = record
        .steps
        .iter()
        .chain(&record.on_failure)
        .filter(|s| s.diff.is_some() && s.status == crate::record::StepStatus::Succeeded)
        .filter(|s| {
            s.object
                .as_ref()
                .is_some_and(|o| !seeded_objects.contains(o))
        })
        .collect();
    if changed.is_empty() && created.is_empty() {
        println!("  (none)");
    }
    // Objects a step wrote with a secret-derived value: their record's diff is redacted, and so
    // is their change here (no scrubbing can find every form a value takes).
    let tainted: std::collections::BTreeSet<&str> = record
        .steps
        .iter()
        .chain(&record.on_failure)
        .filter(|s| s.diff.as_ref().is_some_and(|d| d == "<redacted>"))
        .filter_map(|s| s.object.as_deref())
        .collect();
    for (s, after) in &changed {
        println!("  changed {}", s.describe());
        let shown = as_in_record(s);
        let secret =
            s.api_version == "v1" && s.resource == "secrets" || tainted.contains(shown.as_str());
        print_ops(
            &crate::cluster::object_diff(&s.before, after),
            secret,
            &needles,
        );
    }
    for step in created {
        println!(
            "  written {} (by step {:?}; not in the world)",
            step.object.as_deref().unwrap_or_default(),
            step.name
        );
        let secret = step
            .object
            .as_deref()
            .is_some_and(|o| o.starts_with("v1 secrets "));
        print_ops(step.diff.as_ref().expect("filtered"), secret, &needles);
    }
    let mut code = super::exit_code_for([record.phase]);
    if let Some(path) = &args.expect {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let expectations: world::Expectations =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let failures = world::check(&registry, &seeded, &expectations).await;
        println!(
            "\nexpectations: {} checked, {} failed",
            expectations.expect.len(),
            failures.len()
        );
        for f in &failures {
            println!("  ✘ {f}");
        }
        if !failures.is_empty() {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

/// A seeded object as step records name it (`v1 configmaps db/x on cluster edge`).
fn as_in_record(s: &world::Seeded) -> String {
    format!(
        "{} on cluster {}",
        crate::cluster::describe_object(
            &s.api_version,
            &s.resource,
            s.namespace.as_deref(),
            &s.name
        ),
        s.cluster
    )
}

/// Prints a change as JSON Patch operations; a Secret's values, and any secret the run read,
/// as `<redacted>`.
fn print_ops(diff: &serde_json::Value, secret: bool, needles: &[String]) {
    let Some(ops) = diff.as_array() else {
        println!("    <redacted>");
        return;
    };
    for op in ops {
        let value = match op.get("value") {
            Some(_) if secret => "<redacted>".to_string(),
            Some(v) => crate::executor::scrub(&crate::fieldpath::as_text(v), needles),
            None => String::new(),
        };
        println!(
            "    {} {} {}",
            op["op"].as_str().unwrap_or(""),
            op["path"].as_str().unwrap_or(""),
            value.replace('\n', "\\n")
        );
    }
}
