//! CEL's macros with two variables, which Kubernetes declares for CRD rules (cel-go's
//! `TwoVarComprehensions`: `all(i, v, p)`, `exists(i, v, p)`, `existsOne(i, v, p)`,
//! `transformList(i, v, [filter,] e)`, `transformMap(k, v, [filter,] e)`,
//! `transformMapEntry(k, v, [filter,] e)`) and the `cel` crate leaves unexpanded and cannot
//! evaluate (its interpreter binds one variable per loop). Before such a rule is evaluated, each
//! call is rewritten into loops the interpreter runs: over `@kube_sim_pairs(target)` — a list's
//! `[index, item]` pairs, a map's `[key, value]` pairs — with both variables bound from the pair,
//! as cel-go's expansion binds them.

use std::sync::Arc;

use cel::common::ast::{operators, CallExpr, ComprehensionExpr, Expr, ListExpr, LiteralValue};
use cel::common::value::CowVal;
use cel::objects::Value;
use cel::{ExecutionError, IdedExpr};

/// The pairs a two-variable loop runs over.
pub const PAIRS_FN: &str = "@kube_sim_pairs";
/// `@kube_sim_map_from_pairs([[key, value], …])`: `transformMap`'s result.
pub const FROM_PAIRS_FN: &str = "@kube_sim_map_from_pairs";
/// `@kube_sim_map_from_entries([{key: value}, …])`: `transformMapEntry`'s result.
pub const FROM_ENTRIES_FN: &str = "@kube_sim_map_from_entries";

const MACROS: &[&str] = &[
    "all",
    "exists",
    "existsOne",
    "exists_one",
    "transformList",
    "transformMap",
    "transformMapEntry",
];

/// Whether an expression calls a two-variable macro.
pub fn uses_two_variable_macros(e: &IdedExpr) -> bool {
    let mut found = false;
    visit(e, &mut |c| found |= is_macro(c));
    found
}

fn visit(e: &IdedExpr, f: &mut impl FnMut(&CallExpr)) {
    match &e.expr {
        Expr::Call(c) => {
            f(c);
            if let Some(t) = &c.target {
                visit(t, f);
            }
            c.args.iter().for_each(|a| visit(a, f));
        }
        Expr::Comprehension(c) => {
            for x in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                visit(x, f);
            }
        }
        Expr::Select(s) => visit(&s.operand, f),
        Expr::List(l) => l.elements.iter().for_each(|x| visit(x, f)),
        Expr::Map(m) => {
            for x in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &x.expr {
                    visit(&me.key, f);
                    visit(&me.value, f);
                }
            }
        }
        _ => {}
    }
}

fn is_macro(c: &CallExpr) -> bool {
    let ident = |i: usize| matches!(c.args.get(i).map(|a| &a.expr), Some(Expr::Ident(_)));
    c.target.is_some()
        && MACROS.contains(&c.func_name.as_str())
        && arity_fits(&c.func_name, c.args.len())
        && ident(0)
        && ident(1)
}

/// How many arguments a two-variable macro takes, as cel-go expands them: `all`, `exists` and
/// `existsOne` three (two variables and a predicate), the transforms three or four (with a
/// filter).
pub(crate) fn arity_fits(name: &str, args: usize) -> bool {
    match name {
        "transformList" | "transformMap" | "transformMapEntry" => (3..=4).contains(&args),
        _ => args == 3,
    }
}

/// The variable an iteration's pair is bound to.
const PAIR: &str = "@kube_sim_pair";

fn node(expr: Expr) -> IdedExpr {
    IdedExpr { id: 0, expr }
}

/// A node that only binds or carries values, which costs nothing (`cel_meter::FREE`).
fn free(mut e: IdedExpr) -> IdedExpr {
    e.id = super::cel_meter::FREE;
    e
}

fn ident(name: &str) -> IdedExpr {
    node(Expr::Ident(name.to_string()))
}

fn call(f: &str, args: Vec<IdedExpr>) -> IdedExpr {
    node(Expr::Call(CallExpr {
        func_name: f.to_string(),
        target: None,
        args,
    }))
}

fn int(i: i64) -> IdedExpr {
    node(Expr::Literal(LiteralValue::Int(i.into())))
}

fn boolean(b: bool) -> IdedExpr {
    node(Expr::Literal(LiteralValue::Boolean(b.into())))
}

fn list(elements: Vec<IdedExpr>) -> IdedExpr {
    node(Expr::List(ListExpr {
        elements,
        optional_indices: Vec::new(),
    }))
}

/// `body` with `name` bound to `value` (cel-go's `cel.bind`: a loop over nothing whose
/// accumulator is the variable).
fn bind(name: &str, value: IdedExpr, body: IdedExpr) -> IdedExpr {
    free(node(Expr::Comprehension(Box::new(ComprehensionExpr {
        iter_range: free(list(Vec::new())),
        iter_var: "#unused".to_string(),
        iter_var2: None,
        accu_var: name.to_string(),
        accu_init: value,
        loop_cond: boolean(false),
        loop_step: free(ident(name)),
        result: body,
    }))))
}

