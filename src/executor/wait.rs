//! `wait`: pause for a duration, or watch an object until a condition holds. The watch (kube's
//! watcher: list, then watch, re-listing after errors or cut streams) is bounded by the wait's
//! timeout. A condition is compiled once per attempt ([`Cond`]: values rendered, paths parsed,
//! `changed` bound to the value when the step began) and evaluated on the whole object, so
//! `allOf` can compare several fields and `gone` can see the object disappear.

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};

use super::{StepCtx, StepError, StepOutcome};
use crate::duration;
use crate::fieldpath::{self, FieldPath};
use crate::plan::compiled::{Condition, Ordering, Wait};

/// A fixed pause; a dry run records it without sleeping.
async fn pause(d: std::time::Duration, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    if ctx.dry_run() {
        // A dry run proves nothing by sleeping, and must not delay anything.
        return Ok(StepOutcome {
            inputs: Some(json!({
                "duration": duration::format(d),
                "dryRun": format!("would pause for {}", duration::format(d)),
            })),
            ..Default::default()
        });
    }
    (ctx.progress)(format!("pausing for {}", duration::format(d)), d).await;
    tokio::time::sleep(d).await;
    Ok(StepOutcome {
        inputs: Some(json!({"duration": duration::format(d)})),
        ..Default::default()
    })
}

/// The template sources of a condition (the values it compares with).
fn templates(c: &Condition) -> Vec<String> {
    let mut out = Vec::new();
    let mut raw = |v: &Value| out.push(v.to_string());
    match c {
        Condition::Equals(_, v) | Condition::NotEquals(_, v) | Condition::Compare(_, _, v) => raw(v),
        Condition::Recreated(uid) => out.push(uid.clone()),
        Condition::All(list) | Condition::Any(list) => out.extend(list.iter().flat_map(templates)),
        _ => {}
    }
    out
}

pub(super) async fn run(step: &Wait, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let step = match step {
        Wait::Pause(d) => return pause(*d, ctx).await,
        Wait::Until(until) => until,
    };
    let field = step.field_path.as_deref();
    let timeout = step.timeout;
    let (api, name, shown) = ctx.target(&step.target).await?;
    let (api_version, resource) = (&step.target.api_version, &step.target.resource);
    let secret = api_version == "v1" && resource == "secrets";
    let shown_value = |v: &Option<Value>| match v {
        None => "<missing>".to_string(),
        Some(_) if secret => "<redacted>".to_string(),
        Some(v) => fieldpath::as_text(v),
    };

    // The object when the step began, for `changed`. A cluster that is unreachable for a while
    // is waited out like the watch below, within the wait's timeout.
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(100);
    let initial = loop {
        match get(&api, &name, &shown).await {
            Ok(v) => break v,
            Err(e) if e.is_transient() && started.elapsed() + pause < timeout => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    };
    let condition = Cond::compile(&step.condition, ctx, initial.as_ref())?;
    // A condition built from a secret is described without its values (escaped or not, they
    // would be in progress lines, records and timeouts).
    let from_secret = templates(&step.condition).iter().any(|src| ctx.uses_secret(src));
    let wanted = if from_secret {
        format!("{} (compared with a secret value)", field.unwrap_or("the object"))
    } else {
        condition.describe()
    };
    let observed = |obj: Option<&Value>| condition.observed(obj);
    if condition.holds(initial.as_ref()) {
        return Ok(done(field, &wanted, observed(initial.as_ref()), shown, secret));
    }
    if ctx.dry_run() {
        // A dry run cannot wait for an object to appear: one that nobody in this run wrote must
        // exist now, as it must for every other step.
        let about_absence = matches!(condition, Cond::Gone | Cond::Exists(_, false));
        if initial.is_none() && !about_absence && !ctx.written.contains(&shown) {
            return Err(StepError::NotFound { object: shown });
        }
        // Nothing was written, so nothing will change: record what the live run would wait for.
        let mut outcome = done(field, &wanted, observed(initial.as_ref()), shown, secret);
        if let Some(inputs) = outcome.inputs.as_mut() {
            inputs["dryRun"] = json!(format!("would wait up to {} for {wanted}", duration::format(timeout)));
        }
        return Ok(outcome);
    }
    (ctx.progress)(format!("{wanted} on {shown}"), timeout).await;

    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut last = observed(initial.as_ref());
    let mut last_error = None;
    let deadline = started + timeout;
    let timed_out = |last: &Option<Value>, last_error: Option<String>| StepError::WaitTimeout {
        after: timeout,
        condition: wanted.clone(),
        object: shown.clone(),
        last: shown_value(last),
        last_error,
    };
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(timed_out(&last, last_error)),
            // kube's watcher restarts itself; a stream that ends is not waited on in a busy loop.
            Ok(None) => return Err(timed_out(&last, Some("the watch ended".into()))),
            Ok(Some(Err(e))) => {
                last_error = Some(e.to_string());
                continue;
            }
            Ok(Some(Ok(ev))) => ev,
        };
        let current = match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                Some(serde_json::to_value(obj).unwrap_or(Value::Null))
            }
            watcher::Event::Delete(_) => None,
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        if condition.holds(current.as_ref()) {
            return Ok(done(field, &wanted, observed(current.as_ref()), shown, secret));
        }
        last = observed(current.as_ref());
    }
}

