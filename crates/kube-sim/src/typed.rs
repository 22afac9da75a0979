//! Structured values (pure, no I/O): the type of every field of an object as the API server's
//! structured-merge-diff library sees it — struct fields, granular or atomic maps, atomic,
//! set-like or associative lists — and what server-side apply and `managedFields` are built
//! from: field paths and sets, their `fieldsV1` encoding, an object's own field set, the
//! comparison of two versions of an object, the merge of an applied configuration into a live
//! object, and the removal of fields.
//!
//! It must not know about HTTP, storage or which resource a value belongs to; types from an
//! OpenAPI document refer to its definitions by name ([`Ty::Named`]), resolved in the
//! [`Definitions`] they came from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

/// The type of a value.
#[derive(Clone, Debug)]
pub enum Ty {
    /// A string, number or boolean (also int-or-string, quantities, timestamps).
    Scalar,
    Map(Arc<MapTy>),
    List(Arc<ListTy>),
    /// Deduced from the value: maps are granular, lists atomic (preserved unknown fields,
    /// `RawExtension`, JSON).
    Untyped,
    /// Any value, replaced as a whole (preserved unknown fields inside a typed schema).
    Opaque,
    /// A named definition (`io.k8s.api.core.v1.PodSpec`), resolved lazily because the
    /// definitions are recursive.
    Named(Arc<str>, &'static Definitions),
}

/// Named type definitions (an OpenAPI v2 document's `definitions`), which [`Ty::Named`]
/// points into; each is converted once, when first resolved.
pub struct Definitions {
    schemas: Map<String, Value>,
    types: OnceLock<HashMap<String, Ty>>,
}

impl fmt::Debug for Definitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Definitions({})", self.schemas.len())
    }
}

impl Definitions {
    pub fn new(schemas: Map<String, Value>) -> Self {
        Definitions {
            schemas,
            types: OnceLock::new(),
        }
    }

    /// The type of a definition; [`Ty::Untyped`] for an unknown name.
    pub fn get(&'static self, name: &str) -> Ty {
        let types = self.types.get_or_init(|| {
            self.schemas
                .iter()
                .map(|(n, s)| (n.clone(), openapi_ty(s, self)))
                .collect()
        });
        types.get(name).cloned().unwrap_or(Ty::Untyped)
    }

    /// A reference to a definition, resolved when used.
    pub fn named(&'static self, name: &str) -> Ty {
        Ty::Named(Arc::from(name), self)
    }
}

/// An OpenAPI v2 schema as a structured-merge-diff type, as kube-openapi's `schemaconv` makes it:
/// lists without `x-kubernetes-list-type` are associative when their patch strategy merges.
pub fn openapi_ty(s: &Value, defs: &'static Definitions) -> Ty {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return defs.named(r.rsplit('/').next().unwrap_or(r));
    }
    let ext = |k: &str| s.get(k).and_then(Value::as_str);
    match s.get("type").and_then(Value::as_str) {
        Some("object") => {
            let fields: BTreeMap<String, Ty> = s
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.iter().map(|(k, v)| (k.clone(), openapi_ty(v, defs))).collect())
                .unwrap_or_default();
            let elem = match s.get("additionalProperties") {
                Some(Value::Object(a)) => Some(openapi_ty(&Value::Object(a.clone()), defs)),
                Some(Value::Bool(true)) => Some(Ty::Untyped),
                _ if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) => Some(Ty::Untyped),
                _ => None,
            };
            if fields.is_empty() && elem.is_none() {
                return Ty::Untyped;
            }
            Ty::map(fields, elem, ext("x-kubernetes-map-type") == Some("atomic"))
        }
        Some("array") => {
            let elem = s.get("items").map(|i| openapi_ty(i, defs)).unwrap_or(Ty::Untyped);
            let rel = match ext("x-kubernetes-list-type") {
                Some("set") => ListRel::Set,
                Some("map") => ListRel::Map(
                    s.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                        .unwrap_or_default(),
                ),
                Some(_) => ListRel::Atomic,
                None => match (ext("x-kubernetes-patch-strategy"), ext("x-kubernetes-patch-merge-key")) {
                    (Some(st), key) if st.split(',').any(|p| p == "merge") => match key {
                        Some(k) => ListRel::Map(vec![k.to_string()]),
                        None => ListRel::Set,
                    },
                    _ => ListRel::Atomic,
                },
            };
            Ty::list(elem, rel)
        }
        Some(_) => Ty::Scalar,
        None => Ty::Untyped,
    }
}

