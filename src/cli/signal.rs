//! The one place a command waits for the signal to stop: Ctrl-C (SIGINT), or SIGTERM on Unix
//! (what Kubernetes and systemd send). Used by `serve` (graceful shutdown), `sim`, `demo --hold`
//! and `run` (cancelling the run).

/// The stop signals, listened for from the moment [`Stop::listen`] returns: a signal that
/// arrives before anything awaits [`Stop::recv`] is not lost (and does not kill the process).
pub(crate) struct Stop {
    #[cfg(unix)]
    signals: Vec<tokio::signal::unix::Signal>,
}

impl Stop {
    /// Installs the handlers now (on Unix; elsewhere Ctrl-C is listened for when awaited).
    pub(crate) fn listen() -> Stop {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Stop {
                signals: [SignalKind::interrupt(), SignalKind::terminate()]
                    .into_iter()
                    .filter_map(|kind| signal(kind).ok())
                    .collect(),
            }
        }
        #[cfg(not(unix))]
        Stop {}
    }

    /// Returns when the process is asked to stop.
    pub(crate) async fn recv(self) {
        #[cfg(unix)]
        {
            if self.signals.is_empty() {
                // No handler could be installed: Ctrl-C still stops.
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            let waits = self.signals.into_iter().map(|mut s| {
                Box::pin(async move {
                    s.recv().await;
                })
            });
            futures::future::select_all(waits).await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Returns when the process is asked to stop (listening from the first poll).
pub(crate) async fn wait_for_stop() {
    Stop::listen().recv().await
}
