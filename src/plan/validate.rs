//! Plan validation (pure, no cluster needed): everything that can be known about a plan before
//! it runs. A plan with any [`Problem`] never executes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::model::{RecoveryPlanSpec, Step, StepType};
use crate::fieldpath::FieldPath;
use crate::{duration, template};

/// Per-attempt step timeout when a step sets none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole-run deadline when a plan sets none.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(3600);
/// A condition wait without a timeout is refused by validation; this bounds one regardless.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest any wait may be.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

pub const PATCH_TYPES: &[&str] = &[
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
];

/// Something wrong with a plan.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The step it is about, if any.
    pub step: Option<String>,
    /// Where in the plan: `spec.steps[2].readField.fieldPath`.
    pub field: String,
    /// A bounded category, for metrics and JSON output.
    pub rule: &'static str,
    pub message: String,
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

/// Validates a plan. `clusters` is the registry's cluster names; `None` skips that check
/// (e.g. when no kubeconfig is at hand).
pub fn validate(spec: &RecoveryPlanSpec, clusters: Option<&BTreeSet<String>>) -> Report {
    let mut v = Validator {
        report: Report::default(),
        clusters,
    };
    v.plan(spec);
    v.report
}

struct Validator<'a> {
    report: Report,
    clusters: Option<&'a BTreeSet<String>>,
}

