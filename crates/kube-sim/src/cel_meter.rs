//! The cost meter of rule evaluation (pure, no I/O). Before a rule runs it is rewritten so that
//! every node it evaluates counts its cost as cel-go's runtime cost tracker counts it, and the
//! evaluation stops as soon as the count goes past its limit: an identifier, a field selection
//! and a function call 1 each, a list literal 10, a map literal 30, and nothing for the logical
//! operators (`&&`, `||`, `?:`, which evaluate only what they need), `has()` (Kubernetes turns
//! its cost off) and what cel-go's optimizer makes a constant before the rule runs (literals,
//! lists and maps of constants, `x in [constants]`, a type conversion of a constant such as
//! `duration('1h')`) — and the calls whose work grows with their operands what cel-go and
//! Kubernetes' `CostEstimator` charge for them, from the operands' actual sizes:
//!
//! | calls | cost |
//! |---|---|
//! | `==`, `!=`, `<`, `<=`, `>`, `>=` | a tenth of the smaller operand's size (1 against a number) |
//! | `x in list` | the list's size |
//! | `+` of strings or bytes | a tenth of both sizes |
//! | `contains` | a tenth of the string × a tenth of the substring |
//! | `matches`, `find`, `findAll` | (a tenth of the string + 1) × a quarter of the pattern |
//! | `<format>.validate(s)` | (a tenth of `s` + 1) × a quarter of the format's regex size |
//! | `startsWith`, `endsWith`, `lowerAscii`, `upperAscii`, `substring`, `trim`, `format`, `url`, `quantity`, `isQuantity`, `ip`, `cidr`, `isIP`, `isCIDR`, `bytes`, `string` of bytes, `strings.quote` | a tenth of the string |
//! | `replace`, `split`, `ip.isCanonical` | two tenths of the string |
//! | `join` | two tenths of the result |
//! | `isSorted`, `sum`, `min`, `max`, `indexOf`, `lastIndexOf` | a traversal of the target |
//! | `sets.contains`, `sets.intersects` (`sets.equivalent`) | 1 + the product of the sizes (twice it) |
//!
//! A string's size is its characters, a list's or a map's its entries, anything else 1. The
//! operands' sizes are taken as they are evaluated (`@kube_sim_size`, each pushing onto a stack
//! from a mark taken just before, so that an operand whose evaluation failed halfway leaves
//! nothing behind) and charged when the call returns (`@kube_sim_charge`). A stretch of nodes
//! is paid for before it is evaluated (`@kube_sim_meter(cost) ? stretch : false`), so that one
//! that fails costs what it did. The request's deadline ([`set_deadline`]) stops an evaluation
//! too.
//!
//! Nodes a rewrite adds only to bind values (the two-variable macros' variables, `cel_macros`)
//! carry the id [`FREE`] and cost nothing: cel-go binds them natively. The shapes of the
//! loops the `cel` crate runs in place (`map`/`filter` appends, `all`/`exists` folds, which
//! keep an error of one element until another decides the result) are kept as they are, their
//! costs counted on the nodes inside. Calls the simulator evaluates itself are renamed here
//! (`matches()`, `duration()`, `timestamp()`, `string()`, the calendar getters: [`simulated`]).

use std::cell::{Cell, RefCell};

use cel::common::ast::{operators, CallExpr, EntryExpr, Expr, LiteralValue};
use cel::common::types::{CelInt, Kind};
use cel::common::value::{CowVal, Val};
use cel::objects::Value;
use cel::{ExecutionError, IdedExpr};

thread_local! {
    /// When the evaluations of the current request must stop (the API server's request
    /// timeout), and how many counts until the clock is read again.
    static DEADLINE: Cell<(Option<std::time::Instant>, u32)> = const { Cell::new((None, 0)) };
    /// The cost a metered evaluation has counted, and where it stops.
    static METER: Cell<(u64, u64)> = const { Cell::new((0, u64::MAX)) };
    /// The sizes of the operands of the costed calls being evaluated.
    static SIZES: RefCell<Vec<Option<u64>>> = const { RefCell::new(Vec::new()) };
}

