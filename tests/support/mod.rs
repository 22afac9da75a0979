//! Test support shared by the integration tests: real test clusters and a fault-injecting proxy.
#![allow(dead_code)]

pub mod clusters;

pub use clusters::{shared, TestClusters};
