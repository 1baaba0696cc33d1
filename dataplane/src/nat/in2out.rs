//! Inside → outside: a bound pod's packet gets its source rewritten to the
//! session's egress (address, port); excluded destinations pass untranslated.

use super::frag::{FragAction, FragKey, Origin};
use super::*;
use crate::wire::l4::icmp;

/// Where the fields the NAT rewrites sit in one packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parsed {
    pub src: u32,
    pub dst: u32,
    pub ttl: u8,
    pub proto: u8,
    pub hl: usize,
    pub ident: u16,
    /// Offset 0 with more fragments to come.
    pub first_frag: bool,
    /// Offset > 0: no transport header.
    pub later_frag: bool,
    pub more_frags: bool,
}

impl Parsed {
    #[inline(always)]
    pub fn read(buf: &[u8], len: usize) -> Parsed {
        let ip = Ipv4Packet::new_unchecked(&buf[..len]);
        Parsed {
            src: u32::from_be_bytes(ip.src()),
            dst: u32::from_be_bytes(ip.dst()),
            ttl: ip.ttl(),
            proto: ip.protocol(),
            hl: ip.header_len(),
            ident: ip.ident(),
            first_frag: ip.more_frags() && ip.frag_offset() == 0,
            later_frag: ip.frag_offset() > 0,
            more_frags: ip.more_frags(),
        }
    }
    #[inline]
    pub fn frag_key(&self) -> FragKey {
        FragKey { src: self.src, dst: self.dst, id: self.ident, proto: self.proto }
    }
}

/// Rewrites the source (`outbound`) or destination address and the matching
/// port (the ICMP identifier for echo), with incremental checksums; with
/// `ttl`, also decrements the TTL (one IP checksum update for both).
#[inline(always)]
pub(super) fn rewrite(buf: &mut [u8], len: usize, proto: u8, outbound: bool, ip_new: u32, port_new: u16, ttl: bool) {
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[..len]);
    let hl = ip.header_len();
    let new = ip_new.to_be_bytes();
    let old = ip.translate_addr(outbound, new, ttl);
    let l4b = &mut buf[hl..len];
    match proto {
        ipv4::PROTO_TCP | ipv4::PROTO_UDP => {
            let at = if outbound { 0 } else { 2 };
            let old_port = l4::read16(l4b, at);
            l4::write16(l4b, at, port_new);
            let c_at = l4::checksum_offset(proto);
            let c = l4::read16(l4b, c_at);
            if proto == ipv4::PROTO_UDP && c == 0 {
                return; // no checksum sent (RFC 768)
            }
            let mut n = checksum::update_addr_port(c, old, new, old_port, port_new);
            if proto == ipv4::PROTO_UDP && n == 0 {
                n = 0xffff;
            }
            l4::write16(l4b, c_at, n);
        }
        _ => {
            let old_id = l4::read16(l4b, icmp::IDENT);
            l4::write16(l4b, icmp::IDENT, port_new);
            let c = l4::read16(l4b, icmp::CHECKSUM);
            l4::write16(l4b, icmp::CHECKSUM, checksum::update16(c, old_id, port_new));
        }
    }
}

#[inline]
pub(super) fn decrement_ttl(buf: &mut [u8], len: usize) {
    Ipv4Packet::new_unchecked(&mut buf[..len]).decrement_ttl();
}

use crate::wire::checksum;

