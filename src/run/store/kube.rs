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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{
    ClaimRules, Page, Refusal, Relayed, Retention, RunStore, RunSummary, StoreError, ACTIVE,
    COUNTED_ACTIVE, EXECUTING,
};
use crate::record::{Phase, RecoveryRun, RecoveryRunSpec, RunMode, RunRecord, TriggerKind};

/// The largest `status` written: etcd refuses objects over 1.5 MiB, and the rest of the object
/// and the request need room too.
pub const MAX_STATUS_BYTES: usize = 1_000_000;

/// How long a plan's slot taken for a run that does not exist (yet) still holds the plan: a
/// claim takes the slot first and creates the run next, and a replica that died in between
/// blocks the plan no longer than this.
pub const CLAIM_GRACE: Duration = Duration::from_secs(60);

/// What a truncated text ends with.
pub const TRUNCATED: &str = "…[truncated by recoverd: the record exceeded the object size limit]";

/// Labels and annotations recoverd puts on what it creates.
const PLAN_ANNOTATION: &str = "recoverd.io/plan";
const PLAN_LABEL: &str = "recoverd.io/plan-hash";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "recoverd");
const LAST_ALERT_RUN: &str = "recoverd.io/last-alert-run";
const LAST_ALERT_RUN_MS: &str = "recoverd.io/last-alert-run-ms";
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

struct Seen {
    version: Option<String>,
    since: Instant,
    /// The Lease's own `leaseDurationSeconds` (its holder's setting), at least this replica's.
    duration: Duration,
}

