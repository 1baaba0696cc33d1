//! Whole UDP datagrams over IPv4, as the tunnel stage reads and writes
//! them: WireGuard rides in them between pods and the gateway.

use super::checksum;
use super::ipv4::{self, Ipv4Packet};
use super::l4::{read16, udp, write16};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;

/// An IPv4 header without options and a UDP header.
pub const HEADERS: usize = ipv4::HEADER_LEN + udp::HEADER_LEN;

/// A received datagram: its endpoints and where its payload lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Range<usize>,
}

/// The destination of `ip` when it is an unfragmented UDP datagram, read
/// without validating anything else: a cheap test before [`parse`].
#[inline]
pub fn peek_dst(ip: &[u8]) -> Option<(u32, u16)> {
    if ip.len() < HEADERS {
        return None;
    }
    let p = Ipv4Packet::new_unchecked(ip);
    if p.protocol() != ipv4::PROTO_UDP || p.is_fragment() {
        return None;
    }
    let l4 = ip.get(p.header_len()..p.header_len() + udp::HEADER_LEN)?;
    Some((u32::from_be_bytes(p.dst()), read16(l4, udp::DST_PORT)))
}

/// `ip[..len]` as a UDP datagram: the IPv4 header checked (checksum,
/// lengths), unfragmented, the UDP length within the packet. The UDP
/// checksum is not checked: what rides here is authenticated by itself.
pub fn parse(ip: &[u8]) -> Option<Datagram> {
    let p = Ipv4Packet::new_checked(ip).ok()?;
    if !p.verify_checksum() || p.protocol() != ipv4::PROTO_UDP || p.is_fragment() {
        return None;
    }
    let (hl, total) = (p.header_len(), p.total_len());
    let l4 = &ip[hl..total];
    if l4.len() < udp::HEADER_LEN {
        return None;
    }
    let ulen = usize::from(read16(l4, udp::LENGTH));
    if ulen < udp::HEADER_LEN || ulen > l4.len() {
        return None;
    }
    Some(Datagram {
        src: SocketAddrV4::new(p.src_addr(), read16(l4, udp::SRC_PORT)),
        dst: SocketAddrV4::new(p.dst_addr(), read16(l4, udp::DST_PORT)),
        payload: hl + udp::HEADER_LEN..hl + ulen,
    })
}

/// Writes the IPv4 and UDP headers in front of the `payload_len` bytes
/// already at `buf[HEADERS..]` (UDP checksum included); returns the
/// datagram's length.
pub fn emit(buf: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, payload_len: usize) -> usize {
    let total = HEADERS + payload_len;
    let ulen = (udp::HEADER_LEN + payload_len) as u16;
    {
        let l4 = &mut buf[ipv4::HEADER_LEN..total];
        write16(l4, udp::SRC_PORT, src.port());
        write16(l4, udp::DST_PORT, dst.port());
        write16(l4, udp::LENGTH, ulen);
        write16(l4, udp::CHECKSUM, 0);
        let acc = checksum::pseudo_header(src.ip().octets(), dst.ip().octets(), ipv4::PROTO_UDP, ulen);
        let c = match checksum::finish(checksum::sum(acc, l4)) {
            0 => 0xffff, // RFC 768: a computed zero is sent as all ones
            c => c,
        };
        write16(l4, udp::CHECKSUM, c);
    }
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
        write16(&mut buf[ipv4::HEADER_LEN..], udp::LENGTH, 200);
        assert!(parse(&buf[..n]).is_none(), "UDP length beyond the packet");
    }
}
