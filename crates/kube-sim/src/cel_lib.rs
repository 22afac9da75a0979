//! Kubernetes' CEL libraries (pure, no I/O), as far as CRD rules use them: `quantity()` and
//! `isQuantity()` with the quantity methods, `url()` and `isURL()` with the URL accessors, the
//! list functions `isSorted()`, `sum()`, `min()`, `max()`, `indexOf()`, `lastIndexOf()`, the
//! regex functions `find()` and `findAll()`, the IP and CIDR library (`cel_net`), the semver
//! library (`cel_semver`), the format library (`cel_format`), and cel-go's sets
//! extension (`sets.contains()`, `sets.equivalent()`,
//! `sets.intersects()`). CEL's strings extension (`charAt`, `indexOf`, `format`, …) and lists
//! extension come with the `cel` crate.
//!
//! What Kubernetes declares and the simulator does not implement ([`KNOWN_UNIMPLEMENTED`]: the
//! authorizer functions, which CRD rules cannot reach anyway) still installs
//! with a CRD, as it does on the real server; a write whose rule needs one is refused with a 422
//! that names the rule and the function (`cel::Outcome::Unsupported`), never let through.

use std::sync::Arc;

use cel::common::types::{Type, DYN_TYPE, LIST_TYPE, STRING_TYPE};
use cel::common::value::{CowVal, Val};
use cel::extractors::{Arguments, This};
use cel::objects::{Opaque, Value};
use cel::{Context, ExecutionError, FunctionContext, ResolveResult};

/// The functions of Kubernetes' CEL environment this module does not implement.
pub const KNOWN_UNIMPLEMENTED: &[&str] = &[
    "authorizer",
    "path",
    "group",
    "resource",
    "namespace",
    "name",
    "subresource",
    "check",
    "allowed",
    "reason",
    "errored",
    "error",
    "serviceAccount",
    "fieldSelector",
    "labelSelector",
];

/// The functions this module adds, for the compile check.
pub const IMPLEMENTED: &[&str] = &[
    "quantity",
    "isQuantity",
    "isGreaterThan",
    "isLessThan",
    "compareTo",
    "asInteger",
    "asApproximateFloat",
    "sign",
    "isInteger",
    "add",
    "sub",
    "url",
    "isURL",
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
    "isSorted",
    "sum",
    "min",
    "max",
    "indexOf",
    "lastIndexOf",
    "find",
    "findAll",
    "validate",
];

/// Whether a rule may call `name`: implemented here or declared by Kubernetes.
pub fn declared(name: &str) -> bool {
    IMPLEMENTED.contains(&name)
        || KNOWN_UNIMPLEMENTED.contains(&name)
        || super::cel_net::FUNCTIONS.contains(&name)
        || super::cel_semver::FUNCTIONS.contains(&name)
}

/// Adds the overloads that share a name with one of CEL's own (so that a context cannot take
/// them as functions): `indexOf` and `lastIndexOf` of a list, `string()` of an IP or a CIDR,
/// `ip.isCanonical()` and the sets extension.
pub fn extend_env(env: &mut cel::Env) {
    let ip = Type::new_opaque_type("net.IP");
    let cidr = Type::new_opaque_type("net.CIDR");
    let _ = env.add_member_overload("indexOf", "list_index_of", LIST_TYPE, vec![DYN_TYPE], list_index_of);
    let _ = env.add_member_overload(
        "lastIndexOf",
        "list_last_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        list_last_index_of,
    );
    let _ = env.add_overload("string", "ip_to_string", vec![ip], net_to_string);
    let _ = env.add_overload("string", "cidr_to_string", vec![cidr], net_to_string);
    let _ = env.add_overload("ip.isCanonical", "ip_is_canonical", vec![STRING_TYPE], ip_is_canonical);
    let _ = env.add_overload(
        "sets.contains",
        "list_sets_contains_list",
        vec![LIST_TYPE, LIST_TYPE],
        sets_contains,
    );
    let _ = env.add_overload(
        "sets.equivalent",
        "list_sets_equivalent_list",
        vec![LIST_TYPE, LIST_TYPE],
        sets_equivalent,
    );
    let _ = env.add_overload(
        "sets.intersects",
        "list_sets_intersects_list",
        vec![LIST_TYPE, LIST_TYPE],
        sets_intersects,
    );
}

