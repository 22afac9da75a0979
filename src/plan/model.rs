//! The `RecoveryPlan` custom resource (pure data): what a plan author writes.
//!
//! Field doc comments are what `kubectl explain recoveryplan.spec…` shows, so they are written
//! for plan authors. Nova's `recovery.elotl.co/v1alpha1` plans deserialize into the same types.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A recovery plan: which alerts trigger it and the steps that recover from them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "recoverd.io",
    version = "v1alpha1",
    kind = "RecoveryPlan",
    namespaced,
    status = "RecoveryPlanStatus",
    shortname = "rplan"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoveryPlanSpec {
    /// Labels an alert must carry, every pair equal, for this plan to run
    /// (e.g. `alertname: PostgresPrimaryDown`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub alert_labels: BTreeMap<String, String>,
    /// Further conditions on the alert's labels in Alertmanager's matcher syntax:
    /// `severity=~"critical|page"`, `env!="test"`. Regexes are anchored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_matchers: Vec<String>,
    /// `auto` (a matching alert runs the plan), `approval` (a matching alert creates a run that
    /// waits for POST /api/v1/runs/{id}/approve) or `manual` (only explicit triggers run it).
    #[serde(default)]
    pub mode: Mode,
    /// No new alert-triggered run within this time after a run began, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
    /// How long a run of an `approval` plan waits to be approved before it is cancelled, e.g.
    /// `15m`. Default: the plan's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<String>,
    /// Deadline for the whole run, e.g. `20m`. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Default values available to templates as `Values.<name>`. A manual trigger may set
    /// only those named in `overridableParams`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form_map")]
    pub params: BTreeMap<String, Value>,
    /// The `params` a manual trigger may set (`POST /api/v1/plans/{ns}/{name}/runs` with
    /// `params`); every other param keeps the plan's value. Empty: none may be set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridable_params: Vec<String>,
    /// The steps, run in order.
    pub steps: Vec<Step>,
    /// Compensation steps, run in order when a step aborts the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<Step>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Auto,
    Approval,
    Manual,
}

/// What recoverd reports about a plan it has loaded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoveryPlanStatus {
    /// Whether the plan passed validation; an invalid plan never runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// What is wrong with the plan, one message per problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The id of the last run of this plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// The phase of the plan's last live run: `Succeeded`, `Failed`… (`Running` while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// How many steps the plan has (without `onFailure`), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<i64>,
    /// The `metadata.generation` recoverd last read and validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid`: `True` when the plan passed validation and is matched against alerts, `False`
    /// with a reason and a message naming what to fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// One step of a plan. Exactly one of `patch`, `readField`, `wait`, `apply`, `http`, `delete`,
/// `assert`, `exec`, `approval`, `forEach` is set, matching `type`.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    /// Unique within the plan. Nova plans may omit it; their steps are named `step-1`, `step-2`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `patch`, `readField`, `wait`, `apply`, `http`, `delete`, `assert`, `exec`, `approval` or
    /// `forEach`.
    #[serde(rename = "type")]
    pub step_type: StepType,
    /// The cluster this step acts on (a name in the cluster registry). Omitted: the default
    /// cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// A template that must render to true for the step to run, e.g.
    /// `{{ Values.mode == 'graceful' }}`; false records the step as skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Deadline for one attempt, e.g. `30s` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How many times to retry on transient errors (timeouts, 429, 5xx, lost connections), with
    /// exponential backoff. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// `abort` (default): a failure stops the run and runs `onFailure`. `continue`: the failure
    /// is recorded and the run goes on.
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Box<PatchStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_field: Option<Box<ReadFieldStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Box<WaitStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<Box<ApplyStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<Box<DeleteStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assert: Option<Box<AssertStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Box<ExecStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Box<ApprovalStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Box<ForEachStep>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StepType {
    /// (The default only so that an empty step record can be built.)
    #[default]
    Patch,
    ReadField,
    Wait,
    Apply,
    Http,
    Delete,
    Assert,
    Exec,
    Approval,
    ForEach,
}

