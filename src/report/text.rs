//! The deterministic text report: every step with its result, and at each checkpoint
//! the expected and the observed matrix side by side, mismatches marked. No times,
//! no MACs, nothing that changes between two runs of an unchanged kernel.

use std::fmt::Write;

use super::redact;
use crate::probe::fwstate::FirewallSnapshot;
use crate::probe::reach::ObservedMatrix;
use crate::runner::{ActionOutcome, ActionText, Check, FirewallCheck, RunRecord, StepRecord};

/// The whole report of a run.
pub fn render(record: &RunRecord) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "scenario {} ({})", record.name, record.path);
    if let Some(a) = &record.about {
        let _ = writeln!(s, "about: {}", a.trim());
    }
    if let Some(src) = &record.source {
        let _ = writeln!(s, "source: {}", src.trim());
    }
    s.push('\n');
    for step in &record.steps {
        s.push_str(&render_step(step));
        s.push('\n');
    }
    if !record.pcaps.is_empty() {
        s.push_str("pcap files (tcpdump -r FILE, or open in Wireshark):\n");
        for p in &record.pcaps {
            let _ = writeln!(s, "  {}  {}", p.label, p.path.display());
        }
    }
    for e in &record.capture_errors {
        let _ = writeln!(s, "capture: {e}");
    }
    s.push_str(&summary(record));
    s.push('\n');
    s
}

/// One line saying how the run went.
pub fn summary(record: &RunRecord) -> String {
    if let Some(reason) = &record.skipped {
        return format!("result: skipped: {reason}");
    }
    if !record.machine_changed.is_empty() {
        return format!(
            "result: FAILED: THE MACHINE'S OWN NETWORK NAMESPACE CHANGED DURING THE RUN\n  {}",
            record.machine_changed.join("\n  ")
        );
    }
    let checks: usize = record.steps.iter().map(|s| s.checks.len()).sum();
    let failed = record.failed_checks();
    let (cells, wrong) = record.cell_counts();
    let cells = format!("{wrong} of {cells} probed cells wrong");
    match record.failed_step() {
        Some(step) => format!(
            "result: FAILED at step {} ({}); {} of {} checks failed before it; {cells}",
            step.index, step.name, failed, checks
        ),
        None if failed > 0 => {
            format!("result: FAILED, {failed} of {checks} checks did not hold; {cells}")
        }
        None => format!("result: passed, {checks} checks held; {cells}"),
    }
}

fn status_word(step: &StepRecord) -> &'static str {
    match &step.outcome {
        ActionOutcome::NotRun => "not run",
        ActionOutcome::ShellFailed(_) | ActionOutcome::Failed(_) => "FAILED",
        _ if step.checks.iter().all(Check::passed) => "ok",
        _ => "MISMATCH",
    }
}

/// The block of one step.
pub fn render_step(step: &StepRecord) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "step {} [{}] {} ... {}",
        step.index,
        step.netns,
        step.name,
        status_word(step)
    );
    match &step.action {
        ActionText::None => {}
        ActionText::Script(script) => {
            for l in script.lines().filter(|l| !l.trim().is_empty()) {
                let _ = writeln!(s, "  $ {l}");
            }
        }
        ActionText::Typed(cmd) => {
            for l in cmd.lines() {
                let _ = writeln!(s, "  = {l}");
            }
        }
    }
    match &step.outcome {
        ActionOutcome::Done { output: Some(o) } => {
            let out = redact::output(o.stdout.trim_end());
            for l in out.lines() {
                let _ = writeln!(s, "  | {l}");
            }
            let err = redact::output(o.stderr.trim_end());
            for l in err.lines() {
                let _ = writeln!(s, "  ! {l}");
            }
        }
        ActionOutcome::ShellFailed(f) => {
            let _ = writeln!(s, "  +-- step failed ---------------------------------");
            if let Some((line, cmd)) = &f.command {
                let _ = writeln!(s, "  | command:   {cmd}   (script line {line})");
            }
            let _ = writeln!(s, "  | namespace: {}", f.netns);
            let _ = writeln!(s, "  | status:    {}", f.status);
            if let Some(why) = unsupported(&f.output.stderr) {
                let _ = writeln!(
                    s,
                    "  | meaning:   this kernel does not support it ({why}); declare the feature in [scenario] requires = [...] to have the scenario skipped instead"
                );
            }
            let err = redact::output(f.output.stderr.trim_end());
            if !err.is_empty() {
                let _ = writeln!(s, "  | stderr:");
                for l in err.lines() {
                    let _ = writeln!(s, "  |   {l}");
                }
            }
            let out = redact::output(f.output.stdout.trim_end());
            if !out.is_empty() {
                let _ = writeln!(s, "  | stdout:");
                for l in out.lines() {
                    let _ = writeln!(s, "  |   {l}");
                }
            }
            let _ = writeln!(s, "  +-----------------------------------------------");
        }
        ActionOutcome::Failed(msg) => {
            let _ = writeln!(s, "  error: {msg}");
        }
        _ => {}
    }
    for check in &step.checks {
        match check {
            Check::Matrix(m) => s.push_str(&render_matrix(m)),
            Check::Firewall(f) => s.push_str(&render_firewall_check(f)),
            Check::Packets(p) => {
                if p.ok {
                    let _ = writeln!(s, "  expect packets {} ... yes", p.what);
                } else {
                    let _ = writeln!(
                        s,
                        "  expect packets {} ... NO* ({} matching)",
                        p.what, p.count
                    );
                    let saw = if p.saw.is_empty() {
                        "nothing".to_string()
                    } else {
                        p.saw.join(" | ")
                    };
                    let _ = writeln!(s, "    the interface saw: {saw}");
                }
            }
            Check::Stdout { needle, found } => {
                let _ = writeln!(
                    s,
                    "  expect stdout contains {:?} ... {}",
                    needle,
                    if *found { "yes" } else { "NO" }
                );
            }
        }
    }
    if !step.traffic.is_empty() {
        let _ = writeln!(s, "  packets during the probes:");
        for t in &step.traffic {
            let _ = writeln!(s, "    {}", t.label);
            for l in &t.lines {
                let _ = writeln!(s, "      {l}");
            }
        }
    }
    if let Some(fw) = &step.firewall {
        s.push_str(&render_firewall(fw));
    }
    s
}

