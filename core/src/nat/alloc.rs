//! Which worker owns a flow, and the ports it gets: the pod's paired
//! address first (rendezvous hash), spill to the rest of the pool, quotas,
//! endpoint-independent mappings and port-reuse tuples.

use super::{
    port_pool, proto_slot, AddrState, Draws, DropReason, EndpointKey, FlowKey, HashMap, Ipv4Addr, Mapping, NatEngine,
    PortSlice, Rng, Time,
};

/// Destinations remembered as exhausted at once (beyond: scan as before).
const EXHAUSTED_KEPT: usize = 4096;

/// This worker's ports (VPP nat44-ed's per-thread port state): its slice
/// of every egress address and the ports taken there, each config's share
/// of the per-pod limits, the randomness that picks ports, the ports a plan
/// cut while they cool, and port reuse's memory of scarce destinations.
pub(super) struct Ports {
    pub(super) slice: PortSlice,
    pub(super) addrs: HashMap<u32, AddrState>,
    /// Per config: this worker's share of the per-pod quota.
    pub(super) quotas: Vec<u32>,
    /// Per config: this worker's share of the per-pod session limit.
    pub(super) session_limits: Vec<u32>,
    /// Port randomness; each new flow's first draw can be read ahead.
    pub(super) draws: Draws,
    /// Ports a plan cut, still cooling in their address's bitmap.
    pub(super) cooling: port_pool::CoolingPorts,
    /// Port reuse: destinations (proto, address, port, config) whose every
    /// tuple was taken at the last exhaustive scan, until one of theirs is
    /// freed; refused new flows to them cost a lookup, not a scan.
    pub(super) exhausted: hashbrown::HashSet<(u8, u32, u16, u16)>,
    /// Port reuse: (scans, refusals) by destination, for `busy_destinations`.
    pub(super) busy: hashbrown::HashMap<(u8, u32, u16, u16), (u64, u64)>,
}

impl Ports {
    pub(super) fn new(slice: PortSlice, seed: u64) -> Ports {
        Ports {
            slice,
            addrs: HashMap::new(),
            quotas: Vec::new(),
            session_limits: Vec::new(),
            draws: Draws::new(Rng::new(seed)),
            cooling: port_pool::CoolingPorts::default(),
            exhausted: hashbrown::HashSet::new(),
            busy: hashbrown::HashMap::new(),
        }
    }

    /// A new flow refused for want of a port, counted on the address of the
    /// pods paired with it (`first` of `addrs`).
    fn count_refused(&mut self, addrs: &[Ipv4Addr], first: u16, proto: u8) {
        let Some(&addr) = addrs.get(usize::from(first) % addrs.len().max(1)) else { return };
        if let Some(st) = self.addrs.get_mut(&u32::from(addr)) {
            st.refused[proto_slot(proto)] += 1;
        }
    }

    /// Port reuse: notes a destination's scans and refusals, within the
    /// followed destinations' bound and each config's share of it; false
    /// when it is not followed.
    fn note_busy(&mut self, dest: (u8, u32, u16, u16), scans: u64, refused: u64) -> bool {
        if let Some(e) = self.busy.get_mut(&dest) {
            *e = (e.0 + scans, e.1 + refused);
            return true;
        }
        let config = dest.3;
        let of_config = self.busy.keys().filter(|k| k.3 == config).count();
        if self.busy.len() < super::BUSY_DESTINATIONS_KEPT
            && of_config < super::BUSY_DESTINATIONS_KEPT / super::BUSY_DESTINATIONS_CONFIG_SHARE_DIVISOR
        {
            self.busy.insert(dest, (scans, refused));
            return true;
        }
        false
    }
}

