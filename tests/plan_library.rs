//! The plan library (`plans/`): every plan passes `recoverd check`, and `recoverd rehearse` with
//! its world (`plans/worlds/NAME.yaml`), its sample alert (`NAME.alert.json`) and its
//! expectations (`NAME.expect.yaml`: the final state of every object the plan changes, and
//! nothing else changed) — once on the built-in simulator, once on real test clusters
//! (kube-apiserver v1.36.2 with the upstream CRDs, `rehearse --kubeconfig`).
//!
//! The test apiservers have no kubelet, so `exec` steps cannot run there: the plans make them
//! skippable with the param `execChecks`, the real-cluster rehearsals set it to false and check
//! that those steps are skipped, and the simulator rehearsals check that they ran.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use support::clusters::{repo_dir, TestClusters};

fn recoverd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(args)
        .current_dir(repo_dir())
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

/// The plan names in `plans/` (files `plans/NAME.yaml`).
fn library() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_dir().join("plans"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A plan's steps (of a Nova plan too) as (name, type, has `when`).
fn steps(plan: &Value) -> Vec<(String, String)> {
    plan["spec"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s["name"]
                .as_str()
                .map_or_else(|| format!("step-{}", i + 1), str::to_string);
            (name, s["type"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum On {
    Simulator,
    RealClusters,
}

/// The shared real clusters of this binary, on kube-apiserver v1.36 (upstream CRDs): the one
/// `$RECOVERD_TEST_APISERVER_MODERN` names (as `.ci/run` sets it), else the configured one if it
/// is current, else the cached v1.36.2.
fn clusters() -> &'static TestClusters {
    static PICKED: OnceLock<()> = OnceLock::new();
    PICKED.get_or_init(|| {
        let modern = std::env::var("RECOVERD_TEST_APISERVER_MODERN").ok().or_else(|| {
            let cached = PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/kube-test/kube-apiserver-v1.36.2");
            let configured = std::env::var("RECOVERD_TEST_APISERVER").ok();
            match configured {
                Some(c) if !c.contains("v1.20") => Some(c),
                _ => cached.exists().then(|| cached.display().to_string()),
            }
        });
        if let Some(bin) = modern {
            // Read once, by the harness, before any cluster starts (nothing else reads it).
            std::env::set_var("RECOVERD_TEST_APISERVER", bin);
        }
    });
    let c = support::shared();
    assert!(
        support::clusters::modern_apiserver(),
        "the plan library is rehearsed on kube-apiserver v1.36 with the upstream CRDs: set \
         RECOVERD_TEST_APISERVER_MODERN (.ci/run does)"
    );
    c
}

/// Copies `plans/worlds/` into `dir` with every `namespace: db` made `ns` (tests share the
/// clusters), beside a link to `tests/` so the worlds' CRD paths still resolve.
fn worlds_in_namespace(dir: &Path, ns: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path, ns: &str) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                copy(&p, &to.join(entry.file_name()), ns);
            } else {
                let text = std::fs::read_to_string(&p).unwrap();
                let text = text.replace("namespace: db", &format!("namespace: {ns}"));
                std::fs::write(to.join(entry.file_name()), text).unwrap();
            }
        }
    }
    let worlds = dir.join("plans/worlds");
    copy(&repo_dir().join("plans/worlds"), &worlds, ns);
    std::os::unix::fs::symlink(repo_dir().join("tests"), dir.join("tests")).unwrap();
    worlds
}