/// The kernel's way of saying a feature is missing, if stderr says it.
fn unsupported(stderr: &str) -> Option<&'static str> {
    [
        ("Unknown device type", "unknown device type"),
        ("Operation not supported", "operation not supported"),
        ("Protocol not supported", "protocol not supported"),
        (
            "Address family not supported",
            "address family not supported",
        ),
        ("No such file or directory while", "no such kernel module"),
        ("Specified qdisc kind is unknown", "unknown qdisc kind"),
    ]
    .iter()
    .find(|(needle, _)| stderr.contains(needle))
    .map(|(_, why)| *why)
}

/// Expected and observed side by side; a mismatched observed cell is marked `*`.
pub fn render_matrix(m: &ObservedMatrix) -> String {
    let mut s = String::new();
    let mismatches = m.mismatches();
    let verdict = if mismatches == 0 {
        "holds".to_string()
    } else {
        format!("{mismatches} cell(s) differ")
    };
    let _ = writeln!(s, "  expect {}: {}", m.kind.label(), verdict);
    let targets: Vec<String> = m
        .destinations
        .iter()
        .zip(&m.targets)
        .filter(|(d, _)| matches!(d, crate::scenario::Peer::Netns(_)))
        .map(|(d, t)| match t {
            Ok(a) => format!("{} = {}", d.label(), a),
            Err(e) => format!("{} = none ({})", d.label(), e),
        })
        .collect();
    if !targets.is_empty() {
        let _ = writeln!(s, "    targets: {}", targets.join(", "));
    }

    let labels: Vec<String> = m.destinations.iter().map(|d| d.label()).collect();
    let expected: Vec<Vec<String>> = m
        .cells
        .iter()
        .map(|row| {
            row.iter()
                .map(|c| c.expected.map_or("-".into(), |k| k.word().to_string()))
                .collect()
        })
        .collect();
    let observed: Vec<Vec<String>> = m
        .cells
        .iter()
        .map(|row| {
            row.iter()
                .map(|c| {
                    let w = c
                        .observed
                        .as_ref()
                        .map_or("-".to_string(), |o| o.kind().word().to_string());
                    if c.matches() {
                        w
                    } else {
                        format!("{w}*")
                    }
                })
                .collect()
        })
        .collect();
    let row_w = m.sources.iter().map(|l| l.len()).max().unwrap_or(0).max(4);
    let col_w: Vec<usize> = (0..labels.len())
        .map(|j| {
            let mut w = labels[j].len();
            for i in 0..m.sources.len() {
                w = w.max(expected[i][j].len()).max(observed[i][j].len());
            }
            w
        })
        .collect();
    let table = |cells: &Vec<Vec<String>>, header: bool, i: usize| -> String {
        let mut t = String::new();
        for (j, w) in col_w.iter().enumerate() {
            let v = if header { &labels[j] } else { &cells[i][j] };
            let _ = write!(t, "{v:<w$}  ");
        }
        t
    };
    let exp_w: usize = col_w.iter().map(|w| w + 2).sum();
    let _ = writeln!(s, "    {:row_w$}  {:<exp_w$}   observed", "", "expected");
    let _ = writeln!(
        s,
        "    {:row_w$}  {}   {}",
        "",
        table(&expected, true, 0),
        table(&observed, true, 0).trim_end()
    );
    for (i, src) in m.sources.iter().enumerate() {
        let _ = writeln!(
            s,
            "    {:row_w$}  {}   {}",
            src,
            table(&expected, false, i),
            table(&observed, false, i).trim_end()
        );
    }
    // Why each failing cell failed, as the kernel told us.
    for (i, src) in m.sources.iter().enumerate() {
        for (j, c) in m.cells[i].iter().enumerate() {
            let Some(o) = &c.observed else { continue };
            let detail = o.detail();
            if c.matches() && detail.is_none() {
                continue;
            }
            let dst = match &m.targets[j] {
                Ok(a) if labels[j] != a.to_string() => format!("{} ({a})", labels[j]),
                _ => labels[j].clone(),
            };
            let mark = if c.matches() { " " } else { "*" };
            let mut line = format!("    {mark} {src} -> {dst}: ");
            match c.expected {
                Some(e) if !c.matches() => {
                    let _ = write!(line, "expected {e}, observed {}", o.kind());
                }
                _ => {
                    let _ = write!(line, "{}", o.kind());
                }
            }
            if let Some(d) = detail {
                let _ = write!(line, " ({d})");
            }
            let _ = writeln!(s, "{line}");
        }
    }
    for p in &m.problems {
        let _ = writeln!(s, "    * problem: {p}");
    }
    for e in &m.explanations {
        let dst = match &m.targets[e.col] {
            Ok(a) if labels[e.col] != a.to_string() => format!("{} ({a})", labels[e.col]),
            _ => labels[e.col].clone(),
        };
        let again = e
            .reprobe
            .as_ref()
            .map_or("-".to_string(), |o| o.kind().word().to_string());
        let _ = writeln!(
            s,
            "    why {} -> {dst}: probed again alone (one packet): {again}",
            m.sources[e.row]
        );
        if e.moved.is_empty() && e.notes.is_empty() {
            let _ = writeln!(s, "      no rule or policy counted it");
        }
        for mv in &e.moved {
            let _ = writeln!(s, "      {mv}");
        }
        if !e.path.is_empty() {
            let _ = writeln!(s, "      seen on, in order:");
            for p in &e.path {
                let _ = writeln!(s, "        {p}");
            }
            if !e.not_seen.is_empty() {
                let _ = writeln!(s, "      not seen on: {}", e.not_seen.join(", "));
            }
        }
        for n in &e.notes {
            let _ = writeln!(s, "      {n}");
        }
    }
    if m.unexplained > 0 {
        let _ = writeln!(
            s,
            "    ({} more wrong cells not probed again: a checkpoint explains its first {})",
            m.unexplained,
            crate::runner::MAX_EXPLAINED
        );
    }
    s
}

