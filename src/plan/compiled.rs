//! A validated plan (pure data): what [`super::compile`] returns and the executor runs.
//!
//! Everything that can be known before a run is decided here once — durations parsed and
//! defaulted, field paths parsed, conditions and step bodies as enums, matchers compiled — so a
//! [`Plan`] cannot be invalid and the executor never re-parses or asserts what validation
//! checked. The wire format (the `RecoveryPlan` resource in [`super::model`]) is unchanged; the
//! plan as written is kept in [`Plan::resource`] for the API and for run records.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::load::Source;
use super::model::{AssertStep, ConfigMapKey, DeletePreconditions, Mode, ObjectRef, OnError, OnTimeout, RecoveryPlan};
use crate::fieldpath::FieldPath;
use crate::matcher::Matcher;

/// Per-attempt step timeout when a step sets none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole-run deadline when a plan sets none.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest any wait may be.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How many objects a selector delete may remove when the plan does not say.
pub const DEFAULT_MAX_OBJECTS: u32 = 10;
/// How many items a forEach takes when the plan does not say, and at most.
pub const DEFAULT_MAX_ITEMS: u32 = 50;
pub const MAX_ITEMS: u32 = 500;
/// How many iterations of a forEach may run at the same time.
pub const MAX_CONCURRENCY: u32 = 10;
/// The prefix of the field managers recoverd writes with: each plan writes as
/// `recoverd/<namespace>/<name>`, so two plans applying different keys of one object never
/// remove each other's (server-side apply removes fields a manager stops sending).
pub const FIELD_MANAGER: &str = "recoverd";

/// A plan that passed validation.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The plan as written.
    pub resource: RecoveryPlan,
    /// Where it was read from (file plans): its file and line; the text is not kept (empty).
    pub source: Source,
    /// Written in Nova's `recovery.elotl.co` format.
    pub nova: bool,
    /// Where file-relative references (`templateFrom.file`) are resolved.
    pub base_dir: Option<PathBuf>,
    /// `namespace/name`.
    pub key: String,
    /// The field manager of the plan's writes.
    pub field_manager: String,
    /// The object's generation, or for a plan from a file a short hash of its spec; a resumed
    /// run compares it to refuse a plan changed since.
    pub generation: String,
    pub mode: Mode,
    pub timeout: Duration,
    pub cooldown: Option<Duration>,
    /// How long an approval-gated run waits to be approved.
    pub approval_timeout: Duration,
    /// `alertMatchers`, compiled.
    pub matchers: Vec<Matcher>,
    pub steps: Vec<Step>,
    pub on_failure: Vec<Step>,
}

impl Plan {
    /// The plan's `params`.
    pub fn params(&self) -> &BTreeMap<String, Value> {
        &self.resource.spec.params
    }

    /// The params a manual trigger may set.
    pub fn overridable_params(&self) -> &[String] {
        &self.resource.spec.overridable_params
    }

    /// `alertLabels`: every pair must be on the alert.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.resource.spec.alert_labels
    }

    /// Whether an alert with these labels triggers the plan (its mode aside).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels().iter().all(|(k, v)| labels.get(k) == Some(v)) && self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The longest the `onFailure` steps can take together: their own budget, since the run's
    /// deadline may be what failed it.
    pub fn compensation_budget(&self) -> Duration {
        self.on_failure.iter().map(Step::budget).sum()
    }
}

/// One validated step.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    /// The cluster it acts on: a name in the registry, a template rendered at run time, or
    /// `None` for the default cluster.
    pub cluster: Option<String>,
    /// Runs only when this renders to true.
    pub when: Option<String>,
    /// How long one attempt may take (for waits: what they wait for, plus the step's timeout).
    pub attempt_timeout: Duration,
    pub retries: u32,
    pub on_error: OnError,
    pub kind: StepKind,
    /// Every template source of the step, to tell whether it uses a secret.
    pub templates: Vec<String>,
}

impl Step {
    /// The longest the step can take, every retry included.
    pub fn budget(&self) -> Duration {
        self.attempt_timeout * (self.retries + 1) + Duration::from_secs(1)
    }

