//! A `delete` step: one object by name or several by label selector (bounded), a known
//! propagation policy, and a bounded wait for the objects to be gone.

use super::{Rule, StepScope, Validator};
use crate::plan::compiled::{Count, Delete, Propagation, Selection, DEFAULT_MAX_OBJECTS};
use crate::plan::model::{DeleteStep, NumberOrTemplate};
use crate::template;

impl Validator<'_> {
    pub(super) fn delete(&mut self, s: &StepScope<'_>, d: &DeleteStep) -> Option<Delete> {
        let f = s.at("delete");
        let object_ok = self.object(s.name, &f, &d.api_version, &d.resource);
        let max_objects = self.max_objects(s, &f, d.max_objects.as_ref());
        let mut ok = object_ok && max_objects.is_some();
        let selection = match (&d.name, &d.label_selector) {
            (Some(name), None) => Some(Selection::Name(name.clone())),
            (None, Some(selector)) => Some(Selection::Selector {
                selector: selector.clone(),
                max_objects: max_objects.clone().unwrap_or(Count::Fixed(DEFAULT_MAX_OBJECTS)),
            }),
            _ => {
                self.problem(
                    s.name,
                    f.clone(),
                    Rule::DeleteForm,
                    "a delete names one object with `name`, or several with `labelSelector` (not both)".into(),
                );
                None
            }
        };
        let propagation_policy = match d.propagation_policy.as_deref() {
            None => None,
            Some(p) => {
                let parsed = Propagation::parse(p);
                if parsed.is_none() {
                    self.problem(
                        s.name,
                        format!("{f}.propagationPolicy"),
                        Rule::DeleteForm,
                        format!("propagationPolicy {p:?} must be Background, Foreground or Orphan"),
                    );
                    ok = false;
                }
                parsed
            }
        };
        let wait_gone = match &d.wait {
            Some(w) if w.gone => {
                let bound = self.wait_bound(
                    s,
                    format!("{f}.wait.timeout"),
                    w.timeout.as_deref(),
                    "waiting until deleted objects are gone needs a `timeout` (e.g. 2m)",
                    "wait timeout",
                );
                ok &= bound.is_some();
                bound
            }
            Some(w) => {
                // `gone: false` waits for nothing; its timeout must still be readable.
                let field = format!("{f}.wait.timeout");
                if w.timeout.is_some() && self.duration(s.name, field, w.timeout.as_deref()).is_none() {
                    ok = false;
                }
                None
            }
            None => None,
        };
        let selection = selection?;
        ok.then(|| Delete {
            api_version: d.api_version.clone(),
            resource: d.resource.clone(),
            namespace: d.namespace.clone(),
            selection,
            propagation_policy,
            preconditions: d.preconditions.clone(),
            wait_gone,
        })
    }

    /// `maxObjects`: a count from 1, or a template. A template of params only is rendered
    /// with the plan's params now (a trigger may still override them: the run checks again).
    fn max_objects(&mut self, s: &StepScope<'_>, f: &str, max: Option<&NumberOrTemplate>) -> Option<Count> {
        let field = format!("{f}.maxObjects");
        let count = |text: &str| text.trim().parse::<u32>().ok().filter(|n| *n >= 1);
        match max {
            None => Some(Count::Fixed(DEFAULT_MAX_OBJECTS)),
            Some(NumberOrTemplate::Number(n)) if *n >= 1 => Some(Count::Fixed(*n)),
            Some(NumberOrTemplate::Number(_)) => {
                self.problem(s.name, field, Rule::DeleteForm, "maxObjects must be at least 1".into());
                None
            }
            Some(NumberOrTemplate::Template(t)) if !template::is_template(t) => {
                let n = count(t);
                if n.is_none() {
                    self.problem(
                        s.name,
                        field,
                        Rule::DeleteForm,
                        format!("maxObjects {t:?} must be a whole number from 1, or a template (\"{{{{ Values.maxPvcs }}}}\")"),
                    );
                }
                n.map(Count::Fixed)
            }
            Some(NumberOrTemplate::Template(t)) => {
                let values = self.params.clone().into_iter().collect();
                let ctx = template::context(values, None, &Default::default(), "check", serde_json::json!("live"));
                match template::render(t, &ctx) {
                    Ok(text) if count(&text).is_none() => {
                        self.problem(
                            s.name,
                            field,
                            Rule::DeleteForm,
                            format!("maxObjects {t:?} renders to {text:?} with the plan's params, which is not a whole number from 1"),
                        );
                        None
                    }
                    // Known now, or only when the run has read it: checked when the step runs.
                    _ => Some(Count::Template(t.clone())),
                }
            }
        }
    }
}
