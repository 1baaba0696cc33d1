//! Prefetch: with a session table far larger than the caches, the worker
//! asks for a batch's flow-index and session lines before processing it.

use super::{proto_slot, EndpointKey, FlowKey, Ipv4Packet, MappingMode, NatEngine, PodInfo};
use crate::wire::icmp::{self, IcmpPacket};
use crate::wire::l4::Transport;
use crate::wire::IpProtocol;

/// Sessions above which `prefetch_worthwhile` says yes (~3 MB of state).
const PREFETCH_THRESHOLD: usize = 1 << 15;

impl NatEngine {
    /// Whether batch prefetching pays: once the session state outgrows the
    /// caches. Below that the extra parsing costs more than it hides.
    #[inline]
    pub fn prefetch_worthwhile(&self) -> bool {
        self.sessions.len() > PREFETCH_THRESHOLD
    }

    /// Batch stage 1 (call for every packet of a batch before stage 2):
    /// starts loading the index slot of the packet's session, so the cache
    /// misses of a whole batch overlap instead of queueing (VPP-style).
    #[inline]
    pub fn prefetch_index(&self, pkt: &[u8]) {
        if let Some((k, pod)) = self.peek_key(pkt) {
            self.sessions.prefetch_slot(&k, pod.is_some());
        }
    }

    /// Batch stage 2: starts loading the session itself; a new flow's
    /// mapping slot starts loading and the flow is noted for stage 3.
    #[inline]
    pub fn prefetch_session(&self, pkt: &[u8]) {
        if let Some((k, pod)) = self.peek_key(pkt) {
            let found = self.sessions.prefetch_session(&k, pod.is_some());
            if let (false, Some(pod)) = (found, pod) {
                self.prefetch_new_flow(&k, pod);
            }
        }
    }

    /// A new inside flow's slots. Its mapping's, for endpoint-independent
    /// configs; then the outside index slot of the port it will get (and
    /// for a new mapping, the mapping's egress slot): creation inserts into
    /// those at once, so loaded now their misses overlap with the rest of
    /// the batch's. The port is the one the flow's draw will pick on the
    /// pod's paired address, or its mapping's; the mapping's slot is only
    /// being loaded, so that guess waits for stage 3.
    fn prefetch_new_flow(&self, k: &FlowKey, pod: PodInfo) {
        let ci = pod.config;
        self.prefetch_mapping(k, ci);
        if self.inside_owner(k.proto, k.local, k.local_port) != self.settings.worker {
            return; // handed off before it takes a draw
        }
        // The first new flow since the last packet was processed opens a
        // batch: what stage 2 noted before is stale.
        let first = self.ports.draws.peeked() == 0;
        let Some(draw) = self.ports.draws.peek() else { return };
        let Some(addr) = self.config(ci).addrs.get(usize::from(pod.preferred)).map(|&a| u32::from(a)) else {
            return;
        };
        match self.config(ci).mapping {
            MappingMode::EndpointIndependent => self.new_flows.note(*k, addr, draw, first),
            MappingMode::PortReuse => {
                let port = self.ports.slice.lo + (draw % self.ports.slice.len() as u32) as u16;
                self.sessions.prefetch_out_slot(&FlowKey { local: addr, local_port: port, ..*k });
            }
        }
    }

    /// Batch stage 3 (then `process` each packet): the outside slots of the
    /// batch's new endpoint-independent flows, now that their mapping slots
    /// are loaded.
    #[inline]
    pub fn prefetch_new_flows(&self) {
        self.new_flows.drain(|k, addr, draw| {
            let ek = EndpointKey { proto: k.proto, ip: k.local, port: k.local_port };
            let (local, local_port) = match self.mappings.find_pod(&ek) {
                Some(mi) => {
                    let m = self.mappings.get(mi);
                    (m.egress, m.egress_port)
                }
                None => {
                    let ports = self.ports.addrs.get(&addr).map(|a| &a.ports[proto_slot(k.proto)]);
                    let Some(off) = ports.and_then(|p| p.free_from(draw)) else { return };
                    let port = self.ports.slice.lo + off as u16;
                    self.mappings.prefetch_egress(&EndpointKey { proto: k.proto, ip: addr, port });
                    (addr, port)
                }
            };
            self.sessions.prefetch_out_slot(&FlowKey { local, local_port, ..*k });
        });
    }

    /// A new inside flow's mapping slot, in config `ci` (endpoint-independent
    /// configs only: port reuse has no mapping).
    #[inline(always)]
    pub(super) fn prefetch_mapping(&self, k: &FlowKey, ci: u16) {
        if self.config(ci).mapping == MappingMode::EndpointIndependent {
            self.mappings.prefetch_pod(&EndpointKey { proto: k.proto, ip: k.local, port: k.local_port });
        }
    }

