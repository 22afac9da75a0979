//! Read-back (pure): after a write, does the object the API server returned hold what the step
//! meant to write? A field the schema does not know is pruned with a 200, a status written
//! through the main resource is ignored with a 200, a defaulting webhook may change a value: each
//! would otherwise be a ✔ for a change that did not happen. The same check works on a dry run,
//! whose response shows the pruning too.

use serde_json::Value;

use crate::fieldpath::{FieldPath, Segment};

/// How lists in the written value combine with what the object already had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lists {
    /// A merge or JSON patch: the list replaces the old one, element by element.
    Replace,
    /// A strategic-merge patch or server-side apply: the written elements are merged into the
    /// list, so each must be found in it.
    Merge,
}

/// Where and how the returned object differs from what was written.
#[derive(Debug, PartialEq)]
pub(crate) struct Mismatch {
    /// The dotted path of the first difference.
    pub path: String,
    /// What is there instead (`None`: nothing).
    pub found: Option<Value>,
    pub wanted: Value,
}

impl Mismatch {
    /// The reason, in words, for a step error. `secret` leaves values out.
    pub fn explain(&self, resource: &str, secret: bool, status_hint: bool) -> String {
        let mut s = match (&self.found, self.wanted.is_null()) {
            (Some(found), true) => format!(
                "the API server still holds {} at {}: the field was not removed",
                shown(found, secret),
                self.path
            ),
            (None, _) => format!(
                "the API server dropped {}: the field is not in the schema of {resource}, or \
                 admission removed it",
                self.path
            ),
            (Some(found), false) => format!(
                "the API server holds {} at {}, not the {} the step wrote (changed by \
                 defaulting or admission)",
                shown(found, secret),
                self.path,
                shown(&self.wanted, secret)
            ),
        };
        if status_hint {
            s.push_str(
                "; where status is a subresource (CRDs with `subresources.status`, most built-in \
                 kinds), a write to the main resource ignores it: set `subresourceStatus: true`",
            );
        }
        s
    }
}

fn shown(v: &Value, secret: bool) -> String {
    if secret {
        return "<redacted>".into();
    }
    let text = v.to_string();
    if text.chars().count() > 120 {
        format!("{}…", text.chars().take(120).collect::<String>())
    } else {
        text
    }
}

/// Checks that `object` holds `value` at `path` (a dotted path; a JSONPath is never written).
pub(crate) fn check_path(object: &Value, path: &FieldPath, value: &Value, lists: Lists) -> Result<(), Mismatch> {
    let FieldPath::Dotted { segments, .. } = path else {
        return Ok(());
    };
    let mut cur = Some(object);
    let mut at = String::new();
    for seg in segments {
        match seg {
            Segment::Key(k) => {
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(&key_text(k));
                cur = cur.and_then(|c| c.get(k));
            }
            Segment::Index(n) => {
                at.push_str(&format!("[{n}]"));
                cur = cur.and_then(|c| c.get(*n));
            }
        }
    }
    contains(cur, value, &mut at, lists)
}

/// Checks that every leaf of `written` (a whole manifest) is in `object`.
pub(crate) fn check_object(object: &Value, written: &Value, lists: Lists) -> Result<(), Mismatch> {
    contains(Some(object), written, &mut String::new(), lists)
}

fn key_text(k: &str) -> String {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        format!("[{k:?}]")
    }
}

