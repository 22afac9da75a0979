//! A `delete` step: one object by name or several by label selector (bounded), a known
//! propagation policy, and a bounded wait for the objects to be gone.

use super::{Rule, StepScope, Validator};
use crate::plan::compiled::{Delete, Propagation, Selection, DEFAULT_MAX_OBJECTS};
use crate::plan::model::DeleteStep;

impl Validator<'_> {
    pub(super) fn delete(&mut self, s: &StepScope<'_>, d: &DeleteStep) -> Option<Delete> {
        let f = s.at("delete");
        let object_ok = self.object(s.name, &f, &d.api_version, &d.resource);
        let selection = match (&d.name, &d.label_selector) {
            (Some(name), None) => Some(Selection::Name(name.clone())),
            (None, Some(selector)) => Some(Selection::Selector {
                selector: selector.clone(),
                max_objects: d.max_objects.unwrap_or(DEFAULT_MAX_OBJECTS),
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
        let mut ok = object_ok;
        if d.max_objects == Some(0) {
            self.problem(
                s.name,
                format!("{f}.maxObjects"),
                Rule::DeleteForm,
                "maxObjects must be at least 1".into(),
            );
            ok = false;
        }
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
                if w.timeout.is_some()
                    && self.duration(s.name, field, w.timeout.as_deref()).is_none()
                {
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
}
