//! Static analysis of CRD validation rules (pure, no I/O), as kube-apiserver v1.36 does it: the
//! type a schema node has in CEL (`Decl`, from the schema as Kubernetes declares it), a type
//! check of a rule against it (the errors cel-go's checker gives, where the simulator can be
//! sure of them), and cel-go's cost estimate with Kubernetes' size estimates — lists, maps and
//! strings as large as `maxItems`, `maxProperties`, `maxLength` say, or as fits in a request,
//! the sizes of computed lists and strings derived from their parts. The same estimate, with the
//! sizes of an object's actual values, bounds what one evaluation may cost.

use std::collections::BTreeMap;
use std::rc::Rc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use serde_json::Value;

/// The largest request the API server reads (`MaxRequestSizeBytes`).
pub const MAX_REQUEST: u64 = 3 * 1024 * 1024;
const STRING_TRAVERSAL: f64 = 0.1;
const REGEX_LENGTH: f64 = 0.25;
const LIST_CREATE: u64 = 10;
const MAP_CREATE: u64 = 30;
const STRUCT_CREATE: u64 = 40;
/// The accumulator of the comprehensions cel-go's macros expand into.
const ACCUMULATOR: &str = "@result";
/// Whether a variable is named as cel-go's accumulators are.
fn is_accumulator(name: &str) -> bool {
    name == ACCUMULATOR || name == "__result__"
}

/// The function cel-go's `transformMap` and `transformMapEntry` build their maps with.
const MAP_INSERT: &str = "cel.@mapInsert";

/// A schema node as the API server declares it to CEL.
#[derive(Debug)]
pub struct Decl {
    pub kind: Kind,
    /// `MaxElements`: the most items, properties or bytes a value can have (0 for scalars).
    pub max: u64,
    /// `MinSerializedSize`: the fewest bytes a value takes in JSON.
    pub min_size: u64,
    /// The name Kubernetes gives the type of an object (`MaybeAssignTypeName`): `selfType`
    /// and a number for the node of the rule, then the path to it, `.@idx` for a list's
    /// items and `.@elem` for a map's values (`selfType267495358.spec.items.@idx`).
    pub name: String,
}

#[derive(Debug)]
pub enum Kind {
    Int,
    Double,
    Bool,
    String,
    Bytes,
    Duration,
    Timestamp,
    Dyn,
    List(Rc<Decl>),
    Map(Rc<Decl>),
    Object(BTreeMap<String, Rc<Decl>>),
}

/// CEL's reserved words: a property of that name is `__name__` in rules.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A property name as rules spell it, or `None` when rules cannot name it.
pub fn escape(name: &str) -> Option<String> {
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let mut out = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                out.push_str("__underscores__");
            }
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// The type of a schema node (`SchemaDeclType`); `root` for the root of a resource (the CRD's
/// schema, an embedded resource), where `apiVersion`, `kind` and `metadata.name` and
/// `metadata.generateName` are always declared.
pub fn decl(schema: &Value, root: bool) -> Option<Rc<Decl>> {
    // The API server numbers the type by the clock's nanoseconds.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    decl_named(schema, root, &format!("selfType{nanos}"))
}

fn decl_named(schema: &Value, root: bool, name: &str) -> Option<Rc<Decl>> {
    let leaf = |kind: Kind, max: u64, min_size: u64| {
        Some(Rc::new(Decl {
            kind,
            max,
            min_size,
            name: name.to_string(),
        }))
    };
    let s = |k: &str| schema.get(k);
    let u = |k: &str| s(k).and_then(Value::as_u64);
    if s("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return leaf(Kind::Dyn, MAX_REQUEST - 2, 1);
    }
    let root = root || s("x-kubernetes-embedded-resource") == Some(&Value::Bool(true));
    let ty = s("type")
        .and_then(Value::as_str)
        .unwrap_or(if root { "object" } else { "" });
    match ty {
        "array" => {
            let items = decl_named(s("items")?, false, &format!("{name}.@idx"))?;
            let max = u("maxItems").unwrap_or((MAX_REQUEST - 2) / (items.min_size + 1));
            leaf(Kind::List(items), max, 2)
        }
        "object" => {
            if let Some(ap) = s("additionalProperties").filter(|a| a.is_object()) {
                let values = decl_named(ap, false, &format!("{name}.@elem"))?;
                let max = u("maxProperties").unwrap_or((MAX_REQUEST - 2) / (values.min_size + 6));
                return leaf(Kind::Map(values), max, 2);
            }
            let required: Vec<&str> = s("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut fields = BTreeMap::new();
            let mut min_size = 2;
            let props = s("properties").and_then(Value::as_object);
            for (field, prop) in props.into_iter().flatten() {
                let escaped = escape(field);
                let path = format!("{name}.{}", escaped.as_deref().unwrap_or(field));
                let Some(d) = decl_named(prop, false, &path) else {
                    continue;
                };
                if required.contains(&field.as_str()) && prop.get("default").is_none() {
                    min_size += field.len() as u64 + d.min_size + 4;
                }
                if let Some(n) = escaped {
                    // Rules may name a reserved word unescaped too (`self.namespace`).
                    if n != *field && RESERVED.contains(&field.as_str()) {
                        fields.insert(field.clone(), d.clone());
                    }
                    fields.insert(n, d);
                }
            }
            if root {
                let string = || leaf(Kind::String, MAX_REQUEST - 2, 2).unwrap();
                let meta_name = format!("{name}.metadata");
                fields.entry("apiVersion".into()).or_insert_with(string);
                fields.entry("kind".into()).or_insert_with(string);
                let meta: BTreeMap<String, Rc<Decl>> =
                    [("name".to_string(), string()), ("generateName".to_string(), string())].into();
                let meta = Decl {
                    kind: Kind::Object(meta),
                    max: 0,
                    min_size: 2,
                    name: meta_name,
                };
                fields.insert("metadata".into(), Rc::new(meta));
            }
            leaf(Kind::Object(fields), 0, min_size)
        }
        "string" => match s("format").and_then(Value::as_str) {
            Some("byte") => leaf(Kind::Bytes, u("maxLength").unwrap_or(MAX_REQUEST - 2), 2),
            Some("duration") => leaf(Kind::Duration, 64, 4),
            Some("date") => leaf(Kind::Timestamp, 12, 12),
            Some("date-time") => leaf(Kind::Timestamp, 32, 22),
            _ => {
                let max = match (u("maxLength"), s("enum").and_then(Value::as_array)) {
                    (Some(n), _) => n.saturating_mul(4),
                    (None, Some(e)) if !e.is_empty() => e
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|v| v.len() as u64)
                        .max()
                        .unwrap_or(0),
                    _ => MAX_REQUEST - 2,
                };
                leaf(Kind::String, max, 2)
            }
        },
        "boolean" => leaf(Kind::Bool, 0, 4),
        "number" => leaf(Kind::Double, 0, 1),
        "integer" => leaf(Kind::Int, 0, 1),
        _ => None,
    }
}

/// How often a rule of a node with this type may run when the node is under unbounded lists or
/// maps (`maxCardinality`).
pub fn unbounded_cardinality(d: &Decl) -> u64 {
    MAX_REQUEST / (d.min_size + 1)
}

