//! Reliability suite R5 (security), the receiver's part: every route against every token role,
//! in both configurations (one token for everything; split alert sender / operator / approver).
//! One table, one assertion per cell, every failing cell reported together.

mod support;

use axum::body::Body;
use axum::http::Request;
use support::server::{app_split, Split, TestApp, APPROVER, OPERATOR, TOKEN};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Nobody,
    Stranger,
    Sender,
    Operator,
    Approver,
}

const EVERYONE: [Who; 5] = [Who::Nobody, Who::Stranger, Who::Sender, Who::Operator, Who::Approver];

fn header(who: Who) -> Option<String> {
    match who {
        Who::Nobody => None,
        Who::Stranger => Some("Bearer not-a-token-of-this-server-at-all".into()),
        Who::Sender => Some(format!("Bearer {TOKEN}")),
        Who::Operator => Some(format!("Bearer {OPERATOR}")),
        Who::Approver => Some(format!("Bearer {APPROVER}")),
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug)]
enum Needs {
    Open,
    AnyToken,
    Sender,
    Operator,
    Approver,
}

const ROUTES: &[(&str, &str, Needs)] = &[
    ("GET", "/healthz", Needs::Open),
    ("GET", "/readyz", Needs::Open),
    ("GET", "/metrics", Needs::AnyToken),
    ("POST", "/api/v1/alerts", Needs::Sender),
    ("GET", "/api/v1/plans", Needs::Operator),
    ("POST", "/api/v1/plans/ops/manual/runs", Needs::Operator),
    ("GET", "/api/v1/runs", Needs::Operator),
    ("GET", "/api/v1/runs/no-such-run", Needs::Operator),
    ("POST", "/api/v1/runs/no-such-run/approve", Needs::Approver),
    ("POST", "/api/v1/runs/no-such-run/cancel", Needs::Approver),
    ("POST", "/api/v1/runs/no-such-run/resume", Needs::Approver),
];

/// Whether `who` may use a route needing `needs`, when roles are `split` or not.
fn allowed(needs: Needs, who: Who, split: bool) -> Option<bool> {
    let known = matches!(who, Who::Sender | Who::Operator | Who::Approver);
    match needs {
        Needs::Open => Some(true),
        _ if !known => None, // 401
        Needs::AnyToken => Some(true),
        _ if !split => Some(true),
        Needs::Sender => Some(who == Who::Sender),
        Needs::Operator => Some(matches!(who, Who::Operator | Who::Approver)),
        Needs::Approver => Some(who == Who::Approver),
    }
}

async fn status(app: &TestApp, method: &str, path: &str, who: Who) -> u16 {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(h) = header(who) {
        req = req.header("authorization", h);
    }
    let body = if path == "/api/v1/alerts" {
        req = req.header("content-type", "application/json");
        Body::from(
            support::server::payload(
                "firing",
                serde_json::json!({"alertname": "Nothing"}),
                "fp",
                "2026-11-21T10:00:00Z",
            )
            .to_string(),
        )
    } else if method == "POST" {
        req = req.header("content-type", "application/json");
        Body::from("{\"dryRun\": true}")
    } else {
        Body::empty()
    };
    app.send(req.body(body).unwrap()).await.0.as_u16()
}

async fn matrix(split: bool) -> Vec<String> {
    let app = app_split(
        &[],
        Split {
            approvers: split,
            operators: split,
        },
    )
    .await;
    let mut wrong = Vec::new();
    for &(method, path, needs) in ROUTES {
        for who in EVERYONE {
            // Without split roles the operator and approver tokens are strangers.
            let who_here = if !split && matches!(who, Who::Operator | Who::Approver) {
                Who::Stranger
            } else {
                who
            };
            let got = status(&app, method, path, who).await;
            let ok = match allowed(needs, who_here, split) {
                None => got == 401,
                Some(false) => got == 403,
                Some(true) => got != 401 && got != 403 && got < 500,
            };
            if !ok {
                wrong.push(format!("{method} {path} as {who:?} (split: {split}): {got}"));
            }
        }
    }
    wrong
}

