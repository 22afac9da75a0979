//! Recovery plans: the model ([`model`]), loading from files ([`load`]) and validation
//! ([`validate`]). Everything here is pure but for reading files in `load`.

pub mod cluster_source;
pub mod load;
pub mod model;
pub mod set;
pub mod spans;
pub mod validate;

pub use load::{load_paths, load_str, LoadError, LoadedPlan};
pub use model::*;
pub use validate::{validate, Problem, Report};