impl NatEngine {
    /// The worker that owns an inside → outside flow of a pod endpoint. A
    /// pod endpoint always lands on one worker, so its endpoint-independent
    /// mapping is one mapping.
    #[inline(always)]
    pub fn inside_owner(&self, proto: u8, pod: u32, port: u16) -> u16 {
        if self.settings.workers <= 1 {
            return self.settings.worker;
        }
        if self.is_tunnelled(pod) {
            // A tunnelled pod's flows live where its peer does: decrypt,
            // translate and encrypt on one worker, no handoff.
            return crate::compiled::owner_of(pod, self.settings.workers);
        }
        let h = (u64::from(pod) << 24 | u64::from(port) << 8 | u64::from(proto)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((h >> 32) % u64::from(self.settings.workers)) as u16
    }

    /// The pod's paired address first, then the others in order.
    #[inline]
    pub(super) fn addr_order(&self, pod: u32, ci: u16) -> (u16, usize) {
        let n = self.config(ci).addrs.len();
        (self.pod(pod).map_or(0, |p| p.preferred), n)
    }

    pub(super) fn check_quota(&self, pod: u32, ci: u16) -> Result<(), DropReason> {
        // A tunnelled pod's flows all live on its peer's worker: its whole
        // quota is here; a routed pod's spread over every worker (a share
        // never above the whole, so only a pod past it is looked up).
        let held = self.holdings.of(pod).holdings;
        if held < self.ports.quotas[usize::from(ci)] {
            return Ok(());
        }
        let whole = self.pod(pod).is_some_and(|p| p.tunnelled);
        if !whole || held >= self.config(ci).port_quota {
            return Err(DropReason::QuotaExceeded);
        }
        Ok(())
    }

    /// `draw` is the flow's own draw (see [`Draws`]): the start in its
    /// first address, so the slots the batch prefetch loaded are the ones
    /// it inserts into.
    pub(super) fn create_mapping(&mut self, k: &FlowKey, ci: u16, draw: u32) -> Result<u32, DropReason> {
        self.check_quota(k.local, ci)?;
        let (first, n) = self.addr_order(k.local, ci);
        let slot = proto_slot(k.proto);
        for step in 0..n {
            let ai = (usize::from(first) + step) % n;
            let addr = u32::from(self.plan.configs[usize::from(ci)].addrs[ai]);
            let start = if step == 0 { draw } else { self.ports.draws.rng().next_u64() as u32 };
            let st = self.ports.addrs.get_mut(&addr).expect("pool address");
            if let Some(off) = st.ports[slot].take_from(start) {
                let port = self.ports.slice.lo + off as u16;
                // The two slots this flow inserts into, loading together
                // while the mapping is written (already on their way when
                // the batch prefetch guessed this port).
                self.mappings.prefetch_egress(&EndpointKey { proto: k.proto, ip: addr, port });
                self.sessions.prefetch_out_slot(&FlowKey { local: addr, local_port: port, ..*k });
                let m = Mapping {
                    pod: k.local,
                    egress: addr,
                    pod_port: k.local_port,
                    egress_port: port,
                    proto: k.proto,
                    free: false,
                    plan_parity: self.plan_parity,
                    unlinked: false,
                    config: ci,
                    refs: 0,
                    deadline: 0,
                };
                let Some(mi) = self.mappings.insert(m) else {
                    st.ports[slot].clear(off);
                    return Err(DropReason::SessionTableFull);
                };
                self.holdings.of_mut(k.local).holdings += 1;
                self.counters.mappings_created += 1;
                return Ok(mi);
            }
        }
        Err(self.refused_for_ports(first, ci, k.proto, None))
    }

    /// A new flow refused for want of a port: counted on the pod's paired
    /// address (the operator sees which addresses run out) and, under port
    /// reuse, on its destination.
    fn refused_for_ports(&mut self, first: u16, ci: u16, proto: u8, dest: Option<(u8, u32, u16, u16)>) -> DropReason {
        self.ports.count_refused(&self.plan.configs[usize::from(ci)].addrs, first, proto);
        if let Some(dest) = dest {
            self.note_busy(dest, 0, 1);
        }
        DropReason::PoolExhausted
    }

    /// Counts a scan or a refusal toward a port-reuse destination (the
    /// slow path only); one [`Ports`] does not follow is counted unfollowed.
    fn note_busy(&mut self, dest: (u8, u32, u16, u16), scans: u64, refused: u64) {
        if !self.ports.note_busy(dest, scans, refused) {
            self.counters.busy_destinations_unfollowed += 1;
        }
    }

    /// Port reuse: any port whose outside tuple toward this destination is
    /// unused (live or cooling). Random probes on each address first (the
    /// pod's paired address first), then an exhaustive scan so that
    /// "exhausted" is never claimed while a port is free. Probing every
    /// address before scanning any keeps a full paired address from costing
    /// a scan of its whole port range for every new flow.
    pub(super) fn alloc_port_reuse(&mut self, k: &FlowKey, ci: u16, draw: u32) -> Result<(u32, u16), DropReason> {
        self.check_quota(k.local, ci)?;
        let dest = (k.proto, k.remote, k.remote_port, ci);
        let (first, n) = self.addr_order(k.local, ci);
        if self.ports.exhausted.contains(&dest) {
            return Err(self.refused_for_ports(first, ci, k.proto, Some(dest)));
        }
        let (lo, len) = (self.ports.slice.lo, self.ports.slice.len() as u32);
        let mut probe =
            FlowKey { proto: k.proto, local: 0, local_port: 0, remote: k.remote, remote_port: k.remote_port };
        for step in 0..n {
            let ai = (usize::from(first) + step) % n;
            probe.local = u32::from(self.plan.configs[usize::from(ci)].addrs[ai]);
            for j in 0..16 {
                // The flow's own draw first: the batch prefetch loaded its slot.
                let r = if step == 0 && j == 0 { draw } else { self.ports.draws.rng().next_u64() as u32 };
                probe.local_port = lo + (r % len) as u16;
                if self.sessions.find_out(&probe).is_none() {
                    // The probe has just loaded the outside slot.
                    return Ok((probe.local, probe.local_port));
                }
            }
        }
        self.counters.pool_scans += 1;
        self.note_busy(dest, 1, 0);
        for step in 0..n {
            let ai = (usize::from(first) + step) % n;
            probe.local = u32::from(self.plan.configs[usize::from(ci)].addrs[ai]);
            let start = self.ports.draws.rng().next_u64() as u32 % len;
            for j in 0..len {
                probe.local_port = lo + ((start + j) % len) as u16;
                if self.sessions.find_out(&probe).is_none() {
                    return Ok((probe.local, probe.local_port));
                }
            }
        }
        if self.ports.exhausted.len() < EXHAUSTED_KEPT {
            self.ports.exhausted.insert(dest);
        }
        Err(self.refused_for_ports(first, ci, k.proto, Some(dest)))
    }

    pub(super) fn release_mapping_ref(&mut self, mi: u32, now: Time) {
        let cooldown = self.config(self.mappings.get(mi).config).timeouts.port_cooldown;
        let m = self.mappings.get_mut(mi);
        m.refs -= 1;
        // The cooldown counts from the last of its sessions to end, in
        // whatever order they are noticed (a sweep, a plan's walk).
        m.deadline = m.deadline.max(now.secs().saturating_add(cooldown));
        if m.refs == 0 && cooldown == 0 {
            self.free_mapping(mi);
        }
    }

    pub(super) fn free_mapping(&mut self, mi: u32) {
        let m = *self.mappings.get(mi);
        if let Some(a) = self.ports.addrs.get_mut(&m.egress) {
            a.ports[proto_slot(m.proto)].clear(u32::from(m.egress_port - self.ports.slice.lo));
        }
        self.mappings.remove(mi);
        self.holdings.release(m.pod, 1, 0);
    }
}
