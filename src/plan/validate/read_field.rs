//! A `readField` step: its object, a field path, and an `outputKey` templates can name.

use super::{StepScope, Validator};
use crate::plan::compiled::ReadField;
use crate::plan::model::ReadFieldStep;

impl Validator<'_> {
    pub(super) fn read_field(&mut self, s: &StepScope<'_>, r: &ReadFieldStep) -> Option<ReadField> {
        let object_ok = self.object(s.name, &s.at("readField"), &r.api_version, &r.resource);
        let path = self.field_path(s.name, s.at("readField.fieldPath"), &r.field_path);
        let key_ok = self.output_key_name(s.name, s.at("readField.outputKey"), &r.output_key, "DemotionToken");
        let path = path?;
        (object_ok && key_ok).then(|| ReadField {
            target: r.target(),
            field_path: r.field_path.clone(),
            path,
            output_key: r.output_key.clone(),
        })
    }
}
