//! Every run leaves the machine exactly as it found it: on success, on a failing
//! step, on a panic in the runner, and when the runner is killed with SIGKILL in the
//! middle of a step. Each test compares the machine's own namespaces, links, mounts
//! and iptables rules before and after, and looks for the processes steps started.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netscenario::{report, runner, sandbox, scenario, FileOutcome};

mod common;
use common::{machine_state, processes_with};

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_leaves_no_process_link_mount_or_rule() {
    common::require_root();
    let before = machine_state();
    let outcome = netscenario::run_file(Path::new("tests/fixtures/leaves-processes.toml"));
    let FileOutcome::Ran(record) = outcome else {
        panic!("fixture did not run: {outcome:?}")
    };
    assert!(record.passed(), "{}", report::render(&record));
    // The sandbox's PID 1 is gone when run_file returns; its processes die with it.
    wait_until(
        "the fixture's sleeps are gone",
        Duration::from_secs(5),
        || processes_with("3600.4242").is_empty(),
    );
    assert_eq!(before, machine_state());
}

#[test]
fn failing_step_is_reported_and_cleaned_up() {
    common::require_root();
    let before = machine_state();
    let FileOutcome::Ran(record) =
        netscenario::run_file(Path::new("tests/fixtures/failing-step.toml"))
    else {
        panic!("fixture did not run")
    };
    assert!(!record.passed());
    let text = report::render(&record);
    assert!(
        text.contains("command:   ip link set nosuchlink up   (script line 3)"),
        "{text}"
    );
    assert!(text.contains("status:    exit status 1"), "{text}");
    assert!(text.contains("Cannot find device \"nosuchlink\""), "{text}");
    assert!(!text.contains("| never reached"), "{text}");
    assert!(
        text.contains("step 2 [host] never runs ... not run"),
        "{text}"
    );
    wait_until(
        "the fixture's sleep is gone",
        Duration::from_secs(5),
        || processes_with("3600.6161").is_empty(),
    );
    assert_eq!(before, machine_state());
}

#[test]
fn panic_inside_the_sandbox_still_tears_down() {
    common::require_root();
    let before = machine_state();
    let result = std::panic::catch_unwind(|| {
        sandbox::run(|sb| {
            let mut cmd = Command::new("bash");
            cmd.args([
                "-c",
                "ip link add brpanic type bridge; sleep 3600.7171 & ip netns add p1",
            ]);
            sb.spawn(cmd).unwrap().wait().unwrap();
            panic!("the runner panics");
        })
    });
    assert!(result.is_err());
    wait_until("the sleep is gone", Duration::from_secs(5), || {
        processes_with("3600.7171").is_empty()
    });
    assert_eq!(before, machine_state());
}

#[test]
fn sigkill_of_the_runner_mid_step_leaves_nothing() {
    common::require_root();
    let before = machine_state();
    let mut child = Command::new(env!("CARGO_BIN_EXE_netscenario"))
        .args([
            "run",
            "--out",
            "target/netscenario-test",
            "tests/fixtures/sleeps.toml",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Both sleeps running means step 2 is under way.
    wait_until(
        "the fixture reaches its second step",
        Duration::from_secs(20),
        || processes_with("3600.5151").len() >= 2,
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    wait_until(
        "every process of the killed run is gone",
        Duration::from_secs(5),
        || processes_with("3600.5151").is_empty(),
    );
    assert_eq!(before, machine_state());
}

#[test]
fn two_sandboxes_do_not_see_each_other() {
    common::require_root();
    let parse = |name: &str, ns: &str| {
        scenario::parse(
            Path::new(name),
            &format!(
                "[scenario]\nname = \"{name}\"\n[[step]]\nname = \"s\"\nrun = \"\"\"\nip netns add {ns}\nip link add br0 type bridge\nip netns list\nip -br link\n\"\"\"\n"
            ),
        )
        .unwrap()
    };
    let a = parse("iso-a", "only_a");
    let b = parse("iso-b", "only_b");
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| runner::run(&a, |_| {}).unwrap());
        let hb = s.spawn(|| runner::run(&b, |_| {}).unwrap());
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let out = |r: &runner::RunRecord| match &r.steps[0].outcome {
        runner::ActionOutcome::Done { output: Some(o) } => o.stdout.clone(),
        other => panic!("step failed: {other:?}"),
    };
    let (oa, ob) = (out(&ra), out(&rb));
    assert!(oa.contains("only_a") && !oa.contains("only_b"), "{oa}");
    assert!(ob.contains("only_b") && !ob.contains("only_a"), "{ob}");
    assert!(
        !oa.contains("eth0"),
        "the sandbox sees the machine's links: {oa}"
    );
}

/// Regression guard: a step that hangs is killed at its timeout, with the command
/// that hung named, and what it started is gone.
#[test]
fn hanging_step_is_killed_at_its_timeout_and_named() {
    common::require_root();
    let before = machine_state();
    let FileOutcome::Ran(record) = netscenario::run_file(Path::new("tests/fixtures/hangs.toml"))
    else {
        panic!("fixture did not run")
    };
    let text = report::render(&record);
    assert!(
        text.contains("command:   sleep 3600.8181   (script line 2)"),
        "{text}"
    );
    assert!(
        text.contains("killed after the 0.5s step timeout"),
        "{text}"
    );
    wait_until("the hung sleep is gone", Duration::from_secs(5), || {
        processes_with("3600.8181").is_empty()
    });
    assert_eq!(before, machine_state());
}

/// SIGINT (Ctrl-C), SIGTERM and SIGKILL at 30 moments spread over a run: after
/// each, nothing of the run is left, and the next run works.
#[test]
fn signals_at_random_moments_leave_nothing() {
    common::require_root();
    let before = machine_state();
    let signals = [
        nix::sys::signal::Signal::SIGKILL,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ];
    // A deterministic spread of 30 moments from 0 to ~1.5 s into the run: setup
    // (namespaces, links, rules being created), the probing window, the long step.
    for i in 0..30u64 {
        let delay = Duration::from_millis((i * 397) % 1500);
        let mut child = Command::new(env!("CARGO_BIN_EXE_netscenario"))
            .args([
                "run",
                "--out",
                "target/netscenario-test",
                "tests/fixtures/probing.toml",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let sig = signals[i as usize % signals.len()];
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        child.wait().unwrap();
        wait_until(
            "every process of the killed run is gone",
            Duration::from_secs(5),
            || processes_with("3600.5252").is_empty(),
        );
        assert_eq!(before, machine_state(), "after {sig} at {delay:?}");
    }
    // And the next run works.
    let outcome = netscenario::run_file(Path::new("tests/fixtures/leaves-processes.toml"));
    assert!(
        matches!(outcome, FileOutcome::Ran(ref r) if r.passed()),
        "{outcome:?}"
    );
}

/// Regression guard: a scenario may create objects with the names the machine's own
/// objects have (eth0, ifb0, a namespace called eth0, lo down); in the sandbox they
/// are other objects, and the machine's stay as they were.
#[test]
fn names_that_exist_on_the_machine_are_the_sandboxs_own() {
    common::require_root();
    let before = machine_state();
    let FileOutcome::Ran(record) =
        netscenario::run_file(Path::new("tests/fixtures/same-names.toml"))
    else {
        panic!("fixture did not run")
    };
    assert!(record.passed(), "{}", report::render(&record));
    assert_eq!(before, machine_state());
}
