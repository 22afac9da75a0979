//! `patch`: set one field of an object with a merge, JSON or strategic-merge patch. A merge
//! patch through an array index is sent as a JSON Patch that tests the element first. The
//! object the API server answers with must hold the value at the path, or the step fails.

use kube::api::{Patch, PatchParams, ValidationDirective};
use serde_json::{json, Value};

use super::verify::{self, Lists};
use super::{get_object, StepCtx, StepError, StepOutcome};
use crate::cluster::object_diff;
use crate::fieldpath::FieldPath;
use crate::plan::compiled::{Patch as PatchStep, PatchType};
use crate::template;

pub(super) async fn run(step: &PatchStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let path = &step.path;
    let value = template::render_raw(&step.value, ctx.values)?;
    let (api, name, shown) = ctx.target(&step.target).await?;
    let before = get_object(&api, &name, &shown).await?;

    let (patch, body, lists): (Patch<Value>, Value, Lists) = match step.patch_type {
        PatchType::Json => json_patch(path, &before, value.clone())?,
        _ if path.has_index() => json_patch(path, &before, value.clone())?,
        PatchType::Strategic => {
            let body = path.merge_patch(value.clone())?;
            (Patch::Strategic(body.clone()), body, Lists::Merge)
        }
        PatchType::Merge => {
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
    let secret = secret_resource(step) || ctx.uses_secret(&step.value.to_string());
    let after = result.map_err(|source| super::write_error("patch", &shown, source))?;
    let after = serde_json::to_value(after).unwrap_or(Value::Null);
    // A Secret's `stringData` is stored as base64 `data`: check what the server stores.
    let (check_path, check_value) = match (secret_resource(step), path.first_key()) {
        (true, Some("stringData")) => stored_secret_path(path, &value)?,
        _ => (path.clone(), value.clone()),
    };
    verify::check_path(&after, &check_path, &check_value, lists).map_err(|m| StepError::NotApplied {
        object: shown.clone(),
        detail: m.explain(
            &ctx.resource_name(&step.target.api_version, &step.target.resource),
            secret,
            path.is_status() && !step.subresource_status,
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

fn secret_resource(step: &PatchStep) -> bool {
    step.target.api_version == "v1" && step.target.resource == "secrets"
}

/// `stringData.k` = v (or `stringData` = {k: v}) as the API server stores it: `data.k` = base64(v).
fn stored_secret_path(path: &FieldPath, value: &Value) -> Result<(FieldPath, Value), StepError> {
    use base64::Engine as _;
    let b64 = |v: &Value| {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        Value::String(base64::engine::general_purpose::STANDARD.encode(text))
    };
    let text = path.to_string();
    let rest = text
        .trim_start_matches('.')
        .strip_prefix("stringData")
        .unwrap_or_default();
    Ok(if rest.is_empty() {
        let data = value
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), b64(v))).collect())
            .unwrap_or_default();
        (FieldPath::parse("data")?, Value::Object(data))
    } else {
        (FieldPath::parse(&format!("data{rest}"))?, b64(value))
    })
}

fn json_patch(path: &FieldPath, before: &Value, value: Value) -> Result<(Patch<Value>, Value, Lists), StepError> {
    let ops = path.json_patch_for(before, value)?;
    let parsed: json_patch::Patch = serde_json::from_value(ops.clone()).expect("generated JSON Patch is valid");
    Ok((Patch::Json(parsed), ops, Lists::Replace))
}

fn patch_kind(p: &Patch<Value>) -> &'static str {
    match p {
        Patch::Json(_) => "application/json-patch+json",
        Patch::Strategic(_) => "application/strategic-merge-patch+json",
        _ => "application/merge-patch+json",
    }
}
