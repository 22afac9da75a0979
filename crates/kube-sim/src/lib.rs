//! A Kubernetes API simulator (I/O edge): Kubernetes-API-compatible HTTP servers for several
//! named clusters in one process, each with its own in-memory store, held to the behaviour of a
//! real kube-apiserver by the differential tests in `tests/differential.rs`. It models
//! kube-apiserver **v1.36** (`/version` says v1.36.2): every scenario is compared with a real
//! v1.36.2, and with v1.20.2 where the two agree.
//!
//! Clusters are served over plain HTTP on loopback, without authentication: a kubeconfig
//! whose `server` is `http://127.0.0.1:PORT` works with `kubectl` and `kube::Client` alike.
//! [`Simulator::start`] serves the clusters and writes that kubeconfig; [`Simulator::seed`]
//! creates objects in one of them. Everything else is private: clients speak HTTP to it.
//! It knows nothing of the programs it is used by (recoverd seeds worlds and runs its reactors
//! through ordinary clients).
//!
//! CRD validation rules (`x-kubernetes-validations`, CEL) are checked when a CRD is written and
//! evaluated on every write, transition rules with `oldSelf` and `optionalOldSelf` included,
//! unchanged values ratcheted (`cel`); `fieldValidation=Strict|Warn|Ignore` reports unknown
//! and duplicate fields (`strict`); status subresource writes have managers of their own.
//!
//! Known differences from kube-apiserver v1.36 (everything else the differential suite
//! compares is the same, byte for byte after masking uids, times and resourceVersion values):
//! - Only some built-in resources are served (namespaces, configmaps, secrets, services,
//!   serviceaccounts, pods, events, persistentvolumeclaims, persistentvolumes, deployments,
//!   statefulsets, roles, clusterroles, rolebindings, clusterrolebindings, leases,
//!   customresourcedefinitions), and only version v1 of each group (also in aggregated
//!   discovery, which lists only the subresources served); no `/openapi/v2`; OpenAPI v3
//!   documents. Aggregated discovery is served as JSON only: an Accept clause asking for its
//!   protobuf form counts as any other type.
//! - CEL rules run on the `cel` crate with its strings and lists extensions and the Kubernetes
//!   libraries in `cel_lib`, `cel_net` and `cel_semver` (quantities, URLs, list, regex, IP,
//!   CIDR, semver and sets functions); macros with two variables are rewritten into loops the
//!   `cel` crate runs (`cel_macros`); the format library's name and CRD formats
//!   (`uri`, `uuid`, `byte`, `date`, `datetime`) are checked (`cel_format`); `duration()` and
//!   `timestamp()` come with the `cel` crate's `chrono` feature. A rule calling a function
//!   Kubernetes declares and the simulator does not implement (none is known that a CRD rule
//!   can reach) installs, as on the real server, and a write that needs it is refused with a 422 naming the rule and the function (the real
//!   server runs it: a rehearsal refuses rather than accept what the cluster may refuse, and
//!   says why). The parse errors of `ip()`/`cidr()` have Go's wording for IPv4 and Go's
//!   form, not always its words, for IPv6. When a CRD is written, rules are type-checked against the
//!   schema (`cel_check`) only as far as the simulator can be sure of cel-go's verdict —
//!   undefined fields, field selection on scalars, operators and string functions on the wrong
//!   scalar types, a rule that is not a bool, a messageExpression that is not a string — with
//!   cel-go's messages and positions; cel-go refuses more (mixed list literals, comprehensions
//!   over objects, optionals of objects). Syntax errors carry the `cel` crate's detail, not
//!   cel-go's. Costs are estimated as cel-go and Kubernetes estimate them (the differential
//!   scenario `celcost` holds them to the real server's figures to six decimals), with the
//!   real server's limits per rule, per schema and per request. Every rule and messageExpression
//!   runs metered (`cel_meter`): each node it evaluates counts as cel-go's runtime cost tracker
//!   counts it (identifiers, selections and calls 1, the logical operators nothing, comparisons,
//!   `in`, concatenation, `contains`, `matches`, the Kubernetes list and string functions and
//!   `sets.*` by their operands' sizes as cel-go and Kubernetes charge them), and it is cut
//!   short with the real server's error only when what it did goes past the per-call limit or
//!   the request's budget — an `exists()` that finds its item at once or a guarded loop is
//!   accepted, as on the real server, and the thresholds of full loops match v1.36.2's to
//!   within a few items (differential scenarios `celruntime`, `celshortcircuit`, `celfunctions`).
//!   As on the real server (which runs cel-go's optimizer), constant lists and maps, `x in
//!   [constants]`, functions of one constant and `has()` cost nothing. A two-variable macro
//!   also counts a tenth of its target's size each time it starts (it copies the target into
//!   pairs, which cel-go's native loop does not), so that such a loop stopping at once inside
//!   another cannot run unbounded. Functions cel-go charges 1 whatever their operands
//!   (`charAt()`, `size()`, string `indexOf()`) are bounded by the request's 60-second deadline,
//!   after which a rule still running gives the real server's `operation interrupted`.
//!   `matches()`, `find()` and `findAll()` compile a pattern once and read it as RE2 does (`\d`,
//!   `\w`, `\s`, `\b` ASCII); `duration()`, `timestamp()`, `string()` of a timestamp and the
//!   calendar getters follow Go and cel-go (`cel_time`); `url()`, `isURL()` and `format.uri()`
//!   are Go's `url.ParseRequestURI` (`go_url`). Left: a timestamp offset of 24 hours and the
//!   time zones `24:00` and `Local` of the getters are refused; `transformMapEntry` reports a
//!   key given twice only after its loop; the CRD-time cost estimate leaves
//!   `<format>.validate()` out; patterns with Unicode class names RE2 does not know
//!   (`\p{Letter}`) match as the `regex` crate reads them, and a constant `find()` pattern that
//!   does not compile refuses the write, not the CRD. Rules run with the store lock
//!   released (`cel::Gate`). Ratcheting skips unchanged values for CEL rules that are not
//!   transition rules (as v1.36.2 does: transition rules are evaluated on unchanged values
//!   too, differential scenario `ratcheting`), not for the schema's other constraints. Strict field validation of a merge patch answers
//!   like a strict create (the real server quotes the whole patched object in a 422).
//! - Controllers, in their simplest form (`controllers`, off with
//!   [`Simulator::start_without_controllers`]): garbage collection with the propagation
//!   policies; StatefulSet pods (bound to the node `kube-sim`, at once `Running` and `Ready`,
//!   re-created with a new uid after a delay when deleted, rolled out to a new template as
//!   `RollingUpdate` does, at most 500 per StatefulSet with a Warning event `ReplicasCapped`
//!   beyond); revisions are `NAME-HASH` labels without ControllerRevision objects; storage
//!   protection that waits for the pods using a claim; the kubelet's part of graceful pod
//!   deletion, after `kube-sim.io/termination-delay` (default 200 ms) rather than when the
//!   containers stop. Nothing else: pods are never scheduled, deployments get no replicas,
//!   services no endpoints. A deleted namespace or CRD is `Terminating` for 5 s, then its
//!   content is deleted as a client's DELETE would (finalizers and grace periods kept), and it
//!   goes once that content is gone; the CRD's resources stay served meanwhile, creates
//!   included.
//! - CRD schemas check the string formats `date-time`, `date`, `uuid` and `byte`; other
//!   formats (`email`, `hostname`, `ipv4`, `cidr`, …) are not checked.
//! - Validation of built-in kinds covers names, ConfigMap and Secret keys and a few Deployment
//!   fields; a body whose JSON types do not fit the Go type is not refused with Go's message.
//! - Protobuf request bodies are read for Namespaces, ConfigMaps, Secrets and ServiceAccounts
//!   (what `kubectl create` sends); responses are always JSON.
//! - Apply bodies are YAML 1.2: an unquoted `y`, `yes` or `on` stays a string (Go reads
//!   YAML 1.1 booleans). A typed apply is checked for undeclared fields, not value types.
//! - Watches resume from the last 10,000 events of a cluster; bookmark timing follows the watch
//!   cache's rules only approximately. Streaming lists (`sendInitialEvents`) answer as a server
//!   whose etcd has progress notifications (the differential suite's does not, so they are
//!   tested against kube-rs's watcher instead, `tests/watchlist.rs`).
//! - No authentication or authorization; no `managedFields` cap of 10 updaters; no sync of
//!   kubectl's last-applied annotation; CRD versions are served without conversion; the
//!   `scale` subresource is listed in discovery only. `pods/exec` speaks only the WebSocket
//!   protocols (no SPDY) and answers from the pod's `kube-sim.io/exec` annotation; there is no
//!   stdin, tty, attach, logs or port-forward.
//!
//! Modules, by what they own:
//! - `typed`: field types, paths and sets, compare/merge (structured-merge-diff);
//! - `builtin`: the built-in resources, their types, defaults and validation;
//! - `schema`: CRD structural schemas — pruning, defaulting, validation;
//! - `cel`: CRD validation rules: the CRD's checks, evaluation outside the store lock,
//!   ratcheting;
//! - `cel_check`: the CEL types of schemas, rules' type checks and cost estimates;
//! - `cel_lib`: Kubernetes' CEL libraries (quantity, URL, lists, regex, sets);
//! - `cel_net`, `cel_semver`: Kubernetes' IP/CIDR and semver CEL libraries;
//! - `cel_macros`: CEL's macros with two variables (`all(k, v, …)`, `transformMap`, …);
//! - `cel_meter`: the cost meter of rule evaluation;
//! - `cel_regex`: patterns read as RE2 reads them, `matches()`;
//! - `cel_value`: a helper for overloads written over values;
//! - `cel_time`: `duration()`, `timestamp()` and the calendar getters as cel-go reads them;
//! - `go_url`: Go's `url.ParseRequestURI`;
//! - `cel_format`: Kubernetes' format library (`format.dns1123Label().validate(…)`, …);
//! - `strict`: `fieldValidation`, unknown and duplicate fields;
//! - `patch`: merge, JSON and strategic merge patches;
//! - `proto`: the protobuf bodies `kubectl create` sends;
//! - `managed`: `managedFields` and server-side apply conflicts;
//! - `store`: objects, resourceVersions, the event log;
//! - `discovery`: the served resources and discovery documents;
//! - `api`: the verbs (get, list, create, update, patch, apply, delete);
//! - `watch`: watch streams;
//! - `selector`: label and field selectors;
//! - `status`: `Status` errors;
//! - `delete_options`: DeleteOptions from a DELETE's body or query;
//! - `faults`: injected latency, errors, cut watches, dead clusters;
//! - `openapi`: OpenAPI v3 documents for `kubectl`;
//! - `table`: the Tables `kubectl get` prints;
//! - `controllers`: garbage collection, StatefulSets, storage protection;
//! - `exec`: `pods/exec` over the WebSocket channel protocol, for the commands a pod declares;
//! - `http`: the axum routes;

