//! Alerts (pure, no I/O): the webhook payloads of Alertmanager (version 4) and Grafana alerting
//! (version 1), single alerts, and what templates see of an alert (`alert.labels.x`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Alertmanager's webhook payload, version 4, or Grafana alerting's, version 1 (Alertmanager's
/// with `orgId`, `title`, `state`, `message` added, and more fields on each alert). Fields this
/// does not name are ignored. [`WebhookPayload::accept`] checks the version.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    pub version: String,
    /// Grafana's organisation; absent from Alertmanager's payloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<i64>,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// One alert. Its own `status` decides whether it acts, never the group's.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The alert's own status; one without it takes its webhook payload's (see
    /// [`WebhookPayload::accept`]), or is firing when it stands alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AlertStatus>,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// The longest `fingerprint` and `startsAt` an alert may carry. Alertmanager's and Grafana's
/// are 16 hex digits and an RFC 3339 time; both are kept in every run record and summary.
pub const MAX_IDENTITY_BYTES: usize = 256;

/// Whether an alert is firing. Anything else than `firing` is a resolution: it never starts a
/// run, it only withdraws runs still waiting for approval.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    #[default]
    Firing,
    #[serde(other)]
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// Who sent a webhook payload, told by its `version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Prometheus Alertmanager, `"version": "4"`.
    Alertmanager,
    /// Grafana alerting's webhook contact point, `"version": "1"`.
    Grafana,
}

impl WebhookPayload {
    /// Checks that recoverd reads this payload's version and gives every alert the identity the
    /// exactly-once rules key on (`fingerprint`). Alertmanager's alerts carry theirs. Grafana's
    /// carry Grafana's own `fingerprint` — computed by its embedded Alertmanager over the alert
    /// instance's labels, so it plays the same role — and recoverd uses it unchanged; only when a
    /// Grafana alert has none is one derived from the organisation and the labels, so that its
    /// re-sends and its resolution still name the same incident.
    pub fn accept(&mut self) -> Result<Sender, String> {
        let sender = self.sender()?;
        // An alert without a status of its own is what its group says: a hand-written
        // `"status": "resolved"` payload must not start runs.
        let group = if self.status == "resolved" {
            AlertStatus::Resolved
        } else {
            AlertStatus::Firing
        };
        for alert in &mut self.alerts {
            alert.status.get_or_insert(group);
        }
        // Every run record and run summary keeps these: an alert must not make them huge.
        for (i, alert) in self.alerts.iter().enumerate() {
            for (field, value) in [("fingerprint", &alert.fingerprint), ("startsAt", &alert.starts_at)] {
                if value.len() > MAX_IDENTITY_BYTES {
                    return Err(format!(
                        "alerts[{i}].{field} is {} bytes; at most {MAX_IDENTITY_BYTES} are accepted (Alertmanager sends 16 hex digits and an RFC 3339 time)",
                        value.len()
                    ));
                }
            }
        }
        Ok(sender)
    }

    fn sender(&mut self) -> Result<Sender, String> {
        match self.version.as_str() {
            "4" => Ok(Sender::Alertmanager),
            "1" => {
                let org = self.org_id.unwrap_or(0);
                for alert in &mut self.alerts {
                    if alert.fingerprint.is_empty() {
                        alert.fingerprint = label_identity(org, &alert.labels);
                    }
                }
                Ok(Sender::Grafana)
            }
            other => Err(format!(
                "unsupported webhook payload version {other:?}: recoverd reads Alertmanager's (\"4\") and Grafana alerting's (\"1\")"
            )),
        }
    }
}

/// 16 hex digits naming a label set within a Grafana organisation.
fn label_identity(org: i64, labels: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("grafana-org-{org}\0"));
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xfe]);
    }
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("failed to read alert file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse {path} as an Alertmanager webhook payload or a single alert: {reason}")]
    Parse { path: String, reason: String },
}

impl Alert {
    /// The alert's status: its own, or firing.
    pub fn status(&self) -> AlertStatus {
        self.status.unwrap_or(AlertStatus::Firing)
    }

    pub fn is_firing(&self) -> bool {
        self.status() == AlertStatus::Firing
    }

    /// What templates see as `alert`.
    pub fn context(&self) -> Value {
        json!({
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": self.starts_at,
            "fingerprint": self.fingerprint,
            "status": self.status().as_str(),
        })
    }