impl std::fmt::Display for StepType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StepType {
    pub const ALL: [StepType; 10] = [
        StepType::Patch,
        StepType::ReadField,
        StepType::Wait,
        StepType::Apply,
        StepType::Http,
        StepType::Delete,
        StepType::Assert,
        StepType::Exec,
        StepType::Approval,
        StepType::ForEach,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepType::Patch => "patch",
            StepType::ReadField => "readField",
            StepType::Wait => "wait",
            StepType::Apply => "apply",
            StepType::Http => "http",
            StepType::Delete => "delete",
            StepType::Assert => "assert",
            StepType::Exec => "exec",
            StepType::Approval => "approval",
            StepType::ForEach => "forEach",
        }
    }

    /// Whether a step of this type acts on a cluster (and is recorded with one).
    pub fn uses_cluster(self) -> bool {
        !matches!(
            self,
            StepType::Http | StepType::Assert | StepType::Approval | StepType::ForEach
        )
    }
}

/// Delete one object by name, or every object a label selector matches (at most `maxObjects`).
/// An object already gone counts as deleted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteStep {
    /// `group/version` (`postgresql.cnpg.io/v1`) or `v1` for core objects.
    pub api_version: String,
    /// The plural resource name, as in the API path: `pods`, `persistentvolumeclaims`.
    pub resource: String,
    /// Omitted for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name (a template). Either this or `labelSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Every object matching this selector (`cnpg.io/instanceName=pg-north-1`, a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// With `labelSelector`: refuse (delete nothing) when more objects match. Default 10. A
    /// number, or a template that renders to one (`"{{ Values.maxPvcs }}"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string_opt")]
    pub max_objects: Option<NumberOrTemplate>,
    /// `Background` (the API server's default for most kinds), `Foreground` or `Orphan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation_policy: Option<String>,
    /// Delete only the object with this uid / resourceVersion (from an earlier readField), so
    /// a re-created object is never deleted by mistake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preconditions: Option<DeletePreconditions>,
    /// Wait until the objects are really gone (finalizers done), bounded by `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<DeleteWait>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeletePreconditions {
    /// Delete only if the object's `metadata.uid` is this (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Delete only if the object's `metadata.resourceVersion` is this (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteWait {
    /// Wait until every deleted object is gone.
    pub gone: bool,
    /// How long, e.g. `2m` (mandatory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Run a command in a container of a pod (the API server's `pods/exec`): `pg_isready`,
/// `psql -tAc 'select pg_is_in_recovery()'`. Not run in a dry run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecStep {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name (a template).
    pub pod: String,
    /// The container; default: the pod's only (or default) container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command and its arguments, each a template; no shell unless you call one.
    pub command: Vec<String>,
    /// The exit code that means success. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_exit_code: Option<i32>,
    /// Store stdout (trimmed, at most 64 KiB) in `Values.<outputKey>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
}

/// Pause the run until a person approves it (`POST /api/v1/runs/{id}/approve` with an approver
/// token, or `recoverd approve ID`), showing them the message and the values gathered so far.
/// The split-brain decision of a failover belongs here, after the probes, not before the run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalStep {
    /// What the approver decides (a template): `Old site unreachable for {{ Values.down }}s;
    /// promote pg-south without a token? Writes not yet replicated are lost.`
    pub message: String,
    /// How long to wait, e.g. `15m` (mandatory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// `abort` (default): no approval in time fails the step. `continue`: the run goes on
    /// without it (recorded as such).
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnTimeout {
    #[default]
    Abort,
    Continue,
}

/// A positive number written out (`5`), or a template that renders to one (`"{{ Values.max }}"`).
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum NumberOrTemplate {
    Number(u32),
    Template(String),
}

impl<'de> Deserialize<'de> for NumberOrTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(NumberOrTemplate::Number)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{n} is not a count: write a whole number from 1, or a template"
                    ))
                }),
            Value::String(s) => Ok(NumberOrTemplate::Template(s)),
            other => Err(serde::de::Error::custom(format!(
                "expected a number or a template (\"{{{{ Values.max }}}}\"), not {other}"
            ))),
        }
    }
}

