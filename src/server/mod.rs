//! The HTTP API (axum; the reference is docs/api.md): the Alertmanager webhook, manual triggers, runs, health and
//! metrics. [`router`] builds it over the state [`crate::app::App`] assembles; [`limits`] keeps hostile clients
//! (slow, idle, too many, too large) from starving it.

mod auth;
mod error;
mod extract;
mod handlers;
pub mod limits;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use auth::{Auth, Roles, TokenError, Tokens, MIN_TOKEN_BYTES};
pub use error::ApiError;

use crate::run::service::Runs;

/// Default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Default time a client has to send a request's whole body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How the API admits requests: who may do what, and how much a request may send.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The tokens of each role (see [`Auth`]).
    pub auth: Auth,
    pub body_limit: usize,
    /// How long a client has to send a request's whole body.
    pub body_timeout: Duration,
    /// `/metrics` without a token.
    pub metrics_public: bool,
}

impl Settings {
    /// One set of tokens holding every role, the default limits, private metrics.
    pub fn new(tokens: Tokens) -> Self {
        Settings {
            auth: Auth {
                alert_senders: tokens,
                operators: None,
                approvers: None,
            },
            body_limit: DEFAULT_BODY_LIMIT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            metrics_public: false,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub runs: Arc<Runs>,
    pub settings: Settings,
}

/// Which role a group of routes needs.
#[derive(Clone, Copy)]
enum Need {
    AnyRole,
    AlertSender,
    Operator,
    Approver,
}

fn roles(state: &AppState, req: &Request) -> Roles {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.settings.auth.roles(header)
}

async fn require(state: AppState, need: Need, req: Request, next: Next) -> Response {
    let roles = roles(&state, &req);
    if !roles.any() {
        return ApiError::Unauthorized.into_response();
    }
    let (ok, what) = match need {
        Need::AnyRole => (true, ""),
        Need::AlertSender => (
            roles.alert_sender,
            "sending alerts needs the alert sender's token (--token-file)",
        ),
        Need::Operator => (
            roles.operator,
            "reading and triggering plans and runs needs an operator or approver token",
        ),
        Need::Approver => (
            roles.approver,
            "approving, cancelling and resuming runs needs an approver token",
        ),
    };
    if !ok {
        return ApiError::Forbidden(what.into()).into_response();
    }
    next.run(req).await
}

/// Reads the body within its limits (see [`limits::read_body`]), after the token is checked: a
/// client without one must not make the server hold its body.
fn gate(router: Router<AppState>, state: &AppState, need: Need) -> Router<AppState> {
    router
        .route_layer(middleware::from_fn_with_state(state.clone(), limits::read_body))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            move |State(s): State<AppState>, req: Request, next: Next| require(s, need, req, next),
        ))
}

/// The whole API. Every route but `/healthz`, `/readyz` (and `/metrics` when public) needs a
/// bearer token of the role it serves (see [`Auth`]).
pub fn router(state: AppState) -> Router {
    let decisions = Router::new()
        .route("/api/v1/runs/{id}/approve", post(handlers::approve))
        .route("/api/v1/runs/{id}/cancel", post(handlers::cancel))
        .route("/api/v1/runs/{id}/resume", post(handlers::resume));
    let operations = Router::new()
        .route("/api/v1/plans", get(handlers::plans))
        .route("/api/v1/plans/{namespace}/{name}/runs", post(handlers::trigger))
        .route("/api/v1/runs", get(handlers::runs))
        .route("/api/v1/runs/{id}", get(handlers::run));
    let alerts = Router::new().route("/api/v1/alerts", post(handlers::alerts));
    let metrics = Router::new().route("/metrics", get(handlers::metrics));
    let metrics = if state.settings.metrics_public {
        metrics.route_layer(middleware::from_fn_with_state(state.clone(), limits::read_body))
    } else {
        gate(metrics, &state, Need::AnyRole)
    };
    Router::new()
        .merge(gate(decisions, &state, Need::Approver))
        .merge(gate(operations, &state, Need::Operator))
        .merge(gate(alerts, &state, Need::AlertSender))
        .merge(metrics)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(state.settings.body_limit))
        .with_state(state)
}