/// An object: named fields, and the type of any other key.
#[derive(Debug, Default)]
pub struct MapTy {
    pub fields: BTreeMap<String, Ty>,
    /// The type of keys that are not fields (`additionalProperties`); `None`: there are none.
    pub elem: Option<Ty>,
    /// Replaced as a whole, never merged (`x-kubernetes-map-type: atomic`).
    pub atomic: bool,
}

#[derive(Debug)]
pub struct ListTy {
    pub elem: Ty,
    pub rel: ListRel,
}

/// How a list's items are told apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListRel {
    /// Replaced as a whole.
    Atomic,
    /// Scalars, each item its own member.
    Set,
    /// Objects told apart by these key fields.
    Map(Vec<String>),
}

impl Ty {
    pub fn map(fields: BTreeMap<String, Ty>, elem: Option<Ty>, atomic: bool) -> Ty {
        Ty::Map(Arc::new(MapTy { fields, elem, atomic }))
    }

    pub fn list(elem: Ty, rel: ListRel) -> Ty {
        Ty::List(Arc::new(ListTy { elem, rel }))
    }

    /// The definition behind a name; any other type as it is.
    pub fn resolve(&self) -> Ty {
        match self {
            Ty::Named(name, defs) => defs.get(name),
            other => other.clone(),
        }
    }

    /// The type of a map's field or element.
    fn field(&self, name: &str) -> Option<Ty> {
        match self.resolve() {
            Ty::Map(m) => m.fields.get(name).cloned().or_else(|| m.elem.clone()),
            Ty::Untyped => Some(Ty::Untyped),
            Ty::Opaque => Some(Ty::Opaque),
            _ => None,
        }
    }

    fn is_named_field(&self, name: &str) -> bool {
        matches!(self.resolve(), Ty::Map(m) if m.fields.contains_key(name))
    }

    /// The type of what a path element reaches from this type.
    pub fn child(&self, pe: &PathElement) -> Ty {
        match (pe, self.resolve()) {
            (PathElement::Field(name), t) => t.field(name).unwrap_or(Ty::Untyped),
            (_, Ty::List(l)) => l.elem.clone(),
            (_, Ty::Opaque) => Ty::Opaque,
            _ => Ty::Untyped,
        }
    }
}

/// One step of a field path, ordered as structured-merge-diff orders them: fields, then keys,
/// then values, then indexes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    Field(String),
    /// A list item by its key fields (sorted by name; values as compact JSON).
    Key(Vec<(String, String)>),
    /// A set item by its value (compact JSON).
    Value(String),
    Index(usize),
}

pub type Path = Vec<PathElement>;

impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(n) => write!(f, ".{n}"),
            PathElement::Key(kv) => {
                let parts: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// `.spec.containers[name="app"].image`, as in conflict messages.
pub fn path_string(p: &[PathElement]) -> String {
    p.iter().map(ToString::to_string).collect()
}

impl PathElement {
    /// The `fieldsV1` key: `f:name`, `k:{"name":"app"}`, `v:"x"`, `i:0`.
    fn encode(&self) -> String {
        match self {
            PathElement::Field(n) => format!("f:{n}"),
            PathElement::Key(kv) => {
                let inner: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                    .collect();
                format!("k:{{{}}}", inner.join(","))
            }
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<PathElement> {
        let (kind, rest) = s.split_at_checked(2)?;
        match kind {
            "f:" => Some(PathElement::Field(rest.to_string())),
            "k:" => {
                let v: Map<String, Value> = serde_json::from_str(rest).ok()?;
                Some(PathElement::Key(
                    v.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
                ))
            }
            "v:" => {
                let v: Value = serde_json::from_str(rest).ok()?;
                Some(PathElement::Value(v.to_string()))
            }
            "i:" => rest.parse().ok().map(PathElement::Index),
            _ => None,
        }
    }
}

/// A set of field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<PathElement, Node>,
}

impl Node {
    fn insert(&mut self, p: &[PathElement]) {
        match p.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (pe, child) in &self.children {
            m.insert(pe.encode(), child.to_json());
        }
        Value::Object(m)
    }

    /// Members first, then children, each in order: the order conflicts are reported in.
    fn walk(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        for (pe, child) in &self.children {
            if child.member {
                prefix.push(pe.clone());
                out.push(prefix.clone());
                prefix.pop();
            }
        }
        for (pe, child) in &self.children {
            if !child.children.is_empty() {
                prefix.push(pe.clone());
                child.walk(prefix, out);
                prefix.pop();
            }
        }
    }
}

impl FieldSet {
    pub fn new() -> Self {
        FieldSet::default()
    }

    pub fn insert(&mut self, p: Path) {
        self.0.insert(p);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn union(&self, o: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&o.0).cloned().collect())
    }

    pub fn difference(&self, o: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&o.0).cloned().collect())
    }

    pub fn intersection(&self, o: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&o.0).cloned().collect())
    }

    /// The `fieldsV1` JSON of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Node::default();
        for p in &self.0 {
            root.insert(p);
        }
        root.to_json()
    }

    /// Parses `fieldsV1`; unknown keys are ignored.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        fn go(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
            let Some(m) = v.as_object() else { return };
            for (k, child) in m {
                if k == "." {
                    if !prefix.is_empty() {
                        out.insert(prefix.clone());
                    }
                    continue;
                }
                let Some(pe) = PathElement::decode(k) else {
                    continue;
                };
                prefix.push(pe);
                if child.as_object().is_none_or(Map::is_empty) {
                    out.insert(prefix.clone());
                } else {
                    go(child, prefix, out);
                }
                prefix.pop();
            }
        }
        let mut out = BTreeSet::new();
        go(v, &mut Vec::new(), &mut out);
        FieldSet(out)
    }

    /// The paths in the order structured-merge-diff iterates them.
    pub fn ordered(&self) -> Vec<Path> {
        let mut root = Node::default();
        for p in &self.0 {
            root.insert(p);
        }
        let mut out = Vec::new();
        root.walk(&mut Vec::new(), &mut out);
        out
    }

    /// Adds every struct field that has members below it (`spec` for `spec.replicas`), but not
    /// map keys or list items: what pruning after an apply treats as owned.
    pub fn with_named_fields(&self, ty: &Ty) -> FieldSet {
        let mut out = self.0.clone();
        for p in &self.0 {
            let mut t = ty.clone();
            for n in 0..p.len().saturating_sub(1) {
                if let PathElement::Field(name) = &p[n] {
                    if t.is_named_field(name) {
                        out.insert(p[..=n].to_vec());
                    }
                }
                t = t.child(&p[n]);
            }
        }
        FieldSet(out)
    }
}

fn compact(v: &Value) -> String {
    v.to_string()
}

/// The path element of a list item.
fn item_element(rel: &ListRel, index: usize, item: &Value) -> PathElement {
    match rel {
        ListRel::Set => PathElement::Value(compact(item)),
        ListRel::Map(keys) => {
            let mut kv: Vec<(String, String)> = keys
                .iter()
                .filter_map(|k| match item.get(k) {
                    Some(v) => Some((k.clone(), compact(v))),
                    // The one list key with a default (ports): the server would default it.
                    None if k == "protocol" => Some((k.clone(), "\"TCP\"".into())),
                    None => None,
                })
                .collect();
            kv.sort();
            if kv.is_empty() {
                PathElement::Index(index)
            } else {
                PathElement::Key(kv)
            }
        }
        ListRel::Atomic => PathElement::Index(index),
    }
}

/// What a value is, given its type: a leaf, a granular map or a granular list.
enum Shape {
    Leaf,
    Map(Option<Arc<MapTy>>),
    List(Arc<ListTy>),
}

fn shape(ty: &Ty, v: Option<&Value>) -> Shape {
    match (ty.resolve(), v) {
        (Ty::Map(m), Some(Value::Object(_) | Value::Null) | None) if !m.atomic => Shape::Map(Some(m)),
        (Ty::List(l), Some(Value::Array(_) | Value::Null) | None) if l.rel != ListRel::Atomic => Shape::List(l),
        (Ty::Untyped, Some(Value::Object(_))) => Shape::Map(None),
        _ => Shape::Leaf,
    }
}

fn map_child_ty(m: &Option<Arc<MapTy>>, key: &str) -> Ty {
    match m {
        Some(m) => m
            .fields
            .get(key)
            .cloned()
            .or_else(|| m.elem.clone())
            .unwrap_or(Ty::Untyped),
        None => Ty::Untyped,
    }
}

