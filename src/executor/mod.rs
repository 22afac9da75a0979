//! The executor (I/O edge): runs a plan's steps in order against the clusters they name, each
//! attempt bounded by its timeout, transient failures retried with backoff, every step recorded
//! in the [`RunRecord`] before and after it runs, and `onFailure` run when a step aborts.
//!
//! One file per step type. The executor talks to clusters only through the [`Registry`]'s
//! `kube::Client`s; it never decides *whether* a run may start (that is the run store's job).

mod apply;
mod approval;
mod assert;
mod ctx;
mod delete;
mod error;
mod exec;
mod for_each;
mod http;
mod patch;
mod read_field;
mod redact;
mod step;
mod verify;
mod wait;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

pub use error::StepError;
pub use redact::scrub;

pub(crate) use ctx::{check_name, get_object, write_error, StepCtx, StepOutcome};
pub(crate) use redact::scrub_value;
use step::{At, RunScope};

use crate::cluster::Registry;
use crate::plan::compiled::{Plan, Step, StepKind};
use crate::record::{now, Phase, RunRecord, StepRecord, StepStatus};

pub use crate::plan::compiled::FIELD_MANAGER;

/// Something that wants to know as a run progresses: the CLI's printer, the run store (which
/// must have written the record before the executor goes on), metrics.
#[async_trait::async_trait]
pub trait Observer: Send + Sync {
    /// Called after every event; the executor waits for it before going on (the store's
    /// observer has written the record by then).
    async fn on_event(&self, run: &RunRecord, event: &Event);
}

/// What just happened in a run.
#[derive(Clone, Debug)]
pub enum Event {
    RunStarted,
    StepStarted {
        index: usize,
        compensation: bool,
    },
    /// A step is waiting (a condition wait, a pause, a retry backoff).
    StepWaiting {
        index: usize,
        compensation: bool,
        what: String,
        deadline: Duration,
    },
    StepFinished {
        index: usize,
        compensation: bool,
    },
    /// A step of a forEach iteration started: [`RunRecord::child`]`(index, compensation, child)`.
    ChildStarted {
        index: usize,
        compensation: bool,
        child: usize,
    },
    ChildFinished {
        index: usize,
        compensation: bool,
        child: usize,
    },
    RunFinished,
}

/// Observers that do nothing.
pub struct NoObserver;
#[async_trait::async_trait]
impl Observer for NoObserver {
    async fn on_event(&self, _: &RunRecord, _: &Event) {}
}

/// The alert that triggered a run, as templates see it (`alert.labels.x`).
pub type AlertContext = Value;

pub struct Executor {
    registry: Arc<Registry>,
    http: reqwest::Client,
}

/// How a run can be stopped from outside: `cancel` stops it now (the running step is
/// abandoned, the run is Cancelled); `drain` (shutdown) lets the running step finish, then
/// leaves the run Interrupted so it can be resumed.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    pub cancel: CancellationToken,
    pub drain: CancellationToken,
    /// How `approval` steps are decided.
    pub approvals: Approvals,
    /// Who cancelled the run (set before `cancel` fires), for the record.
    pub cancelled_by: Arc<std::sync::Mutex<Option<String>>>,
}

/// The approval step waiting now, and who answered it once someone has.
pub type ApprovalSlot = Arc<std::sync::Mutex<Option<WaitingApproval>>>;

/// One wait of an approval step: which step, since when (its record's `startedAt`), its
/// signal, and who answered.
#[derive(Debug)]
pub struct WaitingApproval {
    pub step: String,
    pub started_at: String,
    pub signal: CancellationToken,
    pub by: Option<String>,
}

/// Why an approval was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum ApprovalRefused {
    /// No step waits now (or it is already approved).
    NothingWaiting,
    /// Another wait than the one approved: a stale answer must not approve a later question.
    OtherWait { step: String, started_at: String },
}

