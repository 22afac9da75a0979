//! Kubernetes `Status` errors (pure): the simulator's one error type for a failed API request,
//! with the code, reason, message and details the real API server gives for the same failure
//! (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid` with field causes, `BadRequest`,
//! `UnsupportedMediaType`, `Expired`, `Gone`, …), and its JSON body.

use serde_json::{json, Map, Value};

/// One field error of an `Invalid` status or one conflict of a failed apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// A value as Go's field errors print it: strings quoted, numbers and booleans bare.
pub fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        Value::Null => "\"null\"".into(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        other => other.to_string(),
    }
}

/// Go's `strconv.Quote`: `"` and `\\` escaped, the short escapes (`\\n`, `\\t`, …), other
/// control characters as `\\x01`, other non-printing characters (controls and spaces beyond
/// ASCII) as `\\u00a0`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) > 0xffff && not_printed(c) => out.push_str(&format!("\\U{:08x}", c as u32)),
            c if c.is_control() || (c.is_whitespace() && c != ' ') || not_printed(c) => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters Go's `strconv.IsPrint` rejects beyond controls and spaces: format characters
/// (soft hyphen, zero-width and direction marks, the byte-order mark) and private use.
fn not_printed(c: char) -> bool {
    matches!(c as u32,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x2028..=0x202e
            | 0x2060..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe000..=0xf8ff | 0xf0000..=0x10ffff)
}

impl Cause {
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Cause {
        let mut message = format!("Invalid value: {}", go_value(value));
        if !detail.is_empty() {
            message += &format!(": {detail}");
        }
        Cause {
            reason: "FieldValueInvalid".into(),
            message,
            field: field.into(),
        }
    }

    pub fn required(field: &str, detail: &str) -> Cause {
        let mut message = "Required value".to_string();
        if !detail.is_empty() {
            message += &format!(": {detail}");
        }
        Cause {
            reason: "FieldValueRequired".into(),
            message,
            field: field.into(),
        }
    }

    pub fn not_supported(field: &str, value: &Value, supported: &[Value]) -> Cause {
        let list: Vec<String> = supported.iter().map(go_value).collect();
        Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                go_value(value),
                list.join(", ")
            ),
            field: field.into(),
        }
    }

    pub fn forbidden(field: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden".into(),
            message: format!("Forbidden: {detail}"),
            field: field.into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"reason": self.reason, "message": self.message, "field": self.field})
    }

    /// `field: message`, as in an aggregated message.
    pub fn line(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// A failed request, as a `Status` object.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code} {reason}: {message}", reason = self.reason.as_deref().unwrap_or("-"))]
pub struct StatusError {
    pub code: u16,
    pub reason: Option<String>,
    pub message: String,
    pub details: Option<Value>,
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(group: &str, kind: &str, name: &str) -> Map<String, Value> {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    if !kind.is_empty() {
        d.insert("kind".into(), json!(kind));
    }
    d
}

impl StatusError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        StatusError {
            code,
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        StatusError::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", qualified(group, resource)),
        )
        .with_details(Value::Object(details(group, resource, name)))
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        StatusError::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", qualified(group, resource)),
        )
        .with_details(Value::Object(details(group, resource, name)))
    }

    /// A write with a stale `resourceVersion` (or failed preconditions).
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        StatusError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                qualified(group, resource)
            ),
        )
        .with_details(Value::Object(details(group, resource, name)))
    }

    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `Kind.group "name" is invalid: field: message` (several causes in brackets).
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let what = qualified(group, kind);
        let body = match causes.as_slice() {
            [one] => one.line(),
            many => format!("[{}]", many.iter().map(Cause::line).collect::<Vec<_>>().join(", ")),
        };
        let mut d = details(group, kind, name);
        d.insert(
            "causes".into(),
            Value::Array(causes.iter().map(Cause::to_json).collect()),
        );
        StatusError::new(422, "Invalid", format!("{what} {name:?} is invalid: {body}")).with_details(Value::Object(d))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        StatusError::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        StatusError::new(405, "MethodNotAllowed", message).with_details(json!({}))
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        StatusError::new(415, "UnsupportedMediaType", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        StatusError::new(500, "InternalError", message)
    }

    /// A watch from a resourceVersion the simulator no longer has.
    pub fn expired(message: impl Into<String>) -> Self {
        StatusError::new(410, "Expired", message)
    }

    /// A 404 for a path that names no resource.
    pub fn page_not_found() -> Self {
        StatusError::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), json!(self.message));
        if let Some(r) = &self.reason {
            m.insert("reason".into(), json!(r));
        }
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        m.insert("code".into(), json!(self.code));
        Value::Object(m)
    }

    /// A short, bounded label for logs and metrics.
    pub fn reason_label(&self) -> &str {
        self.reason.as_deref().unwrap_or("Unknown")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_found_names_the_qualified_resource() {
        let e = StatusError::not_found("postgresql.cnpg.io", "clusters", "pg");
        assert_eq!(e.message, "clusters.postgresql.cnpg.io \"pg\" not found");
        assert_eq!(
            e.to_json()["details"],
            json!({"name": "pg", "group": "postgresql.cnpg.io", "kind": "clusters"})
        );
    }

    #[test]
    fn several_invalid_fields_are_listed_in_brackets() {
        let e = StatusError::invalid(
            "postgresql.cnpg.io",
            "Cluster",
            "pg",
            vec![
                Cause::required("spec", ""),
                Cause::invalid("spec.instances", &json!(-1), "must be positive"),
            ],
        );
        assert_eq!(e.message, "Cluster.postgresql.cnpg.io \"pg\" is invalid: [spec: Required value, spec.instances: Invalid value: -1: must be positive]");
        assert_eq!(e.code, 422);
    }
}