/// The identifiers of types rules may name (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "google",
];

/// The namespaces of the functions Kubernetes declares for CRD rules (`strings.quote`,
/// `optional.of`, `ip.isCanonical`); `math`, `base64` and `cel` (`cel.bind`) are not among them.
pub const NAMESPACES: &[&str] = &["optional", "strings", "sets", "lists", "format", "ip"];

/// A CEL type, as far as the checker follows it.
#[derive(Clone, Debug)]
pub enum Ty {
    Int,
    Uint,
    Double,
    Bool,
    String,
    Bytes,
    Null,
    Duration,
    Timestamp,
    Dyn,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Object(Rc<Decl>),
    Opt(Box<Ty>),
    Type,
    /// `kubernetes.Quantity`.
    Quantity,
}

impl Ty {
    pub fn of(d: &Rc<Decl>) -> Ty {
        match &d.kind {
            Kind::Int => Ty::Int,
            Kind::Double => Ty::Double,
            Kind::Bool => Ty::Bool,
            Kind::String => Ty::String,
            Kind::Bytes => Ty::Bytes,
            Kind::Duration => Ty::Duration,
            Kind::Timestamp => Ty::Timestamp,
            Kind::Dyn => Ty::Dyn,
            Kind::List(e) => Ty::List(Box::new(Ty::of(e))),
            Kind::Map(v) => Ty::Map(Box::new(Ty::String), Box::new(Ty::of(v))),
            Kind::Object(_) => Ty::Object(d.clone()),
        }
    }

    /// The name cel-go gives the type, for types whose name does not depend on the CRD.
    fn name(&self) -> Option<String> {
        Some(match self {
            Ty::Int => "int".into(),
            Ty::Uint => "uint".into(),
            Ty::Double => "double".into(),
            Ty::Bool => "bool".into(),
            Ty::String => "string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Null => "null_type".into(),
            Ty::Duration => "duration".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::Opt(t) => format!("optional_type({})", t.name()?),
            Ty::List(e) => format!("list({})", e.name()?),
            Ty::Map(k, v) => format!("map({}, {})", k.name()?, v.name()?),
            Ty::Object(d) => d.name.clone(),
            Ty::Quantity => "kubernetes.Quantity".into(),
            _ => return None,
        })
    }

    /// The name cel-go shows for a type where what the checker does not know is `dyn` (the
    /// element types of an empty list or map, left unbound).
    fn shown(&self) -> Option<String> {
        Some(match self {
            Ty::Dyn => "dyn".into(),
            Ty::List(e) => format!("list({})", e.shown()?),
            Ty::Map(k, v) => format!("map({}, {})", k.shown()?, v.shown()?),
            Ty::Opt(t) => format!("optional_type({})", t.shown()?),
            t => t.name()?,
        })
    }

    /// A scalar the checker is sure of.
    fn primitive(&self) -> bool {
        matches!(
            self,
            Ty::Int | Ty::Uint | Ty::Double | Ty::Bool | Ty::String | Ty::Bytes | Ty::Duration | Ty::Timestamp
        )
    }

    fn same(&self, other: &Ty) -> bool {
        self.name().is_some() && self.name() == other.name()
    }

    fn scalar_size(&self) -> bool {
        match self {
            Ty::Bool | Ty::Double | Ty::Duration | Ty::Int | Ty::Timestamp | Ty::Uint | Ty::Quantity => true,
            Ty::Opt(t) => t.scalar_size(),
            _ => false,
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }
}

/// A size estimate (of a string, bytes, list or map).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Size {
    pub min: u64,
    pub max: u64,
}

const UNKNOWN: Size = Size { min: 0, max: u64::MAX };

