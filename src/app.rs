//! The receiver assembled in one place: the executors (live and dry-run), the run service, the
//! metrics and the HTTP state, from one [`Config`]. `serve`, the demo, the tests and the
//! benchmarks all build it here, so none of them can wire it differently.

use std::sync::Arc;

use axum::Router;

use crate::cluster::Registry;
use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::plan::set::PlanSet;
use crate::run::service::Runs;
use crate::run::store::RunStore;
use crate::server::{self, AppState, Settings};

/// What the receiver is built from.
pub struct Config {
    /// The clusters, for live runs.
    pub live: Arc<Registry>,
    /// The same clusters with every write sent as a dry run.
    pub dry: Arc<Registry>,
    pub store: Arc<dyn RunStore>,
    pub plans: PlanSet,
    /// Tokens and request limits of the API.
    pub settings: Settings,
    /// Where run lifecycle notices go, if anywhere.
    pub notify: Option<crate::notify::Notifier>,
}

/// The assembled receiver.
pub struct App {
    pub runs: Arc<Runs>,
    pub state: AppState,
}

impl App {
    pub fn build(config: Config) -> App {
        let runs = Runs::new(
            config.store,
            config.plans,
            Arc::new(Executor::new(config.live)),
            Arc::new(Executor::new(config.dry)),
            Arc::new(Metrics::new()),
            config.notify,
        );
        let state = AppState {
            runs: runs.clone(),
            settings: config.settings,
        };
        App { runs, state }
    }

    /// The HTTP API over this app.
    pub fn router(&self) -> Router {
        server::router(self.state.clone())
    }
}