/// A list's elements to walk through, borrowed.
fn list<'b, 'v>(
    v: &'b CowVal<'_, 'v>,
    function: &str,
) -> Result<&'b (dyn cel::common::traits::Iterable + 'v), ExecutionError> {
    v.as_iterable()
        .filter(|_| v.get_type().kind() == cel::common::types::Kind::List)
        .ok_or_else(|| ExecutionError::no_such_overload(function, vec![]))
}

/// The elements of a list, borrowed (a copy of a long list at every call cost far more than
/// the call is charged).
fn elements<'b, 'v>(v: &'b CowVal<'_, 'v>, function: &str) -> Result<Vec<&'b (dyn Val + 'v)>, ExecutionError> {
    let mut it = list(v, function)?.iter();
    let mut out = Vec::new();
    while let Some(x) = it.next() {
        out.push(x);
    }
    Ok(out)
}

fn int(i: i64) -> Result<CowVal<'static, 'static>, ExecutionError> {
    Ok(CowVal::Owned(Box::<dyn Val>::try_from(Value::Int(i))?))
}

fn boolean<'b, 'v>(b: bool) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::Owned(Box::<dyn Val>::try_from(Value::Bool(b))?))
}

fn position<'b, 'v>(args: Vec<CowVal<'b, 'v>>, last: bool) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [list, item] = args.as_slice() else {
        return Err(ExecutionError::no_such_overload("indexOf", vec![]));
    };
    let items = elements(list, "indexOf")?;
    let item: &dyn Val = item.as_ref();
    let found = if last {
        items.iter().rposition(|v| *v == item)
    } else {
        items.iter().position(|v| *v == item)
    };
    int(found.map_or(-1, |i| i as i64))
}

fn list_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position(args, false)
}

fn list_last_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position(args, true)
}

fn net_to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    super::cel_value::by_value(args, |v| {
        v.first()
            .and_then(super::cel_net::to_string)
            .map(|s| Value::String(Arc::new(s)))
            .ok_or_else(|| ExecutionError::no_such_overload("string", vec![]))
    })
}

fn ip_is_canonical<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    super::cel_value::by_value(args, |v| match v {
        [Value::String(s)] => super::cel_net::is_canonical(s)
            .map(Value::Bool)
            .map_err(|e| ExecutionError::function_error("ip.isCanonical", e)),
        _ => Err(ExecutionError::no_such_overload("ip.isCanonical", vec![])),
    })
}

/// Whether every element of `b` is in `a` (`a` collected, `b` walked only as far as needed).
fn contains_all(a: &CowVal, b: &CowVal, name: &str) -> Result<bool, ExecutionError> {
    let a = elements(a, name)?;
    let mut it = list(b, name)?.iter();
    while let Some(x) = it.next() {
        if !a.contains(&x) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn two_lists<'b, 'v>(args: &[CowVal<'b, 'v>], name: &str) -> Result<(), ExecutionError> {
    if args.len() != 2 {
        return Err(ExecutionError::no_such_overload(name, vec![]));
    }
    Ok(())
}

fn sets_contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    two_lists(&args, "sets.contains")?;
    boolean(contains_all(&args[0], &args[1], "sets.contains")?)
}

fn sets_equivalent<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let name = "sets.equivalent";
    two_lists(&args, name)?;
    boolean(contains_all(&args[0], &args[1], name)? && contains_all(&args[1], &args[0], name)?)
}

