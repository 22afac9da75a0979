//! One simulated cluster's storage (in memory): objects by resource, namespace and name; the
//! cluster-wide `resourceVersion` counter every write advances, as etcd's revision does; a
//! bounded log of watch events and a broadcast of new ones; when each resource began being
//! watchable (older watches get `410 Expired`); uids and timestamps.
//!
//! It applies no API semantics: [`super::api`] decides what to write, this module writes it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use super::discovery::Resources;

/// (group, plural, namespace or "", name)
pub type Key = (String, String, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A change to one object.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
    /// The object before the change, to tell selectors that stop matching.
    pub previous: Option<Value>,
}

/// When a resource began being watchable, and its latest event.
#[derive(Clone, Copy, Debug, Default)]
pub struct TypeState {
    pub list_rv: u64,
    pub last_event_rv: u64,
}

/// Events to replay, and a receiver for the ones after them.
pub type Backlog = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// How many events a cluster keeps for watches that resume.
pub const LOG_CAPACITY: usize = 10_000;

pub struct Store {
    rv: u64,
    last_event_rv: u64,
    pub objects: BTreeMap<Key, Value>,
    log: VecDeque<Arc<Event>>,
    pub resources: Resources,
    types: HashMap<(String, String), TypeState>,
    next_ip: u32,
    next_node_port: u16,
    tx: broadcast::Sender<Arc<Event>>,
}

static UIDS: AtomicU64 = AtomicU64::new(0);

