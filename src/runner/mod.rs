//! The runner: preflight the environment, then run a scenario's steps in order inside
//! a fresh sandbox, checking each step's expectations after its action. A checkpoint
//! mismatch does not stop the run; a failing action does. Emits [`Event`]s, returns a
//! [`RunRecord`]; never prints.

mod checkpoint;
pub mod events;
pub mod record;
pub mod requirement;

use std::path::{Path, PathBuf};

pub use checkpoint::MAX_EXPLAINED;
pub use events::Event;
pub use record::*;

use crate::capture::{Capture, CaptureSpec, CaptureTarget};
use crate::error_chain;
use crate::sandbox::{self, Sandbox, SandboxError};
use crate::scenario::{Action, Scenario, Step};
use crate::step::{shell, topology, typed};

/// Tools a scenario may call, and the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("bash", "bash"),
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("ss", "iproute2"),
    ("tc", "iproute2"),
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    ("iptables-save", "iptables"),
    ("ip6tables-save", "iptables"),
    ("iptables-legacy", "iptables"),
    ("nft", "nftables"),
    ("ebtables", "ebtables"),
    ("ping", "iputils-ping"),
    ("brctl", "bridge-utils"),
    ("ifconfig", "net-tools"),
    ("route", "net-tools"),
    ("arp", "net-tools"),
    ("tcpdump", "tcpdump"),
    ("sysctl", "procps"),
    ("nc", "netcat-openbsd"),
    ("conntrack", "conntrack"),
];

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum EnvError {
    #[error("netscenario needs root (it creates network namespaces)")]
    #[diagnostic(help("run it as root, e.g. `sudo -E cargo test` or in a privileged CI job"))]
    NotRoot,
    #[error("missing tools: {}", .0.iter().map(|(t, p)| format!("{t} (package {p})")).collect::<Vec<_>>().join(", "))]
    #[diagnostic(help("install them with `sudo ci/install.sh` (Debian 12), then try again"))]
    MissingTools(Vec<(String, String)>),
    #[error("failed to set up the sandbox")]
    #[diagnostic(help("this needs a kernel with network, mount and PID namespaces, and root"))]
    Sandbox(#[source] SandboxError),
}

/// Check that the machine can run these scenarios: root, and every tool they call.
pub fn preflight<'a>(scenarios: impl IntoIterator<Item = &'a Scenario>) -> Result<(), EnvError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(EnvError::NotRoot);
    }
    let mut needed: Vec<&str> = vec!["bash", "ip"];
    for sc in scenarios {
        for step in &sc.steps {
            match &step.action {
                Some(Action::Run { script }) => {
                    for word in commands_of(script) {
                        if let Some((t, _)) = TOOLS.iter().find(|(t, _)| *t == word) {
                            if !needed.contains(t) {
                                needed.push(t);
                            }
                        }
                    }
                }
                Some(Action::Iptables { ipv6, .. }) => {
                    needed.push(if *ipv6 { "ip6tables" } else { "iptables" })
                }
                _ => {}
            }
        }
    }
    let missing: Vec<(String, String)> = needed
        .into_iter()
        .filter(|t| !on_path(t))
        .map(|t| {
            let pkg = TOOLS
                .iter()
                .find(|(n, _)| *n == t)
                .map(|(_, p)| *p)
                .unwrap_or("?");
            (t.to_string(), pkg.to_string())
        })
        .fold(Vec::new(), |mut acc, x| {
            if !acc.contains(&x) {
                acc.push(x);
            }
            acc
        });
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EnvError::MissingTools(missing))
    }
}

/// The commands a script runs: the first word of each simple command, looking
/// through `sudo`, `setsid`, `nohup`, `exec`, `ip netns exec NS` and variable
/// assignments. A heuristic for preflight, not a shell parser.
pub fn commands_of(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in script.lines() {
        let line = line.split('#').next().unwrap_or("");
        for seg in line.split([';', '|', '&', '(', ')']) {
            let words: Vec<&str> = seg.split_whitespace().collect();
            let mut i = 0;
            while i < words.len() {
                let w = words[i];
                if w.contains('=')
                    || [
                        "sudo", "setsid", "nohup", "exec", "time", "then", "do", "else", "!",
                    ]
                    .contains(&w)
                {
                    i += 1;
                    continue;
                }
                out.push(w.to_string());
                if w == "ip"
                    && words.get(i + 1) == Some(&"netns")
                    && words.get(i + 2) == Some(&"exec")
                {
                    i += 4;
                    continue;
                }
                break;
            }
        }
    }
    out
}

pub(crate) fn on_path(tool: &str) -> bool {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join(tool).is_file())
}

/// Where a run puts what it leaves for the user (pcap files).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Each scenario's files go to `<artifacts>/<scenario name>/`.
    pub artifacts: PathBuf,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            artifacts: PathBuf::from("target/netscenario"),
        }
    }
}

