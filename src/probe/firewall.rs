//! Reading a namespace's firewall state: iptables/ip6tables tables through the
//! `iptables` crate (`-S -v`, which gives every rule and policy with its counters in
//! `iptables -S` form), and nftables through `nft -j list ruleset`, parsed with serde.
//! Every reader runs on the calling thread, which must be inside the namespace.

use std::process::Command;

use serde::Deserialize;

/// One `iptables -S` line (`-P FORWARD DROP`, `-N MYCHAIN`, `-A FORWARD ...`) and its
/// packet/byte counters (none for `-N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptEntry {
    pub line: String,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

impl IptEntry {
    /// The policy line's chain, for `-P CHAIN POLICY`.
    pub fn policy(&self) -> Option<(&str, &str)> {
        let mut w = self.line.strip_prefix("-P ")?.split(' ');
        Some((w.next()?, w.next()?))
    }

    /// The key a count expectation names this entry by: `-P CHAIN` or the rule line.
    pub fn count_key(&self) -> String {
        match self.policy() {
            Some((chain, _)) => format!("-P {chain}"),
            None => self.line.clone(),
        }
    }
}

/// One iptables table of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptTable {
    pub ipv6: bool,
    pub table: String,
    pub entries: Vec<IptEntry>,
}

impl IptTable {
    /// No rules, no user chains, every policy ACCEPT: a fresh namespace's table.
    pub fn is_default(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.policy(), Some((_, "ACCEPT"))))
    }

    pub fn policy(&self, chain: &str) -> Option<&str> {
        self.entries
            .iter()
            .find_map(|e| e.policy().filter(|(c, _)| *c == chain).map(|(_, p)| p))
    }

    pub fn find(&self, key: &str) -> Option<&IptEntry> {
        self.entries
            .iter()
            .find(|e| e.count_key() == key || e.line == key)
    }

    pub fn command(&self) -> &'static str {
        if self.ipv6 {
            "ip6tables"
        } else {
            "iptables"
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("failed to run {command}: {message}")]
    Iptables { command: String, message: String },
    #[error("failed to run `nft -j list ruleset`")]
    NftSpawn(#[source] std::io::Error),
    #[error("`nft -j list ruleset` failed: {0}")]
    NftFailed(String),
    #[error("failed to parse the output of `nft -j list ruleset`")]
    NftParse(#[source] serde_json::Error),
}

/// Whether the current thread's namespace has any netfilter table at all: an
/// nftables table (iptables-nft makes one on its first rule or policy; reading
/// creates none) or a legacy x_tables table. Asked natively (one nfnetlink dump and
/// two /proc reads), so that namespaces nobody touched cost no `iptables` process.
pub fn has_tables() -> std::io::Result<bool> {
    for legacy in ["ip_tables_names", "ip6_tables_names"] {
        match std::fs::read_to_string(format!("/proc/thread-self/net/{legacy}")) {
            Ok(names) if !names.trim().is_empty() => return Ok(true),
            _ => {}
        }
    }
    nft_has_tables()
}

fn nft_has_tables() -> std::io::Result<bool> {
    use nix::sys::socket::{
        recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
    };
    use std::os::fd::AsRawFd;
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    // nlmsghdr (len, type, flags, seq, pid) + nfgenmsg (family, version, res_id).
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]); // AF_UNSPEC, NFNETLINK_V0, res_id 0
    send(fd.as_raw_fd(), &req, MsgFlags::empty())?;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
            match ty {
                NLMSG_DONE => return Ok(false),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(
                        buf.get(off + 16..off + 20)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or([0; 4]),
                    );
                    if errno == 0 {
                        return Ok(false);
                    }
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE => return Ok(true),
                _ => {}
            }
            if len < 16 {
                return Ok(false);
            }
            off += (len + 3) & !3;
        }
        if n == 0 {
            return Ok(false);
        }
    }
}

