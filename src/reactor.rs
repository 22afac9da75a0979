//! Reactors (I/O edge): client-side watchers that emulate operators — "when this field of this
//! object becomes X, appears or changes (or when the object is deleted), do these actions, each
//! after its delay": set several fields at once to values, to values read from other fields or
//! objects, or to freshly generated tokens; set status conditions (a Pod becoming `Ready`);
//! create objects; re-create a deleted object with a new uid (CloudNativePG writing a
//! `status.demotionToken` it generated after `spec.replica.primary` changes, a StatefulSet
//! controller bringing back a deleted pod). The world-file
//! format is documented in docs/worlds.md. They talk to clusters only
//! through the registry's clients, so the same reactors run against real clusters and the
//! simulator, in `rehearse` and in tests.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::Registry;

const REACTOR_MANAGER: &str = "recoverd-reactor";
use crate::duration;
use crate::fieldpath::{self, FieldPath};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reactor {
    pub cluster: String,
    pub when: ReactorWhen,
    /// Delay before `set` (the one-action form), e.g. `500ms`.
    #[serde(default)]
    pub after: Option<String>,
    /// One field to set: the short form of `actions: [{after, set: [..]}]`.
    #[serde(default)]
    pub set: Option<ReactorSet>,
    /// What the "operator" does, in order, each after its own delay.
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// The watched object, and what triggers the reactor: a field becoming `equals`, coming to
/// exist (`exists: true`), or taking any new value (`changed: true`); or the object being
/// deleted (`deleted: true`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactorWhen {
    pub api_version: String,
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub field_path: Option<String>,
    #[serde(default)]
    pub equals: Option<Value>,
    /// Fire when the field comes to exist (not null) — `metadata.deletionTimestamp` for "is
    /// being deleted".
    #[serde(default)]
    pub exists: bool,
    /// Fire whenever the field's value changes (`metadata.generation` for "the spec changed").
    #[serde(default)]
    pub changed: bool,
    #[serde(default)]
    pub deleted: bool,
}

/// Where an action writes or reads: the watched object unless these say otherwise.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
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

/// One field to set, to exactly one of: a `value`, a value read now from a field
/// (`valueFrom`, of the watched object or another), or a `generate`d one (`token`: a fresh
/// random token each time). A `status.…` path is written through the status subresource when
/// the resource has one, as an operator would.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactorSet {
    pub field_path: String,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub value_from: Option<ValueFrom>,
    #[serde(default)]
    pub generate: Option<Generate>,
    #[serde(flatten)]
    pub target: ObjectRef,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueFrom {
    pub field_path: String,
    #[serde(flatten)]
    pub object: ObjectRef,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Generate {
    /// A random token (base64 of a JSON document, as CloudNativePG's tokens are).
    Token,
}

/// One step of a reactor, after `after` (counted from the previous step): set fields and
/// conditions (all fields of one object in one patch), create an object (server-side apply),
/// or re-create the watched object as it last was (a new uid; for `deleted` triggers),
/// optionally with another `status`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub set: Vec<ReactorSet>,
    /// Status conditions to set, each replacing the condition of its `type` (the others are
    /// kept); `lastTransitionTime` is now when the condition's status changes.
    #[serde(default)]
    pub conditions: Vec<SetCondition>,
    #[serde(default)]
    pub create: Option<CreateObject>,
    #[serde(default)]
    pub recreate: bool,
    /// With `recreate`: the status the re-created object starts with instead of its last one
    /// (a replacement pod is `Pending`, not the `Running` its predecessor was).
    #[serde(default)]
    pub status: Option<Value>,
}

/// One condition in `status.conditions`, as controllers write them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `"True"`, `"False"` or `"Unknown"`.
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(flatten)]
    pub target: ObjectRef,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateObject {
    #[serde(default)]
    pub cluster: Option<String>,
    pub object: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("reactor on cluster {cluster:?}: {reason}")]
    Setup { cluster: String, reason: String },
}

/// How deep a chain of reactions may go — a reactor fired by a write of a reactor fired by a
/// write of … — before it is taken for a reaction that triggers itself forever and stopped.
pub const MAX_CHAIN: u32 = 20;

/// How often a write that meets a conflict (409: the object changed since it was read) is
/// tried again, each time from a fresh read.
const CONFLICT_RETRIES: u32 = 5;

/// What the reactors of one `start` share: counts, problems, and the versions they wrote (for
/// the loop guard).
#[derive(Default)]
struct Shared {
    fired: std::sync::atomic::AtomicUsize,
    /// Firings that ended, however.
    ended: std::sync::atomic::AtomicUsize,
    /// Firings started and not ended (some sleeping in a delay before their next action).
    pending: std::sync::atomic::AtomicUsize,
    problems: std::sync::Mutex<Vec<String>>,
    /// `cluster/resourceVersion` of every object version a reactor wrote → how deep in a chain
    /// of reactions that write was.
    written: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Writes under way; a firing waits for them before asking whether a reactor's own write
    /// fired it.
    inflight: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Shared {
    fn problem(&self, p: String) {
        tracing::warn!(problem = %p, "reactor problem");
        if let Ok(mut ps) = self.problems.lock() {
            ps.push(p);
        }
    }

    fn wrote(&self, cluster: &str, obj: &Value, depth: u32) {
        if let Some(rv) = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            if let Ok(mut w) = self.written.lock() {
                w.insert(format!("{cluster}/{rv}"), depth);
            }
        }
    }