fn sets_intersects<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let name = "sets.intersects";
    two_lists(&args, name)?;
    // Some element of `a` is in `b`: not every element of `a` is outside it.
    let b = elements(&args[1], name)?;
    let mut it = list(&args[0], name)?.iter();
    while let Some(x) = it.next() {
        if b.contains(&x) {
            return boolean(true);
        }
    }
    boolean(false)
}

/// Adds the library to a context.
pub fn register(ctx: &mut Context) {
    let _ = ctx.add_function("quantity", quantity);
    let _ = ctx.add_function("isQuantity", is_quantity);
    let _ = ctx.add_function("isGreaterThan", is_greater_than);
    let _ = ctx.add_function("isLessThan", is_less_than);
    let _ = ctx.add_function("compareTo", compare_to);
    let _ = ctx.add_function("asInteger", as_integer);
    let _ = ctx.add_function("asApproximateFloat", as_approximate_float);
    let _ = ctx.add_function("sign", sign);
    let _ = ctx.add_function("isInteger", is_integer);
    let _ = ctx.add_function("add", add);
    let _ = ctx.add_function("sub", sub);
    let _ = ctx.add_function("url", url);
    let _ = ctx.add_function("isURL", is_url);
    let _ = ctx.add_function("getScheme", get_scheme);
    let _ = ctx.add_function("getHost", get_host);
    let _ = ctx.add_function("getHostname", get_hostname);
    let _ = ctx.add_function("getPort", get_port);
    let _ = ctx.add_function("getEscapedPath", get_escaped_path);
    let _ = ctx.add_function("getQuery", get_query);
    let _ = ctx.add_function("isSorted", is_sorted);
    let _ = ctx.add_function("sum", sum);
    let _ = ctx.add_function("min", min);
    let _ = ctx.add_function("max", max);
    let _ = ctx.add_function("find", find);
    let _ = ctx.add_function("findAll", find_all);
    super::cel_net::register(ctx);
    super::cel_semver::register(ctx);
}

// ---- quantity ----

/// A resource quantity, exactly, in units of 10^-9.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity(i128);

impl Opaque for Quantity {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Quantity"
    }
}

const NANO: i128 = 1_000_000_000;

/// Parses a quantity as `resource.ParseQuantity` does: a signed decimal number and a suffix
/// (binary `Ki`…`Ei`, decimal `n`, `u`, `m`, `k`, `M`…`E`, or an exponent `e3`, `E-2`).
pub fn parse_quantity(s: &str) -> Option<Quantity> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (neg, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.len() > 30 || frac.len() > 30 {
        return None;
    }
    // The mantissa as an integer, and the power of ten it is scaled by.
    let digits = format!("{int}{frac}");
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    let mut exp10: i32 = -(frac.len() as i32);
    let mut factor: i128 = 1;
    match suffix {
        "" => {}
        "Ki" => factor = 1 << 10,
        "Mi" => factor = 1 << 20,
        "Gi" => factor = 1 << 30,
        "Ti" => factor = 1 << 40,
        "Pi" => factor = 1 << 50,
        "Ei" => factor = 1 << 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        e if e.starts_with(['e', 'E']) => {
            let n: i32 = e[1..].parse().ok()?;
            if !(-30..=30).contains(&n) {
                return None;
            }
            exp10 += n;
        }
        _ => return None,
    }
    // In nano units: mantissa * factor * 10^(exp10 + 9), rounded up as Kubernetes does.
    let exp = exp10 + 9;
    let mut v = mantissa.checked_mul(factor)?;
    if exp >= 0 {
        v = v.checked_mul(10i128.checked_pow(exp as u32)?)?;
    } else {
        let d = 10i128.checked_pow((-exp) as u32)?;
        // Rounded up, without overflowing near i128::MAX.
        v = v / d + i128::from(v % d > 0);
    }
    Some(Quantity(if neg { -v } else { v }))
}

