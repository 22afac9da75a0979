//! Plans from the home cluster (I/O edge): `RecoveryPlan` resources watched with kube-runtime
//! reflectors — recoverd's own (`recoverd.io`) and, when their CRD is served, Nova's
//! (`recovery.elotl.co`) — loaded and validated exactly as plan files are ([`super::load`],
//! [`mod@super::validate`]), and published together with the file plans as one [`PlanSet`].
//!
//! Owns three rules. One bad object never stops the watch or the other plans: objects are read
//! as untyped JSON, and each is loaded on its own. Every object learns what recoverd made of it,
//! on its `status` (`conditions[type=Valid]`, `observedGeneration`, `problems`) and, when that
//! changes, as an Event. Names clash the same way everywhere: a plan file's `namespace/name`
//! wins over a resource's, a `recoverd.io` resource's over a Nova one's; the loser is reported
//! `Valid=False`, reason `NameClash`. It must not execute anything, nor write anything but the
//! status of the plans it reads and Events about them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::load::{load_str, API_VERSION, NOVA_API_VERSION};
use super::set::{InvalidPlan, PlanSet};
use super::{compile_one, Plan};

/// Which namespaces are watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Namespace(ns) => write!(f, "namespace {ns}"),
            Scope::All => write!(f, "all namespaces"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterPlansError {
    #[error("failed to list {resource} in the home cluster ({scope}): {source}; is its CRD installed (`recoverd crd | kubectl apply -f -`), and may recoverd list and watch it (deploy/overlays/kube-native)?")]
    List {
        resource: String,
        scope: Scope,
        source: kube::Error,
    },
    #[error(
        "failed to list {resource} in the home cluster ({scope}) within {limit:?}; see the log for the watch's errors"
    )]
    NotSynced {
        resource: String,
        scope: Scope,
        limit: Duration,
    },
}

/// The group a plan resource belongs to; when names clash, the first wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flavour {
    Recoverd,
    Nova,
}

impl Flavour {
    pub fn api_version(self) -> &'static str {
        match self {
            Flavour::Recoverd => API_VERSION,
            Flavour::Nova => NOVA_API_VERSION,
        }
    }

    fn resource(self) -> ApiResource {
        let (group, version) = self.api_version().split_once('/').expect("group/version");
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: self.api_version().into(),
            kind: "RecoveryPlan".into(),
            plural: "recoveryplans".into(),
        }
    }

    /// `recoveryplans.<group>`, as kubectl names the resource.
    pub fn resource_name(self) -> String {
        format!("recoveryplans.{}", self.resource().group)
    }
}

/// One plan resource: which it is, and what loading and validating it gave.
#[derive(Clone, Debug)]
pub struct ObjectPlan {
    pub flavour: Flavour,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// The plan, or what is wrong with it (each naming the field).
    pub outcome: Result<Arc<Plan>, Vec<String>>,
}

impl ObjectPlan {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// What `GET /api/v1/plans` shows as the plan's file.
    fn origin(&self) -> String {
        origin(self.flavour, &self.namespace, &self.name)
    }
}

fn origin(flavour: Flavour, namespace: &str, name: &str) -> String {
    format!("cluster:{}/{namespace}/{name}", flavour.resource_name())
}

/// What recoverd made of one resource, as its `Valid` condition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub valid: bool,
    /// `Validated`, `InvalidPlan` or `NameClash`.
    pub reason: &'static str,
    pub message: String,
    pub problems: Vec<String>,
    pub steps: usize,
}

/// Loads one resource as a plan file would be loaded — the same loader, the same validation
/// against the registry's cluster names — plus what only a resource can get wrong: it has no
/// directory, so `templateFrom.file` cannot be read.
pub fn load_object(flavour: Flavour, obj: &DynamicObject, clusters: Option<&BTreeSet<String>>) -> ObjectPlan {
    let namespace = obj.namespace().unwrap_or_else(|| "default".into());
    let name = obj.name_any();
    let outcome = load_value(flavour, &namespace, &name, obj, clusters);
    ObjectPlan {
        flavour,
        namespace,
        name,
        generation: obj.metadata.generation,
        outcome,
    }
}