impl Size {
    fn fixed(n: u64) -> Size {
        Size { min: n, max: n }
    }
    fn add(self, o: Size) -> Size {
        Size {
            min: self.min.saturating_add(o.min),
            max: self.max.saturating_add(o.max),
        }
    }
    fn mul(self, o: Size) -> Size {
        Size {
            min: self.min.saturating_mul(o.min),
            max: self.max.saturating_mul(o.max),
        }
    }
    fn union(self, o: Size) -> Size {
        Size {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
    /// `MultiplyByCostFactor`: the maximum times a factor, rounded up.
    fn factor(self, f: f64) -> u64 {
        by_factor(self.max, f)
    }
}

fn by_factor(x: u64, f: f64) -> u64 {
    let v = (x as f64 * f).ceil();
    if v >= 18_446_744_073_709_551_615.0 {
        u64::MAX
    } else {
        v as u64
    }
}

/// The sizes of a container's entries.
#[derive(Clone, Copy, Debug)]
struct Entry {
    list: bool,
    key: Size,
    val: Size,
}

impl Entry {
    fn union(a: Option<Entry>, b: Option<Entry>) -> Option<Entry> {
        let (a, b) = (a?, b?);
        Some(Entry {
            list: a.list,
            key: a.key.union(b.key),
            val: a.val.union(b.val),
        })
    }
}

/// Where sizes come from: the schema (`maxItems` …), or the values being validated.
pub trait Sizes {
    /// The size of what `path` names (`self`, `oldSelf` or a variable, then field names,
    /// `@items`, `@keys`, `@values`), if known.
    fn estimate(&self, path: &[String]) -> Option<Size>;
}

/// Sizes from the schema: `maxItems`, `maxProperties`, `maxLength`, else what fits in a
/// request (the API server's `sizeEstimator`).
pub struct SchemaSizes(pub Rc<Decl>);

impl Sizes for SchemaSizes {
    fn estimate(&self, path: &[String]) -> Option<Size> {
        let mut d = self.0.clone();
        for p in path.iter().skip(1) {
            let next = match (&d.kind, p.as_str()) {
                (Kind::List(e) | Kind::Map(e), "@items" | "@values") => e.clone(),
                (Kind::Map(_), "@keys") => return Some(Size { min: 0, max: 0 }),
                (Kind::Object(fields), name) => fields.get(name)?.clone(),
                _ => return None,
            };
            d = next;
        }
        Some(Size { min: 0, max: d.max })
    }
}

/// What the checker knows of an expression.
#[derive(Clone, Debug)]
struct Node {
    /// The expression's id (where its errors are).
    id: u64,
    ty: Ty,
    cost: u64,
    /// A size computed from the expression (a literal, a call's result).
    computed: Option<Size>,
    /// The size of the local variable the expression names.
    var_size: Option<Size>,
    entry: Option<Entry>,
    path: Vec<String>,
}

impl Node {
    fn new(ty: Ty, cost: u64) -> Node {
        Node {
            id: 0,
            ty,
            cost,
            computed: None,
            var_size: None,
            entry: None,
            path: Vec::new(),
        }
    }
}

struct Var {
    name: String,
    ty: Ty,
    path: Vec<String>,
    size: Option<Size>,
    entry: Option<Entry>,
}

/// The outcome of checking an expression.
pub struct Analysis {
    pub ty: Ty,
    /// cel-go's estimate of the most the expression can cost.
    pub cost: u64,
    /// Type errors: the offset in the source and cel-go's message.
    pub errors: Vec<(usize, String)>,
    /// Whether `errors` are cel-go's parser's (then they are all it reports).
    pub parse_failed: bool,
}

struct Checker<'a> {
    sizes: &'a dyn Sizes,
    self_ty: Ty,
    old_ty: Option<Ty>,
    vars: Vec<Var>,
    errors: Vec<(u64, String)>,
    /// Errors cel-go's parser gives (a macro's malformed arguments), at an expression's
    /// offset and so many characters after: when there are any, they are all cel-go reports,
    /// as it does not type-check what does not parse.
    syntax: Vec<(u64, usize, String)>,
}

/// Checks a compiled expression with `self` (and `oldSelf`) of the given types.
pub fn analyze(p: &cel::Program, self_ty: Ty, old_ty: Option<Ty>, sizes: &dyn Sizes) -> Analysis {
    let mut c = Checker {
        sizes,
        self_ty,
        old_ty,
        vars: Vec::new(),
        errors: Vec::new(),
        syntax: Vec::new(),
    };
    let n = c.node(p.expression());
    let info = p.source_info();
    let parse_failed = !c.syntax.is_empty();
    let reported = if c.syntax.is_empty() {
        c.errors.into_iter().map(|(id, m)| (id, 0, m)).collect()
    } else {
        c.syntax
    };
    let mut errors: Vec<(usize, String)> = reported
        .into_iter()
        .map(|(id, after, m)| {
            let at = info.offset_for(id).map_or(0, |(s, _)| s as usize);
            (at + after, m)
        })
        .collect();
    // cel-go's AST validators (Kubernetes enables them) run on what type-checks.
    if errors.is_empty() && !parse_failed {
        let mut found = Vec::new();
        literal_validators(p.expression(), &mut found);
        errors = found
            .into_iter()
            .map(|(id, m)| (info.offset_for(id).map_or(0, |(s, _)| s as usize), m))
            .collect();
    }
    errors.sort_by_key(|e| e.0);
    errors.dedup();
    Analysis {
        ty: n.ty,
        cost: n.cost,
        errors,
        parse_failed,
    }
}

/// cel-go's validators of literals (`ValidateDurationLiterals`, `ValidateTimestampLiterals`,
/// `ValidateRegexLiterals`, `ValidateHomogeneousAggregateLiterals`): a constant `duration()`,
/// `timestamp()` or `matches()` pattern that does not parse, a list or map literal of constants
/// of mixed types.
fn literal_validators(e: &IdedExpr, out: &mut Vec<(u64, String)>) {
    use cel::common::ast::EntryExpr;
    let string = |a: &IdedExpr| match &a.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.to_string()),
        _ => None,
    };
    let kind = |a: &IdedExpr| match &a.expr {
        Expr::Literal(l) => Some(match l {
            LiteralValue::Int(_) => "int",
            LiteralValue::UInt(_) => "uint",
            LiteralValue::Double(_) => "double",
            LiteralValue::Boolean(_) => "bool",
            LiteralValue::String(_) => "string",
            LiteralValue::Bytes(_) => "bytes",
            LiteralValue::Null => "null_type",
        }),
        _ => None,
    };
    let mixed = |items: Vec<&IdedExpr>, out: &mut Vec<(u64, String)>| {
        let mut first: Option<&str> = None;
        for x in items {
            if let Some(k) = kind(x) {
                match first {
                    None => first = Some(k),
                    Some(f) if f != k => {
                        out.push((x.id, format!("expected type '{f}' but found '{k}'")));
                        return;
                    }
                    _ => {}
                }
            }
        }
    };
    match &e.expr {
        Expr::Call(c) => {
            let invalid = match (c.func_name.as_str(), c.target.is_some(), c.args.as_slice()) {
                ("duration", false, [a]) => string(a)
                    .is_some_and(|s| crate::cel_time::parse_duration(&s).is_none())
                    .then_some((a.id, "invalid duration argument")),
                ("timestamp", false, [a]) => string(a)
                    .is_some_and(|s| crate::cel_time::parse_rfc3339(&s).is_none())
                    .then_some((a.id, "invalid timestamp argument")),
                ("matches", true, [a]) | ("matches", false, [_, a]) => string(a)
                    .is_some_and(|s| crate::cel_regex::regex(&s).is_err())
                    .then_some((a.id, "invalid matches argument")),
                _ => None,
            };
            out.extend(invalid.map(|(id, m)| (id, m.to_string())));
            if let Some(t) = &c.target {
                literal_validators(t, out);
            }
            c.args.iter().for_each(|a| literal_validators(a, out));
        }
        Expr::List(l) => {
            mixed(l.elements.iter().collect(), out);
            l.elements.iter().for_each(|x| literal_validators(x, out));
        }
        Expr::Map(m) => {
            let entries: Vec<_> = m
                .entries
                .iter()
                .filter_map(|x| match &x.expr {
                    EntryExpr::MapEntry(me) => Some(me),
                    _ => None,
                })
                .collect();
            mixed(entries.iter().map(|me| &me.key).collect(), out);
            mixed(entries.iter().map(|me| &me.value).collect(), out);
            for me in entries {
                literal_validators(&me.key, out);
                literal_validators(&me.value, out);
            }
        }
        Expr::Comprehension(c) => {
            for x in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                literal_validators(x, out);
            }
        }
        Expr::Select(s) => literal_validators(&s.operand, out),
        _ => {}
    }
}

/// Whether an expression is a field of `self` (`self.a.b`) the schema types as `dyn`
/// (`x-kubernetes-int-or-string`): cel-go knows it is neither a bool nor a string.
pub fn is_declared_dyn(p: &cel::Program, root: &Rc<Decl>) -> bool {
    let mut fields = Vec::new();
    let mut e = p.expression();
    loop {
        match &e.expr {
            Expr::Select(sel) if !sel.test => {
                fields.push(sel.field.as_str());
                e = &sel.operand;
            }
            Expr::Ident(name) if name == "self" => break,
            _ => return false,
        }
    }
    let mut d = root.clone();
    for f in fields.iter().rev() {
        let next = match &d.kind {
            Kind::Object(m) => m.get(*f).cloned(),
            Kind::Map(v) => Some(v.clone()),
            _ => None,
        };
        match next {
            Some(n) => d = n,
            None => return false,
        }
    }
    matches!(d.kind, Kind::Dyn)
}

/// cel-go's rendering of an error at `offset` of `source`.
pub fn render_error(source: &str, offset: usize, message: &str) -> String {
    let before = &source[..offset.min(source.len())];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = source[line_start..offset.min(source.len())].chars().count();
    let line = source[line_start..].lines().next().unwrap_or("");
    format!(
        "ERROR: <input>:{line_no}:{}: {message}\n | {line}\n | {}^",
        col + 1,
        ".".repeat(col)
    )
}

