//! The watcher of the sandbox's namespaces: it starts a capture thread for `host` and
//! for each namespace under `/run/netns` as soon as it exists, and stops it when the
//! namespace is deleted.
//!
//! `ip netns add X` creates the file `/run/netns/X`, then bind-mounts the new
//! namespace on it. The mount is the moment the namespace can be entered, and mounts
//! are what the watcher waits for: `/proc/thread-self/mountinfo` polls as readable
//! with `POLLPRI` whenever the mount table of the watcher's mount namespace (the
//! sandbox's) changes. It then lists `/run/netns` and compares with what it runs: a
//! new mounted entry starts a capture, a vanished (or replaced) one stops its
//! capture, so that the capture's sockets do not keep a deleted namespace alive.
//! This needs no inotify: a file creation alone would be too early anyway.
//!
//! A capture thread needs 10–30 ms to start (libpcap's ring setup waits for an RCU
//! grace period), so traffic in a namespace within milliseconds of its creation
//! (in the same shell step) can precede its capture; [`WatchCommand::Settle`] waits
//! until every namespace that exists is captured, for callers that can wait between
//! steps.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::error::CaptureError;
use super::mailbox::{mailbox, Inbox, Mailbox, Received};
use super::netns::{NetnsPlan, NetnsThread};
use super::session::{CaptureSpec, Shared};
use crate::sandbox::NETNS_DIR;
use crate::scenario::HOST;

/// The mount table of the calling thread's mount namespace.
const MOUNTINFO: &str = "/proc/thread-self/mountinfo";
/// Look at `/run/netns` at least this often even without a mount event.
const RESCAN_MS: u16 = 1000;

/// Which namespaces and interfaces a capture wants.
#[derive(Debug, Clone)]
pub struct WatchPlan {
    all: bool,
    /// Per namespace: interface names and filters.
    targets: BTreeMap<String, Vec<(String, Option<String>)>>,
}

impl WatchPlan {
    /// Check the spec's filters and group its targets by namespace.
    pub fn new(spec: &CaptureSpec) -> Result<WatchPlan, CaptureError> {
        let dead = pcap::Capture::dead(pcap::Linktype::LINUX_SLL2).map_err(|source| {
            CaptureError::OpenPcap {
                netns: HOST.into(),
                source,
            }
        })?;
        let mut targets: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
        for t in &spec.targets {
            if let Some(f) = &t.filter {
                dead.compile(f, true)
                    .map_err(|source| CaptureError::Filter {
                        netns: t.netns.clone(),
                        iface: t.iface.clone(),
                        filter: f.clone(),
                        source,
                    })?;
            }
            targets
                .entry(t.netns.clone())
                .or_default()
                .push((t.iface.clone(), t.filter.clone()));
        }
        Ok(WatchPlan {
            all: spec.all,
            targets,
        })
    }

    pub fn wants(&self, netns: &str) -> bool {
        self.all || self.targets.contains_key(netns)
    }

    fn plan_for(&self, netns: &str, rank: u32) -> NetnsPlan {
        NetnsPlan {
            name: netns.to_string(),
            rank,
            all: self.all,
            targets: self.targets.get(netns).cloned().unwrap_or_default(),
        }
    }
}

/// What the capture can ask the watcher. Dropping every [`Mailbox`] of the watcher
/// stops it, and with it every capture thread.
pub enum WatchCommand {
    /// Capture every namespace that exists now, then answer once all their captures
    /// have started.
    Settle(mpsc::Sender<()>),
}

/// Identity of a mounted namespace file: a name can be deleted and added again.
type NetnsId = (u64, u64);

struct Watcher {
    plan: WatchPlan,
    shared: Arc<Shared>,
    /// Namespaces under `/run/netns` being captured (`host` is in `host`).
    running: BTreeMap<String, (NetnsId, NetnsThread)>,
    host: Option<NetnsThread>,
    next_rank: u32,
}

/// Start the watcher thread. It answers on the returned channel once every namespace
/// that exists now is being captured (or with the first failure).
#[allow(clippy::type_complexity)]
pub fn spawn(
    plan: WatchPlan,
    host: Option<OwnedFd>,
    shared: Arc<Shared>,
) -> Result<
    (
        Mailbox<WatchCommand>,
        JoinHandle<()>,
        mpsc::Receiver<Result<(), CaptureError>>,
    ),
    CaptureError,
