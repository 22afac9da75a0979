//! Keeping secrets out of records, progress lines and logs: every occurrence of a secret value
//! (and the forms a filter turns it into) is replaced, and the rendered inputs of a step that
//! used a secret are withheld.

use serde_json::{json, Value};

pub(crate) const REDACTED: &str = "<redacted>";

/// Replaces every occurrence of a secret (and the usual forms a filter turns it into) in text.
pub fn scrub(text: &str, needles: &[String]) -> String {
    needles
        .iter()
        .fold(text.to_string(), |acc, n| acc.replace(n.as_str(), REDACTED))
}

pub(crate) fn scrub_value(v: Value, needles: &[String]) -> Value {
    if needles.is_empty() {
        return v;
    }
    match v {
        Value::String(s) => Value::String(scrub(&s, needles)),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| scrub_value(v, needles)).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, scrub_value(v, needles))).collect()),
        other => other,
    }
}

/// The inputs of a step that used a secret: what was rendered from templates (patch bodies,
/// manifests, URLs, headers, bodies, compared values) is replaced; the shape stays.
pub(crate) fn redact_inputs(inputs: Value) -> Value {
    const RENDERED: &[&str] = &["patch", "object", "url", "headers", "body", "condition", "observed"];
    match inputs {
        Value::Object(mut m) => {
            for key in RENDERED {
                if let Some(v) = m.get_mut(*key) {
                    *v = json!(REDACTED);
                }
            }
            Value::Object(m)
        }
        _ => json!(REDACTED),
    }
}
