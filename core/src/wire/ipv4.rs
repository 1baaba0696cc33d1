//! A zero-copy view of an IPv4 header (smoltcp style): validated once by
//! `new_checked`, after which accessors cannot go out of bounds.

use super::ip::{Endpoint, IpProtocol};
use super::{checksum, Error};
use std::net::Ipv4Addr;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN (RFC 3168: the low two bits).
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

pub const HEADER_LEN: usize = 20;
/// The ECN field's codepoints (RFC 3168 section 5).
const ECN_MASK: u8 = 0b11;
const ECN_ECT1: u8 = 0b01;
const ECN_ECT0: u8 = 0b10;
const ECN_CE: u8 = 0b11;
/// Protocol numbers as patterns for the `protocol` field.
pub const PROTO_ICMP: u8 = IpProtocol::Icmp.number();
pub const PROTO_TCP: u8 = IpProtocol::Tcp.number();
pub const PROTO_UDP: u8 = IpProtocol::Udp.number();

/// Why a received packet's IPv4 header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    Truncated,
    Malformed,
    BadChecksum,
}

/// The fields of one IPv4 header the gateway's stages read, read once
/// when the packet is received and checked (version, lengths, checksum),
/// then passed from stage to stage instead of being parsed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub src: u32,
    pub dst: u32,
    pub ttl: u8,
    pub proto: u8,
    /// Header length (options included).
    pub hl: usize,
    /// Total length: the packet's bytes, without the link's padding.
    pub total: usize,
    pub ident: u16,
    /// Offset 0 with more fragments to come.
    pub first_frag: bool,
    /// Offset > 0: no transport header.
    pub later_frag: bool,
}

impl Header {
    /// Checks `buf[..len]` as a received IPv4 packet and reads its header.
    #[inline(always)]
    pub fn check(buf: &[u8], len: usize) -> Result<Header, HeaderError> {
        let ip = match Ipv4Packet::new_checked(&buf[..len.min(buf.len())]) {
            Ok(ip) => ip,
            Err(Error::Truncated) => return Err(HeaderError::Truncated),
            Err(Error::Malformed) => return Err(HeaderError::Malformed),
        };
        if !ip.verify_checksum() {
            return Err(HeaderError::BadChecksum);
        }
        Ok(Header::of(&ip))
    }

    /// Reads the header of a packet the gateway itself has just written or
    /// rewritten in `buf` (already known to be whole).
    #[inline(always)]
    pub fn read(buf: &[u8], len: usize) -> Header {
        Header::of(&Ipv4Packet::new_unchecked(&buf[..len]))
    }

    #[inline(always)]
    fn of<T: AsRef<[u8]>>(ip: &Ipv4Packet<T>) -> Header {
        Header {
            src: u32::from_be_bytes(ip.src()),
            dst: u32::from_be_bytes(ip.dst()),
            ttl: ip.ttl(),
            proto: ip.protocol(),
            hl: ip.header_len(),
            total: ip.total_len(),
            ident: ip.ident(),
            first_frag: ip.more_frags() && ip.frag_offset() == 0,
            later_frag: ip.frag_offset() > 0,
        }
    }

    /// Whether it is a fragment (either kind).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.first_frag || self.later_frag
    }
}

/// The destination address of a whole IPv4 packet (one the gateway
/// checked, or wrote itself).
#[inline(always)]
pub fn destination(packet: &[u8]) -> u32 {
    u32::from_be_bytes(Ipv4Packet::new_unchecked(packet).dst())
}

/// The source address of a whole IPv4 packet (as [`destination`]).
#[inline(always)]
pub fn source(packet: &[u8]) -> u32 {
    u32::from_be_bytes(Ipv4Packet::new_unchecked(packet).src())
}

/// The protocol an IPv4 packet names, if it is long enough to name one
/// (nothing else is checked).
#[inline]
pub fn protocol(packet: &[u8]) -> Option<u8> {
    packet.get(field::PROTOCOL).copied()
}

