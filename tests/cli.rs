//! The `recoverd` binary: crd, check, run (including a Nova plan, unchanged) and rehearse.

mod support;

use std::process::{Command, Output};

use recoverd::cluster::WriteMode;
use serde_json::json;
use support::clusters::repo_dir;
use support::run::{field, registry, seed, world_in_namespace};

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

#[test]
fn the_committed_crds_are_what_recoverd_crd_prints() {
    let out = recoverd(&["crd"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(repo_dir().join("crds/recoverd.io.yaml")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "crds/recoverd.io.yaml is stale: run `cargo run -- crd > crds/recoverd.io.yaml`"
    );
}

#[tokio::test]
async fn the_crds_install_on_a_real_apiserver_and_accept_the_example_plans() {
    let clusters = support::shared();
    let ns = clusters.namespace("crds").await;
    let out = clusters
        .kubectl("south")
        .args(["apply", "-f"])
        .arg(repo_dir().join("crds/recoverd.io.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut ok = false;
    for _ in 0..100 {
        let out = clusters
            .kubectl("south")
            .args(["get", "recoveryplans", "-A"])
            .output()
            .unwrap();
        if out.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ok, "RecoveryPlan never served");
    for plan in ["plans/run/cnpg-switchover.yaml", "plans/nova/ferretdb-percona.yaml"] {
        let mut text_in = std::fs::read_to_string(repo_dir().join("tests/data").join(plan)).unwrap();
        text_in = text_in
            .replace("recovery.elotl.co/v1alpha1", "recoverd.io/v1alpha1")
            .replace("  namespace: recoverd\n", "");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text_in).unwrap();
        let out = clusters
            .kubectl("south")
            .args(["apply", "-n", &ns, "-f"])
            .arg(file.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{plan}: {}", text(&out));
    }
    // The schema rejects a step type that does not exist.
    let bad = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: bad}\nspec:\n  steps:\n  - {name: x, type: explode}\n";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bad).unwrap();
    let out = clusters
        .kubectl("south")
        .args(["apply", "-n", &ns, "-f"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("Unsupported value: \"explode\""), "{}", text(&out));
}

#[test]
fn check_accepts_good_plans_and_names_file_line_and_column_of_a_bad_one() {
    let out = recoverd(&["check", "tests/data/plans/run", "tests/data/plans/nova"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ok   tests/data/plans/run/cnpg-switchover.yaml plan cnpg-switchover"),
        "{}",
        text(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: b}\nspec:\n  steps:\n  - name: read\n    type: readField\n    readField: {apiVersion: v1, resource: configmaps, name: x, fieldPath: data.a}\n").unwrap();
    let out = recoverd(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains(&format!("{}:8:16: ", bad.display())) && t.contains("missing field `outputKey`"),
        "{t}"
    );
}

#[test]
fn check_points_every_problem_of_a_file_at_its_field_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("many.yaml");
    std::fs::write(
        &bad,
        "apiVersion: recoverd.io/v1alpha1
kind: RecoveryPlan
metadata: {name: m}
spec:
  params: {ns: db}
  steps:
  - name: read
    type: readField
    readField:
      apiVersion: v1
      resource: configmaps
      namespace: \"{{ Values.ns }}\"
      name: x
      fieldPath: \"{.data.a\"
      outputKey: A
  - name: read
    type: wait
    wait:
      duration: 1s
  - name: notify
    type: http
    http:
      url: \"http://h/{{ Values.ns | nosuchfilter }}\"
",
    )
    .unwrap();
    let out = recoverd(&["check", bad.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let file = bad.display();
    // The bad path, at its own line and column, with the line and a caret under it.
    assert!(
        t.contains(&format!(
            "{file}:14:7: step \"read\": spec.steps[0].readField.fieldPath: failed to parse field path"
        )),
        "{t}"
    );
    assert!(t.contains("    |       fieldPath: \"{.data.a\"\n    |       ^"), "{t}");
    // The duplicate name points at the second step, not the first.
    assert!(
        t.contains(&format!("{file}:16:5: step \"read\": spec.steps[1].name")),
        "{t}"
    );
    // A template problem in the same pass as the validation problems.
    assert!(
        t.contains(&format!("{file}:23:7: step \"notify\": spec.steps[2].http.url")),
        "{t}"
    );
}

#[test]
fn check_reports_undefined_values_in_json_and_junit() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("undefined.yaml");
    std::fs::write(&bad, "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: u}\nspec:\n  steps:\n  - name: patch-it\n    type: patch\n    patch:\n      apiVersion: v1\n      resource: configmaps\n      name: x\n      override: {fieldPath: data.a, value: {raw: '{{ Values.Token }}'}}\n").unwrap();
    let out = recoverd(&["check", "--format", "json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["valid"], json!(false));
    let problem = &v[0]["problems"][0];
    // At the field, not at the step: `raw:` is on line 12, column 45.
    assert_eq!(problem["line"], json!(12), "{problem}");
    assert_eq!(problem["column"], json!(45), "{problem}");
    assert_eq!(
        problem["path"],
        json!("spec.steps[0].patch.override.value.raw"),
        "{problem}"
    );
    assert_eq!(problem["rule"], json!("undefined-value"), "{problem}");
    assert!(
        problem["message"].as_str().unwrap().contains("Values.Token"),
        "{problem}"
    );
    assert_eq!(problem["file"], json!(bad.to_str().unwrap()));
    let out = recoverd(&["check", "--format", "junit", bad.to_str().unwrap()]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("<testsuites name=\"recoverd check\" tests=\"1\" failures=\"1\">")
            && t.contains("<failure message=\"1 problem(s)\">"),
        "{t}"
    );
}

#[tokio::test]
async fn a_nova_plan_runs_unchanged_on_the_default_cluster() {
    let clusters = support::shared();
    let reg = registry(clusters, WriteMode::Live).await;
    let world = repo_dir().join("tests/data/worlds/percona.yaml");
    let (_seeded, _reactors) = seed(reg.clone(), &world).await;

    let kubeconfig = clusters.kubeconfig().to_str().unwrap().to_string();
    let out = recoverd(&[
        "run",
        "tests/data/plans/nova/ferretdb-percona.yaml",
        "--kubeconfig",
        &kubeconfig,
    ]);

    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for step in ["step-1", "step-2", "step-3", "step-4"] {
        assert!(t.contains(&format!("✔ {step} (")), "{t}");
    }
    assert!(t.contains("Cluster2IP = 192.0.2.20"), "{t}");
    let pg = "pgv2.percona.com/v2";
    assert_eq!(
        field(
            &reg,
            "north",
            pg,
            "perconapgclusters",
            "psql-operator",
            "cluster1",
            "spec.standby.enabled"
        )
        .await,
        Some(json!(true))
    );
    assert_eq!(
        field(
            &reg,
            "north",
            pg,
            "perconapgclusters",
            "psql-operator",
            "cluster2",
            "spec.standby.enabled"
        )
        .await,
        Some(json!(false))
    );
    let cfg = field(
        &reg,
        "north",
        "v1",
        "configmaps",
        "default",
        "haproxy-config",
        "data[\"haproxy.cfg\"]",
    )
    .await
    .unwrap();
    assert!(
        cfg.as_str().unwrap().ends_with("server db2 192.0.2.20:27017 check"),
        "{cfg}"
    );
}

#[tokio::test]
async fn rehearse_seeds_the_world_runs_the_plan_and_checks_expectations() {
    let clusters = support::shared();
    let ns = clusters.namespace("rehearse").await;
    let (dir, world) = world_in_namespace("cnpg.yaml", &ns);
    let expect = dir.path().join("worlds/cnpg-expect.yaml");
    let plan = repo_dir().join("tests/data/plans/run/cnpg-switchover.yaml");
    let kubeconfig = clusters.kubeconfig().to_str().unwrap().to_string();
    let param_args = [
        "--kubeconfig",
        &kubeconfig,
        "--world",
        world.to_str().unwrap(),
        "--expect",
        expect.to_str().unwrap(),
    ];
    // The plan's namespace param defaults to db; rehearse it in this test's namespace.
    let plan_text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("ns: db", &format!("ns: {ns}"));
    let plan_file = dir.path().join("plan.yaml");
    std::fs::write(&plan_file, plan_text).unwrap();

    let mut args = vec!["rehearse", plan_file.to_str().unwrap()];
    args.extend(param_args);
    let out = recoverd(&args);

    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&format!("north: postgresql.cnpg.io/v1 clusters {ns}/pg-north")),
        "{t}"
    );
    assert!(t.contains("replace /spec/replica/primary pg-south"), "{t}");
    assert!(t.contains("expectations: 4 checked, 0 failed"), "{t}");

    // A second rehearsal on the same objects finds them already switched: expectations about
    // the proxy still hold, but the run cannot demote an already demoted primary twice —
    // so check that a wrong expectation fails the rehearsal.
    let wrong = dir.path().join("wrong-expect.yaml");
    std::fs::write(&wrong, format!("expect:\n- {{cluster: south, apiVersion: postgresql.cnpg.io/v1, resource: clusters, namespace: {ns}, name: pg-south, fields: {{spec.replica.primary: pg-north}}}}\n")).unwrap();
    let out = recoverd(&[
        "rehearse",
        plan_file.to_str().unwrap(),
        "--kubeconfig",
        &kubeconfig,
        "--world",
        world.to_str().unwrap(),
        "--expect",
        wrong.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("spec.replica.primary is pg-south, expected pg-north"), "{t}");
}

#[tokio::test]
async fn a_failing_run_exits_1_and_ends_with_the_failing_step_and_reason() {
    let clusters = support::shared();
    let ns = clusters.namespace("cli-fail").await;
    let reg = registry(clusters, WriteMode::Live).await;
    let (_dir, world) = world_in_namespace("cnpg.yaml", &ns);
    let (_seeded, _reactors) = seed(reg.clone(), &world).await;
    let kubeconfig = clusters.kubeconfig().to_str().unwrap().to_string();
    let param = format!("ns={ns}");

    let out = recoverd(&[
        "run",
        "tests/data/plans/run/wait-times-out.yaml",
        "--kubeconfig",
        &kubeconfig,
        "--param",
        &param,
    ]);

    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let last = stdout.lines().last().unwrap();
    assert!(
        last.contains("step \"wait-for-token\" failed on cluster \"north\": timed out after 1.5s"),
        "{stdout}"
    );
}

#[tokio::test]
async fn while_a_step_waits_a_terminal_shows_a_live_line_with_elapsed_time() {
    let clusters = support::shared();
    let kubeconfig = clusters.kubeconfig().to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("pause.yaml");
    std::fs::write(&plan, "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: pause}\nspec:\n  steps:\n  - {name: pause, type: wait, wait: {duration: 1500ms}}\n").unwrap();
    let cmd = format!(
        "{} run {} --kubeconfig {kubeconfig}",
        env!("CARGO_BIN_EXE_recoverd"),
        plan.display()
    );
    // `script` runs the command on a pseudo-terminal, as a person at a shell would.
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("waiting 1.") && t.contains("/ 1.5s: pausing for 1.5s"),
        "{t}"
    );
    assert!(t.contains('\r'), "the live line redraws in place: {t:?}");
    assert!(t.contains("✔ pause (1.5s)"), "{t}");
}

#[test]
fn run_and_rehearse_refuse_an_alert_the_plan_does_not_match() {
    let alert = "tests/data/alerts/firing-other-alert.json";
    for args in [
        vec![
            "rehearse",
            "plans/cnpg-switchover.yaml",
            "--world",
            "tests/data/worlds/cnpg.yaml",
            "--alert",
            alert,
        ],
        // The kubeconfig is never read: the alert is refused first.
        vec![
            "run",
            "plans/cnpg-switchover.yaml",
            "--kubeconfig",
            "/nonexistent",
            "--alert",
            alert,
        ],
    ] {
        let out = recoverd(&args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {t}");
        assert!(
            t.contains("matches the plan's alertLabels/alertMatchers; nothing was run"),
            "{args:?}: {t}"
        );
        assert!(!t.contains("▶"), "a step ran: {t}");
    }
}

#[test]
fn a_rehearsal_lists_every_object_the_plan_wrote_with_secret_values_redacted() {
    let out = recoverd(&[
        "rehearse",
        "tests/data/rehearse/rotate.yaml",
        "--world",
        "tests/data/rehearse/world.yaml",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let changes = &t[t.find("\nchanges:").expect("a changes section")..];
    assert!(changes.contains("changed edge: v1 secrets db/creds"), "{changes}");
    assert!(changes.contains("/data/password <redacted>"), "{changes}");
    assert!(
        changes.contains("written v1 configmaps db/rotation on cluster edge"),
        "{changes}"
    );
    assert!(
        changes.contains("/data {\"rotated\":\"yes\"}") || changes.contains("rotated"),
        "{changes}"
    );
    assert!(!t.contains("swordfish"), "a secret value was printed: {t}");
}

#[test]
fn every_plan_the_tests_run_passes_check_and_a_stand_in_that_cannot_render_is_a_note() {
    let out = recoverd(&[
        "check",
        "plans",
        "tests/data/plans/run",
        "tests/data/plans/truth",
        "tests/data/plans/language",
        "tests/data/plans/reliability",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // `{{ Values.LagBytes | int }}` cannot render with a placeholder for a value read at run
    // time: a note, not an error.
    assert!(
        t.contains("spec.steps[1].assert.that: not checked: a stand-in for a value read at run time"),
        "{t}"
    );
}

// ---- A consistent command line: -o, exit codes, completions, --version, colour ----

/// `recoverd ARGS` with environment variables set.
fn recoverd_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_dir())
        .output()
        .unwrap()
}

/// A plan file in `dir`: `steps` is the YAML list of steps.
fn plan_file(dir: &std::path::Path, name: &str, steps: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: {name}, namespace: ops}}\nspec:\n  mode: manual\n  steps:\n{steps}"),
    )
    .unwrap();
    path.display().to_string()
}

/// A step that reads from the nowhere cluster (it cannot be reached).
const READ_NOWHERE: &str = "  - {name: read, type: readField, readField: {apiVersion: v1, resource: configmaps, namespace: default, name: x, fieldPath: data.a, outputKey: A}";

#[test]
fn the_exit_codes_are_one_table_in_help_and_in_the_readme() {
    let out = recoverd(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains(recoverd::cli::exit::TABLE), "{help}");
    let readme = std::fs::read_to_string(repo_dir().join("README.md")).unwrap();
    for line in recoverd::cli::exit::TABLE.lines().skip(1) {
        let (code, meaning) = line.trim().split_once("  ").unwrap();
        assert!(
            readme.contains(&format!("| {code} | {meaning} |")),
            "README's exit code table lacks `| {code} | {meaning} |`"
        );
    }
}

#[test]
fn a_usage_error_exits_2_and_each_command_names_the_formats_it_accepts() {
    // `runs` prints a table or the API's JSON: no JUnit.
    let out = recoverd(&["runs", "-o", "junit"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(
        t.contains("invalid value 'junit' for '--output <FORMAT>'")
            && t.contains("[possible values: text, json, yaml]"),
        "{t}"
    );
    let out = recoverd(&["check", "-o", "xml", "plans"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("[possible values: text, json, yaml, junit]"),
        "{}",
        text(&out)
    );
    // A run that has not ended has no test results.
    let out = recoverd(&["trigger", "ops/x", "-o", "junit"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--wait"), "{}", text(&out));
    // --help says which formats each command accepts.
    let help = String::from_utf8_lossy(&recoverd(&["run", "--help"]).stdout).to_string();
    assert!(
        help.contains("-o, --output <FORMAT>") && help.contains("[possible values: text, json, yaml, junit]"),
        "{help}"
    );
}

#[test]
fn check_prints_yaml_and_keeps_format_as_the_old_name_of_output() {
    let out = recoverd(&["check", "-o", "yaml", "plans/cnpg-switchover.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["plan"], json!("cnpg-switchover"));
    assert_eq!(v[0]["valid"], json!(true));
    let old = recoverd(&["check", "--format", "json", "plans/cnpg-switchover.yaml"]);
    let new = recoverd(&["check", "--output", "json", "plans/cnpg-switchover.yaml"]);
    assert_eq!(old.stdout, new.stdout);
    assert!(!recoverd(&["check", "--help"]).stdout.is_empty());
    assert!(
        !String::from_utf8_lossy(&recoverd(&["check", "--help"]).stdout).contains("--format"),
        "the old name is hidden"
    );
}

#[test]
fn a_run_that_cannot_reach_its_cluster_exits_4_and_prints_only_the_result_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let kubeconfig = kubeconfig.to_str().unwrap();
    let plan = plan_file(dir.path(), "reads", &format!("{READ_NOWHERE}}}\n"));

    let out = recoverd(&["run", &plan, "--kubeconfig", kubeconfig, "-o", "json"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["phase"], json!("Failed"));
    assert_eq!(record["steps"][0]["reason"], json!("unreachable"));
    // The narration went to stderr.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("▶ read"),
        "{}",
        text(&out)
    );

    // The old --json, and yaml, are the same record.
    let out = recoverd(&["run", &plan, "--kubeconfig", kubeconfig, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"][0]["name"], json!("read"));
    let out = recoverd(&["run", &plan, "--kubeconfig", kubeconfig, "-o", "yaml"]);
    let v: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(v["phase"], json!("Failed"));

    let out = recoverd(&["run", &plan, "--kubeconfig", kubeconfig, "-o", "junit"]);
    assert_eq!(out.status.code(), Some(4));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.starts_with("<?xml")
            && t.contains("<testsuites name=\"recoverd run\" tests=\"1\" failures=\"1\">")
            && t.contains("<testcase classname=\"ops/reads.steps\" name=\"read\"")
            && t.contains("type=\"unreachable\""),
        "{t}"
    );
}

#[test]
fn a_run_whose_only_failure_was_tolerated_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let plan = plan_file(
        dir.path(),
        "tolerates",
        &format!("{READ_NOWHERE}, onError: continue}}\n  - {{name: pause, type: wait, wait: {{duration: 10ms}}}}\n"),
    );
    let out = recoverd(&["run", &plan, "--kubeconfig", kubeconfig.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("continuing (onError: continue)"), "{}", text(&out));
}

#[test]
fn a_command_that_cannot_reach_the_recoverd_api_exits_4() {
    let url = format!("http://127.0.0.1:{}", support::clusters::free_port());
    for args in [
        vec!["runs", "--url", &url],
        vec!["trigger", "ops/x", "--url", &url],
        vec!["approve", "some-run", "--url", &url],
    ] {
        let out = recoverd(&args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(&format!("calling {url}")), "{}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_prints_the_run_in_each_format_and_a_wait_that_times_out_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    std::fs::create_dir_all(&plans).unwrap();
    plan_file(&plans, "quick", "  - {name: one, type: wait, wait: {duration: 10ms}}\n");
    plan_file(&plans, "slow", "  - {name: long, type: wait, wait: {duration: 30s}}\n");
    let guarded = plan_file(
        &plans,
        "guarded",
        "  - {name: one, type: wait, wait: {duration: 10ms}}\n",
    );
    let text_in = std::fs::read_to_string(&guarded).unwrap();
    std::fs::write(&guarded, text_in.replace("mode: manual", "mode: approval")).unwrap();
    plan_file(
        &plans,
        "asks",
        "  - {name: ask, type: approval, approval: {message: go on?, timeout: 1m}}\n",
    );
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let serve = support::server::ServeProcess::start(dir.path(), &plans, &kubeconfig, &[]).await;
    let token = dir.path().join("token");
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recoverd"));
        cmd.args(args).args(["--url", &serve.url, "--token-file"]).arg(&token);
        tokio::task::block_in_place(|| cmd.output().unwrap())
    };

    let out = cli(&["trigger", "ops/quick", "--wait", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["phase"], json!("Succeeded"));
    let id = record["id"].as_str().unwrap().to_string();
    // Progress, narrated by the same printer as `recoverd run`, on stderr.
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("started") && progress.contains("✔ one ("),
        "{progress}"
    );

    let out = cli(&["trigger", "ops/quick", "--wait", "-o", "junit"]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("<testsuites name=\"recoverd trigger\" tests=\"1\" failures=\"0\">"),
        "{t}"
    );

    let out = cli(&["runs", "-o", "yaml"]);
    let listed: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 2, "{listed}");
    let out = cli(&["runs", &id, "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["id"], json!(id));

    let out = cli(&["trigger", "ops/slow", "--wait", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("stopped waiting after 300ms; run") && text(&out).contains("is still Running"),
        "{}",
        text(&out)
    );
    // The run went on: cancel it, with the run as the API answered it.
    let slow = serve.get("/api/v1/runs?plan=ops/slow").await;
    let slow_id = slow["runs"][0]["id"].as_str().unwrap().to_string();
    let out = cli(&["cancel", &slow_id, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cancelled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cancelled["id"], json!(slow_id));

    // A run that waits for approval: following it says so, once, and how to approve it.
    let out = cli(&["trigger", "ops/guarded", "--wait", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let t = text(&out);
    assert_eq!(t.matches("waiting for approval: recoverd approve ").count(), 1, "{t}");

    // A running plan's approval step: it has started, it has not finished.
    let out = cli(&["trigger", "ops/asks", "--wait", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("▶ ask (approval")
            && t.matches("waiting for approval: recoverd approve ").count() == 1
            && !t.contains("✔ ask")
            && !t.contains("✘ ask"),
        "{t}"
    );
}

#[test]
fn a_rehearsal_prints_its_run_changes_and_expectations_as_json_and_junit() {
    let args = [
        "rehearse",
        "tests/data/rehearse/rotate.yaml",
        "--world",
        "tests/data/rehearse/world.yaml",
    ];
    let out = recoverd(&[&args[..], &["-o", "json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"]["phase"], json!("Succeeded"));
    let changes = v["changes"].as_array().unwrap();
    let secret = changes
        .iter()
        .find(|c| c["object"] == json!("edge: v1 secrets db/creds"))
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(secret["kind"], json!("changed"));
    assert!(
        secret["ops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().ends_with(" /data/password <redacted>")),
        "{secret}"
    );
    assert!(!text(&out).contains("swordfish"), "a secret value was printed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("changes:"));

    let out = recoverd(&[&args[..], &["-o", "junit"]].concat());
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.starts_with("<?xml") && t.contains("<testsuites name=\"recoverd rehearse\""),
        "{t}"
    );
}

#[test]
fn completions_for_bash_load_and_zsh_and_fish_print_their_scripts() {
    let bin = env!("CARGO_BIN_EXE_recoverd");
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("source <({bin} completions bash) && complete -p recoverd"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("-F _recoverd recoverd"),
        "{}",
        text(&out)
    );
    let zsh = recoverd(&["completions", "zsh"]);
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef recoverd"));
    let fish = recoverd(&["completions", "fish"]);
    assert!(
        String::from_utf8_lossy(&fish.stdout).contains("complete -c recoverd"),
        "{}",
        text(&fish)
    );
    assert_eq!(recoverd(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn version_names_the_crate_version_and_the_git_commit() {
    let out = recoverd(&["--version"]);
    assert!(out.status.success());
    // What build.rs should have found: the override, else git, else `unknown`.
    let commit = std::env::var("RECOVERD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let git = Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(repo_dir())
                .output()
                .ok()?;
            git.status
                .success()
                .then(|| String::from_utf8_lossy(&git.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("recoverd {} ({commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let plan = plan_file(dir.path(), "logs", &format!("{READ_NOWHERE}}}\n"));
    let args = ["run", &plan, "--kubeconfig", kubeconfig.to_str().unwrap()];
    // stderr to a pipe: the step's failure is logged, with no escape sequence at all.
    let out = recoverd_env(&args, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARN"), "nothing was logged: {err}");
    assert!(!err.contains('\x1b'), "colour on a pipe: {err:?}");

    // On a terminal (`script` gives the command one): colour, unless NO_COLOR is set.
    let on_terminal = |no_color: Option<&str>| {
        let cmd = format!("{} {}", env!("CARGO_BIN_EXE_recoverd"), args.join(" "));
        let mut script = Command::new("script");
        script.args(["-qec", &cmd, "/dev/null"]).env_remove("NO_COLOR");
        if let Some(v) = no_color {
            script.env("NO_COLOR", v);
        }
        let out = script.output().unwrap();
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(t.contains("WARN"), "nothing was logged: {t}");
        // An SGR sequence (`ESC [ … m`) is colour.
        t.split('\x1b').skip(1).any(|s| {
            s.starts_with('[')
                && s[1..]
                    .trim_start_matches(|c: char| c.is_ascii_digit() || c == ';')
                    .starts_with('m')
        })
    };
    assert!(on_terminal(None), "no colour on a terminal");
    assert!(!on_terminal(Some("1")), "colour with NO_COLOR=1");
}

#[test]
fn sigterm_cancels_a_run_as_ctrl_c_does() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let plan = plan_file(
        dir.path(),
        "pauses",
        "  - {name: pause, type: wait, wait: {duration: 60s}}\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(["run", &plan, "--kubeconfig", kubeconfig.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Once the step waits, the handler is installed (it is, before the run starts).
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let waiting = line.contains("waiting up to 1m");
        seen.push(line);
        if waiting {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("▶ pause")), "{seen:?}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("Cancelled")),
        "the run was not cancelled: {rest:?}"
    );
}

#[test]
fn a_failed_expectation_is_a_junit_failure_and_in_the_json_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        "expect:\n- {cluster: south, apiVersion: postgresql.cnpg.io/v1, resource: clusters, namespace: db, name: pg-south, fields: {spec.replica.primary: pg-north}}\n- {cluster: north, apiVersion: postgresql.cnpg.io/v1, resource: clusters, namespace: db, name: pg-north, fields: {spec.replica.primary: pg-south}}\n",
    )
    .unwrap();
    let args = [
        "rehearse",
        "plans/cnpg-switchover.yaml",
        "--world",
        "tests/data/worlds/cnpg.yaml",
        "--expect",
        wrong.to_str().unwrap(),
    ];
    let out = recoverd(&[&args[..], &["-o", "junit"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    let expectations = &t[t.find("<testsuite name=\"expectations\"").expect("a suite")..];
    assert!(
        !expectations.starts_with("<testsuite name=\"expectations\" tests=\"1\" failures=\"0\"")
            && expectations.contains(
                "<failure message=\"south: postgresql.cnpg.io/v1 clusters db/pg-south: spec.replica.primary is pg-south, expected pg-north\"/>"
            ),
        "{t}"
    );
    let out = recoverd(&[&args[..], &["-o", "json"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"]["phase"], json!("Succeeded"));
    assert_eq!(v["expectations"]["checked"], json!(2));
    let failures = v["expectations"]["failures"].as_array().unwrap();
    assert!(
        failures.iter().any(|f| f
            .as_str()
            .unwrap()
            .contains("spec.replica.primary is pg-south, expected pg-north")),
        "{v}"
    );
    // When every expectation holds: one passing case that says how many.
    let out = recoverd(&[
        "rehearse",
        "plans/cnpg-switchover.yaml",
        "--world",
        "tests/data/worlds/cnpg.yaml",
        "--alert",
        "tests/data/alerts/firing-one-alert.json",
        "--expect",
        "tests/data/worlds/cnpg-expect.yaml",
        "-o",
        "junit",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("<testsuite name=\"expectations\" tests=\"1\" failures=\"0\">\n  <testcase classname=\"expectations\" name=\"4 expectation(s) held\">"),
        "{t}"
    );
}

/// `recoverd run` cannot wait for an approver: without `--approve` an approval step fails the
/// run before anything after it runs, saying how to approve; with it, the person running the
/// command is the approver and the run goes on.
#[test]
fn an_approval_step_stops_a_command_line_run_unless_it_is_approved_in_advance() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::server::nowhere_kubeconfig(dir.path());
    let plan = plan_file(
        dir.path(),
        "asks",
        "  - {name: decide, type: approval, approval: {message: \"promote?\", timeout: 5m}}\n  - {name: after, type: wait, wait: {duration: 10ms}}\n",
    );
    let kc = kubeconfig.to_str().unwrap();
    let out = recoverd(&["run", &plan, "--kubeconfig", kc, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["steps"][0]["reason"], "approval-unavailable", "{record}");
    assert_eq!(record["steps"][1]["status"], "pending", "{record}");
    assert!(text(&out).contains("--approve"), "{}", text(&out));

    let out = recoverd(&["run", &plan, "--kubeconfig", kc, "--approve", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["phase"], "Succeeded", "{record}");
    assert_eq!(
        record["steps"][0]["inputs"]["decision"],
        "approved in advance (--approve)"
    );
}
