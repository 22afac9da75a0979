//! The resources a simulated cluster serves (pure, no I/O): the built-in ones and one per
//! served version of every stored CustomResourceDefinition, and the discovery documents that
//! describe them (`/api`, `/api/v1`, `/apis`, `/apis/{group}`, `/apis/{group}/{version}`) as
//! kube-apiserver v1.20 writes them, `storageVersionHash` included.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::builtin::{self, Builtin, BUILTINS};
use super::schema::CrdSchema;
use super::typed::Ty;

/// One resource (one version of it).
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<String>,
    /// Served subresources and their verbs.
    pub subresources: Vec<(String, Vec<String>)>,
    /// The CRD's `scale` subresource (replica paths), if any.
    pub scale: Option<Map<String, Value>>,
    pub builtin: Option<&'static Builtin>,
    pub schema: Option<CrdSchema>,
    pub printer_columns: Vec<Value>,
    pub generation: bool,
    /// The version objects are stored in.
    pub storage_version: String,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|(s, _)| s == "status")
    }

    pub fn is_custom(&self) -> bool {
        self.builtin.is_none()
    }

    /// Where objects of this resource are kept, whatever version is asked for.
    pub fn storage_key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    /// The field types server-side apply and `managedFields` work with.
    pub fn ty(&self) -> Ty {
        match (&self.builtin, &self.schema) {
            (Some(b), _) => builtin::definition(b.definition),
            (None, Some(s)) => s.ty(),
            (None, None) => Ty::Untyped,
        }
    }

    /// The empty object a create starts from.
    pub fn zero(&self) -> Value {
        match self.builtin {
            Some(b) => builtin::zero(b.kind),
            None => json!({"apiVersion": self.api_version(), "kind": self.kind}),
        }
    }

    fn from_builtin(b: &'static Builtin) -> Self {
        ResourceType {
            group: b.group.into(),
            version: b.version.into(),
            plural: b.plural.into(),
            singular: b.kind.to_lowercase(),
            kind: b.kind.into(),
            list_kind: format!("{}List", b.kind),
            namespaced: b.namespaced,
            short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
            categories: b.categories.iter().map(|s| s.to_string()).collect(),
            verbs: b.verbs.iter().map(|s| s.to_string()).collect(),
            subresources: b
                .subresources
                .iter()
                .map(|(n, v)| (n.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            scale: None,
            builtin: Some(b),
            schema: None,
            printer_columns: Vec::new(),
            generation: b.generation,
            storage_version: b.storage_version.into(),
        }
    }

    /// One entry per served version of a CRD.
    pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
        let spec = &crd["spec"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let names = &spec["names"];
        let kind = s(&names["kind"]);
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        let storage_version = spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["storage"] == json!(true))
            .map(|v| s(&v["name"]))
            .unwrap_or_default();
        let mut out = Vec::new();
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"] != json!(true) {
                continue;
            }
            let mut subresources = Vec::new();
            let status = v.pointer("/subresources/status").is_some();
            let scale = v.pointer("/subresources/scale").and_then(Value::as_object).cloned();
            if status {
                subresources.push(("status".to_string(), vec!["get", "patch", "update"]));
            }
            if scale.is_some() {
                subresources.push(("scale".to_string(), vec!["get", "patch", "update"]));
            }
            let singular = names["singular"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| kind.to_lowercase());
            out.push(ResourceType {
                group: s(&spec["group"]),
                version: s(&v["name"]),
                plural: s(&names["plural"]),
                singular,
                kind: kind.clone(),
                list_kind: names["listKind"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{kind}List")),
                namespaced: spec["scope"] == json!("Namespaced"),
                short_names: list(&names["shortNames"]),
                categories: list(&names["categories"]),
                verbs: [
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "create",
                    "update",
                    "watch",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                subresources: subresources
                    .into_iter()
                    .map(|(n, v)| (n, v.into_iter().map(str::to_string).collect()))
                    .collect(),
                scale,
                builtin: None,
                schema: v.pointer("/schema/openAPIV3Schema").cloned().map(CrdSchema::new),
                printer_columns: v["additionalPrinterColumns"].as_array().cloned().unwrap_or_default(),
                generation: true,
                storage_version: storage_version.clone(),
            });
        }
        out
    }
}

/// Every resource a cluster serves.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub types: Vec<ResourceType>,
}

