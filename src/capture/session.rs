//! [`Capture`]: one capture of a sandbox, from [`Capture::start`] to
//! [`Capture::stop`], and what it records.
//!
//! Every captured interface gets its own pcap file, `<netns>-<iface>.pcap` in the
//! output directory, written as packets arrive and flushed at [`Capture::stop`] (and
//! whenever [`Capture::between`] asks). An interface is identified by its namespace
//! and index, so a renamed link stays in the file named after the first name it was
//! seen with; a link deleted or moved to another namespace has its file closed there,
//! and a link that appears again (moved back, or a new link reusing a name) gets a
//! new file, `<netns>-<iface>-2.pcap` and so on. Files are recorded with link type
//! `LINUX_SLL2` (see [the capture module](super) for why): `tcpdump -r` and Wireshark
//! read them and show each packet's direction and its sender's MAC address, but not
//! the Ethernet header itself (no destination MAC). The interface name tcpdump
//! prints next to each packet is whatever has that packet's interface index where
//! tcpdump runs: the file's name is the one to believe.
//!
//! For reports, each packet is also kept in memory as its one-line
//! [summary](super::summary) and its kernel timestamp, so that [`Capture::between`]
//! can list what every interface saw between two [`Mark`]s.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::CaptureError;
use super::mailbox::Mailbox;
use super::netns::Command;
use super::watch::{self, WatchCommand, WatchPlan};
use crate::sandbox::Sandbox;
use crate::scenario::HOST;

/// How long [`Capture::between`] and [`Capture::stats`] wait for the namespaces'
/// threads to answer before giving what they have.
const ANSWER_DEADLINE: Duration = Duration::from_secs(2);

/// What to capture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureSpec {
    /// Every interface of every namespace of the sandbox (`host` and those under
    /// `/run/netns`), whenever it appears; `targets` then only add filters.
    pub all: bool,
    /// Interfaces to capture (with `all`, interfaces whose filter differs).
    pub targets: Vec<CaptureTarget>,
}

/// One interface to capture: in namespace `netns`, the link named `iface` (the name
/// it has when it appears, or any name it is renamed to later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureTarget {
    pub netns: String,
    pub iface: String,
    /// A pcap-filter(7) expression (`arp or icmp`); only matching packets are kept.
    pub filter: Option<String>,
}

/// A point in the capture's timeline: a position in the order packets were handed
/// over by the kernel, taken once every namespace's thread has read all that the
/// kernel had captured (no clock is involved: a clock set back or forward, as on a
/// CI machine that syncs its clock at boot, moves no packet across a mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark(u64);

/// One packet seen on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketLine {
    pub netns: String,
    /// The interface's first name.
    pub iface: String,
    /// The packet's [summary](super::summary).
    pub summary: String,
    /// The packet's number in its interface's file (the first is 1), as tcpdump and
    /// Wireshark count them.
    pub seq: u64,
    /// When the kernel stamped it (CLOCK_REALTIME, ns): orders packets across
    /// interfaces.
    pub ts_ns: u64,
    /// Arrival order in the capture, for packets with the same timestamp (the same
    /// frame seen at several interfaces of a namespace).
    pub order: u64,
}

/// A pcap file written by a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapFile {
    pub netns: String,
    /// The interface's first name.
    pub iface: String,
    pub path: PathBuf,
    /// Packets written to the file.
    pub packets: u64,
}

/// The kernel's counters of one namespace's capture (all its interfaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsStats {
    pub netns: String,
    /// Packets the capture socket received.
    pub received: u32,
    /// Packets lost because the capture's buffer was full.
    pub dropped: u32,
    /// Packets the interfaces dropped (not counted for virtual interfaces).
    pub if_dropped: u32,
}

/// Everything a capture leaves when it stops.
#[derive(Debug)]
pub struct CaptureReport {
    pub files: Vec<PcapFile>,
    /// One entry per namespace captured: `host` first, then by name.
    pub stats: Vec<NetnsStats>,
    /// What went wrong after [`Capture::start`] returned (a file that could not be
    /// written, a namespace whose capture could not start, ...).
    pub errors: Vec<CaptureError>,
    /// The capture's threads, closing their sockets (see [`Closing`]).
    pub closing: Closing,
}

