//! Packet capture with libpcap, inside the sandbox: every packet of the interfaces a
//! scenario captures, from the first one on, into one pcap file per interface, plus
//! a deterministic one-line summary of each packet for reports.
//!
//! [`Capture::start`] runs one thread per captured namespace (`host` and each one
//! under `/run/netns`, started as soon as it is mounted; see [`watch`]). Each thread
//! captures on Linux's `any` device of its namespace, so that links created later,
//! created down, moved in or renamed are captured from their first packet, ARP
//! included (see [`netns`]), and splits the packets by interface.
//! [`Capture::between`] lists the [summaries](summary) of the packets seen between
//! two [`Mark`]s; [`Capture::stop`] (or dropping the capture) ends every thread and
//! closes every file.
//!
//! Nothing is captured outside the sandbox: the capture only enters namespaces of the
//! sandbox it was started in.

mod error;
mod links;
mod mailbox;
mod netns;
mod session;
mod sll2;
pub mod summary;
mod watch;

pub use error::CaptureError;
pub use session::{
    Capture, CaptureReport, CaptureSpec, CaptureTarget, Mark, NetnsStats, PacketLine, PcapFile,
};
pub use sll2::{Sll2Frame, SLL2_HEADER_LEN};
