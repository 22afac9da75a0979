//! Real test clusters: one etcd and one genuine kube-apiserver (v1.20.2, built from Debian's
//! source package by `tests/kube/build-apiserver.sh`) per named cluster, on loopback.
//!
//! Starting clusters takes seconds, so a test binary starts them once ([`shared`]) and isolates
//! its tests by namespace ([`TestClusters::namespace`]). Everything started here is stopped when
//! the [`TestClusters`] is dropped, and — because a `static` is never dropped and a panicking or
//! killed test process runs no destructor — also by a watchdog process that outlives the test
//! process just long enough to stop the clusters once it has gone.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The CRDs every test cluster gets, from `tests/data/crds/` (real upstream CRDs, made
/// acceptable to 1.20 by `tests/kube/downgrade-crd.py`).
pub const CRDS: &[&str] = &[
    "postgresql.cnpg.io_clusters.yaml",
    "pgv2.percona.com_perconapgclusters.yaml",
];

/// The bearer token the test clusters accept (from `tests/kube/mkpki.sh`).
pub const TOKEN: &str = "test-token";

pub struct TestClusters {
    root: tempfile::TempDir,
    clusters: BTreeMap<String, Cluster>,
    /// The names in the order given; the first is the kubeconfig's current context.
    order: Vec<String>,
    kubeconfig: PathBuf,
    watchdog: Option<std::process::Child>,
}

/// One running cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub name: String,
    /// `https://127.0.0.1:PORT` of its kube-apiserver.
    pub server: String,
    pub dir: PathBuf,
}

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kube_scripts() -> PathBuf {
    repo_dir().join("tests/kube")
}

/// The kube-apiserver binary: `$RECOVERD_TEST_APISERVER` if set, else `kube-apiserver` in
/// `$KUBEBUILDER_ASSETS` (where envtest's `setup-envtest` puts it), else built (once, cached in
/// `$KUBE_TEST_CACHE`, default `~/.cache/kube-test`) by `tests/kube/build-apiserver.sh`.
pub fn apiserver_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("RECOVERD_TEST_APISERVER") {
            return PathBuf::from(bin);
        }
        if let Ok(assets) = std::env::var("KUBEBUILDER_ASSETS") {
            return PathBuf::from(assets).join("kube-apiserver");
        }
        let out = Command::new("bash")
            .arg(kube_scripts().join("build-apiserver.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("failed to run tests/kube/build-apiserver.sh");
        assert!(
            out.status.success(),
            "tests/kube/build-apiserver.sh failed (it needs root and Debian's archive the first time)"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build-apiserver.sh printed no path")
                .trim(),
        )
    })
    .clone()
}

/// The test apiserver's minor version (`20` for v1.20.2, `36` for v1.36.2), from `--version`.
pub fn apiserver_minor() -> u32 {
    static MINOR: OnceLock<u32> = OnceLock::new();
    *MINOR.get_or_init(|| {
        let out = Command::new(apiserver_binary())
            .arg("--version")
            .output()
            .expect("failed to run the kube-apiserver binary");
        let text = String::from_utf8_lossy(&out.stdout);
        // "Kubernetes v1.36.2"
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("v1."))
            .and_then(|rest| rest.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the apiserver version from {text:?}"))
    })
}

/// Whether the test apiserver is a current Kubernetes (v1.25+: CEL rules, `fieldValidation`),
/// which gets the upstream CRDs unmodified; v1.20 gets the copies `downgrade-crd.py` made.
pub fn modern_apiserver() -> bool {
    apiserver_minor() >= 25
}

/// The directory of CRDs for the test apiserver: `tests/data/crds/upstream` (unmodified, with
/// their CEL rules) on a current server, `tests/data/crds` (downgraded) on v1.20.
pub fn crd_dir() -> PathBuf {
    let data = repo_dir().join("tests/data/crds");
    if modern_apiserver() {
        data.join("upstream")
    } else {
        data
    }
}

/// Clusters shared by all tests of one test binary: `north`, `south` and `edge`.
pub fn shared() -> &'static TestClusters {
    static SHARED: OnceLock<TestClusters> = OnceLock::new();
    SHARED.get_or_init(|| TestClusters::start(&["north", "south", "edge"]))
}

