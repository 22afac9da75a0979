//! Worlds (I/O edge): the clusters a rehearsal starts from — CRDs and objects per cluster —
//! and the reactors that emulate operators, read from a YAML file and applied through the
//! registry's clients. Also the expectations a rehearsal checks afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cluster::Registry;
use crate::cluster::{api_for_object, object_diff};
use crate::fieldpath::{self, FieldPath};
use crate::reactor::{Reactor, ValueFrom};

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
    #[error("failed to read {path}: {reason}")]
    Read { path: String, reason: String },
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
    pub fn describe(&self) -> String {
        format!(
            "{}: {}",
            self.cluster,
            crate::cluster::describe_object(
                &self.api_version,
                &self.resource,
                self.namespace.as_deref(),
                &self.name
            )
        )
    }
}

pub fn load(path: &Path) -> Result<(World, PathBuf), WorldError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorldError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let world: World = serde_yaml::from_str(&text).map_err(|e| WorldError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((world, path.parent().unwrap_or(Path::new(".")).to_path_buf()))
}

fn read_docs(path: &Path) -> Result<Vec<Value>, WorldError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorldError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).map_err(|e| WorldError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Installs the world's CRDs and objects (server-side apply, status through the status
/// subresource) and returns every object as it stands afterwards.
pub async fn seed(
    registry: &Registry,
    world: &World,
    base: &Path,
) -> Result<Vec<Seeded>, WorldError> {
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
                let api = api_for_object(registry, cluster, &resolved, None)
                    .map_err(|e| err(e.to_string()))?;
                let name = crd
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                api.patch(
                    &name,
                    &PatchParams::apply(WORLD_MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .map_err(|e| err(format!("CRD {name}: {e}")))?;
                // Served once discovery lists it.
                let group = crd
                    .pointer("/spec/group")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
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
        if let Ok(now) = current(registry, s).await {
            s.before = now;
        }
    }
    Ok(seeded)
}

async fn apply_object(
    registry: &Registry,
    cluster: &str,
    mut obj: Value,
) -> Result<Seeded, String> {
    let get = |k: &str| obj.pointer(k).and_then(Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind), Some(name)) =
        (get("/apiVersion"), get("/kind"), get("/metadata/name"))
    else {
        return Err("every object needs apiVersion, kind and metadata.name".into());
    };
    let namespace = get("/metadata/namespace");
    let resolved = registry
        .resolve_kind(cluster, &api_version, &kind)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(ns) = namespace.as_deref().filter(|_| resolved.namespaced) {
        let nsr = registry
            .resolve(cluster, "v1", "namespaces")
            .await
            .map_err(|e| e.to_string())?;
        let nsapi = api_for_object(registry, cluster, &nsr, None).map_err(|e| e.to_string())?;
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        nsapi
            .patch(ns, &PatchParams::apply(WORLD_MANAGER), &Patch::Apply(&body))
            .await
            .map_err(|e| format!("namespace {ns}: {e}"))?;
    }
    let api = api_for_object(registry, cluster, &resolved, namespace.as_deref())
        .map_err(|e| e.to_string())?;
    let status = obj.as_object_mut().and_then(|o| o.remove("status"));
    let params = PatchParams::apply(WORLD_MANAGER).force();
    let mut after = api
        .patch(&name, &params, &Patch::Apply(&obj))
        .await
        .map_err(|e| format!("{kind} {name}: {e}"))?;
    if let Some(status) = status {
        if resolved.subresources.iter().any(|s| s == "status") {
            let body = json!({"status": status});
            after = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map_err(|e| format!("{kind} {name} status: {e}"))?;
        }
    }
    Ok(Seeded {
        cluster: cluster.to_string(),
        api_version,
        resource: resolved.resource.plural.clone(),
        namespace,
        name,
        before: serde_json::to_value(after).unwrap_or_default(),
    })
}

/// Expectations after a rehearsal, per object: field values (`fields`), fields equal to a field
/// of another object (`sameAs`: a token handed from one cluster to another), fields that must
/// differ from what the world seeded (`changed`: a new uid, a generated token), or that the
/// object is gone (`absent`). Every other world object must be unchanged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// The run's expected result, when it is not `Succeeded`: a failover whose fence of the
    /// lost site cannot succeed ends `SucceededWithErrors`, and a rehearsal proving that passes.
    #[serde(default)]
    pub outcome: Option<String>,
    pub expect: Vec<Expectation>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectation {
    pub cluster: String,
    pub api_version: String,
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    /// fieldPath → expected value.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
    /// fieldPath → a field it must equal: of this object unless `cluster`, `apiVersion`,
    /// `resource`, `namespace` or `name` say otherwise.
    #[serde(default)]
    pub same_as: BTreeMap<String, ValueFrom>,
    /// Fields whose value must differ from the one the world seeded (a missing field never
    /// counts as changed).
    #[serde(default)]
    pub changed: Vec<String>,
    /// The object must not exist.
    #[serde(default)]
    pub absent: bool,
}

/// An object's change during the rehearsal.
pub struct Change {
    pub object: String,
    pub diff: Value,
}

/// Reads every seeded object again and returns the ones that changed.
pub async fn changes(registry: &Registry, seeded: &[Seeded]) -> Vec<(Seeded, Value)> {
    let mut out = Vec::new();
    for s in seeded {
        let after = current(registry, s).await.unwrap_or(Value::Null);
        let diff = object_diff(&s.before, &after);
        if diff.as_array().is_some_and(|a| !a.is_empty()) {
            out.push((s.clone(), after));
        }
    }
    out
}

async fn current(registry: &Registry, s: &Seeded) -> Result<Value, String> {
    let resolved = registry
        .resolve(&s.cluster, &s.api_version, &s.resource)
        .await
        .map_err(|e| e.to_string())?;
    let api = api_for_object(registry, &s.cluster, &resolved, s.namespace.as_deref())
        .map_err(|e| e.to_string())?;
    api.get(&s.name)
        .await
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .map_err(|e| e.to_string())
}

/// Checks expectations; returns one message per failure.
pub async fn check(
    registry: &Registry,
    seeded: &[Seeded],
    expectations: &Expectations,
) -> Vec<String> {
    let mut failures = Vec::new();
    for e in &expectations.expect {
        let s = Seeded {
            cluster: e.cluster.clone(),
            api_version: e.api_version.clone(),
            resource: e.resource.clone(),
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            before: Value::Null,
        };
        let found = current(registry, &s).await;
        let obj = match (found, e.absent) {
            (Ok(_), true) => {
                failures.push(format!("{}: exists, expected it gone", s.describe()));
                continue;
            }
            (Err(err), true) if err.contains("NotFound") || err.contains("not found") => continue,
            (Ok(o), false) => o,
            (Err(err), _) => {
                failures.push(format!("{}: {err}", s.describe()));
                continue;
            }
        };
        let field = |obj: &Value, path: &str| {
            FieldPath::parse(path)
                .ok()
                .and_then(|p| p.get(obj).ok().flatten())
        };
        // A Secret's values are never printed, not even in a failed expectation.
        let secret = s.api_version == "v1" && s.resource == "secrets";
        let shown = |v: &Option<Value>| match v {
            None => "<missing>".to_string(),
            Some(_) if secret => "<redacted>".to_string(),
            Some(v) => fieldpath::as_text(v),
        };
        let same = |a: &Value, b: &Value| a == b || fieldpath::as_text(a) == fieldpath::as_text(b);
        for (path, want) in &e.fields {
            let got = field(&obj, path);
            if !got.as_ref().is_some_and(|g| same(g, want)) {
                failures.push(format!(
                    "{}: {path} is {}, expected {}",
                    s.describe(),
                    shown(&got),
                    shown(&Some(want.clone()))
                ));
            }
        }
        for (path, other) in &e.same_as {
            let o = Seeded {
                cluster: other
                    .object
                    .cluster
                    .clone()
                    .unwrap_or_else(|| s.cluster.clone()),
                api_version: (other.object.api_version.clone())
                    .unwrap_or_else(|| s.api_version.clone()),
                resource: (other.object.resource.clone()).unwrap_or_else(|| s.resource.clone()),
                namespace: (other.object.namespace.clone()).or_else(|| s.namespace.clone()),
                name: other.object.name.clone().unwrap_or_else(|| s.name.clone()),
                before: Value::Null,
            };
            let want = match current(registry, &o).await {
                Ok(o) => field(&o, &other.field_path),
                Err(err) => {
                    failures.push(format!("{}: {err}", o.describe()));
                    continue;
                }
            };
            let got = field(&obj, path);
            let ok = matches!((&got, &want), (Some(g), Some(w)) if same(g, w));
            if !ok {
                failures.push(format!(
                    "{}: {path} is {}, expected the same as {} {} ({})",
                    s.describe(),
                    shown(&got),
                    o.describe(),
                    other.field_path,
                    shown(&want)
                ));
            }
        }
        let before = seeded.iter().find(|b| {
            b.cluster == s.cluster
                && b.name == s.name
                && b.resource == s.resource
                && b.namespace == s.namespace
        });
        for path in &e.changed {
            let Some(before) = before else {
                failures.push(format!(
                    "{}: `changed` needs an object the world seeded",
                    s.describe()
                ));
                break;
            };
            let (was, now) = (field(&before.before, path), field(&obj, path));
            if now.is_none() || was == now {
                failures.push(format!(
                    "{}: {path} is {}, expected it to change from {}",
                    s.describe(),
                    shown(&now),
                    shown(&was)
                ));
            }
        }
    }
    for (s, _) in changes(registry, seeded).await {
        let expected = expectations.expect.iter().any(|e| {
            e.cluster == s.cluster
                && e.name == s.name
                && e.resource == s.resource
                && e.namespace == s.namespace
        });
        if !expected {
            failures.push(format!(
                "{}: changed, but no expectation names it",
                s.describe()
            ));
        }
    }
    failures
}
