//! Label and field selectors (pure, no I/O): parsing `labelSelector` (`a=b`, `a!=b`,
//! `a in (x,y)`, `a notin (x)`, `a`, `!a`) and `fieldSelector` (`metadata.name=x`,
//! `metadata.namespace!=y`) as the API server does, and matching objects against them.

use serde_json::Value;

use super::status::StatusError;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn set_values(s: &str) -> Result<Vec<String>, StatusError> {
    let s = s.trim();
    let Some(inner) = s.strip_prefix('(') else {
        return Err(StatusError::bad_request(format!(
            "unable to parse requirement: found '{s}', expected: '('"
        )));
    };
    let Some(inner) = inner.strip_suffix(')') else {
        return Err(StatusError::bad_request(
            "unable to parse requirement: found '', expected: ',' or ')'",
        ));
    };
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, StatusError> {
        let mut reqs = Vec::new();
        if text.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top(text) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let words: Vec<&str> = p.split_whitespace().collect();
            let req = if let Some(k) = p.strip_prefix('!') {
                (k.trim().to_string(), Op::NotExists)
            } else if let Some((k, v)) = p.split_once("!=") {
                (k.trim().to_string(), Op::NotEq(v.trim().to_string()))
            } else if let Some((k, v)) = p.split_once("==") {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = p.split_once('=') {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if words.len() >= 2 && words[1] == "in" {
                let rest = p[p.find(" in").unwrap_or(0) + 3..].to_string();
                (words[0].to_string(), Op::In(set_values(&rest)?))
            } else if words.len() >= 2 && words[1] == "notin" {
                let rest = p[p.find(" notin").unwrap_or(0) + 6..].to_string();
                (words[0].to_string(), Op::NotIn(set_values(&rest)?))
            } else if words.len() == 1 {
                (words[0].to_string(), Op::Exists)
            } else {
                return Err(StatusError::bad_request(format!(
                    "unable to parse requirement: found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    words.get(1).unwrap_or(&"")
                )));
            };
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|(k, op)| match op {
            Op::Eq(v) => get(k) == Some(v.as_str()),
            Op::NotEq(v) => get(k) != Some(v.as_str()),
            Op::In(vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Op::NotIn(vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Op::Exists => get(k).is_some(),
            Op::NotExists => get(k).is_none(),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, StatusError> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(StatusError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let k = k.trim();
            if !matches!(k, "metadata.name" | "metadata.namespace") {
                return Err(StatusError::bad_request(format!(
                    "{k:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                )));
            }
            reqs.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector { reqs })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(k, eq, v)| {
            let ptr = if k == "metadata.name" {
                "/metadata/name"
            } else {
                "/metadata/namespace"
            };
            let got = obj.pointer(ptr).and_then(Value::as_str).unwrap_or("");
            (got == v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_based_label_selectors_match_like_the_api_server() {
        let obj = json!({"metadata": {"labels": {"app": "pg", "tier": "db"}}});
        for (sel, want) in [
            ("app=pg", true),
            ("app==pg,tier=web", false),
            ("app in (pg, mysql)", true),
            ("tier notin (db)", false),
            ("app,!missing", true),
            ("app!=pg", false),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&obj), want, "{sel}");
        }
        let err = LabelSelector::parse("x in (1").unwrap_err();
        assert_eq!(
            err.message,
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
    }

    #[test]
    fn field_selectors_know_name_and_namespace_only() {
        let obj = json!({"metadata": {"name": "a", "namespace": "n"}});
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&obj));
        assert!(!FieldSelector::parse("metadata.namespace!=n").unwrap().matches(&obj));
        assert_eq!(
            FieldSelector::parse("spec.x=1").unwrap_err().message,
            "\"spec.x\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        );
    }
}
