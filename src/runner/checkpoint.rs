//! A checkpoint: probe every matrix of a step, read the firewall state of every
//! namespace, check the firewall expectations against it, and explain every cell that
//! did not come out as expected by probing it again alone and listing the rules and
//! policies whose counters moved.

use std::net::IpAddr;
use std::time::Duration;

use super::record::{Check, FirewallCheck, FirewallItem, IfaceTraffic, PacketCheck};
use crate::capture::{Capture, PacketLine};
use crate::probe::fwstate::{self, FirewallSnapshot};
use crate::probe::outcome::{ProbeOutcome, ProbeTiming};
use crate::probe::reach::{self, Explanation, ObservedMatrix, ProbeKind};
use crate::sandbox::Sandbox;
use crate::scenario::{FirewallScope, IptablesExpect, NftExpect, PacketExpect, Scenario, Step};

/// What a checkpoint observed.
#[derive(Default)]
pub struct CheckpointOutput {
    pub checks: Vec<Check>,
    pub firewall: Option<FirewallSnapshot>,
    pub traffic: Vec<IfaceTraffic>,
}

/// What carries from one checkpoint to the next: the counters of the previous one.
pub struct CheckpointState {
    pub namespaces: Vec<String>,
    pub scope: FirewallScope,
    pub last: FirewallSnapshot,
}

impl CheckpointState {
    pub fn new(scenario: &Scenario) -> Self {
        CheckpointState {
            namespaces: scenario.namespaces(),
            scope: scenario.firewall_scope(),
            last: FirewallSnapshot::default(),
        }
    }
}

/// Wrong cells explained per checkpoint, at most: each costs a lone probe and two
/// firewall snapshots (about a second), and past a few the reasons repeat (a
/// topology broken on purpose once made 826 wrong cells and a 6-minute checkpoint).
pub const MAX_EXPLAINED: usize = 8;

/// Timing of the lone probe that explains a cell: exactly one packet, then a wait.
const EXPLAIN: ProbeTiming = ProbeTiming {
    deadline: Duration::from_millis(900),
    window: Duration::from_millis(900),
    interval: Duration::from_secs(60),
    adaptive: false,
};

pub async fn run(
    sb: &Sandbox,
    scenario: &Scenario,
    step: &Step,
    state: &mut CheckpointState,
    capture: Option<&Capture>,
) -> CheckpointOutput {
    let timing = step.expect.timing.unwrap_or(scenario.timing);

    let e = &step.expect;
    let ns = &state.namespaces;
    let mut wanted: Vec<(&crate::scenario::Matrix, ProbeKind)> = Vec::new();
    if let Some(m) = &e.ping {
        wanted.push((m, ProbeKind::Ping { v6: false }));
    }
    if let Some(m) = &e.ping6 {
        wanted.push((m, ProbeKind::Ping { v6: true }));
    }
    for pm in e.tcp.iter().chain(&e.udp) {
        let kind = ProbeKind::Port {
            proto: pm.proto,
            port: pm.port,
            v6: pm.v6,
            runner_listens: pm.runner_listens,
        };
        wanted.push((&pm.matrix, kind));
    }
    if !e.is_checkpoint() {
        return CheckpointOutput::default();
    }
    let t = crate::timings::phase(|| "  capture mark".into());
    let m0 = capture.map(|c| c.mark());
    drop(t);
    let mut matrices: Vec<ObservedMatrix> = if wanted.is_empty() {
        Vec::new()
    } else {
        let timing = if timing.adaptive {
            let rtt = crate::probe::outcome::calibrate();
            let t = timing.for_load(rtt);
            crate::timings::note(|| {
                format!("  window {:?} (calibrated round trip {rtt:?})", t.window)
            });
            t
        } else {
            timing
        };
        let _t = crate::timings::phase(|| "  probes".into());
        reach::check_all(sb, &wanted, &timing, ns).await
    };
    let t = crate::timings::phase(|| "  capture window".into());
    let packets: Vec<PacketLine> = match (capture, m0) {
        (Some(c), Some(m0)) => c.between(m0, c.mark()),
        _ => Vec::new(),
    };
    drop(t);

    let t = crate::timings::phase(|| "  firewall snapshot".into());
    let now = fwstate::snapshot(sb, ns, &state.scope);
    drop(t);
    let mut checks: Vec<Check> = Vec::new();
    let mut fw_checks = Vec::new();
    for ie in &e.iptables {
        fw_checks.push(Check::Firewall(check_iptables(ie, &state.last, &now)));
    }
    for ne in &e.nft {
        fw_checks.push(Check::Firewall(check_nft(ne, &state.last, &now)));
    }
    for pe in &e.packets {
        fw_checks.push(Check::Packets(check_packets(pe, &packets)));
    }

    // Every interface that saw anything during the probes: where a lone probe was
    // not seen is among these.
    let captured: std::collections::BTreeSet<String> = packets
        .iter()
        .map(|p| format!("{}:{}", p.netns, p.iface))
        .collect();
    // Explanations. Their packets must not count towards the next checkpoint, so
    // the baseline becomes the last snapshot taken here.
    let mut last = now.clone();
    let mut budget = MAX_EXPLAINED;
    for m in &mut matrices {
        for (row, col) in m.mismatched_cells() {
            let Ok(dst) = m.targets[col] else { continue };
            if budget == 0 {
                m.unexplained += 1;
                continue;
            }
            budget -= 1;
            let src = m.sources[row].clone();
            let (mut explanation, after) =
                explain(sb, state, capture, &src, dst, m.kind, row, col, &last).await;
            if !explanation.path.is_empty() {
                explanation.not_seen = captured
                    .iter()
                    .filter(|l| {
                        !explanation
                            .path
                            .iter()
                            .any(|p| p.starts_with(&format!("{l} ")))
                    })
                    .cloned()
                    .collect();
            }
            m.explanations.push(explanation);
            last = after;
        }
    }
    state.last = last;
    checks.extend(matrices.into_iter().map(Check::Matrix));
    checks.extend(fw_checks);
    CheckpointOutput {
        checks,
        firewall: Some(now),
        traffic: traffic(&packets),
    }
}

