//! Differential tests of the simulator: each scenario under `tests/data/scenarios/` (a list of
//! HTTP requests) runs against a real kube-apiserver and against the simulator, and the
//! normalised responses — status code and body, with uids, timestamps and resourceVersions
//! masked but the order of resourceVersions kept — must be equal. Every scenario runs against
//! v1.36.2, the version the simulator models; those that hold there too also against v1.20.2
//! (`versions:` in the scenario). Both servers have the CloudNativePG and Percona CRDs: as
//! published upstream on v1.36, made acceptable to v1.20 (`tests/data/crds/` of the workspace)
//! on v1.20.
//!
//! Scenario steps:
//! ```yaml
//! description: …
//! versions: [v1.36, v1.20]     # the real servers to compare with (default: both)
//! steps:
//! - name: create               # unique; later steps refer to it: {rv:create}, {uid:create},
//!                              # {name:create}, {continue:create} (a list's continue token),
//!                              # {etag:create} (its ETag header)
//!   method: POST
//!   path: /api/v1/namespaces/{ns}/configmaps
//!   body: {…}                  # sent as JSON (application/json unless contentType says otherwise)
//!   bodyText: "…"              # or sent as is (an apply's YAML)
//!   contentType: application/merge-patch+json
//!   accept: application/json;as=Table;v=v1;g=meta.k8s.io   # (default application/json)
//!   mask: [/spec/clusterIP]    # JSON pointers to mask (`*` matches every array item)
//!   pick: {resources: [configmaps]}   # keep only these entries (by name) of a list field
//!   watch: {events: 2, timeout: 5s}   # read a watch stream: N events, or until it ends
//!   background: true           # a watch that runs while the next steps do; see `await`
//!   sortEvents: true           # compare the events in name order
//!   versions: [v1.36]          # compared only on these servers (default: all of the
//!                              # scenario's); sent to all, so later steps can refer to it
//!   headers: [warning]         # compare these response headers too (all values, in order)
//!   requestHeaders: {If-None-Match: "{etag:earlier-step}"}   # sent with the request
//!   pickDiscovery: {apps: [statefulsets, statefulsets/status]}   # of an aggregated
//!                              # discovery document, only these groups ("" is the core group),
//!                              # resources and subresources
//! - name: watched
//!   await: watch-step-name     # the events of a background watch
//! ```
//! `{ns}` is a namespace made for the scenario (the same name on both sides).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use support::{crate_dir, real, Version};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[allow(dead_code)]
    description: String,
    #[serde(default = "both")]
    versions: Vec<String>,
    steps: Vec<Step>,
}

