//! Alerts: each alert of a webhook payload, judged by its own status, matched to plans and
//! claimed as one run per (plan, incident) — or, resolved, withdrawing runs still waiting for
//! approval.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tracing::debug;

use crate::alert::{Alert, AlertStatus};
use crate::executor::RunInput;
use crate::plan::model::Mode;
use crate::record::{RunRecord, Trigger, TriggerKind};
use crate::run::store::{ClaimRules, Refusal};

use super::{short_hash, Runs, RunsError};

/// What one alert did, for the webhook's reply.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlertOutcome {
    pub fingerprint: String,
    pub status: AlertStatus,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What recoverd did with one alert.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// A run of the plan started.
    Started,
    /// A run was created and waits for approval.
    AwaitingApproval,
    /// The incident already has a run (or the plan is busy or cooling down): nothing new.
    Deduplicated,
    /// No plan matches the alert's labels.
    NoMatch,
    /// A resolution withdrew a run that was waiting for approval.
    Cancelled,
    /// A resolution with nothing to withdraw.
    Ignored,
}

/// The run id of an alert incident: the same (plan, fingerprint, startsAt) always gives the same
/// id, so every replica and every resend claims the same run.
pub fn alert_run_id(plan: &str, alert: &Alert) -> String {
    format!("a-{}", short_hash(&[plan, &alert.fingerprint, &alert.starts_at]))
}

/// The most a run record keeps of one alert label or annotation value, and of all annotations.
pub const ALERT_VALUE_LIMIT: usize = 4096;
pub const ALERT_ANNOTATIONS_LIMIT: usize = 32 * 1024;
const TRUNCATED: &str = "…[truncated by recoverd]";

fn cap(value: &str, limit: usize) -> String {
    if value.len() <= limit {
        return value.to_string();
    }
    let mut end = limit;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &value[..end])
}

/// The alert as a run record keeps it (and templates see it): every label and annotation
/// value at most [`ALERT_VALUE_LIMIT`] bytes, annotations at most [`ALERT_ANNOTATIONS_LIMIT`]
/// in all, so that a noisy alert cannot make every record (and list) huge.
pub fn capped_context(alert: &Alert) -> Value {
    let mut alert = alert.clone();
    for v in alert.labels.values_mut() {
        *v = cap(v, ALERT_VALUE_LIMIT);
    }
    let mut budget = ALERT_ANNOTATIONS_LIMIT;
    for v in alert.annotations.values_mut() {
        let capped = cap(v, ALERT_VALUE_LIMIT.min(budget));
        budget = budget.saturating_sub(capped.len());
        *v = capped;
    }
    alert.context()
}

impl Runs {
    /// Handles one alert of a webhook payload; each alert is judged by its own status. A store
    /// that fails here counts as unhealthy at once (not at the next health check), so that no
    /// later alert is answered from what this process remembers while nothing can be recorded.
    pub async fn alert(self: &Arc<Self>, alert: &Alert) -> Result<Vec<AlertOutcome>, RunsError> {
        let result = self.take_alert(alert).await;
        if let Err(RunsError::Store(e)) = &result {
            if !e.not_ours() {
                self.store_failed("", e);
            }
        }
        result
    }

