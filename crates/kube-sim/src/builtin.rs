//! The built-in resource types the simulator serves (pure, no I/O): their names and verbs as
//! discovery shows them, their field types (from the real kube-apiserver v1.20's OpenAPI
//! definitions in `builtin/openapi.json`, made by `tests/kube/extract-openapi.py`), and what the
//! real API server does to them on the way in: defaults set while decoding (owned by the
//! writer in `managedFields`), fields its strategies set (owned by no one), the zero-valued
//! fields Go always serializes, and validation.
//!
//! Everything here is about one object at a time; storage and HTTP live elsewhere.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::status::{Cause, StatusError};
use super::typed::{Definitions, Ty};

/// One built-in resource.
#[derive(Debug)]
pub struct Builtin {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Subresources the simulator serves, with their discovery verbs.
    pub subresources: &'static [(&'static str, &'static [&'static str])],
    /// The OpenAPI definition of the kind.
    pub definition: &'static str,
    /// Whether `metadata.generation` is kept.
    pub generation: bool,
    /// The version objects are stored in (what `storageVersionHash` is computed from).
    pub storage_version: &'static str,
}

const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NO_COLLECTION: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];
const STATUS: &[&str] = &["get", "patch", "update"];

pub const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.core.v1.ConfigMap",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.core.v1.Event",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        verbs: NO_COLLECTION,
        subresources: &[("finalize", &["update"]), ("status", STATUS)],
        definition: "io.k8s.api.core.v1.Namespace",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        namespaced: true,
        short_names: &["pvc"],
        categories: &[],
        verbs: ALL,
        subresources: &[("status", STATUS)],
        definition: "io.k8s.api.core.v1.PersistentVolumeClaim",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "persistentvolumes",
        kind: "PersistentVolume",
        namespaced: false,
        short_names: &["pv"],
        categories: &[],
        verbs: ALL,
        subresources: &[("status", STATUS)],
        definition: "io.k8s.api.core.v1.PersistentVolume",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        verbs: ALL,
        subresources: &[("status", STATUS)],
        definition: "io.k8s.api.core.v1.Pod",
        storage_version: "v1",
        generation: true,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.core.v1.Secret",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.core.v1.ServiceAccount",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        verbs: ALL,
        subresources: &[("status", STATUS)],
        definition: "io.k8s.api.core.v1.Service",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "deployments",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        verbs: ALL,
        subresources: &[("status", STATUS)],
        definition: "io.k8s.api.apps.v1.Deployment",
        storage_version: "v1",
        generation: true,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        kind: "StatefulSet",
        namespaced: true,
        short_names: &["sts"],
        categories: &["all"],
        verbs: ALL,
        subresources: &[("status", STATUS)],
        definition: "io.k8s.api.apps.v1.StatefulSet",
        storage_version: "v1",
        generation: true,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short_names: &[],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.rbac.v1.ClusterRoleBinding",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        kind: "ClusterRole",
        namespaced: false,
        short_names: &[],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.rbac.v1.ClusterRole",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        kind: "RoleBinding",
        namespaced: true,
        short_names: &[],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.rbac.v1.RoleBinding",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        kind: "Role",
        namespaced: true,
        short_names: &[],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.rbac.v1.Role",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        verbs: ALL,
        subresources: &[],
        definition: "io.k8s.api.coordination.v1.Lease",
        storage_version: "v1",
        generation: false,
    },
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        kind: "CustomResourceDefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        verbs: ALL,
        subresources: &[("status", STATUS)],
        definition: "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
        storage_version: "v1beta1",
        generation: true,
    },
];

/// The OpenAPI v2 definitions of the built-in types (descriptions dropped).
pub fn openapi_definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let doc: Value =
            serde_json::from_str(include_str!("builtin/openapi.json")).expect("builtin/openapi.json is valid JSON");
        doc["definitions"].as_object().cloned().unwrap_or_default()
    })
}

/// The built-in definitions as types.
fn definitions() -> &'static Definitions {
    static DEFS: OnceLock<Definitions> = OnceLock::new();
    DEFS.get_or_init(|| Definitions::new(openapi_definitions().clone()))
}

