//! Rehearsal sandboxes (I/O edge): a world's clusters served by the `kube-sim` simulator, a
//! kubeconfig and a registry for them, the world seeded through that registry and its reactors
//! started — what `recoverd sim`, `rehearse` and `demo` stand on. The simulator itself knows
//! nothing of worlds or reactors.

pub mod demo;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube_sim::{FaultSpec, Simulator};

use crate::cluster::{Registry, WriteMode};
use crate::world::{self, Seeded, World};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Simulator(#[from] kube_sim::SimError),
    #[error(transparent)]
    Faults(#[from] kube_sim::FaultError),
    #[error(transparent)]
    World(#[from] world::WorldError),
    #[error(transparent)]
    Registry(#[from] crate::cluster::ClusterError),
    #[error("failed to start the world's reactors: {0}")]
    Reactors(String),
}

/// The clusters of a world file in the order the file names them (the first is the default
/// cluster), and their faults.
pub fn world_clusters(path: &Path) -> Result<(Vec<String>, BTreeMap<String, FaultSpec>), SimError> {
    let read_err = |source: Box<dyn std::error::Error + Send + Sync>| {
        SimError::World(world::WorldError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let text = std::fs::read_to_string(path).map_err(|e| read_err(e.into()))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| read_err(e.into()))?;
    let mut names = Vec::new();
    let mut faults = BTreeMap::new();
    if let Some(m) = doc.get("clusters").and_then(serde_yaml::Value::as_mapping) {
        for (k, v) in m {
            let Some(name) = k.as_str() else { continue };
            names.push(name.to_string());
            if let Some(f) = v.get("faults") {
                let spec: FaultSpec = serde_yaml::from_value(f.clone()).map_err(|e| kube_sim::FaultError::Invalid {
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
                    kube_sim::new_uid("kubeconfig")
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
