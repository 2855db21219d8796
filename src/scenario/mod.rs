//! Parse and validate TOML scenario files into a typed [`Scenario`]. No syscalls.

mod error;
mod load;
pub mod matrix;
mod model;
mod raw;

pub use error::{InvalidScenario, Problem, ScenarioError};
pub use load::{load, parse, parse_duration};
pub use model::*;
