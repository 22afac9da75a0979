//! Printing a run as it happens: each step as it starts and ends, with duration, outputs and
//! the change it made; a live line with elapsed time while a step waits (on a terminal).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::duration;
use crate::executor::{Event, Observer};
use crate::record::{Phase, RunRecord, StepStatus};

pub struct Printer {
    spinner: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tty: bool,
    stderr: bool,
}

/// One line of progress, to the printer's stream.
macro_rules! say {
    ($p:expr, $($arg:tt)*) => { $p.say(format_args!($($arg)*)) };
}

impl Printer {
    /// Progress on stdout.
    pub fn new() -> Self {
        Printer {
            spinner: Mutex::new(None),
            tty: std::io::stdout().is_terminal(),
            stderr: false,
        }
    }

    /// Progress on stderr, so that stdout carries only a result (`-o json`).
    pub fn to_stderr() -> Self {
        Printer {
            spinner: Mutex::new(None),
            tty: std::io::stderr().is_terminal(),
            stderr: true,
        }
    }

    /// One line of narration, to the printer's stream.
    pub fn say(&self, args: std::fmt::Arguments<'_>) {
        if self.stderr {
            eprintln!("{args}");
        } else {
            println!("{args}");
        }
    }

    fn raw(stderr: bool, text: &str) {
        if stderr {
            eprint!("{text}");
            let _ = std::io::stderr().flush();
        } else {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    }

    fn stop_spinner(&self) {
        if let Some(h) = self.spinner.lock().unwrap().take() {
            h.abort();
            Self::raw(self.stderr, "\r\x1b[2K");
        }
    }
}

impl Default for Printer {
    fn default() -> Self {
        Self::new()
    }
}

impl Printer {
    /// How a step ended, with what it produced and changed.
    fn finished(&self, s: &crate::record::StepRecord, indent: &str) {
        let took = s
            .duration_ms
            .map(|ms| duration::format(Duration::from_millis(ms)))
            .unwrap_or_default();
        let attempts = if s.attempts > 1 {
            format!(", {} attempts", s.attempts)
        } else {
            String::new()
        };
        match s.status {
            StepStatus::Succeeded => match s.inputs.as_ref().and_then(|i| i.get("dryRun")).and_then(|d| d.as_str()) {
                // Not verified: say what the live run would do instead.
                Some(would) => {
                    say!(self, "{indent}✔ {} ({took}{attempts}) — dry run: {would}", s.name)
                }
                None => say!(self, "{indent}✔ {} ({took}{attempts})", s.name),
            },
            StepStatus::Skipped => {
                say!(
                    self,
                    "{indent}↷ {} skipped: {}",
                    s.name,
                    s.error.as_deref().unwrap_or("")
                )
            }
            _ => {
                let cont = if s.continued {
                    " — continuing (onError: continue)"
                } else {
                    ""
                };
                say!(
                    self,
                    "{indent}✘ {} ({took}{attempts}): {}{cont}",
                    s.name,
                    s.error.as_deref().unwrap_or("failed")
                );
            }
        }
        for (k, v) in &s.outputs {
            say!(self, "{indent}    {k} = {}", crate::fieldpath::as_text(v));
        }
        if let Some(serde_json::Value::Array(ops)) = &s.diff {
            for op in ops {
                let value = op.get("value").map(crate::fieldpath::as_text).unwrap_or_default();
                say!(
                    self,
                    "{indent}    {} {} {}",
                    op.get("op").and_then(|o| o.as_str()).unwrap_or(""),
                    op.get("path").and_then(|o| o.as_str()).unwrap_or(""),
                    value.replace('\n', "\\n")
                );
            }
        }
    }
}

#[async_trait::async_trait]
impl Observer for Printer {
    async fn on_event(&self, run: &RunRecord, event: &Event) {
        self.show(run, event);
    }
}

impl Printer {
    /// Prints what `event` means for `run`.
    pub fn show(&self, run: &RunRecord, event: &Event) {
        match event {
            Event::RunStarted => {
                let mode = if run.mode == crate::record::RunMode::DryRun {
                    " (dry run: every write sent with dryRun=All)"
                } else {
                    ""
                };
                say!(self, "run {} of plan {}{mode}", run.id, run.plan);
            }
            Event::StepStarted { index, compensation } => {
                let s = run.step(*index, *compensation);
                let prefix = if *compensation { "onFailure " } else { "" };
                let on = s.cluster.as_deref().map(|c| format!(" on {c}")).unwrap_or_default();
                say!(self, "▶ {prefix}{} ({}{on})", s.name, s.step_type);
            }
            Event::StepWaiting { what, deadline, .. } => {
                self.stop_spinner();
                if self.tty {
                    let what = what.clone();
                    let limit = *deadline;
                    let started = Instant::now();
                    let stderr = self.stderr;
                    let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                    let handle = tokio::spawn(async move {
                        let mut i = 0;
                        loop {
                            Self::raw(
                                stderr,
                                &format!(
                                    "\r\x1b[2K  {} waiting {} / {}: {what}",
                                    frames[i % frames.len()],
                                    duration::format(Duration::from_millis(
                                        started.elapsed().as_millis() as u64 / 100 * 100
                                    )),
                                    duration::format(limit)
                                ),
                            );
                            i += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    });
                    *self.spinner.lock().unwrap() = Some(handle);
                } else {
                    say!(self, "  … waiting up to {}: {what}", duration::format(*deadline));
                }
            }
            Event::StepFinished { index, compensation } => {
                self.stop_spinner();
                self.finished(run.step(*index, *compensation), "");
            }
            Event::ChildStarted {
                index,
                compensation,
                child,
            } => {
                self.stop_spinner();
                let s = run.child(*index, *compensation, *child);
                let on = s.cluster.as_deref().map(|c| format!(" on {c}")).unwrap_or_default();
                let item = s
                    .item
                    .as_ref()
                    .map(|i| format!(", item {}", crate::fieldpath::as_text(i)))
                    .unwrap_or_default();
                say!(self, "  ▶ {} ({}{on}{item})", s.name, s.step_type);
            }
            Event::ChildFinished {
                index,
                compensation,
                child,
            } => {
                self.stop_spinner();
                self.finished(run.child(*index, *compensation, *child), "  ");
            }
            Event::RunFinished => {
                self.stop_spinner();
                let took = run
                    .duration_ms
                    .map(|ms| duration::format(Duration::from_millis(ms)))
                    .unwrap_or_default();
                match run.phase {
                    Phase::Succeeded => say!(self, "run {} succeeded in {took}", run.id),
                    phase => {
                        say!(self, "run {} {} after {took}", run.id, phase.as_str());
                        if let Some(e) = &run.error {
                            say!(self, "{e}");
                        }
                    }
                }
            }
        }
    }
}
