//! The crate's only `unsafe` code: forking the reaper that is PID 1 of a sandbox's
//! PID namespace. Everything after `fork` in the child is async-signal-safe
//! (raw syscalls through nix, no allocation, no locks).

#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{fork, ForkResult, Pid};

/// Fork the reaper. It must be called on a thread that has just unshared its PID
/// namespace, so that the child becomes PID 1 of that namespace.
///
/// The reaper dies when the calling thread dies (`PR_SET_PDEATHSIG`) or when every
/// copy of `alive_w` is closed (`alive_r` reads end-of-file), whichever comes first;
/// the pipe closes the race between `fork` and `prctl`. When PID 1 of a namespace
/// dies the kernel kills every other process in it, so nothing a step started can
/// outlive the sandbox. Until then it reaps the orphans that are reparented to it.
pub fn fork_reaper(alive_r: OwnedFd, alive_w: OwnedFd) -> nix::Result<Pid> {
    let keep = alive_r.as_raw_fd();
    // SAFETY: the child only calls async-signal-safe functions (prctl, close, poll,
    // waitpid, _exit) and never returns into Rust code of the parent.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(alive_r);
            drop(alive_w);
            Ok(child)
        }
        ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            // Close every inherited descriptor but our end of the pipe: the reaper
            // must not keep other sandboxes' namespaces or pipes alive.
            for fd in 0..4096 {
                if fd != keep {
                    // SAFETY: closing raw descriptors in a freshly forked child that
                    // owns no Rust objects referring to them.
                    unsafe {
                        nix::libc::close(fd);
                    }
                }
            }
            std::mem::forget(alive_w);
            reaper_loop(alive_r)
        }
    }
}

fn reaper_loop(alive_r: OwnedFd) -> ! {
    let interval = PollTimeout::try_from(Duration::from_millis(500)).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(alive_r.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, interval) {
            Ok(n) if n > 0 => {
                // Readable or hung up: the runner's end is gone (nothing is ever written).
                // SAFETY: _exit is async-signal-safe and ends the process at once.
                unsafe { nix::libc::_exit(0) }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => unsafe {
                // SAFETY: as above.
                nix::libc::_exit(1)
            },
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}
