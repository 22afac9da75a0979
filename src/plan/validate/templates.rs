//! Where the templates of a step are: every template source with the field it is at, so that
//! validation, `check` and the executor (which must know whether a step used a secret) look at
//! the same list.

use serde_json::Value;

use crate::plan::model::{Condition, Step, StepType};
use crate::template;

/// Every template of a step: (field, source, whether it is a YAML manifest).
pub fn step_templates(step: &Step, field: &str) -> Vec<(String, String, bool)> {
    let mut templates: Vec<(String, String, bool)> = Vec::new();
    let mut t = |f: &str, s: &str| templates.push((format!("{field}.{f}"), s.to_string(), false));
    if let Some(w) = &step.when {
        t("when", w);
    }
    if let Some(c) = step.cluster.as_deref().filter(|c| template::is_template(c)) {
        t("cluster", c);
    }
    if let Some(d) = &step.delete {
        for (k, v) in [
            ("delete.namespace", &d.namespace),
            ("delete.name", &d.name),
            ("delete.labelSelector", &d.label_selector),
        ] {
            if let Some(v) = v {
                t(k, v);
            }
        }
        if let Some(crate::plan::model::NumberOrTemplate::Template(m)) = &d.max_objects {
            t("delete.maxObjects", m);
        }
        if let Some(p) = &d.preconditions {
            for (k, v) in [
                ("delete.preconditions.uid", &p.uid),
                ("delete.preconditions.resourceVersion", &p.resource_version),
            ] {
                if let Some(v) = v {
                    t(k, v);
                }
            }
        }
    }
    if let Some(f) = &step.for_each {
        if let Some(items) = &f.items {
            collect_raw("forEach.items", items, &mut t);
        }
        if let Some(sel) = &f.selector {
            if let Some(ns) = &sel.namespace {
                t("forEach.selector.namespace", ns);
            }
            t("forEach.selector.labelSelector", &sel.label_selector);
        }
    }
    if let Some(a) = &step.approval {
        t("approval.message", &a.message);
    }
    if let Some(a) = &step.assert {
        t("assert.that", &a.that);
        t("assert.message", &a.message);
    }
    if let Some(e) = &step.exec {
        t("exec.namespace", &e.namespace);
        t("exec.pod", &e.pod);
        if let Some(c) = &e.container {
            t("exec.container", c);
        }
        for (i, arg) in e.command.iter().enumerate() {
            t(&format!("exec.command[{i}]"), arg);
        }
    }
    if let Some(p) = &step.patch {
        t("patch.name", &p.name);
        if let Some(ns) = &p.namespace {
            t("patch.namespace", ns);
        }
        collect_raw("patch.override.value.raw", &p.override_.value.raw, &mut t);
    }
    if let Some(r) = &step.read_field {
        t("readField.name", &r.name);
        if let Some(ns) = &r.namespace {
            t("readField.namespace", ns);
        }
    }
    if let Some(w) = &step.wait {
        for (k, v) in [("wait.name", &w.name), ("wait.namespace", &w.namespace)] {
            if let Some(v) = v {
                t(k, v);
            }
        }
        if let Some(c) = &w.condition {
            condition_templates("wait.condition", c, &mut t);
        }
    }
    if let Some(a) = &step.apply {
        if let Some(tf) = &a.target {
            t("apply.target.namespace", &tf.namespace);
            t("apply.target.name", &tf.name);
            t("apply.target.key", &tf.key);
        }
        if let Some(cm) = a.template_from.as_ref().and_then(|tf| tf.config_map.as_ref()) {
            t("apply.templateFrom.configMap.namespace", &cm.namespace);
            t("apply.templateFrom.configMap.name", &cm.name);
            t("apply.templateFrom.configMap.key", &cm.key);
        }
        if let Some(i) = a.template_from.as_ref().and_then(|tf| tf.inline.as_ref()) {
            t("apply.templateFrom.inline", i);
        }
    }
    if let Some(h) = &step.http {
        t("http.url", &h.url);
        for (k, v) in &h.headers {
            t(&format!("http.headers.{k}"), v);
        }
        if let Some(b) = &h.body {
            t("http.body", b);
        }
        if let Some(j) = &h.json {
            collect_raw("http.json", j, &mut t);
        }
    }
    if let Some(m) = step.apply.as_ref().and_then(|a| a.manifest.as_ref()) {
        templates.push((format!("{field}.apply.manifest"), m.clone(), true));
    }
    templates
}

/// The templates of a condition and of the conditions inside it.
pub fn condition_templates(field: &str, c: &Condition, t: &mut impl FnMut(&str, &str)) {
    for (k, v) in [
        ("equals", &c.equals),
        ("notEquals", &c.not_equals),
        ("greaterThan", &c.greater_than),
        ("lessThan", &c.less_than),
        ("atLeast", &c.at_least),
        ("atMost", &c.at_most),
    ] {
        if let Some(v) = v {
            collect_raw(&format!("{field}.{k}"), v, t);
        }
    }
    if let Some(r) = &c.recreated {
        t(&format!("{field}.recreated"), r);
    }
    for (k, list) in [("allOf", &c.all_of), ("anyOf", &c.any_of)] {
        for (i, sub) in list.iter().enumerate() {
            condition_templates(&format!("{field}.{k}[{i}]"), sub, t);
        }
    }
}

/// The `Values` key a step produces (as written, before validation).
pub fn output_key(step: &Step) -> Option<&str> {
    match step.step_type {
        StepType::ReadField => step.read_field.as_ref().map(|r| r.output_key.as_str()),
        StepType::Http => step.http.as_ref().and_then(|h| h.output_key.as_deref()),
        StepType::Exec => step.exec.as_ref().and_then(|e| e.output_key.as_deref()),
        _ => None,
    }
}

fn collect_raw(field: &str, v: &Value, t: &mut impl FnMut(&str, &str)) {
    match v {
        Value::String(s) => t(field, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| collect_raw(&format!("{field}[{i}]"), v, t)),
        Value::Object(m) => m.iter().for_each(|(k, v)| collect_raw(&format!("{field}.{k}"), v, t)),
        _ => {}
    }
}