impl NatEngine {
    pub(super) fn in2out(&mut self, buf: &mut [u8], len: usize, ci: u16, now: Time) -> Verdict {
        let p = Parsed::read(buf, len);
        if is_martian_dst(p.dst) {
            return self.drop(DropReason::MartianDestination);
        }
        if p.later_frag {
            return self.follow_fragment(buf, len, &p, Origin::Pod, now);
        }
        if p.ttl <= 1 {
            let router = u32::from(self.settings.router_ip);
            return self.send_error(buf, len, (icmp::TIME_EXCEEDED, 0), router, DropReason::TtlExpired, now);
        }
        let l4b = &buf[p.hl..len];
        if l4b.len() < l4::min_len(p.proto) {
            let r = if p.first_frag { DropReason::FragmentTooShort } else { DropReason::Truncated };
            return self.drop(r);
        }
        match p.proto {
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => {}
            ipv4::PROTO_ICMP => {
                let ty = l4b[icmp::TYPE];
                if icmp::is_error(ty) {
                    return self.in2out_icmp_error(buf, len, &p, now);
                }
                if !icmp::is_query(ty) {
                    return self.drop(DropReason::IcmpUnsupportedType);
                }
            }
            _ => return self.drop(DropReason::UnsupportedProtocol),
        }
        let (sport, dport) = ports(p.proto, l4b);
        let tcp_flags = (p.proto == ipv4::PROTO_TCP).then(|| l4b[l4::tcp::FLAGS]);

        let owner = self.inside_owner(p.proto, p.src, sport);
        if owner != self.settings.worker {
            if p.first_frag {
                self.record_fragment(p.frag_key(), FragAction::Handoff { worker: owner, from: Side::Inside }, now);
            }
            self.counters.handoffs += 1;
            return Verdict::Handoff { worker: owner, from: Side::Inside };
        }

        let key = FlowKey { proto: p.proto, local: p.src, local_port: sport, remote: p.dst, remote_port: dport };
        let i = match self.find_live_in(&key, now) {
            Some(i) => i,
            None => {
                // Exclusions are checked only for flows without a session: a
                // plan that adds one cuts the sessions it covers.
                if self.config(ci).excludes(p.dst) {
                    let router = u32::from(self.settings.router_ip);
                    if let Some(v) = self.refuse_too_big(buf, len, Side::Outside, p.dst, router, now) {
                        return v;
                    }
                    decrement_ttl(buf, len);
                    self.counters.bypass_packets += 1;
                    if p.first_frag {
                        // The rest of the datagram bypasses too, unchanged.
                        let action = FragAction::Translate { src: p.src, dst: p.dst, side: Side::Outside };
                        self.record_fragment(p.frag_key(), action, now);
                    }
                    return self.forward_fitted(buf, len, Side::Outside);
                }
                if let Some(f) = tcp_flags {
                    if !tcp::may_open(f) {
                        return self.drop(DropReason::TcpBadFlags);
                    }
                }
                if let Some(d) = self.decide(ci, &key, now) {
                    if d.action == crate::plan::PolicyAction::Deny {
                        return self.deny(buf, len, &p, ci, now);
                    }
                }
                match self.create_session(&key, ci, now) {
                    Ok(i) => i,
                    Err(reason) => return self.refuse(buf, len, reason, now),
                }
            }
        };
        let hairpin = self.sessions.get(i).flags & session::flags::HAIRPIN != 0;
        if !hairpin {
            // Before the segment counts for the session (a refused FIN
            // closes nothing). A hairpinned packet came by the inside: it fits.
            let router = u32::from(self.settings.router_ip);
            if let Some(v) = self.refuse_too_big(buf, len, Side::Outside, p.dst, router, now) {
                return v;
            }
        }
        let s = self.touch(i, tcp_flags, true, now);
        // A hairpinned packet's one TTL decrement is its outside → inside
        // leg's, wherever that runs (here, or on the worker handed it).
        rewrite(buf, len, p.proto, true, s.egress, s.egress_port, !hairpin);
        self.counters.in2out_packets += 1;
        self.counters.in2out_bytes += len as u64;
        if hairpin {
            // Hairpinning (RFC 4787 REQ-9): the pod reached an egress address
            // of this gateway; deliver to the pod behind it, with the
            // translated source so the peer sees what the internet would.
            self.counters.hairpin_packets += 1;
            let v = self.out2in_stage(buf, len, now, true);
            if p.first_frag {
                // The rest of the datagram follows the whole hairpin.
                let action = match v {
                    Verdict::Forward { side, len } => {
                        let dst = u32::from_be_bytes(Ipv4Packet::new_unchecked(&buf[..len]).dst());
                        Some(FragAction::Translate { src: s.egress, dst, side })
                    }
                    Verdict::Handoff { worker, .. } => Some(FragAction::HairpinHandoff { src: s.egress, worker }),
                    _ => None,
                };
                if let Some(action) = action {
                    self.record_fragment(p.frag_key(), action, now);
                }
            }
            return v;
        }
        if p.first_frag {
            let action = FragAction::Translate { src: s.egress, dst: p.dst, side: Side::Outside };
            self.record_fragment(p.frag_key(), action, now);
        }
        self.forward_fitted(buf, len, Side::Outside)
    }

