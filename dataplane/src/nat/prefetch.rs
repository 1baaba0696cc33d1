//! Prefetch: with a session table far larger than the caches, the worker
//! asks for a batch's flow-index and session lines before processing it.

use super::*;
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
        if let Some((k, pod_config)) = self.peek_key(pkt) {
            self.sessions.prefetch_slot(&k, pod_config.is_some());
        }
    }

    /// Batch stage 2 (then `process` each packet): starts loading the
    /// session itself, or for a new flow of an endpoint-independent config
    /// the slot its mapping is looked up by.
    #[inline]
    pub fn prefetch_session(&self, pkt: &[u8]) {
        if let Some((k, pod_config)) = self.peek_key(pkt) {
            let found = self.sessions.prefetch_session(&k, pod_config.is_some());
            if let (false, Some(ci)) = (found, pod_config) {
                self.prefetch_mapping(&k, ci);
            }
        }
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
    /// a pod its config; bounds-checked only, since it serves nothing but
    /// prefetching.
    #[inline]
    pub(super) fn peek_key(&self, pkt: &[u8]) -> Option<(FlowKey, Option<u16>)> {
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
        if let Some(pod) = self.pods.get(&src) {
            return Some((FlowKey::outbound(proto.number(), src, dst, ports), Some(pod.config)));
        }
        Some((FlowKey::inbound(proto.number(), src, dst, ports), None))
    }
}
