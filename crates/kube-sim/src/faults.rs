//! Faults a simulated cluster can be given in the world file (I/O edge: it delays requests and
//! cuts watch streams), the same kinds the test harness's fault proxy injects: latency, the
//! first requests or a share of them answered with an error `Status`, a share never answered,
//! watches that end after a few events, and a cluster that is down (nothing listens on its
//! port).
//!
//! ```yaml
//! clusters:
//!   north:
//!     faults: {latency: 200ms, errorRate: 0.25, errorStatus: 503, watchEventLimit: 3}
//! ```
//!
//! Rates are deterministic, as in the proxy: with rate `r`, the `i`-th request (from 0) is
//! faulted when `floor((i + 1) * r) > floor(i * r)`. One request gets at most one fault, in this
//! order: `failNext`, `errorRate`, `timeoutRate`; each kind counts only the requests no earlier
//! kind took.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Method};
use axum::response::Response;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

/// The faults of one cluster, as written in the world file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// Added before every request is answered, e.g. `200ms`.
    #[serde(default)]
    pub latency: Option<String>,
    /// Share (0..=1) of requests answered with `errorStatus` instead.
    #[serde(default)]
    pub error_rate: f64,
    /// 500, 503 (default) or 429 (with `Retry-After: 1`).
    #[serde(default)]
    pub error_status: Option<u16>,
    /// The first N requests fail with `errorStatus`.
    #[serde(default)]
    pub fail_next: u64,
    /// Share (0..=1) of requests never answered: the client waits until it gives up.
    #[serde(default)]
    pub timeout_rate: f64,
    /// Watches end (cleanly) after this many events.
    #[serde(default)]
    pub watch_event_limit: Option<usize>,
    /// Nothing listens on the cluster's port: every connection is refused.
    #[serde(default)]
    pub down: bool,
    /// Apply latency, errors and watch limits only to requests whose path contains this.
    #[serde(default)]
    pub only_path: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("failed to read the faults of cluster {cluster:?}: {reason}")]
    Invalid { cluster: String, reason: String },
}

/// Faults in force on one served cluster.
#[derive(Debug, Default)]
pub struct Faults {
    spec: FaultSpec,
    latency: Duration,
    /// Requests considered by each fault kind: fail-next, errors, timeouts.
    seen: [AtomicU64; 3],
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

fn reason(code: u16) -> &'static str {
    match code {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// The longest duration a world or an annotation may give (a latency or delay longer than a day
/// would only hang the CI job that rehearses with it).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A Go-style duration of one or more `<number><unit>` parts (`ms`, `s`, `m`, `h`), at most
/// [`MAX_DURATION`].
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    parse_any_duration(text).filter(|d| *d <= MAX_DURATION)
}

fn parse_any_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(n);
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(u);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(number.parse::<f64>().ok()? * scale).ok()?)?;
        rest = next;
    }
    Some(total)
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_that_overflow_or_exceed_a_day_are_refused_not_a_panic() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10000000000000000000s10000000000000000000s"), None);
        assert_eq!(parse_duration("1000000000h"), None);
        assert_eq!(parse_duration("25h"), None);
    }
}

impl Faults {
    pub fn new(cluster: &str, spec: FaultSpec) -> Result<Faults, FaultError> {
        let err = |reason: String| FaultError::Invalid {
            cluster: cluster.to_string(),
            reason,
        };
        let latency = match &spec.latency {
            Some(l) => parse_duration(l).ok_or_else(|| {
                err(format!(
                    "latency {l:?} is not a duration of at most 24h (write e.g. 200ms, 2s, 1m)"
                ))
            })?,
            None => Duration::ZERO,
        };
        for (name, rate) in [("errorRate", spec.error_rate), ("timeoutRate", spec.timeout_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(err(format!("{name} must be between 0 and 1, not {rate}")));
            }
        }
        Ok(Faults {
            spec,
            latency,
            seen: Default::default(),
        })
    }

    pub fn down(&self) -> bool {
        self.spec.down
    }

    fn applies(&self, path: &str) -> bool {
        self.spec.only_path.as_deref().is_none_or(|p| path.contains(p))
    }

    /// Delays the request, or answers it with an injected error.
    pub async fn before(&self, _method: &Method, path: &str) -> Option<Response> {
        let health = matches!(path, "/healthz" | "/readyz" | "/livez");
        if !self.applies(path) || health {
            return None;
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let fail_next = self.seen[0].fetch_add(1, Ordering::Relaxed) < self.spec.fail_next;
        let error = fail_next || self.hit(1, self.spec.error_rate);
        if !error {
            if self.hit(2, self.spec.timeout_rate) {
                // Never answered: the client's own timeout ends it.
                std::future::pending::<()>().await;
            }
            return None;
        }
        let code = self.spec.error_status.unwrap_or(503);
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "injected fault (recoverd sim)",
            "reason": reason(code), "code": code});
        let mut resp = Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, "application/json");
        if code == 429 {
            resp = resp.header(header::RETRY_AFTER, "1");
        }
        resp.body(Body::from(body.to_string())).ok()
    }

    /// Whether the next request counted by fault kind `kind` gets it, at `rate`.
    fn hit(&self, kind: usize, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        let i = self.seen[kind].fetch_add(1, Ordering::Relaxed) as f64;
        ((i + 1.0) * rate).floor() > (i * rate).floor()
    }

    /// Ends a watch after the configured number of events.
    pub fn wrap_watch(
        &self,
        path: &str,
        stream: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> WatchStream {
        match self.spec.watch_event_limit.filter(|_| self.applies(path)) {
            Some(n) => Box::pin(stream.take(n)),
            None => Box::pin(stream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn half_the_requests_fail_at_an_error_rate_of_a_half() {
        let f = Faults::new(
            "x",
            FaultSpec {
                error_rate: 0.5,
                ..Default::default()
            },
        )
        .unwrap();
        let mut failed = Vec::new();
        for _ in 0..4 {
            failed.push(f.before(&Method::GET, "/api/v1/pods").await.is_some());
        }
        assert_eq!(failed, [false, true, false, true]);
    }
}
