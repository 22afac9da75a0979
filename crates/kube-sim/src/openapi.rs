//! OpenAPI v3 documents (pure, no I/O) for `kubectl`: `/openapi/v3` lists one document per
//! group version, and each document has the resource's paths — whose write operations declare
//! the `fieldValidation` parameter, so `kubectl apply` and `create` leave validation to the
//! server instead of downloading the protobuf OpenAPI v2 document the simulator does not serve
//! — and the schemas of the built-in types and of the CRDs (`kubectl explain`, client-side
//! apply's patch strategies).
//!
//! kube-apiserver v1.20 has no OpenAPI v3 and no `fieldValidation`; this is where the simulator
//! behaves like a newer server on purpose.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::builtin::openapi_definitions;
use super::discovery::{ResourceType, Resources};

fn v3_refs(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => {
                            Value::String(r.replace("#/definitions/", "#/components/schemas/"))
                        }
                        _ => v3_refs(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(v3_refs).collect()),
        other => other.clone(),
    }
}

/// `io.cnpg.postgresql.v1.Cluster` for `postgresql.cnpg.io/v1` `Cluster`.
pub fn crd_schema_name(t: &ResourceType) -> String {
    let mut parts: Vec<&str> = t.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), t.version, t.kind)
}

fn schema_ref(t: &ResourceType) -> String {
    match t.builtin {
        Some(b) => b.definition.to_string(),
        None => crd_schema_name(t),
    }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn components(resources: &Resources) -> Map<String, Value> {
    let mut schemas: Map<String, Value> = openapi_definitions()
        .iter()
        .map(|(k, v)| (k.clone(), v3_refs(v)))
        .collect();
    for t in resources.types.iter().filter(|t| t.is_custom()) {
        let mut s = t
            .schema
            .as_ref()
            .map(|s| s.raw().clone())
            .unwrap_or(json!({"type": "object"}));
        if let Some(m) = s.as_object_mut() {
            let props = m.entry("properties").or_insert_with(|| json!({}));
            if let Some(p) = props.as_object_mut() {
                p.insert("apiVersion".into(), json!({"type": "string"}));
                p.insert("kind".into(), json!({"type": "string"}));
                p.insert(
                    "metadata".into(),
                    json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
                );
            }
            m.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": t.group, "version": t.version, "kind": t.kind}]),
            );
        }
        schemas.insert(crd_schema_name(t), s);
    }
    schemas
}

fn param(name: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
}

fn operation(t: &ResourceType, action: &str, write: bool) -> Value {
    let mut params = vec![param("pretty", "string")];
    if write {
        params.push(param("dryRun", "string"));
        params.push(param("fieldManager", "string"));
        params.push(param("fieldValidation", "string"));
    }
    if action == "patch" {
        params.push(param("force", "boolean"));
    }
    let body = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_ref(t))}}}});
    let mut op = json!({
        "operationId": format!("{action}{}", t.kind),
        "parameters": params,
        "responses": {"200": body.clone()},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
    });
    if write && action != "delete" {
        op["requestBody"] = body;
    }
    op
}

/// The document of one group version.
pub fn group_version(resources: &Resources, group: &str, version: &str) -> Option<Value> {
    let types: Vec<&ResourceType> = resources
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let base = format!("/{}", gv_path(group, version));
    for t in types {
        let collection = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{base}/{}", t.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"get": operation(t, "list", false), "post": operation(t, "post", true),
                   "delete": operation(t, "deletecollection", true)}),
        );
        let item = format!("{collection}/{{name}}");
        paths.insert(
            item.clone(),
            json!({"get": operation(t, "get", false), "put": operation(t, "put", true),
                   "patch": operation(t, "patch", true), "delete": operation(t, "delete", true)}),
        );
        if t.has_status() {
            paths.insert(
                format!("{item}/status"),
                json!({"get": operation(t, "get", false), "put": operation(t, "put", true),
                       "patch": operation(t, "patch", true)}),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (recoverd simulator)", "version": "v1.20.2"},
        "paths": paths,
        "components": {"schemas": components(resources)},
    }))
}

/// `/openapi/v3`: where each group version's document is.
pub fn index(resources: &Resources) -> Value {
    let mut gvs: Vec<(String, String)> = resources
        .types
        .iter()
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    let mut paths = Map::new();
    for (g, v) in gvs {
        let doc = group_version(resources, &g, &v).unwrap_or(Value::Null);
        let hash: String = Sha256::digest(doc.to_string().as_bytes())
            .iter()
            .take(16)
            .map(|b| format!("{b:02X}"))
            .collect();
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_patch_operation_declares_field_validation() {
        let r = Resources::new([]);
        let doc = group_version(&r, "", "v1").unwrap();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "ConfigMap");
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert!(index(&r)["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
    }
}
