//! CRD validation rules (pure, no I/O): the CEL rules of a schema's `x-kubernetes-validations`,
//! checked when a CRD is written (a rule or message expression that does not parse, calls a
//! function no environment declares, or is estimated to cost far beyond the budget refuses the
//! CRD with the API server's 422) and evaluated as kube-apiserver v1.36 evaluates them on
//! create, update, patch and apply — `self` is the value at the rule's node, `oldSelf` the
//! stored value there (a rule naming `oldSelf` is a transition rule, checked only on an update
//! where both exist, or always with `optionalOldSelf: true`, `oldSelf` then an optional) — and
//! the field errors a failing rule gives: its `reason`, its `fieldPath`, and its
//! `messageExpression`, `message` or `failed rule: …`; a rule that fails to evaluate (a missing
//! key, an overflow) gives the API server's `… evaluating rule: …` error.
//!
//! Old and new values are matched through object properties, map values and the items of
//! `x-kubernetes-list-type: map` lists (by their keys), as the API server does; not through other
//! lists. A matched value an update leaves unchanged is not checked again (ratcheting). Before a
//! rule runs, its cost is estimated from the sizes of what it iterates over; past the request's
//! budget it is refused instead of run, so that no rule can stall the simulator.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use super::status::Cause;

/// A JSON value as CEL sees it: integers as `int`, other numbers as `double`.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(s.clone().into()),
        Value::Array(a) => cel::Value::List(a.iter().map(to_cel).collect::<Vec<_>>().into()),
        Value::Object(m) => {
            let map: HashMap<String, cel::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            map.into()
        }
    }
}

/// What a rule made of a value.
enum Outcome {
    Holds,
    Fails,
    /// Evaluation failed, worded as the API server words it.
    Error(String),
    /// Not enforced: calls a Kubernetes library function this implementation lacks.
    Unknown,
}

/// The environment rules compile in: CEL's standard library, its strings and lists
/// extensions, optionals (Kubernetes' own libraries are added to each context, `cel_lib`).
fn env() -> Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = cel::Env::stdlib();
        let _ = env.add_extension(cel::extensions::strings);
        let _ = env.add_extension(cel::extensions::lists);
        Arc::new(env)
    })
    .clone()
}

/// A rule compiled, from a per-thread cache: every write of a custom resource evaluates all its
/// CRD's rules, and parsing them each time would cost more than evaluating them.
fn compile(rule: &str) -> Result<std::rc::Rc<cel::Program>, String> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<String, Result<std::rc::Rc<cel::Program>, String>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        if let Some(p) = c.borrow().get(rule) {
            return p.clone();
        }
        let compiled = env()
            .compile(rule)
            .map(std::rc::Rc::new)
            .map_err(|e| e.to_string());
        let mut cache = c.borrow_mut();
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(rule.to_string(), compiled.clone());
        compiled
    })
}

