//! DeleteOptions as kube-apiserver reads them (pure, no I/O): from the body when there is one
//! — JSON, an object, of kind `DeleteOptions` if it names a kind, each field of its Go type —
//! else from the query; an unknown `propagationPolicy` is refused. Errors carry the API
//! server's wording (Go's JSON decoder, `strconv.ParseInt`).

use serde_json::{json, Value};

use super::status::{Cause, StatusError};

/// The Go decoder's message for a body that is not JSON.
fn syntax_error(body: &[u8], e: &serde_json::Error) -> String {
    if e.is_eof() {
        return "unexpected end of JSON input".to_string();
    }
    // The character the decoder stopped at (serde's columns are 1-based, in bytes).
    let text = String::from_utf8_lossy(body);
    let line = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("");
    let at = e.column().saturating_sub(1);
    let c = line[at.min(line.len())..].chars().next().unwrap_or(' ');
    let before = line[..at.min(line.len())].trim_end();
    if before.ends_with('"') && before.contains(['{', ',']) && !before.ends_with(":\"") {
        return format!("invalid character '{c}' after object key");
    }
    if let Some(lit) = ["null", "true", "false"]
        .iter()
        .find(|l| before.ends_with(&l[..1]) || l.starts_with(&before[before.len().saturating_sub(3)..]))
        .filter(|_| before.chars().last().is_some_and(|x| x.is_ascii_alphabetic()))
    {
        let done = before.chars().rev().take_while(char::is_ascii_alphabetic).count();
        if let Some(want) = lit.chars().nth(done) {
            return format!("invalid character '{c}' in literal {lit} (expecting '{want}')");
        }
    }
    format!("invalid character '{c}' looking for beginning of value")
}

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// `json: cannot unmarshal …`: a field of the wrong type.
fn field_type_error(field: &str, v: &Value, go_type: &str) -> StatusError {
    let what = match v {
        Value::Number(n) => format!("number {n}"),
        other => go_kind(other).to_string(),
    };
    let what = if matches!(v, Value::Number(n) if n.is_i64() || n.is_u64()) {
        "number".to_string()
    } else {
        what
    };
    StatusError::bad_request(format!(
        "json: cannot unmarshal {what} into Go struct field DeleteOptions.{field} of type {go_type}"
    ))
}

/// Reads the options of a DELETE: its body, else the query parameters `query` returns.
pub fn parse(body: &[u8], query: impl Fn(&str) -> Option<String>) -> Result<Value, StatusError> {
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        from_query(query)?
    } else {
        from_body(body)?
    };
    if let Some(p) = options.get("propagationPolicy").and_then(Value::as_str) {
        if !matches!(p, "Foreground" | "Background" | "Orphan") {
            return Err(StatusError::invalid(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                vec![Cause::not_supported(
                    "propagationPolicy",
                    &json!(p),
                    &[json!("Foreground"), json!("Background"), json!("Orphan"), json!("nil")],
                )],
            ));
        }
    }
    Ok(options)
}

/// Whether a field's value has its Go type.
type Check = fn(&Value) -> bool;

fn from_body(body: &[u8]) -> Result<Value, StatusError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        StatusError::bad_request(format!(
            "couldn't get version/kind; json parse error: {}",
            syntax_error(body, &e)
        ))
    })?;
    let options = match v {
        Value::Null => return Ok(json!({})),
        Value::Object(m) => m,
        other => {
            return Err(StatusError::bad_request(format!(
                "couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}",
                go_kind(&other)
            )))
        }
    };
    if let Some(kind) = options.get("kind").and_then(Value::as_str) {
        if !kind.is_empty() && kind != "DeleteOptions" {
            let version = options.get("apiVersion").and_then(Value::as_str).unwrap_or("v1");
            return Err(StatusError::bad_request(format!(
                "no kind {kind:?} is registered for version {version:?} in scheme \"k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme/register.go:27\""
            )));
        }
    }
    let typed: &[(&str, Check, &str)] = &[
        ("gracePeriodSeconds", |v| v.is_i64(), "int64"),
        ("propagationPolicy", Value::is_string, "v1.DeletionPropagation"),
        ("orphanDependents", Value::is_boolean, "bool"),
        (
            "dryRun",
            |v| v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            "[]string",
        ),
        ("preconditions", Value::is_object, "v1.Preconditions"),
        (
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            Value::is_boolean,
            "bool",
        ),
    ];
    for (field, ok, go_type) in typed {
        match options.get(*field) {
            Some(v) if !v.is_null() && !ok(v) => {
                let shown = match v.as_array() {
                    Some(a) if *field == "dryRun" => a.iter().find(|x| !x.is_string()).unwrap_or(v),
                    _ => v,
                };
                return Err(field_type_error(field, shown, go_type));
            }
            _ => {}
        }
    }
    Ok(Value::Object(options))
}

fn from_query(query: impl Fn(&str) -> Option<String>) -> Result<Value, StatusError> {
    let mut options = serde_json::Map::new();
    if let Some(g) = query("gracePeriodSeconds") {
        let n: i64 = g
            .parse()
            .map_err(|_| StatusError::bad_request(format!("strconv.ParseInt: parsing {g:?}: invalid syntax")))?;
        options.insert("gracePeriodSeconds".into(), json!(n));
    }
    if let Some(p) = query("propagationPolicy") {
        options.insert("propagationPolicy".into(), json!(p));
    }
    if let Some(o) = query("orphanDependents") {
        let b: bool = o
            .parse()
            .map_err(|_| StatusError::bad_request(format!("strconv.ParseBool: parsing {o:?}: invalid syntax")))?;
        options.insert("orphanDependents".into(), json!(b));
    }
    Ok(Value::Object(options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> String {
        parse(body.as_bytes(), |_| None).unwrap_err().message
    }

    #[test]
    fn bodies_that_are_not_json_are_worded_as_go_words_them() {
        assert_eq!(
            message("{\"gracePeriodSeconds\":"),
            "couldn't get version/kind; json parse error: unexpected end of JSON input"
        );
        assert_eq!(
            message("nope"),
            "couldn't get version/kind; json parse error: invalid character 'o' in literal null (expecting 'u')"
        );
        assert_eq!(
            message("{\"a\" 1}"),
            "couldn't get version/kind; json parse error: invalid character '1' after object key"
        );
        assert_eq!(
            message("x"),
            "couldn't get version/kind; json parse error: invalid character 'x' looking for beginning of value"
        );
        assert_eq!(
            message("{\"gracePeriodSeconds\":1.5}"),
            "json: cannot unmarshal number 1.5 into Go struct field DeleteOptions.gracePeriodSeconds of type int64"
        );
        assert_eq!(parse(b"null", |_| None).unwrap(), json!({}));
    }
}
