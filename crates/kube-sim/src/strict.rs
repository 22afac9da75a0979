//! Field validation (pure, no I/O): what `fieldValidation=Strict|Warn|Ignore` does with the
//! fields of a request body that its type lacks or that appear twice, worded as kube-apiserver
//! v1.36 words them. `Warn` is the default, as on the real server.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::status::{Cause, StatusError};

/// What the request asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl Mode {
    /// The `fieldValidation` parameter; `options` names the options kind in the error
    /// (`CreateOptions`, `UpdateOptions`, `PatchOptions`).
    pub fn parse(value: Option<&str>, options: &str) -> Result<Mode, StatusError> {
        match value.unwrap_or("") {
            "" | "Warn" => Ok(Mode::Warn),
            "Ignore" => Ok(Mode::Ignore),
            "Strict" => Ok(Mode::Strict),
            other => Err(StatusError::invalid(
                "meta.k8s.io",
                options,
                "",
                vec![Cause {
                    reason: "FieldValueNotSupported".into(),
                    message: format!(
                        "Unsupported value: {}: supported values: \"\", \"Ignore\", \"Strict\", \"Warn\"",
                        serde_json::Value::String(other.to_string())
                    ),
                    field: "fieldValidation".into(),
                }],
            )),
        }
    }
}

/// The fields of a JSON body in document order, and those that appear more than once in
/// their object (`spec.instances`, `spec.items[0].name`).
#[derive(Clone, Debug, Default)]
pub struct BodyFields {
    pub order: Vec<String>,
    pub duplicates: Vec<String>,
}

struct Scan<'a> {
    path: String,
    out: &'a RefCell<BodyFields>,
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            {
                let mut out = self.out.borrow_mut();
                out.order.push(path.clone());
                if !seen.insert(key) {
                    out.duplicates.push(path.clone());
                }
            }
            map.next_value_seed(Scan { path, out: self.out })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(Scan {
                path: format!("{}[{i}]", self.path),
                out: self.out,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

impl BodyFields {
    /// Scans a JSON body; anything that is not JSON gives nothing.
    pub fn scan(body: &[u8]) -> BodyFields {
        let out = RefCell::new(BodyFields::default());
        let mut de = serde_json::Deserializer::from_slice(body);
        let _ = Scan {
            path: String::new(),
            out: &out,
        }
        .deserialize(&mut de);
        out.into_inner()
    }

    fn position(&self, path: &str) -> usize {
        self.order.iter().position(|p| p == path).unwrap_or(usize::MAX)
    }
}

/// A JSON body as Go decodes it into a typed object: a field given twice keeps the fields of
/// both objects (the later winning), where `serde_json` keeps only the later value.
pub fn parse_merging_duplicates(body: &[u8]) -> Result<Value, serde_json::Error> {
    struct Merging;
    impl<'de> DeserializeSeed<'de> for Merging {
        type Value = Value;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Merging {
        type Value = Value;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let v = map.next_value_seed(Merging)?;
                match (out.get_mut(&key), v) {
                    (Some(Value::Object(old)), Value::Object(new)) => old.extend(new),
                    (_, v) => {
                        out.insert(key, v);
                    }
                }
            }
            Ok(Value::Object(out))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(Merging)? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
            Ok(Value::Bool(b))
        }
        fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
            Ok(Value::from(n))
        }
        fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
            Ok(Value::from(n))
        }
        fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
            Ok(Value::from(n))
        }
        fn visit_str<E>(self, s: &str) -> Result<Value, E> {
            Ok(Value::String(s.to_string()))
        }
        fn visit_string<E>(self, s: String) -> Result<Value, E> {
            Ok(Value::String(s))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Merging.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// The problems with a body's fields, in the order the API server lists them: for built-in
/// kinds as they appear in the body; for custom resources, duplicates before unknown fields.
pub fn problems(fields: &BodyFields, unknown: &[String], custom: bool) -> Vec<String> {
    let mut unknown: Vec<&String> = unknown.iter().collect();
    unknown.sort_by_key(|p| fields.position(p));
    let mut all: Vec<(usize, String)> = fields
        .duplicates
        .iter()
        .map(|d| (0, format!("duplicate field {d:?}")))
        .collect();
    all.extend(unknown.iter().map(|u| (1, format!("unknown field {u:?}"))));
    if !custom {
        all.sort_by_key(|(_, m)| {
            let path = m.split_once(' ').map(|x| x.1).unwrap_or("");
            let path = path.trim_start_matches("field ").trim_matches('"');
            fields.position(path)
        });
    }
    all.into_iter().map(|(_, m)| m).collect()
}

/// The 400 a strict decoding error gives.
pub fn strict_error(kind: &str, version: &str, problems: &[String]) -> StatusError {
    StatusError::bad_request(format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        problems.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_with_their_paths_in_document_order() {
        let f = BodyFields::scan(
            br#"{"metadata":{"name":"a","x":1},"data":{"a":"b"},"data":{"c":"d"},"l":[{"k":1,"k":2}]}"#,
        );
        assert_eq!(f.duplicates, ["data", "l[0].k"]);
        let unknown = ["l[0].k".to_string(), "metadata.x".to_string()];
        assert_eq!(
            problems(&f, &unknown[1..], false),
            [
                "unknown field \"metadata.x\"",
                "duplicate field \"data\"",
                "duplicate field \"l[0].k\""
            ]
        );
        assert_eq!(
            problems(&f, &unknown[1..], true),
            [
                "duplicate field \"data\"",
                "duplicate field \"l[0].k\"",
                "unknown field \"metadata.x\""
            ]
        );
    }
}
