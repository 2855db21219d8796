//! The `LINKTYPE_LINUX_SLL2` header that libpcap puts before every packet captured on
//! Linux's `any` device: the packet's protocol, the index of the interface it was
//! seen on, and its direction. Captures are recorded in this form (see the
//! [capture module](super)), so that one socket per namespace sees every interface,
//! down ones included, and packets can be told apart by interface.
//!
//! Layout (all fields big-endian), 20 bytes:
//! `protocol:u16 reserved:u16 ifindex:u32 arphrd:u16 pkttype:u8 addr_len:u8 addr:[u8;8]`.

/// Length of the SLL2 header.
pub const SLL2_HEADER_LEN: usize = 20;

/// One captured frame, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sll2Frame<'a> {
    /// EtherType of the payload (or one of Linux's pseudo protocols below 0x0600).
    pub protocol: u16,
    /// Index of the interface the packet was seen on, in its namespace.
    pub ifindex: u32,
    /// `ARPHRD_*` type of that interface.
    pub arphrd: u16,
    /// Direction: 0 to us, 1 broadcast, 2 multicast, 3 to another host, 4 sent by us.
    pub pkttype: u8,
    /// What follows the header: the network-layer packet.
    pub payload: &'a [u8],
}

impl<'a> Sll2Frame<'a> {
    pub fn parse(frame: &'a [u8]) -> Option<Sll2Frame<'a>> {
        if frame.len() < SLL2_HEADER_LEN {
            return None;
        }
        Some(Sll2Frame {
            protocol: u16::from_be_bytes([frame[0], frame[1]]),
            ifindex: u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
            arphrd: u16::from_be_bytes([frame[8], frame[9]]),
            pkttype: frame[10],
            payload: &frame[SLL2_HEADER_LEN..],
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An SLL2 frame as libpcap writes it, for tests.
    pub fn wrap(protocol: u16, ifindex: u32, pkttype: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&protocol.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&ifindex.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v.push(pkttype);
        v.push(6);
        v.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0, 0]);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_the_header() {
        let f = wrap(0x0806, 0x0102_0304, 4, &[9, 9]);
        assert_eq!(
            Sll2Frame::parse(&f),
            Some(Sll2Frame {
                protocol: 0x0806,
                ifindex: 0x0102_0304,
                arphrd: 1,
                pkttype: 4,
                payload: &[9, 9],
            })
        );
        assert_eq!(Sll2Frame::parse(&f[..19]), None);
    }
}