fn both() -> Vec<String> {
    vec!["v1.36".to_string(), "v1.20".to_string()]
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::V1_36 => "v1.36",
        Version::V1_20 => "v1.20",
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Step {
    name: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    body_text: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    /// The Accept header (default `application/json`).
    #[serde(default)]
    accept: Option<String>,
    #[serde(default)]
    mask: Vec<String>,
    #[serde(default)]
    pick: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    watch: Option<WatchSpec>,
    #[serde(default)]
    background: bool,
    #[serde(default, rename = "await")]
    await_step: Option<String>,
    /// Pause before the request, e.g. `1s`.
    #[serde(default)]
    sleep: Option<String>,
    /// Compare a watch's events in name order (the real watch cache sends the current objects
    /// of a watch without resourceVersion in map order).
    #[serde(default)]
    sort_events: bool,
    /// Only against these versions of the real server.
    #[serde(default)]
    versions: Option<Vec<String>>,
    /// Response headers to compare.
    #[serde(default)]
    headers: Vec<String>,
    /// Request headers to send (placeholders substituted).
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    /// Keep only these groups (by name, `""` for the core group) of an aggregated discovery
    /// document, and of each only these resources.
    #[serde(default)]
    pick_discovery: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchSpec {
    #[serde(default)]
    events: Option<usize>,
    timeout: String,
}

/// One API server to run scenarios against.
struct Target {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
}

/// `500ms`, `2s`.
fn duration(s: &str) -> Duration {
    let parsed = match s.strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => s
            .strip_suffix('s')
            .and_then(|x| x.parse().ok())
            .map(Duration::from_secs_f64),
    };
    parsed.unwrap_or_else(|| panic!("{s:?} is not a duration like 500ms or 2s"))
}

fn load(name: &str) -> Scenario {
    let path: PathBuf = crate_dir().join("tests/data/scenarios").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a step produced: its raw response (for placeholders) and the value compared.
#[derive(Clone, Debug)]
struct Outcome {
    raw: Value,
    compared: Value,
}

fn substitute(text: &str, ns: &str, done: &HashMap<String, Outcome>) -> String {
    let mut out = text.replace("{ns}", ns);
    let re = regex::Regex::new(r"\{(rv|uid|name|continue|etag):([A-Za-z0-9_.-]+)\}").unwrap();
    while let Some(c) = re.captures(&out) {
        let (whole, what, step) = (c[0].to_string(), c[1].to_string(), c[2].to_string());
        let raw = &done
            .get(&step)
            .unwrap_or_else(|| panic!("no earlier step named {step:?}"))
            .raw;
        if what == "etag" {
            let tag = raw["etag"]
                .as_str()
                .unwrap_or_else(|| panic!("step {step:?} has no ETag: {raw}"))
                .to_string();
            out = out.replace(&whole, &tag);
            continue;
        }
        let field = match what.as_str() {
            "rv" => "resourceVersion",
            "uid" => "uid",
            "continue" => "continue",
            _ => "name",
        };
        let v = raw
            .pointer(&format!("/body/metadata/{field}"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("step {step:?} has no metadata.{field}: {raw}"))
            .to_string();
        out = out.replace(&whole, &v);
    }
    out
}

async fn send(t: &Target, step: &Step, ns: &str, done: &HashMap<String, Outcome>) -> Value {
    let method = step.method.as_deref().unwrap_or("GET");
    let path = substitute(step.path.as_deref().expect("a path"), ns, done);
    let mut req = t
        .client
        .request(method.parse().unwrap(), format!("{}{path}", t.base))
        .header("User-Agent", "recoverd-differential/1.0")
        .header("Accept", step.accept.as_deref().unwrap_or("application/json"));
    if let Some(token) = &t.token {
        req = req.bearer_auth(token);
    }
    for (k, v) in &step.request_headers {
        req = req.header(k.as_str(), substitute(v, ns, done));
    }
    let ct = step.content_type.clone();
    if let Some(b) = &step.body {
        let text = substitute(&b.to_string(), ns, done);
        req = req
            .header("Content-Type", ct.as_deref().unwrap_or("application/json"))
            .body(text);
    } else if let Some(text) = &step.body_text {
        req = req
            .header("Content-Type", ct.as_deref().unwrap_or("application/json"))
            .body(substitute(text, ns, done));
    }
    if let Some(w) = &step.watch {
        let limit = duration(&w.timeout);
        let resp = req.send().await.expect("the request is sent");
        let code = resp.status().as_u16();
        let mut events = Vec::new();
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        'read: while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    events.push(v);
                }
                if w.events.is_some_and(|n| events.len() >= n) {
                    break 'read;
                }
            }
        }
        return json!({"code": code, "events": events});
    }
    let resp = req.send().await.expect("the request is sent");
    let code = resp.status().as_u16();
    let headers: Map<String, Value> = step
        .headers
        .iter()
        .map(|h| {
            let values: Vec<Value> = resp
                .headers()
                .get_all(h.as_str())
                .iter()
                .map(|v| json!(v.to_str().unwrap_or_default()))
                .collect();
            (h.clone(), Value::Array(values))
        })
        .collect();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.bytes().await.unwrap_or_default();
    let body: Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    let mut out = if headers.is_empty() {
        json!({"code": code, "body": body})
    } else {
        json!({"code": code, "body": body, "headers": headers})
    };
    if let Some(tag) = etag {
        // For `{etag:step}`, not compared (each server tags its own document).
        out["etag"] = json!(tag);
    }
    out
}