/// Threads of a stopped capture that are closing their capture sockets: the files
/// are complete, but the kernel waits for an RCU grace period on each close (10–40
/// ms on a 2-core VM), so the runner keeps this while it does something else, and
/// dropping it waits for them.
#[derive(Default)]
pub struct Closing(Vec<JoinHandle<()>>);

impl Drop for Closing {
    fn drop(&mut self) {
        for h in self.0.drain(..) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Closing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Closing({} threads)", self.0.len())
    }
}

/// A running capture. Dropping it stops it like [`Capture::stop`].
pub struct Capture {
    shared: Arc<Shared>,
    /// Dropping it stops the watcher of `/run/netns`, which stops everything.
    watch: Option<Mailbox<WatchCommand>>,
    watcher: Option<JoinHandle<()>>,
}

impl Capture {
    /// Start capturing in a sandbox, as `spec` says, into files under `out_dir`
    /// (created if needed). When it returns, every interface that exists is being
    /// captured, and interfaces that appear later in a captured namespace are
    /// captured from their first packet on. A namespace created later is captured
    /// from about 10–30 ms after `ip netns add` (libpcap's setup waits for the
    /// kernel); [`Capture::settle`] waits for that.
    ///
    /// It must be called on the sandbox thread or a thread it spawned: the capture
    /// watches the sandbox's own `/run/netns`. Stop or drop the capture before the
    /// sandbox ends: its threads hold the sandbox's namespaces.
    pub fn start(
        sandbox: &Sandbox,
        spec: &CaptureSpec,
        out_dir: &Path,
    ) -> Result<Capture, CaptureError> {
        std::fs::create_dir_all(out_dir).map_err(|source| CaptureError::CreateDir {
            path: out_dir.to_path_buf(),
            source,
        })?;
        let plan = WatchPlan::new(spec)?;
        let host = if plan.wants(HOST) {
            Some(
                sandbox
                    .netns_fd(HOST)
                    .map_err(|source| CaptureError::OpenNetns {
                        netns: HOST.into(),
                        source,
                    })?,
            )
        } else {
            None
        };
        let shared = Arc::new(Shared::new(out_dir));
        let (watch, watcher, ready) = watch::spawn(plan, host, shared.clone())?;
        let mut capture = Capture {
            shared,
            watch: Some(watch),
            watcher: Some(watcher),
        };
        match ready.recv() {
            Ok(Ok(())) => Ok(capture),
            Ok(Err(e)) => {
                capture.shutdown();
                Err(e)
            }
            Err(_) => {
                capture.shutdown();
                Err(CaptureError::ThreadGone {
                    netns: "/run/netns watcher".into(),
                })
            }
        }
    }

    /// Make sure every namespace that exists now is being captured: start the
    /// captures of namespaces created since the watcher last looked, and wait until
    /// they have all started. A namespace's capture starts by itself 10–30 ms after
    /// `ip netns add`; a runner calls this after a step that may have created
    /// namespaces, so that every packet of the next step is captured.
    pub fn settle(&self) {
        let Some(watch) = &self.watch else { return };
        let (tx, rx) = mpsc::channel();
        if watch.send(WatchCommand::Settle(tx)) {
            let _ = rx.recv_timeout(ANSWER_DEADLINE);
        }
    }

    /// The current point in the capture's timeline: every packet any captured
    /// interface sent or received before this call is before the mark. It costs a
    /// round trip to every namespace's thread, plus the wait for the kernel to hand
    /// over its last block if packets are pending (a block timeout, a few ms).
    pub fn mark(&self) -> Mark {
        self.sync();
        Mark(ARRIVAL.load(Ordering::SeqCst))
    }

