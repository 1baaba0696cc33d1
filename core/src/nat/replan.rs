//! A new plan swapped in between batches: sessions whose pod, config and
//! egress address survive it are kept, the rest are cut, and per-address
//! and per-pod state is carried to the new pools. The sessions are walked
//! a bounded number a turn (a plan parity bit tells checked from not), so
//! a plan change never stalls forwarding for the length of the table.

use super::{
    proto_slot, session, state, AddrState, Arc, CompiledConfig, CompiledPlan, HashMap, MappingMode, MappingTable,
    NatEngine, PodInfo, PortSet, Session, Time, NONE,
};

/// A plan change's walk over sessions and mappings.
pub(super) struct Walk {
    /// The plan the unchecked sessions and mappings were made under (their
    /// config positions are its).
    old: Arc<CompiledPlan>,
    /// Per old config position: the new position its kept sessions move
    /// to (same name and mapping mode), if any.
    kept_under: Vec<Option<u16>>,
    /// When the plan was applied: cuts date from then, however late the
    /// walk reaches them.
    at: Time,
    next_session: usize,
    next_mapping: usize,
}

impl NatEngine {
    #[inline]
    pub(super) fn count_live(&mut self, ci: u16, proto: u8, up: bool) {
        if let Some(l) = self.live.get_mut(usize::from(ci)) {
            let slot = &mut l[proto_slot(proto)];
            *slot = if up { *slot + 1 } else { slot.saturating_sub(1) };
        }
    }

    /// Swaps in a new plan between batches. Sessions survive when their pod
    /// is still bound to a config of the same name and mapping mode whose
    /// pool still holds their egress address (and its policies still allow
    /// their flow); all others are cut. Work here is bounded by the plan's
    /// size; the sessions are checked by `replan_step`, a bounded number a
    /// turn, and any a packet finds first is checked before it is used, so
    /// the plan holds for every packet from this call on.
    pub fn apply_plan(&mut self, plan: Arc<CompiledPlan>, now: Time) {
        self.finish_replan();
        let old = std::mem::replace(&mut self.plan, plan);
        let plan = self.plan.clone();
        let workers = u32::from(self.settings.workers.max(1));
        self.ports.quotas = plan.configs.iter().map(|c| c.port_quota.div_ceil(workers)).collect();
        self.ports.session_limits = plan.configs.iter().map(|c| c.session_limit.div_ceil(workers)).collect();
        let old_hits: HashMap<(&str, String), u64> = old
            .configs
            .iter()
            .zip(&self.policy.hits)
            .filter_map(|(c, h)| Some((c, c.policy.as_ref()?, h)))
            .flat_map(|(c, p, h)| {
                (0..=p.rule_count()).map(move |i| {
                    let name =
                        if i == p.rule_count() { "default".to_string() } else { p.rule_name(i as u32).to_string() };
                    ((c.name.as_str(), name), h[i])
                })
            })
            .collect();
        let policy_hits: Vec<Vec<u64>> = plan
            .configs
            .iter()
            .map(|c| match &c.policy {
                Some(p) => (0..=p.rule_count())
                    .map(|i| {
                        let name =
                            if i == p.rule_count() { "default".to_string() } else { p.rule_name(i as u32).to_string() };
                        old_hits.get(&(c.name.as_str(), name)).copied().unwrap_or(0)
                    })
                    .collect(),
                None => Vec::new(),
            })
            .collect();
        drop(old_hits);
        self.policy.hits = policy_hits;
        self.policy.network_policy_denials = self.carry_network_policy_denials(&old, &plan);
        self.carry_name_refusals(&old, &plan);

        // Egress addresses: keep the port bitmaps of those that stay, in
        // whichever config (ports cut by the walk cool down before reuse,
        // RFC 6888 REQ-8, even when the address moves to another config),
        // and their session counts, which the walk lowers as it cuts.
        // In place: most addresses stay, and a large pool has thousands;
        // a plan whose pools did not change (a pod came or went) skips it.
        let pools_changed = old.pools_digest != plan.pools_digest || old.configs.is_empty();
        let mut to_mappings = false;
        if pools_changed {
            self.ports.addrs.retain(|a, _| plan.egress.contains_key(a));
            for (&a, &(ci, _)) in &plan.egress {
                match self.ports.addrs.get_mut(&a) {
                    Some(st) => {
                        let (was, is) =
                            (old.configs[usize::from(st.config)].mapping, plan.configs[usize::from(ci)].mapping);
                        to_mappings |= was == MappingMode::PortReuse && is == MappingMode::EndpointIndependent;
                        st.config = ci;
                    }
                    None => {
                        let n = self.ports.slice.len();
                        let st = AddrState {
                            config: ci,
                            ports: [PortSet::new(n), PortSet::new(n), PortSet::new(n)],
                            sessions: 0,
                            refused: [0; 3],
                        };
                        self.ports.addrs.insert(a, st);
                    }
                }
            }
        }
        // Pools may have changed: every destination gets a fresh scan.
        self.ports.exhausted.clear();
        // Keyed by config position, which the new plan may change.
        self.ports.busy.clear();
        let addrs = &self.ports.addrs;
        self.ports.cooling.retain_addrs(|a| addrs.contains_key(&a));

        // Pods keep their counts (the walk lowers them as it cuts); what
        // the plan says of each is the plan's own (`PodInfo`, worked out
        // once per plan). Adopted fallback sources follow their CIDR's
        // config; a pod the plan now binds only by a CIDR is adopted again
        // on its next packet.
        self.holdings.fallbacks.retain(|&p, info| {
            if plan.pods.contains_key(&p) {
                return false;
            }
            match plan.source_config(p) {
                Some(ci) => {
                    *info = PodInfo::fallback(p, ci, &plan);
                    true
                }
                None => false,
            }
        });
        self.any_tunnelled = !plan.tunnelled.is_empty();

        // Live counts move to the config sessions are kept under (same
        // name and mapping mode); the walk lowers them as it cuts.
        let by_name: HashMap<&str, u16> =
            plan.configs.iter().enumerate().map(|(i, c)| (c.name.as_str(), i as u16)).collect();
        let kept_under: Vec<Option<u16>> = old
            .configs
            .iter()
            .map(|o| {
                by_name.get(o.name.as_str()).copied().filter(|&n| plan.configs[usize::from(n)].mapping == o.mapping)
            })
            .collect();
        drop(by_name);
        let mut live = vec![[0u64; 3]; plan.configs.len()];
        for (l, t) in self.live.iter().zip(&kept_under) {
            if let Some(t) = t {
                for (n, o) in live[usize::from(*t)].iter_mut().zip(l) {
                    *n += o;
                }
            }
        }
        self.live = live;

        // Every session and mapping is now stale; the walk (or its next
        // use, whichever comes first) checks each against the new plan.
        self.plan_parity = !self.plan_parity;
        self.replan = Some(Walk { old, kept_under, at: now, next_session: 0, next_mapping: 0 });
        if to_mappings {
            // An address that goes from port reuse to mappings allocates
            // from its port bitmap, which knows nothing of the tuples its
            // unchecked sessions hold: walked at once (an operator's rare
            // change of mapping mode).
            self.finish_replan();
        }
        self.replan_step(0);
    }

