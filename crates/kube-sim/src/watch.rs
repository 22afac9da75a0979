//! Watches (I/O: a stream per request): newline-delimited watch events for one resource, as
//! kube-apiserver v1.20's watch cache sends them — the current objects as `ADDED` when no
//! resourceVersion is given, else every change after it (an `ERROR` event with a `410 Expired`
//! status when that is older than what is kept); label and field selectors, with objects that
//! stop or start matching sent as `DELETED` or `ADDED`; a `BOOKMARK` two seconds before the
//! deadline when asked for; the stream ends at `timeoutSeconds`. A streaming list
//! (`sendInitialEvents=true`) sends the current objects, then a `BOOKMARK` annotated
//! `k8s.io/initial-events-end`, then the changes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::api::{present, Cluster, ListOptions, Target};
use super::status::StatusError;
use super::store::{Event, EventType};
use super::table::{self, Include};

/// What a watch asked for.
pub struct WatchRequest {
    /// `sendInitialEvents`: the current objects then a bookmark marking their end (`true`), or
    /// only what changes from now (`false`), whatever `resource_version` says.
    pub initial_events: Option<bool>,
    pub target: Target,
    pub list: ListOptions,
    pub resource_version: Option<String>,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    /// Send each object as a one-row Table (`kubectl get -w`).
    pub table: Option<Include>,
}

struct State {
    cluster: Arc<Cluster>,
    target: Target,
    list: ListOptions,
    pending: VecDeque<Bytes>,
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    deadline: Instant,
    bookmark_at: Option<Instant>,
    /// The resourceVersion the watch started from: bookmarks must be newer.
    start_rv: u64,
    table: Option<Include>,
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

impl State {
    /// The event as this watcher sees it, if it sees it.
    fn view(&self, ev: &Event) -> Option<Bytes> {
        let (g, p) = self.target.ty.storage_key();
        if ev.group != g || ev.plural != p {
            return None;
        }
        if let Some(ns) = &self.target.namespace {
            if &ev.namespace != ns {
                return None;
            }
        }
        let sel = |o: &Value| self.list.labels.matches(o) && self.list.fields.matches(o);
        let now = sel(&ev.object);
        let before = ev.previous.as_ref().is_some_and(sel);
        let (kind, object) = match ev.kind {
            EventType::Added if now => (EventType::Added, ev.object.clone()),
            EventType::Modified if now && before => (EventType::Modified, ev.object.clone()),
            EventType::Modified if now => (EventType::Added, ev.object.clone()),
            EventType::Modified if before => {
                // The object as the watcher last saw it, at the event's resourceVersion.
                let mut old = ev.previous.clone().unwrap_or_default();
                if let Some(m) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), json!(ev.rv.to_string()));
                }
                (EventType::Deleted, old)
            }
            EventType::Deleted if now => (EventType::Deleted, ev.object.clone()),
            _ => return None,
        };
        Some(line(kind.as_str(), self.shown(&object)))
    }

    /// An object as the watcher asked to see it.
    fn shown(&self, obj: &Value) -> Value {
        let obj = present(&self.target.ty, obj);
        match self.table {
            Some(include) => {
                let rv = obj.pointer("/metadata/resourceVersion").cloned();
                table::table(&self.target.ty, &[obj], json!({"resourceVersion": rv}), include)
            }
            None => obj,
        }
    }

    /// A bookmark at the resource's latest event, when that is newer than what the watch
    /// started from; schedules the next one as the watch cache does (every minute, two
    /// seconds before the deadline, then about every second until it).
    fn bookmark(&mut self) -> Option<Bytes> {
        let (g, p) = self.target.ty.storage_key();
        let last = self
            .cluster
            .store
            .lock()
            .map(|s| s.type_state(&g, &p).last_event_rv)
            .unwrap_or(0);
        let now = Instant::now();
        let pre_deadline = self.deadline - Duration::from_secs(2);
        self.bookmark_at = if last == 0 {
            // The watch cache has seen no event: it drops the watcher from its schedule.
            None
        } else if now >= pre_deadline {
            Some(now + Duration::from_millis(1100)).filter(|t| *t < self.deadline)
        } else {
            Some((now + Duration::from_secs(60)).min(pre_deadline))
        };
        if last <= self.start_rv {
            return None;
        }
        let mut meta = json!({"resourceVersion": last.to_string()});
        if !self.target.ty.is_custom() {
            meta["creationTimestamp"] = Value::Null;
        }
        Some(line(
            "BOOKMARK",
            json!({"kind": self.target.ty.kind, "apiVersion": self.target.ty.api_version(), "metadata": meta}),
        ))
    }
}