    /// How deep in a chain of reactions the object version `rv` was written (0: not by a
    /// reactor), once no reactor write is under way.
    async fn depth_of(&self, cluster: &str, rv: Option<&str>) -> u32 {
        let Some(rv) = rv else { return 0 };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let settled = self.settled.notified();
            if self.inflight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                break;
            }
        }
        self.written
            .lock()
            .ok()
            .and_then(|w| w.get(&format!("{cluster}/{rv}")).copied())
            .unwrap_or(0)
    }
}

/// Counts a write under way for as long as it lives.
struct Inflight<'a>(&'a Shared);

impl<'a> Inflight<'a> {
    fn new(s: &'a Shared) -> Self {
        s.inflight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Inflight(s)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.settled.notify_waiters();
    }
}

/// Running reactors; they stop when this is dropped.
pub struct Reactors {
    tasks: Vec<(String, tokio::task::JoinHandle<()>)>,
    shared: Arc<Shared>,
}

impl Reactors {
    /// How many times reactors have acted.
    pub fn fired(&self) -> usize {
        self.shared.fired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many firings have ended (all their actions done, or stopped early: the object gone or
    /// replaced, an action failed).
    pub fn ended(&self) -> usize {
        self.shared.ended.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until every firing has ended and no reactor write is under way — what the world's
    /// operators were doing when the run ended is finished before anything is checked — for at
    /// most `limit`; past it, that is a problem of the rehearsal (and false is returned).
    pub async fn settle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.shared.pending.load(std::sync::atomic::Ordering::SeqCst) == 0
                && self.shared.inflight.load(std::sync::atomic::Ordering::SeqCst) == 0;
            if idle {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                self.shared.problem(format!(
                    "reactors were still acting {} after the run ended ({} firing(s) not done); the expectations were checked meanwhile",
                    crate::duration::format(limit),
                    self.shared.pending.load(std::sync::atomic::Ordering::SeqCst)
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What went wrong with the reactors so far: a reactor that stopped (it died, or the loop
    /// guard stopped it), an action that failed. A world whose operators did not do their job
    /// proves nothing: a rehearsal fails on any of these.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.shared.problems.lock().map(|p| p.clone()).unwrap_or_default();
        for (name, t) in &self.tasks {
            if t.is_finished() && !out.iter().any(|p| p.starts_with(name.as_str())) {
                out.push(format!("{name}: stopped watching"));
            }
        }
        out
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        for (_, t) in &self.tasks {
            t.abort();
        }
    }
}

/// The actions of a reactor, its short form (`after` + `set`) included, checked.
fn actions_of(r: &Reactor) -> Result<Vec<(Duration, Action)>, String> {
    let mut actions = r.actions.clone();
    match (&r.set, actions.is_empty()) {
        (Some(set), true) => actions.push(Action {
            after: r.after.clone(),
            set: vec![set.clone()],
            ..Default::default()
        }),
        (None, false) if r.after.is_none() => {}
        (None, false) => return Err("give `after` in each action, not beside `actions`".into()),
        (Some(_), false) => return Err("give either `set` or `actions`, not both".into()),
        (None, true) => return Err("a reactor needs `set` or `actions`".into()),
    }
    let mut out = Vec::new();
    for (i, a) in actions.into_iter().enumerate() {
        let kinds = usize::from(!a.set.is_empty() || !a.conditions.is_empty())
            + usize::from(a.create.is_some())
            + usize::from(a.recreate);
        if kinds != 1 {
            return Err(format!(
                "action {i} must do exactly one of `set`/`conditions`, `create` or `recreate`"
            ));
        }
        if a.status.is_some() && !a.recreate {
            return Err(format!("action {i}: `status` goes with `recreate` only"));
        }
        for c in &a.conditions {
            if !["True", "False", "Unknown"].contains(&c.status.as_str()) {
                return Err(format!(
                    "condition {:?}: status must be \"True\", \"False\" or \"Unknown\", not {:?}",
                    c.type_, c.status
                ));
            }
        }
        for s in &a.set {
            FieldPath::parse(&s.field_path).map_err(|e| e.to_string())?;
            let sources = usize::from(s.value.is_some())
                + usize::from(s.value_from.is_some())
                + usize::from(s.generate.is_some());
            if sources != 1 {
                return Err(format!(
                    "set {:?} needs exactly one of `value`, `valueFrom` or `generate`",
                    s.field_path
                ));
            }
            if let Some(from) = &s.value_from {
                FieldPath::parse(&from.field_path).map_err(|e| e.to_string())?;
            }
        }
        if a.recreate && !r.when.deleted {
            return Err("`recreate` needs a `deleted: true` trigger".into());
        }
        let after = a
            .after
            .as_deref()
            .map(duration::parse)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        out.push((after, a));
    }
    Ok(out)
}

/// What fires a reactor, compiled from its `when`.
#[derive(Debug)]
enum Trigger {
    Equals(FieldPath, Value),
    Exists(FieldPath),
    Changed(FieldPath),
    Deleted,
}

impl Trigger {
    fn of(when: &ReactorWhen) -> Result<Self, String> {
        let path = || -> Result<FieldPath, String> {
            let p = when.field_path.as_deref().ok_or("`when` needs a `fieldPath`")?;
            FieldPath::parse(p).map_err(|e| e.to_string())
        };
        let kinds = usize::from(when.equals.is_some())
            + usize::from(when.exists)
            + usize::from(when.changed)
            + usize::from(when.deleted);
        if kinds != 1 || when.deleted && when.field_path.is_some() {
            return Err("`when` needs a `fieldPath` with one of `equals`, `exists: true` or \
                        `changed: true`, or `deleted: true` without a `fieldPath`"
                .into());
        }
        Ok(match &when.equals {
            Some(v) => Trigger::Equals(path()?, v.clone()),
            None if when.exists => Trigger::Exists(path()?),
            None if when.changed => Trigger::Changed(path()?),
            None => Trigger::Deleted,
        })
    }
}

/// Follows the watched object through its watch events and says when the reactor fires. A
/// delete is noticed however the watch tells it: a `Delete` event, or a re-list (after the
/// watch expired) in which the object is missing or has another uid.
#[derive(Debug)]
struct Tracker {
    trigger: Trigger,
    /// The object as last seen; kept after it is deleted (what `recreate` applies).
    last: Option<Value>,
    /// Whether the object exists, as far as the events told.
    present: bool,
    /// Whether `Equals`/`Exists` held at the last event; the value at the path for `Changed`.
    held: bool,
    value: Option<Value>,
    /// Between a re-list's `Init` and `InitDone`: whether the object was listed.
    relisting: Option<bool>,
}

impl Tracker {
    fn new(trigger: Trigger) -> Self {
        Tracker {
            trigger,
            last: None,
            present: false,
            held: false,
            value: None,
            relisting: None,
        }
    }

    /// Takes one watch event; true when the reactor fires.
    fn observe(&mut self, ev: watcher::Event<Value>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.relisting = Some(false);
                false
            }
            watcher::Event::InitApply(obj) => {
                if let Some(seen) = self.relisting.as_mut() {
                    *seen = true;
                }
                self.apply(obj)
            }
            watcher::Event::Apply(obj) => self.apply(obj),
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or(true);
                // Deleted while the watch was down: the re-list no longer has it.
                !listed && self.present && self.deleted()
            }
            watcher::Event::Delete(obj) => {
                let fire = self.deleted();
                self.last = Some(obj);
                fire
            }
        }
    }

    fn uid(obj: &Value) -> Option<&str> {
        obj.pointer("/metadata/uid").and_then(Value::as_str)
    }

    /// The object went; true for a `Deleted` trigger.
    fn deleted(&mut self) -> bool {
        self.present = false;
        self.held = false;
        self.value = None;
        matches!(self.trigger, Trigger::Deleted)
    }

    fn apply(&mut self, obj: Value) -> bool {
        // Another uid than the one seen: the object was deleted and re-created in between.
        let mut fire = false;
        if self.present
            && self.last.as_ref().and_then(Self::uid).is_some()
            && self.last.as_ref().and_then(Self::uid) != Self::uid(&obj)
        {
            fire = self.deleted();
        }
        self.present = true;
        fire |= match &self.trigger {
            Trigger::Equals(path, equals) => {
                let now = matches(path, &obj, equals);
                let fire = now && !self.held;
                self.held = now;
                fire
            }
            Trigger::Exists(path) => {
                let now = path.get(&obj).ok().flatten().is_some_and(|v| !v.is_null());
                let fire = now && !self.held;
                self.held = now;
                fire
            }
            Trigger::Changed(path) => {
                let now = path.get(&obj).ok().flatten();
                let fire = now != self.value;
                self.value = now;
                fire
            }
            Trigger::Deleted => false,
        };
        self.last = Some(obj);
        fire
    }
}

/// A watch event with the object as JSON.
fn as_json(ev: watcher::Event<DynamicObject>) -> watcher::Event<Value> {
    let json = |o: DynamicObject| serde_json::to_value(o).unwrap_or_default();
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply(json(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(json(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(json(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// A reactor as messages name it: `reactor on north (postgresql.cnpg.io/v1 clusters db/pg-north)`.
fn reactor_name(r: &Reactor) -> String {
    format!(
        "reactor on {} ({})",
        r.cluster,
        crate::cluster::describe_object(
            &r.when.api_version,
            &r.when.resource,
            r.when.namespace.as_deref(),
            &r.when.name
        )
    )
}

/// Starts the reactors and returns once each has seen its object's current state, so that only
/// changes made after this call trigger them. Each firing runs on its own task: one reactor's
/// delays never hold back another reaction, nor its own watch. A watch that fails is logged
/// and watched again (from a fresh list); a reactor that stops, or whose action fails, is
/// reported by [`Reactors::problems`].
pub async fn start(registry: Arc<Registry>, reactors: &[Reactor]) -> Result<Reactors, ReactorError> {
    let shared = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    for r in reactors {
        let setup = |reason: String| ReactorError::Setup {
            cluster: r.cluster.clone(),
            reason,
        };
        let mut tracker = Tracker::new(Trigger::of(&r.when).map_err(setup)?);
        let actions = Arc::new(actions_of(r).map_err(setup)?);
        let resolved = registry
            .resolve(&r.cluster, &r.when.api_version, &r.when.resource)
            .await
            .map_err(|e| setup(e.to_string()))?;
        let api = crate::cluster::api_for_object(&registry, &r.cluster, &resolved, r.when.namespace.as_deref())
            .map_err(|e| setup(e.to_string()))?;
        let config = watcher::Config::default().fields(&format!("metadata.name={}", r.when.name));
        let watch = move || watcher(api.clone(), config.clone()).default_backoff().boxed();
        let mut stream = watch();
        // Wait for the initial state: what holds now does not fire.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last_error = String::from("no answer");
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(ev))) => {
                    let done = matches!(ev, watcher::Event::InitDone);
                    tracker.observe(as_json(ev));
                    if done {
                        break;
                    }
                }
                Ok(Some(Err(e))) => last_error = e.to_string(),
                Ok(None) | Err(_) => {
                    return Err(setup(format!(
                        "could not watch {} within 30s: {last_error}",
                        r.when.name
                    )))
                }
            }
        }
        let name = reactor_name(r);
        let (registry, r, shared2) = (registry.clone(), Arc::new(r.clone()), shared.clone());
        let task_name = name.clone();
        tasks.push((
            task_name,
            tokio::spawn(async move {
                let shared = shared2;
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                // Firings run beside the watch; dropping the set (the task aborted) stops them.
                let mut firings = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        ev = stream.next() => match ev {
                            Some(Ok(ev)) => {
                                if !tracker.observe(as_json(ev)) {
                                    continue;
                                }
                                shared
                                    .pending
                                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                firings.spawn(fire(
                                    registry.clone(),
                                    r.clone(),
                                    actions.clone(),
                                    tracker.last.clone(),
                                    shared.clone(),
                                    stop.clone(),
                                ));
                            }
                            Some(Err(e)) => {
                                // The watcher lists again and goes on (with backoff).
                                tracing::warn!(reactor = %name, error = %e, "reactor's watch failed; watching again");
                            }
                            None => {
                                tracing::warn!(reactor = %name, "reactor's watch ended; watching again");
                                stream = watch();
                            }
                        },
                        Some(done) = firings.join_next() => {
                            if let Err(e) = done {
                                if e.is_panic() {
                                    shared.problem(format!("{name}: an action panicked"));
                                }
                            }
                            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                                // The loop guard stopped it (the problem says why).
                                return;
                            }
                        }
                    }
                }
            }),
        ));
    }
    Ok(Reactors { tasks, shared })
}

/// How an action ended other than done.
enum Stopped {
    /// The object it acts on is gone or was replaced (another uid): another controller got
    /// there first, as happens between controllers. The firing ends quietly.
    Gone(String),
    Failed(String),
}

impl From<String> for Stopped {
    fn from(s: String) -> Self {
        Stopped::Failed(s)
    }
}

/// One firing: the actions in order, each after its delay, on the object version that fired
/// the reactor (`seen`).
async fn fire(
    registry: Arc<Registry>,
    r: Arc<Reactor>,
    actions: Arc<Vec<(Duration, Action)>>,
    seen: Option<Value>,
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    fire_actions(registry, r, actions, seen, shared.clone(), stop).await;
    shared.ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    shared.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

async fn fire_actions(
    registry: Arc<Registry>,
    r: Arc<Reactor>,
    actions: Arc<Vec<(Duration, Action)>>,
    seen: Option<Value>,
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let name = reactor_name(&r);
    let rv = seen
        .as_ref()
        .and_then(|o| o.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str);
    let depth = shared.depth_of(&r.cluster, rv).await + 1;
    if depth > MAX_CHAIN {
        if !stop.swap(true, std::sync::atomic::Ordering::SeqCst) {
            shared.problem(format!(
                "{name}: stopped — it fired {MAX_CHAIN} times in a row on a change made by \
                 reactors (its own actions trigger it again: make its `when` stop holding \
                 once it has acted)"
            ));
        }
        return;
    }
    let uid = seen.as_ref().and_then(Tracker::uid).map(str::to_string);
    let mut ctx = Firing {
        registry: &registry,
        r: &r,
        uid,
        depth,
        shared: &shared,
    };
    for (after, action) in actions.iter() {
        tokio::time::sleep(*after).await;
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match ctx.run(action, seen.as_ref()).await {
            Ok(()) => {
                shared.fired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(reactor = %name, "reactor acted");
            }
            Err(Stopped::Gone(why)) => {
                tracing::info!(reactor = %name, why = %why, "reactor's firing ended");
                return;
            }
            Err(Stopped::Failed(e)) => {
                shared.problem(format!("{name}: {e}"));
                return;
            }
        }
    }
}

fn matches(path: &FieldPath, obj: &Value, equals: &Value) -> bool {
    path.get(obj)
        .ok()
        .flatten()
        .is_some_and(|v| &v == equals || fieldpath::as_text(&v) == fieldpath::as_text(equals))
}

/// An object handle: the watched object unless `target` names another.
async fn handle(
    registry: &Registry,
    r: &Reactor,
    target: &ObjectRef,
) -> Result<(Api<DynamicObject>, crate::cluster::Resolved, String), String> {
    let cluster = target.cluster.as_deref().unwrap_or(&r.cluster);
    let api_version = target.api_version.as_deref().unwrap_or(&r.when.api_version);
    let resource = target.resource.as_deref().unwrap_or(&r.when.resource);
    let namespace = target.namespace.as_deref().or(r.when.namespace.as_deref());
    let name = target.name.as_deref().unwrap_or(&r.when.name);
    let resolved = registry
        .resolve(cluster, api_version, resource)
        .await
        .map_err(|e| e.to_string())?;
    let api = crate::cluster::api_for_object(registry, cluster, &resolved, namespace).map_err(|e| e.to_string())?;
    Ok((api, resolved, name.to_string()))
}

/// A fresh random token, as an operator would hand out.
fn token() -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let h = Sha256::digest(format!("{n}/{nanos}/{}", std::process::id()).as_bytes());
    let id: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    base64::engine::general_purpose::STANDARD.encode(format!("{{\"token\":\"{id}\"}}"))
}

/// What one firing acts with.
struct Firing<'a> {
    registry: &'a Registry,
    r: &'a Reactor,
    /// The uid of the object that fired it: its actions on that object stop if it was
    /// replaced meanwhile (a re-created object is another object). After `recreate`, the
    /// object it re-created.
    uid: Option<String>,
    depth: u32,
    shared: &'a Shared,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Fields and conditions of one object, written in one patch (the status ones through the
/// status subresource when there is one).
struct Write<'a> {
    target: ObjectRef,
    status: bool,
    fields: Vec<(&'a ReactorSet, Option<Value>)>,
    conditions: Vec<&'a SetCondition>,
}

impl Firing<'_> {
    /// Whether `target` is the watched object itself.
    fn is_watched(&self, target: &ObjectRef) -> bool {
        let w = &self.r.when;
        target.cluster.as_deref().is_none_or(|c| c == self.r.cluster)
            && target.api_version.as_deref().is_none_or(|a| a == w.api_version)
            && target.resource.as_deref().is_none_or(|x| x == w.resource)
            && (target.namespace.is_none() || target.namespace == w.namespace)
            && target.name.as_deref().is_none_or(|n| n == w.name)
    }

    async fn run(&mut self, action: &Action, last: Option<&Value>) -> Result<(), Stopped> {
        let (registry, r) = (self.registry, self.r);
        if let Some(c) = &action.create {
            let cluster = c.cluster.as_deref().unwrap_or(&r.cluster);
            let _w = Inflight::new(self.shared);
            let written = apply_object(registry, cluster, c.object.clone()).await?;
            self.shared.wrote(cluster, &written, self.depth);
            return Ok(());
        }
        if action.recreate {
            return self.recreate(action, last).await;
        }
        // Every field of one object goes in one patch (status fields in one status patch).
        let mut writes: Vec<Write> = Vec::new();
        let key = |t: &ObjectRef| serde_json::to_value(t).unwrap_or_default();
        for s in &action.set {
            let status = s.field_path.starts_with("status.");
            // A generated token is made once, whatever retries the write takes.
            let token = (s.generate == Some(Generate::Token)).then(|| Value::String(token()));
            match writes
                .iter_mut()
                .find(|w| key(&w.target) == key(&s.target) && w.status == status)
            {
                Some(w) => w.fields.push((s, token)),
                None => writes.push(Write {
                    target: s.target.clone(),
                    status,
                    fields: vec![(s, token)],
                    conditions: vec![],
                }),
            }
        }
        for c in &action.conditions {
            match writes.iter_mut().find(|w| key(&w.target) == key(&c.target) && w.status) {
                Some(w) => w.conditions.push(c),
                None => writes.push(Write {
                    target: c.target.clone(),
                    status: true,
                    fields: vec![],
                    conditions: vec![c],
                }),
            }
        }
        for w in &writes {
            self.write(w).await?;
        }
        Ok(())
    }

    /// Writes one object's fields and conditions from a fresh read of it, with its
    /// resourceVersion as a precondition (no lost update); on a conflict, reads again and
    /// tries again.
    async fn write(&self, w: &Write<'_>) -> Result<(), Stopped> {
        let (api, resolved, name) = handle(self.registry, self.r, &w.target).await?;
        let cluster = w.target.cluster.as_deref().unwrap_or(&self.r.cluster);
        let watched = self.is_watched(&w.target);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let obj = match api.get(&name).await {
                Ok(o) => serde_json::to_value(o).unwrap_or_default(),
                Err(e) if is_not_found(&e) => return Err(Stopped::Gone(format!("{cluster}: {name} is gone"))),
                Err(e) => return Err(Stopped::Failed(e.to_string())),
            };
            let uid = obj.pointer("/metadata/uid").and_then(Value::as_str);
            if watched && self.uid.is_some() && uid != self.uid.as_deref() {
                return Err(Stopped::Gone(format!(
                    "{cluster}: {name} was replaced (uid {}, fired for {})",
                    uid.unwrap_or("?"),
                    self.uid.as_deref().unwrap_or("?")
                )));
            }
            let mut patch = serde_json::json!({});
            for (s, token) in &w.fields {
                let value = match (&s.value, &s.value_from, token) {
                    (Some(v), _, _) => v.clone(),
                    (_, Some(from), _) => {
                        let (fapi, _, fname) = handle(self.registry, self.r, &from.object).await?;
                        let src = fapi.get(&fname).await.map_err(|e| e.to_string())?;
                        let path = FieldPath::parse(&from.field_path).map_err(|e| e.to_string())?;
                        path.get(&serde_json::to_value(src).unwrap_or_default())
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| format!("{} {} has no {}", self.r.cluster, fname, from.field_path))?
                    }
                    (_, _, Some(t)) => t.clone(),
                    _ => return Err(Stopped::Failed("a set without a value".into())),
                };
                let path = FieldPath::parse(&s.field_path).map_err(|e| e.to_string())?;
                let p = path.merge_patch(value).map_err(|e| e.to_string())?;
                json_patch::merge(&mut patch, &p);
            }
            if !w.conditions.is_empty() {
                let mut list = obj
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for c in &w.conditions {
                    upsert_condition(&mut list, c, &now());
                }
                json_patch::merge(&mut patch, &serde_json::json!({"status": {"conditions": list}}));
            }
            // Preconditions: the version read (and so the object read).
            patch["metadata"]["resourceVersion"] =
                obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
            if let Some(uid) = uid {
                patch["metadata"]["uid"] = Value::String(uid.to_string());
            }
            let params = PatchParams {
                field_manager: Some(REACTOR_MANAGER.into()),
                ..Default::default()
            };
            let _inflight = Inflight::new(self.shared);
            let result = if w.status && resolved.subresources.iter().any(|s| s == "status") {
                api.patch_status(&name, &params, &Patch::Merge(&patch)).await
            } else {
                api.patch(&name, &params, &Patch::Merge(&patch)).await
            };
            match result {
                Ok(o) => {
                    let o = serde_json::to_value(o).unwrap_or_default();
                    self.shared.wrote(cluster, &o, self.depth);
                    return Ok(());
                }
                Err(e) if is_conflict(&e) && attempt <= CONFLICT_RETRIES => {
                    tracing::info!(object = %name, attempt, "reactor's write met a conflict; reading again");
                }
                Err(e) if is_not_found(&e) => return Err(Stopped::Gone(format!("{cluster}: {name} is gone"))),
                Err(e) => return Err(Stopped::Failed(format!("writing {name} (attempt {attempt}): {e}"))),
            }
        }
    }