/// A random-looking version-4 UUID.
pub fn new_uid(cluster: &str) -> String {
    let n = UIDS.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let h = Sha256::digest(format!("{cluster}/{n}/{nanos}/{}", std::process::id()).as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-{}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        ["8", "9", "a", "b"][(h[8] & 3) as usize],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Now, as the API server writes timestamps (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `secs` seconds from now, written as [`now`] writes it.
pub fn in_seconds(secs: i64) -> String {
    let now = jiff::Timestamp::now();
    now.checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Store {
    /// The cluster's latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// A new cluster with the namespaces every cluster has.
    pub fn new(cluster: &str) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut s = Store {
            rv: 0,
            last_event_rv: 0,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            resources: Resources::new([]),
            types: HashMap::new(),
            next_ip: 1,
            next_node_port: 0,
            tx,
        };
        for ns in ["default", "kube-node-lease", "kube-public", "kube-system"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": new_uid(cluster), "creationTimestamp": now()},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            s.put(key("", "namespaces", "", ns), obj, EventType::Added, None);
        }
        let builtins: Vec<(String, String)> = s.resources.types.iter().map(|t| t.storage_key()).collect();
        for k in builtins {
            s.types.entry(k).or_insert(TypeState {
                list_rv: 1,
                last_event_rv: 0,
            });
        }
        s
    }

    /// The resourceVersion of the latest event.
    pub fn last_event_rv(&self) -> u64 {
        self.last_event_rv
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn type_state(&self, group: &str, plural: &str) -> TypeState {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .copied()
            .unwrap_or_default()
    }

    pub fn get(&self, k: &Key) -> Option<&Value> {
        self.objects.get(k)
    }

    /// Stores an object at the next resourceVersion and tells watchers; returns it as stored.
    pub fn put(&mut self, k: Key, mut obj: Value, kind: EventType, previous: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        if kind == EventType::Deleted {
            self.objects.remove(&k);
        } else {
            self.objects.insert(k.clone(), obj.clone());
        }
        self.record(k, kind, obj.clone(), previous);
        obj
    }

    /// Removes an object, telling watchers (the event carries the deletion's resourceVersion).
    pub fn delete(&mut self, k: &Key) -> Option<Value> {
        let obj = self.objects.get(k)?.clone();
        Some(self.put(k.clone(), obj.clone(), EventType::Deleted, Some(obj)))
    }

    fn record(&mut self, k: Key, kind: EventType, object: Value, previous: Option<Value>) {
        let (group, plural, namespace, _) = k;
        let state = self.types.entry((group.clone(), plural.clone())).or_insert(TypeState {
            list_rv: self.rv - 1,
            last_event_rv: 0,
        });
        state.last_event_rv = self.rv;
        self.last_event_rv = self.rv;
        let ev = Arc::new(Event {
            rv: self.rv,
            group,
            plural,
            namespace,
            kind,
            object,
            previous,
        });
        self.log.push_back(ev.clone());
        while self.log.len() > LOG_CAPACITY {
            self.log.pop_front();
        }
        let _ = self.tx.send(ev);
    }

    /// Marks a resource watchable from now on (a CRD just became established).
    pub fn start_type(&mut self, group: &str, plural: &str) {
        let rv = self.rv;
        self.types
            .entry((group.to_string(), plural.to_string()))
            .or_insert(TypeState {
                list_rv: rv,
                last_event_rv: 0,
            });
    }

    /// Events after `rv` of one resource, and a receiver for later ones; `None` when events
    /// after `rv` are no longer kept.
    pub fn events_since(&self, group: &str, plural: &str, rv: u64) -> Option<Backlog> {
        if let Some(first) = self.log.front() {
            if first.rv > rv + 1 && self.log.len() >= LOG_CAPACITY {
                return None;
            }
        }
        let backlog = self
            .log
            .iter()
            .filter(|e| e.rv > rv && e.group == group && e.plural == plural)
            .cloned()
            .collect();
        Some((backlog, self.tx.subscribe()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Recomputes the served resources from the stored CRDs.
    pub fn refresh_resources(&mut self) {
        let crds: Vec<Value> = self
            .objects
            .iter()
            .filter(|((g, p, _, _), _)| g == "apiextensions.k8s.io" && p == "customresourcedefinitions")
            .map(|(_, v)| v.clone())
            .collect();
        self.resources = Resources::new(crds.iter());
    }

    /// The next free address of the service range (10.0.0.0/24 as in the test clusters).
    /// A free cluster IP; like the real allocator, which stores an `IPAddress` object for it,
    /// this advances the resourceVersion.
    pub fn allocate_cluster_ip(&mut self) -> String {
        self.rv += 1;
        let used: Vec<String> = self
            .objects
            .iter()
            .filter(|((g, p, _, _), _)| g.is_empty() && p == "services")
            .filter_map(|(_, v)| v.pointer("/spec/clusterIP").and_then(Value::as_str).map(str::to_string))
            .collect();
        for _ in 0..254 {
            let ip = format!("10.0.0.{}", self.next_ip);
            self.next_ip = self.next_ip % 254 + 1;
            if !used.contains(&ip) {
                return ip;
            }
        }
        "10.0.0.254".into()
    }
}

impl Store {
    /// The next port of the node-port range (30000-32767).
    pub fn allocate_node_port(&mut self) -> u16 {
        let port = 30000 + (self.next_node_port % 2768);
        self.next_node_port = self.next_node_port.wrapping_add(1);
        port
    }
}

pub fn key(group: &str, plural: &str, namespace: &str, name: &str) -> Key {
    (
        group.to_string(),
        plural.to_string(),
        namespace.to_string(),
        name.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_advances_the_cluster_wide_resource_version() {
        let mut s = Store::new("t");
        let before = s.rv();
        let a = s.put(
            key("", "configmaps", "default", "a"),
            json!({"metadata": {"name": "a"}}),
            EventType::Added,
            None,
        );
        let b = s.put(
            key("", "secrets", "default", "b"),
            json!({"metadata": {"name": "b"}}),
            EventType::Added,
            None,
        );
        assert_eq!(a["metadata"]["resourceVersion"], json!((before + 1).to_string()));
        assert_eq!(b["metadata"]["resourceVersion"], json!((before + 2).to_string()));
        let (backlog, _) = s.events_since("", "configmaps", before).unwrap();
        assert_eq!(backlog.len(), 1);
    }

    #[test]
    fn uids_look_like_version_4_uuids() {
        let u = new_uid("x");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid("x"));
    }
}
