//! The plans a server knows (pure but for loading): valid ones indexed by alert label for
//! matching, invalid ones kept with their problems for the API and metrics.
//!
//! Matching does not scan every plan for every alert. A plan matches only alerts that carry every
//! one of its `alertLabels` pairs, so it is filed under one of them — the pair the fewest plans
//! share — and an alert looks only at plans filed under its own pairs before checking all of
//! their conditions. With one plan per service under a shared `alertname`, each plan is filed
//! under its service, not under the name all of them share. Plans with only `alertMatchers` are
//! checked for every alert.
//!
//! What a match reads is kept apart from the plans, packed into a few arrays ([`Index`]): with
//! 10 000 plans, reaching a candidate's labels and matchers through its `Plan` (scattered over a
//! heap of tens of MiB) cost a handful of cache misses per alert, most of what a match cost.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::load::load_paths_each;
use super::model::Mode;
use super::{compile, LoadedPlan, Plan};
use crate::matcher::{Op, Regexes};

#[derive(Default)]
pub struct PlanSet {
    /// Valid plans, in name (`namespace/name`) order once indexed. Matching reaches a candidate
    /// by its position, without a lookup by name: with thousands of plans, cache misses are
    /// most of what a match costs.
    plans: Vec<Entry>,
    /// The names added, while the set is built (to refuse a name given twice); once indexed,
    /// [`PlanSet::get`] searches the sorted `plans` instead of keeping every name twice more.
    by_name: HashSet<String>,
    /// What is wrong with each plan (or file) that did not load or validate.
    pub invalid: Vec<InvalidPlan>,
    index: Index,
    /// Compiled regexes by pattern, shared by every plan's matchers.
    regexes: Regexes,
}

struct Entry {
    plan: Arc<Plan>,
}

/// Which plans an alert has to look at, by position in [`PlanSet::plans`], and what each of
/// them asks of the alert, packed for matching.
struct Index {
    /// Hashes label pairs (`name`, `value`) for [`Index::by_pair`].
    hasher: foldhash::fast::RandomState,
    /// Kept hash bits: all of them, but for tests that make pairs collide.
    mask: u64,
    /// The hash of a label pair → the plans filed under it, as a range of [`Index::filed`].
    /// Pairs whose hashes collide share a range: every candidate's conditions are checked.
    by_pair: HashMap<u64, (u32, u32), foldhash::fast::RandomState>,
    /// Plan positions, grouped by the pair they are filed under, ascending within a group.
    filed: Vec<u32>,
    /// Plans (not manual) without `alertLabels`: checked for every alert.
    unindexed: Vec<u32>,
    /// The conditions of the plan at position `i` are `conds[starts[i]..starts[i + 1]]` (none
    /// for a manual plan, which is never a candidate).
    starts: Vec<u32>,
    conds: Vec<Cond>,
    /// Every label name and value the conditions compare, each distinct text once.
    text: String,
    /// The matchers' compiled regexes (shared by pattern, see [`Regexes`]).
    regexes: Vec<Arc<regex::Regex>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            hasher: foldhash::fast::RandomState::default(),
            mask: u64::MAX,
            by_pair: HashMap::default(),
            filed: Vec::new(),
            unindexed: Vec::new(),
            starts: vec![0],
            conds: Vec::new(),
            text: String::new(),
            regexes: Vec::new(),
        }
    }
}

/// A stretch of [`Index::text`].
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

/// One `alertLabels` pair or `alertMatchers` entry of a plan.
struct Cond {
    name: Span,
    value: Span,
    test: Test,
}

