//! Native TCP and UDP reachability probes, and the listeners that answer them.
//!
//! [`probe`] checks many `(destination, protocol)` cells at once from the network
//! namespace of the calling thread, on that thread alone (non-blocking sockets and
//! `poll`, no async runtime), and returns one [`ProbeOutcome`] per cell in the same
//! order, following the [`ProbeTiming`] window rules: a cell expected `ok` ends at
//! its first success or at `deadline`; any other cell is watched for the whole
//! `window` and becomes `Ok` as soon as one attempt succeeds. A TCP cell succeeds
//! when a handshake completes; a UDP cell when the random token it sends is echoed
//! back by the destination. Failures say what was observed: an error that came back
//! is `Rejected` (`tcp rst`, or the exact ICMP/ICMPv6 error and who sent it, read
//! from the socket error queue via `IP_RECVERR`), a send refused by the source
//! itself (no route, `unreachable`/`prohibit`/`blackhole` route, no source address)
//! is `Unreachable`, and silence is `Dropped` (with a detail when the source's own
//! OUTPUT rules dropped the packet and the kernel said so with `EPERM`).
//!
//! [`Listener`] binds TCP and UDP sockets in the namespace of the calling thread and
//! serves them all from one background thread: TCP connections are accepted and
//! closed, UDP datagrams are echoed to their sender from the address they were sent
//! to. [`Listener::stop`] (or dropping the listener) stops the thread and closes
//! every socket. Every socket either side opens is closed before it returns.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::outcome::{ProbeOutcome, ProbeTiming};

/// The detail of a cell whose packets the source's own netfilter OUTPUT rules dropped.
pub const OUTPUT_DROP_DETAIL: &str = "dropped by the source's own OUTPUT rules (EPERM)";

/// Length of the random token a UDP probe sends.
const TOKEN_LEN: usize = 16;

/// Backlog of listening TCP sockets.
const LISTEN_BACKLOG: i32 = 128;

/// Which transport protocol a cell or a listener uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn word(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// One probe: reach `dst` over `proto`; `expect_ok` selects the timing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportCell {
    pub dst: SocketAddr,
    pub proto: Transport,
    pub expect_ok: bool,
}

/// What failed while probing or serving; each message reads after "failed to".
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("create a {proto} socket for {addr}")]
    Socket {
        proto: Transport,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("set {option} on a {proto} socket for {addr}")]
    SetOption {
        option: &'static str,
        proto: Transport,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("wait for the probe sockets (poll)")]
    Poll {
        #[source]
        source: io::Error,
    },
    #[error("bind a tcp listener on {addr}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("bind a udp listener on {addr}")]
    BindUdp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("read the local address of the {proto} listener bound to {addr}")]
    LocalAddr {
        proto: Transport,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("create the listener's stop channel")]
    StopChannel {
        #[source]
        source: io::Error,
    },
    #[error("spawn the listener thread")]
    Spawn {
        #[source]
        source: io::Error,
    },
    #[error("serve the listeners")]
    Serve {
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------
// Classification of errors
// ---------------------------------------------------------------------------

/// One entry of a socket's error queue (`IP_RECVERR` / `IPV6_RECVERR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueuedError {
    errno: i32,
    origin: u8,
    icmp_type: u8,
    icmp_code: u8,
    offender: Option<IpAddr>,
}

const SO_EE_ORIGIN_LOCAL: u8 = nix::libc::SO_EE_ORIGIN_LOCAL;
const SO_EE_ORIGIN_ICMP: u8 = nix::libc::SO_EE_ORIGIN_ICMP;
const SO_EE_ORIGIN_ICMP6: u8 = nix::libc::SO_EE_ORIGIN_ICMP6;

/// The name of an ICMP (v4) error, in the words `iptables --reject-with` uses.
fn icmp4_name(icmp_type: u8, code: u8) -> String {
    let name = match (icmp_type, code) {
        (3, 0) => "net-unreachable",
        (3, 1) => "host-unreachable",
        (3, 2) => "protocol-unreachable",
        (3, 3) => "port-unreachable",
        (3, 4) => "frag-needed",
        (3, 5) => "source-route-failed",
        (3, 6) => "net-unknown",
        (3, 7) => "host-unknown",
        (3, 8) => "host-isolated",
        (3, 9) => "net-prohibited",
        (3, 10) => "host-prohibited",
        (3, 11) => "net-unreachable-for-tos",
        (3, 12) => "host-unreachable-for-tos",
        (3, 13) => "admin-prohibited",
        (3, 14) => "host-precedence-violation",
        (3, 15) => "precedence-cutoff",
        (4, _) => "source-quench",
        (5, _) => "redirect",
        (11, 0) => "ttl-exceeded",
        (11, 1) => "reassembly-time-exceeded",
        (11, _) => "time-exceeded",
        (12, _) => "parameter-problem",
        _ => return format!("type {icmp_type} code {code}"),
    };
    name.to_string()
}

