//! Checking an expected reachability matrix against the kernel: resolve every
//! destination to an address at check time, then probe every cell at once, one
//! thread per source namespace, each thread inside its source.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::packet_route::AddressFamily;

use super::icmp::{self, IcmpCell};
use super::outcome::{CellKind, ProbeOutcome, ProbeTiming};
use crate::sandbox::Sandbox;
use crate::scenario::{Matrix, Peer};
use crate::step::typed::Netlink;

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
    pub protocol: &'static str,
    pub sources: Vec<String>,
    pub destinations: Vec<Peer>,
    /// The address each column targeted, or why it had none.
    pub targets: Vec<Result<IpAddr, String>>,
    pub cells: Vec<Vec<ObservedCell>>,
}

impl ObservedMatrix {
    pub fn mismatches(&self) -> usize {
        self.cells.iter().flatten().filter(|c| !c.matches()).count()
    }
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

/// Probe `matrix` over ICMP echo (IPv4 or IPv6 by `v6`).
pub async fn check_ping(
    sandbox: &Sandbox,
    matrix: &Matrix,
    timing: &ProbeTiming,
    v6: bool,
) -> ObservedMatrix {
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

    let rows: Vec<Vec<ObservedCell>> = std::thread::scope(|s| {
        let handles: Vec<_> = matrix
            .sources
            .iter()
            .zip(&matrix.cells)
            .map(|(src, expected)| {
                let targets = &targets;
                s.spawn(move || probe_row(sandbox, src, expected, targets, timing))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread panicked"))
            .collect()
    });

    ObservedMatrix {
        protocol: if v6 { "ping6" } else { "ping" },
        sources: matrix.sources.clone(),
        destinations: matrix.destinations.clone(),
        targets,
        cells: rows,
    }
}

fn probe_row(
    sandbox: &Sandbox,
    src: &str,
    expected: &[Option<CellKind>],
    targets: &[Result<IpAddr, String>],
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
                cells.push(IcmpCell {
                    dst: *dst,
                    expect_ok: *e == CellKind::Ok,
                });
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
    let result = sandbox
        .in_netns(src, || icmp::probe(&cells, timing))
        .map_err(|e| crate::error_chain(&e))
        .and_then(|r| r.map_err(|e| crate::error_chain(&e)));
    match result {
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
