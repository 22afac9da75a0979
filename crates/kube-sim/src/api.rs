//! The API verbs of one simulated cluster (in memory): get, list, create, update (PUT),
//! patch (merge, JSON, strategic, server-side apply), delete and delete-collection, on a
//! resource or its `status` subresource, in the order kube-apiserver v1.20 does things —
//! decode (prune, default), record `managedFields`, admission (the namespace must exist), the
//! create/update strategy (status kept apart from the rest, `generation`), validation,
//! preconditions, and a write only when something changed — with `dryRun=All` stopping just
//! before the write.
//!
//! HTTP parsing and encoding live in [`super::http`]; storage in [`super::store`].

use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use super::builtin;
use super::discovery::ResourceType;
use super::managed::{without_managed_fields, Managed, Writer};
use super::patch;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{Cause, StatusError};
use super::store::{self, key, EventType, Key, Store};
use super::strict;
use super::typed;

/// The object or collection a request is about.
#[derive(Clone, Debug)]
pub struct Target {
    pub ty: ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What a write request asked for besides its body.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub user_agent: String,
    pub force: Option<bool>,
    /// What to do about unknown and duplicate fields.
    pub field_validation: strict::Mode,
    /// The fields of the request body, for duplicates and their order.
    pub body_fields: strict::BodyFields,
    /// `Warning` headers for the response (unknown or duplicate fields with `Warn`).
    pub warnings: Arc<Mutex<Vec<String>>>,
}

impl WriteOptions {
    /// Unknown and duplicate fields: a 400 naming them with `fieldValidation=Strict`, a warning
    /// each with `Warn`.
    fn check_fields(&self, ty: &ResourceType, obj: &Value) -> Result<(), StatusError> {
        if self.field_validation == strict::Mode::Ignore {
            return Ok(());
        }
        let unknown = unknown_fields(ty, obj);
        let problems = strict::problems(&self.body_fields, &unknown, ty.is_custom());
        if problems.is_empty() {
            return Ok(());
        }
        if self.field_validation == strict::Mode::Strict {
            return Err(strict::strict_error(&ty.kind, &ty.version, &problems));
        }
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).extend(problems);
        Ok(())
    }

    /// Runs a write with CRD validation rules evaluated outside the store lock; the warnings
    /// of an attempt given up for the rules are dropped.
    fn gated<T>(&self, mut write: impl FnMut() -> Result<T, StatusError>) -> Result<T, StatusError> {
        let warnings = || self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        let mark = warnings().len();
        super::cel::Gate::run(|| {
            warnings().truncate(mark);
            write()
        })
    }

    /// The manager of an update: `fieldManager`, else the user agent up to its first `/`.
    fn manager(&self) -> String {
        if let Some(m) = self.field_manager.as_deref().filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        let prefix: String = self
            .user_agent
            .split('/')
            .next()
            .unwrap_or("")
            .chars()
            .take(128)
            .collect();
        if prefix.is_empty() {
            "unknown".into()
        } else {
            prefix
        }
    }
}

/// What a list asked for.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// The manager of the API server's own writes (a CRD's status).
const CONTROLLER_MANAGER: &str = "kube-apiserver-v1.36.2";

/// One cluster: its storage behind a lock (every verb is short and synchronous; CRD validation
/// rules, which may not be, run with the lock released).
pub struct Cluster {
    pub name: String,
    pub store: Mutex<Store>,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if let Some(o) = obj.as_object_mut() {
        let m = o.entry("metadata").or_insert_with(|| json!({}));
        if !m.is_object() {
            *m = json!({});
        }
        if let Some(m) = m.as_object_mut() {
            if v.is_null() {
                m.remove(field);
            } else {
                m.insert(field.to_string(), v);
            }
        }
    }
}

/// An object as a response shows it: the requested version's apiVersion and kind.
pub fn present(ty: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), json!(ty.api_version()));
        m.insert("kind".into(), json!(ty.kind));
    }
    o
}

fn group_of(ty: &ResourceType) -> &str {
    &ty.group
}

fn not_found(ty: &ResourceType, name: &str) -> StatusError {
    StatusError::not_found(group_of(ty), &ty.plural, name)
}

/// Everything but metadata and status: what bumps `generation` when it changes.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

const GENERATE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    super::cel::stable_suffix(fresh_suffix)
}

fn fresh_suffix() -> String {
    let uid = store::new_uid("generate");
    uid.bytes()
        .filter(u8::is_ascii_hexdigit)
        .take(5)
        .map(|b| GENERATE_CHARS[(b as usize) % GENERATE_CHARS.len()] as char)
        .collect()
}

