//! ICMP errors: translating the ones that travel through the gateway (by the
//! packet they quote, RFC 5508 section 4), and building the ones the gateway
//! itself sends (time exceeded, destination unreachable).

use super::in2out::{decrement_ttl, Parsed};
use super::*;
use crate::wire::checksum;
use crate::wire::l4::icmp;

/// The packet an ICMP error quotes, as offsets into the ICMP message.
struct Quoted {
    /// Offset of the quoted IP header within the ICMP message.
    ip: usize,
    /// Offset of its transport header.
    l4: usize,
    proto: u8,
    src: u32,
    dst: u32,
    /// Source and destination ports, or (identifier, 0) for ICMP echo.
    sport: u16,
    dport: u16,
}

fn parse_quoted(msg: &[u8]) -> Result<Quoted, DropReason> {
    let ip = icmp::HEADER_LEN;
    if msg.len() < ip + ipv4::HEADER_LEN {
        return Err(DropReason::IcmpErrorTruncated);
    }
    let q = &msg[ip..];
    if q[0] >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let ihl = usize::from(q[0] & 0x0f) * 4;
    if ihl < ipv4::HEADER_LEN {
        return Err(DropReason::Malformed);
    }
    // RFC 792: the header plus the first 8 bytes of the datagram.
    if q.len() < ihl + 8 {
        return Err(DropReason::IcmpErrorTruncated);
    }
    let proto = q[9];
    let inner = &q[ihl..];
    let (sport, dport) = match proto {
        ipv4::PROTO_TCP | ipv4::PROTO_UDP => (l4::read16(inner, 0), l4::read16(inner, 2)),
        ipv4::PROTO_ICMP => {
            let ty = inner[icmp::TYPE];
            if icmp::is_error(ty) {
                return Err(DropReason::IcmpErrorNested);
            }
            if !icmp::is_query(ty) {
                return Err(DropReason::IcmpUnsupportedType);
            }
            (l4::read16(inner, icmp::IDENT), 0)
        }
        _ => return Err(DropReason::UnsupportedProtocol),
    };
    Ok(Quoted {
        ip,
        l4: ip + ihl,
        proto,
        src: u32::from_be_bytes([q[12], q[13], q[14], q[15]]),
        dst: u32::from_be_bytes([q[16], q[17], q[18], q[19]]),
        sport,
        dport,
    })
}

/// Rewrites the quoted packet's source (`src`) or destination address and
/// port, keeping its IP checksum and, where quoted, its transport checksum.
fn rewrite_quoted(msg: &mut [u8], q: &Quoted, src: bool, new_ip: u32, new_port: u16) {
    let mut ip = Ipv4Packet::new_unchecked(&mut msg[q.ip..]);
    let old = if src { ip.src() } else { ip.dst() };
    let new = new_ip.to_be_bytes();
    if src {
        ip.set_src(new);
    } else {
        ip.set_dst(new);
    }
    let avail = msg.len() - q.l4;
    let inner = &mut msg[q.l4..];
    match q.proto {
        ipv4::PROTO_ICMP => {
            let old_id = l4::read16(inner, icmp::IDENT);
            l4::write16(inner, icmp::IDENT, new_port);
            let c = l4::read16(inner, icmp::CHECKSUM);
            l4::write16(inner, icmp::CHECKSUM, checksum::update16(c, old_id, new_port));
        }
        proto => {
            let at = if src { 0 } else { 2 };
            let old_port = l4::read16(inner, at);
            l4::write16(inner, at, new_port);
            let c_at = l4::checksum_offset(proto);
            if avail >= c_at + 2 {
                let c = l4::read16(inner, c_at);
                if !(proto == ipv4::PROTO_UDP && c == 0) {
                    let n = checksum::update_addr_port(c, old, new, old_port, new_port);
                    l4::write16(inner, c_at, if proto == ipv4::PROTO_UDP && n == 0 { 0xffff } else { n });
                }
            }
        }
    }
}

/// Recomputes an ICMP message's checksum from scratch (errors are rare and
/// short; the quoted bytes changed in several places).
fn reseal(msg: &mut [u8]) {
    l4::write16(msg, icmp::CHECKSUM, 0);
    let c = checksum::checksum(msg);
    l4::write16(msg, icmp::CHECKSUM, c);
}

impl NatEngine {
    /// A pod reports an error about a packet it received from the outside
    /// (e.g. port unreachable for a late UDP reply): the quoted packet went
    /// egress → pod, so its destination and our source become the egress.
    pub(super) fn in2out_icmp_error(&mut self, buf: &mut [u8], len: usize, p: &Parsed, now: Time) -> Verdict {
        if p.first_frag {
            return self.drop(DropReason::FragmentTooShort);
        }
        let msg = &buf[p.hl..len];
        if checksum::checksum(msg) != 0 {
            return self.drop(DropReason::IcmpBadChecksum);
        }
        let q = match parse_quoted(msg) {
            Ok(q) => q,
            Err(r) => return self.drop(r),
        };
        if q.dst != p.src {
            return self.drop(DropReason::IcmpErrorNoSession);
        }
        let (local_port, remote_port) = if q.proto == ipv4::PROTO_ICMP { (q.sport, 0) } else { (q.dport, q.sport) };
        let owner = self.inside_owner(q.proto, q.dst, local_port);
        if owner != self.settings.worker {
            self.counters.handoffs += 1;
            return Verdict::Handoff { worker: owner, from: Side::Inside };
        }
        let key = FlowKey { proto: q.proto, local: q.dst, local_port, remote: q.src, remote_port };
        let Some(i) = self.find_live_in(&key, now) else {
            return self.drop(DropReason::IcmpErrorNoSession);
        };
        if p.ttl <= 1 {
            return self.drop(DropReason::TtlExpired);
        }
        let s = *self.sessions.get(i);
        let hl = p.hl;
        let msg = &mut buf[hl..len];
        rewrite_quoted(msg, &q, false, s.egress, s.egress_port);
        reseal(msg);
        Ipv4Packet::new_unchecked(&mut buf[..len]).set_src(s.egress.to_be_bytes());
        self.counters.in2out_packets += 1;
        self.counters.in2out_bytes += len as u64;
        if s.flags & session::flags::HAIRPIN != 0 {
            // RFC 5508 REQ-7: an error about a hairpinned packet goes to the
            // pod behind the egress address it came from, not outside; its
            // outside → inside leg takes the one TTL decrement.
            self.counters.hairpin_packets += 1;
            let outer = Parsed::read(buf, len);
            return self.out2in_icmp_error(buf, len, &outer, now);
        }
        decrement_ttl(buf, len);
        Verdict::Forward { side: Side::Outside, len }
    }

