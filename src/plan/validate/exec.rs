//! An `exec` step: a command to run.

use super::{Rule, StepScope, Validator};
use crate::plan::model::ExecStep;

impl Validator<'_> {
    pub(super) fn exec(&mut self, s: &StepScope<'_>, e: &ExecStep) -> Option<ExecStep> {
        if e.command.first().is_none_or(|c| c.trim().is_empty()) {
            self.problem(
                s.name,
                s.at("exec.command"),
                Rule::ExecForm,
                "an exec step needs a `command` (a list: [psql, -tAc, \"select 1\"])".into(),
            );
            return None;
        }
        Some(e.clone())
    }
}
