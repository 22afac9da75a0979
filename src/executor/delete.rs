//! `delete`: delete one object by name, or every object a label selector matches (refusing,
//! before deleting anything, when more than `maxObjects` match). Preconditions (uid,
//! resourceVersion) keep a re-created object from being deleted by mistake. An object already
//! gone counts as deleted, so a resumed run can repeat the step. ✔ means each object is gone,
//! terminating (finalizers), or replaced by a new one (a new uid); with `wait.gone`, gone.

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Preconditions, PropagationPolicy};
use serde_json::{json, Value};

use super::{StepCtx, StepError, StepOutcome};
use crate::plan::compiled::{Count, Delete as DeleteStep, Propagation, Selection};

pub(super) async fn run(step: &DeleteStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let namespace = step.namespace.as_deref().map(|n| ctx.render(n)).transpose()?;
    let (api, names, shown) = match &step.selection {
        Selection::Name(name) => {
            let (api, name, shown) = ctx
                .object(&step.api_version, &step.resource, namespace.as_deref(), name)
                .await?;
            (api, vec![name], shown)
        }
        Selection::Selector { selector, max_objects } => {
            let selector = ctx.render(selector)?;
            let resolved = ctx
                .registry
                .resolve(&ctx.cluster, &step.api_version, &step.resource)
                .await?;
            if let Some(ns) = &namespace {
                super::check_name("namespace", ns, &step.resource)?;
            }
            let shown = format!(
                "{} on cluster {}",
                crate::cluster::describe_object(
                    &step.api_version,
                    &step.resource,
                    namespace.as_deref(),
                    &format!("[{selector}]")
                ),
                ctx.cluster
            );
            super::ctx::needs_namespace(&resolved, namespace.as_deref(), &shown)?;
            let api = crate::cluster::api_for_object(ctx.registry, &ctx.cluster, &resolved, namespace.as_deref())?;
            let found = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|source| StepError::Kube {
                    action: "list",
                    object: shown.clone(),
                    source,
                })?;
            let max = match max_objects {
                Count::Fixed(n) => *n as usize,
                Count::Template(t) => {
                    let text = ctx.render(t)?;
                    match text.trim().parse::<u32>() {
                        Ok(n) if n >= 1 => n as usize,
                        _ => {
                            return Err(StepError::DeleteRefused {
                                object: shown,
                                detail: format!(
                                    "maxObjects {t:?} rendered to {text:?}, which is not a whole \
                                     number from 1; nothing was deleted"
                                ),
                            })
                        }
                    }
                }
            };
            let names: Vec<String> = found.items.iter().filter_map(|o| o.metadata.name.clone()).collect();
            if names.len() > max {
                return Err(StepError::DeleteRefused {
                    object: shown,
                    detail: format!(
                        "{} objects match, more than maxObjects {max}; nothing was deleted",
                        names.len()
                    ),
                });
            }
            (api, names, shown)
        }
    };

    let params = DeleteParams {
        // The client's dry-run layer adds `dryRun=All` to the query, but a DELETE's body
        // (DeleteOptions, which kube always sends) takes precedence over the query on the API
        // server: say it in the body too, or a dry run deletes for real.
        dry_run: ctx.dry_run(),
        propagation_policy: step.propagation_policy.map(|p| match p {
            Propagation::Foreground => PropagationPolicy::Foreground,
            Propagation::Orphan => PropagationPolicy::Orphan,
            Propagation::Background => PropagationPolicy::Background,
        }),
        preconditions: match &step.preconditions {
            Some(p) => Some(Preconditions {
                uid: p.uid.as_deref().map(|u| ctx.render(u)).transpose()?,
                resource_version: p.resource_version.as_deref().map(|r| ctx.render(r)).transpose()?,
            }),
            None => None,
        },
        ..Default::default()
    };

    let mut results = Vec::new();
    let mut deleted = Vec::new();
    for name in &names {
        let one = format!("{shown} ({name})");
        let before = uid_of(&api, name, &one).await?;
        let Some(uid) = before else {
            results.push(json!({"name": name, "result": "already gone"}));
            continue;
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                results.push(json!({"name": name, "result": "already gone"}));
                continue;
            }
            Err(kube::Error::Api(s)) if s.code == 409 && step.preconditions.is_some() => {
                return Err(StepError::DeleteRefused {
                    object: one,
                    detail: format!(
                        "its preconditions do not hold (re-created or changed since it was read): {}",
                        s.message
                    ),
                });
            }
            Err(source) => {
                return Err(StepError::Kube {
                    action: "delete",
                    object: one,
                    source,
                })
            }
        }
        deleted.push((name.clone(), uid));
    }

    // ✔: each object is gone, terminating, or replaced (a new uid). A dry run stores nothing,
    // so there is nothing to read back: the API server accepted each delete.
    if !ctx.dry_run() {
        for (name, uid) in &deleted {
            let state = state_after(&api, name, uid, &shown).await?;
            if state == "still there" {
                return Err(StepError::NotApplied {
                    object: format!("{shown} ({name})"),
                    detail: "the object is still there, without a deletionTimestamp".into(),
                });
            }
            results.push(json!({"name": name, "result": state}));
        }
    } else {
        for (name, _) in &deleted {
            results.push(json!({"name": name, "result": "would be deleted (dry run)"}));
        }
    }

    if let Some(timeout) = step.wait_gone {
        if !ctx.dry_run() && !deleted.is_empty() {
            (ctx.progress)(format!("{shown} to be gone"), timeout).await;
            let deadline = tokio::time::Instant::now() + timeout;
            for (name, uid) in &deleted {
                loop {
                    let state = state_after(&api, name, uid, &shown).await?;
                    if state != "terminating" && state != "still there" {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StepError::WaitTimeout {
                            after: timeout,
                            condition: "the object to be gone".into(),
                            object: format!("{shown} ({name})"),
                            last: state.into(),
                            last_error: None,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            for r in results.iter_mut() {
                if r["result"] == "terminating" {
                    r["result"] = json!("gone");
                }
            }
        }
    }

    Ok(StepOutcome {
        inputs: Some(json!({
            "labelSelector": match &step.selection {
                Selection::Selector { selector, .. } => Some(selector),
                Selection::Name(_) => None,
            },
            "propagationPolicy": step.propagation_policy.map(Propagation::as_str),
            "objects": results,
        })),
        diff: Some(Value::Array(
            deleted
                .iter()
                .map(|(name, uid)| json!({"op": "delete", "name": name, "uid": uid}))
                .collect(),
        )),
        object: Some(shown),
        ..Default::default()
    })
}

/// The object's uid, or `None` when it does not exist.
async fn uid_of(api: &Api<DynamicObject>, name: &str, shown: &str) -> Result<Option<String>, StepError> {
    match api.get_opt(name).await {
        Ok(obj) => Ok(obj.map(|o| o.metadata.uid.unwrap_or_default())),
        Err(source) => Err(StepError::Kube {
            action: "read",
            object: shown.to_string(),
            source,
        }),
    }
}

/// What became of a deleted object: `gone`, `terminating` (finalizers), `re-created` (same
/// name, new uid), or `still there`.
async fn state_after(api: &Api<DynamicObject>, name: &str, uid: &str, shown: &str) -> Result<&'static str, StepError> {
    match api.get_opt(name).await {
        Ok(None) => Ok("gone"),
        Ok(Some(o)) if o.metadata.uid.as_deref() != Some(uid) => Ok("re-created"),
        Ok(Some(o)) if o.metadata.deletion_timestamp.is_some() => Ok("terminating"),
        Ok(Some(_)) => Ok("still there"),
        Err(source) => Err(StepError::Kube {
            action: "read",
            object: shown.to_string(),
            source,
        }),
    }
}
