//! What a step sees while it runs ([`StepCtx`]: its cluster, the run's values, what earlier
//! steps wrote, which values are secret) and hands back ([`StepOutcome`]), with the helpers
//! every step type shares: resolving an object, reading it, naming API errors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::api::{Api, DynamicObject};
use serde_json::Value;

use crate::cluster::{api_for_object, describe_object, Registry};
use crate::template;

use super::StepError;

/// What a step hands back to the executor.
#[derive(Default)]
pub(crate) struct StepOutcome {
    pub inputs: Option<Value>,
    pub outputs: BTreeMap<String, Value>,
    pub diff: Option<Value>,
    pub object: Option<String>,
    /// The step used a secret in a way the executor could not see from the plan (a template
    /// loaded at run time): its inputs and diff are kept out of the record.
    pub tainted: bool,
    /// The step's outputs are secret.
    pub secret_outputs: bool,
}

/// Everything a step needs while it runs.
pub(crate) struct StepCtx<'a> {
    pub registry: &'a Registry,
    pub http: &'a reqwest::Client,
    pub cluster: String,
    pub values: &'a Value,
    pub base_dir: Option<&'a std::path::Path>,
    /// Reports that the step waits (what for, and for how long at most); awaited, so the
    /// record says so before the wait begins.
    pub progress: &'a (dyn Fn(String, Duration) -> futures::future::BoxFuture<'a, ()> + Send + Sync),
    /// The plan's field manager.
    pub field_manager: &'a str,
    /// Objects (as described in records) that earlier steps of this run wrote.
    pub written: &'a BTreeSet<String>,
    /// The `Values` keys that hold secrets.
    pub secret_keys: &'a BTreeSet<String>,
    /// How approval steps are decided, and the run's shutdown signal.
    pub control: &'a super::RunControl,
    /// The step's record name and `startedAt`: which wait an approval answers.
    pub step: &'a str,
    pub started_at: &'a str,
}

impl StepCtx<'_> {
    /// Whether a template uses a secret: a `secrets.*` of an http step or a secret `Values` key.
    /// Whatever it renders to (a secret through `b64encode`, say) is then secret too.
    pub fn uses_secret(&self, src: &str) -> bool {
        uses_secret(src, self.secret_keys)
    }

    /// `clusters.postgresql.cnpg.io`, as the API server names a resource in its messages.
    pub fn resource_name(&self, api_version: &str, resource: &str) -> String {
        match api_version.split_once('/') {
            Some((group, _)) => format!("{resource}.{group}"),
            None => resource.to_string(),
        }
    }

    /// A dry run: writes go with dryRun=All, so nothing a later step waits for will happen.
    pub fn dry_run(&self) -> bool {
        self.registry.mode() == crate::cluster::WriteMode::DryRun
    }

    pub fn render(&self, s: &str) -> Result<String, StepError> {
        Ok(template::render(s, self.values)?)
    }

    /// [`StepCtx::object`] for a step's target.
    pub async fn target(
        &self,
        t: &crate::plan::model::ObjectRef,
    ) -> Result<(Api<DynamicObject>, String, String), StepError> {
        self.object(&t.api_version, &t.resource, t.namespace.as_deref(), &t.name)
            .await
    }

    /// Resolves an object reference (rendering its name and namespace) into an API handle, the
    /// rendered name, and how messages show the object (`… db/pg-north on cluster north`).
    pub async fn object(
        &self,
        api_version: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(Api<DynamicObject>, String, String), StepError> {
        let resolved = self.registry.resolve(&self.cluster, api_version, resource).await?;
        let name = self.render(name)?;
        let namespace = namespace.map(|n| self.render(n)).transpose()?;
        let shown = format!(
            "{} on cluster {}",
            describe_object(api_version, resource, namespace.as_deref(), &name),
            self.cluster
        );
        check_name("name", &name, &shown)?;
        if let Some(ns) = &namespace {
            check_name("namespace", ns, &shown)?;
        }
        needs_namespace(&resolved, namespace.as_deref(), &shown)?;
        let api = api_for_object(self.registry, &self.cluster, &resolved, namespace.as_deref())?;
        Ok((api, name, shown))
    }
}

