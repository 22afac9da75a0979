//! The fault-injecting proxy (`tests/support/proxy.rs`) in front of a real kube-apiserver: each
//! kind of fault, observed through a `kube::Client` (and, for the wire-level details, through a
//! plain HTTPS client).

mod support;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use support::clusters::{client_for, TestClusters, TOKEN};
use support::proxy::{FaultProxy, Faults};

/// A proxy in front of cluster `north`, a kubeconfig pointing `north` at it, and a namespace.
struct Rig {
    proxy: FaultProxy,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    ns: String,
}

impl Rig {
    async fn new(test: &str) -> Rig {
        let clusters: &TestClusters = support::shared();
        let proxy = start_proxy();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        clusters.write_kubeconfig(&kubeconfig, &BTreeMap::from([("north".into(), proxy.url())]));
        let ns = clusters.namespace(test).await;
        Rig {
            proxy,
            _dir: dir,
            kubeconfig,
            ns,
        }
    }

    /// A client through the proxy, as the harness builds them (kube's defaults).
    async fn client(&self) -> Client {
        client_for(&self.kubeconfig, "north").await
    }

    /// A client through the proxy with some of kube's defaults changed.
    async fn client_with(&self, change: impl FnOnce(&mut Config)) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let opts = KubeConfigOptions {
            context: Some("north".into()),
            ..Default::default()
        };
        let mut config = Config::from_custom_kubeconfig(kc, &opts).await.unwrap();
        change(&mut config);
        Client::try_from(config).unwrap()
    }

    /// A client that bypasses the proxy, for setting things up.
    async fn direct(&self) -> Api<ConfigMap> {
        Api::namespaced(support::shared().client("north").await, &self.ns)
    }

    fn configmaps(&self, client: Client) -> Api<ConfigMap> {
        Api::namespaced(client, &self.ns)
    }

    /// Creates ConfigMaps directly on the cluster (not through the proxy).
    async fn seed(&self, names: &[&str]) {
        let direct = self.direct().await;
        for name in names {
            direct
                .create(&PostParams::default(), &configmap(name, "seeded"))
                .await
                .unwrap();
        }
    }

    /// `GET path` through the proxy with a plain HTTPS client.
    async fn raw_get(&self, path: &str) -> reqwest::Response {
        raw_client()
            .get(format!("{}{path}", self.proxy.url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }
}

fn start_proxy() -> FaultProxy {
    FaultProxy::in_front_of(support::shared(), "north")
}

fn raw_client() -> reqwest::Client {
    let ca = std::fs::read(support::shared().ca_cert()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

fn configmap(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": {"value": value, "padding": "x".repeat(2048)},
    }))
    .unwrap()
}

fn value_of(cm: &ConfigMap) -> &str {
    &cm.data.as_ref().unwrap()["value"]
}

/// The `Status` of an `Api` error, or a panic naming the error.
fn api_status(err: &kube::Error) -> &kube::core::Status {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API (Status) error, got {other:?}"),
    }
}

/// Whether an `io::Error` of this kind is somewhere in the error's source chain.
fn has_io_kind(err: &kube::Error, kind: io::ErrorKind) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == kind) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Every item of a watch stream until it ends (panics if it does not end within `within`).
async fn drain<S, T>(stream: S, within: Duration) -> Vec<kube::Result<WatchEvent<T>>>
where
    S: Stream<Item = kube::Result<WatchEvent<T>>>,
{
    tokio::time::timeout(within, stream.collect::<Vec<_>>())
        .await
        .unwrap_or_else(|_| panic!("the watch stream did not end within {within:?}"))
}

fn added_names(items: &[kube::Result<WatchEvent<ConfigMap>>]) -> Vec<String> {
    items
        .iter()
        .map(|item| match item {
            Ok(WatchEvent::Added(cm)) => cm.metadata.name.clone().unwrap(),
            other => panic!("expected only ADDED events, got {other:?}"),
        })
        .collect()
}

const SEEDED: &[&str] = &["cm-a", "cm-b", "cm-c", "cm-d", "cm-e"];

