//! HTTP errors as a type: a deliberate status for each (docs/api.md, "Errors") and a JSON body that says
//! what was wrong with the request. Internal details go to the log, not the response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::run::service::RunsError;
use crate::run::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error; see recoverd's log")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<RunsError> for ApiError {
    fn from(e: RunsError) -> Self {
        match e {
            RunsError::UnknownPlan(_) | RunsError::UnknownRun(_) => ApiError::NotFound(e.to_string()),
            RunsError::UnknownParam { .. } => ApiError::BadRequest(e.to_string()),
            RunsError::ParamNotOverridable { .. } => ApiError::Forbidden(e.to_string()),
            RunsError::Store(s @ StoreError::BadContinue(_)) => ApiError::BadRequest(s.to_string()),
            RunsError::WrongPhase { .. }
            | RunsError::WrongStep { .. }
            | RunsError::StaleApproval { .. }
            | RunsError::PlanChanged { .. }
            | RunsError::Busy { .. }
            | RunsError::InvalidPlan { .. }
            | RunsError::Relayed { .. } => ApiError::Conflict(e.to_string()),
            RunsError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            // The store is what makes runs exactly-once: without it recoverd cannot accept work,
            // and Alertmanager should retry (docs/api.md, "Errors").
            RunsError::Store(s) => {
                tracing::error!(error = %s, "run store failed");
                ApiError::Unavailable("the run store is failing; retry shortly".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let mut resp = (
            self.status(),
            Json(json!({"error": self.to_string(), "status": self.status().as_u16()})),
        )
            .into_response();
        if let ApiError::Unauthorized = self {
            resp.headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("static header"));
        }
        if let ApiError::Unavailable(_) = self {
            resp.headers_mut()
                .insert("retry-after", "5".parse().expect("static header"));
        }
        resp
    }
}
