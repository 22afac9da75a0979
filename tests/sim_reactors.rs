//! Reactors playing an operator on the simulator (`tests/data/worlds/operator.yaml`): several
//! fields at once, a generated token, a sequence of states, a value copied into another object,
//! an object created, a deleted object re-created with a new uid. Driven with the real kubectl;
//! every wait is bounded.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use recoverd::sim::Session;

struct World {
    _session: Session,
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

async fn start() -> World {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/worlds/operator.yaml");
    let session = Session::start(&path, None, None)
        .await
        .expect("the operator world starts");
    World {
        kubeconfig: session.sandbox.kubeconfig.clone(),
        _session: session,
        cache: tempfile::tempdir().unwrap(),
    }
}

impl World {
    async fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(["--context", "north", "-n", "db"])
            .args(args);
        tokio::task::spawn_blocking(move || c.output().expect("kubectl runs"))
            .await
            .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls a jsonpath until `done` holds (at most 20 s).
    async fn until(&self, what: &str, path: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self
                .run(&["get", what, "-o", &format!("jsonpath={path}")])
                .await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what} {path}: last {text:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_generates_a_token_moves_through_phases_and_hands_the_token_over() {
    let w = start().await;
    w.ok(&[
        "patch",
        "clusters.postgresql.cnpg.io",
        "pg-north",
        "--type=merge",
        "-p",
        r#"{"spec":{"replica":{"primary":"pg-south"}}}"#,
    ])
    .await;
    w.until(
        "clusters.postgresql.cnpg.io/pg-north",
        "{.status.phase}",
        |p| p == "Demoted",
    )
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
    assert!(
        String::from_utf8_lossy(&decoded).starts_with("{\"token\":"),
        "{token}"
    );
    let handed = w
        .until("configmap/handoff", "{.data.token}", |t| !t.is_empty())
        .await;
    assert_eq!(handed, token, "the ConfigMap carries the generated token");
    w.until("configmap/demoted", "{.data.by}", |b| b == "operator")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_managed_object_is_recreated_with_a_new_uid() {
    let w = start().await;
    let old = w
        .ok(&[
            "get",
            "configmap",
            "pooler-config",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
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