#[tokio::test]
async fn without_faults_requests_pass_through_and_a_configmap_round_trips() {
    let rig = Rig::new("proxy-passthrough").await;
    let api = rig.configmaps(rig.client().await);

    let created = api
        .create(&PostParams::default(), &configmap("round-trip", "one"))
        .await
        .unwrap();
    let got = api.get("round-trip").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(value_of(&got), "one");

    let mut changed = got.clone();
    changed.data.as_mut().unwrap().insert("value".into(), "two".into());
    api.replace("round-trip", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(value_of(&rig.direct().await.get("round-trip").await.unwrap()), "two");

    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);

    // A Go client (which offers h2 and http/1.1) gets through too.
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&rig.kubeconfig)
        .args(["--context", "north", "-n", &rig.ns, "get", "configmap", "round-trip"])
        .args(["-o", "jsonpath={.data.value}"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two");
    api.delete("round-trip", &DeleteParams::default()).await.unwrap();
    assert!(rig.direct().await.get_opt("round-trip").await.unwrap().is_none());

    let stats = rig.proxy.stats();
    // 5 from kube, at least 1 from kubectl (plus its discovery, unless cached).
    assert!(stats.requests >= 6, "{stats:?}");
    assert_eq!(stats.forwarded, stats.requests, "{stats:?}");
    assert_eq!(
        stats.errors + stats.timeouts + stats.resets + stats.watch_cuts,
        0,
        "{stats:?}"
    );
}

#[tokio::test]
async fn added_latency_delays_every_request_by_at_least_that_long() {
    let rig = Rig::new("proxy-latency").await;
    rig.seed(&["slow"]).await;
    let api = rig.configmaps(rig.client().await);
    api.get("slow").await.unwrap(); // connect outside the measurement

    let latency = Duration::from_millis(400);
    rig.proxy.set(Faults {
        latency,
        ..Faults::default()
    });
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(value_of(&api.get("slow").await.unwrap()), "seeded");
        let took = start.elapsed();
        assert!(
            took >= latency,
            "a request took {took:?}, less than the added {latency:?}"
        );
    }
    assert_eq!(rig.proxy.stats().delayed, 3);

    rig.proxy.clear();
    api.get("slow").await.unwrap();
    assert_eq!(rig.proxy.stats().delayed, 3, "no latency once cleared");
}

#[tokio::test]
async fn an_injected_500_reaches_the_client_as_an_api_error_with_that_code() {
    let rig = Rig::new("proxy-500").await;
    rig.seed(&["target"]).await;
    let api = rig.configmaps(rig.client().await);
    rig.proxy.set(Faults {
        error_rate: 1.0,
        error_status: 500,
        ..Faults::default()
    });

    let err = api.get("target").await.unwrap_err();
    let status = api_status(&err);
    assert_eq!(status.code, 500);
    assert_eq!(status.reason, "InternalError");
    assert_eq!(status.message, "injected fault");
    assert!(status.is_failure());
    let stats = rig.proxy.stats();
    assert_eq!((stats.requests, stats.errors, stats.forwarded), (1, 1, 0), "{stats:?}");
}

#[tokio::test]
async fn an_injected_503_reaches_a_client_without_retries_as_a_status_error() {
    let rig = Rig::new("proxy-503").await;
    rig.seed(&["target"]).await;
    let client = rig.client_with(|c| c.default_retry = false).await;
    let api = rig.configmaps(client);
    rig.proxy.set(Faults {
        error_rate: 1.0,
        error_status: 503,
        ..Faults::default()
    });

    let err = api.get("target").await.unwrap_err();
    let status = api_status(&err);
    assert_eq!((status.code, status.reason.as_str()), (503, "ServiceUnavailable"));
    assert_eq!(rig.proxy.stats().forwarded, 0);
}

