//! The capture of one network namespace: one thread inside it, holding one libpcap
//! handle on Linux's `any` device and one rtnetlink socket for link events.
//!
//! Why `any` and not one handle per interface: libpcap refuses to open an interface
//! that is down ("That device is not up"), and links are created down, so a capture
//! per interface opened at creation is impossible, and one opened when the link
//! comes up races its first packets. A socket on `any` is bound to no interface: it
//! sees every packet of every interface of its namespace from the moment it is
//! opened, including interfaces that are created, moved in or brought up later, and
//! libpcap tags each packet with the index of its interface (`LINKTYPE_LINUX_SLL2`).
//! The thread splits the stream by interface index into one file per interface; the
//! netlink socket only names the interfaces (first name seen) and says when one is
//! gone, so that its file is closed. A packet of an interface netlink has not
//! reported yet is named by `if_indextoname` on the spot.
//!
//! The kernel fills a ring of blocks and hands a block over when it is full or
//! [`BLOCK_TIMEOUT_MS`] old (TPACKET_V3): packets reach the thread a few
//! milliseconds late, and a flood costs one wakeup per block. How far behind the
//! thread is, is known exactly: the kernel counts every packet it queued into the
//! ring (`PACKET_STATISTICS`), so [`Command::Sync`] reads until the thread has seen
//! that many (see [`NetnsCapture::catch_up`]): no clock and no fixed delay decide
//! what was captured before a point in time.
//! The thread sleeps in `poll(2)` on the capture socket, the netlink socket and its
//! [`Mailbox`] of [`Command`]s, so it costs nothing while nothing happens. It ends on
//! [`Command::Stop`] (or when every mailbox is dropped), after reading what is left
//! in the ring and closing every file.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use pcap::{Active, BpfProgram, Dead, Linktype, Precision, Savefile};

use super::error::CaptureError;
use super::links::{LinkEvent, LinkSocket};
use super::mailbox::{mailbox, Inbox, Mailbox, Received};
use super::session::{IfaceLog, NetnsStats, Shared};
use super::sll2::Sll2Frame;
use super::summary::summarize_ether_payload;

/// Size of the kernel ring of each namespace: 32 blocks of 256 KiB, which libpcap
/// packs with whole packets (no snapshot length is set: packets are kept whole).
/// Blocks are handed over at least every [`BLOCK_TIMEOUT_MS`], so the ring absorbs
/// at least 32 × 4 ms = 128 ms of the thread falling behind (more when blocks
/// fill up first): enough for a `ping -f` in a debug build on a busy 2-core machine.
pub const BUFFER_SIZE: i32 = 8 << 20;
/// The kernel hands a block of the ring over when it is full or when it has been
/// open this long: packets reach the thread in batches, at most a few milliseconds
/// late, and a flood costs one wakeup per block rather than one per packet.
/// (`immediate_mode` would wake the thread for every packet: under `ping -f` that
/// made the ping twice as slow as this.)
const BLOCK_TIMEOUT_MS: i32 = 4;
/// How long [`NetnsCapture::catch_up`] waits at most for the kernel to hand over
/// the packets it has counted (normally one or two block timeouts: under 10 ms).
/// Earlier versions waited a fixed 50 ms after a mark and compared the kernel's
/// timestamps with the runner's clock: a CI machine missed a ping that way (its
/// packets were in the file, not in the window), and every checkpoint paid 50 ms.
pub const CATCH_UP_DEADLINE: Duration = Duration::from_secs(2);
/// libpcap drops the outgoing copy of every packet on `lo` (it sees each one twice)
/// after the kernel counted it; `lo` is interface 1 in every namespace.
const LO_IFINDEX: u32 = 1;
const PACKET_OUTGOING: u8 = 4;
/// Packets handled per wakeup before link events and commands get a turn.
const BATCH: usize = 256;

/// What the rest of the capture can ask a namespace's thread.
pub enum Command {
    /// Read everything the kernel has captured so far (exactly: see
    /// [`NetnsCapture::catch_up`]), flush the files, then answer.
    Sync(mpsc::Sender<()>),
    /// Answer with the kernel's packet counters.
    Stats(mpsc::Sender<NetnsStats>),
    /// Read what is left, close the files and end.
    Stop,
}

/// What one namespace's thread captures.
#[derive(Debug, Clone)]
pub struct NetnsPlan {
    pub name: String,
    /// The order this capture started in, among the capture's namespaces (it tells
    /// apart the captures of a namespace deleted and added again).
    pub rank: u32,
    /// Capture every interface, not only `targets`.
    pub all: bool,
    /// Interfaces to capture (by name) and their filters.
    pub targets: Vec<(String, Option<String>)>,
}

