//! `metadata.managedFields` (pure, no I/O): who owns which fields, as kube-apiserver v1.36's
//! field manager keeps it — with an entry of its own per manager for writes through the status
//! subresource, and without the fields a write's strategy resets. An update (POST, PUT, any non-apply PATCH) gives its manager the
//! fields it added or changed and takes them from everyone else; a server-side apply owns
//! exactly the fields of its configuration, reports conflicts with other owners of fields whose
//! values it changes (unless forced), and removes the fields it owned before and no longer
//! applies when no one else owns them.
//!
//! The merge and field-set algebra live in [`super::typed`]; this module keeps the entries.

use serde_json::{json, Map, Value};

use super::status::{Cause, StatusError};
use super::typed::{self, FieldSet, PathElement, Ty};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    /// `status` for writes through the status subresource.
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: Option<String>,
    pub set: FieldSet,
}

impl Entry {
    fn same_manager(&self, manager: &str, op: Operation, api_version: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == op
            && self.subresource.as_deref() == subresource
            && (op == Operation::Apply || self.api_version == api_version)
    }

    /// How conflicts name this manager: `"kubectl"`, or `"curl" using v1` for an updater.
    fn shown(&self) -> String {
        match self.operation {
            Operation::Apply => format!("{:?}", self.manager),
            Operation::Update => format!("{:?} using {}", self.manager, self.api_version),
        }
    }

    /// The identifier conflicts are sorted by.
    fn sort_key(&self) -> String {
        match self.operation {
            Operation::Apply => json!({"manager": self.manager, "operation": "Apply"}).to_string(),
            Operation::Update => format!(
                "{{\"manager\":{},\"operation\":\"Update\",\"apiVersion\":{}}}",
                Value::String(self.manager.clone()),
                Value::String(self.api_version.clone())
            ),
        }
    }
}

/// Who writes, in which version, and when.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub now: &'a str,
    /// `status` for writes through the status subresource.
    pub subresource: Option<&'a str>,
    /// Top-level fields this write cannot own (the strategy resets them): `status` for a
    /// kind with a status subresource, `spec` for its status subresource.
    pub reset: &'a [&'a str],
}

impl Writer<'_> {
    /// `set` without the fields under [`Writer::reset`].
    fn owned(&self, set: &FieldSet) -> FieldSet {
        let mut out = FieldSet::new();
        for p in set.ordered() {
            let reset = matches!(p.first(), Some(PathElement::Field(f)) if self.reset.contains(&f.as_str()));
            if !reset {
                out.insert(p);
            }
        }
        out
    }
}

/// The entries of one object.
#[derive(Clone, Debug, Default)]
pub struct Managed {
    pub entries: Vec<Entry>,
}

/// The fields the field manager never records.
fn stripped() -> FieldSet {
    let mut s = FieldSet::new();
    let f = |n: &str| PathElement::Field(n.to_string());
    s.insert(vec![f("apiVersion")]);
    s.insert(vec![f("kind")]);
    s.insert(vec![f("metadata")]);
    for m in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        s.insert(vec![f("metadata"), f(m)]);
    }
    s
}

/// An object without its `managedFields`, as the field manager compares objects.
pub fn without_managed_fields(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    o
}

