//! Kubernetes' format CEL library (pure, no I/O), as kube-apiserver v1.36 declares it
//! (`k8s.io/apiserver/pkg/cel/library/format.go`): `format.dns1123Label()` and the other name
//! formats, `format.named(name)` (an optional format), and `validate(string)`, which gives
//! `optional.none()` for a valid string, else the list of what is wrong with it, in the words of
//! `k8s.io/apimachinery/pkg/util/validation`; and the CRD formats `uri` (Go's
//! `url.ParseRequestURI`, its error text), `uuid`, `byte`, `date` and `datetime` (kube-openapi's
//! `strfmt` checks, with Kubernetes' fixed messages).

use std::sync::{Arc, OnceLock};

use cel::common::value::CowVal;
use cel::objects::{Opaque, OptionalValue, Value};
use cel::ExecutionError;

/// A format (`kubernetes.NamedFormat`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format(pub &'static str);

impl Opaque for Format {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.NamedFormat"
    }
}

/// The formats Kubernetes names.
pub const NAMES: &[&str] = &[
    "dns1123Label",
    "dns1123Subdomain",
    "dns1035Label",
    "qualifiedName",
    "dns1123LabelPrefix",
    "dns1123SubdomainPrefix",
    "dns1035LabelPrefix",
    "labelValue",
    "uri",
    "uuid",
    "byte",
    "date",
    "datetime",
];

const LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QNAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QNAME_MSG: &str =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn subdomain_fmt() -> String {
    format!("{LABEL_FMT}(\\.{LABEL_FMT})*")
}

fn label_value_fmt() -> String {
    format!("({QNAME_FMT})?")
}

fn matches(fmt: &str, s: &str) -> bool {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, regex::Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    let re = cache
        .entry(fmt.to_string())
        .or_insert_with(|| regex::Regex::new(&format!("^{fmt}$")).unwrap_or_else(|_| regex::Regex::new("^$").unwrap()));
    re.is_match(s)
}

/// `validation.RegexError` (two spaces before each "or", as it writes them).
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let shown: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{msg} (e.g. {}regex used for validation is '{fmt}')",
        shown.join(" or ")
    )
}

fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len(63));
    }
    if !matches(LABEL_FMT, s) {
        if matches(&subdomain_fmt(), s) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(LABEL_MSG, LABEL_FMT, &["my-name", "123-abc"]));
        }
    }
    errs
}

fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len(253));
    }
    if !matches(&subdomain_fmt(), s) {
        errs.push(regex_error(SUBDOMAIN_MSG, &subdomain_fmt(), &["example.com"]));
    }
    errs
}

fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len(63));
    }
    if !matches(DNS1035_FMT, s) {
        errs.push(regex_error(DNS1035_MSG, DNS1035_FMT, &["my-name", "abc-123"]));
    }
    errs
}

fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QNAME_MSG, QNAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len(63)));
    }
    if !matches(QNAME_FMT, name) {
        errs.push(format!(
            "name part {}",
            regex_error(QNAME_MSG, QNAME_FMT, &["MyName", "my.name", "123-abc"])
        ));
    }
    errs
}

fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len(63));
    }
    if !matches(&label_value_fmt(), s) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            &label_value_fmt(),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// A name that may end with a dash (`generateName`): validated without it.
fn prefix(s: &str, f: fn(&str) -> Vec<String>) -> Vec<String> {
    f(s.strip_suffix('-').unwrap_or(s))
}

/// `url.ParseRequestURI`'s error, in Go's words.
fn uri(s: &str) -> Vec<String> {
    match super::go_url::parse_request_uri(s) {
        Ok(_) => vec![],
        Err(e) => vec![e],
    }
}

/// `strfmt.IsUUID`: 32 hexadecimal digits, grouped 8-4-4-4-12 by optional dashes.
fn uuid(s: &str) -> Vec<String> {
    if matches(
        "(?i)[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}",
        s,
    ) {
        return vec![];
    }
    vec!["does not match the UUID format".to_string()]
}

