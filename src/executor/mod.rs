//! The executor (I/O edge): runs a plan's steps in order against the clusters they name, each
//! attempt bounded by its timeout, transient failures retried with backoff, every step recorded
//! in the [`RunRecord`] before and after it runs, and `onFailure` run when a step aborts.
//!
//! One file per step type. The executor talks to clusters only through the [`Registry`]'s
//! `kube::Client`s; it never decides *whether* a run may start (that is the run store's job).

mod apply;
mod assert;
mod delete;
mod error;
mod exec;
mod http;
mod patch;
mod read_field;
mod verify;
mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

pub use error::StepError;

use crate::cluster::{api_for_object, describe_object, Registry};
use crate::plan::compiled::{Plan, Step, StepKind};
use crate::plan::model::OnError;
use crate::record::{now, Phase, RunRecord, StepRecord, StepStatus};
use crate::template;

pub use crate::plan::compiled::FIELD_MANAGER;

const REDACTED: &str = "<redacted>";

/// Something that wants to know as a run progresses: the CLI's printer, the run store (which
/// must have written the record before the executor goes on), metrics.
pub trait Observer: Send + Sync {
    fn on_event(&self, run: &RunRecord, event: &Event);
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
    RunFinished,
}

/// Observers that do nothing.
pub struct NoObserver;
impl Observer for NoObserver {
    fn on_event(&self, _: &RunRecord, _: &Event) {}
}

/// The alert that triggered a run, as templates see it (`alert.labels.x`).
pub type AlertContext = Value;

pub struct Executor {
    registry: Arc<Registry>,
    http: reqwest::Client,
}

/// What a step hands back to the executor.
#[derive(Default)]
pub(crate) struct StepOutcome {
    pub inputs: Option<Value>,
    pub outputs: BTreeMap<String, Value>,
    pub diff: Option<Value>,
    pub object: Option<String>,
    /// The step used a secret in a way the executor could not see from the plan (a template
    /// loaded at run time): its inputs and diff are kept out of the record.
    pub tainted: bool,
    /// The step's outputs are secret.
    pub secret_outputs: bool,
}

/// Everything a step needs while it runs.
pub(crate) struct StepCtx<'a> {
    pub registry: &'a Registry,
    pub http: &'a reqwest::Client,
    pub cluster: String,
    pub values: &'a Value,
    pub base_dir: Option<&'a std::path::Path>,
    pub progress: &'a (dyn Fn(String, Duration) + Send + Sync),
    /// The plan's field manager.
    pub field_manager: &'a str,
    /// Objects (as described in records) that earlier steps of this run wrote.
    pub written: &'a BTreeSet<String>,
    /// The `Values` keys that hold secrets.
    pub secret_keys: &'a BTreeSet<String>,
}

impl StepCtx<'_> {
    /// Whether a template uses a secret: a `secrets.*` of an http step or a secret `Values` key.
    /// Whatever it renders to (a secret through `b64encode`, say) is then secret too.
    pub fn uses_secret(&self, src: &str) -> bool {
        uses_secret(src, self.secret_keys)
    }

    /// `clusters.postgresql.cnpg.io`, as the API server names a resource in its messages.
    pub fn resource_name(&self, api_version: &str, resource: &str) -> String {
        match api_version.split_once('/') {
            Some((group, _)) => format!("{resource}.{group}"),
            None => resource.to_string(),
        }
    }

    /// A dry run: writes go with dryRun=All, so nothing a later step waits for will happen.
    pub fn dry_run(&self) -> bool {
        self.registry.mode() == crate::cluster::WriteMode::DryRun
    }

    pub fn render(&self, s: &str) -> Result<String, StepError> {
        Ok(template::render(s, self.values)?)
    }

    /// [`StepCtx::object`] for a step's target.
    pub async fn target(
        &self,
        t: &crate::plan::model::ObjectRef,
    ) -> Result<(Api<DynamicObject>, String, String), StepError> {
        self.object(&t.api_version, &t.resource, t.namespace.as_deref(), &t.name)
            .await
    }

    /// Resolves an object reference (rendering its name and namespace) into an API handle, the
    /// rendered name, and how messages show the object (`… db/pg-north on cluster north`).
    pub async fn object(
        &self,
        api_version: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(Api<DynamicObject>, String, String), StepError> {
        let resolved = self
            .registry
            .resolve(&self.cluster, api_version, resource)
            .await?;
        let name = self.render(name)?;
        let namespace = namespace.map(|n| self.render(n)).transpose()?;
        let shown = format!(
            "{} on cluster {}",
            describe_object(api_version, resource, namespace.as_deref(), &name),
            self.cluster
        );
        check_name("name", &name, &shown)?;
        if let Some(ns) = &namespace {
            check_name("namespace", ns, &shown)?;
        }
        let api = api_for_object(
            self.registry,
            &self.cluster,
            &resolved,
            namespace.as_deref(),
        )?;
        Ok((api, name, shown))
    }
}

