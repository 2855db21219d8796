//! Firewall state of every namespace of a sandbox at one moment, read in parallel
//! (one thread inside each namespace), and what moved between two such moments.

use super::firewall::{self, IptTable, NftRule, NftState};
use crate::sandbox::Sandbox;
use crate::scenario::FirewallScope;

/// One namespace's firewall state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsFirewall {
    pub netns: String,
    pub iptables: Vec<IptTable>,
    pub nft: Option<NftState>,
    pub errors: Vec<String>,
}

impl NsFirewall {
    pub fn table(&self, ipv6: bool, table: &str) -> Option<&IptTable> {
        self.iptables
            .iter()
            .find(|t| t.ipv6 == ipv6 && t.table == table)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirewallSnapshot {
    pub namespaces: Vec<NsFirewall>,
}

impl FirewallSnapshot {
    pub fn get(&self, netns: &str) -> Option<&NsFirewall> {
        self.namespaces.iter().find(|n| n.netns == netns)
    }
}

/// A rule or policy whose packet counter moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub netns: String,
    /// `FORWARD policy DROP`, `-A INPUT -p tcp ... -j REJECT`, `ip6tables -t nat -A ...`,
    /// `nft inet f input rule "allow-ssh"`.
    pub what: String,
    pub packets: u64,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.packets == 1 { "pkt" } else { "pkts" };
        write!(f, "{}: {} +{} {unit}", self.netns, self.what, self.packets)
    }
}

/// Read the state `scope` names in every namespace of `namespaces` that exists now.
/// A namespace without any netfilter table (most of a large topology's hosts) is
/// not read with `iptables`: its state is the one an untouched namespace has, read
/// once per snapshot, for real, in the first such namespace.
pub fn snapshot(sb: &Sandbox, namespaces: &[String], scope: &FirewallScope) -> FirewallSnapshot {
    let existing: Vec<&String> = namespaces.iter().filter(|n| sb.has_netns(n)).collect();
    let read_in = |ns: &str, skip_untouched: bool| -> Option<NsFirewall> {
        let read = || {
            if skip_untouched && matches!(firewall::has_tables(), Ok(false)) {
                return None;
            }
            Some(read_here(ns, scope))
        };
        sb.in_netns(ns, read).unwrap_or_else(|e| {
            Some(NsFirewall {
                netns: ns.to_string(),
                iptables: Vec::new(),
                nft: None,
                errors: vec![crate::error_chain(&e)],
            })
        })
    };
    let read: Vec<Option<NsFirewall>> = std::thread::scope(|s| {
        let handles: Vec<_> = existing
            .iter()
            .map(|ns| s.spawn(move || read_in(ns, true)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("firewall reader panicked"))
            .collect()
    });
    let mut untouched: Option<NsFirewall> = None;
    let namespaces = existing
        .iter()
        .zip(read)
        .map(|(ns, fw)| match fw {
            Some(fw) => fw,
            None => {
                let base = untouched.get_or_insert_with(|| {
                    read_in(ns, false).expect("a full read returns a state")
                });
                NsFirewall {
                    netns: ns.to_string(),
                    ..base.clone()
                }
            }
        })
        .collect();
    FirewallSnapshot { namespaces }
}

/// Read the state `scope` names in the current thread's namespace, `ns`.
fn read_here(ns: &str, scope: &FirewallScope) -> NsFirewall {
    let mut fw = NsFirewall {
        netns: ns.to_string(),
        iptables: Vec::new(),
        nft: None,
        errors: Vec::new(),
    };
    for (v6, tables) in [(false, &scope.v4_tables), (true, &scope.v6_tables)] {
        if tables.is_empty() {
            continue;
        }
        match firewall::read_iptables(v6, tables) {
            Ok(t) => fw.iptables.extend(t),
            Err(e) => fw.errors.push(crate::error_chain(&e)),
        }
    }
    if scope.nft {
        match firewall::read_nft() {
            Ok(n) => fw.nft = Some(n),
            Err(e) => fw.errors.push(crate::error_chain(&e)),
        }
    }
    fw
}

fn describe_ipt(t: &IptTable, line: &str) -> String {
    let mut prefix = String::new();
    if t.ipv6 {
        prefix.push_str("ip6tables ");
    }
    if t.table != "filter" {
        prefix.push_str(&format!("-t {} ", t.table));
    }
    if let Some(rest) = line.strip_prefix("-P ") {
        let mut w = rest.split(' ');
        let chain = w.next().unwrap_or("");
        let policy = w.next().unwrap_or("");
        format!("{prefix}{chain} policy {policy}")
    } else {
        format!("{prefix}{line}")
    }
}

/// Packets counted in `ipt` for `key` since `before` (counters restart at 0 for a rule
/// that did not exist then).
pub fn ipt_delta(before: Option<&IptTable>, after: &IptTable, key: &str) -> Option<u64> {
    let now = after.find(key)?.packets?;
    let then = before
        .and_then(|b| b.find(key))
        .and_then(|e| e.packets)
        .unwrap_or(0);
    Some(now.saturating_sub(then))
}

/// Packets counted by nft rule `key` since `before`.
pub fn nft_delta(before: Option<&NftState>, after: &NftState, key: &str) -> Option<u64> {
    let rule = after.rules.iter().find(|r| r.named(key))?;
    let now = rule.packets?;
    let then = before
        .and_then(|b| b.rules.iter().find(|r| same_rule(r, rule)))
        .and_then(|r| r.packets)
        .unwrap_or(0);
    Some(now.saturating_sub(then))
}

fn same_rule(a: &NftRule, b: &NftRule) -> bool {
    a.handle == b.handle && a.table == b.table && a.family == b.family
}

/// Every rule and policy whose counter moved from `before` to `after`, in namespace
/// order, then rule order.
pub fn moved(before: &FirewallSnapshot, after: &FirewallSnapshot) -> Vec<Moved> {
    let mut out = Vec::new();
    for ns in &after.namespaces {
        let b = before.get(&ns.netns);
        for t in &ns.iptables {
            let bt = b.and_then(|b| b.table(t.ipv6, &t.table));
            for e in &t.entries {
                let Some(now) = e.packets else { continue };
                let then = bt
                    .and_then(|bt| bt.find(&e.count_key()))
                    .and_then(|x| x.packets)
                    .unwrap_or(0);
                if now > then {
                    out.push(Moved {
                        netns: ns.netns.clone(),
                        what: describe_ipt(t, &e.line),
                        packets: now - then,
                    });
                }
            }
        }
        if let Some(n) = &ns.nft {
            let bn = b.and_then(|b| b.nft.as_ref());
            for r in &n.rules {
                let Some(now) = r.packets else { continue };
                let then = bn
                    .and_then(|bn| bn.rules.iter().find(|x| same_rule(x, r)))
                    .and_then(|x| x.packets)
                    .unwrap_or(0);
                if now > then {
                    out.push(Moved {
                        netns: ns.netns.clone(),
                        what: format!("nft {}", r.label()),
                        packets: now - then,
                    });
                }
            }
        }
    }
    out
}