fn load_value(
    flavour: Flavour,
    namespace: &str,
    name: &str,
    obj: &DynamicObject,
    clusters: Option<&BTreeSet<String>>,
) -> Result<Arc<Plan>, Vec<String>> {
    let Some(spec) = obj.data.get("spec") else {
        return Err(vec!["spec: the RecoveryPlan has no spec".into()]);
    };
    let doc = json!({
        "apiVersion": flavour.api_version(),
        "kind": "RecoveryPlan",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": obj.metadata.uid,
            "generation": obj.metadata.generation,
            "resourceVersion": obj.metadata.resource_version,
        },
        "spec": spec,
    });
    let text = serde_yaml::to_string(&doc).map_err(|e| vec![format!("spec: {e}")])?;
    let file = PathBuf::from(origin(flavour, namespace, name));
    let (mut plans, errors) = load_str(&file, &text);
    if !errors.is_empty() {
        // Lines and columns are of the YAML made from the object, not of anything the author
        // wrote: the message (which names the field) is what helps.
        return Err(errors.into_iter().map(|e| e.message).collect());
    }
    if plans.len() != 1 {
        return Err(vec!["spec: the RecoveryPlan could not be read".into()]);
    }
    let loaded = plans.remove(0);
    let compiled = compile_one(&loaded, clusters);
    let mut problems: Vec<String> = match &compiled {
        Ok(_) => Vec::new(),
        Err(invalid) => invalid.problems.iter().map(ToString::to_string).collect(),
    };
    for (list, steps) in [
        ("steps", &loaded.plan.spec.steps),
        ("onFailure", &loaded.plan.spec.on_failure),
    ] {
        for (i, step) in steps.iter().enumerate() {
            let file = step
                .apply
                .as_ref()
                .and_then(|a| a.template_from.as_ref())
                .and_then(|t| t.file.as_ref());
            if file.is_some() {
                problems.push(format!(
                    "spec.{list}[{i}].apply.templateFrom.file: a plan from the cluster has no directory to read files from; use templateFrom.configMap or templateFrom.inline"
                ));
            }
        }
    }
    match compiled {
        Ok(mut plan) if problems.is_empty() => {
            // Nothing of the resource is relative to a directory (its `source.file` only names
            // it).
            plan.base_dir = None;
            Ok(Arc::new(plan))
        }
        _ => Err(problems),
    }
}

/// Combines the file plans with the resources' plans (pure): the set alerts are matched
/// against, and each resource's verdict. A name already taken — by a valid file plan, or by a
/// `recoverd.io` resource for a Nova one — makes the later plan a `NameClash`.
pub fn combine(files: &PlanSet, objects: &[ObjectPlan]) -> (PlanSet, Vec<Verdict>) {
    let mut taken: BTreeMap<String, String> = files
        .plans()
        .map(|p| (p.key.clone(), p.source.file.display().to_string()))
        .collect();
    let mut plans: Vec<Arc<Plan>> = files.plans().cloned().collect();
    let mut invalid: Vec<InvalidPlan> = files.invalid.clone();
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.sort_by_key(|&i| (objects[i].flavour, objects[i].key()));
    let mut verdicts: Vec<Option<Verdict>> = vec![None; objects.len()];
    for i in order {
        let o = &objects[i];
        let steps = match &o.outcome {
            Ok(p) => p.steps.len(),
            Err(_) => 0,
        };
        let verdict = match &o.outcome {
            Err(problems) => Verdict {
                valid: false,
                reason: "InvalidPlan",
                message: problems.join("; "),
                problems: problems.clone(),
                steps,
            },
            Ok(_) if taken.contains_key(&o.key()) => {
                let problem = format!(
                    "plan {} is also defined by {}, which is used instead",
                    o.key(),
                    taken[&o.key()]
                );
                Verdict {
                    valid: false,
                    reason: "NameClash",
                    message: problem.clone(),
                    problems: vec![problem],
                    steps,
                }
            }
            Ok(plan) => {
                taken.insert(o.key(), o.origin());
                plans.push(plan.clone());
                Verdict {
                    valid: true,
                    reason: "Validated",
                    message: format!("the plan is valid and matched against alerts ({steps} steps)"),
                    problems: Vec::new(),
                    steps,
                }
            }
        };
        if !verdict.valid {
            invalid.push(InvalidPlan {
                file: o.origin(),
                plan: Some(o.key()),
                problems: verdict.problems.clone(),
            });
        }
        verdicts[i] = Some(verdict);
    }
    (
        PlanSet::from_valid(plans, invalid),
        verdicts.into_iter().map(|v| v.expect("every object judged")).collect(),
    )
}

