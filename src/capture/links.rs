//! The links of one network namespace and their changes, over an rtnetlink socket
//! subscribed to `RTNLGRP_LINK` (what `ip monitor link` shows).
//!
//! The socket lives in the namespace of the thread that opens it. It is subscribed
//! before the links are listed, so a link created meanwhile shows up either in the
//! listing or as an event (or both: handling is idempotent). A link moved to another
//! namespace is a deletion here and a new link there; a rename is a new-link event
//! with the same index.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};

/// The legacy multicast group mask of `RTNLGRP_LINK` (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;
/// Receive buffer of the socket: room for bursts of events (a scenario creating
/// dozens of links at once) before the kernel reports an overrun.
const RCVBUF: i32 = 1 << 20;
/// Sequence number of our listing requests.
const DUMP_SEQ: u32 = 1;

/// One thing the socket said about links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists (listed, created, moved in, renamed or otherwise changed).
    New { index: u32, name: String },
    /// A link is gone (deleted or moved to another namespace).
    Gone { index: u32 },
    /// The listing requested by [`LinkSocket::request_listing`] is complete.
    ListingDone,
    /// The listing failed (no [`LinkEvent::ListingDone`] follows): list again.
    ListingFailed,
    /// Events were lost (the receive buffer overflowed): list the links again.
    Overrun,
}

pub struct LinkSocket {
    sock: Socket,
    buf: Vec<u8>,
}

impl AsFd for LinkSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl LinkSocket {
    /// Open a socket subscribed to link events, in the calling thread's namespace.
    pub fn open() -> io::Result<LinkSocket> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        sock.set_rx_buf_sz(RCVBUF)?;
        Ok(LinkSocket {
            sock,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_non_blocking(on)
    }

    /// Ask for every link of the namespace (`ip link show`); the answer arrives as
    /// [`LinkEvent::New`] events followed by [`LinkEvent::ListingDone`].
    pub fn request_listing(&mut self) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = DUMP_SEQ;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())),
        );
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.sock.send(&bytes, 0)?;
        Ok(())
    }

    /// Receive one datagram and append what it says to `out`. A would-block error
    /// is returned as is (for a non-blocking socket); an overrun is an event.
    pub fn recv(&mut self, out: &mut Vec<LinkEvent>) -> io::Result<()> {
        self.buf.clear();
        let n = match self.sock.recv(&mut self.buf, 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                out.push(LinkEvent::Overrun);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        parse_datagram(&self.buf[..n.min(self.buf.len())], out);
        Ok(())
    }
}

/// Split a datagram into netlink messages and keep those about links.
fn parse_datagram(mut bytes: &[u8], out: &mut Vec<LinkEvent>) {
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            let from_listing = msg.header.sequence_number == DUMP_SEQ;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    out.push(LinkEvent::New {
                        index: link.header.index,
                        name: link_name(&link),
                    });
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    out.push(LinkEvent::Gone {
                        index: link.header.index,
                    });
                }
                NetlinkPayload::Done(_) if from_listing => out.push(LinkEvent::ListingDone),
                // A failed listing (it cannot fail short of memory).
                NetlinkPayload::Error(e) if from_listing && e.code.is_some() => {
                    out.push(LinkEvent::ListingFailed)
                }
                _ => {}
            }
        }
        let aligned = (len + 3) & !3;
        bytes = &bytes[aligned.min(bytes.len())..];
    }
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("if{}", link.header.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_msg(new: bool, index: u32, name: &str, seq: u32) -> Vec<u8> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let inner = if new {
            RouteNetlinkMessage::NewLink(link)
        } else {
            RouteNetlinkMessage::DelLink(link)
        };
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn parses_several_messages_per_datagram() {
        let mut dgram = link_msg(true, 3, "v0", 0);
        dgram.extend(link_msg(false, 7, "v1", 0));
        dgram.extend(link_msg(true, 8, "a-very-long-nm", DUMP_SEQ));
        let mut out = Vec::new();
        parse_datagram(&dgram, &mut out);
        assert_eq!(
            out,
            vec![
                LinkEvent::New {
                    index: 3,
                    name: "v0".into()
                },
                LinkEvent::Gone { index: 7 },
                LinkEvent::New {
                    index: 8,
                    name: "a-very-long-nm".into()
                },
            ]
        );
    }
}
