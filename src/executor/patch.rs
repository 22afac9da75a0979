//! `patch`: set one field of an object with a merge, JSON or strategic-merge patch. A merge
//! patch through an array index is sent as a JSON Patch that tests the element first. The
//! object the API server answers with must hold the value at the path, or the step fails.

use std::sync::Arc;

use kube::api::{Api, DynamicObject, Patch, PatchParams, ValidationDirective};
use serde_json::{json, Value};

use super::verify::{self, Lists};
use super::{get_object, StepCtx, StepError, StepOutcome};
use crate::cluster::{object_diff, resource_version};
use crate::fieldpath::FieldPath;
use crate::plan::compiled::{Patch as PatchStep, PatchType};
use crate::template;

pub(super) async fn run(step: &PatchStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let path = &step.path;
    let value = template::render_raw(&step.value, ctx.values)?;
    let (api, name, shown) = ctx.target(&step.target).await?;
    let secret = secret_resource(step) || ctx.uses_secret(&step.value.to_string());
    let params = PatchParams {
        field_manager: Some(ctx.field_manager.to_string()),
        // v1.25+: an unknown field is a 400 instead of being pruned; older servers ignore it,
        // and the read-back below catches the pruning there.
        field_validation: Some(ValidationDirective::Strict),
        ..Default::default()
    };
    // A merge or strategic patch of an object this process saw last (not a Secret, nothing
    // secret written, not a dry run) goes with the resourceVersion it had, instead of reading
    // it again: see `cluster::Seen`.
    let remember = !secret && !ctx.dry_run() && !path.has_index() && step.patch_type != PatchType::Json;
    let key = remember.then(|| format!("{}\n{}/{}", ctx.cluster, api.resource_url(), name));
    let mut sent = None;
    if let Some(key) = &key {
        if let Some(before) = ctx.registry.seen().get(key) {
            sent = patch_seen(step, &api, &name, &params, &value, before)
                .await
                .map_err(|source| {
                    ctx.registry.seen().forget(key);
                    super::write_error("patch", &shown, source)
                })?;
        }
    }
    let (before, after, patch, body, lists) = match sent {
        Some(sent) => sent,
        None => {
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
            let result = send(&api, &name, &params, &patch, step.subresource_status).await;
            if let (Err(_), Some(key)) = (&result, &key) {
                ctx.registry.seen().forget(key);
            }
            let after = result.map_err(|source| super::write_error("patch", &shown, source))?;
            (Arc::new(before), after, patch, body, lists)
        }
    };
    // A Secret's `stringData` is stored as base64 `data`: check what the server stores.
    let (check_path, check_value) = match (secret_resource(step), path.first_key()) {
        (true, Some("stringData")) => stored_secret_path(path, &value)?,
        _ => (path.clone(), value.clone()),
    };
    let checked = verify::check_path(&after, &check_path, &check_value, lists).map_err(|m| StepError::NotApplied {
        object: shown.clone(),
        detail: m.explain(
            &ctx.resource_name(&step.target.api_version, &step.target.resource),
            secret,
            path.is_status() && !step.subresource_status,
        ),
    });
    if let Err(e) = checked {
        if let Some(key) = &key {
            ctx.registry.seen().forget(key);
        }
        return Err(e);
    }
    // A Secret's values never go into the record.
    let (body, diff) = if secret {
        (json!("<redacted>"), json!("<redacted>"))
    } else {
        (body, object_diff(&before, &after))
    };
    if let Some(key) = key {
        ctx.registry.seen().put(key, after);
    }
    Ok(StepOutcome {
        inputs: Some(json!({"patchType": patch_kind(&patch), "patch": body})),
        diff: Some(diff),
        object: Some(shown),
        ..Default::default()
    })
}

/// What a patch sent: the object before and after, the patch, its body as recorded, and how
/// the check reads lists.
type Sent = (Arc<Value>, Value, Patch<Value>, Value, Lists);

/// The patch sent with the remembered object's resourceVersion as a precondition: `None` when
/// the object changed (409) or went (404) since, or the patch cannot carry it — then it is read
/// and patched as usual.
async fn patch_seen(
    step: &PatchStep,
    api: &Api<DynamicObject>,
    name: &str,
    params: &PatchParams,
    value: &Value,
    before: Arc<Value>,
) -> Result<Option<Sent>, kube::Error> {
    let Some(rv) = resource_version(&before) else {
        return Ok(None);
    };
    let Ok(body) = step.path.merge_patch(value.clone()) else {
        return Ok(None);
    };
    let Some(guarded) = with_resource_version(&body, rv) else {
        return Ok(None);
    };
    let (patch, lists) = match step.patch_type {
        PatchType::Strategic => (Patch::Strategic(guarded), Lists::Merge),
        _ => (Patch::Merge(guarded), Lists::Replace),
    };
    match send(api, name, params, &patch, step.subresource_status).await {
        Ok(after) => {
            // Recorded as the plan wrote it, without the precondition.
            let patch = match patch {
                Patch::Strategic(_) => Patch::Strategic(body.clone()),
                _ => Patch::Merge(body.clone()),
            };
            Ok(Some((before, after, patch, body, lists)))
        }
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// A merge patch that also sets `metadata.resourceVersion` (which makes it conditional), unless
/// the patch itself writes `metadata` as something other than an object or sets the version.
fn with_resource_version(body: &Value, rv: &str) -> Option<Value> {
    let mut body = body.clone();
    let meta = body.as_object_mut()?.entry("metadata").or_insert_with(|| json!({}));
    let meta = meta.as_object_mut()?;
    if meta.contains_key("resourceVersion") {
        return None;
    }
    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    Some(body)
}

async fn send(
    api: &Api<DynamicObject>,
    name: &str,
    params: &PatchParams,
    patch: &Patch<Value>,
    status: bool,
) -> Result<Value, kube::Error> {
    let after = if status {
        api.patch_status(name, params, patch).await
    } else {
        api.patch(name, params, patch).await
    }?;
    Ok(serde_json::to_value(after).unwrap_or(Value::Null))
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
