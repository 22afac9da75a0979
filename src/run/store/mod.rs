//! The run store (I/O edge): where run records live — written before a run's first step and
//! after every step — behind one asynchronous interface, [`RunStore`], with two
//! implementations: [`sqlite::SqliteStore`] (one process: the CLI and single-replica installs)
//! and [`kube::KubeStore`] (`RecoveryRun` resources in the home cluster, for several replicas).
//!
//! Owns the claim that makes runs exactly-once: creating a run whose id already exists, or
//! while the plan has an active live run, or within the plan's cooldown, is refused atomically
//! with the creation — so two triggers racing for one incident cannot both win, in one process
//! or across replicas. Deciding *what* to claim is the caller's job (see [`super::service`]).
//!
//! "Active" is a fixed list of phases ([`ACTIVE`]); every other phase — including any added
//! later — counts as finished. Every phase in a query is written from [`Phase`], never as a
//! string literal.

pub mod kube;
pub mod sqlite;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::record::{Phase, RunMode, RunRecord, Trigger};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open the run store at {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("failed to access the run store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("failed to decode run {id} from the store: {source}")]
    Decode { id: String, source: serde_json::Error },
    #[error("the run store file {path} {what}; restart recoverd to open it again")]
    FileChanged { path: String, what: &'static str },
    #[error("invalid continue token {0:?}; pass the `continue` value of the previous page unchanged")]
    BadContinue(String),
    #[error("the run store stopped answering ({0}); restart recoverd")]
    Stopped(&'static str),
    #[error("failed to {what} in the home cluster: {source}")]
    Kube {
        what: String,
        #[source]
        source: Box<::kube::Error>,
    },
    #[error("run {id} is not this replica's to write: another replica took it over, or changed it since this one last wrote it")]
    Conflict { id: String },
    #[error(
        "run {id} no longer exists in the home cluster (deleted, or its RecoveryPlan was deleted and took it along)"
    )]
    Gone { id: String },
}

impl StoreError {
    /// The run is not this process's to write any more (another replica holds it, or it was
    /// deleted): nothing to retry, and nothing wrong with the store.
    pub fn not_ours(&self) -> bool {
        matches!(self, StoreError::Conflict { .. } | StoreError::Gone { .. })
    }

    /// A bounded reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "open",
            StoreError::Sql(e) => match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => "disk-full",
                Some(rusqlite::ErrorCode::ReadOnly) => "read-only",
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => "busy",
                Some(rusqlite::ErrorCode::SystemIoFailure) => "io",
                _ => "sql",
            },
            StoreError::Decode { .. } => "decode",
            StoreError::FileChanged { .. } => "file-changed",
            StoreError::BadContinue(_) => "bad-continue",
            StoreError::Stopped(_) => "stopped",
            StoreError::Kube { source, .. } => match source.as_ref() {
                ::kube::Error::Api(s) if s.code == 403 => "forbidden",
                ::kube::Error::Api(_) => "api",
                _ => "unreachable",
            },
            StoreError::Conflict { .. } => "conflict",
            StoreError::Gone { .. } => "gone",
        }
    }
}

/// Why a claim did not create a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A run with this id exists: the same incident (or idempotency key) was claimed before.
    SameRun { existing: String },
    /// The plan has a live run that has not finished.
    ActiveRun { existing: String },
    /// The plan's last alert-triggered live run began less than its cooldown ago.
    Cooldown { last: String },
}

impl Refusal {
    /// A bounded reason for metrics and replies.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::SameRun { .. } => "same-incident",
            Refusal::ActiveRun { .. } => "active-run",
            Refusal::Cooldown { .. } => "cooldown",
        }
    }

    pub fn existing(&self) -> &str {
        match self {
            Refusal::SameRun { existing } | Refusal::ActiveRun { existing } => existing,
            Refusal::Cooldown { last } => last,
        }
    }
}

/// What a claim must respect besides the run id. Both rules are about live runs only: a dry
/// run changes nothing, so it never holds the plan's active-run slot or starts its cooldown.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClaimRules {
    pub one_active_per_plan: bool,
    pub cooldown: Option<Duration>,
}

/// Phases of a run that has not finished. Every other phase is finished.
pub const ACTIVE: &[Phase] = &[
    Phase::Pending,
    Phase::WaitingForApproval,
    Phase::Running,
    Phase::Interrupted,
];

/// The phases the active-runs gauge counts: about to run, running, or waiting for approval (an
/// Interrupted run holds its plan but runs nothing until resumed).
pub(crate) const COUNTED_ACTIVE: &[Phase] = &[Phase::Pending, Phase::Running, Phase::WaitingForApproval];

/// The phases of runs that were executing when recoverd stopped.
pub(crate) const EXECUTING: &[Phase] = &[Phase::Pending, Phase::Running];

/// How many finished runs to keep, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_runs: u64,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_runs: 10_000,
            max_age: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// What a list of runs shows of each: enough to pick one, not its steps. The full record is
/// `GET /api/v1/runs/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub plan: String,
    pub trigger: Trigger,
    pub mode: RunMode,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The first line of the run's error, at most [`SUMMARY_ERROR_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub const SUMMARY_ERROR_CHARS: usize = 300;

