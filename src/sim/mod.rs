//! The built-in simulator (I/O edge): Kubernetes-API-compatible HTTP servers for several named
//! clusters in one process, each with its own in-memory store, held to the behaviour of
//! kube-apiserver v1.20 by the differential tests in `tests/sim_differential.rs` (DESIGN.md §6).
//!
//! Clusters are served over plain HTTP on loopback, without authentication: a kubeconfig
//! whose `server` is `http://127.0.0.1:PORT` works with `kubectl` and `kube::Client` alike.
//! [`Simulator::start`] serves the clusters and writes that kubeconfig; [`Session::start`]
//! also seeds a world through the ordinary client path (`world::seed` over HTTP) and starts its
//! reactors.
//!
//! Known differences from kube-apiserver v1.20 (everything else the differential suite
//! compares is the same, byte for byte after masking uids, times and resourceVersion values):
//! - Only some built-in resources are served (namespaces, configmaps, secrets, services,
//!   serviceaccounts, pods, events, deployments, leases, customresourcedefinitions), and only
//!   version v1 of each group; no aggregated discovery, no `/openapi/v2`. On purpose, like newer
//!   servers: OpenAPI v3 documents and `fieldValidation=Strict` (so `kubectl apply` validates
//!   server-side).
//! - No controllers: pods are never scheduled, deployments get no replicas, services no
//!   endpoints. A deleted namespace or CRD is `Terminating` for 5 s, then its content and itself
//!   go, as with a real cluster's controllers (the test clusters have none: theirs stay).
//! - Validation of built-in kinds covers names, ConfigMap and Secret keys and a few Deployment
//!   fields; a body whose JSON types do not fit the Go type is not refused with Go's message.
//! - Protobuf request bodies are read for Namespaces, ConfigMaps, Secrets and ServiceAccounts
//!   (what `kubectl create` sends); responses are always JSON.
//! - Apply bodies are YAML 1.2: an unquoted `y`, `yes` or `on` stays a string (v1.20 reads
//!   YAML 1.1 booleans). A typed apply is checked for undeclared fields, not value types.
//! - Watches resume from the last 10,000 events of a cluster; bookmark timing follows the watch
//!   cache's rules only approximately.
//! - No authentication or authorization; no `managedFields` cap of 10 updaters; no sync of
//!   kubectl's last-applied annotation; CRD versions are served without conversion; the
//!   `scale` subresource is listed in discovery only.
//!
//! Modules, by what they own:
//! - [`typed`]: field types, paths and sets, compare/merge (structured-merge-diff);
//! - [`builtin`]: the built-in resources, their types, defaults and validation;
//! - [`schema`]: CRD structural schemas — pruning, defaulting, validation;
//! - [`patch`]: merge, JSON and strategic merge patches;
//! - [`proto`]: the protobuf bodies `kubectl create` sends;
//! - [`managed`]: `managedFields` and server-side apply conflicts;
//! - [`store`]: objects, resourceVersions, the event log;
//! - [`discovery`]: the served resources and discovery documents;
//! - [`api`]: the verbs (get, list, create, update, patch, apply, delete);
//! - [`watch`]: watch streams;
//! - [`selector`]: label and field selectors;
//! - [`status`]: `Status` errors;
//! - [`faults`]: injected latency, errors, cut watches, dead clusters;
//! - [`openapi`]: OpenAPI v3 documents for `kubectl`;
//! - [`table`]: the Tables `kubectl get` prints;
//! - [`http`]: the axum routes;
//! - [`demo`]: the world, plan and alert of `recoverd demo`.

