//! The HTTP API (axum, DESIGN §4): the Alertmanager webhook, manual triggers, runs, health and
//! metrics. [`router`] builds it for `serve` and for tests.

mod auth;
mod error;
mod handlers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use auth::Tokens;
pub use error::ApiError;

use crate::run::service::Runs;

/// Default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub runs: Arc<Runs>,
    pub tokens: Tokens,
    /// When set, only these tokens may approve, cancel or resume runs.
    pub approvers: Option<Tokens>,
    pub body_limit: usize,
    pub metrics_public: bool,
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let approver = state.approvers.as_ref().is_some_and(|a| a.allows(header));
    if !state.tokens.allows(header) && !approver {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// With `--approver-token-file`, deciding about runs (approve, cancel, resume) needs one of
/// those tokens: the token Alertmanager holds cannot approve what its alerts started.
async fn require_approver(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(approvers) = &state.approvers {
        if !approvers.allows(header) {
            return ApiError::Forbidden(
                "approving, cancelling and resuming runs needs an approver token".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The whole API. Every route but `/healthz`, `/readyz` (and `/metrics` when public) needs a
/// bearer token.
pub fn router(state: AppState) -> Router {
    let decisions = Router::new()
        .route("/api/v1/runs/{id}/approve", post(handlers::approve))
        .route("/api/v1/runs/{id}/cancel", post(handlers::cancel))
        .route("/api/v1/runs/{id}/resume", post(handlers::resume))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_approver,
        ));
    let protected = Router::new()
        .route("/api/v1/alerts", post(handlers::alerts))
        .route("/api/v1/plans", get(handlers::plans))
        .route(
            "/api/v1/plans/{namespace}/{name}/runs",
            post(handlers::trigger),
        )
        .route("/api/v1/runs", get(handlers::runs))
        .route("/api/v1/runs/{id}", get(handlers::run))
        .merge(decisions);
    let metrics = Router::new().route("/metrics", get(handlers::metrics));
    let (protected, open) = if state.metrics_public {
        (protected, metrics)
    } else {
        (protected.merge(metrics), Router::new())
    };
    let protected =
        protected.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(protected)
        .merge(open)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(state.body_limit))
        .with_state(state)
}
