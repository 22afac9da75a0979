//! Executing runs: spawning a claimed run on the executor, resuming an interrupted one,
//! writing the record after every event (a failed write stops the run before its next step),
//! keeping the metrics, and draining on shutdown.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::executor::{Approvals, Event, Observer, RunControl, RunInput};
use crate::notify::Lifecycle;
use crate::plan::Plan;
use crate::record::{Decision, Phase, RunRecord, StepStatus};

use super::{lock, Runs, RunsError};

impl Runs {
    /// Continues an Interrupted run from its first unfinished step; finished steps are not
    /// repeated.
    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<RunRecord, RunsError> {
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let mut record = self.get(id).await?;
        let plan = self.current_plan(&record)?;
        record.phase = Phase::Pending;
        record.error = None;
        // The step that was running when recoverd stopped starts again from its beginning.
        for step in record
            .steps
            .iter_mut()
            .filter(|s| matches!(s.status, StepStatus::Running | StepStatus::WaitingForApproval))
        {
            step.status = StepStatus::Pending;
        }
        self.transition(&record, &[Phase::Interrupted], "resuming", "Interrupted")
            .await?;
        let dry = record.mode == crate::record::RunMode::DryRun;
        self.spawn(record.clone(), plan, dry);
        Ok(record)
    }

    /// Takes over the runs another replica was executing when it stopped (its Lease expired):
    /// each is recorded as taken over and resumed here from its first unfinished step.
    /// Returns their ids. Nothing to do with a single-process store.
    pub async fn take_over(self: &Arc<Self>) -> Result<Vec<String>, RunsError> {
        let mut taken = Vec::new();
        for orphan in self.store.orphaned().await? {
            if !self.accepting() {
                break;
            }
            let id = orphan.id.clone();
            if lock(&self.unresumable).contains(&id) {
                continue;
            }
            // Before writing anything: can this replica resume it at all?
            let why_not = match self.current_plan(&orphan) {
                Err(e) => Some(e.to_string()),
                Ok(_) if crate::run::store::kube::lost_values(&orphan) => {
                    Some("values it read were cut to fit the record, so later steps cannot use them".into())
                }
                Ok(_) => None,
            };
            if let Some(why) = why_not {
                warn!(run = %id, reason = %why, "a stopped replica's run cannot be resumed here; it is left for an operator (cancel it, or resume it once the plan is back)");
                lock(&self.unresumable).insert(id);
                continue;
            }
            // Take its Lease first (only if it is still the expired one this replica watched),
            // then write, on top of the run as it is now.
            if self.store.acquire(&id).await?.is_none() {
                continue;
            }
            let Some(mut record) = self.store.get(&id).await? else {
                self.store.release(&id).await;
                continue;
            };
            let from = [Phase::Pending, Phase::Running, Phase::Interrupted];
            record.phase = Phase::Interrupted;
            record.error =
                Some("the replica executing this run stopped (its Lease expired); another replica took it over".into());
            record.decisions.push(Decision {
                action: "takenOver".into(),
                by: self.store.replica().unwrap_or_else(|| "recoverd".into()),
                at: crate::record::now(),
            });
            let written = self.store.transition(&record, &from).await;
            if !matches!(written, Ok(true)) {
                self.store.release(&id).await;
                written?;
                continue;
            }
            match self.resume(&id).await {
                Ok(_) => {
                    warn!(run = %id, "took over a run whose replica stopped; resuming it from its first unfinished step");
                    taken.push(id);
                }
                Err(e) => {
                    self.store.release(&id).await;
                    warn!(run = %id, error = %e, "cannot resume a run taken over from a stopped replica; it stays Interrupted");
                    lock(&self.unresumable).insert(id);
                }
            }
        }
        Ok(taken)
    }

