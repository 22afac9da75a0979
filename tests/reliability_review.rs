//! Reliability suite, second hostile review of the receiver (README: Reliability): what an
//! attacker without a token, a noisy or hostile alert sender, a broken endpoint and a
//! misconfigured deployment could do to `recoverd serve`, each pinned by the test that failed
//! before its fix.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use recoverd::cluster::{Registry, WriteMode};
use recoverd::run::record::{Phase, StepStatus};
use serde_json::{json, Value};
use support::server::{app, authed, nowhere_kubeconfig, payload, ServeProcess};
use tokio::io::AsyncWriteExt;

const T0: &str = "2026-12-02T00:00:00Z";

fn primary_down() -> Value {
    json!({"alertname": "PrimaryDown", "severity": "critical", "cluster": "pg-north"})
}

/// A body that fails the request if anything polls it.
fn unreadable() -> Body {
    Body::from_stream(futures::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::other("the body must not be read"))
    }))
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_refused_before_its_body_is_read() {
    let app = app(&[]).await;
    for (who, header) in [
        ("no token", None),
        ("a wrong token", Some("Bearer not-the-token-of-this-server-at-all")),
    ] {
        for path in ["/api/v1/alerts", "/api/v1/plans/ops/manual/runs"] {
            let mut req = Request::post(path)
                .header("content-type", "application/json")
                .header("content-length", "1000");
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let (status, body) = app.send(req.body(unreadable()).unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{who}, {path}: {body}");
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_token_cannot_make_the_server_hold_their_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    let idle = rss_mib(serve.pid());
    // 128 clients, none with a token, each sending a body just under the 1 MiB limit and then
    // holding the connection open (the body timeout would end each after 10 s).
    const CLIENTS: usize = 128;
    const SIZE: usize = 1024 * 1024 - 16;
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let port = serve.port;
        held.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let head = format!(
                "POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                SIZE + 16
            );
            let _ = s.write_all(head.as_bytes()).await;
            // The server may refuse and close before taking it all: that is the point.
            let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&vec![b' '; SIZE]))
                .await;
            s
        }));
    }
    let mut streams = Vec::new();
    for h in held {
        streams.push(h.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_mib(serve.pid()) - idle;
    drop(streams);
    assert!(
        grown < 32.0,
        "{CLIENTS} clients without a token made the server hold {grown:.0} MiB of their bodies"
    );
}

#[tokio::test]
async fn an_alert_whose_identity_is_not_an_identifier_is_refused_so_run_lists_stay_small() {
    let app = app(&[]).await;
    let huge = "f".repeat(64 * 1024);
    for (field, value) in [("fingerprint", &huge), ("startsAt", &huge)] {
        let mut p = payload("firing", primary_down(), "fp-ok", T0);
        p["alerts"][0][field] = json!(value);
        let (status, body) = app.post("/api/v1/alerts", &p).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        let said = body["error"].as_str().unwrap();
        assert!(
            said.contains(&format!("alerts[0].{field}")) && said.contains("at most"),
            "{said}"
        );
        assert!(said.len() < 400, "the reply does not echo the value");
    }
    // A manual trigger's free-text fields are bounded the same way.
    for field in ["actor", "idempotencyKey"] {
        let (status, body) = app.post("/api/v1/plans/ops/manual/runs", &json!({ field: huge })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{field}: {body}");
    }
    let (_, runs) = app.get("/api/v1/runs").await;
    assert_eq!(runs["runs"], json!([]), "nothing ran: {runs}");

    // At the largest accepted sizes, a summary stays small.
    // (256 bytes: the limit the README documents.)
    let longest = "f".repeat(256);
    let mut p = payload("firing", primary_down(), &longest, T0);
    p["alerts"][0]["startsAt"] = json!(longest);
    let (status, body) = app.post("/api/v1/alerts", &p).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, runs) = app.get("/api/v1/runs").await;
    let summary = runs["runs"][0].to_string();
    assert!(summary.len() < 2048, "{} bytes: {summary}", summary.len());
}

#[tokio::test]
async fn a_malformed_query_is_answered_with_a_json_error_naming_the_parameter() {
    let app = app(&[]).await;
    let resp = tower::ServiceExt::oneshot(
        app.router.clone(),
        authed(Request::get("/api/v1/runs?limit=ten"))
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "errors are JSON like every other answer"
    );
    let body: Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
}

/// An endpoint that answers GET /huge/* with a body that does not end (200 OK, chunked),
/// counting the bytes it managed to send.
async fn endless_endpoint() -> (String, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let app = axum::Router::new().route(
        "/huge/{name}",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                let chunk = bytes::Bytes::from(vec![b'y'; 64 * 1024]);
                let stream = futures::stream::repeat(chunk).map(move |c| {
                    counter.fetch_add(c.len() as u64, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(c)
                });
                Body::from_stream(stream)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_step_reads_a_bounded_part_of_a_response_that_never_ends() {
    let (url, sent) = endless_endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(support::clusters::repo_dir().join("tests/data/plans/reliability/huge-response.yaml"))
            .unwrap()
            .replace("http://hook", &url);
    let file = dir.path().join("huge-response.yaml");
    std::fs::write(&file, text).unwrap();
    let (mut loaded, errors) = recoverd::plan::load_paths(std::slice::from_ref(&file));
    assert!(errors.is_empty(), "{errors:?}");
    let plan = recoverd::plan::compile_one(&loaded.remove(0), None).unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let registry = Arc::new(
        Registry::from_kubeconfig(Some(&kubeconfig), WriteMode::Live)
            .await
            .unwrap(),
    );
    let record = support::run::run(registry, &plan, "unused", &[]).await;

    // Without outputKey the response is not needed: the step succeeds without reading it all.
    assert_eq!(record.steps[0].status, StepStatus::Succeeded, "{record:#?}");
    // With one, a value cut short would be wrong: the step fails, naming the limit.
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let fetch = &record.steps[1];
    assert_eq!(fetch.status, StepStatus::Failed);
    let error = fetch.error.as_deref().unwrap();
    assert!(
        error.contains("larger than") && error.contains("1 MiB") && error.contains("/huge/fetch"),
        "{error}"
    );
    assert!(
        serde_json::to_string(&record).unwrap().len() < 64 * 1024,
        "the record holds no part of the response"
    );
    // Both steps stopped reading early (what the endpoint got out is at most the limit and
    // what the sockets buffer), instead of reading until the step's timeout.
    let total = sent.load(Ordering::SeqCst);
    assert!(
        total < 2 * 32 * 1024 * 1024,
        "recoverd read {} MiB of responses",
        total / (1024 * 1024)
    );
}

#[test]
fn serve_refuses_an_open_api_on_an_address_others_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let port = support::clusters::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(["serve", "--plans"])
        .arg(&plans)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .arg("--store")
        .arg(format!("sqlite:{}", dir.path().join("runs.db").display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve started an API without tokens on 0.0.0.0:{port}");
    };
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("--token-file") && said.contains("0.0.0.0"),
        "the error says what to fix: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_store_file_deleted_the_webhook_answers_503_so_alertmanager_retries() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::copy(
        support::clusters::repo_dir().join("tests/data/plans/serve/auto.yaml"),
        plans.join("auto.yaml"),
    )
    .unwrap();
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    let (status, body) = serve
        .post("/api/v1/alerts", &payload("firing", primary_down(), "before", T0))
        .await;
    assert_eq!(status, 202, "{body}");
    std::fs::remove_file(&serve.store).unwrap();
    // A new incident and a re-sent one: neither may be answered 202 with nowhere to record it
    // (Alertmanager never re-sends what was answered 2xx until its repeat interval, hours).
    for fingerprint in ["after", "before"] {
        let resp = serve
            .http
            .post(format!("{}/api/v1/alerts", serve.url))
            .bearer_auth(support::server::SERVE_TOKEN)
            .json(&payload("firing", primary_down(), fingerprint, T0))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry = resp.headers().contains_key("retry-after");
        let body = resp.text().await.unwrap();
        assert_eq!(status, 503, "{fingerprint}: {body}");
        assert!(retry, "{fingerprint}: a 503 says when to retry");
    }
}

/// A keep-alive connection from `source` that has been answered once, or `None` if the server
/// closed it unanswered.
async fn held_connection(source: &str, port: u16) -> Option<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.ok()?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..n])
        .starts_with("HTTP/1.1 200")
        .then_some(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_connection_and_lock_out_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(
        dir.path(),
        &plans,
        &kubeconfig,
        &["--max-connections", "8", "--max-connections-per-client", "3"],
    )
    .await;
    // One client (127.0.0.2) opens as many keep-alive connections as it can and holds them, as
    // one that sends a request a minute on each would.
    let mut greedy = Vec::new();
    for _ in 0..8 {
        if let Some(s) = held_connection("127.0.0.2", serve.port).await {
            greedy.push(s);
        }
    }
    assert_eq!(greedy.len(), 3, "the client got only its share");
    // Another client (the kubelet, Alertmanager) is still served.
    for _ in 0..3 {
        assert!(
            held_connection("127.0.0.3", serve.port).await.is_some(),
            "another client was locked out"
        );
    }
}