/// What `oldSelf` is bound to.
#[derive(Clone, Copy)]
enum OldSelf<'a> {
    /// Not bound (a rule that does not name it, or a create).
    Absent,
    Plain(&'a Value),
    /// `optionalOldSelf: true`: an optional, empty on a create.
    Optional(Option<&'a Value>),
}

fn context(new: &Value, old: OldSelf) -> cel::Context<'static, 'static> {
    let mut ctx = cel::Context::with_env(env());
    super::cel_lib::register(&mut ctx);
    ctx.add_variable_from_value("self", to_cel(new));
    match old {
        OldSelf::Absent => {}
        OldSelf::Plain(o) => ctx.add_variable_from_value("oldSelf", to_cel(o)),
        OldSelf::Optional(o) => {
            let opt = match o {
                Some(o) => cel::objects::OptionalValue::of(to_cel(o)),
                None => cel::objects::OptionalValue::none(),
            };
            ctx.add_variable_from_value("oldSelf", cel::Value::Opaque(Arc::new(opt)));
        }
    }
    ctx
}

fn evaluate(rule: &str, shown: &str, new: &Value, old: OldSelf) -> Outcome {
    let program = match compile(rule) {
        Ok(p) => p,
        // Refused when the CRD was created (`crd_causes`); a CRD stored before cannot be.
        Err(e) => return Outcome::Error(format!("compilation failed: {e}")),
    };
    match program.execute(&context(new, old)) {
        Ok(cel::Value::Bool(true)) => Outcome::Holds,
        Ok(cel::Value::Bool(false)) => Outcome::Fails,
        Ok(other) => Outcome::Error(format!(
            "'no matching overload' evaluating rule: {shown} (the rule gave {other:?}, not a bool)"
        )),
        Err(cel::ExecutionError::UndeclaredReference(name))
            if super::cel_lib::KNOWN_UNIMPLEMENTED.contains(&name.as_str()) =>
        {
            tracing::debug!(rule, function = %name, "a validation rule is not enforced");
            Outcome::Unknown
        }
        Err(e) => Outcome::Error(go_error(&e, shown)),
    }
}

/// An evaluation error as cel-go and the API server word it.
fn go_error(e: &cel::ExecutionError, shown: &str) -> String {
    use cel::ExecutionError as E;
    let text = match e {
        E::NoSuchKey(k) => format!("no such key: {k}"),
        E::DivisionByZero(_) => "division by zero".to_string(),
        E::RemainderByZero(_) => "modulus by zero".to_string(),
        E::Overflow(..) => "integer overflow".to_string(),
        E::IndexOutOfBounds(i) => format!(
            "index out of bounds: {}",
            super::status::go_value(&from_cel(i))
        ),
        E::NoSuchOverload(_) | E::UnsupportedBinaryOperator(..) | E::ValuesNotComparable(..) => {
            return format!("'no such overload': call arguments did not match a supported operator, function or macro signature for rule: {shown}");
        }
        E::FunctionError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    format!("{text} evaluating rule: {shown}")
}

fn from_cel(v: &cel::Value) -> Value {
    match v {
        cel::Value::Int(i) => json!(i),
        cel::Value::UInt(u) => json!(u),
        cel::Value::Float(f) => json!(f),
        cel::Value::String(s) => json!(s.as_str()),
        cel::Value::Bool(b) => json!(b),
        _ => Value::Null,
    }
}

fn is_transition(rule: &str) -> bool {
    compile(rule).is_ok_and(|p| p.references().has_variable("oldSelf"))
}

/// The message of a failing rule: its `messageExpression` when that yields a non-empty
/// string, else its `message`, else `failed rule: RULE`.
fn detail(rule: &Value, text: &str, new: &Value, old: OldSelf) -> String {
    if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str) {
        if let Ok(p) = compile(expr) {
            if let Ok(cel::Value::String(s)) = p.execute(&context(new, old)) {
                if !s.trim().is_empty() {
                    return s.to_string();
                }
            }
        }
    }
    match rule.get("message").and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => m.trim().to_string(),
        _ => format!("failed rule: {}", text.trim()),
    }
}

/// How a rule is named in an evaluation error: its message, else its text.
fn shown(rule: &Value, text: &str) -> String {
    match rule.get("message").and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => m.trim().to_string(),
        _ => text.trim().to_string(),
    }
}

/// The field error of a failing rule, worded as the API server words it: the value is shown
/// for scalars only.
fn cause(rule: &Value, field: &str, value: &Value, detail: String) -> Cause {
    let field = match rule.get("fieldPath").and_then(Value::as_str) {
        Some(fp) if !fp.is_empty() => format!("{field}{fp}"),
        _ => field.to_string(),
    };
    let (reason, message) = match rule.get("reason").and_then(Value::as_str) {
        Some("FieldValueForbidden") => ("FieldValueForbidden", format!("Forbidden: {detail}")),
        Some("FieldValueRequired") => ("FieldValueRequired", format!("Required value: {detail}")),
        Some("FieldValueDuplicate") => (
            "FieldValueDuplicate",
            format!("Duplicate value: {}", super::status::go_value(value)),
        ),
        _ => {
            let shown = match value {
                Value::Object(_) | Value::Array(_) => String::new(),
                v => format!("{}: ", super::status::go_value(v)),
            };
            (
                "FieldValueInvalid",
                format!("Invalid value: {shown}{detail}"),
            )
        }
    };
    Cause {
        reason: reason.to_string(),
        message,
        field,
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The old item of a `listType: map` list that has the same keys as `item`.
fn matching_item<'a>(schema: &Value, item: &Value, old: Option<&'a Value>) -> Option<&'a Value> {
    if schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    old?.as_array()?
        .iter()
        .find(|o| keys.iter().all(|k| o.get(k) == item.get(k)))
}