/// Repeat steps for each item of a list: the names of the objects a label selector matches,
/// a list written in the plan, or a list read earlier (a list param, a readField of an array
/// or of a JSON array text). The steps see the item as `{{ Values.item }}`; each iteration's
/// steps are recorded as child steps `<name>[0]`, `<name>[1]`… with their item.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForEachStep {
    /// The list written out (its strings are templates), or one template naming a list:
    /// `"{{ Values.pvcs }}"`. Either this or `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub items: Option<Value>,
    /// Or: the names of the objects a label selector matches, in the step's cluster, sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<ForEachSelector>,
    /// How many iterations run at the same time: 1 (the default) to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Refuse (run no iteration) when the list is longer than this. Default 50, at most 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u32>,
    /// For each iteration: `abort` (default) starts no new iteration after one failed;
    /// `continue` runs every iteration. Either way the forEach step fails when an iteration
    /// did, and the step's own `onError` says whether the run goes on.
    #[serde(default)]
    pub on_error: OnError,
    /// The steps of one iteration, run in order (any type but another forEach); a step
    /// without `cluster` acts on the forEach step's cluster.
    #[schemars(schema_with = "free_form_list")]
    pub steps: Vec<Step>,
}

/// The objects whose names a forEach iterates over.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForEachSelector {
    /// `group/version` (`postgresql.cnpg.io/v1`) or `v1` for core objects.
    pub api_version: String,
    /// The plural resource name, as in the API path: `persistentvolumeclaims`.
    pub resource: String,
    /// Omitted for cluster-scoped objects (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `cnpg.io/instanceName=pg-north-1` (a template); every object matches when empty.
    pub label_selector: String,
}

/// Fail the run now, with the author's message, unless a condition holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssertStep {
    /// A template that must render to true: `{{ Values.LagBytes | int < 16777216 }}`.
    pub that: String,
    /// Why the run stops when it does not (a template).
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnError {
    #[default]
    Abort,
    Continue,
}

/// The object a step acts on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// `group/version` (`postgresql.cnpg.io/v1`) or `v1` for core objects.
    pub api_version: String,
    /// The plural resource name, as in the API path: `clusters`, `configmaps`.
    pub resource: String,
    /// Omitted for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name (may be a template).
    pub name: String,
}

/// Set one field of an object.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchStep {
    /// `group/version` (`postgresql.cnpg.io/v1`) or `v1` for core objects.
    pub api_version: String,
    /// The plural resource name, as in the API path: `clusters`, `configmaps`.
    pub resource: String,
    /// Omitted for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name (may be a template).
    pub name: String,
    /// The field to set and its new value.
    #[serde(rename = "override")]
    pub override_: Override,
    /// `application/merge-patch+json` (default), `application/json-patch+json` or
    /// `application/strategic-merge-patch+json` (core types only). A merge patch through an
    /// array index is sent as a JSON Patch that first tests the element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Patch the `status` subresource instead of the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub subresource_status: bool,
}

/// The field to set and its new value.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Override {
    /// Dotted path with `[n]` indexes: `spec.replica.primary`, `spec.containers[0].image`.
    pub field_path: String,
    /// The new value, under `raw` (Nova's format).
    pub value: OverrideValue,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideValue {
    /// The new value, any JSON. Its strings are templates; its structure is not.
    #[schemars(schema_with = "free_form")]
    pub raw: Value,
}

/// Read one field into `Values.<outputKey>`; fails when it is missing or empty.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadFieldStep {
    /// `group/version` (`postgresql.cnpg.io/v1`) or `v1` for core objects.
    pub api_version: String,
    /// The plural resource name, as in the API path: `clusters`, `configmaps`.
    pub resource: String,
    /// Omitted for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name (may be a template).
    pub name: String,
    /// Dotted path or JSONPath (`$.status.conditions[?(@.type=='Ready')].status`).
    pub field_path: String,
    /// The name under which later steps find the value: `{{ Values.<outputKey> }}`.
    pub output_key: String,
}

/// Wait a fixed time, or until a field of an object meets a condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitStep {
    /// A fixed pause, e.g. `10s`. Either this, or an object and a condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The watched object's `group/version` (`postgresql.cnpg.io/v1`), or `v1` for core objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The watched object's plural resource name, as in the API path: `clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The watched object's namespace; omitted for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The watched object's name (may be a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Dotted path or JSONPath of the field to watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_path: Option<String>,
    /// What the watched field (or object) must become for the wait to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Box<Condition>>,
    /// How long to wait for the condition (mandatory for a condition wait), e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Exactly one of: `equals`, `notEquals`, `notEmpty`, `exists`, `changed` (differs from its