/// One firewall expectation: each item, and what was there when it did not hold.
pub fn render_firewall_check(f: &FirewallCheck) -> String {
    let mut s = String::new();
    let failed = f.items.iter().filter(|i| !i.ok).count();
    let verdict = if failed == 0 {
        "holds".to_string()
    } else {
        format!("{failed} item(s) differ")
    };
    let _ = writeln!(s, "  expect {}: {verdict}", f.label);
    for i in &f.items {
        if i.ok {
            let _ = writeln!(s, "    {} ... yes", i.what);
        } else {
            let _ = writeln!(s, "    {} ... NO*", i.what);
            if let Some(o) = &i.observed {
                let _ = writeln!(s, "      observed: {o}");
            }
        }
    }
    s
}

/// Every namespace's firewall state, normalized: rule order kept, counters out.
/// Tables in their default state (no rules, policies ACCEPT) are summed up in one line.
pub fn render_firewall(fw: &FirewallSnapshot) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "  firewall:");
    let mut quiet: Vec<String> = Vec::new();
    for ns in &fw.namespaces {
        let mut shown = false;
        for t in &ns.iptables {
            if t.is_default() {
                continue;
            }
            shown = true;
            let _ = writeln!(s, "    {} {} -t {}", ns.netns, t.command(), t.table);
            for e in &t.entries {
                let _ = writeln!(s, "      {}", e.line);
            }
        }
        if let Some(n) = &ns.nft {
            if !n.text.trim().is_empty() {
                shown = true;
                let _ = writeln!(s, "    {} nft list ruleset", ns.netns);
                for l in n.text.lines() {
                    let _ = writeln!(s, "      {}", l.replace('\t', "  "));
                }
            }
        }
        for e in &ns.errors {
            shown = true;
            let _ = writeln!(s, "    {}: error: {e}", ns.netns);
        }
        if !shown {
            quiet.push(ns.netns.clone());
        }
    }
    if !quiet.is_empty() {
        let _ = writeln!(s, "    {}: no rules, every policy ACCEPT", quiet.join(", "));
    }
    s
}