/// The cost, in CEL's units, above which a rule's evaluation is refused rather than run: the
/// API server's budget per request (`RuntimeCELCostBudget`). The simulator estimates the cost
/// before running a rule, from the sizes of the lists and maps it iterates over.
const RUNTIME_COST_BUDGET: u64 = 10_000_000;

/// Checks every rule under `schema` against `new` (and `old`, the stored object on an update),
/// adding a field error for each rule that fails or cannot be evaluated.
pub fn check(schema: &Value, new: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let mut budget = RUNTIME_COST_BUDGET;
    walk(schema, new, old, path, out, &mut budget);
}

fn walk(
    schema: &Value,
    new: &Value,
    old: Option<&Value>,
    path: &str,
    out: &mut Vec<Cause>,
    budget: &mut u64,
) {
    if new.is_null() {
        return;
    }
    let old = old.filter(|o| !o.is_null());
    // Ratcheting: a value an update leaves as it was is not validated again.
    if old == Some(new) {
        return;
    }
    for rule in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(text) = rule.get("rule").and_then(Value::as_str) else {
            continue;
        };
        if *budget == 0 {
            return;
        }
        let optional = rule.get("optionalOldSelf") == Some(&json!(true));
        let old_self = if !is_transition(text) {
            OldSelf::Absent
        } else if optional {
            OldSelf::Optional(old)
        } else if let Some(o) = old {
            OldSelf::Plain(o)
        } else {
            continue;
        };
        let cost = runtime_cost(text, new, old);
        if cost > *budget {
            *budget = 0;
            out.push(Cause::forbidden(
                path,
                "validation failed due to running out of cost budget, no further validation rules will be run",
            ));
            return;
        }
        *budget -= cost;
        match evaluate(text, &shown(rule, text), new, old_self) {
            Outcome::Holds | Outcome::Unknown => {}
            Outcome::Fails => {
                let d = detail(rule, text, new, old_self);
                out.push(cause(rule, path, new, d));
            }
            Outcome::Error(message) => {
                let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
                out.push(Cause::invalid(path, &json!(ty), &message));
            }
        }
    }
    match new {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m {
                let Some(s) = props.and_then(|p| p.get(k)).or(additional) else {
                    continue;
                };
                let old_child = old.and_then(|o| o.get(k));
                walk(s, child, old_child, &child_path(path, k), out, budget);
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    let old_item = matching_item(schema, item, old);
                    walk(s, item, old_item, &format!("{path}[{i}]"), out, budget);
                }
            }
        }
        _ => {}
    }
}

/// Whether a schema has any validation rule.
pub fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

