//! `http`: call an endpoint with reqwest. Secrets come from environment variables or files and
//! are redacted wherever they appear in the run record; a response to a request that carried a
//! secret is itself secret (an endpoint may echo it). Values printed into the URL are
//! percent-encoded, so an alert label cannot change which endpoint is called.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{StepCtx, StepError, StepOutcome};
use crate::plan::compiled::{Http, HttpBody, SecretSource};
use crate::template;

pub(super) async fn run(step: &Http, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let secrets = read_secrets(&step.secrets)?;
    let mut values = ctx.values.clone();
    values["secrets"] = json!(secrets);
    let url = template::render_url(&step.url, &values)?;
    let mut sources: Vec<&str> = vec![&step.url];
    sources.extend(step.headers.values().map(String::as_str));
    let json_text = match &step.body {
        HttpBody::Text(text) => Some(text.clone()),
        HttpBody::Json(json) => Some(json.to_string()),
        HttpBody::None => None,
    };
    sources.extend(json_text.as_deref());
    let carries_secret = sources.iter().any(|s| ctx.uses_secret(s));
    // The URL as records, errors and logs show it: a URL built from a secret is not shown at
    // all (the secret may be in it percent-encoded, where no scrubbing would find it).
    let url_secret = ctx.uses_secret(&step.url);
    let shown_url = if url_secret { REDACTED.to_string() } else { url.clone() };
    let method = step.method.clone();
    let mut req = ctx.http.request(method.clone(), &url);
    let mut shown_headers = BTreeMap::new();
    for (k, v) in &step.headers {
        let rendered = template::render(v, &values)?;
        req = req.header(k, &rendered);
        shown_headers.insert(k.clone(), shown(ctx, v, rendered));
    }
    let mut shown_body = Value::Null;
    match &step.body {
        HttpBody::Text(body) => {
            let rendered = template::render(body, &values)?;
            req = req.body(rendered.clone());
            shown_body = Value::String(shown(ctx, body, rendered));
        }
        HttpBody::Json(j) => {
            let body = template::render_raw(j, &values)?;
            req = req.json(&body);
            shown_body = if json_text.as_deref().is_some_and(|t| ctx.uses_secret(t)) {
                Value::String(REDACTED.into())
            } else {
                body
            };
        }
        HttpBody::None => {}
    }
    let secret_values: Vec<&str> = secrets.values().map(String::as_str).filter(|s| !s.is_empty()).collect();
    let inputs = redact(
        json!({"method": method.as_str(), "url": shown_url, "headers": shown_headers, "body": shown_body}),
        &secret_values,
    );

    if ctx.dry_run() && !matches!(method, reqwest::Method::GET | reqwest::Method::HEAD) {
        // A dry run never calls out: a notification or a webhook is a real write.
        let mut inputs = inputs;
        inputs["sent"] = Value::Bool(false);
        let mut outputs = BTreeMap::new();
        if let Some(k) = &step.output_key {
            outputs.insert(
                k.clone(),
                Value::String(format!(
                    "<dry run: response of {method} {}>",
                    redact_str(&shown_url, &secret_values)
                )),
            );
        }
        return Ok(StepOutcome {
            inputs: Some(inputs),
            outputs,
            secret_outputs: carries_secret,
            ..Default::default()
        });
    }
    let resp = req.send().await.map_err(|e| StepError::Http {
        url: redact_str(&shown_url, &secret_values),
        // reqwest's message repeats the URL: say it once, as shown.
        reason: redact_str(&error_chain(&e).replace(url.as_str(), &shown_url), &secret_values),
        transient: e.is_timeout() || e.is_connect() || e.is_request(),
    })?;
    let status = resp.status().as_u16();
    let (text, cut) = read_bounded(resp).await;
    let ok = if step.expect_status.is_empty() {
        (200..300).contains(&status)
    } else {
        step.expect_status.contains(&status)
    };
    if !ok {
        let expected = if step.expect_status.is_empty() {
            "2xx".to_string()
        } else {
            step.expect_status
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        };
        return Err(StepError::HttpStatus {
            url: redact_str(&shown_url, &secret_values),
            status,
            expected,
            // Redact first: a secret across the cut would leak its first part.
            body: redact_str(&text, &secret_values).chars().take(300).collect(),
        });
    }
    let mut outputs = BTreeMap::new();
    if let Some(k) = &step.output_key {
        if cut {
            // A value cut short would be a wrong value.
            return Err(StepError::Http {
                url: redact_str(&shown_url, &secret_values),
                reason: format!(
                    "the response is larger than {} MiB, the most an http step reads; {k} cannot hold it",
                    MAX_RESPONSE_BYTES / (1024 * 1024)
                ),
                transient: false,
            });
        }
        outputs.insert(k.clone(), Value::String(text.trim_end().to_string()));
    }
    Ok(StepOutcome {
        inputs: Some(inputs),
        outputs,
        object: Some(format!("{} {}", method, redact_str(&shown_url, &secret_values))),
        secret_outputs: carries_secret,
        ..Default::default()
    })
}

/// The most of a response an `http` step reads: a response is kept in the run's record (with
/// `outputKey`) and held in memory, so an endpoint that answers without end must not exhaust
/// either.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The response body, at most [`MAX_RESPONSE_BYTES`] of it (lossily UTF-8), and whether there
/// was more. A body that breaks off is what arrived of it.
async fn read_bounded(mut resp: reqwest::Response) -> (String, bool) {
    let mut body = Vec::new();
    let mut cut = false;
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_RESPONSE_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    (String::from_utf8_lossy(&body).into_owned(), cut)
}

fn read_secrets(refs: &BTreeMap<String, SecretSource>) -> Result<BTreeMap<String, String>, StepError> {
    refs.iter()
        .map(|(name, source)| {
            let value = match source {
                SecretSource::Env(var) => std::env::var(var).map_err(|_| StepError::Secret {
                    name: name.clone(),
                    reason: format!("environment variable {var} is not set"),
                })?,
                SecretSource::File(file) => std::fs::read_to_string(file)
                    .map_err(|e| StepError::Secret {
                        name: name.clone(),
                        reason: format!("failed to read {file}: {e}"),
                    })?
                    .trim_end()
                    .to_string(),
            };
            Ok((name.clone(), value))
        })
        .collect()
}

const REDACTED: &str = "<redacted>";

fn shown(ctx: &StepCtx<'_>, src: &str, rendered: String) -> String {
    if ctx.uses_secret(src) {
        REDACTED.into()
    } else {
        rendered
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn redact_str(s: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .fold(s.to_string(), |acc, secret| acc.replace(secret, "<redacted>"))
}

/// Replaces every occurrence of a secret value in every string of `v`.
pub fn redact(v: Value, secrets: &[&str]) -> Value {
    let needles: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    super::scrub_value(v, &needles)
}
