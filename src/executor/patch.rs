//! `patch`: set one field of an object with a merge, JSON or strategic-merge patch. A merge
//! patch through an array index is sent as a JSON Patch that tests the element first. The
//! object the API server answers with must hold the value at the path, or the step fails.

use kube::api::{Patch, PatchParams, ValidationDirective};
use serde_json::{json, Value};

use super::verify::{self, Lists};
use super::{get_object, object_diff, StepCtx, StepError, StepOutcome};
use crate::fieldpath::FieldPath;
use crate::plan::model::PatchStep;
use crate::template;

pub(super) async fn run(step: &PatchStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let path = FieldPath::parse(&step.override_.field_path)?;
    let value = template::render_raw(&step.override_.value.raw, ctx.values)?;
    let (api, name, shown) = ctx
        .object(
            &step.api_version,
            &step.resource,
            step.namespace.as_deref(),
            &step.name,
        )
        .await?;
    let before = get_object(&api, &name, &shown).await?;

    let patch_type = step
        .patch_type
        .as_deref()
        .unwrap_or("application/merge-patch+json");
    let (patch, body, lists): (Patch<Value>, Value, Lists) = match patch_type {
        "application/json-patch+json" => json_patch(&path, &before, value.clone())?,
        _ if path.has_index() => json_patch(&path, &before, value.clone())?,
        "application/strategic-merge-patch+json" => {
            let body = path.merge_patch(value.clone())?;
            (Patch::Strategic(body.clone()), body, Lists::Merge)
        }
        _ => {
            let body = path.merge_patch(value.clone())?;
            (Patch::Merge(body.clone()), body, Lists::Replace)
        }
    };
    let params = PatchParams {
        field_manager: Some(ctx.field_manager.to_string()),
        // v1.25+: an unknown field is a 400 instead of being pruned; older servers ignore it,
        // and the read-back below catches the pruning there.
        field_validation: Some(ValidationDirective::Strict),
        ..Default::default()
    };
    let result = if step.subresource_status {
        api.patch_status(&name, &params, &patch).await
    } else {
        api.patch(&name, &params, &patch).await
    };
    let secret = step.api_version == "v1" && step.resource == "secrets"
        || ctx.uses_secret(&step.override_.value.raw.to_string());
    let after = result.map_err(|source| super::write_error("patch", &shown, source))?;
    let after = serde_json::to_value(after).unwrap_or(Value::Null);
    verify::check_path(&after, &path, &value, lists).map_err(|m| StepError::NotApplied {
        object: shown.clone(),
        detail: m.explain(
            &ctx.resource_name(&step.api_version, &step.resource),
            secret,
            path.to_string().starts_with("status") && !step.subresource_status,
        ),
    })?;
    // A Secret's values never go into the record.
    let (body, diff) = if secret {
        (json!("<redacted>"), json!("<redacted>"))
    } else {
        (body, object_diff(&before, &after))
    };
    Ok(StepOutcome {
        inputs: Some(json!({"patchType": patch_kind(&patch), "patch": body})),
        diff: Some(diff),
        object: Some(shown),
        ..Default::default()
    })
}

fn json_patch(
    path: &FieldPath,
    before: &Value,
    value: Value,
) -> Result<(Patch<Value>, Value, Lists), StepError> {
    let ops = path.json_patch_for(before, value)?;
    let parsed: json_patch::Patch =
        serde_json::from_value(ops.clone()).expect("generated JSON Patch is valid");
    Ok((Patch::Json(parsed), ops, Lists::Replace))
}

fn patch_kind(p: &Patch<Value>) -> &'static str {
    match p {
        Patch::Json(_) => "application/json-patch+json",
        Patch::Strategic(_) => "application/strategic-merge-patch+json",
        _ => "application/merge-patch+json",
    }
}
