//! `recoverd serve --plans-from-cluster` against real apiservers, with the real kubectl: plans
//! `kubectl apply`d to the home cluster (`north`, the kubeconfig's current context) are matched
//! by the next alert and run; an invalid one is reported on its status and in an Event while the
//! others run; a deleted one stops matching; Nova's format runs unchanged once Nova's CRD is
//! installed (after recoverd started); `kubectl get` and `kubectl explain` show what the CRDs
//! say; and deploy/overlays/kube-native's Role is all recoverd needs for it. The clusters enforce
//! RBAC (the admin token is in system:masters), so that Role is tested for real. Each test has
//! its own namespace and its own `recoverd serve`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use support::clusters::repo_dir;
use support::server::{counting_hook, counts, eventually, payload, ServeProcess};

const HOME: &str = "north";
const LIMIT: Duration = Duration::from_secs(60);

/// This binary's clusters (`support::shared()`'s), with `--authorization-mode RBAC` in place of
/// the harness's AlwaysAllow (`tests/data/deploy/rbac-apiserver.sh`, as tests/deploy.rs does).
fn clusters() -> &'static support::clusters::TestClusters {
    static RBAC: OnceLock<()> = OnceLock::new();
    RBAC.get_or_init(|| {
        // The harness reads the binary from the environment once, when the clusters start:
        // nothing has started any yet, and every test comes through here.
        let bin = match std::env::var("RECOVERD_TEST_APISERVER") {
            Ok(bin) => PathBuf::from(bin),
            Err(_) => match std::env::var("KUBEBUILDER_ASSETS") {
                Ok(assets) => PathBuf::from(assets).join("kube-apiserver"),
                Err(_) => {
                    let out = ok(Command::new("bash").arg(repo_dir().join("tests/kube/build-apiserver.sh")));
                    PathBuf::from(out.lines().last().expect("a path").trim())
                }
            },
        };
        std::env::set_var("RECOVERD_DEPLOY_APISERVER", bin);
        std::env::set_var(
            "RECOVERD_TEST_APISERVER",
            repo_dir().join("tests/data/deploy/rbac-apiserver.sh"),
        );
    });
    support::shared()
}

fn kubectl() -> Command {
    clusters().kubectl(HOME)
}

/// Runs a kubectl command, failing the test with its output when it fails; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// recoverd's CRDs, installed once in the home cluster (`kubectl apply -f crds/`).
fn install_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        ok(kubectl()
            .args(["apply", "-f"])
            .arg(repo_dir().join("crds/recoverd.io.yaml")));
        established(&["crd/recoveryplans.recoverd.io", "crd/recoveryruns.recoverd.io"]);
    });
}

