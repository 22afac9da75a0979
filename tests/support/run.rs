//! Running plans against the test clusters through the library, as `recoverd run` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use recoverd::cluster::{Registry, WriteMode};
use recoverd::executor::{Executor, NoObserver, RunInput};
use recoverd::plan::Plan;
use recoverd::run::RunRecord;
use serde_json::Value;

use super::clusters::{repo_dir, TestClusters};

pub async fn registry(clusters: &TestClusters, mode: WriteMode) -> Arc<Registry> {
    registry_from(clusters.kubeconfig(), mode).await
}

pub async fn registry_from(kubeconfig: &Path, mode: WriteMode) -> Arc<Registry> {
    Arc::new(Registry::from_kubeconfig(Some(kubeconfig), mode).await.unwrap())
}

pub fn plan(file: &str) -> Plan {
    plan_in("run", file)
}

/// A plan from `tests/data/plans/<dir>/`, validated.
pub fn plan_in(dir: &str, file: &str) -> Plan {
    let path = repo_dir().join("tests/data/plans").join(dir).join(file);
    let (mut plans, errors) = recoverd::plan::load_paths(std::slice::from_ref(&path));
    assert!(errors.is_empty(), "{errors:?}");
    recoverd::plan::compile_one(&plans.remove(0), None).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a plan to the end with `ns` as its `Values.ns` (plus other params).
pub async fn run(registry: Arc<Registry>, plan: &Plan, ns: &str, params: &[(&str, Value)]) -> RunRecord {
    let mut p: BTreeMap<String, Value> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    p.insert("ns".into(), Value::String(ns.into()));
    let input = RunInput { params: p, alert: None };
    let executor = Executor::new(registry);
    let mut record = executor.new_record("test", plan, &input);
    let control = recoverd::executor::RunControl::default();
    executor.execute(plan, &input, &mut record, &NoObserver, &control).await;
    record
}

/// Copies a world (and the CRDs it names) into a temporary directory with every
/// `namespace: db` replaced by `ns`, so tests sharing clusters stay apart. Returns the world
/// file's path; keep the TempDir alive.
pub fn world_in_namespace(world: &str, ns: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = repo_dir().join("tests/data");
    copy_replacing(&data.join("worlds"), &dir.path().join("worlds"), ns);
    // The CRDs the test apiserver takes: upstream on a current server, downgraded on v1.20.
    copy_replacing(&super::clusters::crd_dir(), &dir.path().join("crds"), ns);
    let path = dir.path().join("worlds").join(world);
    (dir, path)
}

fn copy_replacing(from: &Path, to: &Path, ns: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            if entry.file_name() != "upstream" {
                copy_replacing(&p, &to.join(entry.file_name()), ns);
            }
        } else {
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text.replace("namespace: db", &format!("namespace: {ns}"));
            std::fs::write(to.join(entry.file_name()), text).unwrap();
        }
    }
}

/// Seeds a world into the test clusters and starts its reactors.
#[cfg(feature = "sim")]
pub async fn seed(
    registry: Arc<Registry>,
    world_file: &Path,
) -> (Vec<recoverd::world::Seeded>, recoverd::reactor::Reactors) {
    let (world, base) = recoverd::world::load(world_file).unwrap();
    let seeded = recoverd::world::seed(&registry, &world, &base).await.unwrap();
    let reactors = recoverd::reactor::start(registry, &world.reactors).await.unwrap();
    (seeded, reactors)
}

/// Reads one field of an object in a test cluster.
pub async fn field(
    registry: &Registry,
    cluster: &str,
    api_version: &str,
    resource: &str,
    ns: &str,
    name: &str,
    path: &str,
) -> Option<Value> {
    let resolved = registry.resolve(cluster, api_version, resource).await.unwrap();
    let api = recoverd::cluster::api_for_object(registry, cluster, &resolved, Some(ns)).unwrap();
    let obj = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
    recoverd::fieldpath::FieldPath::parse(path).unwrap().get(&obj).unwrap()
}

/// The CNPG world (`tests/data/worlds/cnpg.yaml`: two CNPG clusters, the HAProxy config, the
/// reactors that play the operator) seeded into the shared test clusters in a fresh namespace.
#[cfg(feature = "sim")]
pub struct CnpgWorld {
    pub ns: String,
    /// A live registry of the shared clusters.
    pub registry: Arc<Registry>,
    pub seeded: Vec<recoverd::world::Seeded>,
    pub reactors: recoverd::reactor::Reactors,
    _dir: tempfile::TempDir,
}

#[cfg(feature = "sim")]
pub async fn cnpg_world(test: &str) -> CnpgWorld {
    let clusters = super::shared();
    let ns = clusters.namespace(test).await;
    let registry = registry(clusters, WriteMode::Live).await;
    let (dir, world) = world_in_namespace("cnpg.yaml", &ns);
    let (seeded, reactors) = seed(registry.clone(), &world).await;
    CnpgWorld {
        ns,
        registry,
        seeded,
        reactors,
        _dir: dir,
    }
}

/// The CNPG world seeded directly into the shared clusters, and a second registry in which the
/// named clusters are reached through fault-injecting proxies.
#[cfg(feature = "sim")]
pub struct FaultyWorld {
    pub proxies: BTreeMap<String, super::proxy::FaultProxy>,
    /// The clusters themselves, for checking what really happened.
    pub direct: Arc<Registry>,
    /// The clusters as recoverd reaches them in the test: some behind proxies.
    pub proxied: Arc<Registry>,
    pub ns: String,
    _reactors: recoverd::reactor::Reactors,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

#[cfg(feature = "sim")]
impl FaultyWorld {
    pub async fn new(test: &str, behind_proxies: &[&str]) -> Self {
        let clusters = super::shared();
        let ns = clusters.namespace(test).await;
        let direct = registry(clusters, WriteMode::Live).await;
        let (world_dir, world) = world_in_namespace("cnpg.yaml", &ns);
        let (_seeded, reactors) = seed(direct.clone(), &world).await;
        let proxies: BTreeMap<String, super::proxy::FaultProxy> = behind_proxies
            .iter()
            .map(|c| (c.to_string(), super::proxy::FaultProxy::in_front_of(clusters, c)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        clusters.write_kubeconfig(
            &kubeconfig,
            &proxies.iter().map(|(c, p)| (c.clone(), p.url())).collect(),
        );
        let proxied = registry_from(&kubeconfig, WriteMode::Live).await;
        FaultyWorld {
            proxies,
            direct,
            proxied,
            ns,
            _reactors: reactors,
            _dirs: (world_dir, dir),
        }
    }

    /// The proxy in front of a cluster.
    pub fn proxy(&self, cluster: &str) -> &super::proxy::FaultProxy {
        &self.proxies[cluster]
    }
}
