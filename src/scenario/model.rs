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
    /// The interval `ping -c N` uses in `run` scripts; `None`: ping's own (1 s).
    pub ping_interval: Option<Duration>,
    /// Kernel features (see `requirement::FEATURES`) and tools the scenario needs.
    pub requires: Vec<String>,
    pub capture: Option<CaptureConfig>,
    /// Built before the first step.
    pub topology: Topology,
    pub steps: Vec<Step>,
}

/// A declarative topology: bridges in `host`, and hosts (namespaces) each joined to
/// a bridge by a veth pair. Built natively and all at once before the first step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    pub bridges: Vec<TopoBridge>,
    pub hosts: Vec<TopoHost>,
    /// Line of the `[topology]` table (or its first entry), 1-based.
    pub line: usize,
    /// Every host gets a permanent neighbour entry (ARP/NDP) for every address of
    /// every other host on its bridge, like Mininet's `--arp`: no ARP at all. The
    /// kernel's neighbour table is shared by all namespaces and holds at most
    /// `gc_thresh3` (1024 by default) learnt entries, machine-wide; permanent ones do
    /// not count. N hosts on one bridge learn N×(N−1): beyond ~30 hosts, ARP fails.
    pub static_neighbors: bool,
}

impl Topology {
    pub fn is_empty(&self) -> bool {
        self.bridges.is_empty() && self.hosts.is_empty()
    }

    /// What it builds, one line per object, for the report.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        for b in &self.bridges {
            let mut l = format!("bridge {} in host, up", b.name);
            for a in &b.addresses {
                l += &format!(", {a}");
            }
            lines.push(l);
        }
        for h in &self.hosts {
            let mut l = format!(
                "host {}: {} {} on {} (port {})",
                h.name,
                h.iface,
                h.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                h.bridge,
                h.port
            );
            if let Some(g) = h.gateway {
                l += &format!(", default via {g}");
            }
            lines.push(l);
        }
        if self.static_neighbors {
            lines.push(
                "static neighbours: each host knows every other host of its bridge (ip neigh add ADDRESS lladdr MAC dev IFACE nud permanent)"
                    .into(),
            );
        }
        lines.join("\n")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopoBridge {
    pub name: String,
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopoHost {
    /// Also the name of its namespace.
    pub name: String,
    pub bridge: String,
    /// The host's end of the veth pair.
    pub iface: String,
    /// The bridge's end, a port of `bridge` in `host`.
    pub port: String,
    pub addresses: Vec<IpNet>,
    pub gateway: Option<IpAddr>,
}

impl TopoHost {
    /// The iproute2 commands this host equals.
    pub fn equivalent(&self) -> Vec<String> {
        let mut v = vec![
            format!("ip netns add {}", self.name),
            format!(
                "ip link add {} master {} up type veth peer {} netns {}",
                self.port, self.bridge, self.iface, self.name
            ),
            format!("ip -n {} link set lo up", self.name),
            format!("ip -n {} link set {} up", self.name, self.iface),
        ];
        for a in &self.addresses {
            v.push(format!(
                "ip -n {} addr add {a} dev {}",
                self.name, self.iface
            ));
        }
        if let Some(g) = self.gateway {
            v.push(format!("ip -n {} route add default via {g}", self.name));
        }
        v
    }
}

/// What to capture: every interface of every namespace, or chosen ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CaptureConfig {
    pub all: bool,
    /// (namespace, interface, BPF filter)
    pub on: Vec<(String, String, Option<String>)>,
}

impl CaptureConfig {
    pub fn covers(&self, netns: &str, iface: &str) -> bool {
        self.all || self.on.iter().any(|(n, i, _)| n == netns && i == iface)
    }
}

/// A packet that must (or must not) be seen on an interface during a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PacketExpect {
    pub netns: String,
    pub iface: String,
    /// Matched against the one-line summaries, as a substring.
    pub pattern: String,
    pub seen: bool,
    /// How many matching packets (with `seen`); at least one when absent.
    pub count: Option<CountCmp>,
}

