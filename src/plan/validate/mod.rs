//! Plan validation (pure, no cluster needed): everything that can be known about a plan before
//! it runs, and the typed [`Plan`] it becomes. A plan with any [`Problem`] never executes.
//!
//! One file per step type, as in `executor/`: each checks its step's body and, when nothing is
//! wrong, returns the body as its [`StepKind`]. This file checks what every plan and step has
//! (durations, names, clusters, matchers) and what templates may refer to where.

mod apply;
mod approval;
mod delete;
mod exec;
mod for_each;
mod http;
mod patch;
mod read_field;
mod templates;
mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use for_each::ITEM;
pub use templates::{condition_templates, output_key, step_templates};

use super::compiled::{Plan, Step, StepKind, DEFAULT_RUN_TIMEOUT, DEFAULT_STEP_TIMEOUT, FIELD_MANAGER, MAX_WAIT};
use super::load::LoadedPlan;
use super::model::{RecoveryPlan, RecoveryPlanSpec, StepType};
use crate::matcher::{Matcher, Regexes};
use crate::{duration, template};

/// What kind of problem a [`Problem`] is: a bounded category, for metrics, JSON output and
/// the test that every rule has an invalid plan to show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Duration,
    Matcher,
    NoSteps,
    StepName,
    DuplicateStep,
    MissingBody,
    ExtraBody,
    UnknownCluster,
    Unbounded,
    PatchType,
    FieldPath,
    OutputKey,
    ApplyForm,
    DeleteForm,
    ExecForm,
    ApprovalForm,
    ForEachForm,
    Http,
    Object,
    WaitForm,
    Template,
    TemplateName,
    UndefinedValue,
}

