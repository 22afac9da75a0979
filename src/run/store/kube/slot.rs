//! A plan's slot: the Lease (`recoverd-plan-…`) whose holder is the plan's active run and whose
//! annotations say when its last alert-triggered run began — how one active run per plan and
//! the cooldown hold across replicas.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{ObjectMeta, PostParams};

use super::record::{object_name, record_of, slot_name};
use super::{is_status, kube_err, now_ms, KubeStore, MANAGED_BY, PLAN_ANNOTATION};
use crate::record::{RunMode, RunRecord, TriggerKind};
use crate::run::store::{ClaimRules, Refusal, RunStore, StoreError, ACTIVE};

/// How long a plan's slot taken for a run that does not exist (yet) still holds the plan: a
/// claim takes the slot first and creates the run next, and a replica that died in between
/// blocks the plan no longer than this.
pub const CLAIM_GRACE: Duration = Duration::from_secs(60);

pub(super) const LAST_ALERT_RUN: &str = "recoverd.io/last-alert-run";

pub(super) const LAST_ALERT_RUN_MS: &str = "recoverd.io/last-alert-run-ms";

impl KubeStore {
    /// Takes the plan's slot for `record` unless the rules refuse it.
    pub(super) async fn take_slot(
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
                if holder != record.id && rules.one_active_per_plan && self.still_active(&holder, acquired).await? {
                    return Ok(Err(Refusal::ActiveRun { existing: holder }));
                }
            }
            let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
            if let Some(cooldown) = rules.cooldown {
                let last_ms = annotations.get(LAST_ALERT_RUN_MS).and_then(|v| v.parse::<i64>().ok());
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
                Some(_) => self.leases.replace(&name, &PostParams::default(), &lease).await,
                None => self.leases.create(&PostParams::default(), &lease).await,
            };
            match written {
                Ok(_) => return Ok(Ok(())),
                // Another replica wrote the slot since we read it: read it again.
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(kube_err(format!("write Lease {name}"))(e)),
            }
        }
        Err(StoreError::Conflict { id: record.id.clone() })
    }

    /// Takes back what a claim of `record` wrote on its plan's slot (its holder, and the
    /// cooldown it started) when the run was not created after all.
    pub(super) async fn undo_slot(&self, record: &RunRecord) {
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
        let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
        if annotations.get(LAST_ALERT_RUN) == Some(&record.id) {
            annotations.remove(LAST_ALERT_RUN);
            annotations.remove(LAST_ALERT_RUN_MS);
            changed = true;
        }
        if changed {
            // A conflict: another claim changed the slot since; it is theirs now.
            let _ = self.leases.replace(&name, &PostParams::default(), &lease).await;
        }
    }

    /// Whether run `id`, holding a plan's slot since `acquired`, has not finished. A slot held
    /// by a finished run is free; one held by a run that does not exist is free only once
    /// [`CLAIM_GRACE`] has passed — until then its replica is between taking the slot and
    /// creating the run.
    pub(super) async fn still_active(&self, id: &str, acquired: Option<jiff::Timestamp>) -> Result<bool, StoreError> {
        let found = self
            .runs
            .get_opt(&object_name(id))
            .await
            .map_err(kube_err(format!("read RecoveryRun {id}")))?;
        Ok(match found {
            Some(o) => ACTIVE.contains(&record_of(&o).phase),
            None => acquired.is_some_and(|t| jiff::Timestamp::now().duration_since(t).unsigned_abs() < CLAIM_GRACE),
        })
    }

    /// Frees the plan's slot when `record` holds it and has finished.
    pub(super) async fn release_slot(&self, record: &RunRecord) {
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
        let _ = self.leases.replace(&name, &PostParams::default(), &lease).await;
    }

    /// The owner reference to the run's `RecoveryPlan`, when the plan is a resource in the
    /// store's namespace (owners must share the namespace).
    pub(super) async fn owner(&self, plan: &str) -> Option<OwnerReference> {
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
}
