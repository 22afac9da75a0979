//! Runs as a service (I/O edge): turns alerts and manual triggers into claimed runs, executes
//! them in background tasks, and approves, cancels and resumes them. One file per concern:
//! [`intake`] (alerts), [`trigger`] (manual triggers), [`decisions`] (approve, cancel, expire),
//! [`execution`] (spawning, resuming, recording, shutting down). This file holds the service's
//! state and its store.
//!
//! Owns the exactly-once rules (docs/runs.md): a run id derived from (plan, fingerprint,
//! startsAt) — or (plan, idempotency key) — so a repeated trigger collides with the first; one
//! active run per plan; the plan's cooldown; only firing alerts act; a resolved alert cancels a
//! run still waiting for approval. Every state change is in the store before it is acted on.

mod decisions;
mod execution;
mod intake;
mod trigger;

pub use intake::{alert_run_id, capped_context, Action, AlertOutcome, ALERT_ANNOTATIONS_LIMIT, ALERT_VALUE_LIMIT};
pub use trigger::ManualTrigger;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::store::{Page, Relayed, RelayedAction, Retention, RunStore, StoreError};
use crate::executor::{Executor, RunControl};
use crate::metrics::Metrics;
use crate::plan::set::PlanSet;
use crate::record::{Phase, RunRecord};

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no plan named {0}")]
    UnknownPlan(String),
    #[error("plan {plan} is invalid and cannot run: {problems}")]
    InvalidPlan { plan: String, problems: String },
    #[error("plan {plan} has no param {key:?} (its params: {known})")]
    UnknownParam { plan: String, key: String, known: String },
    #[error("plan {plan} does not let a trigger set param {key:?} (it may set: {allowed}); list it under spec.overridableParams to allow it")]
    ParamNotOverridable { plan: String, key: String, allowed: String },
    #[error("no run with id {0}")]
    UnknownRun(String),
    #[error("run {id} is {phase:?}; {action} needs a run that is {needs}")]
    WrongPhase {
        id: String,
        phase: Phase,
        action: &'static str,
        needs: &'static str,
    },
    #[error("plan {plan} changed since run {id} began (generation {then}, now {now}); cancel it (POST /api/v1/runs/{id}/cancel) and trigger the plan again")]
    PlanChanged {
        id: String,
        plan: String,
        then: String,
        now: String,
    },
    #[error("plan {plan} already has an active run {existing}")]
    Busy { plan: String, existing: String },
    #[error("run {id} waits for approval of step {waiting:?}{}; approve it with {{\"step\": \"{waiting}\"}} once you have read its question (recoverd approve {id} --step {waiting})", asked.as_ref().map(|a| format!(", not {a:?}")).unwrap_or_default())]
    WrongStep {
        id: String,
        waiting: String,
        asked: Option<String>,
    },
    #[error("run {id} waits for approval of step {step:?} since {started_at}, not the wait you approved{}; read its question (recoverd runs {id}) and approve it with {{\"step\": \"{step}\", \"startedAt\": \"{started_at}\"}}", asked.as_ref().map(|a| format!(" ({a})")).unwrap_or_default())]
    StaleApproval {
        id: String,
        step: String,
        started_at: String,
        asked: Option<String>,
    },
    #[error("recoverd is shutting down and accepts no new runs")]
    ShuttingDown,
    /// Not an error: the decision was handed to the replica executing the run.
    #[error("run {id} executes on replica {replica}; the decision was handed to it and takes effect within a few seconds (follow the run to see it)")]
    Relayed { id: String, replica: String },
}

pub struct Runs {
    store: Arc<dyn RunStore>,
    /// False after a write to the store failed, until a health check writes again.
    store_ok: AtomicBool,
    /// Runs that stopped because their record could not be written: written again (as
    /// Interrupted) once the store takes writes.
    unrecorded: Mutex<HashMap<String, RunRecord>>,
    plans: RwLock<Arc<PlanSet>>,
    live: Arc<Executor>,
    dry: Arc<Executor>,
    metrics: Arc<Metrics>,
    controls: Mutex<HashMap<String, RunControl>>,
    /// Ids of alert runs known to exist, so that a resent alert is answered without the store.
    seen: SeenIds,
    /// Runs of stopped replicas this one found it cannot resume (logged once, not retried).
    unresumable: Mutex<std::collections::HashSet<String>>,
    tasks: TaskTracker,
    drain: tokio_util::sync::CancellationToken,
    notifier: Option<crate::notify::Notifier>,
}

