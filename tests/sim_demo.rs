//! The binary on the built-in simulator: `recoverd demo` end to end (the alert through the
//! receiver's webhook), `rehearse` without a kubeconfig, and `recoverd sim` serving a world to
//! kubectl until it is stopped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn recoverd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const TOKEN: &str = "eyJ0b2tlbiI6ImRlbW90aW9uLTAwMSJ9";

#[test]
fn the_demo_switches_over_and_leaves_both_clusters_and_the_proxy_switched() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let out = recoverd(&["demo", "--state-out", state_file.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for step in [
        "target-is-healthy",
        "target-is-replicating",
        "lag-is-small",
        "demote",
        "wait-new-demotion-token",
        "read-token",
        "promote",
        "wait-promoted",
        "new-primary-is-not-in-recovery",
        "redirect-haproxy",
    ] {
        assert!(t.contains(&format!("✔ {step} (")), "{step} not done:\n{t}");
    }
    assert!(t.contains("POST /api/v1/alerts → 202 Accepted: started run a-"), "{t}");
    assert!(
        t.contains("POST /api/v1/alerts → 202 Accepted: deduplicated run a-"),
        "{t}"
    );
    assert!(t.contains("Where to look next"), "{t}");

    let state: Value = serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(state["run"]["phase"], "Succeeded");
    assert_eq!(state["run"]["trigger"]["kind"], "alert");
    assert_eq!(state["run"]["trigger"]["fingerprint"], "ca11cb152bfbc32b");
    assert_eq!(state["failures"], serde_json::json!([]));
    let north = &state["objects"]["north/db/pg-north"];
    assert_eq!(north["spec"]["replica"]["primary"], "pg-south");
    assert_eq!(north["status"]["demotionToken"], TOKEN);
    let south = &state["objects"]["south/db/pg-south"];
    assert_eq!(south["spec"]["replica"]["primary"], "pg-south");
    assert_eq!(south["spec"]["replica"]["promotionToken"], TOKEN);
    assert_eq!(south["status"]["lastPromotionToken"], TOKEN);
    let proxy = &state["objects"]["edge/db/haproxy-config"];
    let cfg = proxy["data"]["haproxy.cfg"].as_str().unwrap();
    assert!(
        cfg.contains("server pg-south pg-south-rw.db.svc:5432 check") && !cfg.contains("pg-north"),
        "{cfg}"
    );
    assert_eq!(
        proxy["metadata"]["annotations"]["recoverd.io/alert"],
        "CNPGPrimaryUnavailable"
    );
}

#[test]
fn rehearse_without_a_kubeconfig_runs_on_the_simulator_and_checks_expectations() {
    let out = recoverd(&[
        "rehearse",
        "plans/cnpg-switchover.yaml",
        "--world",
        "tests/data/worlds/cnpg.yaml",
        "--alert",
        "tests/data/alerts/firing-one-alert.json",
        "--expect",
        "tests/data/worlds/cnpg-expect.yaml",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("clusters: built-in simulator (north, south, edge)"), "{t}");
    assert!(t.contains("expectations: 4 checked, 0 failed"), "{t}");
}

#[test]
fn a_rehearsal_on_the_simulator_fails_when_an_expectation_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        "expect:\n- {cluster: south, apiVersion: postgresql.cnpg.io/v1, resource: clusters, namespace: db, name: pg-south, fields: {spec.replica.primary: pg-north}}\n",
    )
    .unwrap();
    let out = recoverd(&[
        "rehearse",
        "plans/cnpg-switchover.yaml",
        "--world",
        "tests/data/worlds/cnpg.yaml",
        "--expect",
        wrong.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("spec.replica.primary is pg-south, expected pg-north"), "{t}");
}

#[test]
fn a_world_with_the_upstream_cnpg_and_percona_crds_seeds_and_rehearses_the_switchover() {
    let out = recoverd(&[
        "rehearse",
        "plans/cnpg-switchover.yaml",
        "--world",
        "tests/data/worlds/upstream.yaml",
        "--expect",
        "tests/data/worlds/cnpg-expect.yaml",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("✔ promote ("), "{t}");
}

#[test]
fn a_rehearsed_patch_breaking_a_cel_rule_of_the_upstream_crd_gets_the_real_servers_422() {
    let out = recoverd(&[
        "rehearse",
        "tests/data/worlds/upstream/cel-violation.yaml",
        "--world",
        "tests/data/worlds/upstream.yaml",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("422"), "{t}");
    assert!(
        t.contains("spec: Invalid value: imageName and imageCatalogRef are mutually exclusive"),
        "{t}"
    );
}

#[test]
fn an_exec_step_rehearses_against_the_commands_the_world_declares() {
    let out = recoverd(&[
        "rehearse",
        "tests/data/plans/language/exec-is-primary.yaml",
        "--world",
        "tests/data/worlds/exec.yaml",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("✔ in-recovery ("), "{t}");
    assert!(t.contains("✔ is-primary ("), "{t}");
}

#[test]
fn recoverd_sim_serves_the_world_to_kubectl_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("sim.kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(["sim", "--world", "tests/data/worlds/cnpg.yaml", "--kubeconfig-out"])
        .arg(&kubeconfig)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push(line.clone());
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let kc = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(kc.contains("current-context: north"), "{kc}");
    let get = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--context", "south", "get", "clusters", "-n", "db", "-o", "name"])
        .output()
        .unwrap();
    // SIGTERM stops it like Ctrl-C.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "cluster.postgresql.cnpg.io/pg-south",
        "{}",
        text(&get)
    );
    assert!(banner.iter().any(|l| l.starts_with("cluster edge")), "{banner:?}");
    assert!(status.success(), "{status:?}");
}
