//! CRD validation rules (pure, no I/O): the CEL rules of a schema's `x-kubernetes-validations`,
//! evaluated as kube-apiserver v1.36 evaluates them on create, update, patch and apply — `self`
//! is the value at the rule's node, `oldSelf` the stored value there (a rule naming `oldSelf` is
//! a transition rule, checked only on an update where both exist) — and the field errors a
//! failing rule gives: its `reason`, its `fieldPath`, and its `messageExpression`, `message` or
//! `failed rule: …`.
//!
//! Old and new values are matched through object properties, map values and the items of
//! `x-kubernetes-list-type: map` lists (by their keys), as the API server does; not through other
//! lists. A rule this CEL implementation cannot compile or evaluate (Kubernetes' own library
//! functions such as `quantity()` or `url()`) is not enforced.

use std::collections::HashMap;

use serde_json::Value;

use super::status::Cause;

/// A JSON value as CEL sees it: integers as `int`, other numbers as `double`.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(s.clone().into()),
        Value::Array(a) => cel::Value::List(a.iter().map(to_cel).collect::<Vec<_>>().into()),
        Value::Object(m) => {
            let map: HashMap<String, cel::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            map.into()
        }
    }
}

/// What a rule made of a value.
enum Outcome {
    Holds,
    Fails,
    /// Not enforced: not compiled or not evaluated by this implementation.
    Unknown,
}

fn evaluate(rule: &str, new: &Value, old: Option<&Value>) -> Outcome {
    let program = match cel::Program::compile(rule) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(rule, error = %e, "a validation rule is not enforced");
            return Outcome::Unknown;
        }
    };
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("self", to_cel(new));
    if let Some(old) = old {
        ctx.add_variable_from_value("oldSelf", to_cel(old));
    }
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(true)) => Outcome::Holds,
        Ok(cel::Value::Bool(false)) => Outcome::Fails,
        other => {
            tracing::debug!(rule, result = ?other, "a validation rule did not evaluate to a bool");
            Outcome::Unknown
        }
    }
}

fn is_transition(rule: &str) -> bool {
    cel::Program::compile(rule).is_ok_and(|p| p.references().has_variable("oldSelf"))
}

/// The message of a failing rule: its `messageExpression` when that yields a non-empty
/// string, else its `message`, else `failed rule: RULE`.
fn detail(rule: &Value, text: &str, new: &Value, old: Option<&Value>) -> String {
    if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str) {
        if let Ok(p) = cel::Program::compile(expr) {
            let mut ctx = cel::Context::default();
            ctx.add_variable_from_value("self", to_cel(new));
            if let Some(old) = old {
                ctx.add_variable_from_value("oldSelf", to_cel(old));
            }
            if let Ok(cel::Value::String(s)) = p.execute(&ctx) {
                if !s.trim().is_empty() {
                    return s.to_string();
                }
            }
        }
    }
    match rule.get("message").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => format!("failed rule: {text}"),
    }
}

/// The field error of a failing rule, worded as the API server words it: the value is shown
/// for scalars only.
fn cause(rule: &Value, field: &str, value: &Value, detail: String) -> Cause {
    let field = match rule.get("fieldPath").and_then(Value::as_str) {
        Some(fp) if !fp.is_empty() => format!("{field}{fp}"),
        _ => field.to_string(),
    };
    let (reason, message) = match rule.get("reason").and_then(Value::as_str) {
        Some("FieldValueForbidden") => ("FieldValueForbidden", format!("Forbidden: {detail}")),
        Some("FieldValueRequired") => ("FieldValueRequired", format!("Required value: {detail}")),
        Some("FieldValueDuplicate") => (
            "FieldValueDuplicate",
            format!("Duplicate value: {}", super::status::go_value(value)),
        ),
        _ => {
            let shown = match value {
                Value::Object(_) | Value::Array(_) => String::new(),
                v => format!("{}: ", super::status::go_value(v)),
            };
            (
                "FieldValueInvalid",
                format!("Invalid value: {shown}{detail}"),
            )
        }
    };
    Cause {
        reason: reason.to_string(),
        message,
        field,
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The old item of a `listType: map` list that has the same keys as `item`.
fn matching_item<'a>(schema: &Value, item: &Value, old: Option<&'a Value>) -> Option<&'a Value> {
    if schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    old?.as_array()?
        .iter()
        .find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
}

/// Checks every rule under `schema` against `new` (and `old`, the stored object on an update),
/// adding a field error for each rule that fails.
pub fn check(schema: &Value, new: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    if new.is_null() {
        return;
    }
    let old = old.filter(|o| !o.is_null());
    for rule in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(text) = rule.get("rule").and_then(Value::as_str) else {
            continue;
        };
        let transition = is_transition(text);
        if transition && old.is_none() {
            continue;
        }
        let old_self = if transition { old } else { None };
        if let Outcome::Fails = evaluate(text, new, old_self) {
            let d = detail(rule, text, new, old_self);
            out.push(cause(rule, path, new, d));
        }
    }
    match new {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m {
                let Some(s) = props.and_then(|p| p.get(k)).or(additional) else {
                    continue;
                };
                let old_child = old.and_then(|o| o.get(k));
                check(s, child, old_child, &child_path(path, k), out);
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    let old_item = matching_item(schema, item, old);
                    check(s, item, old_item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Whether a schema has any validation rule.
pub fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

/// The field errors that keep kube-apiserver from evaluating rules at all (a wrong type, a
/// missing required field, an unsupported enum value, too long or too many).
pub fn blocks_rules(causes: &[Cause]) -> bool {
    causes.iter().any(|c| {
        matches!(
            c.reason.as_str(),
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    })
}

/// The error the API server adds when it skipped the rules because of [`blocks_rules`].
pub fn rules_not_checked() -> Cause {
    Cause {
        reason: "FieldValueInvalid".to_string(),
        message: "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".to_string(),
        field: "<nil>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "!(has(self.a) && has(self.b))", "message": "a and b are mutually exclusive"},
            {"rule": "!has(self.n) || self.n > 0"}
        ],
        "properties": {
            "a": {"type": "string"}, "b": {"type": "string"}, "n": {"type": "integer"},
            "sa": {"type": "string", "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "sa is immutable"}]}
        }}}})
    }

    fn failures(new: Value, old: Option<Value>) -> Vec<String> {
        let mut out = Vec::new();
        check(&schema(), &new, old.as_ref(), "", &mut out);
        out.iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn rules_on_objects_report_their_message_without_the_value() {
        assert_eq!(
            failures(json!({"spec": {"a": "x", "b": "y", "n": 0}}), None),
            [
                "spec: Invalid value: a and b are mutually exclusive",
                "spec: Invalid value: failed rule: !has(self.n) || self.n > 0"
            ]
        );
        assert!(failures(json!({"spec": {"a": "x", "n": 2}}), None).is_empty());
    }

    #[test]
    fn transition_rules_compare_with_the_stored_value_only_on_updates() {
        assert!(failures(json!({"spec": {"sa": "b"}}), None).is_empty());
        assert_eq!(
            failures(
                json!({"spec": {"sa": "b"}}),
                Some(json!({"spec": {"sa": "a"}}))
            ),
            ["spec.sa: Invalid value: \"b\": sa is immutable"]
        );
        // Removing the field is not a transition the rule sees.
        assert!(failures(json!({"spec": {}}), Some(json!({"spec": {"sa": "a"}}))).is_empty());
    }
}