/// Whether a template refers to a secret: `secrets` (an http step's) or a secret `Values` key.
fn uses_secret(src: &str, secret_keys: &BTreeSet<String>) -> bool {
    // Most steps of most runs have no secret at all: no need to parse their templates.
    if !template::is_template(src) || (secret_keys.is_empty() && !src.contains("secrets")) {
        return false;
    }
    match template::references(src) {
        Ok(refs) => refs.iter().any(|r| {
            r == "secrets"
                || r.starts_with("secrets.")
                || r.strip_prefix("Values.")
                    .is_some_and(|k| secret_keys.contains(k.split('.').next().unwrap_or(k)))
                // `Values` used whole (`Values | tojson`) carries every secret in it.
                || (r == "Values" && !secret_keys.is_empty())
        }),
        // An unparsable template fails the step anyway; be safe meanwhile.
        Err(_) => !secret_keys.is_empty(),
    }
}

/// A write the API server refused, in words that say what to do: a server-side apply conflict
/// names the other field manager; a strict field validation error is a field the schema does not
/// have, as the read-back would report on servers without `fieldValidation`.
pub(crate) fn write_error(action: &'static str, object: &str, source: kube::Error) -> StepError {
    if let kube::Error::Api(status) = &source {
        let msg = &status.message;
        if status.code == 409 && action == "apply" && msg.contains("conflict") {
            return StepError::Conflict {
                object: object.to_string(),
                detail: format!(
                    "{msg}; another field manager owns these fields: set `force: true` on the \
                     step to take them over"
                ),
            };
        }
        // Strict validation: 400 "strict decoding error: unknown field" for patches; a
        // server-side apply of a field the schema lacks is a 500 "field not declared in schema"
        // (not a transient server error: retrying cannot help).
        if (matches!(status.code, 400 | 422)
            && (msg.contains("unknown field") || msg.contains("strict decoding error")))
            || msg.contains("field not declared in schema")
        {
            return StepError::NotApplied {
                object: object.to_string(),
                detail: format!("the API server refused a field that is not in the schema: {msg}"),
            };
        }
    }
    StepError::Kube {
        action,
        object: object.to_string(),
        source,
    }
}

/// A rendered name or namespace must be a Kubernetes name (DNS-1123 subdomain): a value from an
/// alert label such as `pg-north/status` or `a,b` must not re-target the request.
pub(crate) fn check_name(what: &'static str, value: &str, object: &str) -> Result<(), StepError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StepError::BadName {
            what,
            value: value.to_string(),
            object: object.to_string(),
        })
    }
}

/// Reads an object; a 404 is [`StepError::NotFound`].
pub(crate) async fn get_object(
    api: &Api<DynamicObject>,
    name: &str,
    shown: &str,
) -> Result<Value, StepError> {
    match api.get_opt(name).await {
        Ok(Some(obj)) => Ok(serde_json::to_value(obj).unwrap_or(Value::Null)),
        Ok(None) => Err(StepError::NotFound {
            object: shown.to_string(),
        }),
        Err(source) => Err(StepError::Kube {
            action: "read",
            object: shown.to_string(),
            source,
        }),
    }
}