/// Waits until the CRDs are established. `kubectl wait` fails outright on a CRD whose status
/// has no conditions yet, right after it was created: ask again until it has them.
fn established(crds: &[&str]) {
    for attempt in 0.. {
        let out = kubectl()
            .args(["wait", "--for=condition=established", "--timeout=60s"])
            .args(crds)
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            attempt < 50,
            "{crds:?} never became established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A fixture from `tests/data/kube-plans/`, with `TESTNS` and `HOOK` filled in, written to `dir`.
fn fixture(dir: &Path, name: &str, ns: &str, hook: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo_dir().join("tests/data/kube-plans").join(name))
        .unwrap()
        .replace("TESTNS", ns)
        .replace("HOOK", hook);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn apply(ns: &str, file: &Path) {
    ok(kubectl().args(["apply", "-n", ns, "-f"]).arg(file));
}

/// `kubectl get RESOURCE NAME -o json`, or Null when it does not exist.
fn get(ns: &str, resource: &str, name: &str) -> Value {
    let out = kubectl()
        .args(["get", "-n", ns, resource, name, "-o", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn valid_condition(obj: &Value) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Valid"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A test's own namespace, a directory, and an (empty) plan directory in it.
async fn case(prefix: &str) -> (String, tempfile::TempDir, PathBuf) {
    let ns = clusters().namespace(prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir(&plans).unwrap();
    (ns, dir, plans)
}

/// Starts `recoverd serve` on the test clusters, plans from `plans` and from the home
/// cluster's namespace `ns`. (Never every namespace: two servers judging the same plan with
/// different plan files would overwrite each other's verdicts.)
async fn serve(dir: &Path, plans: &Path, ns: &str) -> ServeProcess {
    install_crds();
    let kubeconfig = clusters().kubeconfig().to_path_buf();
    let args = ["--plans-from-cluster", "--namespace", ns, "--reload-interval", "200ms"];
    ServeProcess::start(dir, plans, &kubeconfig, &args).await
}

async fn plan_names(serve: &ServeProcess) -> Vec<String> {
    let listing = serve.get("/api/v1/plans").await;
    listing["plans"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Sends a firing alert; returns what recoverd did with it.
async fn alert(serve: &ServeProcess, labels: Value, fingerprint: &str, starts_at: &str) -> Value {
    let (status, reply) = serve
        .post("/api/v1/alerts", &payload("firing", labels, fingerprint, starts_at))
        .await;
    assert_eq!(status, 202, "{reply}");
    reply["alerts"][0].clone()
}

/// Polls `f` until it gives a value; panics naming `what` after [`LIMIT`] (a hang guard).
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a firing alert that must start `plan`; returns the run once it succeeded.
async fn runs_to_success(serve: &ServeProcess, plan: &str, labels: Value, fingerprint: &str) -> Value {
    let started = alert(serve, labels, fingerprint, "2026-12-01T10:00:00Z").await;
    assert_eq!(started["action"], "started", "{started}");
    assert_eq!(started["plan"], plan, "{started}");
    let run = finished(serve, started["runId"].as_str().unwrap()).await;
    assert_eq!(run["phase"], "Succeeded", "{run}");
    run
}

/// The Events about one object, as `kubectl get events -o json` prints them.
fn events_about(ns: &str, name: &str) -> String {
    ok(kubectl().args([
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "json",
    ]))
}

async fn finished(serve: &ServeProcess, id: &str) -> Value {
    until("the run to finish", || async {
        let run = serve.get(&format!("/api/v1/runs/{id}")).await;
        matches!(
            run["phase"].as_str(),
            Some("Succeeded" | "SucceededWithErrors" | "Failed" | "Cancelled")
        )
        .then_some(run)
    })
    .await
}

#[tokio::test]
async fn a_plan_applied_with_kubectl_is_matched_by_the_next_alert_and_a_deleted_one_is_not() {
    let (ns, dir, plans) = case("kp-apply").await;
    let (hook, hits) = counting_hook(3).await;
    fixture(&plans, "clash-file.yaml", &ns, &hook);
    let serve = serve(dir.path(), &plans, &ns).await;
    let labels = json!({"alertname": "KubePlanFired", "testns": ns});

    // Nothing applied yet: the alert matches nothing.
    let before = alert(&serve, labels.clone(), "fp-1", "2026-12-01T10:00:00Z").await;
    assert_eq!(before["action"], "noMatch", "{before}");

    apply(&ns, &fixture(dir.path(), "hook.yaml", &ns, &hook));
    let name = format!("{ns}/hook");
    eventually("the applied plan to be loaded", LIMIT, || async {
        plan_names(&serve).await.contains(&name)
    })
    .await;
    let run = runs_to_success(&serve, &name, labels.clone(), "fp-2").await;
    assert_eq!(counts(&hits)[0], 1, "the plan's step ran once");

    // Its status says recoverd read this generation and found it valid.
    let obj = until("the plan's status to say Valid=True", || async {
        let obj = get(&ns, "recoveryplans.recoverd.io", "hook");
        (valid_condition(&obj)["status"] == "True").then_some(obj)
    })
    .await;
    assert_eq!(
        obj["status"]["observedGeneration"], obj["metadata"]["generation"],
        "{obj}"
    );
    assert_eq!(valid_condition(&obj)["reason"], "Validated");
    assert_eq!(obj["status"]["steps"], 1);
    // ...and how its last run went.
    let id = run["id"].as_str().unwrap();
    eventually("the plan's status to show its last run", LIMIT, || async {
        let status = &get(&ns, "recoveryplans.recoverd.io", "hook")["status"];
        status["lastRun"] == id && status["lastResult"] == "Succeeded"
    })
    .await;
    let table = ok(kubectl().args(["get", "-n", &ns, "recoveryplans.recoverd.io", "hook"]));
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..5], ["hook", "auto", "1", "True", "Succeeded"], "{table}");

    // A resource named like a plan file loses to the file: reported, never run.
    let clash = json!({"alertname": "KubePlanClash", "testns": ns});
    apply(&ns, &fixture(dir.path(), "clash-resource.yaml", &ns, &hook));
    eventually("the clashing resource to be reported", LIMIT, || async {
        valid_condition(&get(&ns, "recoveryplans.recoverd.io", "clash"))["reason"] == "NameClash"
    })
    .await;
    let message = valid_condition(&get(&ns, "recoveryplans.recoverd.io", "clash"))["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("clash-file.yaml"), "{message}");
    runs_to_success(&serve, &format!("{ns}/clash"), clash, "fp-3").await;
    assert_eq!(counts(&hits)[1..], [1, 0], "the file's plan ran, not the resource's");

    // Deleted: the next alert of the same kind matches nothing.
    ok(kubectl().args(["delete", "-n", &ns, "recoveryplans.recoverd.io", "hook"]));
    eventually("the deleted plan to be dropped", LIMIT, || async {
        !plan_names(&serve).await.contains(&name)
    })
    .await;
    let after = alert(&serve, labels, "fp-4", "2026-12-01T10:03:00Z").await;
    assert_eq!(after["action"], "noMatch", "{after}");
    assert_eq!(counts(&hits)[0], 1);
}

#[tokio::test]
async fn an_invalid_plan_is_reported_on_its_status_and_in_an_event_while_the_others_run() {
    let (ns, dir, plans) = case("kp-invalid").await;
    let (hook, hits) = counting_hook(1).await;
    let serve = serve(dir.path(), &plans, &ns).await;

    apply(&ns, &fixture(dir.path(), "broken.yaml", &ns, &hook));
    apply(&ns, &fixture(dir.path(), "hook.yaml", &ns, &hook));
    eventually("the broken plan to be reported invalid", LIMIT, || async {
        valid_condition(&get(&ns, "recoveryplans.recoverd.io", "broken"))["status"] == "False"
    })
    .await;
    let broken = get(&ns, "recoveryplans.recoverd.io", "broken");
    let condition = valid_condition(&broken);
    assert_eq!(condition["reason"], "InvalidPlan", "{broken}");
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("spec.steps[0].wait.timeout"), "{message}");
    assert_eq!(broken["status"]["observedGeneration"], 1);

    // The Event says the same.
    let events = until("an Event about the broken plan", || async {
        let events = events_about(&ns, "broken");
        events.contains("InvalidPlan").then_some(events)
    })
    .await;
    assert!(events.contains("spec.steps[0].wait.timeout"), "{events}");

    // The valid plan runs; the broken one never does.
    eventually("the valid plan to be loaded", LIMIT, || async {
        plan_names(&serve).await.contains(&format!("{ns}/hook"))
    })
    .await;
    let labels = json!({"alertname": "KubePlanFired", "testns": ns});
    runs_to_success(&serve, &format!("{ns}/hook"), labels, "fp-good").await;
    assert_eq!(counts(&hits), [1]);
    let bad = alert(
        &serve,
        json!({"alertname": "KubePlanBroken", "testns": ns}),
        "fp-bad",
        "2026-12-01T11:00:00Z",
    )
    .await;
    assert_eq!(bad["action"], "noMatch", "{bad}");
    let listing = serve.get("/api/v1/plans").await;
    let invalid = listing["invalid"].to_string();
    assert!(
        invalid.contains(&format!("{ns}/broken")) && invalid.contains("wait.timeout"),
        "{listing}"
    );

    // Fixed: valid again, at its new generation.
    apply(&ns, &fixture(dir.path(), "broken-fixed.yaml", &ns, &hook));
    eventually("the fixed plan to be valid", LIMIT, || async {
        let obj = get(&ns, "recoveryplans.recoverd.io", "broken");
        valid_condition(&obj)["status"] == "True" && obj["status"]["observedGeneration"] == 2
    })
    .await;
    eventually("the fixed plan to be loaded", LIMIT, || async {
        plan_names(&serve).await.contains(&format!("{ns}/broken"))
    })
    .await;
}

#[tokio::test]
async fn a_nova_plan_runs_unchanged_once_novas_crd_is_installed_after_recoverd_started() {
    let (ns, dir, plans) = case("kp-nova").await;
    let serve = serve(dir.path(), &plans, &ns).await;

    // Nova's CRD (deploy/nova-compat, for clusters without Nova) arrives after recoverd.
    ok(kubectl()
        .args(["apply", "-k"])
        .arg(repo_dir().join("deploy/nova-compat")));
    established(&["crd/recoveryplans.recovery.elotl.co"]);
    ok(kubectl().args([
        "create",
        "configmap",
        "nova-target",
        "-n",
        &ns,
        "--from-literal=source=10.0.0.7",
    ]));
    apply(&ns, &fixture(dir.path(), "nova.yaml", &ns, ""));
    let name = format!("{ns}/nova-copy");
    eventually("the Nova plan to be loaded", LIMIT, || async {
        plan_names(&serve).await.contains(&name)
    })
    .await;

    let labels = json!({"app": "nova-example", "testns": ns});
    let run = runs_to_success(&serve, &name, labels, "fp-nova").await;
    let steps: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(steps, ["step-1", "step-2"]);
    let cm = get(&ns, "configmap", "nova-target");
    assert_eq!(cm["data"]["copied"], "10.0.0.7", "{cm}");

    eventually("the Nova plan's status to say Valid=True", LIMIT, || async {
        valid_condition(&get(&ns, "recoveryplans.recovery.elotl.co", "nova-copy"))["status"] == "True"
    })
    .await;
}

#[tokio::test]
async fn kubectl_get_shows_the_columns_and_kubectl_explain_the_descriptions() {
    let (ns, dir, plans) = case("kp-kubectl").await;
    let serve = serve(dir.path(), &plans, &ns).await;
    apply(&ns, &fixture(dir.path(), "hook.yaml", &ns, "http://127.0.0.1:9"));
    eventually("the plan's status", LIMIT, || async {
        valid_condition(&get(&ns, "recoveryplans.recoverd.io", "hook"))["status"] == "True"
    })
    .await;
    drop(serve);

    let table = ok(kubectl().args(["get", "-n", &ns, "recoveryplans.recoverd.io"]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "MODE", "STEPS", "VALID", "LAST", "RESULT", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["hook", "auto", "1", "True"], "{table}");

    apply(&ns, &fixture(dir.path(), "run.yaml", &ns, ""));
    let table = ok(kubectl().args(["get", "-n", &ns, "recoveryruns.recoverd.io"]));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PLAN",
            "PHASE",
            "CURRENT",
            "STEP",
            "TRIGGER",
            "DURATION(MS)",
            "AGE"
        ],
        "{table}"
    );
    assert!(table.contains("columns") && table.contains("manual"), "{table}");

    let explain = ok(kubectl().args([
        "explain",
        "--api-version=recoverd.io/v1alpha1",
        "recoveryplan.spec.steps",
    ]));
    for text in [
        "The steps, run in order.",
        "Unique within the plan",
        "The cluster this step acts on",
    ] {
        assert!(explain.contains(text), "{text:?} not in:\n{explain}");
    }
    let explain = ok(kubectl().args(["explain", "--api-version=recoverd.io/v1alpha1", "recoveryplan"]));
    assert!(
        explain.contains("status.conditions") && !explain.contains("Auto-generated"),
        "{explain}"
    );
}

/// The objects `kubectl kustomize deploy/overlays/kube-native` renders, from a copy of deploy/
/// with stand-ins for the files an installer makes.
fn render_kube_native(dir: &Path) -> Vec<Value> {
    render_overlay(dir, "kube-native", "single")
}

/// `kubectl kustomize deploy/overlays/OVERLAY` of a copy of deploy/, with stand-in install
/// files (the token and kubeconfig a user creates) in `deploy/overlays/FILES`.
fn render_overlay(dir: &Path, overlay: &str, files: &str) -> Vec<Value> {
    let deploy = dir.join("deploy");
    if !deploy.exists() {
        ok(Command::new("cp").arg("-r").arg(repo_dir().join("deploy")).arg(&deploy));
    }
    let installed = deploy.join("overlays").join(files);
    std::fs::write(installed.join("token"), "x".repeat(64)).unwrap();
    std::fs::write(installed.join("clusters/kubeconfig"), "apiVersion: v1\nkind: Config\n").unwrap();
    let yaml = ok(Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy.join("overlays").join(overlay)));
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|o| !o.is_null())
        .collect()
}

/// deploy/overlays/ha: two replicas on the Kubernetes run store, with a Role that is all they
/// need — recoverd runs here with nothing but that Role's token for its home cluster, records a
/// run as a RecoveryRun, holds and releases its Lease, and logs nothing forbidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_overlay_runs_two_replicas_on_the_kube_store_with_a_role_that_is_all_they_need() {
    let dir = tempfile::tempdir().unwrap();
    install_crds();
    let objects = render_overlay(dir.path(), "ha", "ha");
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    let env = pod["containers"][0]["env"].as_array().unwrap();
    assert!(
        env.contains(&json!({"name": "RECOVERD_STORE", "value": "kube"})),
        "{env:?}"
    );
    assert!(
        env.contains(
            &json!({"name": "RECOVERD_REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        ),
        "each replica is named after its pod: {env:?}"
    );
    let pdb = objects
        .iter()
        .find(|o| o["kind"] == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1, "{pdb}");
    let identity: Vec<Value> = objects
        .iter()
        .filter(|o| ["Namespace", "ServiceAccount", "Role", "RoleBinding"].contains(&o["kind"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    assert_eq!(identity.len(), 4, "{identity:?}");
    let file = dir.path().join("identity.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": identity}).to_string(),
    )
    .unwrap();
    ok(kubectl().args(["apply", "-f"]).arg(&file));
    let token = ok(kubectl().args(["create", "token", "recoverd", "-n", "recoverd", "--duration=1h"]));
    let home = clusters().cluster(HOME);
    let kubeconfig = dir.path().join("home.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: home\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\nusers:\n- name: recoverd\n  user: {{token: {}}}\ncontexts:\n- name: home\n  context: {{cluster: home, user: recoverd, namespace: recoverd}}\ncurrent-context: home\n",
            home.server,
            clusters().ca_cert().display(),
            token.trim()
        ),
    )
    .unwrap();
    let (hook, hits) = counting_hook(1).await;
    let plans = dir.path().join("plans");
    std::fs::create_dir(&plans).unwrap();
    std::fs::write(
        plans.join("ha.yaml"),
        format!(
            "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: ha-role, namespace: recoverd}}\nspec:\n  alertLabels: {{alertname: HaRoleFired}}\n  steps:\n  - {{name: call, type: http, http: {{url: \"{hook}/step/0\", method: POST}}}}\n"
        ),
    )
    .unwrap();
    let serve = ServeProcess::start(
        dir.path(),
        &plans,
        &kubeconfig,
        &[
            "--store",
            "kube",
            "--replica-id",
            "ha-role-test",
            "--plans-from-cluster",
        ],
    )
    .await;
    let (status, body) = serve
        .post(
            "/api/v1/alerts",
            &payload(
                "firing",
                json!({"alertname": "HaRoleFired"}),
                "fp-ha-role",
                "2026-12-02T11:00:00Z",
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["alerts"][0]["runId"].as_str().unwrap().to_string();
    eventually("the run to succeed", LIMIT, || async {
        get("recoverd", "recoveryruns.recoverd.io", &id)["status"]["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(counts(&hits), [1]);
    // Its Lease was taken and, with the run over, deleted.
    assert!(get("recoverd", "leases.coordination.k8s.io", &format!("recoverd-run-{id}")).is_null());
    let log = serve.log_text();
    assert!(!log.contains("forbidden") && !log.contains("failed to"), "{log}");
    // The next test of the kube-native Role must see that Role alone.
    let _ = kubectl()
        .args(["delete", "rolebinding", "recoverd-ha", "-n", "recoverd"])
        .output();
}

#[tokio::test]
async fn the_kube_native_overlays_role_is_all_recoverd_needs_to_take_plans_from_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    install_crds();
    let objects = render_kube_native(dir.path());
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert!(
        pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "RECOVERD_PLANS_FROM_CLUSTER", "value": "true"})),
        "{pod}"
    );
    // recoverd's identity in its home cluster, exactly as the overlay makes it.
    let identity: Vec<Value> = objects
        .iter()
        .filter(|o| ["Namespace", "ServiceAccount", "Role", "RoleBinding"].contains(&o["kind"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    assert_eq!(identity.len(), 4, "{identity:?}");
    let file = dir.path().join("identity.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": identity}).to_string(),
    )
    .unwrap();
    ok(kubectl().args(["apply", "-f"]).arg(&file));
    let token = ok(kubectl().args(["create", "token", "recoverd", "-n", "recoverd", "--duration=1h"]));
    let sa = "system:serviceaccount:recoverd:recoverd";
    let can = |args: &[&str]| -> bool {
        let out = kubectl()
            .args(["auth", "can-i", "--as", sa, "-n", "recoverd"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can(&["watch", "recoveryplans.recoverd.io"]));
    assert!(can(&["patch", "recoveryplans.recoverd.io", "--subresource=status"]));
    assert!(!can(&["patch", "recoveryplans.recoverd.io"]), "never the spec");
    assert!(!can(&["get", "secrets"]));
    assert!(!can(&["list", "recoveryplans.recoverd.io", "-n", "default"]));

    // recoverd with nothing but that token for its home cluster.
    let home = clusters().cluster(HOME);
    let kubeconfig = dir.path().join("home.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: home\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\nusers:\n- name: recoverd\n  user: {{token: {}}}\ncontexts:\n- name: home\n  context: {{cluster: home, user: recoverd, namespace: recoverd}}\ncurrent-context: home\n",
            home.server,
            clusters().ca_cert().display(),
            token.trim()
        ),
    )
    .unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir(&plans).unwrap();
    // Every namespace needs a ClusterRole: without one, serve refuses to start, saying why.
    let out = Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(["serve", "--plans-from-cluster", "--all-namespaces", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--listen", "127.0.0.1:0", "--store"])
        .arg(format!("sqlite:{}", dir.path().join("refused.db").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("failed to list recoveryplans.recoverd.io in the home cluster (all namespaces)")
            && stderr.contains("forbidden"),
        "{stderr}"
    );
    let serve = ServeProcess::start(
        dir.path(),
        &plans,
        &kubeconfig,
        &["--plans-from-cluster", "--reload-interval", "200ms"],
    )
    .await;
    apply(
        "recoverd",
        &fixture(dir.path(), "hook.yaml", "recoverd", "http://127.0.0.1:9"),
    );
    apply("recoverd", &fixture(dir.path(), "broken.yaml", "recoverd", ""));
    eventually("both plans' status to be written", LIMIT, || async {
        valid_condition(&get("recoverd", "recoveryplans.recoverd.io", "hook"))["status"] == "True"
            && valid_condition(&get("recoverd", "recoveryplans.recoverd.io", "broken"))["status"] == "False"
    })
    .await;
    eventually("an Event about the broken plan", LIMIT, || async {
        events_about("recoverd", "broken").contains("InvalidPlan")
    })
    .await;
    assert!(plan_names(&serve).await.contains(&"recoverd/hook".to_string()));
    let log = serve.log_text();
    assert!(!log.contains("forbidden") && !log.contains("failed to"), "{log}");
}
