//! A sandbox is a private world for one scenario run: a fresh network namespace (the
//! scenario's `host`), a private mount namespace with its own `/run` (so a tutorial's
//! `ip netns add` names nothing on the machine) and `/sys`, and a PID namespace for
//! every process a step starts.
//!
//! Teardown is the kernel's: nothing in the sandbox is referred to from outside the
//! runner, so when [`run`] returns, when the runner panics, or when it is killed (even
//! with SIGKILL), PID 1 of the sandbox dies, the kernel kills every process left in
//! it, and every namespace, link, rule and mount goes with the last reference.
//! Nothing is ever deleted by name or by pattern.

pub mod guard;
mod sys;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread;

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::scenario::HOST;

/// Where `ip netns add` keeps its namespaces; private to each sandbox.
pub const NETNS_DIR: &str = "/run/netns";
/// Scratch files of the runner (step scripts, outputs), private to each sandbox.
pub const WORK_DIR: &str = "/run/netscenario";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("failed to spawn the sandbox thread")]
    SpawnThread(#[source] std::io::Error),
    #[error("failed to unshare the network and mount namespaces (are you root?)")]
    Unshare(#[source] nix::Error),
    #[error("failed to make the sandbox's mounts private")]
    MakePrivate(#[source] nix::Error),
    #[error("failed to mount a private {what} on {target}")]
    Mount {
        what: &'static str,
        target: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("failed to create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open the network namespace `{name}`")]
    OpenNetns {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to enter the network namespace `{name}`")]
    EnterNetns {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("failed to create the network namespace `{name}`")]
    CreateNetns {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("failed to create the file for namespace `{name}`")]
    CreateNetnsFile {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start the sandbox's process spawner")]
    Spawner(#[source] nix::Error),
    #[error("failed to spawn a process in the sandbox")]
    Spawn(#[source] std::io::Error),
    #[error("the sandbox's process spawner is gone")]
    SpawnerGone,
    #[error("a thread inside the sandbox panicked")]
    ThreadPanicked,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Handle to a live sandbox, usable on the sandbox thread and the threads it spawns.
pub struct Sandbox {
    host: OwnedFd,
    /// Things that live as long as the sandbox (the runner's own services).
    kept: std::sync::Mutex<Vec<Box<dyn Send>>>,
    reaper: Pid,
    spawn_tx: Option<mpsc::Sender<SpawnRequest>>,
    spawner: Option<thread::JoinHandle<()>>,
}

/// Run `f` inside a new sandbox, on a thread of its own, and tear the sandbox down
/// when `f` returns or panics.
pub fn run<T, F>(f: F) -> Result<T, SandboxError>
where
    T: Send,
    F: FnOnce(&Sandbox) -> T + Send,
{
    thread::scope(|s| {
        let h = thread::Builder::new()
            .name("netscenario-sandbox".into())
            .spawn_scoped(s, move || -> Result<T, SandboxError> {
                let t = crate::timings::phase(|| "sandbox set up".into());
                let sandbox = Sandbox::enter()?;
                drop(t);
                let out = f(&sandbox);
                let _t = crate::timings::phase(|| "sandbox tear down".into());
                drop(sandbox);
                Ok(out)
            })
            .map_err(SandboxError::SpawnThread)?;
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

impl Sandbox {
    /// Move the calling thread into fresh network and mount namespaces and set them up.
    fn enter() -> Result<Sandbox, SandboxError> {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
            .map_err(SandboxError::Unshare)?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(SandboxError::MakePrivate)?;
        // A private /run: the machine has no /run/netns to mount over, and creating one
        // there would change the machine. iptables' lock file lands here too.
        mount(
            Some("tmpfs"),
            "/run",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .map_err(|source| SandboxError::Mount {
            what: "tmpfs",
            target: "/run",
            source,
        })?;
        for dir in [NETNS_DIR, WORK_DIR] {
            std::fs::create_dir_all(dir).map_err(|source| SandboxError::CreateDir {
                path: dir.into(),
                source,
            })?;
        }
        // A sysfs of this network namespace, so /sys/class/net shows the sandbox's links.
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|source| SandboxError::Mount {
            what: "sysfs",
            target: "/sys",
            source,
        })?;
        let host = File::open("/proc/thread-self/ns/net")
            .map_err(|source| SandboxError::OpenNetns {
                name: HOST.into(),
                source,
            })?
            .into();

        // The spawner thread owns the PID namespace: a thread that unshared
        // CLONE_NEWPID cannot create threads any more, so it only forks.
        let (spawn_tx, spawn_rx) = mpsc::channel::<SpawnRequest>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let spawner = thread::Builder::new()
            .name("netscenario-spawner".into())
            .spawn(move || spawner_main(spawn_rx, ready_tx))
            .map_err(SandboxError::SpawnThread)?;
        let reaper = match ready_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                let _ = spawner.join();
                return Err(SandboxError::Spawner(e));
            }
            Err(_) => return Err(SandboxError::SpawnerGone),
        };
        Ok(Sandbox {
            host,
            kept: std::sync::Mutex::new(Vec::new()),
            reaper,
            spawn_tx: Some(spawn_tx),
            spawner: Some(spawner),
        })
    }

    /// Open a namespace of this sandbox by name: `host`, or one under `/run/netns`.
    pub fn netns_fd(&self, name: &str) -> Result<OwnedFd, SandboxError> {
        if name == HOST {
            return self
                .host
                .try_clone()
                .map_err(|source| SandboxError::OpenNetns {
                    name: name.into(),
                    source,
                });
        }
        File::open(Path::new(NETNS_DIR).join(name))
            .map(Into::into)
            .map_err(|source| SandboxError::OpenNetns {
                name: name.into(),
                source,
            })
    }

    /// Whether a namespace of that name exists now.
    pub fn has_netns(&self, name: &str) -> bool {
        name == HOST || Path::new(NETNS_DIR).join(name).exists()
    }

    /// Run `f` on a thread that is in network namespace `name`. Sockets `f` opens stay
    /// in that namespace after it returns.
    pub fn in_netns<T: Send>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, SandboxError> {
        let fd = self.netns_fd(name)?;
        in_netns_fd(name, &fd, f)
    }

    /// `ip netns add NAME`, natively: a new network namespace bound on /run/netns/NAME.
    pub fn create_netns(&self, name: &str) -> Result<(), SandboxError> {
        self.create_netns_many(&[name.to_string()])
    }

    /// `ip netns add` for each name, natively and in parallel: a few threads each
    /// unshare a new network namespace and bind it on /run/netns/NAME, over and over
    /// (a namespace costs the kernel about 0.3 ms). On error, the namespaces created
    /// so far stay (the sandbox's teardown takes them).
    pub fn create_netns_many(&self, names: &[String]) -> Result<(), SandboxError> {
        let workers = thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4)
            .min(names.len().max(1));
        let chunk = names.len().div_ceil(workers).max(1);
        thread::scope(|s| {
            let handles: Vec<_> = names
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().try_for_each(|n| bind_new_netns(n))))
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or(Err(SandboxError::ThreadPanicked)))
        })
    }

    /// Spawn a process in the sandbox's PID namespace (it inherits the sandbox's
    /// `host` network namespace and its mount namespace).
    pub fn spawn(&self, cmd: Command) -> Result<Child, SandboxError> {
        let (tx, rx) = mpsc::channel();
        self.spawn_tx
            .as_ref()
            .ok_or(SandboxError::SpawnerGone)?
            .send((cmd, tx))
            .map_err(|_| SandboxError::SpawnerGone)?;
        rx.recv()
            .map_err(|_| SandboxError::SpawnerGone)?
            .map_err(SandboxError::Spawn)
    }

    /// Keep `thing` alive until the sandbox is torn down.
    pub fn keep(&self, thing: Box<dyn Send>) {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thing);
    }

    /// Kill every process the scenario started, now.
    pub fn kill_all(&self) {
        let _ = kill(self.reaper, Signal::SIGKILL);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.kill_all();
        let _ = waitpid(self.reaper, None);
        drop(self.spawn_tx.take());
        if let Some(h) = self.spawner.take() {
            let _ = h.join();
        }
    }
}

/// Move the calling thread into a new network namespace and bind it on
/// /run/netns/NAME.
fn bind_new_netns(name: &str) -> Result<(), SandboxError> {
    let path = Path::new(NETNS_DIR).join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| SandboxError::CreateNetnsFile {
            name: name.into(),
            source,
        })?;
    let err = |source| SandboxError::CreateNetns {
        name: name.into(),
        source,
    };
    let result = unshare(CloneFlags::CLONE_NEWNET)
        .map_err(err)
        .and_then(|()| {
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(err)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    result
}

/// Run `f` on a new thread that entered the network namespace `fd`.
pub fn in_netns_fd<T: Send>(
    name: &str,
    fd: &OwnedFd,
    f: impl FnOnce() -> T + Send,
) -> Result<T, SandboxError> {
    thread::scope(|s| {
        s.spawn(|| {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                SandboxError::EnterNetns {
                    name: name.into(),
                    source,
                }
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or(Err(SandboxError::ThreadPanicked))
    })
}

fn spawner_main(requests: mpsc::Receiver<SpawnRequest>, ready: mpsc::Sender<nix::Result<Pid>>) {
    let start = || -> nix::Result<(Pid, OwnedFd)> {
        unshare(CloneFlags::CLONE_NEWPID)?;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // The reaper exits when the last copy of the write end closes: this one is
        // held for as long as this thread serves the sandbox.
        let keep = w.try_clone().map_err(|_| nix::Error::EMFILE)?;
        let pid = sys::fork_reaper(r, w)?;
        Ok((pid, keep))
    };
    let _alive = match start() {
        Ok((pid, keep)) => {
            let _ = ready.send(Ok(pid));
            keep
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    for (mut cmd, reply) in requests {
        let _ = reply.send(cmd.spawn());
    }
}
