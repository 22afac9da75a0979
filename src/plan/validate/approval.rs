//! An `approval` step: a message for the approver and a bounded wait.

use super::{Rule, StepScope, Validator};
use crate::plan::compiled::Approval;
use crate::plan::model::{ApprovalStep, OnError, Step};

impl Validator<'_> {
    pub(super) fn approval(&mut self, s: &StepScope<'_>, step: &Step, a: &ApprovalStep) -> Option<Approval> {
        // An approval that may fail and be tolerated is no approval: the run would go on
        // without it. What happens when nobody answers is `onTimeout`'s to say.
        if step.on_error == OnError::Continue || step.retries.is_some_and(|r| r > 0) {
            self.problem(
                s.name,
                s.at(if step.on_error == OnError::Continue {
                    "onError"
                } else {
                    "retries"
                }),
                Rule::ApprovalForm,
                "an approval step cannot have `onError: continue` or `retries`: say what happens \
                 without an answer with `approval.onTimeout` (abort or continue)"
                    .into(),
            );
            return None;
        }
        let timeout = self.wait_bound(
            s,
            s.at("approval.timeout"),
            a.timeout.as_deref(),
            "an approval step needs a `timeout` (e.g. 15m): nobody may be there to answer",
            "approval timeout",
        )?;
        Some(Approval {
            message: a.message.clone(),
            timeout,
            on_timeout: a.on_timeout,
        })
    }
}
