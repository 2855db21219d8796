//! One-line summaries of captured packets, for reports and snapshots.
//!
//! A summary depends only on the packet's bytes and is the same on every run of a
//! scenario: it names the protocol, the kind of message and the addresses, and leaves
//! out everything that changes between runs or says nothing about reachability —
//! timestamps, MAC addresses (`<mac>`, also inside EUI-64 IPv6 addresses), ICMP
//! ids and sequence numbers, TTLs, checksums, TCP sequence numbers, lengths, and the
//! client's ephemeral port (`<eph>`, see [`ports`]). Nothing is skipped: IPv6 router
//! solicitations, MLD reports and neighbour discovery get a line like every other
//! packet, so callers can filter them by prefix (`icmp6 mld`, `icmp6 router`).
//!
//! ```text
//! arp who-has 10.0.0.2 tell 10.0.0.1
//! arp reply 10.0.0.2 is-at <mac>
//! icmp echo request 10.0.0.1 > 10.0.0.2
//! icmp port-unreachable 10.0.0.2 > 10.0.0.1
//! icmp6 neighbor solicitation fd00::1 > ff02::1:ff00:2 who-has fd00::2
//! icmp6 mldv2 report :: > ff02::16
//! tcp 10.0.0.1:<eph> > 10.0.0.2:80 [S]
//! udp [fd00::1]:<eph> > [fd00::2]:53
//! ```

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType, Icmpv4Slice, Icmpv6Slice, IpNumber,
    LaxIpPayloadSlice, LaxNetSlice, LaxSlicedPacket, TcpSlice, TransportSlice, VlanSlice,
};

use super::sll2::Sll2Frame;

/// The range Linux picks ephemeral ports from by default (`ip_local_port_range`).
const LINUX_EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Summarize a frame as the capture records it (`LINKTYPE_LINUX_SLL2`).
pub fn summarize_sll2(frame: &[u8]) -> String {
    match Sll2Frame::parse(frame) {
        Some(f) => summarize_ether_payload(f.protocol, f.payload),
        None => "truncated sll2 frame".to_string(),
    }
}

/// Summarize an Ethernet II frame.
pub fn summarize_ethernet(frame: &[u8]) -> String {
    // By hand rather than with `LaxSlicedPacket::from_ethernet`, which (in etherparse
    // 0.17) does not decode ARP.
    if frame.len() < 14 {
        return "truncated ethernet frame".to_string();
    }
    summarize_ether_payload(u16::from_be_bytes([frame[12], frame[13]]), &frame[14..])
}

/// Summarize a link-layer payload whose protocol is `ether_type` (what an Ethernet
/// header or a cooked capture header says it carries).
pub fn summarize_ether_payload(ether_type: u16, payload: &[u8]) -> String {
    let p = LaxSlicedPacket::from_ether_type(EtherType(ether_type), payload);
    let mut out = String::new();
    match &p.vlan {
        Some(VlanSlice::SingleVlan(v)) => {
            let _ = write!(out, "vlan {} ", v.vlan_identifier().value());
        }
        Some(VlanSlice::DoubleVlan(v)) => {
            let _ = write!(
                out,
                "vlan {}.{} ",
                v.outer().vlan_identifier().value(),
                v.inner().vlan_identifier().value()
            );
        }
        None => {}
    }
    match &p.net {
        Some(LaxNetSlice::Arp(arp)) => out.push_str(&arp_line(arp)),
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            out.push_str(&ip_line(
                Addr::V4(h.source_addr()),
                Addr::V4(h.destination_addr()),
                ip.payload(),
                &p,
            ));
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            out.push_str(&ip_line(
                Addr::V6(h.source_addr()),
                Addr::V6(h.destination_addr()),
                ip.payload(),
                &p,
            ));
        }
        None => {
            let inner = match &p.vlan {
                Some(VlanSlice::SingleVlan(v)) => v.ether_type().0,
                Some(VlanSlice::DoubleVlan(v)) => v.inner().ether_type().0,
                None => ether_type,
            };
            match &p.stop_err {
                None => {
                    let _ = write!(out, "ether type {inner:#06x}");
                }
                Some((_, layer)) => {
                    let _ = write!(out, "ether type {inner:#06x} (truncated {layer})");
                }
            }
        }
    }
    out
}

