//! Where a run's time goes: with `NETSCENARIO_TIMINGS=1` in the environment, every
//! phase of a run (guard, sandbox, topology, each action, probes, firewall state,
//! explanations, capture, teardown) prints its wall-clock time to stderr as it ends.
//! It is the profile behind the benchmark's figures; off, it costs one atomic load.

use std::sync::OnceLock;
use std::time::Instant;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("NETSCENARIO_TIMINGS").is_some_and(|v| v != "0"))
}

/// Print a measured value that is not a phase (the probe window a checkpoint chose).
pub fn note(what: impl FnOnce() -> String) {
    if enabled() {
        eprintln!("[timing]              {}", what());
    }
}

/// A phase being timed; it reports when dropped.
pub struct Phase {
    name: Option<String>,
    start: Instant,
}

/// Start timing a phase (its name is only built when timings are on).
pub fn phase(name: impl FnOnce() -> String) -> Phase {
    Phase {
        name: enabled().then(name),
        start: Instant::now(),
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            eprintln!(
                "[timing] {:>9.3} ms  {n}",
                self.start.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}
