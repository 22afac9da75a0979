//! The cluster registry (I/O edge): named clusters and one `kube::Client` for each, built once
//! and reused, plus a per-cluster cache of API discovery.
//!
//! Clusters come from a kubeconfig (each context is a cluster, context name = cluster name; the
//! current context is the default cluster), from a `clusters.yaml` that maps names to kubeconfig
//! files and contexts, or from the in-cluster config when running in a pod. In dry-run mode every
//! client carries a layer that adds `dryRun=All` to every request that could write, so no code
//! path can change a cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersion;
use kube::discovery::{ApiCapabilities, Scope};
use kube::{client::ClientBuilder, Client, Config};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("failed to read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("failed to build a client for cluster {cluster:?}: {source}")]
    Client {
        cluster: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to read clusters file {path}: {reason}")]
    ClustersFile { path: String, reason: String },
    #[error("cluster {cluster:?} is not in the cluster registry (known: {known})")]
    Unknown { cluster: String, known: String },
    #[error("failed to discover {api_version} on cluster {cluster:?}: {source}")]
    Discovery {
        cluster: String,
        api_version: String,
        source: kube::Error,
    },
    #[error("cluster {cluster:?} does not serve {api_version} (is its CRD installed?)")]
    NoApiVersion { cluster: String, api_version: String },
    #[error("cluster {cluster:?} serves no resource {resource:?} in {api_version}")]
    NoResource {
        cluster: String,
        api_version: String,
        resource: String,
    },
    #[error("apiVersion {api_version:?} is not group/version or v1: {reason}")]
    BadApiVersion { api_version: String, reason: String },
    #[error("no cluster is configured: give --kubeconfig, --clusters, or run in a pod")]
    Empty,
}

/// `clusters.yaml`: names mapped to kubeconfig files and contexts.
///
/// ```yaml
/// default: north
/// clusters:
///   north: {kubeconfig: /etc/recoverd/north.kubeconfig}
///   south: {kubeconfig: /etc/recoverd/all.kubeconfig, context: south-admin}
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClustersFile {
    #[serde(default)]
    pub default: Option<String>,
    pub clusters: BTreeMap<String, ClusterSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSource {
    /// Path to a kubeconfig, relative to the clusters file.
    pub kubeconfig: PathBuf,
    /// The context to use; default: the kubeconfig's current context.
    #[serde(default)]
    pub context: Option<String>,
}

/// Whether clients may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    Live,
    /// Every mutating request is sent with `dryRun=All`.
    DryRun,
}

/// What discovery says about a resource.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub subresources: Vec<String>,
}

type GroupResources = Vec<(ApiResource, ApiCapabilities)>;

pub struct Registry {
    clients: BTreeMap<String, Client>,
    default: String,
    mode: WriteMode,
    /// (cluster, apiVersion) → the resources discovery found there.
    discovery: Mutex<HashMap<(String, String), GroupResources>>,
    /// Objects as a patch step last read or wrote them (see [`Seen`]).
    seen: Seen,
}

/// Objects as the API server last returned them to a patch step, each with the
/// `resourceVersion` it had: the next patch of the same object sends that version as a
/// precondition instead of reading the object again. The API server refuses (409) a patch whose
/// `metadata.resourceVersion` is not the object's, so a patch that succeeds proves the object was
/// exactly the remembered one just before it — the "before" of the record's diff is as true as
/// after a GET. Bounded: [`Seen::MAX_OBJECTS`] objects of about [`Seen::MAX_BYTES`] at most;
/// Secrets and dry runs are never remembered (the patch step decides).
#[derive(Default)]
pub struct Seen(Mutex<HashMap<String, std::sync::Arc<Value>>>);

impl Seen {
    pub const MAX_OBJECTS: usize = 128;
    /// About this many bytes of strings and keys.
    pub const MAX_BYTES: usize = 64 * 1024;

    /// The object last seen at `key`.
    pub fn get(&self, key: &str) -> Option<std::sync::Arc<Value>> {
        self.0.lock().expect("seen objects").get(key).cloned()
    }

    /// Remembers an object the API server returned (forgets `key` when it has no
    /// `resourceVersion` or is too large); the oldest entries give way when full.
    pub fn put(&self, key: String, object: Value) {
        let mut map = self.0.lock().expect("seen objects");
        if resource_version(&object).is_none() || approx_bytes(&object, Self::MAX_BYTES) >= Self::MAX_BYTES {
            map.remove(&key);
            return;
        }
        if map.len() >= Self::MAX_OBJECTS && !map.contains_key(&key) {
            // Any one gives way: a forgotten object is only read again.
            if let Some(old) = map.keys().next().cloned() {
                map.remove(&old);
            }
        }
        map.insert(key, std::sync::Arc::new(object));
    }

