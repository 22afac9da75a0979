//! What the reactors of one `start` share, and the limits they keep.

use std::time::Duration;

use serde_json::Value;

/// The field manager of the reactors' writes.
pub(super) const REACTOR_MANAGER: &str = "recoverd-reactor";

/// How deep a chain of reactions may go — a reactor fired by a write of a reactor fired by a
/// write of … — before it is taken for a reaction that triggers itself forever and stopped.
pub const MAX_CHAIN: u32 = 20;

/// How often a write that meets a conflict (409: the object changed since it was read) is
/// tried again, each time from a fresh read.
pub(super) const CONFLICT_RETRIES: u32 = 5;

/// What the reactors of one `start` share: counts, problems, and the versions they wrote (for
/// the loop guard).
#[derive(Default)]
pub(super) struct Shared {
    pub(super) fired: std::sync::atomic::AtomicUsize,
    /// Firings that ended, however.
    pub(super) ended: std::sync::atomic::AtomicUsize,
    /// Firings started and not ended (some sleeping in a delay before their next action).
    pub(super) pending: std::sync::atomic::AtomicUsize,
    pub(super) problems: std::sync::Mutex<Vec<String>>,
    /// `cluster/resourceVersion` of every object version a reactor wrote → how deep in a chain
    /// of reactions that write was.
    pub(super) written: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Writes under way; a firing waits for them before asking whether a reactor's own write
    /// fired it.
    pub(super) inflight: std::sync::atomic::AtomicUsize,
    pub(super) settled: tokio::sync::Notify,
}

impl Shared {
    pub(super) fn problem(&self, p: String) {
        tracing::warn!(problem = %p, "reactor problem");
        if let Ok(mut ps) = self.problems.lock() {
            ps.push(p);
        }
    }

    pub(super) fn wrote(&self, cluster: &str, obj: &Value, depth: u32) {
        if let Some(rv) = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            if let Ok(mut w) = self.written.lock() {
                w.insert(format!("{cluster}/{rv}"), depth);
            }
        }
    }

    /// How deep in a chain of reactions the object version `rv` was written (0: not by a
    /// reactor), once no reactor write is under way.
    pub(super) async fn depth_of(&self, cluster: &str, rv: Option<&str>) -> u32 {
        let Some(rv) = rv else { return 0 };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let settled = self.settled.notified();
            if self.inflight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                break;
            }
        }
        self.written
            .lock()
            .ok()
            .and_then(|w| w.get(&format!("{cluster}/{rv}")).copied())
            .unwrap_or(0)
    }
}

/// Counts a write under way for as long as it lives.
pub(super) struct Inflight<'a>(&'a Shared);

impl<'a> Inflight<'a> {
    pub(super) fn new(s: &'a Shared) -> Self {
        s.inflight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Inflight(s)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.settled.notify_waiters();
    }
}
