//! Test support shared by the integration tests: real test clusters, running plans against them.
#![allow(dead_code)]

pub mod clusters;
pub mod run;
pub mod server;

pub use clusters::shared;
