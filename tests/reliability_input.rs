//! Reliability suite R4 (hostile input), part 1: plan directories that loop, link out or
//! overflow, and clients that are slow, idle, too many or too large. Each test names the
//! property it proves. (The fuzzing half is in `reliability_fuzz.rs`.)

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use recoverd::plan::load::{load_paths, MAX_FILE_BYTES, MAX_STEPS};
use support::server::{eventually, nowhere_kubeconfig, ServeProcess};

const PLAN: &str = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: NAME, namespace: ops}\nspec:\n  mode: manual\n  steps:\n  - {name: hold, type: wait, wait: {duration: 10ms}}\n";

fn plan(name: &str) -> String {
    PLAN.replace("NAME", name)
}

/// Runs `f` on a thread and fails the test if it has not returned within a minute: the
/// defect being guarded against is a walk that never ends.
fn ends<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} never returned"))
}

fn hostile_tree(root: &Path) {
    let plans = root.join("plans");
    std::fs::create_dir_all(plans.join("team/nested")).unwrap();
    std::fs::write(plans.join("a.yaml"), plan("a")).unwrap();
    std::fs::write(plans.join("team/nested/b.yaml"), plan("b")).unwrap();
    // A loop back to the top, a loop to itself, and links out of the tree.
    std::os::unix::fs::symlink(&plans, plans.join("team/nested/up")).unwrap();
    std::os::unix::fs::symlink("..", plans.join("team/parent")).unwrap();
    std::os::unix::fs::symlink("/etc", plans.join("etc")).unwrap();
    std::fs::write(root.join("outside.yaml"), plan("outside")).unwrap();
    std::os::unix::fs::symlink(root.join("outside.yaml"), plans.join("outside.yaml")).unwrap();
}

#[test]
fn a_plan_directory_with_symlink_loops_and_links_out_loads_once_and_says_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    hostile_tree(dir.path());
    let plans = dir.path().join("plans");
    let (loaded, errors) = ends("loading a looping plan directory", move || load_paths(&[plans]));
    let mut names: Vec<_> = loaded.iter().map(|p| p.plan.metadata.name.clone().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"], "each plan once, nothing from outside");
    let said: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for link in ["etc", "outside.yaml"] {
        assert!(
            said.iter()
                .any(|e| e.contains(link) && e.contains("out of the plan directory")),
            "{link}: {said:#?}"
        );
    }
}

#[test]
fn recoverd_check_on_a_looping_plan_directory_returns() {
    let dir = tempfile::tempdir().unwrap();
    hostile_tree(dir.path());
    let plans = dir.path().join("plans");
    let out = ends("recoverd check", move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_recoverd"))
            .arg("check")
            .arg(&plans)
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("out of the plan directory"), "{text}");
}

#[test]
fn a_mounted_configmap_layout_of_symlinks_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    let data = plans.join("..2026_12_01_00_00_00.000");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("p.yaml"), plan("mounted")).unwrap();
    std::os::unix::fs::symlink("..2026_12_01_00_00_00.000", plans.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/p.yaml", plans.join("p.yaml")).unwrap();
    let (loaded, errors) = load_paths(&[plans]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(loaded.len(), 1);
}

#[test]
fn oversized_plan_files_and_plans_with_too_many_steps_are_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let mut big = plan("big");
    big.push_str(&format!("# {}\n", "x".repeat(MAX_FILE_BYTES as usize)));
    std::fs::write(plans.join("big.yaml"), big).unwrap();
    let mut many = plan("many").replace("  - {name: hold, type: wait, wait: {duration: 10ms}}\n", "");
    for i in 0..=MAX_STEPS {
        many.push_str(&format!("  - {{name: s{i}, type: wait, wait: {{duration: 1ms}}}}\n"));
    }
    std::fs::write(plans.join("many.yaml"), many).unwrap();
    std::fs::write(plans.join("ok.yaml"), plan("ok")).unwrap();
    let (loaded, errors) = load_paths(&[plans]);
    assert_eq!(loaded.len(), 1, "only the good plan loads");
    let said: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        said.iter()
            .any(|e| e.contains("big.yaml") && e.contains(&format!("{MAX_FILE_BYTES} bytes"))),
        "{said:#?}"
    );
    assert!(
        said.iter()
            .any(|e| e.contains("many.yaml") && e.contains(&format!("at most {MAX_STEPS}"))),
        "{said:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_looping_plan_directory_answers_health_and_lists_the_plans() {
    let dir = tempfile::tempdir().unwrap();
    hostile_tree(dir.path());
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(
        dir.path(),
        &dir.path().join("plans"),
        &kubeconfig,
        &["--reload-interval", "200ms"],
    )
    .await;
    assert_eq!(serve.status("/healthz").await, 200);
    let plans = serve.get("/api/v1/plans").await;
    assert_eq!(plans["plans"].as_array().unwrap().len(), 2, "{plans}");
}