fn arp_line(arp: &ArpPacketSlice<'_>) -> String {
    let is_ipv4 = arp.proto_addr_type() == EtherType::IPV4 && arp.proto_addr_size() == 4;
    if !is_ipv4 {
        return format!(
            "arp op {} hw {} proto {:#06x}",
            arp.operation().0,
            arp.hw_addr_type().0,
            arp.proto_addr_type().0
        );
    }
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let sender = ip(arp.sender_protocol_addr());
    let target = ip(arp.target_protocol_addr());
    let hw = if arp.hw_addr_type() == ArpHardwareId::ETHERNET {
        String::new()
    } else {
        format!(" hw {}", arp.hw_addr_type().0)
    };
    match arp.operation() {
        ArpOperation::REQUEST => format!("arp who-has {target} tell {sender}{hw}"),
        ArpOperation::REPLY => format!("arp reply {sender} is-at <mac>{hw}"),
        op => format!("arp op {} {sender} > {target}{hw}", op.0),
    }
}

/// An IP address as a summary shows it.
#[derive(Clone, Copy)]
enum Addr {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Addr {
    fn show(self) -> String {
        match self {
            Addr::V4(a) => a.to_string(),
            Addr::V6(a) => show_v6(a),
        }
    }

    fn with_port(self, port: &str) -> String {
        match self {
            Addr::V4(a) => format!("{a}:{port}"),
            Addr::V6(a) => format!("[{}]:{port}", show_v6(a)),
        }
    }
}

/// Whether the interface identifier of `a` is a modified EUI-64, i.e. made of a MAC.
fn is_eui64(a: Ipv6Addr) -> bool {
    let o = a.octets();
    o[11] == 0xff && o[12] == 0xfe
}

/// An IPv6 address with a MAC-derived (EUI-64) interface identifier redacted:
/// `fe80::<mac>`.
fn show_v6(a: Ipv6Addr) -> String {
    if !is_eui64(a) {
        return a.to_string();
    }
    let mut o = a.octets();
    o[8..].fill(0);
    let prefix = Ipv6Addr::from(o).to_string();
    // `fe80::` or `fd00:1::`; a prefix without a trailing `::` (no zero run at the
    // end, e.g. `fd00:1:2:3:0:0:0:0` shortens to `fd00:1:2:3::` anyway).
    format!("{prefix}<mac>")
}

/// The solicited-node multicast group of a target whose identifier is redacted is
/// made of that MAC too: `ff02::1:ff<mac>`.
fn show_solicited(dst: Ipv6Addr, target: Ipv6Addr) -> String {
    let o = dst.octets();
    let solicited_prefix = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];
    if is_eui64(target) && o[..13] == solicited_prefix {
        "ff02::1:ff<mac>".to_string()
    } else {
        show_v6(dst)
    }
}

/// The two ports of a TCP or UDP packet as a summary shows them: the client's
/// ephemeral port becomes `<eph>`.
///
/// A port is the client's ephemeral one when it is in Linux's default ephemeral range
/// (32768–60999) and the other is not; when neither is, a port above 1024 facing one
/// at or below 1024 is. When both are in the ephemeral range, both become `<eph>`;
/// when neither rule applies, both stay numbers.
pub fn ports(src: u16, dst: u16) -> (String, String) {
    let eph = || "<eph>".to_string();
    let (s_eph, d_eph) = (
        LINUX_EPHEMERAL.contains(&src),
        LINUX_EPHEMERAL.contains(&dst),
    );
    match (s_eph, d_eph) {
        (true, true) => (eph(), eph()),
        (true, false) => (eph(), dst.to_string()),
        (false, true) => (src.to_string(), eph()),
        (false, false) if src > 1024 && dst <= 1024 => (eph(), dst.to_string()),
        (false, false) if dst > 1024 && src <= 1024 => (src.to_string(), eph()),
        (false, false) => (src.to_string(), dst.to_string()),
    }
}