    pub fn forget(&self, key: &str) {
        self.0.lock().expect("seen objects").remove(key);
    }
}

/// An object's `metadata.resourceVersion`.
pub fn resource_version(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|rv| !rv.is_empty())
}

/// Roughly how many bytes `v` holds, counting no further than `limit`.
fn approx_bytes(v: &Value, limit: usize) -> usize {
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += 8 + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => {
                stack.extend(a);
                0
            }
            Value::Object(o) => {
                for (k, v) in o {
                    total += k.len();
                    stack.push(v);
                }
                0
            }
            _ => 0,
        };
        if total >= limit {
            break;
        }
    }
    total
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("clusters", &self.clients.keys().collect::<Vec<_>>())
            .field("default", &self.default)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Registry {
    /// One cluster per context of the kubeconfig at `path` (or `$KUBECONFIG` / `~/.kube/config`
    /// when `None`); the current context is the default cluster.
    pub async fn from_kubeconfig(path: Option<&Path>, mode: WriteMode) -> Result<Self, ClusterError> {
        let (kc, shown) = match path {
            Some(p) => (Kubeconfig::read_from(p), p.display().to_string()),
            None => (Kubeconfig::read(), "$KUBECONFIG or ~/.kube/config".to_string()),
        };
        let kc = kc.map_err(|source| ClusterError::Kubeconfig {
            path: shown.clone(),
            source,
        })?;
        let mut clients = BTreeMap::new();
        for ctx in &kc.contexts {
            let client = client_for(&kc, Some(&ctx.name), mode).await?;
            clients.insert(ctx.name.clone(), client);
        }
        let default = kc
            .current_context
            .clone()
            .or_else(|| clients.keys().next().cloned())
            .ok_or(ClusterError::Empty)?;
        Ok(Self::new(clients, default, mode))
    }

    /// Clusters named in a `clusters.yaml`.
    pub async fn from_clusters_file(path: &Path, mode: WriteMode) -> Result<Self, ClusterError> {
        let err = |reason: String| ClusterError::ClustersFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: ClustersFile = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut clients = BTreeMap::new();
        for (name, src) in &file.clusters {
            let kpath = base.join(&src.kubeconfig);
            let kc = Kubeconfig::read_from(&kpath).map_err(|source| ClusterError::Kubeconfig {
                path: kpath.display().to_string(),
                source,
            })?;
            let client = client_for(&kc, src.context.as_deref(), mode)
                .await
                .map_err(|e| ClusterError::Client {
                    cluster: name.clone(),
                    source: Box::new(e),
                })?;
            clients.insert(name.clone(), client);
        }
        let default = file
            .default
            .or_else(|| clients.keys().next().cloned())
            .ok_or(ClusterError::Empty)?;
        if !clients.contains_key(&default) {
            return Err(err(format!("default cluster {default:?} is not among its clusters")));
        }
        Ok(Self::new(clients, default, mode))
    }

    /// The cluster recoverd runs in, named `in-cluster`, as the only and default cluster.
    pub fn in_cluster(mode: WriteMode) -> Result<Self, ClusterError> {
        let config = Config::incluster().map_err(|e| ClusterError::Client {
            cluster: "in-cluster".into(),
            source: Box::new(e),
        })?;
        let client = build_client(config, "in-cluster", mode)?;
        Ok(Self::new(
            BTreeMap::from([("in-cluster".to_string(), client)]),
            "in-cluster".into(),
            mode,
        ))
    }

    fn new(clients: BTreeMap<String, Client>, default: String, mode: WriteMode) -> Self {
        Registry {
            clients,
            default,
            mode,
            discovery: Mutex::default(),
            seen: Seen::default(),
        }
    }

    /// Objects patch steps last read or wrote.
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.clients.keys().cloned().collect()
    }

    pub fn default_cluster(&self) -> &str {
        &self.default
    }

    pub fn mode(&self) -> WriteMode {
        self.mode
    }

    /// The cluster a step names, or the default cluster.
    pub fn name_or_default<'a>(&'a self, cluster: Option<&'a str>) -> &'a str {
        cluster.unwrap_or(&self.default)
    }

    pub fn client(&self, cluster: &str) -> Result<Client, ClusterError> {
        self.clients.get(cluster).cloned().ok_or_else(|| ClusterError::Unknown {
            cluster: cluster.to_string(),
            known: self.clients.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    async fn group(
        &self,
        cluster: &str,
        api_version: &str,
    ) -> Result<Vec<(ApiResource, ApiCapabilities)>, ClusterError> {
        let key = (cluster.to_string(), api_version.to_string());
        if let Some(found) = self.discovery.lock().unwrap().get(&key) {
            return Ok(found.clone());
        }
        let client = self.client(cluster)?;
        let gv: GroupVersion =
            api_version.parse().map_err(
                |e: kube::core::gvk::ParseGroupVersionError| ClusterError::BadApiVersion {
                    api_version: api_version.into(),
                    reason: e.to_string(),
                },
            )?;
        let group = kube::discovery::pinned_group(&client, &gv)
            .await
            .map_err(|source| match &source {
                // The group/version is not served: say so, not the raw 404 body.
                kube::Error::Api(status) if status.code == 404 => ClusterError::NoApiVersion {
                    cluster: cluster.into(),
                    api_version: api_version.into(),
                },
                _ => ClusterError::Discovery {
                    cluster: cluster.into(),
                    api_version: api_version.into(),
                    source,
                },
            })?;
        let resources = group.versioned_resources(&gv.version);
        self.discovery.lock().unwrap().insert(key, resources.clone());
        Ok(resources)
    }

    /// Resolves `apiVersion` + plural `resource` on a cluster through (cached) discovery.
    pub async fn resolve(&self, cluster: &str, api_version: &str, resource: &str) -> Result<Resolved, ClusterError> {
        self.find(cluster, api_version, resource, |ar| ar.plural == resource)
            .await
    }

    /// Resolves `apiVersion` + `kind` on a cluster through (cached) discovery.
    pub async fn resolve_kind(&self, cluster: &str, api_version: &str, kind: &str) -> Result<Resolved, ClusterError> {
        self.find(cluster, api_version, kind, |ar| ar.kind == kind).await
    }

    async fn find(
        &self,
        cluster: &str,
        api_version: &str,
        what: &str,
        pred: impl Fn(&ApiResource) -> bool,
    ) -> Result<Resolved, ClusterError> {
        // Twice at most: a CRD installed after the first lookup is found once the cached group
        // is forgotten.
        for fresh in [false, true] {
            if fresh {
                self.discovery
                    .lock()
                    .unwrap()
                    .remove(&(cluster.to_string(), api_version.to_string()));
            }
            let resources = self.group(cluster, api_version).await?;
            if let Some((resource, caps)) = resources.into_iter().find(|(ar, _)| pred(ar)) {
                return Ok(Resolved {
                    resource,
                    namespaced: matches!(caps.scope, Scope::Namespaced),
                    subresources: caps.subresources.iter().map(|(ar, _)| ar.plural.clone()).collect(),
                });
            }
        }
        Err(ClusterError::NoResource {
            cluster: cluster.into(),
            api_version: api_version.into(),
            resource: what.into(),
        })
    }
}

async fn client_for(kc: &Kubeconfig, context: Option<&str>, mode: WriteMode) -> Result<Client, ClusterError> {
    let name = context.unwrap_or("current-context").to_string();
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kc.clone(), &opts)
        .await
        .map_err(|e| ClusterError::Client {
            cluster: name.clone(),
            source: Box::new(e),
        })?;
    build_client(config, &name, mode)
}

/// A client for a cluster outside the registry (the home cluster, in a pod), built as the
/// registry's are (`TCP_NODELAY`, see [`build_client`]).
pub fn client_from_config(config: Config, name: &str) -> Result<Client, ClusterError> {
    build_client(config, name, WriteMode::Live)
}

/// A client for one cluster. Its connections set `TCP_NODELAY`: kube's default connector does
/// not, and the first request on a new connection (after a watch is dropped, say) then waits ~40 ms
/// for the server's delayed ACK. Otherwise the stack is kube's own (`ClientBuilder::try_from`):
/// TLS from the config, timeouts, kube's retry policy, auth, extra headers, tracing. Configs that
/// need what only kube's builder can do (a proxy, exec credentials that expire) use it unchanged.
fn build_client(config: Config, name: &str, mode: WriteMode) -> Result<Client, ClusterError> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use kube::client::ConfigExt;
    use tower::{BoxError, ServiceBuilder};

    let err = |e: kube::Error| ClusterError::Client {
        cluster: name.to_string(),
        source: Box::new(e),
    };
    let dry_run =
        (mode == WriteMode::DryRun).then(|| tower::util::MapRequestLayer::new(force_dry_run::<kube::client::Body>));
    if config.proxy_url.is_some() || config.auth_info.exec.is_some() {
        let builder = ClientBuilder::try_from(config).map_err(err)?;
        return Ok(match dry_run {
            None => builder.build(),
            Some(layer) => builder.with_layer(&layer).build(),
        });
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let tls = config.rustls_https_connector_with_connector(http).map_err(err)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(tls);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .option_layer(dry_run)
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer().map_err(err)?)
        .layer(config.extra_headers_layer().map_err(err)?)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .map_err(BoxError::from)
        .service(http_client);
    Ok(ClientBuilder::new(service, config.default_namespace).build())
}