/// The type of a named built-in definition; [`Ty::Untyped`] for an unknown name.
pub fn definition(name: &str) -> Ty {
    definitions().get(name)
}

/// A reference to a named built-in definition (e.g. `ObjectMeta` inside a CRD's type).
pub fn named(name: &str) -> Ty {
    definitions().named(name)
}

/// The object Go's zero value of the kind serializes to: what a create is compared against
/// when `managedFields` are computed, and the fields every stored object carries.
pub fn zero(kind: &str) -> Value {
    let meta = json!({"creationTimestamp": null});
    match kind {
        "Namespace" => json!({"metadata": meta, "spec": {}, "status": {}}),
        "Service" => json!({"metadata": meta, "spec": {}, "status": {"loadBalancer": {}}}),
        "Deployment" => json!({"metadata": meta, "spec": {"selector": null,
            "template": {"metadata": {}, "spec": {"containers": null}},
            "strategy": {}}, "status": {}}),
        "Pod" => json!({"metadata": meta, "spec": {"containers": null}, "status": {}}),
        "PersistentVolumeClaim" => {
            json!({"metadata": meta, "spec": {"resources": {}}, "status": {}})
        }
        "PersistentVolume" => json!({"metadata": meta, "spec": {}, "status": {}}),
        "StatefulSet" => json!({"metadata": meta, "spec": {"selector": null,
            "template": {"metadata": {}, "spec": {"containers": null}},
            "updateStrategy": {}}, "status": {"replicas": 0, "availableReplicas": 0}}),
        "Role" | "ClusterRole" => json!({"metadata": meta, "rules": null}),
        "RoleBinding" | "ClusterRoleBinding" => {
            json!({"metadata": meta, "roleRef": {"apiGroup": "", "kind": "", "name": ""}})
        }
        "Lease" => json!({"metadata": meta, "spec": {}}),
        "CustomResourceDefinition" => json!({"metadata": meta, "spec": {"group": "",
            "names": {"plural": "", "kind": ""}, "scope": "", "versions": null},
            "status": {"conditions": null, "acceptedNames": {"plural": "", "kind": ""},
            "storedVersions": null}}),
        "Event" => json!({"metadata": meta, "involvedObject": {}, "reportingComponent": "",
            "reportingInstance": "", "source": {}, "firstTimestamp": null, "lastTimestamp": null,
            "eventTime": null}),
        _ => json!({"metadata": meta}),
    }
}

/// Fills in the zero-valued fields of [`zero`] that the object lacks.
pub fn fill_zero(kind: &str, obj: &mut Value) {
    fn fill(dst: &mut Value, zero: &Value) {
        let (Some(d), Some(z)) = (dst.as_object_mut(), zero.as_object()) else {
            return;
        };
        for (k, zv) in z {
            match d.get_mut(k) {
                Some(dv) => fill(dv, zv),
                None => {
                    d.insert(k.clone(), zv.clone());
                }
            }
        }
    }
    let mut z = zero(kind);
    if let Some(m) = z.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("creationTimestamp");
    }
    fill(obj, &z);
    if matches!(kind, "Deployment" | "StatefulSet" | "Pod") {
        let spec = if kind == "Pod" {
            obj.pointer_mut("/spec")
        } else {
            obj.pointer_mut("/spec/template/spec")
        };
        if let Some(spec) = spec {
            for list in ["containers", "initContainers"] {
                for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(c) = c.as_object_mut() {
                        c.entry("resources").or_insert_with(|| json!({}));
                    }
                }
            }
        }
    }
}