mod api;
mod builtin;
mod cel;
mod cel_check;
mod cel_format;
mod cel_lib;
mod cel_macros;
mod cel_meter;
mod cel_net;
mod cel_regex;
mod cel_semver;
mod cel_time;
mod cel_value;
mod controllers;
mod delete_options;
mod discovery;
mod exec;
mod faults;
mod go_url;
mod http;
mod managed;
mod openapi;
mod patch;
mod proto;
mod schema;
mod selector;
mod status;
mod store;
mod strict;
mod table;
mod typed;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::{FaultError, FaultSpec};

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
    #[error("no cluster to simulate")]
    NoClusters,
    #[error(transparent)]
    Faults(#[from] FaultError),
    #[error("no simulated cluster is named {0:?}")]
    UnknownCluster(String),
    #[error("failed to seed {object} in cluster {cluster:?}: {code} {message}")]
    Seed {
        cluster: String,
        object: String,
        code: u16,
        message: String,
    },
}

/// One served cluster.
pub struct ServedCluster {
    pub name: String,
    pub addr: SocketAddr,
    cluster: Arc<api::Cluster>,
    task: Option<JoinHandle<()>>,
    controllers: Option<JoinHandle<()>>,
    /// The last event the controllers have acted on.
    handled: Arc<std::sync::atomic::AtomicU64>,
}