/// value when the step began), `gone` (the object does not exist), `recreated` (the object
/// exists with a uid other than this one), `greaterThan`/`lessThan`/`atLeast`/`atMost` (numbers),
/// `equalsField` (another field of the same object), `allOf`/`anyOf` (of conditions). A missing
/// object or field never satisfies a comparison. `fieldPath` overrides the wait's for this
/// condition (so `allOf` can compare several fields).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The field this condition looks at, instead of the wait's `fieldPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_path: Option<String>,
    /// `true`: the object does not exist (deleted, or never created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone: Option<bool>,
    /// The object exists with a `metadata.uid` other than this one (a template, e.g. read by an earlier readField).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreated: Option<String>,
    /// The field is a number greater than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub greater_than: Option<Value>,
    /// The field is a number less than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub less_than: Option<Value>,
    /// The field is a number greater than or equal to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub at_least: Option<Value>,
    /// The field is a number less than or equal to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub at_most: Option<Value>,
    /// The field equals this other field of the same object (a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals_field: Option<String>,
    /// Every one of these conditions holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_list")]
    pub all_of: Vec<Condition>,
    /// At least one of these conditions holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_list")]
    pub any_of: Vec<Condition>,
    /// The field equals this value (strings are templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub equals: Option<Value>,
    /// The field exists and differs from this value (strings are templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub not_equals: Option<Value>,
    /// `true`: the field exists and is not empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_empty: Option<bool>,
    /// `true`: the field exists; `false`: it (or the object) does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// `true`: the field differs from its value when the step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
}

/// Render a template into an object (or one key of a ConfigMap/Secret) and server-side apply it
/// with the plan's field manager `recoverd/<namespace>/<plan>`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyStep {
    /// A whole object as a YAML template. Values printed into it never change its structure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Or: the ConfigMap/Secret key to write…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<KeyTarget>,
    /// …rendered from this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_from: Option<TemplateSource>,
    /// Take over fields another field manager owns (default false: a conflict fails the step
    /// and names the other manager; a dry run or rehearsal shows it before a live run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyTarget {
    /// `ConfigMap` or `Secret`.
    pub kind: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The key under `data` to write.
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateSource {
    /// A key of a ConfigMap in the step's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKey>,
    /// A file, relative to the plan file (file mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The template itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapKey {
    /// The ConfigMap's namespace.
    pub namespace: String,
    /// The ConfigMap's name.
    pub name: String,
    /// The key under `data` that holds the template.
    pub key: String,
}

/// Call an HTTP endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpStep {
    /// The URL (a template).
    pub url: String,
    /// Default `GET`, or `POST` when a body is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header values are templates and may use `secrets.<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A text body (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A JSON body: its strings are templates, its structure is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_opt")]
    pub json: Option<Value>,
    /// Accepted status codes. Default: any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
    /// Secrets usable in templates as `secrets.<name>`, each from an environment variable or a
    /// file; their values are redacted in run records.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Store the response body (text) in `Values.<outputKey>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// The name of an environment variable of the recoverd process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file path (e.g. a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

fn free_form_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn int_or_string_opt(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"nullable": true, "x-kubernetes-int-or-string": true})
}

fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

fn free_form_opt(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"nullable": true, "x-kubernetes-preserve-unknown-fields": true})
}

fn free_form_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"x-kubernetes-preserve-unknown-fields": true}
    })
}

macro_rules! object_ref {
    ($t:ty) => {
        impl $t {
            /// The object this step acts on.
            pub fn target(&self) -> ObjectRef {
                ObjectRef {
                    api_version: self.api_version.clone(),
                    resource: self.resource.clone(),
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                }
            }
        }
    };
}
object_ref!(PatchStep);
object_ref!(ReadFieldStep);

impl Step {
    /// The step's name; `load` fills missing ones, so this is only empty before loading.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}
