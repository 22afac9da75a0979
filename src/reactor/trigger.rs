//! What fires a reactor: its `when`, compiled, and the state of the watched object it compares
//! each watch event with.

use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::Value;

use super::spec::ReactorWhen;
use crate::fieldpath::{self, FieldPath};

/// What fires a reactor, compiled from its `when`.
#[derive(Debug)]
pub(super) enum Trigger {
    Equals(FieldPath, Value),
    Exists(FieldPath),
    Changed(FieldPath),
    Deleted,
}

impl Trigger {
    pub(super) fn of(when: &ReactorWhen) -> Result<Self, String> {
        let path = || -> Result<FieldPath, String> {
            let p = when.field_path.as_deref().ok_or("`when` needs a `fieldPath`")?;
            FieldPath::parse(p).map_err(|e| e.to_string())
        };
        let kinds = usize::from(when.equals.is_some())
            + usize::from(when.exists)
            + usize::from(when.changed)
            + usize::from(when.deleted);
        if kinds != 1 || when.deleted && when.field_path.is_some() {
            return Err("`when` needs a `fieldPath` with one of `equals`, `exists: true` or \
                        `changed: true`, or `deleted: true` without a `fieldPath`"
                .into());
        }
        Ok(match &when.equals {
            Some(v) => Trigger::Equals(path()?, v.clone()),
            None if when.exists => Trigger::Exists(path()?),
            None if when.changed => Trigger::Changed(path()?),
            None => Trigger::Deleted,
        })
    }
}

/// Follows the watched object through its watch events and says when the reactor fires. A
/// delete is noticed however the watch tells it: a `Delete` event, or a re-list (after the
/// watch expired) in which the object is missing or has another uid.
#[derive(Debug)]
pub(super) struct Tracker {
    trigger: Trigger,
    /// The object as last seen; kept after it is deleted (what `recreate` applies).
    pub(super) last: Option<Value>,
    /// Whether the object exists, as far as the events told.
    present: bool,
    /// Whether `Equals`/`Exists` held at the last event; the value at the path for `Changed`.
    held: bool,
    value: Option<Value>,
    /// Between a re-list's `Init` and `InitDone`: whether the object was listed.
    relisting: Option<bool>,
}

impl Tracker {
    pub(super) fn new(trigger: Trigger) -> Self {
        Tracker {
            trigger,
            last: None,
            present: false,
            held: false,
            value: None,
            relisting: None,
        }
    }

    /// Takes one watch event; true when the reactor fires.
    pub(super) fn observe(&mut self, ev: watcher::Event<Value>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.relisting = Some(false);
                false
            }
            watcher::Event::InitApply(obj) => {
                if let Some(seen) = self.relisting.as_mut() {
                    *seen = true;
                }
                self.apply(obj)
            }
            watcher::Event::Apply(obj) => self.apply(obj),
            watcher::Event::InitDone => {
                let listed = self.relisting.take().unwrap_or(true);
                // Deleted while the watch was down: the re-list no longer has it.
                !listed && self.present && self.deleted()
            }
            watcher::Event::Delete(obj) => {
                let fire = self.deleted();
                self.last = Some(obj);
                fire
            }
        }
    }

    pub(super) fn uid(obj: &Value) -> Option<&str> {
        obj.pointer("/metadata/uid").and_then(Value::as_str)
    }

    /// The object went; true for a `Deleted` trigger.
    fn deleted(&mut self) -> bool {
        self.present = false;
        self.held = false;
        self.value = None;
        matches!(self.trigger, Trigger::Deleted)
    }

    fn apply(&mut self, obj: Value) -> bool {
        // Another uid than the one seen: the object was deleted and re-created in between.
        let mut fire = false;
        if self.present
            && self.last.as_ref().and_then(Self::uid).is_some()
            && self.last.as_ref().and_then(Self::uid) != Self::uid(&obj)
        {
            fire = self.deleted();
        }
        self.present = true;
        fire |= match &self.trigger {
            Trigger::Equals(path, equals) => {
                let now = matches(path, &obj, equals);
                let fire = now && !self.held;
                self.held = now;
                fire
            }
            Trigger::Exists(path) => {
                let now = path.get(&obj).ok().flatten().is_some_and(|v| !v.is_null());
                let fire = now && !self.held;
                self.held = now;
                fire
            }
            Trigger::Changed(path) => {
                let now = path.get(&obj).ok().flatten();
                let fire = now != self.value;
                self.value = now;
                fire
            }
            Trigger::Deleted => false,
        };
        self.last = Some(obj);
        fire
    }
}

/// A watch event with the object as JSON.
pub(super) fn as_json(ev: watcher::Event<DynamicObject>) -> watcher::Event<Value> {
    let json = |o: DynamicObject| serde_json::to_value(o).unwrap_or_default();
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply(json(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(json(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(json(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn matches(path: &FieldPath, obj: &Value, equals: &Value) -> bool {
    path.get(obj)
        .ok()
        .flatten()
        .is_some_and(|v| &v == equals || fieldpath::as_text(&v) == fieldpath::as_text(equals))
}
