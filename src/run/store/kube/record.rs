//! The run as a Kubernetes object: its name, the record read back from it, and its status kept
//! within the size an object may have.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::PLAN_ANNOTATION;
use crate::record::{Phase, RecoveryRun, RunRecord};

/// The largest `status` written: etcd refuses objects over 1.5 MiB, and the rest of the object
/// and the request need room too.
pub const MAX_STATUS_BYTES: usize = 1_000_000;

/// What a truncated text ends with.
pub const TRUNCATED: &str = "…[truncated by recoverd: the record exceeded the object size limit]";

pub(super) fn hash(text: &str) -> String {
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

pub(super) fn slot_name(plan: &str) -> String {
    format!("recoverd-plan-{}", hash(plan))
}

pub(super) fn run_lease_name(id: &str) -> String {
    format!("recoverd-run-{}", object_name(id))
}

/// The record of a run object; one whose status was never written (its claiming replica died
/// between the create and the first status write) reads as a Pending run with no steps yet.
pub(super) fn record_of(obj: &RecoveryRun) -> RunRecord {
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

pub(super) fn truncate_strings(value: &mut Value, cap: usize) {
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