fn ip_line(
    src: Addr,
    dst: Addr,
    payload: &LaxIpPayloadSlice<'_>,
    p: &LaxSlicedPacket<'_>,
) -> String {
    let ip_word = match src {
        Addr::V4(_) => "ip",
        Addr::V6(_) => "ip6",
    };
    match &p.transport {
        Some(TransportSlice::Icmpv4(icmp)) => icmp4_line(icmp, src, dst),
        Some(TransportSlice::Icmpv6(icmp)) => icmp6_line(icmp, src, dst),
        Some(TransportSlice::Tcp(tcp)) => {
            let (sp, dp) = ports(tcp.source_port(), tcp.destination_port());
            format!(
                "tcp {} > {} [{}]",
                src.with_port(&sp),
                dst.with_port(&dp),
                tcp_flags(tcp)
            )
        }
        Some(TransportSlice::Udp(udp)) => {
            let (sp, dp) = ports(udp.source_port(), udp.destination_port());
            format!("udp {} > {}", src.with_port(&sp), dst.with_port(&dp))
        }
        None => {
            let proto = proto_name(payload.ip_number);
            if payload.fragmented {
                format!(
                    "{ip_word} fragment {} > {} proto {proto}",
                    src.show(),
                    dst.show()
                )
            } else if p.stop_err.is_some() {
                format!("{proto} {} > {} (truncated)", src.show(), dst.show())
            } else {
                format!("{ip_word} {} > {} proto {proto}", src.show(), dst.show())
            }
        }
    }
}

fn proto_name(n: IpNumber) -> String {
    match n {
        IpNumber::ICMP => "icmp".into(),
        IpNumber::IPV6_ICMP => "icmp6".into(),
        IpNumber::TCP => "tcp".into(),
        IpNumber::UDP => "udp".into(),
        n => match n.keyword_str() {
            Some(k) => k.to_ascii_lowercase(),
            None => n.0.to_string(),
        },
    }
}

