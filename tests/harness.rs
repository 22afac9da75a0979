//! The test harness itself: real clusters are separate, and the real CRDs validate.

mod support;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

fn cnpg_clusters(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster");
    Api::namespaced_with(client, ns, &ApiResource::from_gvk(&gvk))
}

fn object(file: &str) -> DynamicObject {
    let path = support::clusters::repo_dir().join("tests/data/objects").join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_configmap_created_in_one_cluster_is_absent_in_the_other() {
    let clusters = support::shared();
    let ns = clusters.namespace("separate").await;
    let north: Api<ConfigMap> = Api::namespaced(clusters.client("north").await, &ns);
    let south: Api<ConfigMap> = Api::namespaced(clusters.client("south").await, &ns);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "only-north"}, "data": {"k": "v"}
    }))
    .unwrap();
    north.create(&PostParams::default(), &cm).await.unwrap();

    assert_eq!(north.get("only-north").await.unwrap().data.unwrap()["k"], "v");
    assert!(south.get_opt("only-north").await.unwrap().is_none());
}

#[tokio::test]
async fn each_cluster_has_its_own_apiserver_and_context() {
    let clusters = support::shared();
    assert_eq!(clusters.names(), ["edge", "north", "south"]);
    let servers: std::collections::BTreeSet<_> = clusters
        .names()
        .iter()
        .map(|n| clusters.cluster(n).server.clone())
        .collect();
    assert_eq!(servers.len(), 3);
    let out = clusters
        .kubectl("south")
        .args(["config", "current-context"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "north");
    let out = clusters
        .kubectl("south")
        .args(["get", "ns", "default", "-o", "name"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_cnpg_cluster_crd_accepts_a_valid_object() {
    let clusters = support::shared();
    let ns = clusters.namespace("cnpg-valid").await;
    let api = cnpg_clusters(clusters.client("north").await, &ns);
    let created = api
        .create(&PostParams::default(), &object("cnpg-cluster.yaml"))
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["replica"]["primary"], "pg-north");
    // Defaulting from the CRD schema ran on the server.
    assert!(
        created.data["spec"]["logLevel"].is_string(),
        "{:?}",
        created.data["spec"]
    );
}

#[tokio::test]
async fn the_cnpg_cluster_crd_rejects_an_invalid_object_with_422() {
    let clusters = support::shared();
    let ns = clusters.namespace("cnpg-invalid").await;
    let api = cnpg_clusters(clusters.client("north").await, &ns);
    let err = api
        .create(&PostParams::default(), &object("cnpg-cluster-invalid.yaml"))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert_eq!(status.reason, "Invalid");
            assert!(status.message.contains("spec.instances"), "{}", status.message);
            assert!(status.message.contains("spec.replica.enabled"), "{}", status.message);
        }
        other => panic!("expected a 422 from the apiserver, got {other:?}"),
    }
}

#[tokio::test]
async fn the_percona_crd_is_installed_and_servable() {
    let clusters = support::shared();
    let out = clusters
        .kubectl("edge")
        .args([
            "get",
            "crd",
            "perconapgclusters.pgv2.percona.com",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True");
}
