//! A fault-injecting HTTPS proxy to put in front of a test cluster's kube-apiserver.
//!
//! The proxy terminates TLS with the test PKI's serving certificate (so a kubeconfig that trusts
//! the test CA trusts the proxy too), forwards every request over HTTPS to the real apiserver and
//! streams the response back — watches included. Faults can be switched on and off at any time with
//! [`FaultProxy::set`]; what happened is counted in [`FaultProxy::stats`].
//!
//! The proxy runs on its own tokio runtime in a dedicated thread, so it is independent of the
//! runtime of any one `#[tokio::test]` and can live in a `static`. Dropping it stops the thread.
//!
//! ```ignore
//! let proxy = FaultProxy::start(&cluster.server, &ca, &pki.join("apiserver.crt"), &pki.join("apiserver.key"));
//! proxy.set(Faults { error_rate: 1.0, error_status: 503, ..Faults::default() });
//! // ... every request through proxy.url() now gets a 503 Status ...
//! proxy.clear();
//! ```
//!
//! Rates are deterministic: with rate `r`, the `i`-th request (counting from 0) that a fault kind
//! considers is faulted when `floor((i + 1) * r) > floor(i * r)`. So a rate of 0.5 fails the 2nd,
//! 4th, 6th … request, and a rate of 1.0 every request. The counters restart at every
//! [`FaultProxy::set`]. When several faults are set, one request gets at most one of them, in this
//! order: `fail_next`, `error_rate`, `timeout_rate`, `reset_rate`; each kind counts only the
//! requests that no earlier kind took.

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::clusters::TestClusters;

/// Faults to inject. `Faults::default()` injects none.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Added before each (matching) request is answered or forwarded.
    pub latency: Duration,
    /// Share (0..=1) of requests answered with `error_status` and a Kubernetes `Status` body,
    /// without forwarding them.
    pub error_rate: f64,
    /// The status of injected errors: 500, 503 or 429 (with `Retry-After: 1`); others work too,
    /// with reason `InternalError` unless listed in [`status_reason`]. Default 503.
    pub error_status: u16,
    /// The next N requests fail with `error_status`, whatever the rates.
    pub fail_next: usize,
    /// Share of requests that are never answered: the connection stays open, without a response,
    /// until the client gives up (or the proxy goes down or is dropped).
    pub timeout_rate: f64,
    /// Share of requests whose response is cut: the request is forwarded, the status, headers and
    /// part of the body are sent back, then the connection is closed abruptly, so that the client
    /// sees a broken response rather than a short one. Where the cut comes:
    /// - body of known length: after half of it (the `Content-Length` stays the full length);
    /// - streamed body (chunked; watches): after `watch_event_limit` complete lines for a watch
    ///   (0 when unset), in the middle of the next line; for other streamed bodies in the middle of
    ///   the first chunk. If the body ends before, the connection is closed before its end.
    pub reset_rate: f64,
    /// For watch requests (`watch=true` or `watch=1` in the query, or an `/api/v1/watch/...`
    /// path): end the response cleanly
    /// (terminating chunk) after this many events (complete newline-terminated lines).
    pub watch_event_limit: Option<usize>,
    /// The whole cluster is unreachable: the proxy stops listening (connections are refused) and
    /// every open connection is aborted. Setting it back to false listens again on the same port.
    /// Not subject to `only_path`.
    pub down: bool,
    /// Apply the other faults (all but `down`) only to requests whose path and query contain this
    /// string; other requests pass through untouched and don't advance the rate counters.
    pub only_path: Option<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: Duration::ZERO,
            error_rate: 0.0,
            error_status: 503,
            fail_next: 0,
            timeout_rate: 0.0,
            reset_rate: 0.0,
            watch_event_limit: None,
            down: false,
            only_path: None,
        }
    }
}

