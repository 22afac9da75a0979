//! Worlds (I/O edge): the clusters a rehearsal starts from — CRDs and objects per cluster —
//! and the reactors that emulate operators, read from a YAML file and applied through the
//! registry's clients. What a rehearsal checks afterwards is in [`expect`].

mod expect;

pub use expect::{
    as_in_record, changes, check, check_steps, verify, Expectation, Expectations, Inventory, StepExpectation,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cluster::{api_for_object, Registry};
use crate::reactor::Reactor;

const WORLD_MANAGER: &str = "recoverd-world";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    pub clusters: BTreeMap<String, WorldCluster>,
    #[serde(default)]
    pub reactors: Vec<Reactor>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldCluster {
    /// CRD files, relative to the world file.
    #[serde(default)]
    pub crds: Vec<PathBuf>,
    /// Objects, inline or as file paths relative to the world file.
    #[serde(default)]
    pub objects: Vec<Value>,
    /// Faults the built-in simulator injects for this cluster (ignored on real clusters).
    #[serde(default)]
    pub faults: Option<kube_sim::FaultSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("failed to read {path}")]
    Read {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to set up cluster {cluster:?}: {reason}")]
    Apply { cluster: String, reason: String },
}

/// An object of the world, as it was after seeding.
#[derive(Clone, Debug)]
pub struct Seeded {
    pub cluster: String,
    pub api_version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
    pub before: Value,
}

impl Seeded {
    /// Whether `other` is the same object (cluster, kind and name).
    pub(crate) fn same_object(&self, other: &Seeded) -> bool {
        self.cluster == other.cluster
            && self.api_version == other.api_version
            && self.resource == other.resource
            && self.namespace == other.namespace
            && self.name == other.name
    }

    /// The object as it stands now.
    pub(crate) async fn current(&self, registry: &Registry) -> Result<Value, String> {
        let resolved = registry
            .resolve(&self.cluster, &self.api_version, &self.resource)
            .await
            .map_err(|e| e.to_string())?;
        let api =
            api_for_object(registry, &self.cluster, &resolved, self.namespace.as_deref()).map_err(|e| e.to_string())?;
        api.get(&self.name)
            .await
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .map_err(|e| e.to_string())
    }

    pub fn describe(&self) -> String {
        format!(
            "{}: {}",
            self.cluster,
            crate::cluster::describe_object(&self.api_version, &self.resource, self.namespace.as_deref(), &self.name)
        )
    }
}

pub fn load(path: &Path) -> Result<(World, PathBuf), WorldError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorldError::Read {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    let world: World = serde_yaml::from_str(&text).map_err(|e| WorldError::Read {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    Ok((world, path.parent().unwrap_or(Path::new(".")).to_path_buf()))
}

fn read_docs(path: &Path) -> Result<Vec<Value>, WorldError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorldError::Read {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).map_err(|e| WorldError::Read {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Installs the world's CRDs and objects (server-side apply, status through the status
/// subresource) and returns every object as it stands afterwards.
pub async fn seed(registry: &Registry, world: &World, base: &Path) -> Result<Vec<Seeded>, WorldError> {
    let mut seeded = Vec::new();
    for (cluster, spec) in &world.clusters {
        let err = |reason: String| WorldError::Apply {
            cluster: cluster.clone(),
            reason,
        };
        for crd_file in &spec.crds {
            for crd in read_docs(&base.join(crd_file))? {
                let gv = "apiextensions.k8s.io/v1";
                let resolved = registry
                    .resolve(cluster, gv, "customresourcedefinitions")
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let api = api_for_object(registry, cluster, &resolved, None).map_err(|e| err(e.to_string()))?;
                let name = crd
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                api.patch(&name, &PatchParams::apply(WORLD_MANAGER).force(), &Patch::Apply(&crd))
                    .await
                    .map_err(|e| err(format!("CRD {name}: {e}")))?;
                // Served once discovery lists it.
                let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default();
                let plural = crd
                    .pointer("/spec/names/plural")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let version = crd
                    .pointer("/spec/versions/0/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let mut tries = 0;
                while registry
                    .resolve(cluster, &format!("{group}/{version}"), plural)
                    .await
                    .is_err()
                {
                    tries += 1;
                    if tries > 100 {
                        return Err(err(format!("CRD {name} was never served")));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let mut objects = Vec::new();
        for o in &spec.objects {
            match o {
                Value::String(file) => objects.extend(read_docs(&base.join(file))?),
                other => objects.push(other.clone()),
            }
        }
        for obj in objects {
            seeded.push(apply_object(registry, cluster, obj).await.map_err(err)?);
        }
    }
    // What the clusters' controllers did in answer to seeding (a StatefulSet's status) is part
    // of the world, not a change the plan makes.
    for s in &mut seeded {
        if let Ok(now) = s.current(registry).await {
            s.before = now;
        }
    }
    Ok(seeded)
}

async fn apply_object(registry: &Registry, cluster: &str, obj: Value) -> Result<Seeded, String> {
    // A namespaced object's namespace is created first, as `kubectl apply` of a directory
    // with the namespace in it would.
    let text = |k: &str| obj.pointer(k).and_then(Value::as_str).unwrap_or_default();
    let namespaced = registry
        .resolve_kind(cluster, text("/apiVersion"), text("/kind"))
        .await
        .is_ok_and(|r| r.namespaced);
    if let Some(ns) = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|_| namespaced)
    {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        crate::cluster::apply_with_status(registry, cluster, &namespace, WORLD_MANAGER)
            .await
            .map_err(|e| format!("namespace {ns}: {e}"))?;
    }
    let applied = crate::cluster::apply_with_status(registry, cluster, &obj, WORLD_MANAGER).await?;
    Ok(Seeded {
        cluster: cluster.to_string(),
        api_version: applied.api_version,
        resource: applied.resolved.resource.plural.clone(),
        namespace: applied.namespace,
        name: applied.name,
        before: applied.object,
    })
}
