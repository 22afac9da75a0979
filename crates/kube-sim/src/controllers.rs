//! The controllers a cluster runs, in their simplest form (I/O edge: a task per cluster that
//! follows the store's events and writes through the API like any client). They are what a
//! rehearsal needs, not a kube-controller-manager:
//! - **garbage collection**: when an object goes, the objects it owns (every
//!   `ownerReference` gone) are deleted; `propagationPolicy: Foreground` deletes them before the
//!   owner (which waits with the `foregroundDeletion` finalizer), `Orphan` keeps them and drops
//!   their references (done by the delete itself);
//! - **StatefulSets**: pods `NAME-0` … `NAME-(replicas-1)` are created from the template, owned
//!   by the StatefulSet, bound to the node `kube-sim`, labelled with the template's revision
//!   (`controller-revision-hash: NAME-HASH`, a hash of the template), with a claim per volume
//!   claim template; a deleted pod comes back with a new uid after the delay in the annotation
//!   `kube-sim.io/pod-recreate-delay` (default `1s`); pods above the replica count go. At most
//!   [`MAX_PODS`] pods are made per StatefulSet (a Warning event `ReplicasCapped` says so when
//!   `spec.replicas` asks for more). No kubelet runs, so a new pod is at once `Running` and
//!   `Ready` (its status subresource can be written like any other, e.g. by a reactor). The
//!   status counts pods (`readyReplicas` and `availableReplicas` only those whose `Ready`
//!   condition is `True`), and names `currentRevision` and `updateRevision`; a changed template
//!   rolls out as `RollingUpdate` does: once every pod is there and ready, the highest ordinal
//!   (at or above `partition`) still at an old revision is deleted, and comes back from the new
//!   template (`OnDelete`: only pods deleted by someone else come back updated);
//! - **the kubelet's part of pod deletion**: a pod marked for graceful deletion (bound to a node,
//!   `deletionGracePeriodSeconds` > 0) is deleted with grace 0 after the delay in its annotation
//!   `kube-sim.io/termination-delay` (default `200ms`, never more than its grace period), as a
//!   kubelet does once the containers have stopped;
//! - **storage protection**: the `kubernetes.io/pvc-protection` finalizer of a claim being
//!   deleted is removed once no pod that is not `Succeeded` or `Failed` uses the claim; the
//!   `kubernetes.io/pv-protection` finalizer of a volume being deleted once it is not `Bound` to
//!   a claim that exists.

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
const TERMINATION_DELAY_ANNOTATION: &str = "kube-sim.io/termination-delay";
const DEFAULT_TERMINATION_DELAY: Duration = Duration::from_millis(200);
/// The node StatefulSet pods are bound to.
const NODE: &str = "kube-sim";
/// The most pods the simulator makes for one StatefulSet: a real cluster would create a huge
/// `spec.replicas` a few at a time for ever; the simulator stops here.
pub const MAX_PODS: u64 = 500;

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
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
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
        ("", "pods", EventType::Added | EventType::Modified) => {
            if deleting(obj) {
                finish_termination(c, obj);
            } else if let Some(owner) = statefulset_of(c, obj) {
                // Readiness changed, or a pod came back: the status, and the next rollout step.
                update_statefulset(c, &owner);
            }
            if pod_done(obj) {
                release_claims_of(c, meta(obj, "namespace"));
            }
        }
        ("", "pods", EventType::Deleted) => {
            release_claims_of(c, meta(obj, "namespace"));
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
        ("", "persistentvolumeclaims", EventType::Added | EventType::Modified) if deleting(obj) => {
            release_claim(c, obj);
        }
        ("", "persistentvolumeclaims", EventType::Deleted) => {
            for pv in c.objects_of("", "persistentvolumes", "") {
                if deleting(&pv) {
                    release_volume(c, &pv);
                }
            }
        }
        ("", "persistentvolumes", EventType::Added | EventType::Modified) if deleting(obj) => {
            release_volume(c, obj);
        }
        _ => {}
    }
    match ev.kind {
        EventType::Deleted => collect_dependents(c, obj),
        EventType::Modified if deleting(obj) && finalizers(obj).iter().any(|f| f == "foregroundDeletion") => {
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

/// Whether a pod has finished (its containers will not run again).
fn pod_done(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// What a kubelet does with a pod marked for graceful deletion: stop it, then delete it with
/// grace 0.
fn finish_termination(c: &Arc<Cluster>, pod: &Value) {
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if grace == 0 {
        return;
    }
    let delay = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(TERMINATION_DELAY_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(super::faults::parse_duration)
        .unwrap_or(DEFAULT_TERMINATION_DELAY)
        .min(Duration::from_secs(grace));
    let (c, ns, name, uid) = (
        c.clone(),
        meta(pod, "namespace").to_string(),
        meta(pod, "name").to_string(),
        meta(pod, "uid").to_string(),
    );
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Some(t) = c.target("", "pods", &ns, &name, None) {
            let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
            if let Err(e) = c.delete(&t, &options, &options_for_kubelet()) {
                tracing::debug!(error = %e.message, "the kubelet stand-in could not delete a pod");
            }
        }
    });
}

fn options_for_kubelet() -> WriteOptions {
    WriteOptions {
        field_manager: Some("kubelet".to_string()),
        ..Default::default()
    }
}

fn remove_finalizer(c: &Cluster, plural: &str, obj: &Value, finalizer: &str) {
    let all = finalizers(obj);
    if all.iter().any(|f| f == finalizer) {
        let left = all.into_iter().filter(|f| f != finalizer).collect();
        set_finalizers(c, "", plural, obj, left);
    }
}

/// The claims being deleted in a namespace that no pod uses any more lose their protection.
fn release_claims_of(c: &Cluster, ns: &str) {
    for pvc in c.objects_of("", "persistentvolumeclaims", ns) {
        if deleting(&pvc) {
            release_claim(c, &pvc);
        }
    }
}

fn release_claim(c: &Cluster, pvc: &Value) {
    let (ns, name) = (meta(pvc, "namespace"), meta(pvc, "name"));
    let used = c.objects_of("", "pods", ns).iter().any(|pod| {
        !pod_done(pod)
            && pod
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|v| v.pointer("/persistentVolumeClaim/claimName") == Some(&json!(name)))
    });
    if !used {
        remove_finalizer(c, "persistentvolumeclaims", pvc, "kubernetes.io/pvc-protection");
    }
}

fn release_volume(c: &Cluster, pv: &Value) {
    let bound = pv.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
    let claim = pv.pointer("/spec/claimRef").and_then(|r| {
        c.stored(
            "",
            "persistentvolumeclaims",
            r.get("namespace")?.as_str()?,
            r.get("name")?.as_str()?,
        )
    });
    if !(bound && claim.is_some()) {
        remove_finalizer(c, "persistentvolumes", pv, "kubernetes.io/pv-protection");
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
    let sts = c.stored("apps", "statefulsets", meta(pod, "namespace"), r["name"].as_str()?)?;
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

/// The revision of a StatefulSet's template: `NAME-HASH`.
fn revision(sts: &Value) -> String {
    use sha2::Digest as _;
    let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let digest = sha2::Sha256::digest(template.to_string().as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", meta(sts, "name"))
}

fn replicas(sts: &Value) -> u64 {
    sts.pointer("/spec/replicas").and_then(Value::as_u64).unwrap_or(1)
}

/// The pods a StatefulSet owns, by ordinal.
fn pods_of(c: &Cluster, sts: &Value) -> Vec<(u64, Value)> {
    let name = meta(sts, "name");
    let mut pods: Vec<(u64, Value)> = c
        .owned_by(meta(sts, "uid"))
        .into_iter()
        .filter(|((_, plural, _, _), _)| plural == "pods")
        .filter_map(|(_, p)| {
            let i = meta(&p, "name")
                .strip_prefix(&format!("{name}-"))
                .and_then(|i| i.parse::<u64>().ok())?;
            Some((i, p))
        })
        .collect();
    pods.sort_by_key(|(i, _)| *i);
    pods
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Creates the missing pods (and claims) of a StatefulSet, then updates it
/// ([`update_statefulset`]).
fn reconcile_statefulset(c: &Cluster, sts: &Value) {
    let (ns, name, uid) = (meta(sts, "namespace"), meta(sts, "name"), meta(sts, "uid"));
    let wanted = replicas(sts);
    if wanted > MAX_PODS {
        warn_capped(c, sts, wanted);
    }
    let replicas = wanted.min(MAX_PODS);
    let update_revision = revision(sts);
    let owner = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
        "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
    let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let claims: Vec<Value> = sts
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let existing: std::collections::BTreeSet<u64> = pods_of(c, sts).into_iter().map(|(i, _)| i).collect();
    for i in 0..replicas {
        let pod_name = format!("{name}-{i}");
        for claim in &claims {
            let claim_name = format!("{}-{pod_name}", meta(claim, "name"));
            if c.stored("", "persistentvolumeclaims", ns, &claim_name).is_none() {
                let body = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name, "namespace": ns,
                        "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({}))},
                    "spec": claim.get("spec").cloned().unwrap_or(json!({}))});
                create(c, "", "persistentvolumeclaims", ns, body);
            }
        }
        if existing.contains(&i) || c.stored("", "pods", ns, &pod_name).is_some() {
            continue;
        }
        let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
        labels["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
        labels["apps.kubernetes.io/pod-index"] = json!(i.to_string());
        labels["controller-revision-hash"] = json!(update_revision);
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        spec["hostname"] = json!(pod_name);
        spec["nodeName"] = json!(NODE);
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
    update_statefulset(c, sts);
}

/// Deletes the pods above the replica count, takes the next step of a rollout, and writes the
/// status.
fn update_statefulset(c: &Cluster, sts: &Value) {
    let (ns, name) = (meta(sts, "namespace"), meta(sts, "name"));
    let replicas = replicas(sts).min(MAX_PODS);
    let update_revision = revision(sts);
    let pods = pods_of(c, sts);
    let delete = |pod: &Value| {
        if let Some(t) = c.target("", "pods", ns, meta(pod, "name"), None) {
            let _ = c.delete(&t, &json!({}), &options());
        }
    };
    for (i, pod) in &pods {
        if *i >= replicas && !deleting(pod) {
            delete(pod);
        }
    }
    let live: Vec<&Value> = pods
        .iter()
        .filter(|(i, p)| *i < replicas && !deleting(p))
        .map(|(_, p)| p)
        .collect();
    let revision_of = |p: &Value| {
        p.pointer("/metadata/labels/controller-revision-hash")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let updated = live.iter().filter(|p| revision_of(p) == update_revision).count();
    let ready_count = live.iter().filter(|p| ready(p)).count();
    let rolling = sts.pointer("/spec/updateStrategy/type").and_then(Value::as_str) != Some("OnDelete");
    let settled = live.len() as u64 == replicas && ready_count == live.len() && pods.iter().all(|(_, p)| !deleting(p));
    if rolling && settled {
        let partition = sts
            .pointer("/spec/updateStrategy/rollingUpdate/partition")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if let Some((_, stale)) = pods
            .iter()
            .rev()
            .find(|(i, p)| *i >= partition && *i < replicas && revision_of(p) != update_revision)
        {
            delete(stale);
        }
    }
    let previous = sts
        .pointer("/status/currentRevision")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let current_revision = if previous.is_empty() || updated as u64 == replicas {
        update_revision.clone()
    } else {
        previous
    };
    let current = live.iter().filter(|p| revision_of(p) == current_revision).count();
    let mut status = json!({"observedGeneration": sts.pointer("/metadata/generation"),
        "replicas": live.len(), "readyReplicas": ready_count, "currentReplicas": current,
        "updatedReplicas": updated, "availableReplicas": ready_count,
        "currentRevision": current_revision, "updateRevision": update_revision,
        "collisionCount": 0});
    // Zero counts are left out, as Go's omitempty does (null removes them in a merge patch).
    for k in ["readyReplicas", "currentReplicas", "updatedReplicas"] {
        if status[k] == json!(0) {
            status[k] = Value::Null;
        }
    }
    let unchanged = status.as_object().is_some_and(|want| {
        want.iter().all(|(k, v)| {
            let have = sts.pointer(&format!("/status/{k}"));
            have == Some(v) || (v.is_null() && have.is_none())
        })
    });
    if !unchanged {
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

/// A Warning event on a StatefulSet whose replicas the simulator will not all make.
fn warn_capped(c: &Cluster, sts: &Value, wanted: u64) {
    let (ns, name) = (meta(sts, "namespace"), meta(sts, "name"));
    let event_name = format!("{name}.replicas-capped");
    if c.stored("", "events", ns, &event_name).is_some() {
        return;
    }
    let now = super::store::now();
    let body = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name, "namespace": ns},
        "involvedObject": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
            "namespace": ns, "uid": meta(sts, "uid")},
        "reason": "ReplicasCapped", "type": "Warning",
        "message": format!("spec.replicas is {wanted}: the simulator creates at most {MAX_PODS} pods per StatefulSet"),
        "source": {"component": "statefulset-controller"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1});
    create(c, "", "events", ns, body);
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
