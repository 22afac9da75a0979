//! `forEach`: find the items (a list in the plan, a list read earlier, or the names of the
//! objects a selector matches), refuse more than `maxItems` before any iteration runs, then run
//! one iteration per item — at most `concurrency` at a time — each of its steps recorded as a
//! child step record (`<name>[n]`) with the item, attempted and recorded exactly like any other
//! step ([`Executor::run_step`]). The forEach step's record summarises its iterations.
//!
//! Each iteration runs on a copy of the run record whose steps are its own child records and
//! whose `Values.item` is its item; every change is copied into the run's record (under a lock)
//! before observers — the run store first — see it, so no child runs unrecorded.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use kube::api::ListParams;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::info;

use super::ctx::uses_secret;
use super::redact::scrub;
use super::step::{context, record_end, record_start, At, RunScope};
use super::{Event, Executor, Observer, StepError};
use crate::plan::compiled::{ForEach, Items, Step, StepKind, DEFAULT_STEP_TIMEOUT};
use crate::plan::model::{ForEachSelector, OnError};
use crate::plan::validate::ITEM;
use crate::record::{RunRecord, StepRecord, StepStatus};
use crate::template;

impl Executor {
    /// Runs one step of the plan: a forEach through its iterations, any other directly.
    pub(super) async fn run_any_step(
        &self,
        scope: &RunScope<'_>,
        record: &mut RunRecord,
        at: At,
        step: &Step,
    ) -> Result<(), StepError> {
        match &step.kind {
            StepKind::ForEach(f) => self.run_for_each(scope, record, at, step, f).await,
            _ => self.run_step(scope, record, at, step).await,
        }
    }

    #[tracing::instrument(skip_all, fields(step = %step.name))]
    async fn run_for_each(
        &self,
        scope: &RunScope<'_>,
        record: &mut RunRecord,
        at: At,
        step: &Step,
        f: &ForEach,
    ) -> Result<(), StepError> {
        let RunScope { observer, control, .. } = *scope;
        let At { index, compensation } = at;
        let started = record_start(record, at, observer).await;
        record.step_mut(index, compensation).attempts = 1;
        if control.drain.is_cancelled() {
            let rec = record.step_mut(index, compensation);
            rec.status = StepStatus::Pending;
            rec.started_at = None;
            return Err(StepError::Interrupted);
        }

        let result = self.iterate(scope, record, at, step, f).await;

        let needles = record.secrets.needles();
        let rec = record.step_mut(index, compensation);
        let outcome = match result {
            Ok(Some(_)) => {
                rec.status = StepStatus::Succeeded;
                Ok(())
            }
            Ok(None) => {
                super::step::skipped(rec, step);
                Ok(())
            }
            Err(StepError::Interrupted) => {
                // Finished iterations stay done; resuming the run repeats the others.
                rec.status = StepStatus::Pending;
                rec.started_at = None;
                info!("forEach interrupted by a shutdown; resuming the run goes on with it");
                return Err(StepError::Interrupted);
            }
            Err(e) => {
                // As for any step (an iteration's missing approval stops it too).
                super::step::failed(rec, step, &e, scrub(&e.to_string(), &needles));
                Err(e)
            }
        };
        // The step's status summarises its iterations.
        if let Some(Value::Object(inputs)) = &mut rec.inputs {
            let count = |st: StepStatus| rec.children.iter().filter(|c| c.status == st).count();
            let summary = json!({
                "succeeded": count(StepStatus::Succeeded),
                "failed": count(StepStatus::Failed),
                "skipped": count(StepStatus::Skipped),
                "pending": count(StepStatus::Pending),
            });
            inputs.insert("steps".into(), summary);
        }
        record_end(record, at, started, observer).await;
        outcome
    }

