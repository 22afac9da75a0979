//! Runs: the record of one execution of a plan ([`record`]).

pub mod record;
pub mod service;
pub mod store;

pub use record::{RecoveryRun, RunRecord, StepRecord};
