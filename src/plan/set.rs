//! The plans a server knows (pure but for loading): valid ones indexed by alert label for
//! matching, invalid ones kept with their problems for the API and metrics.
//!
//! Matching does not scan every plan for every alert. A plan matches only alerts that carry every
//! one of its `alertLabels` pairs, so it is filed under one of them — the pair the fewest plans
//! share — and an alert looks only at plans filed under its own pairs before checking all of
//! their conditions. With one plan per service under a shared `alertname`, each plan is filed
//! under its service, not under the name all of them share. Plans with only `alertMatchers` are
//! checked for every alert.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::model::Mode;
use super::{compile, load_paths, LoadedPlan, Plan};
use crate::matcher::Regexes;

#[derive(Default)]
pub struct PlanSet {
    /// Valid plans, in name (`namespace/name`) order once indexed. Matching reaches a candidate
    /// by its position, without a lookup by name: with thousands of plans, cache misses are
    /// most of what a match costs.
    plans: Vec<Entry>,
    /// Position in `plans` by name.
    by_name: HashMap<String, usize>,
    /// What is wrong with each plan (or file) that did not load or validate.
    pub invalid: Vec<InvalidPlan>,
    index: Index,
    /// Compiled regexes by pattern, shared by every plan's matchers.
    regexes: Regexes,
}

struct Entry {
    name: String,
    plan: Arc<Plan>,
}

/// Which plans an alert has to look at, by position in [`PlanSet::plans`].
#[derive(Default)]
struct Index {
    /// label name → label value → the plans filed under that pair, ascending.
    by_label: HashMap<String, HashMap<String, Vec<u32>>>,
    /// Plans (not manual) without `alertLabels`: checked for every alert.
    unindexed: Vec<u32>,
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
            set.insert(&plan, clusters);
        }
        set.reindex();
        set
    }

    /// Validates a plan and adds it, or records why it is invalid (a second plan of the same
    /// name included: the first is kept). Call [`PlanSet::reindex`] after the last one.
    fn insert(&mut self, loaded: &LoadedPlan, clusters: Option<&BTreeSet<String>>) {
        let name = key(loaded);
        let file = loaded.source.file.display().to_string();
        match compile(loaded, clusters, &mut self.regexes) {
            Err(invalid) => self.invalid.push(InvalidPlan {
                file,
                plan: Some(name),
                problems: invalid.problems.iter().map(ToString::to_string).collect(),
            }),
            Ok(_) if self.by_name.contains_key(&name) => self.invalid.push(InvalidPlan {
                file,
                plan: Some(name.clone()),
                problems: vec![format!(
                    "plan {name} is defined twice; the first definition is used"
                )],
            }),
            Ok(plan) => self.add(Arc::new(plan)),
        }
    }

    /// A set of plans already validated (by their source), with the problems of those that
    /// were not; a name given twice keeps its first plan and reports the others.
    pub fn from_valid(
        plans: impl IntoIterator<Item = Arc<Plan>>,
        invalid: Vec<InvalidPlan>,
    ) -> Self {
        let mut set = PlanSet {
            invalid,
            ..PlanSet::default()
        };
        for plan in plans {
            if set.by_name.contains_key(&plan.key) {
                let name = plan.key.clone();
                set.invalid.push(InvalidPlan {
                    file: plan.source.file.display().to_string(),
                    plan: Some(name.clone()),
                    problems: vec![format!(
                        "plan {name} is defined twice; the first definition is used"
                    )],
                });
            } else {
                set.add(plan);
            }
        }
        set.reindex();
        set
    }

    /// The valid plans, in name order.
    pub fn plans(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.plans.iter().map(|e| &e.plan)
    }

    fn add(&mut self, plan: Arc<Plan>) {
        self.by_name.insert(plan.key.clone(), self.plans.len());
        self.plans.push(Entry {
            name: plan.key.clone(),
            plan,
        });
    }

    /// Puts the plans in name order and files them for matching; after the last
    /// [`PlanSet::add`].
    fn reindex(&mut self) {
        self.plans.sort_by(|a, b| a.name.cmp(&b.name));
        self.by_name = (self.plans.iter().enumerate())
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        self.index = Index::build(&self.plans);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plan>> {
        self.by_name.get(name).map(|&i| &self.plans[i].plan)
    }

    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// What `GET /api/v1/plans` shows, `{"plans": [summary…], "invalid": [...]}`, serialized
    /// straight from the set: with 10 000 plans, copying every plan's labels and matchers into
    /// summaries (and those into a `serde_json::Value`) left tens of MiB behind per call.
    pub fn listing(&self) -> Listing<'_> {
        Listing(self)
    }

    pub fn summaries(&self) -> Vec<PlanSummary> {
        self.plans
            .iter()
            .map(|Entry { name, plan: p, .. }| PlanSummary {
                name: name.clone(),
                file: p.source.file.display().to_string(),
                mode: p.mode,
                alert_labels: p.labels.clone(),
                alert_matchers: p.resource.spec.alert_matchers.clone(),
                steps: p.steps.len(),
            })
            .collect()
    }

    /// The plans (not in manual mode) whose labels and matchers all hold for these labels, by
    /// name.
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<&Arc<Plan>> {
        let mut candidates = self.index.unindexed.clone();
        for (k, v) in labels {
            if let Some(filed) = self.index.by_label.get(k).and_then(|by| by.get(v)) {
                candidates.extend_from_slice(filed);
            }
        }
        // Each plan is filed once, so there is nothing to deduplicate; positions are in name
        // order.
        candidates.sort_unstable();
        candidates
            .into_iter()
            .filter_map(|i| self.plan_if_it_matches(&self.plans[i as usize], labels))
            .collect()
    }

    fn plan_if_it_matches<'a>(
        &self,
        entry: &'a Entry,
        labels: &BTreeMap<String, String>,
    ) -> Option<&'a Arc<Plan>> {
        entry.plan.matches(labels).then_some(&entry.plan)
    }

    /// Every plan (not manual) whose labels and matchers hold, found by checking each one: what
    /// [`PlanSet::matching`] must always agree with, and what it is measured against.
    pub fn matching_by_scan(&self, labels: &BTreeMap<String, String>) -> Vec<&Arc<Plan>> {
        self.plans
            .iter()
            .filter(|e| e.plan.mode != Mode::Manual)
            .filter_map(|e| self.plan_if_it_matches(e, labels))
            .collect()
    }
}

