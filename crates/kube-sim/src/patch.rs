//! Patches (pure, no I/O): JSON merge patch (RFC 7386), JSON Patch (RFC 6902, through the
//! `json-patch` crate) and strategic merge patch for built-in types (lists merged by their
//! `x-kubernetes-patch-merge-key`, `$patch`, `$retainKeys`, `$deleteFromPrimitiveList`,
//! `$setElementOrder`), with the errors the real API server answers for bad patches.
//!
//! Which content type is allowed for which resource is decided by the HTTP layer.

use serde_json::{Map, Value};

use super::builtin::openapi_definitions;
use super::status::StatusError;

/// Go's `encoding/json` wording of a syntax error, as far as it can be told from serde's.
fn go_json_error(e: &serde_json::Error) -> String {
    if e.is_eof() {
        "unexpected end of JSON input".to_string()
    } else {
        format!("invalid character in JSON input: {e}")
    }
}

/// RFC 7386: objects merged key by key, `null` deletes, anything else replaces.
pub fn merge_patch(doc: &Value, body: &[u8]) -> Result<Value, StatusError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| StatusError::bad_request(format!("error decoding patch: {}", go_json_error(&e))))?;
    let mut out = doc.clone();
    json_patch::merge(&mut out, &patch);
    Ok(out)
}

/// RFC 6902, `test` included.
pub fn json_patch(doc: &Value, body: &[u8]) -> Result<Value, StatusError> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| StatusError::bad_request(format!("error decoding patch: {}", go_json_error(&e))))?;
    if !raw.is_array() {
        let what = match raw {
            Value::Object(_) => "object",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "bool",
            _ => "value",
        };
        return Err(StatusError::bad_request(format!(
            "error decoding patch: json: cannot unmarshal {what} into Go value of type []handlers.jsonPatchOp"
        )));
    }
    let patch: json_patch::Patch = serde_json::from_value(raw).map_err(|e| StatusError::bad_request(e.to_string()))?;
    let mut out = doc.clone();
    json_patch::patch(&mut out, &patch).map_err(|_| {
        StatusError::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        )
        .with_details(Value::Object(Map::new()))
    })?;
    Ok(out)
}

/// A strategic merge patch against the OpenAPI definition `definition`.
pub fn strategic_merge_patch(doc: &Value, body: &[u8], definition: &str) -> Result<Value, StatusError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| StatusError::bad_request(format!("invalid JSON in strategic merge patch: {e}")))?;
    let Value::Object(p) = patch else {
        return Err(StatusError::bad_request(
            "the strategic merge patch must be a JSON object",
        ));
    };
    let schema = Schema::named(definition);
    let Value::Object(d) = doc.clone() else {
        return Ok(Value::Object(p));
    };
    Ok(match merge_map(d, p, &schema)? {
        Some(m) => Value::Object(m),
        None => Value::Object(Map::new()),
    })
}

/// A place in the built-in OpenAPI definitions.
#[derive(Clone)]
struct Schema(Option<Value>);

impl Schema {
    fn named(name: &str) -> Schema {
        Schema(openapi_definitions().get(name).cloned())
    }

    fn resolve(v: &Value) -> Schema {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => Schema::named(r.rsplit('/').next().unwrap_or(r)),
            None => Schema(Some(v.clone())),
        }
    }

    fn prop(&self, name: &str) -> Option<Value> {
        let s = self.0.as_ref()?;
        s.get("properties")
            .and_then(|p| p.get(name))
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
            .cloned()
    }

    fn field(&self, name: &str) -> Schema {
        match self.prop(name) {
            Some(p) => Schema::resolve(&p),
            None => Schema(None),
        }
    }

    fn items(&self, name: &str) -> Schema {
        match self.prop(name).and_then(|p| p.get("items").cloned()) {
            Some(i) => Schema::resolve(&i),
            None => Schema(None),
        }
    }

    /// (merge strategy?, merge key, retainKeys?)
    fn strategy(&self, name: &str) -> (bool, Option<String>, bool) {
        let Some(p) = self.prop(name) else {
            return (false, None, false);
        };
        let st = p
            .get("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
            .unwrap_or("");
        let parts: Vec<&str> = st.split(',').collect();
        (
            parts.contains(&"merge"),
            p.get("x-kubernetes-patch-merge-key")
                .and_then(Value::as_str)
                .map(str::to_string),
            parts.contains(&"retainKeys"),
        )
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN: &str = "$retainKeys";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";
const ORDER: &str = "$setElementOrder/";

fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.into_iter()
                .filter(|i| i.get(DIRECTIVE).is_none_or(|d| d != "delete"))
                .map(strip_directives)
                .collect(),
        ),
        other => other,
    }
}