    /// Creates the deleted object again as it last was — a new object, so a new uid. If an
    /// object of that name exists already (someone else re-created it), it is left alone.
    async fn recreate(&mut self, action: &Action, last: Option<&Value>) -> Result<(), Stopped> {
        let r = self.r;
        let mut obj = last
            .cloned()
            .ok_or_else(|| "the deleted object was never seen".to_string())?;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "managedFields",
                // The last state seen still had the finalizers the final update removed, and
                // owner references to owners that may be gone: a re-created object starts clean.
                "finalizers",
                "ownerReferences",
            ] {
                meta.remove(k);
            }
        }
        let (api, resolved, name) = handle(self.registry, r, &ObjectRef::default()).await?;
        obj["apiVersion"] = Value::String(r.when.api_version.clone());
        obj["kind"] = Value::String(resolved.resource.kind.clone());
        let status = match &action.status {
            Some(s) => Some(s.clone()),
            None => obj.as_object_mut().and_then(|o| o.remove("status")),
        };
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
        let body: DynamicObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
        let params = kube::api::PostParams {
            field_manager: Some(REACTOR_MANAGER.into()),
            ..Default::default()
        };
        let _inflight = Inflight::new(self.shared);
        let created = match api.create(&params, &body).await {
            Ok(o) => serde_json::to_value(o).unwrap_or_default(),
            Err(e) if is_conflict(&e) => {
                return Err(Stopped::Gone(format!(
                    "{}: {name} exists again already (re-created by someone else): left alone",
                    r.cluster
                )))
            }
            Err(e) => return Err(Stopped::Failed(format!("re-creating {name}: {e}"))),
        };
        self.shared.wrote(&r.cluster, &created, self.depth);
        self.uid = created
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        let Some(status) = status.filter(|_| resolved.subresources.iter().any(|s| s == "status")) else {
            return Ok(());
        };
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": created.pointer("/metadata/resourceVersion"),
                "uid": created.pointer("/metadata/uid"),
            },
            "status": status,
        });
        let params = PatchParams {
            field_manager: Some(REACTOR_MANAGER.into()),
            ..Default::default()
        };
        match api.patch_status(&name, &params, &Patch::Merge(&patch)).await {
            Ok(o) => {
                self.shared
                    .wrote(&r.cluster, &serde_json::to_value(o).unwrap_or_default(), self.depth);
                Ok(())
            }
            // Changed or gone since it was created: what changed it had the last word.
            Err(e) if is_conflict(&e) || is_not_found(&e) => Err(Stopped::Gone(format!(
                "{}: {name} changed before its status was written: {e}",
                r.cluster
            ))),
            Err(e) => Err(Stopped::Failed(format!("writing {name}'s status: {e}"))),
        }
    }
}

