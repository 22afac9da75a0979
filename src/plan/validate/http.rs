//! An `http` step: a base URL no alert chooses, a method, one kind of body, secrets from one
//! source each.

use super::{Rule, StepScope, Validator};
use crate::plan::model::HttpStep;
use crate::template;

impl Validator<'_> {
    pub(super) fn http(&mut self, s: &StepScope<'_>, h: &HttpStep) -> Option<HttpStep> {
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
        if let Some(m) = &h.method {
            if reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err() {
                problem(self, s.at("http.method"), format!("{m:?} is not an HTTP method"));
            }
        }
        if h.body.is_some() && h.json.is_some() {
            problem(self, s.at("http"), "give either `body` or `json`, not both".into());
        }
        if let Some(b) = &h.body {
            let t = b.trim_start();
            if (t.starts_with('{') || t.starts_with('[')) && template::is_template(b) {
                problem(self, s.at("http.body"), "a JSON body with templates must be written as `json:` (its strings are templated, its structure is not), so a value with quotes cannot break it".into());
            }
        }
        for (k, secret) in &h.secrets {
            if secret.env.is_some() == secret.file.is_some() {
                problem(
                    self,
                    s.at(&format!("http.secrets.{k}")),
                    "a secret needs exactly one of `env` or `file`".into(),
                );
            }
        }
        if let Some(k) = &h.output_key {
            self.output_key_name(s.name, s.at("http.outputKey"), k, "Endpoint");
        }
        (self.report.problems.len() == before).then(|| h.clone())
    }
}
