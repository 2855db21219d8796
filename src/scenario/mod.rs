//! Parse and validate TOML scenario files into a typed [`Scenario`]. No syscalls.

mod error;
mod load;
pub mod matrix;
mod model;
mod raw;

pub use error::{InvalidScenario, Problem, ScenarioError};
pub use load::{find_files, load, parse, parse_duration};
pub use model::*;

/// The invariant the fuzz target checks, shared with the regression tests over its
/// corpus: any text is either a valid scenario or an error whose problems all point
/// inside the text, and rendering that error succeeds. Panics when it does not hold.
#[doc(hidden)]
pub fn assert_parse_invariants(text: &str) {
    match parse(std::path::Path::new("fuzz.toml"), text) {
        Ok(sc) => {
            assert!(!sc.steps.is_empty(), "a valid scenario without steps");
            let _ = sc.namespaces();
            let _ = sc.firewall_scope();
            let _ = sc.sysctl_keys();
        }
        Err(e) => {
            let problems = e.problems();
            assert!(!problems.is_empty(), "an error without a located problem");
            for p in problems {
                let end = p.span.offset() + p.span.len();
                assert!(end <= text.len(), "span {:?} outside the input", p.span);
            }
            let mut out = String::new();
            miette::GraphicalReportHandler::new()
                .render_report(&mut out, &e)
                .expect("rendering an error");
        }
    }
}
