//! Packet views over bytes (smoltcp's `wire` shape): one view per header,
//! its fields as ranges in a `mod field`, `new_checked` once, then
//! accessors that cannot go out of bounds; `Repr`s for the few packets the
//! gateway writes itself. Nothing outside this module reads a packet by
//! index.

pub mod checksum;
pub mod dns;
pub mod ethernet;
pub mod icmp;
pub mod ip;
pub mod ipv4;
pub mod l4;
pub mod server_name;
pub mod tcp;
pub mod udp;

pub use ethernet::EthernetFrame;
pub use ip::{Endpoint, IpProtocol};
pub use ipv4::Ipv4Packet;

/// Why a buffer is not a packet we can handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than its headers say.
    Truncated,
    /// Fields that contradict each other or the protocol.
    Malformed,
}