    /// The packets seen from `from` (included) to `to` (excluded) on every captured
    /// interface, interface by interface (`host` first, then the other namespaces by
    /// name; within a namespace, links in the order they were created or moved in,
    /// i.e. by index), each interface's packets in the order they were captured.
    pub fn between(&self, from: Mark, to: Mark) -> Vec<PacketLine> {
        let mut out = Vec::new();
        for iface in self.shared.ifaces_in_order() {
            let packets = iface.lock();
            for (i, p) in packets.packets.iter().enumerate() {
                if p.order >= from.0 && p.order < to.0 {
                    out.push(PacketLine {
                        netns: iface.netns.clone(),
                        iface: iface.iface.clone(),
                        summary: p.summary.clone(),
                        seq: i as u64 + 1,
                        ts_ns: p.ts_ns,
                        order: p.order,
                    });
                }
            }
        }
        out
    }

    /// The kernel's counters of every namespace being captured now.
    pub fn stats(&self) -> Vec<NetnsStats> {
        self.ask_all(Command::Stats)
    }

    /// Errors that happened after [`Capture::start`] returned, taken out.
    pub fn take_errors(&self) -> Vec<CaptureError> {
        std::mem::take(&mut *lock(&self.shared.errors))
    }

    /// Stop every capture, flush and close the files, and return them.
    pub fn stop(self) -> Vec<PcapFile> {
        self.stop_report().files
    }

    /// Stop like [`Capture::stop`], and also return the kernel's counters and the
    /// errors that were not taken yet.
    pub fn stop_report(mut self) -> CaptureReport {
        let closing = self.shutdown_closing();
        let files = self
            .shared
            .ifaces_in_order()
            .iter()
            .map(|i| PcapFile {
                netns: i.netns.clone(),
                iface: i.iface.clone(),
                path: i.path.clone(),
                packets: i.lock().packets.len() as u64,
            })
            .collect();
        let mut stats = std::mem::take(&mut *lock(&self.shared.stats));
        stats.sort_by(|(ra, a), (rb, b)| {
            (a.netns != HOST, &a.netns, ra).cmp(&(b.netns != HOST, &b.netns, rb))
        });
        CaptureReport {
            files,
            stats: stats.into_iter().map(|(_, s)| s).collect(),
            errors: self.take_errors(),
            closing,
        }
    }

    /// Ask every live namespace thread to read what the kernel holds, and wait.
    fn sync(&self) {
        self.ask_all(Command::Sync);
    }

