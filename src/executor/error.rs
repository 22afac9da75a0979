//! Why a step failed, with what an operator needs to act, and whether trying again can help.

use std::time::Duration;

use crate::cluster::ClusterError;
use crate::duration;
use crate::fieldpath::FieldPathError;
use crate::template::TemplateError;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    FieldPath(#[from] FieldPathError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("failed to {action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        source: kube::Error,
    },
    #[error("failed to evaluate the condition: {reason}")]
    Condition { reason: String },
    #[error("`{command}` in {object} exited with {}, expected {expected}{}", code.map_or("no exit code".to_string(), |c| c.to_string()), if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    ExecFailed {
        object: String,
        command: String,
        code: Option<i32>,
        expected: i32,
        stderr: String,
    },
    #[error("assertion failed: {message}")]
    Assertion { message: String },
    #[error("not approved within {}: {message}", duration::format(*after))]
    NotApproved { after: Duration, message: String },
    #[error("the step needs an approval, and this command cannot wait for one: {message} (give --approve to approve it as you run the plan, or run it under `recoverd serve`)")]
    ApprovalUnavailable { message: String },
    #[error("refused to delete {object}: {detail}")]
    DeleteRefused { object: String, detail: String },
    #[error("the write to {object} did not take effect: {detail}")]
    NotApplied { object: String, detail: String },
    #[error("failed to apply {object}: {detail}")]
    Conflict { object: String, detail: String },
    #[error("failed to find {object}: it does not exist")]
    NotFound { object: String },
    #[error("{object}: the kind is namespaced and the step names no `namespace`; give one (a step never acts in whatever namespace a kubeconfig defaults to)")]
    NoNamespace { object: String },
    #[error("failed to read {path} of {object}: the field is missing")]
    FieldMissing { object: String, path: String },
    #[error("failed to read {path} of {object}: the field is empty")]
    FieldEmpty { object: String, path: String },
    #[error("attempt timed out after {}", duration::format(*after))]
    AttemptTimeout { after: Duration },
    #[error("timed out after {} waiting for {condition} on {object} (last value: {last}){}", duration::format(*after), last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    WaitTimeout {
        after: Duration,
        condition: String,
        object: String,
        last: String,
        last_error: Option<String>,
    },
    #[error("failed to render the manifest: {reason}")]
    Manifest { reason: String },
    #[error("failed to read secret {name:?}: {reason}")]
    Secret { name: String, reason: String },
    #[error("failed to call {url}: {reason}")]
    Http {
        url: String,
        reason: String,
        transient: bool,
    },
    #[error("{url} answered {status}, expected {expected}: {body}")]
    HttpStatus {
        url: String,
        status: u16,
        expected: String,
        body: String,
    },
    #[error("the run's deadline of {} passed", duration::format(*after))]
    RunDeadline { after: Duration },
    #[error("the run was cancelled")]
    Cancelled,
    #[error(
        "recoverd stopped the step (a shutdown, or its record could not be written); resume the run to start it again"
    )]
    Interrupted,
    #[error("rendered {what} {value:?} of {object} is not a Kubernetes name (lower-case letters, digits, '-', '.')")]
    BadName {
        what: &'static str,
        value: String,
        object: String,
    },
    #[error("invalid duration: {0}")]
    Duration(#[from] crate::duration::DurationError),
    #[error("failed to find the items to repeat over: {detail}")]
    Items { detail: String },
    #[error("{count} items to repeat over, more than maxItems {max}; no iteration ran (narrow the selector or the list, or raise maxItems, at most 500)")]
    TooManyItems { count: usize, max: u32 },
    #[error("{failed} of {total} iterations failed: {first}")]
    IterationsFailed { failed: usize, total: usize, first: String },
}

impl StepError {
    /// Whether another attempt may succeed: timeouts, 429, 5xx, lost connections.
    pub fn is_transient(&self) -> bool {
        match self {
            StepError::Kube { source, .. } => kube_transient(source),
            StepError::Cluster(ClusterError::Discovery { source, .. }) => kube_transient(source),
            StepError::AttemptTimeout { .. } => true,
            StepError::Http { transient, .. } => *transient,
            StepError::HttpStatus { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// A bounded category for metrics and records.
    /// Whether this error stops the run whatever the step's `onError` says: a cancel, the
    /// run's deadline, a shutdown, an approval nobody gave. (No iteration of a forEach starts
    /// after one either.)
    pub fn stops_run(&self) -> bool {
        matches!(
            self,
            StepError::Cancelled
                | StepError::RunDeadline { .. }
                | StepError::Interrupted
                | StepError::NotApproved { .. }
                | StepError::ApprovalUnavailable { .. }
        )
    }

    pub fn reason(&self) -> &'static str {
        match self {
            StepError::Template(_) => "template",
            StepError::FieldPath(_) => "field-path",
            StepError::Cluster(ClusterError::Discovery { source, .. }) if kube_transient(source) => "unreachable",
            StepError::Cluster(_) => "cluster",
            StepError::Kube {
                source: kube::Error::Api(s),
                ..
            } => match s.code {
                409 => "conflict",
                422 => "invalid",
                403 | 401 => "forbidden",
                429 => "throttled",
                500..=599 => "server-error",
                _ => "api-error",
            },
            StepError::Kube { .. } => "unreachable",
            StepError::NotFound { .. } => "not-found",
            StepError::NotApplied { .. } => "not-applied",
            StepError::NoNamespace { .. } => "no-namespace",
            StepError::Condition { .. } => "condition",
            StepError::Assertion { .. } => "assertion",
            StepError::NotApproved { .. } => "not-approved",
            StepError::ApprovalUnavailable { .. } => "approval-unavailable",
            StepError::ExecFailed { .. } => "exec-failed",
            StepError::DeleteRefused { .. } => "delete-refused",
            StepError::Conflict { .. } => "conflict",
            StepError::FieldMissing { .. } => "field-missing",
            StepError::FieldEmpty { .. } => "field-empty",
            StepError::AttemptTimeout { .. } => "timeout",
            StepError::WaitTimeout { .. } => "wait-timeout",
            StepError::Manifest { .. } => "manifest",
            StepError::Secret { .. } => "secret",
            StepError::Http { .. } => "http",
            StepError::HttpStatus { .. } => "http-status",
            StepError::RunDeadline { .. } => "run-deadline",
            StepError::Cancelled => "cancelled",
            StepError::Interrupted => "interrupted",
            StepError::BadName { .. } => "bad-name",
            StepError::Duration(_) => "duration",
            StepError::Items { .. } => "for-each-items",
            StepError::TooManyItems { .. } => "too-many-items",
            StepError::IterationsFailed { .. } => "iterations-failed",
        }
    }
}

pub fn kube_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}
