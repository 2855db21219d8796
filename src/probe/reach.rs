//! Checking an expected reachability matrix against the kernel: resolve every
//! destination to an address at check time, then probe every cell at once, one
//! thread per source namespace, each thread inside its source.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::packet_route::AddressFamily;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtnetlink::packet_route::address::AddressFlags;

use super::icmp::{self, IcmpCell};
use super::outcome::{CellKind, ProbeOutcome, ProbeTiming};
use super::transport::{self, Listener, Transport, TransportCell};
use crate::sandbox::Sandbox;
use crate::scenario::{Matrix, Peer, L4};
use crate::step::typed::Netlink;

/// What a matrix probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Ping {
        v6: bool,
    },
    Port {
        proto: L4,
        port: u16,
        v6: bool,
        runner_listens: bool,
    },
}

impl ProbeKind {
    pub fn v6(self) -> bool {
        match self {
            ProbeKind::Ping { v6 } | ProbeKind::Port { v6, .. } => v6,
        }
    }

    /// `ping`, `ping6`, `tcp/22`, `udp6/53`.
    pub fn label(self) -> String {
        match self {
            ProbeKind::Ping { v6: false } => "ping".into(),
            ProbeKind::Ping { v6: true } => "ping6".into(),
            ProbeKind::Port {
                proto, port, v6, ..
            } => {
                format!("{}{}/{port}", proto.name(), if v6 { "6" } else { "" })
            }
        }
    }
}

/// One cell: what was expected and what was seen (`None` for `-`, not probed).
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedCell {
    pub expected: Option<CellKind>,
    pub observed: Option<ProbeOutcome>,
}

impl ObservedCell {
    pub fn matches(&self) -> bool {
        match (&self.expected, &self.observed) {
            (None, _) => true,
            (Some(e), Some(o)) => *e == o.kind(),
            (Some(_), None) => false,
        }
    }
}

/// The observed matrix, with the address each column was resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedMatrix {
    pub kind: ProbeKind,
    pub sources: Vec<String>,
    pub destinations: Vec<Peer>,
    /// The address each column targeted, or why it had none.
    pub targets: Vec<Result<IpAddr, String>>,
    pub cells: Vec<Vec<ObservedCell>>,
    /// What went wrong around the probes (a listener that could not bind, ...).
    pub problems: Vec<String>,
    /// Set by the runner: why each mismatched cell came out as it did.
    pub explanations: Vec<Explanation>,
    /// Mismatched cells left unexplained (the runner explains a few per checkpoint).
    pub unexplained: usize,
}

/// Why one cell came out as it did: it was probed again on its own and these
/// counters moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub row: usize,
    pub col: usize,
    pub reprobe: Option<ProbeOutcome>,
    pub moved: Vec<super::fwstate::Moved>,
    pub notes: Vec<String>,
    /// Where the lone probe's packets were seen, in time order (`ns1:veth0 request`),
    /// when interfaces are captured.
    pub path: Vec<String>,
    /// Captured interfaces that saw traffic during the checkpoint but nothing of the
    /// lone probe.
    pub not_seen: Vec<String>,
}

impl ObservedMatrix {
    pub fn mismatches(&self) -> usize {
        self.cells.iter().flatten().filter(|c| !c.matches()).count() + self.problems.len()
    }

    /// (row, col) of every cell that did not come out as expected.
    pub fn mismatched_cells(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (i, row) in self.cells.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                if !c.matches() {
                    out.push((i, j));
                }
            }
        }
        out
    }
}

