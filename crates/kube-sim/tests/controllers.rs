//! The simulated controllers (what kube-controller-manager and the kubelet do in a real
//! cluster, which the differential suite's bare API servers lack): storage protection that
//! waits for the pods using a claim, namespace and CRD deletion that wait for the finalizers of
//! what they hold, the kubelet's part of graceful pod deletion, StatefulSet status, revisions
//! and rollouts, and a bound on the pods a StatefulSet asks for. Every wait is bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use kube_sim::Simulator;
use serde_json::{json, Value};

struct Sim {
    sim: Simulator,
    base: String,
    http: reqwest::Client,
}

async fn start(objects: Value) -> Sim {
    let sim = Simulator::start(&["north".to_string()], None, &BTreeMap::new())
        .await
        .unwrap();
    let objects: Vec<Value> = serde_json::from_value(objects).unwrap();
    sim.seed("north", &objects).expect("the objects seed");
    sim.settle().await;
    let base = sim.server("north").unwrap();
    Sim {
        sim,
        base,
        http: reqwest::Client::new(),
    }
}

impl Sim {
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(b) = body {
            let ct = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            req = req.header("Content-Type", ct).body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None).await
    }

    /// Polls `path` until `done` holds of its (code, body) (at most 30 s).
    async fn until(&self, path: &str, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
        for _ in 0..300 {
            let (code, body) = self.get(path).await;
            if done(code, &body) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (code, body) = self.get(path).await;
        panic!("{path} never got to {what}; last: {code} {body}");
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn claim(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "db"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
}

fn pod(name: &str, node: Option<&str>, claim: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "db"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    if let Some(c) = claim {
        p["spec"]["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": c}}]);
    }
    p
}

fn statefulset(replicas: u64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "pg", "namespace": "db",
            "annotations": {"kube-sim.io/pod-recreate-delay": "100ms"}},
        "spec": {"serviceName": "pg", "replicas": replicas,
            "selector": {"matchLabels": {"app": "pg"}},
            "template": {"metadata": {"labels": {"app": "pg"}},
                "spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}}}})
}

const PVC: &str = "/api/v1/namespaces/db/persistentvolumeclaims";
const PODS: &str = "/api/v1/namespaces/db/pods";
const STS: &str = "/apis/apps/v1/namespaces/db/statefulsets/pg";

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_in_use_by_a_pod_stays_terminating_until_the_pod_is_gone() {
    let s = start(json!([
        namespace("db"),
        claim("data"),
        claim("spare"),
        pod("user", None, Some("data"))
    ]))
    .await;
    let (code, _) = s.send("DELETE", &format!("{PVC}/data"), None).await;
    assert_eq!(code, 200);
    s.send("DELETE", &format!("{PVC}/spare"), None).await;
    // An unused claim goes; the used one stays, protected.
    s.until(&format!("{PVC}/spare"), "gone", |c, _| c == 404).await;
    s.sim.settle().await;
    let (code, kept) = s.get(&format!("{PVC}/data")).await;
    assert_eq!(code, 200, "{kept}");
    assert!(kept.pointer("/metadata/deletionTimestamp").is_some());
    assert_eq!(
        kept.pointer("/metadata/finalizers"),
        Some(&json!(["kubernetes.io/pvc-protection"]))
    );
    s.send("DELETE", &format!("{PODS}/user"), None).await;
    s.until(&format!("{PVC}/data"), "gone", |c, _| c == 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_bound_to_a_claim_stays_until_the_claim_is_gone() {
    let mut pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/tmp/pv-1"},
            "claimRef": {"namespace": "db", "name": "data"}}});
    pv["status"] = json!({"phase": "Bound"});
    let s = start(json!([namespace("db"), claim("data"), pv])).await;
    s.send("DELETE", "/api/v1/persistentvolumes/pv-1", None).await;
    s.sim.settle().await;
    let (code, kept) = s.get("/api/v1/persistentvolumes/pv-1").await;
    assert_eq!(code, 200, "{kept}");
    s.send("DELETE", &format!("{PVC}/data"), None).await;
    s.until("/api/v1/persistentvolumes/pv-1", "gone", |c, _| c == 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_stays_terminating_while_its_content_has_finalizers() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kept", "namespace": "db", "finalizers": ["example.com/keep"]}});
    let plain = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "plain", "namespace": "db"}});
    let s = start(json!([namespace("db"), cm, plain])).await;
    s.send("DELETE", "/api/v1/namespaces/db", None).await;
    let cm = "/api/v1/namespaces/db/configmaps/kept";
    s.until(cm, "marked for deletion", |c, b| {
        c == 200 && b.pointer("/metadata/deletionTimestamp").is_some()
    })
    .await;
    s.until("/api/v1/namespaces/db/configmaps/plain", "gone", |c, _| c == 404)
        .await;
    let ns = s
        .until("/api/v1/namespaces/db", "a condition naming the finalizer", |c, b| {
            c == 200
                && b.pointer("/status/conditions").is_some_and(|cs| {
                    cs.as_array().unwrap().iter().any(|c| {
                        c["type"] == "NamespaceFinalizersRemaining"
                            && c["message"]
                                == "Some content in the namespace has finalizers remaining: example.com/keep in 1 resource instances"
                    })
                })
        })
        .await;
    assert_eq!(ns.pointer("/status/phase"), Some(&json!("Terminating")));
    // Deleting it again is refused, as kube-apiserver refuses it (kubectl's second delete).
    let (code, again) = s.send("DELETE", "/api/v1/namespaces/db", None).await;
    assert_eq!(code, 409, "{again}");
    assert_eq!(
        again["message"],
        "Operation cannot be fulfilled on namespaces \"db\": The system is ensuring all content is removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."
    );
    s.send("PATCH", cm, Some(json!({"metadata": {"finalizers": null}})))
        .await;
    s.until("/api/v1/namespaces/db", "gone", |c, _| c == 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_stays_terminating_while_its_custom_resources_have_finalizers() {
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]}});
    let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w", "namespace": "db", "finalizers": ["example.com/keep"]}});
    let s = start(json!([namespace("db"), crd, widget])).await;
    let crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com";
    s.send("DELETE", crd_path, None).await;
    let w = "/apis/example.com/v1/namespaces/db/widgets/w";
    s.until(w, "marked for deletion", |c, b| {
        c == 200 && b.pointer("/metadata/deletionTimestamp").is_some()
    })
    .await;
    s.sim.settle().await;
    let (code, crd) = s.get(crd_path).await;
    assert_eq!(code, 200, "{crd}");
    // Still served, so that whoever owns the finalizer can remove it.
    let (code, body) = s
        .send("PATCH", w, Some(json!({"metadata": {"finalizers": null}})))
        .await;
    assert_eq!(code, 200, "{body}");
    s.until(crd_path, "gone", |c, _| c == 404).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_on_a_node_is_deleted_gracefully_then_removed_by_the_kubelet_stand_in() {
    let s = start(json!([namespace("db"), pod("web", Some("node-a"), None)])).await;
    let (code, marked) = s.send("DELETE", &format!("{PODS}/web"), None).await;
    assert_eq!(code, 200);
    assert_eq!(marked.pointer("/metadata/deletionGracePeriodSeconds"), Some(&json!(30)));
    assert!(marked.pointer("/metadata/deletionTimestamp").is_some());
    s.until(&format!("{PODS}/web"), "gone", |c, _| c == 404).await;
}