impl Resources {
    /// The built-in resources and those of the given CRDs.
    pub fn new<'a>(crds: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut types: Vec<ResourceType> = BUILTINS.iter().map(ResourceType::from_builtin).collect();
        for crd in crds {
            types.extend(ResourceType::from_crd(crd));
        }
        Resources { types }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    pub fn find_plural(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.plural == plural)
    }

    pub fn find_kind(&self, group: &str, version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
    }

    /// Groups in the order `/apis` lists them (built-in groups first, then CRD groups by name),
    /// each with its versions.
    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        let mut crd_groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &self.types {
            if t.group.is_empty() {
                continue;
            }
            if t.builtin.is_some() {
                match out.iter_mut().find(|(g, _)| *g == t.group) {
                    Some((_, vs)) if !vs.contains(&t.version) => vs.push(t.version.clone()),
                    Some(_) => {}
                    None => out.push((t.group.clone(), vec![t.version.clone()])),
                }
            } else {
                let vs = crd_groups.entry(t.group.clone()).or_default();
                if !vs.contains(&t.version) {
                    vs.push(t.version.clone());
                }
            }
        }
        out.extend(crd_groups);
        out
    }

    pub fn api_versions(&self, server: &str) -> Value {
        json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
    }

    fn group_json(group: &str, versions: &[String]) -> Value {
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        let preferred = versions.first().cloned().unwrap_or_default();
        json!({"name": group, "versions": vs,
            "preferredVersion": {"groupVersion": format!("{group}/{preferred}"), "version": preferred}})
    }

    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self.groups().iter().map(|(g, vs)| Self::group_json(g, vs)).collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.types.iter().any(|t| t.group == group)
    }

    pub fn group(&self, group: &str) -> Option<Value> {
        let (g, vs) = self.groups().into_iter().find(|(g, _)| g == group)?;
        let mut v = Self::group_json(&g, &vs);
        let m = v.as_object_mut()?;
        m.insert("kind".into(), json!("APIGroup"));
        m.insert("apiVersion".into(), json!("v1"));
        Some(v)
    }

    /// `/api/v1` or `/apis/{group}/{version}`.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut types: Vec<&ResourceType> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .collect();
        if types.is_empty() {
            return None;
        }
        types.sort_by(|a, b| a.plural.cmp(&b.plural));
        let mut resources = Vec::new();
        for t in types {
            let mut r = Map::new();
            r.insert("name".into(), json!(t.plural));
            r.insert("singularName".into(), json!(t.singular));
            r.insert("namespaced".into(), json!(t.namespaced));
            r.insert("kind".into(), json!(t.kind));
            r.insert("verbs".into(), json!(t.verbs));
            if !t.short_names.is_empty() {
                r.insert("shortNames".into(), json!(t.short_names));
            }
            if !t.categories.is_empty() {
                r.insert("categories".into(), json!(t.categories));
            }
            r.insert(
                "storageVersionHash".into(),
                json!(storage_version_hash(&t.group, &t.storage_version, &t.kind)),
            );
            resources.push(Value::Object(r));
            for (sub, verbs) in t.subresources.clone() {
                let mut r = Map::new();
                r.insert("name".into(), json!(format!("{}/{sub}", t.plural)));
                r.insert("singularName".into(), json!(""));
                r.insert("namespaced".into(), json!(t.namespaced));
                if sub == "scale" {
                    r.insert("group".into(), json!("autoscaling"));
                    r.insert("version".into(), json!("v1"));
                    r.insert("kind".into(), json!("Scale"));
                } else {
                    r.insert("kind".into(), json!(t.kind));
                }
                r.insert("verbs".into(), json!(verbs));
                resources.push(Value::Object(r));
            }
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let mut out = Map::new();
        out.insert("kind".into(), json!("APIResourceList"));
        if !group.is_empty() {
            out.insert("apiVersion".into(), json!("v1"));
        }
        out.insert("groupVersion".into(), json!(gv));
        out.insert("resources".into(), Value::Array(resources));
        Some(Value::Object(out))
    }
}

/// The media type of aggregated discovery documents.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for the aggregated discovery document: as kube-apiserver
/// v1.36 negotiates it, any of its clauses naming `apidiscovery.k8s.io/v2`'s
/// `APIGroupDiscoveryList` as JSON (`application/json`, `application/*`, `*/*`) does, whatever
/// the other clauses and the q-values (the simulator does not serve the protobuf form: a clause
/// asking for it counts as another type).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|clause| {
        let params: Vec<String> = clause.split(';').map(|p| p.trim().replace(' ', "")).collect();
        matches!(
            params.first().map(String::as_str),
            Some("application/json" | "application/*" | "*/*")
        ) && params.iter().any(|p| p == "g=apidiscovery.k8s.io")
            && params.iter().any(|p| p == "v=v2")
            && params.iter().any(|p| p == "as=APIGroupDiscoveryList")
    })
}

