//! The run store (I/O edge): run records in an embedded SQLite database (WAL), written before a
//! run's first step and after every step.
//!
//! Owns the claim that makes runs exactly-once: inserting a run whose id already exists, or
//! while the plan has an active live run, or within the plan's cooldown, is refused in the same
//! transaction that would have created it — so two triggers racing for one incident cannot both
//! win. Deciding *what* to claim is the caller's job (see [`super::service`]).
//!
//! Every query a hot path makes is answered from an index: the active-run check and the active
//! count read only unfinished runs (`runs_phase`), lists page through `runs_created` and read a
//! small summary, not the whole record. Finished runs are pruned by [`Store::prune`]. The store
//! also notices when it cannot be written or when its file was deleted or replaced
//! ([`Store::check_health`]), so `/readyz` can say so.
//!
//! "Active" is a fixed list of phases ([`ACTIVE`]); every other phase — including any added
//! later — counts as finished. Every phase in a query is written from [`Phase`], never as a
//! string literal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::record::{Phase, RunMode, RunRecord, Trigger};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open the run store at {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("failed to access the run store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("failed to decode run {id} from the store: {source}")]
    Decode {
        id: String,
        source: serde_json::Error,
    },
    #[error("the run store file {path} {what}; restart recoverd to open it again")]
    FileChanged { path: String, what: &'static str },
    #[error(
        "invalid continue token {0:?}; pass the `continue` value of the previous page unchanged"
    )]
    BadContinue(String),
}

impl StoreError {
    /// A bounded reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "open",
            StoreError::Sql(e) => match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => "disk-full",
                Some(rusqlite::ErrorCode::ReadOnly) => "read-only",
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    "busy"
                }
                Some(rusqlite::ErrorCode::SystemIoFailure) => "io",
                _ => "sql",
            },
            StoreError::Decode { .. } => "decode",
            StoreError::FileChanged { .. } => "file-changed",
            StoreError::BadContinue(_) => "bad-continue",
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
const COUNTED_ACTIVE: &[Phase] = &[Phase::Pending, Phase::Running, Phase::WaitingForApproval];

/// The phases of runs that were executing when recoverd stopped.
const EXECUTING: &[Phase] = &[Phase::Pending, Phase::Running];

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

/// The identity of the store's file, to notice it being deleted or replaced underneath us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

pub struct Store {
    conn: Connection,
    /// The file and its identity at open; `None` for an in-memory store.
    file: Option<(PathBuf, FileId)>,
}

fn phase_name(p: Phase) -> &'static str {
    p.as_str()
}

fn mode_name(m: RunMode) -> &'static str {
    match m {
        RunMode::Live => "live",
        RunMode::DryRun => "dryRun",
    }
}