#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps without checks; use only on bytes already validated.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Validates version, header length and total length against the buffer.
    /// The buffer may be longer than the packet (Ethernet padding).
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(Error::Malformed);
        }
        let ihl = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if ihl < HEADER_LEN || total < ihl {
            return Err(Error::Malformed);
        }
        if b.len() < total {
            return Err(Error::Truncated);
        }
        Ok(Ipv4Packet { buffer })
    }

    /// Validates the header alone (version, header length within the
    /// buffer), not the total length: for a packet an ICMP error quotes,
    /// cut after its first bytes, and for prefetch peeks.
    #[inline]
    pub fn new_header_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 || usize::from(b[field::VER_IHL] & 0x0f) * 4 < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if b.len() < usize::from(b[field::VER_IHL] & 0x0f) * 4 {
            return Err(Error::Truncated);
        }
        Ok(Ipv4Packet { buffer })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0f) * 4
    }
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.b()[2], self.b()[3]]))
    }
    #[inline]
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]])
    }
    #[inline]
    fn flg_off(&self) -> u16 {
        let f = field::FLG_OFF;
        u16::from_be_bytes([self.b()[f.start], self.b()[f.start + 1]])
    }
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flg_off() & 0x4000 != 0
    }
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flg_off() & 0x2000 != 0
    }
    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> usize {
        usize::from(self.flg_off() & 0x1fff) * 8
    }
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flg_off() & 0x3fff != 0
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[10], self.b()[11]])
    }
    #[inline]
    pub fn src(&self) -> [u8; 4] {
        let s = field::SRC.start;
        [self.b()[s], self.b()[s + 1], self.b()[s + 2], self.b()[s + 3]]
    }
    #[inline]
    pub fn dst(&self) -> [u8; 4] {
        let s = field::DST.start;
        [self.b()[s], self.b()[s + 1], self.b()[s + 2], self.b()[s + 3]]
    }
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src())
    }
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst())
    }
    /// True when the header checksum verifies.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.b()[..self.header_len()]) == 0
    }
    /// The bytes after the header, up to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
    /// The bytes from the header start up to the total length.
    #[inline]
    pub fn packet(&self) -> &[u8] {
        &self.b()[..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    #[inline]
    fn set_checksum(&mut self, c: u16) {
        self.bm()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
    /// Rewrites the source address, updating the header checksum.
    #[inline(always)]
    pub fn set_src(&mut self, new: [u8; 4]) {
        let c = checksum::update32(self.checksum(), self.src(), new);
        self.bm()[field::SRC].copy_from_slice(&new);
        self.set_checksum(c);
    }
    /// Rewrites the destination address, updating the header checksum.
    #[inline(always)]
    pub fn set_dst(&mut self, new: [u8; 4]) {
        let c = checksum::update32(self.checksum(), self.dst(), new);
        self.bm()[field::DST].copy_from_slice(&new);
        self.set_checksum(c);
    }
    /// Rewrites the address of `end`, updating the header checksum.
    #[inline]
    pub fn set_addr(&mut self, end: Endpoint, new: [u8; 4]) {
        match end {
            Endpoint::Source => self.set_src(new),
            Endpoint::Destination => self.set_dst(new),
        }
    }
    /// Rewrites the address of `end` and optionally decrements the TTL,
    /// with one checksum update; returns the old address.
    #[inline(always)]
    pub fn translate_addr(&mut self, end: Endpoint, new: [u8; 4], dec_ttl: bool) -> [u8; 4] {
        let (field, old) = match end {
            Endpoint::Source => (field::SRC, self.src()),
            Endpoint::Destination => (field::DST, self.dst()),
        };
        let (ttl, proto) = (self.ttl(), self.protocol());
        let mut acc = u32::from(!self.checksum())
            + u32::from(!u16::from_be_bytes([old[0], old[1]]))
            + u32::from(!u16::from_be_bytes([old[2], old[3]]))
            + u32::from(u16::from_be_bytes([new[0], new[1]]))
            + u32::from(u16::from_be_bytes([new[2], new[3]]));
        if dec_ttl {
            // TTL shares a 16-bit word with the protocol; lowering it by one
            // lowers that word by 0x100.
            acc += u32::from(!u16::from_be_bytes([ttl, proto])) + u32::from(u16::from_be_bytes([ttl - 1, proto]));
            self.bm()[field::TTL] = ttl - 1;
        }
        self.bm()[field].copy_from_slice(&new);
        self.set_checksum(checksum::finish(acc));
        old
    }

    /// Marks an ECN-capable packet Congestion Experienced (RFC 3168),
    /// updating the checksum; false (and unchanged) when it is not
    /// ECN-capable, or already marked.
    #[inline]
    pub fn mark_congestion(&mut self) -> bool {
        let (vi, tos) = (self.b()[field::VER_IHL], self.b()[field::TOS]);
        if !matches!(tos & ECN_MASK, ECN_ECT0 | ECN_ECT1) {
            return false;
        }
        let c =
            checksum::update16(self.checksum(), u16::from_be_bytes([vi, tos]), u16::from_be_bytes([vi, tos | ECN_CE]));
        self.bm()[field::TOS] = tos | ECN_CE;
        self.set_checksum(c);
        true
    }

    /// Decrements the TTL, updating the checksum (RFC 1624).
    #[inline]
    pub fn decrement_ttl(&mut self) {
        let ttl = self.ttl();
        let old = u16::from_be_bytes([ttl, self.protocol()]);
        let new = u16::from_be_bytes([ttl - 1, self.protocol()]);
        let c = checksum::update16(self.checksum(), old, new);
        self.bm()[field::TTL] = ttl - 1;
        self.set_checksum(c);
    }
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len());
        &mut self.bm()[h..t]
    }
    /// Fills a fresh 20-byte header (no options) and computes its checksum.
    pub fn emit_header(&mut self, total_len: u16, ident: u16, ttl: u8, proto: u8, src: [u8; 4], dst: [u8; 4]) {
        let b = self.bm();
        b[0] = 0x45;
        b[1] = 0;
        b[field::LENGTH].copy_from_slice(&total_len.to_be_bytes());
        b[field::IDENT].copy_from_slice(&ident.to_be_bytes());
        b[field::FLG_OFF].copy_from_slice(&0u16.to_be_bytes());
        b[field::TTL] = ttl;
        b[field::PROTOCOL] = proto;
        b[field::CHECKSUM].copy_from_slice(&[0, 0]);
        b[field::SRC].copy_from_slice(&src);
        b[field::DST].copy_from_slice(&dst);
        let c = checksum::checksum(&b[..HEADER_LEN]);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

/// Splits the datagram in `buf[..len]` so that no piece exceeds `mtu`
/// (RFC 791 fragmentation, as a router does for DF=0 packets): `buf` keeps
/// the first piece, whose length is returned; `rest` gets the others, in
/// order. Options with the copy bit ride in every piece, the others in the
/// first only. Works on fragments too (offsets add up, MF kept on the
/// last). Returns `None`, leaving `buf` as it was, when `mtu` leaves no room
/// for 8 bytes of data after the header.
pub fn fragment(buf: &mut [u8], len: usize, mtu: usize, rest: &mut Vec<Vec<u8>>) -> Option<usize> {
    let ip = Ipv4Packet::new_unchecked(&buf[..len]);
    let hl = ip.header_len();
    let (base, more) = (ip.frag_offset(), ip.more_frags());
    // The header of later pieces: the fixed part and the copied options.
    let mut later = buf[..HEADER_LEN].to_vec();
    let options = &buf[..hl];
    let mut i = HEADER_LEN;
    while i < hl {
        match options[i] {
            0 => break,
            1 => i += 1,
            ty => {
                let n = usize::from(*options.get(i + 1)?).max(2);
                if ty & 0x80 != 0 {
                    later.extend_from_slice(options.get(i..i + n)?);
                }
                i += n;
            }
        }
    }
    while !later.len().is_multiple_of(4) {
        later.push(0);
    }
    let later_hl = later.len();
    let first_room = mtu.checked_sub(hl)? & !7;
    let later_room = mtu.checked_sub(later_hl)? & !7;
    if first_room == 0 || later_room == 0 {
        return None;
    }
    let data = len - hl;
    let emit = |b: &mut [u8], total: usize, off: usize, mf: bool| {
        let mut h = Ipv4Packet::new_unchecked(&mut b[..]);
        let bm = h.bm();
        bm[0] = 0x40 | (bm[0] & 0x0f);
        bm[field::LENGTH].copy_from_slice(&(total as u16).to_be_bytes());
        let fo = (off / 8) as u16 | if mf { 0x2000 } else { 0 };
        bm[field::FLG_OFF].copy_from_slice(&fo.to_be_bytes());
        bm[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let hl = h.header_len();
        let c = checksum::checksum(&h.bm()[..hl]);
        h.set_checksum(c);
    };
    let mut off = first_room;
    while off < data {
        let n = later_room.min(data - off);
        let mut piece = Vec::with_capacity(later_hl + n);
        piece.extend_from_slice(&later);
        piece[0] = 0x40 | (later_hl / 4) as u8;
        piece.extend_from_slice(&buf[hl + off..hl + off + n]);
        let last = off + n == data;
        emit(&mut piece, later_hl + n, base + off, !last || more);
        rest.push(piece);
        off += n;
    }
    emit(&mut buf[..hl + first_room], hl + first_room, base, true);
    Some(hl + first_room)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKT: [u8; 28] = [
        0x45, 0, 0, 28, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 19, 0, 1, // ip
        0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0, // udp
    ];

    fn pkt() -> [u8; 28] {
        let mut p = PKT;
        let c = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn parses_fields() {
        let p = pkt();
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.total_len(), 28);
        assert_eq!(ip.protocol(), PROTO_UDP);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(198, 18, 0, 2));
        assert!(ip.dont_frag() && !ip.is_fragment());
        assert!(ip.verify_checksum());
        assert_eq!(ip.payload().len(), 8);
    }

    /// ECN-capable packets (either ECT codepoint) are marked CE with a
    /// valid checksum; packets that are not ECN-capable are left alone.
    #[test]
    fn congestion_marks_only_ecn_capable_packets() {
        for (tos, marked) in [(0x00u8, false), (0x01, true), (0x02, true), (0x03, false), (0xb8, false), (0xba, true)] {
            let mut p = PKT;
            p[1] = tos;
            let c = checksum::checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
            assert_eq!(ip.mark_congestion(), marked, "tos {tos:#x}");
            assert!(ip.verify_checksum(), "tos {tos:#x}");
            assert_eq!(p[1], if marked { tos | 0b11 } else { tos }, "DSCP kept");
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let p = pkt();
        assert_eq!(Ipv4Packet::new_checked(&p[..19]).unwrap_err(), Error::Truncated);
        let mut bad = p;
        bad[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        let mut lie = p;
        lie[3] = 60;
        assert_eq!(Ipv4Packet::new_checked(&lie[..]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn fragmenting_copies_only_the_options_marked_copied() {
        // 28-byte header: record route (not copied, 3 bytes), a copied
        // option (0x94, router alert, 4 bytes), EOL; then 100 bytes of data.
        let mut p = vec![0x47, 0, 0, 128, 0, 1, 0, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 19, 0, 1];
        p.extend_from_slice(&[7, 3, 4, 0x94, 4, 0, 0, 0]);
        p.extend((0..100u8).collect::<Vec<_>>());
        let c = checksum::checksum(&p[..28]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let mut rest = Vec::new();
        let first = fragment(&mut p, 128, 60, &mut rest).unwrap();
        assert_eq!(first, 28 + 32);
        let mut data = p[28..first].to_vec();
        for piece in &rest {
            let ip = Ipv4Packet::new_checked(&piece[..]).unwrap();
            assert_eq!(ip.header_len(), 24, "fixed header and the copied option only");
            assert_eq!(&piece[20..24], &[0x94, 4, 0, 0]);
            assert!(ip.verify_checksum());
            assert_eq!(ip.frag_offset(), data.len());
            data.extend_from_slice(ip.payload());
        }
        assert_eq!(data, (0..100u8).collect::<Vec<_>>());
        let last = Ipv4Packet::new_checked(&rest.last().unwrap()[..]).unwrap();
        assert!(!last.more_frags());
        assert!(Ipv4Packet::new_checked(&p[..first]).unwrap().more_frags());
    }

    #[test]
    fn rewrites_keep_checksum_valid() {
        let mut p = pkt();
        let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        ip.set_src([198, 19, 100, 3]);
        ip.set_dst([198, 18, 7, 7]);
        ip.decrement_ttl();
        assert!(ip.verify_checksum());
        assert_eq!(ip.ttl(), 63);
    }
}
