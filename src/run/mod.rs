//! Runs: the record of one execution of a plan ([`record`]).

pub mod record;

pub use record::{RecoveryRun, RunRecord, StepRecord};