/// How a run can be stopped from outside: `cancel` stops it now (the running step is
/// abandoned, the run is Cancelled); `drain` (shutdown) lets the running step finish, then
/// leaves the run Interrupted so it can be resumed.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    pub cancel: CancellationToken,
    pub drain: CancellationToken,
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
        observer.on_event(record, &Event::RunStarted);
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
            if lost
                && matches!(step.kind, StepKind::ReadField(_))
                && rec.status == StepStatus::Succeeded
            {
                record.steps[index].status = StepStatus::Pending;
            }
        }

        let mut failure: Option<String> = None;
        for (index, step) in plan.steps.iter().enumerate() {
            // Resuming: every step that already finished (or failed and was tolerated) stays done.
            let done = &record.steps[index];
            if matches!(done.status, StepStatus::Succeeded | StepStatus::Skipped) || done.continued
            {
                continue;
            }
            if control.drain.is_cancelled() {
                self.interrupted(record, step.name.as_str(), started, observer);
                return;
            }
            let result = self
                .run_step(
                    plan,
                    input,
                    record,
                    index,
                    false,
                    step,
                    deadline,
                    run_timeout,
                    observer,
                    control,
                )
                .await;
            if let Err(StepError::Interrupted) = result {
                self.interrupted(record, step.name.as_str(), started, observer);
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
                        format!(
                            "step {:?} failed on cluster {cluster:?}: {text}",
                            step.name.as_str()
                        )
                    }
                    None => format!("step {:?} failed: {text}", step.name.as_str()),
                });
                if matches!(e, StepError::Cancelled) {
                    record.phase = Phase::Cancelled;
                }
                break;
            }
        }

        if let Some(err) = failure {
            record.error = Some(err);
            if record.phase != Phase::Cancelled {
                // Still Running while compensating: the plan stays busy, and a crash here leaves
                // the run Interrupted rather than looking finished.
                if !self
                    .compensate(plan, input, record, observer, control)
                    .await
                {
                    self.interrupted(record, "onFailure", started, observer);
                    return;
                }
                record.phase = Phase::Failed;
            }
        } else if record.steps.iter().any(|s| s.continued) {
            // A tolerated failure (a fence that did not happen) must be visible at a glance.
            record.phase = Phase::SucceededWithErrors;
            record.error = Some(format!(
                "tolerated failures (onError: continue): {}",
                record
                    .steps
                    .iter()
                    .filter(|s| s.continued)
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        } else {
            record.phase = Phase::Succeeded;
        }
        record.finished_at = Some(now());
        record.duration_ms =
            Some(started.elapsed().as_millis() as u64 + record.duration_ms.unwrap_or(0));
        info!(phase = record.phase.as_str(), "run finished");
        observer.on_event(record, &Event::RunFinished);
    }

    /// The run stops here, resumable: a shutdown, or a record that could not be written.
    fn interrupted(
        &self,
        record: &mut RunRecord,
        before: &str,
        started: Instant,
        observer: &dyn Observer,
    ) {
        record.phase = Phase::Interrupted;
        record.error = Some(format!(
            "recoverd stopped before step {before:?}; resume the run to continue"
        ));
        record.duration_ms =
            Some(started.elapsed().as_millis() as u64 + record.duration_ms.unwrap_or(0));
        info!("run interrupted");
        observer.on_event(record, &Event::RunFinished);
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
            let res = self
                .run_step(
                    plan, input, record, index, true, step, deadline, budget, observer, control,
                )
                .await;
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

    #[allow(clippy::too_many_arguments)]
    #[instrument(skip_all, fields(step = %step.name, cluster = tracing::field::Empty))]
    async fn run_step(
        &self,
        plan: &Plan,
        input: &RunInput,
        record: &mut RunRecord,
        index: usize,
        compensation: bool,
        step: &Step,
        deadline: Instant,
        run_timeout: Duration,
        observer: &dyn Observer,
        control: &RunControl,
    ) -> Result<(), StepError> {
        let values = context(plan, input, record);
        // `cluster: "{{ Values.from }}"`: one plan serves both directions; the rendered name
        // must be in the registry.
        let cluster = match step.cluster.as_deref() {
            Some(c) if template::is_template(c) => template::render(c, &values)
                .map_err(StepError::from)
                .and_then(|name| {
                    self.registry.client(&name)?;
                    Ok(name)
                }),
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
                observer.on_event(
                    record,
                    &Event::StepFinished {
                        index,
                        compensation,
                    },
                );
                return Err(e);
            }
        };
        tracing::Span::current().record("cluster", cluster.as_str());
        if step.uses_cluster() {
            record.step_mut(index, compensation).cluster = Some(cluster.clone());
        }
        let secret_keys: BTreeSet<String> = record.secret_outputs.iter().cloned().collect();
        // http steps redact their own inputs field by field (see `http.rs`).
        let tainted_in = !matches!(step.kind, StepKind::Http(_))
            && step
                .templates
                .iter()
                .any(|src| uses_secret(src, &secret_keys));
        let started = Instant::now();
        {
            let rec = record.step_mut(index, compensation);
            rec.status = StepStatus::Running;
            rec.started_at = Some(now());
            rec.attempts = 0;
            rec.error = None;
            rec.reason = None;
            rec.continued = false;
        }
        observer.on_event(
            record,
            &Event::StepStarted {
                index,
                compensation,
            },
        );
        // The record of the step's start could not be written (or recoverd is shutting down):
        // a step must never run unrecorded.
        if control.drain.is_cancelled() {
            let rec = record.step_mut(index, compensation);
            rec.status = StepStatus::Pending;
            rec.started_at = None;
            return Err(StepError::Interrupted);
        }

        let result = self
            .attempts(
                plan,
                record,
                index,
                compensation,
                step,
                &cluster,
                &values,
                deadline,
                run_timeout,
                observer,
                &control.cancel,
            )
            .await;

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
            Ok(None) => {
                let rec = record.step_mut(index, compensation);
                rec.status = StepStatus::Skipped;
                rec.error = Some(format!(
                    "`when` was false ({})",
                    step.when.as_deref().unwrap_or_default()
                ));
                Ok(())
            }
            Err(e) => {
                let text = scrub(&e.to_string(), &record.secrets.needles());
                let rec = record.step_mut(index, compensation);
                rec.status = StepStatus::Failed;
                rec.error = Some(text.clone());
                rec.reason = Some(e.reason().to_string());
                // A cancelled run or a passed deadline stops even a step that may fail.
                rec.continued = step.on_error == OnError::Continue
                    && !matches!(e, StepError::Cancelled | StepError::RunDeadline { .. });
                if rec.continued {
                    info!(error = %text, reason = e.reason(), "step failed");
                } else {
                    warn!(error = %text, reason = e.reason(), "step failed");
                }
                Err(e)
            }
        };
        let rec = record.step_mut(index, compensation);
        rec.finished_at = Some(now());
        rec.duration_ms = Some(started.elapsed().as_millis() as u64);
        observer.on_event(
            record,
            &Event::StepFinished {
                index,
                compensation,
            },
        );
        outcome
    }

    /// Runs the attempts of one step; `Ok(None)` when `when` skipped it.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        plan: &Plan,
        record: &mut RunRecord,
        index: usize,
        compensation: bool,
        step: &Step,
        cluster: &str,
        values: &Value,
        deadline: Instant,
        run_timeout: Duration,
        observer: &dyn Observer,
        cancel: &CancellationToken,
    ) -> Result<Option<StepOutcome>, StepError> {
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
                observer.on_event(
                    &snapshot,
                    &Event::StepWaiting {
                        index,
                        compensation,
                        what: scrub(&what, &progress_needles),
                        deadline: limit,
                    },
                );
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
            };
            let limit = attempt_timeout.min(remaining);
            let result = tokio::select! {
                r = tokio::time::timeout(limit, execute_step(step, &ctx)) => match r {
                    Ok(r) => r,
                    Err(_) if limit < attempt_timeout => Err(StepError::RunDeadline { after: run_timeout }),
                    Err(_) => Err(StepError::AttemptTimeout { after: limit }),
                },
                _ = cancel.cancelled() => Err(StepError::Cancelled),
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
                    observer.on_event(
                        record,
                        &Event::StepWaiting {
                            index,
                            compensation,
                            what: format!("retry {attempt}/{retries} after: {text}"),
                            deadline: pause,
                        },
                    );
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
    }
}