/// `@kube_sim_meter(cost)`: counts a stretch of nodes evaluated together, before them.
pub const METER_FN: &str = "@kube_sim_meter";
/// `@kube_sim_mark()`: where the next operand's size goes.
pub const MARK_FN: &str = "@kube_sim_mark";
/// `@kube_sim_size(mark, measure, operand)`: the operand, its size noted.
pub const SIZE_FN: &str = "@kube_sim_size";
/// `@kube_sim_charge(code, call)`: the call's result, its cost counted from its operands' sizes.
pub const CHARGE_FN: &str = "@kube_sim_charge";

/// The id of the nodes a rewrite adds that cost nothing.
pub const FREE: u64 = u64::MAX;

/// Starts metering an evaluation that may cost up to `limit`.
pub fn start(limit: u64) {
    METER.with(|m| m.set((0, limit)));
    SIZES.with(|s| s.borrow_mut().clear());
}

/// What the evaluation started last cost; metering is off until the next [`start`].
pub fn finish() -> u64 {
    SIZES.with(|s| s.borrow_mut().clear());
    METER.with(|m| m.replace((0, u64::MAX))).0
}

fn limit_error() -> ExecutionError {
    ExecutionError::function_error(METER_FN, "kube-sim: cost limit")
}

/// Sets when the evaluations of the request being validated must stop; `None` clears it.
pub fn set_deadline(at: Option<std::time::Instant>) {
    DEADLINE.with(|d| d.set((at, 0)));
}

/// Whether the request's deadline has passed (read from the clock every 256 counts).
pub fn past_deadline() -> bool {
    DEADLINE.with(|d| match d.get() {
        (Some(at), n) => {
            if n < 255 {
                d.set((Some(at), n + 1));
                return false;
            }
            let past = std::time::Instant::now() >= at;
            // Once past, every later count is past too.
            d.set((Some(at), if past { 255 } else { 0 }));
            past
        }
        (None, _) => false,
    })
}

/// The error of an evaluation stopped at the request's deadline, as cel-go words an
/// evaluation whose context ended.
pub const INTERRUPTED: &str = "operation interrupted";

/// Counts `cost`; an error once the count is past the limit, or the request's deadline has
/// passed.
pub fn count(cost: u64) -> Result<(), ExecutionError> {
    let (spent, limit) = METER.with(|m| m.get());
    let spent = spent.saturating_add(cost);
    METER.with(|m| m.set((spent, limit)));
    if spent > limit {
        return Err(limit_error());
    }
    if past_deadline() {
        return Err(ExecutionError::function_error(METER_FN, INTERRUPTED));
    }
    Ok(())
}

fn int_arg(v: Option<&CowVal>) -> i64 {
    v.and_then(|w| w.downcast_ref::<CelInt>()).map_or(0, |w| *w.inner())
}

/// [`METER_FN`], an overload of the environment: counts a stretch's cost before the stretch is
/// evaluated (so that a stretch whose evaluation fails costs what it did, as cel-go counts each
/// step whatever its result), and gives `true`, the condition of `?:` around the stretch.
pub fn meter<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    count(int_arg(args.first()).max(0) as u64)?;
    Ok(CowVal::Owned(Box::<dyn Val>::try_from(Value::Bool(true))?))
}

/// [`MARK_FN`].
pub fn mark<'b, 'v>(_: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let depth = SIZES.with(|s| s.borrow().len()) as i64;
    Ok(CowVal::Owned(Box::<dyn Val>::try_from(Value::Int(depth))?))
}