/// The `i`th of the pair an iteration binds its variables from.
fn pair_item(i: i64) -> IdedExpr {
    free(call(operators::INDEX, vec![free(ident(PAIR)), int(i)]))
}

/// An expression with its two-variable macros rewritten into loops the `cel` crate runs.
pub fn rewrite(e: &IdedExpr) -> IdedExpr {
    let mut e = e.clone();
    go(&mut e);
    e
}

fn go(e: &mut IdedExpr) {
    match &mut e.expr {
        Expr::Call(c) => {
            if let Some(t) = c.target.as_deref_mut() {
                go(t);
            }
            c.args.iter_mut().for_each(go);
            if is_macro(c) {
                let c = std::mem::replace(
                    c,
                    CallExpr {
                        func_name: String::new(),
                        target: None,
                        args: Vec::new(),
                    },
                );
                *e = expand(c);
            }
        }
        Expr::Comprehension(c) => {
            for x in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                go(x);
            }
        }
        Expr::Select(s) => go(&mut s.operand),
        Expr::List(l) => l.elements.iter_mut().for_each(go),
        Expr::Map(m) => {
            for x in m.entries.iter_mut() {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &mut x.expr {
                    go(&mut me.key);
                    go(&mut me.value);
                }
            }
        }
        _ => {}
    }
}

fn expand(c: CallExpr) -> IdedExpr {
    let CallExpr {
        func_name,
        target,
        mut args,
    } = c;
    let name = |e: &IdedExpr| match &e.expr {
        Expr::Ident(n) => n.clone(),
        _ => String::new(),
    };
    let (first, second) = (name(&args[0]), name(&args[1]));
    let body = args.pop().unwrap_or_else(|| boolean(false));
    let filter = (args.len() == 3).then(|| args.pop()).flatten();
    const RESULT: &str = "@result";
    // Both variables bound from the pair, around an expression of the iteration.
    let with_vars = |e: IdedExpr| bind(&first, pair_item(0), bind(&second, pair_item(1), e));
    let filtered = |step: IdedExpr, filter: Option<IdedExpr>| match filter {
        Some(f) => call(operators::CONDITIONAL, vec![with_vars(f), step, ident(RESULT)]),
        None => step,
    };
    let (init, cond, step, result) = match func_name.as_str() {
        "all" => (
            boolean(true),
            call(operators::NOT_STRICTLY_FALSE, vec![ident(RESULT)]),
            call(operators::LOGICAL_AND, vec![ident(RESULT), with_vars(body)]),
            ident(RESULT),
        ),
        "exists" => (
            boolean(false),
            call(
                operators::NOT_STRICTLY_FALSE,
                vec![call(operators::LOGICAL_NOT, vec![ident(RESULT)])],
            ),
            call(operators::LOGICAL_OR, vec![ident(RESULT), with_vars(body)]),
            ident(RESULT),
        ),
        "existsOne" | "exists_one" => (
            int(0),
            boolean(true),
            call(
                operators::CONDITIONAL,
                vec![
                    with_vars(body),
                    call(operators::ADD, vec![ident(RESULT), int(1)]),
                    ident(RESULT),
                ],
            ),
            call(operators::EQUALS, vec![ident(RESULT), int(1)]),
        ),
        "transformList" => (
            list(Vec::new()),
            boolean(true),
            filtered(
                call(operators::ADD, vec![ident(RESULT), list(vec![with_vars(body)])]),
                filter,
            ),
            ident(RESULT),
        ),
        // A map is built as a list of its entries, which the interpreter appends to in place,
        // and made a map once at the end (inserting into a copy of the map at every element
        // took time in the square of its size). The step costs what cel-go's
        // `@mapInsert(@result, k, v)` costs: the call, the accumulator and the key.
        "transformMap" => (
            list(Vec::new()),
            boolean(true),
            filtered(
                call(
                    operators::ADD,
                    vec![
                        ident(RESULT),
                        free(list(vec![free(list(vec![
                            call(operators::INDEX, vec![free(ident(PAIR)), int(0)]),
                            with_vars(body),
                        ]))])),
                    ],
                ),
                filter,
            ),
            ident(RESULT),
        ),
        // transformMapEntry
        _ => (
            list(Vec::new()),
            boolean(true),
            filtered(
                call(operators::ADD, vec![ident(RESULT), free(list(vec![with_vars(body)]))]),
                filter,
            ),
            ident(RESULT),
        ),
    };
    let loop_ = node(Expr::Comprehension(Box::new(ComprehensionExpr {
        iter_range: free(call(
            PAIRS_FN,
            vec![target.map(|t| *t).unwrap_or_else(|| list(Vec::new()))],
        )),
        iter_var: PAIR.to_string(),
        iter_var2: None,
        accu_var: RESULT.to_string(),
        accu_init: init,
        loop_cond: cond,
        loop_step: step,
        result,
    })));
    match func_name.as_str() {
        "transformMap" => free(call(FROM_PAIRS_FN, vec![loop_])),
        "transformMapEntry" => free(call(FROM_ENTRIES_FN, vec![loop_])),
        _ => loop_,
    }
}

