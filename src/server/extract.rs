//! Request extractors whose rejections are [`ApiError`]s, so every malformed request gets the
//! same JSON error body that says what to fix, never axum's plain-text default.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

/// A request body meant to be JSON: read within the body limit (413) and kept unparsed, so a
/// large webhook batch can be parsed off the runtime's worker threads. [`JsonBytes::parse`]
/// checks the content type (415) and the JSON (400).
pub struct JsonBytes {
    bytes: Bytes,
    json_content_type: bool,
}

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let json_content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|ct| ct.trim().eq_ignore_ascii_case("application/json"));
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(state.settings.body_limit)
            } else {
                ApiError::BadRequest(format!("failed to read the body: {r}"))
            }
        })?;
        Ok(JsonBytes {
            bytes,
            json_content_type,
        })
    }
}

impl JsonBytes {
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.json_content_type {
            return Err(ApiError::UnsupportedMediaType);
        }
        serde_json::from_slice(&self.bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }

    /// An empty body (with any content type) means "all defaults".
    pub fn parse_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.bytes.is_empty() {
            return Ok(T::default());
        }
        self.parse()
    }
}

/// A query string, its errors as [`ApiError::BadRequest`].
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|r| ApiError::BadRequest(format!("invalid query string: {}", r.body_text())))
    }
}