/// How many times, machine-wide, a neighbour (ARP or NDP) entry could not be created
/// because the table was full: the sum of `table_fulls` over CPUs in
/// /proc/net/stat/{arp,ndisc}_cache.
fn neighbour_table_fulls() -> u64 {
    ["arp_cache", "ndisc_cache"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/net/stat/{t}")).ok())
        .map(|text| {
            let mut lines = text.lines();
            let col = lines
                .next()
                .and_then(|h| h.split_whitespace().position(|c| c == "table_fulls"));
            let Some(col) = col else { return 0 };
            lines
                .filter_map(|l| l.split_whitespace().nth(col))
                .filter_map(|v| u64::from_str_radix(v, 16).ok())
                .sum::<u64>()
        })
        .sum()
}

/// Wait until no address in `namespaces` is tentative (IPv6 duplicate address
/// detection still running), polling netlink, up to `deadline`. Returns the
/// addresses still tentative at the deadline.
pub async fn wait_dad(sandbox: &Sandbox, namespaces: &[String], deadline: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let mut tentative = Vec::new();
        for ns in namespaces.iter().filter(|n| sandbox.has_netns(n)) {
            let Ok(nl) = Netlink::open(sandbox, ns) else {
                continue;
            };
            let mut stream = nl.handle.address().get().execute();
            while let Ok(Some(msg)) = stream.try_next().await {
                let flags = msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                });
                if flags.is_some_and(|f| f.contains(AddressFlags::Tentative)) {
                    let addr = msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    tentative.push(format!(
                        "{ns}: {}",
                        addr.map_or("?".into(), |a| a.to_string())
                    ));
                }
            }
        }
        if tentative.is_empty() || start.elapsed() >= deadline {
            return tentative;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The namespace among `namespaces` that has address `addr` now.
pub async fn owner_of(sandbox: &Sandbox, namespaces: &[String], addr: IpAddr) -> Option<String> {
    for ns in namespaces.iter().filter(|n| sandbox.has_netns(n)) {
        let Ok(nl) = Netlink::open(sandbox, ns) else {
            continue;
        };
        let mut stream = nl.handle.address().get().execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            if msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == addr)) {
                return Some(ns.clone());
            }
        }
    }
    None
}