    /// The key a packet's session would be found by, and for a packet from
    /// a pod the pod's state; bounds-checked only, since it serves nothing
    /// but prefetching.
    #[inline]
    pub(super) fn peek_key(&self, pkt: &[u8]) -> Option<(FlowKey, Option<PodInfo>)> {
        let ip = Ipv4Packet::new_header_checked(pkt).ok()?;
        if ip.is_fragment() {
            return None;
        }
        let proto = IpProtocol::from_number(ip.protocol())?;
        let l4b = pkt.get(ip.header_len()..).filter(|l| l.len() >= 8)?;
        if proto == IpProtocol::Icmp && !icmp::is_query(IcmpPacket::new_unchecked(l4b).msg_type()) {
            return None;
        }
        let (src, dst) = (u32::from_be_bytes(ip.src()), u32::from_be_bytes(ip.dst()));
        let ports = Transport::new_unchecked(l4b, proto).ports();
        if let Some(pod) = self.pod(src) {
            return Some((FlowKey::outbound(proto.number(), src, dst, ports), Some(pod)));
        }
        Some((FlowKey::inbound(proto.number(), src, dst, ports), None))
    }
}

/// Stage 2's new endpoint-independent flows, for stage 3, with the paired
/// address and draw each will take: at most a batch's worth, forgotten
/// when the next batch notes its first (a batch whose stage 3 never ran
/// leaves only guesses behind, worth a miss at most).
pub(super) struct NewFlows(std::cell::RefCell<Vec<(FlowKey, u32, u32)>>);

/// New flows stage 3 looks ahead for (a receive batch).
const NEW_FLOWS_KEPT: usize = 64;

impl NewFlows {
    pub fn new() -> Self {
        NewFlows(std::cell::RefCell::new(Vec::with_capacity(NEW_FLOWS_KEPT)))
    }

    #[inline]
    fn note(&self, k: FlowKey, addr: u32, draw: u32, first: bool) {
        let mut v = self.0.borrow_mut();
        if first {
            v.clear();
        }
        if v.len() < NEW_FLOWS_KEPT {
            v.push((k, addr, draw));
        }
    }

    /// Calls `f` on each noted flow, in order, and forgets them.
    #[inline]
    fn drain(&self, mut f: impl FnMut(&FlowKey, u32, u32)) {
        for &(k, addr, draw) in self.0.borrow().iter() {
            f(&k, addr, draw);
        }
        self.0.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{config, plan_with, settings, tcp, udp, Pkt, POD_A, POD_B};
    use super::*;
    use crate::nat::{Time, Verdict};

    /// The prefetch stages only guess: a batch run through them comes out
    /// exactly as it does without them (verdicts, ports, bytes), whether
    /// the guesses were right (new mappings, port reuse), stale (an
    /// endpoint's existing mapping) or out of step (a flow refused early).
    #[test]
    fn batch_prefetch_changes_no_packet() {
        let mut b = config("b", "198.19.101.0/28");
        b.mapping = MappingMode::PortReuse;
        let plan = plan_with(config("a", "198.19.100.0/28"), b);
        let (mut plain, mut batched) = (NatEngine::new(settings(), plan.clone()), NatEngine::new(settings(), plan));
        let now = Time::from_secs(5);
        for round in 0..4u16 {
            let batch = |i: u16| {
                let pod = if i.is_multiple_of(2) { POD_A } else { POD_B };
                let dst = [198, 19, 0, (10 + (i * 7 + round * 3) % 60) as u8];
                match i % 9 {
                    // A segment that may not open a session: refused, but it took its draw.
                    8 => tcp(pod, 7000 + i, dst, 443, crate::wire::tcp::ACK),
                    _ => udp(pod, 4000 + i % 6, dst, 53, b"q"),
                }
            };
            let mut want: Vec<Pkt> = (0..64).map(batch).collect();
            let mut got: Vec<Pkt> = (0..64).map(batch).collect();
            let verdicts: Vec<Verdict> = want.iter_mut().map(|p| p.run(&mut plain, now)).collect();
            for p in &got {
                batched.prefetch_index(p.bytes());
            }
            for p in &got {
                batched.prefetch_session(p.bytes());
            }
            batched.prefetch_new_flows();
            for (i, (p, w)) in got.iter_mut().zip(&want).enumerate() {
                assert_eq!(p.run(&mut batched, now), verdicts[i], "round {round} packet {i}");
                assert_eq!(p.bytes(), w.bytes(), "round {round} packet {i}");
            }
        }
        assert_eq!(plain.session_count(), batched.session_count());
    }
}