/// Phases as an SQL list: `'Pending','Running'`.
fn sql_list(phases: &[Phase]) -> String {
    phases
        .iter()
        .map(|p| format!("'{}'", p.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

fn active_list() -> String {
    sql_list(ACTIVE)
}

/// The plan's newest unfinished live run (the one-active-run rule).
fn active_run_sql() -> String {
    format!(
        "SELECT id FROM runs WHERE phase IN ({}) AND plan = ?1 AND mode = 'live'
         ORDER BY created_ms DESC LIMIT 1",
        active_list()
    )
}

/// The plan's newest alert-triggered live run within the cooldown.
const COOLDOWN_SQL: &str = "SELECT id FROM runs WHERE plan = ?1 AND created_ms > ?2
       AND trigger_kind = 'alert' AND mode = 'live'
     ORDER BY created_ms DESC LIMIT 1";

const PAGE_SQL: &str = "SELECT id, created_ms, COALESCE(summary, record) FROM runs
     WHERE (?1 IS NULL OR plan = ?1)
       AND (created_ms < ?2 OR (created_ms = ?2 AND id < ?3))
     ORDER BY created_ms DESC, id DESC LIMIT ?4";

fn active_count_sql() -> String {
    format!(
        "SELECT COUNT(*) FROM runs WHERE phase IN ({})",
        sql_list(COUNTED_ACTIVE)
    )
}

fn waiting_sql() -> String {
    format!(
        "SELECT record FROM runs WHERE fingerprint = ?1 AND phase = '{}'",
        Phase::WaitingForApproval.as_str()
    )
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize")
}

impl Store {
    /// Opens (creating if needed) the store at `path`; `:memory:` for a throwaway store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let open_err = |source: rusqlite::Error| {
            let busy = matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            );
            let path = if busy {
                format!("{shown} (another recoverd is using it; one process per store)")
            } else {
                shown.clone()
            };
            StoreError::Open { path, source }
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // One process per store: a second recoverd on the same file would mark the first one's
        // live runs Interrupted and resume them twice. The exclusive lock is taken by the first
        // write below and held until the connection closes.
        conn.busy_timeout(Duration::from_millis(500))
            .map_err(open_err)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (
                id TEXT PRIMARY KEY,
                plan TEXT NOT NULL,
                phase TEXT NOT NULL,
                trigger_kind TEXT NOT NULL,
                fingerprint TEXT,
                created_ms INTEGER NOT NULL,
                record TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS probe (k INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
            BEGIN IMMEDIATE; COMMIT;",
        )
        .map_err(open_err)?;
        // Stores written by older versions lack these columns: add them, filled from the records.
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('runs')")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<_, _>>()
            })
            .map_err(open_err)?;
        if !columns.iter().any(|c| c == "mode") {
            conn.execute_batch(
                "ALTER TABLE runs ADD COLUMN mode TEXT NOT NULL DEFAULT 'live';
                 UPDATE runs SET mode = COALESCE(json_extract(record, '$.mode'), 'live');",
            )
            .map_err(open_err)?;
        }
        if !columns.iter().any(|c| c == "summary") {
            // NULL until the run is next written; lists read the record instead.
            conn.execute_batch("ALTER TABLE runs ADD COLUMN summary TEXT;")
                .map_err(open_err)?;
        }
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS runs_plan ON runs (plan, created_ms);
             CREATE INDEX IF NOT EXISTS runs_fingerprint ON runs (fingerprint, phase);
             CREATE INDEX IF NOT EXISTS runs_phase ON runs (phase, plan, mode, created_ms);
             CREATE INDEX IF NOT EXISTS runs_created ON runs (created_ms, id);",
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let file = if shown == ":memory:" {
            None
        } else {
            file_id(path).ok().map(|id| (path.to_path_buf(), id))
        };
        Ok(Store { conn, file })
    }

    /// Whether the run `id` exists: the cheap check that lets a resent alert be answered
    /// before a record is built for it.
    pub fn exists(&self, id: &str) -> Result<bool, StoreError> {
        // An answer from a deleted file would be a promise the store cannot keep.
        self.check_file()?;
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
            .exists([id])?)
    }

    /// Creates `record` unless the rules refuse it; both in one immediate transaction.
    pub fn claim(
        &mut self,
        record: &RunRecord,
        rules: ClaimRules,
    ) -> Result<Result<(), Refusal>, StoreError> {
        // A run claimed in a deleted or replaced file is lost at the next start: refuse (503,
        // Alertmanager retries) rather than answer 202 for it.
        self.check_file()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<String> = tx
            .query_row("SELECT id FROM runs WHERE id = ?1", [&record.id], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(existing) = exists {
            return Ok(Err(Refusal::SameRun { existing }));
        }
        let live = record.mode == RunMode::Live;
        if rules.one_active_per_plan && live {
            let active: Option<String> = tx
                .query_row(&active_run_sql(), [&record.plan], |r| r.get(0))
                .optional()?;
            if let Some(existing) = active {
                return Ok(Err(Refusal::ActiveRun { existing }));
            }
        }
        if let (Some(cooldown), true) = (rules.cooldown, live) {
            let since = now_ms() - cooldown.as_millis() as i64;
            let last: Option<String> = tx
                .query_row(COOLDOWN_SQL, params![record.plan, since], |r| r.get(0))
                .optional()?;
            if let Some(last) = last {
                return Ok(Err(Refusal::Cooldown { last }));
            }
        }
        tx.execute(
            "INSERT INTO runs (id, plan, phase, trigger_kind, fingerprint, created_ms, record, mode, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                record.id,
                record.plan,
                phase_name(record.phase),
                record.trigger.kind.as_str(),
                record.trigger.fingerprint,
                now_ms(),
                to_json(record),
                mode_name(record.mode),
                to_json(&RunSummary::of(record)),
            ],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Writes the record only if the run is still in one of `from` phases — one statement, so
    /// two callers racing (a double approve, an approve and a resolution) cannot both win.
    pub fn transition(&self, record: &RunRecord, from: &[Phase]) -> Result<bool, StoreError> {
        self.check_file()?;
        let from: Vec<String> = from
            .iter()
            .map(|p| format!("'{}'", phase_name(*p)))
            .collect();
        let n = self.conn.execute(
            &format!(
                "UPDATE runs SET phase = ?2, record = ?3, summary = ?4 WHERE id = ?1 AND phase IN ({})",
                from.join(",")
            ),
            params![
                record.id,
                phase_name(record.phase),
                to_json(record),
                to_json(&RunSummary::of(record)),
            ],
        )?;
        Ok(n == 1)
    }

    /// Writes the record's current state.
    pub fn save(&self, record: &RunRecord) -> Result<(), StoreError> {
        self.check_file()?;
        self.conn
            .prepare_cached("UPDATE runs SET phase = ?2, record = ?3, summary = ?4 WHERE id = ?1")?
            .execute(params![
                record.id,
                phase_name(record.phase),
                to_json(record),
                to_json(&RunSummary::of(record)),
            ])?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT record FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|source| StoreError::Decode {
                id: id.into(),
                source,
            })
        })
        .transpose()
    }

    /// Runs, newest first, optionally of one plan (`namespace/name`).
    pub fn list(&self, plan: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, record FROM runs WHERE (?1 IS NULL OR plan = ?1) ORDER BY created_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![plan, limit as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row?;
            out.push(
                serde_json::from_str(&text).map_err(|source| StoreError::Decode { id, source })?,
            );
        }
        Ok(out)
    }

    /// One page of run summaries, newest first, optionally of one plan; `after` is the
    /// `continue` token of the previous page.
    pub fn page(
        &self,
        plan: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page, StoreError> {
        let (after_ms, after_id) = match after {
            None => (i64::MAX, String::new()),
            Some(token) => decode_continue(token)?,
        };
        let mut stmt = self.conn.prepare_cached(PAGE_SQL)?;
        let rows = stmt.query_map(params![plan, after_ms, after_id, limit as i64 + 1], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut runs = Vec::new();
        let mut last = None;
        let mut more = false;
        for row in rows {
            let (id, ms, text) = row?;
            if runs.len() == limit {
                more = true;
                break;
            }
            let summary: RunSummary =
                serde_json::from_str(&text).map_err(|source| StoreError::Decode {
                    id: id.clone(),
                    source,
                })?;
            runs.push(summary);
            last = Some((ms, id));
        }
        let next = match (more, last) {
            (true, Some((ms, id))) => Some(encode_continue(ms, &id)),
            _ => None,
        };
        Ok(Page { runs, next })
    }

    /// Every run in one phase.
    pub fn in_phase(&self, phase: Phase) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, record FROM runs WHERE phase = ?1")?;
        let rows = stmt.query_map([phase_name(phase)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row?;
            out.push(
                serde_json::from_str(&text).map_err(|source| StoreError::Decode { id, source })?,
            );
        }
        Ok(out)
    }

    /// Runs waiting for approval that a resolved alert with this fingerprint may cancel.
    pub fn waiting_for_approval(&self, fingerprint: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&waiting_sql())?;
        let rows = stmt.query_map([fingerprint], |r| r.get::<_, String>(0))?;
        rows.map(|t| {
            let t = t?;
            serde_json::from_str(&t).map_err(|source| StoreError::Decode {
                id: fingerprint.into(),
                source,
            })
        })
        .collect()
    }

    /// At start-up: every run that was executing when recoverd stopped is now `Interrupted`
    /// (its running step is recorded as it was). Returns their ids.
    pub fn mark_interrupted(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, record FROM runs WHERE phase IN ({})",
            sql_list(EXECUTING)
        ))?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut ids = Vec::new();
        for (id, text) in rows {
            let mut record: RunRecord = match serde_json::from_str(&text) {
                Ok(r) => r,
                Err(e) => {
                    // One unreadable record must not keep recoverd from starting.
                    tracing::error!(run = %id, error = %e, "cannot read this run's record; left as it is");
                    continue;
                }
            };
            record.phase = Phase::Interrupted;
            record.error = Some("recoverd stopped while this run was unfinished; resume it to continue from its first unfinished step".into());
            self.save(&record)?;
            ids.push(record.id);
        }
        Ok(ids)
    }

    /// How many runs are executing or waiting — read from the phase index, never the table.
    pub fn active_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&active_count_sql())?
            .query_row([], |r| r.get(0))?)
    }

    /// Deletes finished runs beyond the retention: older than `max_age`, or beyond the newest
    /// `max_runs` finished ones. Unfinished runs are never deleted. Returns how many went.
    pub fn prune(&self, keep: Retention) -> Result<usize, StoreError> {
        let cutoff = now_ms() - keep.max_age.as_millis().min(i64::MAX as u128) as i64;
        let finished = format!("phase NOT IN ({})", active_list());
        let old = self.conn.execute(
            &format!("DELETE FROM runs WHERE {finished} AND created_ms < ?1"),
            [cutoff],
        )?;
        let over = self.conn.execute(
            &format!(
                "DELETE FROM runs WHERE id IN (
                   SELECT id FROM runs WHERE {finished}
                   ORDER BY created_ms DESC, id DESC LIMIT -1 OFFSET ?1)"
            ),
            [keep.max_runs.min(i64::MAX as u64) as i64],
        )?;
        Ok(old + over)
    }

    /// Fails when the store cannot be written now, or its file was deleted or replaced since
    /// it was opened (the runs would be written where no one can read them).
    pub fn check_health(&self) -> Result<(), StoreError> {
        self.check_file()?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO probe (k, at_ms) VALUES (1, ?1)")?
            .execute([now_ms()])?;
        Ok(())
    }

    fn check_file(&self) -> Result<(), StoreError> {
        let Some((path, id)) = &self.file else {
            return Ok(());
        };
        let what = match file_id(path) {
            Ok(now) if now == *id => return Ok(()),
            Ok(_) => "was replaced by another file",
            Err(_) => "was deleted",
        };
        Err(StoreError::FileChanged {
            path: path.display().to_string(),
            what,
        })
    }
}

