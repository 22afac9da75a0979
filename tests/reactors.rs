//! Reactors (src/reactor/), the operators a world plays: each firing runs beside the watch (a
//! delay never holds back the next reaction), acts only on the object that fired it, re-creates
//! a deleted object without overwriting one someone else created, writes from a fresh read with
//! resourceVersion preconditions and retries a conflict, is stopped when it triggers itself
//! forever, and reports what went wrong so that a rehearsal fails. On the built-in simulator
//! (through the registry's clients, as on a real cluster) and, for the conflict, on a real
//! apiserver behind the fault proxy.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use recoverd::cluster::{Registry, WriteMode};
use recoverd::reactor::Reactors;
use serde_json::{json, Value};

/// A simulator serving the world `yaml` (written to a temporary file), seeded, its reactors
/// started.
struct Sim {
    _sandbox: recoverd::sim::Sandbox,
    registry: Arc<Registry>,
    reactors: Reactors,
    _dir: tempfile::TempDir,
}

async fn sim(yaml: &str) -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("world.yaml");
    std::fs::write(&path, yaml).unwrap();
    let sandbox = recoverd::sim::Sandbox::start(&path, None, None).await.unwrap();
    let registry = Arc::new(sandbox.registry().await.unwrap());
    let (reactors, _) = seed(registry.clone(), &path).await;
    Sim {
        _sandbox: sandbox,
        registry,
        reactors,
        _dir: dir,
    }
}

async fn seed(registry: Arc<Registry>, world: &Path) -> (Reactors, Vec<recoverd::world::Seeded>) {
    let (w, base) = recoverd::world::load(world).unwrap();
    let seeded = recoverd::world::seed(&registry, &w, &base).await.unwrap();
    let reactors = recoverd::reactor::start(registry, &w.reactors).await.unwrap();
    (reactors, seeded)
}

async fn api(registry: &Registry, cluster: &str, resource: &str, ns: &str) -> Api<DynamicObject> {
    let resolved = registry.resolve(cluster, "v1", resource).await.unwrap();
    recoverd::cluster::api_for_object(registry, cluster, &resolved, Some(ns)).unwrap()
}

async fn get(api: &Api<DynamicObject>, name: &str) -> Value {
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

async fn merge(api: &Api<DynamicObject>, name: &str, patch: Value) {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Polls `check` until it holds, for at most 30 s; panics with `what` otherwise.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 30s");
}

async fn data(api: &Api<DynamicObject>, name: &str, key: &str) -> Option<String> {
    get(api, name).await["data"][key].as_str().map(str::to_string)
}

const CONFIGMAP_WORLD: &str = "clusters:
  c:
    objects:
    - {apiVersion: v1, kind: ConfigMap, metadata: {name: cm, namespace: db}, data: {n: '0', a: seeded}}
";

#[tokio::test]
async fn a_reactors_delay_does_not_hold_back_its_next_firing() {
    // Each firing copies data.n at once, then waits an hour before its last action. Were the
    // delay slept in the watch loop, the second change would wait for the first firing's hour.
    let s = sim(&format!(
        "{CONFIGMAP_WORLD}reactors:
- cluster: c
  when: {{apiVersion: v1, resource: configmaps, namespace: db, name: cm, fieldPath: data.n, changed: true}}
  actions:
  - set: [{{fieldPath: data.seen, valueFrom: {{fieldPath: data.n}}}}]
  - after: 1h
    set: [{{fieldPath: data.late, value: 'yes'}}]
"
    ))
    .await;
    let cms = api(&s.registry, "c", "configmaps", "db").await;
    for n in ["1", "2", "3"] {
        merge(&cms, "cm", json!({"data": {"n": n}})).await;
        eventually(&format!("data.seen = {n}"), || async {
            data(&cms, "cm", "seen").await.as_deref() == Some(n)
        })
        .await;
    }
    assert_eq!(data(&cms, "cm", "late").await, None);
    assert!(s.reactors.problems().is_empty(), "{:?}", s.reactors.problems());
}

#[tokio::test]
async fn a_reactor_acts_only_on_the_object_that_fired_it_not_on_its_replacement() {
    let s = sim(&format!(
        "{CONFIGMAP_WORLD}reactors:
- cluster: c
  when: {{apiVersion: v1, resource: configmaps, namespace: db, name: cm, fieldPath: data.go, equals: 'yes'}}
  actions:
  - after: 500ms
    set: [{{fieldPath: data.done, value: 'yes'}}]
"
    ))
    .await;
    let cms = api(&s.registry, "c", "configmaps", "db").await;
    merge(&cms, "cm", json!({"data": {"go": "yes"}})).await;
    // Replaced before the reactor acts: another object of the same name.
    cms.delete("cm", &DeleteParams::default()).await.unwrap();
    let new: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "db"}, "data": {"mine": "1"}
    }))
    .unwrap();
    let new = cms.create(&PostParams::default(), &new).await.unwrap();
    eventually("the firing ended", || async { s.reactors.ended() >= 1 }).await;
    let now = get(&cms, "cm").await;
    assert_eq!(now["metadata"]["uid"], json!(new.metadata.uid), "{now}");
    assert_eq!(now["data"], json!({"mine": "1"}), "{now}");
    assert!(s.reactors.problems().is_empty(), "{:?}", s.reactors.problems());
}