struct Held {
    version: String,
    renewed: Instant,
    lost: CancellationToken,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The object name of run `id`: the id itself when it is a valid name (recoverd's ids are),
/// otherwise a hash of it.
pub fn object_name(id: &str) -> String {
    let valid = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if valid {
        id.to_string()
    } else {
        format!("run-{}", hash(id))
    }
}

fn slot_name(plan: &str) -> String {
    format!("recoverd-plan-{}", hash(plan))
}

fn run_lease_name(id: &str) -> String {
    format!("recoverd-run-{}", object_name(id))
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

/// The record of a run object; one whose status was never written (its claiming replica died
/// between the create and the first status write) reads as a Pending run with no steps yet.
fn record_of(obj: &RecoveryRun) -> RunRecord {
    if let Some(status) = &obj.status {
        return status.clone();
    }
    let id = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("recoverd.io/run-id"))
        .cloned()
        .or_else(|| obj.metadata.name.clone())
        .unwrap_or_default();
    let plan = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PLAN_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| obj.spec.plan.clone());
    RunRecord {
        id,
        plan,
        trigger: obj.spec.trigger.clone(),
        mode: obj.spec.mode,
        phase: Phase::Pending,
        created_at: obj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        ..Default::default()
    }
}

/// The record as a `status` within [`MAX_STATUS_BYTES`]: the longest texts are cut (with
/// [`TRUNCATED`]) until it fits; if many short values still do not fit, the steps' inputs,
/// outputs and diffs are replaced by a note, and then the run's params, alert and outputs.
/// Every step's name, status, times and error are always kept.
pub fn bounded_status(record: &RunRecord) -> Value {
    let size = |v: &Value| serde_json::to_vec(v).map_or(0, |b| b.len());
    let mut value = serde_json::to_value(record).expect("records serialize");
    let mut cap = 16 * 1024;
    while size(&value) > MAX_STATUS_BYTES && cap >= 64 {
        truncate_strings(&mut value, cap);
        cap /= 4;
    }
    let omitted = |v: &Value| Value::String(format!("{TRUNCATED} ({} bytes omitted)", size(v)));
    if size(&value) > MAX_STATUS_BYTES {
        for list in ["steps", "onFailure"] {
            for step in value[list].as_array_mut().into_iter().flatten() {
                for field in ["inputs", "outputs", "diff"] {
                    if let Some(v) = step.get_mut(field) {
                        *v = omitted(v);
                    }
                }
            }
        }
    }
    if size(&value) > MAX_STATUS_BYTES {
        for field in ["params", "alert", "outputs"] {
            if let Some(v) = value.get_mut(field) {
                *v = if field == "alert" {
                    omitted(v)
                } else {
                    serde_json::json!({"omitted": omitted(v)})
                };
            }
        }
    }
    value
}

/// Whether a record read back lost values to the size limit: its outputs cannot feed later
/// steps (a template would render the marker), so such a run is not resumed.
pub fn lost_values(record: &RunRecord) -> bool {
    record
        .outputs
        .values()
        .chain(record.params.values())
        .any(|v| v.to_string().contains(TRUNCATED))
}

fn truncate_strings(value: &mut Value, cap: usize) {
    match value {
        Value::String(s) if s.len() > cap => {
            let mut cut = cap;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str(TRUNCATED);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| truncate_strings(v, cap)),
        Value::Object(map) => map.values_mut().for_each(|v| truncate_strings(v, cap)),
        _ => {}
    }
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
        };
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
            .map_err(kube_err(format!(
                "list Leases in namespace {}",
                self.config.namespace
            )))?;
        Ok(())
    }

    async fn all(&self) -> Result<Vec<RecoveryRun>, StoreError> {
        let mut out = Vec::new();
        let mut lp = ListParams::default().limit(500);
        loop {
            let list = self
                .runs
                .list(&lp)
                .await
                .map_err(kube_err("list RecoveryRuns"))?;
            out.extend(list.items);
            match list.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => break,
            }
        }
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
        Ok(self.all().await?.iter().map(record_of).collect())
    }

    /// The owner reference to the run's `RecoveryPlan`, when the plan is a resource in the
    /// store's namespace (owners must share the namespace).
    async fn owner(&self, plan: &str) -> Option<OwnerReference> {
        let (ns, name) = plan.split_once('/')?;
        if ns != self.config.namespace {
            return None;
        }
        // Read each time, never cached: a plan deleted and created again has a new uid, and a
        // run owned by the old one would be garbage-collected while it runs.
        let uid = self.plans.get_opt(name).await.ok()??.metadata.uid?;
        Some(OwnerReference {
            api_version: "recoverd.io/v1alpha1".into(),
            kind: "RecoveryPlan".into(),
            name: name.into(),
            uid,
            ..Default::default()
        })
    }

    /// Records Events for what changed in `record` since this replica last wrote it, in the
    /// background (an Event never holds up a run).
    fn tell(&self, record: &RunRecord) {
        let failed: Vec<&crate::record::StepRecord> = record
            .steps
            .iter()
            .chain(&record.on_failure)
            .filter(|s| s.status == crate::record::StepStatus::Failed)
            .collect();
        let before = lock(&self.state)
            .told
            .insert(record.id.clone(), (record.phase, failed.len()));
        let mut events = Vec::new();
        let (phase_before, failed_before) = before.map_or((None, 0), |(p, n)| (Some(p), n));
        for step in failed.iter().skip(failed_before) {
            events.push(event(
                EventType::Warning,
                "StepFailed",
                format!(
                    "step {:?} failed{}: {}",
                    step.name,
                    step.cluster
                        .as_deref()
                        .map(|c| format!(" on cluster {c}"))
                        .unwrap_or_default(),
                    step.error.as_deref().unwrap_or("no reason recorded")
                ),
            ));
        }
        if phase_before != Some(record.phase) {
            let (type_, note) = match record.phase {
                Phase::Pending | Phase::Running if phase_before.is_none() => (
                    EventType::Normal,
                    format!("run of plan {} started", record.plan),
                ),
                Phase::WaitingForApproval => (
                    EventType::Normal,
                    format!("run of plan {} awaits approval", record.plan),
                ),
                Phase::Succeeded | Phase::Cancelled => (
                    EventType::Normal,
                    record.error.clone().unwrap_or_else(|| "run ended".into()),
                ),
                Phase::SucceededWithErrors | Phase::Failed | Phase::Interrupted => (
                    EventType::Warning,
                    record.error.clone().unwrap_or_else(|| "run ended".into()),
                ),
                _ => return self.publish(&record.id, events),
            };
            let reason = match record.phase {
                Phase::Pending | Phase::Running => "Started",
                Phase::WaitingForApproval => "AwaitingApproval",
                other => other.as_str(),
            };
            events.push(event(type_, reason, note));
        }
        // (The reference, with the run's uid, is taken before the run is forgotten.)
        self.publish(&record.id, events);
        if record.phase.is_finished() {
            let mut s = lock(&self.state);
            s.told.remove(&record.id);
            s.uids.remove(&record.id);
        }
    }

    fn publish(&self, id: &str, events: Vec<KubeEvent>) {
        if events.is_empty() {
            return;
        }
        let (recorder, reference) = (self.recorder.clone(), self.reference(id));
        let id = id.to_string();
        tokio::spawn(async move {
            for e in events {
                if let Err(err) = recorder.publish(&e, &reference).await {
                    tracing::warn!(run = %id, error = %err, "failed to record an Event for the run");
                }
            }
        });
    }

    fn reference(&self, id: &str) -> ObjectReference {
        ObjectReference {
            uid: lock(&self.state).uids.get(id).cloned(),
            api_version: Some("recoverd.io/v1alpha1".into()),
            kind: Some("RecoveryRun".into()),
            name: Some(object_name(id)),
            namespace: Some(self.config.namespace.clone()),
            ..Default::default()
        }
    }

    /// Deletes run `id`'s Lease if it is still at `version` (this replica's): never one another
    /// replica has taken since.
    async fn drop_lease(&self, id: &str, version: &str) {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(version.to_string()),
                uid: None,
            }),
            ..Default::default()
        };
        let _ = self.leases.delete(&run_lease_name(id), &dp).await;
    }

    /// Takes the plan's slot for `record` unless the rules refuse it.
    async fn take_slot(
        &self,
        record: &RunRecord,
        rules: ClaimRules,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let name = slot_name(&record.plan);
        for _ in 0..8 {
            let current = self
                .leases
                .get_opt(&name)
                .await
                .map_err(kube_err(format!("read Lease {name}")))?;
            let mut lease = current.clone().unwrap_or_else(|| Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some([(MANAGED_BY.0.into(), MANAGED_BY.1.into())].into()),
                    annotations: Some([(PLAN_ANNOTATION.into(), record.plan.clone())].into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec::default()),
            });
            let spec = lease.spec.get_or_insert_with(Default::default);
            if let Some(holder) = spec.holder_identity.clone().filter(|h| !h.is_empty()) {
                // This very run: claimed before, unless its claim failed after taking the slot
                // (then it is taken again below, and the run created).
                if holder == record.id && self.exists(&record.id).await? {
                    return Ok(Err(Refusal::SameRun { existing: holder }));
                }
                let acquired = spec.acquire_time.as_ref().map(|t| t.0);
                if holder != record.id
                    && rules.one_active_per_plan
                    && self.still_active(&holder, acquired).await?
                {
                    return Ok(Err(Refusal::ActiveRun { existing: holder }));
                }
            }
            let annotations = lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            if let Some(cooldown) = rules.cooldown {
                let last_ms = annotations
                    .get(LAST_ALERT_RUN_MS)
                    .and_then(|v| v.parse::<i64>().ok());
                if let (Some(ms), Some(last)) = (last_ms, annotations.get(LAST_ALERT_RUN)) {
                    if ms > now_ms() - cooldown.as_millis() as i64 {
                        return Ok(Err(Refusal::Cooldown { last: last.clone() }));
                    }
                }
            }
            if record.trigger.kind == TriggerKind::Alert {
                annotations.insert(LAST_ALERT_RUN.into(), record.id.clone());
                annotations.insert(LAST_ALERT_RUN_MS.into(), now_ms().to_string());
            }
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(record.id.clone());
            spec.acquire_time = Some(MicroTime(jiff::Timestamp::now()));
            let written = match current {
                Some(_) => {
                    self.leases
                        .replace(&name, &PostParams::default(), &lease)
                        .await
                }
                None => self.leases.create(&PostParams::default(), &lease).await,
            };
            match written {
                Ok(_) => return Ok(Ok(())),
                // Another replica wrote the slot since we read it: read it again.
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(kube_err(format!("write Lease {name}"))(e)),
            }
        }
        Err(StoreError::Conflict {
            id: record.id.clone(),
        })
    }

    /// Whether run `id`, holding a plan's slot since `acquired`, has not finished. A slot held
    /// by a finished run is free; one held by a run that does not exist is free only once
    /// [`CLAIM_GRACE`] has passed — until then its replica is between taking the slot and
    /// creating the run.
    async fn still_active(
        &self,
        id: &str,
        acquired: Option<jiff::Timestamp>,
    ) -> Result<bool, StoreError> {
        let found = self
            .runs
            .get_opt(&object_name(id))
            .await
            .map_err(kube_err(format!("read RecoveryRun {id}")))?;
        Ok(match found {
            Some(o) => ACTIVE.contains(&record_of(&o).phase),
            None => acquired.is_some_and(|t| {
                jiff::Timestamp::now().duration_since(t).unsigned_abs() < CLAIM_GRACE
            }),
        })
    }

    /// Takes back what a claim of `record` wrote on its plan's slot (its holder, and the
    /// cooldown it started) when the run was not created after all.
    async fn undo_slot(&self, record: &RunRecord) {
        let name = slot_name(&record.plan);
        let Ok(Some(mut lease)) = self.leases.get_opt(&name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mut changed = false;
        if spec.holder_identity.as_deref() == Some(record.id.as_str()) {
            spec.holder_identity = None;
            changed = true;
        }
        let annotations = lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        if annotations.get(LAST_ALERT_RUN) == Some(&record.id) {
            annotations.remove(LAST_ALERT_RUN);
            annotations.remove(LAST_ALERT_RUN_MS);
            changed = true;
        }
        if changed {
            // A conflict: another claim changed the slot since; it is theirs now.
            let _ = self
                .leases
                .replace(&name, &PostParams::default(), &lease)
                .await;
        }
    }

    /// Frees the plan's slot when `record` holds it and has finished.
    async fn release_slot(&self, record: &RunRecord) {
        if ACTIVE.contains(&record.phase) || record.mode != RunMode::Live {
            return;
        }
        let name = slot_name(&record.plan);
        let Ok(Some(mut lease)) = self.leases.get_opt(&name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(record.id.as_str()) {
            return;
        }
        spec.holder_identity = None;
        // A conflict means another claim changed the slot: it is no longer ours to free.
        let _ = self
            .leases
            .replace(&name, &PostParams::default(), &lease)
            .await;
    }

    /// Writes `record` as the run's status with `version` (optimistic concurrency).
    async fn write_status(
        &self,
        record: &RunRecord,
        version: Option<String>,
    ) -> Result<String, kube::Error> {
        let name = object_name(&record.id);
        let mut obj = RecoveryRun::new(
            &name,
            RecoveryRunSpec {
                plan: record.plan.clone(),
                trigger: record.trigger.clone(),
                mode: record.mode,
            },
        );
        obj.metadata.namespace = Some(self.config.namespace.clone());
        obj.metadata.resource_version = version;
        let mut status: RunRecord =
            serde_json::from_value(bounded_status(record)).expect("a bounded record reads back");
        status.secrets = Default::default();
        obj.status = Some(status);
        let written = self
            .runs
            .replace_status(&name, &PostParams::default(), &obj)
            .await?;
        Ok(written.metadata.resource_version.unwrap_or_default())
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn event(type_: EventType, reason: &str, note: String) -> KubeEvent {
    let note: String = note.chars().take(1000).collect();
    KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Run".into(),
        secondary: None,
    }
}

/// Renews every Lease this replica holds, three times per Lease duration; a Lease not renewed
/// within its duration (the API server unreachable, or another replica took it) is lost: its
/// token is cancelled and the run's writes from here are refused.
async fn renew_loop(
    leases: Api<Lease>,
    state: Arc<Mutex<State>>,
    config: KubeStoreConfig,
    stop: CancellationToken,
) {
    // As client-go's leader election: renew every third of the duration, each try bounded by
    // that third, and count a Lease lost once it was not renewed within two thirds of the
    // duration since the last successful renewal was *sent* — before any other replica may
    // take it (they wait the whole duration, by their own clocks).
    let third = config.lease_duration / 3;
    let deadline = third * 2;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(third / 2) => {}
        }
        let due: Vec<(String, String)> = lock(&state)
            .held
            .iter()
            .filter(|(_, h)| h.renewed.elapsed() >= third)
            .map(|(id, h)| (id.clone(), h.version.clone()))
            .collect();
        let tries = due.into_iter().map(|(id, version)| {
            let (leases, config) = (&leases, &config);
            async move {
                let sent = Instant::now();
                let result =
                    tokio::time::timeout(third, renew(leases, config, &id, Some(version))).await;
                (id, sent, result)
            }
        });
        for (id, sent, result) in futures::future::join_all(tries).await {
            // Changed by someone else: still ours (a decision was relayed on it) or taken.
            if matches!(&result, Ok(Err(e)) if is_status(e, 409)) {
                let fresh = leases.get_opt(&run_lease_name(&id)).await;
                let mut s = lock(&state);
                match fresh {
                    Ok(Some(lease))
                        if lease
                            .spec
                            .as_ref()
                            .and_then(|l| l.holder_identity.as_deref())
                            == Some(config.identity.as_str()) =>
                    {
                        deliver(&mut s, &id, &lease);
                        if let (Some(h), Some(v)) =
                            (s.held.get_mut(&id), lease.metadata.resource_version)
                        {
                            // Renewed from this version at the next tick, which drops the
                            // relayed decisions from the Lease.
                            h.version = v;
                        }
                    }
                    Ok(_) => {
                        tracing::error!(run = %id, "another replica holds this run's Lease now; this one stops the run without writing it again");
                        lose(&mut s, &id);
                    }
                    Err(e) => {
                        tracing::warn!(run = %id, error = %e, "failed to read this run's Lease; trying again");
                    }
                }
                continue;
            }
            let mut s = lock(&state);
            let Some(h) = s.held.get_mut(&id) else {
                continue;
            };
            let gone = match result {
                Ok(Ok(v)) => {
                    h.version = v;
                    h.renewed = sent;
                    false
                }
                // Deleted: lost now.
                Ok(Err(e)) if is_status(&e, 404) => {
                    tracing::error!(run = %id, error = %e, "another replica holds this run's Lease now; this one stops the run without writing it again");
                    true
                }
                Ok(Err(e)) => {
                    tracing::warn!(run = %id, error = %e, "failed to renew this run's Lease; trying again");
                    false
                }
                Err(_) => {
                    tracing::warn!(run = %id, "renewing this run's Lease timed out; trying again");
                    false
                }
            };
            if gone || h.renewed.elapsed() >= deadline {
                lose(&mut s, &id);
            }
        }
        // Held Leases not renewed within the deadline, whether or not a try is under way.
        let late: Vec<String> = lock(&state)
            .held
            .iter()
            .filter(|(_, h)| h.renewed.elapsed() >= deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            tracing::error!(run = %id, "could not renew this run's Lease in time; another replica may take it over, so this one stops the run without writing it again");
            lose(&mut lock(&state), &id);
        }
    }
}

