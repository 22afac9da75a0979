//! Protobuf request bodies (pure, no I/O): `kubectl create namespace|configmap|secret|
//! serviceaccount` sends its object as `application/vnd.kubernetes.protobuf` — the `k8s\0`
//! magic, a `runtime.Unknown` envelope, then the object. This decodes those few kinds into the
//! JSON the rest of the simulator works with. Responses are always JSON (clients accept it).

use serde_json::{json, Map, Value};

use super::builtin::base64_encode;
use super::status::StatusError;

#[derive(Clone, Copy)]
enum F {
    Str,
    Int,
    Bool,
    Time,
    Msg(&'static [(u32, &'static str, F)]),
    MapStr,
    MapBytes,
    RepStr,
    RepMsg(&'static [(u32, &'static str, F)]),
}

type Schema = &'static [(u32, &'static str, F)];

const OBJECT_META: Schema = &[
    (1, "name", F::Str),
    (2, "generateName", F::Str),
    (3, "namespace", F::Str),
    (5, "uid", F::Str),
    (6, "resourceVersion", F::Str),
    (7, "generation", F::Int),
    (8, "creationTimestamp", F::Time),
    (11, "labels", F::MapStr),
    (12, "annotations", F::MapStr),
    (14, "finalizers", F::RepStr),
];
const OBJECT_REFERENCE: Schema = &[
    (1, "kind", F::Str),
    (2, "namespace", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (5, "apiVersion", F::Str),
];
const LOCAL_REFERENCE: Schema = &[(1, "name", F::Str)];
const NAMESPACE: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "spec", F::Msg(&[(1, "finalizers", F::RepStr)])),
    (3, "status", F::Msg(&[(1, "phase", F::Str)])),
];
const CONFIG_MAP: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapStr),
    (3, "binaryData", F::MapBytes),
    (4, "immutable", F::Bool),
];
const SECRET: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapBytes),
    (3, "type", F::Str),
    (4, "stringData", F::MapStr),
    (5, "immutable", F::Bool),
];
const SERVICE_ACCOUNT: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "secrets", F::RepMsg(OBJECT_REFERENCE)),
    (3, "imagePullSecrets", F::RepMsg(LOCAL_REFERENCE)),
    (4, "automountServiceAccountToken", F::Bool),
];

fn bad(what: &str) -> StatusError {
    StatusError::bad_request(format!("failed to decode the protobuf body: {what}"))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, StatusError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at).ok_or_else(|| bad("truncated varint"))?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StatusError> {
        let n = self.varint()? as usize;
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or_else(|| bad("truncated field"))?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next (field number, wire type), or None at the end.
    fn tag(&mut self) -> Result<Option<(u32, u8)>, StatusError> {
        if self.at >= self.b.len() {
            return Ok(None);
        }
        let t = self.varint()?;
        Ok(Some(((t >> 3) as u32, (t & 7) as u8)))
    }

    fn skip(&mut self, wire: u8) -> Result<(), StatusError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => {
                self.at += 8;
                Ok(())
            }
            2 => self.bytes().map(|_| ()),
            5 => {
                self.at += 4;
                Ok(())
            }
            _ => Err(bad("unsupported wire type")),
        }
    }
}

fn text(b: &[u8]) -> Result<String, StatusError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("a string is not UTF-8"))
}

/// A map entry: key (1) and value (2).
fn entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), StatusError> {
    let mut r = Reader { b, at: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while let Some((n, wire)) = r.tag()? {
        match (n, wire) {
            (1, 2) => k = text(r.bytes()?)?,
            (2, 2) if bytes_value => v = json!(base64_encode(r.bytes()?)),
            (2, 2) => v = json!(text(r.bytes()?)?),
            (_, w) => r.skip(w)?,
        }
    }
    Ok((k, v))
}

fn time(b: &[u8]) -> Result<Value, StatusError> {
    let mut r = Reader { b, at: 0 };
    let mut seconds = 0i64;
    while let Some((n, wire)) = r.tag()? {
        match (n, wire) {
            (1, 0) => seconds = r.varint()? as i64,
            (_, w) => r.skip(w)?,
        }
    }
    Ok(jiff::Timestamp::from_second(seconds)
        .map(|t| json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
        .unwrap_or(Value::Null))
}

fn message(b: &[u8], schema: Schema) -> Result<Value, StatusError> {
    let mut r = Reader { b, at: 0 };
    let mut out = Map::new();
    while let Some((n, wire)) = r.tag()? {
        let Some((_, name, f)) = schema.iter().find(|(num, _, _)| *num == n) else {
            r.skip(wire)?;
            continue;
        };
        let name = name.to_string();
        match (f, wire) {
            (F::Str, 2) => {
                // Go writes every string field, empty or not; JSON would leave it out.
                let v = text(r.bytes()?)?;
                if !v.is_empty() {
                    out.insert(name, json!(v));
                }
            }
            (F::Int, 0) => {
                out.insert(name, json!(r.varint()? as i64));
            }
            (F::Bool, 0) => {
                out.insert(name, json!(r.varint()? != 0));
            }
            (F::Time, 2) => {
                out.insert(name, time(r.bytes()?)?);
            }
            (F::Msg(s), 2) => {
                out.insert(name, message(r.bytes()?, s)?);
            }
            (F::MapStr | F::MapBytes, 2) => {
                let (k, v) = entry(r.bytes()?, matches!(f, F::MapBytes))?;
                let m = out.entry(name).or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
            }
            (F::RepStr, 2) => {
                let v = json!(text(r.bytes()?)?);
                let a = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = a.as_array_mut() {
                    a.push(v);
                }
            }
            (F::RepMsg(s), 2) => {
                let v = message(r.bytes()?, s)?;
                let a = out.entry(name).or_insert_with(|| json!([]));
                if let Some(a) = a.as_array_mut() {
                    a.push(v);
                }
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf request body of one of the kinds `kubectl create` sends; other kinds
/// are refused as the content type they cannot be.
pub fn decode(body: &[u8]) -> Result<Value, StatusError> {
    let raw = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| bad("the k8s magic number is missing"))?;
    let mut r = Reader { b: raw, at: 0 };
    let (mut api_version, mut kind, mut object) = (String::new(), String::new(), &[][..]);
    while let Some((n, wire)) = r.tag()? {
        match (n, wire) {
            (1, 2) => {
                let tm = message(r.bytes()?, &[(1, "apiVersion", F::Str), (2, "kind", F::Str)])?;
                api_version = tm["apiVersion"].as_str().unwrap_or("").to_string();
                kind = tm["kind"].as_str().unwrap_or("").to_string();
            }
            (2, 2) => object = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        _ => {
            return Err(StatusError::unsupported_media_type(format!(
                "the simulator reads protobuf bodies of Namespaces, ConfigMaps, Secrets and ServiceAccounts only, not {kind} ({api_version}); send JSON"
            )))
        }
    };
    let mut obj = message(object, schema)?;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_configmap_from_kubectl_create_decodes_to_json() {
        let meta = [
            field(1, b"settings"),
            field(11, &[field(1, b"app"), field(2, b"pg")].concat()),
        ]
        .concat();
        let cm = [
            field(1, &meta),
            field(2, &[field(1, b"mode"), field(2, b"primary")].concat()),
        ]
        .concat();
        let tm = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm), field(2, &cm)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "labels": {"app": "pg"}},
                "data": {"mode": "primary"}})
        );
    }

    #[test]
    fn other_kinds_in_protobuf_are_refused() {
        let tm = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm)].concat();
        assert_eq!(decode(&body).unwrap_err().code, 415);
    }
}