impl Checker<'_> {
    fn size(&self, n: &Node) -> Size {
        if let Some(s) = n.computed {
            return s;
        }
        if !n.path.is_empty() {
            if let Some(s) = self.sizes.estimate(&n.path) {
                return s;
            }
        }
        if n.ty.scalar_size() {
            return Size::fixed(1);
        }
        n.var_size.unwrap_or(UNKNOWN)
    }

    fn var(&self, name: &str) -> Option<&Var> {
        self.vars.iter().rev().find(|v| v.name == name)
    }

    fn error(&mut self, id: u64, message: String) {
        self.errors.push((id, message));
    }

    fn node(&mut self, e: &IdedExpr) -> Node {
        let mut n = self.node_of(e);
        n.id = e.id;
        n
    }

    fn node_of(&mut self, e: &IdedExpr) -> Node {
        match &e.expr {
            Expr::Literal(l) => {
                let (ty, size) = match l {
                    LiteralValue::Boolean(_) => (Ty::Bool, 1),
                    LiteralValue::Bytes(b) => (Ty::Bytes, b.inner().len() as u64),
                    LiteralValue::Double(_) => (Ty::Double, 1),
                    LiteralValue::Int(_) => (Ty::Int, 1),
                    LiteralValue::Null => (Ty::Null, 1),
                    LiteralValue::String(s) => (Ty::String, s.inner().chars().count() as u64),
                    LiteralValue::UInt(_) => (Ty::Uint, 1),
                };
                let mut n = Node::new(ty, 0);
                n.computed = Some(Size::fixed(size));
                n
            }
            Expr::Ident(name) => {
                if let Some(v) = self.var(name) {
                    let mut n = Node::new(v.ty.clone(), 1);
                    n.path = v.path.clone();
                    n.var_size = v.size;
                    n.entry = v.entry;
                    return n;
                }
                let ty = match name.as_str() {
                    "self" => self.self_ty.clone(),
                    "oldSelf" => self.old_ty.clone().unwrap_or(Ty::Dyn),
                    n if TYPE_NAMES.contains(&n) => Ty::Type,
                    _ => {
                        self.error(e.id, format!("undeclared reference to '{name}' (in container '')"));
                        Ty::Dyn
                    }
                };
                let mut n = Node::new(ty, 1);
                n.path = vec![name.clone()];
                n
            }
            Expr::Select(sel) => {
                let on = self.node(&sel.operand);
                let mut path = on.path.clone();
                path.push(sel.field.clone());
                let field_ty = match &on.ty {
                    Ty::Object(d) => match &d.kind {
                        Kind::Object(fields) => match fields.get(&sel.field) {
                            Some(f) => Ty::of(f),
                            None => {
                                self.error(e.id, format!("undefined field '{}'", sel.field));
                                Ty::Dyn
                            }
                        },
                        _ => Ty::Dyn,
                    },
                    Ty::Map(_, v) => (**v).clone(),
                    t if t.primitive() || matches!(t, Ty::List(_)) => {
                        if let Some(name) = t.name() {
                            self.error(e.id, format!("type '{name}' does not support field selection"));
                        }
                        Ty::Dyn
                    }
                    _ => Ty::Dyn,
                };
                if sel.test {
                    // Kubernetes' environment gives presence tests no cost of their own.
                    let mut n = Node::new(Ty::Bool, on.cost);
                    n.path = path;
                    return n;
                }
                let extra = u64::from(matches!(on.ty, Ty::Object(_) | Ty::Map(..)));
                let mut n = Node::new(field_ty, on.cost.saturating_add(extra));
                n.path = path;
                n
            }
            Expr::List(l) => {
                let mut cost = LIST_CREATE;
                let mut item = if l.elements.is_empty() {
                    Size::fixed(0)
                } else {
                    Size { min: u64::MAX, max: 0 }
                };
                let mut elem: Option<Ty> = None;
                for x in &l.elements {
                    let n = self.node(x);
                    cost = cost.saturating_add(n.cost);
                    item = item.union(self.size(&n));
                    elem = match elem {
                        None => Some(n.ty.clone()),
                        Some(t) if t.same(&n.ty) => Some(t),
                        Some(_) => Some(Ty::Dyn),
                    };
                }
                let mut n = Node::new(Ty::List(Box::new(elem.unwrap_or(Ty::Dyn))), cost);
                n.computed = Some(Size::fixed(l.elements.len() as u64));
                n.entry = Some(Entry {
                    list: true,
                    key: Size::fixed(1),
                    val: item,
                });
                n
            }
            Expr::Map(m) => {
                let mut cost = MAP_CREATE;
                let empty = if m.entries.is_empty() {
                    Size::fixed(0)
                } else {
                    Size { min: u64::MAX, max: 0 }
                };
                let (mut ks, mut vs) = (empty, empty);
                // Typed as cel-go types it: the keys' and values' common types, else `dyn`.
                let (mut kt, mut vt): (Option<Ty>, Option<Ty>) = (None, None);
                let join = |t: Option<Ty>, n: &Ty| match t {
                    None => Some(n.clone()),
                    Some(t) if t.same(n) => Some(t),
                    Some(_) => Some(Ty::Dyn),
                };
                for x in &m.entries {
                    if let EntryExpr::MapEntry(me) = &x.expr {
                        let k = self.node(&me.key);
                        let v = self.node(&me.value);
                        cost = cost.saturating_add(k.cost).saturating_add(v.cost);
                        ks = ks.union(self.size(&k));
                        vs = vs.union(self.size(&v));
                        kt = join(kt, &k.ty);
                        vt = join(vt, &v.ty);
                    }
                }
                let ty = Ty::Map(Box::new(kt.unwrap_or(Ty::Dyn)), Box::new(vt.unwrap_or(Ty::Dyn)));
                let mut n = Node::new(ty, cost);
                n.computed = Some(Size::fixed(m.entries.len() as u64));
                n.entry = Some(Entry {
                    list: false,
                    key: ks,
                    val: vs,
                });
                n
            }
            Expr::Struct(st) => {
                let mut cost = STRUCT_CREATE;
                for x in &st.entries {
                    let v = match &x.expr {
                        EntryExpr::MapEntry(me) => &me.value,
                        EntryExpr::StructField(f) => &f.value,
                    };
                    cost = cost.saturating_add(self.node(v).cost);
                }
                Node::new(Ty::Dyn, cost)
            }
            Expr::Comprehension(c) => {
                // A one-variable macro the `cel` crate expanded (at its call's `(`, its
                // variable just after): cel-go's parser refuses a variable named as the
                // accumulator.
                if c.iter_var2.is_none() && c.accu_var == ACCUMULATOR && is_accumulator(&c.iter_var) {
                    self.syntax
                        .push((e.id, 1, "iteration variable overwrites accumulator variable".into()));
                }
                self.comprehension(c)
            }
            Expr::Call(call) => self.call(e.id, call),
            Expr::Unspecified => Node::new(Ty::Dyn, 0),
        }
    }

    fn comprehension(&mut self, c: &cel::common::ast::ComprehensionExpr) -> Node {
        self.comprehension_with(c, None)
    }

    /// A comprehension; with `filter` (the filter of a transform macro and the id of the
    /// macro's call), its step is `filter ? step : accumulator`, as cel-go expands the macro,
    /// the accumulator typed as the step makes it (cel-go infers the element type of the
    /// empty list or map it starts from).
    fn comprehension_with(
        &mut self,
        c: &cel::common::ast::ComprehensionExpr,
        filter: Option<(u64, &IdedExpr)>,
    ) -> Node {
        let range = self.node(&c.iter_range);
        let init = self.node(&c.accu_init);
        let is_bind = matches!(&c.iter_range.expr, Expr::List(l) if l.elements.is_empty())
            && matches!(&c.loop_cond.expr, Expr::Literal(LiteralValue::Boolean(b)) if !*b.inner())
            && c.accu_var != "@result"
            && c.accu_var != "__result__";
        let init_size = init.computed.or(init.var_size).or_else(|| {
            (!init.path.is_empty())
                .then(|| self.sizes.estimate(&init.path))
                .flatten()
        });
        self.vars.push(Var {
            name: c.accu_var.clone(),
            ty: init.ty.clone(),
            path: init.path.clone(),
            size: init_size,
            entry: init.entry,
        });
        if is_bind {
            let result = self.node(&c.result);
            self.vars.pop();
            let mut n = result.clone();
            n.cost = range.cost.saturating_add(init.cost).saturating_add(result.cost);
            n.computed = Some(self.size(&result)).filter(|s| *s != UNKNOWN);
            n.path = Vec::new();
            return n;
        }
        let container_list = match range.entry {
            Some(en) => en.list,
            None => matches!(range.ty, Ty::List(_)),
        };
        let (elem_ty, key_ty) = match &range.ty {
            Ty::List(e) => ((**e).clone(), Ty::Int),
            Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
            _ => (Ty::Dyn, Ty::Dyn),
        };
        let mut pushed = 1;
        if let Some(v2) = &c.iter_var2 {
            let (kp, vp) = if container_list {
                ("@indices", "@items")
            } else {
                ("@keys", "@values")
            };
            let (kt, vt) = if container_list {
                (Ty::Int, elem_ty)
            } else {
                (elem_ty, key_ty)
            };
            let mut path = range.path.clone();
            path.push(kp.into());
            self.vars.push(Var {
                name: c.iter_var.clone(),
                ty: kt,
                path,
                size: range.entry.map(|e| e.key),
                entry: None,
            });
            let mut path = range.path.clone();
            path.push(vp.into());
            self.vars.push(Var {
                name: v2.clone(),
                ty: vt,
                path,
                size: range.entry.map(|e| e.val),
                entry: None,
            });
            pushed = 2;
        } else {
            let mut path = range.path.clone();
            path.push(if container_list { "@items" } else { "@keys" }.into());
            let size = range.entry.map(|e| if container_list { e.val } else { e.key });
            self.vars.push(Var {
                name: c.iter_var.clone(),
                ty: elem_ty,
                path,
                size,
                entry: None,
            });
        }
        let cond = self.node(&c.loop_cond);
        let mut step = self.node(&c.loop_step);
        if let Some((id, filter)) = filter {
            let f = self.node(filter);
            let accu = self.var(&c.accu_var).map(|v| {
                let mut n = Node::new(v.ty.clone(), 1);
                n.path = v.path.clone();
                n.var_size = v.size;
                n.entry = v.entry;
                n
            });
            let mut accu = accu.unwrap_or_else(|| Node::new(Ty::Dyn, 1));
            if !matches!(step.ty, Ty::Dyn) {
                accu.ty = step.ty.clone();
            }
            let ty = step.ty.clone();
            step = self.apply(id, "_?_:_", None, vec![f, step, accu], &[]);
            step.ty = ty;
        }
        for _ in 0..pushed {
            self.vars.pop();
        }
        // The accumulator has the type the step gives it.
        if let Some(v) = self.vars.last_mut() {
            if !matches!(step.ty, Ty::Dyn) {
                v.ty = step.ty.clone();
            }
        }
        let result = self.node(&c.result);
        self.vars.pop();
        let count = self.size(&range);
        let per = step.cost.saturating_add(cond.cost);
        let cost = range
            .cost
            .saturating_add(init.cost)
            .saturating_add(result.cost)
            .saturating_add(count.max.saturating_mul(per));
        let mut n = Node::new(result.ty.clone(), cost);
        match &c.accu_init.expr {
            Expr::Literal(_) => n.computed = init.computed,
            Expr::List(_) | Expr::Map(_) => {
                n.computed = Some(count);
                n.entry = step.entry;
            }
            _ => {}
        }
        n
    }

    fn call(&mut self, id: u64, call: &cel::common::ast::CallExpr) -> Node {
        let f = call.func_name.as_str();
        if f == "dyn" && call.args.len() == 1 && call.target.is_none() {
            let a = self.node(&call.args[0]);
            let mut n = a.clone();
            n.ty = Ty::Dyn;
            n.cost = a.cost.saturating_add(1);
            n.path = Vec::new();
            n.computed = Some(self.size(&a)).filter(|s| *s != UNKNOWN);
            return n;
        }
        if let Some(n) = self.two_variable_macro(id, call) {
            return n;
        }
        let args: Vec<Node> = call.args.iter().map(|a| self.node(a)).collect();
        // `strings.quote(…)`: a function of a namespace, not a method of a variable.
        let namespaced = matches!(call.target.as_deref().map(|t| &t.expr),
            Some(Expr::Ident(ns)) if NAMESPACES.contains(&ns.as_str()) && self.var(ns).is_none());
        let target = call.target.as_ref().filter(|_| !namespaced).map(|t| self.node(t));
        self.apply(id, f, target, args, &call.args)
    }

    /// A call of `f` on checked arguments (`exprs`: the arguments' expressions, where known).
    fn apply(&mut self, id: u64, f: &str, target: Option<Node>, args: Vec<Node>, exprs: &[IdedExpr]) -> Node {
        let arg_sum = args.iter().fold(0u64, |s, a| s.saturating_add(a.cost));
        let target_cost = target.as_ref().map_or(0, |t| t.cost);
        let ty = self.call_type(id, f, target.as_ref(), &args);
        let mut n = Node::new(ty, 0);
        let (fn_cost, result) = self.call_cost(f, target.as_ref(), &args, exprs, arg_sum, &mut n);
        n.cost = target_cost.saturating_add(fn_cost);
        if n.computed.is_none() {
            n.computed = result;
        }
        // A quantity, URL, address, range or version has no size: comparing two costs what
        // comparing scalars costs (v1.36.2 installs `quantity('1') == quantity('2')`).
        let opaque = matches!(
            (f, target.is_some()),
            ("quantity" | "url" | "ip" | "cidr" | "semver", false) | ("add" | "sub" | "masked" | "ip", true)
        );
        if n.computed.is_none() && (opaque || matches!(n.ty, Ty::Quantity)) {
            n.computed = Some(Size::fixed(1));
        }
        n
    }

    /// The macros that bind two variables, which Kubernetes declares (`l.all(i, v, …)`,
    /// `m.exists(k, v, …)`, `existsOne`, `transformList`, `transformMap`, `transformMapEntry`)
    /// and the `cel` crate leaves unexpanded: their variables refused as cel-go's parser refuses
    /// them, then checked as the comprehension cel-go expands them into (ext/comprehensions.go),
    /// so that the predicate, the filter and the transform are type-checked and costed per
    /// element with what cel-go adds around them.
    fn two_variable_macro(&mut self, id: u64, call: &cel::common::ast::CallExpr) -> Option<Node> {
        use cel::common::ast::{CallExpr, ComprehensionExpr, ListExpr, MapExpr};
        let f = call.func_name.as_str();
        let macro_ = matches!(
            f,
            "all" | "exists" | "exists_one" | "existsOne" | "transformList" | "transformMap" | "transformMapEntry"
        );
        let target = call.target.as_ref()?;
        if !macro_ || !crate::cel_macros::arity_fits(f, call.args.len()) {
            return None;
        }
        // cel-go's `extractIterVars`.
        let name = |i: usize| match &call.args[i].expr {
            Expr::Ident(n) => Some(n.clone()),
            _ => None,
        };
        let (first, second) = match (name(0), name(1)) {
            (Some(a), Some(b)) if a != b && !is_accumulator(&a) && !is_accumulator(&b) => (a, b),
            (a, b) => {
                let (at, message) = match (a, b) {
                    (None, _) => (0, "argument must be a simple name".to_string()),
                    (_, None) => (1, "argument must be a simple name".to_string()),
                    (Some(a), Some(b)) if a == b => (1, format!("duplicate variable name: {a}")),
                    (Some(a), _) if is_accumulator(&a) => {
                        (0, "iteration variable overwrites accumulator variable".into())
                    }
                    _ => (1, "iteration variable overwrites accumulator variable".into()),
                };
                self.syntax.push((call.args[at].id, 0, message));
                // The parser goes on: macros inside have their errors too.
                self.node(target);
                for a in &call.args {
                    self.node(a);
                }
                return Some(Node::new(Ty::Dyn, 0));
            }
        };
        // The nodes cel-go's expansion adds are located at the macro's call.
        let at = |expr: Expr| IdedExpr { id, expr };
        let accu = || at(Expr::Ident(ACCUMULATOR.into()));
        let lit = |v: LiteralValue| at(Expr::Literal(v));
        let apply = |f: &str, args: Vec<IdedExpr>| {
            at(Expr::Call(CallExpr {
                func_name: f.into(),
                target: None,
                args,
            }))
        };
        let body = call.args[call.args.len() - 1].clone();
        let filter = (call.args.len() == 4).then(|| (id, &call.args[2]));
        let (init, cond, step, result) = match f {
            "all" => (
                lit(LiteralValue::Boolean(true.into())),
                apply("@not_strictly_false", vec![accu()]),
                apply("_&&_", vec![accu(), body]),
                accu(),
            ),
            "exists" => (
                lit(LiteralValue::Boolean(false.into())),
                apply("@not_strictly_false", vec![apply("!_", vec![accu()])]),
                apply("_||_", vec![accu(), body]),
                accu(),
            ),
            "existsOne" | "exists_one" => (
                lit(LiteralValue::Int(0.into())),
                lit(LiteralValue::Boolean(true.into())),
                apply(
                    "_?_:_",
                    vec![
                        body,
                        apply("_+_", vec![accu(), lit(LiteralValue::Int(1.into()))]),
                        accu(),
                    ],
                ),
                apply("_==_", vec![accu(), lit(LiteralValue::Int(1.into()))]),
            ),
            "transformList" => (
                at(Expr::List(ListExpr::default())),
                lit(LiteralValue::Boolean(true.into())),
                apply(
                    "_+_",
                    vec![
                        accu(),
                        at(Expr::List(ListExpr {
                            elements: vec![body],
                            optional_indices: Vec::new(),
                        })),
                    ],
                ),
                accu(),
            ),
            "transformMap" => (
                at(Expr::Map(MapExpr { entries: vec![] })),
                lit(LiteralValue::Boolean(true.into())),
                apply(MAP_INSERT, vec![accu(), at(Expr::Ident(first.clone())), body]),
                accu(),
            ),
            _ => (
                at(Expr::Map(MapExpr { entries: vec![] })),
                lit(LiteralValue::Boolean(true.into())),
                apply(MAP_INSERT, vec![accu(), body]),
                accu(),
            ),
        };
        let comprehension = ComprehensionExpr {
            iter_range: (**target).clone(),
            iter_var: first,
            iter_var2: Some(second),
            accu_var: ACCUMULATOR.into(),
            accu_init: init,
            loop_cond: cond,
            loop_step: step,
            result,
        };
        let mut n = self.comprehension_with(&comprehension, filter);
        if matches!(f, "all" | "exists" | "exists_one" | "existsOne") {
            n.ty = Ty::Bool;
        }
        Some(n)
    }

    /// The cost of a call (without its target's) and the size of its result, as cel-go and
    /// Kubernetes' `CostEstimator` estimate them.
    fn call_cost(
        &mut self,
        f: &str,
        target: Option<&Node>,
        args: &[Node],
        exprs: &[IdedExpr],
        arg_sum: u64,
        n: &mut Node,
    ) -> (u64, Option<Size>) {
        let sz = |c: &Self, i: usize| args.get(i).map_or(UNKNOWN, |a| c.size(a));
        // Kubernetes' estimator comes first.
        if let Some(t) = target {
            let ts = self.size(t);
            match f {
                "isSorted" | "sum" | "max" | "min" | "indexOf" | "lastIndexOf" => {
                    if let Ty::List(e) = &t.ty {
                        let mut el = 1u64;
                        if matches!(**e, Ty::String | Ty::Bytes) {
                            let mut p = t.path.clone();
                            p.push("@items".into());
                            let es = t
                                .entry
                                .map(|en| en.val)
                                .or_else(|| self.sizes.estimate(&p))
                                .unwrap_or(UNKNOWN);
                            el = el.saturating_add(es.factor(STRING_TRAVERSAL));
                        }
                        return (ts.max.saturating_mul(el).saturating_add(arg_sum), None);
                    }
                    return (ts.factor(STRING_TRAVERSAL).saturating_add(arg_sum), None);
                }
                "lowerAscii" | "upperAscii" | "substring" | "trim" => {
                    return (ts.factor(STRING_TRAVERSAL).saturating_add(arg_sum), Some(ts));
                }
                "replace" if args.len() >= 2 => {
                    let (from, with) = (sz(self, 0), sz(self, 1));
                    let (count_max, kept_max) = if from.min == 0 {
                        (ts.max.saturating_add(1), ts.max)
                    } else if with.max <= from.min {
                        (0, ts.max)
                    } else {
                        ((ts.max as f64 / from.min as f64).ceil() as u64, 0)
                    };
                    let size = Size {
                        min: 0,
                        max: count_max.saturating_mul(with.max).saturating_add(kept_max),
                    };
                    return (ts.factor(2.0 * STRING_TRAVERSAL).saturating_add(arg_sum), Some(size));
                }
                "split" => {
                    let mut max = ts.max;
                    if let Some(Expr::Literal(LiteralValue::Int(i))) = exprs.get(1).map(|e| &e.expr) {
                        max = (*i.inner()).max(0) as u64;
                    }
                    n.entry = None;
                    return (
                        ts.factor(2.0 * STRING_TRAVERSAL).saturating_add(arg_sum),
                        Some(Size { min: 0, max }),
                    );
                }
                "join" => {
                    let mut p = t.path.clone();
                    p.push("@items".into());
                    let es = t
                        .entry
                        .map(|en| en.val)
                        .or_else(|| (!t.path.is_empty()).then(|| self.sizes.estimate(&p)).flatten())
                        .unwrap_or(UNKNOWN);
                    let mut size = ts.mul(es);
                    if let Some(sep) = args.first() {
                        let seps = Size {
                            min: ts.min.saturating_sub(1),
                            max: ts.max.saturating_sub(1),
                        };
                        size = size.add(self.size(sep).mul(seps));
                    }
                    return (size.factor(STRING_TRAVERSAL).saturating_add(arg_sum), Some(size));
                }
                "find" | "findAll" if !args.is_empty() => {
                    let s = by_factor(ts.max.saturating_add(1), STRING_TRAVERSAL);
                    let r = sz(self, 0).factor(REGEX_LENGTH);
                    return (
                        s.saturating_mul(r).saturating_add(arg_sum),
                        Some(Size { min: 0, max: ts.max }),
                    );
                }
                "cidr" | "isIP" | "isCIDR" | "ip" if !args.is_empty() => {
                    return (sz(self, 0).factor(STRING_TRAVERSAL).saturating_add(arg_sum), None);
                }
                "masked"
                | "prefixLength"
                | "family"
                | "isUnspecified"
                | "isLoopback"
                | "isLinkLocalMulticast"
                | "isLinkLocalUnicast"
                | "sign"
                | "asInteger"
                | "isInteger"
                | "asApproximateFloat"
                | "isGreaterThan"
                | "isLessThan"
                | "compareTo"
                | "add"
                | "sub"
                | "ip" => {
                    return (1u64.saturating_add(arg_sum), None);
                }
                _ => {}
            }
        } else {
            match f {
                "url" | "quantity" | "isQuantity" | "isURL" if args.len() == 1 => {
                    return (sz(self, 0).factor(STRING_TRAVERSAL).saturating_add(arg_sum), None);
                }
                "masked"
                | "prefixLength"
                | "family"
                | "isUnspecified"
                | "isLoopback"
                | "isLinkLocalMulticast"
                | "isLinkLocalUnicast"
                | "sign"
                | "asInteger"
                | "isInteger"
                | "asApproximateFloat"
                | "isGreaterThan"
                | "isLessThan"
                | "compareTo"
                | "add"
                | "sub" => return (1u64.saturating_add(arg_sum), None),
                _ => {}
            }
        }
        // cel-go's own estimates.
        let is = |t: &Ty, want: fn(&Ty) -> bool| want(t) || matches!(t, Ty::Dyn);
        match (f, target) {
            ("startsWith" | "endsWith", Some(t)) if args.len() == 1 && is(&t.ty, |t| matches!(t, Ty::String)) => {
                (sz(self, 0).factor(STRING_TRAVERSAL).saturating_add(arg_sum), None)
            }
            ("matches", Some(t)) if args.len() == 1 => {
                let s = by_factor(self.size(t).max.saturating_add(1), STRING_TRAVERSAL);
                let r = sz(self, 0).factor(REGEX_LENGTH);
                (s.saturating_mul(r).saturating_add(arg_sum), None)
            }
            ("contains", Some(t)) if args.len() == 1 && is(&t.ty, |t| matches!(t, Ty::String)) => {
                let s = self.size(t).factor(STRING_TRAVERSAL);
                let r = sz(self, 0).factor(STRING_TRAVERSAL);
                (s.saturating_mul(r).saturating_add(arg_sum), None)
            }
            ("@in", None) if args.len() == 2 && matches!(args[1].ty, Ty::List(_)) => {
                (sz(self, 1).max.saturating_add(arg_sum), None)
            }
            ("_&&_" | "_||_", None) => (arg_sum, None),
            ("_?_:_", None) if args.len() == 3 => {
                let size = sz(self, 1).union(sz(self, 2));
                n.entry = Entry::union(args[1].entry, args[2].entry);
                let cost = args[0].cost.saturating_add(args[1].cost.max(args[2].cost));
                (cost, Some(size))
            }
            ("_+_", None) if args.len() == 2 => {
                let (l, r) = (&args[0].ty, &args[1].ty);
                let list = matches!(l, Ty::List(_)) || matches!(r, Ty::List(_));
                let text = matches!(l, Ty::String | Ty::Bytes) || matches!(r, Ty::String | Ty::Bytes);
                let dynamic = matches!(l, Ty::Dyn) && matches!(r, Ty::Dyn);
                if !(list || text || dynamic) {
                    return (1u64.saturating_add(arg_sum), None);
                }
                let size = sz(self, 0).add(sz(self, 1));
                if let Some(en) = Entry::union(args[0].entry, args[1].entry) {
                    n.entry = Some(en);
                }
                let text_cost = size.factor(STRING_TRAVERSAL).saturating_add(arg_sum);
                let cost = if list {
                    1u64.saturating_add(arg_sum)
                } else if dynamic {
                    text_cost.max(1u64.saturating_add(arg_sum))
                } else {
                    text_cost
                };
                (cost, Some(size))
            }
            ("_==_" | "_!=_", None) if args.len() == 2 => (equality(self, args).saturating_add(arg_sum), None),
            ("_<_" | "_>_" | "_<=_" | "_>=_", None) if args.len() == 2 => {
                let text = |t: &Ty| matches!(t, Ty::String | Ty::Bytes | Ty::Dyn);
                if text(&args[0].ty) && text(&args[1].ty) {
                    let c = equality(self, args).max(1);
                    (c.saturating_add(arg_sum), None)
                } else {
                    (1u64.saturating_add(arg_sum), None)
                }
            }
            ("_[_]", None) if args.len() == 2 => {
                let sub = match args[0].ty {
                    Ty::Map(..) => "@values",
                    _ => "@items",
                };
                let mut p = args[0].path.clone();
                p.push(sub.into());
                n.path = p;
                let r = args[0].entry.map(|e| e.val);
                (1u64.saturating_add(arg_sum), r)
            }
            _ => (1u64.saturating_add(arg_sum), None),
        }
    }

    /// The type of a call's result; records the type errors cel-go's checker is sure to give.
    fn call_type(&mut self, id: u64, f: &str, target: Option<&Node>, args: &[Node]) -> Ty {
        let no_overload = |c: &mut Self, shown: String| {
            c.error(id, format!("found no matching overload for '{f}' applied to '{shown}'"));
        };
        let pair = || -> Option<String> { Some(format!("({}, {})", args[0].ty.name()?, args[1].ty.name()?)) };
        if target.is_none() && args.len() == 2 {
            let (l, r) = (&args[0].ty, &args[1].ty);
            let both = l.primitive() && r.primitive();
            match f {
                "_==_" | "_!=_" => {
                    let optional =
                        |a: &Ty, b: &Ty| matches!(a, Ty::Opt(_)) && !matches!(b, Ty::Opt(_) | Ty::Dyn | Ty::Null);
                    if (both || optional(l, r) || optional(r, l)) && !l.same(r) {
                        if let Some(s) = pair() {
                            no_overload(self, s);
                        }
                    }
                    return Ty::Bool;
                }
                "_<_" | "_>_" | "_<=_" | "_>=_" => {
                    if both && !l.same(r) && !(l.is_numeric() && r.is_numeric()) {
                        if let Some(s) = pair() {
                            no_overload(self, s);
                        }
                    }
                    return Ty::Bool;
                }
                "_&&_" | "_||_" => {
                    // cel-go checks each operand of a logical operator on its own.
                    for a in args {
                        if let Some(name) = a.ty.name().filter(|_| !matches!(a.ty, Ty::Bool)) {
                            self.error(a.id, format!("expected type 'bool' but found '{name}'"));
                        }
                    }
                    return Ty::Bool;
                }
                "_+_" | "_-_" | "_*_" | "_/_" | "_%_" => {
                    let result = arithmetic(f, l, r);
                    if both && result.is_none() {
                        if let Some(s) = pair() {
                            no_overload(self, s);
                        }
                    }
                    return match (result, l, r) {
                        (Some(t), _, _) => t,
                        (None, Ty::List(a), Ty::List(b)) => {
                            if matches!(**a, Ty::Dyn) {
                                Ty::List(b.clone())
                            } else {
                                Ty::List(a.clone())
                            }
                        }
                        _ => Ty::Dyn,
                    };
                }
                "_[_]" => {
                    return match l {
                        Ty::List(e) => (**e).clone(),
                        Ty::Map(_, v) => (**v).clone(),
                        _ => Ty::Dyn,
                    };
                }
                "@in" => return Ty::Bool,
                _ => {}
            }
        }
        match (f, target) {
            ("!_", None) => {
                if let Some(a) = args.first() {
                    if a.ty.primitive() && !matches!(a.ty, Ty::Bool) {
                        if let Some(name) = a.ty.name() {
                            no_overload(self, format!("({name})"));
                        }
                    }
                }
                Ty::Bool
            }
            ("-_", None) => args.first().map_or(Ty::Dyn, |a| a.ty.clone()),
            ("_?_:_", None) if args.len() == 3 => {
                if !matches!(args[0].ty, Ty::Bool | Ty::Dyn) {
                    let names: Option<Vec<String>> = args.iter().map(|a| a.ty.name()).collect();
                    if let Some(names) = names {
                        no_overload(self, format!("({})", names.join(", ")));
                    }
                }
                if args[1].ty.same(&args[2].ty) {
                    args[1].ty.clone()
                } else {
                    Ty::Dyn
                }
            }
            ("@not_strictly_false", None) => Ty::Bool,
            // `cel.@mapInsert(map, key, value)`, `cel.@mapInsert(map, entries)`.
            (MAP_INSERT, None) => match args {
                [_, k, v] => Ty::Map(Box::new(k.ty.clone()), Box::new(v.ty.clone())),
                [_, m] if matches!(m.ty, Ty::Map(..)) => m.ty.clone(),
                // `transformMapEntry` whose transform is not a map.
                [accu, e] => {
                    if let (Some(a), Some(e)) = (accu.ty.shown(), e.ty.name().filter(|_| !matches!(e.ty, Ty::Dyn))) {
                        no_overload(self, format!("({a}, {e})"));
                    }
                    Ty::Dyn
                }
                _ => Ty::Dyn,
            },
            ("size", _) => Ty::Int,
            ("int", None) => Ty::Int,
            ("uint", None) => Ty::Uint,
            ("double", None) => Ty::Double,
            ("string", None) => Ty::String,
            ("bytes", None) => Ty::Bytes,
            ("bool", None) => Ty::Bool,
            ("duration", None) => Ty::Duration,
            ("timestamp", None) => Ty::Timestamp,
            ("type", None) => Ty::Type,
            ("quantity", None) => Ty::Quantity,
            ("add" | "sub", Some(t)) if matches!(t.ty, Ty::Quantity) => Ty::Quantity,
            // Kubernetes v1.36 declares `sign()` for no quantity a CRD rule can hold.
            ("sign", Some(t)) if matches!(t.ty, Ty::Quantity) && args.is_empty() => {
                no_overload(self, "kubernetes.Quantity.()".to_string());
                Ty::Dyn
            }
            ("contains" | "startsWith" | "endsWith" | "matches", Some(t)) => {
                if t.ty.primitive() && !matches!(t.ty, Ty::String) {
                    let names: Option<Vec<String>> = args.iter().map(|a| a.ty.name()).collect();
                    if let (Some(tn), Some(names)) = (t.ty.name(), names) {
                        no_overload(self, format!("{tn}.({})", names.join(", ")));
                    }
                }
                Ty::Bool
            }
            ("lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "charAt", Some(_)) => Ty::String,
            // Kubernetes declares version 2 of the strings extension, without `reverse`.
            ("reverse", Some(t)) if matches!(t.ty, Ty::String) && args.is_empty() => {
                no_overload(self, "string.()".to_string());
                Ty::Dyn
            }
            ("join", Some(_)) => Ty::String,
            ("split", Some(_)) => Ty::List(Box::new(Ty::String)),
            ("indexOf" | "lastIndexOf", Some(_)) => Ty::Int,
            ("hasValue", Some(_)) => Ty::Bool,
            ("value" | "orValue", Some(t)) => match &t.ty {
                Ty::Opt(inner) => (**inner).clone(),
                _ => Ty::Dyn,
            },
            ("isSorted" | "isURL" | "isQuantity", _) => Ty::Bool,
            ("sum" | "min" | "max", Some(t)) => match &t.ty {
                Ty::List(e) => (**e).clone(),
                _ => Ty::Dyn,
            },
            _ => Ty::Dyn,
        }
    }
}

