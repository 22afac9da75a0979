//! Kubernetes' semver CEL library (pure, no I/O), as kube-apiserver v1.36 declares it
//! (`k8s.io/apiserver/pkg/cel/library/semverlib.go`): `semver(string)`, `semver(string, bool)`,
//! `isSemver(string)`, `isSemver(string, bool)` (the `bool` asks for the version to be normalized
//! first: a leading `v` dropped, missing minor and patch numbers added, leading zeros removed),
//! `major()`, `minor()`, `patch()`, and comparison by precedence (`compareTo()`,
//! `isGreaterThan()`, `isLessThan()`, in `cel_lib`). Versions are parsed strictly, as
//! `github.com/blang/semver/v4`'s `Parse` does, with its error messages.

use std::sync::Arc;

use cel::extractors::{Arguments, This};
use cel::objects::{Opaque, Value};
use cel::{Context, ExecutionError, FunctionContext, ResolveResult};

/// A semantic version (`kubernetes.Semver`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Semver(pub semver::Version);

impl Opaque for Semver {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Semver"
    }
}

pub const FUNCTIONS: &[&str] = &["semver", "isSemver", "major", "minor", "patch"];

pub fn register(ctx: &mut Context) {
    let _ = ctx.add_function("semver", semver_fn);
    let _ = ctx.add_function("isSemver", is_semver);
    let _ = ctx.add_function("major", major);
    let _ = ctx.add_function("minor", minor);
    let _ = ctx.add_function("patch", patch);
}

fn numeric(part: &str, what: &str) -> Result<(), String> {
    if part.is_empty() || !part.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("Invalid character(s) found in {what} number {part:?}"));
    }
    if part.len() > 1 && part.starts_with('0') {
        let what = format!("{}{}", what[..1].to_uppercase(), &what[1..]);
        return Err(format!("{what} number must not contain leading zeroes {part:?}"));
    }
    Ok(())
}

/// `semver.Parse`: `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`, nothing else.
pub fn parse(s: &str) -> Result<semver::Version, String> {
    if s.is_empty() {
        return Err("Version string empty".into());
    }
    let parts: Vec<&str> = s.splitn(3, '.').collect();
    if parts.len() != 3 {
        return Err("No Major.Minor.Patch elements found".into());
    }
    numeric(parts[0], "major")?;
    numeric(parts[1], "minor")?;
    let patch_end = parts[2].find(['+', '-']).unwrap_or(parts[2].len());
    numeric(&parts[2][..patch_end], "patch")?;
    semver::Version::parse(s).map_err(|e| format!("Invalid semver {s:?}: {e}"))
}

/// `normalizeAndParse`.
pub fn normalize_and_parse(s: &str) -> Result<semver::Version, String> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut parts: Vec<String> = s.splitn(3, '.').map(str::to_string).collect();
    for p in parts.iter_mut() {
        if p.len() > 1 {
            let mut t = p.trim_start_matches('0').to_string();
            if !t.starts_with(|c: char| c.is_ascii_digit()) {
                t.insert(0, '0');
            }
            *p = t;
        }
    }
    if parts.len() < 3 {
        if parts.last().is_some_and(|p| p.contains(['+', '-'])) {
            return Err("short version cannot contain PreRelease/Build meta data".into());
        }
        while parts.len() < 3 {
            parts.push("0".into());
        }
    }
    parse(&parts.join("."))
}

/// The string and the `normalize` flag of `semver()` and `isSemver()`.
fn arguments(ftx: &FunctionContext, args: &[Value]) -> Result<Result<semver::Version, String>, ExecutionError> {
    match args {
        [Value::String(s)] => Ok(parse(s)),
        [Value::String(s), Value::Bool(normalize)] => Ok(if *normalize { normalize_and_parse(s) } else { parse(s) }),
        _ => Err(ExecutionError::no_such_overload(ftx.name, vec![])),
    }
}

fn semver_fn(ftx: &FunctionContext, Arguments(args): Arguments) -> ResolveResult {
    match arguments(ftx, &args)? {
        Ok(v) => Ok(Value::Opaque(Arc::new(Semver(v)))),
        Err(e) => Err(ftx.error(e)),
    }
}

fn is_semver(ftx: &FunctionContext, Arguments(args): Arguments) -> ResolveResult {
    Ok(Value::Bool(arguments(ftx, &args)?.is_ok()))
}

pub fn semver_of(v: &Value) -> Option<&semver::Version> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Semver>().map(|s| &s.0),
        _ => None,
    }
}

fn part(ftx: &FunctionContext, this: &Value, f: fn(&semver::Version) -> u64) -> ResolveResult {
    let v = semver_of(this).ok_or_else(|| ExecutionError::no_such_overload(ftx.name, vec![]))?;
    Ok(Value::Int(f(v) as i64))
}

fn major(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    part(ftx, &this, |v| v.major)
}

fn minor(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    part(ftx, &this, |v| v.minor)
}

fn patch(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    part(ftx, &this, |v| v.patch)
}

/// blang's `Compare`: by precedence, build metadata ignored.
pub fn compare(a: &semver::Version, b: &semver::Version) -> std::cmp::Ordering {
    a.cmp_precedence(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_strictly_unless_normalized() {
        assert!(parse("1.2.3").is_ok());
        assert!(parse("1.2.3-rc.1+build.5").is_ok());
        assert_eq!(parse("1.2").unwrap_err(), "No Major.Minor.Patch elements found");
        assert_eq!(
            parse("v1.2.3").unwrap_err(),
            "Invalid character(s) found in major number \"v1\""
        );
        assert_eq!(
            parse("1.02.3").unwrap_err(),
            "Minor number must not contain leading zeroes \"02\""
        );
        assert_eq!(normalize_and_parse("v1.02").unwrap(), semver::Version::new(1, 2, 0));
        assert!(normalize_and_parse("v1-rc").is_err());
    }

    #[test]
    fn build_metadata_does_not_order_versions() {
        let (a, b) = (parse("1.0.0+a").unwrap(), parse("1.0.0+b").unwrap());
        assert!(compare(&a, &b).is_eq());
        assert!(compare(&parse("1.0.0-rc.1").unwrap(), &parse("1.0.0").unwrap()).is_lt());
    }
}
