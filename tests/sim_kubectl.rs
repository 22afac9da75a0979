//! kubectl (1.32, as installed) against the simulator: most tests serve the world in
//! `tests/data/sim/worlds/kubectl.yaml` (seeded through the ordinary client path, reactors
//! running) and drive it with the real `kubectl` binary; the reactor tests serve
//! `tests/data/worlds/operator.yaml`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use recoverd::sim::Session;

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sim").join(p)
}

struct Kubectl {
    _session: Session,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

async fn start() -> Kubectl {
    start_world("worlds/kubectl.yaml").await
}

/// Serves a world under `tests/data/sim/`.
async fn start_world(world: &str) -> Kubectl {
    let session = Session::start(&data(world), None, None)
        .await
        .expect("the simulator serves the world");
    Kubectl {
        kubeconfig: session.sandbox.kubeconfig.clone(),
        _session: session,
        cache: tempfile::tempdir().unwrap(),
    }
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(["--context", "north", "-n", "db"])
            .args(args);
        c
    }

    /// Runs kubectl off the async runtime, so the simulator keeps serving.
    async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
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

    /// Polls a jsonpath until `done` holds (at most 20 s).
    async fn until(&self, what: &str, path: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.run(&["get", what, "-o", &format!("jsonpath={path}")]).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what} {path}: last {text:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn jsonpath(&self, what: &str, path: &str) -> String {
        self.ok(&["get", what, "-o", &format!("jsonpath={path}")]).await
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_get_lists_objects_and_reads_fields_with_jsonpath() {
    let k = start().await;
    let list = k.ok(&["get", "configmaps"]).await;
    assert!(list.contains("settings"), "{list}");
    let all = k.ok(&["get", "clusters.postgresql.cnpg.io", "-A"]).await;
    assert!(all.contains("pg-north"), "{all}");
    assert_eq!(
        k.jsonpath("clusters/pg-north", "{.spec.replica.primary}").await,
        "pg-north"
    );
    assert_eq!(k.jsonpath("configmap/settings", "{.data.mode}").await, "primary");
    let missing = k.run(&["get", "configmap", "nope"]).await;
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("configmaps \"nope\" not found"),
        "{}",
        text(&missing)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_get_watch_prints_a_change_as_it_happens() {
    let k = start().await;
    let mut child = k
        .cmd(&[
            "get",
            "configmap",
            "settings",
            "-w",
            "-o",
            "jsonpath={.data.mode}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            seen.push(line.clone());
            if line == "replica" || Instant::now() > deadline {
                break;
            }
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"mode":"replica"}}"#,
    ])
    .await;
    let seen = tokio::time::timeout(Duration::from_secs(25), lines)
        .await
        .expect("the watch printed the change in time")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, ["primary", "replica"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_patch_merges_json_patches_and_strategic_merges() {
    let k = start().await;
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"a":"1"}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/data/a","value":"1"},{"op":"add","path":"/data/b","value":"2"}]"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type",
        "strategic",
        "-p",
        r#"{"data":{"c":"3","a":null}}"#,
    ])
    .await;
    assert_eq!(
        k.jsonpath("configmap/settings", "{.data}").await,
        r#"{"b":"2","c":"3","mode":"primary"}"#
    );
    let failed = k
        .run(&[
            "patch",
            "configmap",
            "settings",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/data/b","value":"nope"}]"#,
        ])
        .await;
    assert!(!failed.status.success(), "{}", text(&failed));
    let refused = k
        .run(&[
            "patch",
            "clusters",
            "pg-north",
            "--type",
            "strategic",
            "-p",
            r#"{"spec":{"instances":2}}"#,
        ])
        .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("application/strategic-merge-patch+json is not supported"),
        "{}",
        text(&refused)
    );
    k.ok(&[
        "patch",
        "clusters",
        "pg-north",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"instances":2}}"#,
    ])
    .await;
    assert_eq!(k.jsonpath("clusters/pg-north", "{.spec.instances}").await, "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_server_side_apply_reports_conflicts_unless_forced() {
    let k = start().await;
    let alice = data("kubectl/settings-alice.yaml");
    let bob = data("kubectl/settings-bob.yaml");
    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--field-manager",
            "alice",
            "-f",
            alice.to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("configmap/applied serverside-applied"), "{out}");
    let conflict = k
        .run(&[
            "apply",
            "--server-side",
            "--field-manager",
            "bob",
            "-f",
            bob.to_str().unwrap(),
        ])
        .await;
    assert!(!conflict.status.success());
    assert!(
        text(&conflict).contains(r#"Apply failed with 1 conflict: conflict with "alice": .data.owner"#),
        "{}",
        text(&conflict)
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager",
        "bob",
        "--force-conflicts",
        "-f",
        bob.to_str().unwrap(),
    ])
    .await;
    assert_eq!(k.jsonpath("configmap/applied", "{.data.owner}").await, "bob");
    let managers = k
        .jsonpath("configmap/applied", "{.metadata.managedFields[*].manager}")
        .await;
    assert_eq!(managers, "alice bob");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_wait_for_jsonpath_returns_once_the_operator_writes_the_field() {
    let k = start().await;
    k.ok(&[
        "patch",
        "clusters",
        "pg-north",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"replica":{"primary":"pg-south"}}}"#,
    ])
    .await;
    let out = k
        .ok(&[
            "wait",
            "clusters/pg-north",
            "--for=jsonpath={.status.demotionToken}=token-1",
            "--timeout=20s",
        ])
        .await;
    assert!(out.contains("condition met"), "{out}");
    let timeout = k
        .run(&[
            "wait",
            "clusters/pg-north",
            "--for=jsonpath={.status.demotionToken}=never",
            "--timeout=2s",
        ])
        .await;
    assert!(!timeout.status.success(), "{}", text(&timeout));
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_dry_run_server_changes_nothing() {
    let k = start().await;
    let file = data("kubectl/dry-run.yaml");
    let out = k.ok(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()]).await;
    assert!(out.contains("(server dry run)"), "{out}");
    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            file.to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("(server dry run)"), "{out}");
    k.ok(&["delete", "configmap", "settings", "--dry-run=server"]).await;
    k.ok(&[
        "patch",
        "clusters",
        "pg-north",
        "--type",
        "merge",
        "--dry-run=server",
        "-p",
        r#"{"spec":{"instances":9}}"#,
    ])
    .await;
    assert_eq!(k.jsonpath("configmap/settings", "{.data.mode}").await, "primary");
    assert_eq!(k.jsonpath("clusters/pg-north", "{.spec.instances}").await, "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_api_resources_lists_built_in_and_custom_resources() {
    let k = start().await;
    let out = k.ok(&["api-resources"]).await;
    let line = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("configmaps"), ["configmaps", "cm", "v1", "true", "ConfigMap"]);
    assert_eq!(
        line("clusters"),
        ["clusters", "postgresql.cnpg.io/v1", "true", "Cluster"]
    );
    assert_eq!(line("leases"), ["leases", "coordination.k8s.io/v1", "true", "Lease"]);
    let namespaced = k.ok(&["api-resources", "--namespaced=false", "-o", "name"]).await;
    assert!(namespaced.lines().any(|l| l == "namespaces"), "{namespaced}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_create_sends_protobuf_the_simulator_reads() {
    let k = start().await;
    k.ok(&["create", "namespace", "team-a"]).await;
    k.ok(&["create", "configmap", "made", "--from-literal=a=1"]).await;
    k.ok(&["create", "secret", "generic", "pw", "--from-literal=p=q"]).await;
    assert_eq!(
        k.ok(&["get", "namespace", "team-a", "-o", "jsonpath={.status.phase}"])
            .await,
        "Active"
    );
    assert_eq!(k.jsonpath("configmap/made", "{.data.a}").await, "1");
    assert_eq!(k.jsonpath("secret/pw", "{.data.p}").await, "cQ==");
    assert_eq!(
        k.jsonpath("configmap/made", "{.metadata.managedFields[0].manager}")
            .await,
        "kubectl-create"
    );
}

