//! A `patch` step: its object, a known patch type, and a dotted path (not a JSONPath).

use super::{Rule, StepScope, Validator};
use crate::fieldpath::FieldPath;
use crate::plan::compiled::{Patch, PatchType};
use crate::plan::model::PatchStep;
use crate::plan::validate::Note;

impl Validator<'_> {
    pub(super) fn patch(&mut self, s: &StepScope<'_>, p: &PatchStep) -> Option<Patch> {
        let object_ok = self.object(s.name, &s.at("patch"), &p.api_version, &p.resource);
        let patch_type = match p.patch_type.as_deref() {
            None => Some(PatchType::Merge),
            Some(text) => {
                let t = PatchType::parse(text);
                if t.is_none() {
                    let known: Vec<_> = PatchType::ALL.iter().map(|t| t.media_type()).collect();
                    self.problem(
                        s.name,
                        s.at("patch.patchType"),
                        Rule::PatchType,
                        format!("unknown patchType {text:?} (use one of {})", known.join(", ")),
                    );
                }
                t
            }
        };
        let field = s.at("patch.override.fieldPath");
        let path = match FieldPath::parse(&p.override_.field_path) {
            Err(e) => {
                self.problem(s.name, field, Rule::FieldPath, e.to_string());
                None
            }
            Ok(FieldPath::JsonPath { .. }) => {
                self.problem(
                    s.name,
                    field,
                    Rule::FieldPath,
                    "a patch needs a dotted path (spec.replica.primary), not a JSONPath".into(),
                );
                None
            }
            Ok(fp) => Some(fp),
        };
        let (path, patch_type) = (path?, patch_type?);
        if path.has_index() && patch_type == PatchType::Merge {
            self.report.notes.push(Note {
                step: s.name.unwrap_or_default().to_string(),
                message: format!(
                    "`{}` goes through an array index, which a merge patch cannot express: it is sent as a JSON Patch (RFC 6902) that first tests the array element",
                    p.override_.field_path
                ),
            });
        }
        object_ok.then(|| Patch {
            target: p.target(),
            field_path: p.override_.field_path.clone(),
            path,
            value: p.override_.value.raw.clone(),
            patch_type,
            subresource_status: p.subresource_status,
        })
    }
}
