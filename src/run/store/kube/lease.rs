//! A run's Lease (`recoverd-run-ID`): held and renewed by the replica executing the run, taken
//! over once it stops changing, and the way decisions reach that replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::record::{object_name, record_of, run_lease_name};
use super::slot::CLAIM_GRACE;
use super::{is_status, kube_err, lock, KubeStore, KubeStoreConfig, State, MANAGED_BY, RELAY_PREFIX};
use crate::record::{Phase, RunRecord};
use crate::run::store::{Relayed, StoreError, EXECUTING};

pub(super) struct Seen {
    pub(super) version: Option<String>,
    pub(super) since: Instant,
    /// The Lease's own `leaseDurationSeconds` (its holder's setting), at least this replica's.
    pub(super) duration: Duration,
}

pub(super) struct Held {
    pub(super) version: String,
    pub(super) renewed: Instant,
    pub(super) lost: CancellationToken,
    pub(super) tenure: Tenure,
}

/// What a Lease keeps across renewals, as client-go's leader election keeps it: when its holder
/// acquired it, and how many times it changed hands.
#[derive(Clone, Debug)]
pub(super) struct Tenure {
    acquired: MicroTime,
    transitions: i32,
}

impl Tenure {
    /// This replica's tenure of a Lease that is `current` now (`None`: it does not exist yet):
    /// unchanged if this replica holds it already, else acquired now, one more transition when
    /// it was another replica's.
    fn taking(current: Option<&Lease>, identity: &str) -> Tenure {
        let spec = current.and_then(|l| l.spec.as_ref());
        let holder = spec
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
        match (holder, spec.and_then(|s| s.acquire_time.clone())) {
            (Some(h), Some(acquired)) if h == identity => Tenure { acquired, transitions },
            (Some(_), _) => Tenure {
                acquired: MicroTime(jiff::Timestamp::now()),
                transitions: transitions + 1,
            },
            (None, _) => Tenure {
                acquired: MicroTime(jiff::Timestamp::now()),
                transitions,
            },
        }
    }
}

impl KubeStore {
    /// Deletes run `id`'s Lease if it is still at `version` (this replica's): never one another
    /// replica has taken since.
    pub(super) async fn drop_lease(&self, id: &str, version: &str) {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(version.to_string()),
                uid: None,
            }),
            ..Default::default()
        };
        let _ = self.leases.delete(&run_lease_name(id), &dp).await;
    }

    pub(super) async fn acquire_run(&self, id: &str) -> Result<Option<CancellationToken>, StoreError> {
        let name = run_lease_name(id);
        let current = self
            .leases
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("read Lease {name}")))?;
        let version = current.as_ref().and_then(|l| l.metadata.resource_version.clone());
        if let Some(lease) = &current {
            let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
            // Expired: unchanged (the same version this replica observed) for the Lease's own
            // duration, measured by this replica's clock.
            let expired = {
                let s = lock(&self.state);
                s.seen
                    .get(id)
                    .is_some_and(|seen| seen.version == version && seen.since.elapsed() >= seen.duration)
            };
            if holder.is_some_and(|h| h != self.config.identity) && !expired {
                return Ok(None);
            }
        }
        // Decisions relayed to the replica that stopped are this one's to act on now (the
        // renewal below drops them from the Lease).
        if let Some(lease) = &current {
            deliver(&mut lock(&self.state), id, lease);
        }
        let tenure = Tenure::taking(current.as_ref(), &self.config.identity);
        let held_version = match renew(&self.leases, &self.config, id, version, &tenure).await {
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
            o.status.is_some() && matches!(record_of(o).phase, Phase::Pending | Phase::Running | Phase::Interrupted)
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
                tenure,
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
    pub(super) async fn find_orphans(&self) -> Result<Vec<RunRecord>, StoreError> {
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
                let unfinished = EXECUTING.contains(&record.phase) || record.phase == Phase::Interrupted;
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

    pub(super) async fn relay_to_holder(&self, id: &str, decision: &Relayed) -> Result<Option<String>, StoreError> {
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
            lease.metadata.annotations.get_or_insert_with(Default::default).insert(
                format!("{RELAY_PREFIX}{}", decision.key),
                serde_json::to_string(decision).expect("decisions serialize"),
            );
            match self.leases.replace(&name, &PostParams::default(), &lease).await {
                Ok(_) => return Ok(Some(holder)),
                // Renewed meanwhile: read it again.
                Err(e) if is_status(&e, 409) => continue,
                Err(e) if is_status(&e, 404) => return Ok(None),
                Err(e) => return Err(kube_err(format!("write Lease {name}"))(e)),
            }
        }
        Err(StoreError::Conflict { id: id.into() })
    }
}

/// Renews every Lease this replica holds, three times per Lease duration; a Lease not renewed
/// within its duration (the API server unreachable, or another replica took it) is lost: its
/// token is cancelled and the run's writes from here are refused.
pub(super) async fn renew_loop(
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
        let due: Vec<(String, String, Tenure)> = lock(&state)
            .held
            .iter()
            .filter(|(_, h)| h.renewed.elapsed() >= third)
            .map(|(id, h)| (id.clone(), h.version.clone(), h.tenure.clone()))
            .collect();
        let tries = due.into_iter().map(|(id, version, tenure)| {
            let (leases, config) = (&leases, &config);
            async move {
                let sent = Instant::now();
                let result = tokio::time::timeout(third, renew(leases, config, &id, Some(version), &tenure)).await;
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
                        if lease.spec.as_ref().and_then(|l| l.holder_identity.as_deref())
                            == Some(config.identity.as_str()) =>
                    {
                        deliver(&mut s, &id, &lease);
                        if let (Some(h), Some(v)) = (s.held.get_mut(&id), lease.metadata.resource_version) {
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
pub(super) fn deliver(s: &mut State, id: &str, lease: &Lease) {
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
pub(super) fn lose(s: &mut State, id: &str) {
    if let Some(h) = s.held.remove(id) {
        h.lost.cancel();
    }
    s.versions.remove(id);
}

/// Writes run `id`'s Lease as held by this replica now, in `tenure`: created when `version` is
/// `None`, else replaced at `version`. Returns the new `resourceVersion`.
pub(super) async fn renew(
    leases: &Api<Lease>,
    config: &KubeStoreConfig,
    id: &str,
    version: Option<String>,
    tenure: &Tenure,
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
            renew_time: Some(now),
            acquire_time: Some(tenure.acquired.clone()),
            lease_transitions: Some(tenure.transitions),
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