fn is_field(m: &Option<Arc<MapTy>>, key: &str) -> bool {
    m.as_ref().is_some_and(|m| m.fields.contains_key(key))
}

/// The fields a value sets (structured-merge-diff's `ToFieldSet`): every leaf, every list
/// item, map entries that are not named fields, and null or empty maps.
pub fn field_set(ty: &Ty, v: &Value) -> FieldSet {
    fn go(ty: &Ty, v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        match shape(ty, Some(v)) {
            Shape::Leaf => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
            Shape::Map(m) => {
                let Some(obj) = v.as_object() else { return };
                for (k, child) in obj {
                    path.push(PathElement::Field(k.clone()));
                    go(&map_child_ty(&m, k), child, path, out);
                    let empty_map = child.as_object().is_some_and(Map::is_empty);
                    if child.is_null() || empty_map || !is_field(&m, k) {
                        out.insert(path.clone());
                    }
                    path.pop();
                }
            }
            Shape::List(l) => {
                let Some(items) = v.as_array() else { return };
                for (i, item) in items.iter().enumerate() {
                    path.push(item_element(&l.rel, i, item));
                    go(&l.elem, item, path, out);
                    out.insert(path.clone());
                    path.pop();
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    go(ty, v, &mut Vec::new(), &mut out);
    FieldSet(out)
}

/// How a new version of an object differs from the old one, as sets of paths.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    pub fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

/// Compares two versions of a value (structured-merge-diff's `Compare`): leaves that
/// appeared, changed or vanished, and granular maps, lists and items that appeared or vanished.
/// A null counts as present.
pub fn compare(ty: &Ty, old: &Value, new: &Value) -> Comparison {
    let mut c = Comparison::default();
    cmp(ty, Some(old), Some(new), &mut Vec::new(), &mut c);
    c
}

fn cmp(ty: &Ty, l: Option<&Value>, r: Option<&Value>, path: &mut Path, c: &mut Comparison) {
    let (ls, rs) = (shape(ty, l), shape(ty, r));
    let leaf = |c: &mut Comparison, path: &Path| {
        if path.is_empty() {
            return;
        }
        match (l, r) {
            (None, Some(_)) => c.added.insert(path.clone()),
            (Some(_), None) => c.removed.insert(path.clone()),
            (Some(a), Some(b)) if a != b => c.modified.insert(path.clone()),
            _ => {}
        }
    };
    match (ls, rs) {
        (Shape::Map(m), Shape::Map(_)) => {
            let empty = Map::new();
            let lm = l.and_then(Value::as_object).unwrap_or(&empty);
            let rm = r.and_then(Value::as_object).unwrap_or(&empty);
            let keys: BTreeSet<&String> = lm.keys().chain(rm.keys()).collect();
            for k in keys {
                path.push(PathElement::Field(k.clone()));
                cmp(&map_child_ty(&m, k), lm.get(k), rm.get(k), path, c);
                path.pop();
            }
            post(l, r, path, c);
        }
        (Shape::List(lt), Shape::List(_)) => {
            let items = |v: Option<&Value>| -> Vec<(PathElement, Value)> {
                let mut seen = BTreeSet::new();
                v.and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, item)| (item_element(&lt.rel, i, item), item.clone()))
                    .filter(|(pe, _)| seen.insert(pe.clone()))
                    .collect()
            };
            let (li, ri) = (items(l), items(r));
            let lmap: BTreeMap<&PathElement, &Value> = li.iter().map(|(p, v)| (p, v)).collect();
            let rmap: BTreeMap<&PathElement, &Value> = ri.iter().map(|(p, v)| (p, v)).collect();
            let keys: BTreeSet<&PathElement> = lmap.keys().chain(rmap.keys()).copied().collect();
            for pe in keys {
                path.push(pe.clone());
                let (a, b) = (lmap.get(pe).copied(), rmap.get(pe).copied());
                match shape(&lt.elem, a.or(b)) {
                    Shape::Leaf => leaf_at(a, b, path, c),
                    _ => cmp(&lt.elem, a, b, path, c),
                }
                path.pop();
            }
            post(l, r, path, c);
        }
        (Shape::Leaf, Shape::Leaf) => leaf(c, path),
        _ => {
            // A map became a scalar or the like: both sides are handled on their own.
            cmp_one_side(ty, l, None, path, c);
            cmp_one_side(ty, None, r, path, c);
            leaf(c, path);
        }
    }
}

fn leaf_at(l: Option<&Value>, r: Option<&Value>, path: &Path, c: &mut Comparison) {
    match (l, r) {
        (None, Some(_)) => c.added.insert(path.clone()),
        (Some(_), None) => c.removed.insert(path.clone()),
        (Some(a), Some(b)) if a != b => c.modified.insert(path.clone()),
        _ => {}
    }
}

fn cmp_one_side(ty: &Ty, l: Option<&Value>, r: Option<&Value>, path: &mut Path, c: &mut Comparison) {
    if let Shape::Map(m) = shape(ty, l.or(r)) {
        let Some(obj) = l.or(r).and_then(Value::as_object) else {
            return;
        };
        for (k, v) in obj {
            path.push(PathElement::Field(k.clone()));
            let (a, b) = if l.is_some() { (Some(v), None) } else { (None, Some(v)) };
            cmp(&map_child_ty(&m, k), a, b, path, c);
            path.pop();
        }
    }
}

fn post(l: Option<&Value>, r: Option<&Value>, path: &Path, c: &mut Comparison) {
    if path.is_empty() {
        return;
    }
    match (l, r) {
        (None, Some(_)) => c.added.insert(path.clone()),
        (Some(_), None) => c.removed.insert(path.clone()),
        _ => {}
    }
}

/// Merges an applied configuration into a live object (structured-merge-diff's `Merge`):
/// granular maps key by key, associative lists item by item (the live object's items in their
/// order, then the configuration's new ones), everything else replaced by the configuration.
pub fn merge(ty: &Ty, live: &Value, config: &Value) -> Value {
    match (shape(ty, Some(live)), shape(ty, Some(config))) {
        (Shape::Map(m), Shape::Map(_)) => {
            let (Some(lm), Some(cm)) = (live.as_object(), config.as_object()) else {
                return config.clone();
            };
            let mut out = lm.clone();
            for (k, cv) in cm {
                let merged = match lm.get(k) {
                    Some(lv) => merge(&map_child_ty(&m, k), lv, cv),
                    None => cv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Shape::List(l), Shape::List(_)) => {
            let (Some(li), Some(ci)) = (live.as_array(), config.as_array()) else {
                return config.clone();
            };
            let mut config_items: Vec<(PathElement, &Value)> = Vec::new();
            for (i, item) in ci.iter().enumerate() {
                let pe = item_element(&l.rel, i, item);
                if !config_items.iter().any(|(p, _)| p == &pe) {
                    config_items.push((pe, item));
                }
            }
            let mut out = Vec::new();
            let mut seen = BTreeSet::new();
            for (i, item) in li.iter().enumerate() {
                let pe = item_element(&l.rel, i, item);
                if !seen.insert(pe.clone()) {
                    continue;
                }
                match config_items.iter().find(|(p, _)| p == &pe) {
                    Some((_, cv)) => out.push(merge(&l.elem, item, cv)),
                    None => out.push(item.clone()),
                }
            }
            for (pe, item) in config_items {
                if !seen.contains(&pe) {
                    out.push(item.clone());
                }
            }
            Value::Array(out)
        }
        _ => config.clone(),
    }
}

/// Removes every path of `set` (with everything below it) from a value.
pub fn remove(ty: &Ty, v: &mut Value, set: &FieldSet) {
    // Deepest first, so that list positions found by key stay valid.
    let mut paths: Vec<&Path> = set.0.iter().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in paths {
        remove_one(ty, v, p);
    }
}

fn remove_one(ty: &Ty, v: &mut Value, p: &[PathElement]) {
    let Some((first, rest)) = p.split_first() else {
        return;
    };
    let child_ty = ty.child(first);
    match (first, v) {
        (PathElement::Field(name), Value::Object(m)) => {
            if rest.is_empty() {
                m.remove(name);
            } else if let Some(c) = m.get_mut(name) {
                remove_one(&child_ty, c, rest);
            }
        }
        (pe, Value::Array(items)) => {
            let rel = match ty.resolve() {
                Ty::List(l) => l.rel.clone(),
                _ => ListRel::Atomic,
            };
            let pos = items
                .iter()
                .enumerate()
                .position(|(i, item)| &item_element(&rel, i, item) == pe);
            if let Some(pos) = pos {
                if rest.is_empty() {
                    items.remove(pos);
                } else {
                    remove_one(&child_ty, &mut items[pos], rest);
                }
            }
        }
        _ => {}
    }
}

/// Drops the keys of objects that their type does not declare (what decoding into a Go struct
/// does to a built-in object).
pub fn prune_undeclared(ty: &Ty, v: &mut Value) {
    match (ty.resolve(), v) {
        (Ty::Map(m), Value::Object(obj)) => {
            if m.elem.is_none() {
                obj.retain(|k, _| m.fields.contains_key(k));
            }
            for (k, child) in obj.iter_mut() {
                let t = m.fields.get(k).cloned().or_else(|| m.elem.clone());
                if let Some(t) = t {
                    prune_undeclared(&t, child);
                }
            }
        }
        (Ty::List(l), Value::Array(items)) => {
            for item in items {
                prune_undeclared(&l.elem, item);
            }
        }
        _ => {}
    }
}

/// The first key (`.spec.bogus`) a typed value has that its type does not declare.
pub fn first_undeclared(ty: &Ty, v: &Value) -> Option<String> {
    fn go(ty: &Ty, v: &Value, path: &str) -> Option<String> {
        match (ty.resolve(), v) {
            (Ty::Map(m), Value::Object(obj)) => obj.iter().find_map(|(k, child)| {
                let p = format!("{path}.{k}");
                match m.fields.get(k).or(m.elem.as_ref()) {
                    Some(t) => go(t, child, &p),
                    None => Some(p),
                }
            }),
            (Ty::List(l), Value::Array(items)) => items.iter().enumerate().find_map(|(i, item)| {
                let pe = item_element(&l.rel, i, item);
                go(&l.elem, item, &format!("{path}{pe}"))
            }),
            _ => None,
        }
    }
    go(ty, v, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn configmap() -> Ty {
        Ty::map(
            BTreeMap::from([
                ("data".to_string(), Ty::map(BTreeMap::new(), Some(Ty::Scalar), false)),
                (
                    "metadata".to_string(),
                    Ty::map(
                        BTreeMap::from([
                            ("name".to_string(), Ty::Scalar),
                            ("labels".to_string(), Ty::map(BTreeMap::new(), Some(Ty::Scalar), false)),
                        ]),
                        None,
                        false,
                    ),
                ),
                (
                    "items".to_string(),
                    Ty::list(
                        Ty::map(
                            BTreeMap::from([("name".to_string(), Ty::Scalar), ("v".to_string(), Ty::Scalar)]),
                            None,
                            false,
                        ),
                        ListRel::Map(vec!["name".into()]),
                    ),
                ),
            ]),
            None,
            false,
        )
    }

    #[test]
    fn an_objects_field_set_has_leaves_and_map_entries_but_not_struct_fields() {
        let v = json!({"metadata": {"name": "a"}, "data": {"k": "v"}, "items": [{"name": "x", "v": 1}]});
        let set = field_set(&configmap(), &v);
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:data": {"f:k": {}}, "f:items": {"k:{\"name\":\"x\"}": {".": {}, "f:name": {}, "f:v": {}}}, "f:metadata": {"f:name": {}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()), set);
    }

    #[test]
    fn a_comparison_marks_added_maps_as_members() {
        let old = json!({"metadata": {"name": "a"}});
        let new = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let c = compare(&configmap(), &old, &new);
        assert_eq!(
            c.added.to_fields_v1(),
            json!({"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:x": {}}}})
        );
        assert!(c.modified.is_empty() && c.removed.is_empty());
    }

    #[test]
    fn merging_keeps_live_list_items_before_the_new_ones() {
        let live = json!({"items": [{"name": "a", "v": 1}, {"name": "b", "v": 2}]});
        let config = json!({"items": [{"name": "b", "v": 3}, {"name": "c"}]});
        assert_eq!(
            merge(&configmap(), &live, &config),
            json!({"items": [{"name": "a", "v": 1}, {"name": "b", "v": 3}, {"name": "c"}]})
        );
    }

    #[test]
    fn conflict_paths_print_as_the_api_server_prints_them() {
        let p = vec![
            PathElement::Field("spec".into()),
            PathElement::Key(vec![("name".into(), "\"app\"".into())]),
            PathElement::Field("image".into()),
        ];
        assert_eq!(path_string(&p), ".spec[name=\"app\"].image");
    }
}
