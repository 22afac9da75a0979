//! What `run` and `rehearse` run a plan with, from the command line: the plan file, the alert,
//! `--param` overrides and `--approve`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use crate::alert::Alert;
use crate::executor::{Approvals, RunControl};
use crate::plan::LoadedPlan;

/// The alert, params and approvals a plan runs with.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PlanInput {
    /// An Alertmanager webhook payload or a single alert. `run` runs the plan once for each
    /// firing alert it matches; `rehearse` for the first.
    #[arg(long)]
    pub alert: Option<PathBuf>,
    /// Override a param: `--param north=pg-north` (values are YAML: numbers and booleans keep
    /// their type).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Approve every `approval` step as the run reaches it: you are the approver. Without it,
    /// an approval step fails the run (nobody can answer it here).
    #[arg(long)]
    pub approve: bool,
}

impl PlanInput {
    /// One entry per run: each firing alert in `--alert` that the plan matches, or one run
    /// without an alert. Decided before any cluster is reached: an alert the plan does not
    /// match runs nothing.
    pub fn alerts(&self, loaded: &LoadedPlan) -> anyhow::Result<Vec<Option<Alert>>> {
        match &self.alert {
            None => Ok(vec![None]),
            Some(path) => Ok(matching_alerts(path, &compile_unchecked(loaded)?)?
                .into_iter()
                .map(Some)
                .collect()),
        }
    }

    /// The `--param` values: parsed, and each one a param the plan has.
    pub fn params(&self, loaded: &LoadedPlan) -> anyhow::Result<BTreeMap<String, Value>> {
        let spec = &loaded.plan.spec;
        let params = parse_params(&self.params)?;
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

    /// The run's control: approval steps approved in advance with `--approve`, else impossible
    /// to answer.
    pub fn control(&self) -> RunControl {
        RunControl {
            approvals: if self.approve {
                Approvals::Given
            } else {
                Approvals::Unavailable
            },
            ..Default::default()
        }
    }
}

/// `KEY=VALUE` pairs; a value is YAML (numbers and booleans keep their type), else a string.
pub fn parse_params(params: &[String]) -> anyhow::Result<BTreeMap<String, Value>> {
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

/// The firing alerts in an alert file (a webhook payload or one alert) that match a plan; an
/// error when there is none, so that no command runs a plan for an alert it does not match.
fn matching_alerts(path: &Path, plan: &crate::plan::Plan) -> anyhow::Result<Vec<Alert>> {
    let all = crate::alert::load_file(path)?;
    let matching: Vec<_> = all
        .into_iter()
        .filter(|a| a.is_firing() && plan.matches(&a.labels))
        .collect();
    if matching.is_empty() {
        anyhow::bail!(
            "no firing alert in {} matches the plan's alertLabels/alertMatchers; nothing was run",
            path.display()
        );
    }
    Ok(matching)
}

/// A plan validated without a cluster registry (cluster names unchecked), for what must be
/// decided before any cluster is reached: which alerts it matches.
fn compile_unchecked(loaded: &LoadedPlan) -> anyhow::Result<crate::plan::Plan> {
    crate::plan::compile_one(loaded, None).map_err(|invalid| {
        super::check::eprint_problems(loaded, &invalid.problems);
        anyhow::anyhow!("the plan is invalid; nothing was run")
    })
}

/// Loads exactly one plan from a file (or fails saying why).
pub fn load_one(path: &Path) -> anyhow::Result<LoadedPlan> {
    let (mut plans, errors) = crate::plan::load_paths(&[path.to_path_buf()]);
    if let Some(e) = errors.first() {
        anyhow::bail!("{e}");
    }
    match plans.len() {
        1 => Ok(plans.remove(0)),
        0 => anyhow::bail!("{} holds no RecoveryPlan", path.display()),
        n => anyhow::bail!("{} holds {n} plans; give a file with exactly one", path.display()),
    }
}
