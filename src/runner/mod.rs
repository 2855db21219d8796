//! The runner: preflight the environment, then run a scenario's steps in order inside
//! a fresh sandbox, checking each step's expectations after its action. A checkpoint
//! mismatch does not stop the run; a failing action does. Emits [`Event`]s, returns a
//! [`RunRecord`]; never prints.

pub mod events;
pub mod record;

use std::path::Path;

pub use events::Event;
pub use record::*;

use crate::error_chain;
use crate::probe::reach;
use crate::sandbox::{self, Sandbox, SandboxError};
use crate::scenario::{Action, Scenario, Step};
use crate::step::{shell, typed};

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
                    for word in script.split(|c: char| c.is_whitespace() || ";&|()`$".contains(c)) {
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

fn on_path(tool: &str) -> bool {
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

/// Run one validated scenario in a fresh sandbox.
pub fn run(
    scenario: &Scenario,
    mut sink: impl FnMut(Event<'_>) + Send,
) -> Result<RunRecord, EnvError> {
    sink(Event::ScenarioStarted { scenario });
    let record = sandbox::run(|sb| run_in(sb, scenario, &mut sink)).map_err(EnvError::Sandbox)?;
    sink(Event::ScenarioFinished { record: &record });
    Ok(record)
}

fn run_in(
    sb: &Sandbox,
    scenario: &Scenario,
    sink: &mut (impl FnMut(Event<'_>) + Send),
) -> RunRecord {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
    let mut record = RunRecord {
        name: scenario.name.clone(),
        about: scenario.about.clone(),
        source: scenario.source.clone(),
        path: scenario.path.display().to_string(),
        steps: Vec::new(),
    };
    let mut stopped = false;
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
        };
        if stopped {
            record.steps.push(rec);
            continue;
        }
        sink(Event::StepStarted { step });
        rec.outcome = rt.block_on(run_action(sb, scenario, step));
        if rec.failed() {
            stopped = true;
        } else {
            rec.checks = rt.block_on(check(sb, scenario, step, &rec.outcome));
        }
        sink(Event::StepFinished { record: &rec });
        record.steps.push(rec);
    }
    drop(rt);
    record
}

async fn run_action(sb: &Sandbox, scenario: &Scenario, step: &Step) -> ActionOutcome {
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
            match shell::run(sb, step.index, &step.netns, script, step.timeout) {
                Ok(Ok(output)) => ActionOutcome::Done {
                    output: Some(output),
                },
                Ok(Err(failure)) => ActionOutcome::ShellFailed(failure),
                Err(e) => ActionOutcome::Failed(error_chain(&e)),
            }
        }
        typed_action => {
            let _ = scenario;
            match typed::apply(sb, &step.netns, typed_action).await {
                Ok(()) => ActionOutcome::Done { output: None },
                Err(e) => ActionOutcome::Failed(error_chain(&e)),
            }
        }
    }
}

async fn check(
    sb: &Sandbox,
    scenario: &Scenario,
    step: &Step,
    outcome: &ActionOutcome,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let timing = step.expect.timing.unwrap_or(scenario.timing);
    if let Some(m) = &step.expect.ping {
        checks.push(Check::Matrix(
            reach::check_ping(sb, m, &timing, false).await,
        ));
    }
    if !step.expect.stdout_contains.is_empty() {
        let stdout = match outcome {
            ActionOutcome::Done { output: Some(o) } => o.stdout.as_str(),
            _ => "",
        };
        for needle in &step.expect.stdout_contains {
            checks.push(Check::Stdout {
                needle: needle.clone(),
                found: stdout.contains(needle.as_str()),
            });
        }
    }
    checks
}
