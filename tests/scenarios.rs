//! One test per scenario file under `scenarios/`: run it for real in a sandbox,
//! snapshot its report with insta, and fail (printing the report) when any
//! expectation did not hold. New scenario files are picked up without editing Rust.

use std::path::PathBuf;

use netscenario::{report, FileOutcome};
use rstest::rstest;

mod common;

/// Scenarios that declare `requires` are under scenarios/requires/ and run by
/// tests/requires.rs, which can report them as ignored when the machine lacks them.
#[rstest]
fn scenario(
    #[files("scenarios/**/*.toml")]
    #[exclude("^scenarios/requires/")]
    path: PathBuf,
) {
    common::require_root();
    // Relative to the crate, so that snapshots do not depend on where it is cloned.
    let path = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .map(|p| p.to_path_buf())
        .unwrap_or(path);
    let record = match netscenario::run_file(&path) {
        FileOutcome::Ran(r) => r,
        FileOutcome::Invalid(e) => panic!("{:?}", miette::Report::new(e)),
        FileOutcome::Environment(e) => panic!("{:?}", miette::Report::new(e)),
    };
    assert!(
        record.skipped.is_none(),
        "{} declares `requires`: move it under scenarios/requires/ so that cargo test can report it skipped",
        path.display()
    );
    let text = report::render(&record);
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_snapshot_path("snapshots/scenarios");
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!(record.name.clone(), text));
    assert!(
        record.passed(),
        "scenario {} did not hold:\n\n{text}",
        record.name
    );
}