impl Rule {
    pub const ALL: [Rule; 23] = [
        Rule::Duration,
        Rule::Matcher,
        Rule::NoSteps,
        Rule::StepName,
        Rule::DuplicateStep,
        Rule::MissingBody,
        Rule::ExtraBody,
        Rule::UnknownCluster,
        Rule::Unbounded,
        Rule::PatchType,
        Rule::FieldPath,
        Rule::OutputKey,
        Rule::ApplyForm,
        Rule::DeleteForm,
        Rule::ExecForm,
        Rule::ApprovalForm,
        Rule::ForEachForm,
        Rule::Http,
        Rule::Object,
        Rule::WaitForm,
        Rule::Template,
        Rule::TemplateName,
        Rule::UndefinedValue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Duration => "duration",
            Rule::Matcher => "matcher",
            Rule::NoSteps => "no-steps",
            Rule::StepName => "step-name",
            Rule::DuplicateStep => "duplicate-step",
            Rule::MissingBody => "missing-body",
            Rule::ExtraBody => "extra-body",
            Rule::UnknownCluster => "unknown-cluster",
            Rule::Unbounded => "unbounded",
            Rule::PatchType => "patch-type",
            Rule::FieldPath => "field-path",
            Rule::OutputKey => "output-key",
            Rule::ApplyForm => "apply-form",
            Rule::DeleteForm => "delete-form",
            Rule::ExecForm => "exec-form",
            Rule::ApprovalForm => "approval-form",
            Rule::ForEachForm => "for-each-form",
            Rule::Http => "http",
            Rule::Object => "object",
            Rule::WaitForm => "wait-form",
            Rule::Template => "template",
            Rule::TemplateName => "template-name",
            Rule::UndefinedValue => "undefined-value",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for Rule {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Something wrong with a plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The step it is about, if any.
    pub step: Option<String>,
    /// Where in the plan: `spec.steps[2].readField.fieldPath`.
    pub field: String,
    pub rule: Rule,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Something a plan author should know that is not wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    pub step: String,
    pub message: String,
}

#[derive(Default, Debug)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub notes: Vec<Note>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A plan that did not validate, with every problem found.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the plan is invalid: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub problems: Vec<Problem>,
}

/// Validates a plan. `clusters` is the registry's cluster names; `None` skips that check
/// (e.g. when no kubeconfig is at hand).
pub fn validate(spec: &RecoveryPlanSpec, clusters: Option<&BTreeSet<String>>) -> Report {
    let mut regexes = Regexes::default();
    let mut v = Validator::new(clusters, &mut regexes);
    v.plan(spec);
    v.report
}

/// Validates a loaded plan and returns it typed, ready to run. Matchers share compiled regexes
/// through `regexes` (one per pattern for a whole plan set).
pub fn compile(
    loaded: &LoadedPlan,
    clusters: Option<&BTreeSet<String>>,
    regexes: &mut Regexes,
) -> Result<Plan, Invalid> {
    let mut v = Validator::new(clusters, regexes);
    let parts = v.plan(&loaded.plan.spec);
    match parts {
        Some(parts) if v.report.is_valid() => Ok(assemble(loaded, parts)),
        _ => Err(Invalid {
            problems: v.report.problems,
        }),
    }
}

/// [`compile`] with a plan set of its own: for one plan (`run`, `rehearse`, tests).
pub fn compile_one(loaded: &LoadedPlan, clusters: Option<&BTreeSet<String>>) -> Result<Plan, Invalid> {
    compile(loaded, clusters, &mut Regexes::default())
}

/// What validation decided about the plan as a whole.
struct Parts {
    timeout: Duration,
    cooldown: Option<Duration>,
    approval_timeout: Option<Duration>,
    matchers: Vec<Matcher>,
    steps: Vec<Step>,
    on_failure: Vec<Step>,
}

fn assemble(loaded: &LoadedPlan, parts: Parts) -> Plan {
    let plan = &loaded.plan;
    let namespace = plan.metadata.namespace.as_deref().unwrap_or("default");
    let name = plan.metadata.name.as_deref().unwrap_or_default();
    Plan {
        key: format!("{namespace}/{name}"),
        field_manager: field_manager(namespace, name),
        generation: generation(plan),
        mode: plan.spec.mode,
        timeout: parts.timeout,
        cooldown: parts.cooldown,
        approval_timeout: parts.approval_timeout.unwrap_or(parts.timeout),
        matchers: parts.matchers,
        steps: parts.steps,
        on_failure: parts.on_failure,
        base_dir: loaded.source.file.parent().map(std::path::Path::to_path_buf),
        source: super::load::Source {
            file: loaded.source.file.clone(),
            line: loaded.source.line,
            text: String::new(),
        },
        nova: loaded.nova,
        resource: plan.clone(),
    }
}

/// The field manager of a plan's writes (at most 128 bytes, as the API server requires).
fn field_manager(namespace: &str, name: &str) -> String {
    let mut m = format!("{FIELD_MANAGER}/{namespace}/{name}");
    while m.len() > 128 {
        m.pop();
    }
    m
}

/// The object's generation, or for a plan from a file a short hash of its spec.
fn generation(plan: &RecoveryPlan) -> String {
    if let Some(g) = plan.metadata.generation {
        return g.to_string();
    }
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(&plan.spec).unwrap_or_default();
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

struct Validator<'a> {
    report: Report,
    /// The plan's params, to check what templates of them render to.
    params: BTreeMap<String, serde_json::Value>,
    clusters: Option<&'a BTreeSet<String>>,
    regexes: &'a mut Regexes,
}

/// Where a step is and what its templates may use.
struct StepScope<'a> {
    name: Option<&'a str>,
    /// `spec.steps[2]`
    field: &'a str,
    run_timeout: Duration,
}

impl StepScope<'_> {
    fn at(&self, rest: &str) -> String {
        format!("{}.{rest}", self.field)
    }
}

impl<'a> Validator<'a> {
    fn new(clusters: Option<&'a BTreeSet<String>>, regexes: &'a mut Regexes) -> Self {
        Validator {
            report: Report::default(),
            params: BTreeMap::new(),
            clusters,
            regexes,
        }
    }

    fn problem(&mut self, step: Option<&str>, field: String, rule: Rule, message: String) {
        self.report.problems.push(Problem {
            step: step.map(str::to_string),
            field,
            rule,
            message,
        });
    }