    /// Whether a plan change's walk is still under way (the worker takes
    /// no newer plan until it ends).
    pub fn replanning(&self) -> bool {
        self.replan.is_some()
    }

    /// Checks up to `budget` session and mapping slots against the plan
    /// last applied; returns whether slots remain. Bounded work per call:
    /// applying a plan to millions of sessions at once stalled forwarding
    /// for 150 ms.
    pub fn replan_step(&mut self, budget: usize) -> bool {
        let Some(w) = &self.replan else { return false };
        let (old, now) = (Arc::clone(&w.old), w.at);
        let (mut mi, mut si) = (w.next_mapping, w.next_session);
        let mut left = budget;
        // Mappings first: a session's cut then finds its mapping decided.
        while left > 0 && mi < self.mappings.high_water() {
            self.recheck_mapping(mi as u32, &old, now);
            mi += 1;
            left -= 1;
        }
        while left > 0 && si < self.sessions.high_water() {
            self.recheck_session(si as u32, &old, now);
            si += 1;
            left -= 1;
        }
        if mi >= self.mappings.high_water() && si >= self.sessions.high_water() {
            self.replan = None;
            return false;
        }
        if let Some(w) = &mut self.replan {
            (w.next_mapping, w.next_session) = (mi, si);
        }
        true
    }

    /// Ends a plan change's walk at once (before the next plan, a restore).
    pub fn finish_replan(&mut self) {
        while self.replan_step(usize::MAX) {}
    }

    /// The session flag bit of the current plan's parity.
    #[inline]
    pub(super) fn parity_flag(&self) -> u8 {
        if self.plan_parity {
            session::flags::PLAN_PARITY
        } else {
            0
        }
    }

    /// The config a session was made or last checked under.
    pub(super) fn config_of_session(&self, s: &Session) -> &CompiledConfig {
        match &self.replan {
            Some(w) if self.is_stale(s) => &w.old.configs[usize::from(s.config)],
            _ => self.config(s.config),
        }
    }