/// An `iptables` (or `ip6tables`) handle. The crate asks `iptables --version` each
/// time one is made (a process, 3–5 ms); its answer does not depend on the
/// namespace, so it is asked once per run of the program.
pub fn iptables_handle(ipv6: bool) -> Result<iptables::IPTables, String> {
    use std::sync::OnceLock;
    type Caps = Result<(bool, bool, bool), String>;
    static V4: OnceLock<Caps> = OnceLock::new();
    static V6: OnceLock<Caps> = OnceLock::new();
    let caps = if ipv6 { &V6 } else { &V4 };
    let (has_check, has_wait, is_numeric) = caps
        .get_or_init(|| {
            iptables::new(ipv6)
                .map(|i| (i.has_check, i.has_wait, i.is_numeric))
                .map_err(|e| e.to_string())
        })
        .clone()?;
    Ok(iptables::IPTables {
        cmd: if ipv6 { "ip6tables" } else { "iptables" },
        has_check,
        has_wait,
        is_numeric,
    })
}

/// Read `tables` of iptables (or ip6tables) in the current thread's namespace.
pub fn read_iptables(ipv6: bool, tables: &[String]) -> Result<Vec<IptTable>, FirewallError> {
    let command = if ipv6 { "ip6tables" } else { "iptables" };
    let err = |message: String| FirewallError::Iptables {
        command: command.into(),
        message,
    };
    let ipt = iptables_handle(ipv6).map_err(err)?;
    let mut out = Vec::new();
    for table in tables {
        let o = ipt
            .execute(table, "-S -v")
            .map_err(|e| err(e.to_string()))?;
        if !o.status.success() {
            return Err(err(format!(
                "-t {table} -S -v: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        out.push(IptTable {
            ipv6,
            table: table.clone(),
            entries: parse_s_v(&String::from_utf8_lossy(&o.stdout)),
        });
    }
    Ok(out)
}

/// Split an `iptables -S` line into words, keeping quoted words whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut has = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
                has = true;
            }
            c if c.is_whitespace() && !quoted => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// Parse `iptables -S -v`: each line with its `-c PACKETS BYTES` taken out.
pub fn parse_s_v(text: &str) -> Vec<IptEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let w = words(line);
        if w.is_empty() {
            continue;
        }
        let mut kept = Vec::new();
        let (mut packets, mut bytes) = (None, None);
        let mut i = 0;
        while i < w.len() {
            if w[i] == "-c" && packets.is_none() {
                if let (Some(p), Some(b)) = (
                    w.get(i + 1).and_then(|x| x.parse().ok()),
                    w.get(i + 2).and_then(|x| x.parse().ok()),
                ) {
                    packets = Some(p);
                    bytes = Some(b);
                    i += 3;
                    continue;
                }
            }
            kept.push(w[i].clone());
            i += 1;
        }
        out.push(IptEntry {
            line: kept.join(" "),
            packets,
            bytes,
        });
    }
    out
}

/// One nftables rule, with what identifies it and its counter if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    pub packets: Option<u64>,
}

impl NftRule {
    /// Whether `key` (a comment, or `handle N`) names this rule.
    pub fn named(&self, key: &str) -> bool {
        self.comment.as_deref() == Some(key) || key == format!("handle {}", self.handle)
    }

    pub fn label(&self) -> String {
        let name = match &self.comment {
            Some(c) => format!("\"{c}\""),
            None => format!("handle {}", self.handle),
        };
        format!("{} {} {} rule {name}", self.family, self.table, self.chain)
    }
}

/// The nftables ruleset of a namespace: rules for expectations and counters, and the
/// text form (counters taken out) for the report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NftState {
    pub rules: Vec<NftRule>,
    pub text: String,
}