/// First address of `family` with global scope in namespace `netns`, in the order the
/// kernel lists them (interface order, then the order they were added).
pub async fn first_global_address(
    sandbox: &Sandbox,
    netns: &str,
    v6: bool,
) -> Result<Option<IpAddr>, String> {
    if !sandbox.has_netns(netns) {
        return Err(format!("namespace `{netns}` does not exist"));
    }
    let nl = Netlink::open(sandbox, netns).map_err(|e| crate::error_chain(&e))?;
    let mut stream = nl.handle.address().get().execute();
    let want = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    while let Some(msg) = stream.try_next().await.map_err(|e| e.to_string())? {
        if msg.header.family != want || msg.header.scope != AddressScope::Universe {
            continue;
        }
        let mut addr = None;
        for a in &msg.attributes {
            match a {
                AddressAttribute::Local(ip) => addr = Some(*ip),
                AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = addr {
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

/// Resolve each column of `matrix` to the address it targets now.
pub async fn resolve_targets(
    sandbox: &Sandbox,
    matrix: &Matrix,
    v6: bool,
) -> Vec<Result<IpAddr, String>> {
    let mut targets = Vec::new();
    for d in &matrix.destinations {
        targets.push(match d {
            Peer::Addr(a) => Ok(*a),
            Peer::Netns(n) => match first_global_address(sandbox, n, v6).await {
                Ok(Some(a)) => Ok(a),
                Ok(None) => Err(format!(
                    "`{n}` has no global {} address",
                    if v6 { "IPv6" } else { "IPv4" }
                )),
                Err(e) => Err(e),
            },
        });
    }
    targets
}

/// Probe every cell of `matrix` at once. `namespaces` are the scenario's, to find who
/// owns an address column when the runner must listen there.
pub async fn check(
    sandbox: &Sandbox,
    matrix: &Matrix,
    kind: ProbeKind,
    timing: &ProbeTiming,
    namespaces: &[String],
) -> ObservedMatrix {
    check_all(sandbox, &[(matrix, kind)], timing, namespaces)
        .await
        .pop()
        .expect("one matrix in, one out")
}

/// Probe every cell of every matrix at once: one thread per (matrix, source), all in
/// flight together, so a checkpoint costs one window, not one per matrix.
pub async fn check_all(
    sandbox: &Sandbox,
    matrices: &[(&Matrix, ProbeKind)],
    timing: &ProbeTiming,
    namespaces: &[String],
) -> Vec<ObservedMatrix> {
    let mut dad_problem = None;
    if matrices.iter().any(|(_, k)| k.v6()) {
        let left = wait_dad(sandbox, namespaces, Duration::from_secs(5)).await;
        if !left.is_empty() {
            dad_problem = Some(format!(
                "addresses still tentative (DAD) after 5s: {}",
                left.join(", ")
            ));
        }
    }

    // Targets, and the runner's listeners: one per (protocol, address, port), shared
    // by every matrix of the checkpoint, for as long as the probes run.
    let mut listeners: Vec<Listener> = Vec::new();
    let mut bound: Vec<(L4, SocketAddr)> = Vec::new();
    let mut prepared = Vec::new();
    for (matrix, kind) in matrices {
        let mut problems: Vec<String> = dad_problem.iter().filter(|_| kind.v6()).cloned().collect();
        let targets = resolve_targets(sandbox, matrix, kind.v6()).await;
        if let ProbeKind::Port {
            proto,
            port,
            runner_listens: true,
            ..
        } = *kind
        {
            for (d, t) in matrix.destinations.iter().zip(&targets) {
                let Ok(addr) = t else { continue };
                let key = (proto, SocketAddr::new(*addr, port));
                if bound.contains(&key) {
                    continue;
                }
                bound.push(key);
                let owner = match d {
                    Peer::Netns(n) => Some(n.clone()),
                    Peer::Addr(_) => None,
                };
                match listen_at(sandbox, owner, namespaces, *addr, *kind).await {
                    Ok(Some(l)) => listeners.push(l),
                    Ok(None) => {}
                    Err(e) => problems.push(e),
                }
            }
        }
        prepared.push((targets, problems));
    }

    let fulls_before = neighbour_table_fulls();
    let rows: Vec<Vec<Vec<ObservedCell>>> = std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = matrices
            .iter()
            .zip(&prepared)
            .map(|((matrix, kind), (targets, _))| {
                matrix
                    .sources
                    .iter()
                    .zip(&matrix.cells)
                    .map(|(src, expected)| {
                        let kind = *kind;
                        s.spawn(move || probe_row(sandbox, src, expected, targets, kind, timing))
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|m| {
                m.into_iter()
                    .map(|h| h.join().expect("probe thread panicked"))
                    .collect()
            })
            .collect()
    });
    let fulls = neighbour_table_fulls().saturating_sub(fulls_before);
    let mut stop_problems = Vec::new();
    for l in listeners {
        if let Err(e) = l.stop() {
            stop_problems.push(format!(
                "failed to stop a listener: {}",
                crate::error_chain(&e)
            ));
        }
    }

    matrices
        .iter()
        .zip(prepared)
        .zip(rows)
        .map(|(((matrix, kind), (targets, mut problems)), cells)| {
            problems.extend(stop_problems.iter().cloned());
            let wrong = cells.iter().flatten().any(|c: &ObservedCell| !c.matches());
            if fulls > 0 && wrong {
                problems.push(format!(
                    "the kernel's neighbour table overflowed {fulls} times during the probes: \
                     some ARP/NDP resolutions could not even start. The table is shared by \
                     every namespace of the machine and keeps about gc_thresh3 learnt entries \
                     (net.ipv4.neigh.default.gc_thresh3, 1024 by default); N hosts that all reach each other \
                     learn N×(N−1). Use [topology] static_neighbors = true, fewer hosts, or \
                     look for another workload filling the table"
                ));
            }
            ObservedMatrix {
                kind: *kind,
                sources: matrix.sources.clone(),
                destinations: matrix.destinations.clone(),
                targets,
                cells,
                problems,
                explanations: Vec::new(),
                unexplained: 0,
            }
        })
        .collect()
}

/// Start the runner's listener for `kind` on `addr` in namespace `owner` (or in the
/// namespace that has `addr`, when `owner` is None). `Ok(None)`: no namespace of the
/// scenario has that address, so nobody listens.
pub async fn listen_at(
    sandbox: &Sandbox,
    owner: Option<String>,
    namespaces: &[String],
    addr: IpAddr,
    kind: ProbeKind,
) -> Result<Option<Listener>, String> {
    let ProbeKind::Port { proto, port, .. } = kind else {
        return Ok(None);
    };
    let owner = match owner {
        Some(o) => o,
        None => match owner_of(sandbox, namespaces, addr).await {
            Some(o) => o,
            None => return Ok(None),
        },
    };
    let sa = SocketAddr::new(addr, port);
    let t = transport_of(proto);
    match sandbox.in_netns(&owner, || Listener::bind(&[(t, sa)])) {
        Ok(Ok(l)) => Ok(Some(l)),
        Ok(Err(e)) => Err(format!(
            "the runner could not listen on {sa} in `{owner}`: {} (if the scenario runs its own service there, say listener = \"scenario\")",
            crate::error_chain(&e)
        )),
        Err(e) => Err(crate::error_chain(&e)),
    }
}

fn transport_of(proto: L4) -> Transport {
    match proto {
        L4::Tcp => Transport::Tcp,
        L4::Udp => Transport::Udp,
    }
}

/// Probe a set of cells from `src` (all to run at once); one outcome per cell.
pub fn probe_cells(
    sandbox: &Sandbox,
    src: &str,
    dsts: &[(IpAddr, bool)],
    kind: ProbeKind,
    timing: &ProbeTiming,
) -> Result<Vec<ProbeOutcome>, String> {
    let run = || -> Result<Vec<ProbeOutcome>, String> {
        match kind {
            ProbeKind::Ping { .. } => {
                let cells: Vec<IcmpCell> = dsts
                    .iter()
                    .map(|(dst, expect_ok)| IcmpCell {
                        dst: *dst,
                        expect_ok: *expect_ok,
                    })
                    .collect();
                icmp::probe(&cells, timing).map_err(|e| crate::error_chain(&e))
            }
            ProbeKind::Port { proto, port, .. } => {
                let cells: Vec<TransportCell> = dsts
                    .iter()
                    .map(|(dst, expect_ok)| TransportCell {
                        dst: SocketAddr::new(*dst, port),
                        proto: transport_of(proto),
                        expect_ok: *expect_ok,
                    })
                    .collect();
                transport::probe(&cells, timing).map_err(|e| crate::error_chain(&e))
            }
        }
    };
    sandbox
        .in_netns(src, run)
        .map_err(|e| crate::error_chain(&e))
        .and_then(|r| r)
}

fn probe_row(
    sandbox: &Sandbox,
    src: &str,
    expected: &[Option<CellKind>],
    targets: &[Result<IpAddr, String>],
    kind: ProbeKind,
    timing: &ProbeTiming,
) -> Vec<ObservedCell> {
    let mut out: Vec<ObservedCell> = expected
        .iter()
        .map(|e| ObservedCell {
            expected: *e,
            observed: None,
        })
        .collect();
    let mut cells = Vec::new();
    let mut slots = Vec::new();
    for (i, (e, t)) in expected.iter().zip(targets).enumerate() {
        let Some(e) = e else { continue };
        match t {
            Ok(dst) => {
                cells.push((*dst, *e == CellKind::Ok));
                slots.push(i);
            }
            Err(why) => {
                out[i].observed = Some(ProbeOutcome::Unreachable {
                    detail: why.clone(),
                })
            }
        }
    }
    if cells.is_empty() {
        return out;
    }
    match probe_cells(sandbox, src, &cells, kind, timing) {
        Ok(outcomes) => {
            for (slot, o) in slots.into_iter().zip(outcomes) {
                out[slot].observed = Some(o);
            }
        }
        Err(e) => {
            for slot in slots {
                out[slot].observed = Some(ProbeOutcome::Unreachable {
                    detail: format!("could not probe from `{src}`: {e}"),
                });
            }
        }
    }
    out
}
