//! What both directions share (VPP's shared inlines): the in-place
//! rewrite of one endpoint, and the bare segments the gateway writes. The
//! direction stages (`in2out`, `out2in`, `icmp`, `frag`) depend on this,
//! never on each other's files.

use crate::wire::l4::Transport;
use crate::wire::tcp::TcpRepr;
use crate::wire::{ipv4, Endpoint, IpProtocol, Ipv4Packet};

/// Rewrites the address of `end` and the matching port (the ICMP
/// identifier for echo), with incremental checksums; with `ttl`, also
/// decrements the TTL (one IP checksum update for both).
#[inline(always)]
pub(super) fn rewrite(
    buf: &mut [u8],
    len: usize,
    proto: IpProtocol,
    end: Endpoint,
    ip_new: u32,
    port_new: u16,
    ttl: bool,
) {
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[..len]);
    let hl = ip.header_len();
    let new = ip_new.to_be_bytes();
    let old = ip.translate_addr(end, new, ttl);
    Transport::new_unchecked(&mut buf[hl..len], proto).rewrite(end, old, new, port_new);
}

/// Replaces the packet in `buf` with a segment the gateway makes (a reset):
/// `src` → `dst`, no options, no data. Returns its length.
pub(super) fn write_bare_tcp(buf: &mut [u8], seg: &TcpRepr, src: u32, dst: u32) -> usize {
    const TOTAL: usize = ipv4::HEADER_LEN + crate::wire::tcp::HEADER_LEN;
    let (src, dst) = (src.to_be_bytes(), dst.to_be_bytes());
    Ipv4Packet::new_unchecked(&mut buf[..]).emit_header(TOTAL as u16, 0, 64, ipv4::PROTO_TCP, src, dst);
    seg.emit(&mut buf[ipv4::HEADER_LEN..TOTAL], src, dst);
    TOTAL
}

#[inline]
pub(super) fn decrement_ttl(buf: &mut [u8], len: usize) {
    Ipv4Packet::new_unchecked(&mut buf[..len]).decrement_ttl();
}
