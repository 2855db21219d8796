//! One test per class of invalid scenario (files under tests/fixtures/invalid/): each
//! is refused before anything runs, and its exact error, as a user sees it, is
//! snapshotted. No root needed.

use std::path::PathBuf;

use miette::{GraphicalReportHandler, GraphicalTheme};
use netscenario::scenario;
use rstest::rstest;

#[rstest]
fn invalid_scenario_is_refused_with_a_pointed_error(
    #[files("tests/fixtures/invalid/*.toml")] path: PathBuf,
) {
    let path = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .map(|p| p.to_path_buf())
        .unwrap_or(path);
    let err = scenario::load(&path).expect_err("an invalid scenario must not load");
    assert!(!err.problems().is_empty(), "no problem located: {err:?}");
    let mut rendered = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut rendered, &err)
        .unwrap();
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_snapshot_path("snapshots/invalid");
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!(name, rendered));
}