/// What a round trip through the Go type does to a built-in object: nulls and empty lists
/// and maps of `omitempty` fields disappear, and the zero values Go always writes appear.
pub fn go_roundtrip(kind: &str, ty: &Ty, obj: &mut Value) {
    fn go(ty: &Ty, v: &mut Value) {
        match (ty.resolve(), v) {
            (Ty::Map(m), Value::Object(o)) => {
                o.retain(|k, child| {
                    let is_go_map =
                        |t: &Ty| matches!(t.resolve(), Ty::Map(mm) if mm.fields.is_empty() && mm.elem.is_some());
                    let field_ty = m.fields.get(k);
                    match child {
                        Value::Null => m.fields.is_empty(),
                        // `containers` is the one list here without omitempty.
                        Value::Array(a) => !a.is_empty() || k == "containers",
                        Value::Object(c) if c.is_empty() => !field_ty.is_some_and(is_go_map),
                        _ => true,
                    }
                });
                for (k, child) in o.iter_mut() {
                    if let Some(t) = m.fields.get(k).or(m.elem.as_ref()) {
                        go(t, child);
                    }
                }
            }
            (Ty::List(l), Value::Array(items)) => {
                for item in items {
                    go(&l.elem, item);
                }
            }
            _ => {}
        }
    }
    go(ty, obj);
    fill_zero(kind, obj);
}

/// A CRD's `names` as the API server completes them: `singular` and `listKind` from `kind`.
pub(crate) fn default_crd_names(names: &mut Map<String, Value>) {
    let kind = names.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    set_default(names, "listKind", json!(format!("{kind}List")));
    set_default(names, "singular", json!(kind.to_lowercase()));
}

/// The names of a CRD's versions marked `storage: true`.
pub(crate) fn crd_storage_versions(crd: &Value) -> Vec<Value> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect()
}

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), value);
    }
}

fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "securityContext", json!({}));
    set_default(s, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        for c in s.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let tag = image.rsplit('/').next().unwrap_or("");
            let policy = if image.contains('@') || (tag.contains(':') && !tag.ends_with(":latest")) {
                "IfNotPresent"
            } else {
                "Always"
            };
            set_default(c, "imagePullPolicy", json!(policy));
            for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(p) = p.as_object_mut() {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Defaults the API server sets while decoding a request (they end up owned by the writer).
pub fn default_on_decode(kind: &str, obj: &mut Value) {
    match kind {
        "Namespace" => {
            // Since v1.21 every namespace carries its name as a label.
            let name = obj.pointer("/metadata/name").cloned();
            if let (Some(name), Some(meta)) = (name, obj.get_mut("metadata").and_then(Value::as_object_mut)) {
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if labels.is_null() {
                    *labels = json!({});
                }
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), name);
                }
            }
        }
        "Secret" => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "type", json!("Opaque"));
                // stringData is write-only: it is merged into data while decoding.
                if let Some(Value::Object(sd)) = o.remove("stringData") {
                    let data = o.entry("data").or_insert_with(|| json!({}));
                    if data.is_null() {
                        *data = json!({});
                    }
                    if let Some(d) = data.as_object_mut() {
                        for (k, v) in sd {
                            let text = v.as_str().unwrap_or_default().to_string();
                            d.insert(k, json!(base64_encode(text.as_bytes())));
                        }
                    }
                }
            }
        }
        "Service" => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                let ty = spec.get("type").and_then(Value::as_str).unwrap_or("").to_string();
                if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
                    set_default(spec, "externalTrafficPolicy", json!("Cluster"));
                }
                if ty == "LoadBalancer" {
                    set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
                }
                if ty != "ExternalName" {
                    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                for p in spec
                    .get_mut("ports")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = p.as_object_mut() {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
            for ingress in obj
                .pointer_mut("/status/loadBalancer/ingress")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(i) = ingress.as_object_mut().filter(|i| i.contains_key("ip")) {
                    set_default(i, "ipMode", json!("VIP"));
                }
            }
        }
        "Deployment" => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
                if let Some(st) = strategy.as_object_mut() {
                    set_default(st, "type", json!("RollingUpdate"));
                    if st.get("type") == Some(&json!("RollingUpdate")) {
                        let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set_default(ru, "maxUnavailable", json!("25%"));
                            set_default(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    default_pod_spec(ps);
                }
            }
        }
        "CustomResourceDefinition" => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                let conv = spec.entry("conversion").or_insert_with(|| json!({}));
                if let Some(c) = conv.as_object_mut() {
                    set_default(c, "strategy", json!("None"));
                }
                if let Some(n) = spec.get_mut("names").and_then(Value::as_object_mut) {
                    default_crd_names(n);
                }
            }
            let storage = crd_storage_versions(obj);
            if let Some(o) = obj.as_object_mut() {
                let status = o.entry("status").or_insert_with(|| json!({}));
                if let Some(st) = status.as_object_mut() {
                    if st.get("storedVersions").is_none_or(Value::is_null) && !storage.is_empty() {
                        st.insert("storedVersions".into(), Value::Array(storage));
                    }
                }
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        "PersistentVolume" => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                set_default(spec, "volumeMode", json!("Filesystem"));
                if let Some(hp) = spec.get_mut("hostPath").and_then(Value::as_object_mut) {
                    set_default(hp, "type", json!(""));
                }
            }
        }
        "StatefulSet" => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
                if let Some(st) = strategy.as_object_mut() {
                    set_default(st, "type", json!("RollingUpdate"));
                    if st.get("type") == Some(&json!("RollingUpdate")) {
                        let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set_default(ru, "partition", json!(0));
                        }
                    }
                }
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                for t in spec
                    .get_mut("volumeClaimTemplates")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(ts) = t.get_mut("spec").and_then(Value::as_object_mut) {
                        set_default(ts, "volumeMode", json!("Filesystem"));
                    }
                    if let Some(t) = t.as_object_mut() {
                        set_default(t, "apiVersion", json!("v1"));
                        set_default(t, "kind", json!("PersistentVolumeClaim"));
                        set_default(t, "status", json!({"phase": "Pending"}));
                    }
                }
                if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    default_pod_spec(ps);
                }
            }
        }
        "Pod" => {
            if let Some(ps) = obj.get_mut("spec") {
                default_pod_spec(ps);
                if let Some(s) = ps.as_object_mut() {
                    set_default(s, "enableServiceLinks", json!(true));
                    set_default(s, "preemptionPolicy", json!("PreemptLowerPriority"));
                    set_default(s, "priority", json!(0));
                }
            }
        }
        _ => {}
    }
}