/// Whether a packet's summary belongs in a report: what the kernel sends by itself on
/// its own schedule (IGMP and IPv6 multicast listener reports, router solicitations,
/// duplicate address detection from `::`: randomly delayed up to a second after a
/// link comes up) and a TCP
/// connection's ACKs and FINs (whose timing around the end of a probe varies) are
/// left out; handshakes (SYN, SYN-ACK) and RSTs stay.
fn reportable(summary: &str) -> bool {
    if summary.starts_with("icmp6 mld")
        || summary.starts_with("icmp6 router")
        || summary.ends_with("proto igmp")
        || summary.starts_with("icmp6 neighbor solicitation :: ")
    {
        return false;
    }
    if summary.starts_with("tcp ") {
        let flags = summary.rsplit_once('[').map(|(_, f)| f).unwrap_or("");
        return flags.contains('S') || flags.contains('R');
    }
    true
}

/// A summary as the report shows it. ARP loses its direction: when two hosts probe
/// each other at once, which one asks first (and which learns from the question) is
/// timing, so `arp who-has B tell A` and `arp who-has A tell B` both read
/// `arp A <-> B` (addresses sorted), and a reply reads `arp reply`.
fn report_line(summary: &str) -> String {
    if let Some(rest) = summary.strip_prefix("arp who-has ") {
        if let Some((target, sender)) = rest.split_once(" tell ") {
            let (a, b) = if target <= sender {
                (target, sender)
            } else {
                (sender, target)
            };
            return format!("arp {a} <-> {b}");
        }
    }
    if summary.starts_with("arp reply ") {
        return "arp reply".into();
    }
    summary.to_string()
}

/// Per interface, sorted by label, the distinct reportable summaries, sorted.
fn traffic(packets: &[PacketLine]) -> Vec<IfaceTraffic> {
    let mut by: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for p in packets.iter().filter(|p| reportable(&p.summary)) {
        by.entry(format!("{}:{}", p.netns, p.iface))
            .or_default()
            .insert(report_line(&p.summary));
    }
    by.into_iter()
        .map(|(label, lines)| IfaceTraffic {
            label,
            lines: lines.into_iter().collect(),
        })
        .collect()
}

fn check_packets(e: &PacketExpect, packets: &[PacketLine]) -> PacketCheck {
    let on: Vec<&PacketLine> = packets
        .iter()
        .filter(|p| p.netns == e.netns && p.iface == e.iface)
        .collect();
    let count = on.iter().filter(|p| p.summary.contains(&e.pattern)).count();
    let ok = if e.seen {
        match e.count {
            Some(c) => c.holds(count as u64),
            None => count > 0,
        }
    } else {
        count == 0
    };
    let word = if e.seen { "seen" } else { "not seen" };
    let mut what = format!("{word} {:?} on {}:{}", e.pattern, e.netns, e.iface);
    if let Some(c) = e.count {
        what.push_str(&format!(" (count {c})"));
    }
    let mut saw: Vec<String> = on
        .iter()
        .filter(|p| reportable(&p.summary))
        .map(|p| report_line(&p.summary))
        .collect();
    saw.sort();
    saw.dedup();
    PacketCheck {
        what,
        ok,
        count,
        saw,
    }
}