#[tokio::test]
async fn an_injected_429_reaches_a_client_without_retries_with_retry_after() {
    let rig = Rig::new("proxy-429").await;
    rig.seed(&["target"]).await;
    let client = rig.client_with(|c| c.default_retry = false).await;
    let api = rig.configmaps(client);
    rig.proxy.set(Faults {
        error_rate: 1.0,
        error_status: 429,
        ..Faults::default()
    });

    let err = api.get("target").await.unwrap_err();
    let status = api_status(&err);
    assert_eq!((status.code, status.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(status.details.as_ref().unwrap().retry_after_seconds, 1);

    // On the wire: a Retry-After header and a JSON Status body.
    let res = rig
        .raw_get(&format!("/api/v1/namespaces/{}/configmaps/target", rig.ns))
        .await;
    assert_eq!(res.status().as_u16(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["status"], "Failure");
    assert_eq!(body["code"], 429);
    assert_eq!(rig.proxy.stats().forwarded, 0);
}

#[tokio::test]
async fn kube_default_client_retries_injected_503s_transparently() {
    let rig = Rig::new("proxy-503-retried").await;
    rig.seed(&["target"]).await;
    let api = rig.configmaps(rig.client().await);
    rig.proxy.set(Faults {
        fail_next: 3,
        error_status: 503,
        ..Faults::default()
    });

    // kube 5's default client retries 429/503/504 (up to 15 times, backing off from 5 ms).
    assert_eq!(value_of(&api.get("target").await.unwrap()), "seeded");
    let stats = rig.proxy.stats();
    assert_eq!((stats.requests, stats.errors, stats.forwarded), (4, 3, 1), "{stats:?}");
}

#[tokio::test]
async fn kube_default_client_waits_out_retry_after_on_an_injected_429() {
    let rig = Rig::new("proxy-429-retried").await;
    rig.seed(&["target"]).await;
    let api = rig.configmaps(rig.client().await);
    rig.proxy.set(Faults {
        fail_next: 1,
        error_status: 429,
        ..Faults::default()
    });

    let start = Instant::now();
    assert_eq!(value_of(&api.get("target").await.unwrap()), "seeded");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "retried after {took:?}, before Retry-After: 1"
    );
    let stats = rig.proxy.stats();
    assert_eq!((stats.requests, stats.errors, stats.forwarded), (2, 1, 1), "{stats:?}");
}

#[tokio::test]
async fn an_error_rate_fails_a_deterministic_share_of_requests() {
    let rig = Rig::new("proxy-error-rate").await;
    rig.seed(&["target"]).await;
    let api = rig.configmaps(rig.client().await);

    // Rate 0.5: every second request (500 is not retried by kube).
    rig.proxy.set(Faults {
        error_rate: 0.5,
        error_status: 500,
        ..Faults::default()
    });
    let mut failed = Vec::new();
    for _ in 0..10 {
        match api.get("target").await {
            Ok(cm) => {
                assert_eq!(value_of(&cm), "seeded");
                failed.push(false);
            }
            Err(e) => {
                assert_eq!(api_status(&e).code, 500);
                failed.push(true);
            }
        }
    }
    assert_eq!(failed, [false, true].repeat(5));
    let stats = rig.proxy.stats();
    assert_eq!((stats.errors, stats.forwarded), (5, 5), "{stats:?}");

    // Rate 0.3 (counters restart at each set): 3 of 10, the 4th, 7th and 10th.
    rig.proxy.set(Faults {
        error_rate: 0.3,
        error_status: 500,
        ..Faults::default()
    });
    let mut failed = Vec::new();
    for _ in 0..10 {
        failed.push(api.get("target").await.is_err());
    }
    let at: Vec<usize> = (0..10).filter(|i| failed[*i]).collect();
    assert_eq!(at, [3, 6, 9]);
}

#[tokio::test]
async fn fail_next_fails_exactly_the_next_n_requests_then_lets_them_pass() {
    let rig = Rig::new("proxy-fail-next").await;
    rig.seed(&["target"]).await;
    let api = rig.configmaps(rig.client().await);
    rig.proxy.set(Faults {
        fail_next: 2,
        error_status: 500,
        ..Faults::default()
    });

    assert_eq!(api_status(&api.get("target").await.unwrap_err()).code, 500);
    assert_eq!(api_status(&api.get("target").await.unwrap_err()).code, 500);
    for _ in 0..3 {
        assert_eq!(value_of(&api.get("target").await.unwrap()), "seeded");
    }
    let stats = rig.proxy.stats();
    assert_eq!((stats.errors, stats.forwarded), (2, 3), "{stats:?}");
}

#[tokio::test]
async fn a_request_never_answered_times_out_in_a_client_with_a_read_timeout() {
    let rig = Rig::new("proxy-timeout").await;
    rig.seed(&["target"]).await;
    // kube 5 has no read timeout by default: such a client would wait forever.
    let read_timeout = Duration::from_millis(800);
    let client = rig.client_with(|c| c.read_timeout = Some(read_timeout)).await;
    let api = rig.configmaps(client);
    rig.proxy.set(Faults {
        timeout_rate: 1.0,
        ..Faults::default()
    });

    let start = Instant::now();
    let err = api.get("target").await.unwrap_err();
    let took = start.elapsed();
    assert!(has_io_kind(&err, io::ErrorKind::TimedOut), "not a timeout: {err:?}");
    assert!(
        took >= read_timeout && took < Duration::from_secs(10),
        "timed out after {took:?}"
    );
    let stats = rig.proxy.stats();
    assert_eq!((stats.timeouts, stats.forwarded), (1, 0), "{stats:?}");

    rig.proxy.clear();
    assert_eq!(value_of(&api.get("target").await.unwrap()), "seeded");
}

#[tokio::test]
async fn a_response_reset_mid_body_is_an_error_not_a_truncated_object() {
    let rig = Rig::new("proxy-reset").await;
    rig.seed(&["victim", "bystander"]).await;
    let api = rig.configmaps(rig.client().await);
    rig.proxy.set(Faults {
        reset_rate: 1.0,
        only_path: Some("/configmaps/victim".into()),
        ..Faults::default()
    });

    for _ in 0..3 {
        let err = api.get("victim").await.unwrap_err();
        // A clean but short body would surface as a JSON (Serde) error; a Status as Api.
        assert!(
            matches!(err, kube::Error::HyperError(_) | kube::Error::Service(_)),
            "expected a transport error, got {err:?}"
        );
        assert_eq!(value_of(&api.get("bystander").await.unwrap()), "seeded");
    }
    let stats = rig.proxy.stats();
    assert_eq!((stats.resets, stats.forwarded), (3, 6), "{stats:?}");

    rig.proxy.clear();
    assert_eq!(value_of(&api.get("victim").await.unwrap()), "seeded");
}

#[tokio::test]
async fn a_watch_cut_after_n_events_ends_the_raw_watch_stream_after_exactly_n() {
    let rig = Rig::new("proxy-watch-limit").await;
    rig.seed(SEEDED).await;
    let api = rig.configmaps(rig.client().await);
    rig.proxy.set(Faults {
        watch_event_limit: Some(3),
        ..Faults::default()
    });

    // From resourceVersion 0 the apiserver first replays one ADDED event per existing object
    // (bookmarks off: v1.25+ would send one among them, and the proxy counts every event).
    let stream = api
        .watch(&WatchParams::default().timeout(60).disable_bookmarks(), "0")
        .await
        .unwrap();
    let items = drain(stream, Duration::from_secs(15)).await;
    assert_eq!(added_names(&items).len(), 3, "{items:?}");
    assert_eq!(rig.proxy.stats().watch_cuts, 1);

    // The limit applies to watches only.
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        SEEDED.len()
    );
}

#[tokio::test]
async fn a_watch_reset_mid_event_ends_the_raw_watch_stream_after_the_events_before_it() {
    let rig = Rig::new("proxy-watch-reset").await;
    rig.seed(SEEDED).await;
    let api = rig.configmaps(rig.client().await);
    rig.proxy.set(Faults {
        reset_rate: 1.0,
        watch_event_limit: Some(2),
        only_path: Some("watch=".into()),
        ..Faults::default()
    });

    let stream = api
        .watch(&WatchParams::default().timeout(60).disable_bookmarks(), "0")
        .await
        .unwrap();
    let items = drain(stream, Duration::from_secs(15)).await;
    // kube ends a raw watch quietly on an unexpected EOF (so that watchers resume); the half
    // event after the cut never comes out as an object.
    let events: Vec<_> = items.iter().take_while(|i| i.is_ok()).collect();
    assert_eq!(events.len(), 2, "{items:?}");
    assert!(items.len() <= 3, "nothing after the cut: {items:?}");
    let stats = rig.proxy.stats();
    assert_eq!((stats.resets, stats.watch_cuts), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn on_the_wire_a_cut_watch_ends_cleanly_but_a_reset_watch_breaks() {
    let rig = Rig::new("proxy-watch-wire").await;
    rig.seed(SEEDED).await;
    let path = format!("/api/v1/namespaces/{}/configmaps?watch=true&resourceVersion=0", rig.ns);

    rig.proxy.set(Faults {
        watch_event_limit: Some(2),
        ..Faults::default()
    });
    let res = rig.raw_get(&path).await;
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers().get("content-length").is_none(), "a watch is streamed");
    let body = tokio::time::timeout(Duration::from_secs(15), res.bytes())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["type"], "ADDED");
    }

    rig.proxy.update(|f| f.reset_rate = 1.0);
    let mut res = rig.raw_get(&path).await;
    assert_eq!(res.status().as_u16(), 200);
    let mut received = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => received.extend_from_slice(&chunk),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap();
    assert!(outcome.is_err(), "the reset watch ended cleanly");
    let text = String::from_utf8_lossy(&received);
    let complete: Vec<&str> = text.split_inclusive('\n').filter(|l| l.ends_with('\n')).collect();
    assert_eq!(complete.len(), 2, "{text}");
    assert!(
        !text.ends_with('\n'),
        "the cut falls in the middle of the third event: {text}"
    );
    let stats = rig.proxy.stats();
    assert_eq!((stats.watch_cuts, stats.resets), (1, 1), "{stats:?}");
}