fn quantity_of(v: &Value) -> Result<Quantity, ExecutionError> {
    match v {
        Value::Opaque(o) => o
            .downcast_ref::<Quantity>()
            .copied()
            .ok_or_else(|| ExecutionError::function_error("quantity", "not a quantity")),
        Value::Int(i) => Ok(Quantity(*i as i128 * NANO)),
        _ => Err(ExecutionError::function_error("quantity", "not a quantity")),
    }
}

fn quantity(ftx: &FunctionContext, s: Arc<String>) -> ResolveResult {
    parse_quantity(&s).map(|q| Value::Opaque(Arc::new(q))).ok_or_else(|| {
        ftx.error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    })
}

fn is_quantity(s: Arc<String>) -> bool {
    parse_quantity(&s).is_some()
}

/// The order of two quantities, or of two semantic versions.
fn compare(this: &Value, other: &Value) -> Result<std::cmp::Ordering, ExecutionError> {
    use super::cel_semver::semver_of;
    if let (Some(a), Some(b)) = (semver_of(this), semver_of(other)) {
        return Ok(super::cel_semver::compare(a, b));
    }
    Ok(quantity_of(this)?.0.cmp(&quantity_of(other)?.0))
}

fn is_greater_than(This(this): This<Value>, other: Value) -> ResolveResult {
    Ok(Value::Bool(compare(&this, &other)?.is_gt()))
}

fn is_less_than(This(this): This<Value>, other: Value) -> ResolveResult {
    Ok(Value::Bool(compare(&this, &other)?.is_lt()))
}

fn compare_to(This(this): This<Value>, other: Value) -> ResolveResult {
    Ok(Value::Int(compare(&this, &other)? as i64))
}

fn as_integer(ftx: &FunctionContext, This(this): This<Value>) -> ResolveResult {
    let q = quantity_of(&this)?;
    if q.0 % NANO != 0 {
        return Err(ftx.error("cannot convert value to integer"));
    }
    i64::try_from(q.0 / NANO)
        .map(Value::Int)
        .map_err(|_| ftx.error("cannot convert value to integer"))
}

fn as_approximate_float(This(this): This<Value>) -> ResolveResult {
    Ok(Value::Float(quantity_of(&this)?.0 as f64 / NANO as f64))
}

fn sign(This(this): This<Value>) -> ResolveResult {
    Ok(Value::Int(quantity_of(&this)?.0.signum() as i64))
}

fn is_integer(This(this): This<Value>) -> ResolveResult {
    let q = quantity_of(&this)?;
    Ok(Value::Bool(q.0 % NANO == 0 && i64::try_from(q.0 / NANO).is_ok()))
}

fn add(This(this): This<Value>, other: Value) -> ResolveResult {
    let (a, b) = (quantity_of(&this)?, quantity_of(&other)?);
    let sum = a.0.checked_add(b.0).ok_or_else(|| overflow("add"))?;
    Ok(Value::Opaque(Arc::new(Quantity(sum))))
}

fn sub(This(this): This<Value>, other: Value) -> ResolveResult {
    let (a, b) = (quantity_of(&this)?, quantity_of(&other)?);
    let difference = a.0.checked_sub(b.0).ok_or_else(|| overflow("sub"))?;
    Ok(Value::Opaque(Arc::new(Quantity(difference))))
}

/// A quantity too large to compute with, as a CEL evaluation error (the object is refused with
/// it, as the API server refuses one whose rule cannot be evaluated).
fn overflow(op: &str) -> ExecutionError {
    ExecutionError::function_error(op, "quantity overflow")
}

// ---- url ----

/// A URL as Go's `url.ParseRequestURI` reads it: absolute (`scheme://host/path?query`) or an
/// absolute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    scheme: String,
    host: String,
    path: String,
    query: String,
}

impl Opaque for Url {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.URL"
    }
}

pub fn parse_url(s: &str) -> Option<Url> {
    url_parts(s).ok()
}