/// What of an operand's size a cost is made of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Measure {
    /// Its size: a string's characters, a list's or map's entries, anything else 1.
    Size,
    /// Its size if it is a string or bytes (`+`).
    TextSize,
    /// Its size if it is a list (`in`).
    ListSize,
    /// Kubernetes' `traversalCost`: a tenth of every string in it, 1 for every other scalar.
    Traversal,
    /// Its size if it is a string (`bytes()`).
    StringSize,
    /// Its size if it is bytes (`string()`).
    BytesSize,
    /// The regex size Kubernetes estimates a format's check at (`<format>.validate()`).
    RegexSize,
}

const MEASURES: [Measure; 7] = [
    Measure::Size,
    Measure::TextSize,
    Measure::ListSize,
    Measure::Traversal,
    Measure::StringSize,
    Measure::BytesSize,
    Measure::RegexSize,
];

fn traversal(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.len() as u64 / 10,
        Value::Bytes(b) => b.len() as u64 / 10,
        Value::List(l) => l.iter().map(traversal).fold(0, u64::saturating_add),
        Value::Map(m) => m
            .map
            .iter()
            .map(|(k, x)| {
                let key = match k {
                    cel::objects::Key::String(s) => s.len() as u64 / 10,
                    _ => 1,
                };
                key.saturating_add(traversal(x))
            })
            .fold(0, u64::saturating_add),
        _ => 1,
    }
}

fn measure(m: Measure, v: &dyn Val) -> Option<u64> {
    let kind = v.get_type().kind();
    let size = || v.as_sizer().map_or(1, |s| (*s.size().inner()).max(0) as u64);
    match m {
        Measure::Size => Some(size()),
        Measure::TextSize => matches!(kind, Kind::String | Kind::Bytes).then(size),
        Measure::ListSize => matches!(kind, Kind::List).then(size),
        Measure::Traversal => Value::try_from(v).ok().map(|v| traversal(&v)),
        Measure::StringSize => (kind == Kind::String).then(size),
        Measure::BytesSize => (kind == Kind::Bytes).then(size),
        Measure::RegexSize => match Value::try_from(v) {
            Ok(Value::Opaque(o)) => o
                .downcast_ref::<super::cel_format::Format>()
                .map(|f| super::cel_format::max_regex_size(f.0)),
            _ => None,
        },
    }
}

/// [`SIZE_FN`]: drops what an operand evaluated since `mark` left behind, notes the operand's
/// size.
pub fn size<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let operand = args.pop().ok_or_else(limit_error)?;
    let m = MEASURES[int_arg(args.get(1)).clamp(0, MEASURES.len() as i64 - 1) as usize];
    let noted = measure(m, operand.as_ref());
    let at = int_arg(args.first()).max(0) as usize;
    SIZES.with(|s| {
        let mut s = s.borrow_mut();
        s.truncate(at);
        s.push(noted);
    });
    Ok(operand)
}

/// What a costed call's cost is made of (A and B its operands as listed in [`costed`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cost {
    Compare,
    InList,
    Concat,
    Contains,
    Regex,
    Scan,
    Scan2,
    Traverse,
    Join,
    SetsOnce,
    SetsTwice,
}

const COSTS: [Cost; 11] = [
    Cost::Compare,
    Cost::InList,
    Cost::Concat,
    Cost::Contains,
    Cost::Regex,
    Cost::Scan,
    Cost::Scan2,
    Cost::Traverse,
    Cost::Join,
    Cost::SetsOnce,
    Cost::SetsTwice,
];

fn tenth(x: u64) -> u64 {
    x.div_ceil(10)
}