fn key_value(k: &cel::objects::Key) -> Value {
    use cel::objects::Key;
    match k {
        Key::Int(i) => Value::Int(*i),
        Key::Uint(u) => Value::UInt(*u),
        Key::Bool(b) => Value::Bool(*b),
        Key::String(s) => Value::String(s.clone()),
    }
}

/// `@kube_sim_pairs(list or map)`: a list's `[index, item]` pairs, a map's `[key, value]`
/// pairs, made from the target's borrowed elements (each cloned once). Making them is work
/// cel-go's native loop does not do: it is counted at a tenth of the target's size (the real
/// server counts nothing), so that a loop that stops early inside another over a long list
/// cannot run unbounded while costing next to nothing.
pub fn pairs<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    use cel::common::types::{CelInt, CelList, Kind};
    use cel::common::value::Val;
    let target = args
        .first()
        .ok_or_else(|| ExecutionError::no_such_overload("all", vec![]))?;
    let kind = target.get_type().kind();
    let elements = target
        .as_iterable()
        .filter(|_| matches!(kind, Kind::List | Kind::Map))
        .ok_or_else(|| ExecutionError::no_such_overload("all", vec![]))?;
    let size = target.as_sizer().map_or(0, |s| (*s.size().inner()).max(0) as u64);
    super::cel_meter::count(size.div_ceil(10))?;
    let mut items = Vec::with_capacity(size as usize);
    let mut it = elements.iter();
    while let Some(x) = it.next() {
        items.push(x);
    }
    // A map's pairs in the order of their keys, so that what a loop over them does is the same
    // from one run to the next.
    if kind == Kind::Map {
        items.sort_by_cached_key(|k| format!("{k:?}"));
    }
    let mut out: Vec<Box<dyn Val + 'v>> = Vec::with_capacity(items.len());
    for (i, x) in items.into_iter().enumerate() {
        let i = i as i64;
        let pair: Vec<Box<dyn Val + 'v>> = if kind == Kind::Map {
            let value = target
                .as_indexer()
                .ok_or_else(|| ExecutionError::no_such_overload("all", vec![]))?
                .get(x)?;
            vec![x.clone_as_boxed(), value.as_ref().clone_as_boxed()]
        } else {
            vec![Box::new(CelInt::from(i)), x.clone_as_boxed()]
        };
        out.push(Box::new(CelList::from(pair)));
    }
    Ok(CowVal::owned(CelList::from(out)))
}

fn key_of(k: Value) -> Result<cel::objects::Key, ExecutionError> {
    use cel::objects::Key;
    Ok(match k {
        Value::Int(i) => Key::Int(i),
        Value::UInt(u) => Key::Uint(u),
        Value::Bool(b) => Key::Bool(b),
        Value::String(s) => Key::String(s),
        _ => return Err(ExecutionError::function_error("transformMap", "unsupported key type")),
    })
}

/// A map of `entries`; a key given twice is an error, as in cel-go.
fn map_of(entries: impl Iterator<Item = (Value, Value)>) -> Result<Value, ExecutionError> {
    let mut out: std::collections::HashMap<cel::objects::Key, Value> = Default::default();
    for (k, x) in entries {
        let key = key_of(k)?;
        if out.contains_key(&key) {
            let shown = match &key {
                cel::objects::Key::Int(i) => i.to_string(),
                cel::objects::Key::Uint(u) => u.to_string(),
                cel::objects::Key::Bool(b) => b.to_string(),
                cel::objects::Key::String(s) => s.to_string(),
            };
            return Err(ExecutionError::function_error(
                "transformMapEntry",
                format!("insert failed: key {shown} already exists"),
            ));
        }
        out.insert(key, x);
    }
    Ok(Value::Map(cel::objects::Map { map: Arc::new(out) }))
}

/// [`FROM_PAIRS_FN`].
pub fn map_from_pairs<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    super::cel_value::by_value(args, |v| match v {
        [Value::List(l)] => map_of(l.iter().filter_map(|p| match p {
            Value::List(kv) if kv.len() == 2 => Some((kv[0].clone(), kv[1].clone())),
            _ => None,
        })),
        _ => Err(ExecutionError::no_such_overload("transformMap", vec![])),
    })
}

/// [`FROM_ENTRIES_FN`]: each element a map of the entries one iteration gave.
pub fn map_from_entries<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    super::cel_value::by_value(args, |v| match v {
        [Value::List(l)] => {
            let mut entries = Vec::new();
            for e in l.iter() {
                let Value::Map(m) = e else {
                    return Err(ExecutionError::no_such_overload("transformMapEntry", vec![]));
                };
                entries.extend(m.map.iter().map(|(k, x)| (key_value(k), x.clone())));
            }
            map_of(entries.into_iter())
        }
        _ => Err(ExecutionError::no_such_overload("transformMapEntry", vec![])),
    })
}