/// The file plans and the cluster's, combined into the one set alerts are matched against
/// whenever either changes.
pub struct PlanSources {
    state: Mutex<Sources>,
    publish: Box<dyn Fn(PlanSet) + Send + Sync>,
}

#[derive(Default)]
struct Sources {
    files: PlanSet,
    objects: Vec<ObjectPlan>,
}

impl PlanSources {
    /// `publish` receives every new combined set (e.g. the run service's `set_plans`).
    pub fn new(publish: impl Fn(PlanSet) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(PlanSources {
            state: Mutex::default(),
            publish: Box::new(publish),
        })
    }

    /// The plan files were (re)loaded.
    pub fn set_files(&self, files: PlanSet) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.files = files;
        let (set, _) = combine(&state.files, &state.objects);
        (self.publish)(set);
    }

    /// The cluster's plans changed; returns each object's verdict (same order).
    fn set_objects(&self, objects: Vec<ObjectPlan>) -> Vec<Verdict> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.objects = objects;
        let (set, verdicts) = combine(&state.files, &state.objects);
        (self.publish)(set);
        verdicts
    }
}

/// The newest live run of a plan, as the run store has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRun {
    /// `namespace/name` of the plan.
    pub plan: String,
    pub id: String,
    /// The run's phase (`Running` while it runs).
    pub phase: String,
}

/// The newest live runs, newest first (a bounded number): called on the blocking pool.
pub type LastRuns = Arc<dyn Fn() -> futures::future::BoxFuture<'static, Vec<LastRun>> + Send + Sync>;

/// Where and how to watch.
pub struct WatchConfig {
    /// A client for the home cluster.
    pub client: Client,
    pub scope: Scope,
    /// The registry's cluster names, for validation.
    pub clusters: BTreeSet<String>,
    /// How often to look for Nova's CRD while it is not served.
    pub nova_poll: Duration,
    /// How long the first list of recoverd.io plans may take before `start` fails.
    pub sync_limit: Duration,
    /// Where `status.lastRun` and `status.lastResult` come from, and how often to look.
    pub last_runs: Option<(LastRuns, Duration)>,
}