/// Runs a scenario on one target; returns every step's outcome, in order.
async fn run(t: &Target, s: &Scenario, ns: &str, version: Version) -> Vec<(String, Outcome)> {
    let mut done: HashMap<String, Outcome> = HashMap::new();
    let mut order = Vec::new();
    let mut background: HashMap<String, tokio::task::JoinHandle<Value>> = HashMap::new();
    for step in &s.steps {
        if let Some(d) = &step.sleep {
            tokio::time::sleep(duration(d)).await;
        }
        let raw = if let Some(name) = &step.await_step {
            background
                .remove(name)
                .unwrap_or_else(|| panic!("no background step {name:?}"))
                .await
                .unwrap()
        } else if step.background {
            let (t2, step2, ns2, done2) = (
                Target {
                    base: t.base.clone(),
                    client: t.client.clone(),
                    token: t.token.clone(),
                },
                step.clone(),
                ns.to_string(),
                done.clone(),
            );
            background.insert(
                step.name.clone(),
                tokio::spawn(async move { send(&t2, &step2, &ns2, &done2).await }),
            );
            // Let the watch start before the next request.
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        } else {
            send(t, step, ns, &done).await
        };
        let compared = if step
            .versions
            .as_ref()
            .is_none_or(|vs| vs.iter().any(|v| v == version_name(version)))
        {
            shape(&raw, step)
        } else {
            json!("<not compared on this version>")
        };
        let o = Outcome { raw, compared };
        done.insert(step.name.clone(), o.clone());
        order.push((step.name.clone(), o));
    }
    order
}

/// Masks, picks, and sorts what legitimately differs between two servers (but not the order
/// of resourceVersions or the identity of uids: see [`number`]).
fn shape(raw: &Value, step: &Step) -> Value {
    let mut v = raw.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("etag");
    }
    if let Some(body) = v.get_mut("body") {
        for (field, names) in &step.pick {
            if let Some(Value::Array(items)) = body.get_mut(field) {
                items.retain(|i| {
                    i.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| names.iter().any(|x| x == n))
                });
                items.sort_by_key(|i| i["name"].as_str().unwrap_or("").to_string());
            }
        }
        if let Some(keep) = &step.pick_discovery {
            pick_discovery(body, keep);
        }
        for p in &step.mask {
            mask(body, p);
        }
    }
    if let Some(Value::Array(events)) = v.get_mut("events") {
        // How many bookmarks come before the deadline depends on timers: one says enough.
        events.dedup_by(|a, b| a["type"] == "BOOKMARK" && b["type"] == "BOOKMARK");
        if step.sort_events {
            events.sort_by_key(|e| {
                format!(
                    "{}|{}",
                    e["type"].as_str().unwrap_or(""),
                    e.pointer("/object/metadata/name").and_then(Value::as_str).unwrap_or("")
                )
            });
        }
        for e in events {
            if e["type"] == "BOOKMARK" {
                if let Some(m) = e.pointer_mut("/object/metadata/resourceVersion") {
                    *m = json!("<bookmark-rv>");
                }
            }
            if let Some(o) = e.get_mut("object") {
                for p in &step.mask {
                    mask(o, p);
                }
            }
        }
    }
    tidy(&mut v, "");
    v
}

/// Keeps the named groups of an aggregated discovery document, their named resources, and of
/// those the named subresources (`pods/status`).
fn pick_discovery(body: &mut Value, keep: &BTreeMap<String, Vec<String>>) {
    let Some(items) = body.get_mut("items").and_then(Value::as_array_mut) else {
        return;
    };
    items.retain(|g| {
        let name = g.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        keep.contains_key(name)
    });
    for g in items {
        let name = g
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let wanted = &keep[&name];
        for v in g
            .get_mut("versions")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(rs) = v.get_mut("resources").and_then(Value::as_array_mut) {
                rs.retain(|r| r["resource"].as_str().is_some_and(|n| wanted.iter().any(|w| w == n)));
                for r in rs {
                    let res = r["resource"].as_str().unwrap_or("").to_string();
                    if let Some(subs) = r.get_mut("subresources").and_then(Value::as_array_mut) {
                        subs.retain(|s| {
                            let sub = s["subresource"].as_str().unwrap_or("");
                            wanted.iter().any(|w| *w == format!("{res}/{sub}"))
                        });
                    }
                }
            }
        }
    }
}

