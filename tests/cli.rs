//! The command line's contract: exit codes and pointed errors for broken files.

use std::process::{Command, Output};

mod common;

fn netscenario(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netscenario"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_accepts_every_shipped_scenario() {
    let o = netscenario(&["check", "scenarios"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn unknown_host_points_at_the_column() {
    let o = netscenario(&["check", "tests/fixtures/invalid/unknown-host.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("unknown host `ns3` in the matrix"), "{e}");
    assert!(
        e.contains("tests/fixtures/invalid/unknown-host.toml:11:"),
        "{e}"
    );
    assert!(e.contains("help:"), "{e}");
}

#[test]
fn unknown_key_is_an_error_not_ignored() {
    let o = netscenario(&["check", "tests/fixtures/invalid/unknown-key.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("unknown field `rum`"), "{e}");
    assert!(e.contains("unknown-key.toml:6:"), "{e}");
}

#[test]
fn two_actions_in_one_step_are_an_error() {
    let o = netscenario(&["check", "tests/fixtures/invalid/two-actions.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("two actions: `run` and `bridge`"), "{e}");
    assert!(e.contains("two-actions.toml:7:"), "{e}");
}

#[test]
fn bad_address_is_an_error() {
    let o = netscenario(&["check", "tests/fixtures/invalid/bad-address.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("`192.168.1.300/24` is not a valid address"),
        "{e}"
    );
    assert!(e.contains("bad-address.toml:11:"), "{e}");
}

#[test]
fn invalid_scenario_creates_nothing() {
    common::require_root();
    let before = common::machine_state();
    let o = netscenario(&["run", "tests/fixtures/invalid/unknown-host.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(before, common::machine_state());
}

#[test]
fn failed_expectation_exits_1_and_passing_run_exits_0() {
    common::require_root();
    let o = netscenario(&[
        "run",
        "--out",
        "target/netscenario-test",
        "tests/fixtures/failing-step.toml",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = netscenario(&[
        "run",
        "--out",
        "target/netscenario-test",
        "tests/fixtures/leaves-processes.toml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("1 passed, 0 failed"), "{out}");
}

#[test]
fn two_scenarios_with_one_name_are_refused() {
    let dir = std::env::temp_dir().join(format!("netscenario-dup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = "[scenario]\nname = \"same\"\n[[step]]\nname = \"s\"\nrun = \"true\"\n";
    std::fs::write(dir.join("a.toml"), text).unwrap();
    std::fs::write(dir.join("b.toml"), text).unwrap();
    let o = netscenario(&["check", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("two scenario files are both named `same`"),
        "{}",
        stderr(&o)
    );
}
