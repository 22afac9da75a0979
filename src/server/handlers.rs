//! The HTTP handlers: parse and check the request, hand it to the run service, answer.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::alert::WebhookPayload;
use crate::run::service::ManualTrigger;

/// The body of a JSON request, with the failures a client can fix turned into [`ApiError`]s:
/// wrong content type (415), too large (413), unreadable (400).
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(format!("failed to read the body: {r}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

pub async fn alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.runs.accepting() {
        return Err(ApiError::Unavailable(
            "recoverd is shutting down; retry against another replica".into(),
        ));
    }
    let mut payload: WebhookPayload = json_body(&headers, body, state.body_limit)?;
    payload.accept().map_err(ApiError::BadRequest)?;
    // Check every alert before acting on any: a 4xx after some runs started would lose the rest
    // (Alertmanager does not retry a 4xx).
    if let Some(i) = payload.alerts.iter().position(|a| a.fingerprint.is_empty()) {
        return Err(ApiError::BadRequest(format!(
            "alerts[{i}] has no fingerprint"
        )));
    }
    let mut outcomes = Vec::new();
    for alert in &payload.alerts {
        outcomes.extend(state.runs.alert(alert)?);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"receiver": payload.receiver, "alerts": outcomes})),
    ))
}

pub async fn plans(State(state): State<AppState>) -> impl IntoResponse {
    let plans = state.runs.plans();
    Json(json!({"plans": plans.summaries(), "invalid": plans.invalid}))
}

pub async fn trigger(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let empty = matches!(&body, Ok(b) if b.is_empty());
    let req: ManualTrigger = if empty {
        ManualTrigger::default()
    } else {
        json_body(&headers, body, state.body_limit)?
    };
    let (record, created) = state.runs.trigger(&format!("{namespace}/{name}"), req)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)))
}

#[derive(Deserialize)]
pub struct RunsQuery {
    plan: Option<String>,
}

pub async fn runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(json!({"runs": state.runs.list(q.plan.as_deref())?})))
}

pub async fn run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.runs.get(&id)?))
}

pub async fn approve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.runs.approve(&id)?))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.runs.cancel(&id)?))
}

pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.runs.resume(&id)?))
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if !state.runs.accepting() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
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
    ApiError::NotFound("no such route; see DESIGN §4 for the API".into())
}