/// Rehearses `plans/NAME.yaml` with its world, alert and expectations, and checks that it
/// succeeded, that every expectation was checked and held, and which `exec` steps ran.
async fn rehearse(name: &str, on: On) {
    let repo = repo_dir();
    let plan_file = repo.join(format!("plans/{name}.yaml"));
    let plan = yaml(&plan_file);
    let params = &plan["spec"]["params"];
    let dir = tempfile::tempdir().unwrap();
    let (worlds, mut extra) = match on {
        On::Simulator => (repo.join("plans/worlds"), vec![]),
        On::RealClusters => {
            let c = clusters();
            let mut extra = vec!["--kubeconfig".to_string(), c.kubeconfig().display().to_string()];
            let worlds = if params.get("ns").is_some() {
                let ns = c.namespace(&format!("lib-{name}")).await;
                extra.push("--param".into());
                extra.push(format!("ns={ns}"));
                worlds_in_namespace(dir.path(), &ns)
            } else {
                // A Nova plan takes no params: its namespaces are its own in this binary.
                repo.join("plans/worlds")
            };
            (worlds, extra)
        }
    };
    let exec_steps: Vec<String> = steps(&plan)
        .into_iter()
        .filter(|(_, t)| t == "exec")
        .map(|(n, _)| n)
        .collect();
    if !exec_steps.is_empty() {
        assert!(
            params.get("execChecks").is_some(),
            "{name}: a plan with exec steps must make them skippable by the param execChecks"
        );
        if on == On::RealClusters {
            // The test apiservers have no kubelet: exec cannot run there.
            println!(
                "{name}: on real clusters without a kubelet, skipping the exec steps {exec_steps:?} (execChecks=false)"
            );
            extra.push("--param".into());
            extra.push("execChecks=false".into());
        }
    }
    // A cluster the world has `down` (the lost site of a failover): unreachable on real
    // clusters too, by pointing its context at a closed port.
    if on == On::RealClusters {
        let down: std::collections::BTreeMap<String, String> = yaml(&worlds.join(format!("{name}.yaml")))["clusters"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, c)| c["faults"]["down"] == Value::Bool(true))
            .map(|(n, _)| {
                let port = support::clusters::free_port();
                (n.clone(), format!("https://127.0.0.1:{port}"))
            })
            .collect();
        if !down.is_empty() {
            println!(
                "{name}: on real clusters, {:?} unreachable (a closed port)",
                down.keys()
            );
            let kubeconfig = dir.path().join("kubeconfig");
            clusters().write_kubeconfig(&kubeconfig, &down);
            extra[1] = kubeconfig.display().to_string();
        }
    }
    let world = worlds.join(format!("{name}.yaml"));
    let expect = worlds.join(format!("{name}.expect.yaml"));
    let alert = worlds.join(format!("{name}.alert.json"));
    let mut args: Vec<String> = vec![
        "rehearse".into(),
        plan_file.display().to_string(),
        "--world".into(),
        world.display().to_string(),
        "--alert".into(),
        alert.display().to_string(),
        "--expect".into(),
        expect.display().to_string(),
        // The rehearsal's operator approves the plans' `approval` steps (cnpg-failover's).
        "--approve".into(),
    ];
    args.extend(extra);
    let out = recoverd(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&out);
    println!("{t}");
    assert!(out.status.success(), "{name} on {on:?}:\n{t}");
    for secret in world_secret_values() {
        assert!(!t.contains(&secret), "{name}: a secret value was printed:\n{t}");
    }
    let expected = yaml(&expect)["expect"].as_array().unwrap().len();
    assert!(
        t.contains(&format!("expectations: {expected} checked, 0 failed")),
        "{name} on {on:?}:\n{t}"
    );
    if yaml(&expect)["outcome"] == "SucceededWithErrors" {
        let line = t
            .lines()
            .find(|l| l.starts_with("tolerated failures"))
            .unwrap_or_else(|| panic!("{name}: no tolerated failure listed:\n{t}"));
        if name == "cnpg-failover" {
            // The lost site cannot be fenced, and the run says so.
            assert!(line.contains("fence-old-primary"), "{line}");
        }
    }
    for step in &exec_steps {
        let (ran, skipped) = (format!("✔ {step} ("), format!("↷ {step} skipped"));
        match on {
            On::Simulator => assert!(t.contains(&ran), "{name}: exec {step} did not run:\n{t}"),
            On::RealClusters => {
                assert!(t.contains(&skipped), "{name}: exec {step} not skipped:\n{t}")
            }
        }
    }
}

/// Every value of every Secret in the worlds, as stored (base64) and decoded.
fn world_secret_values() -> Vec<String> {
    use base64::Engine as _;
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
                continue;
            }
            if p.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else {
                    continue;
                };
                if v["kind"] != "Secret" {
                    continue;
                }
                for value in v["data"].as_object().into_iter().flat_map(|m| m.values()) {
                    let b64 = value.as_str().unwrap().to_string();
                    let plain = base64::engine::general_purpose::STANDARD.decode(&b64).unwrap();
                    out.push(String::from_utf8(plain).unwrap().trim().to_string());
                    out.push(b64);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_dir().join("plans/worlds"), &mut out);
    out
}

#[test]
fn every_plan_in_the_library_has_a_world_an_alert_expectations_and_both_rehearsals() {
    let source = include_str!("plan_library.rs");
    let names = library();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        for file in [
            format!("{name}.yaml"),
            format!("{name}.alert.json"),
            format!("{name}.expect.yaml"),
        ] {
            let path = repo_dir().join("plans/worlds").join(&file);
            assert!(path.exists(), "{name}: no plans/worlds/{file}");
        }
        let f = name.replace('-', "_");
        let tests = format!("{f}_rehearses_on_the_simulator, {f}_rehearses_on_real_clusters => \"{name}\";");
        assert!(source.contains(&tests), "{name}: no `rehearsals!` line {tests}");
    }
}

