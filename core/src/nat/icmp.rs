//! ICMP errors: translating the ones that travel through the gateway (by the
//! packet they quote, RFC 5508 section 4), and building the ones the gateway
//! itself sends (time exceeded, destination unreachable).

use super::rewrite::decrement_ttl;
use super::{
    ipv4, is_martian_dst, session, DropReason, FlowKey, Ipv4Packet, NatEngine, Side, Time, Verdict, WireError,
};
use crate::wire::icmp::{self, IcmpPacket};
use crate::wire::ipv4::Header;
use crate::wire::l4::Transport;
use crate::wire::{Endpoint, IpProtocol};

/// The packet an ICMP error quotes, as offsets into the ICMP message.
struct Quoted {
    /// Offset of the quoted IP header within the ICMP message.
    ip: usize,
    /// Offset of its transport header.
    l4: usize,
    proto: IpProtocol,
    src: u32,
    dst: u32,
    /// Source and destination ports, or (identifier, 0) for ICMP echo.
    ports: (u16, u16),
}

fn parse_quoted(msg: &[u8]) -> Result<Quoted, DropReason> {
    let ip = icmp::HEADER_LEN;
    let q = Ipv4Packet::new_header_checked(&msg[ip..]).map_err(|e| match e {
        WireError::Truncated => DropReason::IcmpErrorTruncated,
        WireError::Malformed => DropReason::Malformed,
    })?;
    let ihl = q.header_len();
    // RFC 792: the header plus the first 8 bytes of the datagram.
    let inner = msg.get(ip + ihl..).filter(|l| l.len() >= 8).ok_or(DropReason::IcmpErrorTruncated)?;
    let Some(proto) = IpProtocol::from_number(q.protocol()) else { return Err(DropReason::UnsupportedProtocol) };
    if proto == IpProtocol::Icmp {
        let ty = IcmpPacket::new_unchecked(inner).msg_type();
        if icmp::is_error(ty) {
            return Err(DropReason::IcmpErrorNested);
        }
        if !icmp::is_query(ty) {
            return Err(DropReason::IcmpUnsupportedType);
        }
    }
    Ok(Quoted {
        ip,
        l4: ip + ihl,
        proto,
        src: u32::from_be_bytes(q.src()),
        dst: u32::from_be_bytes(q.dst()),
        ports: Transport::new_unchecked(inner, proto).ports(),
    })
}

/// Rewrites the quoted packet's address and port of `end`, keeping its IP
/// checksum and, where quoted, its transport checksum.
fn rewrite_quoted(msg: &mut [u8], q: &Quoted, end: Endpoint, new_ip: u32, new_port: u16) {
    let new = new_ip.to_be_bytes();
    let mut ip = Ipv4Packet::new_unchecked(&mut msg[q.ip..]);
    let old = match end {
        Endpoint::Source => ip.src(),
        Endpoint::Destination => ip.dst(),
    };
    ip.set_addr(end, new);
    Transport::new_unchecked(&mut msg[q.l4..], q.proto).rewrite(end, old, new, new_port);
}

/// Recomputes an ICMP message's checksum from scratch (errors are rare and
/// short; the quoted bytes changed in several places).
fn reseal(msg: &mut [u8]) {
    IcmpPacket::new_unchecked(msg).fill_checksum();
}

impl NatEngine {
    /// A pod reports an error about a packet it received from the outside
    /// (e.g. port unreachable for a late UDP reply): the quoted packet went
    /// egress → pod, so its destination and our source become the egress.
    pub(super) fn in2out_icmp_error(&mut self, buf: &mut [u8], len: usize, p: &Header, now: Time) -> Verdict {
        if p.first_frag {
            return self.drop(DropReason::FragmentTooShort);
        }
        let msg = &buf[p.hl..len];
        if !IcmpPacket::new_unchecked(msg).verify_checksum() {
            return self.drop(DropReason::IcmpBadChecksum);
        }
        let q = match parse_quoted(msg) {
            Ok(q) => q,
            Err(r) => return self.drop(r),
        };
        if q.dst != p.src {
            return self.drop(DropReason::IcmpErrorNoSession);
        }
        // The quoted packet went remote → pod: the pod's endpoint is its
        // destination.
        let key = FlowKey::inbound(q.proto.number(), q.src, q.dst, q.ports);
        let owner = self.inside_owner(key.proto, key.local, key.local_port);
        if let Some(v) = self.hand_off(owner, Side::Inside, None, now) {
            return v;
        }
        let Some(i) = self.find_live_in(&key, now) else {
            return self.drop(DropReason::IcmpErrorNoSession);
        };
        if p.ttl <= 1 {
            return self.drop(DropReason::TtlExpired);
        }
        let s = *self.sessions.get(i);
        let hl = p.hl;
        let msg = &mut buf[hl..len];
        rewrite_quoted(msg, &q, Endpoint::Destination, s.egress, s.egress_port);
        reseal(msg);
        Ipv4Packet::new_unchecked(&mut buf[..len]).set_src(s.egress.to_be_bytes());
        self.counters.in2out_packets += 1;
        self.counters.in2out_bytes += len as u64;
        if s.flags & session::flags::HAIRPIN != 0 {
            // RFC 5508 REQ-7: an error about a hairpinned packet goes to the
            // pod behind the egress address it came from, not outside; its
            // outside → inside leg takes the one TTL decrement.
            self.counters.hairpin_packets += 1;
            let outer = Header::read(buf, len);
            return self.out2in_icmp_error(buf, len, &outer, now);
        }
        decrement_ttl(buf, len);
        Verdict::Forward { side: Side::Outside, len }
    }

