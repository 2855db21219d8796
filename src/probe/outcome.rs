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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    pub deadline: Duration,
    pub window: Duration,
    pub interval: Duration,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        ProbeTiming {
            deadline: Duration::from_secs(3),
            window: Duration::from_millis(300),
            interval: Duration::from_millis(100),
        }
    }
}
