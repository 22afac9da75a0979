//! Reactors (I/O edge): client-side watchers that emulate operators — "when this field of this
//! object becomes X (or when it is deleted), do these actions, each after its delay": set
//! several fields at once to values, to values read from other fields or objects, or to freshly
//! generated tokens; create objects; re-create a deleted object (CloudNativePG writing a
//! `status.demotionToken` it generated after `spec.replica.primary` changes). The world-file
//! format is documented in docs/worlds.md. They talk to clusters only
//! through the registry's clients, so the same reactors run against real clusters and the
//! simulator, in `rehearse` and in tests.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::Registry;
use crate::duration;
use crate::fieldpath::{self, FieldPath};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reactor {
    pub cluster: String,
    pub when: ReactorWhen,
    /// Delay before `set` (the one-action form), e.g. `500ms`.
    #[serde(default)]
    pub after: Option<String>,
    /// One field to set: the short form of `actions: [{after, set: [..]}]`.
    #[serde(default)]
    pub set: Option<ReactorSet>,
    /// What the "operator" does, in order, each after its own delay.
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// The watched object, and what triggers the reactor: a field becoming `equals`, or the
/// object being deleted (`deleted: true`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactorWhen {
    pub api_version: String,
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub field_path: Option<String>,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub deleted: bool,
}

/// Where an action writes or reads: the watched object unless these say otherwise.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// One field to set, to exactly one of: a `value`, a value read now from a field
/// (`valueFrom`, of the watched object or another), or a `generate`d one (`token`: a fresh
/// random token each time). A `status.…` path is written through the status subresource when
/// the resource has one, as an operator would.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactorSet {
    pub field_path: String,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub value_from: Option<ValueFrom>,
    #[serde(default)]
    pub generate: Option<Generate>,
    #[serde(flatten)]
    pub target: ObjectRef,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueFrom {
    pub field_path: String,
    #[serde(flatten)]
    pub object: ObjectRef,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Generate {
    /// A random token (base64 of a JSON document, as CloudNativePG's tokens are).
    Token,
}

/// One step of a reactor, after `after` (counted from the previous step): set fields (all
/// fields of one object in one patch), create an object (server-side apply), or re-create the
/// watched object as it last was (a new uid; for `deleted` triggers).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub set: Vec<ReactorSet>,
    #[serde(default)]
    pub create: Option<CreateObject>,
    #[serde(default)]
    pub recreate: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateObject {
    #[serde(default)]
    pub cluster: Option<String>,
    pub object: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("reactor on cluster {cluster:?}: {reason}")]
    Setup { cluster: String, reason: String },
}

/// Running reactors; they stop when this is dropped.
pub struct Reactors {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    fired: Arc<std::sync::atomic::AtomicUsize>,
}

