//! Reliability suite R2 (crashes): `recoverd serve` as a process, killed with SIGKILL at every
//! step boundary, and with a store that stops taking writes or disappears. Steps are `http`
//! calls to a hook in this test that counts every call, so "no finished step ran twice" is
//! counted where the writes land, not read back from recoverd's own record.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::clusters::repo_dir;
use support::server::{counting_hook, counts, eventually, metric, nowhere_kubeconfig, ServeProcess};

fn write_plan(dir: &Path, file: &str, hook_url: &str) -> std::path::PathBuf {
    let plans = dir.join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let text = std::fs::read_to_string(repo_dir().join("tests/data/plans/reliability").join(file))
        .unwrap()
        .replace("http://hook", hook_url);
    std::fs::write(plans.join(file), text).unwrap();
    plans
}

async fn step_status(serve: &ServeProcess, id: &str, step: usize) -> String {
    serve.get(&format!("/api/v1/runs/{id}")).await["steps"][step]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_boundary_leaves_a_resumable_run_and_no_step_runs_twice() {
    let (hook_url, hits) = counting_hook(6).await;
    let dir = tempfile::tempdir().unwrap();
    let plans = write_plan(dir.path(), "six.yaml", &hook_url);
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let mut serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    let (status, run) = serve
        .post("/api/v1/plans/ops/six/runs", &json!({"idempotencyKey": "r2"}))
        .await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    // Kill while each pause runs: write k has finished and been recorded, write k+1 not begun.
    for k in 0..5 {
        let pause = 2 * k + 1;
        eventually(
            &format!("pause g{k} to be running"),
            Duration::from_secs(30),
            || async { step_status(&serve, &id, pause).await == "running" },
        )
        .await;
        serve.kill();
        serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
        let run = serve.get(&format!("/api/v1/runs/{id}")).await;
        assert_eq!(run["phase"], "Interrupted", "after kill {k}: {run:#}");
        let expected: Vec<usize> = (0..6).map(|i| usize::from(i <= k)).collect();
        assert_eq!(counts(&hits), expected, "after kill {k}");
        let (status, body) = serve.post(&format!("/api/v1/runs/{id}/resume"), &json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    eventually("the run to succeed", Duration::from_secs(30), || async {
        serve.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(counts(&hits), vec![1; 6], "every write exactly once");
}

fn prlimit_fsize(pid: u32, soft: &str) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={soft}:")])
        .output()
        .expect("prlimit (util-linux) is installed");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn metrics(serve: &ServeProcess) -> String {
    serve
        .http
        .get(format!("{}/metrics", serve.url))
        .bearer_auth(support::server::SERVE_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_written_stops_the_run_before_its_next_step_and_readyz_says_so() {
    let (hook_url, hits) = counting_hook(2).await;
    let dir = tempfile::tempdir().unwrap();
    let plans = write_plan(dir.path(), "held.yaml", &hook_url);
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    let (status, run) = serve.post("/api/v1/plans/ops/held/runs", &json!({})).await;
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    eventually("the hold step to run", Duration::from_secs(10), || async {
        step_status(&serve, &id, 1).await == "running"
    })
    .await;

    // Every write past the first byte of any file now fails (as on a full disk).
    prlimit_fsize(serve.pid(), "1");
    eventually("/readyz to fail", Duration::from_secs(20), || async {
        serve.status("/readyz").await == 503
    })
    .await;
    // (A dry run, so that the plan's active run does not refuse it first.)
    let (status, _) = serve
        .post("/api/v1/plans/ops/held/runs", &json!({"dryRun": true}))
        .await;
    assert_eq!(status, 503, "no new run is accepted without a store");
    eventually("the run to stop", Duration::from_secs(20), || async {
        metric(
            &metrics(&serve).await,
            "recoverd_runs_total{plan=\"ops/held\",result=\"Interrupted\"}",
        ) == 1.0
    })
    .await;
    let m = metrics(&serve).await;
    assert_eq!(metric(&m, "recoverd_store_healthy"), 0.0, "{m}");
    assert!(m.contains("recoverd_store_failures_total{reason="), "{m}");
    assert_eq!(counts(&hits), vec![1, 0], "the step after the failed write never ran");

    prlimit_fsize(serve.pid(), "unlimited");
    eventually("/readyz to recover", Duration::from_secs(20), || async {
        serve.status("/readyz").await == 200
    })
    .await;
    let run = serve.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["phase"], "Interrupted", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("run store could not be written"),
        "{run:#}"
    );
    assert_eq!(run["steps"][1]["status"], "succeeded", "{run:#}");
    let (status, _) = serve.post(&format!("/api/v1/runs/{id}/resume"), &json!({})).await;
    assert_eq!(status, 200);
    eventually("the resumed run to succeed", Duration::from_secs(20), || async {
        serve.get(&format!("/api/v1/runs/{id}")).await["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(counts(&hits), vec![1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_store_file_makes_readyz_fail_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    let kubeconfig = nowhere_kubeconfig(dir.path());
    let serve = ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    assert_eq!(serve.status("/readyz").await, 200);
    std::fs::remove_file(&serve.store).unwrap();
    let resp = serve.http.get(format!("{}/readyz", serve.url)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("was deleted"), "{body}");
}
