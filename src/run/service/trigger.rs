//! Manual triggers (`POST /api/v1/plans/{ns}/{name}/runs`): the params a plan lets a caller
//! set, an idempotency key, and the same claims and approvals as an alert's run.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::executor::RunInput;
use crate::plan::model::Mode;
use crate::record::{RunRecord, Trigger, TriggerKind};
use crate::run::store::{ClaimRules, Refusal};

use super::{short_hash, Runs, RunsError};

/// `POST /api/v1/plans/{ns}/{name}/runs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManualTrigger {
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Who asked (recorded).
    #[serde(default)]
    pub actor: Option<String>,
}

impl Runs {
    /// A manual trigger. Returns the run and whether it was created now (false: the same
    /// idempotency key was used before and this is that run). A live run of an `approval`
    /// plan waits for approval as an alert's would; a dry run needs none (it changes nothing).
    pub async fn trigger(
        self: &Arc<Self>,
        plan_name: &str,
        req: ManualTrigger,
    ) -> Result<(RunRecord, bool), RunsError> {
        if !self.accepting() {
            return Err(RunsError::ShuttingDown);
        }
        let plans = self.plans();
        let probe = RunRecord {
            plan: plan_name.to_string(),
            ..Default::default()
        };
        let Some(plan) = plans.get(plan_name).cloned() else {
            return Err(self
                .current_plan(&probe)
                .err()
                .unwrap_or_else(|| RunsError::UnknownPlan(plan_name.into())));
        };
        let listed = |names: &mut dyn Iterator<Item = &String>| {
            let list = names.cloned().collect::<Vec<_>>().join(", ");
            if list.is_empty() {
                "none".to_string()
            } else {
                list
            }
        };
        // A mistyped param must not quietly run the plan with its default.
        if let Some(key) = req.params.keys().find(|k| !plan.params().contains_key(*k)) {
            return Err(RunsError::UnknownParam {
                plan: plan_name.into(),
                key: key.clone(),
                known: listed(&mut plan.params().keys()),
            });
        }
        // Which params a trigger may set is the plan author's decision, not the caller's.
        if let Some(key) = req.params.keys().find(|k| !plan.overridable_params().contains(k)) {
            return Err(RunsError::ParamNotOverridable {
                plan: plan_name.into(),
                key: key.clone(),
                allowed: listed(&mut plan.overridable_params().iter()),
            });
        }
        let id = match &req.idempotency_key {
            // A dry run and a live run with the same key are different runs.
            Some(k) => format!(
                "m-{}",
                short_hash(&[plan_name, if req.dry_run { "dry" } else { "live" }, k])
            ),
            None => format!(
                "m-{}",
                short_hash(&[plan_name, &jiff::Timestamp::now().as_nanosecond().to_string()])
            ),
        };
        let executor = if req.dry_run { &self.dry } else { &self.live };
        let input = RunInput {
            params: req.params.clone(),
            alert: None,
        };
        let mut record = executor.new_record(&id, &plan, &input);
        record.trigger = Trigger {
            kind: TriggerKind::Manual,
            actor: req.actor.clone(),
            idempotency_key: req.idempotency_key.clone(),
            ..Default::default()
        };
        record.phase = Runs::first_phase(plan.mode == Mode::Approval && !req.dry_run);
        // The store applies the one-active-run rule to live runs only.
        let rules = ClaimRules {
            one_active_per_plan: true,
            cooldown: None,
        };
        let claimed = self.store.claim(&record, rules).await?;
        match claimed {
            Ok(()) => {}
            Err(Refusal::SameRun { existing }) => {
                self.metrics
                    .runs_deduplicated
                    .with_label_values(&[plan_name, "idempotency-key"])
                    .inc();
                let existing = self.get(&existing).await?;
                return Ok((existing, false));
            }
            Err(refusal) => {
                self.metrics
                    .runs_deduplicated
                    .with_label_values(&[plan_name, refusal.reason()])
                    .inc();
                return Err(RunsError::Busy {
                    plan: plan_name.into(),
                    existing: refusal.existing().into(),
                });
            }
        }
        self.begin(&record, plan, req.dry_run).await;
        Ok((record, true))
    }
}
