//! `exec`: run a command in a container through the API server's `pods/exec` (kube's WebSocket
//! client): stdout (trimmed, capped) into `Values.<outputKey>`, stderr and the exit code into
//! the record. ✔ means the command exited with `expectExitCode` (default 0). A dry run does not
//! execute anything: it checks the pod exists and records what it would run.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::{StepCtx, StepError, StepOutcome};
use crate::plan::compiled::Exec;

/// The most of stdout kept as a value, and of stderr in the record.
const MAX_OUTPUT: usize = 64 * 1024;
const MAX_STDERR: usize = 4 * 1024;

pub(super) async fn run(step: &Exec, ctx: &StepCtx<'_>) -> Result<StepOutcome, StepError> {
    let (pod_api, pod, shown) = ctx.object("v1", "pods", Some(&step.namespace), &step.pod).await?;
    let namespace = ctx.render(&step.namespace)?;
    let command: Vec<String> = step.command.iter().map(|a| ctx.render(a)).collect::<Result<_, _>>()?;
    let container = step.container.as_deref().map(|c| ctx.render(c)).transpose()?;
    let expected = step.expect_exit_code;
    let client = ctx.registry.client(&ctx.cluster)?;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let mut inputs = json!({"command": command, "container": container, "expectExitCode": expected});

    if ctx.dry_run() {
        // The pod must exist, as for any other step.
        super::get_object(&pod_api, &pod, &shown).await?;
        inputs["dryRun"] = json!(format!("would exec {}", shell_words(&command)));
        let mut outputs = BTreeMap::new();
        if let Some(k) = &step.output_key {
            outputs.insert(k.clone(), json!(format!("dry-run-{}", k.to_ascii_lowercase())));
        }
        return Ok(StepOutcome {
            inputs: Some(inputs),
            outputs,
            object: Some(shown),
            ..Default::default()
        });
    }

    let mut params = AttachParams::default().stdin(false).stdout(true).stderr(true);
    if let Some(c) = &container {
        params = params.container(c.clone());
    }
    let mut attached = pods
        .exec(&pod, command.clone(), &params)
        .await
        .map_err(|source| StepError::Kube {
            action: "exec in",
            object: shown.clone(),
            source,
        })?;
    let stdout = read_capped(attached.stdout(), MAX_OUTPUT);
    let stderr = read_capped(attached.stderr(), MAX_STDERR);
    let status = attached.take_status();
    let (stdout, stderr) = tokio::join!(stdout, stderr);
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = attached.join().await;
    let code = exit_code(status.as_ref());
    inputs["exitCode"] = json!(code);
    if !stderr.trim().is_empty() {
        inputs["stderr"] = json!(stderr.trim_end());
    }
    if code != Some(expected) {
        return Err(StepError::ExecFailed {
            object: shown,
            command: shell_words(&command),
            code,
            expected,
            stderr: stderr.trim().chars().take(300).collect(),
        });
    }
    let mut outputs = BTreeMap::new();
    if let Some(k) = &step.output_key {
        outputs.insert(k.clone(), Value::String(stdout.trim().to_string()));
    }
    Ok(StepOutcome {
        inputs: Some(inputs),
        outputs,
        object: Some(shown),
        ..Default::default()
    })
}

async fn read_capped(stream: Option<impl tokio::io::AsyncRead + Unpin>, max: usize) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        // Keep reading (the process must not block on a full pipe), keep only the start.
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..n.min(room)]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The exit code from the status the API server sends on the error channel: `Success` is 0;
/// a non-zero exit is a `Failure` with reason `NonZeroExitCode` and the code as a cause.
fn exit_code(status: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>) -> Option<i32> {
    let s = status?;
    if s.status.as_deref() == Some("Success") {
        return Some(0);
    }
    s.details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.trim().parse().ok())
}

fn shell_words(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
