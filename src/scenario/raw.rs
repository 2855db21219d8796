//! The raw scenario file, exactly as serde reads it: close to the TOML, every key
//! spanned so that validation can point at the line. Unknown keys are errors.
//! Nothing here is checked beyond its TOML type; `validate` builds the typed model.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub scenario: Spanned<RawHeader>,
    /// Bridges and hosts built natively before the first step.
    #[serde(default)]
    pub topology: Option<Spanned<RawTopology>>,
    #[serde(default)]
    pub step: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    pub name: Spanned<String>,
    #[serde(default)]
    pub about: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub probe: Option<Spanned<RawTiming>>,
    /// Default time limit of a `run` step, e.g. "30s".
    #[serde(default)]
    pub step_timeout: Option<Spanned<String>>,
    /// Interval of `ping -c N` in `run` scripts ("10ms" by default; "1s" is ping's own).
    #[serde(default)]
    pub ping_interval: Option<Spanned<String>>,
    /// Kernel features and tools the scenario needs; when one is missing the
    /// scenario is reported as skipped.
    #[serde(default)]
    pub requires: Vec<Spanned<String>>,
    /// Packet capture with libpcap.
    #[serde(default)]
    pub capture: Option<Spanned<RawCapture>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopology {
    #[serde(default)]
    pub bridge: Vec<Spanned<RawTopoBridge>>,
    #[serde(default)]
    pub host: Vec<Spanned<RawTopoHost>>,
    /// Every host knows every other host of its bridge as a permanent neighbour.
    #[serde(default)]
    pub static_neighbors: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopoBridge {
    pub name: Spanned<String>,
    /// Addresses of the bridge itself, in `host` (a gateway for the hosts).
    #[serde(default)]
    pub address: Option<Spanned<String>>,
    #[serde(default)]
    pub addresses: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopoHost {
    pub name: Spanned<String>,
    pub bridge: Spanned<String>,
    #[serde(default)]
    pub address: Option<Spanned<String>>,
    #[serde(default)]
    pub addresses: Vec<Spanned<String>>,
    /// The host's end of its veth pair (default `eth0`).
    #[serde(default)]
    pub iface: Option<Spanned<String>>,
    /// The bridge's end (default `<bridge>-<host>`).
    #[serde(default)]
    pub port: Option<Spanned<String>>,
    /// Default route via this address.
    #[serde(default)]
    pub gateway: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    /// Every interface of every namespace.
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub on: Vec<Spanned<RawCaptureOn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCaptureOn {
    pub netns: Spanned<String>,
    pub iface: Spanned<String>,
    #[serde(default)]
    pub filter: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPacketExpect {
    /// `namespace:interface`
    pub on: Spanned<String>,
    #[serde(default)]
    pub seen: Option<Spanned<String>>,
    #[serde(default)]
    pub not_seen: Option<Spanned<String>>,
    #[serde(default)]
    pub count: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTiming {
    pub deadline: Option<Spanned<String>>,
    pub window: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: Spanned<String>,
    #[serde(rename = "in", default)]
    pub in_: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,

    // --- actions: at most one of these ---
    #[serde(default)]
    pub run: Option<Spanned<String>>,
    #[serde(default)]
    pub netns: Option<Spanned<String>>,
    #[serde(default)]
    pub bridge: Option<Spanned<RawBridge>>,
    #[serde(default)]
    pub veth: Option<Spanned<RawVeth>>,
    #[serde(rename = "move", default)]
    pub move_: Option<Spanned<RawMove>>,
    #[serde(default)]
    pub link: Option<Spanned<RawLink>>,
    #[serde(default)]
    pub addr: Option<Spanned<RawAddr>>,
    #[serde(default)]
    pub route: Option<Spanned<RawRoute>>,
    #[serde(default)]
    pub sysctl: Option<Spanned<RawSysctl>>,
    #[serde(default)]
    pub iptables: Option<Spanned<RawIptables>>,
    #[serde(default)]
    pub listen: Option<Spanned<RawListen>>,

    #[serde(default)]
    pub expect: Option<Spanned<RawExpect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    pub name: Spanned<String>,
    #[serde(default)]
    pub up: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVeth {
    pub name: Spanned<String>,
    pub peer: Spanned<String>,
    /// Namespace of `name`; the step's `in` when absent.
    #[serde(default)]
    pub netns: Option<Spanned<String>>,
    /// Namespace of `peer`; the step's `in` when absent.
    #[serde(default)]
    pub peer_netns: Option<Spanned<String>>,
    #[serde(default)]
    pub master: Option<Spanned<String>>,
    #[serde(default)]
    pub peer_master: Option<Spanned<String>>,
    #[serde(default)]
    pub up: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMove {
    pub link: Spanned<String>,
    pub to: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLink {
    pub name: Spanned<String>,
    #[serde(default)]
    pub state: Option<Spanned<String>>,
    #[serde(default)]
    pub master: Option<Spanned<String>>,
    #[serde(default)]
    pub nomaster: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAddr {
    pub dev: Spanned<String>,
    pub address: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub dst: Spanned<String>,
    #[serde(default)]
    pub via: Option<Spanned<String>>,
    #[serde(default)]
    pub dev: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSysctl {
    pub key: Spanned<String>,
    pub value: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIptables {
    #[serde(default)]
    pub table: Option<Spanned<String>>,
    pub chain: Spanned<String>,
    /// A rule to append, in `iptables -A CHAIN` syntax (without `-A CHAIN`).
    #[serde(default)]
    pub append: Option<Spanned<String>>,
    /// A rule to insert at the top of the chain.
    #[serde(default)]
    pub insert: Option<Spanned<String>>,
    /// A policy for a built-in chain: ACCEPT or DROP.
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    /// `ip6tables` instead of `iptables`.
    #[serde(default)]
    pub ipv6: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    #[serde(default)]
    pub tcp: Option<Spanned<u16>>,
    #[serde(default)]
    pub udp: Option<Spanned<u16>>,
    /// Address to bind; all addresses (0.0.0.0 and ::) when absent.
    #[serde(default)]
    pub address: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    #[serde(default)]
    pub ping: Option<Spanned<String>>,
    #[serde(default)]
    pub ping6: Option<Spanned<String>>,
    #[serde(default)]
    pub tcp: Vec<Spanned<RawPortMatrix>>,
    #[serde(default)]
    pub udp: Vec<Spanned<RawPortMatrix>>,
    #[serde(default)]
    pub iptables: Vec<Spanned<RawIptablesExpect>>,
    #[serde(default)]
    pub nft: Vec<Spanned<RawNftExpect>>,
    #[serde(default)]
    pub packets: Vec<Spanned<RawPacketExpect>>,
    #[serde(default)]
    pub stdout_contains: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub probe: Option<Spanned<RawTiming>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPortMatrix {
    pub port: Spanned<u16>,
    pub matrix: Spanned<String>,
    /// IPv6 instead of IPv4 for namespace columns.
    #[serde(default)]
    pub ipv6: bool,
    /// "runner" (default): the runner listens in each destination for the probe;
    /// "scenario": a service of the scenario's own is (or is not) listening there.
    #[serde(default)]
    pub listener: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIptablesExpect {
    #[serde(rename = "in", default)]
    pub in_: Option<Spanned<String>>,
    #[serde(default)]
    pub table: Option<Spanned<String>>,
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub policy: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub present: Vec<Spanned<String>>,
    #[serde(default)]
    pub absent: Vec<Spanned<String>>,
    #[serde(default)]
    pub counts: std::collections::BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNftExpect {
    #[serde(rename = "in", default)]
    pub in_: Option<Spanned<String>>,
    /// Rules that must exist, by comment or `handle N`.
    #[serde(default)]
    pub present: Vec<Spanned<String>>,
    #[serde(default)]
    pub absent: Vec<Spanned<String>>,
    /// Packet counts since the previous checkpoint, by rule comment or `handle N`.
    #[serde(default)]
    pub counts: std::collections::BTreeMap<String, Spanned<String>>,
}
