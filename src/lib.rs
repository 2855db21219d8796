//! netscenario: test Linux networking for real. A TOML scenario's steps run in a
//! private sandbox of namespaces; at checkpoints the expected reachability matrix is
//! probed with real packets; the run is reported as deterministic text.
//!
//! The pipeline, one module per stage: [`scenario`] (parse and validate, no syscalls)
//! → [`sandbox`] (namespaces and guaranteed teardown) → [`step`] (shell and typed
//! actions) → [`probe`] (reachability) → [`runner`] (order, events, records) →
//! [`report`] (text).

#![deny(unsafe_code)]

pub mod capture;
pub mod probe;
pub mod report;
pub mod runner;
pub mod sandbox;
pub mod scenario;
pub mod step;
pub mod timings;

use std::path::Path;

/// What running one scenario file gave.
#[derive(Debug)]
pub enum FileOutcome {
    Ran(runner::RunRecord),
    Invalid(scenario::ScenarioError),
    Environment(runner::EnvError),
}

/// Load, validate, preflight and run one scenario file, without events. The report
/// of a run is [`report::render`] of the record.
pub fn run_file(path: &Path) -> FileOutcome {
    let sc = match scenario::load(path) {
        Ok(sc) => sc,
        Err(e) => return FileOutcome::Invalid(e),
    };
    if let Err(e) = runner::preflight([&sc]) {
        return FileOutcome::Environment(e);
    }
    match runner::run(&sc, |_| {}) {
        Ok(r) => FileOutcome::Ran(r),
        Err(e) => FileOutcome::Environment(e),
    }
}

/// An error and its causes on one line: `failed to x: failed to y: os error`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