/// `url(s)` as Kubernetes reads it ([`super::go_url::parse_url`]), or Go's error text.
pub fn url_parts(s: &str) -> Result<Url, String> {
    let p = super::go_url::parse_url(s)?;
    Ok(Url {
        scheme: p.scheme,
        host: p.host,
        path: p.path,
        query: p.query,
    })
}

fn url_of(v: &Value) -> Result<Url, ExecutionError> {
    match v {
        Value::Opaque(o) => o
            .downcast_ref::<Url>()
            .cloned()
            .ok_or_else(|| ExecutionError::function_error("url", "not a URL")),
        _ => Err(ExecutionError::function_error("url", "not a URL")),
    }
}

fn url(ftx: &FunctionContext, s: Arc<String>) -> ResolveResult {
    url_parts(&s)
        .map(|u| Value::Opaque(Arc::new(u)))
        .map_err(|e| ftx.error(format!("URL parse error during conversion from string: {e}")))
}

fn is_url(s: Arc<String>) -> bool {
    parse_url(&s).is_some()
}

fn get_scheme(This(this): This<Value>) -> ResolveResult {
    Ok(Value::String(Arc::new(url_of(&this)?.scheme)))
}

fn get_host(This(this): This<Value>) -> ResolveResult {
    Ok(Value::String(Arc::new(url_of(&this)?.host)))
}

fn split_host(host: &str) -> (String, String) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h.to_string(), p.trim_start_matches(':').to_string());
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (host.to_string(), String::new()),
    }
}

fn get_hostname(This(this): This<Value>) -> ResolveResult {
    Ok(Value::String(Arc::new(split_host(&url_of(&this)?.host).0)))
}

fn get_port(This(this): This<Value>) -> ResolveResult {
    Ok(Value::String(Arc::new(split_host(&url_of(&this)?.host).1)))
}

fn get_escaped_path(This(this): This<Value>) -> ResolveResult {
    Ok(Value::String(Arc::new(super::go_url::escaped_path(
        &url_of(&this)?.path,
    ))))
}

fn get_query(This(this): This<Value>) -> ResolveResult {
    let u = url_of(&this)?;
    let mut map: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for (k, v) in super::go_url::query_pairs(&u.query) {
        map.entry(k).or_default().push(Value::String(Arc::new(v)));
    }
    let map: std::collections::HashMap<String, Value> =
        map.into_iter().map(|(k, v)| (k, Value::List(Arc::new(v)))).collect();
    Ok(map.into())
}

// ---- lists ----

fn list_of(v: &Value) -> Result<Arc<Vec<Value>>, ExecutionError> {
    match v {
        Value::List(l) => Ok(l.clone()),
        _ => Err(ExecutionError::function_error("list", "not a list")),
    }
}

fn order(a: &Value, b: &Value) -> Result<std::cmp::Ordering, ExecutionError> {
    if let (Ok(x), Ok(y)) = (quantity_of(a), quantity_of(b)) {
        if matches!(a, Value::Opaque(_)) {
            return Ok(x.0.cmp(&y.0));
        }
    }
    a.partial_cmp(b)
        .ok_or_else(|| ExecutionError::ValuesNotComparable(a.clone(), b.clone()))
}

fn is_sorted(This(this): This<Value>) -> ResolveResult {
    let l = list_of(&this)?;
    for w in l.windows(2) {
        if order(&w[0], &w[1])?.is_gt() {
            return Ok(Value::Bool(false));
        }
    }
    Ok(Value::Bool(true))
}

fn sum(This(this): This<Value>) -> ResolveResult {
    let l = list_of(&this)?;
    let mut acc = match l.first() {
        Some(Value::Float(_)) => Value::Float(0.0),
        Some(Value::UInt(_)) => Value::UInt(0),
        _ => Value::Int(0),
    };
    for v in l.iter() {
        acc = match (&acc, v) {
            (Value::Int(a), Value::Int(b)) => Value::Int(
                a.checked_add(*b)
                    .ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?,
            ),
            (Value::UInt(a), Value::UInt(b)) => Value::UInt(
                a.checked_add(*b)
                    .ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?,
            ),
            (Value::Float(a), Value::Float(b)) => Value::Float(a + b),
            _ => return Err(ExecutionError::no_such_overload("sum", vec![])),
        };
    }
    Ok(acc)
}

