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
        created_at: obj.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
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
            let steps = value.get_mut(list).and_then(Value::as_array_mut);
            for step in steps.into_iter().flatten() {
                let children = step.get_mut("children").and_then(Value::as_array_mut);
                for child in children.into_iter().flatten() {
                    for field in ["inputs", "outputs", "diff"] {
                        if let Some(v) = child.get_mut(field) {
                            *v = if field == "outputs" {
                                serde_json::json!({"omitted": omitted(v)})
                            } else {
                                omitted(v)
                            };
                        }
                    }
                }
                for field in ["inputs", "outputs", "diff"] {
                    if let Some(v) = step.get_mut(field) {
                        // (`outputs` is a map in the record's schema; the others are free.)
                        *v = if field == "outputs" {
                            serde_json::json!({"omitted": omitted(v)})
                        } else {
                            omitted(v)
                        };
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
    // (A forEach iteration's outputs feed its next steps when it is resumed.)
    let children = record
        .steps
        .iter()
        .chain(&record.on_failure)
        .flat_map(|s| &s.children)
        .flat_map(|c| c.outputs.values());
    record
        .outputs
        .values()
        .chain(record.params.values())
        .chain(children)
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
        // A forEach iteration's `item` is what a resumed run matches it by: never cut.
        Value::Object(map) => map
            .iter_mut()
            .filter(|(k, _)| k.as_str() != "item")
            .for_each(|(_, v)| truncate_strings(v, cap)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::StepRecord;

    fn size(v: &Value) -> usize {
        serde_json::to_vec(v).unwrap().len()
    }

    #[test]
    fn a_record_of_many_short_values_is_shrunk_to_fit_keeping_every_step() {
        let many: serde_json::Map<String, Value> = (0..60_000)
            .map(|i| (format!("k{i}"), Value::String(format!("v{i}"))))
            .collect();
        let record = RunRecord {
            id: "a-1".into(),
            outputs: [("List".to_string(), Value::Object(many.clone()))].into(),
            steps: (0..3)
                .map(|i| StepRecord {
                    name: format!("s{i}"),
                    outputs: [("items".to_string(), Value::Object(many.clone()))].into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        assert!(size(&serde_json::to_value(&record).unwrap()) > 4 * MAX_STATUS_BYTES);
        let bounded = bounded_status(&record);
        assert!(size(&bounded) <= MAX_STATUS_BYTES, "{}", size(&bounded));
        let back: RunRecord = serde_json::from_value(bounded).unwrap();
        let names: Vec<&str> = back.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s0", "s1", "s2"]);
        assert!(lost_values(&back), "the cut outputs are known to be lost");
        assert!(!lost_values(&record));
    }

    #[test]
    fn a_small_record_is_kept_whole() {
        let record = RunRecord {
            id: "a-1".into(),
            outputs: [("x".to_string(), Value::String("y".repeat(100)))].into(),
            ..Default::default()
        };
        assert_eq!(bounded_status(&record), serde_json::to_value(&record).unwrap());
    }
}