impl Scenario {
    /// Sysctls the scenario may touch (typed or `sysctl -w` in scripts), plus the two
    /// every bridge tutorial touches; the runner checks the machine's stay unchanged.
    pub fn sysctl_keys(&self) -> Vec<String> {
        let mut keys = vec![
            "net.ipv4.ip_forward".to_string(),
            "net.bridge.bridge-nf-call-iptables".to_string(),
        ];
        for step in &self.steps {
            match &step.action {
                Some(Action::Sysctl { key, .. }) => keys.push(key.clone()),
                Some(Action::Run { script }) => {
                    for w in script.split_whitespace() {
                        if let Some((k, _)) = w.split_once('=') {
                            if k.starts_with("net.") && !k.contains('/') {
                                keys.push(k.to_string());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Every namespace the scenario refers to, `host` first, in order of creation.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out = vec![HOST.to_string()];
        out.extend(self.topology.hosts.iter().map(|h| h.name.clone()));
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
    /// `ip link add NAME netns NS master M up type veth peer name PEER netns PEER_NS`,
    /// then `ip -n PEER_NS link set PEER master PEER_M up`: each end is created
    /// straight in its namespace (no move).
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
    /// A service of the scenario's own that lives until the scenario ends:
    /// `socat TCP-LISTEN:PORT,fork,bind=ADDRESS EXEC:cat &` (TCP accepts and closes, UDP echoes).
    Listen {
        proto: L4,
        port: u16,
        address: Option<IpAddr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    pub fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
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
                // Each end is created straight in its namespace; the kernel cannot
                // bring the peer up in the same request (ENOTCONN: its other end is
                // not registered yet), so that is a second one.
                let mut s = format!("ip link add {name}");
                if netns != HOST {
                    s += &format!(" netns {netns}");
                }
                if let Some(m) = master {
                    s += &format!(" master {m}");
                }
                if *up {
                    s += " up";
                }
                s += &format!(" type veth peer name {peer}");
                if peer_netns != HOST {
                    s += &format!(" netns {peer_netns}");
                }
                if peer_master.is_some() || *up {
                    s += " && ip";
                    if peer_netns != HOST {
                        s += &format!(" -n {peer_netns}");
                    }
                    s += &format!(" link set {peer}");
                    if let Some(m) = peer_master {
                        s += &format!(" master {m}");
                    }
                    if *up {
                        s += " up";
                    }
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
            Action::Listen {
                proto,
                port,
                address,
            } => {
                let kind = match proto {
                    L4::Tcp => "TCP-LISTEN",
                    L4::Udp => "UDP-RECVFROM",
                };
                let bind = address.map(|a| format!(",bind={a}")).unwrap_or_default();
                format!("socat {kind}:{port},fork{bind} EXEC:cat &")
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub ping: Option<Matrix>,
    pub ping6: Option<Matrix>,
    pub tcp: Vec<PortMatrix>,
    pub udp: Vec<PortMatrix>,
    pub iptables: Vec<IptablesExpect>,
    pub nft: Vec<NftExpect>,
    pub packets: Vec<PacketExpect>,
    pub stdout_contains: Vec<String>,
    pub timing: Option<ProbeTiming>,
}

impl Expect {
    /// Whether this step is a checkpoint: it probes or reads firewall state.
    pub fn is_checkpoint(&self) -> bool {
        self.ping.is_some()
            || self.ping6.is_some()
            || !self.tcp.is_empty()
            || !self.udp.is_empty()
            || !self.iptables.is_empty()
            || !self.nft.is_empty()
            || !self.packets.is_empty()
    }
}

/// An expected TCP or UDP reachability matrix to one port.
#[derive(Debug, Clone, PartialEq)]
pub struct PortMatrix {
    pub proto: L4,
    pub port: u16,
    pub v6: bool,
    /// The runner listens in each destination for the probe (else the scenario does).
    pub runner_listens: bool,
    pub matrix: Matrix,
}

/// A packet-count comparison: `0`, `3`, `>0`, `>=2`, `<5`, `<=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountCmp {
    Eq(u64),
    Gt(u64),
    Ge(u64),
    Lt(u64),
    Le(u64),
}

impl CountCmp {
    pub fn parse(s: &str) -> Option<CountCmp> {
        let s = s.trim();
        let (ctor, rest): (fn(u64) -> CountCmp, &str) = if let Some(r) = s.strip_prefix(">=") {
            (CountCmp::Ge, r)
        } else if let Some(r) = s.strip_prefix("<=") {
            (CountCmp::Le, r)
        } else if let Some(r) = s.strip_prefix('>') {
            (CountCmp::Gt, r)
        } else if let Some(r) = s.strip_prefix('<') {
            (CountCmp::Lt, r)
        } else if let Some(r) = s.strip_prefix("==") {
            (CountCmp::Eq, r)
        } else {
            (CountCmp::Eq, s)
        };
        rest.trim().parse().ok().map(ctor)
    }

    pub fn holds(self, n: u64) -> bool {
        match self {
            CountCmp::Eq(v) => n == v,
            CountCmp::Gt(v) => n > v,
            CountCmp::Ge(v) => n >= v,
            CountCmp::Lt(v) => n < v,
            CountCmp::Le(v) => n <= v,
        }
    }
}

impl std::fmt::Display for CountCmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountCmp::Eq(v) => write!(f, "{v}"),
            CountCmp::Gt(v) => write!(f, ">{v}"),
            CountCmp::Ge(v) => write!(f, ">={v}"),
            CountCmp::Lt(v) => write!(f, "<{v}"),
            CountCmp::Le(v) => write!(f, "<={v}"),
        }
    }
}

/// Expected iptables/ip6tables state of one table in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct IptablesExpect {
    pub netns: String,
    pub table: String,
    pub ipv6: bool,
    /// (chain, policy)
    pub policies: Vec<(String, String)>,
    /// `iptables -S` lines that must be present / absent.
    pub present: Vec<String>,
    pub absent: Vec<String>,
    /// Packets since the previous checkpoint, by `-P CHAIN` or an `-A ...` line.
    pub counts: Vec<(String, CountCmp)>,
}

/// Expected nftables state of one namespace; rules named by comment or `handle N`.
#[derive(Debug, Clone, PartialEq)]
pub struct NftExpect {
    pub netns: String,
    pub present: Vec<String>,
    pub absent: Vec<String>,
    pub counts: Vec<(String, CountCmp)>,
}

/// Which firewall state a scenario touches, so that checkpoints read just that.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirewallScope {
    pub v4_tables: Vec<String>,
    pub v6_tables: Vec<String>,
    pub nft: bool,
}

impl Scenario {
    /// Tables and tools the scenario's steps and expectations mention.
    pub fn firewall_scope(&self) -> FirewallScope {
        let mut scope = FirewallScope {
            v4_tables: vec!["filter".into()],
            ..Default::default()
        };
        let add = |v: &mut Vec<String>, t: &str| {
            if !v.iter().any(|x| x == t) {
                v.push(t.to_string());
            }
        };
        for step in &self.steps {
            match &step.action {
                Some(Action::Run { script }) => {
                    let v6 = script.contains("ip6tables");
                    if v6 {
                        add(&mut scope.v6_tables, "filter");
                    }
                    scope.nft |= script.split_whitespace().any(|w| w == "nft");
                    for t in ["nat", "mangle", "raw"] {
                        if script.contains(&format!("-t {t}"))
                            || script.contains(&format!("--table {t}"))
                        {
                            add(&mut scope.v4_tables, t);
                            if v6 {
                                add(&mut scope.v6_tables, t);
                            }
                        }
                    }
                }
                Some(Action::Iptables { ipv6, table, .. }) => {
                    if *ipv6 {
                        add(&mut scope.v6_tables, "filter");
                        add(&mut scope.v6_tables, table);
                    } else {
                        add(&mut scope.v4_tables, table);
                    }
                }
                _ => {}
            }
            for e in &step.expect.iptables {
                if e.ipv6 {
                    add(&mut scope.v6_tables, &e.table);
                } else {
                    add(&mut scope.v4_tables, &e.table);
                }
            }
            scope.nft |= !step.expect.nft.is_empty();
        }
        scope
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