fn contains(found: Option<&Value>, wanted: &Value, at: &mut String, lists: Lists) -> Result<(), Mismatch> {
    let miss = |at: &str| Mismatch {
        path: if at.is_empty() { ".".into() } else { at.into() },
        found: found.cloned(),
        wanted: wanted.clone(),
    };
    match wanted {
        // A null removes the field (merge patch) or leaves it unset.
        Value::Null => match found {
            None | Some(Value::Null) => Ok(()),
            Some(_) => Err(miss(at)),
        },
        Value::Object(fields) => {
            // An empty object may be dropped or kept: either is what `{}` means.
            if fields.is_empty() {
                return match found {
                    None | Some(Value::Object(_)) | Some(Value::Null) => Ok(()),
                    Some(_) => Err(miss(at)),
                };
            }
            let Some(Value::Object(have)) = found else {
                // The first missing leaf names the dropped field better than its parent.
                if found.is_none() {
                    let (k, v) = fields
                        .iter()
                        .find(|(_, v)| !v.is_null())
                        .unwrap_or_else(|| fields.iter().next().expect("fields is not empty"));
                    if v.is_null() {
                        return Ok(());
                    }
                    let len = at.len();
                    push_key(at, k);
                    let r = contains(None, v, at, lists);
                    at.truncate(len);
                    return r;
                }
                return Err(miss(at));
            };
            for (k, v) in fields {
                let len = at.len();
                push_key(at, k);
                let r = contains(have.get(k), v, at, lists);
                at.truncate(len);
                r?;
            }
            Ok(())
        }
        Value::Array(items) => {
            let Some(Value::Array(have)) = found else {
                return Err(miss(at));
            };
            match lists {
                Lists::Replace => {
                    if have.len() != items.len() {
                        return Err(miss(at));
                    }
                    for (i, (w, h)) in items.iter().zip(have).enumerate() {
                        let len = at.len();
                        at.push_str(&format!("[{i}]"));
                        let r = contains(Some(h), w, at, lists);
                        at.truncate(len);
                        r?;
                    }
                    Ok(())
                }
                Lists::Merge => {
                    for (i, w) in items.iter().enumerate() {
                        let len = at.len();
                        at.push_str(&format!("[{i}]"));
                        let any = have
                            .iter()
                            .any(|h| contains(Some(h), w, &mut at.clone(), lists).is_ok());
                        let r = if any {
                            Ok(())
                        } else {
                            Err(Mismatch {
                                path: at.clone(),
                                found: None,
                                wanted: w.clone(),
                            })
                        };
                        at.truncate(len);
                        r?;
                    }
                    Ok(())
                }
            }
        }
        scalar => match found {
            Some(f) if same_scalar(f, scalar) => Ok(()),
            _ => Err(miss(at)),
        },
    }
}

fn push_key(at: &mut String, k: &str) {
    if !at.is_empty() && !k.is_empty() && key_text(k) == k {
        at.push('.');
    }
    at.push_str(&key_text(k));
}

/// Equal values, numbers compared as numbers (integers exactly), an int-or-string field holding
/// `3` for `"3"`, and Kubernetes quantities by value (the API server stores `1024Mi` as `1Gi`,
/// `0.5` CPUs as `500m`).
fn same_scalar(found: &Value, wanted: &Value) -> bool {
    match (found, wanted) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => a.as_f64() == b.as_f64(),
        },
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => {
            quantity(a).is_some_and(|q| Some(q) == b.as_f64())
        }
        (Value::String(a), Value::String(b)) if a != b => match (quantity(a), quantity(b)) {
            (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()) * 4.0,
            _ => false,
        },
        (a, b) => a == b,
    }
}

