//! `forEach` steps on the real test clusters: over the objects a selector matches, over a param
//! list, over a list read earlier; iterations recorded as child steps with their item;
//! concurrency that overlaps iterations and bounds them; a failed iteration that the others
//! outlive (`onError: continue`); `maxItems` refusing before any write; a dry run writing
//! nothing. Also a templated `maxObjects`, and an approval that answers only the wait it names.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use recoverd::cluster::WriteMode;
use recoverd::plan::Plan;
use recoverd::run::record::{Phase, StepRecord, StepStatus};
use serde_json::{json, Value};
use support::run::{plan_in, registry, run};

fn language(file: &str) -> Plan {
    plan_in("language", file)
}

/// A namespace of its own in cluster north, and its ConfigMaps.
async fn setup(test: &str) -> (String, Api<ConfigMap>) {
    let clusters = support::shared();
    let ns = clusters.namespace(test).await;
    let api = Api::namespaced(clusters.client("north").await, &ns);
    (ns, api)
}

async fn create(api: &Api<ConfigMap>, name: &str, labels: Value, data: Value) {
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
}

async fn names(api: &Api<ConfigMap>) -> Vec<String> {
    let mut names: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n != "kube-root-ca.crt")
        .collect();
    names.sort();
    names
}

fn summary(children: &[StepRecord]) -> Vec<(String, StepStatus, Option<Value>)> {
    children
        .iter()
        .map(|c| (c.name.clone(), c.status, c.item.clone()))
        .collect()
}

fn at(t: &Option<String>) -> jiff::Timestamp {
    t.as_deref().unwrap().parse().unwrap()
}