#[tokio::test]
async fn re_creating_a_deleted_object_never_overwrites_one_someone_else_created() {
    let s = sim(&format!(
        "{CONFIGMAP_WORLD}reactors:
- cluster: c
  when: {{apiVersion: v1, resource: configmaps, namespace: db, name: cm, deleted: true}}
  actions:
  - after: 500ms
    recreate: true
"
    ))
    .await;
    let cms = api(&s.registry, "c", "configmaps", "db").await;
    cms.delete("cm", &DeleteParams::default()).await.unwrap();
    let theirs: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "db"}, "data": {"a": "theirs"}
    }))
    .unwrap();
    let theirs = cms.create(&PostParams::default(), &theirs).await.unwrap();
    eventually("the firing ended", || async { s.reactors.ended() >= 1 }).await;
    let now = get(&cms, "cm").await;
    assert_eq!(now["metadata"]["uid"], json!(theirs.metadata.uid), "{now}");
    assert_eq!(now["data"], json!({"a": "theirs"}), "{now}");
    assert!(s.reactors.problems().is_empty(), "{:?}", s.reactors.problems());

    // Nobody else there: the reactor brings it back as it was, a new object.
    let before = get(&cms, "cm").await["metadata"]["uid"].clone();
    cms.delete("cm", &DeleteParams::default()).await.unwrap();
    eventually("cm re-created", || async {
        match cms.get_opt("cm").await.unwrap() {
            Some(o) => json!(o.metadata.uid) != before,
            None => false,
        }
    })
    .await;
    assert_eq!(data(&cms, "cm", "a").await.as_deref(), Some("theirs"));
}

#[tokio::test]
async fn a_reaction_that_triggers_itself_forever_is_stopped_with_a_clear_error() {
    // Each firing writes a new token into the very field that fires it.
    let s = sim(&format!(
        "{CONFIGMAP_WORLD}reactors:
- cluster: c
  when: {{apiVersion: v1, resource: configmaps, namespace: db, name: cm, fieldPath: data.n, changed: true}}
  actions:
  - set: [{{fieldPath: data.n, generate: token}}]
"
    ))
    .await;
    let cms = api(&s.registry, "c", "configmaps", "db").await;
    merge(&cms, "cm", json!({"data": {"n": "1"}})).await;
    eventually("the loop guard", || async { !s.reactors.problems().is_empty() }).await;
    let problems = s.reactors.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "reactor on c (v1 configmaps db/cm): stopped — it fired 20 times in a row on a change made by reactors"
        ),
        "{problems:?}"
    );
    // Stopped: no more writes.
    let rv = get(&cms, "cm").await["metadata"]["resourceVersion"].clone();
    let fired = s.reactors.fired();
    assert!(fired <= recoverd::reactor::MAX_CHAIN as usize + 1, "{fired}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&cms, "cm").await["metadata"]["resourceVersion"], rv);
}

#[tokio::test]
async fn conditions_several_reactors_set_at_once_are_all_kept() {
    // Four "controllers" answer the same change, each with its own condition, at the same
    // moment: each writes from a fresh read with its resourceVersion as precondition, and a
    // conflict is read again and retried, so none overwrites another's.
    let mut world = String::from(
        "clusters:
  c:
    objects:
    - apiVersion: v1
      kind: Pod
      metadata: {name: p, namespace: db}
      spec: {containers: [{name: c, image: busybox}]}
      status: {phase: Pending}
reactors:
",
    );
    for t in ["A", "B", "C", "D"] {
        world += &format!(
            "- cluster: c
  when: {{apiVersion: v1, resource: pods, namespace: db, name: p, fieldPath: metadata.labels.go, equals: 'yes'}}
  actions:
  - conditions: [{{type: {t}, status: 'True'}}]
"
        );
    }
    let s = sim(&world).await;
    let pods = api(&s.registry, "c", "pods", "db").await;
    merge(&pods, "p", json!({"metadata": {"labels": {"go": "yes"}}})).await;
    eventually("four firings ended", || async { s.reactors.ended() >= 4 }).await;
    assert!(s.reactors.problems().is_empty(), "{:?}", s.reactors.problems());
    let pod = get(&pods, "p").await;
    let mut types: Vec<&str> = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(types, ["A", "B", "C", "D"], "{pod}");
}