impl NetnsPlan {
    /// Whether an interface of that name is captured, and with which filter.
    fn wants(&self, iface: &str) -> Option<Option<&str>> {
        match self.targets.iter().find(|(n, _)| n == iface) {
            Some((_, f)) => Some(f.as_deref()),
            None if self.all => Some(None),
            None => None,
        }
    }
}

/// A running namespace thread.
pub struct NetnsThread {
    pub name: String,
    pub rank: u32,
    commands: Mailbox<Command>,
    /// Until the thread said whether its capture started.
    ready: Option<mpsc::Receiver<Result<(), CaptureError>>>,
    /// Says when the thread has closed its files, before it closes its capture
    /// socket (which waits for an RCU grace period: 10–40 ms here).
    done: mpsc::Receiver<()>,
    thread: JoinHandle<()>,
}

impl NetnsThread {
    /// Start capturing in the namespace `netns` (an open namespace file).
    pub fn spawn(
        netns: OwnedFd,
        plan: NetnsPlan,
        shared: Arc<Shared>,
    ) -> Result<NetnsThread, CaptureError> {
        let (commands, inbox) = mailbox().map_err(CaptureError::SpawnThread)?;
        let (ready_tx, ready) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let name = plan.name.clone();
        let rank = plan.rank;
        let thread = thread::Builder::new()
            .name(format!("cap-{name}"))
            .spawn(move || thread_main(netns, plan, shared, inbox, ready_tx, done_tx))
            .map_err(CaptureError::SpawnThread)?;
        Ok(NetnsThread {
            name,
            rank,
            commands,
            ready: Some(ready),
            done,
            thread,
        })
    }

    pub fn commands(&self) -> Mailbox<Command> {
        self.commands.clone()
    }

    /// Wait until the capture has started (every interface that exists now is being
    /// captured) or failed to.
    pub fn wait_ready(&mut self) -> Result<(), CaptureError> {
        match self.ready.take().map(|rx| rx.recv()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(CaptureError::ThreadGone {
                netns: self.name.clone(),
            }),
        }
    }

    /// Whether the capture has started, without waiting: `None` if it is starting.
    pub fn check_ready(&mut self) -> Option<Result<(), CaptureError>> {
        let rx = self.ready.as_ref()?;
        let r = match rx.try_recv() {
            Ok(r) => r,
            Err(mpsc::TryRecvError::Empty) => return None,
            Err(mpsc::TryRecvError::Disconnected) => Err(CaptureError::ThreadGone {
                netns: self.name.clone(),
            }),
        };
        self.ready = None;
        Some(r)
    }

    /// Ask the thread to stop (it reads what is left and closes its files).
    pub fn request_stop(&self) {
        self.commands.send(Command::Stop);
    }

    /// Wait until the thread has closed its files (or ended), and hand over the
    /// thread, which still closes its capture socket.
    pub fn finish(self) -> JoinHandle<()> {
        let _ = self.done.recv();
        self.thread
    }
}