/// The field errors that keep kube-apiserver from evaluating rules at all (a wrong type, a
/// missing required field, an unsupported enum value, too long or too many).
pub fn blocks_rules(causes: &[Cause]) -> bool {
    causes.iter().any(|c| {
        matches!(
            c.reason.as_str(),
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    })
}

/// The error the API server adds when it skipped the rules because of [`blocks_rules`].
pub fn rules_not_checked() -> Cause {
    Cause {
        reason: "FieldValueInvalid".to_string(),
        message: "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".to_string(),
        field: "<nil>".to_string(),
    }
}

// ---- cost ----

/// What the size of a collection an expression names is known from.
#[derive(Clone)]
enum Shape<'a> {
    /// A schema node: its `maxItems` / `maxProperties`, else what fits in a request.
    Schema(&'a Value),
    /// The values it has in the object being validated (the largest counts).
    Values(Vec<&'a Value>),
    Unknown,
}

/// The largest request the API server reads, from which it bounds unbounded lists and maps.
const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;

/// The smallest JSON a value of this schema takes.
fn min_size(schema: &Value) -> u64 {
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => 2 + schema.get("minLength").and_then(Value::as_u64).unwrap_or(0),
        Some("boolean") => 4,
        Some("integer" | "number") => 1,
        _ => 2,
    }
}

impl<'a> Shape<'a> {
    fn size(&self) -> u64 {
        match self {
            Shape::Schema(s) => {
                if let Some(n) = s
                    .get("maxItems")
                    .or_else(|| s.get("maxProperties"))
                    .and_then(Value::as_u64)
                {
                    return n;
                }
                match s.get("type").and_then(Value::as_str) {
                    Some("array") => {
                        let item = s.get("items").map_or(2, min_size);
                        (MAX_REQUEST_BYTES - 2) / (item + 1)
                    }
                    Some("object") => {
                        let value = s.get("additionalProperties").map_or(2, min_size);
                        // `"":` before each value, `,` between entries.
                        (MAX_REQUEST_BYTES - 2) / (value + 4)
                    }
                    _ => 1,
                }
            }
            Shape::Values(vs) => vs
                .iter()
                .map(|v| match v {
                    Value::Array(a) => a.len() as u64,
                    Value::Object(m) => m.len() as u64,
                    _ => 1,
                })
                .max()
                .unwrap_or(0),
            Shape::Unknown => 1,
        }
    }

    fn field(&self, name: &str) -> Shape<'a> {
        match self {
            Shape::Schema(s) => s
                .get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
                .map_or(Shape::Unknown, Shape::Schema),
            Shape::Values(vs) => Shape::Values(vs.iter().filter_map(|v| v.get(name)).collect()),
            Shape::Unknown => Shape::Unknown,
        }
    }

    /// What a comprehension's variable ranges over: list items, map keys.
    fn element(&self) -> Shape<'a> {
        match self {
            Shape::Schema(s) => s.get("items").map_or(Shape::Unknown, Shape::Schema),
            Shape::Values(vs) => {
                Shape::Values(vs.iter().filter_map(|v| v.as_array()).flatten().collect())
            }
            Shape::Unknown => Shape::Unknown,
        }
    }
}

type Scope<'s, 'a> = Vec<(&'s str, Shape<'a>)>;

/// The shape an expression evaluates to, when it names part of `self`.
fn shape_of<'a>(e: &cel::IdedExpr, scope: &Scope<'_, 'a>) -> Shape<'a> {
    use cel::common::ast::Expr;
    match &e.expr {
        Expr::Ident(name) => scope
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map_or(Shape::Unknown, |(_, s)| s.clone()),
        Expr::Select(sel) => shape_of(&sel.operand, scope).field(&sel.field),
        _ => Shape::Unknown,
    }
}

/// An estimate of what evaluating `e` costs: one per node, a comprehension's body once per
/// element of what it iterates over. An upper bound where sizes are known, as cel-go's.
fn cost<'s, 'a>(e: &'s cel::IdedExpr, scope: &mut Scope<'s, 'a>) -> u64 {
    use cel::common::ast::{EntryExpr, Expr};
    match &e.expr {
        Expr::Call(c) => {
            let mut n = 1u64;
            if let Some(t) = &c.target {
                n = n.saturating_add(cost(t, scope));
            }
            for a in &c.args {
                n = n.saturating_add(cost(a, scope));
            }
            n
        }
        Expr::Comprehension(c) => {
            let range = shape_of(&c.iter_range, scope);
            let size = range.size();
            let mut n = cost(&c.iter_range, scope).saturating_add(cost(&c.accu_init, scope));
            scope.push((c.iter_var.as_str(), range.element()));
            let body = cost(&c.loop_cond, scope)
                .saturating_add(cost(&c.loop_step, scope))
                .saturating_add(1);
            scope.pop();
            n = n.saturating_add(size.saturating_mul(body));
            n.saturating_add(cost(&c.result, scope))
        }
        Expr::Select(sel) => cost(&sel.operand, scope).saturating_add(1),
        Expr::List(l) => l
            .elements
            .iter()
            .fold(1u64, |n, x| n.saturating_add(cost(x, scope))),
        Expr::Map(m) => m.entries.iter().fold(1u64, |n, x| match &x.expr {
            EntryExpr::MapEntry(me) => n
                .saturating_add(cost(&me.key, scope))
                .saturating_add(cost(&me.value, scope)),
            EntryExpr::StructField(f) => n.saturating_add(cost(&f.value, scope)),
        }),
        Expr::Struct(st) => st.entries.iter().fold(1u64, |n, x| match &x.expr {
            EntryExpr::MapEntry(me) => n.saturating_add(cost(&me.value, scope)),
            EntryExpr::StructField(f) => n.saturating_add(cost(&f.value, scope)),
        }),
        _ => 1,
    }
}

