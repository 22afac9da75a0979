//! One step of a run: deciding its cluster, recording its start before it runs, its attempts
//! (each bounded by the step's timeout and the run's deadline, transient failures retried with
//! backoff), and recording its outcome with secrets kept out.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tracing::{debug, info, instrument, warn};

use crate::plan::compiled::{Plan, Step, StepKind};
use crate::plan::model::OnError;
use crate::record::{now, RunRecord, StepRecord, StepStatus};
use crate::template;

use super::ctx::{uses_secret, StepCtx, StepOutcome};
use super::redact::{redact_inputs, scrub, scrub_value, REDACTED};
use super::{apply, approval, assert, delete, exec, http, patch, read_field, wait};
use super::{Event, Executor, Observer, RunControl, RunInput, StepError};

/// What every step of a run (or of its compensation) shares.
#[derive(Clone, Copy)]
pub(super) struct RunScope<'a> {
    pub plan: &'a Plan,
    pub input: &'a RunInput,
    pub observer: &'a dyn Observer,
    pub control: &'a RunControl,
    /// When the run (or its compensation) must be over, and the budget that deadline came from.
    pub deadline: Instant,
    pub budget: Duration,
}

/// Which step of the record: its index in the steps or in the `onFailure` steps.
#[derive(Clone, Copy)]
pub(super) struct At {
    pub index: usize,
    pub compensation: bool,
}

impl Executor {
    #[instrument(skip_all, fields(step = %step.name, cluster = tracing::field::Empty))]
    pub(super) async fn run_step(
        &self,
        scope: &RunScope<'_>,
        record: &mut RunRecord,
        at: At,
        step: &Step,
    ) -> Result<(), StepError> {
        let RunScope {
            plan,
            input,
            observer,
            control,
            ..
        } = *scope;
        let At { index, compensation } = at;
        let values = context(plan, input, record);
        // `cluster: "{{ Values.from }}"`: one plan serves both directions; the rendered name
        // must be in the registry.
        let cluster = match step.cluster.as_deref() {
            Some(c) if template::is_template(c) => {
                template::render(c, &values).map_err(StepError::from).and_then(|name| {
                    self.registry.client(&name)?;
                    Ok(name)
                })
            }
            other => Ok(self.registry.name_or_default(other).to_string()),
        };
        let cluster = match cluster {
            Ok(c) => c,
            Err(e) => {
                let text = scrub(&e.to_string(), &record.secrets.needles());
                let rec = record.step_mut(index, compensation);
                rec.status = StepStatus::Failed;
                rec.error = Some(text);
                rec.reason = Some(e.reason().to_string());
                rec.continued = step.on_error == OnError::Continue;
                observer
                    .on_event(record, &Event::StepFinished { index, compensation })
                    .await;
                return Err(e);
            }
        };
        tracing::Span::current().record("cluster", cluster.as_str());
        if step.uses_cluster() {
            record.step_mut(index, compensation).cluster = Some(cluster.clone());
        }
        let secret_keys: BTreeSet<String> = record.secret_outputs.iter().cloned().collect();
        // http steps redact their own inputs field by field (see `http.rs`).
        let tainted_in =
            !matches!(step.kind, StepKind::Http(_)) && step.templates.iter().any(|src| uses_secret(src, &secret_keys));
        let started = record_start(record, at, observer).await;
        // An approval step that will really wait shows the approver its question and what the
        // run knows so far (a dry run, or a command without anyone to ask, does not wait).
        if let StepKind::Approval(a) = &step.kind {
            let waits = self.registry.mode() == crate::cluster::WriteMode::Live
                && matches!(control.approvals, super::Approvals::Waiting(_));
            if waits {
                let secret_keys: BTreeSet<String> = record.secret_outputs.iter().cloned().collect();
                let shown = if uses_secret(&a.message, &secret_keys) {
                    format!("{REDACTED} (the message uses a secret value; see the plan's approval step)")
                } else {
                    template::render(&a.message, &values)
                        .map(|m| scrub(&m, &record.secrets.needles()))
                        .unwrap_or_else(|e| format!("(the message does not render: {e})"))
                };
                let known: Map<String, Value> = record
                    .params
                    .iter()
                    .chain(&record.outputs)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let rec = record.step_mut(index, compensation);
                rec.status = StepStatus::WaitingForApproval;
                rec.inputs = Some(json!({"message": shown, "values": known}));
                observer
                    .on_event(
                        record,
                        &Event::StepWaiting {
                            index,
                            compensation,
                            what: format!("approval: {shown}"),
                            deadline: a.timeout,
                        },
                    )
                    .await;
            }
        }
        // The record of the step's start could not be written (or recoverd is shutting down):
        // a step must never run unrecorded.
        if control.drain.is_cancelled() {
            let rec = record.step_mut(index, compensation);
            rec.status = StepStatus::Pending;
            rec.started_at = None;
            return Err(StepError::Interrupted);
        }

        let result = self.attempts(scope, record, at, step, &cluster, &values).await;

        let outcome = match result {
            Ok(Some(mut outcome)) => {
                let tainted = tainted_in || outcome.tainted;
                if tainted {
                    outcome.inputs = outcome.inputs.map(redact_inputs);
                    outcome.diff = outcome.diff.map(|_| json!(REDACTED));
                }
                let secret = outcome.secret_outputs || tainted;
                for (key, value) in std::mem::take(&mut outcome.outputs) {
                    record.secret_outputs.retain(|k| k != &key);
                    record.secrets.0.remove(&key);
                    let shown = if secret {
                        record.secret_outputs.push(key.clone());
                        record.secrets.0.insert(key.clone(), value);
                        json!(REDACTED)
                    } else {
                        value
                    };
                    outcome.outputs.insert(key.clone(), shown.clone());
                    record.outputs.insert(key, shown);
                }
                let needles = record.secrets.needles();
                let rec = record.step_mut(index, compensation);
                rec.status = StepStatus::Succeeded;
                rec.inputs = outcome.inputs.map(|v| scrub_value(v, &needles));
                rec.diff = outcome.diff.map(|v| scrub_value(v, &needles));
                rec.object = outcome.object.or(rec.object.take());
                rec.outputs = outcome
                    .outputs
                    .into_iter()
                    .map(|(k, v)| (k, scrub_value(v, &needles)))
                    .collect();
                Ok(())
            }
            // A shutdown while the step waited (an approval): it did not fail; it starts again
            // from its beginning when the run is resumed.
            Err(StepError::Interrupted) => {
                let rec = record.step_mut(index, compensation);
                rec.status = StepStatus::Pending;
                rec.started_at = None;
                rec.inputs = None;
                info!("step interrupted by a shutdown; resuming the run starts it again");
                observer
                    .on_event(
                        record,
                        &Event::StepWaiting {
                            index,
                            compensation,
                            what: "interrupted by a shutdown".into(),
                            deadline: Duration::ZERO,
                        },
                    )
                    .await;
                return Err(StepError::Interrupted);
            }
            Ok(None) => {
                skipped(record.step_mut(index, compensation), step);
                Ok(())
            }
            Err(e) => {
                let text = scrub(&e.to_string(), &record.secrets.needles());
                failed(record.step_mut(index, compensation), step, &e, text);
                Err(e)
            }
        };
        record_end(record, at, started, observer).await;
        outcome
    }

