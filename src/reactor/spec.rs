//! A reactor as a world file writes it: what it watches, what fires it, what it does.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration;
use crate::fieldpath::FieldPath;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reactor {
    pub cluster: String,
    pub when: ReactorWhen,
    /// Delay before `set` (the one-action form), e.g. `500ms`.
    #[serde(default)]
    pub after: Option<String>,
    /// One field to set: the short form of `actions: [{after, set: [..]}]`.
    #[serde(default)]
    pub set: Option<ReactorSet>,
    /// What the "operator" does, in order, each after its own delay.
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// The watched object, and what triggers the reactor: a field becoming `equals`, coming to
/// exist (`exists: true`), or taking any new value (`changed: true`); or the object being
/// deleted (`deleted: true`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactorWhen {
    pub api_version: String,
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub field_path: Option<String>,
    #[serde(default)]
    pub equals: Option<Value>,
    /// Fire when the field comes to exist (not null) — `metadata.deletionTimestamp` for "is
    /// being deleted".
    #[serde(default)]
    pub exists: bool,
    /// Fire whenever the field's value changes (`metadata.generation` for "the spec changed").
    #[serde(default)]
    pub changed: bool,
    #[serde(default)]
    pub deleted: bool,
}

/// Where an action writes or reads: the watched object unless these say otherwise.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// One field to set, to exactly one of: a `value`, a value read now from a field
/// (`valueFrom`, of the watched object or another), or a `generate`d one (`token`: a fresh
/// random token each time). A `status.…` path is written through the status subresource when
/// the resource has one, as an operator would.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactorSet {
    pub field_path: String,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub value_from: Option<ValueFrom>,
    #[serde(default)]
    pub generate: Option<Generate>,
    #[serde(flatten)]
    pub target: ObjectRef,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueFrom {
    pub field_path: String,
    #[serde(flatten)]
    pub object: ObjectRef,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Generate {
    /// A random token (base64 of a JSON document, as CloudNativePG's tokens are).
    Token,
}

/// One step of a reactor, after `after` (counted from the previous step): set fields and
/// conditions (all fields of one object in one patch), create an object (server-side apply),
/// or re-create the watched object as it last was (a new uid; for `deleted` triggers),
/// optionally with another `status`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub set: Vec<ReactorSet>,
    /// Status conditions to set, each replacing the condition of its `type` (the others are
    /// kept); `lastTransitionTime` is now when the condition's status changes.
    #[serde(default)]
    pub conditions: Vec<SetCondition>,
    #[serde(default)]
    pub create: Option<CreateObject>,
    #[serde(default)]
    pub recreate: bool,
    /// With `recreate`: the status the re-created object starts with instead of its last one
    /// (a replacement pod is `Pending`, not the `Running` its predecessor was).
    #[serde(default)]
    pub status: Option<Value>,
}

/// One condition in `status.conditions`, as controllers write them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `"True"`, `"False"` or `"Unknown"`.
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(flatten)]
    pub target: ObjectRef,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateObject {
    #[serde(default)]
    pub cluster: Option<String>,
    pub object: Value,
}

impl Reactor {
    /// A reactor as messages name it: `reactor on north (postgresql.cnpg.io/v1 clusters db/pg-north)`.
    pub fn name(&self) -> String {
        format!(
            "reactor on {} ({})",
            self.cluster,
            crate::cluster::describe_object(
                &self.when.api_version,
                &self.when.resource,
                self.when.namespace.as_deref(),
                &self.when.name
            )
        )
    }
}

/// The actions of a reactor, its short form (`after` + `set`) included, checked.
pub(super) fn actions_of(r: &Reactor) -> Result<Vec<(Duration, Action)>, String> {
    let mut actions = r.actions.clone();
    match (&r.set, actions.is_empty()) {
        (Some(set), true) => actions.push(Action {
            after: r.after.clone(),
            set: vec![set.clone()],
            ..Default::default()
        }),
        (None, false) if r.after.is_none() => {}
        (None, false) => return Err("give `after` in each action, not beside `actions`".into()),
        (Some(_), false) => return Err("give either `set` or `actions`, not both".into()),
        (None, true) => return Err("a reactor needs `set` or `actions`".into()),
    }
    let mut out = Vec::new();
    for (i, a) in actions.into_iter().enumerate() {
        let kinds = usize::from(!a.set.is_empty() || !a.conditions.is_empty())
            + usize::from(a.create.is_some())
            + usize::from(a.recreate);
        if kinds != 1 {
            return Err(format!(
                "action {i} must do exactly one of `set`/`conditions`, `create` or `recreate`"
            ));
        }
        if a.status.is_some() && !a.recreate {
            return Err(format!("action {i}: `status` goes with `recreate` only"));
        }
        for c in &a.conditions {
            if !["True", "False", "Unknown"].contains(&c.status.as_str()) {
                return Err(format!(
                    "condition {:?}: status must be \"True\", \"False\" or \"Unknown\", not {:?}",
                    c.type_, c.status
                ));
            }
        }
        for s in &a.set {
            FieldPath::parse(&s.field_path).map_err(|e| e.to_string())?;
            let sources = usize::from(s.value.is_some())
                + usize::from(s.value_from.is_some())
                + usize::from(s.generate.is_some());
            if sources != 1 {
                return Err(format!(
                    "set {:?} needs exactly one of `value`, `valueFrom` or `generate`",
                    s.field_path
                ));
            }
            if let Some(from) = &s.value_from {
                FieldPath::parse(&from.field_path).map_err(|e| e.to_string())?;
            }
        }
        if a.recreate && !r.when.deleted {
            return Err("`recreate` needs a `deleted: true` trigger".into());
        }
        let after = a
            .after
            .as_deref()
            .map(duration::parse)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        out.push((after, a));
    }
    Ok(out)
}
