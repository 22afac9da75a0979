//! kubectl (Debian's client) against the simulator for the kinds runbooks touch: StatefulSets
//! and their pods (re-created with a new uid when deleted), claims and volumes, RBAC, leases and
//! events; `get`, `delete` with finalizers and cascades, and `wait --for=delete`. Every wait is
//! bounded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kube_sim::Simulator;
use serde_json::Value;

struct Kubectl {
    _sim: Simulator,
    dir: tempfile::TempDir,
}

async fn start() -> Kubectl {
    let sim = Simulator::start(&["north".to_string()], None, &BTreeMap::new())
        .await
        .unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/kinds.yaml");
    let objects: Vec<Value> = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    sim.seed("north", &objects).expect("the kinds seed");
    let dir = tempfile::tempdir().unwrap();
    sim.write_kubeconfig(&dir.path().join("kubeconfig")).unwrap();
    let k = Kubectl { _sim: sim, dir };
    // The StatefulSet's pod is the controller's to create, a moment after seeding: the tests
    // start once it is there.
    k.until("pod/cache-0", "{.metadata.name}", |name| name == "cache-0")
        .await;
    k
}

impl Kubectl {
    /// Runs kubectl off the async runtime, so the simulator keeps serving.
    async fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(["-n", "db"])
            .args(args);
        tokio::task::spawn_blocking(move || c.output().expect("kubectl runs"))
            .await
            .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `kubectl get … -o jsonpath` until `done` holds (at most 20 s).
    async fn until(&self, what: &str, path: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.run(&["get", what, "-o", &format!("jsonpath={path}")]).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what} {path} never got there; last: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_gets_statefulsets_pods_claims_volumes_rbac_leases_and_events() {
    let k = start().await;
    let pods = k.ok(&["get", "pods", "-o", "name"]).await;
    assert_eq!(pods, "pod/cache-0\npod/pg-0\npod/pg-1\n");
    let ready = k
        .ok(&[
            "get",
            "pod",
            "pg-1",
            "-o",
            "jsonpath={.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .await;
    assert_eq!(ready, "Running True");
    let sts = k.ok(&["get", "statefulsets"]).await;
    assert!(sts.contains("pg ") && sts.contains("2/2"), "{sts}");
    let claims = k.ok(&["get", "pvc", "-o", "name"]).await;
    assert_eq!(
        claims,
        "persistentvolumeclaim/data-pg-0\npersistentvolumeclaim/data-pg-1\npersistentvolumeclaim/scratch\n"
    );
    assert_eq!(k.ok(&["get", "pv", "-o", "name"]).await, "persistentvolume/pv-1\n");
    for (what, name) in [
        ("roles", "role.rbac.authorization.k8s.io/reader\n"),
        ("rolebindings", "rolebinding.rbac.authorization.k8s.io/reader\n"),
        ("clusterrole", "clusterrole.rbac.authorization.k8s.io/pod-reader\n"),
        (
            "clusterrolebinding",
            "clusterrolebinding.rbac.authorization.k8s.io/pod-reader\n",
        ),
        ("leases", "lease.coordination.k8s.io/pg-leader\n"),
        ("events", "event/pg.failover\n"),
    ] {
        assert_eq!(k.ok(&["get", what, "-o", "name"]).await, name, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_statefulset_pod_comes_back_with_a_new_uid() {
    let k = start().await;
    let old = k.ok(&["get", "pod", "pg-0", "-o", "jsonpath={.metadata.uid}"]).await;
    k.ok(&["delete", "pod", "pg-0", "--wait=false"]).await;
    let new = k
        .until("pod/pg-0", "{.metadata.uid}", |uid| !uid.is_empty() && uid != old)
        .await;
    assert_ne!(new, old);
    let owner = k
        .ok(&[
            "get",
            "pod",
            "pg-0",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].name}",
        ])
        .await;
    assert_eq!(owner, "pg");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_delete_of_a_pod_waits_out_its_grace_period_and_returns() {
    let k = start().await;
    let old = k.ok(&["get", "pod", "pg-1", "-o", "jsonpath={.metadata.uid}"]).await;
    // kubectl waits for the pod to be gone: marked with a grace period, then removed by the
    // kubelet stand-in (the StatefulSet then makes a new one).
    let out = k.ok(&["delete", "pod", "pg-1", "--timeout=20s"]).await;
    assert!(out.contains("\"pg-1\" deleted"), "{out}");
    let new = k
        .until("pod/pg-1", "{.metadata.uid}", |uid| !uid.is_empty() && uid != old)
        .await;
    assert_ne!(new, old);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_wait_for_delete_returns_once_the_last_finalizer_is_removed() {
    let k = start().await;
    k.ok(&["delete", "pvc", "scratch", "--wait=false"]).await;
    // The claim stays, Terminating, while the finalizer is there.
    let ts = k
        .ok(&["get", "pvc", "scratch", "-o", "jsonpath={.metadata.deletionTimestamp}"])
        .await;
    assert!(!ts.is_empty());
    let timed_out = k.run(&["wait", "--for=delete", "pvc/scratch", "--timeout=1s"]).await;
    assert!(!timed_out.status.success());
    // Being deleted, it may lose finalizers but not gain one (the real server's 422).
    let gained = k
        .run(&[
            "patch",
            "pvc",
            "scratch",
            "--type=json",
            "-p",
            "[{\"op\":\"add\",\"path\":\"/metadata/finalizers/-\",\"value\":\"example.com/new\"}]",
        ])
        .await;
    assert!(!gained.status.success());
    assert!(
        String::from_utf8_lossy(&gained.stderr)
            .contains("no new finalizers can be added if the object is being deleted"),
        "{}",
        String::from_utf8_lossy(&gained.stderr)
    );
    k.ok(&[
        "patch",
        "pvc",
        "scratch",
        "--type=merge",
        "-p",
        "{\"metadata\":{\"finalizers\":null}}",
    ])
    .await;
    k.ok(&["wait", "--for=delete", "pvc/scratch", "--timeout=20s"]).await;
    let gone = k.run(&["get", "pvc", "scratch"]).await;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_statefulset_cascades_to_its_pods_unless_orphaned() {
    let k = start().await;
    k.ok(&["delete", "statefulset", "pg", "--cascade=foreground", "--timeout=20s"])
        .await;
    k.ok(&["wait", "--for=delete", "pod/pg-0", "pod/pg-1", "--timeout=20s"])
        .await;
    let sts = k.run(&["get", "statefulset", "pg"]).await;
    assert!(!sts.status.success());

    k.ok(&["delete", "statefulset", "cache", "--cascade=orphan"]).await;
    let owners = k
        .ok(&["get", "pod", "cache-0", "-o", "jsonpath={.metadata.ownerReferences}"])
        .await;
    assert_eq!(owners, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_exec_runs_the_commands_a_pod_declares_and_no_others() {
    let k = start().await;
    let pong = k.run(&["exec", "cache-0", "--", "redis-cli", "ping"]).await;
    assert!(pong.status.success());
    assert_eq!(
        String::from_utf8_lossy(&pong.stdout),
        "PONG\n",
        "kubectl's stderr: {}",
        String::from_utf8_lossy(&pong.stderr)
    );

    let refused = k.run(&["exec", "cache-0", "--", "redis-cli", "shutdown"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "ERR shutdown refused\ncommand terminated with exit code 2\n"
    );

    let missing = k.run(&["exec", "cache-0", "--", "rm", "-rf", "/"]).await;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("exec: \"rm\": executable file not found in $PATH"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_into_a_container_the_pod_lacks_is_refused_as_the_real_server_refuses_it() {
    let k = start().await;
    let wrong = k
        .run(&["exec", "cache-0", "-c", "nope", "--", "redis-cli", "ping"])
        .await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("container nope is not valid for pod cache-0"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubes_exec_client_reads_stdout_and_the_exit_status() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, AttachParams};
    use tokio::io::AsyncReadExt as _;

    let k = start().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(k.dir.path().join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "db");
    let params = AttachParams::default().stderr(true);
    let mut proc = pods.exec("cache-0", ["redis-cli", "ping"], &params).await.unwrap();
    let mut out = String::new();
    proc.stdout().unwrap().read_to_string(&mut out).await.unwrap();
    let status = proc.take_status().unwrap().await.unwrap();
    assert_eq!(out, "PONG\n");
    assert_eq!(status.status.as_deref(), Some("Success"));

    let mut failed = pods.exec("cache-0", ["redis-cli", "shutdown"], &params).await.unwrap();
    let status = failed.take_status().unwrap().await.unwrap();
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_timeout_too_large_for_a_deadline_is_answered_not_a_panic() {
    let k = start().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(k.dir.path().join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let url = format!(
        "{}api/v1/namespaces/db/configmaps?watch=1&timeoutSeconds=9223372036854775807",
        config.cluster_url
    );
    let resp = reqwest::get(&url).await.expect("the watch is answered");
    assert_eq!(resp.status(), 200);
    // Past int64, as the API server's parameter decoder says.
    let resp = reqwest::get(url.replace("9223372036854775807", "18446744073709551615"))
        .await
        .expect("the watch is answered");
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["message"],
        "strconv.ParseInt: parsing \"18446744073709551615\": value out of range"
    );
}