/// The most recent run ids known to exist, at most [`SeenIds::CAPACITY`]. A run id is never
/// reused, and a run once created counts as the incident's run even after retention deletes
/// it, so an id here is a duplicate for good; one not here is asked of the store.
#[derive(Default)]
pub(super) struct SeenIds(Mutex<(std::collections::HashSet<String>, std::collections::VecDeque<String>)>);

impl SeenIds {
    const CAPACITY: usize = 65_536;

    pub(super) fn contains(&self, id: &str) -> bool {
        lock(&self.0).0.contains(id)
    }

    pub(super) fn insert(&self, id: &str) {
        let mut guard = lock(&self.0);
        let (set, order) = &mut *guard;
        if set.insert(id.to_string()) {
            order.push_back(id.to_string());
            if order.len() > Self::CAPACITY {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Locks a mutex whether or not a thread panicked while holding it: every value behind these
/// locks is consistent between statements (the store rolls back an unfinished transaction).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Runs {
    pub fn new(
        store: Arc<dyn RunStore>,
        plans: PlanSet,
        live: Arc<Executor>,
        dry: Arc<Executor>,
        metrics: Arc<Metrics>,
        notifier: Option<crate::notify::Notifier>,
    ) -> Arc<Self> {
        let runs = Arc::new(Runs {
            store,
            store_ok: AtomicBool::new(true),
            unrecorded: Mutex::default(),
            plans: RwLock::new(Arc::new(PlanSet::default())),
            live,
            dry,
            metrics,
            controls: Mutex::default(),
            unresumable: Mutex::default(),
            seen: SeenIds::default(),
            tasks: TaskTracker::new(),
            drain: Default::default(),
            notifier,
        });
        runs.metrics.store_healthy.set(1);
        runs.set_plans(plans);
        runs
    }

    /// Tells the notification webhook (if any) what happened to a live run.
    pub(super) fn notify(
        &self,
        event: crate::notify::Lifecycle,
        run: &RunRecord,
        step: Option<&str>,
        error: Option<&str>,
    ) {
        if let (Some(n), crate::record::RunMode::Live) = (&self.notifier, run.mode) {
            n.send(crate::notify::Notice::of(event, run, step, error));
        }
    }

    /// At shutdown, after the runs: posts the notices still queued, for at most `grace`.
    pub async fn flush_notices(&self, grace: std::time::Duration) {
        if let Some(n) = &self.notifier {
            n.flush(grace).await;
        }
    }

    pub fn plans(&self) -> Arc<PlanSet> {
        self.plans.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_plans(&self, plans: PlanSet) {
        self.metrics.plans_loaded.set(plans.len() as i64);
        self.metrics.plans_invalid.set(plans.invalid.len() as i64);
        *self.plans.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(plans);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn accepting(&self) -> bool {
        !self.drain.is_cancelled()
    }

    /// Marks runs left unfinished by a previous process as Interrupted.
    pub async fn recover(&self) -> Result<Vec<String>, RunsError> {
        let ids = self.store.mark_interrupted().await?;
        for id in &ids {
            warn!(run = %id, "run was interrupted by a restart; resume it with POST /api/v1/runs/{id}/resume");
        }
        self.refresh_active().await;
        Ok(ids)
    }

    pub(super) async fn refresh_active(&self) {
        if let Ok(n) = self.store.active_count().await {
            self.metrics.active_runs.set(n);
        }
    }

    /// Whether the store takes writes now and is still the file it was opened as; records the
    /// answer in `recoverd_store_healthy`. Runs that stopped on a failed write are written
    /// again once it is healthy.
    pub async fn check_store(&self) -> Result<(), StoreError> {
        let result = self.store.check_health().await;
        match &result {
            Ok(()) => {
                let pending: Vec<RunRecord> = lock(&self.unrecorded).values().cloned().collect();
                for record in pending {
                    match self.store.save(&record).await {
                        // Another replica took the run over meanwhile; its record is theirs.
                        Err(e) if e.not_ours() => {
                            warn!(run = %record.id, "the stopped run was taken over by another replica; not writing it");
                            lock(&self.unrecorded).remove(&record.id);
                            continue;
                        }
                        Err(e) => {
                            self.store_failed(&record.id, &e);
                            return Err(e);
                        }
                        Ok(()) => {}
                    }
                    info!(run = %record.id, "the store takes writes again; the stopped run is recorded as Interrupted");
                    lock(&self.unrecorded).remove(&record.id);
                }
                if !self.store_ok.swap(true, Ordering::SeqCst) {
                    info!("the run store takes writes again");
                }
                self.metrics.store_healthy.set(1);
                self.refresh_active().await;
            }
            Err(e) => self.store_failed("", e),
        }
        result
    }

    pub(super) fn store_failed(&self, run: &str, e: &StoreError) {
        self.metrics.store_failures.with_label_values(&[e.reason()]).inc();
        self.metrics.store_healthy.set(0);
        if self.store_ok.swap(false, Ordering::SeqCst) || !run.is_empty() {
            error!(run = %run, reason = e.reason(), error = %e, "the run store cannot be written; no run will take a step until it can");
        }
    }

    /// Deletes finished runs beyond the retention.
    pub async fn prune(&self, keep: Retention) -> Result<usize, RunsError> {
        let n = self.store.prune(keep).await?;
        if n > 0 {
            info!(deleted = n, "pruned finished runs beyond the retention");
        }
        Ok(n)
    }

    /// When run `id` does not execute here and another replica executes it: hands `decision`
    /// to that replica and fails with [`RunsError::Relayed`] naming it.
    pub(super) async fn relay_elsewhere(
        &self,
        id: &str,
        action: RelayedAction,
        by: &str,
        step: Option<&str>,
        started_at: Option<&str>,
    ) -> Result<(), RunsError> {
        if lock(&self.controls).contains_key(id) {
            return Ok(());
        }
        let decision = Relayed {
            action,
            step: step.map(str::to_string),
            started_at: started_at.map(str::to_string),
            by: by.to_string(),
            key: short_hash(&[id, by, &jiff::Timestamp::now().as_nanosecond().to_string()]),
        };
        match self.store.relay(id, &decision).await? {
            Some(replica) => Err(RunsError::Relayed { id: id.into(), replica }),
            None => Ok(()),
        }
    }

    /// Acts on the decisions other replicas relay to this one (several replicas): each is an
    /// approve or cancel of a run executing here, as if it had been asked here.
    pub fn serve_relayed(self: &Arc<Self>) {
        let Some(mut relayed) = self.store.relayed() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            while let Some((id, d)) = relayed.recv().await {
                let result = match d.action {
                    RelayedAction::Approve => this
                        .approve(&id, &d.by, d.step.as_deref(), d.started_at.as_deref())
                        .await
                        .map(|_| ()),
                    RelayedAction::Cancel => this.cancel(&id, &d.by).await.map(|_| ()),
                };
                match result {
                    Ok(()) => {
                        info!(run = %id, by = %d.by, action = ?d.action, "acted on a decision relayed by another replica")
                    }
                    Err(e) => {
                        warn!(run = %id, by = %d.by, action = ?d.action, error = %e, "a decision relayed by another replica was refused")
                    }
                }
            }
        });
    }

    pub async fn get(&self, id: &str) -> Result<RunRecord, RunsError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| RunsError::UnknownRun(id.into()))
    }

    /// Up to 500 full records, newest first (the CLI's `recoverd run` history and tests).
    pub async fn list(&self, plan: Option<&str>) -> Result<Vec<RunRecord>, RunsError> {
        Ok(self.store.list(plan, 500).await?)
    }

    /// One page of run summaries, newest first.
    pub async fn page(&self, plan: Option<&str>, limit: usize, after: Option<&str>) -> Result<Page, RunsError> {
        Ok(self.store.page(plan, limit, after).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::SeenIds;

    #[test]
    fn seen_ids_keep_the_most_recent_and_forget_the_oldest_beyond_capacity() {
        let seen = SeenIds::default();
        for i in 0..=SeenIds::CAPACITY {
            seen.insert(&format!("a-{i}"));
        }
        seen.insert("a-1");
        assert!(!seen.contains("a-0"), "the oldest is forgotten");
        assert!(seen.contains("a-1") && seen.contains(&format!("a-{}", SeenIds::CAPACITY)));
        assert!(!seen.contains("a-never"));
    }
}
