//! Outside → inside: only packets matching a live session are translated
//! back to the pod; everything else is unsolicited and dropped.

use super::frag::{FragAction, Origin};
use super::rewrite::rewrite;
use super::{
    ipv4, l4, session, DropReason, EndpointKey, FlowKey, MappingMode, NatEngine, Session, Side, Time, Verdict,
};
use crate::plan::FilteringMode;
use crate::wire::icmp::{self, IcmpPacket};
use crate::wire::ipv4::Header;
use crate::wire::l4::Transport;
use crate::wire::tcp::TcpPacket;
use crate::wire::{Endpoint, IpProtocol};

impl NatEngine {
    pub(super) fn out2in(&mut self, buf: &mut [u8], p: &Header, now: Time) -> Verdict {
        self.out2in_stage(buf, p, now, false)
    }

    /// `hairpin`: the packet was just translated inside → outside on this
    /// worker (its TTL still to be decremented here); the caller records
    /// its fragments under the pod's own key.
    pub(super) fn out2in_stage(&mut self, buf: &mut [u8], p: &Header, now: Time, hairpin: bool) -> Verdict {
        let len = p.total;
        if p.later_frag {
            // Hairpinned fragments came from a pod.
            let origin = if hairpin { Origin::Pod } else { Origin::Internet };
            return self.follow_fragment(buf, len, p, origin, now);
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
                return self.out2in_icmp_error(buf, len, p, now);
            }
            if ty != icmp::ECHO_REPLY {
                return self.drop(DropReason::Unsolicited);
            }
        }
        let key = FlowKey::inbound(p.proto, p.src, p.dst, Transport::new_unchecked(l4b, proto).ports());
        let tcp_flags = (proto == IpProtocol::Tcp).then(|| TcpPacket::new_unchecked(l4b).flags());

        let Some(owner) = self.ports.slice.owner(key.local_port) else { return self.drop(DropReason::Unsolicited) };
        // A hairpinned packet's fragments are recorded under the pod's key.
        let first_frag = (p.first_frag && !hairpin).then(|| p.fragment(buf, len));
        if let Some(v) = self.hand_off(owner, Side::Outside, first_frag, now) {
            return v;
        }

        let i = match self.find_live_out(&key, now) {
            Some(i) => i,
            None => match self.open_from_mapping(&key, now) {
                Ok(i) => i,
                Err(r) => return self.reset_cut_flow(buf, len, p.hl, &key, now).unwrap_or_else(|| self.drop(r)),
            },
        };
        if p.ttl <= 1 {
            // Never for a hairpinned packet: its inside leg checked the TTL.
            return self.send_error(buf, len, (icmp::TIME_EXCEEDED, 0), p.dst, DropReason::TtlExpired, now);
        }
        if !hairpin {
            if let Some(v) = self.refuse_too_big(buf, len, Side::Inside, self.sessions.get(i).pod, p.dst, now) {
                return v;
            }
        }
        if tcp_flags.is_some() && self.sessions.get(i).flags & session::flags::NAME_CHECK != 0 {
            self.name_check_from_server(buf, len, p.hl, i);
        }
        let s = self.touch(i, tcp_flags, false, now);
        rewrite(buf, len, proto, Endpoint::Destination, s.pod, s.pod_port, true);
        if s.remote_port == 53 && p.proto != ipv4::PROTO_ICMP && !p.first_frag {
            self.learn_from_dns(buf, len, p, &s, now);
        }
        self.counters.out2in_packets += 1;
        self.counters.out2in_bytes += len as u64;
        if p.first_frag && !hairpin {
            let action = FragAction::Translate { src: p.src, dst: s.pod, side: Side::Inside };
            self.record_fragment(p.fragment(buf, len), action, Origin::Internet, now);
        }
        self.forward_fitted(buf, len, Side::Inside)
    }

    /// DNS answers to pods feed FQDN rules: UDP, or TCP when the segment
    /// holds a whole length-prefixed message.
    #[cold]
    fn learn_from_dns(&mut self, buf: &[u8], len: usize, p: &Header, s: &Session, now: Time) {
        let l4b = &buf[p.hl..len];
        let msg = if p.proto == ipv4::PROTO_UDP {
            &l4b[crate::wire::udp::HEADER_LEN..]
        } else {
            let Some(msg) = crate::wire::dns::tcp_message(TcpPacket::new_unchecked(l4b).payload()) else { return };
            msg
        };
        self.learn_dns(s, msg, now);
    }

    /// Endpoint-independent filtering (UDP, opt-in): a new remote endpoint
    /// may reach a live mapping; it gets a session of its own, under the
    /// same rules as a flow the pod opens: never from an excluded
    /// destination, only where the config's policy allows the pod to talk
    /// to that endpoint, and within the pod's session limit.
    fn open_from_mapping(&mut self, key: &FlowKey, now: Time) -> Result<u32, DropReason> {
        if key.proto != ipv4::PROTO_UDP {
            return Err(DropReason::Unsolicited);
        }
        let Some(&(ci, _)) = self.plan.egress.get(&key.local) else { return Err(DropReason::Unsolicited) };
        let cfg = self.config(ci);
        if cfg.filtering != FilteringMode::EndpointIndependent || cfg.mapping != MappingMode::EndpointIndependent {
            return Err(DropReason::Unsolicited);
        }
        let ek = EndpointKey { proto: key.proto, ip: key.local, port: key.local_port };
        let excluded = cfg.excludes(key.remote);
        let Some(mi) = self.find_fresh_mapping(|t| t.find_egress(&ek)) else { return Err(DropReason::Unsolicited) };
        let m = *self.mappings.get(mi);
        if m.refs == 0 || excluded {
            return Err(DropReason::Unsolicited);
        }
        if self.sessions.is_full() {
            return Err(DropReason::SessionTableFull);
        }
        self.check_session_limit(m.pod, m.config)?;
        // Outside hosts may open sessions on a pod's mapping only while the
        // pod holds less than half its limit: the other half stays for the
        // flows the pod opens itself.
        if let Some(p) = self.pod(m.pod) {
            let limit = if p.tunnelled {
                self.config(m.config).session_limit
            } else {
                self.ports.session_limits[usize::from(m.config)]
            };
            if self.holdings.of(m.pod).sessions >= (limit / 2).max(1) {
                return Err(DropReason::SessionLimit);
            }
        }
        // The session it opens is the pod's flow to that endpoint.
        let inside = FlowKey {
            proto: key.proto,
            local: m.pod,
            local_port: m.pod_port,
            remote: key.remote,
            remote_port: key.remote_port,
        };
        if let Some(d) = self.decide(m.config, &inside, now) {
            if d.action == crate::plan::PolicyAction::Deny {
                return Err(DropReason::PolicyDenied);
            }
        }
        if self.network_policy_denies(&inside) {
            return Err(DropReason::NetworkPolicyDenied);
        }
        let s = self.new_session(&inside, (m.egress, m.egress_port), m.config, mi, now);
        let Some(i) = self.sessions.insert(s) else { return Err(DropReason::SessionTableFull) };
        self.mappings.get_mut(mi).refs += 1;
        self.holdings.of_mut(m.pod).sessions += 1;
        self.counters.sessions_created += 1;
        self.count_live(s.config, s.proto, true);
        self.log_session(true, &s, now);
        Ok(i)
    }
}
