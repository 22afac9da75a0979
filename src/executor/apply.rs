//! `apply`: render a template into an object (or into one key of a ConfigMap/Secret) and
//! server-side apply it with field manager `recoverd`.

use base64::Engine as _;
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

use super::{
    api_for_object, get_object, object_diff, StepCtx, StepError, StepOutcome, FIELD_MANAGER,
};
use crate::plan::model::ApplyStep;
use crate::template;

pub(super) async fn run(step: &ApplyStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let object = match &step.manifest {
        Some(m) => template::render_yaml(m, ctx.values)?,
        None => keyed_object(step, ctx).await?,
    };
    let field = |k: &str| {
        object
            .pointer(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (Some(api_version), Some(kind), Some(name)) = (
        field("/apiVersion"),
        field("/kind"),
        field("/metadata/name"),
    ) else {
        return Err(StepError::Manifest {
            reason: "the rendered object needs apiVersion, kind and metadata.name".into(),
        });
    };
    let namespace = field("/metadata/namespace");
    let shown_early = format!("{api_version} {kind} {name}");
    super::check_name("name", &name, &shown_early)?;
    if let Some(ns) = &namespace {
        super::check_name("namespace", ns, &shown_early)?;
    }
    let resolved = ctx
        .registry
        .resolve_kind(&ctx.cluster, &api_version, &kind)
        .await?;
    if resolved.namespaced && namespace.is_none() {
        return Err(StepError::Manifest {
            reason: format!("{kind} {name} is namespaced: set metadata.namespace"),
        });
    }
    let api = api_for_object(ctx.registry, &ctx.cluster, &resolved, namespace.as_deref())?;
    let shown = super::describe_object(
        &api_version,
        &resolved.resource.plural,
        namespace.as_deref(),
        &name,
    ) + &format!(" on cluster {}", ctx.cluster);
    let before = match get_object(&api, &name, &shown).await {
        Ok(v) => v,
        Err(StepError::NotFound { .. }) => json!({}),
        Err(e) => return Err(e),
    };
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = step.force.unwrap_or(true);
    let after = api
        .patch(&name, &params, &Patch::Apply(&object))
        .await
        .map_err(|source| StepError::Kube {
            action: "apply",
            object: shown.clone(),
            source,
        })?;
    let after = serde_json::to_value(after).unwrap_or(Value::Null);
    let redacted = if kind == "Secret" {
        json!({"kind": "Secret", "name": name, "data": "<redacted>"})
    } else {
        object.clone()
    };
    Ok(StepOutcome {
        inputs: Some(json!({"object": redacted})),
        diff: Some(if kind == "Secret" {
            json!("<redacted>")
        } else {
            object_diff(&before, &after)
        }),
        object: Some(shown),
        ..Default::default()
    })
}

/// The partial ConfigMap/Secret that sets `target.key` to the rendered template.
async fn keyed_object(step: &ApplyStep, ctx: &StepCtx<'_>) -> Result<Value, StepError> {
    let (Some(target), Some(from)) = (&step.target, &step.template_from) else {
        return Err(StepError::Manifest {
            reason: "`target` and `templateFrom` are both needed".into(),
        });
    };
    let source = if let Some(inline) = &from.inline {
        inline.clone()
    } else if let Some(file) = &from.file {
        let path = ctx
            .base_dir
            .map_or_else(|| std::path::PathBuf::from(file), |d| d.join(file));
        std::fs::read_to_string(&path).map_err(|e| StepError::Manifest {
            reason: format!("failed to read template {}: {e}", path.display()),
        })?
    } else if let Some(cm) = &from.config_map {
        let resolved = ctx
            .registry
            .resolve(&ctx.cluster, "v1", "configmaps")
            .await?;
        let api = api_for_object(ctx.registry, &ctx.cluster, &resolved, Some(&cm.namespace))?;
        let shown = format!(
            "v1 configmaps {}/{} on cluster {}",
            cm.namespace, cm.name, ctx.cluster
        );
        let obj = get_object(&api, &cm.name, &shown).await?;
        obj.pointer(&format!(
            "/data/{}",
            cm.key.replace('~', "~0").replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(StepError::FieldMissing {
            object: shown,
            path: format!("data[{:?}]", cm.key),
        })?
    } else {
        return Err(StepError::Manifest {
            reason: "templateFrom needs configMap, file or inline".into(),
        });
    };
    let rendered = template::render(&source, ctx.values)?;
    let data = if target.kind == "Secret" {
        json!({ target.key.clone(): base64::engine::general_purpose::STANDARD.encode(rendered) })
    } else {
        json!({ target.key.clone(): rendered })
    };
    Ok(json!({
        "apiVersion": "v1",
        "kind": target.kind,
        "metadata": {"name": target.name, "namespace": target.namespace},
        "data": data,
    }))
}
