//! Field paths (pure, no I/O): `status.loadBalancer.ingress[0].hostname` as in Nova plans, and
//! full JSONPath (`$.status.conditions[?(@.type=='Ready')].status`) for reading and waiting.
//!
//! Owns parsing paths, reading values through them, and turning "set this path to this value"
//! into a merge patch (nested object) or, through an array index, a JSON Patch that first tests
//! the array's length. It must not know about clusters or templates.

use std::fmt;

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FieldPathError {
    #[error("failed to parse field path `{path}`: {reason}")]
    Parse { path: String, reason: String },
    #[error("failed to evaluate JSONPath `{path}`: {reason}")]
    JsonPath { path: String, reason: String },
}

/// Appended to every parse error, so the author sees what would have worked.
const ACCEPTED_FORMS: &str = "accepted forms: `spec.replica.primary`, `status.ingress[0].ip`, \
     `data[\"tls.crt\"]`, kubectl's `{.status.demotionToken}`, or a JSONPath `$.status.conditions[?(@.type=='Ready')].status`";

/// One step of a dotted path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A parsed path: either dotted (`a.b[0].c`, writable) or JSONPath (`$…`, read-only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldPath {
    Dotted { text: String, segments: Vec<Segment> },
    JsonPath { text: String },
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Dotted { text, .. } | FieldPath::JsonPath { text } => f.write_str(text),
        }
    }
}