/// The current time as Kubernetes writes it (RFC 3339, seconds).
fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// Replaces the condition of `c`'s type in `list` (or adds it); its `lastTransitionTime` moves
/// only when its status changes, as controllers do.
fn upsert_condition(list: &mut Vec<Value>, c: &SetCondition, now: &str) {
    let old = list
        .iter()
        .position(|x| x.get("type").and_then(Value::as_str) == Some(&c.type_));
    let since = old
        .map(|i| &list[i])
        .filter(|x| x.get("status").and_then(Value::as_str) == Some(&c.status))
        .and_then(|x| x.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::String(now.to_string()));
    let mut cond = serde_json::json!({
        "type": c.type_,
        "status": c.status,
        "lastTransitionTime": since,
    });
    if let Some(reason) = &c.reason {
        cond["reason"] = Value::String(reason.clone());
    }
    if let Some(message) = &c.message {
        cond["message"] = Value::String(message.clone());
    }
    match old {
        Some(i) => list[i] = cond,
        None => list.push(cond),
    }
}

/// Creates (or updates) an object by server-side apply, then writes its `status` when it has
/// one and the resource has a status subresource.
async fn apply_object(registry: &Registry, cluster: &str, obj: Value) -> Result<Value, String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or("the object has no metadata.name")?
        .to_string();
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let resolved = registry
        .resolve_kind(cluster, &api_version, &kind)
        .await
        .map_err(|e| e.to_string())?;
    let api = crate::cluster::api_for_object(registry, cluster, &resolved, namespace.as_deref())
        .map_err(|e| e.to_string())?;
    let mut spec = obj.clone();
    let status = spec.as_object_mut().and_then(|o| o.remove("status"));
    let params = PatchParams::apply(REACTOR_MANAGER).force();
    let mut written = api
        .patch(&name, &params, &Patch::Apply(&spec))
        .await
        .map_err(|e| e.to_string())?;
    if let Some(status) = status.filter(|_| resolved.subresources.iter().any(|s| s == "status")) {
        let patch = serde_json::json!({ "status": status });
        written = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(serde_json::to_value(written).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reactor(yaml: &str) -> Reactor {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_reactor_says_clearly_what_is_wrong_with_its_actions() {
        let when = "when: {apiVersion: v1, resource: configmaps, name: a, fieldPath: data.x, equals: y}";
        let both = reactor(&format!(
            "cluster: c\n{when}\nset: {{fieldPath: data.z, value: 1}}\nactions: [{{set: [{{fieldPath: data.z, value: 1}}]}}]"
        ));
        assert_eq!(
            actions_of(&both).unwrap_err(),
            "give either `set` or `actions`, not both"
        );
        let two_sources = reactor(&format!(
            "cluster: c\n{when}\nactions: [{{set: [{{fieldPath: data.z, value: 1, generate: token}}]}}]"
        ));
        assert!(actions_of(&two_sources)
            .unwrap_err()
            .contains("exactly one of `value`, `valueFrom` or `generate`"));
        let recreate = reactor(&format!("cluster: c\n{when}\nactions: [{{recreate: true}}]"));
        assert_eq!(
            actions_of(&recreate).unwrap_err(),
            "`recreate` needs a `deleted: true` trigger"
        );
        let status_alone = reactor(&format!(
            "cluster: c\n{when}\nactions: [{{set: [{{fieldPath: data.z, value: 1}}], status: {{phase: Pending}}}}]"
        ));
        assert_eq!(
            actions_of(&status_alone).unwrap_err(),
            "action 0: `status` goes with `recreate` only"
        );
        let bad_condition = reactor(&format!(
            "cluster: c\n{when}\nactions: [{{conditions: [{{type: Ready, status: yes}}]}}]"
        ));
        assert!(actions_of(&bad_condition)
            .unwrap_err()
            .contains("status must be \"True\", \"False\" or \"Unknown\""));
        let set_and_conditions = reactor(&format!(
            "cluster: c\n{when}\nactions: [{{set: [{{fieldPath: status.phase, value: Running}}], conditions: [{{type: Ready, status: \"True\"}}]}}]"
        ));
        assert_eq!(actions_of(&set_and_conditions).unwrap().len(), 1);
        let short = reactor(&format!(
            "cluster: c\n{when}\nafter: 1s\nset: {{fieldPath: data.z, value: 1}}"
        ));
        let actions = actions_of(&short).unwrap();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].0, Duration::from_secs(1));
    }

    fn obj(uid: &str, phase: Option<&str>) -> Value {
        let mut o = serde_json::json!({"metadata": {"name": "a", "uid": uid}});
        if let Some(p) = phase {
            o["status"] = serde_json::json!({"phase": p});
        }
        o
    }

    fn path(p: &str) -> FieldPath {
        FieldPath::parse(p).unwrap()
    }

    /// Primes a tracker with the initial list (which never fires).
    fn primed(trigger: Trigger, initial: Option<Value>) -> Tracker {
        let mut t = Tracker::new(trigger);
        assert!(!t.observe(watcher::Event::Init));
        if let Some(o) = initial {
            t.observe(watcher::Event::InitApply(o));
        }
        t.observe(watcher::Event::InitDone);
        t
    }

    #[test]
    fn a_delete_during_a_relist_fires_a_deleted_reactor() {
        use watcher::Event::*;
        // The object is missing from the re-list after the watch expired.
        let mut t = primed(Trigger::Deleted, Some(obj("u1", None)));
        assert!(!t.observe(Init));
        assert!(t.observe(InitDone), "the delete was missed");
        assert_eq!(t.last.as_ref().and_then(Tracker::uid), Some("u1"));
        // Re-created by someone: no second firing, and a later delete fires again.
        assert!(!t.observe(Apply(obj("u2", None))));
        assert!(t.observe(Delete(obj("u2", None))));
        // Deleted and re-created while the watch was down: the re-list shows another uid.
        let mut t = primed(Trigger::Deleted, Some(obj("u1", None)));
        assert!(!t.observe(Init));
        assert!(t.observe(InitApply(obj("u9", None))));
        assert!(!t.observe(InitDone));
        // Listed unchanged: nothing happened.
        let mut t = primed(Trigger::Deleted, Some(obj("u1", None)));
        assert!(!t.observe(Init));
        assert!(!t.observe(InitApply(obj("u1", None))));
        assert!(!t.observe(InitDone));
        // Never existed: its absence from a re-list is no delete.
        let mut t = primed(Trigger::Deleted, None);
        assert!(!t.observe(Init));
        assert!(!t.observe(InitDone));
    }

    #[test]
    fn field_triggers_fire_on_becoming_appearing_and_changing() {
        use watcher::Event::*;
        let mut eq = primed(
            Trigger::Equals(path("status.phase"), Value::from("Ready")),
            Some(obj("u1", Some("Ready"))),
        );
        // Held before the reactor started: no firing until it stops holding and holds again.
        assert!(!eq.observe(Apply(obj("u1", Some("Ready")))));
        assert!(!eq.observe(Apply(obj("u1", Some("Pending")))));
        assert!(eq.observe(Apply(obj("u1", Some("Ready")))));
        assert!(!eq.observe(Apply(obj("u1", Some("Ready")))));

        let mut exists = primed(Trigger::Exists(path("status.phase")), Some(obj("u1", None)));
        assert!(!exists.observe(Apply(obj("u1", None))));
        assert!(exists.observe(Apply(obj("u1", Some("x")))));
        assert!(!exists.observe(Apply(obj("u1", Some("y")))));

        let mut changed = primed(Trigger::Changed(path("status.phase")), Some(obj("u1", Some("a"))));
        assert!(!changed.observe(Apply(obj("u1", Some("a")))));
        assert!(changed.observe(Apply(obj("u1", Some("b")))));
        assert!(changed.observe(Apply(obj("u1", None))));
        assert!(!changed.observe(Apply(obj("u1", None))));
    }

    #[test]
    fn a_condition_replaces_its_type_and_moves_its_time_only_when_its_status_changes() {
        let c = |status: &str| SetCondition {
            type_: "Ready".into(),
            status: status.into(),
            reason: None,
            message: None,
            target: ObjectRef::default(),
        };
        let mut list = vec![
            serde_json::json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}),
            serde_json::json!({"type": "Ready", "status": "False", "lastTransitionTime": "t0"}),
        ];
        upsert_condition(&mut list, &c("False"), "t1");
        assert_eq!(list[1]["lastTransitionTime"], "t0");
        upsert_condition(&mut list, &c("True"), "t2");
        assert_eq!(list[1]["status"], "True");
        assert_eq!(list[1]["lastTransitionTime"], "t2");
        assert_eq!(list[0]["type"], "PodScheduled");
        let mut empty = Vec::new();
        upsert_condition(&mut empty, &c("True"), "t3");
        assert_eq!(empty.len(), 1);
    }

    #[test]
    fn a_when_says_clearly_what_it_needs() {
        let when = |y: &str| -> ReactorWhen { serde_yaml::from_str(y).unwrap() };
        let base = "{apiVersion: v1, resource: pods, name: a";
        for bad in [
            format!("{base}, fieldPath: status.phase}}"),
            format!("{base}, fieldPath: status.phase, equals: x, changed: true}}"),
            format!("{base}, fieldPath: status.phase, deleted: true}}"),
            format!("{base}, exists: true}}"),
        ] {
            let err = Trigger::of(&when(&bad)).unwrap_err();
            assert!(err.contains("`when` needs"), "{bad}: {err}");
        }
        assert!(matches!(
            Trigger::of(&when(&format!("{base}, deleted: true}}"))).unwrap(),
            Trigger::Deleted
        ));
    }
}
