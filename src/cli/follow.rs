//! Following a run through a running `recoverd serve` (`GET /api/v1/runs/{id}`), narrating each
//! step as it starts and ends with the same printer `recoverd run` uses: `trigger --wait` and
//! the demo.

use std::time::Duration;

use super::api::Api;
use super::print::Printer;
use crate::executor::Event;
use crate::record::{Phase, RunRecord, StepStatus};

/// Where following a run ended.
#[derive(Debug)]
pub enum Followed {
    /// The run finished (its phase says how), or was interrupted by a shutdown of the server
    /// (it waits for `recoverd resume`).
    Finished(RunRecord),
    /// The run was still going when the time to wait ran out.
    StillGoing(RunRecord),
}

/// How often to ask, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Follow {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Follow {
    /// Polls the run until it finishes or `timeout` passes, printing each step's start and end
    /// (onFailure steps too) once, then the run's end.
    pub async fn run(self, api: &Api, id: &str, printer: &Printer) -> anyhow::Result<Followed> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut shown = Shown::default();
        loop {
            let (_, body) = api
                .call(reqwest::Method::GET, &format!("/api/v1/runs/{id}"), None)
                .await?;
            let record: RunRecord = serde_json::from_value(body)?;
            shown.narrate(&record, printer);
            if record.phase.is_finished() || record.phase == Phase::Interrupted {
                printer.show(&record, &Event::RunFinished);
                return Ok(Followed::Finished(record));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Followed::StillGoing(record));
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// What has been printed of a run so far.
#[derive(Default)]
struct Shown {
    started: bool,
    said_approval: bool,
    steps: Vec<StepStatus>,
    on_failure: Vec<StepStatus>,
    /// The children of forEach steps, by (compensation, index).
    children: std::collections::BTreeMap<(bool, usize), Vec<StepStatus>>,
}

/// How to approve the wait going on now: that step, that wait.
fn approval_hint(printer: &Printer, record: &RunRecord, step: &crate::record::StepRecord) {
    printer.say(format_args!(
        "  … waiting for approval: recoverd approve {} --step '{}'{}",
        record.id,
        step.name,
        step.started_at
            .as_deref()
            .map(|t| format!(" --started-at {t}"))
            .unwrap_or_default()
    ));
}

impl Shown {
    /// Prints what changed since the last look, as the executor's events would have.
    fn narrate(&mut self, record: &RunRecord, printer: &Printer) {
        if !self.started {
            printer.show(record, &Event::RunStarted);
            self.started = true;
        }
        if record.phase == Phase::WaitingForApproval && !self.said_approval {
            printer.say(format_args!("  … waiting for approval: recoverd approve {}", record.id));
            self.said_approval = true;
        }
        for (compensation, shown, steps) in [
            (false, &mut self.steps, &record.steps),
            (true, &mut self.on_failure, &record.on_failure),
        ] {
            shown.resize(steps.len(), StepStatus::Pending);
            for (index, step) in steps.iter().enumerate() {
                let (was, now) = (shown[index], step.status);
                if was != now && was == StepStatus::Pending && now != StepStatus::Skipped {
                    printer.show(record, &Event::StepStarted { index, compensation });
                }
                // A forEach's iterations, as the executor tells them.
                let seen = self.children.entry((compensation, index)).or_default();
                seen.resize(step.children.len(), StepStatus::Pending);
                for (child, c) in step.children.iter().enumerate() {
                    let (was, now) = (seen[child], c.status);
                    if was == now {
                        continue;
                    }
                    let event = |started| {
                        if started {
                            Event::ChildStarted {
                                index,
                                compensation,
                                child,
                            }
                        } else {
                            Event::ChildFinished {
                                index,
                                compensation,
                                child,
                            }
                        }
                    };
                    if was == StepStatus::Pending && now != StepStatus::Skipped {
                        printer.show(record, &event(true));
                    }
                    if now == StepStatus::WaitingForApproval {
                        approval_hint(printer, record, c);
                    }
                    if !matches!(
                        now,
                        StepStatus::Pending | StepStatus::Running | StepStatus::WaitingForApproval
                    ) {
                        printer.show(record, &event(false));
                    }
                    seen[child] = now;
                }
                if was == now {
                    continue;
                }
                if now == StepStatus::WaitingForApproval {
                    approval_hint(printer, record, step);
                }
                if !matches!(
                    now,
                    StepStatus::Pending | StepStatus::Running | StepStatus::WaitingForApproval
                ) {
                    printer.show(record, &Event::StepFinished { index, compensation });
                }
                shown[index] = now;
            }
        }
    }
}
