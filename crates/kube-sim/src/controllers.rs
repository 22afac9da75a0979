//! The controllers a cluster runs, in their simplest form (I/O edge: a task per cluster that
//! follows the store's events and writes through the API like any client). They are what a
//! rehearsal needs, not a kube-controller-manager:
//! - **garbage collection**: when an object goes, the objects it owns (every
//!   `ownerReference` gone) are deleted; `propagationPolicy: Foreground` deletes them before the
//!   owner (which waits with the `foregroundDeletion` finalizer), `Orphan` keeps them and drops
//!   their references (done by the delete itself);
//! - **StatefulSets**: pods `NAME-0` … `NAME-(replicas-1)` are created from the template, owned
//!   by the StatefulSet, with a claim per volume claim template; a deleted pod comes back with a
//!   new uid after the delay in the annotation `kube-sim.io/pod-recreate-delay` (default `1s`);
//!   pods above the replica count go. No kubelet runs, so a new pod is at once `Running` and
//!   `Ready` (its status subresource can be written like any other, e.g. by a reactor); the
//!   StatefulSet's status counts the pods;
//! - **storage protection**: the `kubernetes.io/pvc-protection` and `pv-protection` finalizers
//!   are removed once a claim or volume is being deleted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::api::{Cluster, WriteOptions};
use super::store::{Event, EventType};

const MANAGER: &str = "kube-controller-manager";
const RECREATE_DELAY_ANNOTATION: &str = "kube-sim.io/pod-recreate-delay";
const DEFAULT_RECREATE_DELAY: Duration = Duration::from_secs(1);

fn options() -> WriteOptions {
    WriteOptions {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    }
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the controllers of one cluster until the cluster's event stream ends; `handled` is the
/// resourceVersion of the last event they have acted on.
pub fn spawn(cluster: Arc<Cluster>, handled: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let mut rx = cluster.subscribe();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    handle(&cluster, &ev);
                    handled.fetch_max(ev.rv, Ordering::SeqCst);
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "the simulated controllers fell behind");
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

fn handle(c: &Arc<Cluster>, ev: &Event) {
    let obj = &ev.object;
    match (ev.group.as_str(), ev.plural.as_str(), ev.kind) {
        ("apps", "statefulsets", EventType::Added | EventType::Modified) if !deleting(obj) => {
            reconcile_statefulset(c, obj);
        }
        ("", "pods", EventType::Deleted) => {
            if let Some(owner) = statefulset_of(c, obj) {
                let delay = recreate_delay(&owner);
                let (c, ns, name) = (
                    c.clone(),
                    meta(&owner, "namespace").to_string(),
                    meta(&owner, "name").to_string(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(sts) = c.stored("apps", "statefulsets", &ns, &name) {
                        if !deleting(&sts) {
                            reconcile_statefulset(&c, &sts);
                        }
                    }
                });
            }
        }
        ("", "persistentvolumeclaims" | "persistentvolumes", EventType::Modified)
            if deleting(obj) =>
        {
            let left: Vec<String> = finalizers(obj)
                .into_iter()
                .filter(|f| !f.ends_with("-protection") || !f.starts_with("kubernetes.io/"))
                .collect();
            if left.len() != finalizers(obj).len() {
                set_finalizers(c, &ev.group, &ev.plural, obj, left);
            }
        }
        _ => {}
    }
    match ev.kind {
        EventType::Deleted => collect_dependents(c, obj),
        EventType::Modified
            if deleting(obj) && finalizers(obj).iter().any(|f| f == "foregroundDeletion") =>
        {
            collect_dependents(c, obj);
            let left = finalizers(obj)
                .into_iter()
                .filter(|f| f != "foregroundDeletion")
                .collect();
            set_finalizers(c, &ev.group, &ev.plural, obj, left);
        }
        _ => {}
    }
}

fn set_finalizers(c: &Cluster, group: &str, plural: &str, obj: &Value, list: Vec<String>) {
    let ns = meta(obj, "namespace");
    let Some(t) = c.target(group, plural, ns, meta(obj, "name"), None) else {
        return;
    };
    let patch = json!({"metadata": {"finalizers": list,
        "resourceVersion": meta(obj, "resourceVersion")}});
    if let Err(e) = c.patch(
        &t,
        "application/merge-patch+json",
        patch.to_string().as_bytes(),
        &options(),
    ) {
        tracing::debug!(error = %e.message, "a controller could not update finalizers");
    }
}

/// Deletes the objects `owner` owned, once none of their owners is left.
fn collect_dependents(c: &Cluster, owner: &Value) {
    let uid = meta(owner, "uid");
    if uid.is_empty() {
        return;
    }
    for ((group, plural, ns, name), dep) in c.owned_by(uid) {
        let others_left = dep
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("uid").and_then(Value::as_str))
            .any(|u| u != uid && c.exists_uid(u));
        if others_left || deleting(&dep) {
            continue;
        }
        if let Some(t) = c.target(&group, &plural, &ns, &name, None) {
            if let Err(e) = c.delete(&t, &json!({}), &WriteOptions::default()) {
                tracing::debug!(error = %e.message, "garbage collection could not delete");
            }
        }
    }
}

