//! Runs as a service (I/O edge): turns alerts and manual triggers into claimed runs, executes
//! them in background tasks, and approves, cancels and resumes them.
//!
//! Owns the exactly-once rules of DESIGN §3: a run id derived from (plan, fingerprint,
//! startsAt) — or (plan, idempotency key) — so a repeated trigger collides with the first; one
//! active run per plan; the plan's cooldown; only firing alerts act; a resolved alert cancels a
//! run still waiting for approval. Every state change is in the store before it is acted on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::store::{ClaimRules, Page, Refusal, Retention, Store, StoreError};
use crate::alert::{Alert, AlertStatus};
use crate::executor::{Event, Executor, Observer, RunControl, RunInput};
use crate::metrics::Metrics;
use crate::plan::model::Mode;
use crate::plan::set::PlanSet;
use crate::plan::Plan;
use crate::record::{Phase, RunRecord, StepStatus, Trigger, TriggerKind};

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no plan named {0}")]
    UnknownPlan(String),
    #[error("plan {plan} is invalid and cannot run: {problems}")]
    InvalidPlan { plan: String, problems: String },
    #[error("plan {plan} has no param {key:?} (its params: {known})")]
    UnknownParam {
        plan: String,
        key: String,
        known: String,
    },
    #[error("plan {plan} does not let a trigger set param {key:?} (it may set: {allowed}); list it under spec.overridableParams to allow it")]
    ParamNotOverridable {
        plan: String,
        key: String,
        allowed: String,
    },
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
    #[error("recoverd is shutting down and accepts no new runs")]
    ShuttingDown,
}

/// What one alert did, for the webhook's reply.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlertOutcome {
    pub fingerprint: String,
    pub status: AlertStatus,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What recoverd did with one alert.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// A run of the plan started.
    Started,
    /// A run was created and waits for approval.
    AwaitingApproval,
    /// The incident already has a run (or the plan is busy or cooling down): nothing new.
    Deduplicated,
    /// No plan matches the alert's labels.
    NoMatch,
    /// A resolution withdrew a run that was waiting for approval.
    Cancelled,
    /// A resolution with nothing to withdraw.
    Ignored,
}

/// `POST /api/v1/plans/{ns}/{name}/runs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManualTrigger {
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Who asked (recorded).
    #[serde(default)]
    pub actor: Option<String>,
}

pub struct Runs {
    store: Mutex<Store>,
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
    tasks: TaskTracker,
    drain: tokio_util::sync::CancellationToken,
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The run id of an alert incident: the same (plan, fingerprint, startsAt) always gives the same
/// id, so every replica and every resend claims the same run.
pub fn alert_run_id(plan: &str, alert: &Alert) -> String {
    format!(
        "a-{}",
        short_hash(&[plan, &alert.fingerprint, &alert.starts_at])
    )
}

/// Locks a mutex whether or not a thread panicked while holding it: every value behind these
/// locks is consistent between statements (the store rolls back an unfinished transaction).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The most a run record keeps of one alert label or annotation value, and of all annotations.
pub const ALERT_VALUE_LIMIT: usize = 4096;
pub const ALERT_ANNOTATIONS_LIMIT: usize = 32 * 1024;
const TRUNCATED: &str = "…[truncated by recoverd]";

fn cap(value: &str, limit: usize) -> String {
    if value.len() <= limit {
        return value.to_string();
    }
    let mut end = limit;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &value[..end])
}

/// The alert as a run record keeps it (and templates see it): every label and annotation
/// value at most [`ALERT_VALUE_LIMIT`] bytes, annotations at most [`ALERT_ANNOTATIONS_LIMIT`]
/// in all, so that a noisy alert cannot make every record (and list) huge.
pub fn capped_context(alert: &Alert) -> Value {
    let mut alert = alert.clone();
    for v in alert.labels.values_mut() {
        *v = cap(v, ALERT_VALUE_LIMIT);
    }
    let mut budget = ALERT_ANNOTATIONS_LIMIT;
    for v in alert.annotations.values_mut() {
        let capped = cap(v, ALERT_VALUE_LIMIT.min(budget));
        budget = budget.saturating_sub(capped.len());
        *v = capped;
    }
    alert.context()
}