#[tokio::test]
async fn down_refuses_connections_and_up_serves_the_same_client_again() {
    let rig = Rig::new("proxy-down").await;
    rig.seed(&["target"]).await;
    let api = rig.configmaps(rig.client().await);
    let url = rig.proxy.url();

    // A pooled connection and a long-lived (idle) watch, both to be aborted.
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let watch = api.watch(&WatchParams::default().timeout(120), &rv).await.unwrap();

    rig.proxy.update(|f| f.down = true);
    drain(watch, Duration::from_secs(5)).await;
    assert!(rig.proxy.stats().aborted_connections >= 1);
    assert!(std::net::TcpStream::connect(("127.0.0.1", rig.proxy.port())).is_err());
    // Let the client notice that its pooled connections are gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..2 {
        let err = api.get("target").await.unwrap_err();
        assert!(has_io_kind(&err, io::ErrorKind::ConnectionRefused), "{err:?}");
    }

    rig.proxy.update(|f| f.down = false);
    assert_eq!(rig.proxy.url(), url);
    assert_eq!(value_of(&api.get("target").await.unwrap()), "seeded");

    // And again: down and up twice in a row on the same port.
    rig.proxy.update(|f| f.down = true);
    assert!(api.get("target").await.is_err());
    rig.proxy.clear();
    assert_eq!(value_of(&api.get("target").await.unwrap()), "seeded");
}