/// Passes on the decisions relayed on run `id`'s Lease, each once.
fn deliver(s: &mut State, id: &str, lease: &Lease) {
    let relayed: Vec<(String, Relayed)> = lease
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(RELAY_PREFIX))
        .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v).ok()?)))
        .collect();
    for (key, decision) in relayed {
        if s.delivered.insert(key) {
            if let Some(relays) = &s.relays {
                let _ = relays.send((id.to_string(), decision));
            }
        }
    }
}

/// This replica no longer holds run `id`: its token is cancelled (the run stops) and its
/// writes are fenced from here (no cached `resourceVersion`, so every save is refused).
fn lose(s: &mut State, id: &str) {
    if let Some(h) = s.held.remove(id) {
        h.lost.cancel();
    }
    s.versions.remove(id);
}

/// Writes run `id`'s Lease as held by this replica now: created when `version` is `None`,
/// else replaced at `version`. Returns the new `resourceVersion`.
async fn renew(
    leases: &Api<Lease>,
    config: &KubeStoreConfig,
    id: &str,
    version: Option<String>,
) -> Result<String, kube::Error> {
    let now = MicroTime(jiff::Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(run_lease_name(id)),
            resource_version: version.clone(),
            labels: Some([(MANAGED_BY.0.into(), MANAGED_BY.1.into())].into()),
            annotations: Some([("recoverd.io/run-id".into(), id.into())].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(config.lease_duration.as_secs().max(1) as i32),
            renew_time: Some(now.clone()),
            acquire_time: version.is_none().then_some(now),
            ..Default::default()
        }),
    };
    let written = match version {
        Some(_) => {
            leases
                .replace(&run_lease_name(id), &PostParams::default(), &lease)
                .await?
        }
        None => leases.create(&PostParams::default(), &lease).await?,
    };
    Ok(written.metadata.resource_version.unwrap_or_default())
}