/// Starts watching; returns once the `recoverd.io` plans are listed and published (so the
/// first alert already sees them), or fails saying why they cannot be.
pub async fn start(
    config: WatchConfig,
    sources: Arc<PlanSources>,
) -> Result<tokio::task::JoinHandle<()>, ClusterPlansError> {
    let WatchConfig {
        client,
        scope,
        clusters,
        nova_poll,
        sync_limit,
        last_runs,
    } = config;
    let api = |flavour: Flavour| -> Api<DynamicObject> {
        let ar = flavour.resource();
        match &scope {
            Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            Scope::All => Api::all_with(client.clone(), &ar),
        }
    };
    // A clear error now (no CRD, no permission) instead of a watch retrying forever.
    api(Flavour::Recoverd)
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(|source| ClusterPlansError::List {
            resource: Flavour::Recoverd.resource_name(),
            scope: scope.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let own = spawn_watch(Flavour::Recoverd, api(Flavour::Recoverd), tx.clone());
    tokio::time::timeout(sync_limit, own.wait_until_ready())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ClusterPlansError::NotSynced {
            resource: Flavour::Recoverd.resource_name(),
            scope: scope.clone(),
            limit: sync_limit,
        })?;
    info!(%scope, "watching RecoveryPlans in the home cluster");
    let reporter = Reporter {
        controller: "recoverd".into(),
        instance: std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok()),
    };
    let mut reconciler = Reconciler {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        clusters,
        sources,
        stores: vec![(Flavour::Recoverd, own, true)],
        cache: BTreeMap::new(),
        used: BTreeMap::new(),
        last_runs,
    };
    reconciler.reconcile().await;
    let nova_api = api(Flavour::Nova);
    let nova_client = client.clone();
    Ok(tokio::spawn(async move {
        let discover = tokio::spawn(discover_nova(nova_client, nova_api, nova_poll, tx));
        reconciler.run(rx).await;
        discover.abort();
    }))
}

/// What the watches tell the reconciler.
enum Signal {
    Changed,
    Started(Flavour, Store<DynamicObject>, bool),
}

fn spawn_watch(flavour: Flavour, api: Api<DynamicObject>, tx: mpsc::UnboundedSender<Signal>) -> Store<DynamicObject> {
    let writer = Writer::new(flavour.resource());
    let store = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                // The store changes whole at InitDone: nothing to look at before that.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(_) => {
                    if tx.send(Signal::Changed).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(resource = %flavour.resource_name(), error = %e, "watching RecoveryPlans failed; retrying")
                }
            }
        }
    });
    store
}

/// Looks for Nova's CRD every `every` until it is served, then watches it.
async fn discover_nova(client: Client, api: Api<DynamicObject>, every: Duration, tx: mpsc::UnboundedSender<Signal>) {
    loop {
        match client.list_api_group_resources(NOVA_API_VERSION).await {
            Ok(list) if list.resources.iter().any(|r| r.name == "recoveryplans") => {
                let status = list.resources.iter().any(|r| r.name == "recoveryplans/status");
                info!(
                    status_subresource = status,
                    "Nova's RecoveryPlan CRD is served; watching its plans"
                );
                let store = spawn_watch(Flavour::Nova, api, tx.clone());
                if store.wait_until_ready().await.is_ok() {
                    let _ = tx.send(Signal::Started(Flavour::Nova, store, status));
                }
                return;
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "Nova's RecoveryPlan CRD is not served"),
        }
        tokio::time::sleep(every).await;
    }
}

struct Reconciler {
    client: Client,
    recorder: Recorder,
    clusters: BTreeSet<String>,
    sources: Arc<PlanSources>,
    /// Each watched kind's store, and whether its status may be written (a CRD without the
    /// status subresource would count a status write as a new generation).
    stores: Vec<(Flavour, Store<DynamicObject>, bool)>,
    /// Loaded plans by (flavour, uid), with the generation they were loaded from: an object is
    /// loaded and validated again only when its spec changed.
    cache: BTreeMap<(Flavour, String), (String, ObjectPlan)>,
    /// The resources whose plans are in use (valid, no clash), by `namespace/name`.
    used: BTreeMap<String, (Flavour, usize)>,
    last_runs: Option<(LastRuns, Duration)>,
}