    async fn take_alert(self: &Arc<Self>, alert: &Alert) -> Result<Vec<AlertOutcome>, RunsError> {
        let outcome =
            |action: Action, plan: Option<String>, run_id: Option<String>, reason: Option<String>| AlertOutcome {
                fingerprint: alert.fingerprint.clone(),
                status: alert.status(),
                action,
                plan,
                run_id,
                reason,
            };
        self.metrics
            .alerts_received
            .with_label_values(&[alert.status().as_str()])
            .inc();
        let plans = self.plans();
        if !alert.is_firing() {
            // A resolution never acts; it only withdraws runs still waiting for approval, matched
            // by fingerprint (its startsAt may differ from the firing notifications') and only of
            // plans its labels match — a fingerprint is no secret, and must not cancel others.
            let matching: Vec<String> = plans
                .matching(&alert.labels)
                .into_iter()
                .map(|p| p.key.clone())
                .collect();
            let waiting: Vec<RunRecord> = if matching.is_empty() {
                Vec::new()
            } else {
                self.store
                    .waiting_for_approval(&alert.fingerprint)
                    .await?
                    .into_iter()
                    .filter(|r| matching.contains(&r.plan))
                    .collect()
            };
            if waiting.is_empty() {
                return Ok(vec![outcome(
                    Action::Ignored,
                    None,
                    None,
                    Some("resolved alerts never start runs".into()),
                )]);
            }
            let mut out = Vec::new();
            for run in waiting {
                let (plan, id) = (run.plan.clone(), run.id.clone());
                // Lost a race with an approval: the run is executing and the resolution is moot.
                if self
                    .finish_unstarted(run, "the alert resolved before the run was approved")
                    .await
                    .is_err()
                {
                    continue;
                }
                out.push(outcome(
                    Action::Cancelled,
                    Some(plan),
                    Some(id),
                    Some("alert resolved".into()),
                ));
            }
            self.refresh_active().await;
            return Ok(out);
        }
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let matching = plans.matching(&alert.labels);
        if matching.is_empty() {
            return Ok(vec![outcome(Action::NoMatch, None, None, None)]);
        }
        let mut out = Vec::new();
        for plan in matching {
            let name = plan.key.clone();
            self.metrics.plan_matches.with_label_values(&[&name]).inc();
            let id = alert_run_id(&name, alert);
            let deduplicated = |refusal: &Refusal| {
                self.metrics
                    .runs_deduplicated
                    .with_label_values(&[&name, refusal.reason()])
                    .inc();
                // Alertmanager resends every group interval: one line per resend would drown
                // the log, so the duplicate itself is only a debug line.
                debug!(plan = %name, run = %refusal.existing(), reason = refusal.reason(), "alert deduplicated");
                outcome(
                    Action::Deduplicated,
                    Some(name.clone()),
                    Some(refusal.existing().to_string()),
                    Some(refusal.reason().into()),
                )
            };
            // A resend is the common case: answer it from the ids this process has seen, then
            // from the store's index, before building a record.
            // (Only while the store is healthy: with nowhere to record runs, every alert is
            // answered 503, so that Alertmanager keeps it until the store is back.)
            let known = self.store_ok.load(std::sync::atomic::Ordering::SeqCst) && self.seen.contains(&id);
            if known || self.store.exists(&id).await? {
                self.seen.insert(&id);
                self.store.duplicate(&id, TriggerKind::Alert.as_str());
                out.push(deduplicated(&Refusal::SameRun { existing: id }));
                continue;
            }
            let input = RunInput {
                params: BTreeMap::new(),
                alert: Some(capped_context(alert)),
            };
            let mut record = self.live.new_record(&id, plan, &input);
            record.trigger = Trigger {
                kind: TriggerKind::Alert,
                fingerprint: Some(alert.fingerprint.clone()),
                starts_at: Some(alert.starts_at.clone()),
                ..Default::default()
            };
            record.phase = Runs::first_phase(plan.mode == Mode::Approval);
            let rules = ClaimRules {
                one_active_per_plan: true,
                cooldown: plan.cooldown,
            };
            let claimed = self.store.claim(&record, rules).await?;
            if let Err(refusal) = claimed {
                if let Refusal::SameRun { existing } = &refusal {
                    self.seen.insert(existing);
                }
                out.push(deduplicated(&refusal));
                continue;
            }
            self.seen.insert(&id);
            let action = if self.begin(&record, plan.clone(), false).await {
                Action::Started
            } else {
                Action::AwaitingApproval
            };
            out.push(outcome(action, Some(name), Some(id), None));
        }
        Ok(out)
    }
}