fn runtime_cost(rule: &str, new: &Value, old: Option<&Value>) -> u64 {
    let Ok(p) = compile(rule) else {
        return 0;
    };
    let mut scope: Scope = vec![("self", Shape::Values(vec![new]))];
    if let Some(o) = old {
        scope.push(("oldSelf", Shape::Values(vec![o])));
    }
    cost(p.expression(), &mut scope)
}

/// The API server's limit on one rule's estimated cost (`StaticEstimatedCostLimit`), and on all
/// of a schema's (`StaticEstimatedCRDCostLimit`).
const RULE_COST_LIMIT: u64 = 10_000_000;
const SCHEMA_COST_LIMIT: u64 = 100_000_000;

/// The simulator's cost estimate is rougher than cel-go's: it refuses only rules that exceed
/// the budget by more than 100 times (nested loops over unbounded lists), which cel-go refuses
/// too, so that no CRD the real server installs is refused.
const REFUSED_FACTOR: u64 = 100;

const COST_HINT: &str = "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)";

// ---- CRD validation ----

/// The functions and macros of CEL and its extensions, for the compile check (a function not
/// here nor in `cel_lib` is undeclared, as cel-go's checker says).
const STANDARD_FUNCTIONS: &[&str] = &[
    "size",
    "matches",
    "contains",
    "startsWith",
    "endsWith",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "hasValue",
    "value",
    "orValue",
    "or",
    "optMap",
    "optFlatMap",
    "charAt",
    "join",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
    "format",
    "reverse",
    "slice",
    "flatten",
    "distinct",
    "sort",
    "sortBy",
    "transformList",
    "transformMap",
    "transformMapEntry",
];

const NAMESPACES: &[&str] = &[
    "optional", "strings", "lists", "sets", "math", "base64", "cel", "format",
];

/// The functions a rule calls that no CEL environment of the API server declares.
fn undeclared(e: &cel::IdedExpr, out: &mut Vec<String>) {
    use cel::common::ast::{EntryExpr, Expr};
    match &e.expr {
        Expr::Call(c) => {
            let namespaced = matches!(c.target.as_deref().map(|t| &t.expr),
                Some(Expr::Ident(ns)) if NAMESPACES.contains(&ns.as_str()));
            let name = c.func_name.as_str();
            let known = name.starts_with(['_', '@', '!'])
                || name.contains('.')
                || namespaced
                || STANDARD_FUNCTIONS.contains(&name)
                || super::cel_lib::IMPLEMENTED.contains(&name)
                || super::cel_lib::KNOWN_UNIMPLEMENTED.contains(&name);
            if !known && !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
            if let Some(t) = &c.target {
                undeclared(t, out);
            }
            c.args.iter().for_each(|a| undeclared(a, out));
        }
        Expr::Comprehension(c) => {
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                undeclared(x, out);
            }
        }
        Expr::Select(s) => undeclared(&s.operand, out),
        Expr::List(l) => l.elements.iter().for_each(|x| undeclared(x, out)),
        Expr::Map(m) => {
            for x in &m.entries {
                if let EntryExpr::MapEntry(me) = &x.expr {
                    undeclared(&me.key, out);
                    undeclared(&me.value, out);
                }
            }
        }
        _ => {}
    }
}