    /// Whether `s` has not been checked against the current plan.
    #[inline(always)]
    fn is_stale(&self, s: &Session) -> bool {
        self.replan.is_some() && s.flags & session::flags::PLAN_PARITY != self.parity_flag()
    }

    /// Whether session `i` has not been checked against the current plan.
    #[inline(always)]
    pub(super) fn session_stale(&self, i: u32) -> bool {
        self.is_stale(self.sessions.get(i))
    }

    /// Checks session `i` against the current plan if it was not yet (a
    /// lookup found it before the walk did).
    #[inline]
    pub(super) fn freshen_session(&mut self, i: u32) {
        if self.session_stale(i) {
            let w = self.replan.as_ref().expect("stale under a walk");
            let (old, at) = (Arc::clone(&w.old), w.at);
            self.recheck_session(i, &old, at);
        }
    }

    /// As `freshen_session`, for mapping `mi`.
    #[inline]
    pub(super) fn freshen_mapping(&mut self, mi: u32) {
        if let Some(w) = &self.replan {
            if self.mappings.get(mi).plan_parity != self.plan_parity {
                let (old, at) = (Arc::clone(&w.old), w.at);
                self.recheck_mapping(mi, &old, at);
            }
        }
    }

    /// The mapping `find` finds, checked against the current plan first
    /// (a mapping the plan cut is no longer found).
    pub(super) fn find_fresh_mapping(&mut self, find: impl Fn(&MappingTable) -> Option<u32>) -> Option<u32> {
        let mi = find(&self.mappings)?;
        if self.replan.is_none() {
            return Some(mi);
        }
        self.freshen_mapping(mi);
        find(&self.mappings)
    }

    /// The config position a session or mapping keeps under the current
    /// plan: its pod still bound to a config of the same name and mapping
    /// mode whose pool still holds its egress address.
    fn kept_config(&self, old: &CompiledPlan, pod: u32, egress: u32, old_ci: u16) -> Option<u16> {
        let plan = &self.plan;
        let ci = plan.config_of(pod)?;
        let &(eci, _) = plan.egress.get(&egress)?;
        let (o, n) = (&old.configs[usize::from(old_ci)], &plan.configs[usize::from(ci)]);
        (eci == ci && o.name == n.name && o.mapping == n.mapping).then_some(ci)
    }

    /// Checks a stale mapping: kept (re-homed), cut at once when nothing
    /// uses it, or unlinked until its sessions' cuts free it.
    fn recheck_mapping(&mut self, mi: u32, old: &CompiledPlan, now: Time) {
        let m = *self.mappings.get(mi);
        if m.free || m.plan_parity == self.plan_parity {
            return;
        }
        self.mappings.get_mut(mi).plan_parity = self.plan_parity;
        match self.kept_config(old, m.pod, m.egress, m.config) {
            Some(ci) if m.refs > 0 || m.deadline > now.secs() => self.mappings.get_mut(mi).config = ci,
            _ if m.refs > 0 => self.mappings.unlink(mi),
            _ => self.drop_cut_mapping(mi, now),
        }
    }

    /// Frees a mapping the plan cut. RFC 6888 REQ-8: on an address that is
    /// endpoint-independent now, its port stays taken until its cooldown
    /// ends, whoever holds the address now.
    fn drop_cut_mapping(&mut self, mi: u32, now: Time) {
        let m = *self.mappings.get(mi);
        let off = u32::from(m.egress_port - self.ports.slice.lo);
        let slot = proto_slot(m.proto);
        let plan = &self.plan;
        let eim = plan
            .egress
            .get(&m.egress)
            .is_some_and(|&(eci, _)| plan.configs[usize::from(eci)].mapping == MappingMode::EndpointIndependent);
        if eim && m.deadline > now.secs() {
            self.cool_port((m.egress, slot as u8, off), m.deadline);
        } else if let Some(a) = self.ports.addrs.get_mut(&m.egress) {
            if a.ports[slot].is_set(off) {
                a.ports[slot].clear(off);
            }
        }
        self.mappings.remove(mi);
        self.holdings.release(m.pod, 1, 0);
    }

    /// Holds a port in its address's bitmap until `until`.
    fn cool_port(&mut self, (addr, slot, off): (u32, u8, u32), until: u32) {
        let Some(a) = self.ports.addrs.get_mut(&addr) else { return };
        let set = &mut a.ports[usize::from(slot)];
        if !set.is_set(off) {
            set.set(off);
        }
        self.ports.cooling.hold((addr, slot, off), until);
    }

