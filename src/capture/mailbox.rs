//! A channel whose receiving thread can wait for messages in `poll(2)`, together
//! with its sockets: each message is also a byte on a socket pair. When every sender
//! is dropped the socket reports a hang-up, and the inbox says so.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};

use nix::sys::socket::{send, MsgFlags};

pub struct Mailbox<T> {
    tx: mpsc::Sender<T>,
    wake: Arc<UnixStream>,
}

// Not derived: it would require `T: Clone`.
impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

pub struct Inbox<T> {
    rx: mpsc::Receiver<T>,
    wake: UnixStream,
}

/// A new channel.
pub fn mailbox<T>() -> io::Result<(Mailbox<T>, Inbox<T>)> {
    let (tx, rx) = mpsc::channel();
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    Ok((
        Mailbox {
            tx,
            wake: Arc::new(wake_tx),
        },
        Inbox { rx, wake: wake_rx },
    ))
}

impl<T> Mailbox<T> {
    /// Send `msg`; `false` if the inbox is gone.
    pub fn send(&self, msg: T) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        // Non-blocking: when the socket is full, the receiver has wakeups pending.
        let _ = send(
            self.wake.as_raw_fd(),
            &[1],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        );
        true
    }
}

/// What the inbox holds.
pub enum Received<T> {
    Message(T),
    Empty,
    /// Every sender is gone.
    Closed,
}

impl<T> Inbox<T> {
    /// The next message, without waiting (call it until `Empty` when the socket
    /// polls readable).
    pub fn try_next(&self) -> Received<T> {
        let mut sink = [0u8; 64];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        match self.rx.try_recv() {
            Ok(m) => Received::Message(m),
            Err(mpsc::TryRecvError::Empty) => Received::Empty,
            Err(mpsc::TryRecvError::Disconnected) => Received::Closed,
        }
    }
}

impl<T> AsFd for Inbox<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}
