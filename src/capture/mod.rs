//! Packet capture with libpcap, inside the sandbox: every packet of the interfaces a
//! scenario captures, from the first one on, into one pcap file per interface, plus
//! a deterministic one-line summary of each packet for reports.
//!
//! [`Capture::start`] runs one thread per captured namespace: `host`, and each one
//! under `/run/netns`, started as soon as `ip netns add` has mounted it (a watcher
//! thread follows the sandbox's mount table). Each namespace thread captures on
//! Linux's `any` device of its namespace and splits the packets by interface, so
//! that links created later, created down, moved in or renamed are captured from
//! their first packet on, ARP included: libpcap cannot open an interface that is
//! down, and links are created down, so one handle per interface would miss the
//! first packets after `ip link set up`. A netlink socket per namespace names the
//! interfaces and says when one is gone, so that its file is closed.
//!
//! [`Capture::between`] lists the [summaries](summary) of the packets seen between
//! two [`Mark`]s; [`Capture::settle`] waits until namespaces created meanwhile are
//! captured; [`Capture::stop`] (or dropping the capture) ends every thread and
//! closes every file.
//!
//! Nothing is captured outside the sandbox: the capture only enters the sandbox's
//! `host` and the namespaces bound under the sandbox's private `/run/netns`.

mod error;
mod links;
mod mailbox;
mod netns;
pub use netns::CAPTURING_DIR;
mod session;
mod sll2;
pub mod summary;
mod watch;

pub use error::CaptureError;
pub use session::{
    Capture, CaptureReport, CaptureSpec, CaptureTarget, Closing, Mark, NetnsStats, PacketLine,
    PcapFile,
};
pub use sll2::{Sll2Frame, SLL2_HEADER_LEN};