/// Simulated clusters, served until dropped.
pub struct Simulator {
    clusters: Vec<ServedCluster>,
}

impl Simulator {
    /// Serves one cluster per name, in order: on free loopback ports when `listen` is `None`,
    /// else the first on `listen` and the next ones on the following ports. Each cluster runs
    /// the simulated controllers (garbage collection, StatefulSets, storage protection).
    pub async fn start(
        names: &[String],
        listen: Option<SocketAddr>,
        faults: &BTreeMap<String, FaultSpec>,
    ) -> Result<Self, SimError> {
        Self::serve(names, listen, faults, true).await
    }

    /// Like [`Simulator::start`], without controllers: the API server alone, as a bare
    /// kube-apiserver (what the differential tests compare with).
    pub async fn start_without_controllers(
        names: &[String],
        listen: Option<SocketAddr>,
        faults: &BTreeMap<String, FaultSpec>,
    ) -> Result<Self, SimError> {
        Self::serve(names, listen, faults, false).await
    }

    async fn serve(
        names: &[String],
        listen: Option<SocketAddr>,
        faults: &BTreeMap<String, FaultSpec>,
        with_controllers: bool,
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
            let listener = TcpListener::bind(addr).await.map_err(|e| SimError::Listen {
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
            let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let controllers = with_controllers.then(|| controllers::spawn(cluster.clone(), handled.clone()));
            let task = if f.down() {
                // A dead cluster: the port is known, nothing answers on it.
                drop(listener);
                None
            } else {
                let app = http::router(http::Served {
                    cluster: cluster.clone(),
                    address: addr.to_string(),
                    faults: Arc::new(f),
                    handled: with_controllers.then(|| handled.clone()),
                });
                Some(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "the simulator stopped serving");
                    }
                }))
            };
            tracing::info!(cluster = %name, %addr, "simulated cluster listening");
            clusters.push(ServedCluster {
                name: name.clone(),
                addr,
                controllers,
                handled,
                cluster,
                task,
            });
        }
        Ok(Simulator { clusters })
    }

    pub fn clusters(&self) -> &[ServedCluster] {
        &self.clusters
    }

    /// `http://127.0.0.1:PORT` of a cluster.
    pub fn server(&self, name: &str) -> Option<String> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .map(|c| format!("http://{}", c.addr))
    }

    /// Creates objects in one cluster, in order, as a client's POST would (CRDs are served as
    /// soon as they are created); an object's `status` is then written through its status
    /// subresource. Returns the objects as stored.
    pub fn seed(&self, cluster: &str, objects: &[Value]) -> Result<Vec<Value>, SimError> {
        let c = self
            .clusters
            .iter()
            .find(|c| c.name == cluster)
            .ok_or_else(|| SimError::UnknownCluster(cluster.to_string()))?;
        objects
            .iter()
            .map(|o| c.cluster.seed(o.clone()))
            .collect::<Result<_, _>>()
            .map_err(|(object, e)| SimError::Seed {
                cluster: cluster.to_string(),
                object,
                code: e.code,
                message: e.message,
            })
    }

    /// Waits (at most 5 s) until the controllers have acted on every change made so far — the
    /// pods of seeded StatefulSets exist, their status is written — so that what follows starts
    /// from a settled cluster. Delayed actions (a pod re-created later) are not waited for.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        for c in self.clusters.iter().filter(|c| c.controllers.is_some()) {
            while c.handled.load(std::sync::atomic::Ordering::SeqCst) < c.cluster.last_event_rv()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }

    /// A kubeconfig with one context per cluster (context name = cluster name); the first
    /// cluster is the current context.
    pub fn kubeconfig(&self) -> String {
        let mut out = String::from(
            "# Simulated clusters: plain HTTP on loopback, no credentials needed.\napiVersion: v1\nkind: Config\nclusters:\n",
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
            if let Some(t) = c.controllers.take() {
                t.abort();
            }
        }
    }
}

/// A fresh uid, as the simulator gives objects (for names that must not collide).
pub fn new_uid(scope: &str) -> String {
    store::new_uid(scope)
}