    /// A new flow the policy denies: dropped, or rejected (TCP RST from the
    /// destination; ICMP administratively prohibited otherwise).
    fn deny(&mut self, buf: &mut [u8], len: usize, p: &Parsed, ci: u16, now: Time) -> Verdict {
        let reject =
            self.config(ci).policy.as_ref().is_some_and(|x| x.deny_response == crate::plan::DenyResponse::Reject);
        if !reject {
            return self.drop(DropReason::PolicyDenied);
        }
        if p.proto == ipv4::PROTO_TCP {
            self.counters.drop(DropReason::PolicyDenied);
            return tcp_reset(buf, len, p);
        }
        self.refuse(buf, len, DropReason::PolicyDenied, now)
    }

    /// A new flow that cannot get a session: drop, count, and tell the pod
    /// (ICMP destination unreachable, administratively prohibited).
    pub(super) fn refuse(&mut self, buf: &mut [u8], len: usize, reason: DropReason, now: Time) -> Verdict {
        let router = u32::from(self.settings.router_ip);
        self.send_error(buf, len, (icmp::DEST_UNREACHABLE, icmp::CODE_ADMIN_PROHIBITED), router, reason, now)
    }
}

/// Replaces a TCP segment with the RST its destination would send (RFC 793
/// "reset generation"): addresses and ports swapped, no payload.
fn tcp_reset(buf: &mut [u8], len: usize, p: &Parsed) -> Verdict {
    let l4b = &buf[p.hl..len];
    let (sport, dport) = (l4::read16(l4b, 0), l4::read16(l4b, 2));
    let seq = u32::from_be_bytes([l4b[4], l4b[5], l4b[6], l4b[7]]);
    let ack = u32::from_be_bytes([l4b[8], l4b[9], l4b[10], l4b[11]]);
    let flags = l4b[l4::tcp::FLAGS];
    let data = l4b.len().saturating_sub(usize::from(l4b[12] >> 4) * 4) as u32;
    let (rseq, rack, rflags) = if flags & l4::tcp::ACK != 0 {
        (ack, 0, l4::tcp::RST)
    } else {
        let ctl = u32::from(flags & l4::tcp::SYN != 0) + u32::from(flags & l4::tcp::FIN != 0);
        (0, seq.wrapping_add(data + ctl), l4::tcp::RST | l4::tcp::ACK)
    };
    const TOTAL: usize = ipv4::HEADER_LEN + l4::tcp::HEADER_LEN;
    Ipv4Packet::new_unchecked(&mut buf[..]).emit_header(
        TOTAL as u16,
        0,
        64,
        ipv4::PROTO_TCP,
        p.dst.to_be_bytes(),
        p.src.to_be_bytes(),
    );
    let t = &mut buf[ipv4::HEADER_LEN..TOTAL];
    t.fill(0);
    l4::write16(t, 0, dport);
    l4::write16(t, 2, sport);
    t[4..8].copy_from_slice(&rseq.to_be_bytes());
    t[8..12].copy_from_slice(&rack.to_be_bytes());
    t[12] = 5 << 4;
    t[l4::tcp::FLAGS] = rflags;
    let acc =
        checksum::pseudo_header(p.dst.to_be_bytes(), p.src.to_be_bytes(), ipv4::PROTO_TCP, l4::tcp::HEADER_LEN as u16);
    let c = checksum::finish(checksum::sum(acc, t));
    l4::write16(t, l4::tcp::CHECKSUM, c);
    Verdict::Reply { len: TOTAL }
}
