//! The run store (I/O edge): run records in an embedded SQLite database (WAL), written before a
//! run's first step and after every step.
//!
//! Owns the claim that makes runs exactly-once: inserting a run whose id already exists, or
//! while the plan has an active run, or within the plan's cooldown, is refused in the same
//! transaction that would have created it — so two triggers racing for one incident cannot both
//! win. Deciding *what* to claim is the caller's job (see [`super::service`]).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::record::{Phase, RunRecord};

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
}

/// Why a claim did not create a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A run with this id exists: the same incident (or idempotency key) was claimed before.
    SameRun { existing: String },
    /// The plan has a run that has not finished.
    ActiveRun { existing: String },
    /// The plan's last alert-triggered run began less than its cooldown ago.
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

/// What a claim must respect besides the run id.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClaimRules {
    pub one_active_per_plan: bool,
    pub cooldown: Option<Duration>,
}

const ACTIVE: &[&str] = &["Pending", "WaitingForApproval", "Running", "Interrupted"];

pub struct Store {
    conn: Connection,
}

fn phase_name(p: Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
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
            CREATE INDEX IF NOT EXISTS runs_plan ON runs (plan, created_ms);
            CREATE INDEX IF NOT EXISTS runs_fingerprint ON runs (fingerprint);
            BEGIN IMMEDIATE; COMMIT;",
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        Ok(Store { conn })
    }

    /// Creates `record` unless the rules refuse it; both in one immediate transaction.
    pub fn claim(
        &mut self,
        record: &RunRecord,
        rules: ClaimRules,
    ) -> Result<Result<(), Refusal>, StoreError> {
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
        if rules.one_active_per_plan {
            let sql = format!(
                "SELECT id FROM runs WHERE plan = ?1 AND phase IN ({}) ORDER BY created_ms DESC LIMIT 1",
                ACTIVE.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(",")
            );
            let active: Option<String> = tx
                .query_row(&sql, [&record.plan], |r| r.get(0))
                .optional()?;
            if let Some(existing) = active {
                return Ok(Err(Refusal::ActiveRun { existing }));
            }
        }
        if let Some(cooldown) = rules.cooldown {
            let since = now_ms() - cooldown.as_millis() as i64;
            let last: Option<String> = tx
                .query_row(
                    "SELECT id FROM runs WHERE plan = ?1 AND trigger_kind = 'alert' AND created_ms > ?2
                     ORDER BY created_ms DESC LIMIT 1",
                    params![record.plan, since],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(last) = last {
                return Ok(Err(Refusal::Cooldown { last }));
            }
        }
        tx.execute(
            "INSERT INTO runs (id, plan, phase, trigger_kind, fingerprint, created_ms, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                record.id,
                record.plan,
                phase_name(record.phase),
                record.trigger.kind,
                record.trigger.fingerprint,
                now_ms(),
                serde_json::to_string(record).expect("records serialize"),
            ],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Writes the record only if the run is still in one of `from` phases — one statement, so
    /// two callers racing (a double approve, an approve and a resolution) cannot both win.
    pub fn transition(&self, record: &RunRecord, from: &[Phase]) -> Result<bool, StoreError> {
        let from: Vec<String> = from
            .iter()
            .map(|p| format!("'{}'", phase_name(*p)))
            .collect();
        let n = self.conn.execute(
            &format!(
                "UPDATE runs SET phase = ?2, record = ?3 WHERE id = ?1 AND phase IN ({})",
                from.join(",")
            ),
            params![
                record.id,
                phase_name(record.phase),
                serde_json::to_string(record).expect("records serialize")
            ],
        )?;
        Ok(n == 1)
    }

    /// Writes the record's current state.
    pub fn save(&self, record: &RunRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE runs SET phase = ?2, record = ?3 WHERE id = ?1",
            params![
                record.id,
                phase_name(record.phase),
                serde_json::to_string(record).expect("records serialize")
            ],
        )?;
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
            "SELECT id, record FROM runs WHERE (?1 IS NULL OR plan = ?1) ORDER BY created_ms DESC, id LIMIT ?2",
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

    /// Runs waiting for approval that a resolved alert with this fingerprint should cancel.
    pub fn waiting_for_approval(&self, fingerprint: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT record FROM runs WHERE fingerprint = ?1 AND phase = 'WaitingForApproval'",
        )?;
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
        let mut stmt = self
            .conn
            .prepare("SELECT id, record FROM runs WHERE phase IN ('Pending', 'Running')")?;
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

    /// How many runs are executing or waiting.
    pub fn active_count(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM runs WHERE phase IN ('Pending','Running','WaitingForApproval')",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::record::Trigger;

    fn record(id: &str, plan: &str, kind: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            plan: plan.into(),
            trigger: Trigger {
                kind: kind.into(),
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
}
