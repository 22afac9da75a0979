//! `recoverd check PATH…`: load, validate and render every plan; text for people, JSON and
//! JUnit for CI. Exit 1 when anything is invalid.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::exit::Exit;
use super::output::{self, Format};
use super::ClusterArgs;
use crate::alert::{self, Alert};
use crate::cluster::WriteMode;
use crate::plan::spans::Positions;
use crate::plan::validate::{output_key, step_templates};
use crate::plan::{load_paths, validate, LoadedPlan};
use crate::template;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Plan files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Check cluster names against this registry (without it, cluster names are not checked).
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// A sample alert (webhook payload or single alert) to render templates with; default: a
    /// generated alert carrying each plan's alertLabels.
    #[arg(long)]
    pub alert: Option<PathBuf>,
    /// text, json, yaml (a verdict per plan, each problem at its file, line and column) or
    /// junit (a test case per plan).
    #[arg(short, long, alias = "format", value_name = "FORMAT", default_value = "text",
          value_parser = output::formats(&[Format::Text, Format::Json, Format::Yaml, Format::Junit]))]
    pub output: Format,
}

/// The verdict on one plan (or one file that failed to load).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PlanResult {
    pub file: String,
    pub plan: Option<String>,
    pub valid: bool,
    pub problems: Vec<CheckProblem>,
    pub notes: Vec<String>,
}

/// One problem, at the exact field it is about.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct CheckProblem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field: `spec.steps[2].readField.fieldPath` (empty for a document that did not load).
    pub path: String,
    /// A bounded category (`undefined-value`, `field-path`, `template`, `yaml`…).
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub message: String,
    /// The source line, for the caret in text output.
    #[serde(skip)]
    pub source_line: Option<String>,
}

