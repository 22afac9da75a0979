//! Template rendering (pure, no I/O): minijinja in strict mode, with Nova's Go-template form
//! `{{ .Values.Key }}` accepted as `{{ Values.Key }}`.
//!
//! Owns the rule that data never becomes structure: in `raw` values only string leaves are
//! rendered, and a rendered manifest gets its structure from the template alone — every value
//! printed into it is substituted only after the YAML is parsed (see [`render_yaml`]). It must not
//! read files, clusters or the environment.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

/// The top-level names a template may use.
pub const CONTEXT_NAMES: &[&str] = &["Values", "alert", "plan", "run", "secrets"];

/// The context every template of a run renders in: `Values`, `alert` (labels and annotations
/// at least), `plan` (name, namespace) and `run` (id, mode). `secrets` is added per http step.
pub fn context(
    values: serde_json::Map<String, Value>,
    alert: Option<Value>,
    plan: &kube::core::ObjectMeta,
    run_id: &str,
    run_mode: Value,
) -> Value {
    serde_json::json!({
        "Values": values,
        "alert": alert.unwrap_or_else(|| serde_json::json!({"labels": {}, "annotations": {}})),
        "plan": {"name": plan.name, "namespace": plan.namespace},
        "run": {"id": run_id, "mode": run_mode},
    })
}

/// Functions templates may call.
pub const FUNCTIONS: &[&str] = &["now", "seconds_since"];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("failed to parse template {template:?}: {reason}")]
    Parse { template: String, reason: String },
    #[error("failed to render template {template:?}: {reason}")]
    Render { template: String, reason: String },
    #[error("failed to read the rendered manifest as YAML: {reason}")]
    Yaml { reason: String },
    #[error("`when` rendered to {value:?}, which is neither true nor false")]
    NotABool { value: String },
}

/// Rewrites Nova's Go-template references (`{{ .Values.X }}`, `{{- .alert.labels.y }}`) into
/// minijinja's (`{{ Values.X }}`).
pub fn normalize(src: &str) -> String {
    static GO_REF: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re =
        GO_REF.get_or_init(|| regex::Regex::new(r"(\{\{-?\s*|[\s(,|])\.(Values|alert|plan|run|secrets)\b").unwrap());
    // Only inside `{{ … }}`: split on the delimiters so plain text such as "a .Values b" is kept.
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").map_or(rest.len(), |e| start + e + 2);
        out.push_str(&re.replace_all(&rest[start..end], "$1$2"));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Whether a string contains template syntax at all (plain strings are used as they are).
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_filter("b64encode", |s: String| {
        base64::engine::general_purpose::STANDARD.encode(s)
    });
    env.add_filter("b64decode", |s: String| -> Result<String, minijinja::Error> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("b64decode: {e}")))?;
        String::from_utf8(bytes)
            .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("b64decode: {e}")))
    });
    // Time: `now()` (RFC 3339, UTC, for annotations) and `seconds_since(ts)` (for "older
    // than" checks: `{{ seconds_since(Values.LastBackup) > 3600 }}`).
    env.add_function("now", || {
        jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now())
            .to_string()
    });
    env.add_function("seconds_since", |ts: String| -> Result<i64, minijinja::Error> {
        let t: jiff::Timestamp = ts.trim().parse().map_err(|e| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("seconds_since: {ts:?} is not an RFC 3339 timestamp: {e}"),
            )
        })?;
        Ok(jiff::Timestamp::now().as_second() - t.as_second())
    });
    // The hex SHA-256 of a rendered config: for the pod-template annotation that rolls a
    // Deployment when its (subPath-mounted, never refreshed) ConfigMap changed.
    env.add_filter("sha256", |s: String| {
        use sha2::{Digest, Sha256};
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    env.add_filter("urlencode", |s: String| {
        minijinja::Value::from_safe_string(
            percent_encoding::utf8_percent_encode(&s, percent_encoding::NON_ALPHANUMERIC).to_string(),
        )
    });
    env.add_filter(
        "tojson",
        |v: minijinja::Value| -> Result<minijinja::Value, minijinja::Error> {
            let json = serde_json::to_string(&v)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
            Ok(minijinja::Value::from_safe_string(json))
        },
    );
    env.add_filter(
        "toyaml",
        |v: minijinja::Value| -> Result<minijinja::Value, minijinja::Error> {
            let yaml = serde_yaml::to_string(&v)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("toyaml: {e}")))?;
            Ok(minijinja::Value::from_safe_string(yaml.trim_end().to_string()))
        },
    );
    env
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.detail().map_or_else(|| e.kind().to_string(), str::to_string);
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