/// The cluster a step acts on: its own, or the default; `None` for http and assert steps.
fn step_cluster<'a>(registry: &'a Registry, step: &'a Step) -> Option<&'a str> {
    step.uses_cluster()
        .then(|| registry.name_or_default(step.cluster.as_deref()))
}

/// The template context of a run at this point: `Values` (params, then outputs), `alert`,
/// `plan`, `run`.
fn context(plan: &Plan, input: &RunInput, record: &RunRecord) -> Value {
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

/// Replaces every occurrence of a secret (and the usual forms a filter turns it into) in text.
pub fn scrub(text: &str, needles: &[String]) -> String {
    needles
        .iter()
        .fold(text.to_string(), |acc, n| acc.replace(n.as_str(), REDACTED))
}

fn scrub_value(v: Value, needles: &[String]) -> Value {
    if needles.is_empty() {
        return v;
    }
    match v {
        Value::String(s) => Value::String(scrub(&s, needles)),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| scrub_value(v, needles)).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, scrub_value(v, needles)))
                .collect(),
        ),
        other => other,
    }
}

/// The inputs of a step that used a secret: what was rendered from templates (patch bodies,
/// manifests, URLs, headers, bodies, compared values) is replaced; the shape stays.
fn redact_inputs(inputs: Value) -> Value {
    const RENDERED: &[&str] = &[
        "patch",
        "object",
        "url",
        "headers",
        "body",
        "condition",
        "observed",
    ];
    match inputs {
        Value::Object(mut m) => {
            for key in RENDERED {
                if let Some(v) = m.get_mut(*key) {
                    *v = json!(REDACTED);
                }
            }
            Value::Object(m)
        }
        _ => json!(REDACTED),
    }
}