impl Cluster {
    pub fn new(name: &str) -> Self {
        Cluster {
            name: name.to_string(),
            store: Mutex::new(Store::new(name)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every change from now on (for the controllers).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<store::Event>> {
        self.lock().subscribe()
    }

    /// The resourceVersion of the latest change.
    pub fn last_event_rv(&self) -> u64 {
        self.lock().last_event_rv()
    }

    /// A stored object by resource, namespace and name.
    pub fn stored(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock().get(&key(group, plural, ns, name)).cloned()
    }

    /// A request target for a served resource (its first served version).
    pub fn target(&self, group: &str, plural: &str, ns: &str, name: &str, subresource: Option<&str>) -> Option<Target> {
        let ty = self.lock().resources.find_plural(group, plural)?.clone();
        Some(Target {
            namespace: (ty.namespaced && !ns.is_empty()).then(|| ns.to_string()),
            name: (!name.is_empty()).then(|| name.to_string()),
            subresource: subresource.map(str::to_string),
            ty,
        })
    }

    /// The objects with an owner reference to `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<(Key, Value)> {
        self.lock()
            .objects
            .iter()
            .filter(|(_, o)| {
                o.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect()
    }

    /// The stored objects of one resource in one namespace (`""`: cluster-scoped, or all).
    pub fn objects_of(&self, group: &str, plural: &str, ns: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((g, p, n, _), _)| g == group && p == plural && (ns.is_empty() || n == ns))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Whether any stored object has this uid.
    pub fn exists_uid(&self, uid: &str) -> bool {
        self.lock()
            .objects
            .values()
            .any(|o| o.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid))
    }

    fn key_of(t: &Target, name: &str) -> Key {
        let (g, p) = t.ty.storage_key();
        key(&g, &p, t.namespace.as_deref().unwrap_or(""), name)
    }

    /// GET one object (or its status).
    pub fn get(&self, t: &Target) -> Result<Value, StatusError> {
        let name = t.name.as_deref().unwrap_or_default();
        let s = self.lock();
        let obj = s.get(&Self::key_of(t, name)).ok_or_else(|| not_found(&t.ty, name))?;
        Ok(present(&t.ty, obj))
    }

    /// LIST a collection (in a namespace or across all), with selectors and pages.
    pub fn list(&self, t: &Target, o: &ListOptions) -> Result<Value, StatusError> {
        let s = self.lock();
        let (g, p) = t.ty.storage_key();
        let start = match &o.continue_token {
            Some(tok) => Some(decode_continue(tok)?),
            None => None,
        };
        let mut items = Vec::new();
        let mut more = None;
        let mut remaining = 0usize;
        for ((kg, kp, ns, name), obj) in &s.objects {
            if *kg != g || *kp != p {
                continue;
            }
            if let Some(want) = &t.namespace {
                if ns != want {
                    continue;
                }
            }
            if let Some(start) = &start {
                if (ns.as_str(), name.as_str()) <= (start.0.as_str(), start.1.as_str()) {
                    continue;
                }
            }
            if !o.labels.matches(obj) || !o.fields.matches(obj) {
                continue;
            }
            if let Some(limit) = o.limit.filter(|l| *l > 0) {
                if items.len() >= limit {
                    remaining += 1;
                    if more.is_none() {
                        more = Some(encode_continue(
                            meta_str(&items[items.len() - 1], "namespace").unwrap_or(""),
                            meta_str(&items[items.len() - 1], "name").unwrap_or(""),
                            s.rv(),
                        ));
                    }
                    continue;
                }
            }
            let mut item = present(&t.ty, obj);
            if !t.ty.is_custom() {
                if let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
            }
            items.push(item);
        }
        let mut meta = Map::new();
        meta.insert("resourceVersion".into(), json!(s.rv().to_string()));
        if let Some(c) = more {
            meta.insert("continue".into(), json!(c));
            meta.insert("remainingItemCount".into(), json!(remaining));
        } else if t.ty.is_custom() {
            // An unstructured list always carries its continue token, empty or not.
            meta.insert("continue".into(), json!(""));
        }
        Ok(json!({"apiVersion": t.ty.api_version(), "kind": t.ty.list_kind,
            "metadata": meta, "items": items}))
    }

    /// Checks a request body's kind, version, name and namespace, and fills them in.
    fn check_body(t: &Target, mut obj: Value, url_name: Option<&str>) -> Result<Value, StatusError> {
        let Some(o) = obj.as_object_mut() else {
            return Err(StatusError::bad_request(
                "the body of the request must be a JSON or YAML object",
            ));
        };
        let api_version = t.ty.api_version();
        let kind = t.ty.kind.clone();
        let body_version = o.get("apiVersion").and_then(Value::as_str).map(str::to_string);
        let body_kind = o.get("kind").and_then(Value::as_str).map(str::to_string);
        if t.ty.is_custom() {
            if let Some(v) = body_version.as_deref().filter(|v| *v != api_version) {
                return Err(StatusError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
            if let Some(k) = body_kind.as_deref().filter(|k| *k != kind) {
                return Err(StatusError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({kind})"
                )));
            }
        } else {
            let v = body_version.clone().unwrap_or(api_version.clone());
            if v != api_version {
                return Err(StatusError::bad_request(format!(
                    "{kind} in version {v:?} cannot be handled as a {kind}: no kind {kind:?} is registered for version {v:?} in scheme \"k8s.io/kubernetes/pkg/api/legacyscheme/scheme.go:30\""
                )));
            }
            if let Some(k) = body_kind.as_deref().filter(|k| *k != kind) {
                let group = if t.ty.group.is_empty() {
                    "core"
                } else {
                    t.ty.group.split('.').next().unwrap_or("")
                };
                return Err(StatusError::bad_request(format!(
                    "{k} in version {v:?} cannot be handled as a {kind}: converting ({v}.{k}) to ({group}.{kind}): unknown conversion"
                )));
            }
        }
        o.insert("apiVersion".into(), json!(api_version));
        o.insert("kind".into(), json!(kind));
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if meta.is_null() {
            *meta = json!({});
        }
        if let Some(url_name) = url_name {
            let name = meta_str(&obj, "name").unwrap_or("").to_string();
            if name.is_empty() {
                set_meta(&mut obj, "name", json!(url_name));
            } else if name != url_name {
                return Err(StatusError::bad_request(format!(
                    "the name of the object ({name}) does not match the name on the URL ({url_name})"
                )));
            }
        }
        if t.ty.namespaced {
            let want = t.namespace.clone().unwrap_or_default();
            match meta_str(&obj, "namespace") {
                Some(ns) if !ns.is_empty() && ns != want => {
                    return Err(StatusError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => set_meta(&mut obj, "namespace", json!(want)),
            }
        } else {
            set_meta(&mut obj, "namespace", Value::Null);
        }
        Ok(obj)
    }

    /// What decoding does: unknown fields dropped, defaults set.
    fn decode(ty: &ResourceType, obj: &mut Value) {
        match (&ty.builtin, &ty.schema) {
            (Some(b), _) => {
                let t = ty.ty();
                builtin::default_on_decode(b.kind, obj);
                typed::prune_undeclared(&t, obj);
                builtin::go_roundtrip(b.kind, &t, obj);
            }
            (None, Some(s)) => {
                s.prune(obj);
                s.default(obj);
            }
            (None, None) => {}
        }
    }

    /// Validates an object about to be stored; `old` is the stored one on an update (for CRD
    /// transition rules).
    fn validate(ty: &ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), StatusError> {
        // An object being deleted may lose finalizers, never gain them.
        if let Some(old) = old.filter(|o| o.pointer("/metadata/deletionTimestamp").is_some()) {
            let list = |v: &Value| -> Vec<String> {
                v.pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
                    .unwrap_or_default()
            };
            let before = list(old);
            let added: Vec<String> = list(obj).into_iter().filter(|f| !before.contains(f)).collect();
            if !added.is_empty() {
                let quoted: Vec<String> = added.iter().map(|f| format!("{f:?}")).collect();
                return Err(StatusError::invalid(
                    &ty.group,
                    &ty.kind,
                    meta_str(obj, "name").unwrap_or(""),
                    vec![Cause {
                        reason: "FieldValueForbidden".into(),
                        message: format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                            quoted.join(", ")
                        ),
                        field: "metadata.finalizers".into(),
                    }],
                ));
            }
        }
        if let Some(b) = ty.builtin {
            builtin::validate(b, obj)?;
            if b.kind == "CustomResourceDefinition" {
                validate_crd(obj)?;
            }
            return Ok(());
        }
        let name = meta_str(obj, "name").unwrap_or("");
        let mut causes = Vec::new();
        if !builtin::is_subdomain(name) {
            if let Some(c) = builtin::validate_name("", name) {
                causes.push(c);
            }
        }
        if let Some(s) = &ty.schema {
            causes.extend(s.validate(obj));
        }
        if let Some(scale) = &ty.scale {
            causes.extend(super::schema::validate_scale_paths(obj, scale));
        }
        if let Some(s) = ty.schema.as_ref().filter(|s| super::cel::has_rules(s.raw())) {
            if super::cel::blocks_rules(&causes) {
                causes.push(super::cel::rules_not_checked());
            } else {
                super::cel::check_object(s.shared(), obj, old, &mut causes)?;
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(StatusError::invalid(&ty.group, &ty.kind, name, causes))
        }
    }

    /// Admission: a namespaced object needs its namespace, which must not be terminating.
    fn admit(s: &Store, t: &Target, creating: bool) -> Result<(), StatusError> {
        if !t.ty.namespaced {
            return Ok(());
        }
        let ns = t.namespace.as_deref().unwrap_or("");
        match s.get(&key("", "namespaces", "", ns)) {
            None => Err(StatusError::not_found("", "namespaces", ns)),
            Some(n) if creating && n.pointer("/metadata/deletionTimestamp").is_some() => {
                Err(StatusError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        t.ty.plural,
                        t.name.clone().unwrap_or_default()
                    ),
                )
                .with_details(json!({"name": t.name.clone().unwrap_or_default(), "kind": t.ty.plural,
                    "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]})))
            }
            Some(_) => Ok(()),
        }
    }

    /// The create strategy: fresh metadata, status left to its subresource.
    fn prepare_create(ty: &ResourceType, obj: &mut Value, cluster: &str) {
        match ty.builtin {
            Some(b) => builtin::prepare_for_create(b.kind, obj, &store::now()),
            None => {
                if ty.has_status() {
                    if let Some(o) = obj.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        set_meta(obj, "uid", json!(store::new_uid(cluster)));
        set_meta(obj, "creationTimestamp", json!(store::now()));
        set_meta(obj, "resourceVersion", Value::Null);
        set_meta(obj, "selfLink", Value::Null);
        set_meta(obj, "deletionTimestamp", Value::Null);
        set_meta(obj, "deletionGracePeriodSeconds", Value::Null);
        set_meta(obj, "generation", if ty.generation { json!(1) } else { Value::Null });
        if let Some(b) = ty.builtin {
            builtin::fill_zero(b.kind, obj);
        }
    }

    /// The update strategy: what the client may not change through this endpoint comes from
    /// the live object.
    fn prepare_update(t: &Target, new: &mut Value, live: &Value) {
        let status_only = t.subresource.as_deref() == Some("status");
        if status_only {
            let status = new.get("status").cloned();
            let mf = new.pointer("/metadata/managedFields").cloned();
            *new = live.clone();
            if let Some(o) = new.as_object_mut() {
                match status {
                    Some(s) => o.insert("status".into(), s),
                    None => o.remove("status"),
                };
            }
            set_meta(new, "managedFields", mf.unwrap_or(Value::Null));
        } else if t.ty.has_status() {
            if let Some(o) = new.as_object_mut() {
                match live.get("status") {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
        }
        if t.ty.builtin.is_some_and(|b| b.kind == "Namespace") {
            if let (Some(o), Some(f)) = (new.as_object_mut(), live.pointer("/spec/finalizers")) {
                let spec = o.entry("spec").or_insert_with(|| json!({}));
                if let Some(spec) = spec.as_object_mut() {
                    spec.insert("finalizers".into(), f.clone());
                }
            }
        }
        for f in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
        ] {
            set_meta(
                new,
                f,
                live.get("metadata")
                    .and_then(|m| m.get(f))
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        set_meta(new, "selfLink", Value::Null);
        if t.ty.generation && spec_part(new) != spec_part(live) {
            let g = live
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(new, "generation", json!(g + 1));
        }
        if let Some(b) = t.ty.builtin {
            builtin::fill_zero(b.kind, new);
        }
    }

    /// Creates one object as a client would (for [`crate::Simulator::seed`]), then writes its
    /// `status` through the status subresource. The error names the object.
    pub fn seed(&self, obj: Value) -> Result<Value, (String, StatusError)> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        let name = obj.pointer("/metadata/name").and_then(Value::as_str);
        let what = format!(
            "{kind} {}{}",
            namespace.map(|n| format!("{n}/")).unwrap_or_default(),
            name.unwrap_or("")
        );
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let ty = self
            .lock()
            .resources
            .find_kind(group, version, &kind)
            .cloned()
            .ok_or_else(|| {
                let e = StatusError::bad_request(format!("no kind {kind:?} is served in {api_version:?}"));
                (what.clone(), e)
            })?;
        let mut t = Target {
            namespace: if ty.namespaced {
                Some(namespace.unwrap_or("default").to_string())
            } else {
                None
            },
            ty,
            name: None,
            subresource: None,
        };
        let o = WriteOptions {
            field_manager: Some("kube-sim-seed".to_string()),
            ..Default::default()
        };
        let created = self.create(&t, obj.clone(), &o).map_err(|e| (what.clone(), e))?;
        match obj.get("status") {
            Some(status) if t.ty.has_status() => {
                let mut with_status = created;
                with_status["status"] = status.clone();
                t.name = with_status
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                t.subresource = Some("status".to_string());
                self.replace(&t, with_status, &o).map_err(|e| (what, e))
            }
            _ => Ok(created),
        }
    }

    /// POST: creates an object (CRD validation rules evaluated outside the store lock).
    pub fn create(&self, t: &Target, body: Value, o: &WriteOptions) -> Result<Value, StatusError> {
        o.gated(|| self.create_once(t, body.clone(), o))
    }

    fn create_once(&self, t: &Target, body: Value, o: &WriteOptions) -> Result<Value, StatusError> {
        let mut obj = Self::check_body(t, body, None)?;
        o.check_fields(&t.ty, &obj)?;
        let mut s = self.lock();
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        let name = if name.is_empty() {
            match meta_str(&obj, "generateName").filter(|g| !g.is_empty()) {
                Some(g) => {
                    let n = format!("{g}{}", generate_suffix());
                    set_meta(&mut obj, "name", json!(n));
                    n
                }
                None => String::new(),
            }
        } else {
            name
        };
        Self::decode(&t.ty, &mut obj);
        let now = store::now();
        let mut managed = if obj.pointer("/metadata/managedFields").is_some() {
            Managed::decode(&obj)
        } else {
            Managed::default()
        };
        let (manager, api_version) = (o.manager(), t.ty.api_version());
        let w = Writer {
            manager: &manager,
            api_version: &api_version,
            now: &now,
            subresource: t.subresource.as_deref(),
            reset: reset_fields(t),
        };
        managed.update(&t.ty.ty(), &t.ty.zero(), &obj, &w, true);
        managed.encode(&mut obj);
        let target = Target {
            name: Some(name.clone()),
            ..t.clone()
        };
        Self::admit(&s, &target, true)?;
        if name.is_empty() {
            return Err(StatusError::invalid(
                &t.ty.group,
                &t.ty.kind,
                "",
                vec![Cause::required("metadata.name", "name or generateName is required")],
            ));
        }
        Self::prepare_create(&t.ty, &mut obj, &self.name);
        if t.ty.builtin.is_some_and(|b| b.kind == "Service") {
            allocate_ip(&mut s, &mut obj);
        }
        Self::validate(&t.ty, &obj, None)?;
        let k = Self::key_of(t, &name);
        if s.get(&k).is_some() {
            return Err(StatusError::already_exists(&t.ty.group, &t.ty.plural, &name));
        }
        if o.dry_run {
            return Ok(present(&t.ty, &obj));
        }
        let stored = s.put(k, obj, EventType::Added, None);
        self.after_write(&mut s, &t.ty, &stored);
        Ok(present(&t.ty, &stored))
    }

    /// PUT: replaces an object (or its status; CRD validation rules evaluated outside the store
    /// lock).
    pub fn replace(&self, t: &Target, body: Value, o: &WriteOptions) -> Result<Value, StatusError> {
        o.gated(|| self.replace_once(t, body.clone(), o))
    }

    fn replace_once(&self, t: &Target, body: Value, o: &WriteOptions) -> Result<Value, StatusError> {
        let name = t.name.clone().unwrap_or_default();
        let obj = Self::check_body(t, body, Some(&name))?;
        o.check_fields(&t.ty, &obj)?;
        let mut s = self.lock();
        let k = Self::key_of(t, &name);
        let live = s.get(&k).cloned().ok_or_else(|| not_found(&t.ty, &name))?;
        self.write_update(&mut s, t, &live, obj, o)
    }

    /// The rest of an update, shared by PUT and the non-apply patches.
    fn write_update(
        &self,
        s: &mut Store,
        t: &Target,
        live: &Value,
        mut obj: Value,
        o: &WriteOptions,
    ) -> Result<Value, StatusError> {
        let name = t.name.clone().unwrap_or_default();
        let live_rv = meta_str(live, "resourceVersion").unwrap_or("");
        if t.ty.is_custom() && meta_str(&obj, "resourceVersion").is_none_or(str::is_empty) {
            // Custom resources allow no unconditional update.
            return Err(StatusError::invalid(
                &t.ty.group,
                &t.ty.plural,
                &name,
                vec![Cause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: 0: must be specified for an update".into(),
                    field: "metadata.resourceVersion".into(),
                }],
            ));
        }
        if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|r| !r.is_empty()) {
            if rv != live_rv {
                return Err(StatusError::stale(&t.ty.group, &t.ty.plural, &name));
            }
        }
        if let Some(uid) = meta_str(&obj, "uid").filter(|u| !u.is_empty()) {
            let live_uid = meta_str(live, "uid").unwrap_or("");
            if uid != live_uid {
                return Err(StatusError::conflict(
                    &t.ty.group,
                    &t.ty.plural,
                    &name,
                    &precondition_failed(
                        t,
                        &name,
                        &format!("UID in precondition: {uid}, UID in object meta: {live_uid}"),
                    ),
                ));
            }
        }
        Self::decode(&t.ty, &mut obj);
        let now = store::now();
        let mut managed = match obj.pointer("/metadata/managedFields") {
            Some(Value::Array(a)) if a.is_empty() => Managed::default(),
            Some(Value::Array(_)) => {
                let m = Managed::decode(&obj);
                if m.entries.is_empty() {
                    Managed::decode(live)
                } else {
                    m
                }
            }
            _ => Managed::decode(live),
        };
        let reset = matches!(obj.pointer("/metadata/managedFields"), Some(Value::Array(a)) if a.is_empty());
        if !reset {
            let (manager, api_version) = (o.manager(), t.ty.api_version());
            let w = Writer {
                manager: &manager,
                api_version: &api_version,
                now: &now,
                subresource: t.subresource.as_deref(),
                reset: reset_fields(t),
            };
            managed.update(&t.ty.ty(), live, &obj, &w, false);
        }
        managed.encode(&mut obj);
        Self::prepare_update(t, &mut obj, live);
        Self::validate(&t.ty, &obj, Some(live))?;
        self.commit_update(s, t, live, obj, o)
    }

    /// Writes an updated object unless nothing changed; deletes it when its last finalizer
    /// went while it was being deleted.
    fn commit_update(
        &self,
        s: &mut Store,
        t: &Target,
        live: &Value,
        mut obj: Value,
        o: &WriteOptions,
    ) -> Result<Value, StatusError> {
        let name = t.name.clone().unwrap_or_default();
        set_meta(
            &mut obj,
            "resourceVersion",
            live.pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null),
        );
        if obj == *live {
            return Ok(present(&t.ty, live));
        }
        if o.dry_run {
            return Ok(present(&t.ty, &obj));
        }
        let k = Self::key_of(t, &name);
        let no_finalizers = |o: &Value| {
            o.pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        };
        // The API server deletes during an update only one whose finalizers the update removes
        // and whose deletion is not pending a grace period (`shouldDeleteDuringUpdate`): a pod
        // whose status changes while it terminates stays.
        let grace_over = live
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_none_or(|g| g == 0);
        if obj.pointer("/metadata/deletionTimestamp").is_some()
            && no_finalizers(&obj)
            && !no_finalizers(live)
            && grace_over
        {
            // Deleted instead of updated, as the API server does: watchers see the deletion,
            // the client the object as it asked for it, at the resourceVersion it had.
            let gone = s.put(k, obj.clone(), EventType::Deleted, Some(live.clone()));
            self.after_delete(s, &t.ty, &gone);
            return Ok(present(&t.ty, &obj));
        }
        let stored = s.put(k, obj, EventType::Modified, Some(live.clone()));
        self.after_write(s, &t.ty, &stored);
        Ok(present(&t.ty, &stored))
    }

    /// PATCH: merge, JSON, strategic merge, or server-side apply. Returns the status code
    /// (201 when an apply created the object) and the object. CRD validation rules are
    /// evaluated outside the store lock.
    pub fn patch(
        &self,
        t: &Target,
        content_type: &str,
        body: &[u8],
        o: &WriteOptions,
    ) -> Result<(u16, Value), StatusError> {
        o.gated(|| self.patch_once(t, content_type, body, o))
    }

    fn patch_once(
        &self,
        t: &Target,
        content_type: &str,
        body: &[u8],
        o: &WriteOptions,
    ) -> Result<(u16, Value), StatusError> {
        let name = t.name.clone().unwrap_or_default();
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let accepted = if t.ty.is_custom() {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        } else {
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
        };
        let known = matches!(
            ct,
            "application/json-patch+json"
                | "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/apply-patch+yaml"
        );
        if !known && !t.ty.is_custom() {
            // Built-in resources are routed by go-restful, which refuses first.
            return Err(restful_unsupported_media_type());
        }
        if !known || (ct == "application/strategic-merge-patch+json" && t.ty.is_custom()) {
            return Err(StatusError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            )));
        }
        if ct == "application/apply-patch+yaml" {
            return self.apply(t, body, o);
        }
        if o.force.is_some() {
            return Err(patch_options_invalid(vec![Cause::forbidden(
                "force",
                "may not be specified for non-apply patch",
            )]));
        }
        let mut s = self.lock();
        let k = Self::key_of(t, &name);
        let live = s.get(&k).cloned().ok_or_else(|| not_found(&t.ty, &name))?;
        let current = present(&t.ty, &live);
        let patched = match ct {
            "application/merge-patch+json" => patch::merge_patch(&current, body)?,
            "application/json-patch+json" => patch::json_patch(&current, body)?,
            _ => {
                let def = t.ty.builtin.map(|b| b.definition).unwrap_or_default();
                patch::strategic_merge_patch(&current, body, def)?
            }
        };
        let obj = Self::check_body(t, patched, Some(&name))?;
        o.check_fields(&t.ty, &obj)?;
        self.write_update(&mut s, t, &live, obj, o).map(|v| (200, v))
    }

    /// Server-side apply.
    fn apply(&self, t: &Target, body: &[u8], o: &WriteOptions) -> Result<(u16, Value), StatusError> {
        let manager = match o.field_manager.as_deref() {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => {
                return Err(patch_options_invalid(vec![Cause::required(
                    "fieldManager",
                    "is required for apply patch",
                )]))
            }
        };
        let name = t.name.clone().unwrap_or_default();
        let text =
            std::str::from_utf8(body).map_err(|e| StatusError::bad_request(format!("error decoding YAML: {e}")))?;
        let config: Value =
            serde_yaml::from_str(text).map_err(|e| StatusError::bad_request(format!("error decoding YAML: {e}")))?;
        if !config.is_object() {
            return Err(StatusError::bad_request(
                "error decoding YAML: the applied configuration must be an object",
            ));
        }
        let version = config.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if version != t.ty.api_version() {
            let (group, v) = version.rsplit_once('/').unwrap_or(("", version));
            let kind = config.get("kind").and_then(Value::as_str).unwrap_or("");
            return Err(StatusError::bad_request(format!(
                "invalid object type: {group}/{v}, Kind={kind}"
            )));
        }
        if let Some(n) = meta_str(&config, "name").filter(|n| !n.is_empty() && *n != name) {
            return Err(StatusError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if config.pointer("/metadata/managedFields").is_some() {
            return Err(StatusError::internal(
                "managed fields must be nil but was set".to_string(),
            ));
        }
        // Undeclared fields in an apply are refused below whatever `fieldValidation` says.
        let ty = t.ty.ty();
        if !matches!(ty, typed::Ty::Untyped) {
            if let Some(p) = typed::first_undeclared(&ty, &config) {
                return Err(StatusError::new(
                    500,
                    "",
                    format!(
                        "failed to create typed patch object ({}/{name}; {}/{}, Kind={}): {p}: field not declared in schema",
                        meta_str(&config, "namespace").unwrap_or(""),
                        t.ty.group,
                        t.ty.version,
                        t.ty.kind
                    ),
                ));
            }
        }
        let mut s = self.lock();
        let k = Self::key_of(t, &name);
        let existing = s.get(&k).cloned();
        let creating = existing.is_none();
        if creating && t.subresource.is_some() {
            return Err(not_found(&t.ty, &name));
        }
        let live = existing.clone().unwrap_or_else(|| t.ty.zero());
        let mut managed = Managed::decode(&live);
        let now = store::now();
        let zero = t.ty.zero();
        let live_plain = present(&t.ty, &without_managed_fields(&live));
        let api_version = t.ty.api_version();
        let w = Writer {
            manager: &manager,
            api_version: &api_version,
            now: &now,
            subresource: t.subresource.as_deref(),
            reset: reset_fields(t),
        };
        let mut obj = managed.apply(
            &ty,
            &live_plain,
            &config,
            &w,
            o.force.unwrap_or(false),
            (!creating).then_some(&zero),
        )?;
        // Defaults after the apply belong to no one.
        Self::decode(&t.ty, &mut obj);
        managed.encode(&mut obj);
        let obj = Self::check_body(t, obj, Some(&name))?;
        match existing {
            None => {
                let mut obj = obj;
                Self::admit(&s, t, true)?;
                Self::prepare_create(&t.ty, &mut obj, &self.name);
                if t.ty.builtin.is_some_and(|b| b.kind == "Service") {
                    allocate_ip(&mut s, &mut obj);
                }
                Self::validate(&t.ty, &obj, None)?;
                if o.dry_run {
                    return Ok((201, present(&t.ty, &obj)));
                }
                let stored = s.put(k, obj, EventType::Added, None);
                self.after_write(&mut s, &t.ty, &stored);
                Ok((201, present(&t.ty, &stored)))
            }
            Some(live) => {
                let mut obj = obj;
                Self::prepare_update(t, &mut obj, &live);
                Self::validate(&t.ty, &obj, Some(&live))?;
                self.commit_update(&mut s, t, &live, obj, o).map(|v| (200, v))
            }
        }
    }

    /// DELETE one object. Returns the status code and body (a `Status`, or the object when
    /// finalizers keep it).
    pub fn delete(&self, t: &Target, options: &Value, o: &WriteOptions) -> Result<(u16, Value), StatusError> {
        let name = t.name.clone().unwrap_or_default();
        let mut s = self.lock();
        let k = Self::key_of(t, &name);
        let live = s.get(&k).cloned().ok_or_else(|| not_found(&t.ty, &name))?;
        let live_uid = meta_str(&live, "uid").unwrap_or("").to_string();
        // The delete path words its precondition failures itself, and names the kind.
        let failed = |why: String| StatusError::conflict(&t.ty.group, &t.ty.kind, &name, &why);
        if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str) {
            if uid != live_uid {
                return Err(failed(format!(
                    "the UID in the precondition ({uid}) does not match the UID in record ({live_uid}). The object might have been deleted and then recreated"
                )));
            }
        }
        if let Some(rv) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            let live_rv = meta_str(&live, "resourceVersion").unwrap_or("");
            if rv != live_rv {
                return Err(failed(format!(
                    "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({live_rv}). The object might have been modified"
                )));
            }
        }
        let is_namespace = t.ty.builtin.is_some_and(|b| b.kind == "Namespace");
        if t.ty.builtin.is_some_and(|b| b.kind == "CustomResourceDefinition")
            && live.pointer("/metadata/deletionTimestamp").is_none()
        {
            return self.start_crd_deletion(&mut s, t, &k, &live, o);
        }
        // Propagation: Orphan drops the dependents' references now; Foreground keeps the
        // object (finalizer `foregroundDeletion`) until the garbage collector has deleted them.
        let policy = options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .or_else(|| (options.get("orphanDependents") == Some(&json!(true))).then_some("Orphan"));
        let mut base = live.clone();
        if live.pointer("/metadata/deletionTimestamp").is_none() && !is_namespace {
            match policy {
                Some("Orphan") if !o.dry_run => orphan_dependents(&mut s, &live_uid),
                Some("Foreground") => {
                    let mut f = finalizer_list(&base);
                    if !f.iter().any(|x| x == "foregroundDeletion") {
                        f.push(json!("foregroundDeletion"));
                    }
                    set_meta(&mut base, "finalizers", Value::Array(f));
                }
                _ => {}
            }
        }
        // A namespace already being emptied: the API server says so (kubectl's second
        // `delete ns` fails), and starts nothing new.
        if is_namespace && live.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(StatusError::conflict(
                "",
                "namespaces",
                &name,
                "The system is ensuring all content is removed from this namespace.  Upon \
                 completion, this namespace will automatically be purged by the system.",
            ));
        }
        let has_finalizers = !finalizer_list(&base).is_empty();
        if t.ty.builtin.is_some_and(|b| b.kind == "Pod") {
            return Self::delete_pod(&mut s, &t.ty, &k, &live, base, options, o);
        }
        if is_namespace || has_finalizers {
            let mut obj = base;
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                set_meta(&mut obj, "deletionTimestamp", json!(store::now()));
                if !is_namespace {
                    set_meta(&mut obj, "deletionGracePeriodSeconds", json!(0));
                }
            }
            if is_namespace {
                if let Some(st) = obj.get_mut("status").and_then(Value::as_object_mut) {
                    st.insert("phase".into(), json!("Terminating"));
                }
            }
            if o.dry_run {
                return Ok((200, present(&t.ty, &obj)));
            }
            let stored = if obj != live {
                s.put(k.clone(), obj, EventType::Modified, Some(live.clone()))
            } else {
                live.clone()
            };
            return Ok((200, present(&t.ty, &stored)));
        }
        if !o.dry_run {
            if let Some(gone) = s.delete(&k) {
                self.after_delete(&mut s, &t.ty, &gone);
            }
        }
        let mut details = Map::new();
        details.insert("name".into(), json!(name));
        if !t.ty.group.is_empty() {
            details.insert("group".into(), json!(t.ty.group));
        }
        details.insert("kind".into(), json!(t.ty.plural));
        details.insert("uid".into(), json!(live_uid));
        Ok((
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": details}),
        ))
    }

    /// Graceful deletion of a pod, as the pod strategy of the API server does it: a pod bound to
    /// a node is marked (deletionTimestamp in the grace period, deletionGracePeriodSeconds) and
    /// stays until a delete with grace 0 (the kubelet's, once its containers have stopped; in
    /// the simulator the controllers' stand-in, `controllers`); a later delete may shorten the
    /// grace period, not lengthen it. An unbound or finished pod goes at once on its first
    /// DELETE; once marked, the grace period stands whatever the pod's phase (kube-apiserver
    /// v1.36.2 decides the grace period of a pod once: a pod that finished since its first
    /// DELETE is not deleted at once by a second one — measured, differential scenario
    /// `podsterminating`). The answer is the pod, as the API server returns it.
    fn delete_pod(
        s: &mut Store,
        ty: &ResourceType,
        k: &Key,
        live: &Value,
        mut obj: Value,
        options: &Value,
        o: &WriteOptions,
    ) -> Result<(u16, Value), StatusError> {
        let bound = live
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            live.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        // A negative grace period is one second (`BeforeDelete`).
        let requested = options
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .map(|g| if g < 0 { 1 } else { g });
        let current = live
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        let marked = live.pointer("/metadata/deletionTimestamp").is_some();
        if marked {
            match (current, requested) {
                // Marked without a grace period, or with 0, and waiting for its finalizers:
                // nothing changes (no write).
                (None | Some(0), _) if !finalizer_list(live).is_empty() => return Ok((200, present(ty, live))),
                // Marked without a grace period, or with 0: it goes now.
                (None | Some(0), _) => {}
                // A pending graceful deletion may only be shortened.
                (Some(c), Some(r)) if r < c => {
                    let deadline = live
                        .pointer("/metadata/deletionTimestamp")
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
                    let when = deadline
                        .and_then(|d| d.checked_add(jiff::SignedDuration::from_secs(r - c)).ok())
                        .map(|d| d.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_else(|| store::in_seconds(r));
                    set_meta(&mut obj, "deletionTimestamp", json!(when));
                    set_meta(&mut obj, "deletionGracePeriodSeconds", json!(r));
                    if o.dry_run {
                        return Ok((200, present(ty, &obj)));
                    }
                    let stored = s.put(k.clone(), obj, EventType::Modified, Some(live.clone()));
                    if r == 0 && finalizer_list(&stored).is_empty() {
                        s.delete(k);
                    }
                    return Ok((200, present(ty, &stored)));
                }
                // Already going, as soon or sooner: nothing changes.
                _ => return Ok((200, present(ty, live))),
            }
        }
        let grace = if !bound || finished || marked {
            0
        } else {
            requested
                .or_else(|| {
                    live.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0)
        };
        set_meta(&mut obj, "deletionTimestamp", json!(store::in_seconds(grace)));
        set_meta(&mut obj, "deletionGracePeriodSeconds", json!(grace));
        if !marked {
            if let Some(g) = live.pointer("/metadata/generation").and_then(Value::as_i64) {
                set_meta(&mut obj, "generation", json!(g + 1));
            }
        }
        if o.dry_run {
            return Ok((200, present(ty, &obj)));
        }
        let stored = s.put(k.clone(), obj, EventType::Modified, Some(live.clone()));
        if grace == 0 && finalizer_list(&stored).is_empty() {
            s.delete(k);
        }
        Ok((200, present(ty, &stored)))
    }

    /// The first DELETE of a CRD marks it: deletionTimestamp, the cleanup finalizer, a
    /// Terminating condition; the objects go later ([`Self::finish_crd_deletion`]).
    fn start_crd_deletion(
        &self,
        s: &mut Store,
        t: &Target,
        k: &Key,
        live: &Value,
        o: &WriteOptions,
    ) -> Result<(u16, Value), StatusError> {
        let mut obj = live.clone();
        set_meta(&mut obj, "deletionTimestamp", json!(store::now()));
        let mut finalizers = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let cleanup = json!("customresourcecleanup.apiextensions.k8s.io");
        if !finalizers.contains(&cleanup) {
            finalizers.push(cleanup);
        }
        set_meta(&mut obj, "finalizers", Value::Array(finalizers));
        let condition = json!({"type": "Terminating", "status": "True",
            "lastTransitionTime": store::now(), "reason": "InstanceDeletionPending",
            "message": "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon"});
        if let Some(st) = obj.get_mut("status").and_then(Value::as_object_mut) {
            let conds = st.entry("conditions").or_insert_with(|| json!([]));
            if !conds.is_array() {
                *conds = json!([]);
            }
            if let Some(c) = conds.as_array_mut() {
                c.retain(|c| c["type"] != "Terminating");
                c.push(condition);
            }
        }
        if o.dry_run {
            return Ok((200, present(&t.ty, &obj)));
        }
        let stored = s.put(k.clone(), obj, EventType::Modified, Some(live.clone()));
        Ok((200, present(&t.ty, &stored)))
    }

    /// DELETE a collection: every object the selectors match; returns them as a list.
    pub fn delete_collection(&self, t: &Target, lo: &ListOptions, o: &WriteOptions) -> Result<Value, StatusError> {
        let list = self.list(t, lo)?;
        let mut out = Vec::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let name = meta_str(item, "name").unwrap_or("").to_string();
            let target = Target {
                name: Some(name),
                ..t.clone()
            };
            if let Ok((_, _)) = self.delete(&target, &Value::Null, o) {
                out.push(item.clone());
            }
        }
        let mut list = list;
        list["items"] = Value::Array(out);
        Ok(list)
    }

    /// What the namespace controller of a real cluster does a little after a namespace was
    /// deleted: delete everything in it (as a client's DELETE would: objects with finalizers
    /// stay until they lose them, pods bound to a node until their grace period is over), then,
    /// once it is empty, the namespace. Until then the namespace stays `Terminating`, with the
    /// controller's conditions saying what remains. Returns whether it is done (the namespace
    /// is gone, or not being deleted).
    pub fn finish_namespace_deletion(&self, ns: &str) -> bool {
        let k = key("", "namespaces", "", ns);
        let contents: Vec<Key> = {
            let s = self.lock();
            if s.get(&k)
                .is_none_or(|n| n.pointer("/metadata/deletionTimestamp").is_none())
            {
                return true;
            }
            s.objects
                .iter()
                .filter(|((_, _, n, _), o)| n == ns && o.pointer("/metadata/deletionTimestamp").is_none())
                .map(|(k, _)| k.clone())
                .collect()
        };
        for (group, plural, _, name) in &contents {
            if let Some(t) = self.target(group, plural, ns, name, None) {
                let _ = self.delete(&t, &json!({}), &WriteOptions::default());
            }
        }
        let mut s = self.lock();
        let remaining = s.objects.keys().filter(|(_, _, n, _)| n == ns).count();
        let Some(live) = s.get(&k).cloned() else {
            return true;
        };
        if remaining == 0 {
            s.delete(&k);
            return true;
        }
        let mut obj = live.clone();
        let mut conditions = namespace_conditions(&s, ns);
        // A condition that says the same keeps its time: nothing is written then.
        let before = live.pointer("/status/conditions").and_then(Value::as_array);
        for c in conditions.as_array_mut().into_iter().flatten() {
            let same = before.into_iter().flatten().find(|b| {
                ["type", "status", "reason", "message"]
                    .iter()
                    .all(|f| b.get(*f) == c.get(*f))
            });
            if let Some(b) = same {
                c["lastTransitionTime"] = b["lastTransitionTime"].clone();
            }
        }
        obj["status"]["conditions"] = conditions;
        if obj != live {
            s.put(k, obj, EventType::Modified, Some(live));
        }
        false
    }

    /// Follow-ups of a write: a CRD is established and its resources served.
    fn after_write(&self, s: &mut Store, ty: &ResourceType, stored: &Value) {
        if ty.builtin.is_none_or(|b| b.kind != "CustomResourceDefinition") {
            return;
        }
        s.refresh_resources();
        let group = stored.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
        let plural = stored
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("");
        s.start_type(group, plural);
        let established = stored
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Established"));
        if established {
            return;
        }
        let mut obj = stored.clone();
        let mut names = stored.pointer("/spec/names").cloned().unwrap_or(json!({}));
        if let Some(n) = names.as_object_mut() {
            builtin::default_crd_names(n);
        }
        let storage = builtin::crd_storage_versions(stored);
        let now = store::now();
        obj["status"] = json!({
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now,
                 "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "lastTransitionTime": now,
                 "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}],
            "storedVersions": storage});
        let name = meta_str(stored, "name").unwrap_or("").to_string();
        let mut managed = Managed::decode(stored);
        let api_version = ty.api_version();
        managed.update(
            &ty.ty(),
            stored,
            &obj,
            &Writer {
                manager: CONTROLLER_MANAGER,
                api_version: &api_version,
                now: &now,
                subresource: Some("status"),
                reset: &["spec"],
            },
            false,
        );
        managed.encode(&mut obj);
        s.put(
            key("apiextensions.k8s.io", "customresourcedefinitions", "", &name),
            obj,
            EventType::Modified,
            Some(stored.clone()),
        );
    }

    /// What the CRD finalizer of a real API server does after a CRD was deleted: delete its
    /// custom resources (those with finalizers stay until they lose them, and stay served), then
    /// drop its finalizer, so the CRD goes with its last finalizer. Returns whether it is done.
    pub fn finish_crd_deletion(&self, name: &str) -> bool {
        let k = key("apiextensions.k8s.io", "customresourcedefinitions", "", name);
        let Some(crd) = self.lock().get(&k).cloned() else {
            return true;
        };
        if crd.pointer("/metadata/deletionTimestamp").is_none() {
            return true;
        }
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let instances: Vec<Key> = self
            .lock()
            .objects
            .keys()
            .filter(|(g, p, _, _)| *g == group && *p == plural)
            .cloned()
            .collect();
        for (g, p, ns, n) in &instances {
            if let Some(t) = self.target(g, p, ns, n, None) {
                let _ = self.delete(&t, &json!({}), &WriteOptions::default());
            }
        }
        let mut s = self.lock();
        let left = s
            .objects
            .keys()
            .filter(|(g, p, _, _)| *g == group && *p == plural)
            .count();
        let Some(live) = s.get(&k).cloned() else {
            return true;
        };
        let mut obj = live.clone();
        if left > 0 {
            set_crd_terminating(
                &mut obj,
                "InstanceDeletionCheck",
                "could not confirm zero CustomResources remaining: timed out waiting for the condition",
            );
            if obj != live {
                s.put(k, obj, EventType::Modified, Some(live));
            }
            return false;
        }
        let finalizers: Vec<Value> = finalizer_list(&live)
            .into_iter()
            .filter(|f| f != "customresourcecleanup.apiextensions.k8s.io")
            .collect();
        if finalizers.is_empty() {
            let ty = s
                .resources
                .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
                .cloned();
            if let (Some(ty), Some(gone)) = (ty, s.delete(&k)) {
                self.after_delete(&mut s, &ty, &gone);
            }
        } else {
            set_meta(&mut obj, "finalizers", Value::Array(finalizers));
            set_crd_terminating(&mut obj, "InstanceDeletionCompleted", "removed all instances");
            s.put(k, obj, EventType::Modified, Some(live));
        }
        true
    }

    /// Follow-ups of a delete: a CRD's objects go with it.
    fn after_delete(&self, s: &mut Store, ty: &ResourceType, gone: &Value) {
        if ty.builtin.is_none_or(|b| b.kind != "CustomResourceDefinition") {
            return;
        }
        let group = gone
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let plural = gone
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let keys: Vec<Key> = s
            .objects
            .keys()
            .filter(|(g, p, _, _)| *g == group && *p == plural)
            .cloned()
            .collect();
        for k in keys {
            s.delete(&k);
        }
        s.refresh_resources();
    }
}

/// The fields (`spec.bogus`) decoding would drop.
fn unknown_fields(ty: &ResourceType, obj: &Value) -> Vec<String> {
    let mut pruned = obj.clone();
    match (&ty.builtin, &ty.schema) {
        (Some(_), _) => typed::prune_undeclared(&ty.ty(), &mut pruned),
        (None, Some(s)) => s.prune(&mut pruned),
        (None, None) => return Vec::new(),
    }
    fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, av) in a {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match b.get(k) {
                        Some(bv) => diff(av, bv, &p, out),
                        None => out.push(p),
                    }
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                    diff(av, bv, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    diff(obj, &pruned, "", &mut out);
    out
}

/// The top-level fields a write to `t` cannot own: a kind with a status subresource keeps its
/// status out of main-resource writes, and its spec out of status writes.
fn reset_fields(t: &Target) -> &'static [&'static str] {
    match t.subresource.as_deref() {
        Some("status") => &["spec"],
        _ if t.ty.has_status() => &["status"],
        _ => &[],
    }
}

fn finalizer_list(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Drops the owner references to `uid` from every object (`propagationPolicy: Orphan`).
fn orphan_dependents(s: &mut Store, uid: &str) {
    let owned: Vec<(Key, Value)> = s
        .objects
        .iter()
        .filter(|(_, o)| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    for (k, before) in owned {
        let mut obj = before.clone();
        if let Some(refs) = obj
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            refs.retain(|r| r["uid"] != uid);
            if refs.is_empty() {
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("ownerReferences");
                }
            }
        }
        s.put(k, obj, EventType::Modified, Some(before));
    }
}

/// go-restful's answer to a content type a built-in route does not consume.
pub fn restful_unsupported_media_type() -> StatusError {
    StatusError::unsupported_media_type("415: Unsupported Media Type").with_details(json!({}))
}

/// Where etcd would keep the object: `/registry/configmaps/ns/name`, custom resources under
/// their group.
fn etcd_key(t: &Target, name: &str) -> String {
    let mut k = String::from("/registry/");
    if t.ty.is_custom() || t.ty.group == "apiextensions.k8s.io" {
        k += &format!("{}/", t.ty.group);
    }
    k += &t.ty.plural;
    if let Some(ns) = &t.namespace {
        k += &format!("/{ns}");
    }
    k + "/" + name
}

/// The storage layer's words for a failed precondition, as the API server passes them on.
fn precondition_failed(t: &Target, name: &str, what: &str) -> String {
    format!(
        "StorageError: invalid object, Code: 4, Key: {}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {what}",
        etcd_key(t, name)
    )
}

fn patch_options_invalid(causes: Vec<Cause>) -> StatusError {
    StatusError::invalid("meta.k8s.io", "PatchOptions", "", causes)
}

fn allocate_ip(s: &mut Store, obj: &mut Value) {
    let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return;
    }
    let ip = match obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
        Some(ip) if !ip.is_empty() => ip.to_string(),
        _ => s.allocate_cluster_ip(),
    };
    let node_ports = matches!(ty, "NodePort" | "LoadBalancer");
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        if node_ports {
            for p in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(p) = p.as_object_mut() {
                    if p.get("nodePort").is_none_or(Value::is_null) {
                        p.insert("nodePort".into(), json!(s.allocate_node_port()));
                    }
                }
            }
        }
    }
}

fn validate_crd(obj: &Value) -> Result<(), StatusError> {
    let name = meta_str(obj, "name").unwrap_or("");
    let plural = obj.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("");
    let group = obj.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
    let mut causes = super::cel::crd_causes(obj);
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let storage = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter(|v| v["storage"] == json!(true)).count())
        .unwrap_or(0);
    if storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &Value::Null,
            "must have exactly one version marked as storage version",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(StatusError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            name,
            causes,
        ))
    }
}

