//! CRD structural schemas (pure, no I/O): what the API server does to a custom resource with
//! its CRD's `openAPIV3Schema` — prune unknown fields (unless
//! `x-kubernetes-preserve-unknown-fields`), drop non-nullable nulls, apply defaults, validate
//! (types, required, enum, bounds, lengths, patterns, item counts) with the real server's field
//! error messages — and the field types server-side apply works with.
//!
//! It handles what the CloudNativePG and Percona CRDs use; `anyOf`/`allOf`/`oneOf`/`not` are
//! accepted without being checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::status::Cause;
use super::typed::{ListRel, Ty};

/// The schema of one served version of a CRD.
#[derive(Clone, Debug)]
pub struct CrdSchema {
    root: Arc<Value>,
}

/// The fields of `metadata` a custom resource keeps.
const OBJECT_META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "clusterName",
    "managedFields",
];

fn bool_of(s: &Value, k: &str) -> bool {
    s.get(k).and_then(Value::as_bool).unwrap_or(false)
}

impl CrdSchema {
    pub fn new(open_api_v3_schema: Value) -> Self {
        CrdSchema {
            root: Arc::new(open_api_v3_schema),
        }
    }

    pub fn raw(&self) -> &Value {
        &self.root
    }

    pub fn shared(&self) -> &Arc<Value> {
        &self.root
    }

    /// Drops fields the schema does not know, keeping `apiVersion`, `kind` and the fields of
    /// `metadata` at the root.
    pub fn prune(&self, obj: &mut Value) {
        let Some(m) = obj.as_object_mut() else { return };
        let keep: Vec<String> = ["apiVersion", "kind", "metadata"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let saved: Vec<(String, Value)> = keep
            .iter()
            .filter_map(|k| m.remove(k).map(|v| (k.clone(), v)))
            .collect();
        let mut rest = Value::Object(std::mem::take(m));
        prune(&mut rest, &self.root);
        let Value::Object(mut rest) = rest else {
            return;
        };
        for (k, mut v) in saved {
            if k == "metadata" {
                if let Some(meta) = v.as_object_mut() {
                    meta.retain(|k, _| OBJECT_META.contains(&k.as_str()));
                }
            }
            rest.insert(k, v);
        }
        *m = rest;
    }

    /// Applies defaults, after dropping nulls the schema does not allow.
    pub fn default(&self, obj: &mut Value) {
        drop_nulls(obj, &self.root);
        apply_defaults(obj, &self.root);
    }

    /// Validates an object (without `metadata`, `apiVersion`, `kind`) against the schema.
    pub fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let mut body = obj.clone();
        if let Some(m) = body.as_object_mut() {
            m.remove("metadata");
            m.remove("apiVersion");
            m.remove("kind");
        }
        let mut root = (*self.root).clone();
        if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
            props.remove("metadata");
            props.remove("apiVersion");
            props.remove("kind");
        }
        if let Some(req) = root.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| !matches!(r.as_str(), Some("metadata" | "apiVersion" | "kind")));
        }
        validate(&body, &root, "", &mut causes);
        causes
    }

    /// The types server-side apply sees (`anyOf`/`allOf`/`oneOf`/`not` add no types).
    pub fn ty(&self) -> Ty {
        let mut t = structural_ty(&self.root);
        if let Ty::Map(m) = &mut t {
            let mut fields = m.fields.clone();
            fields.insert("apiVersion".into(), Ty::Scalar);
            fields.insert("kind".into(), Ty::Scalar);
            fields.insert(
                "metadata".into(),
                super::builtin::named("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            );
            t = Ty::map(fields, m.elem.clone(), m.atomic);
        }
        t
    }
}

fn structural_ty(s: &Value) -> Ty {
    if bool_of(s, "x-kubernetes-int-or-string") {
        return Ty::Scalar;
    }
    let preserve = bool_of(s, "x-kubernetes-preserve-unknown-fields");
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut fields: BTreeMap<String, Ty> = s
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.iter().map(|(k, v)| (k.clone(), structural_ty(v))).collect())
                .unwrap_or_default();
            if bool_of(s, "x-kubernetes-embedded-resource") {
                fields.insert("apiVersion".into(), Ty::Scalar);
                fields.insert("kind".into(), Ty::Scalar);
                fields.insert(
                    "metadata".into(),
                    super::builtin::named("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                );
            }
            let elem = match s.get("additionalProperties") {
                Some(a @ Value::Object(_)) => Some(structural_ty(a)),
                Some(Value::Bool(true)) => Some(Ty::Opaque),
                _ if preserve => Some(Ty::Untyped),
                _ => None,
            };
            let atomic = s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic");
            Ty::map(fields, elem, atomic)
        }
        Some("array") => {
            let elem = s.get("items").map(structural_ty).unwrap_or(Ty::Opaque);
            let rel = match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => ListRel::Set,
                Some("map") => ListRel::Map(
                    s.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                        .unwrap_or_default(),
                ),
                _ => ListRel::Atomic,
            };
            Ty::list(elem, rel)
        }
        Some(_) => Ty::Scalar,
        None if preserve => Ty::Opaque,
        None => Ty::Scalar,
    }
}

