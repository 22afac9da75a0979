//! The HTTP handlers: parse and check the request, hand it to the run service, answer.
//!
//! The run service is asynchronous all the way to its store (whose SQLite calls run on a thread
//! of their own), so a slow disk never holds the runtime's worker threads that answer
//! `/healthz`.

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
use crate::run::service::{ManualTrigger, RunsError};

pub async fn alerts(State(state): State<AppState>, body: JsonBytes) -> Result<axum::response::Response, ApiError> {
    if !state.runs.accepting() {
        return Err(ApiError::Unavailable(
            "recoverd is shutting down; retry against another replica".into(),
        ));
    }
    let runs = &state.runs;
    {
        let mut payload: WebhookPayload = body.parse()?;
        // Alertmanager's version 4 or Grafana's version 1 (see `alert.rs`).
        payload.accept().map_err(ApiError::BadRequest)?;
        // Check every alert before acting on any: a 4xx after some runs started would lose the
        // rest (Alertmanager does not retry a 4xx).
        if let Some(i) = payload.alerts.iter().position(|a| a.fingerprint.is_empty()) {
            return Err(ApiError::BadRequest(format!("alerts[{i}] has no fingerprint")));
        }
        let mut outcomes = Vec::new();
        for alert in &payload.alerts {
            outcomes.extend(runs.alert(alert).await?);
        }
        /// Serialized straight from the outcomes, without a `Value` of them.
        #[derive(serde::Serialize)]
        struct Reply<'a> {
            alerts: Vec<crate::run::service::AlertOutcome>,
            receiver: &'a str,
        }
        Ok((
            StatusCode::ACCEPTED,
            Json(Reply {
                alerts: outcomes,
                receiver: &payload.receiver,
            }),
        )
            .into_response())
    }
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
    for (field, value) in [("actor", &req.actor), ("idempotencyKey", &req.idempotency_key)] {
        if let Some(n) = value.as_ref().map(String::len).filter(|n| *n > MAX_TRIGGER_TEXT) {
            return Err(ApiError::BadRequest(format!(
                "{field} is {n} bytes; at most {MAX_TRIGGER_TEXT} are accepted"
            )));
        }
    }
    let (record, created) = state.runs.trigger(&format!("{namespace}/{name}"), req).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
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
    let page = state.runs.page(q.plan.as_deref(), limit, q.after.as_deref()).await?;
    Ok(Json(page))
}

pub async fn run(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.runs.get(&id).await?))
}

/// The optional body of approve and cancel.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DecisionBody {
    /// Who decides, as recorded.
    actor: Option<String>,
    /// The approval step being approved: required while a run executes, so that an answer
    /// can only approve the question it was given to.
    step: Option<String>,
    /// The `startedAt` of the waiting step's record, as the approver read it: refused (409)
    /// when that wait is over and another one waits now.
    started_at: Option<String>,
}

/// A decision's body (empty allowed) and who decided.
fn decision(headers: &HeaderMap, body: JsonBytes) -> Result<(DecisionBody, String), ApiError> {
    let mut decision: DecisionBody = body.parse_or_default()?;
    let by = decided_by(headers, decision.actor.take());
    Ok((decision, by))
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
    let invisible =
        |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}');
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
    let (decision, by) = decision(&headers, body)?;
    let (step, started_at) = (decision.step.as_deref(), decision.started_at.as_deref());
    decided(state.runs.approve(&id, &by, step, started_at).await)
}

/// A decision's answer: the run (`200`), or `202` when it was handed to the replica executing
/// the run (several replicas).
fn decided(result: Result<crate::record::RunRecord, RunsError>) -> Result<axum::response::Response, ApiError> {
    match result {
        Err(e @ RunsError::Relayed { .. }) => {
            let RunsError::Relayed { id, replica } = &e else {
                unreachable!("matched above")
            };
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"id": id, "relayedTo": replica, "message": e.to_string()})),
            )
                .into_response())
        }
        result => Ok(Json(result?).into_response()),
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBytes,
) -> Result<impl IntoResponse, ApiError> {
    let (_, by) = decision(&headers, body)?;
    decided(state.runs.cancel(&id, &by).await)
}

pub async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.runs.resume(&id).await?))
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
    state
        .runs
        .check_store()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the run store cannot be written: {e}")))?;
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