#[tokio::test]
async fn for_each_over_a_selector_deletes_each_object_as_its_own_child_step() {
    let (ns, cms) = setup("fe-selector").await;
    for n in ["stale-a", "stale-b", "stale-c"] {
        create(&cms, n, json!({"app": "stale"}), json!({})).await;
    }
    create(&cms, "keep", json!({"app": "live"}), json!({})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("for-each-selected.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(names(&cms).await, ["keep"]);
    let step = &record.steps[0];
    assert_eq!(
        summary(&step.children),
        [
            ("delete-volume[0]".into(), StepStatus::Succeeded, Some(json!("stale-a"))),
            ("delete-volume[1]".into(), StepStatus::Succeeded, Some(json!("stale-b"))),
            ("delete-volume[2]".into(), StepStatus::Succeeded, Some(json!("stale-c"))),
        ]
    );
    assert_eq!(
        step.children[1].inputs.as_ref().unwrap()["objects"],
        json!([{"name": "stale-b", "result": "gone"}]),
        "each child says what it did: {step:#?}"
    );
    let inputs = step.inputs.as_ref().unwrap();
    assert_eq!(inputs["items"], json!(["stale-a", "stale-b", "stale-c"]));
    assert_eq!(
        inputs["steps"],
        json!({"succeeded": 3, "failed": 0, "skipped": 0, "pending": 0}),
        "the parent summarises its iterations: {inputs}"
    );
    assert!(inputs["source"].as_str().unwrap().contains("[app=stale]"), "{inputs}");
}

#[tokio::test]
async fn for_each_over_a_param_list_runs_every_iteration_and_fails_naming_the_one_that_failed() {
    let (ns, cms) = setup("fe-params").await;
    create(&cms, "pg-1", json!({}), json!({"role": "primary"})).await;
    create(&cms, "pg-3", json!({}), json!({"role": "replica"})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("for-each-params.yaml"), &ns, &[]).await;

    // pg-2 does not exist: its read fails, its patch does not run, pg-3 still gets its turn.
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[0];
    let statuses: Vec<_> = step.children.iter().map(|c| (c.name.as_str(), c.status)).collect();
    assert_eq!(
        statuses,
        [
            ("mark[0].read-role", StepStatus::Succeeded),
            ("mark[0].record-role", StepStatus::Succeeded),
            ("mark[1].read-role", StepStatus::Failed),
            ("mark[1].record-role", StepStatus::Skipped),
            ("mark[2].read-role", StepStatus::Succeeded),
            ("mark[2].record-role", StepStatus::Succeeded),
        ]
    );
    assert_eq!(step.children[2].reason.as_deref(), Some("not-found"));
    assert_eq!(step.reason.as_deref(), Some("iterations-failed"));
    let error = step.error.as_deref().unwrap();
    assert!(
        error.contains("1 of 3 iterations failed") && error.contains("mark[1].read-role"),
        "{error}"
    );
    // Each iteration saw its own item and its own read value.
    let was = |n: &str| {
        let cms = cms.clone();
        let n = n.to_string();
        async move { cms.get(&n).await.unwrap().data.unwrap()["was"].clone() }
    };
    assert_eq!(was("pg-1").await, "primary before test");
    assert_eq!(was("pg-3").await, "replica before test");
    assert_eq!(step.children[4].outputs["role"], json!("replica"));
    assert!(!record.outputs.contains_key("role"), "an iteration's values stay in it");
}

#[tokio::test]
async fn for_each_over_a_list_read_earlier_deletes_what_it_names() {
    let (ns, cms) = setup("fe-read").await;
    create(&cms, "inventory", json!({}), json!({"stale": "[\"old-1\", \"old-2\"]"})).await;
    for n in ["old-1", "old-2", "current"] {
        create(&cms, n, json!({}), json!({})).await;
    }
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("for-each-read-list.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(names(&cms).await, ["current", "inventory"]);
    assert_eq!(
        summary(&record.steps[1].children),
        [
            ("delete-stale[0]".into(), StepStatus::Succeeded, Some(json!("old-1"))),
            ("delete-stale[1]".into(), StepStatus::Succeeded, Some(json!("old-2"))),
        ]
    );
}

#[tokio::test]
async fn a_list_read_earlier_that_is_no_list_fails_the_step_before_any_iteration() {
    let (ns, cms) = setup("fe-not-list").await;
    create(&cms, "inventory", json!({}), json!({"stale": "old-1"})).await;
    create(&cms, "old-1", json!({}), json!({})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("for-each-read-list.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[1];
    assert_eq!(step.reason.as_deref(), Some("for-each-items"), "{step:#?}");
    assert!(step.error.as_deref().unwrap().contains("not a list"), "{step:#?}");
    assert!(step.children.is_empty());
    assert_eq!(names(&cms).await, ["inventory", "old-1"]);
}

#[tokio::test]
async fn iterations_overlap_up_to_the_concurrency_and_no_further() {
    let (ns, _) = setup("fe-concurrent").await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("for-each-concurrent.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let c = &record.steps[0].children;
    assert_eq!(c.len(), 3);
    let (start, end) = (
        c.iter().map(|c| at(&c.started_at)).collect::<Vec<_>>(),
        c.iter().map(|c| at(&c.finished_at)).collect::<Vec<_>>(),
    );
    assert!(
        start[1] < end[0] && start[0] < end[1],
        "the first two iterations ran at the same time: {c:#?}"
    );
    assert!(
        start[2] >= end[0].min(end[1]),
        "the third waited for one of them to finish (concurrency 2): {c:#?}"
    );
}

#[tokio::test]
async fn more_items_than_max_items_runs_no_iteration() {
    let (ns, cms) = setup("fe-max").await;
    for i in 0..6 {
        create(&cms, &format!("stale-{i}"), json!({"app": "stale"}), json!({})).await;
    }
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("for-each-selected.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[0];
    assert_eq!(step.reason.as_deref(), Some("too-many-items"), "{step:#?}");
    assert!(
        step.error
            .as_deref()
            .unwrap()
            .contains("6 items to repeat over, more than maxItems 5; no iteration ran"),
        "{step:#?}"
    );
    assert!(step.children.is_empty(), "{step:#?}");
    assert_eq!(step.inputs.as_ref().unwrap()["count"], 6, "{step:#?}");
    assert_eq!(names(&cms).await.len(), 6, "nothing was deleted");
}

/// Deleting by item without a maxItems of its own is bounded like a delete step's selector: at
/// most 10 (maxObjects' default), not forEach's general 50.
#[tokio::test]
async fn deleting_by_item_without_max_items_is_bounded_like_a_delete_selector() {
    let (ns, cms) = setup("fe-delete-bound").await;
    for i in 0..11 {
        create(&cms, &format!("stale-{i}"), json!({"app": "stale"}), json!({})).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unbounded.yaml");
    let text =
        std::fs::read_to_string(support::clusters::repo_dir().join("tests/data/plans/language/for-each-selected.yaml"))
            .unwrap();
    assert!(text.contains("      maxItems: 5\n"));
    std::fs::write(&path, text.replace("      maxItems: 5\n", "")).unwrap();
    let (mut plans, errors) = recoverd::plan::load_paths(std::slice::from_ref(&path));
    assert!(errors.is_empty(), "{errors:?}");
    let plan = recoverd::plan::compile_one(&plans.remove(0), None).unwrap();
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &plan, &ns, &[]).await;

    let step = &record.steps[0];
    assert_eq!(step.reason.as_deref(), Some("too-many-items"), "{step:#?}");
    assert!(
        step.error.as_deref().unwrap().contains("more than maxItems 10"),
        "{step:#?}"
    );
    assert_eq!(names(&cms).await.len(), 11, "nothing was deleted");
}

/// A resumed forEach over a selector keeps the iterations it began with: the objects it already
/// deleted no longer match, yet their iterations stay in the record, numbered as they were.
#[tokio::test]
async fn a_resumed_selector_for_each_keeps_the_iterations_it_began_with() {
    use recoverd::executor::{Executor, NoObserver, RunControl, RunInput};
    let (ns, cms) = setup("fe-resume-sel").await;
    for n in ["stale-a", "stale-b", "stale-c"] {
        create(&cms, n, json!({"app": "stale"}), json!({})).await;
    }
    let reg = registry(support::shared(), WriteMode::Live).await;
    let plan = language("for-each-selected.yaml");
    let input = RunInput {
        params: [("ns".to_string(), json!(ns))].into(),
        alert: None,
    };
    let executor = Executor::new(reg);
    let mut record = executor.new_record("resume-sel", &plan, &input);
    let control = RunControl::default();
    executor
        .execute(&plan, &input, &mut record, &NoObserver, &control)
        .await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let before = record.steps[0].children.clone();
    assert_eq!(before.len(), 3);
    // As if recoverd had stopped during the last iteration: it runs again on resume.
    record.steps[0].children[2].status = StepStatus::Pending;
    record.steps[0].status = StepStatus::Pending;
    record.phase = Phase::Interrupted;
    create(&cms, "stale-c", json!({"app": "stale"}), json!({})).await;
    executor
        .execute(&plan, &input, &mut record, &NoObserver, &control)
        .await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let after = &record.steps[0].children;
    let items: Vec<&Value> = after.iter().filter_map(|c| c.item.as_ref()).collect();
    let items_before: Vec<&Value> = before.iter().filter_map(|c| c.item.as_ref()).collect();
    assert_eq!(items, items_before, "the same iterations, in the same order");
    for i in [0, 1] {
        assert_eq!(after[i].finished_at, before[i].finished_at, "{after:#?}");
    }
    assert!(names(&cms).await.is_empty());
}

/// A selector matching nothing (a typo in a label, the wrong namespace) fails the step rather
/// than report success for doing nothing.
#[tokio::test]
async fn a_selector_matching_nothing_fails_the_step_instead_of_a_check_mark() {
    let (ns, cms) = setup("fe-none").await;
    create(&cms, "keep", json!({"app": "other"}), json!({})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("for-each-selected.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[0];
    assert!(
        step.error
            .as_deref()
            .unwrap()
            .contains("the selector matched no object"),
        "{step:#?}"
    );
    assert_eq!(names(&cms).await, ["keep"]);
}

#[tokio::test]
async fn a_for_each_in_a_dry_run_lists_each_iteration_and_deletes_nothing() {
    let (ns, cms) = setup("fe-dry").await;
    for n in ["stale-a", "stale-b"] {
        create(&cms, n, json!({"app": "stale"}), json!({})).await;
    }
    let dry = registry(support::shared(), WriteMode::DryRun).await;

    let record = run(dry, &language("for-each-selected.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(names(&cms).await, ["stale-a", "stale-b"]);
    let c = &record.steps[0].children;
    assert_eq!(c.len(), 2, "{c:#?}");
    for (child, name) in c.iter().zip(["stale-a", "stale-b"]) {
        assert_eq!(
            child.inputs.as_ref().unwrap()["objects"],
            json!([{"name": name, "result": "would be deleted (dry run)"}]),
            "{child:#?}"
        );
    }
}

#[tokio::test]
async fn max_objects_from_a_param_bounds_a_selector_delete_and_is_checked_when_it_runs() {
    let (ns, cms) = setup("fe-max-objects").await;
    for n in ["stale-0", "stale-1", "stale-2"] {
        create(&cms, n, json!({"app": "stale"}), json!({})).await;
    }
    let reg = registry(support::shared(), WriteMode::Live).await;
    let plan = language("delete-selected-templated.yaml");

    let record = run(reg.clone(), &plan, &ns, &[]).await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    assert!(
        record.steps[0]
            .error
            .as_deref()
            .unwrap()
            .contains("3 objects match, more than maxObjects 2; nothing was deleted"),
        "{record:#?}"
    );

    let record = run(reg.clone(), &plan, &ns, &[("max", json!("many"))]).await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    assert!(
        record.steps[0]
            .error
            .as_deref()
            .unwrap()
            .contains("rendered to \"many\", which is not a whole number from 1"),
        "{record:#?}"
    );
    assert_eq!(names(&cms).await.len(), 3);

    let record = run(reg, &plan, &ns, &[("max", json!(3))]).await;
    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert!(names(&cms).await.is_empty());
}

// ---- Approvals inside iterations: an answer approves only the wait it names ----

fn approval_plan(hook: &str) -> (&'static str, String) {
    (
        "each-site.yaml",
        format!(
            "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: each-site, namespace: ops}}\n\
             spec:\n  mode: manual\n  params: {{hook: \"{hook}\"}}\n  steps:\n\
             \x20 - name: promote\n    type: forEach\n    forEach:\n      items: [north, south]\n      steps:\n\
             \x20     - name: decide\n        type: approval\n        approval: {{message: \"Promote {{{{ Values.item }}}}?\", timeout: 5m}}\n\
             \x20     - name: call\n        type: http\n        http: {{url: \"{{{{ Values.hook }}}}/step/{{{{ 0 if Values.item == 'north' else 1 }}}}\", method: POST}}\n"
        ),
    )
}

#[tokio::test]
async fn a_stale_approval_does_not_approve_a_later_wait() {
    use support::server::{app, counting_hook, counts, eventually};
    let (hook, hits) = counting_hook(2).await;
    let app = app(&[approval_plan(&hook)]).await;
    let (status, run) = app.post("/api/v1/plans/ops/each-site/runs", &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let waiting = |child: usize| {
        let app = &app;
        let id = id.clone();
        async move {
            eventually(
                &format!("child {child} to wait for approval"),
                Duration::from_secs(20),
                || {
                    let id = id.clone();
                    async move {
                        app.get(&format!("/api/v1/runs/{id}")).await.1["steps"][0]["children"][child]["status"]
                            == "waitingForApproval"
                    }
                },
            )
            .await;
            app.get(&format!("/api/v1/runs/{id}")).await.1["steps"][0]["children"][child].clone()
        }
    };
    let approve = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move { app.post(&format!("/api/v1/runs/{id}/approve"), &body).await }
    };

    let first = waiting(0).await;
    assert_eq!(first["name"], "promote[0].decide");
    assert_eq!(first["inputs"]["message"], "Promote north?", "{first}");
    let first_wait = json!({"step": "promote[0].decide", "startedAt": first["startedAt"]});
    let (status, body) = approve(json!({"step": "promote[0].decide", "startedAt": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a wait that is not this one: {body}");
    let (status, body) = approve(first_wait.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let second = waiting(2).await;
    assert_eq!(second["name"], "promote[1].decide");
    assert_eq!(counts(&hits), [1, 0], "north promoted, south not yet");
    // The first answer, sent again (a retry, a double click): it answers nothing now.
    let (status, body) = approve(first_wait).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // The right step, with the time of the earlier wait: refused, saying what waits now.
    let (status, body) = approve(json!({"step": "promote[1].decide", "startedAt": first["startedAt"]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("promote[1].decide") && text.contains(second["startedAt"].as_str().unwrap()),
        "the refusal says which wait is on now: {text}"
    );
    assert_eq!(counts(&hits), [1, 0], "the stale answers approved nothing");

    let (status, body) = approve(json!({"step": "promote[1].decide", "startedAt": second["startedAt"]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = app.finished(&id).await;
    assert_eq!(done["phase"], "Succeeded", "{done}");
    assert_eq!(counts(&hits), [1, 1]);
}

#[tokio::test]
async fn a_for_each_rehearses_against_a_seeded_world() {
    let clusters = support::shared();
    let (ns, cms) = setup("fe-rehearse").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("world.yaml"),
        "clusters:\n  north:\n    objects: [stale.yaml]\n",
    )
    .unwrap();
    let objects: Vec<String> = ["stale-a", "stale-b"]
        .iter()
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}, namespace: {ns}, labels: {{app: stale}}}}\n"
            )
        })
        .collect();
    std::fs::write(dir.path().join("stale.yaml"), objects.join("---\n")).unwrap();
    let plan = support::clusters::repo_dir().join("tests/data/plans/language/for-each-selected.yaml");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .args(["rehearse", plan.to_str().unwrap(), "--world"])
        .arg(dir.path().join("world.yaml"))
        .arg("--kubeconfig")
        .arg(clusters.kubeconfig())
        .args(["--param", &format!("ns={ns}"), "-o", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let body: Value = serde_json::from_str(&stdout).unwrap();
    let children = &body["run"]["steps"][0]["children"];
    assert_eq!(children[0]["name"], "delete-volume[0]", "{body}");
    assert_eq!(children[0]["item"], "stale-a", "{body}");
    assert_eq!(children[1]["item"], "stale-b", "{body}");
    assert_eq!(children[1]["status"], "succeeded", "{body}");
    assert!(names(&cms).await.is_empty(), "the rehearsal deleted both");
}

#[tokio::test]
async fn after_a_failed_iteration_no_new_one_starts_by_default() {
    let (ns, cms) = setup("fe-abort").await;
    create(&cms, "pg-1", json!({}), json!({"role": "primary"})).await;
    create(&cms, "pg-3", json!({}), json!({"role": "replica"})).await;
    // The param-list plan with the default `onError: abort` between iterations.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abort.yaml");
    let text =
        std::fs::read_to_string(support::clusters::repo_dir().join("tests/data/plans/language/for-each-params.yaml"))
            .unwrap();
    assert!(text.contains("      onError: continue\n"));
    std::fs::write(&path, text.replace("      onError: continue\n", "")).unwrap();
    let (mut plans, errors) = recoverd::plan::load_paths(std::slice::from_ref(&path));
    assert!(errors.is_empty(), "{errors:?}");
    let plan = recoverd::plan::compile_one(&plans.remove(0), None).unwrap();
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &plan, &ns, &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let c = &record.steps[0].children;
    let statuses: Vec<_> = c.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            StepStatus::Succeeded,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Skipped,
            StepStatus::Skipped,
            StepStatus::Skipped,
        ],
        "{c:#?}"
    );
    assert!(
        c[4].error.as_deref().unwrap().contains("an earlier iteration failed"),
        "{c:#?}"
    );
    let pg3 = cms.get("pg-3").await.unwrap().data.unwrap();
    assert!(!pg3.contains_key("was"), "pg-3 was not touched: {pg3:?}");
}

#[tokio::test]
async fn a_tolerated_failure_inside_an_iteration_makes_the_run_succeeded_with_errors() {
    let (ns, cms) = setup("fe-tolerated").await;
    create(&cms, "pg-1", json!({}), json!({"role": "primary"})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;

    let record = run(reg, &language("for-each-tolerated.yaml"), &ns, &[]).await;

    assert_eq!(record.phase, Phase::SucceededWithErrors, "{record:#?}");
    assert_eq!(record.steps[0].status, StepStatus::Succeeded);
    let failed = &record.steps[0].children[1];
    assert!(failed.continued && failed.status == StepStatus::Failed, "{failed:#?}");
    assert!(record.error.as_deref().unwrap().contains("fence[1]"), "{record:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_inside_an_iteration_is_announced_naming_the_iteration() {
    use recoverd::notify::{Notifier, NotifyConfig, NotifyFormat};
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    let notifier = Notifier::start(NotifyConfig {
        url,
        format: NotifyFormat::Slack,
        template: "{{ plan }}: {{ summary }} at {{ step }}".into(),
    })
    .unwrap();
    let app = support::server::app_notifying(&[approval_plan("http://127.0.0.1:1")], notifier).await;
    let (_, run) = app.post("/api/v1/plans/ops/each-site/runs", &json!({})).await;
    let id = run["id"].as_str().unwrap().to_string();

    support::server::eventually("the approval notice", Duration::from_secs(30), || async {
        got.lock()
            .unwrap()
            .iter()
            .any(|b| b["text"] == "ops/each-site: is waiting for approval at promote[0].decide")
    })
    .await;
    app.post(&format!("/api/v1/runs/{id}/cancel"), &json!({})).await;
    let done = app.finished(&id).await;
    assert_eq!(done["phase"], "Cancelled", "{done}");
}

#[tokio::test]
async fn a_for_each_run_again_repeats_only_the_iterations_that_did_not_finish() {
    use recoverd::executor::{Executor, NoObserver, RunControl, RunInput};
    let (ns, cms) = setup("fe-resume").await;
    create(&cms, "pg-1", json!({}), json!({"role": "primary"})).await;
    create(&cms, "pg-3", json!({}), json!({"role": "replica"})).await;
    let reg = registry(support::shared(), WriteMode::Live).await;
    let plan = language("for-each-params.yaml");
    let input = RunInput {
        params: [("ns".to_string(), json!(ns))].into(),
        alert: None,
    };
    let executor = Executor::new(reg);
    let mut record = executor.new_record("resume", &plan, &input);
    let control = RunControl::default();
    executor
        .execute(&plan, &input, &mut record, &NoObserver, &control)
        .await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let before = record.steps[0].children.clone();

    // The missing instance appears; the same run goes on from where it failed.
    create(&cms, "pg-2", json!({}), json!({"role": "replica"})).await;
    executor
        .execute(&plan, &input, &mut record, &NoObserver, &control)
        .await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    let after = &record.steps[0].children;
    for i in [0, 1, 4, 5] {
        assert_eq!(
            after[i].finished_at, before[i].finished_at,
            "{} finished before and was not run again",
            after[i].name
        );
    }
    assert_eq!(after[2].status, StepStatus::Succeeded, "{after:#?}");
    assert_ne!(after[3].finished_at, before[3].finished_at);
    assert_eq!(
        cms.get("pg-2").await.unwrap().data.unwrap()["was"],
        "replica before resume"
    );
}

/// An iteration interrupted between its steps goes on with what its finished steps read: the
/// second step of `mark[1]` failed after the first read the role, and on resume it writes that
/// role without reading it again.
#[tokio::test]
async fn a_resumed_iteration_uses_what_its_finished_steps_read() {
    use recoverd::executor::{Executor, NoObserver, RunControl, RunInput};
    let (ns, cms) = setup("fe-resume-values").await;
    create(&cms, "pg-1", json!({}), json!({"role": "primary"})).await;
    create(&cms, "pg-3", json!({}), json!({"role": "replica"})).await;
    // pg-2 can be read but not written: record-role fails after read-role succeeded.
    let frozen: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "pg-2"}, "data": {"role": "replica"}, "immutable": true}))
            .unwrap();
    cms.create(&PostParams::default(), &frozen).await.unwrap();
    let reg = registry(support::shared(), WriteMode::Live).await;
    let plan = language("for-each-params.yaml");
    let input = RunInput {
        params: [("ns".to_string(), json!(ns))].into(),
        alert: None,
    };
    let executor = Executor::new(reg);
    let mut record = executor.new_record("resume", &plan, &input);
    let control = RunControl::default();
    executor
        .execute(&plan, &input, &mut record, &NoObserver, &control)
        .await;
    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let children = &record.steps[0].children;
    assert_eq!(children[2].status, StepStatus::Succeeded, "{children:#?}");
    assert_eq!(children[3].status, StepStatus::Failed, "{children:#?}");
    let read_at = children[2].finished_at.clone();

    // pg-2 can be written again (re-created with a role read must not be used: "gone").
    cms.delete("pg-2", &Default::default()).await.unwrap();
    create(&cms, "pg-2", json!({}), json!({"role": "gone"})).await;
    executor
        .execute(&plan, &input, &mut record, &NoObserver, &control)
        .await;

    assert_eq!(record.phase, Phase::Succeeded, "{record:#?}");
    assert_eq!(record.steps[0].children[2].finished_at, read_at, "not read again");
    assert_eq!(
        cms.get("pg-2").await.unwrap().data.unwrap()["was"],
        "replica before resume"
    );
}

/// The CRD (`recoverd crd`) takes forEach steps and a templated maxObjects, and keeps the steps
/// inside a forEach whole (nothing pruned).
#[tokio::test]
async fn the_crd_accepts_for_each_and_a_templated_max_objects_and_keeps_them_whole() {
    let clusters = support::shared();
    let ns = clusters.namespace("fe-crd").await;
    let repo = support::clusters::repo_dir();
    let kubectl = |args: &[&str]| {
        let out = clusters.kubectl("edge").args(args).output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let crd = repo.join("crds/recoverd.io.yaml");
    let (ok, text) = kubectl(&["apply", "-f", crd.to_str().unwrap()]);
    assert!(ok, "{text}");
    support::server::eventually("RecoveryPlans served", Duration::from_secs(20), || async {
        kubectl(&["get", "recoveryplans", "-A"]).0
    })
    .await;
    for file in ["for-each-params.yaml", "delete-selected-templated.yaml"] {
        let plan = std::fs::read_to_string(repo.join("tests/data/plans/language").join(file))
            .unwrap()
            .replace("namespace: recoverd}", &format!("namespace: {ns}}}"));
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &plan).unwrap();
        let (ok, text) = kubectl(&["apply", "-f", tmp.path().to_str().unwrap()]);
        assert!(ok, "{file}: {text}");
    }
    let (ok, text) = kubectl(&["get", "-n", &ns, "recoveryplan", "for-each-params", "-o", "json"]);
    assert!(ok, "{text}");
    let stored: Value = serde_json::from_str(&text).unwrap();
    let inner = &stored["spec"]["steps"][0]["forEach"]["steps"];
    assert_eq!(inner[1]["patch"]["override"]["fieldPath"], "data.was", "{stored}");
    assert_eq!(inner[0]["readField"]["outputKey"], "role", "{stored}");
    let (ok, text) = kubectl(&[
        "get",
        "-n",
        &ns,
        "recoveryplan",
        "delete-selected-templated",
        "-o",
        "jsonpath={.spec.steps[0].delete.maxObjects}",
    ]);
    assert!(ok, "{text}");
    assert_eq!(text, "{{ Values.max }}");
}

#[tokio::test]
async fn an_approval_nobody_can_give_inside_a_tolerated_for_each_still_stops_the_run() {
    let reg = registry(support::shared(), WriteMode::Live).await;

    // `run` cannot ask anyone (no --approve): every approval step fails.
    let record = run(reg, &language("for-each-approval.yaml"), "db", &[]).await;

    assert_eq!(record.phase, Phase::Failed, "{record:#?}");
    let step = &record.steps[0];
    assert!(!step.continued, "{step:#?}");
    assert_eq!(step.reason.as_deref(), Some("approval-unavailable"));
    assert_eq!(record.steps[1].status, StepStatus::Pending, "nothing after it ran");
}

#[tokio::test]
async fn recoverd_run_prints_each_iteration_with_its_item() {
    let clusters = support::shared();
    let (ns, cms) = setup("fe-cli").await;
    for n in ["stale-a", "stale-b"] {
        create(&cms, n, json!({"app": "stale"}), json!({})).await;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recoverd"))
        .current_dir(support::clusters::repo_dir())
        .args(["run", "tests/data/plans/language/for-each-selected.yaml"])
        .arg("--kubeconfig")
        .arg(clusters.kubeconfig())
        .args(["--param", &format!("ns={ns}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for line in [
        "▶ delete-volume (forEach)",
        "  ▶ delete-volume[0] (delete on north, item stale-a)",
        "  ▶ delete-volume[1] (delete on north, item stale-b)",
        "  ✔ delete-volume[1] (",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    assert!(
        stdout.find("  ✔ delete-volume[0]").unwrap() < stdout.find("✔ delete-volume (").unwrap(),
        "the forEach ends after its iterations:\n{stdout}"
    );
}

/// `recoverd check` renders the steps inside a forEach with its first item when the plan or its
/// params give it, and with a stand-in (notes, not errors) when the items come at run time.
#[test]
fn check_renders_the_steps_inside_a_for_each_with_its_first_item_or_a_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let plan = |name: &str, items: &str| {
        let text = format!(
            "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: {name}}}\nspec:\n  params:\n    instances: [{{name: pg-1}}]\n  steps:\n  - name: read\n    type: readField\n    readField: {{apiVersion: v1, resource: configmaps, name: list, fieldPath: data.list, outputKey: list}}\n  - name: each\n    type: forEach\n    forEach:\n      items: \"{items}\"\n      steps:\n      - type: delete\n        delete: {{apiVersion: v1, resource: configmaps, namespace: \"{{{{ Values.item.ns }}}}\", name: \"{{{{ Values.item.name }}}}\"}}\n"
        );
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let check = |path: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recoverd"))
            .arg("check")
            .arg(path)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };

    // The params' first instance has no `ns`: the plan could never run as written.
    let (code, out) = check(&plan("from-params", "{{ Values.instances }}"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("step \"each\": spec.steps[1].forEach.steps[0].delete.namespace") && out.contains("undefined"),
        "{out}"
    );
    // Items read at run time: what they hold is not known, so a note, not an error.
    let (code, out) = check(&plan("read-later", "{{ Values.list }}"));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("note:") && out.contains("not checked"), "{out}");
}

/// The steps of forEach iterations count in the step metrics as any step does: one duration per
/// iteration's step, and a failure the run went on past (`onError: continue`) by its reason.
#[tokio::test]
async fn iteration_steps_count_in_the_step_metrics() {
    use support::server::{app, counting_hook, counts, metric};
    let (hook, hits) = counting_hook(1).await;
    let plan = format!(
        "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: each-call, namespace: ops}}\n\
         spec:\n  mode: manual\n  params: {{hook: \"{hook}\"}}\n  steps:\n\
         \x20 - name: call-each\n    type: forEach\n    forEach:\n      items: [a, b]\n      steps:\n\
         \x20     - name: call\n        type: http\n        onError: continue\n\
         \x20       http: {{url: \"{{{{ Values.hook }}}}/{{{{ 'step' if Values.item == 'a' else 'nope' }}}}/0\", method: POST}}\n"
    );
    let app = app(&[("each-call.yaml", plan)]).await;
    let (status, run) = app.post("/api/v1/plans/ops/each-call/runs", &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let done = app.finished(run["id"].as_str().unwrap()).await;
    assert_eq!(done["phase"], "SucceededWithErrors", "{done}");
    assert_eq!(counts(&hits), [1], "item a called the hook; b's URL is answered 404");
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            "recoverd_step_failures_total{plan=\"ops/each-call\",reason=\"http-status\",type=\"http\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "recoverd_step_duration_seconds_count{plan=\"ops/each-call\",type=\"http\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "recoverd_step_duration_seconds_count{plan=\"ops/each-call\",type=\"forEach\"}"
        ),
        1.0,
        "{m}"
    );
}
