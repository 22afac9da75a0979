//! Notifications (I/O edge): a run's lifecycle — started, awaiting approval, a step failed,
//! succeeded, succeeded with errors, failed, cancelled — sent to one chat or paging webhook
//! configured for the server (`serve --notify-url-file`). Slack-compatible (`{"text": …}`) or a
//! generic JSON body; the text from a minijinja template. Sending never blocks a run: notices go
//! through a bounded queue to one task that posts them, retrying a failed post a few times; a
//! full queue drops the notice and says so in the log.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::record::{Phase, RunRecord};

/// The text a notice carries unless `--notify-template` says otherwise.
pub const DEFAULT_TEMPLATE: &str = "recoverd: run {{ run }} of {{ plan }} {{ summary }}\
{% if step %} (step {{ step }}){% endif %}{% if error %}: {{ error }}{% endif %}";

/// How notices are posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NotifyFormat {
    /// `{"text": "…"}`, as Slack, Mattermost and Rocket.Chat incoming webhooks take it.
    Slack,
    /// The notice as JSON: event, run, plan, phase, step, error, at, text.
    Json,
}

/// Where and how to notify.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// The webhook URL (often a secret itself: read from a file).
    pub url: String,
    pub format: NotifyFormat,
    pub template: String,
}

/// What happened to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Lifecycle {
    Started,
    AwaitingApproval,
    StepFailed,
    Succeeded,
    Degraded,
    Failed,
    Cancelled,
}

impl Lifecycle {
    fn summary(self) -> &'static str {
        match self {
            Lifecycle::Started => "started",
            Lifecycle::AwaitingApproval => "is waiting for approval",
            Lifecycle::StepFailed => "had a step fail",
            Lifecycle::Succeeded => "succeeded",
            Lifecycle::Degraded => "succeeded with errors",
            Lifecycle::Failed => "failed",
            Lifecycle::Cancelled => "was cancelled",
        }
    }

    /// The notice a finished run gives, by its phase; `None` for an interrupted one (it will be
    /// resumed, not finished).
    pub fn of_finished(phase: Phase) -> Option<Lifecycle> {
        match phase {
            Phase::Succeeded => Some(Lifecycle::Succeeded),
            Phase::SucceededWithErrors => Some(Lifecycle::Degraded),
            Phase::Failed => Some(Lifecycle::Failed),
            Phase::Cancelled => Some(Lifecycle::Cancelled),
            _ => None,
        }
    }
}

/// One notice.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub event: Lifecycle,
    pub run: String,
    pub plan: String,
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The run's or step's error, as recorded (secrets already redacted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: String,
}

impl Notice {
    pub fn of(event: Lifecycle, run: &RunRecord, step: Option<&str>, error: Option<&str>) -> Self {
        Notice {
            event,
            run: run.id.clone(),
            plan: run.plan.clone(),
            phase: run.phase,
            step: step.map(str::to_string),
            error: error.map(str::to_string),
            at: crate::record::now(),
        }
    }
}

/// How many notices may wait to be posted before new ones are dropped.
const QUEUE: usize = 256;
/// Attempts per notice.
const ATTEMPTS: u32 = 4;

/// Sends notices in the background.
#[derive(Clone, Debug)]
pub struct Notifier {
    tx: mpsc::Sender<Notice>,
}

impl Notifier {
    /// Starts the task that posts notices. The template is checked here, so a bad one stops
    /// `serve` at start-up instead of losing every notice later.
    pub fn start(config: NotifyConfig) -> Result<Notifier, String> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned("notice", config.template.clone())
            .map_err(|e| format!("--notify-template: {e}"))?;
        let (tx, mut rx) = mpsc::channel::<Notice>(QUEUE);
        let http = reqwest::Client::builder()
            .user_agent(concat!("recoverd/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("building the notification client: {e}"))?;
        tokio::spawn(async move {
            while let Some(notice) = rx.recv().await {
                let text = render(&env, &notice);
                let body = match config.format {
                    NotifyFormat::Slack => serde_json::json!({"text": text}),
                    NotifyFormat::Json => {
                        let mut v = serde_json::to_value(&notice).unwrap_or_default();
                        v["text"] = serde_json::Value::String(text);
                        v
                    }
                };
                post(&http, &config.url, &body, &notice).await;
            }
        });
        Ok(Notifier { tx })
    }

    /// Queues a notice; never waits.
    pub fn send(&self, notice: Notice) {
        if let Err(e) = self.tx.try_send(notice) {
            warn!(error = %e, "notification dropped: the queue is full or closed");
        }
    }
}

fn render(env: &minijinja::Environment<'_>, n: &Notice) -> String {
    let ctx = minijinja::context! {
        event => n.event, summary => n.event.summary(), run => n.run, plan => n.plan,
        phase => n.phase.as_str(), step => n.step, error => n.error, at => n.at,
    };
    env.get_template("notice")
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| {
            format!(
                "recoverd: run {} of {} {} (template failed: {e})",
                n.run,
                n.plan,
                n.event.summary()
            )
        })
}

/// Posts one notice, retrying transport errors and 429/5xx with backoff.
async fn post(http: &reqwest::Client, url: &str, body: &serde_json::Value, n: &Notice) {
    let mut pause = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        match http.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => {
                debug!(run = %n.run, event = ?n.event, "notification sent");
                return;
            }
            Ok(r) if !(r.status().is_server_error() || r.status().as_u16() == 429) => {
                warn!(run = %n.run, status = r.status().as_u16(), "notification refused by the webhook");
                return;
            }
            Ok(r) => {
                warn!(run = %n.run, attempt, status = r.status().as_u16(), "notification failed")
            }
            // The URL may hold a token: say what failed without it.
            Err(e) => warn!(run = %n.run, attempt, error = %e.without_url(), "notification failed"),
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}
