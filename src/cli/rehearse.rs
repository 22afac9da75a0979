//! `recoverd rehearse PLAN --world W [--kubeconfig F]`: seed throwaway clusters from a world
//! (the built-in simulator's unless a kubeconfig or clusters file is given), start its
//! reactors, run the plan through the normal client path, print every change and check
//! expectations.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use super::exit::Exit;
use super::output::{self, Format};
use super::plan_input::{load_one, PlanInput};
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
    #[command(flatten)]
    pub with: PlanInput,
    /// Throwaway clusters to rehearse on (they are written to). Default: the built-in
    /// simulator, serving the world's clusters on free loopback ports.
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// text (progress, changes and expectations on stdout), json or yaml (the run record, the
    /// changes and the expectations' failures), or junit (a test case per step and per
    /// expectation). With a machine format, progress goes to stderr.
    #[arg(short, long, value_name = "FORMAT", default_value = "text",
          value_parser = output::formats(&[Format::Text, Format::Json, Format::Yaml, Format::Junit]))]
    pub output: Format,
}

/// What a rehearsal found, for `-o json|yaml|junit`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rehearsal {
    run: crate::record::RunRecord,
    changes: Vec<Change>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expectations: Option<Checked>,
}

/// An object the rehearsal changed (seeded by the world) or wrote (not in the world).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    object: String,
    /// `changed` or `written`.
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    /// JSON Patch operations as text, secret values `<redacted>`.
    ops: Vec<String>,
}