pub mod api;
pub mod builtin;
pub mod demo;
pub mod discovery;
pub mod faults;
pub mod http;
pub mod managed;
pub mod openapi;
pub mod patch;
pub mod proto;
pub mod schema;
pub mod selector;
pub mod status;
pub mod store;
pub mod table;
pub mod typed;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cluster::{Registry, WriteMode};
use crate::world::{self, Seeded, World};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("failed to listen on {addr} for cluster {cluster:?}: {reason}")]
    Listen {
        cluster: String,
        addr: String,
        reason: String,
    },
    #[error("failed to write the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("the world names no cluster")]
    NoClusters,
    #[error(transparent)]
    Faults(#[from] faults::FaultError),
    #[error(transparent)]
    World(#[from] world::WorldError),
    #[error(transparent)]
    Registry(#[from] crate::cluster::ClusterError),
    #[error("failed to start the world's reactors: {0}")]
    Reactors(String),
}

/// One served cluster.
pub struct Served {
    pub name: String,
    pub addr: SocketAddr,
    pub cluster: Arc<api::Cluster>,
    task: Option<JoinHandle<()>>,
}

/// Simulated clusters, served until dropped.
pub struct Simulator {
    clusters: Vec<Served>,
}

impl Simulator {
    /// Serves one cluster per name, in order: on free loopback ports when `listen` is `None`,
    /// else the first on `listen` and the next ones on the following ports.
    pub async fn start(
        names: &[String],
        listen: Option<SocketAddr>,
        faults: &BTreeMap<String, faults::FaultSpec>,
    ) -> Result<Self, SimError> {
        if names.is_empty() {
            return Err(SimError::NoClusters);
        }
        let mut clusters = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let addr = match listen {
                Some(a) => SocketAddr::new(a.ip(), a.port().saturating_add(i as u16)),
                None => SocketAddr::from(([127, 0, 0, 1], 0)),
            };
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| SimError::Listen {
                    cluster: name.clone(),
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
            let addr = listener.local_addr().map_err(|e| SimError::Listen {
                cluster: name.clone(),
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
            let cluster = Arc::new(api::Cluster::new(name));
            let f = faults::Faults::new(name, faults.get(name).cloned().unwrap_or_default())?;
            let task = if f.down() {
                // A dead cluster: the port is known, nothing answers on it.
                drop(listener);
                None
            } else {
                let app = http::router(http::Served {
                    cluster: cluster.clone(),
                    address: addr.to_string(),
                    faults: Arc::new(f),
                });
                Some(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "the simulator stopped serving");
                    }
                }))
            };
            tracing::info!(cluster = %name, %addr, "simulated cluster listening");
            clusters.push(Served {
                name: name.clone(),
                addr,
                cluster,
                task,
            });
        }
        Ok(Simulator { clusters })
    }

    pub fn clusters(&self) -> &[Served] {
        &self.clusters
    }

    /// `http://127.0.0.1:PORT` of a cluster.
    pub fn server(&self, name: &str) -> Option<String> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .map(|c| format!("http://{}", c.addr))
    }

    /// A kubeconfig with one context per cluster (context name = cluster name); the first
    /// cluster is the current context.
    pub fn kubeconfig(&self) -> String {
        let mut out = String::from(
            "# Written by `recoverd sim`: plain HTTP on loopback, no credentials needed.\napiVersion: v1\nkind: Config\nclusters:\n",
        );
        for c in &self.clusters {
            out += &format!(
                "- name: {n}\n  cluster: {{server: \"http://{a}\"}}\n",
                n = c.name,
                a = c.addr
            );
        }
        out += "users:\n- name: recoverd-sim\n  user: {}\ncontexts:\n";
        for c in &self.clusters {
            out += &format!(
                "- name: {n}\n  context: {{cluster: {n}, user: recoverd-sim, namespace: default}}\n",
                n = c.name
            );
        }
        if let Some(first) = self.clusters.first() {
            out += &format!("current-context: {}\n", first.name);
        }
        out
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), SimError> {
        std::fs::write(path, self.kubeconfig()).map_err(|e| SimError::Kubeconfig {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for c in &mut self.clusters {
            if let Some(t) = c.task.take() {
                t.abort();
            }
        }
    }
}

/// The clusters of a world file in the order the file names them (the first is the default
/// cluster), and their faults.
pub fn world_clusters(
    path: &Path,
) -> Result<(Vec<String>, BTreeMap<String, faults::FaultSpec>), SimError> {
    let read_err = |reason: String| {
        SimError::World(world::WorldError::Read {
            path: path.display().to_string(),
            reason,
        })
    };
    let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| read_err(e.to_string()))?;
    let mut names = Vec::new();
    let mut faults = BTreeMap::new();
    if let Some(m) = doc.get("clusters").and_then(serde_yaml::Value::as_mapping) {
        for (k, v) in m {
            let Some(name) = k.as_str() else { continue };
            names.push(name.to_string());
            if let Some(f) = v.get("faults") {
                let spec: faults::FaultSpec =
                    serde_yaml::from_value(f.clone()).map_err(|e| faults::FaultError::Invalid {
                        cluster: name.to_string(),
                        reason: e.to_string(),
                    })?;
                faults.insert(name.to_string(), spec);
            }
        }
    }
    Ok((names, faults))
}

/// A world's clusters served, with a kubeconfig for them; nothing seeded yet.
pub struct Sandbox {
    pub simulator: Simulator,
    pub kubeconfig: PathBuf,
    /// Removed on drop when the kubeconfig was written to a temporary place.
    temporary: bool,
}

impl Sandbox {
    /// Serves the clusters of the world file (with their faults) and writes the kubeconfig to
    /// `kubeconfig`, or to a temporary file.
    pub async fn start(
        world_path: &Path,
        listen: Option<SocketAddr>,
        kubeconfig: Option<&Path>,
    ) -> Result<Sandbox, SimError> {
        let (names, faults) = world_clusters(world_path)?;
        let simulator = Simulator::start(&names, listen, &faults).await?;
        let (path, temporary) = match kubeconfig {
            Some(p) => (p.to_path_buf(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "recoverd-sim-{}-{}.kubeconfig",
                    std::process::id(),
                    store::new_uid("kubeconfig")
                )),
                true,
            ),
        };
        simulator.write_kubeconfig(&path)?;
        Ok(Sandbox {
            simulator,
            kubeconfig: path,
            temporary,
        })
    }

    /// A registry of the simulated clusters, built from the kubeconfig like any other.
    pub async fn registry(&self) -> Result<Registry, SimError> {
        Ok(Registry::from_kubeconfig(Some(&self.kubeconfig), WriteMode::Live).await?)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.kubeconfig);
        }
    }
}

/// A simulator seeded with a world, its reactors running.
pub struct Session {
    pub sandbox: Sandbox,
    pub registry: Arc<Registry>,
    pub world: World,
    pub seeded: Vec<Seeded>,
    pub reactors: crate::reactor::Reactors,
}

impl Session {
    /// Serves the world's clusters, writes the kubeconfig to `kubeconfig` (or a temporary
    /// file), seeds the world through a registry built from that kubeconfig, and starts the
    /// reactors.
    pub async fn start(
        world_path: &Path,
        listen: Option<SocketAddr>,
        kubeconfig: Option<&Path>,
    ) -> Result<Session, SimError> {
        let (w, base) = world::load(world_path)?;
        let sandbox = Sandbox::start(world_path, listen, kubeconfig).await?;
        let registry = Arc::new(sandbox.registry().await?);
        let seeded = world::seed(&registry, &w, &base).await?;
        let reactors = crate::reactor::start(registry.clone(), &w.reactors)
            .await
            .map_err(|e| SimError::Reactors(e.to_string()))?;
        Ok(Session {
            sandbox,
            registry,
            world: w,
            seeded,
            reactors,
        })
    }
}
