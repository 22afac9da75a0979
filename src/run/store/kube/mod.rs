//! The Kubernetes run store (I/O edge): every run is a `RecoveryRun` resource in the home
//! cluster, so several recoverd replicas share one truth and any replica answers for any run.
//!
//! - **Claims.** A run's object name is its id, which is derived from (plan, fingerprint,
//!   startsAt) or (plan, idempotency key): the second replica's create gets `409` and the claim
//!   is refused as the same run. One active run per plan and the cooldown are decided on the
//!   plan's *slot*, a `coordination.k8s.io/v1` Lease named after the plan whose holder is the
//!   plan's active run, written with optimistic concurrency (`resourceVersion`): of two replicas
//!   claiming different incidents of one plan, exactly one update succeeds.
//! - **Records.** The record is the resource's `status`, replaced after every step with the
//!   `resourceVersion` of this replica's last write, so a write from a replica that lost the run
//!   fails instead of overwriting the one that took it over. A record larger than
//!   [`MAX_STATUS_BYTES`] has its longest texts truncated with a marker.
//! - **Execution.** The replica executing a run holds the run's Lease and renews it; when that
//!   replica dies, the Lease stops changing and, once another replica has seen it unchanged for
//!   the Lease's duration (its own clock, never the holder's), it may take the Lease and resume
//!   the run from its first unfinished step ([`RunStore::orphaned`], [`RunStore::acquire`]).
//!
//! Lists read every run of the namespace (retention keeps them few) and order them newest first.
//!
//! One file per concern: this one (the store and its queries), [`slot`] (the plan's slot),
//! [`lease`] (the run's Lease: renewal, takeover, relayed decisions), [`record`] (the run as an
//! object), [`events`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

mod events;
mod lease;
mod record;
mod slot;

pub use record::{bounded_status, lost_values, object_name, MAX_STATUS_BYTES, TRUNCATED};
pub use slot::CLAIM_GRACE;

use events::event;
use lease::{renew_loop, Held, Seen};
use record::{hash, record_of, run_lease_name};

use super::{ClaimRules, Page, Refusal, Relayed, Retention, RunStore, RunSummary, StoreError, ACTIVE, COUNTED_ACTIVE};
use crate::record::{Phase, RecoveryRun, RecoveryRunSpec, RunMode, RunRecord};

/// Labels and annotations recoverd puts on what it creates.
const PLAN_ANNOTATION: &str = "recoverd.io/plan";
const PLAN_LABEL: &str = "recoverd.io/plan-hash";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "recoverd");
/// Decisions relayed to the replica holding a run's Lease: `recoverd.io/relay-KEY: JSON`.
const RELAY_PREFIX: &str = "recoverd.io/relay-";

/// How the Kubernetes store is set up.
#[derive(Clone, Debug)]
pub struct KubeStoreConfig {
    /// Where `RecoveryRun`s and Leases live.
    pub namespace: String,
    /// This replica's name in Leases (a pod name, say). Unique per process.
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
}

