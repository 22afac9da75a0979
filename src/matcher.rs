//! Alert matching (pure, no I/O): Alertmanager's matcher syntax (`=`, `!=`, `=~`, `!~`, regexes
//! anchored at both ends) and the plan's `alertLabels` equalities.
//!
//! A compiled regex costs ~12 KiB, and thousands of plans tend to repeat a handful of matchers
//! (`severity=~"critical|page"`), so matchers compiled for a plan set share one compiled regex per
//! pattern through [`Regexes`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("failed to parse matcher {text:?}: {reason}")]
pub struct MatcherError {
    pub text: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: Op,
    pub value: String,
    regex: Option<Arc<regex::Regex>>,
}

/// Compiled regexes by pattern, so that equal matchers in different plans share one.
#[derive(Debug, Default)]
pub struct Regexes {
    by_pattern: HashMap<String, Arc<regex::Regex>>,
}

impl Regexes {
    fn get(&mut self, pattern: String) -> Result<Arc<regex::Regex>, regex::Error> {
        if let Some(re) = self.by_pattern.get(&pattern) {
            return Ok(re.clone());
        }
        let re = Arc::new(regex::Regex::new(&pattern)?);
        self.by_pattern.insert(pattern, re.clone());
        Ok(re)
    }

    /// How many distinct patterns have been compiled.
    pub fn len(&self) -> usize {
        self.by_pattern.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pattern.is_empty()
    }
}

impl Matcher {
    /// Parses `name="value"`, `name!="value"`, `name=~"re"`, `name!~"re"` (quotes optional for
    /// values without spaces, commas or quotes).
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        Self::parse_shared(text, &mut Regexes::default())
    }

    /// [`Matcher::parse`], taking an already compiled regex for the same pattern from `regexes`
    /// (and adding new ones to it).
    pub fn parse_shared(text: &str, regexes: &mut Regexes) -> Result<Self, MatcherError> {
        let err = |reason: &str| MatcherError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let s = text.trim();
        let pos = s
            .find(['=', '!'])
            .ok_or_else(|| err("expected an operator: =, !=, =~ or !~"))?;
        let name = s[..pos].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err("the label name must be letters, digits and _"));
        }
        let rest = &s[pos..];
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (Op::Regex, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (Op::NotRegex, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (Op::NotEqual, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (Op::Equal, v)
        } else {
            return Err(err("expected an operator: =, !=, =~ or !~"));
        };
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('"') {
            let inner = inner
                .strip_suffix('"')
                .ok_or_else(|| err("the value's closing quote is missing"))?;
            unescape(inner)
        } else {
            if value.contains(['"', ',', ' ']) {
                return Err(err("quote values that contain spaces, commas or quotes"));
            }
            value.to_string()
        };
        let regex = match op {
            Op::Regex | Op::NotRegex => Some(
                regexes
                    .get(format!("^(?:{value})$"))
                    .map_err(|e| err(&format!("bad regex: {e}")))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value,
            regex,
        })
    }

    /// Whether the labels satisfy this matcher. A missing label counts as the empty string, as
    /// in Alertmanager.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        self.op.holds(&self.value, self.regex.as_deref(), v)
    }

    /// The compiled regex of `=~` and `!~` (shared with every equal pattern of its
    /// [`Regexes`]).
    pub fn regex(&self) -> Option<&Arc<regex::Regex>> {
        self.regex.as_ref()
    }
}

impl Op {
    /// Whether a label's value (`""` when the alert lacks it) satisfies a matcher with this
    /// operator, `value` and compiled regex ([`Matcher::regex`]).
    pub fn holds(self, value: &str, regex: Option<&regex::Regex>, actual: &str) -> bool {
        match self {
            Op::Equal => actual == value,
            Op::NotEqual => actual != value,
            Op::Regex => regex.is_some_and(|r| r.is_match(actual)),
            Op::NotRegex => !regex.is_some_and(|r| r.is_match(actual)),
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn regex_matchers_are_anchored() {
        let m = Matcher::parse(r#"severity=~"critical|page""#).unwrap();
        assert!(m.matches(&labels(&[("severity", "page")])));
        assert!(!m.matches(&labels(&[("severity", "pager")])));
    }

    #[test]
    fn negative_matchers_treat_missing_labels_as_empty() {
        assert!(Matcher::parse("env!=test").unwrap().matches(&labels(&[])));
        assert!(!Matcher::parse(r#"env!~".+""#)
            .unwrap()
            .matches(&labels(&[("env", "prod")])));
        assert!(Matcher::parse(r#"env!~".+""#).unwrap().matches(&labels(&[])));
    }

    #[test]
    fn equal_patterns_share_one_compiled_regex_and_match_alike() {
        let mut regexes = Regexes::default();
        let a = Matcher::parse_shared(r#"severity=~"critical|page""#, &mut regexes).unwrap();
        let b = Matcher::parse_shared(r#"severity=~"critical|page""#, &mut regexes).unwrap();
        let c = Matcher::parse_shared(r#"env!~"critical|page""#, &mut regexes).unwrap();
        let d = Matcher::parse_shared(r#"severity=~"page""#, &mut regexes).unwrap();
        assert_eq!(regexes.len(), 2);
        assert!(Arc::ptr_eq(a.regex.as_ref().unwrap(), b.regex.as_ref().unwrap()));
        assert!(Arc::ptr_eq(a.regex.as_ref().unwrap(), c.regex.as_ref().unwrap()));
        let fresh = Matcher::parse(r#"severity=~"critical|page""#).unwrap();
        for v in ["page", "critical", "pager", "", "Page"] {
            let l = labels(&[("severity", v), ("env", v)]);
            assert_eq!(a.matches(&l), fresh.matches(&l), "{v:?}");
            assert_eq!(c.matches(&l), !fresh.matches(&l), "{v:?}");
        }
        assert!(!d.matches(&labels(&[("severity", "critical")])));
    }

    #[test]
    fn malformed_matchers_say_what_is_wrong() {
        assert!(Matcher::parse("severity").unwrap_err().reason.contains("operator"));
        assert!(Matcher::parse(r#"a=~"(""#).unwrap_err().reason.contains("bad regex"));
        assert!(Matcher::parse(r#"a="x"#).unwrap_err().reason.contains("closing quote"));
    }
}