/// Parses a template and returns what it refers to: top-level names (`alert`) and, for
/// `Values`, each key used (`Values.DemotionToken`).
pub fn references(src: &str) -> Result<BTreeSet<String>, TemplateError> {
    let src = normalize(src);
    let env = environment();
    let tmpl = env.template_from_str(&src).map_err(|e| TemplateError::Parse {
        template: src.clone(),
        reason: describe(&e),
    })?;
    Ok(tmpl.undeclared_variables(true).into_iter().collect())
}

/// A filter, test or function the template uses that does not exist (`{{ x | nosuchfilter }}`),
/// found by rendering it once with every value undefined-but-usable, so that `check` and
/// `serve` refuse the plan at load instead of failing the step at 3 a.m. Branches not taken with
/// such values are not seen.
pub fn unknown_callable(src: &str) -> Option<String> {
    if !is_template(src) {
        return None;
    }
    let mut env = environment();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    match env.render_str(&normalize(src), Value::Null) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction
            ) =>
        {
            Some(describe(&e))
        }
        _ => None,
    }
}

/// Renders a template as text. Undefined names are errors, never empty strings.
pub fn render(src: &str, ctx: &Value) -> Result<String, TemplateError> {
    if !is_template(src) {
        return Ok(src.to_string());
    }
    let src = normalize(src);
    let env = environment();
    env.render_str(&src, ctx).map_err(|e| render_error(&src, &e))
}

fn render_error(src: &str, e: &minijinja::Error) -> TemplateError {
    match e.kind() {
        ErrorKind::SyntaxError => TemplateError::Parse {
            template: src.to_string(),
            reason: describe(e),
        },
        _ => TemplateError::Render {
            template: src.to_string(),
            reason: describe(e),
        },
    }
}

