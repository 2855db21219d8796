//! What a single probe cell observed, and the timing rules every probe follows.

use std::fmt;
use std::time::Duration;

/// What one cell of a reachability matrix observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A reply came back (ICMP echo reply, TCP handshake completed, UDP answer).
    Ok,
    /// Nothing came back during the whole window.
    Dropped { detail: Option<String> },
    /// An error came back: an ICMP/ICMPv6 error or a TCP RST. `detail` says which,
    /// e.g. `icmp port-unreachable from 10.0.0.1` or `tcp rst`.
    Rejected { detail: String },
    /// The source could not even send: no route (ENETUNREACH, EHOSTUNREACH at send time,
    /// an `unreachable`/`prohibit`/`blackhole` route, no source address).
    Unreachable { detail: String },
}

/// The cell words used in scenario matrices and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    Ok,
    Drop,
    Reject,
    Unreachable,
}

impl CellKind {
    pub fn word(self) -> &'static str {
        match self {
            CellKind::Ok => "ok",
            CellKind::Drop => "drop",
            CellKind::Reject => "reject",
            CellKind::Unreachable => "unreachable",
        }
    }

    pub fn parse(word: &str) -> Option<CellKind> {
        Some(match word {
            "ok" => CellKind::Ok,
            "drop" => CellKind::Drop,
            "reject" => CellKind::Reject,
            "unreachable" => CellKind::Unreachable,
            _ => return None,
        })
    }
}

impl fmt::Display for CellKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl ProbeOutcome {
    pub fn kind(&self) -> CellKind {
        match self {
            ProbeOutcome::Ok => CellKind::Ok,
            ProbeOutcome::Dropped { .. } => CellKind::Drop,
            ProbeOutcome::Rejected { .. } => CellKind::Reject,
            ProbeOutcome::Unreachable { .. } => CellKind::Unreachable,
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            ProbeOutcome::Ok => None,
            ProbeOutcome::Dropped { detail } => detail.as_deref(),
            ProbeOutcome::Rejected { detail } | ProbeOutcome::Unreachable { detail } => {
                Some(detail)
            }
        }
    }
}

/// Timing of one probe round.
///
/// A cell expected `ok` is retried every `interval` until it succeeds or `deadline`
/// passes. A cell expected to fail is probed every `interval` for the whole `window`
/// and must stay failed all that time (any success during the window makes it `ok`).
///
/// Unless the scenario sets `window`, it adapts to the machine's load
/// ([`ProbeTiming::for_load`]): [`RTT_FACTOR`] times a round trip measured just
/// before the probes ([`calibrate`]), at least [`MIN_WINDOW`], at most `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    pub deadline: Duration,
    pub window: Duration,
    pub interval: Duration,
    /// The window adapts to the load (the scenario did not fix it).
    pub adaptive: bool,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        ProbeTiming {
            deadline: Duration::from_secs(3),
            window: Duration::from_millis(300),
            interval: Duration::from_millis(100),
            adaptive: true,
        }
    }
}

/// The shortest adaptive window.
pub const MIN_WINDOW: Duration = Duration::from_millis(10);
/// An adaptive window is this many times the calibrated round trip.
pub const RTT_FACTOR: u32 = 100;

impl ProbeTiming {
    /// The timing for a machine whose round trip between two threads through the
    /// kernel is `rtt` now: a reply that would come back at all comes back within a
    /// small multiple of that, so [`RTT_FACTOR`] times it leaves a wide margin; an
    /// idle machine gets [`MIN_WINDOW`], a loaded one up to `window`.
    pub fn for_load(self, rtt: Duration) -> ProbeTiming {
        if !self.adaptive {
            return self;
        }
        ProbeTiming {
            window: (rtt * RTT_FACTOR).clamp(MIN_WINDOW.min(self.window), self.window),
            ..self
        }
    }
}

/// The slowest of a few round trips between two threads over a Unix datagram
/// socket pair: one kernel crossing and one wake-up each way, the part of a probe's
/// round trip that grows when the machine is busy (a packet's own trip between two
/// namespaces over veth and a bridge takes 10–20 µs). About 0.1 ms idle.
pub fn calibrate() -> Duration {
    use std::os::unix::net::UnixDatagram;
    const ROUNDS: usize = 8;
    let Ok((a, b)) = UnixDatagram::pair() else {
        return Duration::ZERO;
    };
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        for _ in 0..ROUNDS {
            if b.recv(&mut buf).is_err() || b.send(&buf).is_err() {
                return;
            }
        }
    });
    let mut worst = Duration::ZERO;
    let mut buf = [0u8; 1];
    for _ in 0..ROUNDS {
        let t = std::time::Instant::now();
        if a.send(&[1]).is_err() || a.recv(&mut buf).is_err() {
            break;
        }
        worst = worst.max(t.elapsed());
    }
    let _ = echo.join();
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_load_within_its_bounds() {
        let t = ProbeTiming::default();
        assert_eq!(t.for_load(Duration::from_micros(30)).window, MIN_WINDOW);
        assert_eq!(
            t.for_load(Duration::from_millis(1)).window,
            Duration::from_millis(100)
        );
        assert_eq!(t.for_load(Duration::from_millis(50)).window, t.window);
        let fixed = ProbeTiming {
            window: Duration::from_secs(1),
            adaptive: false,
            ..t
        };
        assert_eq!(
            fixed.for_load(Duration::ZERO).window,
            Duration::from_secs(1)
        );
        // A scenario's maximum below the minimum wins.
        let short = ProbeTiming {
            window: Duration::from_millis(10),
            ..t
        };
        assert_eq!(
            short.for_load(Duration::ZERO).window,
            Duration::from_millis(10)
        );
    }
}