async fn get(api: &Api<DynamicObject>, name: &str, shown: &str) -> Result<Option<Value>, StepError> {
    match api.get_opt(name).await {
        Ok(obj) => Ok(obj.map(|o| serde_json::to_value(o).unwrap_or(Value::Null))),
        Err(source) => Err(StepError::Kube {
            action: "read",
            object: shown.to_string(),
            source,
        }),
    }
}

fn done(field: Option<&str>, wanted: &str, value: Option<Value>, shown: String, secret: bool) -> StepOutcome {
    let observed = match value {
        Some(_) if secret => json!("<redacted>"),
        v => json!(v),
    };
    StepOutcome {
        inputs: Some(json!({"fieldPath": field, "condition": wanted, "observed": observed})),
        object: Some(shown),
        ..Default::default()
    }
}

/// A condition ready to evaluate: values rendered, paths parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cond {
    Equals(FieldPath, Value),
    NotEquals(FieldPath, Value),
    NotEmpty(FieldPath, bool),
    Exists(FieldPath, bool),
    /// Differs from the value when the step began.
    Changed(FieldPath, Option<Value>),
    /// The object does not exist.
    Gone,
    /// The object exists with a uid other than this one.
    Recreated(String),
    Compare(FieldPath, Ordering, f64),
    EqualsField(FieldPath, FieldPath),
    All(Vec<Cond>),
    Any(Vec<Cond>),
}