    /// Runs the attempts of one step; `Ok(None)` when `when` skipped it.
    async fn attempts(
        &self,
        scope: &RunScope<'_>,
        record: &mut RunRecord,
        at: At,
        step: &Step,
        cluster: &str,
        values: &Value,
    ) -> Result<Option<StepOutcome>, StepError> {
        let RunScope {
            plan,
            observer,
            control,
            deadline,
            budget: run_timeout,
            ..
        } = *scope;
        let cancel = &control.cancel;
        let At { index, compensation } = at;
        if let Some(when) = &step.when {
            if !template::render_bool(when, values)? {
                return Ok(None);
            }
        }
        let retries = step.retries;
        let attempt_timeout = step.attempt_timeout;
        let secret_keys: BTreeSet<String> = record.secret_outputs.iter().cloned().collect();
        let needles = record.secrets.needles();
        // Objects earlier steps of this run wrote (a write's record has a diff).
        let written: BTreeSet<String> = record
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded && s.diff.is_some())
            .filter_map(|s| s.object.clone())
            .collect();
        let (step_name, started_at) = {
            let rec = record.step(index, compensation);
            (rec.name.clone(), rec.started_at.clone().unwrap_or_default())
        };
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            record.step_mut(index, compensation).attempts = attempt;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(StepError::RunDeadline { after: run_timeout });
            }
            let snapshot = record.clone();
            let progress_needles = needles.clone();
            let progress = move |what: String, limit: Duration| {
                let (snapshot, event) = (
                    snapshot.clone(),
                    Event::StepWaiting {
                        index,
                        compensation,
                        what: scrub(&what, &progress_needles),
                        deadline: limit,
                    },
                );
                Box::pin(async move { observer.on_event(&snapshot, &event).await })
                    as futures::future::BoxFuture<'_, ()>
            };
            let ctx = StepCtx {
                registry: &self.registry,
                http: &self.http,
                cluster: cluster.to_string(),
                values,
                base_dir: plan.base_dir.as_deref(),
                progress: &progress,
                field_manager: &plan.field_manager,
                written: &written,
                secret_keys: &secret_keys,
                control,
                step: &step_name,
                started_at: &started_at,
            };
            let limit = attempt_timeout.min(remaining);
            // A cancel already given wins over starting the step (biased: checked first).
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(StepError::Cancelled),
                r = tokio::time::timeout(limit, execute_step(step, &ctx)) => match r {
                    Ok(r) => r,
                    Err(_) if limit < attempt_timeout => Err(StepError::RunDeadline { after: run_timeout }),
                    Err(_) => Err(StepError::AttemptTimeout { after: limit }),
                },
            };
            match result {
                Ok(outcome) => return Ok(Some(outcome)),
                Err(e) if e.is_transient() && attempt <= retries => {
                    let text = scrub(&e.to_string(), &needles);
                    // The step's own retry handles it: not a warning (yet).
                    debug!(attempt, error = %text, "transient failure; retrying");
                    let rec = record.step_mut(index, compensation);
                    rec.error = Some(format!("attempt {attempt}: {text}"));
                    let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    observer
                        .on_event(
                            record,
                            &Event::StepWaiting {
                                index,
                                compensation,
                                what: format!("retry {attempt}/{retries} after: {text}"),
                                deadline: pause,
                            },
                        )
                        .await;
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = cancel.cancelled() => return Err(StepError::Cancelled),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Records that a step starts now and tells the observers (the store writes the record before
/// the step goes on); returns when, to time it.
pub(super) async fn record_start(record: &mut RunRecord, at: At, observer: &dyn Observer) -> Instant {
    let started = Instant::now();
    let rec = record.step_mut(at.index, at.compensation);
    rec.status = StepStatus::Running;
    rec.started_at = Some(now());
    rec.attempts = 0;
    rec.error = None;
    rec.reason = None;
    rec.continued = false;
    observer
        .on_event(
            record,
            &Event::StepStarted {
                index: at.index,
                compensation: at.compensation,
            },
        )
        .await;
    started
}

/// Records when a step (whose outcome is recorded) ended, and tells the observers.
pub(super) async fn record_end(record: &mut RunRecord, at: At, started: Instant, observer: &dyn Observer) {
    let rec = record.step_mut(at.index, at.compensation);
    rec.finished_at = Some(now());
    rec.duration_ms = Some(started.elapsed().as_millis() as u64);
    observer
        .on_event(
            record,
            &Event::StepFinished {
                index: at.index,
                compensation: at.compensation,
            },
        )
        .await;
}

async fn execute_step(step: &Step, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    match &step.kind {
        StepKind::Patch(s) => patch::run(s, ctx).await,
        StepKind::ReadField(s) => read_field::run(s, ctx).await,
        StepKind::Wait(s) => wait::run(s, ctx).await,
        StepKind::Apply(s) => apply::run(s, ctx).await,
        StepKind::Http(s) => http::run(s, ctx).await,
        StepKind::Delete(s) => delete::run(s, ctx).await,
        StepKind::Assert(s) => assert::run(s, ctx).await,
        StepKind::Exec(s) => exec::run(s, ctx).await,
        StepKind::Approval(s) => approval::run(s, ctx).await,
        // Its iterations are steps of their own (see `for_each.rs`), never one attempt.
        StepKind::ForEach(_) => Err(StepError::Items {
            detail: "a forEach runs its iterations as steps of their own".into(),
        }),
    }
}

/// The template context of a run at this point: `Values` (params, then outputs), `alert`,
/// `plan`, `run`.
pub(super) fn context(plan: &Plan, input: &RunInput, record: &RunRecord) -> Value {
    let mut values = Map::new();
    for (k, v) in &record.params {
        values.insert(k.clone(), v.clone());
    }
    for (k, v) in &record.outputs {
        if !record.secret_outputs.contains(k) {
            values.insert(k.clone(), v.clone());
        }
    }
    // Secret values exist only in memory; after a restart they are read again or missing.
    for (k, v) in &record.secrets.0 {
        values.insert(k.clone(), v.clone());
    }
    template::context(
        values,
        record.alert.clone().or_else(|| input.alert.clone()),
        &plan.resource.metadata,
        &record.id,
        json!(record.mode),
    )
}

/// Records that `step` was skipped: its `when` was false.
pub(super) fn skipped(rec: &mut StepRecord, step: &Step) {
    rec.status = StepStatus::Skipped;
    rec.error = Some(format!(
        "`when` was false ({})",
        step.when.as_deref().unwrap_or_default()
    ));
}

/// Records that `step` failed with `e`, whose text (secrets scrubbed) is `text`, and whether
/// the run goes on past it: with `onError: continue`, unless `e` stops a run whatever the
/// plan says (a cancel, the run's deadline, a shutdown, a missing approval).
pub(super) fn failed(rec: &mut StepRecord, step: &Step, e: &StepError, text: String) {
    rec.status = StepStatus::Failed;
    rec.reason = Some(e.reason().to_string());
    rec.continued = step.on_error == OnError::Continue && !e.stops_run();
    if rec.continued {
        info!(error = %text, reason = e.reason(), step = step.name.as_str(), "step failed; the run goes on (onError: continue)");
    } else {
        warn!(error = %text, reason = e.reason(), step = step.name.as_str(), "step failed");
    }
    rec.error = Some(text);
}