/// The Go rendering of a rule in a CRD's field error.
fn go_rule(rule: &Value) -> String {
    let s = |k: &str| {
        rule.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let reason = match rule.get("reason").and_then(Value::as_str) {
        Some(r) => format!("(*apiextensions.FieldValueErrorReason)({r:?})"),
        None => "(*apiextensions.FieldValueErrorReason)(nil)".to_string(),
    };
    let optional = match rule.get("optionalOldSelf").and_then(Value::as_bool) {
        Some(b) => format!("(*bool)({b})"),
        None => "(*bool)(nil)".to_string(),
    };
    format!(
        "apiextensions.ValidationRule{{Rule:{:?}, Message:{:?}, MessageExpression:{:?}, Reason:{reason}, FieldPath:{:?}, OptionalOldSelf:{optional}}}",
        s("rule"),
        s("message"),
        s("messageExpression"),
        s("fieldPath")
    )
}

/// Field errors of a CRD's validation rules, as the API server gives them when the CRD is
/// created or updated: rules and message expressions that do not compile, functions no
/// environment declares, rules whose estimated cost is far beyond the budget.
pub fn crd_causes(crd: &Value) -> Vec<Cause> {
    let versions: Vec<&Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let schemas: Vec<Option<&Value>> = versions
        .iter()
        .map(|v| v.pointer("/schema/openAPIV3Schema"))
        .collect();
    // One schema for all versions is validated as the internal `spec.validation`.
    let shared = schemas.windows(2).all(|w| w[0] == w[1]);
    let mut out = Vec::new();
    for (i, s) in schemas.iter().enumerate() {
        let Some(s) = s else { continue };
        if shared && i > 0 {
            break;
        }
        let path = if shared {
            "spec.validation.openAPIV3Schema".to_string()
        } else {
            format!("spec.versions[{i}].schema.openAPIV3Schema")
        };
        let mut costs = Vec::new();
        schema_causes(s, &path, &mut out, &mut costs);
        let total = costs.iter().fold(0u64, |a, (_, c)| a.saturating_add(*c));
        if total > SCHEMA_COST_LIMIT.saturating_mul(REFUSED_FACTOR) {
            costs.sort_by_key(|c| std::cmp::Reverse(c.1));
            for (p, _) in costs.iter().take(4) {
                out.push(Cause::forbidden(
                    p,
                    "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema",
                ));
            }
            out.push(Cause::forbidden(
                &path,
                &format!("x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x {COST_HINT}"),
            ));
        }
    }
    out
}

fn compile_error(field: &str, rule: &Value, error: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid".to_string(),
        message: format!(
            "Invalid value: {}: compilation failed: ERROR: <input>: {error}",
            go_rule(rule)
        ),
        field: format!("{field}.rule"),
    }
}