/// Adds `dryRun=All` to every request that could change something (anything but GET, HEAD,
/// OPTIONS). The API server then validates and answers as if it wrote, but stores nothing.
/// A DELETE's body (DeleteOptions) overrides its query on the API server, so the executor's
/// delete also sets `dryRun` in the body.
pub fn force_dry_run<B>(mut req: http::Request<B>) -> http::Request<B> {
    if matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        return req;
    }
    let uri = req.uri().clone();
    let pq = uri
        .path_and_query()
        .map_or(uri.path().to_string(), |pq| pq.as_str().to_string());
    let already = uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "dryRun=All"));
    if !already {
        let sep = if uri.query().is_some() { '&' } else { '?' };
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(format!("{pq}{sep}dryRun=All").parse().expect("valid path and query"));
        *req.uri_mut() = http::Uri::from_parts(parts).expect("valid uri");
    }
    req
}

/// The API handle for objects of a resolved resource in a cluster: namespaced or not, as the
/// cluster's discovery said.
pub fn api_for_object(
    registry: &Registry,
    cluster: &str,
    resolved: &Resolved,
    namespace: Option<&str>,
) -> Result<Api<DynamicObject>, ClusterError> {
    let client = registry.client(cluster)?;
    Ok(match (resolved.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client, ns, &resolved.resource),
        (true, None) => Api::default_namespaced_with(client, &resolved.resource),
        (false, _) => Api::all_with(client, &resolved.resource),
    })
}