/// govalidator's `IsBase64`: standard base64, padded, not empty.
fn byte(s: &str) -> Vec<String> {
    let b64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})";
    if matches(b64, s) {
        return vec![];
    }
    vec!["invalid base64".to_string()]
}

/// `time.Parse("2006-01-02", s)` succeeds: four digits of year, a month, a day of that month.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (Some(year), Some(month), Some(day)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

fn date(s: &str) -> Vec<String> {
    if is_date(s) {
        return vec![];
    }
    vec!["invalid date".to_string()]
}

/// `strfmt.IsDateTime`: a date and a time split at the first `t` (either case), the time
/// `hh:mm:ss`, optional fractions, and `z` or an offset.
fn datetime(s: &str) -> Vec<String> {
    let valid = || {
        if s.len() < 4 {
            return false;
        }
        let lower = s.to_lowercase();
        let parts: Vec<&str> = lower.split('t').collect();
        if parts.len() < 2 || !is_date(parts[0]) {
            return false;
        }
        let re = {
            static RE: OnceLock<regex::Regex> = OnceLock::new();
            RE.get_or_init(|| {
                regex::Regex::new(r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$")
                    .unwrap_or_else(|_| regex::Regex::new("^$").unwrap())
            })
        };
        let Some(m) = re.captures(parts[1]) else {
            return false;
        };
        &m[1] <= "23" && &m[2] <= "59" && &m[3] <= "59"
    };
    if valid() {
        return vec![];
    }
    vec!["invalid datetime".to_string()]
}

/// The regex size Kubernetes estimates a format's check at (`MaxRegexSize` in its format
/// library: the length of the pattern the check uses, or resembles), for its cost.
pub fn max_regex_size(format: &str) -> u64 {
    match format {
        "dns1123Label" | "dns1035Label" | "dns1123LabelPrefix" | "dns1035LabelPrefix" => 30,
        "dns1123Subdomain" | "qualifiedName" | "dns1123SubdomainPrefix" => 60,
        "labelValue" => 40,
        // govalidator.URL, strfmt.UUIDPattern, govalidator.Base64, strfmt.DateTimePattern.
        "uri" => 1072,
        "uuid" => 70,
        "byte" => 84,
        "date" | "datetime" => 71,
        _ => 1,
    }
}

/// What is wrong with `s` in `format`, or `None` for a format the simulator does not check.
pub fn validate(format: &str, s: &str) -> Option<Vec<String>> {
    Some(match format {
        "uri" => uri(s),
        "uuid" => uuid(s),
        "byte" => byte(s),
        "date" => date(s),
        "datetime" => datetime(s),
        "dns1123Label" => dns1123_label(s),
        "dns1123Subdomain" => dns1123_subdomain(s),
        "dns1035Label" => dns1035_label(s),
        "qualifiedName" => qualified_name(s),
        "dns1123LabelPrefix" => prefix(s, dns1123_label),
        "dns1123SubdomainPrefix" => prefix(s, dns1123_subdomain),
        "dns1035LabelPrefix" => prefix(s, dns1035_label),
        "labelValue" => label_value(s),
        _ => return None,
    })
}

fn format_value(name: &'static str) -> Value {
    Value::Opaque(Arc::new(Format(name)))
}

fn optional(v: Option<Value>) -> Value {
    Value::Opaque(Arc::new(match v {
        Some(v) => OptionalValue::of(v),
        None => OptionalValue::none(),
    }))
}

/// The zero-argument overloads `format.<name>()`, one function per format (overloads are plain
/// function pointers).
macro_rules! named_formats {
    ($($f:ident => $name:literal),* $(,)?) => {
        $(
            fn $f<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
                super::cel_value::by_value(args, |_| Ok(format_value($name)))
            }
        )*
        /// `format.<name>()` for every format, as (function name, overload).
        pub fn constructors() -> Vec<(String, cel::common::functions::Function)> {
            vec![$((format!("format.{}", $name), $f as cel::common::functions::Function)),*]
        }
    };
}

