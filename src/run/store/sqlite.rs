//! The SQLite run store (I/O edge): run records in an embedded SQLite database (WAL), for one
//! process — the CLI and single-replica installs.
//!
//! The connection lives on a thread of its own ([`SqliteStore`]); callers send it jobs and await
//! the answer, so no SQLite call ever runs on a runtime worker thread and no lock is held across
//! requests. A job that panics is answered with an error and leaves the thread (and the
//! connection, whose open transaction rolls back) serving the next one.
//!
//! Every query a hot path makes is answered from an index, named in the query itself so that
//! the planner cannot prefer another (with a million finished runs of one plan, an index that
//! serves `ORDER BY created_ms` would otherwise read all of them to find the active one): the
//! active-run check and the active count read only unfinished runs (`runs_phase`), lists page
//! through `runs_created` and read a small summary, not the whole record. Finished runs are
//! pruned by [`RunStore::prune`]. The store also notices when it cannot be written or when its
//! file was deleted or replaced (`check_health`), so `/readyz` can say so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{
    ClaimRules, Page, Refusal, Retention, RunStore, RunSummary, StoreError, ACTIVE, COUNTED_ACTIVE, EXECUTING,
};
use crate::record::{Phase, RunMode, RunRecord};

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

/// The connection and what it knows of its file: the synchronous half, owned by the store's
/// thread.
struct Db {
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
        "SELECT id FROM runs INDEXED BY runs_phase
         WHERE phase IN ({}) AND plan = ?1 AND mode = 'live'
         ORDER BY created_ms DESC LIMIT 1",
        active_list()
    )
}

/// The plan's newest alert-triggered live run within the cooldown.
const COOLDOWN_SQL: &str = "SELECT id FROM runs INDEXED BY runs_plan WHERE plan = ?1 AND created_ms > ?2
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

/// The records of the `(id, record)` rows `stmt` selects with `params`.
fn records(stmt: &mut rusqlite::Statement<'_>, params: impl rusqlite::Params) -> Result<Vec<RunRecord>, StoreError> {
    let rows = stmt.query_map(params, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, text) = row?;
        out.push(serde_json::from_str(&text).map_err(|source| StoreError::Decode { id, source })?);
    }
    Ok(out)
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize")
}