/// What the proxy has seen and done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests sent to the upstream apiserver (a reset request counts: it is forwarded).
    pub forwarded: u64,
    /// Forwarded requests that failed upstream (answered 502).
    pub upstream_errors: u64,
    /// Requests delayed by `latency`.
    pub delayed: u64,
    /// Requests answered with an injected error status (`error_rate` and `fail_next`).
    pub errors: u64,
    /// Requests held without an answer (`timeout_rate`).
    pub timeouts: u64,
    /// Responses chosen to be cut mid-way (`reset_rate`).
    pub resets: u64,
    /// Watch responses ended by `watch_event_limit`.
    pub watch_cuts: u64,
    /// Open connections aborted by going `down`.
    pub aborted_connections: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    forwarded: AtomicU64,
    upstream_errors: AtomicU64,
    delayed: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    resets: AtomicU64,
    watch_cuts: AtomicU64,
    aborted_connections: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            connections: get(&self.connections),
            requests: get(&self.requests),
            forwarded: get(&self.forwarded),
            upstream_errors: get(&self.upstream_errors),
            delayed: get(&self.delayed),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            resets: get(&self.resets),
            watch_cuts: get(&self.watch_cuts),
            aborted_connections: get(&self.aborted_connections),
        }
    }
}

/// The faults in force and the deterministic rate counters.
struct FaultState {
    faults: Faults,
    fail_next: usize,
    error_seq: u64,
    timeout_seq: u64,
    reset_seq: u64,
}

impl FaultState {
    fn new(faults: Faults) -> Self {
        FaultState {
            fail_next: faults.fail_next,
            faults,
            error_seq: 0,
            timeout_seq: 0,
            reset_seq: 0,
        }
    }
}

/// Whether the `seq`-th request considered at `rate` is faulted (and advances `seq`).
fn tick(seq: &mut u64, rate: f64) -> bool {
    let rate = rate.clamp(0.0, 1.0);
    let i = *seq as f64;
    *seq += 1;
    ((i + 1.0) * rate).floor() > (i * rate).floor()
}

/// What the listener should be doing; `gen` identifies the change so that it can be acknowledged.
#[derive(Clone, Copy, Debug, Default)]
struct Control {
    down: bool,
    shutdown: bool,
    gen: u64,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    state: Mutex<FaultState>,
    counters: Counters,
    /// The last `Control::gen` the listener has acted on.
    applied: Mutex<u64>,
    applied_cv: Condvar,
}

impl Shared {
    fn ack(&self, gen: u64) {
        let mut applied = self.applied.lock().unwrap();
        if *applied < gen {
            *applied = gen;
        }
        self.applied_cv.notify_all();
    }
}

/// A fault-injecting HTTPS proxy in front of one apiserver. See the module documentation.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    control: watch::Sender<Control>,
    /// Serializes [`FaultProxy::set`] calls so that control generations are acknowledged in order.
    set_lock: Mutex<()>,
    thread: Option<JoinHandle<()>>,
}

type ProxyBody = UnsyncBoxBody<Bytes, io::Error>;