impl Cost {
    fn units(self, a: Option<u64>, b: Option<u64>, result: &dyn Val) -> u64 {
        let (x, y) = (a.unwrap_or(1), b.unwrap_or(1));
        match self {
            Cost::Compare => tenth(x.min(y)),
            Cost::InList => a.unwrap_or(1),
            Cost::Concat => match (a, b) {
                (Some(x), Some(y)) => tenth(x.saturating_add(y)),
                _ => 1,
            },
            Cost::Contains => tenth(x).saturating_mul(tenth(y)),
            Cost::Regex => tenth(x.saturating_add(1)).saturating_mul(y.div_ceil(4)),
            Cost::Scan => tenth(x),
            Cost::Scan2 => tenth(x.saturating_mul(2)),
            Cost::Traverse => x,
            Cost::Join => tenth(measure(Measure::Size, result).unwrap_or(1).saturating_mul(2)),
            Cost::SetsOnce => x.saturating_mul(y).saturating_add(1),
            Cost::SetsTwice => x.saturating_mul(y).saturating_mul(2).saturating_add(1),
        }
    }

    fn code(self, operands: usize, reversed: bool) -> i64 {
        let i = COSTS.iter().position(|c| *c == self).unwrap_or(0) as i64;
        i * 8 + operands as i64 * 2 + i64::from(reversed)
    }

    fn decode(code: i64) -> (Cost, usize, bool) {
        let code = code.max(0);
        let cost = COSTS[((code / 8) as usize).min(COSTS.len() - 1)];
        (cost, ((code % 8) / 2) as usize, code % 2 == 1)
    }
}

/// [`CHARGE_FN`]: counts a costed call's cost from its operands' sizes (pushed in the order
/// they were evaluated) and its result.
pub fn charge<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let result = args.pop().ok_or_else(limit_error)?;
    let (cost, operands, reversed) = Cost::decode(int_arg(args.first()));
    let sizes = SIZES.with(|s| {
        let mut s = s.borrow_mut();
        let at = s.len().saturating_sub(operands);
        s.split_off(at)
    });
    let (mut a, mut b) = (sizes.first().copied().flatten(), sizes.get(1).copied().flatten());
    if reversed {
        std::mem::swap(&mut a, &mut b);
    }
    count(cost.units(a, b, result.as_ref()))?;
    Ok(result)
}

/// Which of a call's parts an operand is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Target,
    Arg(usize),
}

/// How a call is charged.
enum Costing {
    /// Always this much.
    Fixed(u64),
    /// From its operands (A, B): what of each.
    Sized(Cost, Vec<(Part, Measure)>),
}

