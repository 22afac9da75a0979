//! Reactors (I/O edge): client-side watchers that emulate operators — "when this field of this
//! object becomes X, after D set that field to Y" (CloudNativePG writing
//! `status.demotionToken` after `spec.replica.primary` changes). They talk to clusters only
//! through the registry's clients, so the same reactors run against real clusters and the
//! simulator, in `rehearse` and in tests.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::Registry;
use crate::duration;
use crate::fieldpath::{self, FieldPath};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reactor {
    pub cluster: String,
    pub when: ReactorWhen,
    /// Delay before reacting, e.g. `500ms`.
    #[serde(default)]
    pub after: Option<String>,
    pub set: ReactorSet,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactorWhen {
    pub api_version: String,
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    pub field_path: String,
    pub equals: Value,
}

/// What to set; the same object unless `cluster`/`apiVersion`/`resource`/`namespace`/`name`
/// say otherwise. A `status.…` path is written through the status subresource when the
/// resource has one, as an operator would.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactorSet {
    pub field_path: String,
    pub value: Value,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("reactor on cluster {cluster:?}: {reason}")]
    Setup { cluster: String, reason: String },
}

/// Running reactors; they stop when this is dropped.
pub struct Reactors {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    fired: Arc<std::sync::atomic::AtomicUsize>,
}

impl Reactors {
    /// How many times reactors have set a field.
    pub fn fired(&self) -> usize {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the reactors and returns once each has seen its object's current state, so that only
/// changes made after this call trigger them.
pub async fn start(
    registry: Arc<Registry>,
    reactors: &[Reactor],
) -> Result<Reactors, ReactorError> {
    let fired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for r in reactors {
        let setup = |reason: String| ReactorError::Setup {
            cluster: r.cluster.clone(),
            reason,
        };
        let path = FieldPath::parse(&r.when.field_path).map_err(|e| setup(e.to_string()))?;
        FieldPath::parse(&r.set.field_path).map_err(|e| setup(e.to_string()))?;
        let after = r
            .after
            .as_deref()
            .map(duration::parse)
            .transpose()
            .map_err(|e| setup(e.to_string()))?
            .unwrap_or_default();
        let resolved = registry
            .resolve(&r.cluster, &r.when.api_version, &r.when.resource)
            .await
            .map_err(|e| setup(e.to_string()))?;
        let api = crate::executor::api_for_object(
            &registry,
            &r.cluster,
            &resolved,
            r.when.namespace.as_deref(),
        )
        .map_err(|e| setup(e.to_string()))?;
        let config = watcher::Config::default().fields(&format!("metadata.name={}", r.when.name));
        let mut stream = watcher(api, config).default_backoff().boxed();
        // Wait for the initial state.
        let mut held = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last_error = String::from("no answer");
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(watcher::Event::InitApply(obj)))) => {
                    held = matches(
                        &path,
                        &serde_json::to_value(obj).unwrap_or_default(),
                        &r.when.equals,
                    );
                }
                Ok(Some(Ok(watcher::Event::InitDone))) => break,
                Ok(Some(Err(e))) => last_error = e.to_string(),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(setup(format!(
                        "could not watch {} within 30s: {last_error}",
                        r.when.name
                    )))
                }
            }
        }
        let (registry, r, fired) = (registry.clone(), r.clone(), fired.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let obj = match ev {
                    Ok(watcher::Event::Apply(obj)) | Ok(watcher::Event::InitApply(obj)) => obj,
                    _ => continue,
                };
                let now = matches(&path, &serde_json::to_value(obj).unwrap_or_default(), &r.when.equals);
                if now && !held {
                    tokio::time::sleep(after).await;
                    match set(&registry, &r).await {
                        Ok(()) => {
                            fired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tracing::info!(cluster = %r.cluster, name = %r.when.name, field = %r.set.field_path, "reactor fired");
                        }
                        Err(e) => tracing::warn!(cluster = %r.cluster, error = %e, "reactor failed to set its field"),
                    }
                }
                held = now;
            }
        }));
    }
    Ok(Reactors { tasks, fired })
}

fn matches(path: &FieldPath, obj: &Value, equals: &Value) -> bool {
    path.get(obj)
        .ok()
        .flatten()
        .is_some_and(|v| &v == equals || fieldpath::as_text(&v) == fieldpath::as_text(equals))
}

async fn set(registry: &Registry, r: &Reactor) -> Result<(), String> {
    let cluster = r.set.cluster.as_deref().unwrap_or(&r.cluster);
    let api_version = r.set.api_version.as_deref().unwrap_or(&r.when.api_version);
    let resource = r.set.resource.as_deref().unwrap_or(&r.when.resource);
    let namespace = r.set.namespace.as_deref().or(r.when.namespace.as_deref());
    let name = r.set.name.as_deref().unwrap_or(&r.when.name);
    let resolved = registry
        .resolve(cluster, api_version, resource)
        .await
        .map_err(|e| e.to_string())?;
    let api = crate::executor::api_for_object(registry, cluster, &resolved, namespace)
        .map_err(|e| e.to_string())?;
    let path = FieldPath::parse(&r.set.field_path).map_err(|e| e.to_string())?;
    let patch = path
        .merge_patch(r.set.value.clone())
        .map_err(|e| e.to_string())?;
    let params = PatchParams::default();
    let status = r.set.field_path.starts_with("status.")
        && resolved.subresources.iter().any(|s| s == "status");
    let result = if status {
        api.patch_status(name, &params, &Patch::Merge(&patch)).await
    } else {
        api.patch(name, &params, &Patch::Merge(&patch)).await
    };
    result.map(|_| ()).map_err(|e| e.to_string())
}