/// Whether an `Accept` header lets a discovery endpoint answer with its plain document: a
/// clause for JSON, YAML or protobuf (or a wildcard) that asks for no conversion (`as`, `g`,
/// `v`). No header accepts anything.
pub fn plain_acceptable(accept: Option<&str>) -> bool {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    accept.split(',').any(|clause| {
        let mut parts = clause.split(';').map(|p| p.trim().replace(' ', ""));
        let ty = parts.next().unwrap_or_default();
        matches!(
            ty.as_str(),
            "application/json" | "application/yaml" | "application/vnd.kubernetes.protobuf" | "application/*" | "*/*"
        ) && !parts.any(|p| p.starts_with("as=") || p.starts_with("g=") || p.starts_with("v="))
    })
}

/// The entity tag of an aggregated discovery document (a hash of its JSON, as the API server
/// tags the document it serves; clients send it back in `If-None-Match`).
pub fn etag(doc: &serde_json::Value) -> String {
    let digest = sha2::Sha512::digest(doc.to_string().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02X}")).collect();
    format!("\"{hex}\"")
}

impl Resources {
    /// The aggregated discovery document of `/api` (`core`) or `/apis`: every group with its
    /// versions and their resources, as kube-apiserver v1.36 serves it.
    pub fn aggregated(&self, core: bool) -> Value {
        let groups: Vec<(String, Vec<String>)> = if core {
            vec![(String::new(), vec!["v1".to_string()])]
        } else {
            self.groups()
        };
        let items: Vec<Value> = groups
            .iter()
            .map(|(g, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| {
                        json!({"version": v, "resources": self.aggregated_resources(g, v),
                            "freshness": "Current"})
                    })
                    .collect();
                let mut meta = json!({});
                if !g.is_empty() {
                    meta["name"] = json!(g);
                }
                json!({"metadata": meta, "versions": versions})
            })
            .collect();
        json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {}, "items": items})
    }

    fn aggregated_resources(&self, group: &str, version: &str) -> Vec<Value> {
        let mut types: Vec<&ResourceType> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .collect();
        types.sort_by(|a, b| a.plural.cmp(&b.plural));
        types
            .into_iter()
            .map(|t| {
                // Built-in resources leave out the group and version they are served in.
                let kind = if t.builtin.is_some() {
                    json!({"group": "", "version": "", "kind": t.kind})
                } else {
                    json!({"group": t.group, "version": t.version, "kind": t.kind})
                };
                let mut r = Map::new();
                r.insert("resource".into(), json!(t.plural));
                r.insert("responseKind".into(), kind.clone());
                r.insert(
                    "scope".into(),
                    json!(if t.namespaced { "Namespaced" } else { "Cluster" }),
                );
                r.insert("singularResource".into(), json!(t.singular));
                r.insert("verbs".into(), json!(t.verbs));
                if !t.short_names.is_empty() {
                    r.insert("shortNames".into(), json!(t.short_names));
                }
                if !t.categories.is_empty() {
                    r.insert("categories".into(), json!(t.categories));
                }
                let subs: Vec<Value> = t
                    .subresources
                    .iter()
                    .map(|(sub, verbs)| {
                        let kind = if sub == "scale" {
                            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
                        } else {
                            kind.clone()
                        };
                        json!({"subresource": sub, "responseKind": kind, "verbs": verbs})
                    })
                    .collect();
                if !subs.is_empty() {
                    r.insert("subresources".into(), Value::Array(subs));
                }
                Value::Object(r)
            })
            .collect()
    }
}

/// `base64(sha256("group/version/kind")[..8])`, as the API server computes it.
pub fn storage_version_hash(group: &str, version: &str, kind: &str) -> String {
    let digest = Sha256::digest(format!("{group}/{version}/{kind}").as_bytes());
    builtin::base64_encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_version_hashes_match_the_real_api_server() {
        assert_eq!(storage_version_hash("", "v1", "ConfigMap"), "qFsyl6wFWjQ=");
        assert_eq!(
            storage_version_hash("postgresql.cnpg.io", "v1", "Cluster"),
            "Tpdw74pNgSM="
        );
    }

    #[test]
    fn a_crd_adds_its_resource_with_status_and_scale_subresources() {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wg"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size"}}}]}});
        let r = Resources::new([&crd]);
        let list = r.resource_list("example.com", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["widgets", "widgets/status", "widgets/scale"]);
        assert_eq!(list["resources"][0]["singularName"], "widget");
        assert!(r.group_list()["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "example.com"));
    }
}