/// Starts a watch: the events it begins with are computed now, under the store's lock, so
/// none is lost or repeated.
pub fn start(
    cluster: Arc<Cluster>,
    req: WatchRequest,
) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>>, StatusError> {
    // A timeoutSeconds too large for a deadline is as good as none (and must not overflow).
    let timeout = req
        .timeout
        .filter(|t| *t <= Duration::from_secs(24 * 3600))
        .unwrap_or_else(|| Duration::from_secs(1800 + fastish_random() % 1800));
    let deadline = Instant::now() + timeout;
    let bookmark_at = req
        .bookmarks
        .then(|| (Instant::now() + Duration::from_secs(60)).min(deadline - Duration::from_secs(2).min(timeout)));
    let mut st = State {
        cluster: cluster.clone(),
        target: req.target,
        list: req.list,
        pending: VecDeque::new(),
        rx: None,
        deadline,
        bookmark_at,
        start_rv: 0,
        table: req.table,
    };
    {
        let store = cluster
            .store
            .lock()
            .map_err(|_| StatusError::internal("the store is poisoned"))?;
        let (g, p) = st.target.ty.storage_key();
        let rv = req.resource_version.as_deref().filter(|r| !r.is_empty() && *r != "0");
        let rv = if req.initial_events.is_some() { None } else { rv };
        match rv {
            None if req.initial_events == Some(false) => {
                let state = store.type_state(&g, &p);
                st.start_rv = state.last_event_rv.max(state.list_rv);
                st.rx = Some(store.subscribe());
            }
            None => {
                let state = store.type_state(&g, &p);
                st.start_rv = state.last_event_rv.max(state.list_rv);
                for ((kg, kp, ns, _), obj) in &store.objects {
                    if *kg != g || *kp != p {
                        continue;
                    }
                    if st.target.namespace.as_ref().is_some_and(|want| want != ns) {
                        continue;
                    }
                    if st.list.labels.matches(obj) && st.list.fields.matches(obj) {
                        st.pending.push_back(line("ADDED", st.shown(obj)));
                    }
                }
                if req.initial_events == Some(true) && req.bookmarks {
                    // The end of the initial events, at the resourceVersion they are as of.
                    let mut meta = json!({"resourceVersion": store.current_rv().to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}});
                    if !st.target.ty.is_custom() {
                        meta["creationTimestamp"] = Value::Null;
                    }
                    st.pending.push_back(line(
                        "BOOKMARK",
                        json!({"kind": st.target.ty.kind, "apiVersion": st.target.ty.api_version(),
                            "metadata": meta}),
                    ));
                }
                st.rx = Some(store.subscribe());
            }
            Some(text) => {
                let rv: u64 = text
                    .parse()
                    .map_err(|_| StatusError::bad_request(format!("invalid resource version: {text}")))?;
                let state = store.type_state(&g, &p);
                let expired = |oldest: u64| {
                    line(
                        "ERROR",
                        StatusError::expired(format!("too old resource version: {rv} ({oldest})")).to_json(),
                    )
                };
                if rv < state.list_rv {
                    st.pending.push_back(expired(state.list_rv));
                } else {
                    match store.events_since(&g, &p, rv) {
                        None => st.pending.push_back(expired(rv)),
                        Some((backlog, rx)) => {
                            st.start_rv = backlog.last().map_or(rv, |e| e.rv.max(rv));
                            for ev in backlog {
                                if let Some(b) = st.view(&ev) {
                                    st.pending.push_back(b);
                                }
                            }
                            st.rx = Some(rx);
                        }
                    }
                }
            }
        }
    }
    Ok(futures::stream::unfold(st, next))
}

async fn next(mut st: State) -> Option<(Result<Bytes, std::io::Error>, State)> {
    loop {
        if let Some(b) = st.pending.pop_front() {
            return Some((Ok(b), st));
        }
        let rx = st.rx.as_mut()?;
        let bookmark_at = st.bookmark_at;
        tokio::select! {
            _ = tokio::time::sleep_until(st.deadline) => return None,
            _ = async { tokio::time::sleep_until(bookmark_at.unwrap_or(st.deadline)).await }, if bookmark_at.is_some() => {
                if let Some(b) = st.bookmark() {
                    return Some((Ok(b), st));
                }
            }
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if let Some(b) = st.view(&ev) {
                        return Some((Ok(b), st));
                    }
                }
                // A watcher too slow to keep up is cut off; clients watch again.
                Err(_) => return None,
            }
        }
    }
}

fn fastish_random() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}
