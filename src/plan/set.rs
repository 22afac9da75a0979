//! The plans a server knows (pure but for loading): valid ones indexed by alert label for
//! matching, invalid ones kept with their problems for the API and metrics.
//!
//! Matching does not scan every plan for every alert: each plan with `alertLabels` is indexed
//! under one of its pairs, so an alert only looks at plans filed under its own labels, then
//! checks all of their conditions. Plans with only `alertMatchers` are checked for every alert.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use super::model::Mode;
use super::{load_paths, validate, LoadedPlan};
use crate::matcher::Matcher;

#[derive(Default)]
pub struct PlanSet {
    /// Valid plans by `namespace/name`.
    plans: BTreeMap<String, LoadedPlan>,
    /// What is wrong with each plan (or file) that did not load or validate.
    pub invalid: Vec<InvalidPlan>,
    by_label: HashMap<(String, String), Vec<String>>,
    unindexed: Vec<String>,
    /// Each plan's `alertMatchers`, compiled once (regexes included), by plan name.
    matchers: HashMap<String, Vec<Matcher>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InvalidPlan {
    pub file: String,
    pub plan: Option<String>,
    pub problems: Vec<String>,
}

/// A plan as `GET /api/v1/plans` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    pub name: String,
    pub file: String,
    pub mode: Mode,
    pub alert_labels: BTreeMap<String, String>,
    pub alert_matchers: Vec<String>,
    pub steps: usize,
}

pub fn key(plan: &LoadedPlan) -> String {
    format!(
        "{}/{}",
        plan.plan.metadata.namespace.as_deref().unwrap_or("default"),
        plan.plan.metadata.name.as_deref().unwrap_or_default()
    )
}

impl PlanSet {
    /// Loads and validates every plan under `paths` against the registry's cluster names.
    pub fn load(paths: &[PathBuf], clusters: Option<&BTreeSet<String>>) -> Self {
        let (loaded, errors) = load_paths(paths);
        let mut set = PlanSet::default();
        for e in errors {
            set.invalid.push(InvalidPlan {
                file: e.file.display().to_string(),
                plan: None,
                problems: vec![e.to_string()],
            });
        }
        for plan in loaded {
            let report = validate(&plan.plan.spec, clusters);
            let name = key(&plan);
            if !report.is_valid() {
                set.invalid.push(InvalidPlan {
                    file: plan.source.file.display().to_string(),
                    plan: Some(name),
                    problems: report
                        .problems
                        .iter()
                        .map(|p| format!("{}: {}", p.field, p.message))
                        .collect(),
                });
            } else if set.plans.contains_key(&name) {
                set.invalid.push(InvalidPlan {
                    file: plan.source.file.display().to_string(),
                    plan: Some(name.clone()),
                    problems: vec![format!(
                        "plan {name} is defined twice; the first definition is used"
                    )],
                });
            } else {
                set.insert(name, plan);
            }
        }
        set
    }

    fn insert(&mut self, name: String, plan: LoadedPlan) {
        // Validation has already refused plans whose matchers do not parse.
        let compiled = plan
            .plan
            .spec
            .alert_matchers
            .iter()
            .filter_map(|m| Matcher::parse(m).ok())
            .collect();
        self.matchers.insert(name.clone(), compiled);
        if plan.plan.spec.mode != Mode::Manual {
            match plan.plan.spec.alert_labels.iter().next() {
                Some((k, v)) => self
                    .by_label
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .push(name.clone()),
                None => self.unindexed.push(name.clone()),
            }
        }
        self.plans.insert(name, plan);
    }

    pub fn get(&self, name: &str) -> Option<&LoadedPlan> {
        self.plans.get(name)
    }

    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    pub fn summaries(&self) -> Vec<PlanSummary> {
        self.plans
            .iter()
            .map(|(name, p)| PlanSummary {
                name: name.clone(),
                file: p.source.file.display().to_string(),
                mode: p.plan.spec.mode,
                alert_labels: p.plan.spec.alert_labels.clone(),
                alert_matchers: p.plan.spec.alert_matchers.clone(),
                steps: p.plan.spec.steps.len(),
            })
            .collect()
    }

    /// The plans (not in manual mode) whose labels and matchers all hold for these labels, by
    /// name.
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<&LoadedPlan> {
        let mut candidates: BTreeSet<&str> = self.unindexed.iter().map(String::as_str).collect();
        for (k, v) in labels {
            if let Some(names) = self.by_label.get(&(k.clone(), v.clone())) {
                candidates.extend(names.iter().map(String::as_str));
            }
        }
        candidates
            .into_iter()
            .filter_map(|n| Some((self.plans.get(n)?, self.matchers.get(n)?)))
            .filter(|(p, matchers)| {
                p.plan
                    .spec
                    .alert_labels
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
                    && matchers.iter().all(|m| m.matches(labels))
            })
            .map(|(p, _)| p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(n: usize) -> PlanSet {
        let mut set = PlanSet::default();
        for i in 0..n {
            let text = format!(
                "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: p{i}}}\nspec:\n  alertLabels: {{alertname: A{i}, team: db}}\n  alertMatchers: ['severity=~\"critical|page\"']\n  steps:\n  - {{name: s, type: wait, wait: {{duration: 1s}}}}\n"
            );
            let (mut plans, errors) = super::super::load_str(std::path::Path::new("x.yaml"), &text);
            assert!(errors.is_empty());
            let p = plans.remove(0);
            set.insert(key(&p), p);
        }
        set
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_alert_matches_only_plans_whose_labels_and_matchers_all_hold() {
        let set = set_of(1000);
        let hit = set.matching(&labels(&[
            ("alertname", "A7"),
            ("team", "db"),
            ("severity", "page"),
        ]));
        assert_eq!(
            hit.iter().map(|p| key(p)).collect::<Vec<_>>(),
            ["default/p7"]
        );
        assert!(set
            .matching(&labels(&[
                ("alertname", "A7"),
                ("team", "web"),
                ("severity", "page")
            ]))
            .is_empty());
        assert!(set
            .matching(&labels(&[
                ("alertname", "A7"),
                ("team", "db"),
                ("severity", "info")
            ]))
            .is_empty());
    }

    #[test]
    fn matching_looks_only_at_plans_filed_under_the_alerts_labels() {
        let set = set_of(1000);
        // Each plan is filed under exactly one of its pairs; none is scanned for every alert.
        assert!(set.unindexed.is_empty());
        let filed: usize = set.by_label.values().map(Vec::len).sum();
        assert_eq!(filed, 1000);
        let under_alertname = set
            .by_label
            .get(&("alertname".into(), "A7".into()))
            .map_or(0, Vec::len);
        assert_eq!(under_alertname, 1);
    }
}