pub struct KubeStore {
    runs: Api<RecoveryRun>,
    leases: Api<Lease>,
    plans: Api<crate::plan::model::RecoveryPlan>,
    config: KubeStoreConfig,
    state: Arc<Mutex<State>>,
    /// Events on runs: started, awaiting approval, deduplicated, step failed, finished.
    recorder: Recorder,
    /// The namespace's runs as a watch keeps them (lists read this, never the API server).
    cache: kube::runtime::reflector::Store<RecoveryRun>,
    /// Stops the renewal task when the store is dropped.
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    /// The `resourceVersion` of this replica's last write of each run it writes.
    versions: HashMap<String, String>,
    /// Run Leases this replica holds: the Lease's `resourceVersion`, when it was last renewed,
    /// and the token cancelled when it is lost.
    held: HashMap<String, Held>,
    /// What this replica last saw of other replicas' run Leases (or their absence), and since
    /// when: a Lease unchanged for its duration has expired, by this replica's clock.
    seen: HashMap<String, Seen>,
    /// What the last write of each run said (its phase and how many steps had failed), so that
    /// an Event is recorded once per change.
    told: HashMap<String, (Phase, usize)>,
    /// Where relayed decisions go, and their receiver until the run service takes it.
    relays: Option<tokio::sync::mpsc::UnboundedSender<(String, Relayed)>>,
    relayed: Option<tokio::sync::mpsc::UnboundedReceiver<(String, Relayed)>>,
    /// The uid of each run this replica wrote (so Events name it, as `kubectl describe` needs).
    uids: HashMap<String, String>,
    /// Keys of relayed decisions already passed on.
    delivered: std::collections::HashSet<String>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Kube {
        what,
        source: Box::new(source),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl KubeStore {
    /// A store over `client`'s cluster. Starts the task that renews the Leases this replica
    /// holds; call [`KubeStore::check`] to find out whether the CRD and permissions are there.
    pub fn new(client: Client, config: KubeStoreConfig) -> Self {
        let (relays, relayed) = tokio::sync::mpsc::unbounded_channel();
        let state = State {
            relays: Some(relays),
            relayed: Some(relayed),
            ..Default::default()
        };
        let store = KubeStore {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "recoverd".into(),
                    instance: Some(config.identity.clone()),
                },
            ),
            runs: Api::namespaced(client.clone(), &config.namespace),
            leases: Api::namespaced(client.clone(), &config.namespace),
            plans: Api::namespaced(client, &config.namespace),
            config,
            state: Arc::new(Mutex::new(state)),
            stop: CancellationToken::new(),
            cache: kube::runtime::reflector::store().0,
        };
        let (cache, writer) = kube::runtime::reflector::store();
        let watch = kube::runtime::watcher(store.runs.clone(), kube::runtime::watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|event| {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watching RecoveryRuns failed; retrying");
                }
                futures::future::ready(())
            });
        let stop = store.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = watch => {}
            }
        });
        let mut store = store;
        store.cache = cache;
        tokio::spawn(renew_loop(
            store.leases.clone(),
            store.state.clone(),
            store.config.clone(),
            store.stop.clone(),
        ));
        store
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// Fails with what to fix when the `RecoveryRun` CRD is missing or this replica may not
    /// read runs or Leases.
    pub async fn check(&self) -> Result<(), StoreError> {
        // Lists (a page, the active count, approvals to expire, runs to take over) read a
        // watch cache of the namespace's runs; it must have listed them once.
        if tokio::time::timeout(Duration::from_secs(30), self.cache.wait_until_ready())
            .await
            .is_err()
        {
            return Err(StoreError::Stopped(
                "watching RecoveryRuns did not list them within 30 s (may this replica watch recoveryruns?)",
            ));
        }
        self.runs
            .list(&ListParams::default().limit(1))
            .await
            .map_err(kube_err(format!(
                "list RecoveryRuns in namespace {} (is the CRD installed? `recoverd crd | kubectl apply -f -`)",
                self.config.namespace
            )))?;
        self.leases
            .list(&ListParams::default().limit(1))
            .await
            .map_err(kube_err(format!("list Leases in namespace {}", self.config.namespace)))?;
        Ok(())
    }

    /// Every run of the namespace, newest first, from the watch cache (no request).
    async fn all(&self) -> Result<Vec<Arc<RecoveryRun>>, StoreError> {
        let mut out = self.cache.state();
        out.sort_by(|a, b| {
            let key = |o: &RecoveryRun| {
                (
                    o.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    o.metadata.name.clone(),
                )
            };
            key(b).cmp(&key(a))
        });
        Ok(out)
    }

    async fn records(&self) -> Result<Vec<RunRecord>, StoreError> {
        Ok(self.all().await?.iter().map(|o| record_of(o)).collect())
    }

    /// The `RecoveryRun` named `name` for `record`, in the store's namespace, without status.
    fn resource(&self, name: &str, record: &RunRecord) -> RecoveryRun {
        let mut obj = RecoveryRun::new(
            name,
            RecoveryRunSpec {
                plan: record.plan.clone(),
                trigger: record.trigger.clone(),
                mode: record.mode,
            },
        );
        obj.metadata.namespace = Some(self.config.namespace.clone());
        obj
    }

    /// Writes `record` as the run's status with `version` (optimistic concurrency).
    async fn write_status(&self, record: &RunRecord, version: Option<String>) -> Result<String, kube::Error> {
        let name = object_name(&record.id);
        let mut obj = self.resource(&name, record);
        obj.metadata.resource_version = version;
        let mut status: RunRecord =
            serde_json::from_value(bounded_status(record)).expect("a bounded record reads back");
        status.secrets = Default::default();
        obj.status = Some(status);
        let written = self.runs.replace_status(&name, &PostParams::default(), &obj).await?;
        Ok(written.metadata.resource_version.unwrap_or_default())
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait::async_trait]
impl RunStore for KubeStore {
    async fn acquire(&self, id: &str) -> Result<Option<CancellationToken>, StoreError> {
        self.acquire_run(id).await
    }