/// A free TCP port on loopback such that `port + 1` is free too (etcd takes both).
pub fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = a.local_addr().unwrap().port();
        if port < 65535 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of loopback ports");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestClusters {
    /// Starts one cluster per name, in parallel, installs [`CRDS`] in each and waits until they
    /// are established. Panics with the apiserver's last log lines when a cluster fails to start.
    pub fn start(names: &[&str]) -> Self {
        let bin = apiserver_binary();
        let root = tempfile::Builder::new().prefix("recoverd-kt-").tempdir().unwrap();
        let pki = root.path().join("pki");
        run(Command::new("bash").arg(kube_scripts().join("mkpki.sh")).arg(&pki));

        let mut clusters = BTreeMap::new();
        let watchdog = spawn_watchdog(root.path(), names);
        std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| {
                    let dir = root.path().join(name);
                    let (bin, pki) = (&bin, &pki);
                    s.spawn(move || start_one(name, &dir, bin, pki))
                })
                .collect();
            for h in handles {
                let c = h.join().expect("cluster start panicked");
                clusters.insert(c.name.clone(), c);
            }
        });
        let kubeconfig = root.path().join("kubeconfig");
        let order = names.iter().map(|n| n.to_string()).collect();
        let this = TestClusters {
            root,
            clusters,
            order,
            kubeconfig,
            watchdog: Some(watchdog),
        };
        this.write_kubeconfig(&this.kubeconfig, &BTreeMap::new());
        std::thread::scope(|s| {
            for name in this.clusters.keys() {
                let this = &this;
                s.spawn(move || this.install_crds(name));
            }
        });
        this
    }

    pub fn names(&self) -> Vec<String> {
        self.clusters.keys().cloned().collect()
    }

    pub fn cluster(&self, name: &str) -> &Cluster {
        self.clusters
            .get(name)
            .unwrap_or_else(|| panic!("no test cluster named {name}"))
    }

    /// The kubeconfig with one context per cluster (context name = cluster name); the current
    /// context is the first cluster named to [`Self::start`].
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.root.path().join("pki")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.pki_dir().join("ca.crt")
    }

    /// Writes a kubeconfig like [`Self::kubeconfig`] but with some clusters' server replaced
    /// (e.g. by a fault-injecting proxy's URL).
    pub fn write_kubeconfig(&self, path: &Path, servers: &BTreeMap<String, String>) {
        let ca = self.ca_cert();
        let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for c in self.clusters.values() {
            let server = servers.get(&c.name).unwrap_or(&c.server);
            out += &format!(
                "- name: {n}\n  cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}\n",
                n = c.name,
                ca = ca.display()
            );
        }
        out += "users:\n- name: admin\n  user: {token: test-token}\ncontexts:\n";
        for c in self.clusters.values() {
            out += &format!(
                "- name: {n}\n  context: {{cluster: {n}, user: admin, namespace: default}}\n",
                n = c.name
            );
        }
        let first = self.order.first().expect("at least one cluster");
        out += &format!("current-context: {first}\n");
        std::fs::write(path, out).unwrap();
    }

    /// A client for one cluster, through the same kubeconfig path recoverd itself uses.
    pub async fn client(&self, name: &str) -> Client {
        client_for(&self.kubeconfig, name).await
    }

    /// Creates a fresh namespace named after `prefix` in every cluster and returns its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        let suffix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() % 100_000;
        let name = format!("{}-{suffix}", prefix.replace('_', "-"));
        let name = name.chars().take(63).collect::<String>();
        for c in self.clusters.keys() {
            let api: Api<Namespace> = Api::all(self.client(c).await);
            let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
            api.create(&PostParams::default(), &ns).await.unwrap();
        }
        name
    }

    /// `kubectl` against one cluster of this set.
    pub fn kubectl(&self, cluster: &str) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--context")
            .arg(cluster);
        cmd
    }

    fn install_crds(&self, cluster: &str) {
        let data = crd_dir();
        for crd in CRDS {
            let mut cmd = self.kubectl(cluster);
            cmd.args(["create", "--validate=false", "-f"]).arg(data.join(crd));
            run(&mut cmd);
        }
        // A new CRD is served once it is established and the apiserver's handlers caught up.
        for _ in 0..300 {
            let mut get = self.kubectl(cluster);
            get.args([
                "get",
                "clusters.postgresql.cnpg.io,perconapgclusters.pgv2.percona.com",
                "-A",
            ]);
            if get
                .stderr(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("CRDs in cluster {cluster} never became servable");
    }

    /// Stops every cluster now (also done on drop).
    pub fn stop(&mut self) {
        for c in self.clusters.values() {
            let _ = Command::new("bash")
                .arg(kube_scripts().join("stop-cluster.sh"))
                .arg(&c.dir)
                .status();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

impl Drop for TestClusters {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client for `context` of `kubeconfig`.
pub async fn client_for(kubeconfig: &Path, context: &str) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let opts = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kc, &opts).await.unwrap();
    Client::try_from(config).unwrap()
}

fn start_one(name: &str, dir: &Path, bin: &Path, pki: &Path) -> Cluster {
    // Ports are picked free but can be taken by someone else before the cluster binds them:
    // try a few times.
    let mut last_err = String::new();
    for _ in 0..3 {
        let etcd = free_port_pair();
        let api = free_port();
        let out = Command::new("bash")
            .arg(kube_scripts().join("start-cluster.sh"))
            .args([name, dir.to_str().unwrap(), bin.to_str().unwrap()])
            .args([etcd.to_string(), api.to_string()])
            .arg(pki)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .output()
            .expect("failed to run tests/kube/start-cluster.sh");
        if out.status.success() {
            return Cluster {
                name: name.to_string(),
                server: format!("https://127.0.0.1:{api}"),
                dir: dir.to_path_buf(),
            };
        }
        last_err = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = Command::new("bash")
            .arg(kube_scripts().join("stop-cluster.sh"))
            .arg(dir)
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }
    panic!("test cluster {name} failed to start:\n{last_err}");
}

/// A detached process that waits for this test process to exit and then stops the clusters.
fn spawn_watchdog(root: &Path, names: &[&str]) -> std::process::Child {
    let stop = kube_scripts().join("stop-cluster.sh");
    let dirs: Vec<String> = names
        .iter()
        .map(|n| root.join(n).display().to_string())
        .collect::<Vec<_>>();
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; for d in {dirs}; do bash {stop} \"$d\"; done; rm -rf {root}",
        pid = std::process::id(),
        dirs = dirs.join(" "),
        stop = stop.display(),
        root = root.display(),
    );
    Command::new("setsid")
        .args(["bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start the cluster watchdog (setsid)")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
