//! Packet views over bytes: validated once, then read and rewritten in place.

pub mod checksum;
pub mod dns;
pub mod ipv4;
pub mod l4;
pub mod udp;

pub use ipv4::Ipv4Packet;

/// Why a buffer is not a packet we can handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than its headers say.
    Truncated,
    /// Fields that contradict each other or the protocol.
    Malformed,
}

/// Ethernet framing, which the worker strips and rebuilds around the NAT core.
pub mod ethernet {
    pub const HEADER_LEN: usize = 14;
    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_ARP: u16 = 0x0806;

    #[inline]
    pub fn ethertype(frame: &[u8]) -> Option<u16> {
        (frame.len() >= HEADER_LEN).then(|| u16::from_be_bytes([frame[12], frame[13]]))
    }
}