/// How a call is charged, if not 1 as most calls are: the calls whose work grows with their
/// operands, and the calls cel-go's optimizer turns into constants or set lookups.
fn costed(c: &CallExpr) -> Option<Costing> {
    use Costing::*;
    use Measure::*;
    use Part::*;
    let namespace = match c.target.as_deref().map(|t| &t.expr) {
        Some(Expr::Ident(ns)) => Some(ns.as_str()),
        _ => None,
    };
    let qualified = namespace.map(|ns| format!("{ns}.{}", c.func_name));
    match (qualified.as_deref(), c.args.len()) {
        (Some("sets.contains" | "sets.intersects"), 2) => {
            return Some(Sized(Cost::SetsOnce, vec![(Arg(0), Size), (Arg(1), Size)]))
        }
        (Some("sets.equivalent"), 2) => return Some(Sized(Cost::SetsTwice, vec![(Arg(0), Size), (Arg(1), Size)])),
        (Some("ip.isCanonical"), 1) => return Some(Sized(Cost::Scan2, vec![(Arg(0), Size)])),
        (Some("strings.quote"), 1) => return Some(Sized(Cost::Scan, vec![(Arg(0), Size)])),
        _ => {}
    }
    let member = c.target.is_some();
    let f = c.func_name.as_str();
    let n = c.args.len();
    Some(match f {
        operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS
            if !member && n == 2 =>
        {
            // Against a number, a bool or null, the cost is 1 whatever the other operand.
            if c.args.iter().any(scalar_literal) {
                return None;
            }
            Sized(Cost::Compare, vec![(Arg(0), Size), (Arg(1), Size)])
        }
        operators::IN if !member && n == 2 => match &c.args[1].expr {
            // A list of constants is a set lookup (cel-go's `evalSetMembership`): nothing.
            Expr::List(_) if is_constant(&c.args[1]) => Fixed(0),
            Expr::Map(_) => return None,
            _ => Sized(Cost::InList, vec![(Arg(1), ListSize)]),
        },
        operators::ADD if !member && n == 2 => {
            if c.args
                .iter()
                .any(|a| scalar_literal(a) || matches!(a.expr, Expr::List(_)))
            {
                return None;
            }
            Sized(Cost::Concat, vec![(Arg(0), TextSize), (Arg(1), TextSize)])
        }
        "contains" if member && n == 1 => Sized(Cost::Contains, vec![(Target, Size), (Arg(0), Size)]),
        super::cel_regex::MATCHES_FN if !member && n == 2 => Sized(Cost::Regex, vec![(Arg(0), Size), (Arg(1), Size)]),
        "find" | "findAll" if member && n >= 1 => Sized(Cost::Regex, vec![(Target, Size), (Arg(0), Size)]),
        // Kubernetes: (a tenth of the string + 1) times a quarter of the format's regex size.
        "validate" if member && n == 1 => Sized(Cost::Regex, vec![(Arg(0), Size), (Target, RegexSize)]),
        "startsWith" | "endsWith" | "lowerAscii" | "upperAscii" | "substring" | "trim" | "format" if member => {
            Sized(Cost::Scan, vec![(Target, Size)])
        }
        "url" | "quantity" | "isQuantity" | "ip" | "cidr" | "isIP" | "isCIDR" if !member && n >= 1 => {
            Sized(Cost::Scan, vec![(Arg(0), Size)])
        }
        "bytes" if !member && n == 1 => Sized(Cost::Scan, vec![(Arg(0), StringSize)]),
        super::cel_time::STRING_FN if !member && n == 1 => Sized(Cost::Scan, vec![(Arg(0), BytesSize)]),
        "replace" | "split" if member => Sized(Cost::Scan2, vec![(Target, Size)]),
        "join" if member => Sized(Cost::Join, vec![]),
        "isSorted" | "sum" | "min" | "max" | "indexOf" | "lastIndexOf" if member => {
            Sized(Cost::Traverse, vec![(Target, Traversal)])
        }
        _ => return None,
    })
}

/// A constant number, bool or null (its size is 1).
fn scalar_literal(e: &IdedExpr) -> bool {
    matches!(&e.expr, Expr::Literal(l) if !matches!(l, LiteralValue::String(_) | LiteralValue::Bytes(_)))
}

/// What cel-go's optimizer (`cel.OptOptimize`, which Kubernetes runs with) makes a constant,
/// which then costs nothing: literals, lists and maps of constants, and a function of one
/// constant (`duration('1h')`, `'abc'.size()`).
fn is_constant(e: &IdedExpr) -> bool {
    constant(&e.expr)
}

fn constant(e: &Expr) -> bool {
    match e {
        Expr::Literal(_) => true,
        Expr::List(l) => l.optional_indices.is_empty() && l.elements.iter().all(is_constant),
        Expr::Map(m) => m.entries.iter().all(|x| match &x.expr {
            EntryExpr::MapEntry(me) => !me.optional && is_constant(&me.key) && is_constant(&me.value),
            _ => false,
        }),
        Expr::Call(c) => constant_unary(c),
        _ => false,
    }
}

/// A type conversion of a constant, which cel-go folds when it plans the rule
/// (`maybeOptimizeConstUnary`: `bool`, `bytes`, `double`, `duration`, `dyn`, `int`, `string`,
/// `timestamp`, `type`, `uint`).
fn constant_unary(c: &CallExpr) -> bool {
    use super::cel_time::{DURATION_FN, STRING_FN, TIMESTAMP_FN};
    let conversion = matches!(
        c.func_name.as_str(),
        "bool" | "bytes" | "double" | "duration" | "dyn" | "int" | "string" | "timestamp" | "type" | "uint"
    ) || [DURATION_FN, STRING_FN, TIMESTAMP_FN].contains(&c.func_name.as_str());
    match (&c.target, c.args.as_slice()) {
        (None, [a]) => conversion && is_constant(a),
        _ => false,
    }
}