    /// A duration field: `None` when absent, the problem recorded when it does not parse.
    fn duration(&mut self, step: Option<&str>, field: String, text: Option<&str>) -> Option<Duration> {
        match text.map(duration::parse)? {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(step, field, Rule::Duration, e.to_string());
                None
            }
        }
    }

    /// A wait's bound: present, parseable and within the plan's timeout.
    fn wait_bound(
        &mut self,
        s: &StepScope<'_>,
        field: String,
        text: Option<&str>,
        missing: &str,
        what: &str,
    ) -> Option<Duration> {
        let Some(text) = text else {
            self.problem(s.name, field, Rule::Unbounded, missing.to_string());
            return None;
        };
        let d = self.duration(s.name, field.clone(), Some(text))?;
        if d > s.run_timeout.min(MAX_WAIT) {
            self.problem(
                s.name,
                field,
                Rule::Unbounded,
                format!(
                    "{what} {} is longer than the plan's timeout {}",
                    duration::format(d),
                    duration::format(s.run_timeout)
                ),
            );
            return None;
        }
        Some(d)
    }

    fn plan(&mut self, spec: &RecoveryPlanSpec) -> Option<Parts> {
        self.params = spec.params.clone();
        let timeout = self.duration(None, "spec.timeout".into(), spec.timeout.as_deref());
        let run_timeout = timeout.unwrap_or(DEFAULT_RUN_TIMEOUT);
        let approval_timeout = self.duration(None, "spec.approvalTimeout".into(), spec.approval_timeout.as_deref());
        let cooldown = self.duration(None, "spec.cooldown".into(), spec.cooldown.as_deref());
        let mut matchers = Vec::with_capacity(spec.alert_matchers.len());
        for (i, m) in spec.alert_matchers.iter().enumerate() {
            match Matcher::parse_shared(m, self.regexes) {
                Ok(m) => matchers.push(m),
                Err(e) => self.problem(None, format!("spec.alertMatchers[{i}]"), Rule::Matcher, e.to_string()),
            }
        }
        if spec.steps.is_empty() {
            self.problem(None, "spec.steps".into(), Rule::NoSteps, "the plan has no steps".into());
        }
        self.step_names(spec);

        // What `Values.X` can refer to at each point: params, then the outputs of earlier steps.
        let mut known: BTreeSet<String> = spec.params.keys().cloned().collect();
        // Who produces each outputKey, as the message about a too-early use will say it.
        let mut producers: BTreeMap<String, String> = BTreeMap::new();
        let main = spec.steps.iter().map(|s| (s, false));
        for (s, compensation) in main.chain(spec.on_failure.iter().map(|s| (s, true))) {
            if let Some(k) = output_key(s) {
                producers.entry(k.to_string()).or_insert_with(|| {
                    if compensation {
                        format!(
                            "only the onFailure step {:?} produces it, which runs after a step has failed",
                            s.name()
                        )
                    } else {
                        format!("step {:?} produces it, and must come before this step", s.name())
                    }
                });
            }
        }
        // Compensation may run after any step failed: it may use params and the outputs of all
        // main steps (guard those with `| default(…)`), and of earlier compensation steps.
        let mut compiled = |list: &[super::model::Step], prefix: &str, v: &mut Self| {
            // Exactly as long as the list: a loaded plan keeps it (pushing left room for 4).
            let mut out = Vec::with_capacity(list.len());
            for (i, step) in list.iter().enumerate() {
                let field = format!("{prefix}[{i}]");
                out.push(v.step(step, &field, &known, &producers, run_timeout));
                if let Some(k) = output_key(step) {
                    known.insert(k.to_string());
                }
            }
            out.into_iter().collect::<Option<Vec<Step>>>()
        };
        let steps = compiled(&spec.steps, "spec.steps", self);
        let on_failure = compiled(&spec.on_failure, "spec.onFailure", self);
        Some(Parts {
            timeout: run_timeout,
            cooldown,
            approval_timeout,
            matchers,
            steps: steps?,
            on_failure: on_failure?,
        })
    }

    fn step_names(&mut self, spec: &RecoveryPlanSpec) {
        let mut names: BTreeMap<&str, String> = BTreeMap::new();
        let all = spec
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("spec.steps[{i}]"), s));
        let all = all.chain(
            spec.on_failure
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("spec.onFailure[{i}]"), s)),
        );
        for (field, step) in all {
            if step.name().is_empty() {
                self.problem(
                    None,
                    format!("{field}.name"),
                    Rule::StepName,
                    "every step needs a `name` (only Nova plans may leave it out)".into(),
                );
            } else if let Some(first) = names.get(step.name()) {
                self.problem(
                    Some(step.name()),
                    format!("{field}.name"),
                    Rule::DuplicateStep,
                    format!("step name {:?} is used twice (first at {first})", step.name()),
                );
            } else {
                names.insert(step.name(), field);
            }
        }
    }

    fn step(
        &mut self,
        step: &super::model::Step,
        field: &str,
        known: &BTreeSet<String>,
        producers: &BTreeMap<String, String>,
        run_timeout: Duration,
    ) -> Option<Step> {
        let name = Some(step.name());
        let s = StepScope {
            name,
            field,
            run_timeout,
        };
        let body_ok = self.one_body(step, &s);
        // A templated cluster (`{{ Values.from }}`) is checked against the registry when it
        // runs; its template is checked below like any other.
        if let (Some(cluster), Some(clusters)) = (&step.cluster, self.clusters) {
            if !template::is_template(cluster) && !clusters.contains(cluster) {
                let have = clusters.iter().cloned().collect::<Vec<_>>().join(", ");
                self.problem(
                    name,
                    s.at("cluster"),
                    Rule::UnknownCluster,
                    format!("cluster {cluster:?} is not in the cluster registry (known: {have})"),
                );
            }
        }
        let step_timeout = self
            .duration(name, s.at("timeout"), step.timeout.as_deref())
            .unwrap_or(DEFAULT_STEP_TIMEOUT);
        if step_timeout > run_timeout {
            self.problem(
                name,
                s.at("timeout"),
                Rule::Unbounded,
                format!(
                    "step timeout {} is longer than the plan's timeout {}",
                    duration::format(step_timeout),
                    duration::format(run_timeout)
                ),
            );
        }

        let sources = step_templates(step, field);
        let secrets: BTreeSet<&str> = step
            .http
            .iter()
            .flat_map(|h| h.secrets.keys().map(String::as_str))
            .collect();
        for (f, src, _) in &sources {
            self.template(name, f, src, known, producers, &secrets);
        }
        if !body_ok {
            return None;
        }

        let kind = match step.step_type {
            StepType::Patch => StepKind::Patch(self.patch(&s, step.patch.as_ref()?)?),
            StepType::ReadField => StepKind::ReadField(self.read_field(&s, step.read_field.as_ref()?)?),
            StepType::Wait => StepKind::Wait(self.wait(&s, step.wait.as_ref()?)?),
            StepType::Apply => StepKind::Apply(self.apply(&s, step.apply.as_ref()?)?),
            StepType::Http => StepKind::Http(self.http(&s, step.http.as_ref()?)?),
            StepType::Delete => StepKind::Delete(self.delete(&s, step.delete.as_ref()?)?),
            StepType::Assert => StepKind::Assert(step.assert.as_deref()?.clone()),
            StepType::Exec => StepKind::Exec(self.exec(&s, step.exec.as_ref()?)?),
            StepType::Approval => StepKind::Approval(self.approval(&s, step, step.approval.as_ref()?)?),
            StepType::ForEach => StepKind::ForEach(Box::new(self.for_each(
                &s,
                step,
                step.for_each.as_ref()?,
                known,
                producers,
            )?)),
        };
        Some(Step {
            name: step.name().to_string(),
            cluster: step.cluster.clone(),
            when: step.when.clone(),
            attempt_timeout: attempt_timeout(&kind, step_timeout),
            retries: step.retries.unwrap_or(0),
            on_error: step.on_error,
            kind,
            templates: sources.into_iter().map(|(_, src, _)| src).collect(),
        })
    }

    /// Exactly the body the step's `type` names; false when it is missing or others are set.
    fn one_body(&mut self, step: &super::model::Step, s: &StepScope<'_>) -> bool {
        let set = [
            (StepType::Patch, step.patch.is_some()),
            (StepType::ReadField, step.read_field.is_some()),
            (StepType::Wait, step.wait.is_some()),
            (StepType::Apply, step.apply.is_some()),
            (StepType::Http, step.http.is_some()),
            (StepType::Delete, step.delete.is_some()),
            (StepType::Assert, step.assert.is_some()),
            (StepType::Exec, step.exec.is_some()),
            (StepType::Approval, step.approval.is_some()),
            (StepType::ForEach, step.for_each.is_some()),
        ];
        let ty = step.step_type.as_str();
        let mut ok = true;
        if !set.iter().any(|(k, on)| *k == step.step_type && *on) {
            self.problem(
                s.name,
                s.at(ty),
                Rule::MissingBody,
                format!("a {ty} step needs a `{ty}:` section"),
            );
            ok = false;
        }
        for (k, on) in set {
            if on && k != step.step_type {
                let k = k.as_str();
                self.problem(
                    s.name,
                    s.at(k),
                    Rule::ExtraBody,
                    format!("a {ty} step cannot have a `{k}:` section (did you mean type: {k}?)"),
                );
                ok = false;
            }
        }
        ok
    }

    /// An object's `apiVersion` and `resource` as the API path needs them.
    fn object(&mut self, step: Option<&str>, field: &str, api_version: &str, resource: &str) -> bool {
        let parts: Vec<&str> = api_version.split('/').collect();
        let mut ok = true;
        if api_version.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            self.problem(
                step,
                format!("{field}.apiVersion"),
                Rule::Object,
                format!("apiVersion {api_version:?} must be group/version or v1"),
            );
            ok = false;
        }
        if resource.is_empty() || resource.chars().any(|c| c.is_ascii_uppercase()) {
            self.problem(
                step,
                format!("{field}.resource"),
                Rule::Object,
                format!("resource {resource:?} must be the lower-case plural as in the API path (e.g. clusters, configmaps)"),
            );
            ok = false;
        }
        ok
    }

    /// A field path: parsed, or the problem recorded.
    fn field_path(&mut self, step: Option<&str>, field: String, text: &str) -> Option<crate::fieldpath::FieldPath> {
        match crate::fieldpath::FieldPath::parse(text) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(step, field, Rule::FieldPath, e.to_string());
                None
            }
        }
    }

    fn output_key_name(&mut self, step: Option<&str>, field: String, key: &str, example: &str) -> bool {
        if is_identifier(key) {
            return true;
        }
        self.problem(
            step,
            field,
            Rule::OutputKey,
            format!("outputKey {key:?} must be a name like {example} (letters, digits, _)"),
        );
        false
    }

    fn template(
        &mut self,
        step: Option<&str>,
        field: &str,
        src: &str,
        known: &BTreeSet<String>,
        producers: &BTreeMap<String, String>,
        secrets: &BTreeSet<&str>,
    ) {
        if !template::is_template(src) {
            return;
        }
        let refs = match template::references(src) {
            Ok(r) => r,
            Err(e) => {
                self.problem(step, field.into(), Rule::Template, e.to_string());
                return;
            }
        };
        if let Some(reason) = template::unknown_callable(src) {
            self.problem(step, field.into(), Rule::Template, reason);
            return;
        }
        for r in refs {
            let mut parts = r.splitn(3, '.');
            let top = parts.next().unwrap_or_default();
            let key = parts.next();
            if template::FUNCTIONS.contains(&top) {
                continue;
            }
            if !template::CONTEXT_NAMES.contains(&top) {
                self.problem(
                    step,
                    field.into(),
                    Rule::TemplateName,
                    format!(
                        "`{top}` is not defined (templates can use {})",
                        template::CONTEXT_NAMES.join(", ")
                    ),
                );
                continue;
            }
            match (top, key) {
                ("Values", Some(k)) if !known.contains(k) => {
                    let message = match producers.get(k) {
                        Some(p) => format!("`Values.{k}` is used before it exists: {p}"),
                        None => format!("`Values.{k}` is neither a param nor the outputKey of an earlier step"),
                    };
                    self.problem(step, field.into(), Rule::UndefinedValue, message);
                }
                ("secrets", Some(k)) if !secrets.contains(k) => {
                    self.problem(
                        step,
                        field.into(),
                        Rule::UndefinedValue,
                        format!("`secrets.{k}` is not declared in this step's `http.secrets`"),
                    );
                }
                _ => {}
            }
        }
    }
}

/// How long one attempt of a step may take: a wait's own bound (it must outlast what it waits
/// for) added to the step's timeout, else the step's.
fn attempt_timeout(kind: &StepKind, step_timeout: Duration) -> Duration {
    use super::compiled::Wait;
    match kind {
        StepKind::Wait(Wait::Pause(d)) => (*d).max(step_timeout) + Duration::from_secs(1),
        StepKind::Wait(Wait::Until(u)) => u.timeout.max(step_timeout) + Duration::from_secs(1),
        StepKind::Delete(d) => d.wait_gone.map_or(step_timeout, |w| w + step_timeout),
        StepKind::Approval(a) => a.timeout + step_timeout,
        // Every round of iterations, each as long as its steps' budgets together.
        StepKind::ForEach(f) => {
            let one: Duration = f.steps.iter().map(Step::budget).sum();
            (one * f.max_items.div_ceil(f.concurrency)).min(MAX_WAIT)
        }
        _ => step_timeout,
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