named_formats! {
    f_dns1123_label => "dns1123Label",
    f_dns1123_subdomain => "dns1123Subdomain",
    f_dns1035_label => "dns1035Label",
    f_qualified_name => "qualifiedName",
    f_dns1123_label_prefix => "dns1123LabelPrefix",
    f_dns1123_subdomain_prefix => "dns1123SubdomainPrefix",
    f_dns1035_label_prefix => "dns1035LabelPrefix",
    f_label_value => "labelValue",
    f_uri => "uri",
    f_uuid => "uuid",
    f_byte => "byte",
    f_date => "date",
    f_datetime => "datetime",
}

/// `format.named(name)`: the format of that name, or `optional.none()`.
pub fn named<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    super::cel_value::by_value(args, |v| match v {
        [Value::String(s)] => Ok(optional(
            NAMES.iter().find(|n| **n == s.as_str()).map(|n| format_value(n)),
        )),
        _ => Err(ExecutionError::no_such_overload("format.named", vec![])),
    })
}

/// `<format>.validate(string)`.
pub fn validate_fn<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    super::cel_value::by_value(args, |v| {
        let [Value::Opaque(f), Value::String(s)] = v else {
            return Err(ExecutionError::no_such_overload("validate", vec![]));
        };
        let Some(Format(name)) = f.downcast_ref::<Format>() else {
            return Err(ExecutionError::no_such_overload("validate", vec![]));
        };
        match validate(name, s) {
            Some(errs) if errs.is_empty() => Ok(optional(None)),
            Some(errs) => Ok(optional(Some(Value::List(Arc::new(
                errs.into_iter().map(|e| Value::String(Arc::new(e))).collect(),
            ))))),
            // Reported as what evaluation cannot reach: the write is refused, naming it.
            None => Err(ExecutionError::UndeclaredReference(Arc::new(format!(
                "format.{name}().validate"
            )))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_in_apimachinery_s_words() {
        assert_eq!(validate("dns1123Label", "my-name"), Some(vec![]));
        assert_eq!(
            validate("dns1123Label", "a.b"),
            Some(vec!["must not contain dots".to_string()])
        );
        assert_eq!(
            validate("dns1123Label", "A"),
            Some(vec!["a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_string()])
        );
        assert_eq!(validate("dns1123LabelPrefix", "my-name-"), Some(vec![]));
        assert_eq!(validate("labelValue", ""), Some(vec![]));
        assert_eq!(validate("qualifiedName", "example.com/MyName"), Some(vec![]));
        assert_eq!(validate("qualifiedName", "a/b/c").map(|e| e.len()), Some(1));
        assert_eq!(validate("nope", "x"), None);
    }

    #[test]
    fn crd_formats_are_checked_as_kube_openapi_checks_them() {
        let errs = |f: &str, s: &str| validate(f, s).unwrap();
        assert!(errs("uri", "https://example.com/a?b=c").is_empty());
        assert!(errs("uri", "/just/a/path").is_empty());
        assert_eq!(errs("uri", "relative"), ["parse \"relative\": invalid URI for request"]);
        assert_eq!(errs("uri", ""), ["parse \"\": empty url"]);
        assert!(errs("uuid", "123e4567-e89b-12d3-a456-426614174000").is_empty());
        assert!(errs("uuid", "123E4567E89B12D3A456426614174000").is_empty());
        assert_eq!(
            errs("uuid", "123e4567-e89b-12d3-a456"),
            ["does not match the UUID format"]
        );
        assert!(errs("byte", "aGVsbG8=").is_empty());
        assert_eq!(errs("byte", "aGVsbG8"), ["invalid base64"]);
        assert_eq!(errs("byte", ""), ["invalid base64"]);
        assert!(errs("date", "2024-02-29").is_empty());
        assert_eq!(errs("date", "2023-02-29"), ["invalid date"]);
        assert_eq!(errs("date", "2023-1-01"), ["invalid date"]);
        assert!(errs("datetime", "2021-01-01T00:00:00Z").is_empty());
        assert!(errs("datetime", "2021-01-01t23:59:59.123+02:00").is_empty());
        assert_eq!(errs("datetime", "2021-01-01T24:00:00Z"), ["invalid datetime"]);
        assert_eq!(errs("datetime", "2021-01-01 00:00:00Z"), ["invalid datetime"]);
    }
}
