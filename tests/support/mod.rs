//! Test support shared by the integration tests: real test clusters, running plans against them,
//! and a fault-injecting proxy to put in front of a cluster.
#![allow(dead_code)]

pub mod alertmanager;
pub mod clusters;
pub mod proxy;
pub mod run;
pub mod server;

#[allow(unused_imports)]
pub use clusters::shared;