impl Db {
    /// Opens (creating if needed) the store at `path`; `:memory:` for a throwaway store.
    fn open(path: &Path) -> Result<Self, StoreError> {
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
        conn.busy_timeout(Duration::from_millis(500)).map_err(open_err)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
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
            .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<_, _>>())
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
        conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
        let file = if shown == ":memory:" {
            None
        } else {
            file_id(path).ok().map(|id| (path.to_path_buf(), id))
        };
        Ok(Db { conn, file })
    }

    /// Whether the run `id` exists: the cheap check that lets a resent alert be answered
    /// before a record is built for it.
    fn exists(&self, id: &str) -> Result<bool, StoreError> {
        // An answer from a deleted file would be a promise the store cannot keep.
        self.check_file()?;
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
            .exists([id])?)
    }

    /// Creates the run unless the rules refuse it; both in one immediate transaction.
    fn claim(&mut self, row: &Row, rules: ClaimRules) -> Result<Result<(), Refusal>, StoreError> {
        // A run claimed in a deleted or replaced file is lost at the next start: refuse (503,
        // Alertmanager retries) rather than answer 202 for it.
        self.check_file()?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<String> = tx
            .query_row("SELECT id FROM runs WHERE id = ?1", [&row.id], |r| r.get(0))
            .optional()?;
        if let Some(existing) = exists {
            return Ok(Err(Refusal::SameRun { existing }));
        }
        let live = row.mode == RunMode::Live;
        if rules.one_active_per_plan && live {
            let active: Option<String> = tx.query_row(&active_run_sql(), [&row.plan], |r| r.get(0)).optional()?;
            if let Some(existing) = active {
                return Ok(Err(Refusal::ActiveRun { existing }));
            }
        }
        if let (Some(cooldown), true) = (rules.cooldown, live) {
            let since = now_ms() - cooldown.as_millis() as i64;
            let last: Option<String> = tx
                .query_row(COOLDOWN_SQL, params![row.plan, since], |r| r.get(0))
                .optional()?;
            if let Some(last) = last {
                return Ok(Err(Refusal::Cooldown { last }));
            }
        }
        tx.execute(
            "INSERT INTO runs (id, plan, phase, trigger_kind, fingerprint, created_ms, record, mode, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                row.id,
                row.plan,
                phase_name(row.phase),
                row.trigger_kind,
                row.fingerprint,
                now_ms(),
                row.record,
                mode_name(row.mode),
                row.summary,
            ],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Writes the record only if the run is still in one of `from` phases — one statement, so
    /// two callers racing (a double approve, an approve and a resolution) cannot both win.
    fn transition(&self, row: &Row, from: &[Phase]) -> Result<bool, StoreError> {
        self.check_file()?;
        let n = self.conn.execute(
            &format!(
                "UPDATE runs SET phase = ?2, record = ?3, summary = ?4 WHERE id = ?1 AND phase IN ({})",
                sql_list(from)
            ),
            params![row.id, phase_name(row.phase), row.record, row.summary],
        )?;
        Ok(n == 1)
    }

    /// Writes the record's current state.
    fn save(&self, row: &Row) -> Result<(), StoreError> {
        self.check_file()?;
        self.conn
            .prepare_cached("UPDATE runs SET phase = ?2, record = ?3, summary = ?4 WHERE id = ?1")?
            .execute(params![row.id, phase_name(row.phase), row.record, row.summary])?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT record FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        text.map(|t| serde_json::from_str(&t).map_err(|source| StoreError::Decode { id: id.into(), source }))
            .transpose()
    }

    /// Runs, newest first, optionally of one plan (`namespace/name`).
    fn list(&self, plan: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, record FROM runs WHERE (?1 IS NULL OR plan = ?1) ORDER BY created_ms DESC, id DESC LIMIT ?2",
        )?;
        records(&mut stmt, params![plan, limit as i64])
    }

    /// One page of run summaries, newest first, optionally of one plan; `after` is the
    /// `continue` token of the previous page.
    fn page(&self, plan: Option<&str>, limit: usize, after: Option<&str>) -> Result<Page, StoreError> {
        let (after_ms, after_id) = match after {
            None => (i64::MAX, String::new()),
            Some(token) => decode_continue(token)?,
        };
        let mut stmt = self.conn.prepare_cached(PAGE_SQL)?;
        let rows = stmt.query_map(params![plan, after_ms, after_id, limit as i64 + 1], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
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
                serde_json::from_str(&text).map_err(|source| StoreError::Decode { id: id.clone(), source })?;
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
    fn in_phase(&self, phase: Phase) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, record FROM runs WHERE phase = ?1")?;
        records(&mut stmt, [phase_name(phase)])
    }

    /// Runs waiting for approval that a resolved alert with this fingerprint may cancel.
    fn waiting_for_approval(&self, fingerprint: &str) -> Result<Vec<RunRecord>, StoreError> {
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
    fn mark_interrupted(&self) -> Result<Vec<String>, StoreError> {
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
            record.error = Some(
                "recoverd stopped while this run was unfinished; resume it to continue from its first unfinished step"
                    .into(),
            );
            self.save(&Row::of(&record))?;
            ids.push(record.id);
        }
        Ok(ids)
    }

    /// How many runs are executing or waiting — read from the phase index, never the table.
    fn active_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&active_count_sql())?
            .query_row([], |r| r.get(0))?)
    }

    /// Deletes finished runs beyond the retention: older than `max_age`, or beyond the newest
    /// `max_runs` finished ones. Unfinished runs are never deleted. Returns how many went.
    fn prune(&self, keep: Retention) -> Result<usize, StoreError> {
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
    fn check_health(&self) -> Result<(), StoreError> {
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

/// A record as the table holds it, serialized by the caller (on its own thread, not the
/// store's).
struct Row {
    id: String,
    plan: String,
    phase: Phase,
    mode: RunMode,
    trigger_kind: &'static str,
    fingerprint: Option<String>,
    record: String,
    summary: String,
}

impl Row {
    fn of(r: &RunRecord) -> Row {
        Row {
            id: r.id.clone(),
            plan: r.plan.clone(),
            phase: r.phase,
            mode: r.mode,
            trigger_kind: r.trigger.kind.as_str(),
            fingerprint: r.trigger.fingerprint.clone(),
            record: to_json(r),
            summary: to_json(&RunSummary::of(r)),
        }
    }
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// The SQLite run store: one connection on a thread of its own, answering jobs in order.
/// Dropping it finishes the job in progress and closes the file (so it can be opened again).
pub struct SqliteStore {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`; `:memory:` for a throwaway store. Fails
    /// when another process has it open: one process per store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut db = Db::open(path)?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("recoverd-store".into())
            .spawn(move || {
                for job in queue {
                    // A panic drops the job's reply (its caller gets an error) and rolls back
                    // its transaction; the next job finds the connection as it was.
                    let call = std::panic::AssertUnwindSafe(|| job(&mut db));
                    if std::panic::catch_unwind(call).is_err() {
                        tracing::error!("a run store call panicked; it was answered with an error");
                    }
                }
            })
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(SqliteStore {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the store's thread and awaits its answer.
    async fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = reply.send(f(db));
        });
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or(StoreError::Stopped(what))?;
        answer.await.map_err(|_| StoreError::Stopped(what))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[async_trait::async_trait]
impl RunStore for SqliteStore {
    async fn exists(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call("checking a run id", move |db| db.exists(&id)).await
    }

    async fn claim(&self, record: &RunRecord, rules: ClaimRules) -> Result<Result<(), Refusal>, StoreError> {
        let row = Row::of(record);
        self.call("claiming a run", move |db| db.claim(&row, rules)).await
    }

    async fn transition(&self, record: &RunRecord, from: &[Phase]) -> Result<bool, StoreError> {
        let (row, from) = (Row::of(record), from.to_vec());
        self.call("writing a run", move |db| db.transition(&row, &from)).await
    }

    async fn save(&self, record: &RunRecord) -> Result<(), StoreError> {
        let row = Row::of(record);
        self.call("writing a run", move |db| db.save(&row)).await
    }

    async fn get(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let id = id.to_string();
        self.call("reading a run", move |db| db.get(&id)).await
    }

    async fn list(&self, plan: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let plan = plan.map(str::to_string);
        self.call("listing runs", move |db| db.list(plan.as_deref(), limit))
            .await
    }

    async fn page(&self, plan: Option<&str>, limit: usize, after: Option<&str>) -> Result<Page, StoreError> {
        let (plan, after) = (plan.map(str::to_string), after.map(str::to_string));
        self.call("listing runs", move |db| {
            db.page(plan.as_deref(), limit, after.as_deref())
        })
        .await
    }

    async fn in_phase(&self, phase: Phase) -> Result<Vec<RunRecord>, StoreError> {
        self.call("listing runs", move |db| db.in_phase(phase)).await
    }

    async fn waiting_for_approval(&self, fingerprint: &str) -> Result<Vec<RunRecord>, StoreError> {
        let fingerprint = fingerprint.to_string();
        self.call("listing runs", move |db| db.waiting_for_approval(&fingerprint))
            .await
    }

    async fn mark_interrupted(&self) -> Result<Vec<String>, StoreError> {
        self.call("marking runs interrupted", |db| db.mark_interrupted()).await
    }

    async fn active_count(&self) -> Result<i64, StoreError> {
        self.call("counting runs", |db| db.active_count()).await
    }

    async fn prune(&self, keep: Retention) -> Result<usize, StoreError> {
        self.call("pruning runs", move |db| db.prune(keep)).await
    }

    async fn check_health(&self) -> Result<(), StoreError> {
        self.call("checking the store", |db| db.check_health()).await
    }
}

pub(super) fn encode_continue(ms: i64, id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{ms}/{id}"))
}

pub(super) fn decode_continue(token: &str) -> Result<(i64, String), StoreError> {
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

    fn store() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let s = Db::open(&dir.path().join("runs.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn the_same_run_id_is_claimed_once() {
        let (_d, mut s) = store();
        assert_eq!(
            s.claim(&Row::of(&record("r1", "ns/p", "alert")), ClaimRules::default())
                .unwrap(),
            Ok(())
        );
        assert_eq!(
            s.claim(&Row::of(&record("r1", "ns/p", "alert")), ClaimRules::default())
                .unwrap(),
            Err(Refusal::SameRun { existing: "r1".into() })
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
        s.claim(&Row::of(&first), rules).unwrap().unwrap();
        assert_eq!(
            s.claim(&Row::of(&record("r2", "ns/p", "alert")), rules).unwrap(),
            Err(Refusal::ActiveRun { existing: "r1".into() })
        );
        assert_eq!(
            s.claim(&Row::of(&record("r3", "ns/other", "alert")), rules).unwrap(),
            Ok(())
        );
        first.phase = Phase::Succeeded;
        s.save(&Row::of(&first)).unwrap();
        assert_eq!(
            s.claim(&Row::of(&record("r2", "ns/p", "alert")), rules).unwrap(),
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
        s.claim(&Row::of(&record("r1", "ns/p", "alert")), rules)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.claim(&Row::of(&record("r2", "ns/p", "alert")), rules).unwrap(),
            Err(Refusal::Cooldown { last: "r1".into() })
        );
        let manual = ClaimRules {
            one_active_per_plan: false,
            cooldown: None,
        };
        assert_eq!(
            s.claim(&Row::of(&record("r3", "ns/p", "manual")), manual).unwrap(),
            Ok(())
        );
    }

    #[test]
    fn a_second_process_cannot_open_a_store_in_use() {
        let (dir, _first) = store();
        let err = Db::open(&dir.path().join("runs.db"))
            .err()
            .expect("the store is in use");
        assert!(err.to_string().contains("another recoverd is using it"), "{err}");
    }

    #[test]
    fn a_transition_happens_only_from_the_expected_phases() {
        let (_d, mut s) = store();
        let mut r = record("r1", "ns/p", "alert");
        r.phase = Phase::WaitingForApproval;
        s.claim(&Row::of(&r), ClaimRules::default()).unwrap().unwrap();
        r.phase = Phase::Pending;
        assert!(s.transition(&Row::of(&r), &[Phase::WaitingForApproval]).unwrap());
        assert!(
            !s.transition(&Row::of(&r), &[Phase::WaitingForApproval]).unwrap(),
            "a second approval loses"
        );
        assert_eq!(s.get("r1").unwrap().unwrap().phase, Phase::Pending);
    }

    #[test]
    fn unfinished_runs_become_interrupted_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        {
            let mut s = Db::open(&path).unwrap();
            let mut r = record("r1", "ns/p", "alert");
            r.phase = Phase::Running;
            s.claim(&Row::of(&r), ClaimRules::default()).unwrap().unwrap();
            let mut done = record("r2", "ns/q", "alert");
            done.phase = Phase::Succeeded;
            s.claim(&Row::of(&done), ClaimRules::default()).unwrap().unwrap();
        }
        let s = Db::open(&path).unwrap();
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
        s.claim(&Row::of(&crashed), rules).unwrap().unwrap();
        crashed.phase = Phase::Interrupted;
        s.save(&Row::of(&crashed)).unwrap();
        s.claim(&Row::of(&dry("d2", "ns/p", "manual")), rules).unwrap().unwrap();
        assert_eq!(
            s.claim(&Row::of(&record("r1", "ns/p", "alert")), rules).unwrap(),
            Ok(()),
            "a live run starts beside a running and a crashed dry run"
        );
        assert_eq!(
            s.claim(&Row::of(&dry("d3", "ns/p", "manual")), rules).unwrap(),
            Ok(()),
            "a dry run is not refused by the live run either"
        );
    }

    #[test]
    fn pages_of_summaries_cover_every_run_once_in_order() {
        let (_d, mut s) = store();
        for i in 0..7 {
            s.claim(
                &Row::of(&record(&format!("r{i}"), "ns/p", "alert")),
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
            s.claim(&Row::of(&r), ClaimRules::default()).unwrap().unwrap();
            r.phase = Phase::Failed;
            s.save(&Row::of(&r)).unwrap();
        }
        let mut waiting = record("w", "ns/p", "alert");
        waiting.phase = Phase::WaitingForApproval;
        s.claim(&Row::of(&waiting), ClaimRules::default()).unwrap().unwrap();
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
        let err = s.save(&Row::of(&record("x", "ns/p", "alert"))).unwrap_err();
        assert!(err.to_string().contains("was replaced"), "{err}");
    }

    /// Each query a hot path makes (webhook claim, active count, approval expiry, resolutions,
    /// lists) is answered from the index meant for it, never by reading every run — nor every
    /// run of one plan: with a million finished runs of the plan an alert matches, the active-run
    /// check read all of them through `runs_plan` (P9 in BENCHMARKS.md).
    #[test]
    fn the_hot_path_queries_are_answered_from_their_indexes() {
        let (_d, s) = store();
        let queries = [
            (
                "exists",
                "SELECT 1 FROM runs WHERE id = ?1".to_string(),
                "sqlite_autoindex_runs_1",
            ),
            (
                "active run",
                active_run_sql(),
                "runs_phase (phase=? AND plan=? AND mode=?)",
            ),
            (
                "cooldown",
                COOLDOWN_SQL.to_string(),
                "runs_plan (plan=? AND created_ms>?)",
            ),
            ("active count", active_count_sql(), "runs_phase (phase=?)"),
            ("waiting", waiting_sql(), "runs_fingerprint (fingerprint=? AND phase=?)"),
            (
                "in phase",
                "SELECT id, record FROM runs WHERE phase = ?1".to_string(),
                "runs_phase (phase=?)",
            ),
            ("page", PAGE_SQL.to_string(), "runs_created"),
            // The control: a query no index serves must be caught.
            (
                "control",
                "SELECT id FROM runs WHERE trigger_kind = ?1".to_string(),
                "no index serves this",
            ),
        ];
        let mut wrong = Vec::new();
        for (what, sql, index) in queries {
            let mut stmt = s.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let n = stmt.parameter_count();
            let args: Vec<rusqlite::types::Value> = (0..n).map(|_| rusqlite::types::Value::Null).collect();
            let details: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            if !details.iter().any(|d| d.contains(index)) {
                wrong.push(format!("{what}: {details:?}"));
            }
        }
        assert_eq!(wrong.len(), 1, "{wrong:#?}");
        assert!(wrong[0].starts_with("control"), "{wrong:#?}");
    }

    /// Many tasks share the store; a call that panics on its thread is answered with an error
    /// and the next call is served; dropping the store closes its file so it can be opened again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_thread_serves_many_tasks_survives_a_panic_and_closes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        let store = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
        let claims: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let r = record(&format!("r{}", i % 10), "ns/p", "alert");
                    store.claim(&r, ClaimRules::default()).await.unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for c in claims {
            won += c.await.unwrap().is_ok() as usize;
        }
        assert_eq!(won, 10, "each of the 10 ids is claimed exactly once");
        let err = store
            .call("testing", |_db| -> Result<(), StoreError> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Stopped("testing")), "{err}");
        assert!(store.exists("r3").await.unwrap(), "served after the panic");
        drop(std::sync::Arc::try_unwrap(store).ok().expect("one owner"));
        let again = SqliteStore::open(&path).expect("the file is free once the store is dropped");
        assert_eq!(again.page(None, 100, None).await.unwrap().runs.len(), 10);
    }
}
