//! Recovery plans: the resource as written ([`model`]), loading it from files ([`load`]),
//! validating it into a typed [`Plan`] ([`mod@validate`], [`compiled`]) and the set a server matches
//! alerts against ([`set`]). Everything here is pure but for reading files in `load` and the
//! home cluster's `RecoveryPlan` resources in [`cluster_source`].

pub mod cluster_source;
pub mod compiled;
pub mod load;
pub mod model;
pub mod set;
pub mod spans;
pub mod validate;

pub use compiled::{Plan, Step as PlanStep, StepKind};
pub use load::{load_paths, load_str, LoadError, LoadedPlan};
pub use model::*;
pub use validate::{compile, compile_one, validate, Invalid, Problem, Report, Rule};
