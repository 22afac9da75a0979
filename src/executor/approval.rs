//! `approval`: pause the run until a person approves it, at most the step's `timeout`. The
//! record shows the approver the question and the values gathered so far (`recoverd runs ID`);
//! `POST /api/v1/runs/{id}/approve` answers it. A dry run does not wait; a shutdown leaves the
//! run Interrupted (resuming asks again).

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Approvals, StepCtx, StepError, StepOutcome};
use crate::duration;
use crate::plan::compiled::Approval;
use crate::plan::model::OnTimeout;

pub(super) async fn run(step: &Approval, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let message = ctx.render(&step.message)?;
    let wait = duration::format(step.timeout);
    let decided = |decision: &str| StepOutcome {
        inputs: Some(json!({"message": message, "timeout": wait, "decision": decision})),
        ..Default::default()
    };
    if ctx.dry_run() {
        return Ok(decided(&format!(
            "would wait up to {wait} for an approval (dry run)"
        )));
    }
    let slot = match &ctx.control.approvals {
        Approvals::Given => return Ok(decided("approved in advance (--approve)")),
        Approvals::Unavailable => return Err(StepError::ApprovalUnavailable { message }),
        Approvals::Waiting(slot) => slot,
    };
    let token = CancellationToken::new();
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
    (ctx.progress)(format!("approval: {message}"), step.timeout);
    let outcome = tokio::select! {
        _ = token.cancelled() => Ok(decided(&format!("approved at {}", crate::record::now()))),
        _ = ctx.control.drain.cancelled() => Err(StepError::Interrupted),
        _ = tokio::time::sleep(step.timeout) => match step.on_timeout {
            OnTimeout::Continue => Ok(decided(&format!(
                "not approved within {wait}; the run went on (onTimeout: continue)"
            ))),
            OnTimeout::Abort => Err(StepError::NotApproved {
                after: step.timeout,
                message: message.clone(),
            }),
        },
    };
    // No approval may land on a later step.
    slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    outcome
}