/// Whether the server closed the connection: a read returns end-of-file or an error.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_surplus_connections_are_closed_and_health_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::write(plans.join("p.yaml"), plan("p")).unwrap();
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(
        dir.path(),
        &plans,
        &kubeconfig,
        &[
            "--max-connections",
            "8",
            "--idle-timeout",
            "10s",
            "--header-timeout",
            "10s",
            "--body-timeout",
            "2s",
            "--metrics-public",
        ],
    )
    .await;
    let addr = format!("127.0.0.1:{}", serve.port);

    // A keep-alive client reads the server's own count of open connections: it holds one of them.
    let watcher = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let metric = |name: &'static str| {
        let (watcher, addr) = (watcher.clone(), addr.clone());
        async move {
            let text = watcher
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    // Only the watcher's connection: the start-up probe's keep-alive connection may linger until
    // the idle timeout closes it.
    eventually(
        "only the watcher's connection to be open",
        Duration::from_secs(20),
        || async { metric("recoverd_http_connections_open").await == 1 },
    )
    .await;

    // Slowloris: a request line and one header, then nothing.
    let mut slow: Vec<TcpStream> = (0..7)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // A connect() returns before the server has accepted: wait until it counts all of them.
    eventually(
        "the server to count the 7 slow connections and the watcher's",
        Duration::from_secs(8),
        || async { metric("recoverd_http_connections_open").await == 8 },
    )
    .await;
    // The cap is reached: a surplus connection is closed at once.
    let mut surplus = TcpStream::connect(&addr).unwrap();
    let _ = surplus.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let surplus_closed = tokio::task::block_in_place(|| {
        let mut response = String::new();
        surplus.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = surplus.read_to_string(&mut response);
        response
    });
    assert!(
        !surplus_closed.contains("200 OK"),
        "a connection over the cap was served: {surplus_closed}"
    );
    assert_eq!(
        metric("recoverd_http_connections_refused_total{reason=\"max-connections\"}").await,
        1,
        "the refusal is counted"
    );
    // The slow ones are closed by the header timeout, and the server answers again.
    let addr2 = addr.clone();
    eventually("the slow connections to be closed", Duration::from_secs(30), || {
        let all = tokio::task::block_in_place(|| slow.iter_mut().all(closed_by_server));
        async move { all }
    })
    .await;
    eventually("/healthz to answer again", Duration::from_secs(30), || {
        let addr = addr2.clone();
        async move {
            reqwest::get(format!("http://{addr}/healthz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;

    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    eventually("the idle connection to be closed", Duration::from_secs(30), || {
        let closed = tokio::task::block_in_place(|| {
            // Reads the response first, then end-of-file once the idle timeout passes.
            closed_by_server(&mut idle)
        });
        async move { closed }
    })
    .await;

    // A body that never arrives whole is answered 408, not waited for.
    let mut body = TcpStream::connect(&addr).unwrap();
    body.write_all(
        format!(
            "POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"version\"",
            support::server::SERVE_TOKEN
        )
        .as_bytes(),
    )
    .unwrap();
    let answer = tokio::task::block_in_place(|| {
        body.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        let n = body.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}
