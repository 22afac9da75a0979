//! `assert`: stop the run now, with the plan author's message, unless a condition over the
//! values gathered so far holds (a replica's lag under a bound before promoting it).

use serde_json::json;

use super::{StepCtx, StepError, StepOutcome};
use crate::plan::model::AssertStep;
use crate::template;

pub(super) async fn run(step: &AssertStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let holds = template::render_bool(&step.that, ctx.values)?;
    if !holds && ctx.dry_run() {
        // A value a dry run stood in for (a demotion token, an exec's output) cannot decide an
        // assertion: say so instead of failing where the live run may pass.
        let standins: Vec<String> = template::references(&step.that)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                r.strip_prefix("Values.").is_some_and(|k| {
                    ctx.values["Values"][k]
                        .as_str()
                        .is_some_and(|v| v.starts_with("dry-run-"))
                })
            })
            .collect();
        if !standins.is_empty() {
            return Ok(StepOutcome {
                inputs: Some(json!({
                    "that": step.that,
                    "dryRun": format!("not decided: it depends on dry-run stand-ins ({})", standins.join(", ")),
                })),
                ..Default::default()
            });
        }
    }
    if !holds {
        return Err(StepError::Assertion {
            message: ctx.render(&step.message)?,
        });
    }
    Ok(StepOutcome {
        inputs: Some(json!({"that": step.that, "held": true})),
        ..Default::default()
    })
}
