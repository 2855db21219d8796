//! The validated scenario: typed addresses, host references checked, one action per
//! step. Every value a later stage needs is here; nothing refers back to the TOML
//! except the spans kept for reporting.

use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::probe::outcome::{CellKind, ProbeTiming};

/// The name of the scenario's own top namespace.
pub const HOST: &str = "host";

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub about: Option<String>,
    pub source: Option<String>,
    pub path: PathBuf,
    pub timing: ProbeTiming,
    pub step_timeout: Duration,
    pub steps: Vec<Step>,
}

impl Scenario {
    /// Every namespace the scenario refers to, `host` first, in order of creation.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out = vec![HOST.to_string()];
        for step in &self.steps {
            for ns in step.creates_netns() {
                if !out.contains(&ns) {
                    out.push(ns);
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based position in the file.
    pub index: usize,
    pub name: String,
    /// Namespace the action runs in.
    pub netns: String,
    /// Line of the step's `[[step]]` table in the file, 1-based.
    pub line: usize,
    pub action: Option<Action>,
    pub timeout: Duration,
    pub expect: Expect,
}

impl Step {
    /// Namespaces this step creates (a typed `netns`, or `ip netns add NAME` in a script).
    pub fn creates_netns(&self) -> Vec<String> {
        match &self.action {
            Some(Action::Netns { name }) => vec![name.clone()],
            Some(Action::Run { script }) => script_netns_adds(script),
            _ => vec![],
        }
    }
}

/// Names given to `ip netns add` in a shell script, in order.
pub fn script_netns_adds(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in script.lines() {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|')
            .filter(|w| !w.is_empty())
            .collect();
        for w in words.windows(4) {
            if w[0] == "ip" && w[1] == "netns" && (w[2] == "add" || w[2] == "a") {
                out.push(w[3].to_string());
            }
        }
    }
    out
}

/// A typed action. Each one is equivalent to the iproute2 / iptables command in its doc.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A shell script, run verbatim by `bash -e` (stops at the first failing command).
    Run { script: String },
    /// `ip netns add NAME`
    Netns { name: String },
    /// `ip link add NAME type bridge` (and `ip link set NAME up` when `up`).
    Bridge { name: String, up: bool },
    /// `ip link add NAME type veth peer PEER`, then `ip link set NAME netns NS`,
    /// `ip link set PEER netns PEER_NS`, masters and `up` on both ends.
    Veth {
        name: String,
        peer: String,
        netns: String,
        peer_netns: String,
        master: Option<String>,
        peer_master: Option<String>,
        up: bool,
    },
    /// `ip link set LINK netns TO`
    Move { link: String, to: String },
    /// `ip link set NAME [up|down] [master M | nomaster]`
    Link {
        name: String,
        up: Option<bool>,
        master: Option<MasterChange>,
    },
    /// `ip addr add ADDRESS dev DEV`
    Addr { dev: String, address: IpNet },
    /// `ip route add DST [via VIA] [dev DEV]`
    Route {
        dst: IpNet,
        via: Option<IpAddr>,
        dev: Option<String>,
    },
    /// `sysctl -w KEY=VALUE` inside the step's namespace.
    Sysctl { key: String, value: String },
    /// `iptables [-t TABLE] -A|-I CHAIN RULE` or `iptables [-t TABLE] -P CHAIN POLICY`.
    Iptables {
        ipv6: bool,
        table: String,
        chain: String,
        op: IptablesOp,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum MasterChange {
    Set(String),
    Clear,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IptablesOp {
    Append(String),
    Insert(String),
    Policy(String),
}

impl Action {
    /// The command line this action is equivalent to, for the report.
    pub fn equivalent(&self) -> String {
        match self {
            Action::Run { .. } => "run".into(),
            Action::Netns { name } => format!("ip netns add {name}"),
            Action::Bridge { name, up } => {
                let mut s = format!("ip link add {name} type bridge");
                if *up {
                    s += &format!(" && ip link set {name} up");
                }
                s
            }
            Action::Veth {
                name,
                peer,
                netns,
                peer_netns,
                master,
                peer_master,
                up,
            } => {
                let mut s = format!("ip link add {name} type veth peer {peer}");
                if netns != HOST {
                    s += &format!(" && ip link set {name} netns {netns}");
                }
                if peer_netns != HOST {
                    s += &format!(" && ip link set {peer} netns {peer_netns}");
                }
                if let Some(m) = master {
                    s += &format!(" && ip link set {name} master {m}");
                }
                if let Some(m) = peer_master {
                    s += &format!(" && ip link set {peer} master {m}");
                }
                if *up {
                    s += &format!(" && ip link set {name} up && ip link set {peer} up");
                }
                s
            }
            Action::Move { link, to } => format!("ip link set {link} netns {to}"),
            Action::Link { name, up, master } => {
                let mut s = format!("ip link set {name}");
                match up {
                    Some(true) => s += " up",
                    Some(false) => s += " down",
                    None => {}
                }
                match master {
                    Some(MasterChange::Set(m)) => s += &format!(" master {m}"),
                    Some(MasterChange::Clear) => s += " nomaster",
                    None => {}
                }
                s
            }
            Action::Addr { dev, address } => format!("ip addr add {address} dev {dev}"),
            Action::Route { dst, via, dev } => {
                let mut s = format!("ip route add {dst}");
                if let Some(v) = via {
                    s += &format!(" via {v}");
                }
                if let Some(d) = dev {
                    s += &format!(" dev {d}");
                }
                s
            }
            Action::Sysctl { key, value } => format!("sysctl -w {key}={value}"),
            Action::Iptables {
                ipv6,
                table,
                chain,
                op,
            } => {
                let bin = if *ipv6 { "ip6tables" } else { "iptables" };
                let t = if table == "filter" {
                    String::new()
                } else {
                    format!(" -t {table}")
                };
                match op {
                    IptablesOp::Append(r) => format!("{bin}{t} -A {chain} {r}"),
                    IptablesOp::Insert(r) => format!("{bin}{t} -I {chain} {r}"),
                    IptablesOp::Policy(p) => format!("{bin}{t} -P {chain} {p}"),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub ping: Option<Matrix>,
    pub stdout_contains: Vec<String>,
    pub timing: Option<ProbeTiming>,
}

impl Expect {
    pub fn is_empty(&self) -> bool {
        self.ping.is_none() && self.stdout_contains.is_empty()
    }
}

/// Who a matrix row or column names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A namespace: `host` or one a step created. As a destination: its first global
    /// address of the probe's family at check time.
    Netns(String),
    /// An address literal (destinations only).
    Addr(IpAddr),
}

impl Peer {
    pub fn label(&self) -> String {
        match self {
            Peer::Netns(n) => n.clone(),
            Peer::Addr(a) => a.to_string(),
        }
    }
}

/// An expected reachability matrix: rows are sources, columns destinations.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub sources: Vec<String>,
    pub destinations: Vec<Peer>,
    /// `cells[row][col]`; `None` is `-` (not checked).
    pub cells: Vec<Vec<Option<CellKind>>>,
    /// Byte range of the matrix text in the file, for pointing at it.
    pub span: Range<usize>,
}
