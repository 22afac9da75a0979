//! The one place a command waits for the signal to stop: Ctrl-C (SIGINT), or SIGTERM on Unix
//! (what Kubernetes and systemd send). Used by `serve` (graceful shutdown), `sim`, `demo --hold`
//! and `run` (cancelling the run).

/// Returns when the process is asked to stop.
pub(crate) async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            // No SIGTERM handler could be installed: Ctrl-C still stops.
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