    /// Finds the items and runs the iterations; `Ok(None)` when `when` skipped the step,
    /// `Ok(Some(n))` when all n iterations ended well.
    async fn iterate(
        &self,
        scope: &RunScope<'_>,
        record: &mut RunRecord,
        at: At,
        step: &Step,
        f: &ForEach,
    ) -> Result<Option<usize>, StepError> {
        let RunScope {
            plan,
            input,
            observer,
            control,
            ..
        } = *scope;
        let At { index, compensation } = at;
        let values = context(plan, input, record);
        if let Some(when) = &step.when {
            if !template::render_bool(when, &values)? {
                return Ok(None);
            }
        }
        let secret_keys: BTreeSet<String> = record.secret_outputs.iter().cloned().collect();
        // Finding the items is bounded like one attempt of a step, and by the run's deadline.
        let remaining = scope.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(StepError::RunDeadline { after: scope.budget });
        }
        let limit = DEFAULT_STEP_TIMEOUT.min(remaining);
        let items = tokio::select! {
            r = tokio::time::timeout(limit, self.items(step, f, &values, &secret_keys)) => match r {
                Ok(r) => r?,
                Err(_) if limit < DEFAULT_STEP_TIMEOUT => return Err(StepError::RunDeadline { after: scope.budget }),
                Err(_) => return Err(StepError::AttemptTimeout { after: limit }),
            },
            _ = control.cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let (mut items, source) = items;
        // A run resumed: the iterations are those it began with — what a selector matches now
        // (after the run deleted some of them, say) must not drop or renumber finished ones.
        let per = f.steps.len().max(1);
        let earlier = &record.step(index, compensation).children;
        if !earlier.is_empty() && earlier.len().is_multiple_of(per) {
            let frozen: Option<Vec<Value>> = earlier.chunks(per).map(|c| c[0].item.clone()).collect();
            if let Some(frozen) = frozen {
                items = frozen;
            }
        }
        // Too many items (a selector matching far too much) are counted, not all recorded.
        let too_many = items.len() > f.max_items as usize;
        let shown: Vec<&Value> = items.iter().take(if too_many { 10 } else { items.len() }).collect();
        record.step_mut(index, compensation).inputs = Some(json!({
            "source": source,
            "count": items.len(),
            "items": shown,
            "concurrency": f.concurrency,
            "onError": f.on_error,
        }));
        if too_many {
            return Err(StepError::TooManyItems {
                count: items.len(),
                max: f.max_items,
            });
        }
        // A selector matching nothing is far more often a typo than a fact: a ✔ for doing
        // nothing would let the runbook go on as if the objects had been dealt with.
        if items.is_empty() && matches!(f.items, crate::plan::compiled::Items::Selector(_)) {
            return Err(StepError::Items {
                detail: format!(
                    "the selector matched no object ({source}); check its labels and namespace — a forEach over nothing would report success for doing nothing"
                ),
            });
        }

        // The iterations' records: a resumed run keeps those that finished for the same item.
        let per = f.steps.len();
        let old = std::mem::take(&mut record.step_mut(index, compensation).children);
        let mut children = Vec::with_capacity(items.len() * per);
        for (i, item) in items.iter().enumerate() {
            for s in &f.steps {
                let name = if per == 1 {
                    format!("{}[{i}]", step.name)
                } else {
                    format!("{}[{i}].{}", step.name, s.name)
                };
                let kept = old
                    .iter()
                    .find(|c| c.name == name && c.item.as_ref() == Some(item) && done(c));
                children.push(match kept {
                    Some(done) => done.clone(),
                    None => StepRecord {
                        name,
                        step_type: s.kind.type_name(),
                        cluster: s
                            .uses_cluster()
                            .then(|| self.registry().name_or_default(s.cluster.as_deref()).to_string()),
                        item: Some(item.clone()),
                        ..Default::default()
                    },
                });
            }
        }
        record.step_mut(index, compensation).children = children;
        if items.is_empty() {
            return Ok(Some(0));
        }

        let master = Mutex::new(record.clone());
        let stop = AtomicBool::new(false);
        let iterations: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.iteration(scope, &master, &stop, at, f, i, item, observer))
            .collect();
        let results = futures::stream::iter(iterations)
            .buffer_unordered(f.concurrency as usize)
            .collect::<Vec<_>>()
            .await;
        let master = master.into_inner();
        record.step_mut(index, compensation).children = master.step(index, compensation).children.clone();