const HOLD_LIMIT: Duration = Duration::from_secs(3600);
/// How long a cut response lingers after its partial body so that it is flushed to the client
/// before the connection is closed.
const CUT_FLUSH: Duration = Duration::from_millis(100);
const ACK_TIMEOUT: Duration = Duration::from_secs(15);

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`https://127.0.0.1:PORT`),
    /// trusting `ca_cert` for the upstream and serving `serving_cert`/`serving_key` (PEM) itself.
    /// Returns once the proxy is listening. Panics on unreadable certificates or keys.
    pub fn start(upstream: &str, ca_cert: &Path, serving_cert: &Path, serving_key: &Path) -> Self {
        let tls = server_tls(serving_cert, serving_key);
        let ca_pem = std::fs::read(ca_cert).unwrap_or_else(|e| panic!("proxy: reading CA {}: {e}", ca_cert.display()));
        let ca = reqwest::Certificate::from_pem(&ca_pem).expect("proxy: parsing the CA certificate");
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .no_proxy()
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("proxy: building the upstream client");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            state: Mutex::new(FaultState::new(Faults::default())),
            counters: Counters::default(),
            applied: Mutex::new(0),
            applied_cv: Condvar::new(),
        });
        let (control, control_rx) = watch::channel(Control::default());
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy: building its runtime");
                rt.block_on(async move {
                    let listener = match bind(0) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = port_tx.send(Err(e));
                            return;
                        }
                    };
                    let port = listener.local_addr().expect("proxy: local address").port();
                    let _ = port_tx.send(Ok(port));
                    run(thread_shared, TlsAcceptor::from(tls), listener, port, control_rx).await;
                });
            })
            .expect("proxy: spawning its thread");
        let port = match port_rx.recv() {
            Ok(Ok(port)) => port,
            Ok(Err(e)) => panic!("proxy: binding a loopback port: {e}"),
            Err(_) => panic!("proxy: its thread died while starting"),
        };
        FaultProxy {
            port,
            shared,
            control,
            set_lock: Mutex::new(()),
            thread: Some(thread),
        }
    }

    /// A proxy in front of one of the test clusters, serving the clusters' own certificate.
    pub fn in_front_of(clusters: &TestClusters, cluster: &str) -> Self {
        let pki = clusters.pki_dir();
        FaultProxy::start(
            &clusters.cluster(cluster).server,
            &clusters.ca_cert(),
            &pki.join("apiserver.crt"),
            &pki.join("apiserver.key"),
        )
    }

    /// `https://127.0.0.1:PORT`; the same across `down`/up.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The upstream this proxy forwards to.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// Replaces the faults in force (and restarts the rate counters). Returns once a change of
    /// `down` has taken effect: the listener is closed and open connections aborted, or the port
    /// is listened on again.
    pub fn set(&self, faults: Faults) {
        let _serial = self.set_lock.lock().unwrap();
        let down = faults.down;
        *self.shared.state.lock().unwrap() = FaultState::new(faults);
        let current = *self.control.borrow();
        if current.down == down {
            return;
        }
        let gen = current.gen + 1;
        self.control.send_replace(Control {
            down,
            shutdown: false,
            gen,
        });
        let applied = self.shared.applied.lock().unwrap();
        let (applied, timeout) = self
            .shared
            .applied_cv
            .wait_timeout_while(applied, ACK_TIMEOUT, |applied| *applied < gen)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "proxy on port {}: going {} did not take effect within {ACK_TIMEOUT:?} (applied {}, wanted {gen})",
            self.port,
            if down { "down" } else { "up" },
            *applied
        );
    }

    /// Changes some of the faults in force (and restarts the rate counters), as [`Self::set`].
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        let mut faults = self.faults();
        change(&mut faults);
        self.set(faults);
    }

    /// Removes every fault (and brings the proxy back up if it was down).
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// The faults in force (`fail_next` as set, not what is left of it).
    pub fn faults(&self) -> Faults {
        self.shared.state.lock().unwrap().faults.clone()
    }

    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.control.send_modify(|c| c.shutdown = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn server_tls(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    let cert_pem = std::fs::read(cert).unwrap_or_else(|e| panic!("proxy: reading {}: {e}", cert.display()));
    let key_pem = std::fs::read(key).unwrap_or_else(|e| panic!("proxy: reading {}: {e}", key.display()));
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("proxy: parsing {}: {e}", cert.display()));
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .unwrap_or_else(|e| panic!("proxy: parsing {}: {e}", key.display()))
        .unwrap_or_else(|| panic!("proxy: no private key in {}", key.display()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("proxy: TLS protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("proxy: serving certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A listener on 127.0.0.1:`port` with SO_REUSEADDR, so that the port can be listened on again
/// right after it was closed (connections of the previous listener linger in TIME_WAIT).
fn bind(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(1024)
}

async fn rebind(port: u16) -> TcpListener {
    let mut attempt = 0u32;
    loop {
        match bind(port) {
            Ok(listener) => return listener,
            Err(e) => {
                attempt += 1;
                if attempt.is_multiple_of(50) {
                    eprintln!("fault proxy: still cannot listen on 127.0.0.1:{port} again: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The listener's life: accept while up; when going down, close the listener and abort every
/// connection; when coming back up, listen on the same port again.
async fn run(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    listener: TcpListener,
    port: u16,
    mut control: watch::Receiver<Control>,
) {
    let mut listener = Some(listener);
    loop {
        let ctl = *control.borrow_and_update();
        if ctl.shutdown {
            return;
        }
        if ctl.down {
            listener = None;
            shared.ack(ctl.gen);
            if control.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => {
                tokio::select! {
                    l = rebind(port) => l,
                    changed = control.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => return,
                    },
                }
            }
        };
        shared.ack(ctl.gen);
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                changed = control.changed() => {
                    let ctl = *control.borrow();
                    if changed.is_err() || ctl.shutdown || ctl.down {
                        break;
                    }
                    shared.ack(ctl.gen);
                }
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => {
                        bump(&shared.counters.connections);
                        conns.spawn(serve_connection(shared.clone(), acceptor.clone(), stream));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(l);
        shared
            .counters
            .aborted_connections
            .fetch_add(conns.len() as u64, Ordering::Relaxed);
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

async fn serve_connection(shared: Arc<Shared>, acceptor: TlsAcceptor, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let service = service_fn(move |req| handle(shared.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// What to do with one request.
enum Action {
    Forward { shape: Shape },
    Fail(u16),
    Hold,
}

/// How to pass a forwarded response's body on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Pass,
    /// End cleanly after this many lines.
    WatchLimit(usize),
    /// Cut (reset) the connection after this many lines, in the middle of the next one.
    ResetAfterLines(usize),
}

/// A watch: `watch=true` (or another true value, as Go's `strconv.ParseBool` reads it) in the
/// query, or a path of the old `/api/v1/watch/...` form.
fn is_watch(path: &str, query: Option<&str>) -> bool {
    let watch_param = |kv: &str| {
        kv.strip_prefix("watch=")
            .is_some_and(|v| matches!(v, "1" | "t" | "T" | "true" | "True" | "TRUE"))
    };
    path.contains("/watch/") || query.is_some_and(|q| q.split('&').any(watch_param))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    let counters = &shared.counters;
    bump(&counters.requests);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let watch = is_watch(req.uri().path(), req.uri().query());

    let (latency, action) = {
        let mut st = shared.state.lock().unwrap();
        let st = &mut *st;
        let f = &st.faults;
        if f.only_path
            .as_ref()
            .is_some_and(|p| !path_and_query.contains(p.as_str()))
        {
            (Duration::ZERO, Action::Forward { shape: Shape::Pass })
        } else {
            let action = if st.fail_next > 0 {
                st.fail_next -= 1;
                Action::Fail(f.error_status)
            } else if tick(&mut st.error_seq, f.error_rate) {
                Action::Fail(f.error_status)
            } else if tick(&mut st.timeout_seq, f.timeout_rate) {
                Action::Hold
            } else if tick(&mut st.reset_seq, f.reset_rate) {
                let after = if watch { f.watch_event_limit.unwrap_or(0) } else { 0 };
                Action::Forward {
                    shape: Shape::ResetAfterLines(after),
                }
            } else if let (true, Some(n)) = (watch, f.watch_event_limit) {
                Action::Forward {
                    shape: Shape::WatchLimit(n),
                }
            } else {
                Action::Forward { shape: Shape::Pass }
            };
            (f.latency, action)
        }
    };

    if !latency.is_zero() {
        bump(&counters.delayed);
        tokio::time::sleep(latency).await;
    }
    match action {
        Action::Fail(code) => {
            bump(&counters.errors);
            Ok(status_response(code, "injected fault"))
        }
        Action::Hold => {
            bump(&counters.timeouts);
            tokio::time::sleep(HOLD_LIMIT).await;
            Ok(status_response(504, "injected timeout: held for an hour"))
        }
        Action::Forward { shape } => {
            if matches!(shape, Shape::ResetAfterLines(_)) {
                bump(&counters.resets);
            }
            Ok(forward(&shared, req, &path_and_query, shape).await)
        }
    }
}

/// Hop-by-hop headers, and those the proxy sets itself.
fn skip_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

async fn forward(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    path_and_query: &str,
    shape: Shape,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status_response(400, &format!("proxy: reading the request body: {e}")),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        // Responses are passed on byte for byte: ask for them uncompressed so that watch events
        // can be counted.
        if !skip_header(name) && name != header::ACCEPT_ENCODING {
            headers.append(name.clone(), value.clone());
        }
    }
    let url = format!("{}{}", shared.upstream, path_and_query);
    let mut upstream_req = shared.client.request(parts.method, url).headers(headers);
    if !body.is_empty() {
        upstream_req = upstream_req.body(body);
    }
    bump(&shared.counters.forwarded);
    let upstream = match upstream_req.send().await {
        Ok(r) => r,
        Err(e) => {
            bump(&shared.counters.upstream_errors);
            return status_response(502, &format!("proxy: upstream request failed: {e}"));
        }
    };

    let mut response = Response::builder().status(upstream.status());
    let length = upstream
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    for (name, value) in upstream.headers() {
        if !skip_header(name) {
            response = response.header(name, value);
        }
    }
    // The body length is kept for a full or reset body of known length (a reset then leaves it
    // short), and dropped otherwise so that the body goes out chunked.
    let cut = match (shape, length) {
        (Shape::Pass, Some(len)) | (Shape::ResetAfterLines(_), Some(len @ 1..)) => {
            response = response.header(header::CONTENT_LENGTH, len);
            match shape {
                Shape::Pass => Cutter::Pass,
                _ => Cutter::ResetAtByte { at: len / 2, sent: 0 },
            }
        }
        (Shape::Pass, None) => Cutter::Pass,
        (Shape::WatchLimit(n), _) => Cutter::EndAfterLines { left: n },
        (Shape::ResetAfterLines(n), _) => Cutter::ResetAfterLines { left: n },
    };
    let stream = BodyStream::new(upstream, cut, shared.clone());
    let body = StreamBody::new(futures::stream::unfold(stream, BodyStream::next));
    response
        .body(BodyExt::boxed_unsync(body))
        .unwrap_or_else(|e| status_response(502, &format!("proxy: passing on the upstream response: {e}")))
}

/// Where a response body is cut.
#[derive(Clone, Copy, Debug)]
enum Cutter {
    Pass,
    /// End cleanly once `left` more lines have gone through.
    EndAfterLines {
        left: usize,
    },
    /// Reset once `left` more lines have gone through, in the middle of what follows.
    ResetAfterLines {
        left: usize,
    },
    /// Reset once byte `at` is reached.
    ResetAtByte {
        at: u64,
        sent: u64,
    },
}

/// What to do after passing on part of a chunk.
#[derive(Debug, PartialEq)]
enum After {
    Continue,
    End,
    Reset,
}

/// The end of the `n`-th (1-based) newline in `data`, or the number of newlines if fewer.
fn nth_line_end(data: &[u8], n: usize) -> Result<usize, usize> {
    let mut seen = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return Ok(i + 1);
            }
        }
    }
    Err(seen)
}

impl Cutter {
    /// Whether the body is to be cut before any of it goes out.
    fn at_start(&self) -> Option<After> {
        match *self {
            Cutter::EndAfterLines { left: 0 } => Some(After::End),
            Cutter::ResetAtByte { at: 0, .. } => Some(After::Reset),
            _ => None,
        }
    }

    /// Takes the part of `chunk` to pass on, and says what comes next.
    fn feed(&mut self, chunk: Bytes) -> (Bytes, After) {
        match self {
            Cutter::Pass => (chunk, After::Continue),
            Cutter::EndAfterLines { left } => match nth_line_end(&chunk, *left) {
                Ok(end) => (chunk.slice(..end), After::End),
                Err(seen) => {
                    *left -= seen;
                    (chunk, After::Continue)
                }
            },
            Cutter::ResetAfterLines { left } => {
                let start = if *left == 0 {
                    0
                } else {
                    match nth_line_end(&chunk, *left) {
                        Ok(end) => {
                            *left = 0;
                            end
                        }
                        Err(seen) => {
                            *left -= seen;
                            return (chunk, After::Continue);
                        }
                    }
                };
                let rest = chunk.len() - start;
                if rest == 0 {
                    (chunk, After::Continue)
                } else {
                    (chunk.slice(..start + rest / 2), After::Reset)
                }
            }
            Cutter::ResetAtByte { at, sent } => {
                let len = chunk.len() as u64;
                if *sent + len < *at {
                    *sent += len;
                    (chunk, After::Continue)
                } else {
                    let take = (*at - *sent) as usize;
                    *sent = *at;
                    (chunk.slice(..take), After::Reset)
                }
            }
        }
    }
}

enum Phase {
    Streaming,
    /// Partial data went out (or none): linger so that it is flushed, then break the connection.
    Reset,
    Done,
}

/// A forwarded response body on its way to the client.
struct BodyStream {
    upstream: reqwest::Response,
    cutter: Cutter,
    phase: Phase,
    shared: Arc<Shared>,
}

type Item = Result<Frame<Bytes>, io::Error>;

impl BodyStream {
    fn new(upstream: reqwest::Response, cutter: Cutter, shared: Arc<Shared>) -> Self {
        let phase = match cutter.at_start() {
            Some(After::End) => {
                bump(&shared.counters.watch_cuts);
                Phase::Done
            }
            Some(After::Reset) => Phase::Reset,
            _ => Phase::Streaming,
        };
        BodyStream {
            upstream,
            cutter,
            phase,
            shared,
        }
    }

    async fn next(mut self) -> Option<(Item, Self)> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Reset => {
                    tokio::time::sleep(CUT_FLUSH).await;
                    self.phase = Phase::Done;
                    return Some((Err(reset_error()), self));
                }
                Phase::Streaming => {}
            }
            match self.upstream.chunk().await {
                Ok(Some(chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    let (data, after) = self.cutter.feed(chunk);
                    match after {
                        After::Continue => {}
                        After::End => {
                            bump(&self.shared.counters.watch_cuts);
                            self.phase = Phase::Done;
                        }
                        After::Reset => self.phase = Phase::Reset,
                    }
                    if !data.is_empty() {
                        return Some((Ok(Frame::data(data)), self));
                    }
                }
                Ok(None) => match self.cutter {
                    Cutter::ResetAfterLines { .. } | Cutter::ResetAtByte { .. } => self.phase = Phase::Reset,
                    Cutter::Pass | Cutter::EndAfterLines { .. } => return None,
                },
                Err(e) => {
                    self.phase = Phase::Done;
                    return Some((Err(io::Error::other(e)), self));
                }
            }
        }
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "fault proxy: injected reset")
}

/// A response with a Kubernetes `Status` body (`Retry-After: 1` for 429).
fn status_response(code: u16, message: &str) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": status_reason(status.as_u16()),
        "code": status.as_u16(),
    });
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::TOO_MANY_REQUESTS {
        body["details"] = serde_json::json!({"retryAfterSeconds": 1});
        response = response.header(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    let body = Full::new(Bytes::from(body.to_string())).map_err(|never| match never {});
    response
        .body(BodyExt::boxed_unsync(body))
        .expect("a valid status response")
}

/// The Kubernetes `Status.reason` for an HTTP status.
pub fn status_reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}
