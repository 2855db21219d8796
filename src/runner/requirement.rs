//! What a scenario declares it needs (`[scenario] requires`), detected at run time in
//! a throwaway sandbox: a kernel feature is there when the command that uses it
//! works, a tool when it is on the PATH. A missing requirement makes the run a skip,
//! with the kernel's own words as the reason.

use std::process::{Command, Stdio};

use crate::sandbox;

/// A kernel feature and the commands that prove it (run in a fresh namespace).
pub struct Feature {
    pub name: &'static str,
    pub what: &'static str,
    pub probe: &'static str,
}

pub const FEATURES: &[Feature] = &[
    Feature {
        name: "veth",
        what: "veth pairs",
        probe: "ip link add t0 type veth peer t1",
    },
    Feature {
        name: "bridge",
        what: "Linux bridges",
        probe: "ip link add t0 type bridge",
    },
    Feature {
        name: "bridge-vlan-filtering",
        what: "bridge VLAN filtering",
        probe: "ip link add t0 type bridge vlan_filtering 1",
    },
    Feature {
        name: "vlan",
        what: "802.1Q VLAN devices",
        probe: "ip link add t0 type veth peer t1 && ip link add link t0 name t0.10 type vlan id 10",
    },
    Feature {
        name: "dummy",
        what: "dummy devices",
        probe: "ip link add t0 type dummy",
    },
    Feature {
        name: "bond",
        what: "bonding",
        probe: "ip link add t0 type bond",
    },
    Feature {
        name: "team",
        what: "team devices",
        probe: "ip link add t0 type team",
    },
    Feature {
        name: "vrf",
        what: "VRF devices",
        probe: "ip link add t0 type vrf table 10",
    },
    Feature {
        name: "vxlan",
        what: "VXLAN",
        probe: "ip link add t0 type vxlan id 1 dstport 4789",
    },
    Feature {
        name: "macvlan",
        what: "macvlan",
        probe: "ip link add t0 type veth peer t1 && ip link add link t0 name t2 type macvlan",
    },
    Feature {
        name: "ipvlan",
        what: "ipvlan",
        probe: "ip link add t0 type veth peer t1 && ip link add link t0 name t2 type ipvlan",
    },
    Feature {
        name: "gre",
        what: "GRE tunnels",
        probe: "ip link add t0 type gre local 10.0.0.1 remote 10.0.0.2",
    },
    Feature {
        name: "ipip",
        what: "IPIP tunnels",
        probe: "ip link add t0 type ipip local 10.0.0.1 remote 10.0.0.2",
    },
    Feature {
        name: "geneve",
        what: "Geneve tunnels",
        probe: "ip link add t0 type geneve id 1 remote 10.0.0.2",
    },
    Feature {
        name: "wireguard",
        what: "WireGuard",
        probe: "ip link add t0 type wireguard",
    },
    Feature {
        name: "netem",
        what: "the netem qdisc",
        probe: "ip link set lo up && tc qdisc add dev lo root netem delay 1ms",
    },
    Feature {
        name: "htb",
        what: "the htb qdisc",
        probe: "ip link set lo up && tc qdisc add dev lo root handle 1: htb",
    },
];

pub fn is_known(name: &str) -> bool {
    FEATURES.iter().any(|f| f.name == name)
        || name
            .strip_prefix("tool:")
            .is_some_and(|t| !t.is_empty() && !t.contains('/'))
}

/// Why the requirements are not met, or `None` when they all are.
pub fn missing(requires: &[String]) -> Option<String> {
    if requires.is_empty() {
        return None;
    }
    let mut reasons = Vec::new();
    for r in requires {
        if let Some(tool) = r.strip_prefix("tool:") {
            if !super::on_path(tool) {
                reasons.push(format!("the tool `{tool}` is not installed"));
            }
        }
    }
    let features: Vec<&Feature> = requires
        .iter()
        .filter_map(|r| FEATURES.iter().find(|f| f.name == r))
        .collect();
    if !features.is_empty() {
        let result = sandbox::run(|sb| {
            let mut out = Vec::new();
            for f in &features {
                let mut cmd = Command::new("bash");
                cmd.args(["-c", f.probe])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let probe = sb.spawn(cmd).ok().and_then(|c| c.wait_with_output().ok());
                match probe {
                    Some(o) if o.status.success() => {}
                    Some(o) => out.push(format!(
                        "this kernel lacks {} (`{}`: {})",
                        f.what,
                        f.probe,
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    None => out.push(format!("could not test for {}", f.what)),
                }
            }
            out
        });
        match result {
            Ok(r) => reasons.extend(r),
            Err(e) => reasons.push(format!(
                "could not test the kernel: {}",
                crate::error_chain(&e)
            )),
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}
