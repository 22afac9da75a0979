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
    fn sample(step: Option<&str>, error: Option<&str>) -> Self {
        Notice {
            event: Lifecycle::Failed,
            run: "a-0000000000000000".into(),
            plan: "ns/plan".into(),
            phase: Phase::Failed,
            step: step.map(str::to_string),
            error: error.map(str::to_string),
            at: "2026-01-01T00:00:00Z".into(),
        }
    }

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
    /// Set when recoverd stops: the task posts what is queued, then ends.
    closing: tokio_util::sync::CancellationToken,
    task: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Notifier {
    /// Starts the task that posts notices. The template is checked here, so a bad one stops
    /// `serve` at start-up instead of losing every notice later.
    pub fn start(config: NotifyConfig) -> Result<Notifier, String> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned("notice", config.template.clone())
            .map_err(|e| format!("--notify-template: {e}"))?;
        // Render it now, with every field set and with none of the optional ones, so a template
        // that names something a notice does not have stops `serve` instead of every notice.
        for sample in [Notice::sample(Some("step"), Some("error")), Notice::sample(None, None)] {
            env.get_template("notice")
                .and_then(|t| t.render(context(&sample)))
                .map_err(|e| format!("--notify-template: {e}"))?;
        }
        if !matches!(
            reqwest::Url::parse(&config.url).map(|u| u.scheme().to_string()),
            Ok(s) if s == "http" || s == "https"
        ) {
            return Err("the notification URL must be an http:// or https:// URL".into());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("notifications need a running tokio runtime".into());
        }
        let (tx, mut rx) = mpsc::channel::<Notice>(QUEUE);
        let http = reqwest::Client::builder()
            .user_agent(concat!("recoverd/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(10))
            // A redirect would turn the POST into a GET without its body.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the notification client: {e}"))?;
        let closing = tokio_util::sync::CancellationToken::new();
        let stop = closing.clone();
        let task = tokio::spawn(async move {
            loop {
                let notice = tokio::select! {
                    n = rx.recv() => n,
                    _ = stop.cancelled() => rx.try_recv().ok(),
                };
                let Some(notice) = notice else { break };
                let text = render(&env, &notice);
                let body = match config.format {
                    NotifyFormat::Slack => serde_json::json!({"text": slack_escaped(&text)}),
                    NotifyFormat::Json => {
                        let mut v = serde_json::to_value(&notice).unwrap_or_default();
                        v["text"] = serde_json::Value::String(text);
                        v
                    }
                };
                post(&http, &config.url, &body, &notice).await;
            }
        });
        Ok(Notifier {
            tx,
            closing,
            task: std::sync::Arc::new(std::sync::Mutex::new(Some(task))),
        })
    }

    /// At shutdown: posts what is still queued, for at most `grace`; says how many were lost.
    pub async fn flush(&self, grace: Duration) {
        self.closing.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            if tokio::time::timeout(grace, task).await.is_err() {
                warn!(
                    left = QUEUE - self.tx.capacity(),
                    "notifications still queued at shutdown were not sent"
                );
            }
        }
    }

    /// Queues a notice; never waits.
    pub fn send(&self, notice: Notice) {
        if let Err(e) = self.tx.try_send(notice) {
            warn!(error = %e, "notification dropped: the queue is full or closed");
        }
    }
}

/// Text as Slack reads it: `&`, `<` and `>` escaped, so that an error carrying `<!channel>`
/// (a webhook's answer quoted in a step failure, say) cannot ping a whole channel.
fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn context(n: &Notice) -> minijinja::Value {
    minijinja::context! {
        event => n.event, summary => n.event.summary(), run => n.run, plan => n.plan,
        phase => n.phase.as_str(), step => n.step, error => n.error, at => n.at,
    }
}

fn render(env: &minijinja::Environment<'_>, n: &Notice) -> String {
    env.get_template("notice")
        .and_then(|t| t.render(context(n)))
        .unwrap_or_else(|e| {
            warn!(run = %n.run, error = %e, "the notification template failed; sending a plain notice");
            format!("recoverd: run {} of {} {}", n.run, n.plan, n.event.summary())
        })
}

/// An error and its causes, on one line (reqwest's own Display names only the kind of error;
/// none of the causes contains the URL).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Posts one notice, retrying transport errors and 429/5xx with backoff.
async fn post(http: &reqwest::Client, url: &str, body: &serde_json::Value, n: &Notice) {
    let mut pause = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        match http.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => {
                debug!(run = %n.run, event = ?n.event, "notification sent");
                return;
            }
            Ok(r) if !(r.status().is_server_error() || r.status().as_u16() == 429) => {
                let status = r.status().as_u16();
                let said: String = r.text().await.unwrap_or_default().chars().take(200).collect();
                warn!(run = %n.run, event = ?n.event, status, answer = %said, "notification refused by the webhook");
                return;
            }
            Ok(r) => {
                warn!(run = %n.run, event = ?n.event, attempt, status = r.status().as_u16(), "notification failed")
            }
            // The URL may hold a token: say what failed without it.
            Err(e) => {
                let e = e.without_url();
                warn!(run = %n.run, event = ?n.event, attempt, error = %chain(&e), "notification failed")
            }
        }
    }
    warn!(run = %n.run, event = ?n.event, "notification abandoned after {ATTEMPTS} attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_cannot_mention_a_channel() {
        assert_eq!(
            slack_escaped("answered <!channel> & <@U123>"),
            "answered &lt;!channel&gt; &amp; &lt;@U123&gt;"
        );
    }
}