fn prune(v: &mut Value, s: &Value) {
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            let preserve = bool_of(s, "x-kubernetes-preserve-unknown-fields")
                || s.get("additionalProperties") == Some(&Value::Bool(true));
            let embedded = bool_of(s, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(ps) = props.and_then(|p| p.get(&k)) {
                    if let Some(child) = m.get_mut(&k) {
                        prune(child, ps);
                    }
                } else if let Some(a) = additional {
                    if let Some(child) = m.get_mut(&k) {
                        prune(child, a);
                    }
                } else if !preserve {
                    m.remove(&k);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for item in items {
                    prune(item, is);
                }
            }
        }
        _ => {}
    }
}

fn drop_nulls(v: &mut Value, s: &Value) {
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let Some(ps) = props.and_then(|p| p.get(&k)).or(additional) else {
                    continue;
                };
                let is_null = m.get(&k).is_some_and(Value::is_null);
                if is_null && !bool_of(ps, "nullable") && ps.get("default").is_none() {
                    m.remove(&k);
                } else if let Some(child) = m.get_mut(&k) {
                    drop_nulls(child, ps);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for item in items {
                    drop_nulls(item, is);
                }
            }
        }
        _ => {}
    }
}

fn apply_defaults(v: &mut Value, s: &Value) {
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(props) = props {
                for (k, ps) in props {
                    let Some(d) = ps.get("default") else { continue };
                    let missing = match m.get(k) {
                        None => true,
                        Some(Value::Null) => !bool_of(ps, "nullable"),
                        _ => false,
                    };
                    if missing {
                        m.insert(k.clone(), d.clone());
                    }
                }
            }
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m.iter_mut() {
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    apply_defaults(child, ps);
                } else if let Some(a) = additional {
                    if child.is_null() && !bool_of(a, "nullable") {
                        if let Some(d) = a.get("default") {
                            *child = d.clone();
                        }
                    }
                    apply_defaults(child, a);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for item in items.iter_mut() {
                    if item.is_null() && !bool_of(is, "nullable") {
                        if let Some(d) = is.get("default") {
                            *item = d.clone();
                        }
                    }
                    apply_defaults(item, is);
                }
            }
        }
        _ => {}
    }
}