fn node(id: u64, expr: Expr) -> IdedExpr {
    IdedExpr { id, expr }
}

fn int(i: i64) -> IdedExpr {
    node(FREE, Expr::Literal(LiteralValue::Int(i.into())))
}

fn call(f: &str, args: Vec<IdedExpr>) -> IdedExpr {
    node(
        FREE,
        Expr::Call(CallExpr {
            func_name: f.to_string(),
            target: None,
            args,
        }),
    )
}

/// `node` behind [`METER_FN`] with the cost of evaluating it: `@kube_sim_meter(cost) ? node :
/// false`.
fn metered_node(e: IdedExpr, cost: u64) -> IdedExpr {
    let id = e.id;
    let pay = call(METER_FN, vec![int(cost.min(i64::MAX as u64) as i64)]);
    let never = node(FREE, Expr::Literal(LiteralValue::Boolean(false.into())));
    let mut m = call(operators::CONDITIONAL, vec![pay, e, never]);
    m.id = id;
    m
}

/// A rule rewritten so that its evaluation counts its cost (see the module's documentation).
pub fn metered(e: &IdedExpr) -> IdedExpr {
    counted(e.clone(), 0)
}

/// `e` with its cost, and `extra`, counted when it is evaluated.
fn counted(e: IdedExpr, extra: u64) -> IdedExpr {
    match go(e) {
        (e, 0) if extra == 0 => e,
        (e, w) => metered_node(e, w.saturating_add(extra)),
    }
}

/// A call to a function the simulator evaluates itself, rather than the `cel` crate, renamed
/// to it: `matches()` (`cel_regex::MATCHES_FN`), `duration()` and `timestamp()` of a string and
/// `string()` of a timestamp (`cel_time`), and the calendar getters without a time zone, their timestamp at offset zero.
fn simulated(c: &mut CallExpr) {
    use super::{cel_regex, cel_time};
    match (c.func_name.as_str(), c.target.is_some(), c.args.len()) {
        ("matches", true, 1) => {
            if let Some(t) = c.target.take() {
                c.args.insert(0, *t);
            }
            c.func_name = cel_regex::MATCHES_FN.to_string();
        }
        ("matches", false, 2) => c.func_name = cel_regex::MATCHES_FN.to_string(),
        ("duration", false, 1) => c.func_name = cel_time::DURATION_FN.to_string(),
        ("timestamp", false, 1) => c.func_name = cel_time::TIMESTAMP_FN.to_string(),
        ("string", false, 1) => c.func_name = cel_time::STRING_FN.to_string(),
        (getter, true, 0) if cel_time::GETTERS.contains(&getter) => {
            if let Some(t) = c.target.take() {
                c.target = Some(Box::new(call(cel_time::UTC_FN, vec![*t])));
            }
        }
        _ => {}
    }
}

/// [`simulated`] for every call in `e` (a constant, which is not metered).
fn simulated_within(e: &mut IdedExpr) {
    match &mut e.expr {
        Expr::Call(c) => {
            simulated(c);
            if let Some(t) = c.target.as_deref_mut() {
                simulated_within(t);
            }
            c.args.iter_mut().for_each(simulated_within);
        }
        Expr::List(l) => l.elements.iter_mut().for_each(simulated_within),
        Expr::Map(m) => {
            for x in m.entries.iter_mut() {
                if let EntryExpr::MapEntry(me) = &mut x.expr {
                    simulated_within(&mut me.key);
                    simulated_within(&mut me.value);
                }
            }
        }
        _ => {}
    }
}

