//! Events on runs — started, awaiting approval, deduplicated, step failed, finished — recorded
//! in the background so that an Event never holds up a run.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KubeEvent, EventType};

use super::record::object_name;
use super::{lock, KubeStore};
use crate::record::{Phase, RunRecord};

impl KubeStore {
    /// Records Events for what changed in `record` since this replica last wrote it, in the
    /// background (an Event never holds up a run).
    pub(super) fn tell(&self, record: &RunRecord) {
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
                Phase::Pending | Phase::Running if phase_before.is_none() => {
                    (EventType::Normal, format!("run of plan {} started", record.plan))
                }
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

    pub(super) fn publish(&self, id: &str, events: Vec<KubeEvent>) {
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

    pub(super) fn reference(&self, id: &str) -> ObjectReference {
        ObjectReference {
            uid: lock(&self.state).uids.get(id).cloned(),
            api_version: Some("recoverd.io/v1alpha1".into()),
            kind: Some("RecoveryRun".into()),
            name: Some(object_name(id)),
            namespace: Some(self.config.namespace.clone()),
            ..Default::default()
        }
    }
}

pub(super) fn event(type_: EventType, reason: &str, note: String) -> KubeEvent {
    let note: String = note.chars().take(1000).collect();
    KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Run".into(),
        secondary: None,
    }
}
