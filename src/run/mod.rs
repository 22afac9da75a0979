//! Runs: deciding which runs start ([`service`]: claims, approvals, expiry) and keeping their
//! records ([`store`]). The record itself is [`crate::record`], shared with the executor.

pub use crate::record;
pub mod service;
pub mod store;

pub use record::{RecoveryRun, RunRecord, StepRecord};
