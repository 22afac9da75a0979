//! Test support shared by the integration tests: real test clusters, running plans against them.
#![allow(dead_code)]

pub mod alertmanager;
pub mod clusters;
pub mod run;

pub use clusters::shared;