impl Reactors {
    /// How many times reactors have set a field.
    pub fn fired(&self) -> usize {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The actions of a reactor, its short form (`after` + `set`) included, checked.
fn actions_of(r: &Reactor) -> Result<Vec<(Duration, Action)>, String> {
    let mut actions = r.actions.clone();
    match (&r.set, actions.is_empty()) {
        (Some(set), true) => actions.push(Action {
            after: r.after.clone(),
            set: vec![set.clone()],
            ..Default::default()
        }),
        (None, false) if r.after.is_none() => {}
        (None, false) => return Err("give `after` in each action, not beside `actions`".into()),
        (Some(_), false) => return Err("give either `set` or `actions`, not both".into()),
        (None, true) => return Err("a reactor needs `set` or `actions`".into()),
    }
    let mut out = Vec::new();
    for (i, a) in actions.into_iter().enumerate() {
        let kinds = usize::from(!a.set.is_empty())
            + usize::from(a.create.is_some())
            + usize::from(a.recreate);
        if kinds != 1 {
            return Err(format!(
                "action {i} must do exactly one of `set`, `create` or `recreate`"
            ));
        }
        for s in &a.set {
            FieldPath::parse(&s.field_path).map_err(|e| e.to_string())?;
            let sources = usize::from(s.value.is_some())
                + usize::from(s.value_from.is_some())
                + usize::from(s.generate.is_some());
            if sources != 1 {
                return Err(format!(
                    "set {:?} needs exactly one of `value`, `valueFrom` or `generate`",
                    s.field_path
                ));
            }
            if let Some(from) = &s.value_from {
                FieldPath::parse(&from.field_path).map_err(|e| e.to_string())?;
            }
        }
        if a.recreate && !r.when.deleted {
            return Err("`recreate` needs a `deleted: true` trigger".into());
        }
        let after = a
            .after
            .as_deref()
            .map(duration::parse)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        out.push((after, a));
    }
    Ok(out)
}

/// Starts the reactors and returns once each has seen its object's current state, so that only
/// changes made after this call trigger them.
pub async fn start(
    registry: Arc<Registry>,
    reactors: &[Reactor],
) -> Result<Reactors, ReactorError> {
    let fired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for r in reactors {
        let setup = |reason: String| ReactorError::Setup {
            cluster: r.cluster.clone(),
            reason,
        };
        let trigger = match (&r.when.field_path, &r.when.equals, r.when.deleted) {
            (Some(p), Some(v), false) => Some((
                FieldPath::parse(p).map_err(|e| setup(e.to_string()))?,
                v.clone(),
            )),
            (None, None, true) => None,
            _ => {
                return Err(setup(
                    "`when` needs either `fieldPath` and `equals`, or `deleted: true`".into(),
                ))
            }
        };
        let actions = actions_of(r).map_err(setup)?;
        let resolved = registry
            .resolve(&r.cluster, &r.when.api_version, &r.when.resource)
            .await
            .map_err(|e| setup(e.to_string()))?;
        let api = crate::cluster::api_for_object(
            &registry,
            &r.cluster,
            &resolved,
            r.when.namespace.as_deref(),
        )
        .map_err(|e| setup(e.to_string()))?;
        let config = watcher::Config::default().fields(&format!("metadata.name={}", r.when.name));
        let mut stream = watcher(api, config).default_backoff().boxed();
        let holds = move |obj: &Value| {
            trigger
                .as_ref()
                .is_some_and(|(path, equals)| matches(path, obj, equals))
        };
        // Wait for the initial state.
        let mut held = false;
        let mut last: Option<Value> = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last_error = String::from("no answer");
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(watcher::Event::InitApply(obj)))) => {
                    let v = serde_json::to_value(obj).unwrap_or_default();
                    held = holds(&v);
                    last = Some(v);
                }
                Ok(Some(Ok(watcher::Event::InitDone))) => break,
                Ok(Some(Err(e))) => last_error = e.to_string(),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(setup(format!(
                        "could not watch {} within 30s: {last_error}",
                        r.when.name
                    )))
                }
            }
        }
        let (registry, r, fired) = (registry.clone(), r.clone(), fired.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let fire = match ev {
                    Ok(watcher::Event::Apply(obj)) | Ok(watcher::Event::InitApply(obj)) => {
                        let v = serde_json::to_value(obj).unwrap_or_default();
                        let now = holds(&v);
                        let fire = now && !held;
                        held = now;
                        last = Some(v);
                        fire
                    }
                    Ok(watcher::Event::Delete(_)) => r.when.deleted,
                    _ => false,
                };
                if !fire {
                    continue;
                }
                for (after, action) in &actions {
                    tokio::time::sleep(*after).await;
                    match run(&registry, &r, action, last.as_ref()).await {
                        Ok(()) => {
                            fired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tracing::info!(cluster = %r.cluster, name = %r.when.name, "reactor acted");
                        }
                        Err(e) => {
                            tracing::warn!(cluster = %r.cluster, error = %e, "reactor failed");
                            break;
                        }
                    }
                }
            }
        }));
    }
    Ok(Reactors { tasks, fired })
}

fn matches(path: &FieldPath, obj: &Value, equals: &Value) -> bool {
    path.get(obj)
        .ok()
        .flatten()
        .is_some_and(|v| &v == equals || fieldpath::as_text(&v) == fieldpath::as_text(equals))
}

/// An object handle: the watched object unless `target` names another.
async fn handle(
    registry: &Registry,
    r: &Reactor,
    target: &ObjectRef,
) -> Result<(Api<DynamicObject>, crate::cluster::Resolved, String), String> {
    let cluster = target.cluster.as_deref().unwrap_or(&r.cluster);
    let api_version = target.api_version.as_deref().unwrap_or(&r.when.api_version);
    let resource = target.resource.as_deref().unwrap_or(&r.when.resource);
    let namespace = target.namespace.as_deref().or(r.when.namespace.as_deref());
    let name = target.name.as_deref().unwrap_or(&r.when.name);
    let resolved = registry
        .resolve(cluster, api_version, resource)
        .await
        .map_err(|e| e.to_string())?;
    let api = crate::cluster::api_for_object(registry, cluster, &resolved, namespace)
        .map_err(|e| e.to_string())?;
    Ok((api, resolved, name.to_string()))
}

/// A fresh random token, as an operator would hand out.
fn token() -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let h = Sha256::digest(format!("{n}/{nanos}/{}", std::process::id()).as_bytes());
    let id: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    base64::engine::general_purpose::STANDARD.encode(format!("{{\"token\":\"{id}\"}}"))
}