/// Where the packets to and from `dst` went, in time order: `ns1:veth0 icmp echo
/// request 10.0.0.1 > 10.0.0.2`.
fn path_of(packets: &[PacketLine], dst: IpAddr) -> Vec<String> {
    let d = dst.to_string();
    let mut on_path: Vec<&PacketLine> = packets
        .iter()
        .filter(|p| reportable(&p.summary))
        .filter(|p| {
            p.summary.contains(&format!("> {d}"))
                || p.summary.contains(&format!("{d} >"))
                || p.summary.contains(&format!("> {d}:"))
                || p.summary.contains(&format!(" {d}:"))
                || p.summary.contains(&format!("who-has {d} "))
                || p.summary.ends_with(&format!("who-has {d}"))
        })
        .collect();
    on_path.sort_by_key(|p| (p.ts_ns, p.order));
    on_path
        .into_iter()
        .map(|p| format!("{}:{} {}", p.netns, p.iface, p.summary))
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn explain(
    sb: &Sandbox,
    state: &CheckpointState,
    capture: Option<&Capture>,
    src: &str,
    dst: IpAddr,
    kind: ProbeKind,
    row: usize,
    col: usize,
    before: &FirewallSnapshot,
) -> (Explanation, FirewallSnapshot) {
    let mut notes = Vec::new();
    let mut listener = None;
    if let ProbeKind::Port {
        runner_listens: true,
        ..
    } = kind
    {
        // The matrix's listeners are gone; the lone probe needs one too.
        listener = reach::listen_at(sb, None, &state.namespaces, dst, kind)
            .await
            .ok()
            .flatten();
    }
    let m0 = capture.map(|c| c.mark());
    let reprobe = match reach::probe_cells(sb, src, &[(dst, false)], kind, &EXPLAIN) {
        Ok(mut o) => o.pop(),
        Err(e) => {
            notes.push(format!("could not probe again: {e}"));
            None
        }
    };
    drop(listener);
    let path = match (capture, m0) {
        (Some(c), Some(m0)) => path_of(&c.between(m0, c.mark()), dst),
        _ => Vec::new(),
    };
    let after = fwstate::snapshot(sb, &state.namespaces, &state.scope);
    let moved = fwstate::moved(before, &after);
    match &reprobe {
        Some(ProbeOutcome::Unreachable { detail }) => {
            notes.push(format!("`{src}` has no usable route to {dst}: {detail}"))
        }
        Some(ProbeOutcome::Dropped { .. }) if moved.is_empty() => notes.push(
            "no rule or policy counted it: it was lost outside netfilter (a link without carrier, an unanswered ARP/neighbour request, or a missing route on the way)"
                .into(),
        ),
        _ => {}
    }
    (
        Explanation {
            row,
            col,
            reprobe,
            moved,
            notes,
            path,
            not_seen: Vec::new(),
        },
        after,
    )
}

/// A firewall check that could not read its state: why (the reader's errors, or the
/// namespace being gone).
fn unreadable(label: String, what: &str, netns: &str, now: &FirewallSnapshot) -> FirewallCheck {
    let why = now
        .get(netns)
        .map(|n| n.errors.join("; "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("namespace `{netns}` does not exist"));
    FirewallCheck {
        label,
        items: vec![FirewallItem {
            what: what.into(),
            ok: false,
            observed: Some(why),
        }],
    }
}

fn check_iptables(
    e: &IptablesExpect,
    last: &FirewallSnapshot,
    now: &FirewallSnapshot,
) -> FirewallCheck {
    let cmd = if e.ipv6 { "ip6tables" } else { "iptables" };
    let label = format!("{cmd} {} in {}", e.table, e.netns);
    let table = now.get(&e.netns).and_then(|n| n.table(e.ipv6, &e.table));
    let Some(table) = table else {
        return unreadable(label, "table readable", &e.netns, now);
    };
    let before = last.get(&e.netns).and_then(|n| n.table(e.ipv6, &e.table));
    let chain_rules = |chain: &str| -> String {
        let lines: Vec<&str> = table
            .entries
            .iter()
            .filter(|x| x.line.starts_with(&format!("-A {chain} ")))
            .map(|x| x.line.as_str())
            .collect();
        if lines.is_empty() {
            format!("{chain} has no rules")
        } else {
            format!("{chain} has: {}", lines.join(" | "))
        }
    };
    let chain_of = |line: &str| line.split(' ').nth(1).unwrap_or("").to_string();
    let mut items = Vec::new();
    for (chain, policy) in &e.policies {
        let got = table.policy(chain);
        items.push(FirewallItem {
            what: format!("policy {chain} {policy}"),
            ok: got == Some(policy.as_str()),
            observed: Some(match got {
                Some(p) => format!("policy is {p}"),
                None => format!("no built-in chain {chain} in {}", e.table),
            }),
        });
    }
    for line in &e.present {
        let ok = table.entries.iter().any(|x| &x.line == line);
        items.push(FirewallItem {
            what: format!("present {line}"),
            ok,
            observed: Some(chain_rules(&chain_of(line))),
        });
    }
    for line in &e.absent {
        let ok = !table.entries.iter().any(|x| &x.line == line);
        items.push(FirewallItem {
            what: format!("absent {line}"),
            ok,
            observed: Some("it is there".into()),
        });
    }
    for (key, cmp) in &e.counts {
        let delta = fwstate::ipt_delta(before, table, key);
        items.push(FirewallItem {
            what: format!("count {key} {cmp}"),
            ok: delta.is_some_and(|d| cmp.holds(d)),
            observed: Some(match delta {
                Some(d) => format!("{d} packets since the previous checkpoint"),
                None => format!("no such rule or policy; {}", chain_rules(&chain_of(key))),
            }),
        });
    }
    FirewallCheck { label, items }
}

fn check_nft(e: &NftExpect, last: &FirewallSnapshot, now: &FirewallSnapshot) -> FirewallCheck {
    let label = format!("nft in {}", e.netns);
    let Some(state) = now.get(&e.netns).and_then(|n| n.nft.as_ref()) else {
        return unreadable(label, "ruleset readable", &e.netns, now);
    };
    let before = last.get(&e.netns).and_then(|n| n.nft.as_ref());
    let names = || -> String {
        let v: Vec<String> = state.rules.iter().map(|r| r.label()).collect();
        if v.is_empty() {
            "the ruleset has no rules".into()
        } else {
            format!("rules: {}", v.join(", "))
        }
    };
    let mut items = Vec::new();
    for key in &e.present {
        items.push(FirewallItem {
            what: format!("present {key}"),
            ok: state.rules.iter().any(|r| r.named(key)),
            observed: Some(names()),
        });
    }
    for key in &e.absent {
        items.push(FirewallItem {
            what: format!("absent {key}"),
            ok: !state.rules.iter().any(|r| r.named(key)),
            observed: Some("it is there".into()),
        });
    }
    for (key, cmp) in &e.counts {
        let delta = fwstate::nft_delta(before, state, key);
        let has_rule = state.rules.iter().any(|r| r.named(key));
        items.push(FirewallItem {
            what: format!("count {key} {cmp}"),
            ok: delta.is_some_and(|d| cmp.holds(d)),
            observed: Some(match delta {
                Some(d) => format!("{d} packets since the previous checkpoint"),
                None if has_rule => "the rule has no `counter`".into(),
                None => format!("no such rule; {}", names()),
            }),
        });
    }
    FirewallCheck { label, items }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_in_the_report_has_no_direction() {
        assert_eq!(
            report_line("arp who-has 192.168.1.62 tell 192.168.1.61"),
            report_line("arp who-has 192.168.1.61 tell 192.168.1.62")
        );
        assert_eq!(report_line("arp reply 10.0.0.2 is-at <mac>"), "arp reply");
        assert_eq!(
            report_line("icmp echo request 10.0.0.1 > 10.0.0.2"),
            "icmp echo request 10.0.0.1 > 10.0.0.2"
        );
    }

    #[test]
    fn tcp_acks_and_mld_stay_out_of_reports() {
        assert!(reportable("tcp 10.0.0.1:<eph> > 10.0.0.2:80 [S]"));
        assert!(reportable("tcp 10.0.0.2:80 > 10.0.0.1:<eph> [R.]"));
        assert!(!reportable("tcp 10.0.0.1:<eph> > 10.0.0.2:80 [.]"));
        assert!(!reportable("icmp6 mldv2 report :: > ff02::16"));
    }
}