    /// Send every live namespace thread the command `make` builds around a reply
    /// channel, and collect the answers (those that come within the deadline).
    fn ask_all<T>(&self, make: impl Fn(mpsc::Sender<T>) -> Command) -> Vec<T> {
        let (tx, rx) = mpsc::channel();
        let mut asked = 0;
        for (_, commands) in self.shared.live() {
            if commands.send(make(tx.clone())) {
                asked += 1;
            }
        }
        drop(tx);
        let deadline = Instant::now() + ANSWER_DEADLINE;
        let mut out = Vec::new();
        for _ in 0..asked {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(a) => out.push(a),
                Err(_) => break,
            }
        }
        out
    }

    /// Stop the watcher, which stops every namespace's thread; wait for them all.
    fn shutdown(&mut self) {
        drop(self.shutdown_closing());
    }

    /// Stop the watcher and every namespace's thread; return the threads that are
    /// still closing their sockets.
    fn shutdown_closing(&mut self) -> Closing {
        drop(self.watch.take());
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        Closing(std::mem::take(&mut *lock(&self.shared.closing)))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// State shared by the capture's threads.
pub struct Shared {
    out_dir: PathBuf,
    ifaces: Mutex<Vec<Arc<IfaceLog>>>,
    paths: Mutex<HashSet<PathBuf>>,
    errors: Mutex<Vec<CaptureError>>,
    stats: Mutex<Vec<(u32, NetnsStats)>>,
    /// The namespaces being captured now: rank and command channel.
    live: Mutex<Vec<(u32, Mailbox<Command>)>>,
    /// Stopped namespace threads still closing their sockets.
    closing: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new(out_dir: &Path) -> Shared {
        Shared {
            out_dir: out_dir.to_path_buf(),
            ifaces: Mutex::new(Vec::new()),
            paths: Mutex::new(HashSet::new()),
            errors: Mutex::new(Vec::new()),
            stats: Mutex::new(Vec::new()),
            live: Mutex::new(Vec::new()),
            closing: Mutex::new(Vec::new()),
        }
    }

    pub fn closing(&self, thread: JoinHandle<()>) {
        lock(&self.closing).push(thread);
    }

    pub fn error(&self, e: CaptureError) {
        lock(&self.errors).push(e);
    }

    /// A file name for interface `iface` of `netns` that no other interface of this
    /// capture has: `<netns>-<iface>.pcap`, else `<netns>-<iface>-2.pcap`, ...
    pub fn reserve_path(&self, netns: &str, iface: &str) -> PathBuf {
        let mut paths = lock(&self.paths);
        for n in 1.. {
            let name = if n == 1 {
                format!("{netns}-{iface}.pcap")
            } else {
                format!("{netns}-{iface}-{n}.pcap")
            };
            let path = self.out_dir.join(name);
            if paths.insert(path.clone()) {
                return path;
            }
        }
        unreachable!("an unbounded range ends")
    }

    /// Record a newly captured interface.
    pub fn register(
        &self,
        netns: &str,
        netns_rank: u32,
        attach: u32,
        ifindex: u32,
        iface: &str,
        path: &Path,
    ) -> Arc<IfaceLog> {
        let log = Arc::new(IfaceLog {
            netns: netns.to_string(),
            netns_rank,
            attach,
            ifindex,
            iface: iface.to_string(),
            path: path.to_path_buf(),
            inner: Mutex::new(IfaceRecord::default()),
        });
        lock(&self.ifaces).push(log.clone());
        log
    }

    /// Every interface captured, in report order: `host` first, then namespaces by
    /// name (a namespace deleted and added again: in the order of their captures);
    /// within a namespace by index, i.e. in the order the links were created or
    /// moved in, which unlike the order the capture saw them does not depend on
    /// timing; a link whose capture restarted (it left and came back) after its
    /// earlier file.
    fn ifaces_in_order(&self) -> Vec<Arc<IfaceLog>> {
        let mut v = lock(&self.ifaces).clone();
        v.sort_by(|a, b| {
            (a.netns != HOST, &a.netns, a.netns_rank, a.ifindex, a.attach).cmp(&(
                b.netns != HOST,
                &b.netns,
                b.netns_rank,
                b.ifindex,
                b.attach,
            ))
        });
        v
    }

    pub fn final_stats(&self, rank: u32, stats: NetnsStats) {
        lock(&self.stats).push((rank, stats));
    }

    pub fn add_live(&self, rank: u32, commands: Mailbox<Command>) {
        lock(&self.live).push((rank, commands));
    }

    pub fn remove_live(&self, rank: u32) {
        lock(&self.live).retain(|(r, _)| *r != rank);
    }

    fn live(&self) -> Vec<(u32, Mailbox<Command>)> {
        lock(&self.live).clone()
    }
}

/// What was captured on one interface.
pub struct IfaceLog {
    pub netns: String,
    netns_rank: u32,
    attach: u32,
    ifindex: u32,
    pub iface: String,
    pub path: PathBuf,
    inner: Mutex<IfaceRecord>,
}

#[derive(Default)]
struct IfaceRecord {
    packets: Vec<LoggedPacket>,
}

struct LoggedPacket {
    ts_ns: u64,
    order: u64,
    summary: String,
}

/// Arrival order of packets, across interfaces: one skb seen at several capture
/// points (a port, then its bridge) carries one timestamp, so the kernel's ts alone
/// cannot order them; the order they came out of the namespace's ring can.
static ARRIVAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl IfaceLog {
    pub fn push(&self, ts_ns: u64, summary: String) {
        let order = ARRIVAL.fetch_add(1, Ordering::SeqCst);
        lock(&self.inner).packets.push(LoggedPacket {
            ts_ns,
            order,
            summary,
        });
    }

    fn lock(&self) -> MutexGuard<'_, IfaceRecord> {
        lock(&self.inner)
    }
}