#[tokio::test]
async fn every_route_answers_every_token_role_as_documented() {
    let mut wrong = matrix(false).await;
    wrong.extend(matrix(true).await);
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn serve_refuses_to_start_with_a_short_or_placeholder_token() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    std::fs::create_dir_all(dir.path().join("plans")).unwrap();
    for token in ["change-me", "short"] {
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recoverd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--plans"])
            .arg(dir.path().join("plans"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--store")
            .arg(format!("sqlite:{}", dir.path().join("runs.db").display()))
            .arg("--token-file")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{token}: started");
        assert!(
            err.contains("--token-file") && (err.contains("placeholder") || err.contains("at least 32")),
            "{token}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_takes_effect_without_a_restart() {
    use support::server::{eventually, ServeProcess, SERVE_TOKEN};
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &["--reload-interval", "200ms"]).await;
    let status = |token: String| {
        let (http, url) = (serve.http.clone(), serve.url.clone());
        async move {
            http.get(format!("{url}/api/v1/runs"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(SERVE_TOKEN.into()).await, 200);
    // As a Secret volume updates: a new file swapped in.
    let new = "rotated-token-abcdefghijklmnopqrstuvwxyz0123";
    std::fs::write(dir.path().join("token.new"), format!("{new}\n")).unwrap();
    std::fs::rename(dir.path().join("token.new"), dir.path().join("token")).unwrap();
    eventually("the new token to work", std::time::Duration::from_secs(20), || {
        let answer = status(new.into());
        async move { answer.await == 200 }
    })
    .await;
    assert_eq!(status(SERVE_TOKEN.into()).await, 401, "the old token is gone");
    // An invalid replacement keeps the tokens there were.
    std::fs::write(dir.path().join("token.new"), "change-me\n").unwrap();
    std::fs::rename(dir.path().join("token.new"), dir.path().join("token")).unwrap();
    eventually("the bad file to be noticed", std::time::Duration::from_secs(20), || {
        let log = serve.log_text();
        async move { log.contains("token file changed but is not valid") }
    })
    .await;
    assert_eq!(status(new.into()).await, 200);
    assert_eq!(status("change-me".into()).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_tls_certificate_is_served_without_a_restart() {
    use support::clusters::repo_dir;
    use support::server::{eventually, ServeProcess};
    let dir = tempfile::tempdir().unwrap();
    for pki in ["pki1", "pki2"] {
        let out = std::process::Command::new("bash")
            .arg(repo_dir().join("tests/kube/mkpki.sh"))
            .arg(dir.path().join(pki))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let install = |pki: &str| {
        for (from, to) in [("apiserver.crt", "tls.crt"), ("apiserver.key", "tls.key")] {
            let tmp = dir.path().join(format!("{to}.new"));
            std::fs::copy(dir.path().join(pki).join(from), &tmp).unwrap();
            std::fs::rename(&tmp, dir.path().join(to)).unwrap();
        }
    };
    install("pki1");
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let serve = ServeProcess::start(
        dir.path(),
        &plans,
        &kubeconfig,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--reload-interval",
            "200ms",
        ],
    )
    .await;
    let trusting = |pki: &str| {
        let ca = std::fs::read(dir.path().join(pki).join("ca.crt")).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let (old_ca, new_ca) = (trusting("pki1"), trusting("pki2"));
    let ok = |client: reqwest::Client| {
        let url = format!("{}/healthz", serve.url);
        async move { client.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
    };
    eventually(
        "the first certificate to be served",
        std::time::Duration::from_secs(20),
        || ok(old_ca.clone()),
    )
    .await;
    assert!(!ok(new_ca.clone()).await);
    install("pki2");
    eventually(
        "the new certificate to be served",
        std::time::Duration::from_secs(20),
        || ok(new_ca.clone()),
    )
    .await;
    assert!(!ok(old_ca.clone()).await, "the old certificate is no longer served");
}
