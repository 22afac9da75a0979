//! The run record (pure data): what happened in one execution of one plan, step by step. It is
//! the status of a `RecoveryRun` custom resource, the body of `GET /api/v1/runs/{id}`, and what
//! `recoverd run` prints at the end.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::plan::model::StepType;

/// One execution of a RecoveryPlan: its trigger and, in `status`, every step's outcome.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "recoverd.io",
    version = "v1alpha1",
    kind = "RecoveryRun",
    namespaced,
    status = "RunRecord",
    shortname = "rrun",
    printcolumn = r#"{"name":"Plan","type":"string","jsonPath":".spec.plan"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Started","type":"date","jsonPath":".status.startedAt"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRunSpec {
    /// The plan's name (in the run's namespace).
    pub plan: String,
    /// What started the run.
    pub trigger: Trigger,
    /// `live`, or `dryRun` (every write sent with dryRun=All).
    #[serde(default)]
    pub mode: RunMode,
}

/// What started a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// `alert`, `manual`, `cli` (`recoverd run`) or `rehearsal`.
    pub kind: TriggerKind,
    /// The alert's fingerprint (alert triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The alert's startsAt (alert triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    /// Who asked (manual triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The caller's idempotency key (manual triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// What kind of thing started a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TriggerKind {
    /// An alert delivered to the webhook.
    #[default]
    Alert,
    /// `POST /api/v1/plans/{ns}/{name}/runs`.
    Manual,
    /// `recoverd run`.
    Cli,
    /// `recoverd rehearse`.
    Rehearsal,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Alert => "alert",
            TriggerKind::Manual => "manual",
            TriggerKind::Cli => "cli",
            TriggerKind::Rehearsal => "rehearsal",
        }
    }
}

impl std::fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RunMode {
    #[default]
    Live,
    DryRun,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    WaitingForApproval,
    Running,
    Succeeded,
    /// Every step ran, but at least one failed and was tolerated (`onError: continue`): the
    /// run did its job, and something it tried (fencing the old primary, say) did not happen.
    SucceededWithErrors,
    Failed,
    Cancelled,
    /// recoverd stopped while the run was unfinished; it can be resumed.
    Interrupted,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::WaitingForApproval,
        Phase::Running,
        Phase::Succeeded,
        Phase::SucceededWithErrors,
        Phase::Failed,
        Phase::Cancelled,
        Phase::Interrupted,
    ];

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::SucceededWithErrors | Phase::Failed | Phase::Cancelled
        )
    }

    /// The run reached its end: `Succeeded` or `SucceededWithErrors`.
    pub fn is_success(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::SucceededWithErrors)
    }

    /// The phase as the API, the store and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::WaitingForApproval => "WaitingForApproval",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::SucceededWithErrors => "SucceededWithErrors",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
            Phase::Interrupted => "Interrupted",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    /// An `approval` step waiting for `POST /api/v1/runs/{id}/approve`.
    WaitingForApproval,
    Succeeded,
    Skipped,
    Failed,
}

/// The record of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub id: String,
    /// `namespace/name` of the plan.
    pub plan: String,
    /// The plan's generation (or content hash for file plans) when the run began.
    pub plan_generation: String,
    pub trigger: Trigger,
    pub mode: RunMode,
    pub phase: Phase,
    /// When the run was created (claimed); a run waiting for approval has not started yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The params the run started with (plan defaults overridden by the trigger).
    #[serde(default)]
    #[schemars(schema_with = "free_form_map")]
    pub params: BTreeMap<String, Value>,
    /// The alert that triggered the run, as templates see it (`alert.labels.x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub alert: Option<Value>,
    /// Every value produced by readField/http steps so far, by outputKey (secret ones as
    /// `<redacted>`).
    #[serde(default)]
    #[schemars(schema_with = "free_form_map")]
    pub outputs: BTreeMap<String, Value>,
    /// The outputKeys whose values are secret (read from a Secret, or derived from a secret):
    /// recorded as `<redacted>`, usable by later steps of the same process only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_outputs: Vec<String>,
    /// The values of `secret_outputs`, in memory only: never serialized, so never stored,
    /// printed or answered by the API.
    #[serde(skip)]
    #[schemars(skip)]
    pub secrets: SecretValues,
    pub steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<StepRecord>,
    /// Why the run failed: the failing step and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who approved or cancelled the run, and when (approvals of `approval` steps are in the
    /// step's inputs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
}