/// `e` rewritten, and the cost of the nodes evaluated whenever `e` is, left to the caller to
/// count (one meter for a stretch of nodes evaluated together).
fn go(e: IdedExpr) -> (IdedExpr, u64) {
    let IdedExpr { id, mut expr } = e;
    if let Expr::Call(c) = &mut expr {
        simulated(c);
    }
    let own = |w: u64| if id == FREE { 0 } else { w };
    match expr {
        Expr::Ident(_) => (node(id, expr), own(1)),
        Expr::Select(mut s) => {
            let (operand, w) = go(*s.operand);
            // `has()` itself costs nothing (Kubernetes: `PresenceTestHasCost(false)`).
            let test = if s.test { 0 } else { own(1) };
            s.operand = Box::new(operand);
            (node(id, Expr::Select(s)), w + test)
        }
        // Constants cost nothing: cel-go's optimizer made them before the rule ran.
        ref e @ (Expr::List(_) | Expr::Map(_) | Expr::Call(_)) if id != FREE && constant(e) => {
            let mut e = node(id, expr);
            simulated_within(&mut e);
            (e, 0)
        }
        Expr::Call(mut c) if matches!(c.func_name.as_str(), "_&&_" | "_||_" | "_?_:_") => {
            // Evaluated only as far as needed: each operand counts for itself.
            c.args = c.args.into_iter().map(|a| counted(a, 0)).collect();
            (node(id, Expr::Call(c)), 0)
        }
        Expr::Call(mut c) => {
            let costed = if id == FREE { None } else { costed(&c) };
            let mut w = match costed {
                Some(Costing::Fixed(w)) => w,
                Some(Costing::Sized(..)) => 0,
                None => own(1),
            };
            // A namespace (`sets.contains`) or a method's receiver variable is not a value of
            // its own here: left as it is.
            if let Some(t) = c.target.take() {
                c.target = Some(Box::new(match t.expr {
                    Expr::Ident(_) => *t,
                    _ => {
                        let (t, tw) = go(*t);
                        w += tw;
                        t
                    }
                }));
            }
            c.args = c
                .args
                .into_iter()
                .map(|a| {
                    let (a, aw) = go(a);
                    w += aw;
                    a
                })
                .collect();
            let Some(Costing::Sized(cost, operands)) = costed else {
                return (node(id, Expr::Call(c)), w);
            };
            // Each operand's size noted as it is evaluated: a member call evaluates its
            // arguments, then its target.
            let sized = |e: IdedExpr, m: Measure| {
                let m = MEASURES.iter().position(|x| *x == m).unwrap_or(0) as i64;
                call(SIZE_FN, vec![call(MARK_FN, vec![]), int(m), e])
            };
            for (part, m) in &operands {
                match part {
                    Part::Target => {
                        if let Some(t) = c.target.take() {
                            c.target = Some(Box::new(sized(*t, *m)));
                        }
                    }
                    Part::Arg(i) => {
                        if let Some(a) = c.args.get_mut(*i) {
                            *a = sized(std::mem::take(a), *m);
                        }
                    }
                }
            }
            let reversed = operands.len() == 2 && operands[0].0 == Part::Target;
            let code = cost.code(operands.len(), reversed);
            (call(CHARGE_FN, vec![int(code), node(id, Expr::Call(c))]), w)
        }
        Expr::List(mut l) => {
            let mut w = own(10);
            l.elements = l
                .elements
                .into_iter()
                .map(|x| {
                    let (x, xw) = go(x);
                    w += xw;
                    x
                })
                .collect();
            (node(id, Expr::List(l)), w)
        }
        Expr::Map(mut m) => {
            let mut w = own(30);
            for x in m.entries.iter_mut() {
                if let EntryExpr::MapEntry(me) = &mut x.expr {
                    let (k, kw) = go(std::mem::take(&mut me.key));
                    let (v, vw) = go(std::mem::take(&mut me.value));
                    me.key = k;
                    me.value = v;
                    w += kw + vw;
                }
            }
            (node(id, Expr::Map(m)), w)
        }
        Expr::Comprehension(mut c) => {
            let accu = c.accu_var.clone();
            let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if *n == accu);
            // The result, when it is the accumulator, is counted with the initial value (both
            // are evaluated once), so that the loop keeps the shape the interpreter runs in place.
            let result_cost = if is_accu(&c.result) { own_ident(&c.result) } else { 0 };
            c.iter_range = counted(c.iter_range, 0);
            c.accu_init = counted(c.accu_init, result_cost);
            c.loop_cond = counted(c.loop_cond, 0);
            c.loop_step = step(c.loop_step, &accu);
            if !is_accu(&c.result) {
                c.result = counted(c.result, 0);
            }
            (node(id, Expr::Comprehension(c)), 0)
        }
        other => (node(id, other), 0),
    }
}