// Reactors playing an operator (`tests/data/worlds/operator.yaml`): several fields at once, a
// generated token, a sequence of states, a value copied into another object, an object created,
// a deleted object re-created with a new uid.

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_generates_a_token_moves_through_phases_and_hands_the_token_over() {
    let w = start_world("../worlds/operator.yaml").await;
    w.ok(&[
        "patch",
        "clusters.postgresql.cnpg.io",
        "pg-north",
        "--type=merge",
        "-p",
        r#"{"spec":{"replica":{"primary":"pg-south"}}}"#,
    ])
    .await;
    w.until("clusters.postgresql.cnpg.io/pg-north", "{.status.phase}", |p| {
        p == "Demoted"
    })
    .await;
    let token = w
        .ok(&[
            "get",
            "clusters.postgresql.cnpg.io",
            "pg-north",
            "-o",
            "jsonpath={.status.demotionToken}",
        ])
        .await;
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&token)
        .expect("the token is base64");
    assert!(String::from_utf8_lossy(&decoded).starts_with("{\"token\":"), "{token}");
    let handed = w.until("configmap/handoff", "{.data.token}", |t| !t.is_empty()).await;
    assert_eq!(handed, token, "the ConfigMap carries the generated token");
    w.until("configmap/demoted", "{.data.by}", |b| b == "operator").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_managed_object_is_recreated_with_a_new_uid() {
    let w = start_world("../worlds/operator.yaml").await;
    let old = w
        .ok(&["get", "configmap", "pooler-config", "-o", "jsonpath={.metadata.uid}"])
        .await;
    w.ok(&["delete", "configmap", "pooler-config"]).await;
    let new = w
        .until("configmap/pooler-config", "{.metadata.uid}", |u| {
            !u.is_empty() && u != old
        })
        .await;
    assert_ne!(new, old);
    let data = w
        .ok(&[
            "get",
            "configmap",
            "pooler-config",
            "-o",
            "jsonpath={.data.pgbouncer\\.ini}",
        ])
        .await;
    assert_eq!(data, "[databases]\n");
}
