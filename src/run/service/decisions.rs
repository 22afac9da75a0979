//! Decisions about runs that are not executing: approving, cancelling, and expiring approvals
//! nobody gave in time.

use std::sync::Arc;

use tracing::{info, warn};

use crate::record::{Decision, Phase, RunRecord};

use super::{lock, Runs, RunsError};
use crate::run::store::RelayedAction;

impl Runs {
    /// Approves a run waiting for approval (or its approval step waiting now), as `by`. While
    /// the run executes, `step` must name the waiting step and `started_at`, when given, its
    /// record's `startedAt`: an answer to an earlier wait never approves a later one.
    pub async fn approve(
        self: &Arc<Self>,
        id: &str,
        by: &str,
        step: Option<&str>,
        started_at: Option<&str>,
    ) -> Result<RunRecord, RunsError> {
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let mut record = self.get(id).await?;
        // An `approval` step of a run executing here: answer the step, the run goes on.
        if record.phase == Phase::Running {
            let waiting = record.waiting_for_approval().map(|s| s.name.clone());
            if let (Some(waiting), asked) = (&waiting, step) {
                if asked != Some(waiting.as_str()) {
                    return Err(RunsError::WrongStep {
                        id: id.into(),
                        waiting: waiting.clone(),
                        asked: asked.map(str::to_string),
                    });
                }
            }
            // Checked here from the record, then handed to the replica executing it if that is
            // another one (which checks again).
            self.relay_elsewhere(id, RelayedAction::Approve, by, step, started_at)
                .await?;
            let answered = match (&waiting, lock(&self.controls).get(id)) {
                (Some(_), Some(c)) => c.approvals.approve(by, step, started_at),
                _ => Err(crate::executor::ApprovalRefused::NothingWaiting),
            };
            match answered {
                Ok(()) => {}
                Err(crate::executor::ApprovalRefused::OtherWait { step, started_at: now }) => {
                    return Err(RunsError::StaleApproval {
                        id: id.into(),
                        step,
                        started_at: now,
                        asked: started_at.map(|t| format!("startedAt {t}")),
                    })
                }
                Err(crate::executor::ApprovalRefused::NothingWaiting) => {
                    return Err(RunsError::WrongPhase {
                        id: id.into(),
                        phase: record.phase,
                        action: "approval",
                        needs: "WaitingForApproval, or Running with an approval step waiting",
                    })
                }
            }
            info!(run = %id, "approval step approved");
            return self.get(id).await;
        }
        let plan = self.current_plan(&record)?;
        record.phase = Phase::Pending;
        record.decisions.push(Decision {
            action: "approved".into(),
            by: by.into(),
            at: crate::record::now(),
        });
        self.transition(&record, &[Phase::WaitingForApproval], "approval", "WaitingForApproval")
            .await?;
        let dry = record.mode == crate::record::RunMode::DryRun;
        self.spawn(record.clone(), plan, dry);
        Ok(record)
    }

    /// Cancels a run, as `by`: an executing one stops now, one that waits ends Cancelled.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<RunRecord, RunsError> {
        let mut record = self.get(id).await?;
        if matches!(record.phase, Phase::Running | Phase::Pending) {
            self.relay_elsewhere(id, RelayedAction::Cancel, by, None, None).await?;
        }
        if let Some(control) = lock(&self.controls).get(id) {
            *lock(&control.cancelled_by) = Some(by.to_string());
            control.cancel.cancel();
            return Ok(record);
        }
        record.decisions.push(Decision {
            action: "cancelled".into(),
            by: by.into(),
            at: crate::record::now(),
        });
        self.finish_unstarted(record, "cancelled").await
    }

    /// Ends a run that is not executing (waiting for approval, or interrupted) as Cancelled.
    pub(super) async fn finish_unstarted(&self, mut record: RunRecord, why: &str) -> Result<RunRecord, RunsError> {
        record.phase = Phase::Cancelled;
        record.finished_at = Some(crate::record::now());
        record.error = Some(why.to_string());
        let from = [Phase::Pending, Phase::WaitingForApproval, Phase::Interrupted];
        self.transition(&record, &from, "cancelling", "waiting, interrupted or running")
            .await?;
        self.metrics.runs.with_label_values(&[&record.plan, "Cancelled"]).inc();
        self.refresh_active().await;
        self.notify(
            crate::notify::Lifecycle::Cancelled,
            &record,
            None,
            record.error.as_deref(),
        );
        Ok(record)
    }

    /// Writes `record` if the run is still in one of `from`; otherwise says what phase it is in.
    pub(super) async fn transition(
        &self,
        record: &RunRecord,
        from: &[Phase],
        action: &'static str,
        needs: &'static str,
    ) -> Result<(), RunsError> {
        if self.store.transition(record, from).await? {
            return Ok(());
        }
        let phase = self.get(&record.id).await?.phase;
        Err(RunsError::WrongPhase {
            id: record.id.clone(),
            phase,
            action,
            needs,
        })
    }

    /// Cancels runs that have waited for approval longer than their plan's `approvalTimeout`
    /// (default: the plan's `timeout`, 1h if unset). Returns their ids.
    pub async fn expire_approvals(&self) -> Result<Vec<String>, RunsError> {
        let waiting = self.store.in_phase(Phase::WaitingForApproval).await?;
        let plans = self.plans();
        let mut expired = Vec::new();
        for run in waiting {
            let limit = plans
                .get(&run.plan)
                .map_or(crate::plan::compiled::DEFAULT_RUN_TIMEOUT, |p| p.approval_timeout);
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
                if self.finish_unstarted(run, &why).await.is_ok() {
                    warn!(run = %id, "approval expired");
                    expired.push(id);
                }
            }
        }
        Ok(expired)
    }
}
