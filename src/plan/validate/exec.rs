//! An `exec` step: a command to run.

use super::{Rule, StepScope, Validator};
use crate::plan::compiled::Exec;
use crate::plan::model::ExecStep;

impl Validator<'_> {
    pub(super) fn exec(&mut self, s: &StepScope<'_>, e: &ExecStep) -> Option<Exec> {
        if e.command.first().is_none_or(|c| c.trim().is_empty()) {
            self.problem(
                s.name,
                s.at("exec.command"),
                Rule::ExecForm,
                "an exec step needs a `command` (a list: [psql, -tAc, \"select 1\"])".into(),
            );
            return None;
        }
        Some(Exec {
            namespace: e.namespace.clone(),
            pod: e.pod.clone(),
            container: e.container.clone(),
            command: e.command.clone(),
            expect_exit_code: e.expect_exit_code.unwrap_or(0),
            output_key: e.output_key.clone(),
        })
    }
}