    /// A generated firing alert that carries exactly these labels (a plan's `alertLabels`, for
    /// `check` without a sample alert).
    pub fn sample(labels: BTreeMap<String, String>) -> Alert {
        Alert {
            status: Some(AlertStatus::Firing),
            labels,
            annotations: BTreeMap::from([("summary".into(), "sample alert generated by recoverd check".into())]),
            starts_at: "2026-01-01T00:00:00Z".into(),
            ends_at: String::new(),
            generator_url: String::new(),
            fingerprint: "0000000000000000".into(),
        }
    }
}

/// Reads alerts from a file holding either a webhook payload (all its alerts) or one alert.
pub fn load_file(path: &std::path::Path) -> Result<Vec<Alert>, AlertError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| AlertError::Read {
        path: shown.clone(),
        source: e,
    })?;
    parse(&text).map_err(|reason| AlertError::Parse { path: shown, reason })
}

/// Parses a webhook payload (JSON with `alerts`, from Alertmanager or Grafana) or a single alert
/// (JSON or YAML).
pub fn parse(text: &str) -> Result<Vec<Alert>, String> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if value.get("alerts").is_some() {
        let mut payload: WebhookPayload = serde_json::from_value(value).map_err(|e| e.to_string())?;
        payload.accept()?;
        Ok(payload.alerts)
    } else {
        Ok(vec![serde_json::from_value(value).map_err(|e| e.to_string())?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_alertmanager_payload_parses() {
        let text = include_str!("../tests/data/alerts/firing-one-alert.json");
        let alerts = parse(text).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].labels["alertname"], "CNPGPrimaryUnavailable");
        assert_eq!(alerts[0].fingerprint, "ca11cb152bfbc32b");
        assert!(alerts[0].is_firing());
    }

    #[test]
    fn an_alert_without_a_status_of_its_own_takes_its_groups() {
        let text = include_str!("../tests/data/alerts/firing-one-alert.json");
        let mut payload: WebhookPayload = serde_json::from_str(text).unwrap();
        payload.status = "resolved".into();
        payload.alerts[0].status = None;
        payload.accept().unwrap();
        assert!(
            !payload.alerts[0].is_firing(),
            "a resolved payload's alert without a status is resolved"
        );
    }

    #[test]
    fn a_single_alert_object_parses() {
        let alerts = parse("labels: {alertname: X}\nfingerprint: abc\nstartsAt: '2026-01-01T00:00:00Z'\n").unwrap();
        assert_eq!(alerts[0].labels["alertname"], "X");
        assert!(alerts[0].is_firing());
    }

    #[test]
    fn a_grafana_payload_in_its_documented_format_parses_with_grafanas_fingerprint() {
        let text = include_str!("../tests/data/alerts/grafana/firing.json");
        let mut payload: WebhookPayload = serde_json::from_str(text).unwrap();
        assert_eq!(payload.accept(), Ok(Sender::Grafana));
        assert_eq!(payload.org_id, Some(1));
        let a = &payload.alerts[0];
        assert_eq!(a.labels["alertname"], "CNPGPrimaryUnavailable");
        assert_eq!(a.fingerprint, "9d3b6f0c2e71a845");
        assert!(a.is_firing());
    }

    #[test]
    fn a_grafana_alert_without_fingerprint_gets_one_from_its_organisation_and_labels() {
        let text = include_str!("../tests/data/alerts/grafana/firing.json");
        let mut value: Value = serde_json::from_str(text).unwrap();
        value["alerts"][0]["fingerprint"] = json!("");
        let identity = |v: &Value| {
            let mut p: WebhookPayload = serde_json::from_value(v.clone()).unwrap();
            p.accept().unwrap();
            p.alerts[0].fingerprint.clone()
        };
        let first = identity(&value);
        assert_eq!(first.len(), 16);
        assert_eq!(identity(&value), first, "the same alert, the same identity");
        value["orgId"] = json!(2);
        assert_ne!(identity(&value), first, "another organisation, another alert");
    }

    #[test]
    fn an_unknown_payload_version_is_refused_naming_the_ones_read() {
        let text = include_str!("../tests/data/alerts/firing-one-alert.json");
        let mut payload: WebhookPayload = serde_json::from_str(text).unwrap();
        assert_eq!(payload.accept(), Ok(Sender::Alertmanager));
        payload.version = "2".into();
        let e = payload.accept().unwrap_err();
        assert!(e.contains("\"2\"") && e.contains("\"4\"") && e.contains("\"1\""), "{e}");
    }
}