/// The name of an ICMPv6 error, in the words `ip6tables --reject-with` uses.
fn icmp6_name(icmp_type: u8, code: u8) -> String {
    let name = match (icmp_type, code) {
        (1, 0) => "no-route",
        (1, 1) => "admin-prohibited",
        (1, 2) => "beyond-scope",
        (1, 3) => "addr-unreachable",
        (1, 4) => "port-unreachable",
        (1, 5) => "failed-policy",
        (1, 6) => "reject-route",
        (2, _) => "packet-too-big",
        (3, 0) => "hop-limit-exceeded",
        (3, _) => "time-exceeded",
        (4, _) => "parameter-problem",
        _ => return format!("type {icmp_type} code {code}"),
    };
    name.to_string()
}

fn errno_name(errno: i32) -> String {
    let e = Errno::from_raw(errno);
    if e == Errno::UnknownErrno {
        format!("errno {errno}")
    } else {
        format!("{e:?}")
    }
}

impl QueuedError {
    /// The outcome this queued error stands for.
    fn outcome(&self, proto: Transport) -> ProbeOutcome {
        let from = match self.offender {
            Some(ip) => format!(" from {ip}"),
            None => String::new(),
        };
        match self.origin {
            SO_EE_ORIGIN_ICMP => ProbeOutcome::Rejected {
                detail: format!("icmp {}{from}", icmp4_name(self.icmp_type, self.icmp_code)),
            },
            SO_EE_ORIGIN_ICMP6 => ProbeOutcome::Rejected {
                detail: format!(
                    "icmpv6 {}{from}",
                    icmp6_name(self.icmp_type, self.icmp_code)
                ),
            },
            // A local error (EMSGSIZE, ...) refused at the source.
            SO_EE_ORIGIN_LOCAL => source_outcome(self.errno, proto),
            _ => returned_outcome(self.errno, proto),
        }
    }
}

/// The outcome of an error that came back after the packet left (SO_ERROR after a
/// connect started, an error on recv), when the error queue said nothing more precise.
fn returned_outcome(errno: i32, proto: Transport) -> ProbeOutcome {
    let e = Errno::from_raw(errno);
    let rejected = |what: &str| ProbeOutcome::Rejected {
        detail: format!("{what} ({e:?})"),
    };
    match e {
        Errno::ECONNREFUSED => ProbeOutcome::Rejected {
            detail: match proto {
                Transport::Tcp => "tcp rst".to_string(),
                Transport::Udp => "icmp port-unreachable".to_string(),
            },
        },
        // Only an established connection can be reset: the handshake completed.
        Errno::ECONNRESET | Errno::EPIPE if proto == Transport::Tcp => ProbeOutcome::Ok,
        Errno::EHOSTUNREACH => {
            rejected("icmp host-unreachable, host-prohibited or admin-prohibited")
        }
        Errno::ENETUNREACH => rejected("icmp net-unreachable or net-prohibited"),
        Errno::EACCES => rejected("icmpv6 admin-prohibited, failed-policy or reject-route"),
        Errno::EHOSTDOWN => rejected("icmp host-unknown"),
        Errno::ENONET => rejected("icmp host-isolated"),
        Errno::ENOPROTOOPT => rejected("icmp protocol-unreachable"),
        Errno::EPROTO => rejected("icmp parameter-problem"),
        Errno::EMSGSIZE => rejected("icmp frag-needed"),
        Errno::EOPNOTSUPP => rejected("icmp source-route-failed"),
        Errno::ETIMEDOUT => ProbeOutcome::Dropped {
            detail: Some("the attempt timed out (ETIMEDOUT)".to_string()),
        },
        Errno::EPERM => ProbeOutcome::Dropped {
            detail: Some(OUTPUT_DROP_DETAIL.to_string()),
        },
        _ => ProbeOutcome::Rejected {
            detail: format!("an error came back: {}", errno_name(errno)),
        },
    }
}

/// The outcome of connect()/send() failing at once, before anything left the source.
fn source_outcome(errno: i32, proto: Transport) -> ProbeOutcome {
    let e = Errno::from_raw(errno);
    let unreachable = |what: &str| ProbeOutcome::Unreachable {
        detail: format!("{what} ({e:?})"),
    };
    match e {
        Errno::EPERM => ProbeOutcome::Dropped {
            detail: Some(OUTPUT_DROP_DETAIL.to_string()),
        },
        Errno::ENETUNREACH => unreachable("no route to the destination"),
        Errno::EHOSTUNREACH => unreachable("unreachable route to the destination"),
        Errno::EACCES => unreachable("prohibit route to the destination"),
        Errno::EINVAL => unreachable("blackhole route to the destination"),
        Errno::EADDRNOTAVAIL => unreachable("no usable source address"),
        Errno::ENETDOWN => unreachable("the outgoing interface is down"),
        Errno::ENODEV => unreachable("no such outgoing interface"),
        // The kernel already had an answer (an RST over loopback, a queued ICMP error).
        Errno::ECONNREFUSED
        | Errno::ECONNRESET
        | Errno::EHOSTDOWN
        | Errno::ENONET
        | Errno::ENOPROTOOPT
        | Errno::EPROTO
        | Errno::EOPNOTSUPP => returned_outcome(errno, proto),
        _ => ProbeOutcome::Unreachable {
            detail: format!("refused at the source: {}", errno_name(errno)),
        },
    }
}

