//! The `netscenario` command line: parse flags, call the library, map outcomes to
//! exit codes. All the work is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netscenario::runner::{self, Event};
use netscenario::{report, scenario};

/// Exit codes, documented in the README.
const PASSED: u8 = 0;
const EXPECTATION_FAILED: u8 = 1;
const INVALID_SCENARIO: u8 = 2;
const ENVIRONMENT_UNUSABLE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "netscenario",
    version,
    about = "Test Linux networking for real: run TOML scenarios in private namespaces and check reachability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files (or every *.toml under the directories given).
    Run {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where to write each scenario's report (`<dir>/<scenario>/report.txt`).
        #[arg(long, default_value = "target/netscenario")]
        out: PathBuf,
        /// Print only the final report of each scenario, no per-step progress.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Validate scenario files without running anything.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().width(110).build())
    }));
    let code = match cli.command {
        Command::Run { paths, out, quiet } => run(&paths, &out, quiet),
        Command::Check { paths } => check(&paths).0,
    };
    ExitCode::from(code)
}

fn check(paths: &[PathBuf]) -> (u8, Vec<scenario::Scenario>) {
    let files = scenario::find_files(paths);
    if files.is_empty() {
        eprintln!("error: no scenario files (*.toml) found in {paths:?}");
        return (INVALID_SCENARIO, vec![]);
    }
    let mut good = Vec::new();
    let mut bad = 0;
    for f in &files {
        match scenario::load(f) {
            Ok(sc) => good.push(sc),
            Err(e) => {
                bad += 1;
                eprintln!("{:?}", miette::Report::new(e));
            }
        }
    }
    let mut names: Vec<&str> = good.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        eprintln!(
            "error: two scenario files are both named `{}`; scenario names must be unique",
            w[0]
        );
        bad += 1;
    }
    if bad > 0 {
        eprintln!("{bad} of {} scenario file(s) are invalid", files.len());
        (INVALID_SCENARIO, good)
    } else {
        eprintln!("{} scenario file(s) valid", files.len());
        (PASSED, good)
    }
}

fn run(paths: &[PathBuf], out: &Path, quiet: bool) -> u8 {
    let (code, scenarios) = check(paths);
    if code != PASSED {
        return code;
    }
    if let Err(e) = runner::preflight(&scenarios) {
        eprintln!("{:?}", miette::Report::new(e));
        return ENVIRONMENT_UNUSABLE;
    }
    let mut failed = 0;
    let mut skipped = 0;
    for sc in &scenarios {
        let options = runner::RunOptions {
            artifacts: out.to_path_buf(),
        };
        let result = runner::run_with(sc, &options, |ev| {
            if quiet {
                return;
            }
            match ev {
                Event::ScenarioStarted { scenario } => {
                    println!("=== {} ({})", scenario.name, scenario.path.display())
                }
                Event::StepStarted { .. } => {}
                Event::StepFinished { record } => print!("{}", report::render_step(record)),
                Event::ScenarioFinished { record } => {
                    for p in &record.pcaps {
                        println!(
                            "pcap {}: {} ({} packets)",
                            p.label,
                            p.path.display(),
                            p.packets
                        );
                    }
                    println!("{}\n", report::summary(record))
                }
            }
        });
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{:?}", miette::Report::new(e));
                return ENVIRONMENT_UNUSABLE;
            }
        };
        let text = report::render(&record);
        if quiet {
            print!("{text}");
        }
        let dir = out.join(&record.name);
        let path = dir.join("report.txt");
        match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, &text)) {
            Ok(()) => println!("report: {}", path.display()),
            Err(e) => eprintln!("warning: could not write {}: {e}", path.display()),
        }
        if record.skipped.is_some() {
            skipped += 1;
        } else if !record.passed() {
            failed += 1;
        }
    }
    println!(
        "{} passed, {} failed, {} skipped",
        scenarios.len() - failed - skipped,
        failed,
        skipped
    );
    if failed > 0 {
        EXPECTATION_FAILED
    } else {
        PASSED
    }
}