/// `postgresql.cnpg.io/v1 clusters db/pg-north`
pub fn describe_object(api_version: &str, resource: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{api_version} {resource} {ns}/{name}"),
        None => format!("{api_version} {resource} {name}"),
    }
}

/// An object applied by [`apply_with_status`]: where it is and what the server stored.
pub struct Applied {
    pub api_version: String,
    pub kind: String,
    pub resolved: Resolved,
    pub namespace: Option<String>,
    pub name: String,
    pub object: Value,
}

/// Applies a whole manifest as `manager` (server-side apply, forced) and then its `status`
/// through the status subresource when the resource has one — as a seeder or an operator
/// writes an object. An error says which object and what the server answered.
pub async fn apply_with_status(
    registry: &Registry,
    cluster: &str,
    obj: &Value,
    manager: &str,
) -> Result<Applied, String> {
    use kube::api::{Patch, PatchParams};
    let get = |k: &str| obj.pointer(k).and_then(Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind), Some(name)) = (get("/apiVersion"), get("/kind"), get("/metadata/name")) else {
        return Err("every object needs apiVersion, kind and metadata.name".into());
    };
    let namespace = get("/metadata/namespace");
    let resolved = registry
        .resolve_kind(cluster, &api_version, &kind)
        .await
        .map_err(|e| e.to_string())?;
    let api = api_for_object(registry, cluster, &resolved, namespace.as_deref()).map_err(|e| e.to_string())?;
    let mut spec = obj.clone();
    let status = spec.as_object_mut().and_then(|o| o.remove("status"));
    let mut written = api
        .patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&spec))
        .await
        .map_err(|e| format!("{kind} {name}: {e}"))?;
    if let Some(status) = status.filter(|_| resolved.subresources.iter().any(|s| s == "status")) {
        let body = serde_json::json!({ "status": status });
        written = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(|e| format!("{kind} {name} status: {e}"))?;
    }
    Ok(Applied {
        api_version,
        kind,
        resolved,
        namespace,
        name,
        object: serde_json::to_value(written).unwrap_or_default(),
    })
}

/// The change between two versions of an object as a JSON Patch, without the bookkeeping
/// fields the API server changes on every write.
pub fn object_diff(before: &Value, after: &Value) -> Value {
    let patch = json_patch::diff(before, after);
    let ops: Vec<Value> = serde_json::to_value(patch)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|op| {
            let path = op.get("path").and_then(Value::as_str).unwrap_or("");
            !(path.starts_with("/metadata/resourceVersion")
                || path.starts_with("/metadata/managedFields")
                || path.starts_with("/metadata/generation"))
        })
        .collect();
    Value::Array(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_is_added_to_every_write_and_only_to_writes() {
        for m in [
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ] {
            let req = http::Request::builder()
                .method(m)
                .uri("https://h/api/v1/namespaces/a/configmaps/x?fieldManager=r")
                .body(())
                .unwrap();
            assert_eq!(force_dry_run(req).uri().query(), Some("fieldManager=r&dryRun=All"));
        }
        let req = http::Request::builder()
            .method("POST")
            .uri("https://h/api/v1/namespaces")
            .body(())
            .unwrap();
        assert_eq!(force_dry_run(req).uri().query(), Some("dryRun=All"));
        let req = http::Request::builder()
            .uri("https://h/api/v1/namespaces?watch=1")
            .body(())
            .unwrap();
        assert_eq!(force_dry_run(req).uri().query(), Some("watch=1"));
    }
}
