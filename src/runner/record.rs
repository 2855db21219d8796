//! What a run observed, step by step: the input of the reporter.

use crate::probe::fwstate::FirewallSnapshot;
use crate::probe::reach::ObservedMatrix;
use crate::step::shell::{ShellFailure, ShellOutput};

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub name: String,
    pub about: Option<String>,
    pub source: Option<String>,
    pub path: String,
    pub steps: Vec<StepRecord>,
    /// How the machine's own network namespace changed during the run (never, unless
    /// something outside the sandbox changed it): a failure of the run.
    pub machine_changed: Vec<String>,
    /// Why the scenario was not run: a requirement the machine does not meet.
    pub skipped: Option<String>,
    /// The pcap files written, one per captured interface.
    pub pcaps: Vec<PcapArtifact>,
    /// What went wrong with the capture itself (it does not fail the run).
    pub capture_errors: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StepRecord {
    pub index: usize,
    pub name: String,
    pub netns: String,
    /// Line of the step in the scenario file.
    pub line: usize,
    /// The script of a `run` step, or the command a typed action equals.
    pub action: ActionText,
    pub outcome: ActionOutcome,
    pub checks: Vec<Check>,
    /// Firewall state of every namespace at this checkpoint (after its probes).
    pub firewall: Option<FirewallSnapshot>,
    /// What crossed each captured interface during this checkpoint's probes.
    pub traffic: Vec<IfaceTraffic>,
}

/// The packets one captured interface saw during a checkpoint: distinct one-line
/// summaries, sorted (how many of each depends on timing, which ones does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceTraffic {
    /// `namespace:interface`
    pub label: String,
    pub lines: Vec<String>,
}

/// A pcap file the run wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapArtifact {
    /// `namespace:interface`
    pub label: String,
    pub path: std::path::PathBuf,
    pub packets: u64,
}

#[derive(Debug, Clone)]
pub enum ActionText {
    None,
    Script(String),
    Typed(String),
}

#[derive(Debug, Clone)]
pub enum ActionOutcome {
    /// A checkpoint with no action.
    NoAction,
    Done {
        output: Option<ShellOutput>,
    },
    ShellFailed(ShellFailure),
    /// A typed action or the runner itself failed; the message has its causes.
    Failed(String),
    /// Not run: an earlier step failed.
    NotRun,
}

#[derive(Debug, Clone)]
pub enum Check {
    Matrix(ObservedMatrix),
    Stdout { needle: String, found: bool },
    Firewall(FirewallCheck),
    Packets(PacketCheck),
}

/// The result of one `expect.packets` entry.
#[derive(Debug, Clone)]
pub struct PacketCheck {
    /// `seen "icmp echo request 10.0.0.1 > 10.0.0.2" on host:br0 (count >=2)`
    pub what: String,
    pub ok: bool,
    /// How many matching packets there were.
    pub count: usize,
    /// What the interface did see, shown when the check fails.
    pub saw: Vec<String>,
}

/// The result of one `expect.iptables` or `expect.nft` table.
#[derive(Debug, Clone)]
pub struct FirewallCheck {
    /// `iptables filter in host`, `nft in ns1`.
    pub label: String,
    pub items: Vec<FirewallItem>,
}

#[derive(Debug, Clone)]
pub struct FirewallItem {
    /// `policy FORWARD DROP`, `present -A ...`, `count -P FORWARD >0`.
    pub what: String,
    pub ok: bool,
    /// What was there instead, shown when the item fails.
    pub observed: Option<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        match self {
            Check::Matrix(m) => m.mismatches() == 0,
            Check::Stdout { found, .. } => *found,
            Check::Firewall(f) => f.items.iter().all(|i| i.ok),
            Check::Packets(p) => p.ok,
        }
    }
}

impl StepRecord {
    pub fn failed(&self) -> bool {
        matches!(
            self.outcome,
            ActionOutcome::ShellFailed(_) | ActionOutcome::Failed(_)
        )
    }

    pub fn passed(&self) -> bool {
        !self.failed() && self.checks.iter().all(Check::passed)
    }
}

impl RunRecord {
    /// The record of a run of `scenario` before any step ran.
    pub fn empty(scenario: &crate::scenario::Scenario) -> RunRecord {
        RunRecord {
            name: scenario.name.clone(),
            about: scenario.about.clone(),
            source: scenario.source.clone(),
            path: scenario.path.display().to_string(),
            steps: Vec::new(),
            machine_changed: Vec::new(),
            skipped: None,
            pcaps: Vec::new(),
            capture_errors: Vec::new(),
        }
    }

    pub fn passed(&self) -> bool {
        self.machine_changed.is_empty() && self.steps.iter().all(StepRecord::passed)
    }

    pub fn failed_checks(&self) -> usize {
        self.steps
            .iter()
            .flat_map(|s| &s.checks)
            .filter(|c| !c.passed())
            .count()
    }

    /// (cells probed, cells that did not come out as expected) over every matrix.
    pub fn cell_counts(&self) -> (usize, usize) {
        let mut n = 0;
        let mut wrong = 0;
        for c in self.steps.iter().flat_map(|s| &s.checks) {
            if let Check::Matrix(m) = c {
                for cell in m.cells.iter().flatten().filter(|c| c.expected.is_some()) {
                    n += 1;
                    if !cell.matches() {
                        wrong += 1;
                    }
                }
            }
        }
        (n, wrong)
    }

    pub fn failed_step(&self) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.failed())
    }
}