fn schema_causes(schema: &Value, path: &str, out: &mut Vec<Cause>, costs: &mut Vec<(String, u64)>) {
    for (i, rule) in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("{path}.x-kubernetes-validations[{i}]");
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or("");
        match compile(text) {
            Err(e) => out.push(compile_error(&field, rule, &e)),
            Ok(p) => {
                let mut names = Vec::new();
                undeclared(p.expression(), &mut names);
                if let Some(name) = names.first() {
                    out.push(compile_error(
                        &field,
                        rule,
                        &format!("undeclared reference to '{name}' (in container '')"),
                    ));
                    continue;
                }
                let mut scope: Scope = vec![("self", Shape::Schema(schema))];
                if p.references().has_variable("oldSelf") {
                    scope.push(("oldSelf", Shape::Schema(schema)));
                }
                let c = cost(p.expression(), &mut scope);
                if c > RULE_COST_LIMIT.saturating_mul(REFUSED_FACTOR) {
                    out.push(Cause::forbidden(
                        &format!("{field}.rule"),
                        &format!("estimated rule cost exceeds budget by factor of more than 100x {COST_HINT}"),
                    ));
                }
                costs.push((format!("{field}.rule"), c));
            }
        }
        if let Some(expr) = rule.get("messageExpression").and_then(Value::as_str) {
            if let Err(e) = compile(expr) {
                out.push(Cause::invalid(
                    &format!("{field}.messageExpression"),
                    &json!(expr),
                    &format!("messageExpression compilation failed: ERROR: <input>: {e}"),
                ));
            }
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            schema_causes(s, &format!("{path}.properties[{k}]"), out, costs);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        schema_causes(items, &format!("{path}.items"), out, costs);
    }
    if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        schema_causes(a, &format!("{path}.additionalProperties"), out, costs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "!(has(self.a) && has(self.b))", "message": "a and b are mutually exclusive"},
            {"rule": "!has(self.n) || self.n > 0"}
        ],
        "properties": {
            "a": {"type": "string"}, "b": {"type": "string"}, "n": {"type": "integer"},
            "sa": {"type": "string", "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "sa is immutable"}]}
        }}}})
    }

    fn failures(new: Value, old: Option<Value>) -> Vec<String> {
        let mut out = Vec::new();
        check(&schema(), &new, old.as_ref(), "", &mut out);
        out.iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn rules_on_objects_report_their_message_without_the_value() {
        assert_eq!(
            failures(json!({"spec": {"a": "x", "b": "y", "n": 0}}), None),
            [
                "spec: Invalid value: a and b are mutually exclusive",
                "spec: Invalid value: failed rule: !has(self.n) || self.n > 0"
            ]
        );
        assert!(failures(json!({"spec": {"a": "x", "n": 2}}), None).is_empty());
    }

    #[test]
    fn transition_rules_compare_with_the_stored_value_only_on_updates() {
        assert!(failures(json!({"spec": {"sa": "b"}}), None).is_empty());
        assert_eq!(
            failures(
                json!({"spec": {"sa": "b"}}),
                Some(json!({"spec": {"sa": "a"}}))
            ),
            ["spec.sa: Invalid value: \"b\": sa is immutable"]
        );
        // Removing the field is not a transition the rule sees.
        assert!(failures(json!({"spec": {}}), Some(json!({"spec": {"sa": "a"}}))).is_empty());
    }

    #[test]
    fn a_rule_too_costly_for_the_values_is_refused_not_run() {
        // Nothing in the schema bounds the list, so the CRD's check cannot see the cost.
        let schema = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "x-kubernetes-validations": [
                {"rule": "self.l.all(a, self.l.all(b, self.l.all(c, a + b + c >= 0)))"}]});
        assert!(crd_causes(&json!({"spec": {"versions": [{"name": "v1",
            "schema": {"openAPIV3Schema": schema.clone()}}]}}))
        .is_empty());
        let small = json!({"l": [1, 2, 3]});
        let mut out = Vec::new();
        check(&schema, &small, None, "", &mut out);
        assert!(out.is_empty(), "{out:?}");
        let big = json!({"l": (0..400).collect::<Vec<i64>>()});
        check(&schema, &big, None, "", &mut out);
        assert_eq!(
            out.iter().map(|c| c.message.as_str()).collect::<Vec<_>>(),
            ["Forbidden: validation failed due to running out of cost budget, no further validation rules will be run"]
        );
    }

    #[test]
    fn rules_that_do_not_compile_or_call_unknown_functions_refuse_the_crd() {
        let crd = |rule: &str| {
            json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema":
                {"type": "object", "properties": {"spec": {"type": "object",
                    "x-kubernetes-validations": [{"rule": rule}]}}}}}]}})
        };
        let fields = |rule: &str| -> Vec<String> {
            crd_causes(&crd(rule))
                .into_iter()
                .map(|c| c.field)
                .collect()
        };
        let at =
            "spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule";
        assert_eq!(fields("self.a =="), [at]);
        assert_eq!(fields("frobnicate(self)"), [at]);
        assert!(fields("has(self.a) && quantity(self.a).isLessThan(quantity('1Gi'))").is_empty());
        assert!(fields("self.all(k, k.startsWith('x'))").is_empty());
        // Kubernetes functions the simulator lacks install, and are not enforced.
        assert!(fields("isCIDR(self.c)").is_empty());
        let mut out = Vec::new();
        let schema =
            crd("isCIDR(self.c)")["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        check(&schema, &json!({"spec": {"c": "x"}}), None, "", &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
