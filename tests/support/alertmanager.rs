//! Real Alertmanagers (Debian's `prometheus-alertmanager`, 0.25) on loopback, clustered like an
//! HA pair, delivering to a webhook — for tests of what recoverd receives.
//!
//! [`AlertmanagerPair::start`] starts `n` instances that gossip with each other, each with its own
//! storage, configured with one route that sends everything (grouped by `alertname`) to one
//! webhook receiver authenticated with a bearer token file. [`AlertmanagerPair::fire`] and
//! [`AlertmanagerPair::resolve`] use `amtool alert add` against every instance, as an HA pair of
//! Prometheus servers sends every alert to every Alertmanager.
//!
//! Everything is stopped (SIGTERM, then SIGKILL) and its temporary directory removed when the
//! [`AlertmanagerPair`] is dropped, and — because a panicking or killed test process may run no
//! destructor — by a watchdog process that outlives the test process just long enough to do the
//! same once it has gone.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::clusters::free_port;

pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
pub const AMTOOL: &str = "/usr/bin/amtool";

/// The route's notification timings.
///
/// Alertmanager flushes a group `group_wait` after its first alert, then every `group_interval`
/// if something changed; an unchanged group is re-sent at the first flush at least
/// `repeat_interval` after the last notification — so the effective repeat interval is
/// `repeat_interval` rounded up to a multiple of `group_interval`. `group_interval` and
/// `repeat_interval` must not be zero.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
}

/// Less common knobs of [`AlertmanagerPair::start_with`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `--cluster.peer-timeout`: the instance at position `i` in the cluster waits
    /// `i * peer_timeout` before it sends a notification, and skips it if a peer's notification
    /// log (gossiped meanwhile) says it was sent already. Alertmanager's default is 15 s; a
    /// wait that long also delays that instance's next flushes of the group.
    pub peer_timeout: Duration,
    /// `--cluster.gossip-interval` (default 200 ms). Settling takes about `30 * gossip_interval`.
    pub gossip_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            peer_timeout: Duration::from_secs(1),
            gossip_interval: Duration::from_millis(50),
        }
    }
}

/// `n` running, clustered Alertmanagers (see the module docs).
pub struct AlertmanagerPair {
    root: tempfile::TempDir,
    instances: Vec<Instance>,
    watchdog: Option<Child>,
    /// Alerts fired and not resolved, by label set: the start time they were given and their
    /// annotations, so that firing again and resolving use the same `startsAt` (as Prometheus
    /// does: one incident, one `startsAt`) and a resolution keeps the annotations.
    active: Mutex<BTreeMap<Vec<(String, String)>, Active>>,
}

struct Active {
    start: jiff::Timestamp,
    annotations: Vec<(String, String)>,
}

struct Instance {
    child: Child,
    web_port: u16,
    cluster_port: u16,
    dir: PathBuf,
}

/// Installs Debian's `prometheus-alertmanager` (as root, with apt) unless it is there already.
pub fn ensure_installed() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if Path::new(ALERTMANAGER).exists() && Path::new(AMTOOL).exists() {
            return;
        }
        let status = Command::new("bash")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null",
            ])
            .stdin(Stdio::null())
            .status()
            .expect("failed to run apt-get");
        assert!(
            status.success() && Path::new(ALERTMANAGER).exists() && Path::new(AMTOOL).exists(),
            "installing prometheus-alertmanager failed (it needs root and Debian's archive)"
        );
    });
}