> {
    let (commands, inbox) = mailbox().map_err(CaptureError::SpawnThread)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("cap-netns-watch".into())
        .spawn(move || {
            let mut w = Watcher {
                plan,
                shared,
                running: BTreeMap::new(),
                host: None,
                next_rank: 0,
            };
            match w.start_existing(host) {
                Ok(mountinfo) => {
                    let _ = ready_tx.send(Ok(()));
                    drop(ready_tx);
                    w.watch(&mountinfo, &inbox);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
            w.stop_all();
        })
        .map_err(CaptureError::SpawnThread)?;
    Ok((commands, handle, ready_rx))
}

impl Watcher {
    /// Capture `host` and every namespace that exists now, and wait until they are
    /// all ready.
    fn start_existing(&mut self, host: Option<OwnedFd>) -> Result<File, CaptureError> {
        // Opened before listing /run/netns, so that no later mount goes unnoticed.
        let mountinfo = File::open(MOUNTINFO).map_err(|source| CaptureError::WatchNetnsDir {
            dir: NETNS_DIR,
            source,
        })?;
        if let Some(fd) = host {
            let rank = self.rank();
            let t = NetnsThread::spawn(fd, self.plan.plan_for(HOST, rank), self.shared.clone())?;
            self.shared.add_live(rank, t.commands());
            self.host = Some(t);
        }
        for (name, id) in mounted_netns() {
            if self.plan.wants(&name) {
                self.start(&name, id)?;
            }
        }
        self.wait_all_ready()?;
        Ok(mountinfo)
    }

    /// Wait until every capture thread has started; the first failure.
    fn wait_all_ready(&mut self) -> Result<(), CaptureError> {
        let mut first = Ok(());
        for t in self
            .running
            .values_mut()
            .map(|(_, t)| t)
            .chain(self.host.as_mut())
        {
            if let Err(e) = t.wait_ready() {
                if first.is_ok() {
                    first = Err(e);
                } else {
                    self.shared.error(e);
                }
            }
        }
        first
    }

    /// Record the failures of capture threads that have finished starting.
    fn collect_failures(&mut self) {
        for t in self
            .running
            .values_mut()
            .map(|(_, t)| t)
            .chain(self.host.as_mut())
        {
            if let Some(Err(e)) = t.check_ready() {
                self.shared.error(e);
            }
        }
    }

    fn rank(&mut self) -> u32 {
        let r = self.next_rank;
        self.next_rank += 1;
        r
    }

    fn start(&mut self, name: &str, id: NetnsId) -> Result<(), CaptureError> {
        let path = Path::new(NETNS_DIR).join(name);
        let fd: OwnedFd = File::open(&path)
            .map_err(|source| CaptureError::OpenNetnsFile {
                path: path.clone(),
                source,
            })?
            .into();
        let rank = self.rank();
        let t = NetnsThread::spawn(fd, self.plan.plan_for(name, rank), self.shared.clone())?;
        self.shared.add_live(rank, t.commands());
        self.running.insert(name.to_string(), (id, t));
        Ok(())
    }

    /// Wait for mount events and commands, and follow `/run/netns`, until every
    /// mailbox of the watcher is dropped.
    fn watch(&mut self, mountinfo: &File, inbox: &Inbox<WatchCommand>) {
        loop {
            let (mounts, commands) = {
                let mut fds = [
                    PollFd::new(mountinfo.as_fd(), PollFlags::POLLPRI),
                    PollFd::new(inbox.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::from(RESCAN_MS)) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        self.shared.error(CaptureError::WatchNetnsDir {
                            dir: NETNS_DIR,
                            source: e.into(),
                        });
                        return;
                    }
                }
                let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            let mut settle = Vec::new();
            if commands {
                loop {
                    match inbox.try_next() {
                        Received::Message(WatchCommand::Settle(reply)) => settle.push(reply),
                        Received::Empty => break,
                        Received::Closed => return,
                    }
                }
            }
            // A timeout rescans too: cheap, and a safety net for missed events.
            if mounts || !commands || !settle.is_empty() {
                self.rescan();
            }
            if settle.is_empty() {
                self.collect_failures();
            } else {
                if let Err(e) = self.wait_all_ready() {
                    self.shared.error(e);
                }
                for reply in settle {
                    let _ = reply.send(());
                }
            }
        }
    }

    fn rescan(&mut self) {
        let now: BTreeMap<String, NetnsId> = mounted_netns()
            .into_iter()
            .filter(|(name, _)| self.plan.wants(name))
            .collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, (id, _))| now.get(*name) != Some(id))
            .map(|(name, _)| name.clone())
            .collect();
        let stale: Vec<NetnsThread> = stale
            .iter()
            .filter_map(|name| self.running.remove(name).map(|(_, t)| t))
            .collect();
        self.stop_threads(stale);
        for (name, id) in now {
            if !self.running.contains_key(&name) {
                if let Err(e) = self.start(&name, id) {
                    self.shared.error(e);
                }
            }
        }
    }

    fn stop_all(&mut self) {
        let mut all: Vec<NetnsThread> = std::mem::take(&mut self.running)
            .into_values()
            .map(|(_, t)| t)
            .collect();
        all.extend(self.host.take());
        self.stop_threads(all);
    }

    /// Stop threads all at once (each reads what is left and closes its files),
    /// then wait until their files are closed; the threads, still closing their
    /// capture sockets, go to [`Shared::closing`].
    fn stop_threads(&self, threads: Vec<NetnsThread>) {
        for t in &threads {
            self.shared.remove_live(t.rank);
            t.request_stop();
        }
        for mut t in threads {
            if let Some(Err(e)) = t.check_ready() {
                self.shared.error(e);
            }
            let handle = t.finish();
            self.shared.closing(handle);
        }
    }
}

/// The entries of `/run/netns` that have a namespace mounted on them, by name (a
/// file not mounted yet has the directory's device).
fn mounted_netns() -> Vec<(String, NetnsId)> {
    let Ok(dir) = std::fs::metadata(NETNS_DIR) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<(String, NetnsId)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            if name == HOST {
                // The scenario's `host` is the sandbox's own namespace, never this.
                return None;
            }
            let md = std::fs::metadata(e.path()).ok()?;
            (md.dev() != dir.dev()).then_some((name, (md.dev(), md.ino())))
        })
        .collect();
    out.sort();
    out
}