fn pods_of(list: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["metadata"]["uid"].as_str().unwrap().to_string(),
                p.pointer("/metadata/labels/controller-revision-hash")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn statefulset_status_counts_ready_pods_and_a_new_template_rolls_out() {
    let s = start(json!([namespace("db"), statefulset(2)])).await;
    let sts = s
        .until(STS, "two ready replicas", |_, b| {
            b.pointer("/status/readyReplicas") == Some(&json!(2))
        })
        .await;
    let first = sts["status"]["updateRevision"].as_str().unwrap().to_string();
    assert_eq!(sts["status"]["currentRevision"], json!(first));
    let (_, before) = s.get(PODS).await;
    let before = pods_of(&before);
    assert!(before.iter().all(|(_, _, r)| *r == first), "{before:?}");

    // A pod that is not Ready is not counted as ready.
    let (code, body) = s
        .send(
            "PATCH",
            &format!("{PODS}/pg-1/status"),
            Some(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    s.until(STS, "one ready replica", |_, b| {
        b.pointer("/status/readyReplicas") == Some(&json!(1)) && b.pointer("/status/replicas") == Some(&json!(2))
    })
    .await;
    s.send(
        "PATCH",
        &format!("{PODS}/pg-1/status"),
        Some(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await;

    // A changed template: a new revision, rolled out pod by pod.
    s.send(
        "PATCH",
        STS,
        Some(json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}})),
    )
    .await;
    let sts = s
        .until(STS, "the new revision rolled out", |_, b| {
            let st = &b["status"];
            st["updateRevision"] != json!(first)
                && st["currentRevision"] == st["updateRevision"]
                && st["updatedReplicas"] == json!(2)
                && st["readyReplicas"] == json!(2)
        })
        .await;
    let second = sts["status"]["updateRevision"].as_str().unwrap();
    let (_, after) = s.get(PODS).await;
    let after = pods_of(&after);
    assert_eq!(after.len(), 2, "{after:?}");
    for ((name, old_uid, _), (name2, new_uid, rev)) in before.iter().zip(&after) {
        assert_eq!(name, name2);
        assert_ne!(old_uid, new_uid, "{name} was not replaced");
        assert_eq!(rev, second);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_replica_count_is_capped_with_a_warning_event() {
    let run = async {
        let s = start(json!([namespace("db"), statefulset(1_000_000_000)])).await;
        s.until(PODS, "500 pods", |_, b| {
            b["items"].as_array().is_some_and(|i| i.len() == 500)
        })
        .await;
        let (code, event) = s.get("/api/v1/namespaces/db/events/pg.replicas-capped").await;
        assert_eq!(code, 200, "{event}");
        assert_eq!(event["reason"], json!("ReplicasCapped"));
        assert_eq!(
            event["message"],
            json!("spec.replicas is 1000000000: the simulator creates at most 500 pods per StatefulSet")
        );
    };
    // Not a timing assertion: without a bound the simulator never answers.
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the simulator answers a StatefulSet with a huge replica count");
}