/// TCP flags as tcpdump prints them: `S`, `S.`, `.`, `P.`, `F.`, `R`, `R.`.
fn tcp_flags(tcp: &TcpSlice<'_>) -> String {
    let mut s = String::new();
    for (on, c) in [
        (tcp.fin(), 'F'),
        (tcp.syn(), 'S'),
        (tcp.rst(), 'R'),
        (tcp.psh(), 'P'),
        (tcp.urg(), 'U'),
        (tcp.ece(), 'E'),
        (tcp.cwr(), 'W'),
        (tcp.ack(), '.'),
    ] {
        if on {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

fn icmp4_line(icmp: &Icmpv4Slice<'_>, src: Addr, dst: Addr) -> String {
    let (ty, code) = (icmp.type_u8(), icmp.code_u8());
    let b = icmp.bytes5to8();
    let mut detail = String::new();
    let kind: String = match (ty, code) {
        (0, _) => "echo reply".into(),
        (8, _) => "echo request".into(),
        (3, 4) => {
            detail = format!(" mtu {}", u16::from_be_bytes([b[2], b[3]]));
            "fragmentation-needed".into()
        }
        (3, c) => match c {
            0 => "net-unreachable",
            1 => "host-unreachable",
            2 => "protocol-unreachable",
            3 => "port-unreachable",
            5 => "source-route-failed",
            6 => "net-unknown",
            7 => "host-unknown",
            8 => "host-isolated",
            9 => "net-prohibited",
            10 => "host-prohibited",
            11 => "net-tos-unreachable",
            12 => "host-tos-unreachable",
            13 => "admin-prohibited",
            14 => "host-precedence-violation",
            15 => "precedence-cutoff",
            c => {
                return format!(
                    "icmp dest-unreachable code {c} {} > {}",
                    src.show(),
                    dst.show()
                )
            }
        }
        .into(),
        (4, _) => "source-quench".into(),
        (5, _) => {
            detail = format!(" to {}", Ipv4Addr::from(b));
            "redirect".into()
        }
        (9, _) => "router advertisement".into(),
        (10, _) => "router solicitation".into(),
        (11, 1) => "reassembly-time-exceeded".into(),
        (11, _) => "time-exceeded".into(),
        (12, _) => "parameter-problem".into(),
        (13, _) => "timestamp request".into(),
        (14, _) => "timestamp reply".into(),
        (ty, code) => format!("type {ty} code {code}"),
    };
    format!("icmp {kind} {} > {}{detail}", src.show(), dst.show())
}

fn icmp6_line(icmp: &Icmpv6Slice<'_>, src: Addr, dst: Addr) -> String {
    let (ty, code) = (icmp.type_u8(), icmp.code_u8());
    let b = icmp.bytes5to8();
    let body = icmp.payload();
    let target = || -> Option<Ipv6Addr> {
        let t: [u8; 16] = body.get(..16)?.try_into().ok()?;
        Some(Ipv6Addr::from(t))
    };
    let mut shown_dst = dst.show();
    let mut detail = String::new();
    let kind: String = match (ty, code) {
        (1, c) => match c {
            0 => "no-route",
            1 => "admin-prohibited",
            2 => "beyond-scope",
            3 => "address-unreachable",
            4 => "port-unreachable",
            5 => "failed-policy",
            6 => "reject-route",
            7 => "source-routing-error",
            c => {
                return format!(
                    "icmp6 dest-unreachable code {c} {} > {}",
                    src.show(),
                    dst.show()
                )
            }
        }
        .into(),
        (2, _) => {
            detail = format!(" mtu {}", u32::from_be_bytes(b));
            "packet-too-big".into()
        }
        (3, 1) => "reassembly-time-exceeded".into(),
        (3, _) => "time-exceeded".into(),
        (4, _) => "parameter-problem".into(),
        (128, _) => "echo request".into(),
        (129, _) => "echo reply".into(),
        (130, _) => "mld query".into(),
        (131, _) => "mld report".into(),
        (132, _) => "mld done".into(),
        (143, _) => "mldv2 report".into(),
        (133, _) => "router solicitation".into(),
        (134, _) => "router advertisement".into(),
        (135, _) => {
            if let Some(t) = target() {
                detail = format!(" who-has {}", show_v6(t));
                if let Addr::V6(d) = dst {
                    shown_dst = show_solicited(d, t);
                }
            }
            "neighbor solicitation".into()
        }
        (136, _) => {
            if let Some(t) = target() {
                detail = format!(" tgt-is {}", show_v6(t));
            }
            "neighbor advertisement".into()
        }
        (137, _) => {
            if let Some(t) = target() {
                detail = format!(" for {}", show_v6(t));
            }
            "redirect".into()
        }
        (ty, code) => format!("type {ty} code {code}"),
    };
    format!("icmp6 {kind} {} > {shown_dst}{detail}", src.show())
}

#[cfg(test)]
mod tests {
    use etherparse::{ArpPacket, Icmpv4Type, Icmpv6Type, PacketBuilder};

    use super::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const V4_A: [u8; 4] = [192, 168, 1, 61];
    const V4_B: [u8; 4] = [192, 168, 1, 62];

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>().unwrap().octets()
    }

    fn frame(builder: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = Vec::new();
        builder(&mut v);
        v
    }

    fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
    }

    #[test]
    fn arp_request_and_reply() {
        let req = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &MAC_A,
            &V4_A,
            &[0; 6],
            &V4_B,
        )
        .unwrap();
        let f = frame(|v| eth().arp(req).write(v).unwrap());
        assert_eq!(
            summarize_ethernet(&f),
            "arp who-has 192.168.1.62 tell 192.168.1.61"
        );

        let reply = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REPLY,
            &MAC_B,
            &V4_B,
            &MAC_A,
            &V4_A,
        )
        .unwrap();
        let f = frame(|v| eth().arp(reply).write(v).unwrap());
        assert_eq!(summarize_ethernet(&f), "arp reply 192.168.1.62 is-at <mac>");
    }

    #[test]
    fn icmp_echo_drops_id_seq_and_ttl() {
        for (id, seq, ttl) in [(1, 1, 64), (4242, 77, 3)] {
            let f = frame(|v| {
                eth()
                    .ipv4(V4_A, V4_B, ttl)
                    .icmpv4_echo_request(id, seq)
                    .write(v, &[0xab; 56])
                    .unwrap()
            });
            assert_eq!(
                summarize_ethernet(&f),
                "icmp echo request 192.168.1.61 > 192.168.1.62"
            );
        }
        let f = frame(|v| {
            eth()
                .ipv4(V4_B, V4_A, 64)
                .icmpv4_echo_reply(9, 9)
                .write(v, &[])
                .unwrap()
        });
        assert_eq!(
            summarize_ethernet(&f),
            "icmp echo reply 192.168.1.62 > 192.168.1.61"
        );
    }

    #[test]
    fn icmp_errors() {
        let unreach = |code| {
            frame(|v| {
                eth()
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                    .icmpv4(Icmpv4Type::DestinationUnreachable(
                        etherparse::icmpv4::DestUnreachableHeader::from_values(code, 1400).unwrap(),
                    ))
                    .write(v, &[0; 28])
                    .unwrap()
            })
        };
        assert_eq!(
            summarize_ethernet(&unreach(3)),
            "icmp port-unreachable 10.0.0.1 > 10.0.0.2"
        );
        assert_eq!(
            summarize_ethernet(&unreach(13)),
            "icmp admin-prohibited 10.0.0.1 > 10.0.0.2"
        );
        assert_eq!(
            summarize_ethernet(&unreach(4)),
            "icmp fragmentation-needed 10.0.0.1 > 10.0.0.2 mtu 1400"
        );
        let f = frame(|v| {
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .icmpv4(Icmpv4Type::TimeExceeded(
                    etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
                ))
                .write(v, &[0; 28])
                .unwrap()
        });
        assert_eq!(
            summarize_ethernet(&f),
            "icmp time-exceeded 10.0.0.1 > 10.0.0.2"
        );
    }

    #[test]
    fn icmp6_echo_and_errors() {
        let f = frame(|v| {
            eth()
                .ipv6(v6("fd00::1"), v6("fd00::2"), 64)
                .icmpv6_echo_request(7, 1)
                .write(v, &[1, 2, 3])
                .unwrap()
        });
        assert_eq!(
            summarize_ethernet(&f),
            "icmp6 echo request fd00::1 > fd00::2"
        );
        let f = frame(|v| {
            eth()
                .ipv6(v6("fd00::2"), v6("fd00::1"), 64)
                .icmpv6(Icmpv6Type::DestinationUnreachable(
                    etherparse::icmpv6::DestUnreachableCode::Port,
                ))
                .write(v, &[0; 48])
                .unwrap()
        });
        assert_eq!(
            summarize_ethernet(&f),
            "icmp6 port-unreachable fd00::2 > fd00::1"
        );
    }

    fn icmp6_raw(src: &str, dst: &str, ty: u8, body: &[u8]) -> Vec<u8> {
        frame(|v| {
            eth()
                .ipv6(v6(src), v6(dst), 255)
                .icmpv6(Icmpv6Type::Unknown {
                    type_u8: ty,
                    code_u8: 0,
                    bytes5to8: [0; 4],
                })
                .write(v, body)
                .unwrap()
        })
    }

    #[test]
    fn neighbor_discovery() {
        let f = icmp6_raw("fd00::1", "ff02::1:ff00:2", 135, &v6("fd00::2"));
        assert_eq!(
            summarize_ethernet(&f),
            "icmp6 neighbor solicitation fd00::1 > ff02::1:ff00:2 who-has fd00::2"
        );
        let f = icmp6_raw("fd00::2", "fd00::1", 136, &v6("fd00::2"));
        assert_eq!(
            summarize_ethernet(&f),
            "icmp6 neighbor advertisement fd00::2 > fd00::1 tgt-is fd00::2"
        );
    }

    #[test]
    fn eui64_addresses_are_redacted() {
        // Duplicate address detection of a link-local address made of a MAC.
        let target = "fe80::a8bb:ccff:fedd:eeff";
        let f = icmp6_raw("::", "ff02::1:ffdd:eeff", 135, &v6(target));
        assert_eq!(
            summarize_ethernet(&f),
            "icmp6 neighbor solicitation :: > ff02::1:ff<mac> who-has fe80::<mac>"
        );
        let f = icmp6_raw(target, "ff02::2", 133, &[0; 4]);
        assert_eq!(
            summarize_ethernet(&f),
            "icmp6 router solicitation fe80::<mac> > ff02::2"
        );
        assert_eq!(
            show_v6("fd00:1:2:3:a8bb:ccff:fedd:eeff".parse().unwrap()),
            "fd00:1:2:3::<mac>"
        );
        assert_eq!(show_v6("fe80::1".parse().unwrap()), "fe80::1");
    }

    #[test]
    fn mld_gets_a_line() {
        let f = icmp6_raw("::", "ff02::16", 143, &[0; 24]);
        assert_eq!(summarize_ethernet(&f), "icmp6 mldv2 report :: > ff02::16");
        let f = icmp6_raw("fe80::1", "ff02::1", 130, &[0; 20]);
        assert_eq!(summarize_ethernet(&f), "icmp6 mld query fe80::1 > ff02::1");
    }

    type TcpStep = etherparse::PacketBuilderStep<etherparse::TcpHeader>;

    fn tcp(sport: u16, dport: u16, flags: impl FnOnce(TcpStep) -> TcpStep) -> String {
        let f = frame(|v| {
            flags(
                eth()
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                    .tcp(sport, dport, 12345, 64240),
            )
            .write(v, &[])
            .unwrap()
        });
        summarize_ethernet(&f)
    }

    #[test]
    fn tcp_flags_and_ephemeral_ports() {
        assert_eq!(
            tcp(45678, 80, |b| b.syn()),
            "tcp 10.0.0.1:<eph> > 10.0.0.2:80 [S]"
        );
        assert_eq!(
            tcp(80, 45678, |b| b.syn().ack(1)),
            "tcp 10.0.0.1:80 > 10.0.0.2:<eph> [S.]"
        );
        assert_eq!(
            tcp(45678, 80, |b| b.ack(1)),
            "tcp 10.0.0.1:<eph> > 10.0.0.2:80 [.]"
        );
        assert_eq!(
            tcp(45678, 80, |b| b.fin().ack(1)),
            "tcp 10.0.0.1:<eph> > 10.0.0.2:80 [F.]"
        );
        assert_eq!(
            tcp(45678, 80, |b| b.rst()),
            "tcp 10.0.0.1:<eph> > 10.0.0.2:80 [R]"
        );
        assert_eq!(
            tcp(80, 45678, |b| b.rst().ack(1)),
            "tcp 10.0.0.1:80 > 10.0.0.2:<eph> [R.]"
        );
        assert_eq!(
            tcp(45678, 8080, |b| b.psh().ack(1)),
            "tcp 10.0.0.1:<eph> > 10.0.0.2:8080 [P.]"
        );
        // Neither port in Linux's ephemeral range: only the side facing a low port.
        assert_eq!(
            tcp(5000, 22, |b| b.syn()),
            "tcp 10.0.0.1:<eph> > 10.0.0.2:22 [S]"
        );
        assert_eq!(
            tcp(5000, 8080, |b| b.syn()),
            "tcp 10.0.0.1:5000 > 10.0.0.2:8080 [S]"
        );
        assert_eq!(
            tcp(40000, 50000, |b| b.syn()),
            "tcp 10.0.0.1:<eph> > 10.0.0.2:<eph> [S]"
        );
    }

    #[test]
    fn udp_v4_and_v6() {
        let f = frame(|v| {
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(40000, 53)
                .write(v, &[0; 16])
                .unwrap()
        });
        assert_eq!(summarize_ethernet(&f), "udp 10.0.0.1:<eph> > 10.0.0.2:53");
        let f = frame(|v| {
            eth()
                .ipv6(v6("fd00::2"), v6("fd00::1"), 64)
                .udp(53, 40000)
                .write(v, &[0; 16])
                .unwrap()
        });
        assert_eq!(summarize_ethernet(&f), "udp [fd00::2]:53 > [fd00::1]:<eph>");
    }

    #[test]
    fn other_protocols_and_truncation() {
        // LLDP.
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[0x88, 0xcc, 1, 2, 3]);
        assert_eq!(summarize_ethernet(&f), "ether type 0x88cc");
        assert_eq!(summarize_ethernet(&f[..10]), "truncated ethernet frame");
        // A UDP header cut short by the snapshot length.
        let full = frame(|v| {
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(40000, 53)
                .write(v, &[0; 16])
                .unwrap()
        });
        assert_eq!(
            summarize_ethernet(&full[..14 + 20 + 4]),
            "udp 10.0.0.1 > 10.0.0.2 (truncated)"
        );
        // A protocol without a decoder.
        let gre = frame(|v| {
            eth()
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .write(v, IpNumber::GRE, &[0; 4])
                .unwrap()
        });
        assert_eq!(summarize_ethernet(&gre), "ip 10.0.0.1 > 10.0.0.2 proto gre");
    }

    #[test]
    fn sll2_frames_are_summarized_by_protocol() {
        let eth_frame = frame(|v| {
            eth()
                .ipv4(V4_A, V4_B, 64)
                .icmpv4_echo_request(1, 1)
                .write(v, &[])
                .unwrap()
        });
        let sll2 = super::super::sll2::tests::wrap(0x0800, 3, 4, &eth_frame[14..]);
        assert_eq!(
            summarize_sll2(&sll2),
            "icmp echo request 192.168.1.61 > 192.168.1.62"
        );
        assert_eq!(summarize_sll2(&sll2[..10]), "truncated sll2 frame");
    }
}
