//! `approval`: pause the run until a person approves it, at most the step's `timeout`. The
//! record shows the approver the question and the values gathered so far (`recoverd runs ID`);
//! `POST /api/v1/runs/{id}/approve` with `{"step": NAME, "startedAt": …}` answers it — that
//! wait only (the step record's `startedAt`), never a later wait of the same step. A dry run does not wait; a
//! shutdown leaves the run Interrupted (resuming asks again).

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::redact::REDACTED;
use super::{Approvals, StepCtx, StepError, StepOutcome};
use crate::duration;
use crate::plan::compiled::Approval;
use crate::plan::model::OnTimeout;

use super::ApprovalSlot as Slot;

/// Empties the approval slot when the step ends in any way (a timeout, a cancel, the run's
/// deadline dropping it): no approval may land on a step that no longer waits.
struct Clear<'a>(&'a Slot);

impl Drop for Clear<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// The question as the approver sees it: the rendered message, or, when it is built from a
/// secret, a note saying so (no filter can launder a secret into it).
pub(super) fn question(step: &Approval, ctx: &StepCtx<'_>) -> Result<String, StepError> {
    if ctx.uses_secret(&step.message) {
        return Ok(format!(
            "{REDACTED} (the message uses a secret value; see the plan's approval step)"
        ));
    }
    ctx.render(&step.message)
}

/// The values gathered so far, secrets redacted.
pub(super) fn known_values(ctx: &StepCtx<'_>) -> Value {
    let values: Map<String, Value> = ctx.values["Values"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = if ctx.secret_keys.contains(k) {
                        json!(REDACTED)
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    Value::Object(values)
}

pub(super) async fn run(step: &Approval, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let message = question(step, ctx)?;
    let wait = duration::format(step.timeout);
    let values = known_values(ctx);
    let decided = |key: &str, decision: &str| StepOutcome {
        inputs: Some(json!({"message": message, "values": values, "timeout": wait, key: decision})),
        ..Default::default()
    };
    if ctx.dry_run() {
        return Ok(decided("dryRun", &format!("would wait up to {wait} for an approval")));
    }
    let slot = match &ctx.control.approvals {
        Approvals::Given => return Ok(decided("decision", "approved in advance (--approve)")),
        Approvals::Unavailable => return Err(StepError::ApprovalUnavailable { message }),
        Approvals::Waiting(slot) => slot,
    };
    let token = CancellationToken::new();
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(super::WaitingApproval {
        step: ctx.step.to_string(),
        started_at: ctx.started_at.to_string(),
        signal: token.clone(),
        by: None,
    });
    let _clear = Clear(slot);
    let approved_by = || {
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|w| w.by.clone())
    };
    tokio::select! {
        _ = token.cancelled() => {}
        _ = ctx.control.drain.cancelled() => return Err(StepError::Interrupted),
        _ = tokio::time::sleep(step.timeout) => {}
    }
    // An approval that arrived as the timeout fired still counts: the approver was told 200.
    match approved_by() {
        Some(by) => Ok(decided(
            "decision",
            &format!("approved at {} by {by}", crate::record::now()),
        )),
        None => match step.on_timeout {
            OnTimeout::Continue => Ok(decided(
                "decision",
                &format!("not approved within {wait}; the run went on (onTimeout: continue)"),
            )),
            OnTimeout::Abort => Err(StepError::NotApproved {
                after: step.timeout,
                message,
            }),
        },
    }
}