fn thread_main(
    netns: OwnedFd,
    plan: NetnsPlan,
    shared: Arc<Shared>,
    inbox: Inbox<Command>,
    ready: mpsc::Sender<Result<(), CaptureError>>,
    done: mpsc::Sender<()>,
) {
    if let Err(source) = setns(netns.as_fd(), CloneFlags::CLONE_NEWNET) {
        let _ = ready.send(Err(CaptureError::EnterNetns {
            netns: plan.name.clone(),
            source,
        }));
        return;
    }
    drop(netns);
    let name = plan.name.clone();
    let (mut ns, mut cap, mut links) = match NetnsCapture::open(plan, shared.clone()) {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    // Tell the step's shell that this namespace is being captured (see
    // `CAPTURING_DIR`): a script that creates a namespace and uses it at once waits
    // for this before its next command.
    let marker = std::path::Path::new(CAPTURING_DIR).join(&name);
    let _ = std::fs::create_dir_all(CAPTURING_DIR);
    let _ = std::fs::write(&marker, b"");
    if let Err(e) = ns.run(&mut cap, &mut links, inbox) {
        shared.error(e);
    }
    ns.finish(&mut cap);
    let _ = std::fs::remove_file(&marker);
    let _ = done.send(());
    drop(links);
    drop(cap);
}

/// Where a namespace's capture leaves a file named after the namespace once it is
/// capturing (inside the sandbox's private /run).
pub const CAPTURING_DIR: &str = "/run/netscenario/capturing";

/// One interface of the namespace, captured or not.
struct Iface {
    /// `None` for interfaces that are not captured.
    out: Option<IfaceOut>,
}

struct IfaceOut {
    log: Arc<IfaceLog>,
    file: Savefile,
    filter: Option<BpfProgram>,
    path: PathBuf,
}

/// A listing of the links in progress: after an overrun (lost events), links that
/// are not listed any more are gone.
#[derive(Default)]
struct Listing {
    seen: Vec<u32>,
    /// Events were lost during the listing, maybe some of its own: list again.
    spoiled: bool,
}

struct NetnsCapture {
    plan: NetnsPlan,
    shared: Arc<Shared>,
    /// Makes the per-interface files (same link type and precision as the capture)
    /// and compiles filters.
    dead: pcap::Capture<Dead>,
    ifaces: HashMap<u32, Iface>,
    next_attach: u32,
    /// The listing of links in progress, if any.
    listing: Option<Listing>,
    /// Packets libpcap handed over, and how many of them came in on `lo` (each
    /// stands for its outgoing copy, which the kernel counted and libpcap dropped).
    handed: u64,
    lo_in: u64,
}

impl NetnsCapture {
    /// Open the capture, then the link socket, list the links and name them.
    fn open(
        plan: NetnsPlan,
        shared: Arc<Shared>,
    ) -> Result<(Self, pcap::Capture<Active>, LinkSocket), CaptureError> {
        let netns = plan.name.clone();
        let pcap_err = |source| CaptureError::OpenPcap {
            netns: netns.clone(),
            source,
        };
        // First the capture: from here on nothing any interface sends or receives is
        // missed, whatever netlink says and when.
        let mut cap = pcap::Capture::from_device("any")
            .map_err(pcap_err)?
            .timeout(BLOCK_TIMEOUT_MS)
            .buffer_size(BUFFER_SIZE)
            .precision(Precision::Nano)
            .open()
            .map_err(pcap_err)?;
        cap.set_datalink(Linktype::LINUX_SLL2).map_err(pcap_err)?;
        let cap = cap.setnonblock().map_err(pcap_err)?;
        let dead = pcap::Capture::dead_with_precision(Linktype::LINUX_SLL2, Precision::Nano)
            .map_err(pcap_err)?;

        let nl_err = |source| CaptureError::NetlinkSocket {
            netns: netns.clone(),
            source,
        };
        let mut sock = LinkSocket::open().map_err(nl_err)?;
        let mut ns = NetnsCapture {
            plan,
            shared,
            dead,
            ifaces: HashMap::new(),
            next_attach: 0,
            listing: None,
            handed: 0,
            lo_in: 0,
        };
        ns.list_links_blocking(&mut sock)?;
        sock.set_nonblocking(true).map_err(nl_err)?;
        Ok((ns, cap, sock))
    }

    /// List the links and wait for the end of the listing (the socket is blocking).
    fn list_links_blocking(&mut self, sock: &mut LinkSocket) -> Result<(), CaptureError> {
        let netns = self.plan.name.clone();
        let err = |source| CaptureError::ListLinks {
            netns: netns.clone(),
            source,
        };
        self.listing = Some(Listing::default());
        sock.request_listing().map_err(err)?;
        let mut events = Vec::new();
        while self.listing.is_some() {
            events.clear();
            sock.recv(&mut events).map_err(err)?;
            // No packet is read during the listing, so a deletion needs no drain.
            if self.apply(&events, None) {
                sock.request_listing().map_err(err)?;
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        cap: &mut pcap::Capture<Active>,
        links: &mut LinkSocket,
        inbox: Inbox<Command>,
    ) -> Result<(), CaptureError> {
        let mut events = Vec::new();
        loop {
            let (packets, link_events, commands) = {
                let mut fds = [
                    PollFd::new(cap.as_fd(), PollFlags::POLLIN),
                    PollFd::new(links.as_fd(), PollFlags::POLLIN),
                    PollFd::new(inbox.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(self.event_err(e.into())),
                }
                let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]))
            };
            if commands {
                loop {
                    match inbox.try_next() {
                        Received::Message(Command::Sync(reply)) => {
                            self.catch_up(cap, Instant::now() + CATCH_UP_DEADLINE)?;
                            self.flush();
                            let _ = reply.send(());
                        }
                        Received::Message(Command::Stats(reply)) => {
                            let _ = reply.send(self.stats(cap));
                        }
                        Received::Message(Command::Stop) | Received::Closed => return Ok(()),
                        Received::Empty => break,
                    }
                }
            }
            if link_events {
                loop {
                    events.clear();
                    match links.recv(&mut events) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(source) => {
                            return Err(CaptureError::LinkEvents {
                                netns: self.plan.name.clone(),
                                source,
                            })
                        }
                    }
                    if self.apply(&events, Some(cap)) {
                        links
                            .request_listing()
                            .map_err(|source| CaptureError::ListLinks {
                                netns: self.plan.name.clone(),
                                source,
                            })?;
                    }
                }
            }
            if packets {
                self.read_batch(cap)?;
            }
        }
    }

    fn event_err(&self, source: io::Error) -> CaptureError {
        CaptureError::Poll {
            netns: self.plan.name.clone(),
            source,
        }
    }

    /// Handle the next packet in the ring; `false` when the ring is empty.
    fn read_one(&mut self, cap: &mut pcap::Capture<Active>) -> Result<bool, CaptureError> {
        match cap.next_packet() {
            Ok(p) => {
                self.on_packet(&p);
                Ok(true)
            }
            // A non-blocking read that found nothing.
            Err(pcap::Error::TimeoutExpired) => Ok(false),
            Err(source) => Err(CaptureError::ReadPcap {
                netns: self.plan.name.clone(),
                source,
            }),
        }
    }

    /// Handle up to [`BATCH`] packets, fewer if the ring empties first.
    fn read_batch(&mut self, cap: &mut pcap::Capture<Active>) -> Result<(), CaptureError> {
        for _ in 0..BATCH {
            if !self.read_one(cap)? {
                break;
            }
        }
        Ok(())
    }

    /// Handle every packet in the ring now.
    fn drain(&mut self, cap: &mut pcap::Capture<Active>) -> Result<(), CaptureError> {
        while self.read_one(cap)? {}
        Ok(())
    }

    /// Read until every packet the kernel had queued into the ring when this was
    /// called has been handled (or until `deadline`). The kernel counts a packet
    /// when it queues it, before the block holding it is handed over; whatever was
    /// sent or received before the call is in that count. Returns whether it caught
    /// up before the deadline.
    fn catch_up(
        &mut self,
        cap: &mut pcap::Capture<Active>,
        deadline: Instant,
    ) -> Result<bool, CaptureError> {
        let s = self.stats(cap);
        let queued = u64::from(s.received.saturating_sub(s.dropped));
        loop {
            self.drain(cap)?;
            // `handed` is a u64 and the kernel's counters are u32 in libpcap: compare
            // modulo 2^32, as they wrap.
            let seen = (self.handed + self.lo_in) as u32 as u64;
            if seen.wrapping_sub(queued) as u32 as i32 >= 0 {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let mut fds = [PollFd::new(cap.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(self.event_err(e.into())),
            }
        }
    }

    fn on_packet(&mut self, p: &pcap::Packet<'_>) {
        self.handed += 1;
        let Some(frame) = Sll2Frame::parse(p.data) else {
            return;
        };
        if frame.ifindex == LO_IFINDEX && frame.pkttype != PACKET_OUTGOING {
            self.lo_in += 1;
        }
        if !self.ifaces.contains_key(&frame.ifindex) {
            // Seen before netlink told us about it: ask the kernel its name now.
            let name = nix::net::if_::if_indextoname(frame.ifindex)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("if{}", frame.ifindex));
            self.attach(frame.ifindex, &name);
        }
        let Some(Iface { out: Some(out) }) = self.ifaces.get_mut(&frame.ifindex) else {
            return;
        };
        if let Some(f) = &out.filter {
            if !f.filter(p.data) {
                return;
            }
        }
        out.file.write(p);
        let ts = p.header.ts;
        let ts_ns = (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_usec as u64);
        out.log.push(
            ts_ns,
            summarize_ether_payload(frame.protocol, frame.payload),
        );
    }

    /// Apply link events; `cap` is drained before a link's file is closed, so that
    /// its last packets (captured before the deletion was reported) land in it.
    /// Returns whether the links must be listed (again).
    fn apply(&mut self, events: &[LinkEvent], mut cap: Option<&mut pcap::Capture<Active>>) -> bool {
        let mut relist = false;
        for e in events {
            match e {
                LinkEvent::New { index, name } => {
                    if let Some(l) = &mut self.listing {
                        l.seen.push(*index);
                    }
                    match self.ifaces.get(index) {
                        None => self.attach(*index, name),
                        // Renamed into a target's name: capture it from now on.
                        Some(Iface { out: None }) if self.plan.wants(name).is_some() => {
                            self.ifaces.remove(index);
                            self.attach(*index, name);
                        }
                        // Known: a rename or a state change. The file keeps its name.
                        Some(_) => {}
                    }
                }
                LinkEvent::Gone { index } => {
                    if let Some(cap) = cap.as_deref_mut() {
                        if let Err(e) = self.drain(cap) {
                            self.shared.error(e);
                        }
                    }
                    self.detach(*index);
                }
                LinkEvent::ListingDone => match self.listing.take() {
                    Some(l) if l.spoiled => {
                        self.listing = Some(Listing::default());
                        relist = true;
                    }
                    Some(l) => {
                        let gone: Vec<u32> = self
                            .ifaces
                            .keys()
                            .filter(|i| !l.seen.contains(i))
                            .copied()
                            .collect();
                        for index in gone {
                            self.detach(index);
                        }
                    }
                    None => {}
                },
                LinkEvent::ListingFailed => {
                    self.listing = Some(Listing::default());
                    relist = true;
                }
                LinkEvent::Overrun => match &mut self.listing {
                    // The listing ends first (a second one cannot start meanwhile).
                    Some(l) => l.spoiled = true,
                    None => {
                        self.listing = Some(Listing::default());
                        relist = true;
                    }
                },
            }
        }
        relist
    }

    /// Start recording interface `index`, named `name`, if the plan wants it.
    fn attach(&mut self, index: u32, name: &str) {
        let wanted = self.plan.wants(name).map(|f| f.map(str::to_string));
        let out = match wanted {
            None => None,
            Some(filter) => match self.open_out(index, name, filter.as_deref()) {
                Ok(out) => Some(out),
                Err(e) => {
                    self.shared.error(e);
                    None
                }
            },
        };
        self.ifaces.insert(index, Iface { out });
    }

    fn open_out(
        &mut self,
        index: u32,
        name: &str,
        filter: Option<&str>,
    ) -> Result<IfaceOut, CaptureError> {
        let filter = match filter {
            None => None,
            Some(f) => Some(
                self.dead
                    .compile(f, true)
                    .map_err(|source| CaptureError::Filter {
                        netns: self.plan.name.clone(),
                        iface: name.to_string(),
                        filter: f.to_string(),
                        source,
                    })?,
            ),
        };
        let path = self.shared.reserve_path(&self.plan.name, name);
        let file = self
            .dead
            .savefile(&path)
            .map_err(|source| CaptureError::CreateFile {
                path: path.clone(),
                source,
            })?;
        let attach = self.next_attach;
        self.next_attach += 1;
        let log = self
            .shared
            .register(&self.plan.name, self.plan.rank, attach, index, name, &path);
        Ok(IfaceOut {
            log,
            file,
            filter,
            path,
        })
    }

    /// Close interface `index`'s file (the link is gone).
    fn detach(&mut self, index: u32) {
        if let Some(Iface { out: Some(out) }) = self.ifaces.remove(&index) {
            self.close(out);
        }
    }

    fn close(&self, mut out: IfaceOut) {
        if let Err(source) = out.file.flush() {
            self.shared.error(CaptureError::FlushFile {
                path: out.path.clone(),
                source,
            });
        }
        drop(out);
    }

    fn flush(&mut self) {
        let mut failures = Vec::new();
        for iface in self.ifaces.values_mut() {
            if let Some(out) = &mut iface.out {
                if let Err(source) = out.file.flush() {
                    failures.push(CaptureError::FlushFile {
                        path: out.path.clone(),
                        source,
                    });
                }
            }
        }
        for f in failures {
            self.shared.error(f);
        }
    }

    fn stats(&self, cap: &mut pcap::Capture<Active>) -> NetnsStats {
        let (received, dropped, if_dropped) = match cap.stats() {
            Ok(s) => (s.received, s.dropped, s.if_dropped),
            Err(source) => {
                self.shared.error(CaptureError::Stats {
                    netns: self.plan.name.clone(),
                    source,
                });
                (0, 0, 0)
            }
        };
        NetnsStats {
            netns: self.plan.name.clone(),
            received,
            dropped,
            if_dropped,
        }
    }

    /// Read what is left (waiting for the kernel to hand over its last block),
    /// record the counters and close every file.
    fn finish(mut self, cap: &mut pcap::Capture<Active>) {
        if let Err(e) = self.catch_up(cap, Instant::now() + CATCH_UP_DEADLINE) {
            self.shared.error(e);
        }
        let stats = self.stats(cap);
        self.shared.final_stats(self.plan.rank, stats);
        let ifaces: Vec<Iface> = self.ifaces.drain().map(|(_, i)| i).collect();
        for iface in ifaces {
            if let Some(out) = iface.out {
                self.close(out);
            }
        }
    }
}