impl FieldPath {
    /// Parses `a.b[0].c` (keys may be quoted with brackets: `data["haproxy.cfg"]`), a leading
    /// `.` as kubectl's jsonpath allows, kubectl's template form `{.a.b[0].c}` (what runbooks
    /// paste from `kubectl -o jsonpath=…`), or a JSONPath starting with `$`.
    pub fn parse(text: &str) -> Result<Self, FieldPathError> {
        let err = |reason: &str| FieldPathError::Parse {
            path: text.to_string(),
            reason: format!("{reason}; {ACCEPTED_FORMS}"),
        };
        let mut trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(err("the path is empty"));
        }
        // kubectl's `{.status.demotionToken}`: one expression in braces means the expression.
        if let Some(inner) = trimmed.strip_prefix('{') {
            let inner = inner.strip_suffix('}').ok_or_else(|| err("a `{` is never closed"))?;
            if inner.contains(['{', '}']) {
                return Err(err("only one `{…}` expression is accepted, without text around it"));
            }
            trimmed = inner.trim();
            if trimmed.is_empty() {
                return Err(err("the path is empty"));
            }
            // `{.items[*].metadata.name}`, `{.status.conditions[?(@.type=="Ready")].status}`:
            // kubectl's filters and wildcards are JSONPath's.
            if trimmed.contains(['*', '?']) {
                let dot = if trimmed.starts_with(['.', '[']) { "" } else { "." };
                let jp = format!("${dot}{trimmed}");
                jsonpath_rust::parser::parse_json_path(&jp).map_err(|e| err(&e.to_string()))?;
                return Ok(FieldPath::JsonPath { text: jp });
            }
        }
        if trimmed.starts_with('$') {
            jsonpath_rust::parser::parse_json_path(trimmed).map_err(|e| err(&e.to_string()))?;
            return Ok(FieldPath::JsonPath {
                text: trimmed.to_string(),
            });
        }
        let body = trimmed.strip_prefix('.').unwrap_or(trimmed);
        let chars: Vec<char> = body.chars().collect();
        let mut segments = Vec::new();
        let mut i = 0;
        let mut expect_key = true;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    if expect_key {
                        return Err(err(&format!("empty key before the `.` at position {}", i + 1)));
                    }
                    expect_key = true;
                    i += 1;
                }
                '[' => {
                    let close = chars[i..].iter().position(|&c| c == ']').map(|p| p + i);
                    let close = close.ok_or_else(|| err("a `[` is never closed"))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    if let Some(q) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                        segments.push(Segment::Key(q.to_string()));
                    } else if let Some(q) = inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                        segments.push(Segment::Key(q.to_string()));
                    } else {
                        let n = inner.parse::<usize>().map_err(|_| {
                            err(&format!(
                                "`[{inner}]` is not an array index (use a number, or a quoted key)"
                            ))
                        })?;
                        segments.push(Segment::Index(n));
                    }
                    expect_key = false;
                    i = close + 1;
                }
                _ => {
                    if !expect_key {
                        return Err(err(&format!("`{}` at position {} must follow a `.`", chars[i], i + 1)));
                    }
                    let mut key = String::new();
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        let c = chars[i];
                        // kubectl's escaped dot: `metadata.labels.app\.kubernetes\.io/name`.
                        if c == '\\' {
                            if chars.get(i + 1) == Some(&'.') {
                                key.push('.');
                                i += 2;
                                continue;
                            }
                            return Err(err(&format!(
                                "`\\` at position {} escapes only a `.` (`app\\.kubernetes\\.io`)",
                                i + 1
                            )));
                        }
                        if c == ']' {
                            return Err(err("a `]` without its `[`"));
                        }
                        if c.is_whitespace() || matches!(c, '{' | '}' | '*' | '?' | '$' | '@') {
                            return Err(err(&format!(
                                "`{c}` at position {} cannot be in a field name (quote keys with \
                                 such characters: data[\"my key\"])",
                                i + 1
                            )));
                        }
                        key.push(c);
                        i += 1;
                    }
                    segments.push(Segment::Key(key));
                    expect_key = false;
                }
            }
        }
        if expect_key {
            return Err(err("the path ends with `.`"));
        }
        Ok(FieldPath::Dotted {
            text: trimmed.to_string(),
            segments,
        })
    }

    /// The first key of a dotted path (`spec` of `spec.replica.primary`); for a JSONPath, the
    /// first name after `$.` when there is one.
    pub fn first_key(&self) -> Option<&str> {
        match self {
            FieldPath::Dotted { segments, .. } => match segments.first() {
                Some(Segment::Key(k)) => Some(k),
                _ => None,
            },
            FieldPath::JsonPath { text } => text
                .strip_prefix("$.")
                .map(|rest| rest.split(['.', '[']).next().unwrap_or(rest)),
        }
    }

    /// Whether the path is under `status` (what controllers write).
    pub fn is_status(&self) -> bool {
        self.first_key() == Some("status")
    }

    pub fn has_index(&self) -> bool {
        matches!(self, FieldPath::Dotted { segments, .. } if segments.iter().any(|s| matches!(s, Segment::Index(_))))
    }

    /// The JSON Pointers of the values this path names in `doc`: for a JSONPath, each value it
    /// matches there (a filter names the elements it selects, not the whole list); for a
    /// dotted path, its one pointer whether or not the value exists.
    pub fn pointers(&self, doc: &Value) -> Vec<String> {
        let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
        match self {
            FieldPath::Dotted { segments, .. } => vec![segments
                .iter()
                .map(|s| match s {
                    Segment::Key(k) => format!("/{}", escape(k)),
                    Segment::Index(i) => format!("/{i}"),
                })
                .collect()],
            FieldPath::JsonPath { text } => {
                use jsonpath_rust::JsonPath;
                doc.query_only_path(text)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| query_path_pointer(p, escape))
                    .collect()
            }
        }
    }

    /// Reads the value at this path; `None` when any part of it is missing. A JSONPath that
    /// matches several values yields them as an array, one match yields the value itself.
    pub fn get(&self, doc: &Value) -> Result<Option<Value>, FieldPathError> {
        match self {
            FieldPath::Dotted { segments, .. } => {
                let mut cur = doc;
                for seg in segments {
                    let next = match seg {
                        Segment::Key(k) => cur.get(k),
                        Segment::Index(n) => cur.get(*n),
                    };
                    match next {
                        Some(v) => cur = v,
                        None => return Ok(None),
                    }
                }
                Ok(Some(cur.clone()))
            }
            FieldPath::JsonPath { text } => {
                use jsonpath_rust::JsonPath;
                let found = doc.query(text).map_err(|e| FieldPathError::JsonPath {
                    path: text.clone(),
                    reason: e.to_string(),
                })?;
                Ok(match found.len() {
                    0 => None,
                    1 => Some(found[0].clone()),
                    _ => Some(Value::Array(found.into_iter().cloned().collect())),
                })
            }
        }
    }

    fn dotted_segments(&self) -> Result<&[Segment], FieldPathError> {
        match self {
            FieldPath::Dotted { segments, .. } => Ok(segments),
            FieldPath::JsonPath { text } => Err(FieldPathError::Parse {
                path: text.clone(),
                reason: "a JSONPath can be read but not written; use a dotted path such as spec.replica.primary".into(),
            }),
        }
    }

    /// The merge patch (RFC 7386) that sets this path to `value`, e.g. `spec.replica.primary` →
    /// `{"spec":{"replica":{"primary":value}}}`. Fails for paths through an array index, which
    /// a merge patch cannot express: use [`Self::json_patch_for`] for those.
    pub fn merge_patch(&self, value: Value) -> Result<Value, FieldPathError> {
        let segments = self.dotted_segments()?;
        if self.has_index() {
            return Err(FieldPathError::Parse {
                path: self.to_string(),
                reason: "a merge patch cannot go through an array index".into(),
            });
        }
        let mut out = value;
        for seg in segments.iter().rev() {
            if let Segment::Key(k) = seg {
                let mut m = Map::new();
                m.insert(k.clone(), out);
                out = Value::Object(m);
            }
        }
        Ok(out)
    }

    /// The JSON Patch (RFC 6902) that sets this path to `value`, for paths through an array
    /// index: for each index on the way a `test` that the element is still the one in `current`
    /// (the object as just read), so a reordered or shrunken array fails the patch instead of
    /// changing the wrong element; then one `add` (which replaces or creates the member).
    pub fn json_patch_for(&self, current: &Value, value: Value) -> Result<Value, FieldPathError> {
        let segments = self.dotted_segments()?;
        let mut ops = Vec::new();
        let mut pointer = String::new();
        let mut cur = Some(current);
        // Where the path first leaves the object, and the keys beyond it: an `add` there of the
        // nested remainder creates them, as a merge patch would.
        let mut first_missing: Option<(String, Vec<String>)> = None;
        for seg in segments {
            match seg {
                Segment::Key(k) => {
                    pointer.push('/');
                    pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    match &mut first_missing {
                        Some((_, rest)) => rest.push(k.clone()),
                        None if cur.is_some_and(|c| c.get(k).is_none()) => {
                            first_missing = Some((pointer.clone(), Vec::new()))
                        }
                        None => {}
                    }
                    cur = cur.and_then(|c| c.get(k));
                }
                Segment::Index(n) => {
                    let len = cur.and_then(Value::as_array).map(Vec::len);
                    match len {
                        Some(len) if *n < len => {}
                        _ => {
                            return Err(FieldPathError::Parse {
                                path: self.to_string(),
                                reason: format!(
                                    "`{pointer}` has no element [{n}] (it has {})",
                                    len.map_or("no array".to_string(), |l| format!("{l} elements"))
                                ),
                            })
                        }
                    }
                    cur = cur.and_then(|c| c.get(*n));
                    pointer.push_str(&format!("/{n}"));
                    ops.push(
                        json!({"op": "test", "path": pointer.clone(), "value": cur.cloned().unwrap_or(Value::Null)}),
                    );
                }
            }
        }
        let (path, value) = match first_missing {
            None => (pointer, value),
            Some((at, rest)) => {
                let nested = rest.into_iter().rev().fold(value, |v, k| json!({ k: v }));
                (at, nested)
            }
        };
        ops.push(json!({"op": "add", "path": path, "value": value}));
        Ok(Value::Array(ops))
    }
}

