//! An `http` step: a base URL no alert chooses, a method, one kind of body, secrets from one
//! source each.

use super::{Rule, StepScope, Validator};
use crate::plan::compiled::{Http, HttpBody, SecretSource};
use crate::plan::model::HttpStep;
use crate::template;

impl Validator<'_> {
    pub(super) fn http(&mut self, s: &StepScope<'_>, h: &HttpStep) -> Option<Http> {
        let before = self.report.problems.len();
        let problem = |v: &mut Self, field: String, message: String| v.problem(s.name, field, Rule::Http, message);
        // A value at the start of the URL is taken as the whole base URL: it must not come from
        // an alert, or a label would choose the endpoint.
        let url = template::normalize(h.url.trim_start());
        if let Some(first) = url.strip_prefix("{{").and_then(|r| r.split_once("}}")) {
            let from_alert = template::references(&format!("{{{{{}}}}}", first.0))
                .is_ok_and(|refs| refs.iter().any(|r| r == "alert" || r.starts_with("alert.")));
            if from_alert {
                problem(self, s.at("http.url"), "the URL starts with a value from the alert: a label would choose which endpoint is called; take the base URL from a param or a secret".into());
            }
        }
        let method = match &h.method {
            Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| problem(self, s.at("http.method"), format!("{m:?} is not an HTTP method")))
                .ok(),
            None if h.body.is_some() || h.json.is_some() => Some(reqwest::Method::POST),
            None => Some(reqwest::Method::GET),
        };
        if h.body.is_some() && h.json.is_some() {
            problem(self, s.at("http"), "give either `body` or `json`, not both".into());
        }
        if let Some(b) = &h.body {
            let t = b.trim_start();
            if (t.starts_with('{') || t.starts_with('[')) && template::is_template(b) {
                problem(self, s.at("http.body"), "a JSON body with templates must be written as `json:` (its strings are templated, its structure is not), so a value with quotes cannot break it".into());
            }
        }
        let mut secrets = std::collections::BTreeMap::new();
        for (k, secret) in &h.secrets {
            match (&secret.env, &secret.file) {
                (Some(var), None) => {
                    secrets.insert(k.clone(), SecretSource::Env(var.clone()));
                }
                (None, Some(file)) => {
                    secrets.insert(k.clone(), SecretSource::File(file.clone()));
                }
                _ => problem(
                    self,
                    s.at(&format!("http.secrets.{k}")),
                    "a secret needs exactly one of `env` or `file`".into(),
                ),
            }
        }
        if let Some(k) = &h.output_key {
            self.output_key_name(s.name, s.at("http.outputKey"), k, "Endpoint");
        }
        if self.report.problems.len() != before {
            return None;
        }
        let body = match (&h.body, &h.json) {
            (Some(text), _) => HttpBody::Text(text.clone()),
            (None, Some(json)) => HttpBody::Json(json.clone()),
            (None, None) => HttpBody::None,
        };
        Some(Http {
            url: h.url.clone(),
            method: method?,
            headers: h.headers.clone(),
            body,
            expect_status: h.expect_status.clone(),
            secrets,
            output_key: h.output_key.clone(),
        })
    }
}