impl Validator<'_> {
    fn problem(&mut self, step: Option<&str>, field: String, rule: &'static str, message: String) {
        self.report.problems.push(Problem {
            step: step.map(str::to_string),
            field,
            rule,
            message,
        });
    }

    fn plan(&mut self, spec: &RecoveryPlanSpec) {
        let run_timeout = match spec.timeout.as_deref().map(duration::parse) {
            Some(Err(e)) => {
                self.problem(None, "spec.timeout".into(), "duration", e.to_string());
                DEFAULT_RUN_TIMEOUT
            }
            Some(Ok(d)) => d,
            None => DEFAULT_RUN_TIMEOUT,
        };
        if let Some(Err(e)) = spec.approval_timeout.as_deref().map(duration::parse) {
            self.problem(
                None,
                "spec.approvalTimeout".into(),
                "duration",
                e.to_string(),
            );
        }
        if let Some(Err(e)) = spec.cooldown.as_deref().map(duration::parse) {
            self.problem(None, "spec.cooldown".into(), "duration", e.to_string());
        }
        for (i, m) in spec.alert_matchers.iter().enumerate() {
            if let Err(e) = crate::matcher::Matcher::parse(m) {
                self.problem(
                    None,
                    format!("spec.alertMatchers[{i}]"),
                    "matcher",
                    e.to_string(),
                );
            }
        }
        if spec.steps.is_empty() {
            self.problem(
                None,
                "spec.steps".into(),
                "no-steps",
                "the plan has no steps".into(),
            );
        }

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
                    "step-name",
                    "every step needs a `name` (only Nova plans may leave it out)".into(),
                );
            } else if let Some(first) = names.get(step.name()) {
                self.problem(
                    Some(step.name()),
                    format!("{field}.name"),
                    "duplicate-step",
                    format!(
                        "step name {:?} is used twice (first at {first})",
                        step.name()
                    ),
                );
            } else {
                names.insert(step.name(), field);
            }
        }

        // What `Values.X` can refer to at each point: params, then the outputs of earlier steps.
        let mut known: BTreeMap<String, Option<String>> =
            spec.params.keys().map(|k| (k.clone(), None)).collect();
        // Who produces each outputKey, as the message about a too-early use will say it.
        let mut producers: BTreeMap<String, String> = BTreeMap::new();
        let main = spec.steps.iter().map(|s| (s, false));
        for (s, compensation) in main.chain(spec.on_failure.iter().map(|s| (s, true))) {
            if let Some(k) = output_key(s) {
                producers.entry(k.to_string()).or_insert_with(|| {
                    if compensation {
                        format!("only the onFailure step {:?} produces it, which runs after a step has failed", s.name())
                    } else {
                        format!("step {:?} produces it, and must come before this step", s.name())
                    }
                });
            }
        }
        for (i, step) in spec.steps.iter().enumerate() {
            self.step(
                step,
                &format!("spec.steps[{i}]"),
                &known,
                &producers,
                run_timeout,
            );
            if let Some(k) = output_key(step) {
                known.insert(k.to_string(), Some(step.name().to_string()));
            }
        }
        // Compensation may run after any step failed: it may use params and the outputs of all
        // main steps (guard those with `| default(…)`), and of earlier compensation steps.
        for (i, step) in spec.on_failure.iter().enumerate() {
            self.step(
                step,
                &format!("spec.onFailure[{i}]"),
                &known,
                &producers,
                run_timeout,
            );
            if let Some(k) = output_key(step) {
                known.insert(k.to_string(), Some(step.name().to_string()));
            }
        }
    }

    fn step(
        &mut self,
        step: &Step,
        field: &str,
        known: &BTreeMap<String, Option<String>>,
        producers: &BTreeMap<String, String>,
        run_timeout: Duration,
    ) {
        let name = Some(step.name());
        let set = [
            ("patch", step.patch.is_some()),
            ("readField", step.read_field.is_some()),
            ("wait", step.wait.is_some()),
            ("apply", step.apply.is_some()),
            ("http", step.http.is_some()),
            ("delete", step.delete.is_some()),
            ("assert", step.assert.is_some()),
            ("exec", step.exec.is_some()),
        ];
        let ty = step.step_type.as_str();
        if !set.iter().any(|(k, on)| *k == ty && *on) {
            self.problem(
                name,
                format!("{field}.{ty}"),
                "missing-body",
                format!("a {ty} step needs a `{ty}:` section"),
            );
        }
        for (k, on) in set {
            if on && k != ty {
                self.problem(
                    name,
                    format!("{field}.{k}"),
                    "extra-body",
                    format!("a {ty} step cannot have a `{k}:` section (did you mean type: {k}?)"),
                );
            }
        }
        // A templated cluster (`{{ Values.from }}`) is checked against the registry when it
        // runs; its template is checked below like any other.
        if let (Some(cluster), Some(clusters)) = (&step.cluster, self.clusters) {
            if !template::is_template(cluster) && !clusters.contains(cluster) {
                let have = clusters.iter().cloned().collect::<Vec<_>>().join(", ");
                self.problem(
                    name,
                    format!("{field}.cluster"),
                    "unknown-cluster",
                    format!("cluster {cluster:?} is not in the cluster registry (known: {have})"),
                );
            }
        }
        let step_timeout = match step.timeout.as_deref().map(duration::parse) {
            Some(Err(e)) => {
                self.problem(name, format!("{field}.timeout"), "duration", e.to_string());
                DEFAULT_STEP_TIMEOUT
            }
            Some(Ok(d)) => d,
            None => DEFAULT_STEP_TIMEOUT,
        };
        if step_timeout > run_timeout {
            self.problem(
                name,
                format!("{field}.timeout"),
                "unbounded",
                format!(
                    "step timeout {} is longer than the plan's timeout {}",
                    duration::format(step_timeout),
                    duration::format(run_timeout)
                ),
            );
        }

        let templates = step_templates(step, field);
        let secrets: BTreeSet<&str> = step
            .http
            .iter()
            .flat_map(|h| h.secrets.keys().map(String::as_str))
            .collect();
        for (f, src, _) in templates {
            self.template(name, &f, &src, known, producers, &secrets);
        }

        match step.step_type {
            StepType::Patch => {
                if let Some(p) = &step.patch {
                    self.object(name, &format!("{field}.patch"), &p.api_version, &p.resource);
                    let ptype = p.patch_type.as_deref().unwrap_or(PATCH_TYPES[0]);
                    if !PATCH_TYPES.contains(&ptype) {
                        self.problem(
                            name,
                            format!("{field}.patch.patchType"),
                            "patch-type",
                            format!(
                                "unknown patchType {ptype:?} (use one of {})",
                                PATCH_TYPES.join(", ")
                            ),
                        );
                    }
                    match FieldPath::parse(&p.override_.field_path) {
                        Err(e) => self.problem(
                            name,
                            format!("{field}.patch.override.fieldPath"),
                            "field-path",
                            e.to_string(),
                        ),
                        Ok(FieldPath::JsonPath { .. }) => self.problem(
                            name,
                            format!("{field}.patch.override.fieldPath"),
                            "field-path",
                            "a patch needs a dotted path (spec.replica.primary), not a JSONPath"
                                .into(),
                        ),
                        Ok(fp) => {
                            if fp.has_index() && ptype == PATCH_TYPES[0] {
                                self.report.notes.push(Note {
                                    step: step.name().to_string(),
                                    message: format!(
                                        "`{}` goes through an array index, which a merge patch cannot express: it is sent as a JSON Patch (RFC 6902) that first tests the array element",
                                        p.override_.field_path
                                    ),
                                });
                            }
                        }
                    }
                }
            }
            StepType::ReadField => {
                if let Some(r) = &step.read_field {
                    self.object(
                        name,
                        &format!("{field}.readField"),
                        &r.api_version,
                        &r.resource,
                    );
                    if let Err(e) = FieldPath::parse(&r.field_path) {
                        self.problem(
                            name,
                            format!("{field}.readField.fieldPath"),
                            "field-path",
                            e.to_string(),
                        );
                    }
                    if !is_identifier(&r.output_key) {
                        self.problem(
                            name,
                            format!("{field}.readField.outputKey"),
                            "output-key",
                            format!("outputKey {:?} must be a name like DemotionToken (letters, digits, _)", r.output_key),
                        );
                    }
                }
            }
            StepType::Wait => {
                if let Some(w) = &step.wait {
                    self.wait(name, &format!("{field}.wait"), w, run_timeout);
                }
            }
            StepType::Apply => {
                if let Some(a) = &step.apply {
                    let whole = a.manifest.is_some();
                    let keyed = a.target.is_some() || a.template_from.is_some();
                    if whole == keyed {
                        self.problem(
                            name,
                            format!("{field}.apply"),
                            "apply-form",
                            "an apply step needs either `manifest`, or `target` with `templateFrom`".into(),
                        );
                    } else if keyed {
                        if a.target.is_none() || a.template_from.is_none() {
                            self.problem(
                                name,
                                format!("{field}.apply"),
                                "apply-form",
                                "`target` and `templateFrom` go together".into(),
                            );
                        }
                        if let Some(tg) = &a.target {
                            if tg.kind != "ConfigMap" && tg.kind != "Secret" {
                                self.problem(
                                    name,
                                    format!("{field}.apply.target.kind"),
                                    "apply-form",
                                    format!(
                                        "target kind must be ConfigMap or Secret, not {:?}",
                                        tg.kind
                                    ),
                                );
                            }
                        }
                        if let Some(tf) = &a.template_from {
                            let n = [
                                tf.config_map.is_some(),
                                tf.file.is_some(),
                                tf.inline.is_some(),
                            ]
                            .iter()
                            .filter(|b| **b)
                            .count();
                            if n != 1 {
                                self.problem(
                                    name,
                                    format!("{field}.apply.templateFrom"),
                                    "apply-form",
                                    "templateFrom needs exactly one of configMap, file, inline"
                                        .into(),
                                );
                            }
                            // A plan may read templates beside it, nothing else on the host.
                            if let Some(file) = &tf.file {
                                let path = std::path::Path::new(file);
                                if path.is_absolute()
                                    || path
                                        .components()
                                        .any(|c| matches!(c, std::path::Component::ParentDir))
                                {
                                    self.problem(
                                        name,
                                        format!("{field}.apply.templateFrom.file"),
                                        "apply-form",
                                        format!(
                                            "templateFrom.file {file:?} must be a path inside the \
                                             plan's directory (relative, without `..`)"
                                        ),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            StepType::Delete => {
                if let Some(d) = &step.delete {
                    let f = format!("{field}.delete");
                    self.object(name, &f, &d.api_version, &d.resource);
                    match (&d.name, &d.label_selector) {
                        (Some(_), None) | (None, Some(_)) => {}
                        _ => self.problem(
                            name,
                            f.clone(),
                            "delete-form",
                            "a delete names one object with `name`, or several with `labelSelector` (not both)".into(),
                        ),
                    }
                    if d.max_objects == Some(0) {
                        self.problem(
                            name,
                            format!("{f}.maxObjects"),
                            "delete-form",
                            "maxObjects must be at least 1".into(),
                        );
                    }
                    if let Some(p) = &d.propagation_policy {
                        if !["Background", "Foreground", "Orphan"].contains(&p.as_str()) {
                            self.problem(
                                name,
                                format!("{f}.propagationPolicy"),
                                "delete-form",
                                format!("propagationPolicy {p:?} must be Background, Foreground or Orphan"),
                            );
                        }
                    }
                    if let Some(w) = &d.wait {
                        match w.timeout.as_deref().map(duration::parse) {
                            None if w.gone => self.problem(
                                name,
                                format!("{f}.wait.timeout"),
                                "unbounded",
                                "waiting until deleted objects are gone needs a `timeout` (e.g. 2m)".into(),
                            ),
                            Some(Err(e)) => self.problem(name, format!("{f}.wait.timeout"), "duration", e.to_string()),
                            Some(Ok(t)) if t > run_timeout.min(MAX_WAIT) => self.problem(
                                name,
                                format!("{f}.wait.timeout"),
                                "unbounded",
                                format!("wait timeout {} is longer than the plan's timeout {}", duration::format(t), duration::format(run_timeout)),
                            ),
                            _ => {}
                        }
                    }
                }
            }
            StepType::Assert => {}
            StepType::Exec => {
                if let Some(e) = &step.exec {
                    if e.command.is_empty() || e.command[0].trim().is_empty() {
                        self.problem(
                            name,
                            format!("{field}.exec.command"),
                            "exec-form",
                            "an exec step needs a `command` (a list: [psql, -tAc, \"select 1\"])"
                                .into(),
                        );
                    }
                }
            }
            StepType::Http => {
                if let Some(h) = &step.http {
                    // A value at the start of the URL is taken as the whole base URL: it must not
                    // come from an alert, or a label would choose the endpoint.
                    let url = template::normalize(h.url.trim_start());
                    if let Some(first) = url.strip_prefix("{{").and_then(|r| r.split_once("}}")) {
                        let from_alert = template::references(&format!("{{{{{}}}}}", first.0))
                            .is_ok_and(|refs| {
                                refs.iter().any(|r| r == "alert" || r.starts_with("alert."))
                            });
                        if from_alert {
                            self.problem(
                                name,
                                format!("{field}.http.url"),
                                "http",
                                "the URL starts with a value from the alert: a label would choose which endpoint is called; take the base URL from a param or a secret".into(),
                            );
                        }
                    }
                    if let Some(m) = &h.method {
                        if reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err() {
                            self.problem(
                                name,
                                format!("{field}.http.method"),
                                "http",
                                format!("{m:?} is not an HTTP method"),
                            );
                        }
                    }
                    if h.body.is_some() && h.json.is_some() {
                        self.problem(
                            name,
                            format!("{field}.http"),
                            "http",
                            "give either `body` or `json`, not both".into(),
                        );
                    }
                    if let Some(b) = &h.body {
                        let t = b.trim_start();
                        if (t.starts_with('{') || t.starts_with('[')) && template::is_template(b) {
                            self.problem(
                                name,
                                format!("{field}.http.body"),
                                "http",
                                "a JSON body with templates must be written as `json:` (its strings are templated, its structure is not), so a value with quotes cannot break it".into(),
                            );
                        }
                    }
                    for (k, s) in &h.secrets {
                        if s.env.is_some() == s.file.is_some() {
                            self.problem(
                                name,
                                format!("{field}.http.secrets.{k}"),
                                "http",
                                "a secret needs exactly one of `env` or `file`".into(),
                            );
                        }
                    }
                    if let Some(k) = &h.output_key {
                        if !is_identifier(k) {
                            self.problem(name, format!("{field}.http.outputKey"), "output-key", format!("outputKey {k:?} must be a name like Endpoint (letters, digits, _)"));
                        }
                    }
                }
            }
        }
    }

    fn object(&mut self, step: Option<&str>, field: &str, api_version: &str, resource: &str) {
        let parts: Vec<&str> = api_version.split('/').collect();
        if api_version.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            self.problem(
                step,
                format!("{field}.apiVersion"),
                "object",
                format!("apiVersion {api_version:?} must be group/version or v1"),
            );
        }
        if resource.is_empty() || resource.chars().any(|c| c.is_ascii_uppercase()) {
            self.problem(
                step,
                format!("{field}.resource"),
                "object",
                format!("resource {resource:?} must be the lower-case plural as in the API path (e.g. clusters, configmaps)"),
            );
        }
    }

    /// One condition of a wait: exactly one operator; a field to apply it to (its own
    /// `fieldPath` or the wait's) unless it is about the whole object; numbers where numbers
    /// are compared.
    fn condition(
        &mut self,
        step: Option<&str>,
        field: &str,
        c: &super::model::Condition,
        has_path: bool,
    ) {
        let ops = [
            ("equals", c.equals.is_some()),
            ("notEquals", c.not_equals.is_some()),
            ("notEmpty", c.not_empty.is_some()),
            ("exists", c.exists.is_some()),
            ("changed", c.changed.is_some()),
            ("gone", c.gone.is_some()),
            ("recreated", c.recreated.is_some()),
            ("greaterThan", c.greater_than.is_some()),
            ("lessThan", c.less_than.is_some()),
            ("atLeast", c.at_least.is_some()),
            ("atMost", c.at_most.is_some()),
            ("equalsField", c.equals_field.is_some()),
            ("allOf", !c.all_of.is_empty()),
            ("anyOf", !c.any_of.is_empty()),
        ];
        let set: Vec<&str> = ops.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect();
        if set.len() != 1 {
            self.problem(
                step,
                field.into(),
                "wait-form",
                format!(
                    "a condition has exactly one of {} (found: {})",
                    CONDITIONS.join(", "),
                    if set.is_empty() {
                        "none".into()
                    } else {
                        set.join(", ")
                    }
                ),
            );
            return;
        }
        let has_path = has_path || c.field_path.is_some();
        if let Some(Err(e)) = c.field_path.as_deref().map(FieldPath::parse) {
            self.problem(
                step,
                format!("{field}.fieldPath"),
                "field-path",
                e.to_string(),
            );
        }
        if let Some(Err(e)) = c.equals_field.as_deref().map(FieldPath::parse) {
            self.problem(
                step,
                format!("{field}.equalsField"),
                "field-path",
                e.to_string(),
            );
        }
        let whole_object = matches!(set[0], "gone" | "recreated" | "allOf" | "anyOf");
        if !whole_object && !has_path {
            self.problem(
                step,
                format!("{field}.fieldPath"),
                "wait-form",
                format!(
                    "`{}` needs a `fieldPath` (on the wait or on the condition)",
                    set[0]
                ),
            );
        }
        for (k, v) in [
            ("greaterThan", &c.greater_than),
            ("lessThan", &c.less_than),
            ("atLeast", &c.at_least),
            ("atMost", &c.at_most),
        ] {
            match v {
                Some(Value::Number(_)) | None => {}
                Some(Value::String(t))
                    if template::is_template(t) || t.trim().parse::<f64>().is_ok() => {}
                Some(other) => self.problem(
                    step,
                    format!("{field}.{k}"),
                    "wait-form",
                    format!("`{k}` compares numbers: {other} is not one"),
                ),
            }
        }
        for (k, list) in [("allOf", &c.all_of), ("anyOf", &c.any_of)] {
            for (i, sub) in list.iter().enumerate() {
                self.condition(step, &format!("{field}.{k}[{i}]"), sub, has_path);
            }
        }
    }

    fn wait(
        &mut self,
        step: Option<&str>,
        field: &str,
        w: &super::model::WaitStep,
        run_timeout: Duration,
    ) {
        let condition = w.condition.is_some() || w.field_path.is_some();
        match (&w.duration, condition) {
            (Some(d), false) => match duration::parse(d) {
                Err(e) => self.problem(step, format!("{field}.duration"), "duration", e.to_string()),
                Ok(d) if d > run_timeout.min(MAX_WAIT) => self.problem(
                    step,
                    format!("{field}.duration"),
                    "unbounded",
                    format!("a wait of {} is longer than the plan's timeout {}", duration::format(d), duration::format(run_timeout)),
                ),
                Ok(_) => {}
            },
            (Some(_), true) => self.problem(step, field.into(), "wait-form", "a wait has either `duration`, or an object with `fieldPath` and `condition`, not both".into()),
            (None, false) => self.problem(step, field.into(), "wait-form", "a wait needs `duration`, or an object with `fieldPath` and `condition`".into()),
            (None, true) => {
                for (k, v) in [("apiVersion", &w.api_version), ("resource", &w.resource), ("name", &w.name)] {
                    if v.as_deref().is_none_or(str::is_empty) {
                        self.problem(step, format!("{field}.{k}"), "wait-form", format!("a condition wait needs `{k}`"));
                    }
                }
                if let (Some(a), Some(r)) = (&w.api_version, &w.resource) {
                    self.object(step, field, a, r);
                }
                if let Some(Err(e)) = w.field_path.as_deref().map(FieldPath::parse) {
                    self.problem(step, format!("{field}.fieldPath"), "field-path", e.to_string());
                }
                match &w.condition {
                    None => self.problem(step, format!("{field}.condition"), "wait-form", format!("a condition wait needs `condition` ({})", CONDITIONS.join(", "))),
                    Some(c) => self.condition(step, &format!("{field}.condition"), c, w.field_path.is_some()),
                }
                match w.timeout.as_deref().map(duration::parse) {
                    None => self.problem(
                        step,
                        format!("{field}.timeout"),
                        "unbounded",
                        "a condition wait needs a `timeout` (e.g. 5m): every wait must be bounded".into(),
                    ),
                    Some(Err(e)) => self.problem(step, format!("{field}.timeout"), "duration", e.to_string()),
                    Some(Ok(d)) if d > run_timeout.min(MAX_WAIT) => self.problem(
                        step,
                        format!("{field}.timeout"),
                        "unbounded",
                        format!("wait timeout {} is longer than the plan's timeout {}", duration::format(d), duration::format(run_timeout)),
                    ),
                    Some(Ok(_)) => {}
                }
            }
        }
    }

    fn template(
        &mut self,
        step: Option<&str>,
        field: &str,
        src: &str,
        known: &BTreeMap<String, Option<String>>,
        producers: &BTreeMap<String, String>,
        secrets: &BTreeSet<&str>,
    ) {
        if !template::is_template(src) {
            return;
        }
        let refs = match template::references(src) {
            Ok(r) => r,
            Err(e) => {
                self.problem(step, field.into(), "template", e.to_string());
                return;
            }
        };
        if let Some(reason) = template::unknown_callable(src) {
            self.problem(step, field.into(), "template", reason);
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
                    "template-name",
                    format!(
                        "`{top}` is not defined (templates can use {})",
                        template::CONTEXT_NAMES.join(", ")
                    ),
                );
                continue;
            }
            match (top, key) {
                ("Values", Some(k)) if !known.contains_key(k) => {
                    let message = match producers.get(k) {
                        Some(p) => format!("`Values.{k}` is used before it exists: {p}"),
                        None => format!(
                            "`Values.{k}` is neither a param nor the outputKey of an earlier step"
                        ),
                    };
                    self.problem(step, field.into(), "undefined-value", message);
                }
                ("secrets", Some(k)) if !secrets.contains(k) => {
                    self.problem(
                        step,
                        field.into(),
                        "undefined-value",
                        format!("`secrets.{k}` is not declared in this step's `http.secrets`"),
                    );
                }
                _ => {}
            }
        }
    }
}

/// Every template of a step: (field, source, whether it is a YAML manifest).
pub fn step_templates(step: &Step, field: &str) -> Vec<(String, String, bool)> {
    let mut templates: Vec<(String, String, bool)> = Vec::new();
    let mut t = |f: &str, s: &str| templates.push((format!("{field}.{f}"), s.to_string(), false));
    if let Some(w) = &step.when {
        t("when", w);
    }
    if let Some(c) = step.cluster.as_deref().filter(|c| template::is_template(c)) {
        t("cluster", c);
    }
    if let Some(d) = &step.delete {
        for (k, v) in [
            ("delete.namespace", &d.namespace),
            ("delete.name", &d.name),
            ("delete.labelSelector", &d.label_selector),
        ] {
            if let Some(v) = v {
                t(k, v);
            }
        }
        if let Some(p) = &d.preconditions {
            for (k, v) in [
                ("delete.preconditions.uid", &p.uid),
                ("delete.preconditions.resourceVersion", &p.resource_version),
            ] {
                if let Some(v) = v {
                    t(k, v);
                }
            }
        }
    }
    if let Some(a) = &step.assert {
        t("assert.that", &a.that);
        t("assert.message", &a.message);
    }
    if let Some(e) = &step.exec {
        t("exec.namespace", &e.namespace);
        t("exec.pod", &e.pod);
        if let Some(c) = &e.container {
            t("exec.container", c);
        }
        for (i, arg) in e.command.iter().enumerate() {
            t(&format!("exec.command[{i}]"), arg);
        }
    }
    if let Some(p) = &step.patch {
        t("patch.name", &p.name);
        if let Some(ns) = &p.namespace {
            t("patch.namespace", ns);
        }
        collect_raw("patch.override.value.raw", &p.override_.value.raw, &mut t);
    }
    if let Some(r) = &step.read_field {
        t("readField.name", &r.name);
        if let Some(ns) = &r.namespace {
            t("readField.namespace", ns);
        }
    }
    if let Some(w) = &step.wait {
        for (k, v) in [("wait.name", &w.name), ("wait.namespace", &w.namespace)] {
            if let Some(v) = v {
                t(k, v);
            }
        }
        if let Some(c) = &w.condition {
            condition_templates("wait.condition", c, &mut t);
        }
    }
    if let Some(a) = &step.apply {
        if let Some(tf) = &a.target {
            t("apply.target.namespace", &tf.namespace);
            t("apply.target.name", &tf.name);
            t("apply.target.key", &tf.key);
        }
        if let Some(cm) = a
            .template_from
            .as_ref()
            .and_then(|tf| tf.config_map.as_ref())
        {
            t("apply.templateFrom.configMap.namespace", &cm.namespace);
            t("apply.templateFrom.configMap.name", &cm.name);
            t("apply.templateFrom.configMap.key", &cm.key);
        }
        if let Some(i) = a.template_from.as_ref().and_then(|tf| tf.inline.as_ref()) {
            t("apply.templateFrom.inline", i);
        }
    }
    if let Some(h) = &step.http {
        t("http.url", &h.url);
        for (k, v) in &h.headers {
            t(&format!("http.headers.{k}"), v);
        }
        if let Some(b) = &h.body {
            t("http.body", b);
        }
        if let Some(j) = &h.json {
            collect_raw("http.json", j, &mut t);
        }
    }
    if let Some(m) = step.apply.as_ref().and_then(|a| a.manifest.as_ref()) {
        templates.push((format!("{field}.apply.manifest"), m.clone(), true));
    }
    templates
}

/// The templates of a condition and of the conditions inside it.
pub fn condition_templates(
    field: &str,
    c: &super::model::Condition,
    t: &mut impl FnMut(&str, &str),
) {
    for (k, v) in [
        ("equals", &c.equals),
        ("notEquals", &c.not_equals),
        ("greaterThan", &c.greater_than),
        ("lessThan", &c.less_than),
        ("atLeast", &c.at_least),
        ("atMost", &c.at_most),
    ] {
        if let Some(v) = v {
            collect_raw(&format!("{field}.{k}"), v, t);
        }
    }
    if let Some(r) = &c.recreated {
        t(&format!("{field}.recreated"), r);
    }
    for (k, list) in [("allOf", &c.all_of), ("anyOf", &c.any_of)] {
        for (i, sub) in list.iter().enumerate() {
            condition_templates(&format!("{field}.{k}[{i}]"), sub, t);
        }
    }
}

pub fn output_key(step: &Step) -> Option<&str> {
    match step.step_type {
        StepType::ReadField => step.read_field.as_ref().map(|r| r.output_key.as_str()),
        StepType::Http => step.http.as_ref().and_then(|h| h.output_key.as_deref()),
        StepType::Exec => step.exec.as_ref().and_then(|e| e.output_key.as_deref()),
        _ => None,
    }
}

fn collect_raw(field: &str, v: &Value, t: &mut impl FnMut(&str, &str)) {
    match v {
        Value::String(s) => t(field, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| collect_raw(&format!("{field}[{i}]"), v, t)),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| collect_raw(&format!("{field}.{k}"), v, t)),
        _ => {}
    }
}

/// The condition operators, as plan authors write them.
pub const CONDITIONS: &[&str] = &[
    "equals",
    "notEquals",
    "notEmpty",
    "exists",
    "changed",
    "gone",
    "recreated",
    "greaterThan",
    "lessThan",
    "atLeast",
    "atMost",
    "equalsField",
    "allOf",
    "anyOf",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