/// How the `approval` steps of a run are decided.
#[derive(Clone, Debug, Default)]
pub enum Approvals {
    /// Not possible here (a command run without `--approve`): the step fails saying how to
    /// approve it.
    #[default]
    Unavailable,
    /// By whoever runs the command, in advance (`recoverd run --approve`).
    Given,
    /// By a person, through [`Approvals::approve`] (the receiver's approve endpoint). The slot
    /// holds a signal only while a step waits, so approving one step never approves a later one.
    Waiting(ApprovalSlot),
}

impl Approvals {
    /// A run whose approval steps wait for [`Approvals::approve`].
    pub fn awaiting() -> Self {
        Approvals::Waiting(Default::default())
    }

    /// Approves the wait going on now, as `by`. `step` and `started_at`, when given, must be
    /// the waiting step's name and its record's `startedAt`: an answer to an earlier wait (of
    /// the same step before a resume, or of another iteration) is refused.
    pub fn approve(&self, by: &str, step: Option<&str>, started_at: Option<&str>) -> Result<(), ApprovalRefused> {
        let Approvals::Waiting(slot) = self else {
            return Err(ApprovalRefused::NothingWaiting);
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(waiting) = slot.as_mut().filter(|w| w.by.is_none()) else {
            return Err(ApprovalRefused::NothingWaiting);
        };
        if step.is_some_and(|s| s != waiting.step) || started_at.is_some_and(|t| t != waiting.started_at) {
            return Err(ApprovalRefused::OtherWait {
                step: waiting.step.clone(),
                started_at: waiting.started_at.clone(),
            });
        }
        waiting.by = Some(by.to_string());
        waiting.signal.cancel();
        Ok(())
    }
}

/// Inputs to a run besides the plan.
#[derive(Clone, Debug, Default)]
pub struct RunInput {
    pub params: BTreeMap<String, Value>,
    pub alert: Option<AlertContext>,
}

impl Executor {
    pub fn new(registry: Arc<Registry>) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("recoverd/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        Executor { registry, http }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A fresh record for a run of `plan`, with params = plan defaults overridden by `input`.
    pub fn new_record(&self, id: &str, plan: &Plan, input: &RunInput) -> RunRecord {
        let mut params = plan.params().clone();
        params.extend(input.params.clone());
        let step_records = |steps: &[Step]| steps.iter().map(|s| self.pending_record(s)).collect();
        RunRecord {
            id: id.to_string(),
            plan: plan.key.clone(),
            plan_generation: plan.generation.clone(),
            mode: match self.registry.mode() {
                crate::cluster::WriteMode::Live => crate::record::RunMode::Live,
                crate::cluster::WriteMode::DryRun => crate::record::RunMode::DryRun,
            },
            params,
            alert: input.alert.clone(),
            created_at: Some(now()),
            steps: step_records(&plan.steps),
            on_failure: Vec::new(),
            ..Default::default()
        }
    }

    fn pending_record(&self, s: &Step) -> StepRecord {
        StepRecord {
            name: s.name.clone(),
            step_type: s.kind.type_name(),
            cluster: step_cluster(&self.registry, s).map(str::to_string),
            ..Default::default()
        }
    }

    /// Runs (or resumes) a run: steps already succeeded or skipped in `record` are not run again;
    /// their outputs are taken from the record. Returns when the run has finished.
    #[instrument(skip_all, fields(plan = %record.plan, run = %record.id))]
    pub async fn execute(
        &self,
        plan: &Plan,
        input: &RunInput,
        record: &mut RunRecord,
        observer: &dyn Observer,
        control: &RunControl,
    ) {
        let run_timeout = plan.timeout;
        let started = Instant::now();
        let deadline = started + run_timeout;
        record.phase = Phase::Running;
        record.started_at.get_or_insert_with(now);
        record.error = None;
        observer.on_event(record, &Event::RunStarted).await;
        info!(steps = plan.steps.len(), "run started");

        // Secret values are never stored: a resumed run reads them again. A readField is safe
        // to repeat; anything else that produced one is refused by the strict templates of the
        // steps that use it ("undefined value"), never given `<redacted>` as a value.
        for (index, step) in plan.steps.iter().enumerate() {
            let rec = &record.steps[index];
            let lost = rec
                .outputs
                .keys()
                .any(|k| record.secret_outputs.contains(k) && !record.secrets.0.contains_key(k));
            if lost && matches!(step.kind, StepKind::ReadField(_)) && rec.status == StepStatus::Succeeded {
                record.steps[index].status = StepStatus::Pending;
            }
        }

        let mut failure: Option<String> = None;
        for (index, step) in plan.steps.iter().enumerate() {
            // Resuming: every step that already finished (or failed and was tolerated) stays done.
            let done = &record.steps[index];
            if matches!(done.status, StepStatus::Succeeded | StepStatus::Skipped) || done.continued {
                continue;
            }
            if control.drain.is_cancelled() {
                self.interrupted(record, step.name.as_str(), started, observer).await;
                return;
            }
            let scope = RunScope {
                plan,
                input,
                observer,
                control,
                deadline,
                budget: run_timeout,
            };
            let at = At {
                index,
                compensation: false,
            };
            let result = self.run_any_step(&scope, record, at, step).await;
            if let Err(StepError::Interrupted) = result {
                self.interrupted(record, step.name.as_str(), started, observer).await;
                return;
            }
            if let Err(e) = result {
                // The recorded error, secrets scrubbed.
                let text = record.steps[index].error.clone().unwrap_or_default();
                if record.steps[index].continued {
                    info!(step = step.name.as_str(), error = %text, "step failed; continuing (onError: continue)");
                    continue;
                }
                failure = Some(match &record.steps[index].cluster {
                    Some(cluster) => {
                        format!("step {:?} failed on cluster {cluster:?}: {text}", step.name.as_str())
                    }
                    None => format!("step {:?} failed: {text}", step.name.as_str()),
                });
                if matches!(e, StepError::Cancelled) {
                    cancelled(record, control);
                }
                break;
            }
        }

        // A tolerated failure (a fence that did not happen) must be visible at a glance, inside
        // a forEach iteration too.
        let tolerated: Vec<String> = record
            .steps
            .iter()
            .flat_map(|s| std::iter::once(s).chain(&s.children))
            .filter(|s| s.continued)
            .map(|s| s.name.clone())
            .collect();
        if let Some(err) = failure {
            record.error = Some(err);
            if record.phase != Phase::Cancelled {
                // Still Running while compensating: the plan stays busy, and a crash here leaves
                // the run Interrupted rather than looking finished.
                if !self.compensate(plan, input, record, observer, control).await {
                    self.interrupted(record, "onFailure", started, observer).await;
                    return;
                }
                // Cancelled while compensating: the run was cancelled, and says who did it.
                if control.cancel.is_cancelled() {
                    cancelled(record, control);
                } else {
                    record.phase = Phase::Failed;
                }
            }
        } else if !tolerated.is_empty() {
            record.phase = Phase::SucceededWithErrors;
            record.error = Some(format!(
                "tolerated failures (onError: continue): {}",
                tolerated.join(", ")
            ));
        } else {
            record.phase = Phase::Succeeded;
        }
        record.finished_at = Some(now());
        record.duration_ms = Some(started.elapsed().as_millis() as u64 + record.duration_ms.unwrap_or(0));
        info!(phase = record.phase.as_str(), "run finished");
        observer.on_event(record, &Event::RunFinished).await;
    }

    /// The run stops here, resumable: a shutdown, or a record that could not be written.
    async fn interrupted(&self, record: &mut RunRecord, before: &str, started: Instant, observer: &dyn Observer) {
        record.phase = Phase::Interrupted;
        record.error = Some(format!(
            "recoverd stopped before step {before:?}; resume the run to continue"
        ));
        record.duration_ms = Some(started.elapsed().as_millis() as u64 + record.duration_ms.unwrap_or(0));
        info!("run interrupted");
        observer.on_event(record, &Event::RunFinished).await;
    }

    /// Runs the `onFailure` steps; false when the run was interrupted meanwhile.
    async fn compensate(
        &self,
        plan: &Plan,
        input: &RunInput,
        record: &mut RunRecord,
        observer: &dyn Observer,
        control: &RunControl,
    ) -> bool {
        let steps = &plan.on_failure;
        if steps.is_empty() {
            return true;
        }
        record.on_failure = steps.iter().map(|s| self.pending_record(s)).collect();
        // Compensation gets its own budget: the run's deadline may be what failed it.
        let budget = plan.compensation_budget();
        let deadline = Instant::now() + budget;
        for (index, step) in steps.iter().enumerate() {
            if control.drain.is_cancelled() {
                return false;
            }
            let scope = RunScope {
                plan,
                input,
                observer,
                control,
                deadline,
                budget,
            };
            let at = At {
                index,
                compensation: true,
            };
            let res = self.run_any_step(&scope, record, at, step).await;
            if let Err(StepError::Interrupted) = res {
                return false;
            }
            if res.is_err() {
                let text = record.on_failure[index].error.clone().unwrap_or_default();
                warn!(step = step.name.as_str(), error = %text, "compensation step failed");
                if !record.on_failure[index].continued {
                    break;
                }
            }
        }
        true
    }
}

/// The run ends Cancelled, recording who cancelled it.
fn cancelled(record: &mut RunRecord, control: &RunControl) {
    record.phase = Phase::Cancelled;
    let by = control.cancelled_by.lock().map(|b| b.clone()).ok().flatten();
    record.decisions.push(crate::record::Decision {
        action: "cancelled".into(),
        by: by.unwrap_or_else(|| "unknown".into()),
        at: now(),
    });
}

/// The cluster a step acts on: its own, or the default; `None` for http and assert steps.
fn step_cluster<'a>(registry: &'a Registry, step: &'a Step) -> Option<&'a str> {
    step.uses_cluster()
        .then(|| registry.name_or_default(step.cluster.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(slot: &ApprovalSlot, step: &str, started_at: &str) -> CancellationToken {
        let signal = CancellationToken::new();
        *slot.lock().unwrap() = Some(WaitingApproval {
            step: step.into(),
            started_at: started_at.into(),
            signal: signal.clone(),
            by: None,
        });
        signal
    }

    #[test]
    fn an_approval_of_an_earlier_wait_of_the_same_step_approves_nothing() {
        let approvals = Approvals::awaiting();
        let Approvals::Waiting(slot) = &approvals else {
            unreachable!()
        };
        // The step waited at 10:00, the run was resumed, and the same step waits again.
        let now = waiting(slot, "decide", "2026-01-01T10:05:00Z");
        assert_eq!(
            approvals.approve("alice", Some("decide"), Some("2026-01-01T10:00:00Z")),
            Err(ApprovalRefused::OtherWait {
                step: "decide".into(),
                started_at: "2026-01-01T10:05:00Z".into()
            })
        );
        assert!(!now.is_cancelled());
        assert_eq!(
            approvals.approve("alice", Some("other"), None),
            Err(ApprovalRefused::OtherWait {
                step: "decide".into(),
                started_at: "2026-01-01T10:05:00Z".into()
            })
        );
        assert!(!now.is_cancelled());

        assert_eq!(
            approvals.approve("alice", Some("decide"), Some("2026-01-01T10:05:00Z")),
            Ok(())
        );
        assert!(now.is_cancelled());
        assert_eq!(
            approvals.approve("bob", Some("decide"), Some("2026-01-01T10:05:00Z")),
            Err(ApprovalRefused::NothingWaiting),
            "answered once"
        );
    }
}