impl Managed {
    /// Reads `metadata.managedFields`.
    pub fn decode(obj: &Value) -> Managed {
        let entries = obj
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some(Entry {
                    subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                    manager: e.get("manager")?.as_str()?.to_string(),
                    operation: match e.get("operation")?.as_str()? {
                        "Apply" => Operation::Apply,
                        _ => Operation::Update,
                    },
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    time: e.get("time").and_then(Value::as_str).map(str::to_string),
                    set: FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
                })
            })
            .collect();
        Managed { entries }
    }

    /// Writes `metadata.managedFields` (sorted as the API server sorts them; left out when
    /// empty).
    pub fn encode(&self, obj: &mut Value) {
        let mut entries: Vec<&Entry> = self.entries.iter().filter(|e| !e.set.is_empty()).collect();
        entries.sort_by(|a, b| {
            a.operation
                .cmp(&b.operation)
                .then_with(|| seconds(&a.time).cmp(&seconds(&b.time)))
                .then_with(|| a.manager.cmp(&b.manager))
                .then_with(|| a.api_version.cmp(&b.api_version))
        });
        let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        if entries.is_empty() {
            meta.remove("managedFields");
            return;
        }
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("manager".into(), json!(e.manager));
                m.insert("operation".into(), json!(e.operation.as_str()));
                if let Some(s) = &e.subresource {
                    m.insert("subresource".into(), json!(s));
                }
                m.insert("apiVersion".into(), json!(e.api_version));
                if let Some(t) = &e.time {
                    m.insert("time".into(), json!(t));
                }
                m.insert("fieldsType".into(), json!("FieldsV1"));
                m.insert("fieldsV1".into(), e.set.to_fields_v1());
                Value::Object(m)
            })
            .collect();
        meta.insert("managedFields".into(), Value::Array(list));
    }

    fn position(&self, manager: &str, op: Operation, api_version: &str, subresource: Option<&str>) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.same_manager(manager, op, api_version, subresource))
    }

    fn drop_empty(&mut self) {
        self.entries.retain(|e| !e.set.is_empty());
    }

    /// Records an update of `live` into `new` by `manager`. `creating` says whether `live` is
    /// the empty object of a create; an existing object nobody tracks stays untracked.
    pub fn update(&mut self, ty: &Ty, live: &Value, new: &Value, w: &Writer, creating: bool) {
        let (manager, api_version, now) = (w.manager, w.api_version, w.now);
        if self.entries.is_empty() && !creating {
            return;
        }
        let c = typed::compare(ty, &without_managed_fields(live), &without_managed_fields(new));
        // What the strategy resets was not written, and stays with its owners.
        let taken = w.owned(&c.modified.union(&c.added));
        let removed = w.owned(&c.removed);
        for e in &mut self.entries {
            e.set = e.set.difference(&taken).difference(&removed);
        }
        let mine = taken.difference(&removed);
        if !mine.is_empty() {
            let mine = mine.difference(&stripped());
            match self.position(manager, Operation::Update, api_version, w.subresource) {
                Some(i) => {
                    // The updated entry goes last (entries with the same time keep this order).
                    let mut e = self.entries.remove(i);
                    e.set = e.set.union(&mine);
                    e.time = Some(now.to_string());
                    self.entries.push(e);
                }
                None => self.entries.push(Entry {
                    manager: manager.to_string(),
                    operation: Operation::Update,
                    subresource: w.subresource.map(str::to_string),
                    api_version: api_version.to_string(),
                    time: Some(now.to_string()),
                    set: mine,
                }),
            }
        }
        if let Some(i) = self.position(manager, Operation::Update, api_version, w.subresource) {
            let e = &mut self.entries[i];
            e.set = e.set.difference(&stripped());
        }
        self.drop_empty();
    }

    /// Applies `config` to `live` for the writer: returns the merged object, or a 409 naming
    /// every conflict. `existing` is the kind's empty object when the object exists, `None`
    /// when the apply creates it.
    pub fn apply(
        &mut self,
        ty: &Ty,
        live: &Value,
        config: &Value,
        w: &Writer,
        force: bool,
        existing: Option<&Value>,
    ) -> Result<Value, StatusError> {
        let (manager, api_version, now) = (w.manager, w.api_version, w.now);
        let live = without_managed_fields(live);
        if let Some(zero) = existing.filter(|_| self.entries.is_empty()) {
            // Fields set before the first apply get an owner of their own.
            let before = Writer {
                manager: "before-first-apply",
                ..*w
            };
            self.update(ty, zero, &live, &before, true);
        }
        let set = w.owned(&typed::field_set(ty, config).difference(&stripped()));
        let last = self
            .position(manager, Operation::Apply, "", w.subresource)
            .map(|i| self.entries[i].set.clone());
        let mut merged = typed::merge(ty, &live, config);

        // Stop owning what this configuration no longer sets.
        if let Some(last) = &last {
            let mut owned = set.clone();
            for e in &self.entries {
                if !e.same_manager(manager, Operation::Apply, "", w.subresource) {
                    owned = owned.union(&e.set);
                }
            }
            let merged_set = typed::field_set(ty, &merged).with_named_fields(ty);
            let gone = merged_set
                .intersection(&last.with_named_fields(ty))
                .difference(&owned.with_named_fields(ty));
            typed::remove(ty, &mut merged, &gone);
        }

        let c = typed::compare(ty, &live, &merged);
        let taken = w.owned(&c.modified.union(&c.added));
        let mut conflicts: Vec<(&Entry, Vec<typed::Path>)> = Vec::new();
        for e in &self.entries {
            if e.same_manager(manager, Operation::Apply, "", w.subresource) {
                continue;
            }
            let clash = e.set.intersection(&taken);
            if !clash.is_empty() {
                conflicts.push((e, clash.ordered()));
            }
        }
        if !force && !conflicts.is_empty() {
            return Err(conflict_error(&mut conflicts));
        }
        for e in &mut self.entries {
            if e.same_manager(manager, Operation::Apply, "", w.subresource) {
                continue;
            }
            e.set = e.set.difference(&taken).difference(&w.owned(&c.removed));
        }
        let changed = !c.is_same();
        match self.position(manager, Operation::Apply, "", w.subresource) {
            Some(i) => {
                let e = &mut self.entries[i];
                e.set = set;
                e.api_version = api_version.to_string();
                if changed {
                    e.time = Some(now.to_string());
                }
            }
            None => self.entries.push(Entry {
                manager: manager.to_string(),
                operation: Operation::Apply,
                subresource: w.subresource.map(str::to_string),
                api_version: api_version.to_string(),
                time: changed.then(|| now.to_string()),
                set,
            }),
        }
        self.drop_empty();
        Ok(if changed { merged } else { live })
    }
}