#[test]
fn every_plan_in_the_library_passes_check() {
    let out = recoverd(&["check", "plans"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for name in library() {
        assert!(t.contains(&format!("ok   plans/{name}.yaml plan ")), "{name}:\n{t}");
    }
    // The worlds beside the plans are not plans.
    assert!(!t.contains("plans/worlds"), "{t}");
}

#[test]
fn rehearse_refuses_a_param_the_plan_does_not_have_before_starting_anything() {
    let out = recoverd(&[
        "rehearse",
        "plans/cnpg-switchover.yaml",
        "--world",
        "plans/worlds/cnpg-switchover.yaml",
        "--param",
        "execCheck=false",
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("the plan has no param \"execCheck\" (its params: ") && t.contains("execChecks"),
        "{t}"
    );
    assert!(!t.contains("clusters: built-in simulator"), "{t}");
}

#[test]
fn an_expectation_that_an_object_is_gone_fails_while_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(repo_dir().join("plans/worlds/nova-ferretdb.expect.yaml")).unwrap();
    let gone = |name: &str| {
        format!("- {{cluster: north, apiVersion: v1, resource: configmaps, namespace: default, name: {name}, absent: true}}\n")
    };
    for (name, holds) in [("no-such-config", true), ("haproxy-config", false)] {
        let expect = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&expect, format!("{base}{}", gone(name))).unwrap();
        let out = recoverd(&[
            "rehearse",
            "plans/nova-ferretdb.yaml",
            "--world",
            "plans/worlds/nova-ferretdb.yaml",
            "--alert",
            "plans/worlds/nova-ferretdb.alert.json",
            "--expect",
            expect.to_str().unwrap(),
        ]);
        let t = text(&out);
        if holds {
            assert!(out.status.success(), "{t}");
            assert!(t.contains("expectations: 4 checked, 0 failed"), "{t}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{t}");
            assert!(
                t.contains("v1 configmaps default/haproxy-config: exists, expected it gone"),
                "{t}"
            );
        }
    }
}

#[test]
fn every_reactor_and_expectation_example_in_docs_worlds_md_parses() {
    let doc = std::fs::read_to_string(repo_dir().join("docs/worlds.md")).unwrap();
    let reactors = &doc[doc.find("## Reactors").unwrap()..doc.find("## Expectations").unwrap()];
    let expectations = &doc[doc.find("## Expectations").unwrap()..];
    let blocks = |text: &str| -> Vec<String> {
        text.split("```yaml\n")
            .skip(1)
            .map(|b| b[..b.find("```").unwrap()].to_string())
            .collect()
    };
    let reactor_blocks = blocks(reactors);
    assert!(reactor_blocks.len() >= 7, "{reactor_blocks:?}");
    for block in reactor_blocks {
        let list = block.strip_prefix("reactors:\n").unwrap_or(&block);
        let parsed: Result<Vec<recoverd::reactor::Reactor>, _> = serde_yaml::from_str(list);
        assert!(parsed.is_ok(), "{block}\n{:?}", parsed.err());
    }
    for block in blocks(expectations) {
        let parsed: Result<recoverd::world::Expectations, _> = serde_yaml::from_str(&block);
        assert!(parsed.is_ok(), "{block}\n{:?}", parsed.err());
    }
}

/// Rehearses `plans/PLAN.yaml` on the simulator in a copy of `plans/worlds/` changed by `edits`
/// (file under the worlds, text, replacement), with the expectations `expect` (YAML) and `args`.
/// Returns whether it passed, and its output.
fn rehearse_variant(plan: &str, edits: &[(&str, &str, &str)], expect: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let worlds = worlds_in_namespace(dir.path(), "db");
    for (file, from, to) in edits {
        let path = worlds.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }
    let expect_file = dir.path().join("expect.yaml");
    std::fs::write(&expect_file, expect).unwrap();
    let plan_file = repo_dir().join(format!("plans/{plan}.yaml"));
    let world = worlds.join(format!("{plan}.yaml"));
    let alert = worlds.join(format!("{plan}.alert.json"));
    let mut all = vec![
        "rehearse",
        plan_file.to_str().unwrap(),
        "--world",
        world.to_str().unwrap(),
        "--alert",
        alert.to_str().unwrap(),
        "--expect",
        expect_file.to_str().unwrap(),
        "--approve",
    ];
    all.extend(args);
    let out = recoverd(&all);
    let t = text(&out);
    println!("{t}");
    (out.status.success(), t)
}

/// Nothing changed, and the run failed: what a refusal must look like.
const REFUSED: &str = "outcome: Failed\nexpect: []\n";

#[test]
fn rebuild_replica_refuses_the_primary_of_its_topology_named_by_spec_replica_self() {
    // CloudNativePG decides "replica" by spec.replica.self (defaulting to the Cluster's name):
    // pg-south as `self: south, primary: south` is the primary, though primary != its name.
    let (ok, t) = rehearse_variant(
        "cnpg-rebuild-replica",
        &[(
            "rebuild/pg-south.yaml",
            "    self: pg-south\n    primary: pg-north\n",
            "    self: south\n    primary: south\n",
        )],
        REFUSED,
        &[],
    );
    assert!(ok, "{t}");
    assert!(
        t.contains("pg-south is not a replica cluster") && t.contains("refusing to wipe it"),
        "{t}"
    );
    // The legacy form: `enabled: false` is a primary whatever the names say.
    let (ok, t) = rehearse_variant(
        "cnpg-rebuild-replica",
        &[(
            "rebuild/pg-south.yaml",
            "    self: pg-south\n",
            "    enabled: false\n    self: pg-south\n",
        )],
        REFUSED,
        &[],
    );
    assert!(ok, "{t}");
    assert!(t.contains("pg-south is not a replica cluster"), "{t}");
}

#[test]
fn rebuild_replica_refuses_an_alert_about_another_cluster() {
    let (ok, t) = rehearse_variant(
        "cnpg-rebuild-replica",
        &[(
            "cnpg-rebuild-replica.alert.json",
            "\"cluster\":\"pg-south\"",
            "\"cluster\":\"pg-west\"",
        )],
        REFUSED,
        &[],
    );
    assert!(ok, "{t}");
    assert!(
        t.contains("the alert is about pg-west but the params name pg-south"),
        "{t}"
    );
}

#[test]
fn replace_failed_instance_refuses_an_alert_about_another_pod() {
    let (ok, t) = rehearse_variant(
        "replace-failed-instance",
        &[(
            "replace-failed-instance.alert.json",
            "\"pod\":\"pg-2\"",
            "\"pod\":\"pg-1\"",
        )],
        REFUSED,
        &[],
    );
    assert!(ok, "{t}");
    assert!(
        t.contains("the alert is about pod pg-1 but the params name pg-2"),
        "{t}"
    );
}

#[test]
fn the_cnpg_plans_and_the_cert_rotation_refuse_an_alert_about_something_else() {
    for (plan, label, other, says) in [
        (
            "cnpg-switchover",
            "\"cluster\":\"pg-north\"",
            "\"cluster\":\"pg-west\"",
            "the alert is about pg-west but the params switch over from pg-north",
        ),
        (
            "cnpg-failover",
            "\"cluster\":\"pg-north\"",
            "\"cluster\":\"pg-west\"",
            "the alert is about pg-west but the params fail over from pg-north",
        ),
        (
            "rotate-replication-certs",
            "\"secret\":\"pg-north-replication\"",
            "\"secret\":\"pg-west-replication\"",
            "the alert is about Secret pg-west-replication but the params copy pg-north-replication",
        ),
    ] {
        let alert = format!("{plan}.alert.json");
        let (ok, t) = rehearse_variant(plan, &[(&alert, label, other)], REFUSED, &[]);
        assert!(ok, "{plan}: {t}");
        assert!(t.contains(says), "{plan}: {t}");
    }
}

/// cnpg-failover's world with the old site up: pg-north answers on cluster north, healthy.
const OLD_SITE_UP: &[(&str, &str, &str)] = &[(
    "cnpg-failover.yaml",
    "  north:\n    faults: {down: true}\n",
    "  north:\n    crds: [../../tests/data/crds/upstream/postgresql.cnpg.io_clusters.yaml]\n    objects: [cnpg/pg-north.yaml]\n",
)];

/// A slow API server is not a lost site: the old site answering healthy in 6 s (over a single
/// try's old 5 s) still stops the failover.
#[test]
fn failover_refuses_when_the_old_site_answers_healthy_but_slowly() {
    let slow = &[(
        "cnpg-failover.yaml",
        "  north:\n    faults: {down: true}\n",
        "  north:\n    crds: [../../tests/data/crds/upstream/postgresql.cnpg.io_clusters.yaml]\n    objects: [cnpg/pg-north.yaml]\n    faults: {latency: 6s, onlyPath: /clusters}\n",
    )];
    let (ok, t) = rehearse_variant("cnpg-failover", slow, REFUSED, &[]);
    assert!(ok, "{t}");
    assert!(
        t.contains("pg-north on cluster north answers and reports \"Cluster in healthy state\""),
        "{t}"
    );
}

#[test]
fn failover_refuses_to_promote_while_the_old_site_answers_healthy() {
    let (ok, t) = rehearse_variant("cnpg-failover", OLD_SITE_UP, REFUSED, &[]);
    assert!(ok, "{t}");
    assert!(
        t.contains("pg-north on cluster north answers and reports \"Cluster in healthy state\""),
        "{t}"
    );
}

#[test]
fn failover_forced_while_the_old_site_answers_fences_it_before_promoting() {
    let expect = r#"expect:
- {cluster: north, apiVersion: postgresql.cnpg.io/v1, resource: clusters, namespace: db, name: pg-north,
   fields: {'metadata.annotations["cnpg.io/fencedInstances"]': '["*"]'}}
- {cluster: south, apiVersion: postgresql.cnpg.io/v1, resource: clusters, namespace: db, name: pg-south,
   fields: {spec.replica.primary: pg-south, status.timelineID: 2}}
- {cluster: south, apiVersion: v1, resource: pods, namespace: db, name: pg-south-1}
- {cluster: edge, apiVersion: v1, resource: configmaps, namespace: db, name: haproxy-config}
- {cluster: edge, apiVersion: apps/v1, resource: deployments, namespace: db, name: haproxy}
- {cluster: south, apiVersion: v1, resource: configmaps, namespace: db, name: pg-failover-record}
"#;
    let (ok, t) = rehearse_variant(
        "cnpg-failover",
        OLD_SITE_UP,
        expect,
        &["--param", "promoteWhileOldSiteAnswers=true"],
    );
    assert!(ok, "{t}");
    let fence = t.find("✔ fence-old-primary-first").expect(&t);
    let promote = t.find("✔ promote-without-token").expect(&t);
    assert!(fence < promote, "{t}");
    assert!(t.contains("↷ fence-old-primary skipped"), "{t}");
}

#[test]
fn failover_asks_before_promoting_and_says_what_the_probe_saw() {
    // Without --approve nobody can answer the approval step: nothing is promoted.
    let dir = tempfile::tempdir().unwrap();
    let expect = dir.path().join("expect.yaml");
    std::fs::write(&expect, REFUSED).unwrap();
    let out = recoverd(&[
        "rehearse",
        "plans/cnpg-failover.yaml",
        "--world",
        "plans/worlds/cnpg-failover.yaml",
        "--alert",
        "plans/worlds/cnpg-failover.alert.json",
        "--expect",
        expect.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("pg-north on cluster north did not answer"), "{t}");
    assert!(t.contains("Writes not yet replicated are lost"), "{t}");
}

#[test]
fn switchover_run_again_after_the_demotion_uses_the_current_token() {
    // An earlier run demoted pg-north and timed out: pg-north names pg-south as the primary and
    // holds the token it handed out then. No new token comes; the plan goes on with this one.
    let expect = r#"expect:
- cluster: south
  apiVersion: postgresql.cnpg.io/v1
  resource: clusters
  namespace: db
  name: pg-south
  fields: {spec.replica.primary: pg-south}
  sameAs:
    spec.replica.promotionToken: {cluster: north, name: pg-north, fieldPath: status.demotionToken}
    status.lastPromotionToken: {cluster: north, name: pg-north, fieldPath: status.demotionToken}
- {cluster: south, apiVersion: v1, resource: pods, namespace: db, name: pg-south-1}
- {cluster: edge, apiVersion: v1, resource: configmaps, namespace: db, name: haproxy-config}
- {cluster: edge, apiVersion: apps/v1, resource: deployments, namespace: db, name: haproxy}
"#;
    let (ok, t) = rehearse_variant(
        "cnpg-switchover",
        &[(
            "cnpg/pg-north.yaml",
            "    self: pg-north\n    primary: pg-north\n",
            "    self: pg-north\n    primary: pg-south\n",
        )],
        expect,
        &[],
    );
    assert!(ok, "{t}");
    assert!(t.contains("↷ demote skipped"), "{t}");
}

#[test]
fn switchover_refuses_a_source_that_is_not_healthy() {
    let (ok, t) = rehearse_variant(
        "cnpg-switchover",
        &[("cnpg/pg-north.yaml", "  readyInstances: 2\n", "  readyInstances: 1\n")],
        REFUSED,
        &[],
    );
    assert!(ok, "{t}");
    assert!(t.contains("source-is-healthy"), "{t}");
}

macro_rules! rehearsals {
    ($($test_sim:ident, $test_real:ident => $name:literal;)*) => {$(
        #[tokio::test]
        async fn $test_sim() {
            rehearse($name, On::Simulator).await;
        }

        #[tokio::test]
        async fn $test_real() {
            rehearse($name, On::RealClusters).await;
        }
    )*};
}

rehearsals! {
    cnpg_switchover_rehearses_on_the_simulator, cnpg_switchover_rehearses_on_real_clusters => "cnpg-switchover";
    cnpg_failover_rehearses_on_the_simulator, cnpg_failover_rehearses_on_real_clusters => "cnpg-failover";
    cnpg_rebuild_replica_rehearses_on_the_simulator, cnpg_rebuild_replica_rehearses_on_real_clusters => "cnpg-rebuild-replica";
    haproxy_redirect_rehearses_on_the_simulator, haproxy_redirect_rehearses_on_real_clusters => "haproxy-redirect";
    nova_ferretdb_rehearses_on_the_simulator, nova_ferretdb_rehearses_on_real_clusters => "nova-ferretdb";
    percona_standby_swap_rehearses_on_the_simulator, percona_standby_swap_rehearses_on_real_clusters => "percona-standby-swap";
    replace_failed_instance_rehearses_on_the_simulator, replace_failed_instance_rehearses_on_real_clusters => "replace-failed-instance";
    rotate_replication_certs_rehearses_on_the_simulator, rotate_replication_certs_rehearses_on_real_clusters => "rotate-replication-certs";
}

#[test]
fn nova_ferretdb_runs_only_on_its_own_alert_not_on_any_alert_with_the_app_label() {
    // Another alert about the same app (a pod crash-looping) must not swap the databases.
    let dir = tempfile::tempdir().unwrap();
    let alert = std::fs::read_to_string(repo_dir().join("plans/worlds/nova-ferretdb.alert.json"))
        .unwrap()
        .replace("PerconaPrimaryDown", "KubePodCrashLooping");
    let unrelated = dir.path().join("unrelated.json");
    std::fs::write(&unrelated, alert).unwrap();
    let out = recoverd(&[
        "rehearse",
        "plans/nova-ferretdb.yaml",
        "--world",
        "plans/worlds/nova-ferretdb.yaml",
        "--alert",
        unrelated.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("matches the plan's alertLabels/alertMatchers; nothing was run"),
        "{t}"
    );
    assert!(!t.contains("clusters: built-in simulator"), "{t}");
    // Its own alert runs it (nova_ferretdb_rehearses_on_the_simulator runs it in full).
    let plan = yaml(&repo_dir().join("plans/nova-ferretdb.yaml"));
    let labels = plan["spec"]["alertLabels"].as_object().unwrap();
    assert_eq!(labels["alertname"], "PerconaPrimaryDown", "{labels:?}");
    assert!(labels.len() >= 3, "{labels:?}");
}

/// percona-standby-swap's world in which pg2's operator refuses the promotion: it puts
/// `spec.standby.enabled` back to true (as a GitOps controller reverting a change would) and
/// reports the cluster reconciled.
const PROMOTION_REFUSED: &[(&str, &str, &str)] = &[(
    "percona-standby-swap.yaml",
    "- cluster: south
  when: {apiVersion: pgv2.percona.com/v2, resource: perconapgclusters, namespace: db, name: pg2,
         fieldPath: metadata.generation, changed: true}
  actions:
  - after: 100ms
    set: [{fieldPath: status.state, value: initializing}]
",
    "- cluster: south
  when: {apiVersion: pgv2.percona.com/v2, resource: perconapgclusters, namespace: db, name: pg2,
         fieldPath: spec.standby.enabled, equals: false}
  actions:
  - after: 100ms
    set: [{fieldPath: spec.standby.enabled, value: true}]
",
)];

#[test]
fn percona_standby_swap_puts_the_old_primary_back_when_the_promotion_is_refused() {
    // pg1 was made a standby, pg2 was not promoted: without compensation nothing would be the
    // primary. The run fails, pg1 is the primary again, the proxy still points at it.
    let expect = r#"outcome: Failed
strict: true
steps:
- standby-is-ready
- primary-to-standby
- wait-primary-is-standby
- promote-standby
- wait-promoted
- read-standby-role
- {standby-was-promoted: Failed}
- {redirect-haproxy: Pending}
- {read-proxy-config: Pending}
- {roll-proxy: Pending}
- {wait-proxy-rollout: Pending}
onFailure: [read-old-primary-role, read-other-side-role, confirm-restore, restore-old-primary, wait-old-primary-restored]
expect:
- cluster: north
  apiVersion: pgv2.percona.com/v2
  resource: perconapgclusters
  namespace: db
  name: pg1
  fields: {spec.standby.enabled: false, status.state: ready}
  sameAs: {status.observedGeneration: {fieldPath: metadata.generation}}
  mayChange: [spec.standby.repoName]
- cluster: south
  apiVersion: pgv2.percona.com/v2
  resource: perconapgclusters
  namespace: db
  name: pg2
  fields: {spec.standby.enabled: true, status.state: ready}
  sameAs: {status.observedGeneration: {fieldPath: metadata.generation}}
"#;
    // (The restore waits for a person who checked pg2's actual role: the rehearsal approves.)
    let (ok, t) = rehearse_variant("percona-standby-swap", PROMOTION_REFUSED, expect, &[]);
    assert!(ok, "{t}");
    assert!(
        t.contains("pg2 on cluster south is still a standby after its promotion was reconciled"),
        "{t}"
    );
    // The same refusal without the compensation the plan has: the expectation that pg1 is the
    // primary again fails (the test can fail).
    let without = expect.replace(
        "onFailure: [read-old-primary-role, read-other-side-role, confirm-restore, restore-old-primary, wait-old-primary-restored]",
        "onFailure: [read-old-primary-role, read-other-side-role, {confirm-restore: Skipped}, {restore-old-primary: Skipped}, {wait-old-primary-restored: Skipped}]",
    );
    let (ok, t) = rehearse_variant("percona-standby-swap", PROMOTION_REFUSED, &without, &[]);
    assert!(!ok, "{t}");
    assert!(t.contains("onFailure ran as [read-old-primary-role (succeeded), read-other-side-role (succeeded), confirm-restore (succeeded), restore-old-primary (succeeded)"), "{t}");
}

#[test]
fn percona_standby_swap_never_puts_the_old_primary_back_while_the_other_side_may_be_primary() {
    // The promotion went through but the proxy cannot be redirected (no such ConfigMap key
    // … here: the proxy's Deployment is missing, so rolling it fails): pg2 is the primary, and
    // pg1 must stay a standby (two primaries on one repository would fork it).
    let expect = r#"outcome: Failed
strict: true
onFailure: [read-old-primary-role, read-other-side-role, {confirm-restore: Skipped}, {restore-old-primary: Skipped}, {wait-old-primary-restored: Skipped}]
expect:
- cluster: north
  apiVersion: pgv2.percona.com/v2
  resource: perconapgclusters
  namespace: db
  name: pg1
  fields: {spec.standby.enabled: true, spec.standby.repoName: repo1, status.state: ready}
  sameAs: {status.observedGeneration: {fieldPath: metadata.generation}}
- cluster: south
  apiVersion: pgv2.percona.com/v2
  resource: perconapgclusters
  namespace: db
  name: pg2
  fields: {spec.standby.enabled: false, status.state: ready}
  sameAs: {status.observedGeneration: {fieldPath: metadata.generation}}
- cluster: edge
  apiVersion: v1
  resource: configmaps
  namespace: db
  name: haproxy-config
  fields:
    data["haproxy.cfg"]: "frontend pg\n  bind *:5432\n  default_backend primary\nbackend primary\n  server pg2 pg2-primary.db.svc:5432 check\n"
"#;
    let (ok, t) = rehearse_variant(
        "percona-standby-swap",
        &[(
            "percona-standby-swap.yaml",
            "objects: [percona/haproxy.yaml, haproxy/deployment.yaml]",
            "objects: [percona/haproxy.yaml]",
        )],
        expect,
        &[],
    );
    assert!(ok, "{t}");
    assert!(t.contains("roll-proxy"), "{t}");
}

/// The library's expectations for `plan`, with `from` replaced by `to`.
fn expectations_with(plan: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(repo_dir().join(format!("plans/worlds/{plan}.expect.yaml"))).unwrap();
    assert!(text.contains(from), "{plan}: no {from:?}");
    text.replace(from, to)
}

#[test]
fn strict_expectations_catch_a_change_they_do_not_name_an_unnamed_new_object_and_the_step_order() {
    // A field of a named object that the expectation does not name (the pod's new label).
    let expect = expectations_with("cnpg-switchover", "    metadata.labels.role: primary\n", "");
    let (ok, t) = rehearse_variant("cnpg-switchover", &[], &expect, &[]);
    assert!(!ok, "{t}");
    assert!(
        t.contains(
            "south: v1 pods db/pg-south-1: changed in /metadata/labels/role too, which the expectation does not name"
        ),
        "{t}"
    );
    // An object the run created that no expectation names.
    let full = expectations_with("cnpg-failover", "", "");
    let at = full
        .find("- {cluster: south, apiVersion: v1, resource: configmaps")
        .unwrap();
    let end = at + full[at..].find("]}\n").unwrap() + 3;
    let expect = format!("{}{}", &full[..at], &full[end..]);
    let (ok, t) = rehearse_variant("cnpg-failover", &[], &expect, &[]);
    assert!(!ok, "{t}");
    assert!(
        t.contains(
            "v1 configmaps db/pg-failover-record on cluster south: written by the run, but no expectation names it"
        ),
        "{t}"
    );
    // An object something else created meanwhile (here an "operator" answering the demotion),
    // in a namespace and kind the world has.
    let stray = "reactors:
- cluster: north
  when: {apiVersion: postgresql.cnpg.io/v1, resource: clusters, namespace: db, name: pg-north,
         fieldPath: spec.replica.primary, equals: pg-south}
  actions:
  - create:
      cluster: edge
      object: {apiVersion: v1, kind: ConfigMap, metadata: {name: stray, namespace: db}, data: {by: operator}}
";
    let expect = expectations_with("cnpg-switchover", "", "");
    let (ok, t) = rehearse_variant(
        "cnpg-switchover",
        &[("cnpg-switchover.yaml", "reactors:\n", stray)],
        &expect,
        &[],
    );
    assert!(!ok, "{t}");
    assert!(
        t.contains("edge: v1 configmaps db/stray: created, but no expectation names it"),
        "{t}"
    );
    // `created` on an object the world had already.
    let expect = expectations_with(
        "cnpg-failover",
        "  name: haproxy-config\n",
        "  name: haproxy-config\n  created: true\n",
    );
    let (ok, t) = rehearse_variant("cnpg-failover", &[], &expect, &[]);
    assert!(!ok, "{t}");
    assert!(
        t.contains("edge: v1 configmaps db/haproxy-config: expected the run to create it, but it existed before"),
        "{t}"
    );
    // Two steps in the wrong order.
    let expect = expectations_with(
        "cnpg-switchover",
        "- promote\n- wait-promoted\n",
        "- wait-promoted\n- promote\n",
    );
    let (ok, t) = rehearse_variant("cnpg-switchover", &[], &expect, &[]);
    assert!(!ok, "{t}");
    assert!(
        t.contains("steps ran as [") && t.contains("promote (succeeded), wait-promoted (succeeded)"),
        "{t}"
    );
    // A step that did not run as said (demote ran).
    let expect = expectations_with("cnpg-switchover", "- demote\n", "- {demote: Skipped}\n");
    let (ok, t) = rehearse_variant("cnpg-switchover", &[], &expect, &[]);
    assert!(!ok, "{t}");
    assert!(t.contains("expected [") && t.contains("demote (Skipped)"), "{t}");
}

#[test]
fn expectations_compare_typed_values_and_match_objects_by_api_version_too() {
    // The boolean true is not the string "true": the message says which is which.
    let expect = expectations_with(
        "nova-ferretdb",
        "fields: {spec.standby.enabled: true}",
        "fields: {spec.standby.enabled: \"true\"}",
    );
    let (ok, t) = rehearse_variant("nova-ferretdb", &[], &expect, &[]);
    assert!(!ok, "{t}");
    assert!(
        t.contains("cluster1: spec.standby.enabled is true (a boolean), expected true (a string)"),
        "{t}"
    );
    // The number 2 is not the string "2".
    let expect = expectations_with("cnpg-failover", "status.timelineID: 2", "status.timelineID: \"2\"");
    let (ok, t) = rehearse_variant("cnpg-failover", &[], &expect, &[]);
    assert!(!ok, "{t}");
    assert!(
        t.contains("status.timelineID is 2 (a number), expected 2 (a string)"),
        "{t}"
    );
    // An expectation about another apiVersion of the same name is not about the changed object.
    let expect = expectations_with(
        "nova-ferretdb",
        "- {cluster: north, apiVersion: pgv2.percona.com/v2, resource: perconapgclusters,\n   namespace: psql-operator, name: cluster1,",
        "- {cluster: north, apiVersion: pgv2.percona.com/v1, resource: perconapgclusters,\n   namespace: psql-operator, name: cluster1,",
    );
    let (ok, t) = rehearse_variant("nova-ferretdb", &[], &expect, &[]);
    assert!(!ok, "{t}");
    assert!(
        t.contains(
            "north: pgv2.percona.com/v2 perconapgclusters psql-operator/cluster1: changed, but no expectation names it"
        ),
        "{t}"
    );
}

#[test]
fn a_rehearsal_fails_when_a_reactor_fails_to_act() {
    // The world's "operator" writes what the CRD refuses: the plan and the expectations hold,
    // but a world whose operators did not do their job proves nothing.
    let broken = "objects: [percona/clusters.yaml, percona/ferretdb.yaml]
reactors:
- cluster: north
  when: {apiVersion: pgv2.percona.com/v2, resource: perconapgclusters, namespace: psql-operator,
         name: cluster1, fieldPath: spec.standby.enabled, equals: true}
  actions:
  - set: [{fieldPath: spec.standby.enabled, value: not-a-boolean}]
";
    let expect = expectations_with("nova-ferretdb", "", "");
    let (ok, t) = rehearse_variant(
        "nova-ferretdb",
        &[(
            "nova-ferretdb.yaml",
            "objects: [percona/clusters.yaml, percona/ferretdb.yaml]\n",
            broken,
        )],
        &expect,
        &[],
    );
    assert!(!ok, "{t}");
    assert!(t.contains("expectations: 3 checked, 0 failed"), "{t}");
    assert!(
        t.contains("reactors: 1 problem(s)")
            && t.contains("reactor on north (pgv2.percona.com/v2 perconapgclusters psql-operator/cluster1): writing cluster1 (attempt 1): "),
        "{t}"
    );
}

/// With `strict`, an object the world did not seed — there before the rehearsal, in a namespace
/// and kind the world has — that the run deletes is a failure: a selector that reached too far.
/// (Real clusters: the simulator holds nothing the world did not put there.)
#[tokio::test]
async fn strict_expectations_catch_a_delete_of_an_object_the_world_did_not_seed() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, PostParams};
    let c = clusters();
    let ns = c.namespace("lib-strict-gone").await;
    let dir = tempfile::tempdir().unwrap();
    let worlds = worlds_in_namespace(dir.path(), &ns);
    // Someone's pod, carrying the labels the plan deletes instance pods by.
    let pods: Api<Pod> = Api::namespaced(c.client("south").await, &ns);
    let bystander: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pg-south-9",
                     "labels": {"cnpg.io/cluster": "pg-south", "cnpg.io/podRole": "instance"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &bystander).await.unwrap();
    let plan = repo_dir().join("plans/cnpg-rebuild-replica.yaml");
    let file = |suffix: &str| {
        worlds
            .join(format!("cnpg-rebuild-replica{suffix}"))
            .display()
            .to_string()
    };
    let ns_param = format!("ns={ns}");
    let out = recoverd(&[
        "rehearse",
        plan.to_str().unwrap(),
        "--world",
        &file(".yaml"),
        "--alert",
        &file(".alert.json"),
        "--expect",
        &file(".expect.yaml"),
        "--approve",
        "--kubeconfig",
        c.kubeconfig().to_str().unwrap(),
        "--param",
        &ns_param,
    ]);
    let t = text(&out);
    println!("{t}");
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "south: v1 pods {ns}/pg-south-9: deleted, but no expectation names it"
        )),
        "{t}"
    );
    // Only that: the seeded objects changed as the expectations say.
    assert!(t.contains("1 failed"), "{t}");
}

