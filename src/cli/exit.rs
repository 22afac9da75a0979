//! The exit codes of every command, in one place: what a script calling `recoverd` can tell
//! apart without reading its output. `recoverd --help` and the README's "Exit codes" table
//! print [`TABLE`]; a test checks that each code is what the command exits with.

use std::process::ExitCode;

use crate::record::{Phase, RunRecord, StepStatus};

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The command did what was asked: the run succeeded, every plan is valid.
    Success = 0,
    /// The run failed or was cancelled, a rehearsal's expectation failed, or `check` found an
    /// invalid plan.
    Failed = 1,
    /// Nothing was done: bad arguments (clap's usage errors), or input that is wrong — a plan
    /// `run`/`rehearse` refuses as invalid, an alert the plan does not match, an unknown
    /// param, a file that cannot be read, a request the server refused.
    Usage = 2,
    /// The run succeeded, but a step with `onError: continue` failed.
    SucceededWithErrors = 3,
    /// A server could not be reached: the recoverd API (`trigger`, `runs`, …) or a cluster's
    /// API server (connection refused, name not resolved, TLS handshake, no answer in time) —
    /// including a run that failed because the step that failed it could not reach its
    /// cluster (its reason is `unreachable`).
    Unreachable = 4,
    /// `trigger --wait` stopped waiting after `--timeout`; the run goes on.
    TimedOut = 5,
}

/// The table in `recoverd --help` (and, word for word, in the README).
pub const TABLE: &str = "\
Exit codes:
  0  success (the run succeeded; every plan is valid)
  1  the run failed or was cancelled, an expectation failed, or `check` found an invalid plan
  2  usage error: bad arguments or input, nothing was done (also: the server refused the request)
  3  the run succeeded with errors (a step with `onError: continue` failed)
  4  a server could not be reached (the recoverd API, or a cluster: also a run failed by that)
  5  timed out waiting (`trigger --wait --timeout`); the run goes on";

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit for these runs: the worst of theirs (a failure on the plan's merits is worse
    /// than one a retry may cure, which is worse than a tolerated failure).
    pub fn for_runs<'a>(runs: impl IntoIterator<Item = &'a RunRecord>) -> Exit {
        let rank = |e: Exit| match e {
            Exit::Success => 0,
            Exit::SucceededWithErrors => 1,
            Exit::Unreachable => 2,
            _ => 3,
        };
        runs.into_iter()
            .map(Exit::for_run)
            .max_by_key(|e| rank(*e))
            .unwrap_or(Exit::Success)
    }

    fn for_run(run: &RunRecord) -> Exit {
        match run.phase {
            Phase::Succeeded => Exit::Success,
            Phase::SucceededWithErrors => Exit::SucceededWithErrors,
            Phase::Failed => {
                let failed_it = run
                    .steps
                    .iter()
                    .find(|s| s.status == StepStatus::Failed && !s.continued);
                match failed_it.and_then(|s| s.reason.as_deref()) {
                    Some("unreachable") => Exit::Unreachable,
                    _ => Exit::Failed,
                }
            }
            _ => Exit::Failed,
        }
    }

    /// The exit for a command that stopped with an error: [`Exit::Unreachable`] when a
    /// connection to a server failed somewhere in its chain of causes, else [`Exit::Usage`].
    pub fn for_error(e: &anyhow::Error) -> Exit {
        if e.chain().any(is_unreachable) {
            Exit::Unreachable
        } else {
            Exit::Usage
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// One cause in an error's chain says a server could not be reached.
fn is_unreachable(cause: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    if let Some(e) = cause.downcast_ref::<reqwest::Error>() {
        return e.is_connect() || e.is_timeout();
    }
    if let Some(e) = cause.downcast_ref::<hyper_util::client::legacy::Error>() {
        return e.is_connect();
    }
    if let Some(e) = cause.downcast_ref::<std::io::Error>() {
        return matches!(
            e.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | TimedOut
                | HostUnreachable
                | NetworkUnreachable
                | AddrNotAvailable
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_is_the_worst_outcome_and_tolerated_failures_have_their_own() {
        let exit = |phases: &[Phase]| {
            let runs: Vec<RunRecord> = phases
                .iter()
                .map(|&phase| RunRecord {
                    phase,
                    ..Default::default()
                })
                .collect();
            Exit::for_runs(&runs)
        };
        assert_eq!(exit(&[Phase::Succeeded]), Exit::Success);
        assert_eq!(
            exit(&[Phase::Succeeded, Phase::SucceededWithErrors]),
            Exit::SucceededWithErrors
        );
        assert_eq!(exit(&[Phase::SucceededWithErrors, Phase::Failed]), Exit::Failed);
        assert_eq!(exit(&[Phase::Failed, Phase::SucceededWithErrors]), Exit::Failed);
        assert_eq!(exit(&[Phase::Cancelled]), Exit::Failed);
    }

    #[test]
    fn a_run_failed_by_an_unreachable_cluster_says_so_unless_the_failure_was_tolerated() {
        let step = |reason: &str, continued| crate::record::StepRecord {
            status: StepStatus::Failed,
            reason: Some(reason.into()),
            continued,
            ..Default::default()
        };
        let run = |steps| RunRecord {
            phase: Phase::Failed,
            steps,
            ..Default::default()
        };
        let unreachable = run(vec![step("unreachable", false)]);
        assert_eq!(Exit::for_runs([&unreachable]), Exit::Unreachable);
        let tolerated_then_timeout = run(vec![step("unreachable", true), step("timeout", false)]);
        assert_eq!(Exit::for_runs([&tolerated_then_timeout]), Exit::Failed);
        assert_eq!(Exit::for_runs([&unreachable, &tolerated_then_timeout]), Exit::Failed);
    }

    #[test]
    fn a_refused_connection_anywhere_in_the_chain_is_unreachable_and_anything_else_usage() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = anyhow::Error::new(refused).context("calling http://127.0.0.1:1");
        assert_eq!(Exit::for_error(&e), Exit::Unreachable);
        let e = anyhow::anyhow!("the plan is invalid; nothing was run");
        assert_eq!(Exit::for_error(&e), Exit::Usage);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(Exit::for_error(&anyhow::Error::new(missing)), Exit::Usage);
    }

    #[tokio::test]
    async fn a_cluster_that_refuses_the_connection_is_unreachable_through_the_error_chain() {
        use crate::cluster::{Registry, WriteMode};
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: north\n  cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: north\n  context: {cluster: north, user: u}\ncurrent-context: north\n",
        )
        .unwrap();
        let registry = Registry::from_kubeconfig(Some(&kubeconfig), WriteMode::Live)
            .await
            .unwrap();
        let e = registry
            .resolve("north", "v1", "configmaps")
            .await
            .expect_err("nothing listens on port 1");
        let e = anyhow::Error::new(e).context("seeding the world");
        assert_eq!(Exit::for_error(&e), Exit::Unreachable, "{e:#}");
    }

    #[test]
    fn every_code_is_distinct_and_in_the_table() {
        let all = [
            Exit::Success,
            Exit::Failed,
            Exit::Usage,
            Exit::SucceededWithErrors,
            Exit::Unreachable,
            Exit::TimedOut,
        ];
        let codes: std::collections::BTreeSet<u8> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), all.len());
        for c in codes {
            assert!(TABLE.contains(&format!("\n  {c}  ")), "{c} missing from TABLE");
        }
    }
}