impl Runs {
    pub fn new(
        store: Store,
        plans: PlanSet,
        live: Arc<Executor>,
        dry: Arc<Executor>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let runs = Arc::new(Runs {
            store: Mutex::new(store),
            store_ok: AtomicBool::new(true),
            unrecorded: Mutex::default(),
            plans: RwLock::new(Arc::new(PlanSet::default())),
            live,
            dry,
            metrics,
            controls: Mutex::default(),
            tasks: TaskTracker::new(),
            drain: Default::default(),
        });
        runs.metrics.store_healthy.set(1);
        runs.set_plans(plans);
        runs
    }

    pub fn plans(&self) -> Arc<PlanSet> {
        self.plans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Marks runs left unfinished by a previous process as Interrupted.
    pub fn recover(&self) -> Result<Vec<String>, RunsError> {
        let ids = self.store().mark_interrupted()?;
        for id in &ids {
            warn!(run = %id, "run was interrupted by a restart; resume it with POST /api/v1/runs/{id}/resume");
        }
        self.refresh_active();
        Ok(ids)
    }

    fn refresh_active(&self) {
        if let Ok(n) = self.store().active_count() {
            self.metrics.active_runs.set(n);
        }
    }

    /// Whether the store takes writes now and is still the file it was opened as; records the
    /// answer in `recoverd_store_healthy`. Runs that stopped on a failed write are written
    /// again once it is healthy.
    pub fn check_store(&self) -> Result<(), StoreError> {
        let result = self.store().check_health();
        match &result {
            Ok(()) => {
                let pending: Vec<RunRecord> = lock(&self.unrecorded).values().cloned().collect();
                for record in pending {
                    if let Err(e) = self.store().save(&record) {
                        self.store_failed(&record.id, &e);
                        return Err(e);
                    }
                    info!(run = %record.id, "the store takes writes again; the stopped run is recorded as Interrupted");
                    lock(&self.unrecorded).remove(&record.id);
                }
                if !self.store_ok.swap(true, Ordering::SeqCst) {
                    info!("the run store takes writes again");
                }
                self.metrics.store_healthy.set(1);
                self.refresh_active();
            }
            Err(e) => self.store_failed("", e),
        }
        result
    }

    fn store_failed(&self, run: &str, e: &StoreError) {
        self.metrics
            .store_failures
            .with_label_values(&[e.reason()])
            .inc();
        self.metrics.store_healthy.set(0);
        if self.store_ok.swap(false, Ordering::SeqCst) || !run.is_empty() {
            error!(run = %run, reason = e.reason(), error = %e, "the run store cannot be written; no run will take a step until it can");
        }
    }

    /// Deletes finished runs beyond the retention.
    pub fn prune(&self, keep: Retention) -> Result<usize, RunsError> {
        let n = self.store().prune(keep)?;
        if n > 0 {
            info!(deleted = n, "pruned finished runs beyond the retention");
        }
        Ok(n)
    }

    /// Handles one alert of a webhook payload; each alert is judged by its own status.
    pub fn alert(self: &Arc<Self>, alert: &Alert) -> Result<Vec<AlertOutcome>, RunsError> {
        let outcome = |action: Action,
                       plan: Option<String>,
                       run_id: Option<String>,
                       reason: Option<String>| AlertOutcome {
            fingerprint: alert.fingerprint.clone(),
            status: alert.status,
            action,
            plan,
            run_id,
            reason,
        };
        self.metrics
            .alerts_received
            .with_label_values(&[alert.status.as_str()])
            .inc();
        let plans = self.plans();
        if !alert.is_firing() {
            // A resolution never acts; it only withdraws runs still waiting for approval, matched
            // by fingerprint (its startsAt may differ from the firing notifications') and only of
            // plans its labels match — a fingerprint is no secret, and must not cancel others.
            let matching: Vec<String> = plans
                .matching(&alert.labels)
                .into_iter()
                .map(|p| p.key.clone())
                .collect();
            let waiting: Vec<RunRecord> = if matching.is_empty() {
                Vec::new()
            } else {
                self.store()
                    .waiting_for_approval(&alert.fingerprint)?
                    .into_iter()
                    .filter(|r| matching.contains(&r.plan))
                    .collect()
            };
            if waiting.is_empty() {
                return Ok(vec![outcome(
                    Action::Ignored,
                    None,
                    None,
                    Some("resolved alerts never start runs".into()),
                )]);
            }
            let mut out = Vec::new();
            for run in waiting {
                let (plan, id) = (run.plan.clone(), run.id.clone());
                // Lost a race with an approval: the run is executing and the resolution is moot.
                if self
                    .finish_unstarted(run, "the alert resolved before the run was approved")
                    .is_err()
                {
                    continue;
                }
                out.push(outcome(
                    Action::Cancelled,
                    Some(plan),
                    Some(id),
                    Some("alert resolved".into()),
                ));
            }
            self.refresh_active();
            return Ok(out);
        }
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let matching = plans.matching(&alert.labels);
        if matching.is_empty() {
            return Ok(vec![outcome(Action::NoMatch, None, None, None)]);
        }
        let mut out = Vec::new();
        for plan in matching {
            let name = plan.key.clone();
            self.metrics.plan_matches.with_label_values(&[&name]).inc();
            let id = alert_run_id(&name, alert);
            let deduplicated = |refusal: &Refusal| {
                self.metrics
                    .runs_deduplicated
                    .with_label_values(&[&name, refusal.reason()])
                    .inc();
                // Alertmanager resends every group interval: one line per resend would drown
                // the log, so the duplicate itself is only a debug line.
                debug!(plan = %name, run = %refusal.existing(), reason = refusal.reason(), "alert deduplicated");
                outcome(
                    Action::Deduplicated,
                    Some(name.clone()),
                    Some(refusal.existing().to_string()),
                    Some(refusal.reason().into()),
                )
            };
            // A resend is the common case: answer it from the index before building a record.
            if self.store().exists(&id)? {
                out.push(deduplicated(&Refusal::SameRun { existing: id }));
                continue;
            }
            let input = RunInput {
                params: BTreeMap::new(),
                alert: Some(capped_context(alert)),
            };
            let mut record = self.live.new_record(&id, plan, &input);
            record.trigger = Trigger {
                kind: TriggerKind::Alert,
                fingerprint: Some(alert.fingerprint.clone()),
                starts_at: Some(alert.starts_at.clone()),
                ..Default::default()
            };
            let approval = plan.mode == Mode::Approval;
            record.phase = if approval {
                Phase::WaitingForApproval
            } else {
                Phase::Pending
            };
            let rules = ClaimRules {
                one_active_per_plan: true,
                cooldown: plan.cooldown,
            };
            let claimed = self.store().claim(&record, rules)?;
            if let Err(refusal) = claimed {
                out.push(deduplicated(&refusal));
                continue;
            }
            self.refresh_active();
            if approval {
                info!(plan = %name, run = %id, "run awaits approval");
                out.push(outcome(
                    Action::AwaitingApproval,
                    Some(name),
                    Some(id),
                    None,
                ));
            } else {
                self.spawn(record, plan.clone(), false);
                out.push(outcome(Action::Started, Some(name), Some(id), None));
            }
        }
        Ok(out)
    }

    /// A manual trigger. Returns the run and whether it was created now (false: the same
    /// idempotency key was used before and this is that run). A live run of an `approval`
    /// plan waits for approval as an alert's would; a dry run needs none (it changes nothing).
    pub fn trigger(
        self: &Arc<Self>,
        plan_name: &str,
        req: ManualTrigger,
    ) -> Result<(RunRecord, bool), RunsError> {
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let plans = self.plans();
        let probe = RunRecord {
            plan: plan_name.to_string(),
            ..Default::default()
        };
        let Some(plan) = plans.get(plan_name).cloned() else {
            return Err(self
                .current_plan(&probe)
                .err()
                .unwrap_or_else(|| RunsError::UnknownPlan(plan_name.into())));
        };
        let listed = |names: &mut dyn Iterator<Item = &String>| {
            let list = names.cloned().collect::<Vec<_>>().join(", ");
            if list.is_empty() {
                "none".to_string()
            } else {
                list
            }
        };
        // A mistyped param must not quietly run the plan with its default.
        if let Some(key) = req.params.keys().find(|k| !plan.params().contains_key(*k)) {
            return Err(RunsError::UnknownParam {
                plan: plan_name.into(),
                key: key.clone(),
                known: listed(&mut plan.params().keys()),
            });
        }
        // Which params a trigger may set is the plan author's decision, not the caller's.
        if let Some(key) = req
            .params
            .keys()
            .find(|k| !plan.overridable_params().contains(k))
        {
            return Err(RunsError::ParamNotOverridable {
                plan: plan_name.into(),
                key: key.clone(),
                allowed: listed(&mut plan.overridable_params().iter()),
            });
        }
        let id = match &req.idempotency_key {
            // A dry run and a live run with the same key are different runs.
            Some(k) => format!(
                "m-{}",
                short_hash(&[plan_name, if req.dry_run { "dry" } else { "live" }, k])
            ),
            None => format!(
                "m-{}",
                short_hash(&[
                    plan_name,
                    &jiff::Timestamp::now().as_nanosecond().to_string()
                ])
            ),
        };
        let executor = if req.dry_run { &self.dry } else { &self.live };
        let input = RunInput {
            params: req.params.clone(),
            alert: None,
        };
        let mut record = executor.new_record(&id, &plan, &input);
        record.trigger = Trigger {
            kind: TriggerKind::Manual,
            actor: req.actor.clone(),
            idempotency_key: req.idempotency_key.clone(),
            ..Default::default()
        };
        let approval = plan.mode == Mode::Approval && !req.dry_run;
        record.phase = if approval {
            Phase::WaitingForApproval
        } else {
            Phase::Pending
        };
        // The store applies the one-active-run rule to live runs only.
        let rules = ClaimRules {
            one_active_per_plan: true,
            cooldown: None,
        };
        // Bind the claim first: the store's lock must be released before `get` takes it again.
        let claimed = self.store().claim(&record, rules)?;
        match claimed {
            Ok(()) => {}
            Err(Refusal::SameRun { existing }) => {
                self.metrics
                    .runs_deduplicated
                    .with_label_values(&[plan_name, "idempotency-key"])
                    .inc();
                let existing = self.get(&existing)?;
                return Ok((existing, false));
            }
            Err(refusal) => {
                self.metrics
                    .runs_deduplicated
                    .with_label_values(&[plan_name, refusal.reason()])
                    .inc();
                return Err(RunsError::Busy {
                    plan: plan_name.into(),
                    existing: refusal.existing().into(),
                });
            }
        }
        self.refresh_active();
        if approval {
            info!(plan = %plan_name, run = %id, "manually triggered run awaits approval");
        } else {
            self.spawn(record.clone(), plan, req.dry_run);
        }
        Ok((record, true))
    }

    pub fn get(&self, id: &str) -> Result<RunRecord, RunsError> {
        self.store()
            .get(id)?
            .ok_or_else(|| RunsError::UnknownRun(id.into()))
    }

    /// Up to 500 full records, newest first (the CLI's `recoverd run` history and tests).
    pub fn list(&self, plan: Option<&str>) -> Result<Vec<RunRecord>, RunsError> {
        Ok(self.store().list(plan, 500)?)
    }

    /// One page of run summaries, newest first.
    pub fn page(
        &self,
        plan: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page, RunsError> {
        Ok(self.store().page(plan, limit, after)?)
    }

    pub fn approve(self: &Arc<Self>, id: &str) -> Result<RunRecord, RunsError> {
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let mut record = self.get(id)?;
        let plan = self.current_plan(&record)?;
        record.phase = Phase::Pending;
        self.transition(
            &record,
            &[Phase::WaitingForApproval],
            "approval",
            "WaitingForApproval",
        )?;
        let dry = record.mode == crate::record::RunMode::DryRun;
        self.spawn(record.clone(), plan, dry);
        Ok(record)
    }

    pub fn cancel(&self, id: &str) -> Result<RunRecord, RunsError> {
        let record = self.get(id)?;
        if let Some(control) = lock(&self.controls).get(id) {
            control.cancel.cancel();
            return Ok(record);
        }
        self.finish_unstarted(record, "cancelled")
    }

    /// Ends a run that is not executing (waiting for approval, or interrupted) as Cancelled.
    fn finish_unstarted(&self, mut record: RunRecord, why: &str) -> Result<RunRecord, RunsError> {
        record.phase = Phase::Cancelled;
        record.finished_at = Some(crate::record::now());
        record.error = Some(why.to_string());
        let from = [
            Phase::Pending,
            Phase::WaitingForApproval,
            Phase::Interrupted,
        ];
        self.transition(
            &record,
            &from,
            "cancelling",
            "waiting, interrupted or running",
        )?;
        self.metrics
            .runs
            .with_label_values(&[&record.plan, "Cancelled"])
            .inc();
        self.refresh_active();
        Ok(record)
    }

    /// Writes `record` if the run is still in one of `from`; otherwise says what phase it is in.
    fn transition(
        &self,
        record: &RunRecord,
        from: &[Phase],
        action: &'static str,
        needs: &'static str,
    ) -> Result<(), RunsError> {
        if self.store().transition(record, from)? {
            return Ok(());
        }
        let phase = self.get(&record.id)?.phase;
        Err(RunsError::WrongPhase {
            id: record.id.clone(),
            phase,
            action,
            needs,
        })
    }

    /// Cancels runs that have waited for approval longer than their plan's `approvalTimeout`
    /// (default: the plan's `timeout`, 1h if unset). Returns their ids.
    pub fn expire_approvals(&self) -> Result<Vec<String>, RunsError> {
        let waiting = self.store().in_phase(Phase::WaitingForApproval)?;
        let plans = self.plans();
        let mut expired = Vec::new();
        for run in waiting {
            let limit = plans
                .get(&run.plan)
                .map_or(crate::plan::compiled::DEFAULT_RUN_TIMEOUT, |p| {
                    p.approval_timeout
                });
            let age = run
                .created_at
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| jiff::Timestamp::now().duration_since(t).unsigned_abs());
            if age.is_some_and(|a| a > limit) {
                let why = format!(
                    "no approval within {}; trigger the plan again if it is still needed",
                    crate::duration::format(limit)
                );
                let id = run.id.clone();
                if self.finish_unstarted(run, &why).is_ok() {
                    warn!(run = %id, "approval expired");
                    expired.push(id);
                }
            }
        }
        Ok(expired)
    }

    /// Continues an Interrupted run from its first unfinished step; finished steps are not
    /// repeated.
    pub fn resume(self: &Arc<Self>, id: &str) -> Result<RunRecord, RunsError> {
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let mut record = self.get(id)?;
        let plan = self.current_plan(&record)?;
        record.phase = Phase::Pending;
        record.error = None;
        // The step that was running when recoverd stopped starts again from its beginning.
        for step in record
            .steps
            .iter_mut()
            .filter(|s| s.status == StepStatus::Running)
        {
            step.status = StepStatus::Pending;
        }
        self.transition(&record, &[Phase::Interrupted], "resuming", "Interrupted")?;
        let dry = record.mode == crate::record::RunMode::DryRun;
        self.spawn(record.clone(), plan, dry);
        Ok(record)
    }

    fn current_plan(&self, record: &RunRecord) -> Result<Arc<Plan>, RunsError> {
        let plans = self.plans();
        let Some(plan) = plans.get(&record.plan) else {
            return Err(
                match plans
                    .invalid
                    .iter()
                    .find(|i| i.plan.as_deref() == Some(&record.plan))
                {
                    Some(bad) => RunsError::InvalidPlan {
                        plan: record.plan.clone(),
                        problems: bad.problems.join("; "),
                    },
                    None => RunsError::UnknownPlan(record.plan.clone()),
                },
            );
        };
        let now = plan.generation.clone();
        if now != record.plan_generation {
            return Err(RunsError::PlanChanged {
                id: record.id.clone(),
                plan: record.plan.clone(),
                then: record.plan_generation.clone(),
                now,
            });
        }
        Ok(plan.clone())
    }

    fn spawn(self: &Arc<Self>, mut record: RunRecord, plan: Arc<Plan>, dry_run: bool) {
        let control = RunControl {
            cancel: Default::default(),
            drain: self.drain.child_token(),
        };
        lock(&self.controls).insert(record.id.clone(), control.clone());
        let this = self.clone();
        self.tasks.spawn(async move {
            let executor = if dry_run {
                this.dry.clone()
            } else {
                this.live.clone()
            };
            let input = RunInput {
                params: BTreeMap::new(),
                alert: record.alert.clone(),
            };
            let observer = StoreObserver {
                runs: &this,
                drain: control.drain.clone(),
                failed: AtomicBool::new(false),
            };
            executor
                .execute(&plan, &input, &mut record, &observer, &control)
                .await;
            if observer.failed.load(Ordering::SeqCst) {
                // The run stopped (before its next step) because its record could not be
                // written. Keep the truth in memory and write it once the store takes writes.
                if record.phase == Phase::Interrupted {
                    record.error = Some(
                        "the run store could not be written, so the run stopped before its next step rather than run it unrecorded; resume it once the store is writable (see /readyz)"
                            .into(),
                    );
                }
                let saved = off_worker(|| this.store().save(&record));
                if saved.is_err() {
                    lock(&this.unrecorded).insert(record.id.clone(), record.clone());
                }
            }
            lock(&this.controls).remove(&record.id);
            off_worker(|| this.refresh_active());
        });
    }

    /// Stops accepting work, lets running steps finish (up to `grace`), leaving their runs
    /// Interrupted and recorded, then returns.
    pub async fn shutdown(&self, grace: Duration) {
        self.drain.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(grace = ?grace, "runs still in a step after the grace period; they will show as Interrupted after restart");
        }
    }