fn mask(v: &mut Value, pointer: &str) {
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    fn go(v: &mut Value, parts: &[&str]) {
        let Some((first, rest)) = parts.split_first() else {
            *v = json!("<masked>");
            return;
        };
        match v {
            Value::Object(m) => {
                if let Some(c) = m.get_mut(*first) {
                    go(c, rest);
                }
            }
            Value::Array(a) if *first == "*" => {
                for c in a {
                    go(c, rest);
                }
            }
            Value::Array(a) => {
                if let Some(c) = first.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    go(c, rest);
                }
            }
            _ => {}
        }
    }
    go(v, &parts);
}

/// Timestamps, list resourceVersions, resourceVersions in messages, the order of
/// managedFields entries and of field errors.
fn tidy(v: &mut Value, key: &str) {
    match v {
        Value::Object(m) => {
            for k in [
                "creationTimestamp",
                "time",
                "lastTransitionTime",
                "lastPhaseTransitionTime",
                "deletionTimestamp",
            ] {
                if m.get(k).is_some_and(Value::is_string) {
                    m.insert(k.into(), json!("<time>"));
                }
            }
            if key == "metadata" && !m.contains_key("name") {
                // A list's resourceVersion: the cluster's, which other tests move on.
                if m.get("resourceVersion").is_some_and(Value::is_string) {
                    m.insert("resourceVersion".into(), json!("<list-rv>"));
                }
                if m.get("continue").is_some_and(Value::is_string) {
                    m.insert("continue".into(), json!("<continue>"));
                }
            }
            if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
                mf.sort_by_key(|e| {
                    format!(
                        "{}|{}|{}|{}",
                        e["operation"].as_str().unwrap_or(""),
                        e["manager"].as_str().unwrap_or(""),
                        e["apiVersion"].as_str().unwrap_or(""),
                        e["subresource"].as_str().unwrap_or("")
                    )
                });
            }
            if m.get("kind") == Some(&json!("Status")) {
                sort_causes(m);
            }
            if let Some(Value::String(msg)) = m.get_mut("message") {
                let re = regex::Regex::new(r"too old resource version: \d+ \(\d+\)").unwrap();
                *msg = re
                    .replace_all(msg, "too old resource version: <rv> (<rv>)")
                    .into_owned();
            }
            for (k, c) in m.iter_mut() {
                tidy(c, k);
            }
        }
        Value::Array(a) => {
            for c in a {
                tidy(c, key);
            }
        }
        _ => {}
    }
}