impl Cond {
    /// Renders a plan's condition; `initial` is the object when the step began (for `changed`).
    pub(crate) fn compile(c: &Condition, ctx: &StepCtx<'_>, initial: Option<&Value>) -> Result<Cond, StepError> {
        let value = |v: &Value| crate::template::render_raw(v, ctx.values);
        Ok(match c {
            Condition::Equals(p, v) => Cond::Equals(p.clone(), value(v)?),
            Condition::NotEquals(p, v) => Cond::NotEquals(p.clone(), value(v)?),
            Condition::NotEmpty(p, b) => Cond::NotEmpty(p.clone(), *b),
            Condition::Exists(p, b) => Cond::Exists(p.clone(), *b),
            Condition::Changed(p) => {
                let before = initial.map(|o| p.get(o)).transpose()?.flatten();
                Cond::Changed(p.clone(), before)
            }
            Condition::Gone => Cond::Gone,
            Condition::Recreated(uid) => Cond::Recreated(ctx.render(uid)?),
            Condition::Compare(p, ord, v) => {
                let rendered = value(v)?;
                let n = as_number(&rendered).ok_or_else(|| StepError::Condition {
                    reason: format!("{} is not a number", fieldpath::as_text(&rendered)),
                })?;
                Cond::Compare(p.clone(), *ord, n)
            }
            Condition::EqualsField(a, b) => Cond::EqualsField(a.clone(), b.clone()),
            Condition::All(list) => Cond::All(
                list.iter()
                    .map(|s| Cond::compile(s, ctx, initial))
                    .collect::<Result<_, _>>()?,
            ),
            Condition::Any(list) => Cond::Any(
                list.iter()
                    .map(|s| Cond::compile(s, ctx, initial))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Whether the condition holds for the object (`None`: it does not exist). A missing object
    /// or field never satisfies a comparison.
    pub(crate) fn holds(&self, obj: Option<&Value>) -> bool {
        let at = |p: &FieldPath| obj.and_then(|o| p.get(o).ok().flatten());
        let same = |a: &Value, b: &Value| a == b || fieldpath::as_text(a) == fieldpath::as_text(b);
        match self {
            Cond::Equals(p, v) => at(p).is_some_and(|c| same(&c, v)),
            Cond::NotEquals(p, v) => at(p).is_some_and(|c| !same(&c, v)),
            Cond::NotEmpty(p, want) => *want == at(p).is_some_and(|v| !fieldpath::is_empty(&v)),
            Cond::Exists(p, want) => *want == at(p).is_some(),
            Cond::Changed(p, before) => at(p).is_some_and(|c| Some(&c) != before.as_ref()),
            Cond::Gone => obj.is_none(),
            Cond::Recreated(old) => obj
                .and_then(|o| o.pointer("/metadata/uid"))
                .and_then(Value::as_str)
                .is_some_and(|uid| uid != old),
            Cond::Compare(p, ord, n) => at(p).as_ref().and_then(as_number).is_some_and(|v| match ord {
                Ordering::GreaterThan => v > *n,
                Ordering::LessThan => v < *n,
                Ordering::AtLeast => v >= *n,
                Ordering::AtMost => v <= *n,
            }),
            Cond::EqualsField(a, b) => match (at(a), at(b)) {
                (Some(x), Some(y)) => same(&x, &y),
                _ => false,
            },
            Cond::All(list) => list.iter().all(|c| c.holds(obj)),
            Cond::Any(list) => list.iter().any(|c| c.holds(obj)),
        }
    }

    /// What the record shows as observed: the field for a one-field condition, the uid for
    /// `recreated`, whether the object exists for `gone`, every field for `allOf`/`anyOf`.
    fn observed(&self, obj: Option<&Value>) -> Option<Value> {
        let at = |p: &FieldPath| obj.and_then(|o| p.get(o).ok().flatten());
        match self {
            Cond::Equals(p, _)
            | Cond::NotEquals(p, _)
            | Cond::NotEmpty(p, _)
            | Cond::Exists(p, _)
            | Cond::Changed(p, _)
            | Cond::Compare(p, _, _) => at(p),
            Cond::EqualsField(a, b) => Some(json!([at(a), at(b)])),
            Cond::Gone => Some(json!(if obj.is_some() { "exists" } else { "gone" })),
            Cond::Recreated(_) => obj.and_then(|o| o.pointer("/metadata/uid")).cloned(),
            Cond::All(list) | Cond::Any(list) => {
                Some(Value::Array(list.iter().map(|c| json!(c.observed(obj))).collect()))
            }
        }
    }

    /// The condition in words, for progress lines, records and timeouts.
    pub(crate) fn describe(&self) -> String {
        match self {
            Cond::Equals(p, v) => format!("{p} == {:?}", fieldpath::as_text(v)),
            Cond::NotEquals(p, v) => format!("{p} != {:?}", fieldpath::as_text(v)),
            Cond::NotEmpty(p, true) => format!("{p} to be non-empty"),
            Cond::NotEmpty(p, false) => format!("{p} to be empty"),
            Cond::Exists(p, true) => format!("{p} to exist"),
            Cond::Exists(p, false) => format!("{p} to be absent"),
            Cond::Changed(p, _) => format!("{p} to change"),
            Cond::Gone => "the object to be gone".into(),
            Cond::Recreated(uid) => format!("the object to be re-created (uid other than {uid})"),
            Cond::Compare(p, ord, n) => format!("{p} {} {n}", ord.symbol()),
            Cond::EqualsField(a, b) => format!("{a} == {b}"),
            Cond::All(list) => format!(
                "all of ({})",
                list.iter().map(Cond::describe).collect::<Vec<_>>().join("; ")
            ),
            Cond::Any(list) => format!(
                "any of ({})",
                list.iter().map(Cond::describe).collect::<Vec<_>>().join("; ")
            ),
        }
    }
}

/// A number, or a string holding one (`"16777216"`, as `kubectl`/exec output often is).
fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    #[test]
    fn comparisons_never_hold_for_a_missing_object_or_field() {
        let obj = json!({"metadata": {"uid": "u2"}, "status": {"ready": 3, "lag": "100"}, "spec": {"instances": 3}});
        let cases = [
            (Cond::Equals(p("status.ready"), json!("3")), true),
            (Cond::NotEquals(p("status.ready"), json!(2)), true),
            (Cond::NotEquals(p("status.nope"), json!(2)), false),
            (Cond::Changed(p("status.ready"), Some(json!(2))), true),
            (Cond::Changed(p("status.ready"), Some(json!(3))), false),
            (Cond::Compare(p("status.lag"), Ordering::LessThan, 16.0e6), true),
            (Cond::Compare(p("status.ready"), Ordering::AtLeast, 3.0), true),
            (Cond::Compare(p("status.ready"), Ordering::GreaterThan, 3.0), false),
            (Cond::Compare(p("status.nope"), Ordering::AtMost, 3.0), false),
            (Cond::EqualsField(p("status.ready"), p("spec.instances")), true),
            (Cond::EqualsField(p("status.nope"), p("status.nope2")), false),
            (Cond::Recreated("u1".into()), true),
            (Cond::Recreated("u2".into()), false),
            (Cond::Gone, false),
            (Cond::Exists(p("status.nope"), false), true),
            (
                Cond::All(vec![Cond::Gone, Cond::Exists(p("status.ready"), true)]),
                false,
            ),
            (Cond::Any(vec![Cond::Gone, Cond::Exists(p("status.ready"), true)]), true),
        ];
        for (c, want) in &cases {
            assert_eq!(c.holds(Some(&obj)), *want, "{c:?}");
        }
        // The object is gone: only `gone` and absence hold.
        for (c, _) in &cases {
            let want = matches!(c, Cond::Gone | Cond::Exists(_, false))
                || matches!(c, Cond::Any(l) if l.contains(&Cond::Gone));
            assert_eq!(c.holds(None), want, "{c:?} on a missing object");
        }
    }
}
