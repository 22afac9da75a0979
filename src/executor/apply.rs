//! `apply`: render a template into an object (or into one key of a ConfigMap/Secret) and
//! server-side apply it with the plan's own field manager (`recoverd/<namespace>/<plan>`), so
//! two plans writing different keys of one object never remove each other's. Every field of the
//! manifest must be in the object the API server answers with, or the step fails.

use base64::Engine as _;
use std::path::{Component, Path, PathBuf};

use kube::api::{Patch, PatchParams, ValidationDirective};
use serde_json::{json, Value};

use super::verify::{self, Lists};
use super::{get_object, StepCtx, StepError, StepOutcome};
use crate::cluster::{api_for_object, object_diff};
use crate::plan::compiled::{Apply as ApplyStep, ApplyForm, KeyKind, KeyTarget, TemplateSource};
use crate::template;

pub(super) async fn run(step: &ApplyStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let (object, tainted) = match &step.form {
        ApplyForm::Manifest(m) => (template::render_yaml(m, ctx.values)?, false),
        ApplyForm::Key { target, source } => keyed_object(target, source, ctx).await?,
    };
    let field = |k: &str| object.pointer(k).and_then(Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind), Some(name)) = (field("/apiVersion"), field("/kind"), field("/metadata/name"))
    else {
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
    let resolved = ctx.registry.resolve_kind(&ctx.cluster, &api_version, &kind).await?;
    if resolved.namespaced && namespace.is_none() {
        return Err(StepError::Manifest {
            reason: format!("{kind} {name} is namespaced: set metadata.namespace"),
        });
    }
    let api = api_for_object(ctx.registry, &ctx.cluster, &resolved, namespace.as_deref())?;
    let shown = crate::cluster::describe_object(&api_version, &resolved.resource.plural, namespace.as_deref(), &name)
        + &format!(" on cluster {}", ctx.cluster);
    let before = match get_object(&api, &name, &shown).await {
        Ok(v) => v,
        Err(StepError::NotFound { .. }) => json!({}),
        Err(e) => return Err(e),
    };
    let mut params = PatchParams::apply(ctx.field_manager);
    params.force = step.force;
    params.field_validation = Some(ValidationDirective::Strict);
    let after = match api.patch(&name, &params, &Patch::Apply(&object)).await {
        // Fields owned only by `recoverd` itself — the one field manager of versions before
        // per-plan managers — are this plan's own earlier writes: take them over.
        Err(kube::Error::Api(s)) if s.code == 409 && !params.force && only_legacy_manager(&s.message) => {
            let mut forced = params.clone();
            forced.force = true;
            api.patch(&name, &forced, &Patch::Apply(&object)).await
        }
        other => other,
    }
    .map_err(|source| super::write_error("apply", &shown, source))?;
    let after = serde_json::to_value(after).unwrap_or(Value::Null);
    let secret = kind == "Secret";
    let hide_values = secret || tainted || matches!(&step.form, ApplyForm::Manifest(m) if ctx.uses_secret(m));
    verify::check_object(&after, &as_stored(&object, secret), Lists::Merge).map_err(|m| StepError::NotApplied {
        object: shown.clone(),
        detail: m.explain(
            &ctx.resource_name(&api_version, &resolved.resource.plural),
            hide_values,
            false,
        ),
    })?;
    let redacted = if secret {
        json!({"kind": "Secret", "name": name, "data": "<redacted>"})
    } else {
        object.clone()
    };
    Ok(StepOutcome {
        inputs: Some(json!({"object": redacted, "fieldManager": ctx.field_manager})),
        diff: Some(if secret {
            json!("<redacted>")
        } else {
            object_diff(&before, &after)
        }),
        object: Some(shown),
        tainted,
        ..Default::default()
    })
}

