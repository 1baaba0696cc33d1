//! UDP: a view of the header (ports, length, checksum), and whole
//! datagrams over IPv4 as the tunnel stage reads and writes them
//! (WireGuard rides in them between pods and the gateway).

use super::checksum;
use super::ip::IpProtocol;
use super::ipv4::{self, Header, Ipv4Packet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

pub const HEADER_LEN: usize = 8;
/// Where the checksum sits (the NAT updates it in place; zero: none sent).
pub const CHECKSUM_AT: usize = field::CHECKSUM.start;

/// An IPv4 header without options and a UDP header.
pub const HEADERS: usize = ipv4::HEADER_LEN + HEADER_LEN;

#[derive(Debug)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline(always)]
fn be16(b: &[u8], f: field::Field) -> u16 {
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a datagram of at least [`HEADER_LEN`] bytes.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, super::Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(super::Error::Truncated);
        }
        Ok(UdpPacket { buffer })
    }
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }
    /// The length field: header and payload.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::LENGTH))
    }
    /// Whether the length field claims no more than the header.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_LEN
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Writes the header for a payload already in place after it, with the
    /// checksum over the pseudo-header of `src` → `dst`.
    pub fn emit(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload_len: usize) {
        let ulen = (HEADER_LEN + payload_len) as u16;
        let b = &mut self.buffer.as_mut()[..usize::from(ulen)];
        b[field::SRC_PORT].copy_from_slice(&src.port().to_be_bytes());
        b[field::DST_PORT].copy_from_slice(&dst.port().to_be_bytes());
        b[field::LENGTH].copy_from_slice(&ulen.to_be_bytes());
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let acc = checksum::pseudo_header(src.ip().octets(), dst.ip().octets(), IpProtocol::Udp.number(), ulen);
        let c = match checksum::finish(checksum::sum(acc, b)) {
            0 => 0xffff, // RFC 768: a computed zero is sent as all ones
            c => c,
        };
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
    #[cfg(test)]
    fn set_len(&mut self, n: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&n.to_be_bytes());
    }
}

/// A received datagram: its endpoints and where its payload lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Range<usize>,
}

/// The destination port of the UDP datagram in a packet whose IPv4 header
/// `ip` was checked, when it is one, unfragmented with a whole UDP header.
#[inline]
pub fn dst_port(buf: &[u8], ip: &Header) -> Option<u16> {
    if ip.proto != ipv4::PROTO_UDP || ip.is_fragment() {
        return None;
    }
    UdpPacket::new_checked(buf.get(ip.hl..ip.total)?).ok().map(|u| u.dst_port())
}

/// The datagram in a packet whose IPv4 header `ip` was checked:
/// unfragmented, the UDP length within the packet. The UDP checksum is not
/// checked: what rides here is authenticated by itself.
pub fn datagram(buf: &[u8], ip: &Header) -> Option<Datagram> {
    if ip.proto != ipv4::PROTO_UDP || ip.is_fragment() {
        return None;
    }
    let u = UdpPacket::new_checked(buf.get(ip.hl..ip.total)?).ok()?;
    let ulen = u.len();
    if ulen < HEADER_LEN || ulen > ip.total - ip.hl {
        return None;
    }
    Some(Datagram {
        src: SocketAddrV4::new(Ipv4Addr::from(ip.src), u.src_port()),
        dst: SocketAddrV4::new(Ipv4Addr::from(ip.dst), u.dst_port()),
        payload: ip.hl + HEADER_LEN..ip.hl + ulen,
    })
}

/// `ip` as a UDP datagram: the IPv4 header checked (checksum, lengths),
/// then as [`datagram`].
pub fn parse(ip: &[u8]) -> Option<Datagram> {
    datagram(ip, &Header::check(ip, ip.len()).ok()?)
}

/// Writes the IPv4 and UDP headers in front of the `payload_len` bytes
/// already at `buf[HEADERS..]` (UDP checksum included); returns the
/// datagram's length.
pub fn emit(buf: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, payload_len: usize) -> usize {
    let total = HEADERS + payload_len;
    UdpPacket { buffer: &mut buf[ipv4::HEADER_LEN..total] }.emit(src, dst, payload_len);
    Ipv4Packet::new_unchecked(&mut buf[..total]).emit_header(
        total as u16,
        0,
        64,
        ipv4::PROTO_UDP,
        src.ip().octets(),
        dst.ip().octets(),
    );
    total
}

/// The source and destination addresses of an IPv4 packet.
#[inline]
pub fn addrs(ip: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let p = Ipv4Packet::new_unchecked(ip);
    (p.src_addr(), p.dst_addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_datagrams_parse_back_with_valid_checksums() {
        let mut buf = vec![0u8; 64];
        buf[HEADERS..HEADERS + 5].copy_from_slice(b"hello");
        let (src, dst) = ("198.18.9.1:6000".parse().unwrap(), "198.18.1.2:51820".parse().unwrap());
        let n = emit(&mut buf, src, dst, 5);
        let d = parse(&buf[..n]).unwrap();
        assert_eq!((d.src, d.dst), (src, dst));
        assert_eq!(&buf[d.payload], b"hello");
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&buf[..n]).unwrap().to_header();
        let u = etherparse::UdpHeaderSlice::from_slice(&buf[ipv4::HEADER_LEN..n]).unwrap().to_header();
        assert_eq!(u.checksum, u.calc_checksum_ipv4(&ip, b"hello").unwrap());
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    }

    #[test]
    fn truncated_or_lying_datagrams_do_not_parse() {
        let mut buf = vec![0u8; 64];
        let n = emit(&mut buf, "198.18.9.1:1".parse().unwrap(), "198.18.1.2:2".parse().unwrap(), 10);
        assert!(parse(&buf[..n - 1]).is_none(), "shorter than the IPv4 total length");
        UdpPacket { buffer: &mut buf[ipv4::HEADER_LEN..] }.set_len(200);
        assert!(parse(&buf[..n]).is_none(), "UDP length beyond the packet");
    }
}