/// Field errors come in Go's map order: sort them, in the causes and in the message.
fn sort_causes(m: &mut Map<String, Value>) {
    let Some(Value::Array(causes)) = m.get_mut("details").and_then(|d| d.get_mut("causes")) else {
        return;
    };
    causes.sort_by_key(|c| {
        format!(
            "{}|{}",
            c["field"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        )
    });
    let lines: Vec<String> = causes
        .iter()
        .map(|c| {
            format!(
                "{}: {}",
                c["field"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    let Some(Value::String(msg)) = m.get_mut("message") else {
        return;
    };
    if lines.len() > 1 {
        if let Some(at) = msg.find(" is invalid: [") {
            let listed = &msg[at + " is invalid: [".len()..];
            if lines.iter().all(|l| listed.contains(l.as_str())) {
                *msg = format!("{} is invalid: [{}]", &msg[..at], lines.join(", "));
            }
        }
    }
}

/// Replaces object resourceVersions by their rank among all of the scenario's (so order is
/// kept), and uids by the order they first appear in.
fn number(outcomes: &mut [(String, Outcome)]) {
    fn collect(v: &Value, key: &str, rvs: &mut Vec<u64>) {
        match v {
            Value::Object(m) => {
                if key == "metadata" && m.contains_key("name") {
                    if let Some(rv) = m
                        .get("resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                    {
                        rvs.push(rv);
                    }
                }
                for (k, c) in m {
                    collect(c, k, rvs);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| collect(c, key, rvs)),
            _ => {}
        }
    }
    let mut rvs = Vec::new();
    for (_, o) in outcomes.iter() {
        collect(&o.compared, "", &mut rvs);
    }
    rvs.sort_unstable();
    rvs.dedup();
    let mut uids: Vec<String> = Vec::new();
    fn replace(v: &mut Value, key: &str, rvs: &[u64], uids: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if key == "metadata" && m.contains_key("name") {
                    if let Some(Value::String(s)) = m.get_mut("resourceVersion") {
                        if let Ok(n) = s.parse::<u64>() {
                            let rank = rvs.iter().position(|x| *x == n).unwrap_or(0) + 1;
                            *s = format!("<rv-{rank}>");
                        }
                    }
                }
                if let Some(Value::String(msg)) = m.get_mut("message") {
                    let re =
                        regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
                    let found: Vec<String> = re.find_iter(msg).map(|m| m.as_str().to_string()).collect();
                    for u in found {
                        let i = match uids.iter().position(|x| *x == u) {
                            Some(i) => i,
                            None => {
                                uids.push(u.clone());
                                uids.len() - 1
                            }
                        };
                        *msg = msg.replace(&u, &format!("<uid-{}>", i + 1));
                    }
                }
                if let Some(Value::String(u)) = m.get_mut("uid") {
                    let i = match uids.iter().position(|x| x == u) {
                        Some(i) => i,
                        None => {
                            uids.push(u.clone());
                            uids.len() - 1
                        }
                    };
                    *u = format!("<uid-{}>", i + 1);
                }
                for (k, c) in m.iter_mut() {
                    replace(c, k, rvs, uids);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| replace(c, key, rvs, uids)),
            _ => {}
        }
    }
    for (_, o) in outcomes.iter_mut() {
        replace(&mut o.compared, "", &rvs, &mut uids);
    }
}

/// The CRDs both sides have: as published upstream for v1.36, made acceptable to v1.20 for it.
fn crd_files(version: Version) -> Vec<PathBuf> {
    let dir = match version {
        Version::V1_36 => crate_dir().join("tests/data/crds"),
        Version::V1_20 => support::workspace_dir().join("tests/data/crds"),
    };
    support::CRDS.iter().map(|f| dir.join(f)).collect()
}

/// A simulator with the CRDs the real server of `version` has.
async fn simulator(version: Version) -> (kube_sim::Simulator, Target) {
    let sim = kube_sim::Simulator::start_without_controllers(&["north".to_string()], None, &BTreeMap::new())
        .await
        .unwrap();
    let crds: Vec<Value> = crd_files(version)
        .iter()
        .map(|f| serde_yaml::from_str(&std::fs::read_to_string(f).unwrap()).unwrap())
        .collect();
    sim.seed("north", &crds).expect("the simulator installs the CRDs");
    let target = Target {
        base: sim.server("north").unwrap(),
        client: reqwest::Client::new(),
        token: None,
    };
    (sim, target)
}

fn real_target(version: Version) -> Target {
    let server = real(version);
    Target {
        base: server.base.clone(),
        client: server.client(),
        token: Some(support::TOKEN.to_string()),
    }
}

async fn create_namespace(t: &Target, ns: &str) {
    let mut req = t
        .client
        .post(format!("{}/api/v1/namespaces", t.base))
        .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    if let Some(token) = &t.token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201, "creating namespace {ns}");
}

/// Runs a scenario on the simulator and each real server it names, and fails with every step
/// whose responses differ.
async fn differential(name: &str) {
    let scenario = load(name);
    let mut failures = Vec::new();
    let mut compared = 0;
    for version in [Version::V1_36, Version::V1_20] {
        if !scenario.versions.iter().any(|v| v == version_name(version)) {
            continue;
        }
        let real = tokio::task::spawn_blocking(move || real_target(version)).await.unwrap();
        let (_sim, sim) = simulator(version).await;
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 100_000;
        let ns = format!("sim-{name}-{suffix}");
        create_namespace(&real, &ns).await;
        create_namespace(&sim, &ns).await;
        let (mut want, mut got) = tokio::join!(run(&real, &scenario, &ns, version), run(&sim, &scenario, &ns, version));
        number(&mut want);
        number(&mut got);
        compared += want.len();
        // `KUBE_SIM_SHOW_CODES=1`: what each step got from the real server, to see what a
        // scenario measures.
        if std::env::var_os("KUBE_SIM_SHOW_CODES").is_some() {
            for (step, w) in &want {
                let message = w
                    .compared
                    .pointer("/body/message")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                eprintln!("{}: {step}: {} {message}", version_name(version), w.compared["code"]);
            }
        }
        for ((step, w), (_, g)) in want.iter().zip(&got) {
            if w.compared != g.compared {
                let diff = json_patch::diff(&w.compared, &g.compared);
                failures.push(format!(
                    "{v}: step {step:?} differs (JSON Patch from the real apiserver's to the simulator's):\n  {}\n  real:      {}\n  simulator: {}",
                    serde_json::to_string(&diff).unwrap(),
                    w.compared,
                    g.compared,
                    v = version_name(version),
                ));
            }
        }
    }
    assert!(compared > 0, "scenario {name} names no version to compare with");
    assert!(
        failures.is_empty(),
        "scenario {name}: {} of {} steps differ\n\n{}",
        failures.len(),
        compared,
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_validation_rules_are_evaluated_like_the_real_apiserver() {
    differential("cel").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn field_validation_strict_warn_and_ignore_match_the_real_apiserver() {
    differential("fieldvalidation").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn volumes_statefulsets_and_rbac_kinds_match_the_real_apiserver() {
    differential("kinds").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_matches_the_real_apiserver() {
    differential("discovery").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn configmap_reads_writes_and_errors_match_the_real_apiserver() {
    differential("configmaps").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_json_and_strategic_patches_match_the_real_apiserver() {
    differential("patches").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_and_managed_fields_match_the_real_apiserver() {
    differential("apply").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_subresource_and_generation_match_the_real_apiserver() {
    differential("status").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_nothing_like_the_real_apiserver() {
    differential("dryrun").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_resources_are_validated_pruned_and_defaulted_like_the_real_apiserver() {
    differential("crds").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_resume_filter_expire_and_bookmark_like_the_real_apiserver() {
    differential("watch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_match_the_real_apiserver() {
    differential("namespaces").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_services_secrets_leases_and_pages_match_the_real_apiserver() {
    differential("workloads").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tables_kubectl_get_prints_match_the_real_apiserver() {
    differential("tables").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_rules_that_fail_to_compile_or_evaluate_are_refused_like_the_real_apiserver() {
    differential("celerrors").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_deleted_gracefully_like_the_real_apiserver() {
    differential("pods").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_lists_and_aggregated_discovery_match_the_real_apiserver() {
    differential("watchlist").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crds_whose_rules_do_not_type_check_or_cost_too_much_are_refused_like_the_real_apiserver() {
    differential("celcrd").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_options_and_pod_grace_periods_match_the_real_apiserver() {
    differential("deletes").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_watch_options_are_checked_like_the_real_apiserver() {
    differential("listoptions").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregated_discovery_is_negotiated_and_cached_like_the_real_apiserver() {
    differential("discoverynegotiation").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cost_of_crd_rules_is_estimated_like_the_real_apiserver() {
    differential("celcost").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_past_the_per_call_cost_limit_are_cut_short_like_the_real_apiserver() {
    differential("celruntime").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_cel_libraries_match_the_real_apiserver() {
    differential("cellibs").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_delete_of_a_terminating_pod_matches_the_real_apiserver() {
    differential("podsterminating").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_that_stop_early_cost_what_they_did_like_the_real_apiserver() {
    differential("celshortcircuit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_variable_macros_are_checked_when_a_crd_is_written_like_the_real_apiserver() {
    differential("celmacros").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ratcheting_and_transition_rules_match_the_real_apiserver() {
    differential("ratcheting").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_cost_what_their_operands_make_them_cost_like_the_real_apiserver() {
    differential("celfunctions").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_formats_durations_and_timestamps_match_the_real_apiserver() {
    differential("celformats").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_kubernetes_declares_for_crd_rules_matches_the_real_apiserver() {
    differential("celdeclared").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_review_found_the_meter_counting_wrong_matches_the_real_apiserver() {
    differential("celreview").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn durations_timestamps_and_uris_are_read_like_the_real_apiserver() {
    differential("celtime").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn literals_patterns_and_url_parts_are_read_like_the_real_apiserver() {
    differential("celliterals").await;
}
