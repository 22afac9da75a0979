//! An `apply` step: a whole manifest, or one key of a ConfigMap/Secret from exactly one template
//! source; a template file must lie inside the plan's directory.

use super::{Rule, StepScope, Validator};
use crate::plan::compiled::{Apply, ApplyForm, KeyKind, KeyTarget, TemplateSource};
use crate::plan::model::ApplyStep;

impl Validator<'_> {
    pub(super) fn apply(&mut self, s: &StepScope<'_>, a: &ApplyStep) -> Option<Apply> {
        let force = a.force.unwrap_or(false);
        let keyed = a.target.is_some() || a.template_from.is_some();
        match (&a.manifest, keyed) {
            (Some(manifest), false) => {
                return Some(Apply {
                    form: ApplyForm::Manifest(manifest.clone()),
                    force,
                })
            }
            (None, true) => {}
            _ => {
                self.problem(
                    s.name,
                    s.at("apply"),
                    Rule::ApplyForm,
                    "an apply step needs either `manifest`, or `target` with `templateFrom`".into(),
                );
                return None;
            }
        }
        if a.target.is_none() || a.template_from.is_none() {
            self.problem(
                s.name,
                s.at("apply"),
                Rule::ApplyForm,
                "`target` and `templateFrom` go together".into(),
            );
        }
        let target = a.target.as_ref().and_then(|tg| {
            let kind = match tg.kind.as_str() {
                "ConfigMap" => KeyKind::ConfigMap,
                "Secret" => KeyKind::Secret,
                other => {
                    self.problem(
                        s.name,
                        s.at("apply.target.kind"),
                        Rule::ApplyForm,
                        format!("target kind must be ConfigMap or Secret, not {other:?}"),
                    );
                    return None;
                }
            };
            Some(KeyTarget {
                kind,
                namespace: tg.namespace.clone(),
                name: tg.name.clone(),
                key: tg.key.clone(),
            })
        });
        let source = a.template_from.as_ref().and_then(|tf| {
            let source = match (&tf.config_map, &tf.file, &tf.inline) {
                (Some(cm), None, None) => TemplateSource::ConfigMap(cm.clone()),
                (None, Some(file), None) => TemplateSource::File(file.clone()),
                (None, None, Some(inline)) => TemplateSource::Inline(inline.clone()),
                _ => {
                    self.problem(
                        s.name,
                        s.at("apply.templateFrom"),
                        Rule::ApplyForm,
                        "templateFrom needs exactly one of configMap, file, inline".into(),
                    );
                    return None;
                }
            };
            // A plan may read templates beside it, nothing else on the host.
            if let TemplateSource::File(file) = &source {
                let path = std::path::Path::new(file);
                if path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    self.problem(
                        s.name,
                        s.at("apply.templateFrom.file"),
                        Rule::ApplyForm,
                        format!(
                            "templateFrom.file {file:?} must be a path inside the plan's \
                             directory (relative, without `..`)"
                        ),
                    );
                    return None;
                }
            }
            Some(source)
        });
        Some(Apply {
            form: ApplyForm::Key {
                target: target?,
                source: source?,
            },
            force,
        })
    }
}
