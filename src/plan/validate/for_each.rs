//! A `forEach` step: one source of items (a list or a selector), bounded concurrency and item
//! count, and the steps of one iteration — validated like the plan's own steps, with
//! `Values.item` defined for them, and never another forEach.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{output_key, Rule, StepScope, Validator};
use crate::plan::compiled::{ForEach, Items, DEFAULT_MAX_ITEMS, MAX_CONCURRENCY, MAX_ITEMS};
use crate::plan::model::{ForEachStep, Step, StepType};
use crate::template;

/// The name under which an iteration's steps find their item: `{{ Values.item }}`.
pub const ITEM: &str = "item";

impl Validator<'_> {
    pub(super) fn for_each(
        &mut self,
        s: &StepScope<'_>,
        step: &Step,
        f: &ForEachStep,
        known: &BTreeSet<String>,
        producers: &BTreeMap<String, String>,
    ) -> Option<ForEach> {
        let at = |rest: &str| s.at(&format!("forEach.{rest}"));
        let problems_before = self.report.problems.len();
        let refuse = |v: &mut Self, field: String, message: String| {
            v.problem(s.name, field, Rule::ForEachForm, message);
        };
        // Attempts and their bound belong to the steps that act: a repeated list cannot be
        // retried or timed out as one.
        if step.retries.is_some_and(|r| r > 0) || step.timeout.is_some() {
            let which = if step.timeout.is_some() { "timeout" } else { "retries" };
            refuse(
                self,
                s.at(which),
                format!("a forEach step cannot have `{which}`: set it on the steps inside `forEach.steps`"),
            );
        }
        let concurrency = f.concurrency.unwrap_or(1);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            refuse(
                self,
                at("concurrency"),
                format!("concurrency {concurrency} must be from 1 to {MAX_CONCURRENCY}"),
            );
        }
        let max_items = f.max_items.unwrap_or(DEFAULT_MAX_ITEMS);
        if !(1..=MAX_ITEMS).contains(&max_items) {
            refuse(
                self,
                at("maxItems"),
                format!("maxItems {max_items} must be from 1 to {MAX_ITEMS}"),
            );
        }
        let items = match (&f.items, &f.selector) {
            (Some(_), Some(_)) | (None, None) => {
                refuse(
                    self,
                    s.at("forEach"),
                    "a forEach repeats over `items` (a list, or a template naming one) or over \
                     the objects a `selector` matches: give exactly one"
                        .into(),
                );
                None
            }
            (Some(Value::Array(list)), None) if list.is_empty() => {
                refuse(
                    self,
                    at("items"),
                    "`items` is an empty list: there is nothing to repeat".into(),
                );
                None
            }
            (Some(Value::Array(list)), None) if list.len() > max_items as usize => {
                refuse(
                    self,
                    at("items"),
                    format!("`items` has {} items, more than maxItems {max_items}", list.len()),
                );
                None
            }
            (Some(v @ Value::Array(_)), None) => Some(Items::List(v.clone())),
            (Some(Value::String(t)), None) if template::is_template(t) => Some(Items::List(Value::String(t.clone()))),
            (Some(other), None) => {
                refuse(
                    self,
                    at("items"),
                    format!(
                        "`items` must be a list, or a template naming one (\"{{{{ Values.pvcs }}}}\"), not {other}"
                    ),
                );
                None
            }
            (None, Some(sel)) => {
                self.object(s.name, &at("selector"), &sel.api_version, &sel.resource);
                Some(Items::Selector(sel.clone()))
            }
        };
        if known.contains(ITEM) {
            refuse(
                self,
                s.at("forEach"),
                format!("the loop variable `Values.{ITEM}` would hide the param or earlier output `{ITEM}`: rename that one"),
            );
        }
        if f.steps.is_empty() {
            refuse(
                self,
                at("steps"),
                "a forEach needs `steps`: what to do for each item".into(),
            );
        }

        // What an iteration's steps may use: what the forEach may, its item, and the outputs of
        // the iteration's earlier steps.
        let mut inner_known = known.clone();
        inner_known.insert(ITEM.to_string());
        let mut names = BTreeSet::new();
        let mut steps = Vec::with_capacity(f.steps.len());
        for (i, inner) in f.steps.iter().enumerate() {
            let field = at(&format!("steps[{i}]"));
            let fld = |rest: &str| format!("{field}.{rest}");
            if inner.step_type == StepType::ForEach {
                refuse(
                    self,
                    fld("type"),
                    "a forEach cannot contain another forEach: nested loops multiply what a plan \
                     can touch; list the combined items in one forEach, or use two forEach steps"
                        .into(),
                );
                continue;
            }
            if inner.step_type == StepType::Approval && concurrency > 1 {
                refuse(
                    self,
                    fld("type"),
                    "an approval inside a forEach needs `concurrency: 1`: an approver answers one \
                     question at a time"
                        .into(),
                );
            }
            if f.steps.len() > 1 {
                if inner.name().is_empty() {
                    refuse(
                        self,
                        fld("name"),
                        "a forEach with several steps needs a `name` on each (its records are `<forEach>[n].<name>`)"
                            .into(),
                    );
                } else if !names.insert(inner.name().to_string()) {
                    refuse(
                        self,
                        fld("name"),
                        format!("step name {:?} is used twice in this forEach", inner.name()),
                    );
                }
            }
            if output_key(inner) == Some(ITEM) {
                refuse(
                    self,
                    fld("name"),
                    format!("an outputKey `{ITEM}` would hide the loop variable `Values.{ITEM}`"),
                );
            }
            let mut inner = inner.clone();
            if inner.cluster.is_none() {
                inner.cluster = step.cluster.clone();
            }
            if inner.name().is_empty() {
                inner.name = step.name.clone();
            }
            // The iteration's outputs stay in it: later steps of the plan cannot use them.
            if let Some(compiled) = self.step(&inner, &field, &inner_known, producers, s.run_timeout) {
                steps.push(compiled);
            }
            if let Some(k) = output_key(&inner) {
                inner_known.insert(k.to_string());
            }
        }
        let items = items?;
        // Deleting by item is deleting by selector one object at a time: without an explicit
        // maxItems it is bounded like a delete step's selector (maxObjects' default).
        let deletes = steps
            .iter()
            .any(|s| matches!(s.kind, crate::plan::compiled::StepKind::Delete(_)));
        let max_items = match (f.max_items, deletes) {
            (None, true) => max_items.min(crate::plan::compiled::DEFAULT_MAX_OBJECTS),
            _ => max_items,
        };
        (self.report.problems.len() == problems_before).then_some(ForEach {
            items,
            concurrency,
            max_items,
            on_error: f.on_error,
            steps,
        })
    }
}