        // A shutdown or a cancel stops the whole step; otherwise say how many failed.
        let mut failed = Vec::new();
        for r in results {
            match r {
                Err(e) if e.stops_run() => return Err(e),
                Err(e) => failed.push(e),
                Ok(()) => {}
            }
        }
        let children = &record.step(index, compensation).children;
        match failed.len() {
            0 => Ok(Some(items.len())),
            n => {
                let first = children
                    .iter()
                    .find(|c| c.status == StepStatus::Failed && !c.continued)
                    .map(|c| format!("{}: {}", c.name, c.error.as_deref().unwrap_or("failed")))
                    .unwrap_or_default();
                Err(StepError::IterationsFailed {
                    failed: n,
                    total: items.len(),
                    first,
                })
            }
        }
    }

    /// The items, and where they came from (for the record).
    async fn items(
        &self,
        step: &Step,
        f: &ForEach,
        values: &Value,
        secret_keys: &BTreeSet<String>,
    ) -> Result<(Vec<Value>, String), StepError> {
        let items_error = |detail: String| StepError::Items { detail };
        match &f.items {
            Items::List(list) => {
                let mut sources = Vec::new();
                collect_strings(list, &mut sources);
                // Items are shown in the record: a secret must not become one.
                if sources.iter().any(|s| uses_secret(s, secret_keys)) {
                    return Err(items_error(
                        "the items use a secret value, and every item is shown in the run record".into(),
                    ));
                }
                match list {
                    Value::Array(list) => Ok((
                        list.iter()
                            .map(|v| template::render_raw(v, values))
                            .collect::<Result<_, _>>()?,
                        "items".into(),
                    )),
                    Value::String(src) => {
                        let v = template::render_yaml(src, values)?;
                        let list = match v {
                            Value::Array(list) => list,
                            // A list kept as JSON text (a ConfigMap key read by readField).
                            Value::String(text) => match serde_json::from_str::<Value>(&text) {
                                Ok(Value::Array(list)) => list,
                                _ => {
                                    return Err(items_error(format!(
                                        "{src} rendered to {text:?}, which is not a list (nor a JSON list)"
                                    )))
                                }
                            },
                            other => {
                                return Err(items_error(format!("{src} rendered to {other}, which is not a list")))
                            }
                        };
                        Ok((list, src.clone()))
                    }
                    other => Err(items_error(format!("{other} is not a list"))),
                }
            }
            Items::Selector(sel) => {
                let cluster = match step.cluster.as_deref() {
                    Some(c) if template::is_template(c) => {
                        let name = template::render(c, values)?;
                        self.registry().client(&name)?;
                        name
                    }
                    other => self.registry().name_or_default(other).to_string(),
                };
                let names = self.select(&cluster, sel, values).await?;
                Ok((names.into_iter().map(Value::String).collect(), {
                    let ns = sel
                        .namespace
                        .as_deref()
                        .map(|n| template::render(n, values))
                        .transpose()?;
                    format!(
                        "{} on cluster {cluster}",
                        crate::cluster::describe_object(
                            &sel.api_version,
                            &sel.resource,
                            ns.as_deref(),
                            &format!("[{}]", template::render(&sel.label_selector, values)?)
                        )
                    )
                }))
            }
        }
    }

    /// The names of the objects a selector matches, sorted.
    async fn select(&self, cluster: &str, sel: &ForEachSelector, values: &Value) -> Result<Vec<String>, StepError> {
        let selector = template::render(&sel.label_selector, values)?;
        let namespace = sel
            .namespace
            .as_deref()
            .map(|n| template::render(n, values))
            .transpose()?;
        let registry = self.registry();
        let resolved = registry.resolve(cluster, &sel.api_version, &sel.resource).await?;
        let shown = format!(
            "{} on cluster {cluster}",
            crate::cluster::describe_object(
                &sel.api_version,
                &sel.resource,
                namespace.as_deref(),
                &format!("[{selector}]")
            )
        );
        if let Some(ns) = &namespace {
            super::check_name("namespace", ns, &shown)?;
        }
        super::ctx::needs_namespace(&resolved, namespace.as_deref(), &shown)?;
        let api = crate::cluster::api_for_object(registry, cluster, &resolved, namespace.as_deref())?;
        let found = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| StepError::Kube {
                action: "list",
                object: shown,
                source,
            })?;
        let mut names: Vec<String> = found.items.into_iter().filter_map(|o| o.metadata.name).collect();
        names.sort();
        Ok(names)
    }

    /// One iteration: its steps in order on a copy of the record, every change copied into the
    /// run's record. Err when a step failed (and was not tolerated) or the run stops.
    #[allow(clippy::too_many_arguments)]
    async fn iteration(
        &self,
        scope: &RunScope<'_>,
        master: &Mutex<RunRecord>,
        stop: &AtomicBool,
        at: At,
        f: &ForEach,
        i: usize,
        item: &Value,
        observer: &dyn Observer,
    ) -> Result<(), StepError> {
        let per = f.steps.len();
        let base = i * per;
        let mut scratch = {
            let m = master.lock().await;
            let mut r = m.clone();
            r.steps = m.step(at.index, at.compensation).children[base..base + per].to_vec();
            r.on_failure = Vec::new();
            r
        };
        // A cancel or shutdown given meanwhile stops the iterations not started yet, whatever
        // onError says: they are left not run, and nothing is announced for them.
        if scope.control.cancel.is_cancelled() || scope.control.drain.is_cancelled() {
            stop.store(true, Ordering::SeqCst);
        }
        if stop.load(Ordering::SeqCst) {
            let mut m = master.lock().await;
            for c in &mut m.step_mut(at.index, at.compensation).children[base..base + per] {
                if c.status == StepStatus::Pending {
                    c.status = StepStatus::Skipped;
                    c.reason = Some(NOT_RUN.into());
                    c.error = Some(
                        "not run: the forEach stopped (an earlier iteration failed with onError: abort, or the run was cancelled, timed out or is stopping)".into(),
                    );
                }
            }
            return Ok(());
        }
        scratch.params.insert(ITEM.to_string(), item.clone());
        // A resumed iteration: what its finished steps read feeds its next steps again. A
        // secret read is not kept in the record, so the step that read it runs again.
        let RunRecord { steps, outputs, .. } = &mut scratch;
        for c in steps.iter_mut().filter(|c| done(c)) {
            if c.outputs.values().any(|v| *v == json!(super::redact::REDACTED)) {
                c.status = StepStatus::Pending;
                continue;
            }
            outputs.extend(c.outputs.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let relay = Relay {
            master,
            observer,
            at,
            base,
        };
        let inner = RunScope {
            observer: &relay,
            ..*scope
        };
        let mut failure = None;
        for (j, s) in f.steps.iter().enumerate() {
            if done(&scratch.steps[j]) {
                continue;
            }
            if failure.is_some() {
                scratch.steps[j].status = StepStatus::Skipped;
                scratch.steps[j].reason = Some(NOT_RUN.into());
                scratch.steps[j].error = Some("not run: an earlier step of this iteration failed".into());
                continue;
            }
            let r = self
                .run_step(
                    &inner,
                    &mut scratch,
                    At {
                        index: j,
                        compensation: false,
                    },
                    s,
                )
                .await;
            match r {
                Ok(()) => {}
                // The run stops: no further iteration starts either.
                Err(e) if e.stops_run() => {
                    stop.store(true, Ordering::SeqCst);
                    drop(relay.copy(&scratch).await);
                    return Err(e);
                }
                Err(_) if scratch.steps[j].continued => {}
                Err(e) => failure = Some(e),
            }
        }
        drop(relay.copy(&scratch).await);
        match failure {
            Some(e) => {
                if f.on_error == OnError::Abort {
                    stop.store(true, Ordering::SeqCst);
                }
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// Why a child was skipped when it was because of another's failure: it did not run, so a
/// resumed run runs it.
const NOT_RUN: &str = "not-run";

/// A child that finished: succeeded, or skipped by its `when` (not for another's failure).
fn done(c: &StepRecord) -> bool {
    c.status == StepStatus::Succeeded || (c.status == StepStatus::Skipped && c.reason.as_deref() != Some(NOT_RUN))
}

/// Every string in a list as written (each may be a template).
fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(m) => m.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Passes an iteration's events on as events of the run: copies the iteration's records into
/// the run's record first, so what observers (the run store) see is the whole run.
struct Relay<'a> {
    master: &'a Mutex<RunRecord>,
    observer: &'a dyn Observer,
    at: At,
    /// Where the iteration's records start among the forEach's children.
    base: usize,
}

impl Relay<'_> {
    async fn copy(&self, scratch: &RunRecord) -> tokio::sync::MutexGuard<'_, RunRecord> {
        let mut m = self.master.lock().await;
        let children = &mut m.step_mut(self.at.index, self.at.compensation).children;
        for (j, rec) in scratch.steps.iter().enumerate() {
            children[self.base + j] = rec.clone();
        }
        m
    }
}

#[async_trait::async_trait]
impl Observer for Relay<'_> {
    async fn on_event(&self, scratch: &RunRecord, event: &Event) {
        let m = self.copy(scratch).await;
        let At { index, compensation } = self.at;
        let event = match event {
            Event::StepStarted { index: j, .. } => Event::ChildStarted {
                index,
                compensation,
                child: self.base + j,
            },
            Event::StepFinished { index: j, .. } => Event::ChildFinished {
                index,
                compensation,
                child: self.base + j,
            },
            Event::StepWaiting {
                index: j,
                what,
                deadline,
                ..
            } => Event::StepWaiting {
                index,
                compensation,
                what: format!("{}: {what}", scratch.steps[*j].name),
                deadline: *deadline,
            },
            _ => return,
        };
        self.observer.on_event(&m, &event).await;
    }
}
