//! The transport header as the NAT treats every protocol alike: two
//! "ports" to read and rewrite (TCP and UDP ports; for ICMP echo, the
//! identifier as the local one), with the transport checksum kept right
//! incrementally. The per-protocol views are [`super::tcp`], [`super::udp`]
//! and [`super::icmp`].

use super::checksum;
use super::icmp::{self, IcmpPacket};
use super::ip::{Endpoint, IpProtocol};
use super::{tcp, udp};

/// Bytes of transport header the NAT needs of a protocol.
#[inline(always)]
pub fn min_len(proto: IpProtocol) -> usize {
    match proto {
        IpProtocol::Tcp => tcp::HEADER_LEN,
        IpProtocol::Udp => udp::HEADER_LEN,
        IpProtocol::Icmp => icmp::HEADER_LEN,
    }
}

mod field {
    pub type Field = core::ops::Range<usize>;
    /// TCP and UDP share the place of their ports.
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
}

/// A transport header of a known protocol, at least 8 bytes (what an ICMP
/// error quotes; the TCP checksum may lie beyond).
#[derive(Debug)]
pub struct Transport<T: AsRef<[u8]>> {
    buffer: T,
    proto: IpProtocol,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

impl<T: AsRef<[u8]>> Transport<T> {
    /// Wraps without checks; the caller saw at least 8 bytes.
    #[inline(always)]
    pub fn new_unchecked(buffer: T, proto: IpProtocol) -> Self {
        Transport { buffer, proto }
    }

    /// Wraps a header of at least 8 bytes.
    #[inline]
    pub fn new_checked(buffer: T, proto: IpProtocol) -> Result<Self, super::Error> {
        if buffer.as_ref().len() < 8 {
            return Err(super::Error::Truncated);
        }
        Ok(Transport { buffer, proto })
    }

    /// (source port, destination port); for ICMP, (identifier, 0).
    #[inline(always)]
    pub fn ports(&self) -> (u16, u16) {
        let b = self.buffer.as_ref();
        match self.proto {
            IpProtocol::Icmp => (IcmpPacket::new_unchecked(b).ident(), 0),
            _ => (be16(b, field::SRC_PORT.start), be16(b, field::DST_PORT.start)),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Transport<T> {
    /// Rewrites the port of `end` (for ICMP, the identifier) to `new_port`
    /// after the IP address of that endpoint went `old_addr` → `new_addr`,
    /// updating the checksum where the header holds it (a quoted header
    /// may end before it) and leaving a UDP datagram sent without one
    /// (RFC 768) without one.
    #[inline(always)]
    pub fn rewrite(&mut self, end: Endpoint, old_addr: [u8; 4], new_addr: [u8; 4], new_port: u16) {
        let b = self.buffer.as_mut();
        let c_at = match self.proto {
            IpProtocol::Icmp => return IcmpPacket::new_unchecked(b).set_ident(new_port),
            IpProtocol::Tcp => tcp::CHECKSUM_AT,
            IpProtocol::Udp => udp::CHECKSUM_AT,
        };
        let at = match end {
            Endpoint::Source => field::SRC_PORT.start,
            Endpoint::Destination => field::DST_PORT.start,
        };
        let old_port = be16(b, at);
        put16(b, at, new_port);
        if b.len() < c_at + 2 {
            return;
        }
        let c = be16(b, c_at);
        let udp = self.proto == IpProtocol::Udp;
        if udp && c == 0 {
            return;
        }
        let n = checksum::update_addr_port(c, old_addr, new_addr, old_port, new_port);
        put16(b, c_at, if udp && n == 0 { 0xffff } else { n });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_datagram_without_a_checksum_keeps_none() {
        let mut b = [0x13, 0x88, 0, 53, 0, 8, 0, 0];
        let mut t = Transport::new_checked(&mut b[..], IpProtocol::Udp).unwrap();
        t.rewrite(Endpoint::Source, [198, 18, 0, 2], [198, 19, 0, 1], 1024);
        assert_eq!(t.ports(), (1024, 53));
        assert_eq!(&b[6..8], &[0, 0]);
    }

    #[test]
    fn a_quoted_tcp_header_cut_before_its_checksum_still_gets_its_port() {
        let mut b = [0u8; 8];
        let mut t = Transport::new_checked(&mut b[..], IpProtocol::Tcp).unwrap();
        t.rewrite(Endpoint::Destination, [0; 4], [1; 4], 4242);
        assert_eq!(t.ports(), (0, 4242));
    }
}
