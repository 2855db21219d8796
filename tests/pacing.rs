//! Ping pacing in `run` scripts: `ping -c N` finds netscenario's `ping` first on the
//! step's PATH, which runs the real ping with `-i` (README, "Ping pacing"); the
//! replies and the output are the real ping's; `ping_interval = "1s"` turns it off.

use netscenario::{runner, scenario};

mod common;

const STEPS: &str = r#"
[[step]]
name = "which ping, and a counted ping"
run = """
ip link set lo up
type -P ping
ping -c 2 127.0.0.1
"""
"#;

fn stdout_of(header: &str) -> String {
    let text = format!("[scenario]\nname = \"pacing\"\n{header}\n{STEPS}");
    let sc = scenario::parse(std::path::Path::new("pacing.toml"), &text).unwrap();
    let record = runner::run(&sc, |_| {}).unwrap();
    assert!(record.passed(), "{}", netscenario::report::render(&record));
    match &record.steps[0].outcome {
        runner::ActionOutcome::Done { output: Some(o) } => o.stdout.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn counted_pings_are_paced_by_the_shim_and_answered_for_real() {
    common::require_root();
    let out = stdout_of("");
    assert!(out.starts_with("/run/netscenario/bin/ping\n"), "{out}");
    assert!(
        out.contains("2 packets transmitted, 2 received, 0% packet loss"),
        "{out}"
    );
}

#[test]
fn ping_interval_of_a_second_keeps_the_real_ping() {
    common::require_root();
    let out = stdout_of("ping_interval = \"1s\"");
    assert!(!out.contains("/run/netscenario/bin/ping"), "{out}");
    assert!(
        out.contains("2 packets transmitted, 2 received, 0% packet loss"),
        "{out}"
    );
}
