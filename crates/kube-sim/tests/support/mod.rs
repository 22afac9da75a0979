//! Real kube-apiservers for the simulator's tests: one etcd and one genuine kube-apiserver per
//! version, on loopback, started once per test binary with the workspace's scripts
//! (`tests/kube/start-cluster.sh`) and stopped by a watchdog when the test process is gone.
//!
//! Binaries: v1.36 from `$RECOVERD_TEST_APISERVER_MODERN`, else the workspace's
//! `tests/kube/modern-apiserver.sh`; v1.20 from `$RECOVERD_TEST_APISERVER_V1_20`, else
//! `tests/kube/build-apiserver.sh` (cached after its first build). `$RECOVERD_TEST_APISERVER`
//! is not used: `.ci/run` points it at either version in turn for recoverd's own tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The bearer token the test servers accept (from `tests/kube/mkpki.sh`).
pub const TOKEN: &str = "test-token";

/// The CRDs every real server gets: as published upstream (`tests/data/crds/`) on v1.36, made
/// acceptable to v1.20 (the workspace's `tests/data/crds/`) on v1.20.
pub const CRDS: &[&str] = &[
    "postgresql.cnpg.io_clusters.yaml",
    "pgv2.percona.com_perconapgclusters.yaml",
];

/// The kube-apiserver versions the simulator is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// v1.36.2: what the simulator models.
    V1_36,
    /// v1.20.2: the scenarios that hold there too.
    V1_20,
}

pub struct RealServer {
    pub version: Version,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    pub ca: PathBuf,
    pub kubeconfig: PathBuf,
    _root: tempfile::TempDir,
}

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn workspace_dir() -> PathBuf {
    crate_dir().join("../..")
}

fn scripts() -> PathBuf {
    workspace_dir().join("tests/kube")
}

fn script_output(script: &Path) -> PathBuf {
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("the script printed a path").trim())
}

pub fn binary(version: Version) -> PathBuf {
    match version {
        Version::V1_36 => match std::env::var_os("RECOVERD_TEST_APISERVER_MODERN") {
            Some(b) => PathBuf::from(b),
            None => script_output(&scripts().join("modern-apiserver.sh")),
        },
        Version::V1_20 => match std::env::var_os("RECOVERD_TEST_APISERVER_V1_20") {
            Some(b) => PathBuf::from(b),
            None => script_output(&scripts().join("build-apiserver.sh")),
        },
    }
}

/// The shared server of one version, started on first use.
pub fn real(version: Version) -> &'static RealServer {
    static V136: OnceLock<RealServer> = OnceLock::new();
    static V120: OnceLock<RealServer> = OnceLock::new();
    let cell = match version {
        Version::V1_36 => &V136,
        Version::V1_20 => &V120,
    };
    cell.get_or_init(|| RealServer::start(version))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_port_pair() -> u16 {
    for _ in 0..200 {
        let port = free_port();
        if port < 65535 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free pair of loopback ports");
}

impl RealServer {
    fn start(version: Version) -> RealServer {
        let bin = binary(version);
        let root = tempfile::Builder::new().prefix("kube-sim-real-").tempdir().unwrap();
        let pki = root.path().join("pki");
        let ok = Command::new("bash")
            .arg(scripts().join("mkpki.sh"))
            .arg(&pki)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "mkpki.sh failed");
        let dir = root.path().join("server");
        spawn_watchdog(&dir, root.path());
        let mut last = String::new();
        for _ in 0..3 {
            let (etcd, api) = (free_port_pair(), free_port());
            let out = Command::new("bash")
                .arg(scripts().join("start-cluster.sh"))
                .args(["real", dir.to_str().unwrap(), bin.to_str().unwrap()])
                .args([etcd.to_string(), api.to_string()])
                .arg(&pki)
                .stdin(Stdio::null())
                .output()
                .expect("failed to run start-cluster.sh");
            if out.status.success() {
                let server = RealServer {
                    version,
                    base: format!("https://127.0.0.1:{api}"),
                    ca: pki.join("ca.crt"),
                    kubeconfig: dir.join("kubeconfig"),
                    _root: root,
                };
                server.install_crds();
                return server;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            let _ = Command::new("bash")
                .arg(scripts().join("stop-cluster.sh"))
                .arg(&dir)
                .status();
        }
        panic!("kube-apiserver {version:?} failed to start:\n{last}");
    }

    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    fn install_crds(&self) {
        let dir = match self.version {
            Version::V1_36 => crate_dir().join("tests/data/crds"),
            Version::V1_20 => workspace_dir().join("tests/data/crds"),
        };
        for crd in CRDS {
            let out = self
                .kubectl()
                .args(["create", "--validate=false", "-f"])
                .arg(dir.join(crd))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "installing {crd} in {:?}: {}",
                self.version,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A new CRD is served once it is established and the handlers caught up.
        for _ in 0..300 {
            let served = self
                .kubectl()
                .args([
                    "get",
                    "clusters.postgresql.cnpg.io,perconapgclusters.pgv2.percona.com",
                    "-A",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if served.success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the CRDs never became servable on {:?}", self.version);
    }

    /// An HTTP client that trusts the server's CA (add [`TOKEN`] as a bearer token).
    pub fn client(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
    }
}

/// A detached process that stops the server once this test process has gone (a `static` is
/// never dropped, and a panicking or killed test runs no destructor).
fn spawn_watchdog(dir: &Path, root: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; bash {stop} {dir}; rm -rf {root}",
        pid = std::process::id(),
        stop = scripts().join("stop-cluster.sh").display(),
        dir = dir.display(),
        root = root.display(),
    );
    // `setsid -f` forks the watchdog off and returns at once.
    let started = Command::new("setsid")
        .args(["-f", "bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("failed to start the watchdog (setsid)");
    assert!(started.success(), "failed to start the watchdog (setsid)");
}