/// See [`PlanSet::listing`].
pub struct Listing<'a>(&'a PlanSet);

impl Serialize for Listing<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Summaries<'a>(&'a [Entry]);
        impl Serialize for Summaries<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|e| SummaryRef {
                    name: &e.name,
                    file: &e.plan.source.file,
                    mode: e.plan.mode,
                    alert_labels: &e.plan.labels,
                    alert_matchers: &e.plan.resource.spec.alert_matchers,
                    steps: e.plan.steps.len(),
                }))
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("plans", &Summaries(&self.0.plans))?;
        m.serialize_entry("invalid", &self.0.invalid)?;
        m.end()
    }
}

/// [`PlanSummary`], borrowed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryRef<'a> {
    name: &'a str,
    #[serde(serialize_with = "display_path")]
    file: &'a std::path::Path,
    mode: Mode,
    alert_labels: &'a BTreeMap<String, String>,
    alert_matchers: &'a [String],
    steps: usize,
}

fn display_path<S: serde::Serializer>(p: &&std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

impl Index {
    /// Files each plan under the pair of its `alertLabels` that the fewest plans share (ties:
    /// the alphabetically first pair), so that no pair's list is longer than it must be.
    fn build(plans: &[Entry]) -> Self {
        let active = || {
            plans
                .iter()
                .map(|e| &e.plan)
                .enumerate()
                .filter(|(_, p)| p.mode != Mode::Manual)
        };
        let mut shared_by: HashMap<(&str, &str), usize> = HashMap::new();
        for (_, p) in active() {
            for (k, v) in &p.labels {
                *shared_by.entry((k, v)).or_default() += 1;
            }
        }
        let mut index = Index::default();
        for (i, p) in active() {
            let i = u32::try_from(i).expect("fewer than 2^32 plans");
            let rarest = p
                .labels
                .iter()
                .min_by_key(|(k, v)| shared_by[&(k.as_str(), v.as_str())]);
            match rarest {
                Some((k, v)) => index
                    .by_label
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .push(i),
                None => index.unindexed.push(i),
            }
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan set from one `spec` body per plan (`{i}` is replaced by the plan's number).
    fn set_from(n: usize, spec: impl Fn(usize) -> String) -> PlanSet {
        let mut set = PlanSet::default();
        for i in 0..n {
            let text = format!(
                "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: p{i}}}\nspec:\n{}  steps:\n  - {{name: s, type: wait, wait: {{duration: 1s}}}}\n",
                spec(i)
            );
            let (mut plans, errors) = super::super::load_str(std::path::Path::new("x.yaml"), &text);
            assert!(errors.is_empty(), "{errors:?}");
            set.insert(&plans.remove(0), None);
        }
        set.reindex();
        set
    }

    fn set_of(n: usize) -> PlanSet {
        set_from(n, |i| {
            format!("  alertLabels: {{alertname: A{i}, team: db}}\n  alertMatchers: ['severity=~\"critical|page\"']\n")
        })
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(plans: &[&Arc<Plan>]) -> Vec<String> {
        plans.iter().map(|p| p.key.clone()).collect()
    }

    #[test]
    fn an_alert_matches_only_plans_whose_labels_and_matchers_all_hold() {
        let set = set_of(1000);
        let hit = set.matching(&labels(&[
            ("alertname", "A7"),
            ("team", "db"),
            ("severity", "page"),
        ]));
        assert_eq!(names(&hit), ["default/p7"]);
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

    /// Plan layouts met in practice, mixed in one set: a distinct alert name per plan; one alert
    /// name with one plan per namespace; one per service within ten teams; matchers only;
    /// manual plans; an alert name shared by exactly two plans.
    fn mixed_set() -> PlanSet {
        set_from(600, |i| {
            match i % 6 {
            0 => format!("  alertLabels: {{alertname: A{i}, team: db}}\n  alertMatchers: ['severity=~\"critical|page\"']\n"),
            1 => format!("  alertLabels: {{alertname: PostgresDown, namespace: ns{}}}\n", i % 50),
            2 => format!("  alertLabels: {{alertname: Down, team: t{}, service: s{i}}}\n  alertMatchers: ['env!=\"test\"']\n", i % 10),
            3 => format!("  alertMatchers: ['alertname=~\"Only{}|Any\"']\n", i % 3),
            4 => format!("  mode: manual\n  alertLabels: {{alertname: PostgresDown, namespace: ns{}}}\n", i % 50),
            _ => format!("  mode: approval\n  alertLabels: {{alertname: Pair{}}}\n", i / 12),
        }
        })
    }

    #[test]
    fn indexed_matching_finds_exactly_the_plans_a_full_scan_finds() {
        let set = mixed_set();
        let mut alerts = vec![labels(&[]), labels(&[("alertname", "Any")])];
        for i in (0..600).step_by(5) {
            let i = i.to_string();
            for (name, extra) in [
                (format!("A{i}"), vec![("team", "db"), ("severity", "page")]),
                (format!("A{i}"), vec![("team", "db"), ("severity", "info")]),
                ("PostgresDown".into(), vec![("namespace", "ns7")]),
                (
                    "PostgresDown".into(),
                    vec![("namespace", "ns49"), ("x", "y")],
                ),
                ("Down".into(), vec![("team", "t2"), ("service", "s2")]),
                (
                    "Down".into(),
                    vec![("team", "t2"), ("service", "s2"), ("env", "test")],
                ),
                ("Down".into(), vec![("service", "s2")]),
                ("Only1".into(), vec![("team", "db")]),
                (format!("Pair{}", i.len()), vec![]),
            ] {
                let mut l = labels(&extra);
                l.insert("alertname".into(), name);
                l.insert("service".into(), format!("s{i}"));
                alerts.push(l);
            }
        }
        let mut hits = 0;
        for alert in &alerts {
            let indexed = names(&set.matching(alert));
            assert_eq!(indexed, names(&set.matching_by_scan(alert)), "{alert:?}");
            hits += indexed.len();
        }
        assert!(hits > alerts.len(), "the cases match something");
    }

    #[test]
    fn plans_sharing_their_first_label_are_filed_under_a_rarer_pair() {
        let set = set_from(1000, |i| {
            format!("  alertLabels: {{alertname: PostgresDown, namespace: ns{i}}}\n")
        });
        assert!(set.index.unindexed.is_empty());
        assert!(!set.index.by_label.contains_key("alertname"));
        let filed: Vec<usize> = set.index.by_label["namespace"]
            .values()
            .map(Vec::len)
            .collect();
        assert_eq!((filed.len(), filed.iter().max()), (1000, Some(&1)));
        let hit = set.matching(&labels(&[
            ("alertname", "PostgresDown"),
            ("namespace", "ns7"),
        ]));
        assert_eq!(names(&hit), ["default/p7"]);
    }

    #[test]
    fn the_listing_serializes_as_the_summaries_and_problems_did() {
        let mut set = mixed_set();
        set.invalid.push(InvalidPlan {
            file: "bad.yaml".into(),
            plan: Some("ops/bad".into()),
            problems: vec!["spec.steps: required".into()],
        });
        let listed: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&set.listing()).unwrap()).unwrap();
        assert_eq!(
            listed,
            serde_json::json!({"plans": set.summaries(), "invalid": set.invalid})
        );
        assert_eq!(listed["plans"].as_array().unwrap().len(), 600);
    }

    #[test]
    fn equal_matchers_of_many_plans_share_one_compiled_regex() {
        let set = set_of(1000);
        assert_eq!(set.regexes.len(), 1);
    }
}
