//! recoverd turns an alert into a safe, recorded recovery across Kubernetes clusters.
//!
//! The flow: an alert ([`alert`]) is matched ([`matcher`]) to plans ([`plan`]);
//! the executor ([`executor`]) runs their steps against named clusters ([`cluster`]), rendering
//! [`template`]s and reading [`fieldpath`]s, and records every step in a run ([`run`]).

pub(crate) mod alert;
pub mod app;
pub mod cli;
pub mod cluster;
pub(crate) mod duration;
pub mod executor;
pub mod fieldpath;
pub(crate) mod matcher;
pub(crate) mod metrics;
pub mod notify;
pub mod plan;
#[cfg(feature = "sim")]
pub mod reactor;
pub mod record;
pub mod run;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
pub(crate) mod telemetry;
pub mod template;
#[cfg(feature = "sim")]
pub mod world;