/// The cost of comparing two values for equality (or order): a traversal of the smaller.
fn equality(c: &Checker, args: &[Node]) -> u64 {
    let (l, r) = (c.size(&args[0]), c.size(&args[1]));
    by_factor(l.max.min(r.max), STRING_TRAVERSAL)
}

/// The type of an arithmetic operation on two types, if cel-go declares it.
fn arithmetic(f: &str, l: &Ty, r: &Ty) -> Option<Ty> {
    use Ty::*;
    let same_num = l.is_numeric() && l.same(r);
    match f {
        "_+_" => match (l, r) {
            _ if same_num => Some(l.clone()),
            (String, String) => Some(String),
            (Bytes, Bytes) => Some(Bytes),
            (Timestamp, Duration) | (Duration, Timestamp) => Some(Timestamp),
            (Duration, Duration) => Some(Duration),
            _ => None,
        },
        "_-_" => match (l, r) {
            _ if same_num => Some(l.clone()),
            (Timestamp, Timestamp) => Some(Duration),
            (Timestamp, Duration) => Some(Timestamp),
            (Duration, Duration) => Some(Duration),
            _ => None,
        },
        "_*_" | "_/_" => same_num.then(|| l.clone()),
        "_%_" => (matches!(l, Int | Uint) && l.same(r)).then(|| l.clone()),
        _ => None,
    }
}