/// Run one validated scenario in a fresh sandbox, with default options.
pub fn run(scenario: &Scenario, sink: impl FnMut(Event<'_>) + Send) -> Result<RunRecord, EnvError> {
    run_with(scenario, &RunOptions::default(), sink)
}

/// Run one validated scenario in a fresh sandbox.
pub fn run_with(
    scenario: &Scenario,
    options: &RunOptions,
    mut sink: impl FnMut(Event<'_>) + Send,
) -> Result<RunRecord, EnvError> {
    sink(Event::ScenarioStarted { scenario });
    if let Some(reason) = requirement::missing(&scenario.requires) {
        let record = RunRecord {
            skipped: Some(reason),
            ..RunRecord::empty(scenario)
        };
        sink(Event::ScenarioFinished { record: &record });
        return Ok(record);
    }
    let _whole = crate::timings::phase(|| format!("run {}", scenario.name));
    let sysctls = scenario.sysctl_keys();
    // The machine's view before the run is read while the sandbox and its capture
    // start (they are netscenario's own code, in namespaces of their own); the first
    // step waits for it.
    let (before, run) = std::thread::scope(|s| {
        let (read_tx, read_rx) = std::sync::mpsc::channel::<()>();
        let sysctls = &sysctls;
        let before = s.spawn(move || {
            let _t = crate::timings::phase(|| "machine view before".into());
            let view = sandbox::guard::machine_view(sysctls);
            let _ = read_tx.send(());
            view
        });
        let t = crate::timings::phase(|| "sandbox: set up, run, tear down".into());
        let run = sandbox::run(|sb| {
            let read_rx = read_rx;
            run_in(sb, scenario, options, &mut sink, &read_rx)
        });
        drop(t);
        (before.join().expect("the machine view panicked"), run)
    });
    let (mut record, closing) = run.map_err(EnvError::Sandbox)?;
    let t = crate::timings::phase(|| "machine view after".into());
    record.machine_changed = before.diff(&sandbox::guard::machine_view(&sysctls));
    drop(t);
    // The capture's sockets closed meanwhile (each close waits for the kernel).
    let t = crate::timings::phase(|| "capture sockets closed".into());
    drop(closing);
    drop(t);
    sink(Event::ScenarioFinished { record: &record });
    Ok(record)
}

fn run_in(
    sb: &Sandbox,
    scenario: &Scenario,
    options: &RunOptions,
    sink: &mut (impl FnMut(Event<'_>) + Send),
    machine_read: &std::sync::mpsc::Receiver<()>,
) -> (RunRecord, crate::capture::Closing) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
    let mut record = RunRecord::empty(scenario);
    // Capture starts before the first step, so every packet from the first on is seen.
    let capture = scenario.capture.as_ref().and_then(|c| {
        let spec = CaptureSpec {
            all: c.all,
            targets: c
                .on
                .iter()
                .map(|(netns, iface, filter)| CaptureTarget {
                    netns: netns.clone(),
                    iface: iface.clone(),
                    filter: filter.clone(),
                })
                .collect(),
        };
        let dir = options.artifacts.join(&scenario.name);
        let _t = crate::timings::phase(|| "capture start".into());
        match Capture::start(sb, &spec, &dir) {
            Ok(c) => Some(c),
            Err(e) => {
                record
                    .capture_errors
                    .push(format!("capture did not start: {}", crate::error_chain(&e)));
                None
            }
        }
    });
    // Namespaces whose capture a step's shell waits for once they exist.
    let captured_netns: Vec<String> = match (&scenario.capture, &capture) {
        (Some(c), Some(_)) if c.all => scenario.namespaces(),
        (Some(c), Some(_)) => {
            let mut v: Vec<String> = c.on.iter().map(|(n, _, _)| n.clone()).collect();
            v.dedup();
            v
        }
        _ => Vec::new(),
    };
    // Nothing of the scenario runs before the machine's view is taken.
    let _ = machine_read.recv();
    let mut stopped = false;
    let mut state = checkpoint::CheckpointState::new(scenario);
    if !scenario.topology.is_empty() {
        // Step 0: the declarative topology, before the first step.
        let topo = &scenario.topology;
        let t = crate::timings::phase(|| "topology".into());
        let outcome = match rt.block_on(topology::build(sb, topo)) {
            Ok(()) => ActionOutcome::Done { output: None },
            Err(e) => ActionOutcome::Failed(error_chain(&e)),
        };
        if let Some(c) = &capture {
            c.settle();
        }
        drop(t);
        let rec = StepRecord {
            index: 0,
            name: format!(
                "topology: {}, {}",
                plural(topo.bridges.len(), "bridge"),
                plural(topo.hosts.len(), "host")
            ),
            netns: crate::scenario::HOST.into(),
            line: topo.line,
            action: ActionText::Typed(topo.describe()),
            outcome,
            checks: Vec::new(),
            firewall: None,
            traffic: Vec::new(),
        };
        stopped = rec.failed();
        sink(Event::StepFinished { record: &rec });
        record.steps.push(rec);
    }
    for step in &scenario.steps {
        let action = match &step.action {
            None => ActionText::None,
            Some(Action::Run { script }) => ActionText::Script(script.clone()),
            Some(a) => ActionText::Typed(a.equivalent()),
        };
        let mut rec = StepRecord {
            index: step.index,
            name: step.name.clone(),
            netns: step.netns.clone(),
            line: step.line,
            action,
            outcome: ActionOutcome::NotRun,
            checks: Vec::new(),
            firewall: None,
            traffic: Vec::new(),
        };
        if stopped {
            record.steps.push(rec);
            continue;
        }
        sink(Event::StepStarted { step });
        let t = crate::timings::phase(|| format!("step {} action", step.index));
        rec.outcome = rt.block_on(run_action(
            sb,
            step,
            &captured_netns,
            scenario.ping_interval,
        ));
        drop(t);
        if let Some(c) = &capture {
            // Namespaces the step created are being captured before the next step.
            let _t = crate::timings::phase(|| "  capture settle".into());
            c.settle();
        }
        if rec.failed() {
            stopped = true;
        } else {
            let _t = crate::timings::phase(|| format!("step {} checkpoint", step.index));
            let out = rt.block_on(checkpoint::run(
                sb,
                scenario,
                step,
                &mut state,
                capture.as_ref(),
            ));
            rec.checks = out.checks;
            rec.checks.extend(stdout_checks(step, &rec.outcome));
            rec.firewall = out.firewall;
            rec.traffic = out.traffic;
        }
        sink(Event::StepFinished { record: &rec });
        record.steps.push(rec);
    }
    let mut closing = crate::capture::Closing::default();
    if let Some(c) = capture {
        let _t = crate::timings::phase(|| "capture stop".into());
        let mut report = c.stop_report();
        closing = std::mem::take(&mut report.closing);
        record.pcaps = report
            .files
            .into_iter()
            .map(|f| PcapArtifact {
                label: format!("{}:{}", f.netns, f.iface),
                path: f.path,
                packets: f.packets,
            })
            .collect();
        record.pcaps.sort_by(|a, b| a.label.cmp(&b.label));
        record
            .capture_errors
            .extend(report.errors.iter().map(|e| crate::error_chain(e)));
        for s in report.stats.iter().filter(|s| s.dropped > 0) {
            record.capture_errors.push(format!(
                "the capture in `{}` lost {} packets (buffer full)",
                s.netns, s.dropped
            ));
        }
    }
    drop(rt);
    (record, closing)
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

async fn run_action(
    sb: &Sandbox,
    step: &Step,
    captured: &[String],
    ping_interval: Option<std::time::Duration>,
) -> ActionOutcome {
    let Some(action) = &step.action else {
        return ActionOutcome::NoAction;
    };
    if !sb.has_netns(&step.netns) {
        return ActionOutcome::Failed(format!(
            "namespace `{}` does not exist at this step (was it deleted by an earlier step?)",
            step.netns
        ));
    }
    match action {
        Action::Run { script } => {
            match shell::run(
                sb,
                step.index,
                &step.netns,
                script,
                step.timeout,
                captured,
                ping_interval,
            ) {
                Ok(Ok(output)) => ActionOutcome::Done {
                    output: Some(output),
                },
                Ok(Err(failure)) => ActionOutcome::ShellFailed(failure),
                Err(e) => ActionOutcome::Failed(error_chain(&e)),
            }
        }
        typed_action => match typed::apply(sb, &step.netns, typed_action).await {
            Ok(()) => ActionOutcome::Done { output: None },
            Err(e) => ActionOutcome::Failed(error_chain(&e)),
        },
    }
}

fn stdout_checks(step: &Step, outcome: &ActionOutcome) -> Vec<Check> {
    let stdout = match outcome {
        ActionOutcome::Done { output: Some(o) } => o.stdout.as_str(),
        _ => "",
    };
    step.expect
        .stdout_contains
        .iter()
        .map(|needle| Check::Stdout {
            needle: needle.clone(),
            found: stdout.contains(needle.as_str()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::commands_of;

    #[test]
    fn finds_commands_not_arguments() {
        let cmds = commands_of(
            "iptables -A INPUT -m conntrack --ctstate NEW -j ACCEPT\nip netns exec ns1 ping -c1 10.0.0.1 && brctl show | grep br0\nX=1 sudo ifconfig lo up # nft\nsleep 5 &\n",
        );
        assert_eq!(
            cmds,
            ["iptables", "ip", "ping", "brctl", "grep", "ifconfig", "sleep"]
        );
    }
}
