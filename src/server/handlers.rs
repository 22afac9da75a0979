//! The HTTP handlers: parse and check the request, hand it to the run service, answer.
//!
//! Everything that touches the run store, and the parsing and matching of webhook bodies, runs
//! on the blocking pool ([`blocking`]): a slow disk or a large batch of alerts must not hold
//! the runtime's worker threads that answer `/healthz`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{ApiQuery, JsonBytes};
use super::AppState;
use crate::alert::WebhookPayload;
use crate::run::service::{ManualTrigger, Runs};

/// Runs `f` with the run service on the blocking pool.
async fn blocking<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&std::sync::Arc<Runs>) -> Result<T, ApiError> + Send + 'static,
{
    let runs = state.runs.clone();
    tokio::task::spawn_blocking(move || f(&runs))
        .await
        .map_err(|e| ApiError::Internal(format!("a request task failed: {e}")))?
}

/// The largest webhook body parsed on a worker thread; larger ones are parsed on the blocking
/// pool. Alertmanager's notification of one alert is about 1 KiB.
pub const INLINE_BODY: usize = 16 * 1024;

pub async fn alerts(
    State(state): State<AppState>,
    body: JsonBytes,
) -> Result<axum::response::Response, ApiError> {
    if !state.runs.accepting() {
        return Err(ApiError::Unavailable(
            "recoverd is shutting down; retry against another replica".into(),
        ));
    }
    // Handing a request to the blocking pool and back costs two thread wake-ups, more than
    // parsing a small payload and matching it. Only alerts that match a plan reach the run
    // store (`Runs::alert`), so a small payload none of whose alerts matches is answered here.
    if body.len() <= INLINE_BODY {
        let payload = webhook_payload(&body)?;
        let plans = state.runs.plans();
        if payload
            .alerts
            .iter()
            .all(|a| plans.matching(&a.labels).is_empty())
        {
            return act_on(&state.runs, &payload);
        }
        return blocking(&state, move |runs| act_on(runs, &payload)).await;
    }
    blocking(&state, move |runs| act_on(runs, &webhook_payload(&body)?)).await
}

/// A webhook body, parsed and checked.
fn webhook_payload(body: &JsonBytes) -> Result<WebhookPayload, ApiError> {
    let mut payload: WebhookPayload = body.parse()?;
    // Alertmanager's version 4 or Grafana's version 1 (see `alert.rs`).
    payload.accept().map_err(ApiError::BadRequest)?;
    // Check every alert before acting on any: a 4xx after some runs started would lose the
    // rest (Alertmanager does not retry a 4xx).
    if let Some(i) = payload.alerts.iter().position(|a| a.fingerprint.is_empty()) {
        return Err(ApiError::BadRequest(format!(
            "alerts[{i}] has no fingerprint"
        )));
    }
    Ok(payload)
}

/// Hands every alert of the payload to the run service; the webhook's answer.
fn act_on(
    runs: &std::sync::Arc<Runs>,
    payload: &WebhookPayload,
) -> Result<axum::response::Response, ApiError> {
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        alerts: Vec<crate::run::service::AlertOutcome>,
        receiver: &'a str,
    }
    let mut alerts = Vec::new();
    for alert in &payload.alerts {
        alerts.extend(runs.alert(alert)?);
    }
    let reply = Reply {
        alerts,
        receiver: &payload.receiver,
    };
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}

pub async fn plans(State(state): State<AppState>) -> impl IntoResponse {
    /// Serialized straight to bytes: no intermediate `Value` of every plan.
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        plans: Vec<crate::plan::set::PlanSummary>,
        invalid: &'a [crate::plan::set::InvalidPlan],
    }
    let plans = state.runs.plans();
    Json(Reply {
        plans: plans.summaries(),
        invalid: &plans.invalid,
    })
    .into_response()
}

/// The longest `actor` and `idempotencyKey` a manual trigger may give.
pub const MAX_TRIGGER_TEXT: usize = 1024;