impl Reconciler {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Signal>) {
        let every = self
            .last_runs
            .as_ref()
            .map_or(Duration::from_secs(3600), |(_, every)| *every);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signal = tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => s,
                    None => return,
                },
                _ = tick.tick() => {
                    self.report_last_runs().await;
                    continue;
                }
            };
            let mut signals = vec![signal];
            // Many events at once (a relist, a kubectl apply of a directory): one pass.
            while let Ok(more) = rx.try_recv() {
                signals.push(more);
            }
            for s in signals {
                if let Signal::Started(flavour, store, status) = s {
                    self.stores.push((flavour, store, status));
                }
            }
            self.reconcile().await;
        }
    }

    async fn reconcile(&mut self) {
        let mut objects = Vec::new();
        let mut seen = BTreeSet::new();
        for (flavour, store, writable) in &self.stores {
            for obj in store.state() {
                let uid = obj.uid().unwrap_or_default();
                // A spec change is a new generation; status writes (ours) are not.
                let version = match obj.metadata.generation {
                    Some(g) => g.to_string(),
                    None => obj.resource_version().unwrap_or_default(),
                };
                seen.insert((*flavour, uid.clone()));
                let plan = match self.cache.get(&(*flavour, uid.clone())) {
                    Some((v, plan)) if *v == version => plan.clone(),
                    _ => {
                        let plan = load_object(*flavour, &obj, Some(&self.clusters));
                        self.cache.insert((*flavour, uid), (version, plan.clone()));
                        plan
                    }
                };
                objects.push((obj, plan, *writable));
            }
        }
        self.cache.retain(|k, _| seen.contains(k));
        let verdicts = self
            .sources
            .set_objects(objects.iter().map(|(_, p, _)| p.clone()).collect());
        self.used = (objects.iter().enumerate())
            .filter(|(i, (_, _, writable))| *writable && verdicts[*i].valid)
            .map(|(i, (_, p, _))| (p.key(), (p.flavour, i)))
            .collect();
        let (valid, invalid) = verdicts
            .iter()
            .fold((0, 0), |(v, i), x| if x.valid { (v + 1, i) } else { (v, i + 1) });
        debug!(valid, invalid, "RecoveryPlans from the cluster published");
        for ((obj, plan, writable), verdict) in objects.iter().zip(&verdicts) {
            if *writable {
                self.report(obj, plan, verdict).await;
            }
        }
    }

    /// Writes each used plan's newest live run to its status (`lastRun`, `lastResult`) when the
    /// status says something else.
    async fn report_last_runs(&self) {
        let Some((last_runs, _)) = &self.last_runs else {
            return;
        };
        if self.used.is_empty() {
            return;
        }
        let runs = last_runs().await;
        let mut newest: BTreeMap<&str, &LastRun> = BTreeMap::new();
        for run in &runs {
            newest.entry(run.plan.as_str()).or_insert(run);
        }
        for (plan, run) in newest {
            let Some((flavour, _)) = self.used.get(plan) else {
                continue;
            };
            let Some((ns, name)) = plan.split_once('/') else {
                continue;
            };
            let store = self.stores.iter().find(|(f, _, _)| f == flavour);
            let Some(obj) = store.and_then(|(_, store, _)| {
                store.get(&reflector::ObjectRef::new_with(name, flavour.resource()).within(ns))
            }) else {
                continue;
            };
            let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
            if status["lastRun"] == run.id.as_str() && status["lastResult"] == run.phase.as_str() {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &flavour.resource());
            let patch = json!({"status": {"lastRun": run.id, "lastResult": run.phase}});
            if let Err(e) = api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                debug!(plan, error = %e, "failed to write the plan's last run");
            }
        }
    }

    /// Writes the verdict to the object's status when it says something else, and records an
    /// Event when validity, reason or message changed.
    async fn report(&self, obj: &DynamicObject, plan: &ObjectPlan, verdict: &Verdict) {
        let status = obj.data.get("status").cloned().unwrap_or(Value::Null);
        let current = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Valid"))
            .cloned()
            .unwrap_or(Value::Null);
        let want_status = if verdict.valid { "True" } else { "False" };
        let message = bounded(&verdict.message, 4096);
        let same_condition = current["status"] == want_status
            && current["reason"] == verdict.reason
            && current["message"] == message.as_str();
        if same_condition
            && status["observedGeneration"].as_i64() == plan.generation
            && status["steps"].as_u64() == Some(verdict.steps as u64)
        {
            return;
        }
        let transition = if current["status"] == want_status {
            current["lastTransitionTime"].clone()
        } else {
            Value::Null
        };
        let transition = if transition.is_string() {
            transition
        } else {
            json!(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
                .expect("now is a valid time")
                .to_string())
        };
        let patch = json!({"status": {
            "valid": verdict.valid,
            "problems": verdict.problems,
            "steps": verdict.steps,
            "observedGeneration": plan.generation,
            "conditions": [{
                "type": "Valid",
                "status": want_status,
                "reason": verdict.reason,
                "message": message,
                "observedGeneration": plan.generation,
                "lastTransitionTime": transition,
            }],
        }});
        let ar = plan.flavour.resource();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &plan.namespace, &ar);
        match api
            .patch_status(&plan.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Deleted meanwhile: the watch will say so.
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(e) => {
                warn!(plan = %plan.key(), error = %e, "failed to write the plan's status");
            }
        }
        if same_condition {
            return;
        }
        if verdict.valid {
            info!(plan = %plan.key(), origin = %plan.origin(), "plan from the cluster loaded");
        } else {
            warn!(plan = %plan.key(), origin = %plan.origin(), reason = verdict.reason, message = %verdict.message, "plan from the cluster is invalid; it does not run");
        }
        let event = KubeEvent {
            type_: if verdict.valid {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: verdict.reason.into(),
            note: Some(bounded(&verdict.message, 1000)),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&ar)).await {
            warn!(plan = %plan.key(), error = %e, "failed to record an Event for the plan");
        }
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), marked when cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(flavour: Flavour, ns: &str, name: &str, spec: Value) -> DynamicObject {
        let mut obj = DynamicObject::new(name, &flavour.resource()).within(ns);
        obj.metadata.uid = Some(format!("uid-{name}"));
        obj.metadata.generation = Some(3);
        obj.data = json!({"spec": spec});
        obj
    }

    fn wait_spec(labels: Value) -> Value {
        json!({"alertLabels": labels, "steps": [{"name": "pause", "type": "wait", "wait": {"duration": "1s"}}]})
    }

    fn names(set: &PlanSet) -> Vec<String> {
        set.plans().map(|p| p.key.clone()).collect()
    }

    #[test]
    fn a_resource_loads_like_a_file_and_keeps_its_generation() {
        let obj = object(Flavour::Recoverd, "ops", "p", wait_spec(json!({"alertname": "A"})));
        let plan = load_object(Flavour::Recoverd, &obj, None);
        let plan = plan.outcome.expect("valid");
        assert_eq!(plan.generation, "3");
        assert_eq!(plan.key, "ops/p");
        assert_eq!(plan.base_dir, None);
        assert_eq!(
            plan.source.file.display().to_string(),
            "cluster:recoveryplans.recoverd.io/ops/p"
        );
    }

    #[test]
    fn an_invalid_resource_is_reported_with_the_field_to_fix() {
        let cases = [
            (
                json!({"steps": [{"name": "w", "type": "wait", "wait": {"apiVersion": "v1", "resource": "configmaps", "namespace": "x", "name": "y", "fieldPath": "data.a", "condition": {"exists": true}}}]}),
                "spec.steps[0].wait.timeout",
            ),
            (
                json!({"steps": [{"name": "w", "type": "wait", "cluster": "mars", "wait": {"duration": "1s"}}]}),
                "spec.steps[0].cluster",
            ),
            (
                json!({"steps": [{"name": "a", "type": "apply", "apply": {"target": {"kind": "ConfigMap", "namespace": "x", "name": "y", "key": "k"}, "templateFrom": {"file": "/etc/passwd"}}}]}),
                "spec.steps[0].apply.templateFrom.file",
            ),
            (json!({"steps": [{"name": "w", "type": "explode"}]}), "spec.steps[0]"),
        ];
        let clusters = BTreeSet::from(["north".to_string()]);
        for (spec, field) in cases {
            let obj = object(Flavour::Recoverd, "ops", "bad", spec.clone());
            let plan = load_object(Flavour::Recoverd, &obj, Some(&clusters));
            let problems = plan.outcome.expect_err("invalid");
            assert!(
                problems.iter().any(|p| p.contains(field)),
                "{spec}: {problems:?} does not name {field}"
            );
        }
    }

    #[test]
    fn a_nova_resource_gets_positional_step_names() {
        let obj = object(
            Flavour::Nova,
            "ops",
            "n",
            json!({"alertLabels": {"app": "x"}, "steps": [{"type": "wait", "wait": {"duration": "1s"}}]}),
        );
        let loaded = load_object(Flavour::Nova, &obj, None).outcome.unwrap();
        assert!(loaded.nova);
        assert_eq!(loaded.steps[0].name, "step-1");
    }

    #[test]
    fn files_win_name_clashes_then_recoverd_resources_then_nova_ones() {
        let text = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: shared, namespace: ops}\nspec:\n  steps:\n  - {name: s, type: wait, wait: {duration: 1s}}\n";
        let (plans, errors) = load_str(std::path::Path::new("plans/shared.yaml"), text);
        assert!(errors.is_empty());
        let plan = compile_one(&plans[0], None).unwrap();
        let files = PlanSet::from_valid([Arc::new(plan)], Vec::new());
        let load = |f, name: &str| load_object(f, &object(f, "ops", name, wait_spec(json!({"a": "b"}))), None);
        let objects = vec![
            load(Flavour::Nova, "both"),
            load(Flavour::Recoverd, "shared"),
            load(Flavour::Recoverd, "both"),
            load(Flavour::Nova, "nova-only"),
        ];
        let (set, verdicts) = combine(&files, &objects);
        assert_eq!(names(&set), ["ops/both", "ops/nova-only", "ops/shared"]);
        assert_eq!(
            set.get("ops/shared").unwrap().source.file,
            PathBuf::from("plans/shared.yaml")
        );
        assert!(set
            .get("ops/both")
            .unwrap()
            .source
            .file
            .display()
            .to_string()
            .contains("recoverd.io"));
        let reasons: Vec<_> = verdicts.iter().map(|v| v.reason).collect();
        assert_eq!(reasons, ["NameClash", "NameClash", "Validated", "Validated"]);
        assert!(
            verdicts[1].message.contains("plans/shared.yaml"),
            "{}",
            verdicts[1].message
        );
        assert_eq!(set.invalid.len(), 2);
    }

    #[test]
    fn either_source_changing_publishes_both_combined() {
        let published: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let sink = published.clone();
        let sources = PlanSources::new(move |set| sink.lock().unwrap().push(names(&set)));
        let text = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: f, namespace: ops}\nspec:\n  steps:\n  - {name: s, type: wait, wait: {duration: 1s}}\n";
        let (plans, _) = load_str(std::path::Path::new("f.yaml"), text);
        let file_plan = Arc::new(compile_one(&plans[0], None).unwrap());
        sources.set_files(PlanSet::from_valid([file_plan.clone()], Vec::new()));
        let obj = object(Flavour::Recoverd, "ops", "r", wait_spec(json!({"a": "b"})));
        sources.set_objects(vec![load_object(Flavour::Recoverd, &obj, None)]);
        sources.set_files(PlanSet::default());
        assert_eq!(
            *published.lock().unwrap(),
            [vec!["ops/f"], vec!["ops/f", "ops/r"], vec!["ops/r"]]
        );
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        assert_eq!(bounded("abc", 10), "abc");
        let cut = bounded(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with("..."), "{cut}");
    }
}