fn own_ident(e: &IdedExpr) -> u64 {
    if e.id == FREE {
        0
    } else {
        1
    }
}

/// A loop step, its cost counted on the nodes inside the shapes the interpreter recognises:
/// `@result && p`, `@result || p` (a fold: `p` carries the accumulator's cost, evaluated
/// whenever the step is), `@result + [e]` (an append: `e` carries the `+`, the accumulator and
/// the list), `c ? <append> : @result` (a filtered append).
fn step(e: IdedExpr, accu: &str) -> IdedExpr {
    let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == accu);
    let IdedExpr { id, expr } = e;
    match expr {
        Expr::Call(mut c)
            if matches!(c.func_name.as_str(), "_&&_" | "_||_")
                && c.target.is_none()
                && c.args.len() == 2
                && is_accu(&c.args[0]) =>
        {
            let p = c.args.pop().unwrap_or_default();
            let carried = own_ident(&c.args[0]);
            c.args.push(counted(p, carried));
            node(id, Expr::Call(c))
        }
        Expr::Call(c) if is_append(&c, accu) => node(id, Expr::Call(append(c, id))),
        Expr::Call(mut c)
            if c.func_name == operators::CONDITIONAL
                && c.target.is_none()
                && c.args.len() == 3
                && is_accu(&c.args[2])
                && matches!(&c.args[1].expr, Expr::Call(a) if is_append(a, accu)) =>
        {
            let otherwise = c.args.pop().unwrap_or_default();
            let appended = c.args.pop().unwrap_or_default();
            let guard = c.args.pop().unwrap_or_default();
            let appended = match appended.expr {
                Expr::Call(a) => node(appended.id, Expr::Call(append(a, appended.id))),
                other => node(appended.id, other),
            };
            c.args = vec![counted(guard, 0), appended, otherwise];
            node(id, Expr::Call(c))
        }
        other => counted(node(id, other), 0),
    }
}

fn is_append(c: &CallExpr, accu: &str) -> bool {
    c.func_name == operators::ADD
        && c.target.is_none()
        && matches!(c.args.as_slice(), [IdedExpr { expr: Expr::Ident(n), .. }, IdedExpr { expr: Expr::List(_), .. }] if n == accu)
}

/// `@result + [e, …]` with the cost of the `+`, the accumulator and the list counted on `e`.
fn append(mut c: CallExpr, id: u64) -> CallExpr {
    let carried = if id == FREE { 0 } else { 1 } + own_ident(&c.args[0]);
    let constant = c.args.get(1).is_some_and(is_constant);
    if let Some(IdedExpr {
        id: list_id,
        expr: Expr::List(l),
    }) = c.args.get_mut(1)
    {
        let mut carried = carried + if *list_id == FREE || constant { 0 } else { 10 };
        for x in l.elements.iter_mut() {
            *x = counted(std::mem::take(x), carried);
            carried = 0;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_decode_as_they_were_encoded() {
        for cost in COSTS {
            for operands in 0..=2 {
                for reversed in [false, true] {
                    assert_eq!(Cost::decode(cost.code(operands, reversed)), (cost, operands, reversed));
                }
            }
        }
    }
}
