//! Outside → inside: only packets matching a live session are translated
//! back to the pod; everything else is unsolicited and dropped.

use super::frag::{FragAction, Origin};
use super::in2out::{rewrite, Parsed};
use super::*;
use crate::plan::FilteringMode;
use crate::wire::l4::icmp;

impl NatEngine {
    pub(super) fn out2in(&mut self, buf: &mut [u8], len: usize, now: Time) -> Verdict {
        self.out2in_stage(buf, len, now, false)
    }

    /// `hairpin`: the packet was just translated inside → outside on this
    /// worker (its TTL still to be decremented here); the caller records
    /// its fragments under the pod's own key.
    pub(super) fn out2in_stage(&mut self, buf: &mut [u8], len: usize, now: Time, hairpin: bool) -> Verdict {
        let p = Parsed::read(buf, len);
        if p.later_frag {
            // Hairpinned fragments came from a pod.
            let origin = if hairpin { Origin::Pod } else { Origin::Internet };
            return self.follow_fragment(buf, len, &p, origin, now);
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
                    return self.out2in_icmp_error(buf, len, &p, now);
                }
                if ty != icmp::ECHO_REPLY {
                    return self.drop(DropReason::Unsolicited);
                }
            }
            _ => return self.drop(DropReason::UnsupportedProtocol),
        }
        let (a, b) = ports(p.proto, l4b);
        let (local_port, remote_port) = if p.proto == ipv4::PROTO_ICMP { (a, 0) } else { (b, a) };
        let tcp_flags = (p.proto == ipv4::PROTO_TCP).then(|| l4b[l4::tcp::FLAGS]);

        match self.slice.owner(local_port) {
            None => return self.drop(DropReason::Unsolicited),
            Some(w) if w != self.settings.worker => {
                if p.first_frag && !hairpin {
                    self.record_fragment(p.frag_key(), FragAction::Handoff { worker: w, from: Side::Outside }, now);
                }
                self.counters.handoffs += 1;
                return Verdict::Handoff { worker: w, from: Side::Outside };
            }
            Some(_) => {}
        }

        let key = FlowKey { proto: p.proto, local: p.dst, local_port, remote: p.src, remote_port };
        let i = match self.find_live_out(&key, now) {
            Some(i) => i,
            None => match self.open_from_mapping(&key, now) {
                Ok(i) => i,
                Err(r) => return self.drop(r),
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
        let s = self.touch(i, tcp_flags, false, now);
        rewrite(buf, len, p.proto, false, s.pod, s.pod_port, true);
        if s.remote_port == 53 && p.proto != ipv4::PROTO_ICMP && !p.first_frag {
            self.learn_from_dns(buf, len, &p, &s, now);
        }
        self.counters.out2in_packets += 1;
        self.counters.out2in_bytes += len as u64;
        if p.first_frag && !hairpin {
            let action = FragAction::Translate { src: p.src, dst: s.pod, side: Side::Inside };
            self.record_fragment(p.frag_key(), action, now);
        }
        self.forward_fitted(buf, len, Side::Inside)
    }

    /// DNS answers to pods feed FQDN rules: UDP, or TCP when the segment
    /// holds a whole length-prefixed message.
    #[cold]
    fn learn_from_dns(&mut self, buf: &[u8], len: usize, p: &Parsed, s: &Session, now: Time) {
        let l4b = &buf[p.hl..len];
        let msg = if p.proto == ipv4::PROTO_UDP {
            &l4b[l4::udp::HEADER_LEN..]
        } else {
            let Some(data) = l4b.get(usize::from(l4b[12] >> 4) * 4..) else { return };
            match data {
                [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => rest,
                _ => return,
            }
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
        let Some(mi) = self.mappings.find_egress(&ek) else { return Err(DropReason::Unsolicited) };
        let m = *self.mappings.get(mi);
        if m.refs == 0 || cfg.excludes(key.remote) {
            return Err(DropReason::Unsolicited);
        }
        if self.sessions.is_full() {
            return Err(DropReason::SessionTableFull);
        }
        self.check_session_limit(m.pod, m.config)?;
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
        let s = Session {
            pod: m.pod,
            remote: key.remote,
            egress: m.egress,
            pod_port: m.pod_port,
            remote_port: key.remote_port,
            egress_port: m.egress_port,
            proto: key.proto,
            state: 0,
            config: m.config,
            deadline: 0,
            mapping: mi,
            created: now.secs(),
            flags: if self.plan.egress.contains_key(&key.remote) { session::flags::HAIRPIN } else { 0 },
        };
        let Some(i) = self.sessions.insert(s) else { return Err(DropReason::SessionTableFull) };
        self.mappings.get_mut(mi).refs += 1;
        if let Some(p) = self.pods.get_mut(&m.pod) {
            p.sessions += 1;
        }
        self.counters.sessions_created += 1;
        self.count_live(s.config, s.proto, true);
        self.log_session(true, &s, now);
        Ok(i)
    }
}
