//! Scenarios that declare `requires` (kept under scenarios/requires/): each runs when
//! the machine has what it needs, and is reported by cargo test as ignored, with the
//! reason, when it does not: never as passed, never as failed. libtest-mimic, since
//! the standard harness cannot ignore a test at run time.

use std::path::Path;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use netscenario::{report, runner, scenario};

fn run(path: &Path) -> Result<Completion, Failed> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the integration tests create network namespaces and need root".into());
    }
    let sc = scenario::load(path).map_err(|e| format!("{:?}", miette::Report::new(e)))?;
    if sc.requires.is_empty() {
        return Err(format!(
            "{} declares no `requires`; it belongs in scenarios/, not scenarios/requires/",
            path.display()
        )
        .into());
    }
    runner::preflight([&sc]).map_err(|e| format!("{:?}", miette::Report::new(e)))?;
    let record = runner::run(&sc, |_| {}).map_err(|e| format!("{:?}", miette::Report::new(e)))?;
    if let Some(reason) = record.skipped {
        return Ok(Completion::ignored_with(reason));
    }
    if record.passed() {
        Ok(Completion::Completed)
    } else {
        Err(format!(
            "scenario {} did not hold:\n\n{}",
            sc.name,
            report::render(&record)
        )
        .into())
    }
}

fn main() {
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let trials = scenario::find_files(&[root.join("scenarios/requires")])
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            Trial::ignorable_test(format!("scenario::{}", rel.display()), move || run(&rel))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