impl std::fmt::Display for CheckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Line 0: the file as a whole (it could not be read).
        match self.line {
            0 => write!(f, "{}: ", self.file)?,
            _ => write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?,
        }
        if let Some(step) = &self.step {
            write!(f, "step {step:?}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

pub async fn main(args: Args) -> anyhow::Result<ExitCode> {
    let names = if args.clusters.clusters.is_some() || args.clusters.kubeconfig.is_some() {
        Some(args.clusters.registry(WriteMode::DryRun).await?.names())
    } else {
        None
    };
    let sample = match &args.alert {
        Some(p) => alert::load_file(p)?.into_iter().find(Alert::is_firing),
        None => None,
    };
    let results = check_paths(&args.paths, names.as_ref(), sample.as_ref());
    let out = match args.output {
        Format::Text => text(&results, names.is_some()),
        Format::Junit => junit(&results),
        format => output::serialized(format, &results)?.unwrap_or_default(),
    };
    print!("{out}");
    Ok(if results.iter().all(|r| r.valid) {
        Exit::Success
    } else {
        Exit::Failed
    }
    .into())
}

pub fn check_paths(
    paths: &[PathBuf],
    clusters: Option<&std::collections::BTreeSet<String>>,
    sample: Option<&Alert>,
) -> Vec<PlanResult> {
    let (plans, errors) = load_paths(paths);
    let mut results: Vec<PlanResult> = errors
        .iter()
        .map(|e| PlanResult {
            file: e.file.display().to_string(),
            plan: None,
            valid: false,
            problems: vec![CheckProblem {
                file: e.file.display().to_string(),
                line: e.line,
                column: e.column,
                path: String::new(),
                rule: "load".into(),
                step: None,
                message: e.message.clone(),
                source_line: std::fs::read_to_string(&e.file)
                    .ok()
                    .and_then(|t| t.lines().nth(e.line.saturating_sub(1)).map(str::to_string)),
            }],
            notes: vec![],
        })
        .collect();
    for loaded in &plans {
        results.push(check_plan(loaded, clusters, sample));
    }
    results
}

fn check_plan(
    loaded: &LoadedPlan,
    clusters: Option<&std::collections::BTreeSet<String>>,
    sample: Option<&Alert>,
) -> PlanResult {
    let spec = &loaded.plan.spec;
    let file = loaded.source.file.display().to_string();
    let positions = Positions::of_document(&loaded.source.text, loaded.source.line);
    let problem = |step: Option<&str>, path: &str, rule: &str, message: String| {
        let (line, column) = positions.locate(path);
        CheckProblem {
            file: file.clone(),
            line,
            column,
            path: path.to_string(),
            rule: rule.to_string(),
            step: step.map(str::to_string),
            message,
            source_line: loaded
                .source
                .text
                .lines()
                .nth(line.saturating_sub(loaded.source.line))
                .map(str::to_string),
        }
    };
    let report = validate(spec, clusters);
    let mut problems: Vec<CheckProblem> = report
        .problems
        .iter()
        .map(|p| problem(p.step.as_deref(), &p.field, p.rule.as_str(), p.message.clone()))
        .collect();
    // Templates in the same pass: every template a validation problem is not already about.
    let reported: std::collections::BTreeSet<&str> = report.problems.iter().map(|p| p.field.as_str()).collect();
    let (rendered, render_notes) = render_all(loaded, sample);
    for (step, field, message) in rendered {
        if !reported.contains(field.as_str()) {
            problems.push(problem(Some(&step), &field, "template", message));
        }
    }
    problems.sort_by_key(|p| (p.line, p.column));
    let at = |step: &str| {
        let index = spec.steps.iter().position(|s| s.name() == step);
        let (line, column) = index.map_or((loaded.source.line, 1), |i| {
            positions.locate(&format!("spec.steps[{i}]"))
        });
        format!("{file}:{line}:{column}")
    };
    PlanResult {
        file: file.clone(),
        plan: loaded.plan.metadata.name.clone(),
        valid: problems.is_empty(),
        notes: report
            .notes
            .iter()
            .map(|n| format!("{}: step {:?}: {}", at(&n.step), n.step, n.message))
            .chain(render_notes.iter().map(|(step, field, message)| {
                let (line, column) = positions.locate(field);
                format!("{file}:{line}:{column}: step {step:?}: {field}: {message}")
            }))
            .collect(),
        problems,
    }
}

/// Prints a plan's validation problems to stderr, each at its field with the source line and a
/// caret (what `run` and `rehearse` say before refusing to run an invalid plan).
pub fn eprint_problems(loaded: &LoadedPlan, problems: &[crate::plan::Problem]) {
    let positions = Positions::of_document(&loaded.source.text, loaded.source.line);
    for p in problems {
        let (line, column) = positions.locate(&p.field);
        let step = p.step.as_deref().map(|s| format!("step {s:?}: ")).unwrap_or_default();
        eprintln!(
            "{}:{line}:{column}: {step}{}: {}",
            loaded.source.file.display(),
            p.field,
            p.message
        );
        if let Some(src) = loaded.source.text.lines().nth(line.saturating_sub(loaded.source.line)) {
            eprintln!("    | {src}\n    | {}^", " ".repeat(column.saturating_sub(1)));
        }
    }
}

/// What rendering a plan's templates found: (step, field, message) problems, and notes about
/// templates a stand-in value could not render (`{{ Values.Lag | int }}` with a placeholder).
type Rendered = (Vec<(String, String, String)>, Vec<(String, String, String)>);

/// Renders every template of a plan with the sample alert; outputs of earlier steps are stood in
/// for by placeholders, and a failure that may be the placeholder's is a note, not a problem.
fn render_all(loaded: &LoadedPlan, sample: Option<&Alert>) -> Rendered {
    let spec = &loaded.plan.spec;
    let alert = sample
        .cloned()
        .unwrap_or_else(|| Alert::sample(spec.alert_labels.clone()));
    let mut values: Map<String, Value> = spec.params.clone().into_iter().collect();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut standins: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let fields = (0..spec.steps.len())
        .map(|i| format!("spec.steps[{i}]"))
        .chain((0..spec.on_failure.len()).map(|j| format!("spec.onFailure[{j}]")));
    // A forEach's own steps follow it, rendered with a stand-in item.
    let mut all = Vec::new();
    for (step, field_prefix) in spec.steps.iter().chain(&spec.on_failure).zip(fields) {
        all.push((step, field_prefix.clone(), step.name()));
        for (i, inner) in step.for_each.iter().flat_map(|f| &f.steps).enumerate() {
            let name = Some(inner.name()).filter(|n| !n.is_empty());
            all.push((
                inner,
                format!("{field_prefix}.forEach.steps[{i}]"),
                name.unwrap_or(step.name()),
            ));
        }
    }
    // Whether `Values.item` is a stand-in (items known only at run time), not a real item.
    let mut item_standin = false;
    for (step, field_prefix, name) in all {
        if let Some(f) = &step.for_each {
            let ctx = template::context(
                values.clone(),
                Some(alert.context()),
                &loaded.plan.metadata,
                "check",
                json!("dryRun"),
            );
            // The first item when the plan or its params say it; else a stand-in.
            let first = match &f.items {
                Some(Value::Array(list)) => list
                    .first()
                    .map(|v| template::render_raw(v, &ctx).unwrap_or_else(|_| v.clone())),
                Some(Value::String(src)) => match template::render_yaml(src, &ctx) {
                    Ok(Value::Array(list)) => list.into_iter().next(),
                    _ => None,
                },
                _ => None,
            };
            item_standin = first.is_none();
            values.insert(
                crate::plan::validate::ITEM.into(),
                first.unwrap_or_else(|| json!(format!("<an item of step {}>", step.name()))),
            );
        }
        let mut ctx = template::context(
            values.clone(),
            Some(alert.context()),
            &loaded.plan.metadata,
            "check",
            json!("dryRun"),
        );
        if let Some(h) = &step.http {
            ctx["secrets"] = h
                .secrets
                .keys()
                .map(|k| (k.clone(), json!(format!("<secret {k}>"))))
                .collect::<Map<_, _>>()
                .into();
        }
        for (field, src, yaml) in step_templates(step, &field_prefix) {
            let result = if yaml {
                template::render_yaml(&src, &ctx).map(|_| ()).map_err(|e| e.to_string())
            } else if field.ends_with(".when") {
                template::render_bool(&src, &ctx).map(|_| ()).map_err(|e| e.to_string())
            } else {
                template::render(&src, &ctx).map(|_| ()).map_err(|e| e.to_string())
            };
            if let Err(e) = result {
                let refs = template::references(&src).unwrap_or_default();
                let uses = |key: &str| {
                    refs.iter().any(|r| {
                        r.strip_prefix("Values.")
                            .is_some_and(|k| k.split('.').next() == Some(key))
                    })
                };
                let uses_standin = standins.iter().any(|k| uses(k));
                // A stand-in item has none of the fields a real one may have.
                let uses_item_standin = item_standin && uses(crate::plan::validate::ITEM);
                if (uses_standin && !e.contains("undefined")) || uses_item_standin {
                    notes.push((
                        name.to_string(),
                        field,
                        format!("not checked: a stand-in for a value read at run time cannot render it ({e})"),
                    ));
                } else {
                    problems.push((name.to_string(), field, e));
                }
            }
        }
        if let Some(k) = output_key(step) {
            standins.insert(k.to_string());
            values.insert(k.to_string(), json!(format!("<{k} from step {}>", step.name())));
        }
    }
    (problems, notes)
}

fn text(results: &[PlanResult], clusters_checked: bool) -> String {
    let mut out = String::new();
    for r in results {
        let name = r.plan.as_deref().map(|p| format!(" plan {p}")).unwrap_or_default();
        if r.valid {
            out += &format!("ok   {}{name}\n", r.file);
        } else {
            out += &format!("FAIL {}{name}\n", r.file);
        }
        for p in &r.problems {
            out += &format!("  error: {p}\n");
            if let Some(src) = &p.source_line {
                let caret = " ".repeat(p.column.saturating_sub(1));
                out += &format!("    | {src}\n    | {caret}^\n");
            }
        }
        for n in &r.notes {
            out += &format!("  note: {n}\n");
        }
    }
    let bad = results.iter().filter(|r| !r.valid).count();
    out += &format!("{} plan(s) checked, {bad} invalid", results.len());
    if !clusters_checked {
        out += " (cluster names not checked: give --kubeconfig or --clusters)";
    }
    out.push('\n');
    out
}

fn junit(results: &[PlanResult]) -> String {
    let esc = output::xml_escape;
    let failures = results.iter().filter(|r| !r.valid).count();
    let mut xml = format!(
        "<testsuite name=\"plans\" tests=\"{}\" failures=\"{failures}\">\n",
        results.len()
    );
    for r in results {
        let name = esc(r.plan.as_deref().unwrap_or("(not loaded)"));
        xml += &format!("  <testcase classname=\"{}\" name=\"{name}\">", esc(&r.file));
        if !r.valid {
            xml += &format!(
                "\n    <failure message=\"{} problem(s)\">{}</failure>\n  ",
                r.problems.len(),
                esc(&r
                    .problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"))
            );
        }
        xml += "</testcase>\n";
    }
    xml += "</testsuite>\n";
    output::junit_document(
        "recoverd check",
        &[output::Suite {
            tests: results.len(),
            failures,
            xml,
        }],
    )
}