fn statefulset_of(c: &Cluster, pod: &Value) -> Option<Value> {
    let r = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["kind"] == "StatefulSet" && r["controller"] == json!(true))?;
    let sts = c.stored(
        "apps",
        "statefulsets",
        meta(pod, "namespace"),
        r["name"].as_str()?,
    )?;
    (meta(&sts, "uid") == r["uid"].as_str()? && !deleting(&sts)).then_some(sts)
}

fn recreate_delay(sts: &Value) -> Duration {
    let text = sts
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(RECREATE_DELAY_ANNOTATION))
        .and_then(Value::as_str);
    text.and_then(super::faults::parse_duration)
        .unwrap_or(DEFAULT_RECREATE_DELAY)
}

/// Creates the missing pods (and claims) of a StatefulSet, deletes the extra ones, and writes
/// its status.
fn reconcile_statefulset(c: &Cluster, sts: &Value) {
    let (ns, name, uid) = (meta(sts, "namespace"), meta(sts, "name"), meta(sts, "uid"));
    let replicas = sts
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let owner = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
        "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
    let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let claims: Vec<Value> = sts
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for i in 0..replicas {
        let pod_name = format!("{name}-{i}");
        for claim in &claims {
            let claim_name = format!("{}-{pod_name}", meta(claim, "name"));
            if c.stored("", "persistentvolumeclaims", ns, &claim_name)
                .is_none()
            {
                let body = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name, "namespace": ns,
                        "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({}))},
                    "spec": claim.get("spec").cloned().unwrap_or(json!({}))});
                create(c, "", "persistentvolumeclaims", ns, body);
            }
        }
        if c.stored("", "pods", ns, &pod_name).is_some() {
            continue;
        }
        let mut labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
        labels["apps.kubernetes.io/pod-index"] = json!(i.to_string());
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        spec["hostname"] = json!(pod_name);
        if let Some(svc) = sts.pointer("/spec/serviceName").and_then(Value::as_str) {
            spec["subdomain"] = json!(svc);
        }
        for claim in &claims {
            let volume = json!({"name": meta(claim, "name"), "persistentVolumeClaim":
                {"claimName": format!("{}-{pod_name}", meta(claim, "name"))}});
            match spec.get_mut("volumes").and_then(Value::as_array_mut) {
                Some(v) => v.push(volume),
                None => spec["volumes"] = json!([volume]),
            }
        }
        let body = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                "annotations": template.pointer("/metadata/annotations").cloned().unwrap_or(json!({})),
                "ownerReferences": owner},
            "spec": spec});
        if let Some(pod) = create(c, "", "pods", ns, body) {
            mark_running(c, &pod);
        }
    }
    for (_, pod) in c.owned_by(uid) {
        let index = meta(&pod, "name")
            .strip_prefix(&format!("{name}-"))
            .and_then(|i| i.parse::<u64>().ok());
        if index.is_some_and(|i| i >= replicas) && !deleting(&pod) {
            if let Some(t) = c.target("", "pods", ns, meta(&pod, "name"), None) {
                let _ = c.delete(&t, &json!({}), &WriteOptions::default());
            }
        }
    }
    let pods = c
        .owned_by(uid)
        .into_iter()
        .filter(|((_, plural, _, _), p)| plural == "pods" && !deleting(p))
        .count();
    let status = json!({"observedGeneration": sts.pointer("/metadata/generation"),
        "replicas": pods, "readyReplicas": pods, "currentReplicas": pods,
        "updatedReplicas": pods, "availableReplicas": pods});
    if sts.get("status") != Some(&status) {
        if let Some(t) = c.target("apps", "statefulsets", ns, name, Some("status")) {
            let patch = json!({"status": status});
            let _ = c.patch(
                &t,
                "application/merge-patch+json",
                patch.to_string().as_bytes(),
                &options(),
            );
        }
    }
}

fn create(c: &Cluster, group: &str, plural: &str, ns: &str, body: Value) -> Option<Value> {
    let t = c.target(group, plural, ns, "", None)?;
    match c.create(&t, body, &options()) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::debug!(error = %e.message, "a controller could not create");
            None
        }
    }
}

/// What a kubelet would report for a started pod.
fn mark_running(c: &Cluster, pod: &Value) {
    let (ns, name) = (meta(pod, "namespace"), meta(pod, "name"));
    let Some(t) = c.target("", "pods", ns, name, Some("status")) else {
        return;
    };
    let now = super::store::now();
    let conditions: Vec<Value> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        .iter()
        .map(|c| json!({"type": c, "status": "True", "lastProbeTime": null, "lastTransitionTime": now}))
        .collect();
    let patch = json!({"status": {"phase": "Running", "conditions": conditions,
        "startTime": now, "podIP": "10.244.0.10", "hostIP": "10.0.0.10"}});
    let _ = c.patch(
        &t,
        "application/merge-patch+json",
        patch.to_string().as_bytes(),
        &options(),
    );
}
