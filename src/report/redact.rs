//! Taking volatile values out of command output so that reports are deterministic:
//! MAC addresses, bridge ids, IPv6 link-local addresses (derived from MACs) and
//! packet/byte counters.

/// Redact one block of command output.
pub fn output(text: &str) -> String {
    text.lines().map(line).collect::<Vec<_>>().join("\n")
}

fn line(l: &str) -> String {
    let l = macs(l);
    let l = bridge_ids(&l);
    let l = link_locals(&l);
    let l = ping_times(&l);
    counters(&l)
}

/// ping's round-trip times: `time=0.166 ms`, `time 2051ms`, `rtt min/avg/max/mdev = ...`.
fn ping_times(l: &str) -> String {
    if let Some(i) = l.find("rtt min/avg/max/mdev = ") {
        return format!("{}rtt min/avg/max/mdev = <t>", &l[..i]);
    }
    let mut s = l.to_string();
    for key in ["time=", ", time "] {
        if let Some(i) = s.find(key) {
            let start = i + key.len();
            let end = s[start..]
                .find(|c: char| {
                    !(c.is_ascii_digit() || c == '.' || c == ' ' || c == 'm' || c == 's')
                })
                .map_or(s.len(), |e| start + e);
            s.replace_range(start..end, "<t>");
        }
    }
    s
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// `72:1f:e4:71:f5:c0` -> `<mac>` (but not `00:00:00:00:00:00` or `ff:ff:ff:ff:ff:ff`).
fn macs(l: &str) -> String {
    let b = l.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if i + 17 <= b.len()
            && (0..6).all(|k| is_hex(b[i + 3 * k]) && is_hex(b[i + 3 * k + 1]))
            && (0..5).all(|k| b[i + 3 * k + 2] == b':')
            && (i == 0 || !(is_hex(b[i - 1]) || b[i - 1] == b':'))
            && (i + 17 == b.len() || !(is_hex(b[i + 17]) || b[i + 17] == b':'))
        {
            let mac = &l[i..i + 17];
            if mac == "00:00:00:00:00:00" || mac.eq_ignore_ascii_case("ff:ff:ff:ff:ff:ff") {
                out.push_str(mac);
            } else {
                out.push_str("<mac>");
            }
            i += 17;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// brctl's `8000.06689fa9d07c` -> `8000.<mac>`.
fn bridge_ids(l: &str) -> String {
    let mut out = String::new();
    for (n, word) in l.split('\t').enumerate() {
        if n > 0 {
            out.push('\t');
        }
        let w = word.trim();
        if w.len() == 17
            && w.as_bytes()[4] == b'.'
            && w.bytes().enumerate().all(|(i, c)| i == 4 || is_hex(c))
        {
            out.push_str(&word.replace(&w[5..], "<mac>"));
        } else {
            out.push_str(word);
        }
    }
    out
}

/// `fe80::701f:e4ff:fe71:f5c0` -> `fe80::<eui64>`.
fn link_locals(l: &str) -> String {
    let mut out = String::new();
    let mut rest = l;
    while let Some(pos) = rest.find("fe80::") {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + 6..];
        let end = tail
            .find(|c: char| !(c.is_ascii_hexdigit() || c == ':'))
            .unwrap_or(tail.len());
        out.push_str("fe80::<eui64>");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `RX packets 12  bytes 936 (936.0 B)` -> `RX packets <n>  bytes <n> (<n>)`.
fn counters(l: &str) -> String {
    let words = [
        "packets ",
        "bytes ",
        "errors ",
        "dropped ",
        "overruns ",
        "frame ",
        "carrier ",
        "collisions ",
    ];
    if !(l.contains("RX ") || l.contains("TX ")) {
        return l.to_string();
    }
    let mut s = l.to_string();
    for w in words {
        let mut out = String::new();
        let mut rest = s.as_str();
        while let Some(pos) = rest.find(w) {
            out.push_str(&rest[..pos + w.len()]);
            let tail = &rest[pos + w.len()..];
            let end = tail
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(tail.len());
            if end > 0 {
                out.push_str("<n>");
            }
            rest = &tail[end..];
        }
        out.push_str(rest);
        s = out;
    }
    // "(936.0 B)" / "(1.2 KB)"
    if let (Some(a), Some(b)) = (s.find(" ("), s.rfind(')')) {
        if a < b && s[a + 2..b].ends_with('B') {
            s.replace_range(a + 2..b, "<n>");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_redacted_but_zero_and_broadcast_kept() {
        assert_eq!(
            output("    link/ether 72:1f:e4:71:f5:c0 brd ff:ff:ff:ff:ff:ff link-netnsid 0"),
            "    link/ether <mac> brd ff:ff:ff:ff:ff:ff link-netnsid 0"
        );
        assert_eq!(
            output("link/loopback 00:00:00:00:00:00"),
            "link/loopback 00:00:00:00:00:00"
        );
    }

    #[test]
    fn bridge_ids_are_redacted() {
        assert_eq!(
            output("br0\t\t8000.06689fa9d07c\tno\t\t"),
            "br0\t\t8000.<mac>\tno\t\t"
        );
    }

    #[test]
    fn link_local_and_counters_are_redacted() {
        assert_eq!(
            output("        inet6 fe80::701f:e4ff:fe71:f5c0  prefixlen 64"),
            "        inet6 fe80::<eui64>  prefixlen 64"
        );
        assert_eq!(
            output("        RX packets 12  bytes 936 (936.0 B)"),
            "        RX packets <n>  bytes <n> (<n>)"
        );
        assert_eq!(
            output("        TX errors 0  dropped 0 overruns 0  carrier 0  collisions 0"),
            "        TX errors <n>  dropped <n> overruns <n>  carrier <n>  collisions <n>"
        );
    }

    #[test]
    fn ping_times_are_redacted() {
        assert_eq!(
            output("64 bytes from 192.168.1.62: icmp_seq=1 ttl=64 time=0.166 ms"),
            "64 bytes from 192.168.1.62: icmp_seq=1 ttl=64 time=<t>"
        );
        assert_eq!(
            output("3 packets transmitted, 3 received, 0% packet loss, time 2051ms"),
            "3 packets transmitted, 3 received, 0% packet loss, time <t>"
        );
        assert_eq!(
            output("rtt min/avg/max/mdev = 0.047/0.087/0.166/0.055 ms"),
            "rtt min/avg/max/mdev = <t>"
        );
    }

    #[test]
    fn other_text_is_untouched() {
        let t = "inet 192.168.1.62  netmask 255.255.255.0  broadcast 192.168.1.255";
        assert_eq!(output(t), t);
    }
}