    /// Waits until no run is executing (tests, `demo`).
    pub async fn idle(&self) {
        loop {
            if lock(&self.controls).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes the record after every event, and keeps the metrics. A write that fails stops the
/// run before its next step (as a shutdown would: Interrupted, resumable), so that no step
/// runs without its record.
struct StoreObserver<'a> {
    runs: &'a Runs,
    drain: tokio_util::sync::CancellationToken,
    failed: AtomicBool,
}

/// Runs blocking store work from async code without holding up a worker thread the rest of the
/// server needs (the runtime moves its other tasks elsewhere meanwhile); a current-thread
/// runtime (tests) has no other worker to protect.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl StoreObserver<'_> {
    fn save(&self, run: &RunRecord) -> Result<(), StoreError> {
        off_worker(|| self.runs.store().save(run))
    }
}

impl Observer for StoreObserver<'_> {
    fn on_event(&self, run: &RunRecord, event: &Event) {
        if let Err(e) = self.save(run) {
            self.runs.store_failed(&run.id, &e);
            self.failed.store(true, Ordering::SeqCst);
            self.drain.cancel();
        }
        let m = &self.runs.metrics;
        match event {
            Event::StepFinished {
                index,
                compensation,
            } => {
                let s = run.step(*index, *compensation);
                if let Some(ms) = s.duration_ms {
                    m.step_duration
                        .with_label_values(&[&run.plan, s.step_type.as_str()])
                        .observe(ms as f64 / 1000.0);
                }
                if s.status == StepStatus::Failed {
                    let reason = s.reason.as_deref().unwrap_or("unknown");
                    m.step_failures
                        .with_label_values(&[&run.plan, s.step_type.as_str(), reason])
                        .inc();
                }
            }
            Event::RunFinished => {
                m.runs
                    .with_label_values(&[&run.plan, run.phase.as_str()])
                    .inc();
                if let Some(ms) = run.duration_ms {
                    m.run_duration
                        .with_label_values(&[&run.plan])
                        .observe(ms as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
}