fn raw_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Drain the socket's error queue; returns its last entry.
fn read_error_queue(fd: BorrowedFd<'_>) -> Option<QueuedError> {
    let mut last = None;
    let mut data = [0u8; 256];
    let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
    // Bounded: each ICMP error is one entry, and we stop at EAGAIN.
    for _ in 0..64 {
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg = match recvmsg::<SockaddrStorage>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        };
        let Ok(cmsgs) = msg.cmsgs() else { continue };
        for c in cmsgs {
            let (ee, offender) = match c {
                ControlMessageOwned::Ipv4RecvErr(ee, addr) => (
                    ee,
                    addr.map(|a| IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))),
                ),
                ControlMessageOwned::Ipv6RecvErr(ee, addr) => (
                    ee,
                    addr.map(|a| {
                        let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                        match ip.to_ipv4_mapped() {
                            Some(v4) => IpAddr::V4(v4),
                            None => IpAddr::V6(ip),
                        }
                    }),
                ),
                _ => continue,
            };
            last = Some(QueuedError {
                errno: ee.ee_errno as i32,
                origin: ee.ee_origin,
                icmp_type: ee.ee_type,
                icmp_code: ee.ee_code,
                offender: offender.filter(|ip| !ip.is_unspecified()),
            });
        }
    }
    last
}

/// Collect whatever error the socket holds (SO_ERROR, then the error queue).
/// Returns `(so_error errno, queued entry)`.
fn pending_errors(sock: &Socket) -> (Option<i32>, Option<QueuedError>) {
    let so_error = match sock.take_error() {
        Ok(Some(e)) => Some(raw_errno(&e)),
        Ok(None) => None,
        Err(_) => None,
    };
    (so_error, read_error_queue(sock.as_fd()))
}

/// The outcome of an error that came back, preferring the precise queued ICMP error.
fn came_back(
    so_error: Option<i32>,
    queued: Option<QueuedError>,
    proto: Transport,
) -> Option<ProbeOutcome> {
    match (so_error, queued) {
        // The handshake completed and was then reset: that is a success.
        (Some(errno), _) if returned_outcome(errno, proto) == ProbeOutcome::Ok => {
            Some(ProbeOutcome::Ok)
        }
        (_, Some(q)) => Some(q.outcome(proto)),
        (Some(errno), None) => Some(returned_outcome(errno, proto)),
        (None, None) => None,
    }
}

// ---------------------------------------------------------------------------
// Probing
// ---------------------------------------------------------------------------

fn domain_of(addr: &SocketAddr) -> Domain {
    match addr {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    }
}

/// A fresh non-blocking socket for `dst` with the error queue enabled.
fn probe_socket(dst: SocketAddr, proto: Transport) -> Result<Socket, TransportError> {
    let (ty, protocol) = match proto {
        Transport::Tcp => (Type::STREAM, Protocol::TCP),
        Transport::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let sock = Socket::new(domain_of(&dst), ty, Some(protocol)).map_err(|source| {
        TransportError::Socket {
            proto,
            addr: dst,
            source,
        }
    })?;
    let set = |option: &'static str, r: nix::Result<()>| {
        r.map_err(|e| TransportError::SetOption {
            option,
            proto,
            addr: dst,
            source: e.into(),
        })
    };
    sock.set_nonblocking(true)
        .map_err(|source| TransportError::SetOption {
            option: "O_NONBLOCK",
            proto,
            addr: dst,
            source,
        })?;
    match dst {
        SocketAddr::V4(_) => set("IP_RECVERR", setsockopt(&sock, sockopt::Ipv4RecvErr, &true))?,
        SocketAddr::V6(_) => set(
            "IPV6_RECVERR",
            setsockopt(&sock, sockopt::Ipv6RecvErr, &true),
        )?,
    }
    Ok(sock)
}

/// A 16-byte token nobody else will send.
fn random_token() -> [u8; TOKEN_LEN] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut out = [0u8; TOKEN_LEN];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(nanos);
        h.write_u32(std::process::id());
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_ne_bytes()[..chunk.len()]);
    }
    out
}

/// The state of one cell while [`probe`] runs.
struct CellRun<'a> {
    spec: &'a TransportCell,
    /// When the cell stops: `deadline` or `window` after the start.
    end: Instant,
    outcome: Option<ProbeOutcome>,
    last_failure: Option<ProbeOutcome>,
    /// TCP: the connect attempt in flight. UDP: the connected socket.
    sock: Option<Socket>,
    /// TCP: when the next attempt may start (only used while `sock` is `None`).
    /// UDP: when the next datagram goes out.
    next_at: Instant,
    token: [u8; TOKEN_LEN],
}

impl<'a> CellRun<'a> {
    fn new(spec: &'a TransportCell, start: Instant, timing: &ProbeTiming) -> Self {
        let span = if spec.expect_ok {
            timing.deadline
        } else {
            timing.window
        };
        CellRun {
            spec,
            end: start + span,
            outcome: None,
            last_failure: None,
            sock: None,
            next_at: start,
            token: random_token(),
        }
    }

