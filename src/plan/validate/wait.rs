//! A `wait` step: a bounded pause, or an object, a field and a condition with a bounded timeout.
//! Each condition has exactly one operator, a field to apply it to (its own `fieldPath` or the
//! wait's) unless it is about the whole object, and numbers where numbers are compared.

use serde_json::Value;

use super::{Rule, StepScope, Validator};
use crate::fieldpath::FieldPath;
use crate::plan::compiled::{Condition, Ordering, Wait, WaitUntil};
use crate::plan::model::{self, ObjectRef, WaitStep};
use crate::template;

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

impl Validator<'_> {
    pub(super) fn wait(&mut self, s: &StepScope<'_>, w: &WaitStep) -> Option<Wait> {
        let field = s.at("wait");
        let condition = w.condition.is_some() || w.field_path.is_some();
        match (&w.duration, condition) {
            (Some(d), false) => self
                .wait_bound(s, format!("{field}.duration"), Some(d), "", "a wait of")
                .map(Wait::Pause),
            (Some(_), true) => {
                self.problem(
                    s.name,
                    field,
                    Rule::WaitForm,
                    "a wait has either `duration`, or an object with `fieldPath` and `condition`, not both".into(),
                );
                None
            }
            (None, false) => {
                self.problem(
                    s.name,
                    field,
                    Rule::WaitForm,
                    "a wait needs `duration`, or an object with `fieldPath` and `condition`".into(),
                );
                None
            }
            (None, true) => self.wait_until(s, &field, w).map(|u| Wait::Until(Box::new(u))),
        }
    }

    fn wait_until(&mut self, s: &StepScope<'_>, field: &str, w: &WaitStep) -> Option<WaitUntil> {
        let mut ok = true;
        for (k, v) in [
            ("apiVersion", &w.api_version),
            ("resource", &w.resource),
            ("name", &w.name),
        ] {
            if v.as_deref().is_none_or(str::is_empty) {
                self.problem(
                    s.name,
                    format!("{field}.{k}"),
                    Rule::WaitForm,
                    format!("a condition wait needs `{k}`"),
                );
                ok = false;
            }
        }
        if let (Some(a), Some(r)) = (&w.api_version, &w.resource) {
            ok &= self.object(s.name, field, a, r);
        }
        let path = match &w.field_path {
            Some(text) => match self.field_path(s.name, format!("{field}.fieldPath"), text) {
                Some(p) => Some(p),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let condition = match &w.condition {
            None => {
                self.problem(
                    s.name,
                    format!("{field}.condition"),
                    Rule::WaitForm,
                    format!("a condition wait needs `condition` ({})", CONDITIONS.join(", ")),
                );
                None
            }
            Some(c) => self.condition(
                s.name,
                &format!("{field}.condition"),
                c,
                w.field_path.is_some(),
                path.as_ref(),
            ),
        };
        let timeout = self.wait_bound(
            s,
            format!("{field}.timeout"),
            w.timeout.as_deref(),
            "a condition wait needs a `timeout` (e.g. 5m): every wait must be bounded",
            "wait timeout",
        );
        let (condition, timeout) = (condition?, timeout?);
        ok.then(|| WaitUntil {
            target: ObjectRef {
                api_version: w.api_version.clone().unwrap_or_default(),
                resource: w.resource.clone().unwrap_or_default(),
                namespace: w.namespace.clone(),
                name: w.name.clone().unwrap_or_default(),
            },
            field_path: w.field_path.clone(),
            condition,
            timeout,
        })
    }

    /// One condition; `has_path` whether an enclosing wait or condition gives a `fieldPath`,
    /// `inherited` that path parsed (when it parsed).
    fn condition(
        &mut self,
        step: Option<&str>,
        field: &str,
        c: &model::Condition,
        has_path: bool,
        inherited: Option<&FieldPath>,
    ) -> Option<Condition> {
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
                Rule::WaitForm,
                format!(
                    "a condition has exactly one of {} (found: {})",
                    CONDITIONS.join(", "),
                    if set.is_empty() { "none".into() } else { set.join(", ") }
                ),
            );
            return None;
        }
        let op = set[0];
        let mut ok = true;
        let has_path = has_path || c.field_path.is_some();
        let own = match &c.field_path {
            Some(text) => {
                let p = self.field_path(step, format!("{field}.fieldPath"), text);
                ok &= p.is_some();
                p
            }
            None => inherited.cloned(),
        };
        let other = match &c.equals_field {
            Some(text) => {
                let p = self.field_path(step, format!("{field}.equalsField"), text);
                ok &= p.is_some();
                p
            }
            None => None,
        };
        let whole_object = matches!(op, "gone" | "recreated" | "allOf" | "anyOf");
        if !whole_object && !has_path {
            self.problem(
                step,
                format!("{field}.fieldPath"),
                Rule::WaitForm,
                format!("`{op}` needs a `fieldPath` (on the wait or on the condition)"),
            );
            ok = false;
        }
        for (k, v) in [
            ("greaterThan", &c.greater_than),
            ("lessThan", &c.less_than),
            ("atLeast", &c.at_least),
            ("atMost", &c.at_most),
        ] {
            match v {
                Some(Value::Number(_)) | None => {}
                Some(Value::String(t)) if template::is_template(t) || t.trim().parse::<f64>().is_ok() => {}
                Some(other) => {
                    self.problem(
                        step,
                        format!("{field}.{k}"),
                        Rule::WaitForm,
                        format!("`{k}` compares numbers: {other} is not one"),
                    );
                    ok = false;
                }
            }
        }
        for (k, flag) in [("gone", c.gone), ("changed", c.changed)] {
            if flag == Some(false) {
                self.problem(
                    step,
                    format!("{field}.{k}"),
                    Rule::WaitForm,
                    format!("`{k}: false` waits for nothing: write `{k}: true`, or another condition"),
                );
                ok = false;
            }
        }
        let subs = |v: &mut Self, k: &str, list: &[model::Condition]| {
            let out: Vec<Option<Condition>> = list
                .iter()
                .enumerate()
                .map(|(i, sub)| v.condition(step, &format!("{field}.{k}[{i}]"), sub, has_path, own.as_ref()))
                .collect();
            out.into_iter().collect::<Option<Vec<_>>>()
        };
        let all = subs(self, "allOf", &c.all_of);
        let any = subs(self, "anyOf", &c.any_of);
        if !ok {
            return None;
        }
        let path = || own.clone();
        Some(match op {
            "equals" => Condition::Equals(path()?, c.equals.clone()?),
            "notEquals" => Condition::NotEquals(path()?, c.not_equals.clone()?),
            "notEmpty" => Condition::NotEmpty(path()?, c.not_empty?),
            "exists" => Condition::Exists(path()?, c.exists?),
            "changed" => Condition::Changed(path()?),
            "gone" => Condition::Gone,
            "recreated" => Condition::Recreated(c.recreated.clone()?),
            "greaterThan" => Condition::Compare(path()?, Ordering::GreaterThan, c.greater_than.clone()?),
            "lessThan" => Condition::Compare(path()?, Ordering::LessThan, c.less_than.clone()?),
            "atLeast" => Condition::Compare(path()?, Ordering::AtLeast, c.at_least.clone()?),
            "atMost" => Condition::Compare(path()?, Ordering::AtMost, c.at_most.clone()?),
            "equalsField" => Condition::EqualsField(path()?, other?),
            "allOf" => Condition::All(all?),
            _ => Condition::Any(any?),
        })
    }
}
