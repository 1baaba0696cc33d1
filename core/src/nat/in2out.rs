//! Inside → outside: a bound pod's packet gets its source rewritten to the
//! session's egress (address, port); excluded destinations pass untranslated.

use super::frag::{FragAction, Origin};
use super::name_check::{self, NameRefusal};
use super::rewrite::{decrement_ttl, rewrite, write_bare_tcp};
use super::{
    ipv4, is_martian_dst, l4, session, tcp, DropReason, FlowKey, Ipv4Packet, NatEngine, Side, Time, Verdict, WireName,
};
use crate::wire::icmp;
use crate::wire::icmp::IcmpPacket;
use crate::wire::ipv4::Header;
use crate::wire::l4::Transport;
use crate::wire::tcp::{TcpPacket, TcpRepr};
use crate::wire::{Endpoint, IpProtocol};

impl NatEngine {
    pub(super) fn in2out(&mut self, buf: &mut [u8], p: &Header, ci: u16, now: Time) -> Verdict {
        let len = p.total;
        if is_martian_dst(p.dst) {
            return self.drop(DropReason::MartianDestination);
        }
        if p.later_frag {
            return self.follow_fragment(buf, len, p, Origin::Pod, now);
        }
        if p.ttl <= 1 {
            let router = u32::from(self.settings.router_ip);
            return self.send_error(buf, len, (icmp::TIME_EXCEEDED, 0), router, DropReason::TtlExpired, now);
        }
        let l4b = &buf[p.hl..len];
        let proto = IpProtocol::from_number(p.proto);
        if l4b.len() < proto.map_or(icmp::HEADER_LEN, l4::min_len) {
            let r = if p.first_frag { DropReason::FragmentTooShort } else { DropReason::Truncated };
            return self.drop(r);
        }
        let Some(proto) = proto else { return self.drop(DropReason::UnsupportedProtocol) };
        if proto == IpProtocol::Icmp {
            let ty = IcmpPacket::new_unchecked(l4b).msg_type();
            if icmp::is_error(ty) {
                return self.in2out_icmp_error(buf, len, p, now);
            }
            if !icmp::is_query(ty) {
                return self.drop(DropReason::IcmpUnsupportedType);
            }
        }
        let key = FlowKey::outbound(p.proto, p.src, p.dst, Transport::new_unchecked(l4b, proto).ports());
        let tcp_flags = (proto == IpProtocol::Tcp).then(|| TcpPacket::new_unchecked(l4b).flags());

        let owner = self.inside_owner(key.proto, key.local, key.local_port);
        if let Some(v) = self.hand_off(owner, Side::Inside, p.first_frag.then(|| p.fragment(buf, len)), now) {
            return v;
        }

        let i = match self.find_live_in(&key, now) {
            Some(i) => {
                if let Some(f) = tcp_flags {
                    if self.reopens_judged_connection(i, f) {
                        let seq = TcpPacket::new_unchecked(&buf[p.hl..len]).seq();
                        if !self.name_check_new_connection(i, seq, now) {
                            self.end_session(i, now);
                            self.counters.drop(DropReason::NameChecksFull);
                            return tcp_reset(buf, len, p);
                        }
                    }
                }
                i
            }
            None => {
                // A new flow takes its draw whatever becomes of it, so the
                // batch prefetch's guesses stay in step with the flows.
                let draw = self.ports.draws.take();
                // Its mapping's slot loads while policy decides.
                self.prefetch_mapping(&key, ci);
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
                        self.record_fragment(p.fragment(buf, len), action, Origin::Pod, now);
                    }
                    return self.forward_fitted(buf, len, Side::Outside);
                }
                if let Some(f) = tcp_flags {
                    if !tcp::may_open(f) {
                        return self.drop(DropReason::TcpBadFlags);
                    }
                }
                let mut needs_name = None;
                if let Some(d) = self.decide(ci, &key, now) {
                    if d.action == crate::plan::PolicyAction::Deny {
                        return self.deny(buf, len, p, ci, DropReason::PolicyDenied, now);
                    }
                    match (d.needs, d.rule) {
                        (Some(WireName::Quic), Some(rule)) => {
                            self.count_refusal(ci, rule, NameRefusal::QuicRefused);
                            return self.deny(buf, len, p, ci, DropReason::QuicRefused, now);
                        }
                        (Some(needs), Some(rule)) => needs_name = Some((needs, rule)),
                        _ => {}
                    }
                }
                // Both layers must allow: the platform's EgressPolicy above,
                // the namespace's NetworkPolicies here (dropped, as
                // NetworkPolicy implementations do).
                if self.network_policy_denies(&key) {
                    return self.drop(DropReason::NetworkPolicyDenied);
                }
                let i = match self.create_session(&key, ci, draw, now) {
                    Ok(i) => i,
                    Err(reason) => return self.refuse(buf, len, reason, now),
                };
                if let Some((needs, rule)) = needs_name {
                    // Fail closed: a flow that cannot be read is not let through unread.
                    let seg = tcp_flags.map(|f| (f, TcpPacket::new_unchecked(&buf[p.hl..len]).seq()));
                    if !self.expect_name(i, needs, rule, seg, now) {
                        self.end_session(i, now);
                        self.counters.drop(DropReason::NameChecksFull);
                        return tcp_reset(buf, len, p);
                    }
                }
                i
            }
        };
        let flags = self.sessions.get(i).flags;
        if flags & session::flags::NAME_CHECK != 0 {
            if p.first_frag {
                // A segment in fragments cannot be read in one piece.
                return self.drop(DropReason::NameCheckUnordered);
            }
            if let name_check::NameStep::Answer(v) = self.check_name(buf, len, p, i, now) {
                return v;
            }
        }
        let hairpin = flags & session::flags::HAIRPIN != 0;
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
        rewrite(buf, len, proto, Endpoint::Source, s.egress, s.egress_port, !hairpin);
        self.counters.in2out_packets += 1;
        self.counters.in2out_bytes += len as u64;
        if hairpin {
            // Hairpinning (RFC 4787 REQ-9): the pod reached an egress address
            // of this gateway; deliver to the pod behind it, with the
            // translated source so the peer sees what the internet would.
            self.counters.hairpin_packets += 1;
            let v = self.out2in_stage(buf, &Header::read(buf, len), now, true);
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
                    self.record_fragment(p.fragment(buf, len), action, Origin::Pod, now);
                }
            }
            return v;
        }
        if p.first_frag {
            let action = FragAction::Translate { src: s.egress, dst: p.dst, side: Side::Outside };
            self.record_fragment(p.fragment(buf, len), action, Origin::Pod, now);
        }
        self.forward_fitted(buf, len, Side::Outside)
    }

    /// A new flow the policy denies: dropped, or rejected (TCP RST from the
    /// destination; ICMP administratively prohibited otherwise).
    fn deny(&mut self, buf: &mut [u8], len: usize, p: &Header, ci: u16, reason: DropReason, now: Time) -> Verdict {
        if !self.config(ci).policy.as_ref().is_some_and(|x| x.rejects()) {
            return self.drop(reason);
        }
        if p.proto == ipv4::PROTO_TCP {
            self.counters.drop(reason);
            return tcp_reset(buf, len, p);
        }
        self.refuse(buf, len, reason, now)
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
fn tcp_reset(buf: &mut [u8], len: usize, p: &Header) -> Verdict {
    let rst = TcpRepr::reset_for(&TcpPacket::new_unchecked(&buf[p.hl..len]));
    Verdict::Reply { len: write_bare_tcp(buf, &rst, p.dst, p.src) }
}