#[derive(Clone, Copy)]
enum Test {
    /// An `alertLabels` pair: the alert has the label, with exactly this value.
    Label,
    /// A matcher: a missing label counts as `""`; the regex by position in
    /// [`Index::regexes`].
    Matcher(Op, Option<u32>),
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
    ///
    /// Each file's plans are validated as soon as it is read and the loaded documents dropped:
    /// a loaded plan is several times the size of what the set keeps, and holding every one of
    /// 10 000 at once left the server's heap tens of MiB larger after the load.
    pub fn load(paths: &[PathBuf], clusters: Option<&BTreeSet<String>>) -> Self {
        let mut set = PlanSet::default();
        let errors = load_paths_each(paths, |loaded| {
            for plan in loaded {
                set.insert(&plan, clusters);
            }
        });
        // The files' errors first, then the plans', as when every file was read first.
        let invalid = std::mem::take(&mut set.invalid);
        set.invalid = errors
            .into_iter()
            .map(|e| InvalidPlan {
                file: e.file.display().to_string(),
                plan: None,
                problems: vec![e.to_string()],
            })
            .chain(invalid)
            .collect();
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
            Ok(_) if self.by_name.contains(&name) => self.invalid.push(InvalidPlan {
                file,
                plan: Some(name.clone()),
                problems: vec![format!("plan {name} is defined twice; the first definition is used")],
            }),
            Ok(plan) => self.add(Arc::new(plan)),
        }
    }

    /// A set of plans already validated (by their source), with the problems of those that
    /// were not; a name given twice keeps its first plan and reports the others.
    pub fn from_valid(plans: impl IntoIterator<Item = Arc<Plan>>, invalid: Vec<InvalidPlan>) -> Self {
        let mut set = PlanSet {
            invalid,
            ..PlanSet::default()
        };
        for plan in plans {
            if set.by_name.contains(&plan.key) {
                let name = plan.key.clone();
                set.invalid.push(InvalidPlan {
                    file: plan.source.file.display().to_string(),
                    plan: Some(name.clone()),
                    problems: vec![format!("plan {name} is defined twice; the first definition is used")],
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
        self.by_name.insert(plan.key.clone());
        self.plans.push(Entry { plan });
    }

    /// Puts the plans in name order and files them for matching; after the last
    /// [`PlanSet::add`].
    fn reindex(&mut self) {
        self.plans.sort_by(|a, b| a.plan.key.cmp(&b.plan.key));
        self.plans.shrink_to_fit();
        self.by_name = HashSet::new();
        self.index = Index::build(&self.plans);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plan>> {
        let i = self.plans.binary_search_by(|e| e.plan.key.as_str().cmp(name)).ok()?;
        Some(&self.plans[i].plan)
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
            .map(|Entry { plan: p }| PlanSummary {
                name: p.key.clone(),
                file: p.source.file.display().to_string(),
                mode: p.mode,
                alert_labels: p.labels().clone(),
                alert_matchers: p.resource.spec.alert_matchers.clone(),
                steps: p.steps.len(),
            })
            .collect()
    }

    /// The plans (not in manual mode) whose labels and matchers all hold for these labels, by
    /// name.
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<&Arc<Plan>> {
        let index = &self.index;
        let mut candidates = index.unindexed.clone();
        for (k, v) in labels {
            if let Some(&(start, len)) = index.by_pair.get(&index.pair_hash(k, v)) {
                candidates.extend_from_slice(&index.filed[start as usize..][..len as usize]);
            }
        }
        // Positions are in name order. A plan is filed once, but two of the alert's pairs
        // whose hashes collide reach the same range.
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .filter(|&i| index.holds(i as usize, labels))
            .map(|i| &self.plans[i as usize].plan)
            .collect()
    }

    fn plan_if_it_matches<'a>(&self, entry: &'a Entry, labels: &BTreeMap<String, String>) -> Option<&'a Arc<Plan>> {
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
                    name: &e.plan.key,
                    file: &e.plan.source.file,
                    mode: e.plan.mode,
                    alert_labels: e.plan.labels(),
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
    /// the alphabetically first pair), so that no pair's list is longer than it must be, and
    /// packs every plan's conditions.
    fn build(plans: &[Entry]) -> Self {
        Self::build_masked(plans, u64::MAX)
    }

    /// [`Index::build`], keeping only the `mask` bits of every pair hash (tests make pairs
    /// collide with it).
    fn build_masked(plans: &[Entry], mask: u64) -> Self {
        let active = || {
            plans
                .iter()
                .map(|e| &e.plan)
                .enumerate()
                .filter(|(_, p)| p.mode != Mode::Manual)
        };
        let mut shared_by: HashMap<(&str, &str), usize> = HashMap::new();
        for (_, p) in active() {
            for (k, v) in p.labels() {
                *shared_by.entry((k, v)).or_default() += 1;
            }
        }
        let mut index = Index {
            mask,
            ..Index::default()
        };
        let mut groups: HashMap<u64, Vec<u32>> = HashMap::new();
        for (i, p) in active() {
            let i = u32::try_from(i).expect("fewer than 2^32 plans");
            let rarest = p
                .labels()
                .iter()
                .min_by_key(|(k, v)| shared_by[&(k.as_str(), v.as_str())]);
            match rarest {
                Some((k, v)) => groups.entry(index.pair_hash(k, v)).or_default().push(i),
                None => index.unindexed.push(i),
            }
        }
        for (hash, group) in groups {
            let range = (len_u32(index.filed.len()), len_u32(group.len()));
            index.by_pair.insert(hash, range);
            index.filed.extend(group);
        }
        let mut texts: HashMap<&str, Span> = HashMap::new();
        let mut regexes: HashMap<*const regex::Regex, u32> = HashMap::new();
        for entry in plans {
            let p = &entry.plan;
            if p.mode != Mode::Manual {
                for (k, v) in p.labels() {
                    let cond = Cond {
                        name: index.intern(&mut texts, k),
                        value: index.intern(&mut texts, v),
                        test: Test::Label,
                    };
                    index.conds.push(cond);
                }
                for m in &p.matchers {
                    let regex = m.regex().map(|re| {
                        *regexes.entry(Arc::as_ptr(re)).or_insert_with(|| {
                            index.regexes.push(re.clone());
                            len_u32(index.regexes.len() - 1)
                        })
                    });
                    let cond = Cond {
                        name: index.intern(&mut texts, &m.name),
                        value: index.intern(&mut texts, &m.value),
                        test: Test::Matcher(m.op, regex),
                    };
                    index.conds.push(cond);
                }
            }
            index.starts.push(len_u32(index.conds.len()));
        }
        // Kept for as long as the set: no room left over from growing.
        index.filed.shrink_to_fit();
        index.unindexed.shrink_to_fit();
        index.starts.shrink_to_fit();
        index.conds.shrink_to_fit();
        index.text.shrink_to_fit();
        index.regexes.shrink_to_fit();
        index.by_pair.shrink_to_fit();
        index
    }

    fn pair_hash(&self, name: &str, value: &str) -> u64 {
        self.hasher.hash_one((name, value)) & self.mask
    }

    /// `s` as a stretch of [`Index::text`], added unless an equal text is there already.
    fn intern<'a>(&mut self, seen: &mut HashMap<&'a str, Span>, s: &'a str) -> Span {
        *seen.entry(s).or_insert_with(|| {
            let span = Span {
                start: len_u32(self.text.len()),
                len: len_u32(s.len()),
            };
            self.text.push_str(s);
            span
        })
    }

    fn text(&self, span: Span) -> &str {
        &self.text[span.start as usize..][..span.len as usize]
    }

    /// Whether every condition of the plan at position `i` holds for these labels (what
    /// [`Plan::matches`] decides, from the packed conditions).
    fn holds(&self, i: usize, labels: &BTreeMap<String, String>) -> bool {
        let conds = &self.conds[self.starts[i] as usize..self.starts[i + 1] as usize];
        conds.iter().all(|c| {
            let actual = labels.get(self.text(c.name));
            match c.test {
                Test::Label => actual.is_some_and(|a| a == self.text(c.value)),
                Test::Matcher(op, regex) => op.holds(
                    self.text(c.value),
                    regex.map(|r| &*self.regexes[r as usize]),
                    actual.map_or("", String::as_str),
                ),
            }
        })
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("a plan set's index fits in 2^32 entries and bytes")
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
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn names(plans: &[&Arc<Plan>]) -> Vec<String> {
        plans.iter().map(|p| p.key.clone()).collect()
    }

    #[test]
    fn an_alert_matches_only_plans_whose_labels_and_matchers_all_hold() {
        let set = set_of(1000);
        let hit = set.matching(&labels(&[("alertname", "A7"), ("team", "db"), ("severity", "page")]));
        assert_eq!(names(&hit), ["default/p7"]);
        assert!(set
            .matching(&labels(&[("alertname", "A7"), ("team", "web"), ("severity", "page")]))
            .is_empty());
        assert!(set
            .matching(&labels(&[("alertname", "A7"), ("team", "db"), ("severity", "info")]))
            .is_empty());
    }

    /// Plan layouts met in practice, mixed in one set: a distinct alert name per plan; one alert
    /// name with one plan per namespace; one per service within ten teams; matchers only;
    /// manual plans; an alert name shared by exactly two plans.
    fn mixed_set() -> PlanSet {
        set_from(600, |i| match i % 6 {
            0 => format!(
                "  alertLabels: {{alertname: A{i}, team: db}}\n  alertMatchers: ['severity=~\"critical|page\"']\n"
            ),
            1 => format!("  alertLabels: {{alertname: PostgresDown, namespace: ns{}}}\n", i % 50),
            2 => format!(
                "  alertLabels: {{alertname: Down, team: t{}, service: s{i}}}\n  alertMatchers: ['env!=\"test\"']\n",
                i % 10
            ),
            3 => format!("  alertMatchers: ['alertname=~\"Only{}|Any\"']\n", i % 3),
            4 => format!(
                "  mode: manual\n  alertLabels: {{alertname: PostgresDown, namespace: ns{}}}\n",
                i % 50
            ),
            _ => format!("  mode: approval\n  alertLabels: {{alertname: Pair{}}}\n", i / 12),
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
                ("PostgresDown".into(), vec![("namespace", "ns49"), ("x", "y")]),
                ("Down".into(), vec![("team", "t2"), ("service", "s2")]),
                ("Down".into(), vec![("team", "t2"), ("service", "s2"), ("env", "test")]),
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
        let index = &set.index;
        assert!(index.unindexed.is_empty());
        assert!(!index
            .by_pair
            .contains_key(&index.pair_hash("alertname", "PostgresDown")));
        assert_eq!(index.by_pair.len(), 1000);
        assert!(index.by_pair.values().all(|&(_, n)| n == 1));
        assert!(index.by_pair.contains_key(&index.pair_hash("namespace", "ns7")));
        let hit = set.matching(&labels(&[("alertname", "PostgresDown"), ("namespace", "ns7")]));
        assert_eq!(names(&hit), ["default/p7"]);
    }

    #[test]
    fn the_packed_conditions_keep_each_distinct_text_once() {
        let set = set_of(1000);
        let text = &set.index.text;
        for once in ["alertname", "team", "db", "severity", "critical|page"] {
            assert_eq!(text.matches(once).count(), 1, "{once} in {text:.200}");
        }
        assert_eq!(set.index.regexes.len(), 1);
        assert_eq!(set.index.conds.len(), 3000);
    }

    /// Every pair hash kept to two bits: the plans of different pairs share ranges, and each
    /// alert reaches some range through several of its pairs. Only the check of every
    /// condition tells the plans apart.
    #[test]
    fn colliding_pair_hashes_change_no_match() {
        let mut set = mixed_set();
        set.index = Index::build_masked(&set.plans, 0b11);
        assert!(set.index.by_pair.len() <= 4);
        for alert in [
            labels(&[("alertname", "A6"), ("team", "db"), ("severity", "page")]),
            labels(&[("alertname", "PostgresDown"), ("namespace", "ns7")]),
            labels(&[("alertname", "Down"), ("team", "t2"), ("service", "s2")]),
            labels(&[("alertname", "Pair0")]),
            labels(&[("alertname", "Any")]),
        ] {
            let indexed = names(&set.matching(&alert));
            assert_eq!(indexed, names(&set.matching_by_scan(&alert)), "{alert:?}");
            assert!(!indexed.is_empty(), "{alert:?} matches something");
        }
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 4] = ["alertname", "namespace", "team", "severity"];
        const VALUES: [&str; 4] = ["a", "b", "c", "d"];
        const OPS: [&str; 4] = ["=", "!=", "=~", "!~"];
        const PATTERNS: [&str; 5] = ["a", "b", "a|b", ".*", ""];
        const MODES: [&str; 3] = ["auto", "approval", "manual"];

        /// One plan's spec: mode, `alertLabels` and `alertMatchers`, by position in the
        /// tables above.
        type Spec = (usize, BTreeMap<usize, usize>, Vec<(usize, usize, usize)>);

        fn spec() -> impl Strategy<Value = Spec> {
            (
                0..MODES.len(),
                prop::collection::btree_map(0..NAMES.len(), 0..VALUES.len(), 0..3),
                prop::collection::vec((0..NAMES.len(), 0..OPS.len(), 0..PATTERNS.len()), 0..3),
            )
        }

        fn alert() -> impl Strategy<Value = BTreeMap<String, String>> {
            prop::collection::btree_map(0..NAMES.len(), 0..VALUES.len(), 0..5).prop_map(|l| {
                l.into_iter()
                    .map(|(k, v)| (NAMES[k].to_string(), VALUES[v].to_string()))
                    .collect()
            })
        }

        fn set_of_specs(specs: &[Spec]) -> PlanSet {
            set_from(specs.len(), |i| {
                let (mode, labels, matchers) = &specs[i];
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{}: {}", NAMES[*k], VALUES[*v]))
                    .collect();
                let matchers: Vec<String> = matchers
                    .iter()
                    .map(|(k, op, v)| format!("'{}{}\"{}\"'", NAMES[*k], OPS[*op], PATTERNS[*v]))
                    .collect();
                format!(
                    "  mode: {}\n  alertLabels: {{{}}}\n  alertMatchers: [{}]\n",
                    MODES[*mode],
                    labels.join(", "),
                    matchers.join(", ")
                )
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Random plans over a few label names and values (so that many share pairs),
            /// random alerts: the index finds exactly what checking every plan finds, with
            /// the pair hashes whole and cut to two bits.
            #[test]
            fn indexed_matching_agrees_with_a_full_scan(
                specs in prop::collection::vec(spec(), 1..40),
                alerts in prop::collection::vec(alert(), 1..20),
            ) {
                let mut set = set_of_specs(&specs);
                prop_assert!(set.invalid.is_empty(), "{:?}", set.invalid);
                for mask in [u64::MAX, 0b11] {
                    set.index = Index::build_masked(&set.plans, mask);
                    for alert in &alerts {
                        prop_assert_eq!(
                            names(&set.matching(alert)),
                            names(&set.matching_by_scan(alert)),
                            "{:?}, hash mask {:#x}", alert, mask
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_listing_serializes_as_the_summaries_and_problems_did() {
        let mut set = mixed_set();
        set.invalid.push(InvalidPlan {
            file: "bad.yaml".into(),
            plan: Some("ops/bad".into()),
            problems: vec!["spec.steps: required".into()],
        });
        let listed: serde_json::Value = serde_json::from_slice(&serde_json::to_vec(&set.listing()).unwrap()).unwrap();
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