/// The JSON type of a value as the OpenAPI validator names it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(v: &Value, want: &str) -> bool {
    match (want, type_name(v)) {
        ("number", "integer") => true,
        (w, got) => w == got,
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt_num(s: &Value) -> String {
    match s {
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// A wrong type is `FieldValueTypeInvalid` (it keeps CEL rules from being evaluated).
fn type_invalid(mut c: Cause) -> Cause {
    c.reason = "FieldValueTypeInvalid".into();
    c
}

fn validate(v: &Value, s: &Value, path: &str, out: &mut Vec<Cause>) {
    let shown = if path.is_empty() { "body" } else { path };
    if v.is_null() {
        if bool_of(s, "nullable") {
            return;
        }
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            out.push(type_invalid(Cause::invalid(
                path,
                &Value::String("null".into()),
                &format!("{shown} in body must be of type {t}: \"null\""),
            )));
        }
        return;
    }
    if bool_of(s, "x-kubernetes-int-or-string") {
        if !matches!(type_name(v), "integer" | "string") {
            out.push(type_invalid(Cause::invalid(
                path,
                &Value::String(type_name(v).into()),
                &format!("{shown} in body must be of type integer,string: {:?}", type_name(v)),
            )));
        }
        return;
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        if !type_ok(v, t) {
            out.push(type_invalid(Cause::invalid(
                path,
                &Value::String(type_name(v).into()),
                &format!("{shown} in body must be of type {t}: {:?}", type_name(v)),
            )));
            return;
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            out.push(Cause::not_supported(path, v, options));
        }
    }
    match v {
        Value::Number(_) => {
            let x = num(v).unwrap_or(0.0);
            let excl_min = bool_of(s, "exclusiveMinimum");
            let excl_max = bool_of(s, "exclusiveMaximum");
            if let Some(min) = s.get("minimum") {
                let m = num(min).unwrap_or(f64::MIN);
                if (excl_min && x <= m) || (!excl_min && x < m) {
                    let rel = if excl_min {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    out.push(Cause::invalid(
                        path,
                        v,
                        &format!("{shown} in body should be {rel} {}", fmt_num(min)),
                    ));
                }
            }
            if let Some(max) = s.get("maximum") {
                let m = num(max).unwrap_or(f64::MAX);
                if (excl_max && x >= m) || (!excl_max && x > m) {
                    let rel = if excl_max { "less than" } else { "less than or equal to" };
                    out.push(Cause::invalid(
                        path,
                        v,
                        &format!("{shown} in body should be {rel} {}", fmt_num(max)),
                    ));
                }
            }
            if let Some(mo) = s.get("multipleOf").and_then(num) {
                if mo != 0.0 && (x / mo).fract() != 0.0 {
                    out.push(Cause::invalid(
                        path,
                        v,
                        &format!("{shown} in body should be a multiple of {}", fmt_num(&s["multipleOf"])),
                    ));
                }
            }
        }
        Value::String(text) => {
            // A too long string is its own error, and the only one; else, like go-openapi's
            // string validator, the first failing check only.
            let len = text.chars().count() as u64;
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    out.push(Cause {
                        reason: "FieldValueTooLong".into(),
                        message: format!("Too long: may not be more than {max} bytes"),
                        field: path.into(),
                    });
                    return;
                }
            }
            let too_short = s
                .get("minLength")
                .and_then(Value::as_u64)
                .filter(|min| len < *min)
                .map(|min| format!("{shown} in body should be at least {min} chars long"));
            let mismatch = s.get("pattern").and_then(Value::as_str).and_then(|p| {
                let re = regex::Regex::new(p).ok()?;
                (!re.is_match(text)).then(|| format!("{shown} in body should match '{p}'"))
            });
            if let Some(msg) = too_short.or(mismatch) {
                out.push(Cause::invalid(path, v, &msg));
            }
            if let Some(f) = s.get("format").and_then(Value::as_str) {
                if !format_holds(f, text) {
                    let mut c = Cause::invalid(
                        path,
                        v,
                        &format!("{shown} in body must be of type {f}: {}", go_quote(text)),
                    );
                    c.reason = "FieldValueTypeInvalid".into();
                    out.push(c);
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
                if n < min {
                    out.push(Cause::invalid(
                        path,
                        &Value::from(n),
                        &format!("{shown} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
                if n > max {
                    out.push(Cause {
                        reason: "FieldValueTooMany".into(),
                        message: format!("Too many: {n}: must have at most {max} items"),
                        field: path.into(),
                    });
                }
            }
            if bool_of(s, "uniqueItems") {
                let dup = items.iter().enumerate().any(|(i, a)| items[..i].contains(a));
                if dup {
                    out.push(Cause::invalid(
                        path,
                        v,
                        &format!("{shown} in body shouldn't contain duplicates"),
                    ));
                }
            }
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item, is, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(m) => {
            if let Some(req) = s.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        out.push(Cause::required(&child_path(path, r), ""));
                    }
                }
            }
            let n = m.len() as u64;
            if let Some(min) = s.get("minProperties").and_then(Value::as_u64) {
                if n < min {
                    out.push(Cause::invalid(
                        path,
                        &Value::from(n),
                        &format!("{shown} in body should have at least {min} properties"),
                    ));
                }
            }
            if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
                if n > max {
                    out.push(Cause::invalid(
                        path,
                        v,
                        &format!("{shown} in body should have at most {max} properties"),
                    ));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m {
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    validate(child, ps, &child_path(path, k), out);
                } else if let Some(a) = additional {
                    validate(child, a, &child_path(path, k), out);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Checks the replicas paths of a CRD's scale subresource as the API server does: a value
/// there that is not an integer is an error of its own.
pub fn validate_scale_paths(obj: &Value, scale: &Map<String, Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    for key in ["specReplicasPath", "statusReplicasPath"] {
        let Some(path) = scale.get(key).and_then(Value::as_str) else {
            continue;
        };
        let mut cur = Some(obj);
        for seg in path.trim_start_matches('.').split('.') {
            cur = cur.and_then(|c| c.get(seg));
        }
        let Some(v) = cur else { continue };
        let (shown, go_type) = match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => continue,
            Value::Number(n) => (n.to_string(), "float64"),
            Value::String(s) => (s.clone(), "string"),
            Value::Bool(b) => (b.to_string(), "bool"),
            Value::Null => continue,
            Value::Array(_) => (v.to_string(), "[]interface {}"),
            Value::Object(_) => (v.to_string(), "map[string]interface {}"),
        };
        out.push(Cause::invalid(
            path,
            &Value::from(0),
            &format!("{path} accessor error: {shown} is of the type {go_type}, expected int64"),
        ));
    }
    out
}

/// Whether a string has the `format` the API server checks (go-openapi's strfmt): `date-time`
/// (RFC 3339), `date`, `uuid`, `byte` (base64); other formats are not checked.
fn format_holds(format: &str, text: &str) -> bool {
    static RES: std::sync::OnceLock<[regex::Regex; 3]> = std::sync::OnceLock::new();
    let [date_time, date, uuid] = RES.get_or_init(|| {
        [
            regex::Regex::new(
                r"^([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$",
            )
            .expect("a valid regex"),
            regex::Regex::new(r"^([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")
                .expect("a valid regex"),
            regex::Regex::new(
                r"^(?i)[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
            )
            .expect("a valid regex"),
        ]
    });
    match format {
        "date-time" => date_time.is_match(text),
        "date" => date.is_match(text),
        "uuid" => uuid.is_match(text),
        "byte" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(text).is_ok()
        }
        _ => true,
    }
}

/// A string as Go's `%q` prints it (for the ASCII the formats allow).
fn go_quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn widget() -> CrdSchema {
        CrdSchema::new(json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "required": ["size"], "properties": {
                    "size": {"type": "integer", "minimum": 1, "default": 1},
                    "color": {"type": "string", "enum": ["red", "blue"]},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "nested": {"type": "object", "default": {}, "properties": {
                        "level": {"type": "string", "default": "info"}}}
                }},
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
            }
        }))
    }

    #[test]
    fn unknown_fields_are_pruned_unless_preserved() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a", "junk": 1},
            "spec": {"size": 2, "bogus": true, "extra": {"anything": [1]}}, "other": 1});
        widget().prune(&mut obj);
        assert_eq!(
            obj,
            json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a"},
                "spec": {"size": 2, "extra": {"anything": [1]}}})
        );
    }

    #[test]
    fn defaults_apply_inside_defaulted_objects() {
        let mut obj = json!({"spec": {}});
        widget().default(&mut obj);
        assert_eq!(obj, json!({"spec": {"size": 1, "nested": {"level": "info"}}}));
    }

    #[test]
    fn validation_reports_type_enum_and_minimum_like_the_api_server() {
        let causes = widget().validate(&json!({"spec": {"size": 0, "color": "green"}}));
        let lines: Vec<String> = causes.iter().map(Cause::line).collect();
        assert!(
            lines.contains(
                &"spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1".to_string()
            ),
            "{lines:?}"
        );
        assert!(
            lines
                .contains(&"spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\"".to_string()),
            "{lines:?}"
        );
        let causes = widget().validate(&json!({"spec": {"size": "three"}}));
        assert_eq!(
            causes[0].line(),
            "spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\""
        );
        let causes = widget().validate(&json!({"spec": {}}));
        assert_eq!(causes[0].line(), "spec.size: Required value");
    }
}