pub async fn trigger(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    body: JsonBytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: ManualTrigger = body.parse_or_default()?;
    // Both are kept in the run's record and in every list of runs.
    for (field, value) in [
        ("actor", &req.actor),
        ("idempotencyKey", &req.idempotency_key),
    ] {
        if let Some(n) = value
            .as_ref()
            .map(String::len)
            .filter(|n| *n > MAX_TRIGGER_TEXT)
        {
            return Err(ApiError::BadRequest(format!(
                "{field} is {n} bytes; at most {MAX_TRIGGER_TEXT} are accepted"
            )));
        }
    }
    let (record, created) = blocking(&state, move |runs| {
        Ok(runs.trigger(&format!("{namespace}/{name}"), req)?)
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)))
}

/// Default and largest page of `GET /api/v1/runs`.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
pub struct RunsQuery {
    plan: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    after: Option<String>,
}

/// Run summaries, newest first, a page at a time: `?limit=N` (default 100, at most 1000) and
/// `?continue=` the previous page's `continue`. Full records only by id.
pub async fn runs(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}, not {limit}"
        )));
    }
    let page = blocking(&state, move |runs| {
        Ok(runs.page(q.plan.as_deref(), limit, q.after.as_deref())?)
    })
    .await?;
    Ok(Json(page))
}

pub async fn run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        blocking(&state, move |runs| Ok(runs.get(&id)?)).await?,
    ))
}

/// The optional body of approve and cancel.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Who decides, as recorded.
    actor: Option<String>,
    /// The approval step being approved: required while a run executes, so that an answer
    /// can only approve the question it was given to.
    step: Option<String>,
}

/// Who decided, for the record: the name the caller gave and which token it used (the first
/// 8 hex digits of its SHA-256, never the token).
fn decided_by(headers: &HeaderMap, actor: Option<String>) -> String {
    use sha2::{Digest, Sha256};
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, t)| t.trim()))
        .unwrap_or("");
    let hash: String = Sha256::digest(token.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    // The name is the caller's word: no control or invisible formatting characters (bidi
    // overrides, zero-width), whitespace as spaces, and no parentheses, so that it can never
    // pass itself off as another token's hash.
    let invisible = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}');
    let name: String = actor
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|c| !c.is_control() && !invisible(*c) && *c != '(' && *c != ')')
        .take(128)
        .collect();
    let name = match name.trim() {
        "" => "someone",
        n => n,
    };
    format!("{name} (token sha256:{hash})")
}

pub async fn approve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBytes,
) -> Result<impl IntoResponse, ApiError> {
    let body: DecisionBody = body.parse_or_default()?;
    let by = decided_by(&headers, body.actor);
    Ok(Json(
        blocking(&state, move |runs| {
            Ok(runs.approve(&id, &by, body.step.as_deref())?)
        })
        .await?,
    ))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBytes,
) -> Result<impl IntoResponse, ApiError> {
    let body: DecisionBody = body.parse_or_default()?;
    let by = decided_by(&headers, body.actor);
    Ok(Json(
        blocking(&state, move |runs| Ok(runs.cancel(&id, &by)?)).await?,
    ))
}

pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        blocking(&state, move |runs| Ok(runs.resume(&id)?)).await?,
    ))
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready while accepting work and while the run store takes writes (and is still the file it
/// opened): without the store, no run can be recorded, so none should be sent here.
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if !state.runs.accepting() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    blocking(&state, |runs| {
        runs.check_store()
            .map_err(|e| ApiError::Unavailable(format!("the run store cannot be written: {e}")))
    })
    .await?;
    let plans = state.runs.plans();
    Ok(Json(
        json!({"status": "ready", "plans": plans.len(), "invalidPlans": plans.invalid.len()}),
    ))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.runs.metrics().render(),
    )
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; the routes are listed in docs/api.md".into())
}
