//! An `approval` step: a message for the approver and a bounded wait.

use super::{StepScope, Validator};
use crate::plan::compiled::Approval;
use crate::plan::model::ApprovalStep;

impl Validator<'_> {
    pub(super) fn approval(&mut self, s: &StepScope<'_>, a: &ApprovalStep) -> Option<Approval> {
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