    /// Whether the step acts on a cluster (and is recorded with one).
    pub fn uses_cluster(&self) -> bool {
        !matches!(
            self.kind,
            StepKind::Http(_) | StepKind::Assert(_) | StepKind::Approval(_) | StepKind::ForEach(_)
        )
    }

    /// The `Values` key the step produces, if any.
    pub fn output_key(&self) -> Option<&str> {
        match &self.kind {
            StepKind::ReadField(r) => Some(&r.output_key),
            StepKind::Http(h) => h.output_key.as_deref(),
            StepKind::Exec(e) => e.output_key.as_deref(),
            _ => None,
        }
    }
}

/// What a step does.
#[derive(Clone, Debug)]
pub enum StepKind {
    Patch(Patch),
    ReadField(ReadField),
    Wait(Wait),
    Apply(Apply),
    Http(Http),
    Delete(Delete),
    Assert(AssertStep),
    Exec(Exec),
    Approval(Approval),
    ForEach(Box<ForEach>),
}

impl StepKind {
    /// The step type as plan authors write it.
    pub fn type_name(&self) -> super::model::StepType {
        use super::model::StepType as T;
        match self {
            StepKind::Patch(_) => T::Patch,
            StepKind::ReadField(_) => T::ReadField,
            StepKind::Wait(_) => T::Wait,
            StepKind::Apply(_) => T::Apply,
            StepKind::Http(_) => T::Http,
            StepKind::Delete(_) => T::Delete,
            StepKind::Assert(_) => T::Assert,
            StepKind::Exec(_) => T::Exec,
            StepKind::Approval(_) => T::Approval,
            StepKind::ForEach(_) => T::ForEach,
        }
    }
}

/// Steps repeated for each item of a list.
#[derive(Clone, Debug)]
pub struct ForEach {
    pub items: Items,
    /// 1..=[`MAX_CONCURRENCY`].
    pub concurrency: u32,
    /// A longer list runs no iteration.
    pub max_items: u32,
    /// Whether iterations go on after one failed.
    pub on_error: OnError,
    /// One iteration's steps (none of them a forEach), each defaulting to the forEach's cluster.
    pub steps: Vec<Step>,
}

/// Where a forEach's items come from.
#[derive(Clone, Debug)]
pub enum Items {
    /// Written in the plan (strings are templates), or one template naming a list.
    List(Value),
    /// The names of the objects a label selector matches.
    Selector(super::model::ForEachSelector),
}

/// A pause until a person approves.
#[derive(Clone, Debug)]
pub struct Approval {
    /// A template.
    pub message: String,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
}

/// The patch a `patch` step sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub const ALL: [PatchType; 3] = [PatchType::Merge, PatchType::Json, PatchType::Strategic];

    pub fn media_type(self) -> &'static str {
        match self {
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Json => "application/json-patch+json",
            PatchType::Strategic => "application/strategic-merge-patch+json",
        }
    }

    pub fn parse(text: &str) -> Option<PatchType> {
        Self::ALL.into_iter().find(|t| t.media_type() == text)
    }
}

/// An `http` step: the method decided (`GET`, or `POST` with a body), one kind of body, each
/// secret from exactly one source.
#[derive(Clone, Debug)]
pub struct Http {
    /// A template; never starts with a value from the alert.
    pub url: String,
    pub method: reqwest::Method,
    /// Values are templates.
    pub headers: BTreeMap<String, String>,
    pub body: HttpBody,
    /// Accepted status codes; empty: any 2xx.
    pub expect_status: Vec<u16>,
    pub secrets: BTreeMap<String, SecretSource>,
    pub output_key: Option<String>,
}

#[derive(Clone, Debug)]
pub enum HttpBody {
    None,
    /// A template.
    Text(String),
    /// Its strings are templates, its structure is not.
    Json(Value),
}

/// Where an `http` step's secret is read from when the step runs.
#[derive(Clone, Debug)]
pub enum SecretSource {
    /// An environment variable of the recoverd process.
    Env(String),
    /// A file (a mounted Secret), its trailing whitespace trimmed.
    File(String),
}