    fn done(&self) -> bool {
        self.outcome.is_some()
    }

    fn succeed(&mut self) {
        self.outcome = Some(ProbeOutcome::Ok);
        self.sock = None;
    }

    fn fail(&mut self, outcome: ProbeOutcome) {
        if outcome == ProbeOutcome::Ok {
            self.succeed();
        } else {
            self.last_failure = Some(outcome);
        }
    }

    fn finish(&mut self) {
        self.sock = None;
        let outcome = self
            .last_failure
            .take()
            .unwrap_or(ProbeOutcome::Dropped { detail: None });
        self.outcome = Some(outcome);
    }

    /// When this cell next needs attention without any socket event.
    fn wake_at(&self) -> Instant {
        match (self.spec.proto, &self.sock) {
            (Transport::Tcp, Some(_)) => self.end,
            _ => self.next_at.min(self.end),
        }
    }

    /// The poll events this cell waits for, if it has a socket.
    fn poll_events(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        let sock = self.sock.as_ref()?;
        let events = match self.spec.proto {
            Transport::Tcp => PollFlags::POLLOUT,
            Transport::Udp => PollFlags::POLLIN,
        };
        Some((sock.as_fd(), events))
    }

    /// Start attempts and send datagrams that are due.
    fn act(&mut self, now: Instant, interval: Duration) -> Result<(), TransportError> {
        if now < self.next_at {
            return Ok(());
        }
        match self.spec.proto {
            Transport::Tcp => {
                if self.sock.is_none() {
                    self.next_at = now + interval;
                    self.start_tcp()?;
                }
            }
            Transport::Udp => {
                self.next_at = now + interval;
                self.send_udp()?;
            }
        }
        Ok(())
    }

    fn start_tcp(&mut self) -> Result<(), TransportError> {
        let dst = self.spec.dst;
        let sock = probe_socket(dst, Transport::Tcp)?;
        match sock.connect(&SockAddr::from(dst)) {
            Ok(()) => self.succeed(),
            Err(e) if raw_errno(&e) == Errno::EINPROGRESS as i32 => self.sock = Some(sock),
            Err(e) => {
                let (_, queued) = pending_errors(&sock);
                let outcome = match queued {
                    Some(q) => q.outcome(Transport::Tcp),
                    None => source_outcome(raw_errno(&e), Transport::Tcp),
                };
                self.fail(outcome);
            }
        }
        Ok(())
    }

    fn send_udp(&mut self) -> Result<(), TransportError> {
        let dst = self.spec.dst;
        if self.sock.is_none() {
            let sock = probe_socket(dst, Transport::Udp)?;
            if let Err(e) = sock.connect(&SockAddr::from(dst)) {
                self.fail(source_outcome(raw_errno(&e), Transport::Udp));
                return Ok(());
            }
            self.sock = Some(sock);
        }
        // Errors that came back since the last look, so that send() only reports its own.
        self.collect_udp_errors();
        let Some(sock) = self.sock.as_ref() else {
            return Ok(());
        };
        match sock.send(&self.token) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                let errno = raw_errno(&e);
                let queued = read_error_queue(sock.as_fd());
                let outcome = match queued {
                    Some(q) => q.outcome(Transport::Udp),
                    None => source_outcome(errno, Transport::Udp),
                };
                if matches!(outcome, ProbeOutcome::Unreachable { .. }) {
                    // Redo connect() next time: the route may come back.
                    self.sock = None;
                }
                self.fail(outcome);
            }
        }
        Ok(())
    }

    fn collect_udp_errors(&mut self) {
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        let (so_error, queued) = pending_errors(sock);
        if let Some(outcome) = came_back(so_error, queued, Transport::Udp) {
            self.fail(outcome);
        }
    }

    /// Handle what poll reported for this cell's socket.
    fn on_event(&mut self, revents: PollFlags) {
        match self.spec.proto {
            Transport::Tcp => self.on_tcp_event(revents),
            Transport::Udp => self.on_udp_event(revents),
        }
    }

    fn on_tcp_event(&mut self, revents: PollFlags) {
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        let (so_error, queued) = pending_errors(sock);
        match came_back(so_error, queued, Transport::Tcp) {
            Some(outcome) => {
                self.sock = None;
                self.fail(outcome);
            }
            None if revents.contains(PollFlags::POLLOUT) => {
                let connected_to_self = matches!(
                    (sock.local_addr(), sock.peer_addr()),
                    (Ok(l), Ok(p)) if l == p
                );
                if connected_to_self {
                    // A simultaneous open with ourselves (no listener, same port):
                    // not an answer; try again.
                    self.sock = None;
                } else {
                    self.succeed();
                }
            }
            None => {
                if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.sock = None;
                    self.fail(ProbeOutcome::Rejected {
                        detail: "the connection attempt was closed".to_string(),
                    });
                }
            }
        }
    }

    fn on_udp_event(&mut self, revents: PollFlags) {
        if revents.contains(PollFlags::POLLERR) {
            self.collect_udp_errors();
        }
        if !revents.contains(PollFlags::POLLIN) {
            return;
        }
        let mut buf = [0u8; 512];
        // Bounded so a flood cannot keep us here.
        for _ in 0..64 {
            let Some(sock) = self.sock.as_ref() else {
                return;
            };
            let mut reader: &Socket = sock;
            match io::Read::read(&mut reader, &mut buf) {
                Ok(n) => {
                    if buf[..n] == self.token {
                        self.succeed();
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let queued = read_error_queue(sock.as_fd());
                    let outcome = came_back(Some(raw_errno(&e)), queued, Transport::Udp);
                    if let Some(outcome) = outcome {
                        self.fail(outcome);
                    }
                }
            }
        }
    }
}