async fn run(
    registry: &Registry,
    r: &Reactor,
    action: &Action,
    last: Option<&Value>,
) -> Result<(), String> {
    if let Some(c) = &action.create {
        let cluster = c.cluster.as_deref().unwrap_or(&r.cluster);
        return apply_object(registry, cluster, c.object.clone()).await;
    }
    if action.recreate {
        let mut obj = last.cloned().ok_or("the deleted object was never seen")?;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "managedFields",
                // The last state seen still had the finalizers the final update removed, and
                // owner references to owners that may be gone: a re-created object starts clean.
                "finalizers",
                "ownerReferences",
            ] {
                meta.remove(k);
            }
        }
        // Objects from a watch carry no apiVersion and kind.
        let resolved = registry
            .resolve(&r.cluster, &r.when.api_version, &r.when.resource)
            .await
            .map_err(|e| e.to_string())?;
        obj["apiVersion"] = Value::String(r.when.api_version.clone());
        obj["kind"] = Value::String(resolved.resource.kind.clone());
        return apply_object(registry, &r.cluster, obj).await;
    }
    // Every field of one object goes in one patch (status fields in one status patch).
    let mut patches: Vec<(ObjectRef, bool, Value)> = Vec::new();
    for s in &action.set {
        let value = match (&s.value, &s.value_from, s.generate) {
            (Some(v), _, _) => v.clone(),
            (_, Some(from), _) => {
                let (api, _, name) = handle(registry, r, &from.object).await?;
                let obj = api.get(&name).await.map_err(|e| e.to_string())?;
                let path = FieldPath::parse(&from.field_path).map_err(|e| e.to_string())?;
                path.get(&serde_json::to_value(obj).unwrap_or_default())
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{} {} has no {}", r.cluster, name, from.field_path))?
            }
            _ => Value::String(token()),
        };
        let path = FieldPath::parse(&s.field_path).map_err(|e| e.to_string())?;
        let patch = path.merge_patch(value).map_err(|e| e.to_string())?;
        let status = s.field_path.starts_with("status.");
        let key = serde_json::to_value(&s.target).unwrap_or_default();
        match patches
            .iter_mut()
            .find(|(t, st, _)| serde_json::to_value(t).unwrap_or_default() == key && *st == status)
        {
            Some((_, _, p)) => json_patch::merge(p, &patch),
            None => patches.push((s.target.clone(), status, patch)),
        }
    }
    for (target, status, patch) in patches {
        let (api, resolved, name) = handle(registry, r, &target).await?;
        let params = PatchParams::default();
        let result = if status && resolved.subresources.iter().any(|s| s == "status") {
            api.patch_status(&name, &params, &Patch::Merge(&patch))
                .await
        } else {
            api.patch(&name, &params, &Patch::Merge(&patch)).await
        };
        result.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Creates (or updates) an object by server-side apply, then writes its `status` when it has
/// one and the resource has a status subresource.
async fn apply_object(registry: &Registry, cluster: &str, obj: Value) -> Result<(), String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or("the object has no metadata.name")?
        .to_string();
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let resolved = registry
        .resolve_kind(cluster, &api_version, &kind)
        .await
        .map_err(|e| e.to_string())?;
    let api = crate::cluster::api_for_object(registry, cluster, &resolved, namespace.as_deref())
        .map_err(|e| e.to_string())?;
    let mut spec = obj.clone();
    let status = spec.as_object_mut().and_then(|o| o.remove("status"));
    let params = PatchParams::apply("recoverd-reactor").force();
    api.patch(&name, &params, &Patch::Apply(&spec))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(status) = status.filter(|_| resolved.subresources.iter().any(|s| s == "status")) {
        let patch = serde_json::json!({ "status": status });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reactor(yaml: &str) -> Reactor {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_reactor_says_clearly_what_is_wrong_with_its_actions() {
        let when =
            "when: {apiVersion: v1, resource: configmaps, name: a, fieldPath: data.x, equals: y}";
        let both = reactor(&format!(
            "cluster: c\n{when}\nset: {{fieldPath: data.z, value: 1}}\nactions: [{{set: [{{fieldPath: data.z, value: 1}}]}}]"
        ));
        assert_eq!(
            actions_of(&both).unwrap_err(),
            "give either `set` or `actions`, not both"
        );
        let two_sources = reactor(&format!(
            "cluster: c\n{when}\nactions: [{{set: [{{fieldPath: data.z, value: 1, generate: token}}]}}]"
        ));
        assert!(actions_of(&two_sources)
            .unwrap_err()
            .contains("exactly one of `value`, `valueFrom` or `generate`"));
        let recreate = reactor(&format!(
            "cluster: c\n{when}\nactions: [{{recreate: true}}]"
        ));
        assert_eq!(
            actions_of(&recreate).unwrap_err(),
            "`recreate` needs a `deleted: true` trigger"
        );
        let short = reactor(&format!(
            "cluster: c\n{when}\nafter: 1s\nset: {{fieldPath: data.z, value: 1}}"
        ));
        let actions = actions_of(&short).unwrap();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].0, Duration::from_secs(1));
    }
}