fn extreme(this: &Value, want: std::cmp::Ordering) -> ResolveResult {
    let l = list_of(this)?;
    let mut best = l
        .first()
        .cloned()
        .ok_or_else(|| ExecutionError::function_error("min", "min called on empty list"))?;
    for v in l.iter().skip(1) {
        if order(v, &best)? == want {
            best = v.clone();
        }
    }
    Ok(best)
}

fn min(This(this): This<Value>, Arguments(args): Arguments) -> ResolveResult {
    if matches!(this, Value::List(_)) && args.is_empty() {
        return extreme(&this, std::cmp::Ordering::Less);
    }
    extreme(&Value::List(args), std::cmp::Ordering::Less)
}

fn max(This(this): This<Value>, Arguments(args): Arguments) -> ResolveResult {
    if matches!(this, Value::List(_)) && args.is_empty() {
        return extreme(&this, std::cmp::Ordering::Greater);
    }
    extreme(&Value::List(args), std::cmp::Ordering::Greater)
}

// ---- regex ----

fn compiled(ftx: &FunctionContext, re: &str) -> Result<std::rc::Rc<regex::Regex>, ExecutionError> {
    super::cel_regex::regex(re).map_err(|e| ftx.error(e))
}

fn find(ftx: &FunctionContext, This(this): This<Arc<String>>, re: Arc<String>) -> ResolveResult {
    let re = compiled(ftx, &re)?;
    Ok(Value::String(Arc::new(
        re.find(&this).map(|m| m.as_str().to_string()).unwrap_or_default(),
    )))
}

fn find_all(ftx: &FunctionContext, This(this): This<Arc<String>>, Arguments(args): Arguments) -> ResolveResult {
    let re = match args.first() {
        Some(Value::String(s)) => compiled(ftx, s)?,
        _ => return Err(ftx.error("findAll needs a regular expression")),
    };
    let limit = match args.get(1) {
        Some(Value::Int(n)) if *n >= 0 => *n as usize,
        _ => usize::MAX,
    };
    let found: Vec<Value> = re
        .find_iter(&this)
        .take(limit)
        .map(|m| Value::String(Arc::new(m.as_str().to_string())))
        .collect();
    Ok(Value::List(Arc::new(found)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_compare_by_value_whatever_their_suffix() {
        assert_eq!(parse_quantity("1Gi"), parse_quantity("1024Mi"));
        assert_eq!(parse_quantity("1.5k"), parse_quantity("1500"));
        assert_eq!(parse_quantity("100m"), parse_quantity("0.1"));
        assert_eq!(parse_quantity("1e3"), parse_quantity("1k"));
        assert!(parse_quantity("1.5Gi").unwrap().0 < parse_quantity("2Gi").unwrap().0);
        for bad in ["", "Gi", "1.2.3", "1Zi", "abc"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn quantities_too_large_to_compute_with_are_no_quantity_and_never_overflow() {
        // Rounding up near i128::MAX overflowed (a panic in debug builds, which poisoned the
        // store for every later request).
        assert!(parse_quantity("170141183460469231731687303715.884105727e-30").is_some());
        assert_eq!(parse_quantity("1e400"), None);
    }

    #[test]
    fn urls_split_as_go_does() {
        let u = parse_url("https://user@example.com:8443/a/b?x=1&x=2").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.path.as_str()),
            ("https", "example.com:8443", "/a/b")
        );
        assert_eq!(split_host(&u.host), ("example.com".into(), "8443".into()));
        assert!(parse_url("/just/a/path").is_some());
        assert!(parse_url("not a url").is_none());
        assert!(parse_url("relative/path").is_none());
    }
}