/// A pod's quality of service class: `Guaranteed` when every container limits CPU and memory
/// and requests what it limits, `BestEffort` when none requests or limits anything, else
/// `Burstable`.
fn pod_qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(|m| m.is_empty());
    if containers
        .iter()
        .all(|c| empty(c.pointer("/resources/requests")) && empty(c.pointer("/resources/limits")))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = c.pointer(&format!("/resources/limits/{r}"));
            let request = c.pointer(&format!("/resources/requests/{r}")).or(limit);
            limit.is_some() && request == limit
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// What the API server's create strategy sets (owned by no one): a namespace's finalizer,
/// cleared status.
pub fn prepare_for_create(kind: &str, obj: &mut Value, now: &str) {
    match kind {
        "Namespace" => {
            if let Some(o) = obj.as_object_mut() {
                let spec = o.entry("spec").or_insert_with(|| json!({}));
                if let Some(s) = spec.as_object_mut() {
                    if s.get("finalizers")
                        .is_none_or(|f| f.as_array().is_none_or(Vec::is_empty))
                    {
                        s.insert("finalizers".into(), json!(["kubernetes"]));
                    }
                }
                let status = o.entry("status").or_insert_with(|| json!({}));
                if let Some(s) = status.as_object_mut() {
                    s.insert("phase".into(), json!("Active"));
                }
            }
        }
        "Service" => {
            if let Some(o) = obj.as_object_mut() {
                o.insert("status".into(), json!({"loadBalancer": {}}));
                if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                    if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
                        set_default(spec, "ipFamilies", json!(["IPv4"]));
                        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                    }
                }
            }
        }
        "Deployment" => {
            if let Some(o) = obj.as_object_mut() {
                o.insert("status".into(), json!({}));
            }
        }
        "Pod" => {
            let qos = pod_qos_class(obj);
            if let Some(o) = obj.as_object_mut() {
                o.insert("status".into(), json!({"phase": "Pending", "qosClass": qos}));
            }
            // The DefaultTolerationSeconds admission plugin.
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                let list = spec.entry("tolerations").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
                        let tolerated = list.iter().any(|t| {
                            (t["key"] == key || t.get("key").is_none())
                                && t.get("effect").is_none_or(|e| e == "NoExecute")
                        });
                        if !tolerated {
                            list.push(json!({"key": key, "operator": "Exists",
                                "effect": "NoExecute", "tolerationSeconds": 300}));
                        }
                    }
                }
            }
        }
        "StatefulSet" => {
            if let Some(o) = obj.as_object_mut() {
                o.insert("status".into(), json!({"replicas": 0, "availableReplicas": 0}));
            }
        }
        "PersistentVolumeClaim" | "PersistentVolume" => {
            // The storage-object-in-use protection admission plugin's finalizer.
            let protection = if kind == "PersistentVolume" {
                "kubernetes.io/pv-protection"
            } else {
                "kubernetes.io/pvc-protection"
            };
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                let f = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(f) = f.as_array_mut() {
                    if !f.iter().any(|x| x == protection) {
                        f.push(json!(protection));
                    }
                }
            }
            if let Some(o) = obj.as_object_mut() {
                let mut status = json!({"phase": "Pending"});
                if kind == "PersistentVolume" {
                    status["lastPhaseTransitionTime"] = json!(now);
                }
                o.insert("status".into(), status);
            }
        }
        _ => {}
    }
}

pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[b.len() - 1] != b'-'
}

pub fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// Checks a name as the kind requires: most names are RFC 1123 subdomains, namespaces and
/// services RFC 1123 labels (services were DNS-1035 labels before v1.34).
pub fn validate_name(kind: &str, name: &str) -> Option<Cause> {
    let (ok, msg) = match kind {
        "Namespace" | "Service" => (is_label(name), DNS1123_LABEL_MSG),
        _ => (is_subdomain(name), DNS1123_SUBDOMAIN_MSG),
    };
    (!ok).then(|| Cause::invalid("metadata.name", &Value::String(name.into()), msg))
}

fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        && k != "."
        && k != ".."
}

const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// The API server's validation of a built-in object, for the rules the simulator knows.
pub fn validate(b: &Builtin, obj: &Value) -> Result<(), StatusError> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let mut causes = Vec::new();
    if let Some(c) = validate_name(b.kind, name) {
        causes.push(c);
    }
    if matches!(b.kind, "ConfigMap" | "Secret") {
        for field in ["data", "binaryData"] {
            for k in obj
                .get(field)
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|m| m.keys())
            {
                if !is_config_key(k) {
                    causes.push(Cause::invalid(
                        &format!("{field}[{k}]"),
                        &Value::String(k.clone()),
                        CONFIG_KEY_MSG,
                    ));
                }
            }
        }
    }
    if b.kind == "Deployment" {
        if obj.pointer("/spec/selector").is_none_or(Value::is_null) {
            causes.push(Cause::required("spec.selector", ""));
        }
        if obj
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            causes.push(Cause::required("spec.template.spec.containers", ""));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(StatusError::invalid(b.group, b.kind, name, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typed::field_set;

    #[test]
    fn every_builtin_kind_has_its_openapi_definition() {
        for b in BUILTINS {
            assert!(openapi_definitions().contains_key(b.definition), "{}", b.definition);
        }
    }

    #[test]
    fn container_ports_are_keyed_by_port_and_protocol_as_in_managed_fields() {
        let ty = definition("io.k8s.api.core.v1.Container");
        let c = json!({"name": "c", "ports": [{"containerPort": 80, "protocol": "TCP"}]});
        assert_eq!(
            field_set(&ty, &c).to_fields_v1(),
            json!({"f:name": {}, "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}, "f:protocol": {}}}})
        );
    }

    #[test]
    fn names_are_checked_as_the_kind_requires() {
        assert!(validate_name("ConfigMap", "a.b-c").is_none());
        assert!(validate_name("ConfigMap", "Bad_Name").is_some());
        assert!(validate_name("Namespace", "a.b").is_some());
        // Since v1.34 a service name is an RFC 1123 label: it may start with a digit.
        assert!(validate_name("Service", "1abc").is_none());
        assert!(validate_name("Service", "a.b").is_some());
    }
}