/// Probe every cell at once from the current thread's network namespace; one outcome
/// per cell, same order.
pub fn probe(
    cells: &[TransportCell],
    timing: &ProbeTiming,
) -> Result<Vec<ProbeOutcome>, TransportError> {
    let start = Instant::now();
    let interval = timing.interval.max(Duration::from_millis(1));
    let mut runs: Vec<CellRun<'_>> = cells
        .iter()
        .map(|spec| CellRun::new(spec, start, timing))
        .collect();

    loop {
        let now = Instant::now();
        for run in runs.iter_mut().filter(|r| !r.done()) {
            if now >= run.end {
                run.finish();
            } else {
                run.act(now, interval)?;
            }
        }
        let Some(wake) = runs
            .iter()
            .filter(|r| !r.done())
            .map(CellRun::wake_at)
            .min()
        else {
            break;
        };

        let mut owners = Vec::new();
        let mut fds = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            if run.done() {
                continue;
            }
            if let Some((fd, events)) = run.poll_events() {
                owners.push(i);
                fds.push(PollFd::new(fd, events));
            }
        }
        let wait = wake.saturating_duration_since(Instant::now());
        // Round up to whole milliseconds so we do not spin just before a wake-up.
        let millis = wait.as_micros().div_ceil(1000).min(i32::MAX as u128);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(TransportError::Poll { source: e.into() }),
        }
        let events: Vec<(usize, PollFlags)> = owners
            .iter()
            .zip(&fds)
            .filter_map(|(&i, fd)| fd.revents().filter(|r| !r.is_empty()).map(|r| (i, r)))
            .collect();
        drop(fds);
        for (i, revents) in events {
            runs[i].on_event(revents);
        }
    }

    Ok(runs
        .into_iter()
        .map(|r| r.outcome.unwrap_or(ProbeOutcome::Dropped { detail: None }))
        .collect())
}

// ---------------------------------------------------------------------------
// Listening
// ---------------------------------------------------------------------------

enum Served {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Served {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Served::Tcp(l) => l.as_fd(),
            Served::Udp(s) => s.as_fd(),
        }
    }
}

/// Listeners that answer probes: TCP sockets accept and close, UDP sockets echo.
///
/// The sockets belong to the network namespace of the thread that called
/// [`Listener::bind`]; one background thread serves them all until [`Listener::stop`]
/// or drop.
pub struct Listener {
    addrs: Vec<(Transport, SocketAddr)>,
    stop_tx: Option<UnixStream>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("addrs", &self.addrs)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

fn bind_one(proto: Transport, addr: SocketAddr) -> Result<(Served, SocketAddr), TransportError> {
    let (ty, protocol) = match proto {
        Transport::Tcp => (Type::STREAM, Protocol::TCP),
        Transport::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let sock = Socket::new(domain_of(&addr), ty, Some(protocol)).map_err(|source| {
        TransportError::Socket {
            proto,
            addr,
            source,
        }
    })?;
    let opt_err = |option: &'static str| {
        move |source: io::Error| TransportError::SetOption {
            option,
            proto,
            addr,
            source,
        }
    };
    if addr.is_ipv6() {
        // So that `0.0.0.0:p` and `[::]:p` can both be bound.
        sock.set_only_v6(true).map_err(opt_err("IPV6_V6ONLY"))?;
    }
    sock.set_nonblocking(true).map_err(opt_err("O_NONBLOCK"))?;
    let bind_err = |source| match proto {
        Transport::Tcp => TransportError::BindTcp { addr, source },
        Transport::Udp => TransportError::BindUdp { addr, source },
    };
    let served = match proto {
        Transport::Tcp => {
            sock.set_reuse_address(true)
                .map_err(opt_err("SO_REUSEADDR"))?;
            sock.bind(&SockAddr::from(addr)).map_err(bind_err)?;
            sock.listen(LISTEN_BACKLOG)
                .map_err(|source| TransportError::Listen { addr, source })?;
            Served::Tcp(TcpListener::from(sock))
        }
        Transport::Udp => {
            // Learn each datagram's destination address so the echo leaves from it.
            let r = match addr {
                SocketAddr::V4(_) => setsockopt(&sock, sockopt::Ipv4PacketInfo, &true),
                SocketAddr::V6(_) => setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true),
            };
            r.map_err(|e| opt_err("IP_PKTINFO")(e.into()))?;
            sock.bind(&SockAddr::from(addr)).map_err(bind_err)?;
            Served::Udp(UdpSocket::from(sock))
        }
    };
    let local = match &served {
        Served::Tcp(l) => l.local_addr(),
        Served::Udp(s) => s.local_addr(),
    }
    .map_err(|source| TransportError::LocalAddr {
        proto,
        addr,
        source,
    })?;
    Ok((served, local))
}

