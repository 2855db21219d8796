//! Native ICMP echo probing (IPv4 and IPv6) from the calling thread's network namespace.
//!
//! [`probe`] sends echo requests for every cell at once over one raw socket per address
//! family it needs, on the thread that calls it (which the caller has already moved into
//! the source namespace), and returns one [`ProbeOutcome`] per cell in the same order.
//! It promises: a cell is `Ok` only for an echo reply carrying this call's identifier, a
//! sequence number this call sent for that cell and our payload marker, coming from the
//! cell's own destination; `Rejected` only for an ICMP/ICMPv6 error that quotes one of
//! this call's echo requests to that destination (the detail names the error and who
//! sent it, e.g. `icmp port-unreachable from 10.0.0.1`); `Unreachable` when the kernel
//! refused to send for lack of a route or source address; `Dropped` otherwise (with a
//! detail when the source's own OUTPUT rules refused the packet). Cells expected `ok`
//! are retried every `interval` until they succeed or `deadline` passes; cells expected
//! to fail are watched for the whole `window`. Concurrent calls in one namespace don't
//! see each other's replies (each call picks its own echo identifier). No thread is
//! spawned and nothing sleeps blindly: the wait is one `poll` until the next send time.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvfrom, SockaddrStorage};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::outcome::{ProbeOutcome, ProbeTiming};

/// One ICMP echo probe: ping `dst`; `expect_ok` says which timing rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpCell {
    pub dst: IpAddr,
    pub expect_ok: bool,
}