/// Renders every string leaf of a `raw` value; the structure (keys, arrays, types) is kept.
pub fn render_raw(value: &Value, ctx: &Value) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => Value::String(render(s, ctx)?),
        Value::Array(items) => Value::Array(items.iter().map(|v| render_raw(v, ctx)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_raw(v, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates a `when` template: `true`/`false` (any case), `1`/`0`, `yes`/`no`; empty is false.
pub fn render_bool(src: &str, ctx: &Value) -> Result<bool, TemplateError> {
    let out = render(src, ctx)?;
    match out.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" | "none" => Ok(false),
        _ => Err(TemplateError::NotABool { value: out }),
    }
}

const TOKEN_OPEN: char = '\u{E000}';
const TOKEN_CLOSE: char = '\u{E001}';

/// Renders a YAML manifest template whose structure cannot be changed by the values printed
/// into it. Every `{{ … }}` output — whatever filters made it, `safe`, `tojson` and `toyaml`
/// included — is first written as an opaque token; the YAML is parsed; then tokens inside
/// scalars are replaced by the values. A value that is a whole scalar keeps its type (a number
/// stays a number, a map from `Values` becomes a map); text is spliced into strings.
pub fn render_yaml(src: &str, ctx: &Value) -> Result<Value, TemplateError> {
    let (text, table) = render_tokens(src, ctx)?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| TemplateError::Yaml { reason: e.to_string() })?;
    Ok(substitute(doc, &table))
}

/// Renders a template with every printed value replaced by an opaque token (`\u{E000}N\u{E001}`),
/// and returns the text and the values by token number: the caller decides where the text's
/// structure ends and how each value is put in.
fn render_tokens(src: &str, ctx: &Value) -> Result<(String, Vec<minijinja::Value>), TemplateError> {
    let src = normalize(src);
    let printed: Arc<Mutex<Vec<minijinja::Value>>> = Arc::default();
    let mut env = environment();
    let table = printed.clone();
    env.set_formatter(move |out, _state, value| {
        let mut table = table.lock().unwrap();
        write!(out, "{TOKEN_OPEN}{}{TOKEN_CLOSE}", table.len()).map_err(minijinja::Error::from)?;
        table.push(value.clone());
        Ok(())
    });
    let text = env.render_str(&src, ctx).map_err(|e| render_error(&src, &e))?;
    let table = std::mem::take(&mut *printed.lock().unwrap());
    Ok((text, table))
}

/// Renders a URL template so that values cannot change which endpoint is called: every value
/// printed into the path is percent-encoded as one path segment (`/`, `?`, `#` included, and
/// `.`/`..` refused), into the query or fragment as one component (`&`, `=`, `#`, `+` included).
/// A value that is the whole start of the URL (`{{ secrets.webhookUrl }}/…`) is the URL the
/// author chose and is kept as it is; so is a value marked `| safe`, or one already passed
/// through the `urlencode` filter.
pub fn render_url(src: &str, ctx: &Value) -> Result<String, TemplateError> {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // RFC 3986 unreserved characters stay; everything else is encoded.
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    if !is_template(src) {
        return Ok(src.to_string());
    }
    let (text, table) = render_tokens(src, ctx)?;
    let src = normalize(src);
    // Which part of the URL the text written so far ends in.
    let part = |out: &str| {
        if out.contains('#') {
            "fragment"
        } else if out.contains('?') {
            "query"
        } else {
            let after_scheme = out.find("://").map_or(out, |i| &out[i + 3..]);
            if after_scheme.contains('/') {
                "path"
            } else {
                "authority"
            }
        }
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find(TOKEN_OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + TOKEN_OPEN.len_utf8()..];
        let end = after.find(TOKEN_CLOSE).unwrap_or(after.len());
        let value = after[..end].parse::<usize>().ok().and_then(|i| table.get(i));
        rest = after.get(end + TOKEN_CLOSE.len_utf8()..).unwrap_or("");
        let Some(value) = value else { continue };
        let raw = value.to_string();
        if out.is_empty() || value.is_safe() {
            out.push_str(&raw);
            continue;
        }
        match part(&out) {
            // Which host is called is the plan's decision, never a value's.
            "authority" => {
                return Err(TemplateError::Render {
                    template: src.clone(),
                    reason: format!(
                        "{raw:?} would be printed into the URL's host: a host comes from the \
                         plan, or a whole URL from a param or secret at the start of the URL \
                         (or mark the value `| safe`)"
                    ),
                })
            }
            "path" if raw == "." || raw == ".." => {
                return Err(TemplateError::Render {
                    template: src.clone(),
                    reason: format!("{raw:?} cannot be a URL path segment"),
                })
            }
            _ => out.extend(utf8_percent_encode(&raw, COMPONENT)),
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn substitute(v: Value, table: &[minijinja::Value]) -> Value {
    match v {
        Value::String(s) => splice(&s, table),
        Value::Array(items) => Value::Array(items.into_iter().map(|i| substitute(i, table)).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (crate::fieldpath::as_text(&splice(&k, table)), substitute(v, table)))
                .collect(),
        ),
        other => other,
    }
}

fn splice(s: &str, table: &[minijinja::Value]) -> Value {
    if !s.contains(TOKEN_OPEN) {
        return Value::String(s.to_string());
    }
    let mut out = String::new();
    let mut rest = s;
    let mut whole: Option<Value> = None;
    let mut pieces = 0;
    while let Some(start) = rest.find(TOKEN_OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + TOKEN_OPEN.len_utf8()..];
        let end = after.find(TOKEN_CLOSE).unwrap_or(after.len());
        let value = after[..end].parse::<usize>().ok().and_then(|i| table.get(i));
        if let Some(value) = value {
            out.push_str(&value.to_string());
            whole = serde_json::to_value(value).ok();
        }
        pieces += 1;
        rest = after.get(end + TOKEN_CLOSE.len_utf8()..).unwrap_or("");
    }
    out.push_str(rest);
    let only_token = pieces == 1 && s.starts_with(TOKEN_OPEN) && s.ends_with(TOKEN_CLOSE);
    match whole {
        // A value that is a whole scalar keeps its type, maps and lists included.
        Some(v) if only_token => v,
        _ => Value::String(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "Values": {"DemotionToken": "tok-123", "SouthIP": "10.0.0.7", "replicas": 3},
            "alert": {"labels": {"cluster": "pg-north", "evil": "x\"}}\n  injected: {{ Values.SouthIP }}\nkind: Secret"}},
        })
    }

    #[test]
    fn values_in_a_url_cannot_change_the_endpoint() {
        let ctx = json!({"alert": {"labels": {"x": "../../admin?x=1&fixed=0#", "host": "pg.db:8080"}},
                         "Values": {"base": "https://hooks.example/a", "dots": ".."}});
        assert_eq!(
            render_url("https://h.example/api/{{ alert.labels.x }}/run?who={{ alert.labels.x }}", &ctx).unwrap(),
            "https://h.example/api/..%2F..%2Fadmin%3Fx%3D1%26fixed%3D0%23/run?who=..%2F..%2Fadmin%3Fx%3D1%26fixed%3D0%23"
        );
        // A value in the host is refused: an alert label must not pick the endpoint.
        let e = render_url("http://{{ alert.labels.host }}/x", &ctx).unwrap_err();
        assert!(e.to_string().contains("URL's host"), "{e}");
        assert_eq!(
            render_url("http://{{ alert.labels.host | safe }}/x", &ctx).unwrap(),
            "http://pg.db:8080/x"
        );
        // The author's whole URL from a value, `safe`, and `urlencode` are kept.
        assert_eq!(
            render_url("{{ Values.base }}/b?q={{ 'a b' | urlencode }}", &ctx).unwrap(),
            "https://hooks.example/a/b?q=a%20b"
        );
        assert_eq!(
            render_url("https://h/{{ 'p/q' | safe }}", &ctx).unwrap(),
            "https://h/p/q"
        );
        let e = render_url("https://h/a/{{ Values.dots }}/b", &ctx).unwrap_err();
        assert!(e.to_string().contains("cannot be a URL path segment"), "{e}");
    }

    #[test]
    fn sha256_gives_the_hex_digest_of_a_rendered_text() {
        let ctx = json!({"Values": {"cfg": "abc"}});
        assert_eq!(
            render("{{ Values.cfg | sha256 }}", &ctx).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_next_line_character_in_a_label_reaches_the_manifest_unchanged() {
        // U+0085 is a line break to YAML 1.1: it must stay data, not become a space or a break.
        let ctx = json!({"alert": {"labels": {"x": "a\u{85}b", "y": "c\u{2028}d"}}});
        let doc = render_yaml(
            "metadata:\n  annotations:\n    x: {{ alert.labels.x }}\n    y: \"pre {{ alert.labels.y }}\"\n",
            &ctx,
        )
        .unwrap();
        assert_eq!(doc["metadata"]["annotations"]["x"], json!("a\u{85}b"));
        assert_eq!(doc["metadata"]["annotations"]["y"], json!("pre c\u{2028}d"));
    }

    #[test]
    fn an_unknown_filter_test_or_function_is_found_without_values() {
        assert!(unknown_callable("{{ Values.x | nosuchfilter }}")
            .unwrap()
            .contains("nosuchfilter"));
        assert!(unknown_callable("{{ nosuchfn(1) }}").is_some());
        assert!(unknown_callable("{% if Values.x is nosuchtest %}y{% endif %}").is_some());
        assert_eq!(unknown_callable("{{ Values.x | b64encode | upper }} {{ now() }}"), None);
    }

    #[test]
    fn now_and_seconds_since_do_date_arithmetic() {
        let now = render("{{ now() }}", &ctx()).unwrap();
        let parsed: jiff::Timestamp = now.parse().unwrap();
        assert!((jiff::Timestamp::now().as_second() - parsed.as_second()).abs() <= 2);
        assert!(render_bool("{{ seconds_since('2020-01-01T00:00:00Z') > 3600 }}", &ctx()).unwrap());
        assert!(!render_bool("{{ seconds_since(now()) > 3600 }}", &ctx()).unwrap());
        let e = render("{{ seconds_since('yesterday') }}", &ctx()).unwrap_err();
        assert!(e.to_string().contains("not an RFC 3339 timestamp"), "{e}");
    }

    #[test]
    fn go_template_values_references_are_accepted() {
        assert_eq!(render("{{ .Values.DemotionToken }}", &ctx()).unwrap(), "tok-123");
        assert_eq!(render("ip={{- .Values.SouthIP -}}!", &ctx()).unwrap(), "ip=10.0.0.7!");
        assert_eq!(
            normalize("plain .Values text {{ .alert.labels.cluster }}"),
            "plain .Values text {{ alert.labels.cluster }}"
        );
    }

    #[test]
    fn undefined_values_are_errors_not_empty_strings() {
        let e = render("{{ Values.Nope }}", &ctx()).unwrap_err().to_string();
        assert!(e.contains("undefined"), "{e}");
        let e = render("{{ nothing }}", &ctx()).unwrap_err().to_string();
        assert!(e.contains("undefined"), "{e}");
    }

    #[test]
    fn default_filter_covers_an_undefined_value() {
        assert_eq!(render("{{ Values.Nope | default('x') }}", &ctx()).unwrap(), "x");
    }

    #[test]
    fn filters_encode_decode_and_serialise() {
        assert_eq!(render("{{ 'abc' | b64encode }}", &ctx()).unwrap(), "YWJj");
        assert_eq!(render("{{ 'YWJj' | b64decode }}", &ctx()).unwrap(), "abc");
        assert_eq!(
            render("{{ Values | tojson }}", &json!({"Values": {"a": 1}})).unwrap(),
            "{\"a\":1}"
        );
        assert_eq!(
            render("{{ Values | toyaml }}", &json!({"Values": {"a": 1}})).unwrap(),
            "a: 1"
        );
    }

    #[test]
    fn references_lists_values_keys_and_top_level_names() {
        let refs = references("{{ .Values.A }} {{ alert.labels.x }} {% if Values.B %}{% endif %}").unwrap();
        assert!(refs.contains("Values.A") && refs.contains("Values.B"), "{refs:?}");
        assert!(refs.iter().any(|r| r.starts_with("alert")), "{refs:?}");
    }

    #[test]
    fn syntax_errors_are_reported_as_parse_errors() {
        assert!(matches!(references("{{ Values.A "), Err(TemplateError::Parse { .. })));
    }

    #[test]
    fn raw_values_render_string_leaves_and_keep_structure() {
        let raw = json!({"primary": "pg-south", "promotionToken": "{{ Values.DemotionToken }}", "n": 2});
        assert_eq!(
            render_raw(&raw, &ctx()).unwrap(),
            json!({"primary": "pg-south", "promotionToken": "tok-123", "n": 2})
        );
        let evil = render_raw(&json!({"a": "{{ alert.labels.evil }}"}), &ctx()).unwrap();
        assert_eq!(evil.as_object().unwrap().len(), 1);
        assert!(evil["a"].as_str().unwrap().contains("kind: Secret"));
    }

    #[test]
    fn a_label_value_full_of_yaml_and_template_syntax_stays_data_in_a_manifest() {
        let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  labels:\n    from: {{ alert.labels.evil }}\ndata:\n  cfg: |\n    server pg {{ Values.SouthIP }}:5432\n    note {{ alert.labels.evil }}\n";
        let doc = render_yaml(manifest, &ctx()).unwrap();
        assert_eq!(doc["kind"], "ConfigMap");
        assert_eq!(doc.as_object().unwrap().len(), 4, "{doc:#}");
        assert_eq!(doc["metadata"]["labels"]["from"], ctx()["alert"]["labels"]["evil"]);
        assert_eq!(doc["data"].as_object().unwrap().len(), 1);
        let cfg = doc["data"]["cfg"].as_str().unwrap();
        assert!(
            cfg.starts_with("server pg 10.0.0.7:5432\nnote x\"}}\n  injected: {{ Values.SouthIP }}"),
            "{cfg}"
        );
    }

    #[test]
    fn a_whole_scalar_value_keeps_its_type_in_a_manifest() {
        let doc = render_yaml(
            "spec:\n  replicas: {{ Values.replicas }}\n  name: n-{{ Values.replicas }}\n",
            &ctx(),
        )
        .unwrap();
        assert_eq!(doc["spec"]["replicas"], json!(3));
        assert_eq!(doc["spec"]["name"], json!("n-3"));
    }

    #[test]
    fn filters_marked_safe_cannot_smuggle_structure_into_a_manifest() {
        let ctx = json!({"alert": {"labels": {"a": "1", "kind": "Secret"}}, "Values": {"m": {"x": 1}}});
        let doc = render_yaml(
            "kind: ConfigMap\nmetadata:\n  labels:\n    {{ alert.labels | toyaml }}\n",
            &ctx,
        );
        // The whole label map is one opaque scalar where a key was expected: not a top-level kind.
        assert!(doc.is_err() || doc.as_ref().unwrap()["kind"] == "ConfigMap", "{doc:?}");
        let doc = render_yaml(
            "kind: ConfigMap\ndata: {{ alert.labels.kind | safe }}\nextra: {{ Values.m }}\n",
            &ctx,
        )
        .unwrap();
        assert_eq!(doc, json!({"kind": "ConfigMap", "data": "Secret", "extra": {"x": 1}}));
    }

    #[test]
    fn when_renders_to_a_boolean() {
        assert!(render_bool("{{ Values.SouthIP == '10.0.0.7' }}", &ctx()).unwrap());
        assert!(!render_bool("{{ Values.replicas > 5 }}", &ctx()).unwrap());
        assert!(matches!(
            render_bool("{{ Values.SouthIP }}", &ctx()),
            Err(TemplateError::NotABool { .. })
        ));
    }
}