/// An expectation naming one condition by a filter (`$.status.conditions[?(@.type=='Progressing')].reason`)
/// covers that condition, not the rest of the list: a condition something else sets on the
/// proxy's Deployment is a change no expectation names.
#[test]
fn a_filtered_expectation_covers_the_condition_it_selects_not_its_whole_list() {
    let surprise = "reactors:
- cluster: north
  when: {apiVersion: postgresql.cnpg.io/v1, resource: clusters, namespace: db, name: pg-north,
         fieldPath: spec.replica.primary, equals: pg-south}
  actions:
  - conditions: [{type: Surprise, status: 'True', cluster: edge, apiVersion: apps/v1, resource: deployments,
                   name: haproxy}]
";
    let expect = expectations_with("cnpg-switchover", "", "");
    let (ok, t) = rehearse_variant(
        "cnpg-switchover",
        &[("cnpg-switchover.yaml", "reactors:\n", surprise)],
        &expect,
        &[],
    );
    assert!(!ok, "{t}");
    assert!(
        t.contains("edge: apps/v1 deployments db/haproxy: changed in /status/conditions/"),
        "{t}"
    );
}

/// The switchover's last check goes through the proxy, as applications do: a plan that promoted
/// pg-south but never pointed the proxy at it fails there instead of ending ✔.
#[test]
fn a_switchover_that_never_redirects_the_proxy_fails_its_check_through_the_proxy() {
    let repo = repo_dir();
    let source = std::fs::read_to_string(repo.join("plans/cnpg-switchover.yaml")).unwrap();
    let (a, b) = (
        source.find("  - name: redirect-haproxy").unwrap(),
        source.find("  # A ConfigMap mounted with `subPath`").unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("no-redirect.yaml");
    std::fs::write(&plan, format!("{}{}", &source[..a], &source[b..])).unwrap();
    let worlds = repo.join("plans/worlds");
    let out = recoverd(&[
        "rehearse",
        plan.to_str().unwrap(),
        "--world",
        worlds.join("cnpg-switchover.yaml").to_str().unwrap(),
        "--alert",
        worlds.join("cnpg-switchover.alert.json").to_str().unwrap(),
        "--approve",
    ]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("step \"proxied-database-is-not-in-recovery\" failed: assertion failed: through haproxy.db.svc the database is in recovery (t)"),
        "{t}"
    );
}

/// An alert that lacks the label saying what it is about is refused, not taken as being about
/// the params' object (a manual run, with no alert at all, is the params' decision).
#[test]
fn an_alert_without_the_label_naming_its_object_is_refused() {
    for (plan, label, says) in [
        (
            "cnpg-switchover",
            "\"cluster\":\"pg-north\",",
            "the alert is about (none: no `cluster` label) but the params switch over from pg-north",
        ),
        ("replace-failed-instance", "\"pod\":\"pg-2\",", "the alert is about"),
        (
            "haproxy-redirect",
            "\"proxy\":\"haproxy\",",
            "the alert is about proxy (none: no `proxy` label), not haproxy",
        ),
    ] {
        let alert = format!("{plan}.alert.json");
        let (ok, t) = rehearse_variant(plan, &[(&alert, label, "")], REFUSED, &[]);
        assert!(ok, "{plan}: {t}");
        assert!(t.contains(says), "{plan}: {t}");
    }
}

/// replace-failed-instance throws an instance's data away: a pod that is Ready (its instance
/// has not failed) is refused unless `force` says otherwise.
#[test]
fn replace_failed_instance_refuses_a_ready_pod_unless_forced() {
    let ready = &[(
        "instance/pg-2.yaml",
        "conditions: [{type: Ready, status: \"False\", reason: NodeLost}]",
        "conditions: [{type: Ready, status: \"True\"}]",
    )];
    let (ok, t) = rehearse_variant("replace-failed-instance", ready, REFUSED, &[]);
    assert!(ok, "{t}");
    assert!(t.contains("pg-2 is Ready: its instance has not failed"), "{t}");
    let expect = std::fs::read_to_string(repo_dir().join("plans/worlds/replace-failed-instance.expect.yaml")).unwrap();
    let (ok, t) = rehearse_variant("replace-failed-instance", ready, &expect, &["--param", "force=true"]);
    assert!(ok, "forced, it replaces the pod: {t}");
}