impl RunSummary {
    pub fn of(r: &RunRecord) -> Self {
        RunSummary {
            id: r.id.clone(),
            plan: r.plan.clone(),
            trigger: r.trigger.clone(),
            mode: r.mode,
            phase: r.phase,
            created_at: r.created_at.clone(),
            started_at: r.started_at.clone(),
            finished_at: r.finished_at.clone(),
            duration_ms: r.duration_ms,
            error: r.error.as_deref().map(|e| {
                let line = e.lines().next().unwrap_or_default();
                if line.chars().count() > SUMMARY_ERROR_CHARS {
                    let cut: String = line.chars().take(SUMMARY_ERROR_CHARS).collect();
                    format!("{cut}…")
                } else {
                    line.to_string()
                }
            }),
        }
    }
}

/// One page of runs, newest first, and the token for the next page.
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    pub runs: Vec<RunSummary>,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A decision about a run that another replica executes, handed to that replica through the
/// store (the run's Lease), never over the network with the caller's token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relayed {
    /// `approve` or `cancel`.
    pub action: RelayedAction,
    /// The approval step (and its `startedAt`) an approval answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Who decided, as the receiving replica recorded it (name and token hash).
    pub by: String,
    /// Unique per decision: a relayed decision is acted on once.
    pub key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RelayedAction {
    Approve,
    Cancel,
}

/// Where run records live. Every call is asynchronous and safe to make from many tasks at once;
/// none blocks a runtime worker thread.
#[async_trait::async_trait]
pub trait RunStore: Send + Sync {
    /// Whether the run `id` exists: the cheap check that lets a resent alert be answered
    /// before a record is built for it.
    async fn exists(&self, id: &str) -> Result<bool, StoreError>;
    /// Creates `record` unless the rules refuse it, atomically with the checks.
    async fn claim(&self, record: &RunRecord, rules: ClaimRules) -> Result<Result<(), Refusal>, StoreError>;
    /// Writes the record only if the run is still in one of `from` phases, so that two callers
    /// racing (a double approve, an approve and a resolution) cannot both win.
    async fn transition(&self, record: &RunRecord, from: &[Phase]) -> Result<bool, StoreError>;
    /// Writes the record's current state.
    async fn save(&self, record: &RunRecord) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// Up to `limit` full records, newest first, optionally of one plan (`namespace/name`).
    async fn list(&self, plan: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError>;
    /// One page of run summaries, newest first, optionally of one plan; `after` is the
    /// `continue` token of the previous page.
    async fn page(&self, plan: Option<&str>, limit: usize, after: Option<&str>) -> Result<Page, StoreError>;
    /// Every run in one phase.
    async fn in_phase(&self, phase: Phase) -> Result<Vec<RunRecord>, StoreError>;
    /// Runs waiting for approval that a resolved alert with this fingerprint may cancel.
    async fn waiting_for_approval(&self, fingerprint: &str) -> Result<Vec<RunRecord>, StoreError>;
    /// At start-up: every run this process was executing when it stopped is now `Interrupted`.
    /// Returns their ids. (With several replicas, runs are taken over through their Leases
    /// instead; see [`kube::KubeStore`].)
    async fn mark_interrupted(&self) -> Result<Vec<String>, StoreError>;
    /// How many runs are executing or waiting.
    async fn active_count(&self) -> Result<i64, StoreError>;
    /// Deletes finished runs beyond the retention; unfinished runs are never deleted. Returns
    /// how many went.
    async fn prune(&self, keep: Retention) -> Result<usize, StoreError>;
    /// Fails when the store cannot be written now.
    async fn check_health(&self) -> Result<(), StoreError>;
    /// Takes the right to execute run `id` in this process: `Some` with a token cancelled if
    /// the right is lost later (the run must stop before its next step), `None` when another
    /// replica holds it. A single-process store always grants it.
    async fn acquire(&self, _id: &str) -> Result<Option<tokio_util::sync::CancellationToken>, StoreError> {
        Ok(Some(Default::default()))
    }
    /// Notes that the trigger of run `id` was delivered again (and deduplicated): the
    /// Kubernetes store records it as an Event on the run.
    fn duplicate(&self, _id: &str, _trigger: &str) {}
    /// Hands `decision` about run `id` to the replica executing it, when that is another
    /// replica than this one: returns its name. `None`: no other replica executes it (decide
    /// here). A single-process store never relays.
    async fn relay(&self, _id: &str, _decision: &Relayed) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// The decisions other replicas relayed to this one, for runs it executes (taken once).
    fn relayed(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(String, Relayed)>> {
        None
    }
    /// This replica's name, when the store is shared by several.
    fn replica(&self) -> Option<String> {
        None
    }
    /// Gives up the right to execute run `id` (its run ended here).
    async fn release(&self, _id: &str) {}
    /// Runs another replica was executing when it stopped, that this one may take over. Call
    /// it periodically. A single-process store has none (see `mark_interrupted`).
    async fn orphaned(&self) -> Result<Vec<RunRecord>, StoreError> {
        Ok(Vec::new())
    }
}
