//! The Alertmanager test harness itself: two real, clustered Alertmanagers deliver a fired alert
//! to a webhook with the bearer token, repeat it, and send its resolution; nothing they start
//! survives the test process.

// `support` re-exports the shared test clusters, which this binary does not start.
#[allow(unused_imports)]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use support::alertmanager::{AlertmanagerPair, Timings};

const TOKEN: &str = "am-harness-token-0123456789abcdef012345";

/// One POST the webhook received.
#[derive(Clone, Debug)]
struct Delivery {
    at: Instant,
    authorization: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Delivery>>>);

impl Received {
    fn all(&self) -> Vec<Delivery> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (at most `within`) until `pred` holds for the deliveries so far.
    async fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.all();
            if pred(&all) {
                return all;
            }
            if Instant::now() > deadline {
                // The Alertmanagers' logs follow: dropping an AlertmanagerPair while
                // panicking prints them.
                panic!(
                    "no {what} within {within:?}; received:\n{}",
                    all.iter().map(|d| d.body.to_string()).collect::<Vec<_>>().join("\n"),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A webhook receiver on `127.0.0.1:0` recording every POST; returns its URL.
async fn webhook() -> (String, Received) {
    async fn record(State(rx): State<Received>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|e| Value::String(format!("not JSON ({e}): {}", String::from_utf8_lossy(&body))));
        rx.0.lock().unwrap().push(Delivery {
            at: Instant::now(),
            authorization: headers
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("<not ASCII>").to_string()),
            body,
        });
        StatusCode::OK
    }
    let rx = Received::default();
    let app = Router::new()
        .route("/api/v1/alerts", post(record))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("token");
    // With a trailing newline, as `echo` writes it: Alertmanager trims it.
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path
}

fn is_firing(d: &Delivery) -> bool {
    d.body["status"] == "firing"
}

fn is_resolved(d: &Delivery) -> bool {
    d.body["status"] == "resolved"
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clustered_alertmanagers_deliver_repeat_and_resolve() {
    eprintln!("{}", support::alertmanager::version());
    let (url, rx) = webhook().await;
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let timings = Timings {
        group_wait: Duration::from_secs(1),
        group_interval: Duration::from_secs(2),
        repeat_interval: Duration::from_secs(3),
    };
    let t0 = Instant::now();
    let am = tokio::task::block_in_place(|| AlertmanagerPair::start(2, &url, &token, timings));
    eprintln!("2 Alertmanagers ready and settled in {}", secs(t0.elapsed()));
    for i in 0..2 {
        let (status, peers) = am.cluster_status(i).unwrap();
        assert_eq!((status.as_str(), peers.len()), ("ready", 2), "{}", am.logs());
    }

    let tricky = "{{ .Values.x }} \"quoted\" a=b, c\\d";
    let labels = [
        ("alertname", "HarnessPrimaryDown"),
        ("cluster", "pg-north"),
        ("namespace", "db"),
        ("tricky", tricky),
    ];
    let annotations = [("summary", "pg-north primary {{ down }}")];
    let fired = Instant::now();
    let starts_at = tokio::task::block_in_place(|| am.fire(&labels, &annotations));
    for i in 0..2 {
        assert_eq!(am.alerts(i).len(), 1, "{:#?}", am.alerts(i));
    }

    // The first notification: version 4, the labels verbatim, the bearer token.
    let all = rx
        .wait_for("firing notification", Duration::from_secs(30), |d| {
            d.iter().any(is_firing)
        })
        .await;
    let first = all.iter().find(|d| is_firing(d)).unwrap();
    eprintln!(
        "first delivery {} after firing (group_wait {})",
        secs(first.at - fired),
        secs(timings.group_wait)
    );
    assert_eq!(first.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    let body = &first.body;
    assert_eq!(body["version"], "4", "{body:#}");
    assert_eq!(body["receiver"], "recoverd");
    assert_eq!(body["groupLabels"]["alertname"], "HarnessPrimaryDown");
    assert_eq!(body["truncatedAlerts"], 0);
    let alerts = body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{body:#}");
    let alert = &alerts[0];
    assert_eq!(alert["status"], "firing");
    let expected: serde_json::Map<String, Value> =
        labels.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect();
    assert_eq!(alert["labels"], Value::Object(expected), "{body:#}");
    assert_eq!(alert["annotations"]["summary"], "pg-north primary {{ down }}");
    // Both instances were given the same startsAt, so they agree on the incident.
    let sent_start: jiff::Timestamp = alert["startsAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(sent_start, starts_at, "{body:#}");
    let fingerprint = alert["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 16, "{body:#}");

    // Repeats: the unchanged group is sent again after repeat_interval.
    let all = rx
        .wait_for("repeated notification", Duration::from_secs(30), |d| {
            d.iter().filter(|d| is_firing(d)).count() >= 3
        })
        .await;
    let firing: Vec<&Delivery> = all.iter().filter(|d| is_firing(d)).collect();
    for d in &firing {
        assert_eq!(d.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        assert_eq!(d.body["alerts"][0]["fingerprint"], fingerprint.as_str());
        assert_eq!(d.body["alerts"][0]["startsAt"], alert["startsAt"]);
        assert_eq!(d.body["groupKey"], body["groupKey"]);
    }
    let gaps: Vec<String> = firing.windows(2).map(|w| secs(w[1].at - w[0].at)).collect();
    let senders: Vec<&str> = firing
        .iter()
        .map(|d| d.body["externalURL"].as_str().unwrap_or("?"))
        .collect();
    eprintln!(
        "firing deliveries at {:?} after firing, gaps {gaps:?} (repeat_interval {}), from {senders:?}",
        firing.iter().map(|d| secs(d.at - fired)).collect::<Vec<_>>(),
        secs(timings.repeat_interval),
    );

    // Resolution: a notification whose status is resolved, for the same alert.
    let resolved_at = Instant::now();
    tokio::task::block_in_place(|| am.resolve(&labels));
    let all = rx
        .wait_for("resolved notification", Duration::from_secs(30), |d| {
            d.iter().any(is_resolved)
        })
        .await;
    let resolved = all.iter().find(|d| is_resolved(d)).unwrap();
    eprintln!("resolved delivery {} after resolving", secs(resolved.at - resolved_at));
    assert_eq!(
        resolved.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(resolved.body["version"], "4");
    let ra = &resolved.body["alerts"][0];
    assert_eq!(ra["status"], "resolved", "{:#}", resolved.body);
    assert_eq!(ra["fingerprint"], fingerprint.as_str());
    assert_eq!(ra["startsAt"], alert["startsAt"]);
    assert_eq!(ra["labels"]["tricky"], tricky);
    assert_eq!(ra["annotations"]["summary"], "pg-north primary {{ down }}");
    assert_ne!(ra["endsAt"], "0001-01-01T00:00:00Z");

    // Let any late peer send what it will, then summarise everything received.
    tokio::time::sleep(timings.group_interval * 2).await;
    let all = rx.all();
    let summary: Vec<String> = all
        .iter()
        .map(|d| {
            format!(
                "{} {} from {}",
                secs(d.at - fired),
                d.body["status"].as_str().unwrap_or("?"),
                d.body["externalURL"].as_str().unwrap_or("?")
            )
        })
        .collect();
    eprintln!("all deliveries (since firing): {summary:#?}");
    assert!(
        all.iter().all(|d| d.body["alerts"].as_array().map(Vec::len) == Some(1)),
        "every notification carries exactly the one alert"
    );
    let first_resolved = all.iter().position(is_resolved).unwrap();
    assert!(
        all[first_resolved..].iter().all(is_resolved),
        "nothing firing after the resolution: {summary:#?}"
    );
}

/// Env var that makes [`child_starts_alertmanagers_and_waits`] do its work.
const CHILD: &str = "RECOVERD_AM_HARNESS_CHILD";

/// Not a test on its own: run by [`nothing_survives_a_killed_test_process`] in a child process,
/// which it SIGKILLs.
#[test]
#[ignore = "run as a child process by nothing_survives_a_killed_test_process"]
fn child_starts_alertmanagers_and_waits() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let timings = Timings {
        group_wait: Duration::from_secs(1),
        group_interval: Duration::from_secs(2),
        repeat_interval: Duration::from_secs(3),
    };
    let am = AlertmanagerPair::start(2, "http://127.0.0.1:9/", &token, timings);
    let pids: Vec<String> = am.pids().iter().map(u32::to_string).collect();
    println!("READY {} {}", am.root().display(), pids.join(","));
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn nothing_survives_a_killed_test_process() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_starts_alertmanagers_and_waits",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("READY "))
        .expect("the child started no Alertmanagers");
    let mut parts = line.split_whitespace().skip(1);
    let root = std::path::PathBuf::from(parts.next().unwrap());
    let pids: Vec<String> = parts.next().unwrap().split(',').map(String::from).collect();
    assert_eq!(pids.len(), 2);
    let alive = |pid: &str| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(root.to_str().unwrap()))
            .unwrap_or(false)
    };
    assert!(pids.iter().all(|p| alive(p)) && root.exists());

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (pids.iter().any(|p| alive(p)) || root.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !pids.iter().any(|p| alive(p)),
        "Alertmanagers {pids:?} survived the test process"
    );
    assert!(!root.exists(), "{} was not removed", root.display());
}