    /// A router or the remote host reports an error about a packet a pod
    /// sent (time exceeded for traceroute, fragmentation needed for PMTU
    /// discovery, unreachable): find the session by the quoted packet.
    pub(super) fn out2in_icmp_error(&mut self, buf: &mut [u8], len: usize, p: &Parsed, now: Time) -> Verdict {
        if p.first_frag {
            return self.drop(DropReason::FragmentTooShort);
        }
        let msg = &buf[p.hl..len];
        if checksum::checksum(msg) != 0 {
            return self.drop(DropReason::IcmpBadChecksum);
        }
        let q = match parse_quoted(msg) {
            Ok(q) => q,
            Err(r) => return self.drop(r),
        };
        // The quoted packet left from the egress address the error came to.
        if q.src != p.dst {
            return self.drop(DropReason::IcmpErrorNoSession);
        }
        let (local_port, remote_port) = if q.proto == ipv4::PROTO_ICMP { (q.sport, 0) } else { (q.sport, q.dport) };
        match self.slice.owner(local_port) {
            None => return self.drop(DropReason::IcmpErrorNoSession),
            Some(w) if w != self.settings.worker => {
                self.counters.handoffs += 1;
                return Verdict::Handoff { worker: w, from: Side::Outside };
            }
            Some(_) => {}
        }
        let key = FlowKey { proto: q.proto, local: q.src, local_port, remote: q.dst, remote_port };
        let Some(i) = self.find_live_out(&key, now) else {
            return self.drop(DropReason::IcmpErrorNoSession);
        };
        if p.ttl <= 1 {
            return self.drop(DropReason::TtlExpired);
        }
        let s = *self.sessions.get(i);
        let hl = p.hl;
        let msg = &mut buf[hl..len];
        rewrite_quoted(msg, &q, true, s.pod, s.pod_port);
        reseal(msg);
        Ipv4Packet::new_unchecked(&mut buf[..len]).set_dst(s.pod.to_be_bytes());
        decrement_ttl(buf, len);
        self.counters.out2in_packets += 1;
        self.counters.out2in_bytes += len as u64;
        Verdict::Forward { side: Side::Inside, len }
    }

    /// Counts `reason`, then replaces the packet with an ICMP error for its
    /// sender, from `from`: the IP header plus the first 8 bytes of the
    /// datagram quoted (RFC 792). Never about an ICMP error or a later
    /// fragment; rate-limited (RFC 1812 4.3.2.8).
    pub(super) fn send_error(
        &mut self,
        buf: &mut [u8],
        len: usize,
        kind: (u8, u8),
        from: u32,
        reason: DropReason,
        now: Time,
    ) -> Verdict {
        self.send_error_with(buf, len, kind, [0; 4], from, reason, now)
    }

    /// `send_error` with the ICMP header's last four bytes (the next-hop MTU
    /// of fragmentation needed, RFC 1191).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_error_with(
        &mut self,
        buf: &mut [u8],
        len: usize,
        (ty, code): (u8, u8),
        rest: [u8; 4],
        from: u32,
        reason: DropReason,
        now: Time,
    ) -> Verdict {
        self.counters.drop(reason);
        let p = Parsed::read(buf, len);
        let about_error = p.proto == ipv4::PROTO_ICMP && len > p.hl && icmp::is_error(buf[p.hl]);
        if p.later_frag || about_error || from == 0 || is_martian_dst(p.src) || !self.icmp_token(now) {
            return Verdict::Drop(reason);
        }
        const OUTER: usize = ipv4::HEADER_LEN + icmp::HEADER_LEN;
        let quote = len.min(p.hl + 8);
        if buf.len() < OUTER + quote {
            self.counters.drop(DropReason::NoRoomForReply);
            return Verdict::Drop(reason);
        }
        buf.copy_within(0..quote, OUTER);
        let total = OUTER + quote;
        let ident = self.rng.next_u64() as u16;
        Ipv4Packet::new_unchecked(&mut buf[..]).emit_header(
            total as u16,
            ident,
            64,
            ipv4::PROTO_ICMP,
            from.to_be_bytes(),
            p.src.to_be_bytes(),
        );
        let msg = &mut buf[ipv4::HEADER_LEN..total];
        msg[..icmp::HEADER_LEN].copy_from_slice(&[ty, code, 0, 0, rest[0], rest[1], rest[2], rest[3]]);
        reseal(msg);
        self.counters.icmp_errors_sent += 1;
        Verdict::Reply { len: total }
    }
}