/// Why a probe round could not run at all (per-cell failures are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IcmpError {
    #[error("open a raw ICMP socket")]
    OpenSocket(#[source] io::Error),
    #[error("open a raw ICMPv6 socket")]
    OpenSocket6(#[source] io::Error),
    #[error("make a raw ICMP socket non-blocking")]
    SetNonblocking(#[source] io::Error),
    #[error("send an ICMP echo request to {dst}")]
    Send {
        dst: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("wait for ICMP packets")]
    Poll(#[source] nix::Error),
    #[error("receive an ICMP packet")]
    Receive(#[source] nix::Error),
}

/// Probe every cell at once from the current thread's network namespace. Returns one
/// outcome per cell, same order.
pub fn probe(cells: &[IcmpCell], timing: &ProbeTiming) -> Result<Vec<ProbeOutcome>, IcmpError> {
    if cells.is_empty() {
        return Ok(Vec::new());
    }
    let sock4 = if cells.iter().any(|c| c.dst.is_ipv4()) {
        Some(open_socket(false)?)
    } else {
        None
    };
    let sock6 = if cells.iter().any(|c| c.dst.is_ipv6()) {
        Some(open_socket(true)?)
    } else {
        None
    };

    let start = Instant::now();
    let interval = timing.interval.max(Duration::from_millis(1));
    let (ident, first_seq) = echo_ident();
    let mut round = Round::new(cells, timing, start, ident, first_seq);
    let mut buf = vec![0u8; RECV_BUF];
    let mut next_send = start;

    loop {
        let now = Instant::now();
        if now >= next_send {
            for idx in round.pending() {
                let v6 = cells[idx].dst.is_ipv6();
                let sock = if v6 { sock6.as_ref() } else { sock4.as_ref() };
                let Some(sock) = sock else { continue };
                let packet = round.next_request(idx);
                let result = send_echo(sock, cells[idx].dst, &packet);
                round.record_send(idx, result)?;
            }
            next_send += interval;
            if next_send <= now {
                next_send = now + interval;
            }
        }
        if round.all_done() {
            break;
        }

        let wake = round.next_end().map_or(next_send, |end| end.min(next_send));
        let timeout = poll_timeout(wake.saturating_duration_since(Instant::now()));
        let socks: Vec<(&Socket, bool)> = [
            sock4.as_ref().map(|s| (s, false)),
            sock6.as_ref().map(|s| (s, true)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut fds: Vec<PollFd<'_>> = socks
            .iter()
            .map(|(s, _)| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(IcmpError::Poll(e)),
        };
        if ready > 0 {
            let readable: Vec<bool> = fds
                .iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            for ((sock, v6), readable) in socks.iter().zip(readable) {
                if readable {
                    drain(sock, *v6, &mut buf, &mut round)?;
                }
            }
        }
        round.expire(Instant::now());
        if round.all_done() {
            break;
        }
    }
    Ok(round.finish())
}

/// Big enough for any ICMP error (576 bytes for v4, 1280 for v6); longer foreign packets
/// are truncated, which only matters for packets we ignore anyway.
const RECV_BUF: usize = 2048;
/// At most this many packets are read per wake-up, so a flood of foreign ICMP traffic
/// cannot keep the loop from noticing its deadlines.
const MAX_DRAIN: usize = 256;
/// Payload marker: every echo request we send carries it, followed by the cell index.
const MARKER: [u8; 8] = *b"nscnicmp";
const PAYLOAD_LEN: usize = 16;
const ECHO_LEN: usize = 8 + PAYLOAD_LEN;

const ICMP4_ECHO_REPLY: u8 = 0;
const ICMP4_DEST_UNREACH: u8 = 3;
const ICMP4_ECHO_REQUEST: u8 = 8;
const ICMP4_TIME_EXCEEDED: u8 = 11;
const ICMP4_PARAM_PROBLEM: u8 = 12;
const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_TIME_EXCEEDED: u8 = 3;
const ICMP6_PARAM_PROBLEM: u8 = 4;
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

fn open_socket(v6: bool) -> Result<Socket, IcmpError> {
    let sock = if v6 {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .map_err(IcmpError::OpenSocket6)?
    } else {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .map_err(IcmpError::OpenSocket)?
    };
    sock.set_nonblocking(true)
        .map_err(IcmpError::SetNonblocking)?;
    Ok(sock)
}

/// A per-call echo identifier and first sequence number: a randomly keyed hash of the
/// thread, the process and the time, so concurrent probes in one namespace differ.
fn echo_ident() -> (u16, u16) {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    std::thread::current().id().hash(&mut h);
    std::process::id().hash(&mut h);
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .hash(&mut h);
    let v = h.finish();
    ((v ^ (v >> 32)) as u16, (v >> 16) as u16)
}

/// Milliseconds to wait, rounded up so a sub-millisecond remainder doesn't spin.
fn poll_timeout(d: Duration) -> PollTimeout {
    let ms = d.as_micros().div_ceil(1000).min(60_000) as u32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

fn send_echo(sock: &Socket, dst: IpAddr, packet: &[u8]) -> io::Result<usize> {
    sock.send_to(packet, &SockAddr::from(SocketAddr::new(dst, 0)))
}

/// Read every queued packet (up to [`MAX_DRAIN`]) and hand it to the round.
fn drain(sock: &Socket, v6: bool, buf: &mut [u8], round: &mut Round<'_>) -> Result<(), IcmpError> {
    for _ in 0..MAX_DRAIN {
        match recvfrom::<SockaddrStorage>(sock.as_raw_fd(), buf) {
            Ok((n, from)) => {
                let packet = &buf[..n.min(buf.len())];
                let from = from.as_ref().and_then(sockaddr_ip);
                let parsed = if v6 {
                    from.and_then(|src| parse_icmp6(packet).map(|p| (src, p)))
                } else {
                    parse_ipv4_packet(packet).map(|(src, p)| (from.unwrap_or(IpAddr::V4(src)), p))
                };
                if let Some((src, parsed)) = parsed {
                    round.handle(src, parsed);
                }
            }
            Err(Errno::EAGAIN) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(IcmpError::Receive(e)),
        }
    }
    Ok(())
}

fn sockaddr_ip(addr: &SockaddrStorage) -> Option<IpAddr> {
    match addr.as_sockaddr_in() {
        Some(a) => Some(IpAddr::V4(a.ip())),
        None => addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())),
    }
}

// ---------------------------------------------------------------------------------------
// The state of one probe round, independent of sockets (so it can be unit-tested).

#[derive(Debug, Clone, PartialEq, Eq)]
enum SendFailure {
    /// No route / no source address: the detail for `Unreachable`.
    Route(String),
    /// EPERM: a netfilter rule in the source's own OUTPUT path refused the packet.
    Filtered,
}

#[derive(Debug)]
struct CellState {
    end: Instant,
    done: Option<ProbeOutcome>,
    /// The latest ICMP error that quoted one of our requests for this cell.
    rejected: Option<String>,
    /// The latest send failure; cleared by a send that went out.
    send_failure: Option<SendFailure>,
    attempts: u32,
}

struct Round<'a> {
    cells: &'a [IcmpCell],
    state: Vec<CellState>,
    ident: u16,
    next_seq: u16,
    /// Which cell each sequence number we sent belongs to.
    seqs: HashMap<u16, usize>,
}

impl<'a> Round<'a> {
    fn new(
        cells: &'a [IcmpCell],
        timing: &ProbeTiming,
        start: Instant,
        ident: u16,
        first_seq: u16,
    ) -> Self {
        let state = cells
            .iter()
            .map(|c| CellState {
                end: start
                    + if c.expect_ok {
                        timing.deadline
                    } else {
                        timing.window
                    },
                done: None,
                rejected: None,
                send_failure: None,
                attempts: 0,
            })
            .collect();
        Round {
            cells,
            state,
            ident,
            next_seq: first_seq,
            seqs: HashMap::new(),
        }
    }

    fn pending(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| self.state[i].done.is_none())
            .collect()
    }

    fn all_done(&self) -> bool {
        self.state.iter().all(|s| s.done.is_some())
    }

    fn next_end(&self) -> Option<Instant> {
        self.state
            .iter()
            .filter(|s| s.done.is_none())
            .map(|s| s.end)
            .min()
    }

    /// Allocate a sequence number for the next attempt on `idx` and build the request.
    fn next_request(&mut self, idx: usize) -> [u8; ECHO_LEN] {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.seqs.insert(seq, idx);
        let st = &mut self.state[idx];
        st.attempts += 1;
        build_echo_request(
            self.cells[idx].dst.is_ipv6(),
            self.ident,
            seq,
            idx as u32,
            st.attempts,
        )
    }

    fn record_send(&mut self, idx: usize, result: io::Result<usize>) -> Result<(), IcmpError> {
        let dst = self.cells[idx].dst;
        let st = &mut self.state[idx];
        match result {
            Ok(_) => st.send_failure = None,
            Err(err) => {
                // The sequence number stays mapped: with a REJECT rule in the source's
                // own OUTPUT chain, sendto fails with EPERM *and* the kernel sends us an
                // ICMP error quoting this very request.
                match classify_send_error(dst, &err) {
                    SendVerdict::Retry => {}
                    SendVerdict::Fail(failure) => {
                        if let SendFailure::Route(detail) = &failure {
                            // A cell expected to fail is decided at once; one expected
                            // to succeed keeps trying in case a route appears.
                            if !self.cells[idx].expect_ok && st.rejected.is_none() {
                                st.done = Some(ProbeOutcome::Unreachable {
                                    detail: detail.clone(),
                                });
                            }
                        }
                        st.send_failure = Some(failure);
                    }
                    SendVerdict::Fatal => return Err(IcmpError::Send { dst, source: err }),
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, src: IpAddr, parsed: Parsed<'_>) {
        match parsed {
            Parsed::Reply {
                ident,
                seq,
                payload,
            } => {
                let Some(idx) = self.lookup(ident, seq) else {
                    return;
                };
                if self.cells[idx].dst != src || !payload_matches(payload, idx, true) {
                    return;
                }
                let st = &mut self.state[idx];
                if st.done.is_none() {
                    st.done = Some(ProbeOutcome::Ok);
                }
            }
            Parsed::Error {
                what,
                ident,
                seq,
                orig_dst,
                orig_payload,
            } => {
                let Some(idx) = self.lookup(ident, seq) else {
                    return;
                };
                if self.cells[idx].dst != orig_dst || !payload_matches(orig_payload, idx, false) {
                    return;
                }
                let st = &mut self.state[idx];
                if st.done.is_none() {
                    st.rejected = Some(format!("{what} from {src}"));
                }
            }
        }
    }

    fn lookup(&self, ident: u16, seq: u16) -> Option<usize> {
        if ident != self.ident {
            return None;
        }
        self.seqs.get(&seq).copied()
    }

    /// Decide every pending cell whose time is up.
    fn expire(&mut self, now: Instant) {
        for st in &mut self.state {
            if st.done.is_none() && now >= st.end {
                st.done = Some(final_outcome(st));
            }
        }
    }

    fn finish(mut self) -> Vec<ProbeOutcome> {
        self.state
            .iter_mut()
            .map(|st| st.done.take().unwrap_or_else(|| final_outcome(st)))
            .collect()
    }
}

fn final_outcome(st: &CellState) -> ProbeOutcome {
    if let Some(detail) = &st.rejected {
        return ProbeOutcome::Rejected {
            detail: detail.clone(),
        };
    }
    match &st.send_failure {
        Some(SendFailure::Route(detail)) => ProbeOutcome::Unreachable {
            detail: detail.clone(),
        },
        Some(SendFailure::Filtered) => ProbeOutcome::Dropped {
            detail: Some("dropped by the source's own OUTPUT rules (EPERM)".to_string()),
        },
        None => ProbeOutcome::Dropped { detail: None },
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SendVerdict {
    /// Transient (full buffer, interrupted): try again at the next interval.
    Retry,
    Fail(SendFailure),
    /// Not a property of the network: a bug or a broken socket.
    Fatal,
}

fn classify_send_error(dst: IpAddr, err: &io::Error) -> SendVerdict {
    let Some(errno) = err.raw_os_error().map(Errno::from_raw) else {
        return SendVerdict::Fatal;
    };
    let why = match errno {
        Errno::ENETUNREACH => "network unreachable (ENETUNREACH)",
        Errno::EHOSTUNREACH => "host unreachable (EHOSTUNREACH)",
        Errno::EACCES => "prohibited route or broadcast (EACCES)",
        Errno::EINVAL => "invalid destination or blackhole route (EINVAL)",
        Errno::EADDRNOTAVAIL => "no usable source address (EADDRNOTAVAIL)",
        Errno::ENETDOWN => "network down (ENETDOWN)",
        Errno::EHOSTDOWN => "host down (EHOSTDOWN)",
        Errno::ENODEV => "no such device (ENODEV)",
        Errno::ENXIO => "no such device or address (ENXIO)",
        Errno::EPERM => return SendVerdict::Fail(SendFailure::Filtered),
        Errno::EAGAIN | Errno::ENOBUFS | Errno::ENOMEM | Errno::EINTR => return SendVerdict::Retry,
        _ => return SendVerdict::Fatal,
    };
    SendVerdict::Fail(SendFailure::Route(format!("no route to {dst}: {why}")))
}

// ---------------------------------------------------------------------------------------
// Packets.

/// The RFC 1071 Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request: type, code 0, checksum (v4 only: the kernel fills it for ICMPv6),
/// identifier, sequence, then [`MARKER`], the cell index and the attempt number.
fn build_echo_request(v6: bool, ident: u16, seq: u16, cell: u32, attempt: u32) -> [u8; ECHO_LEN] {
    let mut p = [0u8; ECHO_LEN];
    p[0] = if v6 {
        ICMP6_ECHO_REQUEST
    } else {
        ICMP4_ECHO_REQUEST
    };
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&MARKER);
    p[16..20].copy_from_slice(&cell.to_be_bytes());
    p[20..24].copy_from_slice(&attempt.to_be_bytes());
    if !v6 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// Whether an echo payload is ours for `cell`. Replies must carry the whole marker;
/// quoted requests inside errors may be cut after the 8-byte ICMP header, so a short
/// quote is accepted and only what is there is checked.
fn payload_matches(payload: &[u8], cell: usize, strict: bool) -> bool {
    if payload.len() < 12 {
        return !strict && MARKER.starts_with(&payload[..payload.len().min(MARKER.len())]);
    }
    payload[..8] == MARKER && payload[8..12] == (cell as u32).to_be_bytes()
}

/// What a received ICMP message means to us; everything else is ignored.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    Reply {
        ident: u16,
        seq: u16,
        payload: &'a [u8],
    },
    /// An error quoting an echo request: `what` is e.g. `icmp port-unreachable`.
    Error {
        what: String,
        ident: u16,
        seq: u16,
        orig_dst: IpAddr,
        orig_payload: &'a [u8],
    },
}

/// Split an IPv4 packet (as a raw ICMPv4 socket delivers it) into its source and ICMP message.
fn parse_ipv4_packet(packet: &[u8]) -> Option<(Ipv4Addr, Parsed<'_>)> {
    let (src, _dst, proto, body) = split_ipv4(packet)?;
    if proto != IPPROTO_ICMP {
        return None;
    }
    Some((src, parse_icmp4(body)?))
}

/// Source, destination, protocol and payload of an IPv4 packet (payload cut to the
/// total length when that is shorter than what we hold).
fn split_ipv4(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, &[u8])> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let end = if total >= ihl {
        total.min(packet.len())
    } else {
        packet.len()
    };
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((src, dst, packet[9], &packet[ihl..end]))
}

/// An echo reply (ICMP or ICMPv6: the same layout after the type byte).
fn parse_echo_reply(icmp: &[u8], code: u8) -> Option<Parsed<'_>> {
    if code != 0 {
        return None;
    }
    let (ident, seq) = ident_seq(icmp);
    Some(Parsed::Reply {
        ident,
        seq,
        payload: &icmp[8..],
    })
}

fn parse_icmp4(icmp: &[u8]) -> Option<Parsed<'_>> {
    if icmp.len() < 8 {
        return None;
    }
    let (ty, code) = (icmp[0], icmp[1]);
    if ty == ICMP4_ECHO_REPLY {
        return parse_echo_reply(icmp, code);
    }
    let what = icmp4_error_name(ty, code)?;
    // The quoted datagram: the original IPv4 header and at least 8 bytes after it.
    let (_src, orig_dst, proto, quoted) = split_ipv4(&icmp[8..])?;
    if proto != IPPROTO_ICMP || quoted.len() < 8 || quoted[0] != ICMP4_ECHO_REQUEST {
        return None;
    }
    let (ident, seq) = ident_seq(quoted);
    Some(Parsed::Error {
        what,
        ident,
        seq,
        orig_dst: IpAddr::V4(orig_dst),
        orig_payload: &quoted[8..],
    })
}

/// Parse an ICMPv6 message (a raw ICMPv6 socket delivers no IPv6 header).
fn parse_icmp6(icmp: &[u8]) -> Option<Parsed<'_>> {
    if icmp.len() < 8 {
        return None;
    }
    let (ty, code) = (icmp[0], icmp[1]);
    if ty == ICMP6_ECHO_REPLY {
        return parse_echo_reply(icmp, code);
    }
    let what = icmp6_error_name(ty, code)?;
    // The quoted packet: a fixed 40-byte IPv6 header (our requests carry no extension
    // headers), then the start of our echo request.
    let orig = &icmp[8..];
    if orig.len() < 40 + 8 || orig[0] >> 4 != 6 || orig[6] != IPPROTO_ICMPV6 {
        return None;
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&orig[24..40]);
    let quoted = &orig[40..];
    if quoted[0] != ICMP6_ECHO_REQUEST {
        return None;
    }
    let (ident, seq) = ident_seq(quoted);
    Some(Parsed::Error {
        what,
        ident,
        seq,
        orig_dst: IpAddr::V6(Ipv6Addr::from(dst)),
        orig_payload: &quoted[8..],
    })
}

fn ident_seq(icmp: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    )
}

/// Readable names of the ICMPv4 errors that reject a probe; `None` for every other type
/// (echo requests, redirects, source quench, ...).
fn icmp4_error_name(ty: u8, code: u8) -> Option<String> {
    let name = match (ty, code) {
        (ICMP4_DEST_UNREACH, 0) => "net-unreachable",
        (ICMP4_DEST_UNREACH, 1) => "host-unreachable",
        (ICMP4_DEST_UNREACH, 2) => "protocol-unreachable",
        (ICMP4_DEST_UNREACH, 3) => "port-unreachable",
        (ICMP4_DEST_UNREACH, 4) => "fragmentation-needed",
        (ICMP4_DEST_UNREACH, 5) => "source-route-failed",
        (ICMP4_DEST_UNREACH, 6) => "net-unknown",
        (ICMP4_DEST_UNREACH, 7) => "host-unknown",
        (ICMP4_DEST_UNREACH, 8) => "host-isolated",
        (ICMP4_DEST_UNREACH, 9) => "net-prohibited",
        (ICMP4_DEST_UNREACH, 10) => "host-prohibited",
        (ICMP4_DEST_UNREACH, 11) => "net-tos-unreachable",
        (ICMP4_DEST_UNREACH, 12) => "host-tos-unreachable",
        (ICMP4_DEST_UNREACH, 13) => "admin-prohibited",
        (ICMP4_DEST_UNREACH, 14) => "host-precedence-violation",
        (ICMP4_DEST_UNREACH, 15) => "precedence-cutoff",
        (ICMP4_DEST_UNREACH, c) => return Some(format!("icmp dest-unreachable code {c}")),
        (ICMP4_TIME_EXCEEDED, 1) => "reassembly-time-exceeded",
        (ICMP4_TIME_EXCEEDED, _) => "time-exceeded",
        (ICMP4_PARAM_PROBLEM, _) => "parameter-problem",
        _ => return None,
    };
    Some(format!("icmp {name}"))
}

/// Readable names of the ICMPv6 errors; `None` for informational messages (echo, NDP, MLD).
fn icmp6_error_name(ty: u8, code: u8) -> Option<String> {
    let name = match (ty, code) {
        (ICMP6_DEST_UNREACH, 0) => "no-route",
        (ICMP6_DEST_UNREACH, 1) => "admin-prohibited",
        (ICMP6_DEST_UNREACH, 2) => "beyond-scope",
        (ICMP6_DEST_UNREACH, 3) => "address-unreachable",
        (ICMP6_DEST_UNREACH, 4) => "port-unreachable",
        (ICMP6_DEST_UNREACH, 5) => "failed-policy",
        (ICMP6_DEST_UNREACH, 6) => "reject-route",
        (ICMP6_DEST_UNREACH, 7) => "source-routing-error",
        (ICMP6_DEST_UNREACH, c) => return Some(format!("icmp6 dest-unreachable code {c}")),
        (ICMP6_PACKET_TOO_BIG, _) => "packet-too-big",
        (ICMP6_TIME_EXCEEDED, 1) => "reassembly-time-exceeded",
        (ICMP6_TIME_EXCEEDED, _) => "time-exceeded",
        (ICMP6_PARAM_PROBLEM, _) => "parameter-problem",
        _ => return None,
    };
    Some(format!("icmp6 {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_header(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        payload_len: usize,
        options: usize,
    ) -> Vec<u8> {
        assert_eq!(options % 4, 0);
        let ihl = 20 + options;
        let mut h = vec![0u8; ihl];
        h[0] = 0x40 | (ihl / 4) as u8;
        h[2..4].copy_from_slice(&((ihl + payload_len) as u16).to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        for b in &mut h[20..] {
            *b = 1; // NOP options
        }
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: usize) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
        h[6] = next;
        h[7] = 64;
        h[8..24].copy_from_slice(&src.octets());
        h[24..40].copy_from_slice(&dst.octets());
        h
    }

    /// Turn one of our echo requests into the reply a kernel would send.
    fn as_reply(request: &[u8], v6: bool) -> Vec<u8> {
        let mut r = request.to_vec();
        r[0] = if v6 {
            ICMP6_ECHO_REPLY
        } else {
            ICMP4_ECHO_REPLY
        };
        r[2..4].copy_from_slice(&[0, 0]);
        if !v6 {
            let sum = checksum(&r);
            r[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        r
    }

    /// An ICMPv4 error quoting `orig_ip` (a whole IPv4 packet), cut to `quote` bytes.
    fn icmp4_error(ty: u8, code: u8, orig_ip: &[u8], quote: usize) -> Vec<u8> {
        let mut e = vec![ty, code, 0, 0, 0, 0, 0, 0];
        e.extend_from_slice(&orig_ip[..quote.min(orig_ip.len())]);
        let sum = checksum(&e);
        e[2..4].copy_from_slice(&sum.to_be_bytes());
        e
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2, so the checksum is !0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length: the last byte is padded with a zero.
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn echo_request_v4_has_valid_checksum_and_fields() {
        let p = build_echo_request(false, 0xbeef, 0x1234, 7, 3);
        assert_eq!(p[0], ICMP4_ECHO_REQUEST);
        assert_eq!(p[1], 0);
        assert_eq!(
            checksum(&p),
            0,
            "a packet with its checksum in place sums to zero"
        );
        assert_eq!(ident_seq(&p), (0xbeef, 0x1234));
        assert_eq!(&p[8..16], &MARKER);
        assert!(payload_matches(&p[8..], 7, true));
        assert!(!payload_matches(&p[8..], 8, true));
    }

    #[test]
    fn echo_request_v6_leaves_checksum_to_the_kernel() {
        let p = build_echo_request(true, 1, 2, 0, 1);
        assert_eq!(p[0], ICMP6_ECHO_REQUEST);
        assert_eq!(&p[2..4], &[0, 0]);
    }

    #[test]
    fn parses_v4_echo_reply_with_and_without_ip_options() {
        let req = build_echo_request(false, 0x0102, 0x0304, 5, 1);
        let reply = as_reply(&req, false);
        for options in [0, 8] {
            let mut pkt = ipv4_header(
                [10, 0, 0, 2],
                [10, 0, 0, 1],
                IPPROTO_ICMP,
                reply.len(),
                options,
            );
            pkt.extend_from_slice(&reply);
            let (src, parsed) = parse_ipv4_packet(&pkt).expect("an echo reply");
            assert_eq!(src, Ipv4Addr::new(10, 0, 0, 2));
            assert_eq!(
                parsed,
                Parsed::Reply {
                    ident: 0x0102,
                    seq: 0x0304,
                    payload: &reply[8..]
                }
            );
        }
    }

    #[test]
    fn ignores_v4_echo_requests_redirects_and_garbage() {
        let req = build_echo_request(false, 1, 2, 0, 1);
        let mut pkt = ipv4_header([10, 0, 0, 1], [10, 0, 0, 1], IPPROTO_ICMP, req.len(), 0);
        pkt.extend_from_slice(&req);
        assert_eq!(parse_ipv4_packet(&pkt), None, "our own request looped back");

        let orig = {
            let mut o = ipv4_header([10, 0, 0, 1], [10, 0, 1, 1], IPPROTO_ICMP, req.len(), 0);
            o.extend_from_slice(&req);
            o
        };
        let redirect = icmp4_error(5, 1, &orig, 28);
        let mut pkt = ipv4_header(
            [10, 0, 0, 254],
            [10, 0, 0, 1],
            IPPROTO_ICMP,
            redirect.len(),
            0,
        );
        pkt.extend_from_slice(&redirect);
        assert_eq!(
            parse_ipv4_packet(&pkt),
            None,
            "redirects are not rejections"
        );

        for len in 0..pkt.len() {
            // Truncated packets must never panic.
            let _ = parse_ipv4_packet(&pkt[..len]);
        }
        assert_eq!(parse_ipv4_packet(&[0x45]), None);
        assert_eq!(parse_ipv4_packet(&[0x60; 40]), None);
    }

    #[test]
    fn parses_v4_port_unreachable_quoting_our_request() {
        let req = build_echo_request(false, 0xaaaa, 42, 3, 2);
        let mut orig = ipv4_header([10, 0, 0, 1], [192, 168, 1, 9], IPPROTO_ICMP, req.len(), 0);
        orig.extend_from_slice(&req);
        for quote in [28, orig.len()] {
            let err = icmp4_error(3, 3, &orig, quote);
            let mut pkt = ipv4_header([192, 168, 1, 1], [10, 0, 0, 1], IPPROTO_ICMP, err.len(), 0);
            pkt.extend_from_slice(&err);
            let (src, parsed) = parse_ipv4_packet(&pkt).expect("an error");
            assert_eq!(src, Ipv4Addr::new(192, 168, 1, 1));
            let Parsed::Error {
                what,
                ident,
                seq,
                orig_dst,
                orig_payload,
            } = parsed
            else {
                panic!("{parsed:?}")
            };
            assert_eq!(what, "icmp port-unreachable");
            assert_eq!((ident, seq), (0xaaaa, 42));
            assert_eq!(orig_dst, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9)));
            assert!(payload_matches(orig_payload, 3, false));
            assert!(!payload_matches(orig_payload, 4, false) || orig_payload.is_empty());
        }
    }

    #[test]
    fn ignores_v4_errors_about_other_protocols() {
        let udp = [0u8; 8];
        let mut orig = ipv4_header([10, 0, 0, 1], [10, 0, 0, 9], 17, udp.len(), 0);
        orig.extend_from_slice(&udp);
        let err = icmp4_error(3, 3, &orig, orig.len());
        let mut pkt = ipv4_header([10, 0, 0, 9], [10, 0, 0, 1], IPPROTO_ICMP, err.len(), 0);
        pkt.extend_from_slice(&err);
        assert_eq!(parse_ipv4_packet(&pkt), None);
    }

    #[test]
    fn parses_v6_echo_reply_and_ignores_requests_and_ndp() {
        let req = build_echo_request(true, 9, 10, 1, 1);
        let reply = as_reply(&req, true);
        assert_eq!(
            parse_icmp6(&reply),
            Some(Parsed::Reply {
                ident: 9,
                seq: 10,
                payload: &reply[8..]
            })
        );
        assert_eq!(parse_icmp6(&req), None);
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&[0u8; 16]);
        assert_eq!(parse_icmp6(&ns), None, "neighbour solicitation");
        assert_eq!(parse_icmp6(&[129, 0, 0]), None);
    }

    #[test]
    fn parses_v6_admin_prohibited_quoting_our_request() {
        let me: Ipv6Addr = "fd00::2".parse().unwrap();
        let dst: Ipv6Addr = "fd00:1::9".parse().unwrap();
        let req = build_echo_request(true, 0x7777, 300, 2, 4);
        let mut err = vec![ICMP6_DEST_UNREACH, 1, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&ipv6_header(me, dst, IPPROTO_ICMPV6, req.len()));
        err.extend_from_slice(&req);
        let Some(Parsed::Error {
            what,
            ident,
            seq,
            orig_dst,
            orig_payload,
        }) = parse_icmp6(&err)
        else {
            panic!("an error")
        };
        assert_eq!(what, "icmp6 admin-prohibited");
        assert_eq!((ident, seq), (0x7777, 300));
        assert_eq!(orig_dst, IpAddr::V6(dst));
        assert!(payload_matches(orig_payload, 2, false));
        for len in 0..err.len() {
            let _ = parse_icmp6(&err[..len]);
        }
        // Cut inside the quoted echo header: not attributable.
        assert_eq!(parse_icmp6(&err[..8 + 40 + 4]), None);
    }

    #[test]
    fn names_errors() {
        let v4 = |t, c| icmp4_error_name(t, c);
        assert_eq!(v4(3, 0).as_deref(), Some("icmp net-unreachable"));
        assert_eq!(v4(3, 1).as_deref(), Some("icmp host-unreachable"));
        assert_eq!(v4(3, 2).as_deref(), Some("icmp protocol-unreachable"));
        assert_eq!(v4(3, 3).as_deref(), Some("icmp port-unreachable"));
        assert_eq!(v4(3, 9).as_deref(), Some("icmp net-prohibited"));
        assert_eq!(v4(3, 10).as_deref(), Some("icmp host-prohibited"));
        assert_eq!(v4(3, 13).as_deref(), Some("icmp admin-prohibited"));
        assert_eq!(v4(3, 99).as_deref(), Some("icmp dest-unreachable code 99"));
        assert_eq!(v4(11, 0).as_deref(), Some("icmp time-exceeded"));
        assert_eq!(v4(12, 0).as_deref(), Some("icmp parameter-problem"));
        assert_eq!(v4(5, 0), None);
        assert_eq!(v4(0, 0), None);
        assert_eq!(v4(8, 0), None);
        let v6 = |t, c| icmp6_error_name(t, c);
        assert_eq!(v6(1, 0).as_deref(), Some("icmp6 no-route"));
        assert_eq!(v6(1, 1).as_deref(), Some("icmp6 admin-prohibited"));
        assert_eq!(v6(1, 3).as_deref(), Some("icmp6 address-unreachable"));
        assert_eq!(v6(1, 4).as_deref(), Some("icmp6 port-unreachable"));
        assert_eq!(v6(1, 5).as_deref(), Some("icmp6 failed-policy"));
        assert_eq!(v6(1, 6).as_deref(), Some("icmp6 reject-route"));
        assert_eq!(v6(2, 0).as_deref(), Some("icmp6 packet-too-big"));
        assert_eq!(v6(3, 0).as_deref(), Some("icmp6 time-exceeded"));
        assert_eq!(v6(4, 0).as_deref(), Some("icmp6 parameter-problem"));
        assert_eq!(v6(128, 0), None);
        assert_eq!(v6(137, 0), None, "redirect");
    }

    #[test]
    fn classifies_send_errors() {
        let dst: IpAddr = "10.10.0.1".parse().unwrap();
        let e = |n: Errno| io::Error::from_raw_os_error(n as i32);
        assert_eq!(
            classify_send_error(dst, &e(Errno::ENETUNREACH)),
            SendVerdict::Fail(SendFailure::Route(
                "no route to 10.10.0.1: network unreachable (ENETUNREACH)".into()
            ))
        );
        for n in [
            Errno::EHOSTUNREACH,
            Errno::EACCES,
            Errno::EINVAL,
            Errno::EADDRNOTAVAIL,
        ] {
            let SendVerdict::Fail(SendFailure::Route(d)) = classify_send_error(dst, &e(n)) else {
                panic!("{n}")
            };
            assert!(d.starts_with("no route to 10.10.0.1: "), "{d}");
            assert!(d.ends_with(&format!("({n:?})")), "{d}");
        }
        assert_eq!(
            classify_send_error(dst, &e(Errno::EPERM)),
            SendVerdict::Fail(SendFailure::Filtered)
        );
        assert_eq!(
            classify_send_error(dst, &e(Errno::ENOBUFS)),
            SendVerdict::Retry
        );
        assert_eq!(
            classify_send_error(dst, &e(Errno::EBADF)),
            SendVerdict::Fatal
        );
    }

    fn timing() -> ProbeTiming {
        ProbeTiming {
            deadline: Duration::from_secs(3),
            window: Duration::from_secs(1),
            interval: Duration::from_millis(100),
            adaptive: false,
        }
    }

    #[test]
    fn round_matches_replies_and_errors_to_cells() {
        let cells = [
            IcmpCell {
                dst: "10.0.0.2".parse().unwrap(),
                expect_ok: true,
            },
            IcmpCell {
                dst: "10.0.0.3".parse().unwrap(),
                expect_ok: false,
            },
            IcmpCell {
                dst: "10.0.0.4".parse().unwrap(),
                expect_ok: false,
            },
            IcmpCell {
                dst: "10.0.0.5".parse().unwrap(),
                expect_ok: true,
            },
        ];
        let start = Instant::now();
        let mut r = Round::new(&cells, &timing(), start, 0x4242, 65535);
        let mut reqs = Vec::new();
        for idx in r.pending() {
            let p = r.next_request(idx);
            reqs.push(p);
            r.record_send(idx, Ok(p.len())).unwrap();
        }
        assert_eq!(ident_seq(&reqs[1]).1, 0, "sequence numbers wrap");

        // A reply from the wrong address, and one with a foreign identifier: ignored.
        let reply0 = as_reply(&reqs[0], false);
        r.handle("10.0.0.9".parse().unwrap(), parse_icmp4(&reply0).unwrap());
        let mut foreign = reqs[0];
        foreign[4] ^= 0xff;
        let foreign = as_reply(&foreign, false);
        r.handle("10.0.0.2".parse().unwrap(), parse_icmp4(&foreign).unwrap());
        assert!(r.state[0].done.is_none());
        // The right reply: Ok at once.
        r.handle("10.0.0.2".parse().unwrap(), parse_icmp4(&reply0).unwrap());
        assert_eq!(r.state[0].done, Some(ProbeOutcome::Ok));

        // An admin-prohibited error for cell 1 from a router.
        let mut orig = ipv4_header([10, 0, 0, 1], [10, 0, 0, 3], IPPROTO_ICMP, ECHO_LEN, 0);
        orig.extend_from_slice(&reqs[1]);
        let err = icmp4_error(3, 13, &orig, orig.len());
        r.handle("10.0.0.254".parse().unwrap(), parse_icmp4(&err).unwrap());
        // The same request quoted as sent to another destination is not cell 1's.
        let mut wrong = ipv4_header([10, 0, 0, 1], [10, 0, 0, 99], IPPROTO_ICMP, ECHO_LEN, 0);
        wrong.extend_from_slice(&reqs[2]);
        let wrong = icmp4_error(3, 3, &wrong, wrong.len());
        r.handle("10.0.0.254".parse().unwrap(), parse_icmp4(&wrong).unwrap());
        assert!(r.state[2].rejected.is_none());
        assert!(
            r.state[1].done.is_none(),
            "expect-fail cells wait for the window"
        );

        // Cell 2: a send failure decides an expect-fail cell at once.
        let seq = ident_seq(&r.next_request(2)).1;
        r.record_send(
            2,
            Err(io::Error::from_raw_os_error(Errno::EHOSTUNREACH as i32)),
        )
        .unwrap();
        assert!(matches!(
            r.state[2].done,
            Some(ProbeOutcome::Unreachable { .. })
        ));
        assert_eq!(r.seqs.get(&seq), Some(&2));

        // Cell 3: EPERM keeps retrying and ends as a detailed drop.
        r.next_request(3);
        r.record_send(3, Err(io::Error::from_raw_os_error(Errno::EPERM as i32)))
            .unwrap();
        assert!(r.state[3].done.is_none());

        r.expire(start + Duration::from_millis(1000));
        assert_eq!(
            r.state[1].done,
            Some(ProbeOutcome::Rejected {
                detail: "icmp admin-prohibited from 10.0.0.254".into()
            })
        );
        assert!(
            r.state[3].done.is_none(),
            "expect-ok cells wait for the deadline"
        );
        assert_eq!(r.next_end(), Some(start + Duration::from_secs(3)));
        r.expire(start + Duration::from_secs(3));
        assert!(r.all_done());
        let out = r.finish();
        assert_eq!(
            out[3],
            ProbeOutcome::Dropped {
                detail: Some("dropped by the source's own OUTPUT rules (EPERM)".into())
            }
        );
    }

    #[test]
    fn expect_ok_cell_with_route_error_keeps_trying_and_reports_the_last_observation() {
        let cells = [IcmpCell {
            dst: "10.0.0.2".parse().unwrap(),
            expect_ok: true,
        }];
        let start = Instant::now();
        let mut r = Round::new(&cells, &timing(), start, 1, 1);
        r.next_request(0);
        r.record_send(
            0,
            Err(io::Error::from_raw_os_error(Errno::ENETUNREACH as i32)),
        )
        .unwrap();
        assert!(r.state[0].done.is_none());
        let mut r2 = Round::new(&cells, &timing(), start, 1, 1);
        r2.next_request(0);
        r2.record_send(
            0,
            Err(io::Error::from_raw_os_error(Errno::ENETUNREACH as i32)),
        )
        .unwrap();
        let p = r2.next_request(0);
        r2.record_send(0, Ok(p.len())).unwrap();
        r.expire(start + Duration::from_secs(3));
        r2.expire(start + Duration::from_secs(3));
        assert!(matches!(r.finish()[0], ProbeOutcome::Unreachable { .. }));
        assert_eq!(
            r2.finish()[0],
            ProbeOutcome::Dropped { detail: None },
            "the route appeared, then silence"
        );
    }

    #[test]
    fn output_reject_counts_as_rejected_despite_eperm() {
        // A REJECT in the source's OUTPUT chain: sendto says EPERM and the kernel also
        // delivers a port-unreachable from our own address quoting that request.
        let cells = [IcmpCell {
            dst: "10.0.0.5".parse().unwrap(),
            expect_ok: false,
        }];
        let start = Instant::now();
        let mut r = Round::new(&cells, &timing(), start, 7, 7);
        let req = r.next_request(0);
        r.record_send(0, Err(io::Error::from_raw_os_error(Errno::EPERM as i32)))
            .unwrap();
        let mut orig = ipv4_header([10, 0, 0, 1], [10, 0, 0, 5], IPPROTO_ICMP, ECHO_LEN, 0);
        orig.extend_from_slice(&req);
        let err = icmp4_error(3, 3, &orig, orig.len());
        r.handle("10.0.0.1".parse().unwrap(), parse_icmp4(&err).unwrap());
        r.expire(start + Duration::from_secs(1));
        assert_eq!(
            r.finish(),
            vec![ProbeOutcome::Rejected {
                detail: "icmp port-unreachable from 10.0.0.1".into()
            }]
        );
    }

    #[test]
    fn empty_probe_returns_at_once() {
        assert_eq!(probe(&[], &timing()).unwrap(), Vec::new());
    }
}