fn seconds(t: &Option<String>) -> String {
    t.clone().unwrap_or_default()
}

fn conflict_error(conflicts: &mut [(&Entry, Vec<typed::Path>)]) -> StatusError {
    let mut causes = Vec::new();
    for (e, paths) in conflicts.iter() {
        for p in paths {
            causes.push(Cause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with {}", e.shown()),
                field: typed::path_string(p),
            });
        }
    }
    let message = if causes.len() == 1 {
        let (e, paths) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            e.shown(),
            typed::path_string(&paths[0])
        )
    } else {
        conflicts.sort_by_key(|(e, _)| e.sort_key());
        let mut lines = Vec::new();
        for (e, paths) in conflicts.iter() {
            lines.push(format!("conflicts with {}:", e.shown()));
            for p in paths {
                lines.push(format!("- {}", typed::path_string(p)));
            }
        }
        format!("Apply failed with {} conflicts: {}", causes.len(), lines.join("\n"))
    };
    StatusError::new(409, "Conflict", message).with_details(json!({
        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin;

    fn cm_ty() -> Ty {
        builtin::definition("io.k8s.api.core.v1.ConfigMap")
    }

    fn w(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            now: "2026-01-01T00:00:00Z",
            subresource: None,
            reset: &[],
        }
    }

    #[test]
    fn a_create_is_owned_by_its_writer_without_bookkeeping_fields() {
        let mut m = Managed::default();
        let new = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        m.update(&cm_ty(), &builtin::zero("ConfigMap"), &new, &w("curl"), true);
        assert_eq!(
            m.entries[0].set.to_fields_v1(),
            json!({"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:x": {}}}})
        );
    }

    #[test]
    fn applying_a_value_another_manager_owns_conflicts_unless_forced() {
        let ty = cm_ty();
        let mut m = Managed::default();
        let zero = builtin::zero("ConfigMap");
        let a =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": "1", "b": "2"}});
        let live = m.apply(&ty, &zero, &a, &w("alice"), false, None).unwrap();
        let b =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": "3", "c": "2"}});
        let err = m
            .clone()
            .apply(&ty, &live, &b, &w("bob"), false, Some(&zero))
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"alice\": .data.a"
        );
        let merged = m.apply(&ty, &live, &b, &w("bob"), true, Some(&zero)).unwrap();
        assert_eq!(merged["data"], json!({"a": "3", "b": "2", "c": "2"}));
        let alice = m.entries.iter().find(|e| e.manager == "alice").unwrap();
        assert_eq!(alice.set.to_fields_v1(), json!({"f:data": {"f:b": {}}}));
    }

    #[test]
    fn reapplying_without_a_field_removes_it_when_no_one_else_owns_it() {
        let ty = cm_ty();
        let mut m = Managed::default();
        let zero = builtin::zero("ConfigMap");
        let a =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": "1", "b": "2"}});
        let live = m.apply(&ty, &zero, &a, &w("alice"), false, None).unwrap();
        let a2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": "1"}});
        let merged = m.apply(&ty, &live, &a2, &w("alice"), false, Some(&zero)).unwrap();
        assert_eq!(merged["data"], json!({"a": "1"}));
    }
}