impl Listener {
    /// Bind every address on the calling thread (so the sockets live in its network
    /// namespace), then serve them all from one new thread.
    pub fn bind(addrs: &[(Transport, SocketAddr)]) -> Result<Listener, TransportError> {
        let mut served = Vec::with_capacity(addrs.len());
        let mut bound = Vec::with_capacity(addrs.len());
        for &(proto, addr) in addrs {
            let (s, local) = bind_one(proto, addr)?;
            served.push(s);
            bound.push((proto, local));
        }
        let (stop_tx, stop_rx) =
            UnixStream::pair().map_err(|source| TransportError::StopChannel { source })?;
        let thread = std::thread::Builder::new()
            .name("probe-listener".to_string())
            .spawn(move || serve(stop_rx, served))
            .map_err(|source| TransportError::Spawn { source })?;
        Ok(Listener {
            addrs: bound,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound addresses, in the order given to [`Listener::bind`] (port 0 resolved).
    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.addrs
    }

    /// Stop the serving thread and close every socket.
    pub fn stop(mut self) -> Result<(), TransportError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), TransportError> {
        // Closing our end wakes the thread (its end becomes readable: EOF).
        drop(self.stop_tx.take());
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(TransportError::Serve { source }),
            Err(_) => Err(TransportError::Serve {
                source: io::Error::other("the listener thread panicked"),
            }),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The serving loop: returns when `stop` becomes readable (the other end closed).
fn serve(stop: UnixStream, sockets: Vec<Served>) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds = Vec::with_capacity(sockets.len() + 1);
        fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
        for s in &sockets {
            fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            return Ok(());
        }
        for (s, _) in sockets.iter().zip(&ready[1..]).filter(|(_, &r)| r) {
            match s {
                Served::Tcp(l) => accept_all(l),
                Served::Udp(u) => echo_all(u, &mut buf),
            }
        }
    }
}

/// Accept every pending connection and close it at once (the handshake is the answer).
fn accept_all(listener: &TcpListener) {
    for _ in 0..256 {
        match listener.accept() {
            Ok((conn, _)) => drop(conn),
            Err(e) => {
                match Errno::from_raw(raw_errno(&e)) {
                    Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO => continue,
                    // Out of fds or memory: back off instead of spinning on poll.
                    Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {}
                }
                return;
            }
        }
    }
}

/// Echo every pending datagram to its sender, from the address it was sent to.
fn echo_all(sock: &UdpSocket, buf: &mut [u8]) {
    let fd = sock.as_raw_fd();
    let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::in_pktinfo);
    for _ in 0..256 {
        let (len, from, v4_dst, v6_dst) = {
            let mut iov = [IoSliceMut::new(buf)];
            let msg = match recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => msg,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            let (mut v4, mut v6) = (None, None);
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::Ipv4PacketInfo(info) => v4 = Some(info),
                        ControlMessageOwned::Ipv6PacketInfo(info) => v6 = Some(info),
                        _ => {}
                    }
                }
            }
            (msg.bytes, msg.address, v4, v6)
        };
        let Some(from) = from else { continue };
        let iov = [IoSlice::new(&buf[..len])];
        let v4_reply = v4_dst.map(|info| nix::libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: info.ipi_addr,
            ipi_addr: nix::libc::in_addr { s_addr: 0 },
        });
        let v6_reply = v6_dst;
        let mut cmsgs = Vec::new();
        if let Some(info) = v4_reply.as_ref() {
            cmsgs.push(ControlMessage::Ipv4PacketInfo(info));
        }
        if let Some(info) = v6_reply.as_ref() {
            cmsgs.push(ControlMessage::Ipv6PacketInfo(info));
        }
        let sent = sendmsg(fd, &iov, &cmsgs, MsgFlags::MSG_DONTWAIT, Some(&from));
        if sent.is_err() && !cmsgs.is_empty() {
            // E.g. a datagram sent to a broadcast address: answer from the default source.
            let _ = sendmsg(fd, &iov, &[], MsgFlags::MSG_DONTWAIT, Some(&from));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, MutexGuard};

    /// Tests that open sockets run one at a time, so fd counts are meaningful.
    fn serial() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    fn count_threads() -> usize {
        std::fs::read_dir("/proc/self/task").unwrap().count()
    }

    fn quick() -> ProbeTiming {
        ProbeTiming {
            deadline: Duration::from_millis(1500),
            window: Duration::from_millis(300),
            interval: Duration::from_millis(50),
            adaptive: false,
        }
    }

    /// A port that nothing listens on right now (bound then released).
    fn free_port(proto: Transport) -> u16 {
        let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
        match proto {
            Transport::Tcp => TcpListener::bind(a).unwrap().local_addr().unwrap().port(),
            Transport::Udp => UdpSocket::bind(a).unwrap().local_addr().unwrap().port(),
        }
    }

    #[test]
    fn error_messages_read_after_failed_to() {
        let e = TransportError::BindUdp {
            addr: "10.0.0.1:53".parse().unwrap(),
            source: io::Error::from_raw_os_error(98),
        };
        assert_eq!(e.to_string(), "bind a udp listener on 10.0.0.1:53");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn source_errors() {
        use Errno::*;
        let t = Transport::Tcp;
        assert_eq!(
            source_outcome(EPERM as i32, t),
            ProbeOutcome::Dropped {
                detail: Some(OUTPUT_DROP_DETAIL.to_string())
            }
        );
        for (errno, word) in [
            (ENETUNREACH, "ENETUNREACH"),
            (EHOSTUNREACH, "EHOSTUNREACH"),
            (EINVAL, "EINVAL"),
            (EACCES, "EACCES"),
            (EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        ] {
            match source_outcome(errno as i32, t) {
                ProbeOutcome::Unreachable { detail } => assert!(detail.contains(word), "{detail}"),
                other => panic!("{errno:?}: {other:?}"),
            }
        }
        assert_eq!(
            source_outcome(ECONNREFUSED as i32, t),
            ProbeOutcome::Rejected {
                detail: "tcp rst".into()
            }
        );
    }

    #[test]
    fn returned_errors() {
        use Errno::*;
        assert_eq!(
            returned_outcome(ECONNREFUSED as i32, Transport::Tcp).detail(),
            Some("tcp rst")
        );
        assert_eq!(
            returned_outcome(ECONNREFUSED as i32, Transport::Udp).detail(),
            Some("icmp port-unreachable")
        );
        assert_eq!(
            returned_outcome(ECONNRESET as i32, Transport::Tcp),
            ProbeOutcome::Ok
        );
        let d = returned_outcome(EHOSTUNREACH as i32, Transport::Tcp);
        assert!(
            matches!(&d, ProbeOutcome::Rejected { detail } if detail.starts_with("icmp host-unreachable"))
        );
        let d = returned_outcome(ENETUNREACH as i32, Transport::Udp);
        assert!(
            matches!(&d, ProbeOutcome::Rejected { detail } if detail.starts_with("icmp net-unreachable"))
        );
    }

    #[test]
    fn queued_icmp_errors() {
        let q = |origin, t, c, ip: &str| QueuedError {
            errno: 113,
            origin,
            icmp_type: t,
            icmp_code: c,
            offender: Some(ip.parse().unwrap()),
        };
        let tcp = Transport::Tcp;
        let cases = [
            (
                q(SO_EE_ORIGIN_ICMP, 3, 3, "10.0.0.1"),
                "icmp port-unreachable from 10.0.0.1",
            ),
            (
                q(SO_EE_ORIGIN_ICMP, 3, 1, "10.0.0.1"),
                "icmp host-unreachable from 10.0.0.1",
            ),
            (
                q(SO_EE_ORIGIN_ICMP, 3, 13, "10.0.0.1"),
                "icmp admin-prohibited from 10.0.0.1",
            ),
            (
                q(SO_EE_ORIGIN_ICMP, 3, 9, "10.0.0.1"),
                "icmp net-prohibited from 10.0.0.1",
            ),
            (
                q(SO_EE_ORIGIN_ICMP, 3, 10, "10.0.0.1"),
                "icmp host-prohibited from 10.0.0.1",
            ),
            (
                q(SO_EE_ORIGIN_ICMP, 11, 0, "10.0.0.1"),
                "icmp ttl-exceeded from 10.0.0.1",
            ),
            (
                q(SO_EE_ORIGIN_ICMP6, 1, 4, "fd00::1"),
                "icmpv6 port-unreachable from fd00::1",
            ),
            (
                q(SO_EE_ORIGIN_ICMP6, 1, 1, "fd00::1"),
                "icmpv6 admin-prohibited from fd00::1",
            ),
            (
                q(SO_EE_ORIGIN_ICMP, 42, 7, "10.0.0.1"),
                "icmp type 42 code 7 from 10.0.0.1",
            ),
        ];
        for (q, want) in cases {
            assert_eq!(
                q.outcome(tcp),
                ProbeOutcome::Rejected {
                    detail: want.into()
                }
            );
        }
        // A queued ICMP error beats the bare errno; a reset after the handshake is a success.
        let icmp = q(SO_EE_ORIGIN_ICMP, 3, 3, "10.0.0.1");
        assert_eq!(
            came_back(Some(Errno::ECONNREFUSED as i32), Some(icmp), tcp)
                .unwrap()
                .detail(),
            Some("icmp port-unreachable from 10.0.0.1")
        );
        assert_eq!(
            came_back(Some(Errno::ECONNREFUSED as i32), None, tcp)
                .unwrap()
                .detail(),
            Some("tcp rst")
        );
        assert_eq!(came_back(None, None, tcp), None);
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn empty_probe_returns_at_once() {
        let _serial = serial();
        let t0 = Instant::now();
        assert_eq!(probe(&[], &quick()).unwrap(), vec![]);
        assert!(t0.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn loopback_probes_against_a_listener() {
        let _serial = serial();
        let fds = count_fds();
        let threads = count_threads();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let any6: SocketAddr = "[::1]:0".parse().unwrap();
        let have_v6 = UdpSocket::bind(any6).is_ok();
        let mut wanted = vec![(Transport::Tcp, any), (Transport::Udp, any)];
        if have_v6 {
            wanted.push((Transport::Tcp, any6));
            wanted.push((Transport::Udp, any6));
        }
        let listener = Listener::bind(&wanted).unwrap();
        let mut cells: Vec<TransportCell> = listener
            .local_addrs()
            .iter()
            .map(|&(proto, dst)| TransportCell {
                dst,
                proto,
                expect_ok: true,
            })
            .collect();
        // The same, expected to fail: still ok at once.
        let also: Vec<_> = cells
            .iter()
            .map(|c| TransportCell {
                expect_ok: false,
                ..c.clone()
            })
            .collect();
        cells.extend(also);
        // Closed ports.
        let closed_tcp = SocketAddr::from(([127, 0, 0, 1], free_port(Transport::Tcp)));
        let closed_udp = SocketAddr::from(([127, 0, 0, 1], free_port(Transport::Udp)));
        cells.push(TransportCell {
            dst: closed_tcp,
            proto: Transport::Tcp,
            expect_ok: false,
        });
        cells.push(TransportCell {
            dst: closed_udp,
            proto: Transport::Udp,
            expect_ok: false,
        });

        let t0 = Instant::now();
        let out = probe(&cells, &quick()).unwrap();
        let took = t0.elapsed();
        let n = out.len();
        for (cell, o) in cells.iter().zip(&out).take(n - 2) {
            assert_eq!(o, &ProbeOutcome::Ok, "{cell:?}");
        }
        assert_eq!(
            out[n - 2],
            ProbeOutcome::Rejected {
                detail: "tcp rst".into()
            }
        );
        assert_eq!(
            out[n - 1],
            ProbeOutcome::Rejected {
                detail: "icmp port-unreachable from 127.0.0.1".into()
            }
        );
        // The failing cells ran for the window, not the deadline.
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");

        // Ok cells alone return at once.
        let t0 = Instant::now();
        let ok_only = &cells[..cells.len() / 2 - 1];
        assert!(probe(ok_only, &quick())
            .unwrap()
            .iter()
            .all(|o| *o == ProbeOutcome::Ok));
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );

        listener.stop().unwrap();
        assert_eq!(count_fds(), fds, "fds leaked");
        // The serving thread is gone (other tests may run threads concurrently, so
        // only check we are not above where we started).
        assert!(count_threads() <= threads + 4);
    }

    #[test]
    fn expect_ok_waits_until_the_deadline() {
        let _serial = serial();
        let dst = SocketAddr::from(([127, 0, 0, 1], free_port(Transport::Tcp)));
        let timing = ProbeTiming {
            deadline: Duration::from_millis(400),
            window: Duration::from_millis(100),
            interval: Duration::from_millis(50),
            adaptive: false,
        };
        let t0 = Instant::now();
        let out = probe(
            &[TransportCell {
                dst,
                proto: Transport::Tcp,
                expect_ok: true,
            }],
            &timing,
        )
        .unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(400));
        assert_eq!(out[0].detail(), Some("tcp rst"));
    }

    #[test]
    fn listener_comes_up_during_the_deadline() {
        let _serial = serial();
        // Bind late: an expect_ok cell keeps retrying after fast failures.
        let port = free_port(Transport::Tcp);
        let dst = SocketAddr::from(([127, 0, 0, 1], port));
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            Listener::bind(&[(Transport::Tcp, dst), (Transport::Udp, dst)]).unwrap()
        });
        let t0 = Instant::now();
        let out = probe(
            &[
                TransportCell {
                    dst,
                    proto: Transport::Tcp,
                    expect_ok: true,
                },
                TransportCell {
                    dst,
                    proto: Transport::Udp,
                    expect_ok: true,
                },
            ],
            &quick(),
        )
        .unwrap();
        assert_eq!(out, vec![ProbeOutcome::Ok, ProbeOutcome::Ok]);
        assert!(t0.elapsed() < Duration::from_millis(1000));
        late.join().unwrap().stop().unwrap();
    }

    #[test]
    fn drop_stops_the_listener() {
        let _serial = serial();
        let fds = count_fds();
        let l = Listener::bind(&[(Transport::Udp, "127.0.0.1:0".parse().unwrap())]).unwrap();
        let addr = l.local_addrs()[0].1;
        drop(l);
        assert_eq!(count_fds(), fds);
        // The port is free again.
        UdpSocket::bind(addr).unwrap();
    }

    #[test]
    fn bind_errors_name_the_address() {
        let _serial = serial();
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Listener::bind(&[(Transport::Tcp, addr)]).unwrap_err();
        assert!(matches!(err, TransportError::BindTcp { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("bind a tcp listener on {addr}"));
    }
}