/// An `exec` step: a command (at least a program) in a container of a pod.
#[derive(Clone, Debug)]
pub struct Exec {
    /// Templates, as the pod's name.
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    /// The program and its arguments, each a template.
    pub command: Vec<String>,
    pub expect_exit_code: i32,
    pub output_key: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Patch {
    pub target: ObjectRef,
    /// As written, for records.
    pub field_path: String,
    pub path: FieldPath,
    /// Its strings are templates.
    pub value: Value,
    pub patch_type: PatchType,
    pub subresource_status: bool,
}

#[derive(Clone, Debug)]
pub struct ReadField {
    pub target: ObjectRef,
    /// As written, for records and messages.
    pub field_path: String,
    pub path: FieldPath,
    pub output_key: String,
}

#[derive(Clone, Debug)]
pub enum Wait {
    /// A fixed pause.
    Pause(Duration),
    /// Watch an object until a condition holds.
    Until(Box<WaitUntil>),
}

#[derive(Clone, Debug)]
pub struct WaitUntil {
    pub target: ObjectRef,
    /// The wait's own `fieldPath` as written, for messages.
    pub field_path: Option<String>,
    pub condition: Condition,
    pub timeout: Duration,
}

/// A wait condition, each field path resolved (a condition's own, else the wait's). Values are
/// templates, rendered when the step runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    Equals(FieldPath, Value),
    NotEquals(FieldPath, Value),
    NotEmpty(FieldPath, bool),
    Exists(FieldPath, bool),
    /// Differs from its value when the step began.
    Changed(FieldPath),
    /// The object does not exist.
    Gone,
    /// The object exists with a uid other than this one (a template).
    Recreated(String),
    Compare(FieldPath, Ordering, Value),
    EqualsField(FieldPath, FieldPath),
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    GreaterThan,
    LessThan,
    AtLeast,
    AtMost,
}

impl Ordering {
    pub fn symbol(self) -> &'static str {
        match self {
            Ordering::GreaterThan => ">",
            Ordering::LessThan => "<",
            Ordering::AtLeast => ">=",
            Ordering::AtMost => "<=",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Apply {
    pub form: ApplyForm,
    /// Take over fields another field manager owns.
    pub force: bool,
}

#[derive(Clone, Debug)]
pub enum ApplyForm {
    /// A whole object as a YAML template.
    Manifest(String),
    /// One key of a ConfigMap or Secret, rendered from a template.
    Key { target: KeyTarget, source: TemplateSource },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    ConfigMap,
    Secret,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::ConfigMap => "ConfigMap",
            KeyKind::Secret => "Secret",
        }
    }
}

#[derive(Clone, Debug)]
pub struct KeyTarget {
    pub kind: KeyKind,
    pub namespace: String,
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug)]
pub enum TemplateSource {
    ConfigMap(ConfigMapKey),
    /// Relative to the plan's directory, inside it.
    File(String),
    Inline(String),
}

#[derive(Clone, Debug)]
pub struct Delete {
    pub api_version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub selection: Selection,
    pub propagation_policy: Option<Propagation>,
    pub preconditions: Option<DeletePreconditions>,
    /// Wait until every deleted object is gone, this long at most.
    pub wait_gone: Option<Duration>,
}

#[derive(Clone, Debug)]
pub enum Selection {
    /// One object (a template).
    Name(String),
    /// Every object a label selector (a template) matches, refusing more than `max_objects`.
    Selector { selector: String, max_objects: Count },
}

/// A count known when the plan is validated, or a template rendered when the step runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Count {
    Fixed(u32),
    Template(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub const ALL: [Propagation; 3] = [Propagation::Background, Propagation::Foreground, Propagation::Orphan];

    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::Background => "Background",
            Propagation::Foreground => "Foreground",
            Propagation::Orphan => "Orphan",
        }
    }

    pub fn parse(text: &str) -> Option<Propagation> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }
}
