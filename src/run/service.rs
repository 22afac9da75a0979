//! Runs as a service (I/O edge): turns alerts and manual triggers into claimed runs, executes
//! them in background tasks, and approves, cancels and resumes them.
//!
//! Owns the exactly-once rules of DESIGN §3: a run id derived from (plan, fingerprint,
//! startsAt) — or (plan, idempotency key) — so a repeated trigger collides with the first; one
//! active run per plan; the plan's cooldown; only firing alerts act; a resolved alert cancels a
//! run still waiting for approval. Every state change is in the store before it is acted on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::record::{Phase, RunRecord, StepStatus, Trigger};
use super::store::{ClaimRules, Refusal, Store, StoreError};
use crate::alert::Alert;
use crate::executor::{
    plan_generation, Event, Executor, Observer, RunControl, RunInput, RunnablePlan,
};
use crate::metrics::Metrics;
use crate::plan::model::Mode;
use crate::plan::set::{key, PlanSet};
use crate::plan::LoadedPlan;

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
    pub status: String,
    /// `started`, `awaitingApproval`, `deduplicated`, `noMatch`, `cancelled`, `ignored`.
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
            plans: RwLock::new(Arc::new(PlanSet::default())),
            live,
            dry,
            metrics,
            controls: Mutex::default(),
            tasks: TaskTracker::new(),
            drain: Default::default(),
        });
        runs.set_plans(plans);
        runs
    }

    pub fn plans(&self) -> Arc<PlanSet> {
        self.plans.read().unwrap().clone()
    }

    pub fn set_plans(&self, plans: PlanSet) {
        self.metrics.plans_loaded.set(plans.len() as i64);
        self.metrics.plans_invalid.set(plans.invalid.len() as i64);
        *self.plans.write().unwrap() = Arc::new(plans);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn accepting(&self) -> bool {
        !self.drain.is_cancelled()
    }

    /// Marks runs left unfinished by a previous process as Interrupted.
    pub fn recover(&self) -> Result<Vec<String>, RunsError> {
        let ids = self.store.lock().unwrap().mark_interrupted()?;
        for id in &ids {
            warn!(run = %id, "run was interrupted by a restart; resume it with POST /api/v1/runs/{id}/resume");
        }
        self.refresh_active();
        Ok(ids)
    }

    fn refresh_active(&self) {
        if let Ok(n) = self.store.lock().unwrap().active_count() {
            self.metrics.active_runs.set(n);
        }
    }

    /// Handles one alert of a webhook payload; each alert is judged by its own status.
    pub fn alert(self: &Arc<Self>, alert: &Alert) -> Result<Vec<AlertOutcome>, RunsError> {
        let outcome = |action: &str,
                       plan: Option<String>,
                       run_id: Option<String>,
                       reason: Option<String>| AlertOutcome {
            fingerprint: alert.fingerprint.clone(),
            status: alert.status.clone(),
            action: action.into(),
            plan,
            run_id,
            reason,
        };
        self.metrics
            .alerts_received
            .with_label_values(&[if alert.is_firing() {
                "firing"
            } else {
                "resolved"
            }])
            .inc();
        if !alert.is_firing() {
            // A resolution never acts; it only withdraws runs still waiting for approval, matched
            // by fingerprint alone (its startsAt may differ from the firing notifications').
            let waiting = self
                .store
                .lock()
                .unwrap()
                .waiting_for_approval(&alert.fingerprint)?;
            if waiting.is_empty() {
                return Ok(vec![outcome(
                    "ignored",
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
                    "cancelled",
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
        let plans = self.plans();
        let matching = plans.matching(&alert.labels);
        if matching.is_empty() {
            return Ok(vec![outcome("noMatch", None, None, None)]);
        }
        let mut out = Vec::new();
        for loaded in matching {
            let name = key(loaded);
            self.metrics.plan_matches.with_label_values(&[&name]).inc();
            let id = alert_run_id(&name, alert);
            let input = RunInput {
                params: BTreeMap::new(),
                alert: Some(alert.context()),
            };
            let mut record = self.live.new_record(&id, &loaded.plan, &input);
            record.trigger = Trigger {
                kind: "alert".into(),
                fingerprint: Some(alert.fingerprint.clone()),
                starts_at: Some(alert.starts_at.clone()),
                ..Default::default()
            };
            let approval = loaded.plan.spec.mode == Mode::Approval;
            record.phase = if approval {
                Phase::WaitingForApproval
            } else {
                Phase::Pending
            };
            let cooldown = loaded
                .plan
                .spec
                .cooldown
                .as_deref()
                .and_then(|c| crate::duration::parse(c).ok());
            let rules = ClaimRules {
                one_active_per_plan: true,
                cooldown,
            };
            let claimed = self.store.lock().unwrap().claim(&record, rules)?;
            if let Err(refusal) = claimed {
                self.metrics
                    .runs_deduplicated
                    .with_label_values(&[&name, refusal.reason()])
                    .inc();
                info!(plan = %name, run = %refusal.existing(), reason = refusal.reason(), "alert deduplicated");
                out.push(outcome(
                    "deduplicated",
                    Some(name),
                    Some(refusal.existing().to_string()),
                    Some(refusal.reason().into()),
                ));
                continue;
            }
            self.refresh_active();
            if approval {
                info!(plan = %name, run = %id, "run awaits approval");
                out.push(outcome("awaitingApproval", Some(name), Some(id), None));
            } else {
                self.spawn(record, loaded.clone(), false);
                out.push(outcome("started", Some(name), Some(id), None));
            }
        }
        Ok(out)
    }

    /// A manual trigger. Returns the run and whether it was created now (false: the same
    /// idempotency key was used before and this is that run).
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
        let Some(loaded) = plans.get(plan_name).cloned() else {
            return Err(self
                .current_plan(&probe)
                .err()
                .unwrap_or_else(|| RunsError::UnknownPlan(plan_name.into())));
        };
        // A mistyped param must not quietly run the plan with its default.
        if let Some(key) = req
            .params
            .keys()
            .find(|k| !loaded.plan.spec.params.contains_key(*k))
        {
            let known = loaded
                .plan
                .spec
                .params
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(RunsError::UnknownParam {
                plan: plan_name.into(),
                key: key.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known
                },
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
        let mut record = executor.new_record(&id, &loaded.plan, &input);
        record.trigger = Trigger {
            kind: "manual".into(),
            actor: req.actor.clone(),
            idempotency_key: req.idempotency_key.clone(),
            ..Default::default()
        };
        record.phase = Phase::Pending;
        // A dry run changes nothing, so it may run beside a live one.
        let rules = ClaimRules {
            one_active_per_plan: !req.dry_run,
            cooldown: None,
        };
        // Bind the claim first: the store's lock must be released before `get` takes it again.
        let claimed = self.store.lock().unwrap().claim(&record, rules)?;
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
        self.spawn(record.clone(), loaded, req.dry_run);
        Ok((record, true))
    }

    pub fn get(&self, id: &str) -> Result<RunRecord, RunsError> {
        self.store
            .lock()
            .unwrap()
            .get(id)?
            .ok_or_else(|| RunsError::UnknownRun(id.into()))
    }

    pub fn list(&self, plan: Option<&str>) -> Result<Vec<RunRecord>, RunsError> {
        Ok(self.store.lock().unwrap().list(plan, 500)?)
    }

    pub fn approve(self: &Arc<Self>, id: &str) -> Result<RunRecord, RunsError> {
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let mut record = self.get(id)?;
        let loaded = self.current_plan(&record)?;
        record.phase = Phase::Pending;
        self.transition(
            &record,
            &[Phase::WaitingForApproval],
            "approval",
            "WaitingForApproval",
        )?;
        self.spawn(record.clone(), loaded, false);
        Ok(record)
    }

    pub fn cancel(&self, id: &str) -> Result<RunRecord, RunsError> {
        let record = self.get(id)?;
        if let Some(control) = self.controls.lock().unwrap().get(id) {
            control.cancel.cancel();
            return Ok(record);
        }
        self.finish_unstarted(record, "cancelled")
    }

    /// Ends a run that is not executing (waiting for approval, or interrupted) as Cancelled.
    fn finish_unstarted(&self, mut record: RunRecord, why: &str) -> Result<RunRecord, RunsError> {
        record.phase = Phase::Cancelled;
        record.finished_at = Some(super::record::now());
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
        if self.store.lock().unwrap().transition(record, from)? {
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
        let waiting = self
            .store
            .lock()
            .unwrap()
            .in_phase(Phase::WaitingForApproval)?;
        let plans = self.plans();
        let mut expired = Vec::new();
        for run in waiting {
            let limit = plans
                .get(&run.plan)
                .and_then(|p| {
                    p.plan
                        .spec
                        .approval_timeout
                        .as_deref()
                        .or(p.plan.spec.timeout.as_deref())
                        .and_then(|t| crate::duration::parse(t).ok())
                })
                .unwrap_or(crate::plan::validate::DEFAULT_RUN_TIMEOUT);
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
        let loaded = self.current_plan(&record)?;
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
        let dry = record.mode == super::record::RunMode::DryRun;
        self.spawn(record.clone(), loaded, dry);
        Ok(record)
    }

    fn current_plan(&self, record: &RunRecord) -> Result<LoadedPlan, RunsError> {
        let plans = self.plans();
        let Some(loaded) = plans.get(&record.plan) else {
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
        let now = plan_generation(&loaded.plan);
        if now != record.plan_generation {
            return Err(RunsError::PlanChanged {
                id: record.id.clone(),
                plan: record.plan.clone(),
                then: record.plan_generation.clone(),
                now,
            });
        }
        Ok(loaded.clone())
    }

    fn spawn(self: &Arc<Self>, mut record: RunRecord, loaded: LoadedPlan, dry_run: bool) {
        let control = RunControl {
            cancel: Default::default(),
            drain: self.drain.child_token(),
        };
        self.controls
            .lock()
            .unwrap()
            .insert(record.id.clone(), control.clone());
        let this = self.clone();
        self.tasks.spawn(async move {
            let executor = if dry_run {
                this.dry.clone()
            } else {
                this.live.clone()
            };
            let runnable = RunnablePlan {
                plan: loaded.plan.clone(),
                base_dir: loaded.source.file.parent().map(|p| p.to_path_buf()),
            };
            let input = RunInput {
                params: BTreeMap::new(),
                alert: record.alert.clone(),
            };
            let observer = StoreObserver { runs: &this };
            executor
                .execute(&runnable, &input, &mut record, &observer, &control)
                .await;
            this.controls.lock().unwrap().remove(&record.id);
            this.refresh_active();
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
            if self.controls.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes the record after every event, and keeps the metrics.
struct StoreObserver<'a> {
    runs: &'a Runs,
}

impl Observer for StoreObserver<'_> {
    fn on_event(&self, run: &RunRecord, event: &Event) {
        if let Err(e) = self.runs.store.lock().unwrap().save(run) {
            warn!(run = %run.id, error = %e, "failed to record the run");
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
                        .with_label_values(&[&run.plan, &s.step_type])
                        .observe(ms as f64 / 1000.0);
                }
                if s.status == StepStatus::Failed {
                    let reason = s.reason.as_deref().unwrap_or("unknown");
                    m.step_failures
                        .with_label_values(&[&run.plan, &s.step_type, reason])
                        .inc();
                }
            }
            Event::RunFinished => {
                let result = format!("{:?}", run.phase);
                m.runs.with_label_values(&[&run.plan, &result]).inc();
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