/// The conditions the namespace controller gives a namespace whose content is not all gone.
fn namespace_conditions(s: &Store, ns: &str) -> Value {
    use std::collections::BTreeMap;
    let mut by_resource: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_finalizer: BTreeMap<String, usize> = BTreeMap::new();
    for ((group, plural, n, _), o) in s.objects.iter() {
        if n != ns {
            continue;
        }
        let resource = if group.is_empty() {
            plural.clone()
        } else {
            format!("{plural}.{group}")
        };
        *by_resource.entry(resource).or_default() += 1;
        for f in finalizer_list(o) {
            if let Some(f) = f.as_str() {
                *by_finalizer.entry(f.to_string()).or_default() += 1;
            }
        }
    }
    let now = store::now();
    let list = |m: &BTreeMap<String, usize>, sep: &str| -> String {
        m.iter()
            .map(|(k, n)| format!("{k}{sep}{n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut conditions = vec![
        json!({"type": "NamespaceDeletionDiscoveryFailure", "status": "False", "lastTransitionTime": now,
            "reason": "ResourcesDiscovered", "message": "All resources successfully discovered"}),
        json!({"type": "NamespaceDeletionGroupVersionParsingFailure", "status": "False", "lastTransitionTime": now,
            "reason": "ParsedGroupVersions", "message": "All legacy kube types successfully parsed"}),
        json!({"type": "NamespaceDeletionContentFailure", "status": "False", "lastTransitionTime": now,
            "reason": "ContentDeleted", "message": "All content successfully deleted, may be waiting on finalization"}),
        json!({"type": "NamespaceContentRemaining", "status": "True", "lastTransitionTime": now,
            "reason": "SomeResourcesRemain",
            "message": format!("Some resources are remaining: {}", list(&by_resource, " has "))}),
    ];
    if !by_finalizer.is_empty() {
        conditions.push(json!({"type": "NamespaceFinalizersRemaining", "status": "True",
            "lastTransitionTime": now, "reason": "SomeFinalizersRemain",
            "message": format!("Some content in the namespace has finalizers remaining: {}",
                list(&by_finalizer, " in "))}));
    }
    Value::Array(conditions)
}

/// Sets a CRD's `Terminating` condition.
fn set_crd_terminating(obj: &mut Value, reason: &str, message: &str) {
    let Some(conds) = obj.pointer_mut("/status/conditions").and_then(Value::as_array_mut) else {
        return;
    };
    if let Some(c) = conds.iter_mut().find(|c| c["type"] == "Terminating") {
        if c["reason"] != reason || c["message"] != message {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
            c["lastTransitionTime"] = json!(store::now());
        }
    }
}

fn encode_continue(ns: &str, name: &str, rv: u64) -> String {
    use base64::Engine as _;
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{ns}/{name}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string().as_bytes())
}

fn decode_continue(tok: &str) -> Result<(String, String), StatusError> {
    use base64::Engine as _;
    let bad =
        |why: String| StatusError::bad_request(format!("invalid continue token: continue key is not valid: {why}"));
    // Go's RawURLEncoding: no padding, trailing bits ignored.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = lenient.decode(tok).map_err(|e| match e {
        base64::DecodeError::InvalidByte(at, _) | base64::DecodeError::InvalidLastSymbol(at, _) => {
            bad(format!("illegal base64 data at input byte {at}"))
        }
        other => bad(other.to_string()),
    })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
        // Go's JSON decoder names the first character it could not start a value with.
        let c = bytes.iter().copied().find(|b| !b.is_ascii_whitespace()).unwrap_or(0);
        let shown = if c.is_ascii_graphic() {
            format!("'{}'", c as char)
        } else {
            format!("'\\u{c:04x}'")
        };
        bad(format!("invalid character {shown} looking for beginning of value"))
    })?;
    let start = v["start"]
        .as_str()
        .ok_or_else(|| bad("no start key".into()))?
        .trim_end_matches('\u{0}');
    let (ns, name) = start.split_once('/').unwrap_or(("", start));
    Ok((ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CRD whose custom resources have a validation rule, installed in a fresh API.
    fn api_with_rule() -> Arc<Cluster> {
        let api = Arc::new(Cluster::new("north"));
        api.seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}))
            .unwrap();
        api.seed(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.n > 0", "message": "n must be positive"}]
                }}}}}]}}))
        .unwrap();
        api
    }

    #[test]
    fn validation_rules_are_evaluated_while_the_store_is_unlocked() {
        let api = api_with_rule();
        let t = api
            .target("example.com", "widgets", "ns", "", None)
            .expect("the CRD is served");
        let seen: Arc<Mutex<Vec<bool>>> = Arc::default();
        let (a, s) = (api.clone(), seen.clone());
        super::super::cel::ON_EVALUATE.with(|f| {
            *f.borrow_mut() = Some(Box::new(move || {
                s.lock().unwrap().push(a.store.try_lock().is_ok());
            }))
        });
        let widget = |name: &str, n: i64| {
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": name}, "spec": {"n": n}})
        };
        let o = WriteOptions::default();
        api.create(&t, widget("good", 1), &o).unwrap();
        let refused = api.create(&t, widget("bad", 0), &o).unwrap_err();
        assert_eq!(refused.code, 422);
        assert!(refused.message.contains("n must be positive"), "{refused:?}");
        let named = Target {
            name: Some("good".into()),
            ..t.clone()
        };
        let (code, _) = api
            .patch(&named, "application/merge-patch+json", br#"{"spec": {"n": 2}}"#, &o)
            .unwrap();
        assert_eq!(code, 200);
        assert_eq!(*seen.lock().unwrap(), [true, true, true]);
    }
}
