//! `wait`: pause for a duration, or watch an object until a field meets a condition. The watch
//! (kube's watcher: list, then watch, re-listing after errors or cut streams) is bounded by the
//! wait's timeout; `changed` compares with the value read when the step began.

use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};

use super::{StepCtx, StepError, StepOutcome};
use crate::duration;
use crate::fieldpath::{self, FieldPath};
use crate::plan::model::{Condition, WaitStep};

pub(super) async fn run(step: &WaitStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    if let Some(d) = &step.duration {
        let d = duration::parse(d)?;
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
        (ctx.progress)(format!("pausing for {}", duration::format(d)), d);
        tokio::time::sleep(d).await;
        return Ok(StepOutcome {
            inputs: Some(json!({"duration": duration::format(d)})),
            ..Default::default()
        });
    }
    let (api_version, resource, name, field) = (
        step.api_version.as_deref().unwrap_or_default(),
        step.resource.as_deref().unwrap_or_default(),
        step.name.as_deref().unwrap_or_default(),
        step.field_path.as_deref().unwrap_or_default(),
    );
    let path = FieldPath::parse(field)?;
    let condition = step.condition.clone().unwrap_or_default();
    let timeout = step
        .timeout
        .as_deref()
        .and_then(|t| duration::parse(t).ok())
        .unwrap_or(Duration::from_secs(60));
    let (api, name, shown) = ctx
        .object(api_version, resource, step.namespace.as_deref(), name)
        .await?;
    let wanted = describe(field, &condition, ctx)?;
    let secret = api_version == "v1" && resource == "secrets";
    let last_text = |v: &Option<Value>| match v {
        None => "<missing>".to_string(),
        Some(_) if secret => "<redacted>".to_string(),
        Some(v) => fieldpath::as_text(v),
    };

    // The value when the step began, for `changed`.
    let initial = match api.get_opt(&name).await {
        Ok(obj) => obj
            .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
            .and_then(|o| path.get(&o).ok().flatten()),
        Err(source) => {
            return Err(StepError::Kube {
                action: "read",
                object: shown,
                source,
            })
        }
    };
    let expected = condition
        .equals
        .as_ref()
        .or(condition.not_equals.as_ref())
        .map(|v| crate::template::render_raw(v, ctx.values))
        .transpose()?;
    if holds(
        &condition,
        expected.as_ref(),
        initial.as_ref(),
        initial.as_ref(),
    ) {
        return Ok(done(field, &wanted, initial, shown, secret));
    }
    if ctx.dry_run() {
        // Nothing was written, so nothing will change: record what the live run would wait for.
        let mut outcome = done(field, &wanted, initial, shown, secret);
        if let Some(inputs) = outcome.inputs.as_mut() {
            inputs["dryRun"] = json!(format!(
                "would wait up to {} for {wanted}",
                duration::format(timeout)
            ));
        }
        return Ok(outcome);
    }
    (ctx.progress)(format!("{wanted} on {shown}"), timeout);

    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut last = initial.clone();
    let mut last_error = None;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next()).await;
        let event = match event {
            Err(_) => {
                return Err(StepError::WaitTimeout {
                    after: timeout,
                    condition: wanted,
                    object: shown,
                    last: last_text(&last),
                    last_error,
                })
            }
            // kube's watcher restarts itself; a stream that ends is not waited on in a busy loop.
            Ok(None) => {
                return Err(StepError::WaitTimeout {
                    after: timeout,
                    condition: wanted,
                    object: shown,
                    last: last_text(&last),
                    last_error: Some("the watch ended".into()),
                })
            }
            Ok(Some(Err(e))) => {
                last_error = Some(e.to_string());
                continue;
            }
            Ok(Some(Ok(ev))) => ev,
        };
        let current = match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let obj = serde_json::to_value(obj).unwrap_or(Value::Null);
                path.get(&obj)?
            }
            watcher::Event::Delete(_) => None,
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        if holds(
            &condition,
            expected.as_ref(),
            current.as_ref(),
            initial.as_ref(),
        ) {
            return Ok(done(field, &wanted, current, shown, secret));
        }
        last = current;
    }
}

fn done(
    field: &str,
    wanted: &str,
    value: Option<Value>,
    shown: String,
    secret: bool,
) -> StepOutcome {
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

/// Whether the condition holds for the current value (`None` = missing). A missing object or
/// field never satisfies a comparison (`equals`, `notEquals`, `changed`): "wait until the uid is
/// not the old one" must not pass while the pod is gone. Waiting for absence is `exists: false`.
pub fn holds(
    c: &Condition,
    expected: Option<&Value>,
    current: Option<&Value>,
    initial: Option<&Value>,
) -> bool {
    let same = |a: &Value, b: &Value| a == b || fieldpath::as_text(a) == fieldpath::as_text(b);
    if c.equals.is_some() {
        return expected.is_some_and(|e| current.is_some_and(|c| same(c, e)));
    }
    if c.not_equals.is_some() {
        return expected.is_some_and(|e| current.is_some_and(|c| !same(c, e)));
    }
    if let Some(want) = c.not_empty {
        return want == current.is_some_and(|v| !fieldpath::is_empty(v));
    }
    if let Some(want) = c.exists {
        return want == current.is_some();
    }
    if c.changed == Some(true) {
        return current.is_some() && current != initial;
    }
    false
}

fn describe(field: &str, c: &Condition, ctx: &StepCtx<'_>) -> Result<String, StepError> {
    let text = |v: &Value| -> Result<String, StepError> {
        Ok(fieldpath::as_text(&crate::template::render_raw(
            v, ctx.values,
        )?))
    };
    Ok(if let Some(v) = &c.equals {
        format!("{field} == {:?}", text(v)?)
    } else if let Some(v) = &c.not_equals {
        format!("{field} != {:?}", text(v)?)
    } else if c.not_empty == Some(true) {
        format!("{field} to be non-empty")
    } else if c.not_empty == Some(false) {
        format!("{field} to be empty")
    } else if c.exists == Some(false) {
        format!("{field} to be absent")
    } else if c.exists == Some(true) {
        format!("{field} to exist")
    } else {
        format!("{field} to change")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_compare_values_as_text_and_json() {
        let eq = Condition {
            equals: Some(json!("true")),
            ..Default::default()
        };
        assert!(holds(&eq, Some(&json!("true")), Some(&json!(true)), None));
        assert!(!holds(&eq, Some(&json!("true")), None, None));
        let ne = Condition {
            not_equals: Some(json!("a")),
            ..Default::default()
        };
        assert!(holds(&ne, Some(&json!("a")), Some(&json!("b")), None));
        assert!(!holds(&ne, Some(&json!("a")), Some(&json!("a")), None));
        // A missing object or field is not "a different value".
        assert!(!holds(&ne, Some(&json!("a")), None, None));
        let nonempty = Condition {
            not_empty: Some(true),
            ..Default::default()
        };
        assert!(!holds(&nonempty, None, Some(&json!("")), None));
        assert!(holds(&nonempty, None, Some(&json!("tok")), None));
        let changed = Condition {
            changed: Some(true),
            ..Default::default()
        };
        assert!(!holds(&changed, None, Some(&json!(1)), Some(&json!(1))));
        assert!(holds(&changed, None, Some(&json!(2)), Some(&json!(1))));
        assert!(!holds(&changed, None, None, Some(&json!(1))));
        let absent = Condition {
            exists: Some(false),
            ..Default::default()
        };
        assert!(holds(&absent, None, None, Some(&json!(1))));
    }
}