#[derive(Deserialize)]
struct NftJson {
    nftables: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct NftJsonRule {
    family: String,
    table: String,
    chain: String,
    handle: u64,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    expr: Vec<serde_json::Value>,
}

pub fn parse_nft_json(json: &str) -> Result<Vec<NftRule>, FirewallError> {
    let doc: NftJson = serde_json::from_str(json).map_err(FirewallError::NftParse)?;
    let mut out = Vec::new();
    for item in doc.nftables {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let r: NftJsonRule =
            serde_json::from_value(rule.clone()).map_err(FirewallError::NftParse)?;
        let packets = r
            .expr
            .iter()
            .find_map(|e| e.get("counter")?.get("packets")?.as_u64());
        out.push(NftRule {
            family: r.family,
            table: r.table,
            chain: r.chain,
            handle: r.handle,
            comment: r.comment,
            packets,
        });
    }
    Ok(out)
}

/// Read the nftables ruleset of the current thread's namespace.
pub fn read_nft() -> Result<NftState, FirewallError> {
    let run = |args: &[&str]| -> Result<String, FirewallError> {
        let o = Command::new("nft")
            .args(args)
            .output()
            .map_err(FirewallError::NftSpawn)?;
        if !o.status.success() {
            return Err(FirewallError::NftFailed(
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let rules = parse_nft_json(&run(&["-j", "list", "ruleset"])?)?;
    let text = redact_nft_counters(&run(&["list", "ruleset"])?);
    Ok(NftState { rules, text })
}

/// `counter packets 3 bytes 252` -> `counter`.
fn redact_nft_counters(text: &str) -> String {
    text.lines()
        .map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            let mut out = Vec::new();
            let mut i = 0;
            while i < w.len() {
                if w[i] == "packets" && w.get(i + 2) == Some(&"bytes") && w.get(i + 3).is_some() {
                    i += 4;
                    continue;
                }
                out.push(w[i]);
                i += 1;
            }
            out.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s_v_output_with_counters_taken_out() {
        let text = "-P INPUT ACCEPT -c 0 0\n-P FORWARD DROP -c 12 1008\n-N MYCHAIN\n-A INPUT -p tcp -m tcp --dport 22 -c 3 180 -j REJECT --reject-with tcp-reset\n-A FORWARD -i br0 -m comment --comment \"a -c 1 2\" -c 5 420 -j ACCEPT\n";
        let e = parse_s_v(text);
        assert_eq!(e[1].line, "-P FORWARD DROP");
        assert_eq!(e[1].packets, Some(12));
        assert_eq!(e[1].count_key(), "-P FORWARD");
        assert_eq!(e[2].line, "-N MYCHAIN");
        assert_eq!(e[2].packets, None);
        assert_eq!(
            e[3].line,
            "-A INPUT -p tcp -m tcp --dport 22 -j REJECT --reject-with tcp-reset"
        );
        assert_eq!(e[3].packets, Some(3));
        assert_eq!(
            e[4].line,
            "-A FORWARD -i br0 -m comment --comment \"a -c 1 2\" -j ACCEPT"
        );
        assert_eq!(e[4].packets, Some(5));
        let t = IptTable {
            ipv6: false,
            table: "filter".into(),
            entries: e,
        };
        assert!(!t.is_default());
        assert_eq!(t.policy("FORWARD"), Some("DROP"));
    }

    #[test]
    fn fresh_table_is_default() {
        let t = IptTable {
            ipv6: false,
            table: "filter".into(),
            entries: parse_s_v(
                "-P INPUT ACCEPT -c 0 0\n-P FORWARD ACCEPT -c 0 0\n-P OUTPUT ACCEPT -c 0 0\n",
            ),
        };
        assert!(t.is_default());
    }

    #[test]
    fn parses_nft_json_rules_and_counters() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "f", "handle": 1}}, {"chain": {"family": "inet", "table": "f", "name": "input", "handle": 1, "policy": "drop"}}, {"rule": {"family": "inet", "table": "f", "chain": "input", "handle": 2, "comment": "allow-ssh", "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "f", "chain": "input", "handle": 3, "expr": [{"drop": null}]}}]}"#;
        let rules = parse_nft_json(json).unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules[0].named("allow-ssh"));
        assert_eq!(rules[0].packets, Some(7));
        assert!(rules[1].named("handle 3"));
        assert_eq!(rules[1].packets, None);
    }

    #[test]
    fn nft_counters_are_redacted() {
        assert_eq!(
            redact_nft_counters(
                "\t\ttcp dport 22 counter packets 3 bytes 252 accept comment \"allow-ssh\""
            ),
            "\t\ttcp dport 22 counter accept comment \"allow-ssh\""
        );
    }
}
