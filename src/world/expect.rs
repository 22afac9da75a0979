//! What a rehearsal checks afterwards: every object as the world seeded it, unchanged unless an
//! expectation says how it changed (or that it is gone, or that the run created it), and the
//! run's step records.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::Seeded;
use crate::cluster::{api_for_object, object_diff, Registry};
use crate::fieldpath::{self, FieldPath};
use crate::reactor::ValueFrom;

/// Expectations after a rehearsal, per object: field values (`fields`), fields equal to a field
/// of another object (`sameAs`: a token handed from one cluster to another), fields that must
/// differ from what the world seeded (`changed`: a new uid, a generated token), that the object
/// is gone (`absent`), or that the run created it (`created`). Every other world object must be
/// unchanged. With `strict: true`, an object named by an expectation may change only in the
/// fields the expectation names (or lists in `mayChange`), and no object may appear that no
/// expectation names. `steps` and `onFailure` give the run's step records in order.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectations {
    /// The run's expected result, when it is not `Succeeded`: a failover whose fence of the
    /// lost site cannot succeed ends `SucceededWithErrors`, and a rehearsal proving that passes.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Nothing else changed: named objects change only in the fields their expectation names,
    /// and every object that appeared (in the namespaces and kinds the world and the
    /// expectations use, or written by the plan) is named by an expectation.
    #[serde(default)]
    pub strict: bool,
    /// The run's steps, in order: each a name (it succeeded) or `{name: status}` (`Succeeded`,
    /// `Skipped`, `Failed`, `Pending`: never reached; `Succeeded|Skipped` for a step a param
    /// decides on). Every step record must be listed.
    #[serde(default)]
    pub steps: Option<Vec<StepExpectation>>,
    /// The compensation (`onFailure`) steps that ran, in order, in the same form.
    #[serde(default)]
    pub on_failure: Option<Vec<StepExpectation>>,
    pub expect: Vec<Expectation>,
}

/// One step of `steps`/`onFailure`: `name` (succeeded) or `{name: status}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StepExpectation {
    Succeeded(String),
    WithStatus(BTreeMap<String, String>),
}