/// `prometheus-alertmanager --version`'s first line, e.g. `alertmanager, version 0.25.0 (…)`.
pub fn version() -> String {
    ensure_installed();
    let out = Command::new(ALERTMANAGER)
        .arg("--version")
        .output()
        .expect("prometheus-alertmanager --version");
    // Older versions print it on stderr.
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

impl AlertmanagerPair {
    /// Starts `n` clustered instances delivering to `webhook_url` with
    /// `Authorization: Bearer <contents of token_file>`, with default [`Options`]. Returns once
    /// every instance is ready and sees all `n` cluster members, settled; panics with their logs
    /// otherwise.
    pub fn start(n: usize, webhook_url: &str, token_file: &Path, timings: Timings) -> Self {
        Self::start_with(n, webhook_url, token_file, timings, Options::default())
    }

    pub fn start_with(n: usize, webhook_url: &str, token_file: &Path, timings: Timings, options: Options) -> Self {
        assert!(n >= 1, "at least one Alertmanager");
        assert!(
            !timings.group_interval.is_zero() && !timings.repeat_interval.is_zero(),
            "Alertmanager rejects a zero group_interval or repeat_interval"
        );
        ensure_installed();
        let root = tempfile::Builder::new().prefix("recoverd-am-").tempdir().unwrap();
        let config = root.path().join("alertmanager.yml");
        let token_file =
            std::fs::canonicalize(token_file).unwrap_or_else(|e| panic!("token file {}: {e}", token_file.display()));
        // Canonical path in the config: Alertmanager resolves a relative one against the
        // config file's directory.
        std::fs::write(&config, config_yaml(webhook_url, &token_file, &timings)).unwrap();

        let watchdog = spawn_watchdog(root.path());
        let mut this = AlertmanagerPair {
            root,
            instances: Vec::new(),
            watchdog: Some(watchdog),
            active: Mutex::new(BTreeMap::new()),
        };
        // Ports are picked free but may be taken before Alertmanager binds them: try again.
        let mut last_err = String::new();
        for attempt in 0..3 {
            match this.try_start(n, attempt, &config, &options) {
                Ok(()) => return this,
                Err(e) => {
                    last_err = e;
                    this.stop_instances();
                }
            }
        }
        panic!("Alertmanagers failed to start:\n{last_err}");
    }

    fn try_start(&mut self, n: usize, attempt: usize, config: &Path, options: &Options) -> Result<(), String> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        for (i, &(web_port, cluster_port)) in ports.iter().enumerate() {
            let dir = self.root.path().join(format!("am{i}-{attempt}"));
            std::fs::create_dir_all(dir.join("data")).unwrap();
            let log = std::fs::File::create(dir.join("log")).unwrap();
            let mut cmd = Command::new(ALERTMANAGER);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
                .arg(format!("--web.external-url=http://127.0.0.1:{web_port}"))
                .arg(format!("--cluster.listen-address=127.0.0.1:{cluster_port}"))
                .arg(format!("--cluster.advertise-address=127.0.0.1:{cluster_port}"))
                .arg(format!("--cluster.peer-timeout={}", go_duration(options.peer_timeout)))
                .arg(format!(
                    "--cluster.gossip-interval={}",
                    go_duration(options.gossip_interval)
                ))
                .args([
                    "--cluster.pushpull-interval=1s",
                    "--cluster.probe-interval=200ms",
                    "--cluster.probe-timeout=100ms",
                    "--cluster.reconnect-interval=500ms",
                    "--cluster.settle-timeout=10s",
                    "--log.level=debug",
                ]);
            for (j, &(_, peer)) in ports.iter().enumerate() {
                if j != i {
                    cmd.arg(format!("--cluster.peer=127.0.0.1:{peer}"));
                }
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("{ALERTMANAGER}: {e}"))?;
            // The watchdog stops what this file names.
            let mut pids = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.path().join("pids"))
                .unwrap();
            writeln!(pids, "{}", child.id()).unwrap();
            self.instances.push(Instance {
                child,
                web_port,
                cluster_port,
                dir,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..n {
            loop {
                if let Some(status) = self.instances[i].child.try_wait().unwrap() {
                    return Err(format!("Alertmanager {i} exited ({status}):\n{}", self.logs()));
                }
                let ready = http_get(self.instances[i].web_port, "/-/ready").is_ok_and(|(code, _)| code == 200);
                let peers = self.cluster_status(i);
                if ready
                    && peers
                        .as_ref()
                        .is_some_and(|(status, peers)| status == "ready" && peers.len() == n)
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "Alertmanager {i} not ready with {n} settled members after 30 s \
                         (ready: {ready}, cluster: {peers:?}):\n{}",
                        self.logs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// `(cluster.status, cluster.peers[].name)` from instance `i`'s `/api/v2/status`.
    pub fn cluster_status(&self, i: usize) -> Option<(String, Vec<String>)> {
        let v = self.status(i)?;
        let cluster = &v["cluster"];
        let peers = cluster["peers"]
            .as_array()?
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        Some((cluster["status"].as_str()?.to_string(), peers))
    }

    /// Instance `i`'s `/api/v2/status`.
    pub fn status(&self, i: usize) -> Option<Value> {
        let (code, body) = http_get(self.instances[i].web_port, "/api/v2/status").ok()?;
        if code != 200 {
            return None;
        }
        serde_json::from_slice(&body).ok()
    }

    /// The alerts instance `i` holds (`/api/v2/alerts`).
    pub fn alerts(&self, i: usize) -> Vec<Value> {
        let (code, body) = http_get(self.instances[i].web_port, "/api/v2/alerts")
            .unwrap_or_else(|e| panic!("GET /api/v2/alerts of Alertmanager {i}: {e}"));
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// `http://127.0.0.1:PORT` of every instance, in start order (also each one's `externalURL`,
    /// so a webhook payload says which instance sent it). Alertmanager orders peers for
    /// notification by their random cluster names, not by this order.
    pub fn urls(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|i| format!("http://127.0.0.1:{}", i.web_port))
            .collect()
    }

    /// The process ids of the instances.
    pub fn pids(&self) -> Vec<u32> {
        self.instances.iter().map(|i| i.child.id()).collect()
    }

    /// The temporary directory holding the configuration, storage and logs.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `127.0.0.1:PORT` of every instance's gossip listener.
    pub fn cluster_addresses(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|i| format!("127.0.0.1:{}", i.cluster_port))
            .collect()
    }

    /// Fires an alert with these labels and annotations at every instance (`amtool alert add`)
    /// and returns its `startsAt`. The first firing of a label set starts now (whole seconds);
    /// firing the same labels again (until [`Self::resolve`]) keeps that start, as Prometheus
    /// re-sending an active alert does, so every instance and every re-send agree on
    /// (fingerprint, startsAt).
    pub fn fire(&self, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> jiff::Timestamp {
        let annotations = pairs(annotations);
        let start = {
            let mut active = self.active.lock().unwrap();
            let a = active.entry(pairs(labels)).or_insert_with(|| Active {
                start: now_seconds(),
                annotations: Vec::new(),
            });
            a.annotations = annotations.clone();
            a.start
        };
        self.add(labels, &annotations, start, None);
        start
    }

    /// Resolves an alert at every instance: `amtool alert add` with the labels, the `startsAt`
    /// and annotations it was fired with (now and none if it was not fired through this harness)
    /// and `--end` now. Alertmanager sends the resolution at the group's next flush (within
    /// `group_interval`).
    pub fn resolve(&self, labels: &[(&str, &str)]) {
        let active = self.active.lock().unwrap().remove(&pairs(labels));
        let (start, annotations) = match active {
            Some(a) => (a.start, a.annotations),
            None => (now_seconds(), Vec::new()),
        };
        self.add(labels, &annotations, start, Some(now_seconds()));
    }

    fn add(
        &self,
        labels: &[(&str, &str)],
        annotations: &[(String, String)],
        start: jiff::Timestamp,
        end: Option<jiff::Timestamp>,
    ) {
        for url in self.urls() {
            let mut cmd = Command::new(AMTOOL);
            cmd.args(["alert", "add", "--timeout=10s"])
                .arg(format!("--alertmanager.url={url}"))
                .arg(format!("--start={start}"));
            if let Some(end) = end {
                cmd.arg(format!("--end={end}"));
            }
            for (k, v) in annotations {
                cmd.arg(format!("--annotation={k}={}", quote(v)));
            }
            // After the flags: a label value starting with `-` must not read as one.
            cmd.arg("--");
            for (k, v) in labels {
                cmd.arg(format!("{k}={}", quote(v)));
            }
            let out = cmd
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("{AMTOOL}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Every instance's log so far, each under a header.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, inst) in self.instances.iter().enumerate() {
            let log = std::fs::read_to_string(inst.dir.join("log")).unwrap_or_default();
            out += &format!(
                "----- Alertmanager {i} (http://127.0.0.1:{}) -----\n{log}\n",
                inst.web_port
            );
        }
        out
    }

    /// Stops every instance now (also done on drop).
    pub fn stop(&mut self) {
        self.stop_instances();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    fn stop_instances(&mut self) {
        for inst in &self.instances {
            let _ = Command::new("kill")
                .args(["-TERM", &inst.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for inst in &mut self.instances {
            while inst.child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = inst.child.kill();
                    let _ = inst.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.instances.clear();
    }
}

impl Drop for AlertmanagerPair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.stop();
    }
}

/// The configuration: one route, everything to one webhook receiver. JSON is YAML, and quotes
/// whatever the URL and path contain.
fn config_yaml(webhook_url: &str, token_file: &Path, t: &Timings) -> String {
    let config = json!({
        "route": {
            "receiver": "recoverd",
            "group_by": ["alertname"],
            "group_wait": go_duration(t.group_wait),
            "group_interval": go_duration(t.group_interval),
            "repeat_interval": go_duration(t.repeat_interval),
        },
        // Several URLs (comma-separated): one webhook config each, every notification to all
        // of them (several recoverd replicas, each told by every Alertmanager).
        "receivers": [{
            "name": "recoverd",
            "webhook_configs": webhook_url.split(',').map(|url| json!({
                "url": url,
                "send_resolved": true,
                "max_alerts": 0,
                "http_config": {
                    "authorization": {
                        "type": "Bearer",
                        "credentials_file": token_file.display().to_string(),
                    },
                },
            })).collect::<Vec<_>>(),
        }],
    });
    serde_json::to_string_pretty(&config).unwrap()
}

/// A duration as Alertmanager/Prometheus parse it (`1500ms`).
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn now_seconds() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap()
}

/// Owned, sorted pairs (a label set's key).
fn pairs(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut key: Vec<_> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    key.sort();
    key
}

/// A value in amtool's matcher syntax: double-quoted, with `\`, `"` and newlines escaped, so any
/// value (spaces, `=`, quotes, template syntax) arrives verbatim.
fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => out += "\\\\",
            '"' => out += "\\\"",
            '\n' => out += "\\n",
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A minimal blocking `GET http://127.0.0.1:port{path}`: (status code, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((code, buf[split + 4..].to_vec()))
}

/// A detached process that waits for this test process to exit, then stops the Alertmanagers
/// whose pids are in `root/pids` (checking each is still one of ours: its command line names
/// `root`) and removes `root`.
fn spawn_watchdog(root: &Path) -> Child {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
        ours() { tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"; }
        pids=$(cat "$2/pids" 2>/dev/null)
        for p in $pids; do ours "$p" "$2" && kill -TERM "$p"; done
        for _ in $(seq 50); do
            alive=; for p in $pids; do ours "$p" "$2" && alive=1; done
            [ -z "$alive" ] && break; sleep 0.1
        done
        for p in $pids; do ours "$p" "$2" && kill -KILL "$p"; done
        rm -rf "$2"
    "#;
    Command::new("setsid")
        .args(["bash", "-c", script, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start the Alertmanager watchdog (setsid)")
}
