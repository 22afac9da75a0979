//! Server-side printing (pure, no I/O): the `meta.k8s.io/v1` `Table` that `kubectl get` asks
//! for (`Accept: application/json;as=Table;…`), with the columns kube-apiserver's printers give
//! the built-in kinds the simulator serves, a CRD's `additionalPrinterColumns` (or Name and
//! Age), ages written as `kubectl` shows them, and each row's object as
//! `PartialObjectMetadata` (or in full, or not at all, per `includeObject`).

use serde_json::{json, Value};

use super::discovery::ResourceType;

/// What each row carries besides its cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(q: Option<&str>) -> Include {
        match q {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// Whether an `Accept` header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn column(name: &str, ty: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description,
        "priority": priority})
}

/// `kubectl`'s age: `45s`, `3m12s`, `14m`, `5h2m`, `3d4h`, `120d`, `2y10d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age(obj: &Value, now: jiff::Timestamp) -> Value {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| json!(human_duration(now.as_second() - t.as_second())))
        .unwrap_or(json!("<unknown>"))
}

fn text_at(obj: &Value, ptr: &str) -> String {
    obj.pointer(ptr)
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn count(obj: &Value, ptr: &str) -> usize {
    match obj.pointer(ptr) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// A simple JSONPath of a printer column (`.status.phase`, `.spec.instances`).
fn at_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj;
    for seg in path.trim().trim_start_matches('.').split('.') {
        if seg.is_empty() {
            continue;
        }
        cur = cur.get(seg)?;
    }
    Some(cur.clone())
}

fn service_ports(obj: &Value) -> String {
    let ports: Vec<String> = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let port = text_at(p, "/port");
            let proto = text_at(p, "/protocol");
            match p.get("nodePort") {
                Some(n) => format!("{port}:{n}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn selector(map: Option<&Value>) -> String {
    let parts: Vec<String> = map
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    or_none(parts.join(","))
}

/// A row's cells from an object, at a time.
type Cells = Box<dyn Fn(&Value, jiff::Timestamp) -> Vec<Value>>;

/// The columns, and a function from object to cells.
fn printer(t: &ResourceType) -> (Vec<Value>, Cells) {
    let name = column("Name", "string", "name", NAME_DESC, 0);
    let n = |o: &Value| json!(text_at(o, "/metadata/name"));
    let kind = t.builtin.map(|b| b.kind);
    match kind {
        Some("ConfigMap") => (
            vec![
                name,
                column("Data", "string", "", "Data contains the configuration data.", 0),
                column("Age", "string", "", AGE_DESC, 0),
            ],
            Box::new(move |o, now| {
                vec![
                    n(o),
                    json!(count(o, "/data") + count(o, "/binaryData")),
                    age(o, now),
                ]
            }),
        ),
        Some("Secret") => (
            vec![
                name,
                column("Type", "string", "", "Used to facilitate programmatic handling of secret data.", 0),
                column("Data", "string", "", "Data contains the secret data.", 0),
                column("Age", "string", "", AGE_DESC, 0),
            ],
            Box::new(move |o, now| {
                vec![n(o), json!(text_at(o, "/type")), json!(count(o, "/data")), age(o, now)]
            }),
        ),
        Some("Namespace") => (
            vec![
                name,
                column("Status", "string", "", "The status of the namespace", 0),
                column("Age", "string", "", AGE_DESC, 0),
            ],
            Box::new(move |o, now| vec![n(o), json!(text_at(o, "/status/phase")), age(o, now)]),
        ),
        Some("ServiceAccount") => (
            vec![
                name,
                column("Secrets", "string", "", "Secrets is the list of secrets allowed to be used by pods running using this ServiceAccount.", 0),
                column("Age", "string", "", AGE_DESC, 0),
            ],
            Box::new(move |o, now| vec![n(o), json!(count(o, "/secrets")), age(o, now)]),
        ),
        Some("Service") => (
            vec![
                name,
                column("Type", "string", "", "The type of the service.", 0),
                column("Cluster-IP", "string", "", "The cluster IP of the service.", 0),
                column("External-IP", "string", "", "The external IP of the service.", 0),
                column("Port(s)", "string", "", "The ports of the service.", 0),
                column("Age", "string", "", AGE_DESC, 0),
                column("Selector", "string", "", "Route service traffic to pods with label keys and values matching this selector.", 1),
            ],
            Box::new(move |o, now| {
                let external: Vec<String> = o
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|i| text_at(i, "/ip"))
                    .filter(|s| !s.is_empty())
                    .collect();
                let external = if external.is_empty() {
                    if text_at(o, "/spec/type") == "LoadBalancer" {
                        "<pending>".to_string()
                    } else {
                        "<none>".to_string()
                    }
                } else {
                    external.join(",")
                };
                vec![
                    n(o),
                    json!(text_at(o, "/spec/type")),
                    json!(or_none(text_at(o, "/spec/clusterIP"))),
                    json!(external),
                    json!(service_ports(o)),
                    age(o, now),
                    json!(selector(o.pointer("/spec/selector"))),
                ]
            }),
        ),
        Some("Deployment") => (
            vec![
                name,
                column("Ready", "string", "", "Number of the pod with ready state", 0),
                column("Up-to-date", "string", "", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", 0),
                column("Available", "string", "", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", 0),
                column("Age", "string", "", AGE_DESC, 0),
                column("Containers", "string", "", "Names of each container in the template.", 1),
                column("Images", "string", "", "Images referenced by each container in the template.", 1),
                column("Selector", "string", "", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.", 1),
            ],
            Box::new(move |o, now| {
                let num = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
                let containers: Vec<&Value> = o
                    .pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .collect();
                let names: Vec<String> = containers.iter().map(|c| text_at(c, "/name")).collect();
                let images: Vec<String> = containers.iter().map(|c| text_at(c, "/image")).collect();
                vec![
                    n(o),
                    json!(format!("{}/{}", num("/status/readyReplicas"), num("/spec/replicas"))),
                    json!(num("/status/updatedReplicas")),
                    json!(num("/status/availableReplicas")),
                    age(o, now),
                    json!(names.join(",")),
                    json!(images.join(",")),
                    json!(selector(o.pointer("/spec/selector/matchLabels"))),
                ]
            }),
        ),
        Some("StatefulSet") => (
            vec![
                name,
                column("Ready", "string", "", "Number of the pod with ready state", 0),
                column("Age", "string", "", AGE_DESC, 0),
                column("Containers", "string", "", "Names of each container in the template.", 1),
                column("Images", "string", "", "Images referenced by each container in the template.", 1),
            ],
            Box::new(move |o, now| {
                let num = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
                let containers: Vec<&Value> = o
                    .pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .collect();
                let names: Vec<String> = containers.iter().map(|c| text_at(c, "/name")).collect();
                let images: Vec<String> = containers.iter().map(|c| text_at(c, "/image")).collect();
                vec![
                    n(o),
                    json!(format!("{}/{}", num("/status/readyReplicas"), num("/spec/replicas"))),
                    age(o, now),
                    json!(names.join(",")),
                    json!(images.join(",")),
                ]
            }),
        ),
        Some("Lease") => (
            vec![
                name,
                column("Holder", "string", "", "holderIdentity contains the identity of the holder of a current lease.", 0),
                column("Age", "string", "", AGE_DESC, 0),
            ],
            Box::new(move |o, now| {
                vec![n(o), json!(text_at(o, "/spec/holderIdentity")), age(o, now)]
            }),
        ),
        Some("CustomResourceDefinition") => (
            vec![name, column("Created At", "date", "", AGE_DESC, 0)],
            Box::new(move |o, _| {
                vec![n(o), json!(text_at(o, "/metadata/creationTimestamp"))]
            }),
        ),
        Some(_) => (
            vec![name, column("Age", "string", "", AGE_DESC, 0)],
            Box::new(move |o, now| vec![n(o), age(o, now)]),
        ),
        None if t.printer_columns.is_empty() => (
            vec![name, column("Age", "date", "", AGE_DESC, 0)],
            Box::new(move |o, now| vec![n(o), age(o, now)]),
        ),
        None => {
            let cols = t.printer_columns.clone();
            let mut defs = vec![name];
            for c in &cols {
                let path = c["jsonPath"].as_str().unwrap_or("");
                let description = c["description"].as_str().map_or_else(
                    || format!("Custom resource definition column (in JSONPath format): {path}"),
                    str::to_string,
                );
                defs.push(column(
                    c["name"].as_str().unwrap_or(""),
                    c["type"].as_str().unwrap_or("string"),
                    c["format"].as_str().unwrap_or(""),
                    &description,
                    c["priority"].as_i64().unwrap_or(0),
                ));
            }
            (
                defs,
                Box::new(move |o, now| {
                    let mut cells = vec![n(o)];
                    for c in &cols {
                        let v = at_path(o, c["jsonPath"].as_str().unwrap_or(""));
                        cells.push(match (c["type"].as_str(), v) {
                            (_, None | Some(Value::Null)) => Value::Null,
                            (Some("date"), Some(Value::String(ts))) => ts
                                .parse::<jiff::Timestamp>()
                                .map(|t| json!(human_duration(now.as_second() - t.as_second())))
                                .unwrap_or(json!(ts)),
                            (_, Some(v)) => v,
                        });
                    }
                    cells
                }),
            )
        }
    }
}

fn row_object(obj: &Value, include: Include) -> Option<Value> {
    match include {
        Include::None => None,
        Include::Object => Some(obj.clone()),
        Include::Metadata => Some(json!({"kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})),
    }
}

/// A Table of some objects, with the list's metadata (resourceVersion, continue).
pub fn table(t: &ResourceType, objects: &[Value], mut list_meta: Value, include: Include) -> Value {
    if let Some(m) = list_meta.as_object_mut() {
        if m.get("continue").is_some_and(|c| c == "") {
            m.remove("continue");
        }
    }
    let (columns, cells) = printer(t);
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            // Go writes an empty object as null.
            json!({"cells": cells(o, now), "object": row_object(o, include)})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
        "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_writes_them() {
        for (s, want) in [
            (45, "45s"),
            (192, "3m12s"),
            (600, "10m"),
            (5 * 3600 + 120, "5h2m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (120 * 86400, "120d"),
        ] {
            assert_eq!(human_duration(s), want);
        }
    }

    #[test]
    fn only_a_first_choice_of_table_is_a_table_request() {
        assert!(wanted("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert!(!wanted("application/json"));
    }
}