fn encode_continue(ms: i64, id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{ms}/{id}"))
}

fn decode_continue(token: &str) -> Result<(i64, String), StoreError> {
    use base64::Engine;
    let bad = || StoreError::BadContinue(token.chars().take(64).collect());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ms, id) = text.split_once('/').ok_or_else(bad)?;
    Ok((ms.parse().map_err(|_| bad())?, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Trigger;

    fn record(id: &str, plan: &str, kind: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            plan: plan.into(),
            trigger: Trigger {
                kind: serde_json::from_value(serde_json::json!(kind)).unwrap(),
                fingerprint: Some("fp".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("runs.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn the_same_run_id_is_claimed_once() {
        let (_d, mut s) = store();
        assert_eq!(
            s.claim(&record("r1", "ns/p", "alert"), ClaimRules::default())
                .unwrap(),
            Ok(())
        );
        assert_eq!(
            s.claim(&record("r1", "ns/p", "alert"), ClaimRules::default())
                .unwrap(),
            Err(Refusal::SameRun {
                existing: "r1".into()
            })
        );
    }

    #[test]
    fn a_plan_with_an_active_run_refuses_another_until_it_finishes() {
        let (_d, mut s) = store();
        let rules = ClaimRules {
            one_active_per_plan: true,
            cooldown: None,
        };
        let mut first = record("r1", "ns/p", "alert");
        s.claim(&first, rules).unwrap().unwrap();
        assert_eq!(
            s.claim(&record("r2", "ns/p", "alert"), rules).unwrap(),
            Err(Refusal::ActiveRun {
                existing: "r1".into()
            })
        );
        assert_eq!(
            s.claim(&record("r3", "ns/other", "alert"), rules).unwrap(),
            Ok(())
        );
        first.phase = Phase::Succeeded;
        s.save(&first).unwrap();
        assert_eq!(
            s.claim(&record("r2", "ns/p", "alert"), rules).unwrap(),
            Ok(())
        );
    }

    #[test]
    fn cooldown_refuses_alert_runs_but_not_manual_ones() {
        let (_d, mut s) = store();
        let rules = ClaimRules {
            one_active_per_plan: false,
            cooldown: Some(Duration::from_secs(600)),
        };
        s.claim(&record("r1", "ns/p", "alert"), rules)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.claim(&record("r2", "ns/p", "alert"), rules).unwrap(),
            Err(Refusal::Cooldown { last: "r1".into() })
        );
        let manual = ClaimRules {
            one_active_per_plan: false,
            cooldown: None,
        };
        assert_eq!(
            s.claim(&record("r3", "ns/p", "manual"), manual).unwrap(),
            Ok(())
        );
    }

    #[test]
    fn a_second_process_cannot_open_a_store_in_use() {
        let (dir, _first) = store();
        let err = Store::open(&dir.path().join("runs.db"))
            .err()
            .expect("the store is in use");
        assert!(
            err.to_string().contains("another recoverd is using it"),
            "{err}"
        );
    }

    #[test]
    fn a_transition_happens_only_from_the_expected_phases() {
        let (_d, mut s) = store();
        let mut r = record("r1", "ns/p", "alert");
        r.phase = Phase::WaitingForApproval;
        s.claim(&r, ClaimRules::default()).unwrap().unwrap();
        r.phase = Phase::Pending;
        assert!(s.transition(&r, &[Phase::WaitingForApproval]).unwrap());
        assert!(
            !s.transition(&r, &[Phase::WaitingForApproval]).unwrap(),
            "a second approval loses"
        );
        assert_eq!(s.get("r1").unwrap().unwrap().phase, Phase::Pending);
    }

    #[test]
    fn unfinished_runs_become_interrupted_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        {
            let mut s = Store::open(&path).unwrap();
            let mut r = record("r1", "ns/p", "alert");
            r.phase = Phase::Running;
            s.claim(&r, ClaimRules::default()).unwrap().unwrap();
            let mut done = record("r2", "ns/q", "alert");
            done.phase = Phase::Succeeded;
            s.claim(&done, ClaimRules::default()).unwrap().unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.mark_interrupted().unwrap(), ["r1"]);
        assert_eq!(s.get("r1").unwrap().unwrap().phase, Phase::Interrupted);
        assert_eq!(s.get("r2").unwrap().unwrap().phase, Phase::Succeeded);
        assert_eq!(s.list(None, 10).unwrap().len(), 2);
        assert_eq!(s.list(Some("ns/q"), 10).unwrap()[0].id, "r2");
    }

    fn dry(id: &str, plan: &str, kind: &str) -> RunRecord {
        let mut r = record(id, plan, kind);
        r.mode = RunMode::DryRun;
        r
    }

    #[test]
    fn a_dry_run_never_holds_the_active_slot_or_the_cooldown() {
        let (_d, mut s) = store();
        let rules = ClaimRules {
            one_active_per_plan: true,
            cooldown: Some(Duration::from_secs(600)),
        };
        let mut crashed = dry("d1", "ns/p", "alert");
        s.claim(&crashed, rules).unwrap().unwrap();
        crashed.phase = Phase::Interrupted;
        s.save(&crashed).unwrap();
        s.claim(&dry("d2", "ns/p", "manual"), rules)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.claim(&record("r1", "ns/p", "alert"), rules).unwrap(),
            Ok(()),
            "a live run starts beside a running and a crashed dry run"
        );
        assert_eq!(
            s.claim(&dry("d3", "ns/p", "manual"), rules).unwrap(),
            Ok(()),
            "a dry run is not refused by the live run either"
        );
    }

    #[test]
    fn pages_of_summaries_cover_every_run_once_in_order() {
        let (_d, mut s) = store();
        for i in 0..7 {
            s.claim(
                &record(&format!("r{i}"), "ns/p", "alert"),
                ClaimRules::default(),
            )
            .unwrap()
            .unwrap();
        }
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = s.page(None, 3, token.as_deref()).unwrap();
            assert!(page.runs.len() <= 3);
            seen.extend(page.runs.into_iter().map(|r| r.id));
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 7, "{seen:?}");
        assert!(matches!(
            s.page(None, 3, Some("not a token")),
            Err(StoreError::BadContinue(_))
        ));
    }

    #[test]
    fn pruning_keeps_unfinished_runs_and_the_newest_finished_ones() {
        let (_d, mut s) = store();
        for i in 0..5 {
            let mut r = record(&format!("f{i}"), "ns/p", "alert");
            s.claim(&r, ClaimRules::default()).unwrap().unwrap();
            r.phase = Phase::Failed;
            s.save(&r).unwrap();
        }
        let mut waiting = record("w", "ns/p", "alert");
        waiting.phase = Phase::WaitingForApproval;
        s.claim(&waiting, ClaimRules::default()).unwrap().unwrap();
        let keep = Retention {
            max_runs: 2,
            max_age: Duration::from_secs(3600),
        };
        assert_eq!(s.prune(keep).unwrap(), 3);
        assert!(s.get("w").unwrap().is_some());
        assert_eq!(s.page(None, 10, None).unwrap().runs.len(), 3);
        let none = Retention {
            max_runs: 100,
            max_age: Duration::ZERO,
        };
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.prune(none).unwrap(), 2, "age alone prunes finished runs");
        assert!(s.get("w").unwrap().is_some());
    }

    #[test]
    fn a_deleted_or_replaced_store_file_is_noticed() {
        let (dir, s) = store();
        s.check_health().unwrap();
        let path = dir.path().join("runs.db");
        std::fs::remove_file(&path).unwrap();
        let err = s.check_health().unwrap_err();
        assert!(err.to_string().contains("was deleted"), "{err}");
        std::fs::write(&path, b"").unwrap();
        let err = s.save(&record("x", "ns/p", "alert")).unwrap_err();
        assert!(err.to_string().contains("was replaced"), "{err}");
    }

    /// Each query a hot path makes (webhook claim, active count, approval expiry, resolutions,
    /// lists) is answered from an index, never by reading every run: with a million past runs
    /// they must cost what they cost with none.
    #[test]
    fn the_hot_path_queries_are_answered_from_indexes() {
        let (_d, s) = store();
        let queries = [
            ("exists", "SELECT 1 FROM runs WHERE id = ?1".to_string()),
            ("active run", active_run_sql()),
            ("cooldown", COOLDOWN_SQL.to_string()),
            ("active count", active_count_sql()),
            ("waiting", waiting_sql()),
            (
                "in phase",
                "SELECT id, record FROM runs WHERE phase = ?1".to_string(),
            ),
            ("page", PAGE_SQL.to_string()),
            // The control: a query no index serves must be caught.
            (
                "control",
                "SELECT id FROM runs WHERE trigger_kind = ?1".to_string(),
            ),
        ];
        let mut full_scans = Vec::new();
        for (what, sql) in queries {
            let mut stmt = s
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let n = stmt.parameter_count();
            let args: Vec<rusqlite::types::Value> =
                (0..n).map(|_| rusqlite::types::Value::Null).collect();
            let details: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // "SCAN runs" without an index reads the table; "SEARCH … USING INDEX" or an
            // index-ordered scan stopped by LIMIT does not.
            if details.iter().any(|d| d == "SCAN runs") {
                full_scans.push(format!("{what}: {details:?}"));
            }
        }
        assert_eq!(full_scans.len(), 1, "{full_scans:#?}");
        assert!(full_scans[0].starts_with("control"), "{full_scans:#?}");
    }
}