    async fn orphaned(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.find_orphans().await
    }

    async fn relay(&self, id: &str, decision: &Relayed) -> Result<Option<String>, StoreError> {
        self.relay_to_holder(id, decision).await
    }

    async fn exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .runs
            .get_metadata_opt(&object_name(id))
            .await
            .map_err(kube_err(format!("read RecoveryRun {id}")))?
            .is_some())
    }

    async fn claim(&self, record: &RunRecord, rules: ClaimRules) -> Result<Result<(), Refusal>, StoreError> {
        if self.exists(&record.id).await? {
            self.duplicate(&record.id, record.trigger.kind.as_str());
            return Ok(Err(Refusal::SameRun {
                existing: record.id.clone(),
            }));
        }
        let live = record.mode == RunMode::Live;
        if live && (rules.one_active_per_plan || rules.cooldown.is_some()) {
            if let Err(refusal) = self.take_slot(record, rules).await? {
                return Ok(Err(refusal));
            }
        }
        let name = object_name(&record.id);
        let mut obj = self.resource(&name, record);
        obj.metadata.labels = Some(
            [
                (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
                (PLAN_LABEL.into(), hash(&record.plan)),
            ]
            .into(),
        );
        obj.metadata.annotations = Some(
            [
                (PLAN_ANNOTATION.into(), record.plan.clone()),
                ("recoverd.io/run-id".into(), record.id.clone()),
            ]
            .into(),
        );
        obj.metadata.owner_references = self.owner(&record.plan).await.map(|o| vec![o]);
        let created = match self.runs.create(&PostParams::default(), &obj).await {
            Ok(created) => created,
            Err(e) if is_status(&e, 409) => {
                return Ok(Err(Refusal::SameRun {
                    existing: record.id.clone(),
                }))
            }
            Err(e) => {
                // Nothing was created: the plan's slot (and cooldown) must not name this run.
                self.undo_slot(record).await;
                return Err(kube_err(format!("create RecoveryRun {name}"))(e));
            }
        };
        if let Some(uid) = created.metadata.uid.clone() {
            lock(&self.state).uids.insert(record.id.clone(), uid);
        }
        let version = match self.write_status(record, created.metadata.resource_version).await {
            Ok(version) => version,
            Err(e) => {
                // A run without its record cannot execute: take the claim back whole.
                let _ = self.runs.delete(&name, &DeleteParams::default()).await;
                self.undo_slot(record).await;
                return Err(kube_err(format!("write the status of RecoveryRun {name}"))(e));
            }
        };
        lock(&self.state).versions.insert(record.id.clone(), version);
        self.tell(record);
        Ok(Ok(()))
    }

    async fn transition(&self, record: &RunRecord, from: &[Phase]) -> Result<bool, StoreError> {
        let name = object_name(&record.id);
        for _ in 0..8 {
            let Some(current) = self
                .runs
                .get_opt(&name)
                .await
                .map_err(kube_err(format!("read RecoveryRun {name}")))?
            else {
                return Ok(false);
            };
            if !from.contains(&record_of(&current).phase) {
                return Ok(false);
            }
            match self.write_status(record, current.metadata.resource_version).await {
                Ok(version) => {
                    lock(&self.state).versions.insert(record.id.clone(), version);
                    self.release_slot(record).await;
                    self.tell(record);
                    return Ok(true);
                }
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(kube_err(format!("write RecoveryRun {name}"))(e)),
            }
        }
        Err(StoreError::Conflict { id: record.id.clone() })
    }

    async fn save(&self, record: &RunRecord) -> Result<(), StoreError> {
        // Only from the version of this replica's own last write: a replica that has not
        // acquired the run, or lost it, or saw its write refused, is fenced off.
        let Some(version) = lock(&self.state).versions.get(&record.id).cloned() else {
            return Err(StoreError::Conflict { id: record.id.clone() });
        };
        let name = object_name(&record.id);
        match self.write_status(record, Some(version)).await {
            Ok(version) => {
                lock(&self.state).versions.insert(record.id.clone(), version);
                self.tell(record);
                if record.phase.is_finished() {
                    lock(&self.state).versions.remove(&record.id);
                    self.release_slot(record).await;
                }
                Ok(())
            }
            // Someone else wrote the run since this replica did: it is not ours to write.
            Err(e) if is_status(&e, 409) => {
                lock(&self.state).versions.remove(&record.id);
                Err(StoreError::Conflict { id: record.id.clone() })
            }
            Err(e) if is_status(&e, 404) => {
                lock(&self.state).versions.remove(&record.id);
                Err(StoreError::Gone { id: record.id.clone() })
            }
            Err(e) => Err(kube_err(format!("write RecoveryRun {name}"))(e)),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self
            .runs
            .get_opt(&object_name(id))
            .await
            .map_err(kube_err(format!("read RecoveryRun {id}")))?
            .map(|o| record_of(&o)))
    }

    async fn list(&self, plan: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        Ok(self
            .records()
            .await?
            .into_iter()
            .filter(|r| plan.is_none_or(|p| r.plan == p))
            .take(limit)
            .collect())
    }

    async fn page(&self, plan: Option<&str>, limit: usize, after: Option<&str>) -> Result<Page, StoreError> {
        let after = after.map(super::sqlite::decode_continue).transpose()?;
        let key = |o: &RecoveryRun| {
            (
                o.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(0, |t| t.0.as_millisecond()),
                o.metadata.name.clone().unwrap_or_default(),
            )
        };
        let mut runs = Vec::new();
        let mut last = None;
        let mut more = false;
        for obj in self.all().await? {
            let k = key(&obj);
            if after.as_ref().is_some_and(|a| k >= *a) {
                continue;
            }
            let record = record_of(&obj);
            if plan.is_some_and(|p| record.plan != p) {
                continue;
            }
            if runs.len() == limit {
                more = true;
                break;
            }
            runs.push(RunSummary::of(&record));
            last = Some(k);
        }
        let next = match (more, last) {
            (true, Some((ms, name))) => Some(super::sqlite::encode_continue(ms, &name)),
            _ => None,
        };
        Ok(Page { runs, next })
    }

    async fn in_phase(&self, phase: Phase) -> Result<Vec<RunRecord>, StoreError> {
        Ok(self.records().await?.into_iter().filter(|r| r.phase == phase).collect())
    }

    async fn waiting_for_approval(&self, fingerprint: &str) -> Result<Vec<RunRecord>, StoreError> {
        Ok(self
            .records()
            .await?
            .into_iter()
            .filter(|r| r.phase == Phase::WaitingForApproval && r.trigger.fingerprint.as_deref() == Some(fingerprint))
            .collect())
    }

    async fn mark_interrupted(&self) -> Result<Vec<String>, StoreError> {
        // Runs of a replica that stopped are taken over through their Leases (`orphaned`);
        // at start-up this replica executed nothing.
        Ok(Vec::new())
    }

    async fn active_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .records()
            .await?
            .iter()
            .filter(|r| COUNTED_ACTIVE.contains(&r.phase))
            .count() as i64)
    }

    async fn prune(&self, keep: Retention) -> Result<usize, StoreError> {
        let cutoff = now_ms() - keep.max_age.as_millis().min(i64::MAX as u128) as i64;
        let mut finished = 0u64;
        let mut deleted = 0;
        for obj in self.all().await? {
            if ACTIVE.contains(&record_of(&obj).phase) {
                continue;
            }
            finished += 1;
            let created = obj
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_millisecond());
            if finished > keep.max_runs || created < cutoff {
                let name = obj.metadata.name.clone().unwrap_or_default();
                match self.runs.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => deleted += 1,
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(kube_err(format!("delete RecoveryRun {name}"))(e)),
                }
                let _ = self
                    .leases
                    .delete(&run_lease_name(&name), &DeleteParams::default())
                    .await;
            }
        }
        Ok(deleted)
    }

    async fn check_health(&self) -> Result<(), StoreError> {
        self.runs
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(kube_err("list RecoveryRuns"))?;
        Ok(())
    }

    fn duplicate(&self, id: &str, trigger: &str) {
        let note = format!("the {trigger} was delivered again; it is this run");
        self.publish(id, vec![event(EventType::Normal, "Deduplicated", note)]);
    }

    fn relayed(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(String, Relayed)>> {
        lock(&self.state).relayed.take()
    }

    fn replica(&self) -> Option<String> {
        Some(self.config.identity.clone())
    }

    async fn release(&self, id: &str) {
        let held = {
            let mut s = lock(&self.state);
            s.versions.remove(id);
            s.held.remove(id)
        };
        if let Some(held) = held {
            self.drop_lease(id, &held.version).await;
        }
    }
}