#[derive(Serialize)]
struct Checked {
    checked: usize,
    failures: Vec<String>,
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let printer = args.output.printer();
    let loaded = load_one(&args.plan)?;
    // Before any cluster is started or seeded: an alert the plan does not match runs nothing.
    // The first alert that matches is the one rehearsed.
    let alert = args.with.alerts(&loaded)?.into_iter().next().flatten();
    let params = args.with.params(&loaded)?;
    let sandbox = match (&args.clusters.kubeconfig, &args.clusters.clusters) {
        (None, None) => Some(crate::sim::Sandbox::start(&args.world, None, None).await?),
        _ => None,
    };
    let registry = Arc::new(match &sandbox {
        Some(s) => {
            let names: Vec<&str> = s.simulator.clusters().iter().map(|c| c.name.as_str()).collect();
            printer.say(format_args!("clusters: built-in simulator ({})", names.join(", ")));
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
    // Read before anything is seeded: a broken expectations file runs nothing.
    let expectations: Option<world::Expectations> = match &args.expect {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?)
        }
        None => None,
    };
    let seeded = world::seed(&registry, &w, &base).await.context("seeding the world")?;
    // What exists before the run, to tell what it created (`strict` expectations).
    let inventory = match expectations.as_ref().filter(|e| e.strict) {
        Some(e) => Some(
            world::Inventory::take(&registry, &seeded, e)
                .await
                .map_err(|e| anyhow::anyhow!("listing the seeded world: {e}"))?,
        ),
        None => None,
    };
    printer.say(format_args!(
        "world: {} object(s) in {} cluster(s), {} reactor(s)",
        seeded.len(),
        w.clusters.len(),
        w.reactors.len()
    ));
    let reactors = crate::reactor::start(registry.clone(), &w.reactors).await?;

    let input = RunInput {
        params,
        alert: alert.as_ref().map(Alert::context),
    };
    let executor = Executor::new(registry.clone());
    let mut record = executor.new_record("rehearsal", &plan, &input);
    record.trigger.kind = crate::record::TriggerKind::Rehearsal;
    let control = args.with.control();
    executor.execute(&plan, &input, &mut record, &printer, &control).await;

    // What the world's operators were doing when the run ended finishes first: a late action
    // that fails, or changes what the expectations look at, counts.
    reactors.settle(std::time::Duration::from_secs(10)).await;
    printer.say(format_args!("\nchanges:"));
    let mut changes = Vec::new();
    let needles = record.secrets.needles();
    let changed = world::changes(&registry, &seeded).await;
    let seeded_objects: std::collections::BTreeSet<String> = seeded.iter().map(world::as_in_record).collect();
    // Objects the world did not seed that the plan wrote: created by the plan (their step's
    // diff starts from nothing).
    let created: Vec<_> = record
        .steps
        .iter()
        .chain(&record.on_failure)
        .filter(|s| s.diff.is_some() && s.status == crate::record::StepStatus::Succeeded)
        .filter(|s| s.object.as_ref().is_some_and(|o| !seeded_objects.contains(o)))
        .collect();
    if changed.is_empty() && created.is_empty() {
        printer.say(format_args!("  (none)"));
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
        printer.say(format_args!("  changed {}", s.describe()));
        let shown = world::as_in_record(s);
        let secret = s.api_version == "v1" && s.resource == "secrets" || tainted.contains(shown.as_str());
        let ops = ops(&crate::cluster::object_diff(&s.before, after), secret, &needles);
        print_ops(&printer, &ops);
        changes.push(Change {
            object: s.describe(),
            kind: "changed",
            step: None,
            ops,
        });
    }
    for step in created {
        let object = step.object.clone().unwrap_or_default();
        printer.say(format_args!(
            "  written {object} (by step {:?}; not in the world)",
            step.name
        ));
        let secret = object.starts_with("v1 secrets ");
        let ops = ops(step.diff.as_ref().expect("filtered"), secret, &needles);
        print_ops(&printer, &ops);
        changes.push(Change {
            object,
            kind: "written",
            step: Some(step.name.clone()),
            ops,
        });
    }
    let mut code = Exit::for_runs([&record]);
    let mut checked = None;
    if let Some(expectations) = &expectations {
        // What the plan wrote that the world did not seed (a delete of what is not there is
        // no object to expect).
        let deletes: std::collections::BTreeSet<&str> = record
            .steps
            .iter()
            .chain(&record.on_failure)
            .filter(|s| s.step_type == crate::plan::StepType::Delete)
            .map(|s| s.name.as_str())
            .collect();
        let written: Vec<String> = changes
            .iter()
            .filter(|c| c.kind == "written")
            .filter(|c| c.step.as_deref().is_none_or(|s| !deletes.contains(s)))
            .map(|c| c.object.clone())
            .collect();
        let mut failures = world::verify(&registry, &seeded, inventory.as_ref(), &written, expectations).await;
        failures.extend(world::check_steps(expectations, &record));
        // A declared outcome replaces "succeeded" as what the rehearsal must end with.
        if let Some(want) = &expectations.outcome {
            let got = serde_json::to_value(record.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if &got == want {
                code = Exit::Success;
            } else {
                failures.push(format!("the run ended {got}, expected {want}"));
            }
        }
        printer.say(format_args!(
            "\nexpectations: {} checked, {} failed",
            expectations.expect.len(),
            failures.len()
        ));
        for f in &failures {
            printer.say(format_args!("  ✘ {f}"));
        }
        if !failures.is_empty() {
            code = Exit::Failed;
        }
        checked = Some(Checked {
            checked: expectations.expect.len(),
            failures,
        });
    }
    // A world whose operators did not do their job proves nothing: a reactor that stopped or
    // failed to act fails the rehearsal.
    let problems = reactors.problems();
    if !problems.is_empty() {
        printer.say(format_args!("\nreactors: {} problem(s)", problems.len()));
        for p in &problems {
            printer.say(format_args!("  ✘ {p}"));
        }
        code = Exit::Failed;
    }
    let rehearsal = Rehearsal {
        run: record,
        changes,
        expectations: checked,
    };
    let out = match args.output {
        Format::Junit => Some(junit(&rehearsal)),
        format => output::serialized(format, &rehearsal)?,
    };
    if let Some(out) = out {
        print!("{out}");
    }
    Ok(code.into())
}

/// The run's steps as one suite, the expectations as another: a failing case per failure
/// (a failure may also be a change no expectation names), or one passing case when all held.
fn junit(r: &Rehearsal) -> String {
    let mut suites = vec![output::run_suite(&r.run)];
    if let Some(e) = &r.expectations {
        let esc = output::xml_escape;
        let cases = if e.failures.is_empty() {
            format!(
                "  <testcase classname=\"expectations\" name=\"{} expectation(s) held\"></testcase>\n",
                e.checked
            )
        } else {
            e.failures
                .iter()
                .map(|f| {
                    format!(
                        "  <testcase classname=\"expectations\" name=\"{}\">\n    <failure message=\"{}\"/>\n  </testcase>\n",
                        esc(f),
                        esc(f)
                    )
                })
                .collect()
        };
        let tests = e.failures.len().max(1);
        let failures = e.failures.len();
        suites.push(output::Suite {
            tests,
            failures,
            xml: format!(
                "<testsuite name=\"expectations\" tests=\"{tests}\" failures=\"{failures}\">\n{cases}</testsuite>\n"
            ),
        });
    }
    output::junit_document("recoverd rehearse", &suites)
}

/// A change as JSON Patch operations, one line each; a Secret's values, and any secret the run
/// read, as `<redacted>`.
fn ops(diff: &serde_json::Value, secret: bool, needles: &[String]) -> Vec<String> {
    let Some(ops) = diff.as_array() else {
        return vec!["<redacted>".to_string()];
    };
    ops.iter()
        .map(|op| {
            let value = match op.get("value") {
                Some(_) if secret => "<redacted>".to_string(),
                Some(v) => crate::executor::scrub(&crate::fieldpath::as_text(v), needles),
                None => String::new(),
            };
            format!(
                "{} {} {}",
                op["op"].as_str().unwrap_or(""),
                op["path"].as_str().unwrap_or(""),
                value.replace('\n', "\\n")
            )
        })
        .collect()
}

fn print_ops(printer: &Printer, ops: &[String]) {
    for op in ops {
        printer.say(format_args!("    {op}"));
    }
}