/// Merges a patch map into an original map; `None` when the patch deletes the map.
fn merge_map(
    mut orig: Map<String, Value>,
    mut patch: Map<String, Value>,
    schema: &Schema,
) -> Result<Option<Map<String, Value>>, StatusError> {
    match patch.remove(DIRECTIVE).as_ref().and_then(Value::as_str) {
        Some("replace") => {
            return Ok(Some(match strip_directives(Value::Object(patch)) {
                Value::Object(m) => m,
                _ => Map::new(),
            }))
        }
        Some("delete") => return Ok(None),
        Some("merge") | None => {}
        Some(other) => return Err(StatusError::bad_request(format!("Unknown patch type: {other}"))),
    }
    let retain = patch.remove(RETAIN);
    let mut orders = Vec::new();
    let keys: Vec<String> = patch.keys().cloned().collect();
    for k in keys {
        if let Some(field) = k.strip_prefix(DELETE_FROM) {
            let gone = patch.remove(&k).unwrap_or(Value::Null);
            let gone = gone.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
        } else if let Some(field) = k.strip_prefix(ORDER) {
            let order = patch.remove(&k).unwrap_or(Value::Null);
            orders.push((field.to_string(), order));
        }
    }
    for (k, pv) in patch {
        if pv.is_null() {
            orig.remove(&k);
            continue;
        }
        let (merge, key, _) = schema.strategy(&k);
        let merged = match (orig.remove(&k), pv) {
            (Some(Value::Object(o)), Value::Object(p)) => merge_map(o, p, &schema.field(&k))?.map(Value::Object),
            (Some(Value::Array(o)), Value::Array(p)) if merge => {
                Some(Value::Array(merge_list(o, p, key.as_deref(), &schema.items(&k))?))
            }
            (_, Value::Object(p)) => merge_map(Map::new(), p, &schema.field(&k))?.map(Value::Object),
            (_, pv) => Some(strip_directives(pv)),
        };
        if let Some(v) = merged {
            orig.insert(k, v);
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (orig.get_mut(&field), order.as_array()) {
            let (_, key, _) = schema.strategy(&field);
            let pos = |item: &Value| {
                order.iter().position(|o| match &key {
                    Some(k) => o.get(k) == item.get(k),
                    None => o == item,
                })
            };
            list.sort_by_key(|item| pos(item).unwrap_or(usize::MAX));
        }
    }
    if let Some(Value::Array(retain)) = retain {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(orig))
}

/// Merges a list with the merge strategy. The result is ordered as the API server orders it:
/// the patch's items (merged into the original ones they name) and the original items the
/// patch does not mention, interleaved so that each keeps its relative order and originals go
/// before patch items that came after them in the original list.
fn merge_list(
    orig: Vec<Value>,
    patch: Vec<Value>,
    key: Option<&str>,
    items: &Schema,
) -> Result<Vec<Value>, StatusError> {
    if patch
        .iter()
        .any(|p| p.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .into_iter()
            .filter(|p| p.get(DIRECTIVE).is_none())
            .map(strip_directives)
            .collect());
    }
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let server_order: Vec<Value> = orig.iter().map(&id).collect();
    let mut orig: Vec<Option<Value>> = orig.into_iter().map(Some).collect();
    let mut patched = Vec::new();
    for p in patch {
        let Some(key) = key else {
            // A list of scalars: a union.
            if let Some(i) = orig.iter().position(|o| o.as_ref() == Some(&p)) {
                orig[i] = None;
            }
            if !patched.contains(&p) {
                patched.push(p);
            }
            continue;
        };
        let Value::Object(pm) = p else {
            patched.push(p);
            continue;
        };
        let Some(kv) = pm.get(key).cloned() else {
            return Err(StatusError::bad_request(format!(
                "map: {pm:?} does not contain declared merge key: {key}"
            )));
        };
        let at = orig
            .iter()
            .position(|o| o.as_ref().and_then(|o| o.get(key)) == Some(&kv));
        let existing = at.and_then(|i| orig[i].take());
        if pm.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
            continue;
        }
        match existing {
            Some(Value::Object(o)) => {
                if let Some(m) = merge_map(o, pm, items)? {
                    patched.push(Value::Object(m));
                }
            }
            _ => {
                let mut pm = pm;
                pm.remove(DIRECTIVE);
                patched.push(strip_directives(Value::Object(pm)));
            }
        }
    }
    let server_only: Vec<Value> = orig.into_iter().flatten().collect();
    // strategicpatch's mergeSortedSlice.
    let index = |v: &Value| server_order.iter().position(|s| *s == id(v));
    let (mut l, mut r) = (server_only.into_iter().peekable(), patched.into_iter().peekable());
    let mut out = Vec::new();
    loop {
        let take_left = match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => matches!((index(a), index(b)), (Some(x), Some(y)) if x < y),
        };
        let next = if take_left { l.next() } else { r.next() };
        out.extend(next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";

    #[test]
    fn strategic_merge_patches_containers_by_name_and_replaces_plain_lists() {
        let doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "args": ["x"]},
            {"name": "side", "image": "s:1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:2", "args": ["y"]},
            {"name": "new", "image": "n:1"}]}}}});
        let out = strategic_merge_patch(&doc, patch.to_string().as_bytes(), DEPLOYMENT).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "a:2", "args": ["y"]},
                   {"name": "new", "image": "n:1"},
                   {"name": "side", "image": "s:1"}])
        );
    }

    #[test]
    fn strategic_merge_patch_deletes_an_item_with_the_patch_directive() {
        let doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:1"}, {"name": "side", "image": "s:1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "side", "$patch": "delete"}]}}}});
        let out = strategic_merge_patch(&doc, patch.to_string().as_bytes(), DEPLOYMENT).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "a:1"}])
        );
    }

    #[test]
    fn a_failed_json_patch_test_is_unprocessable() {
        let doc = json!({"data": {"a": "1"}});
        let err = json_patch(&doc, br#"[{"op":"test","path":"/data/a","value":"2"}]"#).unwrap_err();
        assert_eq!(err.code, 422);
        let err = json_patch(&doc, br#"{"op":"test"}"#).unwrap_err();
        assert_eq!(
            err.message,
            "error decoding patch: json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp"
        );
    }
}