    /// Checks a stale session: kept (re-homed to its config's new position)
    /// or cut, as `apply_plan` describes.
    fn recheck_session(&mut self, i: u32, old: &CompiledPlan, now: Time) {
        let s = *self.sessions.get(i);
        if s.state & state::FREE != 0 || s.flags & session::flags::PLAN_PARITY == self.parity_flag() {
            return;
        }
        self.sessions.get_mut(i).flags ^= session::flags::PLAN_PARITY;
        if s.mapping != NONE {
            self.recheck_mapping(s.mapping, old, now);
        }
        let plan = Arc::clone(&self.plan);
        let staying = self
            .kept_config(old, s.pod, s.egress, s.config)
            .filter(|&ci| !plan.configs[usize::from(ci)].excludes(s.remote));
        let egress_cut =
            staying.is_some_and(|ci| s.is_live() && self.policy_cuts(&plan.configs[usize::from(ci)], &s, now));
        let network_cut = staying.is_some() && s.is_live() && Self::network_policy_cuts(&plan, &s);
        if let (Some(ci), true) = (staying, egress_cut) {
            // Cut by the EgressPolicy: under `reject`, its server's next
            // segment resets the pod.
            if Self::resets_when_cut(&plan.configs[usize::from(ci)], &s) && !self.policy.cut_resets.record(&s, now) {
                self.counters.cut_flows_untracked += 1;
            }
        }
        match staying.filter(|_| !egress_cut && !network_cut) {
            Some(ci) => {
                let hairpin = if plan.egress.contains_key(&s.remote) { session::flags::HAIRPIN } else { 0 };
                let e = self.sessions.get_mut(i);
                e.config = ci;
                // A flow awaiting its name keeps awaiting it.
                e.flags = e.flags & (session::flags::NAME_CHECK | session::flags::PLAN_PARITY) | hairpin;
            }
            None => self.cut_session(i, &s, old, now),
        }
    }

    /// Cuts stale session `i` (a copy of it as it was: `s`). A live one is
    /// closed and uncounted; on an address that stays, its port cools in
    /// the form the address's new config allocates by: port reuse checks
    /// tuples, so the tuple stays as a cooling tombstone; mappings check
    /// the port bitmap, so the port cools there (RFC 6888 REQ-8).
    fn cut_session(&mut self, i: u32, s: &Session, old: &CompiledPlan, now: Time) {
        if s.flags & session::flags::NAME_CHECK != 0 {
            self.name_checks.forget(i);
            self.sessions.get_mut(i).flags &= !session::flags::NAME_CHECK;
        }
        if s.is_live() {
            self.log_session(false, s, now);
            self.counters.sessions_closed += 1;
            let under = self.replan.as_ref().and_then(|w| w.kept_under.get(usize::from(s.config)).copied().flatten());
            if let Some(t) = under {
                self.count_live(t, s.proto, false);
            }
            let port = u32::from(s.mapping == NONE);
            if port == 1 {
                if let Some(a) = self.ports.addrs.get_mut(&s.egress) {
                    a.sessions = a.sessions.saturating_sub(1);
                }
            }
            self.holdings.release(s.pod, port, 1);
        }
        if s.mapping != NONE {
            // The mapping cools down (its port's cooldown), or goes with
            // its last session when the plan cut it too.
            let cooldown = old.configs[usize::from(s.config)].timeouts.port_cooldown;
            let m = self.mappings.get_mut(s.mapping);
            m.refs -= 1;
            if s.is_live() {
                m.deadline = m.deadline.max(now.secs().saturating_add(cooldown));
            }
            if m.refs == 0 && m.unlinked {
                self.drop_cut_mapping(s.mapping, now);
            }
        }
        // Tuples freed: destinations found full may have room again.
        self.ports.exhausted.clear();
        let Some(&(eci, _)) = self.plan.egress.get(&s.egress) else {
            self.sessions.remove(i);
            return;
        };
        let next = &self.plan.configs[usize::from(eci)];
        let cooldown = next.timeouts.port_cooldown;
        let until = if s.is_live() { now.secs().saturating_add(cooldown) } else { s.deadline };
        match next.mapping {
            MappingMode::PortReuse if cooldown > 0 => {
                if s.is_live() {
                    self.sessions.unlink_in(i);
                }
                let e = self.sessions.get_mut(i);
                e.config = eci;
                e.mapping = NONE;
                e.state = state::COOLDOWN;
                e.deadline = until;
            }
            MappingMode::EndpointIndependent if cooldown > 0 && s.mapping == NONE => {
                let off = u32::from(s.egress_port - self.ports.slice.lo);
                self.cool_port((s.egress, proto_slot(s.proto) as u8, off), until);
                self.sessions.remove(i);
            }
            _ => self.sessions.remove(i),
        }
    }
}
