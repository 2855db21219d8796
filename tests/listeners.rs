//! TCP and UDP probes leave nothing behind: the runner's listeners are threads and
//! sockets of the runner itself, so after a run the process has exactly the threads
//! and file descriptors it had before, and no listener process exists.
//! (A test binary of its own: other tests running in parallel would open fds.)

use std::path::Path;

use netscenario::{report, FileOutcome};

mod common;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn tcp_and_udp_probes_leave_no_listener_socket_or_thread() {
    common::require_root();
    // Warm up once: lazily created process-wide state (tokio's, libc's) is not a leak.
    let _ = netscenario::run_file(Path::new("scenarios/firewall/reject-vs-drop.toml"));
    let (fd0, th0) = (fds(), threads());
    let before = common::machine_state();
    for path in [
        "scenarios/firewall/reject-vs-drop.toml",
        "scenarios/firewall/docker-published-port.toml",
    ] {
        let FileOutcome::Ran(record) = netscenario::run_file(Path::new(path)) else {
            panic!("{path} did not run")
        };
        assert!(record.passed(), "{}", report::render(&record));
    }
    assert_eq!(fds(), fd0, "file descriptors leaked");
    assert_eq!(threads(), th0, "threads leaked");
    assert_eq!(before, common::machine_state());
}
