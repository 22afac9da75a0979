//! The simulator's HTTP face (axum): one router per cluster that reads Kubernetes API paths
//! (`/api`, `/apis/{group}/{version}`, `…/namespaces/{ns}/{resource}/{name}/{subresource}`),
//! query parameters and content types, calls the verbs of [`super::api`], and writes JSON
//! bodies, `Status` errors and watch streams as kube-apiserver v1.20 does. Plain HTTP on
//! loopback: there is no TLS and no authentication.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::api::{Cluster, ListOptions, Target, WriteOptions};
use super::faults::Faults;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{Cause, StatusError};
use super::strict::{BodyFields, Mode};
use super::watch::{self, WatchRequest};

/// How long a deleted namespace or CRD stays `Terminating` before its content and itself go
/// (a real cluster's controllers take about as long).
const FINALIZE_AFTER: Duration = Duration::from_secs(5);
/// How often a namespace or CRD whose content has finalizers is looked at again.
const FINALIZE_RETRY: Duration = Duration::from_millis(500);

/// What every request handler shares.
#[derive(Clone)]
pub struct Served {
    pub cluster: Arc<Cluster>,
    /// `host:port` the cluster is served on.
    pub address: String,
    pub faults: Arc<Faults>,
    /// The last event the cluster's controllers acted on (`None`: no controllers).
    pub handled: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Served {
    /// Waits (at most 2 s) until the controllers have acted on every change so far, so that a
    /// write's answer comes once the pods of a new StatefulSet exist: rehearsals are
    /// deterministic.
    async fn settle(&self) {
        let Some(handled) = &self.handled else { return };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while handled.load(std::sync::atomic::Ordering::SeqCst) < self.cluster.last_event_rv()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The router serving one cluster.
pub fn router(served: Served) -> Router {
    Router::new()
        .route("/api/v1/namespaces/{ns}/pods/{name}/exec", axum::routing::any(exec))
        .fallback(handle)
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(served)
}

/// `sendInitialEvents` of a watch (a streaming list), checked with `resourceVersionMatch` as
/// the API server checks them.
fn initial_events(q: &Query, watch: bool) -> Result<Option<bool>, StatusError> {
    let send = q.get("sendInitialEvents").map(|v| v == "true" || v == "1");
    let rv_match = q.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let mut causes = Vec::new();
    let continued = q.get("continue").is_some_and(|c| !c.is_empty());
    let continue_forbidden = || {
        Cause::forbidden(
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden when continue is provided",
        )
    };
    if !watch {
        if let Some(m) = rv_match {
            let rv = q.get("resourceVersion").unwrap_or("");
            if rv.is_empty() {
                causes.push(Cause::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if continued {
                causes.push(continue_forbidden());
            }
            if m != "Exact" && m != "NotOlderThan" {
                causes.push(Cause::not_supported(
                    "resourceVersionMatch",
                    &json!(m),
                    &[json!("Exact"), json!("NotOlderThan"), json!("")],
                ));
            }
            if m == "Exact" && rv == "0" {
                causes.push(Cause::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if send.is_some() {
            causes.push(Cause::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
    } else {
        if send.is_some() && rv_match != Some("NotOlderThan") {
            causes.push(Cause::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if let Some(m) = rv_match {
            if send.is_none() {
                causes.push(Cause::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if m != "NotOlderThan" {
                causes.push(Cause::not_supported(
                    "resourceVersionMatch",
                    &json!(m),
                    &[json!("NotOlderThan")],
                ));
            }
            if continued {
                causes.push(continue_forbidden());
            }
        }
    }
    if causes.is_empty() {
        Ok(send)
    } else {
        Err(StatusError::invalid("meta.k8s.io", "ListOptions", "", causes))
    }
}

/// Whether a discovery request asks for the aggregated document.
fn aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(super::discovery::wants_aggregated)
}

fn json_response(code: u16, v: &Value) -> Response {
    let mut body = v.to_string();
    body.push('\n');
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Adds a `Warning: 299 - "…"` header per warning the write collected.
fn with_warnings(mut resp: Response, o: &WriteOptions) -> Response {
    let warnings = o.warnings.lock().unwrap_or_else(|e| e.into_inner());
    for w in warnings.iter() {
        let text = format!("299 - {}", Value::String(w.clone()));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// `GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec` (a WebSocket upgrade).
async fn exec(
    State(s): State<Served>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    uri: Uri,
    ws: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let query = Query::parse(uri.query()).0;
    let cmd = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let container = query.iter().find(|(k, _)| k == "container").map(|(_, v)| v.clone());
    super::exec::serve(&s.cluster, &ns, &name, container.as_deref(), cmd, ws).unwrap_or_else(|e| error_response(&e))
}

fn error_response(e: &StatusError) -> Response {
    tracing::debug!(code = e.code, reason = e.reason_label(), "request failed");
    json_response(e.code, &e.to_json())
}

/// Query parameters, percent-decoded.
struct Query(Vec<(String, String)>);

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (percent_decode(k), percent_decode(v)),
                    None => (percent_decode(kv), String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True" | "")) && self.0.iter().any(|(key, _)| key == k)
    }

    /// The integer parameters of a list or watch, refused as the API server's parameter
    /// decoder refuses them.
    fn integers(&self) -> Result<(), StatusError> {
        for k in ["limit", "timeoutSeconds"] {
            if let Some(v) = self.get(k).filter(|v| !v.is_empty()) {
                if v.parse::<i64>().is_err() {
                    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
                    let why = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                        "value out of range"
                    } else {
                        "invalid syntax"
                    };
                    return Err(StatusError::bad_request(format!(
                        "strconv.ParseInt: parsing {v:?}: {why}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Why the `resourceVersion` of a list or watch is not one, as the storage says it.
    fn bad_resource_version(&self) -> Option<String> {
        let rv = self.get("resourceVersion").filter(|r| !r.is_empty())?;
        rv.parse::<u64>().is_err().then(|| {
            format!("resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax")
        })
    }

    fn list_options(&self) -> Result<ListOptions, StatusError> {
        Ok(ListOptions {
            labels: LabelSelector::parse(self.get("labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(self.get("fieldSelector").unwrap_or(""))?,
            limit: self.get("limit").and_then(|l| l.parse().ok()),
            continue_token: self.get("continue").filter(|c| !c.is_empty()).map(str::to_string),
        })
    }

    /// The options of a write; `options` is the kind errors name (`CreateOptions`, …) and
    /// `body` the request body, scanned for duplicate fields.
    fn write_options(&self, headers: &HeaderMap, options: &str, body: &[u8]) -> Result<WriteOptions, StatusError> {
        let dry_run = match self.get("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(StatusError::invalid(
                    "meta.k8s.io",
                    options,
                    "",
                    vec![super::status::Cause {
                        reason: "FieldValueNotSupported".into(),
                        message: format!("Unsupported value: [{}]: supported values: \"All\"", json!(other)),
                        field: "dryRun".into(),
                    }],
                ))
            }
        };
        Ok(WriteOptions {
            dry_run,
            field_manager: self.get("fieldManager").map(str::to_string),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            force: self.get("force").map(|f| f == "true" || f == "1"),
            field_validation: Mode::parse(self.get("fieldValidation"), options)?,
            body_fields: BodyFields::scan(body),
            warnings: Default::default(),
        })
    }
}

/// What a path names.
enum Route {
    Version,
    Health,
    Api,
    CoreV1,
    Apis,
    Group(String),
    GroupVersion(String, String),
    OpenApiIndex,
    OpenApiGroupVersion(String, String),
    Resource(Box<Target>),
    /// A group nothing serves: the Go mux's plain-text 404.
    NoGroup,
}

fn has_group(s: &Served, group: &str) -> Result<bool, StatusError> {
    let store = s
        .cluster
        .store
        .lock()
        .map_err(|_| StatusError::internal("the store is poisoned"))?;
    Ok(store.resources.has_group(group))
}

fn route(s: &Served, path: &str) -> Result<Route, StatusError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "readyz" | "livez", ..] => return Ok(Route::Health),
        ["openapi", "v3"] => return Ok(Route::OpenApiIndex),
        ["openapi", "v3", "api", v] => return Ok(Route::OpenApiGroupVersion(String::new(), v.to_string())),
        ["openapi", "v3", "apis", g, v] => return Ok(Route::OpenApiGroupVersion(g.to_string(), v.to_string())),
        ["openapi", ..] => return Err(StatusError::page_not_found()),
        ["api"] => return Ok(Route::Api),
        ["api", "v1"] => return Ok(Route::CoreV1),
        ["apis"] => return Ok(Route::Apis),
        ["apis", g, ..] if !has_group(s, g)? => return Ok(Route::NoGroup),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["apis", g, v] => return Ok(Route::GroupVersion(g.to_string(), v.to_string())),
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(StatusError::page_not_found()),
    };
    let resources = {
        let store = s
            .cluster
            .store
            .lock()
            .map_err(|_| StatusError::internal("the store is poisoned"))?;
        store.resources.clone()
    };
    let find = |plural: &str| {
        resources
            .find(group, version, plural)
            .cloned()
            .ok_or_else(StatusError::page_not_found)
    };
    let target = |ty, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        ty,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
    };
    let is_sub = |ty: &super::discovery::ResourceType, sub: &str| ty.subresources.iter().any(|(s, _)| s == sub);
    let t = match rest {
        [res] => target(find(res)?, None, None, None),
        ["namespaces", ns, sub] if group.is_empty() && matches!(*sub, "status" | "finalize") => {
            target(find("namespaces")?, None, Some(ns), Some(sub))
        }
        ["namespaces", ns, res] => {
            let ty = find(res)?;
            if !ty.namespaced {
                return Err(StatusError::page_not_found());
            }
            target(ty, Some(ns), None, None)
        }
        ["namespaces", ns, res, name] => {
            let ty = find(res)?;
            if !ty.namespaced {
                return Err(StatusError::page_not_found());
            }
            target(ty, Some(ns), Some(name), None)
        }
        ["namespaces", ns, res, name, sub] => {
            let ty = find(res)?;
            if !ty.namespaced || !is_sub(&ty, sub) {
                return Err(StatusError::page_not_found());
            }
            target(ty, Some(ns), Some(name), Some(sub))
        }
        [res, name] => {
            let ty = find(res)?;
            if ty.namespaced {
                return Err(StatusError::page_not_found());
            }
            target(ty, None, Some(name), None)
        }
        [res, name, sub] => {
            let ty = find(res)?;
            if ty.namespaced || !is_sub(&ty, sub) {
                return Err(StatusError::page_not_found());
            }
            target(ty, None, Some(name), Some(sub))
        }
        _ => return Err(StatusError::page_not_found()),
    };
    if t.subresource.as_deref() == Some("scale") {
        // Served in discovery, but the simulator has no Scale objects.
        return Err(StatusError::page_not_found());
    }
    Ok(Route::Resource(Box::new(t)))
}

fn parse_body(t: &Target, headers: &HeaderMap, body: &Bytes) -> Result<Value, StatusError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let ct = ct.split(';').next().unwrap_or("").trim();
    match ct {
        "application/json" | "" | "*/*" => {
            let parsed = if t.ty.is_custom() {
                serde_json::from_slice(body)
            } else {
                super::strict::parse_merging_duplicates(body)
            };
            parsed.map_err(|e| {
                StatusError::bad_request(format!("the request body is not valid JSON: {e}"))
            })
        }
        "application/vnd.kubernetes.protobuf" if !t.ty.is_custom() => super::proto::decode(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|e| StatusError::bad_request(format!("error decoding YAML: {e}")))?;
            serde_yaml::from_str(text)
                .map_err(|e| StatusError::bad_request(format!("error decoding YAML: {e}")))
        }
        _ if !t.ty.is_custom() => Err(super::api::restful_unsupported_media_type()),
        _ => Err(StatusError::unsupported_media_type(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        )),
    }
}

async fn handle(State(s): State<Served>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(resp) = s.faults.before(&method, uri.path()).await {
        return resp;
    }
    match serve(&s, &method, &uri, &headers, body) {
        Ok(r) => {
            if method != Method::GET {
                s.settle().await;
            }
            r
        }
        Err(e) => error_response(&e),
    }
}

fn serve(s: &Served, method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Result<Response, StatusError> {
    let q = Query::parse(uri.query());
    let r = route(s, uri.path())?;
    let store = || {
        s.cluster
            .store
            .lock()
            .map_err(|_| StatusError::internal("the store is poisoned"))
    };
    let t = match r {
        Route::Version => {
            return Ok(json_response(
                200,
                &json!({"major": "1", "minor": "36", "emulationMajor": "1",
                    "emulationMinor": "36", "minCompatibilityMajor": "1",
                    "minCompatibilityMinor": "35", "gitVersion": "v1.36.2",
                    "gitCommit": "kube-sim", "gitTreeState": "clean",
                    "buildDate": "1970-01-01T00:00:00Z", "goVersion": "rust",
                    "compiler": "kube-sim", "platform": "linux/amd64"}),
            ))
        }
        Route::Health => {
            return Ok(Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from("ok"))
                .unwrap_or_default())
        }
        Route::OpenApiIndex => return Ok(json_response(200, &super::openapi::index(&store()?.resources))),
        Route::OpenApiGroupVersion(g, v) => {
            let resources = store()?.resources.clone();
            let doc = super::openapi::group_version(&resources, &g, &v).ok_or_else(StatusError::page_not_found)?;
            return Ok(json_response(200, &doc));
        }
        Route::Api | Route::Apis if aggregated(headers) => {
            let doc = store()?.resources.aggregated(matches!(r, Route::Api));
            let tag = super::discovery::etag(&doc);
            let unchanged = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
            let mut resp = if unchanged {
                Response::builder().status(304).body(Body::empty()).unwrap_or_default()
            } else {
                let mut resp = json_response(200, &doc);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(super::discovery::AGGREGATED),
                );
                resp
            };
            let h = resp.headers_mut();
            h.insert(header::VARY, header::HeaderValue::from_static("Accept"));
            h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public"));
            if let Ok(v) = header::HeaderValue::from_str(&tag) {
                h.insert(header::ETAG, v);
            }
            return Ok(resp);
        }
        Route::Api | Route::CoreV1 | Route::Apis | Route::Group(_) | Route::GroupVersion(..)
            if !super::discovery::plain_acceptable(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())) =>
        {
            return Err(StatusError::new(
                406,
                "NotAcceptable",
                "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
            ));
        }
        Route::Api => return Ok(json_response(200, &store()?.resources.api_versions(&s.address))),
        Route::CoreV1 => {
            let list = store()?.resources.resource_list("", "v1");
            return Ok(json_response(200, &list.unwrap_or(Value::Null)));
        }
        Route::Apis => return Ok(json_response(200, &store()?.resources.group_list())),
        Route::Group(g) => {
            let v = store()?.resources.group(&g).ok_or_else(StatusError::page_not_found)?;
            return Ok(json_response(200, &v));
        }
        Route::GroupVersion(g, v) => {
            let list = store()?
                .resources
                .resource_list(&g, &v)
                .ok_or_else(StatusError::page_not_found)?;
            return Ok(json_response(200, &list));
        }
        Route::Resource(t) => *t,
        Route::NoGroup => {
            return Ok(Response::builder()
                .status(404)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from("404 page not found\n"))
                .unwrap_or_default())
        }
    };
    let c = &s.cluster;
    let collection = t.name.is_none();
    let table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .filter(|a| super::table::wanted(a))
        .map(|_| super::table::Include::parse(q.get("includeObject")));
    match (method.as_str(), collection) {
        ("GET", true) if q.flag("watch") => {
            q.integers()?;
            let initial_events = initial_events(&q, true)?;
            if let Some(e) = q.bad_resource_version() {
                return Err(StatusError::new(500, "", e));
            }
            let req = WatchRequest {
                initial_events,
                target: t,
                list: q.list_options()?,
                resource_version: q.get("resourceVersion").map(str::to_string),
                timeout: q
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .filter(|t| *t > 0)
                    .map(Duration::from_secs),
                bookmarks: q.flag("allowWatchBookmarks"),
                table,
            };
            let stream = watch::start(c.clone(), req)?;
            let stream = s.faults.wrap_watch(uri.path(), stream);
            Ok(Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-cache, private")
                .body(Body::from_stream(stream))
                .unwrap_or_default())
        }
        ("GET", true) => {
            q.integers()?;
            initial_events(&q, false)?;
            if let Some(e) = q.bad_resource_version() {
                return Err(StatusError::bad_request(format!("invalid resource version: {e}")));
            }
            let list = c.list(&t, &q.list_options()?)?;
            Ok(json_response(
                200,
                &match table {
                    Some(include) => {
                        let items: Vec<Value> = list["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|i| super::api::present(&t.ty, i))
                            .collect();
                        super::table::table(&t.ty, &items, list["metadata"].clone(), include)
                    }
                    None => list,
                },
            ))
        }
        ("GET", false) => {
            let obj = c.get(&t)?;
            Ok(json_response(
                200,
                &match table {
                    Some(include) => {
                        let rv = obj.pointer("/metadata/resourceVersion").cloned();
                        super::table::table(&t.ty, &[obj], json!({"resourceVersion": rv}), include)
                    }
                    None => obj,
                },
            ))
        }
        ("POST", true) => {
            let o = q.write_options(headers, "CreateOptions", &body)?;
            let body = parse_body(&t, headers, &body)?;
            let created = c.create(&t, body, &o)?;
            Ok(with_warnings(json_response(201, &created), &o))
        }
        ("PUT", false) => {
            let o = q.write_options(headers, "UpdateOptions", &body)?;
            let body = parse_body(&t, headers, &body)?;
            let replaced = c.replace(&t, body, &o)?;
            Ok(with_warnings(json_response(200, &replaced), &o))
        }
        ("PATCH", false) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let o = q.write_options(headers, "PatchOptions", &body)?;
            let (code, v) = c.patch(&t, ct, &body, &o)?;
            Ok(with_warnings(json_response(code, &v), &o))
        }
        ("DELETE", false) => {
            // A body has the options; the query only when there is none.
            let options = super::delete_options::parse(&body, |k| q.get(k).map(str::to_string))?;
            let mut o = q.write_options(headers, "DeleteOptions", &[])?;
            let body_dry_run = options
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x == "All"));
            if !body.iter().all(u8::is_ascii_whitespace) {
                o.dry_run = body_dry_run;
            }
            let (code, v) = c.delete(&t, &options, &o)?;
            let kind = t.ty.builtin.map(|b| b.kind);
            if matches!(kind, Some("Namespace" | "CustomResourceDefinition")) && !o.dry_run {
                let (c, name) = (c.clone(), t.name.clone().unwrap_or_default());
                tokio::spawn(async move {
                    tokio::time::sleep(FINALIZE_AFTER).await;
                    // Until what is left has lost its finalizers.
                    loop {
                        let done = if kind == Some("Namespace") {
                            c.finish_namespace_deletion(&name)
                        } else {
                            c.finish_crd_deletion(&name)
                        };
                        if done {
                            break;
                        }
                        tokio::time::sleep(FINALIZE_RETRY).await;
                    }
                });
            }
            Ok(json_response(code, &v))
        }
        ("DELETE", true) => {
            let o = q.write_options(headers, "DeleteOptions", &[])?;
            Ok(json_response(200, &c.delete_collection(&t, &q.list_options()?, &o)?))
        }
        (_, _) => Err(StatusError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}
