//! `readField`: read one field of an object into `Values.<outputKey>`; a missing or empty field
//! fails the step, naming cluster, object and path. A value read from a Secret is secret: later
//! steps can use it, records show `<redacted>`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{get_object, StepCtx, StepError, StepOutcome};
use crate::fieldpath;
use crate::plan::compiled::ReadField as ReadFieldStep;

pub(super) async fn run(step: &ReadFieldStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let path = &step.path;
    let (api, name, shown) = ctx.target(&step.target).await?;
    let obj = get_object(&api, &name, &shown).await?;
    let value = match path.get(&obj)? {
        // In a dry run the writes before this step were not stored, so a status an operator would
        // have written in response (a demotion token) is not there yet: stand in for it and go
        // on checking — only under `status` of an object this dry run wrote.
        v if ctx.dry_run()
            && ctx.written.contains(&shown)
            && path.is_status()
            && v.as_ref().is_none_or(fieldpath::is_empty) =>
        {
            dry_run_placeholder(step)
        }
        None => {
            return Err(StepError::FieldMissing {
                object: shown,
                path: step.field_path.clone(),
            })
        }
        Some(v) if fieldpath::is_empty(&v) => {
            return Err(StepError::FieldEmpty {
                object: shown,
                path: step.field_path.clone(),
            })
        }
        Some(v) => v,
    };
    Ok(StepOutcome {
        inputs: Some(json!({"fieldPath": step.field_path})),
        outputs: BTreeMap::from([(step.output_key.clone(), value)]),
        // A Secret's values are secret; its name, labels and the like are not.
        secret_outputs: step.target.api_version == "v1"
            && step.target.resource == "secrets"
            && path.first_key().is_none_or(|k| k == "data" || k == "stringData"),
        object: Some(shown),
        ..Default::default()
    })
}

fn dry_run_placeholder(step: &ReadFieldStep) -> Value {
    Value::String(format!("dry-run-{}", step.output_key.to_ascii_lowercase()))
}