    /// A router or the remote host reports an error about a packet a pod
    /// sent (time exceeded for traceroute, fragmentation needed for PMTU
    /// discovery, unreachable): find the session by the quoted packet.
    pub(super) fn out2in_icmp_error(&mut self, buf: &mut [u8], len: usize, p: &Header, now: Time) -> Verdict {
        if p.first_frag {
            return self.drop(DropReason::FragmentTooShort);
        }
        let msg = &buf[p.hl..len];
        if !IcmpPacket::new_unchecked(msg).verify_checksum() {
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
        let key = FlowKey::outbound(q.proto.number(), q.src, q.dst, q.ports);
        let Some(owner) = self.ports.slice.owner(key.local_port) else {
            return self.drop(DropReason::IcmpErrorNoSession);
        };
        if let Some(v) = self.hand_off(owner, Side::Outside, None, now) {
            return v;
        }
        let Some(i) = self.find_live_out(&key, now) else {
            return self.drop(DropReason::IcmpErrorNoSession);
        };
        if p.ttl <= 1 {
            return self.drop(DropReason::TtlExpired);
        }
        let s = *self.sessions.get(i);
        let hl = p.hl;
        let msg = &mut buf[hl..len];
        rewrite_quoted(msg, &q, Endpoint::Source, s.pod, s.pod_port);
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
        let p = Header::read(buf, len);
        let about_error = p.proto == ipv4::PROTO_ICMP
            && len > p.hl
            && icmp::is_error_message(IcmpPacket::new_unchecked(&buf[p.hl..len]).msg_type());
        if p.later_frag || about_error || from == 0 || is_martian_dst(p.src) || !self.icmp_token(p.src, now) {
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
        let ident = self.ports.draws.rng().next_u64() as u16;
        Ipv4Packet::new_unchecked(&mut buf[..]).emit_header(
            total as u16,
            ident,
            64,
            ipv4::PROTO_ICMP,
            from.to_be_bytes(),
            p.src.to_be_bytes(),
        );
        let mut msg = IcmpPacket::new_unchecked(&mut buf[ipv4::HEADER_LEN..total]);
        msg.emit_header(ty, code, rest);
        msg.fill_checksum();
        self.counters.icmp_errors_sent += 1;
        Verdict::Reply { len: total }
    }
}

/// A token bucket that refills `rate` tokens a second, up to `rate`.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    tokens: u32,
    refilled_ms: u64,
}

impl Bucket {
    fn take(&mut self, rate: u32, now: Time) -> bool {
        let elapsed = now.millis().saturating_sub(self.refilled_ms);
        let add = (elapsed * u64::from(rate) / 1000).min(u64::from(rate)) as u32;
        if add > 0 {
            self.tokens = (self.tokens + add).min(rate);
            self.refilled_ms = now.millis();
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Destination slots of the ICMP error budget: each destination hashes to
/// one (a few share one, none takes another's).
const ICMP_SLOTS: usize = 64;

/// The ICMP errors a worker sends: `icmp_errors_per_sec` in all, and each
/// destination (a pod, an outside host) at most a quarter of that, so one
/// pod's TTL=1 packets cannot starve every other pod's fragmentation
/// needed.
pub(super) struct IcmpBudget {
    all: Bucket,
    by_destination: Box<[Bucket; ICMP_SLOTS]>,
}

impl IcmpBudget {
    pub(super) fn new(rate: u32) -> IcmpBudget {
        let full = Bucket { tokens: rate, refilled_ms: 0 };
        let share = Bucket { tokens: (rate / 4).max(1), refilled_ms: 0 };
        IcmpBudget { all: full, by_destination: Box::new([share; ICMP_SLOTS]) }
    }
}

impl NatEngine {
    /// Takes an ICMP-error token for an error to `to`.
    pub(super) fn icmp_token(&mut self, to: u32, now: Time) -> bool {
        let rate = self.settings.icmp_errors_per_sec;
        let slot = (u64::from(to).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % ICMP_SLOTS;
        let b = &mut self.icmp_budget;
        // The destination's share first: a destination over it takes
        // nothing from the others' budget.
        if !b.by_destination[slot].take((rate / 4).max(1), now) || !b.all.take(rate, now) {
            self.counters.icmp_rate_limited += 1;
            return false;
        }
        true
    }
}
