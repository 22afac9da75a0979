//! One firing of a reactor: its actions in order, each after its delay, written as an operator
//! would (status through the status subresource, conflicts read again and retried).

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::Value;

use super::shared::{Inflight, Shared, CONFLICT_RETRIES, MAX_CHAIN, REACTOR_MANAGER};
use super::spec::{Action, Generate, ObjectRef, Reactor, ReactorSet, SetCondition};
use super::trigger::Tracker;
use crate::cluster::Registry;
use crate::fieldpath::FieldPath;

/// How an action ended other than done.
enum Stopped {
    /// The object it acts on is gone or was replaced (another uid): another controller got
    /// there first, as happens between controllers. The firing ends quietly.
    Gone(String),
    Failed(String),
}

impl From<String> for Stopped {
    fn from(s: String) -> Self {
        Stopped::Failed(s)
    }
}

/// One firing: the actions in order, each after its delay, on the object version that fired
/// the reactor (`seen`).
pub(super) async fn fire(
    registry: Arc<Registry>,
    r: Arc<Reactor>,
    actions: Arc<Vec<(Duration, Action)>>,
    seen: Option<Value>,
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    fire_actions(registry, r, actions, seen, shared.clone(), stop).await;
    shared.ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    shared.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

async fn fire_actions(
    registry: Arc<Registry>,
    r: Arc<Reactor>,
    actions: Arc<Vec<(Duration, Action)>>,
    seen: Option<Value>,
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let name = r.name();
    let rv = seen
        .as_ref()
        .and_then(|o| o.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str);
    let depth = shared.depth_of(&r.cluster, rv).await + 1;
    if depth > MAX_CHAIN {
        if !stop.swap(true, std::sync::atomic::Ordering::SeqCst) {
            shared.problem(format!(
                "{name}: stopped — it fired {MAX_CHAIN} times in a row on a change made by \
                 reactors (its own actions trigger it again: make its `when` stop holding \
                 once it has acted)"
            ));
        }
        return;
    }
    let uid = seen.as_ref().and_then(Tracker::uid).map(str::to_string);
    let mut ctx = Firing {
        registry: &registry,
        r: &r,
        uid,
        depth,
        shared: &shared,
    };
    for (after, action) in actions.iter() {
        tokio::time::sleep(*after).await;
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match ctx.run(action, seen.as_ref()).await {
            Ok(()) => {
                shared.fired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(reactor = %name, "reactor acted");
            }
            Err(Stopped::Gone(why)) => {
                tracing::info!(reactor = %name, why = %why, "reactor's firing ended");
                return;
            }
            Err(Stopped::Failed(e)) => {
                shared.problem(format!("{name}: {e}"));
                return;
            }
        }
    }
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
    let api = crate::cluster::api_for_object(registry, cluster, &resolved, namespace).map_err(|e| e.to_string())?;
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

/// What one firing acts with.
struct Firing<'a> {
    registry: &'a Registry,
    r: &'a Reactor,
    /// The uid of the object that fired it: its actions on that object stop if it was
    /// replaced meanwhile (a re-created object is another object). After `recreate`, the
    /// object it re-created.
    uid: Option<String>,
    depth: u32,
    shared: &'a Shared,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Fields and conditions of one object, written in one patch (the status ones through the
/// status subresource when there is one).
struct Write<'a> {
    target: ObjectRef,
    status: bool,
    fields: Vec<(&'a ReactorSet, Option<Value>)>,
    conditions: Vec<&'a SetCondition>,
}

impl Firing<'_> {
    /// Whether `target` is the watched object itself.
    fn is_watched(&self, target: &ObjectRef) -> bool {
        let w = &self.r.when;
        target.cluster.as_deref().is_none_or(|c| c == self.r.cluster)
            && target.api_version.as_deref().is_none_or(|a| a == w.api_version)
            && target.resource.as_deref().is_none_or(|x| x == w.resource)
            && (target.namespace.is_none() || target.namespace == w.namespace)
            && target.name.as_deref().is_none_or(|n| n == w.name)
    }

    async fn run(&mut self, action: &Action, last: Option<&Value>) -> Result<(), Stopped> {
        let (registry, r) = (self.registry, self.r);
        if let Some(c) = &action.create {
            let cluster = c.cluster.as_deref().unwrap_or(&r.cluster);
            let _w = Inflight::new(self.shared);
            let written = crate::cluster::apply_with_status(registry, cluster, &c.object, REACTOR_MANAGER)
                .await?
                .object;
            self.shared.wrote(cluster, &written, self.depth);
            return Ok(());
        }
        if action.recreate {
            return self.recreate(action, last).await;
        }
        // Every field of one object goes in one patch (status fields in one status patch).
        let mut writes: Vec<Write> = Vec::new();
        let key = |t: &ObjectRef| serde_json::to_value(t).unwrap_or_default();
        for s in &action.set {
            let status = s.field_path.starts_with("status.");
            // A generated token is made once, whatever retries the write takes.
            let token = (s.generate == Some(Generate::Token)).then(|| Value::String(token()));
            match writes
                .iter_mut()
                .find(|w| key(&w.target) == key(&s.target) && w.status == status)
            {
                Some(w) => w.fields.push((s, token)),
                None => writes.push(Write {
                    target: s.target.clone(),
                    status,
                    fields: vec![(s, token)],
                    conditions: vec![],
                }),
            }
        }
        for c in &action.conditions {
            match writes.iter_mut().find(|w| key(&w.target) == key(&c.target) && w.status) {
                Some(w) => w.conditions.push(c),
                None => writes.push(Write {
                    target: c.target.clone(),
                    status: true,
                    fields: vec![],
                    conditions: vec![c],
                }),
            }
        }
        for w in &writes {
            self.write(w).await?;
        }
        Ok(())
    }

    /// Writes one object's fields and conditions from a fresh read of it, with its
    /// resourceVersion as a precondition (no lost update); on a conflict, reads again and
    /// tries again.
    async fn write(&self, w: &Write<'_>) -> Result<(), Stopped> {
        let (api, resolved, name) = handle(self.registry, self.r, &w.target).await?;
        let cluster = w.target.cluster.as_deref().unwrap_or(&self.r.cluster);
        let watched = self.is_watched(&w.target);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let obj = match api.get(&name).await {
                Ok(o) => serde_json::to_value(o).unwrap_or_default(),
                Err(e) if is_not_found(&e) => return Err(Stopped::Gone(format!("{cluster}: {name} is gone"))),
                Err(e) => return Err(Stopped::Failed(e.to_string())),
            };
            let uid = obj.pointer("/metadata/uid").and_then(Value::as_str);
            if watched && self.uid.is_some() && uid != self.uid.as_deref() {
                return Err(Stopped::Gone(format!(
                    "{cluster}: {name} was replaced (uid {}, fired for {})",
                    uid.unwrap_or("?"),
                    self.uid.as_deref().unwrap_or("?")
                )));
            }
            let mut patch = serde_json::json!({});
            for (s, token) in &w.fields {
                let value = match (&s.value, &s.value_from, token) {
                    (Some(v), _, _) => v.clone(),
                    (_, Some(from), _) => {
                        let (fapi, _, fname) = handle(self.registry, self.r, &from.object).await?;
                        let src = fapi.get(&fname).await.map_err(|e| e.to_string())?;
                        let path = FieldPath::parse(&from.field_path).map_err(|e| e.to_string())?;
                        path.get(&serde_json::to_value(src).unwrap_or_default())
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| format!("{} {} has no {}", self.r.cluster, fname, from.field_path))?
                    }
                    (_, _, Some(t)) => t.clone(),
                    _ => return Err(Stopped::Failed("a set without a value".into())),
                };
                let path = FieldPath::parse(&s.field_path).map_err(|e| e.to_string())?;
                let p = path.merge_patch(value).map_err(|e| e.to_string())?;
                json_patch::merge(&mut patch, &p);
            }
            if !w.conditions.is_empty() {
                let mut list = obj
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for c in &w.conditions {
                    upsert_condition(&mut list, c, &now());
                }
                json_patch::merge(&mut patch, &serde_json::json!({"status": {"conditions": list}}));
            }
            // Preconditions: the version read (and so the object read).
            patch["metadata"]["resourceVersion"] =
                obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
            if let Some(uid) = uid {
                patch["metadata"]["uid"] = Value::String(uid.to_string());
            }
            let params = PatchParams {
                field_manager: Some(REACTOR_MANAGER.into()),
                ..Default::default()
            };
            let _inflight = Inflight::new(self.shared);
            let result = if w.status && resolved.subresources.iter().any(|s| s == "status") {
                api.patch_status(&name, &params, &Patch::Merge(&patch)).await
            } else {
                api.patch(&name, &params, &Patch::Merge(&patch)).await
            };
            match result {
                Ok(o) => {
                    let o = serde_json::to_value(o).unwrap_or_default();
                    self.shared.wrote(cluster, &o, self.depth);
                    return Ok(());
                }
                Err(e) if is_conflict(&e) && attempt <= CONFLICT_RETRIES => {
                    tracing::info!(object = %name, attempt, "reactor's write met a conflict; reading again");
                }
                Err(e) if is_not_found(&e) => return Err(Stopped::Gone(format!("{cluster}: {name} is gone"))),
                Err(e) => return Err(Stopped::Failed(format!("writing {name} (attempt {attempt}): {e}"))),
            }
        }
    }

    /// Creates the deleted object again as it last was — a new object, so a new uid. If an
    /// object of that name exists already (someone else re-created it), it is left alone.
    async fn recreate(&mut self, action: &Action, last: Option<&Value>) -> Result<(), Stopped> {
        let r = self.r;
        let mut obj = last
            .cloned()
            .ok_or_else(|| "the deleted object was never seen".to_string())?;
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
        let (api, resolved, name) = handle(self.registry, r, &ObjectRef::default()).await?;
        obj["apiVersion"] = Value::String(r.when.api_version.clone());
        obj["kind"] = Value::String(resolved.resource.kind.clone());
        let status = match &action.status {
            Some(s) => Some(s.clone()),
            None => obj.as_object_mut().and_then(|o| o.remove("status")),
        };
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
        let body: DynamicObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
        let params = kube::api::PostParams {
            field_manager: Some(REACTOR_MANAGER.into()),
            ..Default::default()
        };
        let _inflight = Inflight::new(self.shared);
        let created = match api.create(&params, &body).await {
            Ok(o) => serde_json::to_value(o).unwrap_or_default(),
            Err(e) if is_conflict(&e) => {
                return Err(Stopped::Gone(format!(
                    "{}: {name} exists again already (re-created by someone else): left alone",
                    r.cluster
                )))
            }
            Err(e) => return Err(Stopped::Failed(format!("re-creating {name}: {e}"))),
        };
        self.shared.wrote(&r.cluster, &created, self.depth);
        self.uid = created
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        let Some(status) = status.filter(|_| resolved.subresources.iter().any(|s| s == "status")) else {
            return Ok(());
        };
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": created.pointer("/metadata/resourceVersion"),
                "uid": created.pointer("/metadata/uid"),
            },
            "status": status,
        });
        let params = PatchParams {
            field_manager: Some(REACTOR_MANAGER.into()),
            ..Default::default()
        };
        match api.patch_status(&name, &params, &Patch::Merge(&patch)).await {
            Ok(o) => {
                self.shared
                    .wrote(&r.cluster, &serde_json::to_value(o).unwrap_or_default(), self.depth);
                Ok(())
            }
            // Changed or gone since it was created: what changed it had the last word.
            Err(e) if is_conflict(&e) || is_not_found(&e) => Err(Stopped::Gone(format!(
                "{}: {name} changed before its status was written: {e}",
                r.cluster
            ))),
            Err(e) => Err(Stopped::Failed(format!("writing {name}'s status: {e}"))),
        }
    }
}

/// The current time as Kubernetes writes it (RFC 3339, seconds).
fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// Replaces the condition of `c`'s type in `list` (or adds it); its `lastTransitionTime` moves
/// only when its status changes, as controllers do.
pub(super) fn upsert_condition(list: &mut Vec<Value>, c: &SetCondition, now: &str) {
    let old = list
        .iter()
        .position(|x| x.get("type").and_then(Value::as_str) == Some(&c.type_));
    let since = old
        .map(|i| &list[i])
        .filter(|x| x.get("status").and_then(Value::as_str) == Some(&c.status))
        .and_then(|x| x.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::String(now.to_string()));
    let mut cond = serde_json::json!({
        "type": c.type_,
        "status": c.status,
        "lastTransitionTime": since,
    });
    if let Some(reason) = &c.reason {
        cond["reason"] = Value::String(reason.clone());
    }
    if let Some(message) = &c.message {
        cond["message"] = Value::String(message.clone());
    }
    match old {
        Some(i) => list[i] = cond,
        None => list.push(cond),
    }
}