/// Whether every manager a server-side apply conflict names is `recoverd` (the legacy,
/// pre-per-plan field manager): `conflict with "recoverd": .data.x`.
fn only_legacy_manager(message: &str) -> bool {
    static MANAGER: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = MANAGER.get_or_init(|| regex::Regex::new(r#"conflicts? with "([^"]*)""#).unwrap());
    let mut managers = re.captures_iter(message).map(|c| c[1].to_string()).peekable();
    managers.peek().is_some() && managers.all(|m| m == super::FIELD_MANAGER)
}

/// The manifest as the API server stores it: a Secret's `stringData` becomes base64 `data`.
fn as_stored(object: &Value, secret: bool) -> Value {
    use base64::Engine as _;
    let mut object = object.clone();
    if !secret {
        return object;
    }
    if let Some(Value::Object(string_data)) = object.as_object_mut().and_then(|o| o.remove("stringData")) {
        let data = object
            .as_object_mut()
            .expect("a manifest is an object")
            .entry("data")
            .or_insert_with(|| json!({}));
        if let Value::Object(data) = data {
            for (k, v) in string_data {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
            }
        }
    }
    object
}

/// A `templateFrom.file` path inside the plan's directory: relative, no `..`, and still inside
/// it once symlinks are resolved. A plan must not be able to write `/etc/shadow` into a
/// ConfigMap.
pub(crate) fn confined_file(base_dir: Option<&Path>, file: &str) -> Result<PathBuf, StepError> {
    let refuse = |why: &str| StepError::Manifest {
        reason: format!("templateFrom.file {file:?} {why}"),
    };
    let rel = Path::new(file);
    if rel.is_absolute() {
        return Err(refuse("must be relative to the plan's directory"));
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refuse("must stay inside the plan's directory (no `..`)"));
    }
    let base = base_dir.ok_or_else(|| refuse("needs a plan loaded from a file"))?;
    let base = base
        .canonicalize()
        .map_err(|e| refuse(&format!("cannot be resolved: {e}")))?;
    let full = base
        .join(rel)
        .canonicalize()
        .map_err(|e| refuse(&format!("cannot be read: {e}")))?;
    if !full.starts_with(&base) {
        return Err(refuse("leads out of the plan's directory through a symlink"));
    }
    Ok(full)
}

/// The partial ConfigMap/Secret that sets `target.key` to the rendered template, and whether
/// the template used a secret value.
async fn keyed_object(
    target: &KeyTarget,
    from: &TemplateSource,
    ctx: &StepCtx<'_>,
) -> Result<(Value, bool), StepError> {
    let source = match from {
        TemplateSource::Inline(inline) => inline.clone(),
        TemplateSource::File(file) => {
            let path = confined_file(ctx.base_dir, file)?;
            std::fs::read_to_string(&path).map_err(|e| StepError::Manifest {
                reason: format!("failed to read template {}: {e}", path.display()),
            })?
        }
        TemplateSource::ConfigMap(cm) => {
            let (api, name, shown) = ctx.object("v1", "configmaps", Some(&cm.namespace), &cm.name).await?;
            let key = ctx.render(&cm.key)?;
            let obj = get_object(&api, &name, &shown).await?;
            obj.pointer(&format!("/data/{}", key.replace('~', "~0").replace('/', "~1")))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(StepError::FieldMissing {
                    object: shown,
                    path: format!("data[{key:?}]"),
                })?
        }
    };
    let tainted = ctx.uses_secret(&source);
    let rendered = template::render(&source, ctx.values)?;
    // The target's name, namespace and key are templates like any object reference.
    let key = ctx.render(&target.key)?;
    let data = if target.kind == KeyKind::Secret {
        json!({ key: base64::engine::general_purpose::STANDARD.encode(rendered) })
    } else {
        json!({ key: rendered })
    };
    Ok((
        json!({
            "apiVersion": "v1",
            "kind": target.kind.as_str(),
            "metadata": {"name": ctx.render(&target.name)?, "namespace": ctx.render(&target.namespace)?},
            "data": data,
        }),
        tainted,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_conflicts_with_the_legacy_manager_alone_are_taken_over() {
        assert!(only_legacy_manager(
            "Apply failed with 1 conflict: conflict with \"recoverd\": .data.haproxy.cfg"
        ));
        assert!(only_legacy_manager(
            "Apply failed with 2 conflicts: conflicts with \"recoverd\":\n- .data.a\n- .data.b"
        ));
        assert!(!only_legacy_manager(
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: .data.x"
        ));
        assert!(!only_legacy_manager(
            "Apply failed with 1 conflict: conflict with \"recoverd/recoverd/other-plan\": .data.x"
        ));
        assert!(!only_legacy_manager("something else"));
    }
}