/// A person's decision about a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `approved` or `cancelled`.
    pub action: String,
    /// The name the caller gave (`{"actor": …}`), and which token it used (a hash prefix).
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// What happened in one step.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub name: String,
    #[serde(rename = "type")]
    pub step_type: StepType,
    /// The cluster the step acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The object it acted on: `apiVersion resource namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub status: StepStatus,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What the step sent, rendered, with secrets redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub inputs: Option<Value>,
    /// What the step produced, by outputKey.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form_map")]
    pub outputs: BTreeMap<String, Value>,
    /// For writes: the change it made, as a JSON Patch from the object before to after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub diff: Option<Value>,
    /// Why it failed, or why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A bounded category of the failure (`timeout`, `not-found`, `api-error`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The failure was tolerated (`onError: continue`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
    /// The item of the forEach iteration this step ran for (`Values.item`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub item: Option<Value>,
    /// A forEach step's iterations: one record per item and step, named `<forEach>[n]` (or
    /// `<forEach>[n].<step>` when an iteration has several steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_list")]
    pub children: Vec<StepRecord>,
}

impl RunRecord {
    /// Step `index` of the plan's steps, or of its `onFailure` steps.
    pub fn step(&self, index: usize, compensation: bool) -> &StepRecord {
        if compensation {
            &self.on_failure[index]
        } else {
            &self.steps[index]
        }
    }

    /// Child `child` (an iteration's step) of forEach step `index`.
    pub fn child(&self, index: usize, compensation: bool, child: usize) -> &StepRecord {
        &self.step(index, compensation).children[child]
    }

    /// The step waiting for an approval now, if any: a step, or a step of a forEach iteration.
    pub fn waiting_for_approval(&self) -> Option<&StepRecord> {
        self.steps
            .iter()
            .chain(&self.on_failure)
            .flat_map(|s| std::iter::once(s).chain(&s.children))
            .find(|s| s.status == StepStatus::WaitingForApproval)
    }

    pub fn step_mut(&mut self, index: usize, compensation: bool) -> &mut StepRecord {
        if compensation {
            &mut self.on_failure[index]
        } else {
            &mut self.steps[index]
        }
    }
}

fn free_form_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"x-kubernetes-preserve-unknown-fields": true}
    })
}

fn free_form_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn free_form_opt(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"nullable": true, "x-kubernetes-preserve-unknown-fields": true})
}

/// Secret values by outputKey. `Debug` shows only the keys, so a logged or panicking record
/// cannot print them.
#[derive(Clone, Default)]
pub struct SecretValues(pub BTreeMap<String, Value>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretValues {
    /// Every secret as text, with the forms a template filter commonly turns it into, longest
    /// first, for scrubbing free text (errors, logs) that may contain one.
    pub fn needles(&self) -> Vec<String> {
        use base64::Engine as _;
        let mut out = Vec::new();
        for v in self.0.values() {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text.len() < 4 {
                continue;
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
            // A Secret's data is base64: what it decodes to is the secret itself.
            if let Ok(plain) = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
            {
                out.extend([plain.clone(), plain.to_uppercase(), plain.to_lowercase()]);
            }
            // As a URL carries it.
            let encoded = percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC).to_string();
            out.extend([
                encoded,
                text.clone(),
                text.to_uppercase(),
                text.to_lowercase(),
                b64.trim_end_matches('=').to_string(),
                text.trim().to_string(),
            ]);
        }
        out.retain(|s| s.len() >= 4);
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.dedup();
        out
    }
}

/// Now, as RFC 3339 (what Kubernetes timestamps look like).
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}