/// The value of a Kubernetes quantity (`1Gi`, `500m`, `2.5`, `1e3`), or `None` for other text.
fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> FieldPath {
        FieldPath::parse(p).unwrap()
    }

    #[test]
    fn a_pruned_field_is_reported_as_dropped_with_its_path() {
        let after = json!({"spec": {"replica": {"primary": "pg-north"}}});
        let m = check_path(&after, &path("spec.replica.primry"), &json!("pg-south"), Lists::Replace).unwrap_err();
        assert_eq!(m.path, "spec.replica.primry");
        assert_eq!(m.found, None);
        let text = m.explain("clusters.postgresql.cnpg.io", false, false);
        assert!(
            text.contains("the API server dropped spec.replica.primry: the field is not in the schema of clusters.postgresql.cnpg.io"),
            "{text}"
        );
    }

    #[test]
    fn a_nested_value_is_checked_leaf_by_leaf_and_names_the_first_missing_leaf() {
        let after = json!({"spec": {"replica": {"primary": "pg-south", "source": "x"}}});
        let wanted = json!({"primary": "pg-south", "promotionTokn": "abc"});
        let m = check_path(&after, &path("spec.replica"), &wanted, Lists::Replace).unwrap_err();
        assert_eq!(m.path, "spec.replica.promotionTokn");
        assert!(check_path(
            &after,
            &path("spec.replica"),
            &json!({"primary": "pg-south"}),
            Lists::Replace
        )
        .is_ok());
        // Nothing of the written object made it.
        let m = check_path(&json!({}), &path("spec.x"), &wanted, Lists::Replace).unwrap_err();
        assert_eq!(m.path, "spec.x.primary");
    }

    #[test]
    fn a_changed_value_is_reported_with_both_values_unless_secret() {
        let after = json!({"spec": {"instances": 2}});
        let m = check_path(&after, &path("spec.instances"), &json!(3), Lists::Replace).unwrap_err();
        let text = m.explain("clusters.postgresql.cnpg.io", false, false);
        assert!(text.contains("holds 2 at spec.instances, not the 3"), "{text}");
        let secret = json!({"data": {"k": "c2VjcmV0"}});
        let m = check_path(&secret, &path("data.k"), &json!("b3RoZXI="), Lists::Replace).unwrap_err();
        let text = m.explain("secrets", true, false);
        assert!(!text.contains("c2VjcmV0") && !text.contains("b3RoZXI="), "{text}");
    }

    #[test]
    fn numbers_and_int_or_string_values_compare_as_numbers() {
        let after = json!({"spec": {"replicas": 3, "port": "5432", "ratio": 1.0}});
        for (p, v) in [
            ("spec.replicas", json!(3)),
            ("spec.port", json!(5432)),
            ("spec.ratio", json!(1)),
        ] {
            assert!(check_path(&after, &path(p), &v, Lists::Replace).is_ok(), "{p}");
        }
    }

    #[test]
    fn quantities_the_server_normalises_are_the_same_value() {
        let after = json!({"spec": {"resources": {"limits": {"memory": "1Gi", "cpu": "500m"}}}});
        for (p, v) in [
            ("spec.resources.limits.memory", json!("1024Mi")),
            ("spec.resources.limits.cpu", json!("0.5")),
        ] {
            assert!(check_path(&after, &path(p), &v, Lists::Replace).is_ok(), "{p}");
        }
        assert!(check_path(
            &after,
            &path("spec.resources.limits.memory"),
            &json!("2Gi"),
            Lists::Replace
        )
        .is_err());
        // Text that is not a quantity is compared as text.
        assert!(check_path(
            &json!({"a": "pg-south"}),
            &path("a"),
            &json!("pg-north"),
            Lists::Replace
        )
        .is_err());
    }

    #[test]
    fn null_means_removed() {
        assert!(check_path(&json!({"spec": {}}), &path("spec.x"), &Value::Null, Lists::Replace).is_ok());
        let m = check_path(
            &json!({"spec": {"x": 1}}),
            &path("spec.x"),
            &Value::Null,
            Lists::Replace,
        )
        .unwrap_err();
        assert!(m.explain("r", false, false).contains("was not removed"));
    }

    #[test]
    fn lists_are_replaced_by_patches_and_merged_by_apply() {
        let after = json!({"spec": {"containers": [
            {"name": "sidecar", "image": "s"},
            {"name": "pg", "image": "postgres:17", "imagePullPolicy": "IfNotPresent"}]}});
        let wanted = json!({"spec": {"containers": [{"name": "pg", "image": "postgres:17"}]}});
        assert!(check_object(&after, &wanted, Lists::Merge).is_ok());
        assert!(check_object(&after, &wanted, Lists::Replace).is_err());
        let wrong = json!({"spec": {"containers": [{"name": "pg", "image": "postgres:16"}]}});
        let m = check_object(&after, &wrong, Lists::Merge).unwrap_err();
        assert_eq!(m.path, "spec.containers[0]");
    }

    #[test]
    fn keys_with_dots_are_shown_quoted() {
        let after = json!({"data": {}});
        let m = check_object(&after, &json!({"data": {"haproxy.cfg": "x"}}), Lists::Merge).unwrap_err();
        assert_eq!(m.path, "data[\"haproxy.cfg\"]");
    }
}