#[async_trait::async_trait]
impl RunStore for KubeStore {
    async fn exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .runs
            .get_metadata_opt(&object_name(id))
            .await
            .map_err(kube_err(format!("read RecoveryRun {id}")))?
            .is_some())
    }

    async fn claim(
        &self,
        record: &RunRecord,
        rules: ClaimRules,
    ) -> Result<Result<(), Refusal>, StoreError> {
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
        let mut obj = RecoveryRun::new(
            &name,
            RecoveryRunSpec {
                plan: record.plan.clone(),
                trigger: record.trigger.clone(),
                mode: record.mode,
            },
        );
        obj.metadata.namespace = Some(self.config.namespace.clone());
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
        let version = match self
            .write_status(record, created.metadata.resource_version)
            .await
        {
            Ok(version) => version,
            Err(e) => {
                // A run without its record cannot execute: take the claim back whole.
                let _ = self.runs.delete(&name, &DeleteParams::default()).await;
                self.undo_slot(record).await;
                return Err(kube_err(format!("write the status of RecoveryRun {name}"))(
                    e,
                ));
            }
        };
        lock(&self.state)
            .versions
            .insert(record.id.clone(), version);
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
            match self
                .write_status(record, current.metadata.resource_version)
                .await
            {
                Ok(version) => {
                    lock(&self.state)
                        .versions
                        .insert(record.id.clone(), version);
                    self.release_slot(record).await;
                    self.tell(record);
                    return Ok(true);
                }
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(kube_err(format!("write RecoveryRun {name}"))(e)),
            }
        }
        Err(StoreError::Conflict {
            id: record.id.clone(),
        })
    }

    async fn save(&self, record: &RunRecord) -> Result<(), StoreError> {
        // Only from the version of this replica's own last write: a replica that has not
        // acquired the run, or lost it, or saw its write refused, is fenced off.
        let Some(version) = lock(&self.state).versions.get(&record.id).cloned() else {
            return Err(StoreError::Conflict {
                id: record.id.clone(),
            });
        };
        let name = object_name(&record.id);
        match self.write_status(record, Some(version)).await {
            Ok(version) => {
                lock(&self.state)
                    .versions
                    .insert(record.id.clone(), version);
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
                Err(StoreError::Conflict {
                    id: record.id.clone(),
                })
            }
            Err(e) if is_status(&e, 404) => {
                lock(&self.state).versions.remove(&record.id);
                Err(StoreError::Gone {
                    id: record.id.clone(),
                })
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

    async fn page(
        &self,
        plan: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page, StoreError> {
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
        Ok(self
            .records()
            .await?
            .into_iter()
            .filter(|r| r.phase == phase)
            .collect())
    }

    async fn waiting_for_approval(&self, fingerprint: &str) -> Result<Vec<RunRecord>, StoreError> {
        Ok(self
            .records()
            .await?
            .into_iter()
            .filter(|r| {
                r.phase == Phase::WaitingForApproval
                    && r.trigger.fingerprint.as_deref() == Some(fingerprint)
            })
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

    async fn acquire(&self, id: &str) -> Result<Option<CancellationToken>, StoreError> {
        let name = run_lease_name(id);
        let current = self
            .leases
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("read Lease {name}")))?;
        let version = current
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        if let Some(lease) = &current {
            let holder = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref());
            // Expired: unchanged (the same version this replica observed) for the Lease's own
            // duration, measured by this replica's clock.
            let expired = {
                let s = lock(&self.state);
                s.seen.get(id).is_some_and(|seen| {
                    seen.version == version && seen.since.elapsed() >= seen.duration
                })
            };
            if holder.is_some_and(|h| h != self.config.identity) && !expired {
                return Ok(None);
            }
        }
        let held_version = match renew(&self.leases, &self.config, id, version).await {
            Ok(v) => v,
            // Another replica took it first.
            Err(e) if is_status(&e, 409) => return Ok(None),
            Err(e) => return Err(kube_err(format!("write Lease {name}"))(e)),
        };
        // The run as it is now: only a run about to start, executing or interrupted (to be taken
        // over) is executed, and its
        // writes from here go on top of exactly this version (the fence).
        let run = match self.runs.get_opt(&object_name(id)).await {
            Ok(run) => run,
            Err(e) => {
                self.drop_lease(id, &held_version).await;
                return Err(kube_err(format!("read RecoveryRun {id}"))(e));
            }
        };
        let executable = run.as_ref().filter(|o| {
            o.status.is_some()
                && matches!(
                    record_of(o).phase,
                    Phase::Pending | Phase::Running | Phase::Interrupted
                )
        });
        let Some(run) = executable else {
            self.drop_lease(id, &held_version).await;
            return Ok(None);
        };
        let lost = CancellationToken::new();
        let mut s = lock(&self.state);
        s.held.insert(
            id.to_string(),
            Held {
                version: held_version,
                renewed: Instant::now(),
                lost: lost.clone(),
            },
        );
        s.seen.remove(id);
        s.versions.insert(
            id.to_string(),
            run.metadata.resource_version.clone().unwrap_or_default(),
        );
        if let Some(uid) = run.metadata.uid.clone() {
            s.uids.insert(id.to_string(), uid);
        }
        Ok(Some(lost))
    }

    /// Lists the runs that were executing on a replica that stopped: Pending, Running or
    /// Interrupted, and their run Lease has not changed for its own duration as this replica
    /// has watched it (or has not existed that long). Call it periodically; the first call only
    /// starts watching. A run whose claim never completed (no status [`CLAIM_GRACE`] after its
    /// creation: its replica died between the two writes, before any step) is deleted and its
    /// plan's slot freed, so that the alert's next delivery claims it again.
    async fn orphaned(&self) -> Result<Vec<RunRecord>, StoreError> {
        let objects = self.all().await?;
        let leases = self
            .leases
            .list(&ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)))
            .await
            .map_err(kube_err("list Leases"))?;
        let leases: HashMap<String, (String, Duration)> = leases
            .items
            .into_iter()
            .filter_map(|l| {
                let secs = l.spec.as_ref().and_then(|s| s.lease_duration_seconds);
                let duration = Duration::from_secs(secs.unwrap_or(0).max(0) as u64);
                Some((l.metadata.name?, (l.metadata.resource_version?, duration)))
            })
            .collect();
        let mut abandoned = Vec::new();
        let out = {
            let mut state = lock(&self.state);
            let mut out = Vec::new();
            let mut still = HashMap::new();
            for obj in &objects {
                let record = record_of(obj);
                if obj.status.is_none() {
                    let age = obj
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| jiff::Timestamp::now().duration_since(t.0).unsigned_abs());
                    if age.is_some_and(|a| a > CLAIM_GRACE) {
                        abandoned.push((record, obj.metadata.uid.clone()));
                    }
                    continue;
                }
                // Interrupted too: a replica that shut down gracefully released the run.
                let unfinished =
                    EXECUTING.contains(&record.phase) || record.phase == Phase::Interrupted;
                if !unfinished || state.held.contains_key(&record.id) {
                    continue;
                }
                let (version, duration) = match leases.get(&run_lease_name(&record.id)) {
                    Some((v, d)) => (Some(v.clone()), (*d).max(self.config.lease_duration)),
                    None => (None, self.config.lease_duration),
                };
                let since = match state.seen.get(&record.id) {
                    Some(seen) if seen.version == version => seen.since,
                    _ => Instant::now(),
                };
                if since.elapsed() >= duration {
                    out.push(record.clone());
                }
                still.insert(
                    record.id.clone(),
                    Seen {
                        version,
                        since,
                        duration,
                    },
                );
            }
            state.seen = still;
            out
        };
        for (record, uid) in abandoned {
            tracing::warn!(run = %record.id, "a claim that never completed (its replica stopped before writing the record); deleting it so the alert's next delivery claims it again");
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..Default::default()
            };
            let _ = self.runs.delete(&object_name(&record.id), &dp).await;
            self.undo_slot(&record).await;
        }
        Ok(out)
    }

    fn duplicate(&self, id: &str, trigger: &str) {
        let note = format!("the {trigger} was delivered again; it is this run");
        self.publish(id, vec![event(EventType::Normal, "Deduplicated", note)]);
    }

    async fn relay(&self, id: &str, decision: &Relayed) -> Result<Option<String>, StoreError> {
        let name = run_lease_name(id);
        for _ in 0..8 {
            let Some(mut lease) = self
                .leases
                .get_opt(&name)
                .await
                .map_err(kube_err(format!("read Lease {name}")))?
            else {
                return Ok(None);
            };
            let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
            let Some(holder) = holder.filter(|h| *h != self.config.identity) else {
                return Ok(None);
            };
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    format!("{RELAY_PREFIX}{}", decision.key),
                    serde_json::to_string(decision).expect("decisions serialize"),
                );
            match self
                .leases
                .replace(&name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => return Ok(Some(holder)),
                // Renewed meanwhile: read it again.
                Err(e) if is_status(&e, 409) => continue,
                Err(e) if is_status(&e, 404) => return Ok(None),
                Err(e) => return Err(kube_err(format!("write Lease {name}"))(e)),
            }
        }
        Err(StoreError::Conflict { id: id.into() })
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
