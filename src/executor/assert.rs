//! `assert`: stop the run now, with the plan author's message, unless a condition over the
//! values gathered so far holds (a replica's lag under a bound before promoting it).

use serde_json::json;

use super::{StepCtx, StepError, StepOutcome};
use crate::plan::model::AssertStep;
use crate::template;

pub(super) async fn run(step: &AssertStep, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let holds = template::render_bool(&step.that, ctx.values)?;
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