#[tokio::test]
async fn a_reactor_keeps_reacting_across_watches_that_end() {
    // Every configmap watch ends after one event: the reactor watches again and still fires.
    let s = sim(&format!(
        "{}    faults: {{watchEventLimit: 1, onlyPath: /configmaps}}
reactors:
- cluster: c
  when: {{apiVersion: v1, resource: configmaps, namespace: db, name: cm, fieldPath: data.n, changed: true}}
  actions:
  - set: [{{fieldPath: data.seen, valueFrom: {{fieldPath: data.n}}}}]
",
        CONFIGMAP_WORLD
    ))
    .await;
    let cms = api(&s.registry, "c", "configmaps", "db").await;
    for n in ["1", "2", "3"] {
        merge(&cms, "cm", json!({"data": {"n": n}})).await;
        eventually(&format!("data.seen = {n}"), || async {
            data(&cms, "cm", "seen").await.as_deref() == Some(n)
        })
        .await;
    }
    assert!(s.reactors.problems().is_empty(), "{:?}", s.reactors.problems());
}

#[tokio::test]
async fn a_conflicting_write_is_read_again_and_retried() {
    // On a real apiserver, behind the fault proxy: the reactor's first write is answered 409.
    let clusters = support::shared();
    let ns = clusters.namespace("reactor-conflict").await;
    let proxy = support::proxy::FaultProxy::in_front_of(clusters, "north");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    clusters.write_kubeconfig(&kubeconfig, &BTreeMap::from([("north".to_string(), proxy.url())]));
    let direct = support::run::registry(clusters, WriteMode::Live).await;
    let proxied = support::run::registry_from(&kubeconfig, WriteMode::Live).await;
    let world = dir.path().join("world.yaml");
    std::fs::write(
        &world,
        format!(
            "clusters:
  north:
    objects:
    - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: cm, namespace: {ns}}}, data: {{n: '0'}}}}
reactors:
- cluster: north
  when: {{apiVersion: v1, resource: configmaps, namespace: {ns}, name: cm, fieldPath: data.go, equals: 'yes'}}
  actions:
  - set: [{{fieldPath: data.done, value: 'yes'}}]
"
        ),
    )
    .unwrap();
    let (w, base) = recoverd::world::load(&world).unwrap();
    recoverd::world::seed(&direct, &w, &base).await.unwrap();
    let reactors = recoverd::reactor::start(proxied, &w.reactors).await.unwrap();
    // Only the reactor's writes carry its field manager.
    proxy.set(support::proxy::Faults {
        fail_next: 1,
        error_status: 409,
        only_path: Some("fieldManager=recoverd-reactor".into()),
        ..Default::default()
    });
    let cms = api(&direct, "north", "configmaps", &ns).await;
    merge(&cms, "cm", json!({"data": {"go": "yes"}})).await;
    eventually("data.done = yes", || async {
        data(&cms, "cm", "done").await.as_deref() == Some("yes")
    })
    .await;
    assert_eq!(proxy.stats().errors, 1, "the conflict was never injected");
    assert!(reactors.problems().is_empty(), "{:?}", reactors.problems());
}

/// A rehearsal checks its expectations only once the world's operators are done: `settle`
/// waits for a late action, which then counts; and a reactor still acting past the limit is
/// itself a problem.
#[tokio::test]
async fn settling_waits_for_late_actions_and_reports_those_still_acting() {
    let world = |after: &str| {
        format!(
            "{CONFIGMAP_WORLD}reactors:
- cluster: c
  when: {{apiVersion: v1, resource: configmaps, namespace: db, name: cm, fieldPath: data.n, equals: '1'}}
  actions:
  - after: {after}
    set: [{{fieldPath: data.late, value: 'yes'}}]
"
        )
    };
    let s = sim(&world("700ms")).await;
    let cms = api(&s.registry, "c", "configmaps", "db").await;
    merge(&cms, "cm", json!({"data": {"n": "1"}})).await;
    // (The watch sees the change within moments; settling then waits out the 700 ms delay.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.reactors.settle(Duration::from_secs(10)).await);
    assert_eq!(data(&cms, "cm", "late").await.as_deref(), Some("yes"));
    assert!(s.reactors.problems().is_empty(), "{:?}", s.reactors.problems());

    let s = sim(&world("1h")).await;
    let cms = api(&s.registry, "c", "configmaps", "db").await;
    merge(&cms, "cm", json!({"data": {"n": "1"}})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!s.reactors.settle(Duration::from_millis(300)).await);
    let problems = s.reactors.problems();
    assert!(problems.iter().any(|p| p.contains("still acting")), "{problems:?}");
}