impl StepExpectation {
    fn parts(&self) -> Result<(String, String), String> {
        match self {
            StepExpectation::Succeeded(name) => Ok((name.clone(), "Succeeded".into())),
            StepExpectation::WithStatus(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                Ok((k.clone(), v.clone()))
            }
            StepExpectation::WithStatus(m) => Err(format!(
                "a step expectation is a name or {{name: status}} with one entry, not {m:?}"
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectation {
    pub cluster: String,
    pub api_version: String,
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    /// fieldPath → expected value.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
    /// fieldPath → a field it must equal: of this object unless `cluster`, `apiVersion`,
    /// `resource`, `namespace` or `name` say otherwise.
    #[serde(default)]
    pub same_as: BTreeMap<String, ValueFrom>,
    /// Fields whose value must differ from the one the world seeded (a missing field never
    /// counts as changed). `metadata.uid` here means re-created: its creation time may change too.
    #[serde(default)]
    pub changed: Vec<String>,
    /// Fields that may change without a value being asserted (with `strict`): what a
    /// controller writes along (`status.conditions`, a `lastTransitionTime`).
    #[serde(default)]
    pub may_change: Vec<String>,
    /// The object must not exist.
    #[serde(default)]
    pub absent: bool,
    /// The object must exist and must not have existed when the world was seeded: the run (or
    /// an operator answering it) created it.
    #[serde(default)]
    pub created: bool,
}

impl Expectation {
    fn object(&self) -> Seeded {
        Seeded {
            cluster: self.cluster.clone(),
            api_version: self.api_version.clone(),
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            before: Value::Null,
        }
    }

    /// Whether this expectation is about `s` (apiVersion, resource, namespace and name on the
    /// same cluster).
    fn names(&self, s: &Seeded) -> bool {
        self.cluster == s.cluster
            && self.api_version == s.api_version
            && self.resource == s.resource
            && self.namespace == s.namespace
            && self.name == s.name
    }

    /// The JSON Pointers of the fields this expectation lets change (with `strict`), in the
    /// object as it was and as it is: a JSONPath filter covers the elements it selects in
    /// either, never the rest of their list.
    fn covered(&self, versions: &[&Value]) -> Vec<String> {
        let mut paths: Vec<String> = (self.fields.keys())
            .chain(self.same_as.keys())
            .chain(&self.changed)
            .chain(&self.may_change)
            .filter_map(|p| FieldPath::parse(p).ok())
            .flat_map(|p| versions.iter().flat_map(move |v| p.pointers(v)).collect::<Vec<_>>())
            .collect();
        // A re-created object is another object: its creation time and its whole status are
        // new (the fields named still say what they must be).
        if self.changed.iter().any(|c| c == "metadata.uid") {
            paths.push("/metadata/creationTimestamp".into());
            paths.push("/status".into());
        }
        paths.sort();
        paths.dedup();
        paths
    }
}

/// The fields a JSON Patch operation changes: an object it adds or replaces counts as each of
/// its fields (adding `metadata.annotations` with one annotation changes that annotation).
fn leaves(op: &Value) -> Vec<String> {
    fn walk(path: String, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    walk(format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")), v, out);
                }
            }
            _ => out.push(path),
        }
    }
    let path = op.get("path").and_then(Value::as_str).unwrap_or("").to_string();
    let mut out = Vec::new();
    match (op.get("op").and_then(Value::as_str), op.get("value")) {
        (Some("add" | "replace"), Some(v)) => walk(path, v, &mut out),
        _ => out.push(path),
    }
    out
}

/// Reads every seeded object again and returns the ones that changed.
pub async fn changes(registry: &Registry, seeded: &[Seeded]) -> Vec<(Seeded, Value)> {
    let mut out = Vec::new();
    for s in seeded {
        let after = s.current(registry).await.unwrap_or(Value::Null);
        let diff = object_diff(&s.before, &after);
        if diff.as_array().is_some_and(|a| !a.is_empty()) {
            out.push((s.clone(), after));
        }
    }
    out
}

/// One kind in one namespace of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Scope {
    cluster: String,
    api_version: String,
    resource: String,
    namespace: String,
}

/// Every object, by name, in the namespaces and kinds a rehearsal watches: taken after the
/// world is seeded, so that what appears afterwards can be told.
#[derive(Debug, Default)]
pub struct Inventory {
    objects: BTreeMap<Scope, std::collections::BTreeSet<String>>,
}

impl Inventory {
    /// Lists the objects of every (namespaced) kind and namespace the seeded objects and the
    /// expectations name. Cluster-scoped kinds are left out: other users of a shared cluster
    /// create namespaces and volumes.
    pub async fn take(registry: &Registry, seeded: &[Seeded], expectations: &Expectations) -> Result<Self, String> {
        let mut scopes: Vec<Scope> = seeded
            .iter()
            .cloned()
            .chain(expectations.expect.iter().map(Expectation::object))
            .filter_map(|s| {
                Some(Scope {
                    namespace: s.namespace?,
                    cluster: s.cluster,
                    api_version: s.api_version,
                    resource: s.resource,
                })
            })
            .collect();
        scopes.sort();
        scopes.dedup();
        let mut objects = BTreeMap::new();
        for scope in scopes {
            // A kind the cluster does not serve has nothing in it (an expectation naming it
            // fails on its own).
            if registry
                .resolve(&scope.cluster, &scope.api_version, &scope.resource)
                .await
                .is_err()
            {
                continue;
            }
            let names = list(registry, &scope).await?;
            objects.insert(scope, names);
        }
        Ok(Inventory { objects })
    }

    /// The objects in the same scopes that were not there when this was taken, and those that
    /// were and are gone.
    async fn compare(&self, registry: &Registry) -> Result<(Vec<Seeded>, Vec<Seeded>), String> {
        let (mut appeared, mut gone) = (Vec::new(), Vec::new());
        for (scope, before) in &self.objects {
            let now = list(registry, scope).await?;
            let object = |name: &String| Seeded {
                cluster: scope.cluster.clone(),
                api_version: scope.api_version.clone(),
                resource: scope.resource.clone(),
                namespace: Some(scope.namespace.clone()),
                name: name.clone(),
                before: Value::Null,
            };
            appeared.extend(now.difference(before).map(object));
            gone.extend(before.difference(&now).map(object));
        }
        Ok((appeared, gone))
    }

    fn had(&self, s: &Seeded) -> Option<bool> {
        let scope = Scope {
            cluster: s.cluster.clone(),
            api_version: s.api_version.clone(),
            resource: s.resource.clone(),
            namespace: s.namespace.clone()?,
        };
        self.objects.get(&scope).map(|names| names.contains(&s.name))
    }
}

async fn list(registry: &Registry, scope: &Scope) -> Result<std::collections::BTreeSet<String>, String> {
    let resolved = registry
        .resolve(&scope.cluster, &scope.api_version, &scope.resource)
        .await
        .map_err(|e| format!("{}: {e}", scope.cluster))?;
    if !resolved.namespaced {
        return Ok(Default::default());
    }
    let api = api_for_object(registry, &scope.cluster, &resolved, Some(&scope.namespace)).map_err(|e| e.to_string())?;
    let list = api
        .list(&Default::default())
        .await
        .map_err(|e| format!("{}: listing {}: {e}", scope.cluster, scope.resource))?;
    Ok(list.items.into_iter().filter_map(|o| o.metadata.name).collect())
}

/// What a value is, for a message telling a number from a string.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Checks expectations; returns one message per failure.
pub async fn check(registry: &Registry, seeded: &[Seeded], expectations: &Expectations) -> Vec<String> {
    verify(registry, seeded, None, &[], expectations).await
}

/// Checks expectations, and with `strict` what appeared since `inventory` was taken and what the
/// plan wrote (`written`: objects as step records name them, `v1 configmaps db/x on cluster
/// edge`). Returns one message per failure.
pub async fn verify(
    registry: &Registry,
    seeded: &[Seeded],
    inventory: Option<&Inventory>,
    written: &[String],
    expectations: &Expectations,
) -> Vec<String> {
    let mut failures = Vec::new();
    for e in &expectations.expect {
        let s = e.object();
        let found = s.current(registry).await;
        let obj = match (found, e.absent) {
            (Ok(_), true) => {
                failures.push(format!("{}: exists, expected it gone", s.describe()));
                continue;
            }
            (Err(err), true) if err.contains("NotFound") || err.contains("not found") => continue,
            (Ok(o), false) => o,
            (Err(err), _) => {
                failures.push(format!("{}: {err}", s.describe()));
                continue;
            }
        };
        let field = |obj: &Value, path: &str| FieldPath::parse(path).ok().and_then(|p| p.get(obj).ok().flatten());
        // A Secret's values are never printed, not even in a failed expectation.
        let secret = s.api_version == "v1" && s.resource == "secrets";
        let shown = |v: &Option<Value>| match v {
            None => "<missing>".to_string(),
            Some(_) if secret => "<redacted>".to_string(),
            Some(v) => fieldpath::as_text(v),
        };
        // Typed: the number 3 is not the string "3"; the message says which is which.
        let differs = |got: &Option<Value>, want: &Value| -> Option<String> {
            match got {
                Some(g) if g == want => None,
                Some(g) if fieldpath::as_text(g) == fieldpath::as_text(want) => Some(format!(
                    "{} ({}), expected {} ({})",
                    shown(got),
                    kind_of(g),
                    shown(&Some(want.clone())),
                    kind_of(want)
                )),
                _ => Some(format!("{}, expected {}", shown(got), shown(&Some(want.clone())))),
            }
        };
        for (path, want) in &e.fields {
            if let Some(why) = differs(&field(&obj, path), want) {
                failures.push(format!("{}: {path} is {why}", s.describe()));
            }
        }
        for (path, other) in &e.same_as {
            let o = Seeded {
                cluster: other.object.cluster.clone().unwrap_or_else(|| s.cluster.clone()),
                api_version: (other.object.api_version.clone()).unwrap_or_else(|| s.api_version.clone()),
                resource: (other.object.resource.clone()).unwrap_or_else(|| s.resource.clone()),
                namespace: (other.object.namespace.clone()).or_else(|| s.namespace.clone()),
                name: other.object.name.clone().unwrap_or_else(|| s.name.clone()),
                before: Value::Null,
            };
            let want = match o.current(registry).await {
                Ok(o) => field(&o, &other.field_path),
                Err(err) => {
                    failures.push(format!("{}: {err}", o.describe()));
                    continue;
                }
            };
            let got = field(&obj, path);
            let why = match &want {
                Some(w) => differs(&got, w),
                None => Some(format!("{}, expected {}", shown(&got), shown(&want))),
            };
            if let Some(why) = why {
                failures.push(format!(
                    "{}: {path} is {why}: the same as {} {}",
                    s.describe(),
                    o.describe(),
                    other.field_path,
                ));
            }
        }
        let before = seeded.iter().find(|b| e.names(b));
        if e.created {
            let existed = before.is_some() || inventory.and_then(|i| i.had(&s)) == Some(true);
            if existed {
                failures.push(format!(
                    "{}: expected the run to create it, but it existed before",
                    s.describe()
                ));
            }
        }
        for path in &e.changed {
            let Some(before) = before else {
                failures.push(format!("{}: `changed` needs an object the world seeded", s.describe()));
                break;
            };
            let (was, now) = (field(&before.before, path), field(&obj, path));
            if now.is_none() || was == now {
                failures.push(format!(
                    "{}: {path} is {}, expected it to change from {}",
                    s.describe(),
                    shown(&now),
                    shown(&was)
                ));
            }
        }
        // Nothing else changed in it.
        if let (true, Some(before)) = (expectations.strict, before) {
            let covered = e.covered(&[&before.before, &obj]);
            let diff = object_diff(&before.before, &obj);
            let mut stray: Vec<String> = diff
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(leaves)
                .filter(|p| !covered.iter().any(|c| p == c || p.starts_with(&format!("{c}/"))))
                .collect();
            stray.dedup();
            if !stray.is_empty() {
                failures.push(format!(
                    "{}: changed in {} too, which the expectation does not name (add them to \
                     `fields`, or to `mayChange` if any value will do)",
                    s.describe(),
                    stray.join(", ")
                ));
            }
        }
    }
    for (s, _) in changes(registry, seeded).await {
        if !expectations.expect.iter().any(|e| e.names(&s)) {
            failures.push(format!("{}: changed, but no expectation names it", s.describe()));
        }
    }
    if expectations.strict {
        if let Some(inventory) = inventory {
            match inventory.compare(registry).await {
                Ok((appeared, gone)) => {
                    for s in appeared {
                        if !expectations.expect.iter().any(|e| e.names(&s)) {
                            failures.push(format!("{}: created, but no expectation names it", s.describe()));
                        }
                    }
                    // An object the world did not seed (it was there before, or an operator
                    // made it) that the run deleted: a selector that reached too far. The
                    // seeded ones are judged above, as changed.
                    for s in gone {
                        let seeded_or_named =
                            seeded.iter().any(|b| b.same_object(&s)) || expectations.expect.iter().any(|e| e.names(&s));
                        if !seeded_or_named {
                            failures.push(format!(
                                "{}: deleted, but no expectation names it (expect it `absent: true` if the run \
                                 should delete it)",
                                s.describe()
                            ));
                        }
                    }
                }
                Err(e) => failures.push(format!("listing what the run created and deleted: {e}")),
            }
        }
        for w in written {
            let named = expectations.expect.iter().any(|e| {
                let o = e.object();
                as_in_record(&o) == *w
            });
            if !named {
                failures.push(format!("{w}: written by the run, but no expectation names it"));
            }
        }
    }
    failures
}

/// A seeded object as step records name it (`v1 configmaps db/x on cluster edge`).
pub fn as_in_record(s: &Seeded) -> String {
    format!(
        "{} on cluster {}",
        crate::cluster::describe_object(&s.api_version, &s.resource, s.namespace.as_deref(), &s.name),
        s.cluster
    )
}

/// Checks `steps` and `onFailure` against the run's step records; one message per failure.
pub fn check_steps(expectations: &Expectations, record: &crate::record::RunRecord) -> Vec<String> {
    let mut failures = Vec::new();
    for (what, want, got) in [
        ("steps", &expectations.steps, &record.steps),
        ("onFailure", &expectations.on_failure, &record.on_failure),
    ] {
        let Some(want) = want else { continue };
        let want: Vec<(String, String)> = match want.iter().map(StepExpectation::parts).collect() {
            Ok(w) => w,
            Err(e) => {
                failures.push(format!("{what}: {e}"));
                continue;
            }
        };
        let got: Vec<(String, String)> = got
            .iter()
            .map(|s| {
                let status = serde_json::to_value(s.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                (s.name.clone(), status)
            })
            .collect();
        let show = |l: &[(String, String)]| {
            l.iter()
                .map(|(n, st)| format!("{n} ({st})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let same = want.len() == got.len()
            && want
                .iter()
                .zip(&got)
                .all(|((wn, ws), (gn, gs))| wn == gn && ws.split('|').any(|w| w.trim().eq_ignore_ascii_case(gs)));
        if !same {
            failures.push(format!("{what} ran as [{}], expected [{}]", show(&got), show(&want)));
        }
    }
    failures
}
