//! `pods/exec` (I/O edge): the WebSocket channel protocol (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`) that kubectl and kube's client speak, answering with what the pod
//! declares — no container runs. A pod declares its commands in the annotation
//! `kube-sim.io/exec`, a JSON object from the command line (arguments joined by single spaces)
//! to what it prints and how it ends:
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     kube-sim.io/exec: '{"pg_isready": {"stdout": "accepting connections\n"},
//!                         "false": {"exitCode": 1}}'
//! ```
//!
//! A command the pod does not declare fails as a container without that executable does.
//!
//! Output starts [`START`] after the upgrade, as a real exec's does (the API server connects to
//! the kubelet, the kubelet asks the runtime to start the process). Clients rely on that:
//! client-go's WebSocket executor sets up its stream pipes in one goroutine while another is
//! already reading frames, and drops a frame for a stream it has not set up yet ("Unknown stream
//! id 1, discarding message"), so output sent with the upgrade reached `kubectl exec` only when
//! its scheduler happened to run the first goroutine first.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::Cluster;
use super::status::StatusError;

pub const ANNOTATION: &str = "kube-sim.io/exec";

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;

/// How long after the upgrade a command's output starts.
const START: std::time::Duration = std::time::Duration::from_millis(100);

/// What a declared command does.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Declared {
    #[serde(default)]
    stdout: String,
    #[serde(default)]
    stderr: String,
    #[serde(default)]
    exit_code: i64,
}

/// What to send: stdout, stderr, and the `Status` for the error channel.
fn outcome(pod: &Value, cmd: &[String]) -> (String, String, Value) {
    let line = cmd.join(" ");
    let declared: Option<Declared> = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str::<serde_json::Map<String, Value>>(text).ok())
        .and_then(|m| m.get(&line).cloned())
        .and_then(|d| serde_json::from_value(d).ok());
    match declared {
        Some(d) if d.exit_code == 0 => (d.stdout, d.stderr, json!({"metadata": {}, "status": "Success"})),
        Some(d) => (
            d.stdout,
            d.stderr,
            json!({"metadata": {}, "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {}", cmd.join(" "), d.exit_code),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": d.exit_code.to_string()}]}}),
        ),
        None => {
            let exe = cmd.first().cloned().unwrap_or_default();
            (
                String::new(),
                String::new(),
                json!({"metadata": {}, "status": "Failure",
                    "message": format!("Internal error occurred: error executing command in container: failed to exec in container: failed to start exec: OCI runtime exec failed: exec failed: unable to start container process: exec: {}: executable file not found in $PATH: unknown", Value::String(exe)),
                    "reason": "InternalError", "code": 500}),
            )
        }
    }
}

async fn send(socket: &mut WebSocket, channel: u8, data: &[u8]) -> bool {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    socket.send(Message::Binary(frame.into())).await.is_ok()
}

/// Answers `pods/exec` for pod `name` in `ns` with the command line `cmd`, over the upgraded
/// connection `ws` (the route lives in `http`).
pub fn serve(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    container: Option<&str>,
    cmd: Vec<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, StatusError> {
    let pod = cluster
        .stored("", "pods", ns, name)
        .ok_or_else(|| StatusError::not_found("", "pods", name))?;
    // What the real server refuses before upgrading the connection, in its words.
    if cmd.is_empty() {
        return Err(StatusError::bad_request("you must specify at least 1 command"));
    }
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(|c| c.as_array())
        .map(|list| list.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    match container {
        Some(c) if !containers.contains(&c) => {
            return Err(StatusError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if containers.len() > 1 => {
            return Err(StatusError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
        _ => {}
    }
    if let Some(phase @ ("Succeeded" | "Failed")) = pod.pointer("/status/phase").and_then(|p| p.as_str()) {
        return Err(StatusError::bad_request(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    let ws = ws.map_err(|_| {
        StatusError::bad_request("Upgrade request required: pods/exec speaks the WebSocket channel protocol")
    })?;
    let (stdout, stderr, status) = outcome(&pod, &cmd);
    Ok(ws
        .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"])
        .on_upgrade(move |mut socket| async move {
            tokio::time::sleep(START).await;
            let ok = (stdout.is_empty() || send(&mut socket, STDOUT, stdout.as_bytes()).await)
                && (stderr.is_empty() || send(&mut socket, STDERR, stderr.as_bytes()).await)
                && send(&mut socket, ERROR, status.to_string().as_bytes()).await;
            if ok {
                // A normal closure: clients read a close without a code as a broken stream.
                let close = axum::extract::ws::CloseFrame {
                    code: axum::extract::ws::close_code::NORMAL,
                    reason: "".into(),
                };
                let _ = socket.send(Message::Close(Some(close))).await;
            }
        })
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_commands_answer_and_others_are_not_found() {
        let pod = json!({"metadata": {"annotations": {ANNOTATION:
            r#"{"pg_isready -q": {"stdout": "ok\n"}, "false": {"exitCode": 1, "stderr": "no"}}"#}}});
        let (out, _, st) = outcome(&pod, &["pg_isready".into(), "-q".into()]);
        assert_eq!((out.as_str(), st["status"].as_str()), ("ok\n", Some("Success")));
        let (_, err, st) = outcome(&pod, &["false".into()]);
        assert_eq!(err, "no");
        assert_eq!(st["details"]["causes"][0]["message"], "1");
        let (_, _, st) = outcome(&pod, &["rm".into(), "-rf".into()]);
        assert!(st["message"]
            .as_str()
            .unwrap()
            .contains("exec: \"rm\": executable file not found in $PATH"));
    }
}