    pub(super) fn current_plan(&self, record: &RunRecord) -> Result<Arc<Plan>, RunsError> {
        let plans = self.plans();
        let Some(plan) = plans.get(&record.plan) else {
            return Err(
                match plans.invalid.iter().find(|i| i.plan.as_deref() == Some(&record.plan)) {
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

    /// The phase a claimed run is created in: waiting for approval, or about to run.
    pub(super) fn first_phase(needs_approval: bool) -> Phase {
        if needs_approval {
            Phase::WaitingForApproval
        } else {
            Phase::Pending
        }
    }

    /// After a claim: a run waiting for approval is announced, any other starts now. Returns
    /// whether it started.
    pub(super) async fn begin(self: &Arc<Self>, record: &RunRecord, plan: Arc<Plan>, dry_run: bool) -> bool {
        self.refresh_active().await;
        if record.phase == Phase::WaitingForApproval {
            info!(plan = %record.plan, run = %record.id, trigger = %record.trigger.kind, "run awaits approval");
            self.notify(Lifecycle::AwaitingApproval, record, None, None);
            false
        } else {
            self.spawn(record.clone(), plan, dry_run);
            true
        }
    }

    pub(super) fn spawn(self: &Arc<Self>, mut record: RunRecord, plan: Arc<Plan>, dry_run: bool) {
        let control = RunControl {
            cancel: Default::default(),
            drain: self.drain.child_token(),
            approvals: Approvals::awaiting(),
            cancelled_by: Default::default(),
        };
        lock(&self.controls).insert(record.id.clone(), control.clone());
        let this = self.clone();
        self.tasks.spawn(async move {
            // The right to execute it here: with several replicas, another may hold it.
            let done = tokio_util::sync::CancellationToken::new();
            match this.store.acquire(&record.id).await {
                Ok(Some(lost)) => {
                    // Lost to another replica: stop now, even mid-step (the other one runs it
                    // again from that step); nothing more is written from here (fenced).
                    let (stop, done) = (control.cancel.clone(), done.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = lost.cancelled() => stop.cancel(),
                            _ = done.cancelled() => {}
                        }
                    });
                }
                Ok(None) => {
                    info!(run = %record.id, "not executing this run here: another replica holds it, or it is no longer to run (cancelled)");
                    lock(&this.controls).remove(&record.id);
                    return;
                }
                Err(e) => {
                    // Claimed but not started: a replica takes it over once it sees no Lease.
                    this.store_failed(&record.id, &e);
                    lock(&this.controls).remove(&record.id);
                    return;
                }
            }
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
                fenced: AtomicBool::new(false),
            };
            // A panic in a run must not keep its Lease (and its plan) forever: it is caught, the
            // record stays as last written, and the run is released below.
            let executed = std::panic::AssertUnwindSafe(executor.execute(
                &plan,
                &input,
                &mut record,
                &observer,
                &control,
            ));
            if futures::FutureExt::catch_unwind(executed).await.is_err() {
                tracing::error!(run = %record.id, "the run's task panicked; it stopped where its record says");
            }
            if observer.failed.load(Ordering::SeqCst) {
                // The run stopped (before its next step) because its record could not be
                // written. Keep the truth in memory and write it once the store takes writes.
                if record.phase == Phase::Interrupted {
                    record.error = Some(
                        "the run store could not be written, so the run stopped before its next step rather than run it unrecorded; resume it once the store is writable (see /readyz)"
                            .into(),
                    );
                }
                match this.store.save(&record).await {
                    // Another replica holds the run now: its record is that replica's to write.
                    Err(e) if e.not_ours() => {
                        warn!(run = %record.id, "this replica lost the run to another; it stopped here without writing further");
                    }
                    Err(_) => {
                        lock(&this.unrecorded).insert(record.id.clone(), record.clone());
                    }
                    Ok(()) => {}
                }
            }
            done.cancel();
            this.store.release(&record.id).await;
            lock(&this.controls).remove(&record.id);
            this.refresh_active().await;
        });
    }

    /// Stops accepting work, lets running steps finish (up to `grace`), leaving their runs
    /// Interrupted and recorded, then returns.
    pub async fn shutdown(&self, grace: Duration) {
        self.drain.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
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
    /// The run is another replica's now (or gone): nothing is written, told or counted.
    fenced: AtomicBool,
}

#[async_trait::async_trait]
impl Observer for StoreObserver<'_> {
    async fn on_event(&self, run: &RunRecord, event: &Event) {
        if self.fenced.load(Ordering::SeqCst) {
            return;
        }
        match self.runs.store.save(run).await {
            Ok(()) => {}
            Err(e) if e.not_ours() => {
                warn!(run = %run.id, error = %e, "this replica no longer holds the run; it stops without writing, telling or counting more");
                self.fenced.store(true, Ordering::SeqCst);
                self.failed.store(true, Ordering::SeqCst);
                self.drain.cancel();
                return;
            }
            Err(e) => {
                self.runs.store_failed(&run.id, &e);
                self.failed.store(true, Ordering::SeqCst);
                self.drain.cancel();
            }
        }
        let m = &self.runs.metrics;
        match event {
            Event::RunStarted => self.runs.notify(Lifecycle::Started, run, None, None),
            Event::StepWaiting {
                index, compensation, ..
            } => {
                // The step, or a step of one of its forEach iterations.
                let s = run.step(*index, *compensation);
                if let Some(s) = std::iter::once(s)
                    .chain(&s.children)
                    .find(|s| s.status == StepStatus::WaitingForApproval)
                {
                    self.runs.notify(Lifecycle::AwaitingApproval, run, Some(&s.name), None);
                }
            }
            Event::StepFinished { index, compensation } => {
                let s = run.step(*index, *compensation);
                // A cancel is told once, as the run's end, not as a failed step.
                if s.status == StepStatus::Failed && s.reason.as_deref() != Some("cancelled") {
                    self.runs
                        .notify(Lifecycle::StepFailed, run, Some(&s.name), s.error.as_deref());
                }
                step_metrics(m, &run.plan, s);
            }
            Event::ChildFinished {
                index,
                compensation,
                child,
            } => {
                // A step of a forEach iteration counts as a step. Its failure is told when the
                // run goes on past it (onError: continue); otherwise the forEach's own failure,
                // which names it, is.
                let s = run.child(*index, *compensation, *child);
                if s.status == StepStatus::Failed && s.continued {
                    self.runs
                        .notify(Lifecycle::StepFailed, run, Some(&s.name), s.error.as_deref());
                }
                step_metrics(m, &run.plan, s);
            }
            Event::RunFinished => {
                if let Some(event) = Lifecycle::of_finished(run.phase) {
                    self.runs.notify(event, run, None, run.error.as_deref());
                }
                m.runs.with_label_values(&[&run.plan, run.phase.as_str()]).inc();
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

/// A finished step's duration and, when it failed, its failure by reason.
fn step_metrics(m: &crate::metrics::Metrics, plan: &str, s: &crate::record::StepRecord) {
    if let Some(ms) = s.duration_ms {
        m.step_duration
            .with_label_values(&[plan, s.step_type.as_str()])
            .observe(ms as f64 / 1000.0);
    }
    if s.status == StepStatus::Failed {
        let reason = s.reason.as_deref().unwrap_or("unknown");
        m.step_failures
            .with_label_values(&[plan, s.step_type.as_str(), reason])
            .inc();
    }
}