#[tokio::test]
async fn only_path_confines_faults_to_the_matching_requests() {
    let rig = Rig::new("proxy-only-path").await;
    rig.seed(&["victim", "bystander"]).await;
    let api = rig.configmaps(rig.client().await);
    rig.proxy.set(Faults {
        error_rate: 1.0,
        error_status: 500,
        latency: Duration::from_millis(300),
        only_path: Some("/configmaps/victim".into()),
        ..Faults::default()
    });

    assert_eq!(api_status(&api.get("victim").await.unwrap_err()).code, 500);
    assert_eq!(value_of(&api.get("bystander").await.unwrap()), "seeded");
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 2);
    let stats = rig.proxy.stats();
    assert_eq!((stats.errors, stats.delayed, stats.forwarded), (1, 1, 2), "{stats:?}");
}

/// A proxy in a `static` outlives the runtime of the test that started it.
#[test]
fn a_static_proxy_serves_clients_on_successive_runtimes() {
    static PROXY: OnceLock<FaultProxy> = OnceLock::new();
    let proxy = PROXY.get_or_init(start_proxy);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    support::shared().write_kubeconfig(&kubeconfig, &BTreeMap::from([("north".into(), proxy.url())]));

    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let ns = runtime().block_on(support::shared().namespace("proxy-static"));
    for round in 0..2 {
        runtime().block_on(async {
            let api: Api<ConfigMap> = Api::namespaced(client_for(&kubeconfig, "north").await, &ns);
            let name = format!("round-{round}");
            api.create(&PostParams::default(), &configmap(&name, "static"))
                .await
                .unwrap();
            assert_eq!(value_of(&api.get(&name).await.unwrap()), "static");
        });
    }
    assert_eq!(proxy.stats().forwarded, 4);
}
