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

mod fire;
mod shared;
mod spec;
mod trigger;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{watcher, WatchStreamExt};

pub use spec::{Action, CreateObject, Generate, ObjectRef, Reactor, ReactorSet, ReactorWhen, SetCondition, ValueFrom};

use crate::cluster::Registry;
use fire::fire;
use shared::Shared;
pub use shared::MAX_CHAIN;
use spec::actions_of;
use trigger::{as_json, Tracker, Trigger};

#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("reactor on cluster {cluster:?}: {reason}")]
    Setup { cluster: String, reason: String },
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
        let name = r.name();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fieldpath::FieldPath;
    use fire::upsert_condition;
    use serde_json::Value;

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