/// Whether a read value counts as empty: missing, null, `""`, `[]` or `{}`.
/// The JSON Pointer of a path as jsonpath-rust reports a match: `$['status']['conditions'][1]`
/// → `/status/conditions/1`.
fn query_path_pointer(path: &str, escape: impl Fn(&str) -> String) -> Option<String> {
    let mut rest = path.strip_prefix('$')?;
    let mut out = String::new();
    while !rest.is_empty() {
        rest = rest.strip_prefix('[')?;
        if let Some(quoted) = rest.strip_prefix('\'') {
            // A key: up to the closing quote, with \' and \\ escaped.
            let mut key = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => key.push(chars.next()?.1),
                    (i, '\'') => break i,
                    (_, c) => key.push(c),
                }
            };
            out.push('/');
            out.push_str(&escape(&key));
            rest = quoted[end + 1..].strip_prefix(']')?;
        } else {
            let (index, after) = rest.split_once(']')?;
            out.push('/');
            out.push_str(&index.parse::<usize>().ok()?.to_string());
            rest = after;
        }
    }
    Some(out)
}

pub fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A value as plain text for templates and comparisons: strings without quotes, the rest as JSON.
pub fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_points_at_the_elements_it_selects_and_keys_are_escaped() {
        let doc = json!({"status": {"conditions": [
            {"type": "Available", "status": "True"},
            {"type": "Ready", "status": "False"}
        ]}, "metadata": {"annotations": {"a.b/c'd": "x"}}});
        let p = FieldPath::parse("$.status.conditions[?(@.type=='Ready')].status").unwrap();
        assert_eq!(p.pointers(&doc), ["/status/conditions/1/status"]);
        let none = FieldPath::parse("$.status.conditions[?(@.type=='Gone')].status").unwrap();
        assert!(none.pointers(&doc).is_empty());
        let key = FieldPath::parse("$.metadata.annotations['a.b/c\\'d']").unwrap();
        assert_eq!(key.pointers(&doc), ["/metadata/annotations/a.b~1c'd"]);
        let dotted = FieldPath::parse("status.conditions[0].type").unwrap();
        assert_eq!(dotted.pointers(&doc), ["/status/conditions/0/type"]);
    }

    fn segs(p: &str) -> Vec<Segment> {
        match FieldPath::parse(p).unwrap() {
            FieldPath::Dotted { segments, .. } => segments,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dotted_paths_with_indexes_and_quoted_keys_parse() {
        use Segment::*;
        assert_eq!(
            segs("status.loadBalancer.ingress[0].hostname"),
            [
                Key("status".into()),
                Key("loadBalancer".into()),
                Key("ingress".into()),
                Index(0),
                Key("hostname".into())
            ]
        );
        assert_eq!(
            segs(".data[\"haproxy.cfg\"]"),
            [Key("data".into()), Key("haproxy.cfg".into())]
        );
    }

    #[test]
    fn malformed_paths_say_what_is_wrong() {
        for (p, want) in [
            ("spec..replica", "empty key"),
            ("spec.", "ends with"),
            ("spec.x[0", "never closed"),
            ("spec.x[a]", "not an array index"),
            ("", "empty"),
        ] {
            let e = FieldPath::parse(p).unwrap_err().to_string();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    #[test]
    fn kubectl_jsonpath_braces_mean_the_path_inside() {
        use Segment::*;
        assert_eq!(
            segs("{.status.demotionToken}"),
            [Key("status".into()), Key("demotionToken".into())]
        );
        assert_eq!(
            segs(" { .spec.containers[0].image } "),
            [
                Key("spec".into()),
                Key("containers".into()),
                Index(0),
                Key("image".into())
            ]
        );
        assert_eq!(
            FieldPath::parse("{.status.demotionToken}").unwrap().to_string(),
            ".status.demotionToken"
        );
        let doc = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let p = FieldPath::parse(r#"{.status.conditions[?(@.type=="Ready")].status}"#).unwrap();
        assert!(matches!(p, FieldPath::JsonPath { .. }), "{p:?}");
        assert_eq!(p.get(&doc).unwrap(), Some(json!("True")));
    }

    #[test]
    fn characters_that_cannot_be_in_a_field_name_are_refused_with_the_accepted_forms() {
        for (p, want) in [
            ("{.status.demotionToken", "never closed"),
            ("{.a}{.b}", "only one"),
            ("status.{demotionToken}", "`{`"),
            ("spec.replica primary", "` `"),
            ("spec.*", "`*`"),
            ("spec.a?", "`?`"),
            ("spec.x[0]y", "must follow a `.`"),
            ("spec.x]", "without its `[`"),
        ] {
            let e = FieldPath::parse(p).unwrap_err().to_string();
            assert!(e.contains(want), "{p}: {e}");
            assert!(e.contains("accepted forms"), "{p}: {e}");
        }
        // kubectl's escaped dots are part of the key.
        assert_eq!(
            segs(r"{.metadata.labels.app\.kubernetes\.io/name}")[2],
            Segment::Key("app.kubernetes.io/name".into())
        );
        assert!(FieldPath::parse(r"spec.a\b").is_err());
        // Quoted keys may hold anything.
        assert_eq!(segs(r#"data["my key*"]"#)[1], Segment::Key("my key*".into()));
    }

    #[test]
    fn get_reads_nested_values_and_reports_missing_as_none() {
        let doc = json!({"status": {"ingress": [{"ip": "10.0.0.9"}]}});
        let p = FieldPath::parse("status.ingress[0].ip").unwrap();
        assert_eq!(p.get(&doc).unwrap(), Some(json!("10.0.0.9")));
        assert_eq!(
            FieldPath::parse("status.ingress[1].ip").unwrap().get(&doc).unwrap(),
            None
        );
        assert_eq!(FieldPath::parse("status.nope").unwrap().get(&doc).unwrap(), None);
    }

    #[test]
    fn jsonpath_filters_select_a_condition() {
        let doc = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "Synced", "status": "True"}]}});
        let p = FieldPath::parse("$.status.conditions[?(@.type=='Ready')].status").unwrap();
        assert_eq!(p.get(&doc).unwrap(), Some(json!("False")));
        assert_eq!(FieldPath::parse("$.status.nothing").unwrap().get(&doc).unwrap(), None);
    }

    #[test]
    fn merge_patch_nests_the_value_under_the_path() {
        let p = FieldPath::parse("spec.replica.primary").unwrap();
        assert_eq!(
            p.merge_patch(json!("pg-south")).unwrap(),
            json!({"spec": {"replica": {"primary": "pg-south"}}})
        );
    }

    #[test]
    fn merge_patch_through_an_index_is_refused() {
        let p = FieldPath::parse("spec.containers[0].image").unwrap();
        assert!(p.merge_patch(json!("x")).is_err());
    }

    #[test]
    fn json_patch_tests_the_indexed_element_before_setting() {
        let cur = json!({"spec": {"containers": [{"name": "a", "image": "old"}]}});
        let p = FieldPath::parse("spec.containers[0].image").unwrap();
        let patch = p.json_patch_for(&cur, json!("new")).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/containers/0", "value": {"name": "a", "image": "old"}},
                {"op": "add", "path": "/spec/containers/0/image", "value": "new"}
            ])
        );
        let mut doc = cur.clone();
        let ops: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(&mut doc, &ops).unwrap();
        assert_eq!(doc["spec"]["containers"][0]["image"], "new");
    }

    #[test]
    fn json_patch_through_an_index_creates_missing_nested_fields() {
        let cur = json!({"spec": {"containers": [{"name": "a"}]}});
        let p = FieldPath::parse("spec.containers[0].resources.limits.cpu").unwrap();
        let patch = p.json_patch_for(&cur, json!("2")).unwrap();
        assert_eq!(
            patch[1],
            json!({"op": "add", "path": "/spec/containers/0/resources", "value": {"limits": {"cpu": "2"}}})
        );
        let mut doc = cur.clone();
        json_patch::patch(&mut doc, &serde_json::from_value::<json_patch::Patch>(patch).unwrap()).unwrap();
        assert_eq!(doc["spec"]["containers"][0]["resources"]["limits"]["cpu"], "2");
    }

    #[test]
    fn json_patch_for_a_missing_element_fails_before_sending() {
        let cur = json!({"spec": {"containers": []}});
        let p = FieldPath::parse("spec.containers[2].image").unwrap();
        let e = p.json_patch_for(&cur, json!("new")).unwrap_err().to_string();
        assert!(e.contains("no element [2]") && e.contains("0 elements"), "{e}");
    }

    #[test]
    fn jsonpath_cannot_be_written() {
        let p = FieldPath::parse("$.spec.x").unwrap();
        assert!(p.merge_patch(json!(1)).is_err());
    }
}