/// A namespaced kind needs its namespace named: without one, kube's client would act in the
/// kubeconfig's default namespace, and the record would not say which.
pub(crate) fn needs_namespace(
    resolved: &crate::cluster::Resolved,
    namespace: Option<&str>,
    shown: &str,
) -> Result<(), StepError> {
    if resolved.namespaced && namespace.is_none() {
        return Err(StepError::NoNamespace {
            object: shown.to_string(),
        });
    }
    Ok(())
}

/// Whether a template refers to a secret: `secrets` (an http step's) or a secret `Values` key.
pub(crate) fn uses_secret(src: &str, secret_keys: &BTreeSet<String>) -> bool {
    // Most steps of most runs have no secret at all: no need to parse their templates.
    if !template::is_template(src) || (secret_keys.is_empty() && !src.contains("secrets")) {
        return false;
    }
    match template::references(src) {
        Ok(refs) => refs.iter().any(|r| {
            r == "secrets"
                || r.starts_with("secrets.")
                || r.strip_prefix("Values.")
                    .is_some_and(|k| secret_keys.contains(k.split('.').next().unwrap_or(k)))
                // `Values` used whole (`Values | tojson`) carries every secret in it.
                || (r == "Values" && !secret_keys.is_empty())
        }),
        // An unparsable template fails the step anyway; be safe meanwhile.
        Err(_) => !secret_keys.is_empty(),
    }
}

/// A write the API server refused, in words that say what to do: a server-side apply conflict
/// names the other field manager; a strict field validation error is a field the schema does not
/// have, as the read-back would report on servers without `fieldValidation`.
pub(crate) fn write_error(action: &'static str, object: &str, source: kube::Error) -> StepError {
    if let kube::Error::Api(status) = &source {
        let msg = &status.message;
        if status.code == 409 && action == "apply" && msg.contains("conflict") {
            return StepError::Conflict {
                object: object.to_string(),
                detail: format!(
                    "{msg}; another field manager owns these fields: set `force: true` on the \
                     step to take them over"
                ),
            };
        }
        // Strict validation: 400 "strict decoding error: unknown field" for patches; a
        // server-side apply of a field the schema lacks is a 500 "field not declared in schema"
        // (not a transient server error: retrying cannot help).
        if (matches!(status.code, 400 | 422)
            && (msg.contains("unknown field") || msg.contains("strict decoding error")))
            || msg.contains("field not declared in schema")
        {
            return StepError::NotApplied {
                object: object.to_string(),
                detail: format!("the API server refused a field that is not in the schema: {msg}"),
            };
        }
    }
    StepError::Kube {
        action,
        object: object.to_string(),
        source,
    }
}

/// A rendered name or namespace must be a Kubernetes name (DNS-1123 subdomain): a value from an
/// alert label such as `pg-north/status` or `a,b` must not re-target the request.
pub(crate) fn check_name(what: &'static str, value: &str, object: &str) -> Result<(), StepError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && value.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StepError::BadName {
            what,
            value: value.to_string(),
            object: object.to_string(),
        })
    }
}

/// Reads an object; a 404 is [`StepError::NotFound`].
pub(crate) async fn get_object(api: &Api<DynamicObject>, name: &str, shown: &str) -> Result<Value, StepError> {
    match api.get_opt(name).await {
        Ok(Some(obj)) => Ok(serde_json::to_value(obj).unwrap_or(Value::Null)),
        Ok(None) => Err(StepError::NotFound {
            object: shown.to_string(),
        }),
        Err(source) => Err(StepError::Kube {
            action: "read",
            object: shown.to_string(),
            source,
        }),
    }
}
