//! A new plan swapped in between batches: sessions whose pod, config and
//! egress address survive it are kept, the rest are cut, and per-address
//! and per-pod state is rebuilt for the new pools.

use super::*;

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
    /// pool still holds their egress address; all others are cut at once.
    pub fn apply_plan(&mut self, plan: Arc<CompiledPlan>, now: Time) {
        let old = std::mem::replace(&mut self.plan, plan);
        let plan = self.plan.clone();
        let workers = u32::from(self.settings.workers.max(1));
        self.quotas = plan.configs.iter().map(|c| c.port_quota.div_ceil(workers)).collect();
        self.session_limits = plan.configs.iter().map(|c| c.session_limit.div_ceil(workers)).collect();
        let old_hits: HashMap<(&str, String), u64> = old
            .configs
            .iter()
            .zip(&self.policy_hits)
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
        self.policy_hits = policy_hits;
        self.network_policy_denials = self.carry_network_policy_denials(&old, &plan);
        self.carry_name_refusals(&old, &plan);

        // Egress addresses: keep the port bitmaps of those that stay, in
        // whichever config: ports cut below cool down before reuse (RFC
        // 6888 REQ-8) even when the address moves to another config.
        let mut addrs = HashMap::with_capacity(plan.egress.len());
        for (&a, &(ci, _)) in &plan.egress {
            let st = match self.addrs.remove(&a) {
                Some(mut st) => {
                    st.config = ci;
                    // Recounted below from the sessions that stay.
                    st.sessions = 0;
                    st
                }
                _ => {
                    let n = self.slice.len();
                    AddrState {
                        config: ci,
                        ports: [PortSet::new(n), PortSet::new(n), PortSet::new(n)],
                        sessions: 0,
                        refused: [0; 3],
                    }
                }
            };
            addrs.insert(a, st);
        }
        self.addrs = addrs;
        // Pools may have changed: every destination gets a fresh scan.
        self.exhausted.clear();
        // Keyed by config position, which the new plan may change.
        self.busy.clear();
        let addrs = &self.addrs;
        self.cooling.retain_addrs(|a| addrs.contains_key(&a));

        let old_pods = std::mem::take(&mut self.pods);
        self.pods = plan
            .pods
            .iter()
            .map(|(&p, &ci)| {
                let preferred = rendezvous(p, &plan.configs[usize::from(ci)]);
                let tunnelled = plan.tunnelled.contains(&p);
                let policed = plan.network_policies.selects(p);
                (p, PodState { config: ci, preferred, holdings: 0, sessions: 0, tunnelled, fallback: false, policed })
            })
            .collect();
        // Sources the plan binds only by a source CIDR now keep their
        // sessions under it; idle ones are forgotten below.
        for &p in old_pods.keys().filter(|&p| !plan.pods.contains_key(p)) {
            if let Some(ci) = plan.source_config(p) {
                self.pods.insert(p, fallback_pod(p, ci, &plan));
            }
        }
        drop(old_pods);
        self.any_tunnelled = !plan.tunnelled.is_empty();

        // Re-home or cut sessions, then mappings, recounting holdings.
        let keep = |pod: u32, egress: u32, old_ci: u16, plan: &CompiledPlan| -> Option<u16> {
            let ci = plan.config_of(pod)?;
            let &(eci, _) = plan.egress.get(&egress)?;
            let (o, n) = (&old.configs[usize::from(old_ci)], &plan.configs[usize::from(ci)]);
            (eci == ci && o.name == n.name && o.mapping == n.mapping).then_some(ci)
        };
        // Ports that cool in the bitmaps of addresses that stay.
        let mut cooled: Vec<((u32, u8, u32), u32)> = Vec::new();
        let idxs: Vec<u32> = self.sessions.iter().map(|(i, _)| i).collect();
        for i in idxs {
            let s = *self.sessions.get(i);
            let staying =
                keep(s.pod, s.egress, s.config, &plan).filter(|&ci| !plan.configs[usize::from(ci)].excludes(s.remote));
            let egress_cut =
                staying.is_some_and(|ci| s.is_live() && self.policy_cuts(&plan.configs[usize::from(ci)], &s, now));
            let network_cut = staying.is_some() && s.is_live() && Self::network_policy_cuts(&plan, &s);
            let kept = staying.filter(|_| !egress_cut && !network_cut);
            if let (Some(ci), true) = (staying, egress_cut) {
                // Cut by the EgressPolicy: under `reject`, its server's
                // next segment resets the pod.
                if Self::resets_when_cut(&plan.configs[usize::from(ci)], &s) && !self.cut_resets.record(&s, now) {
                    self.counters.cut_flows_untracked += 1;
                }
            }
            match kept {
                Some(ci) => {
                    let hairpin = plan.egress.contains_key(&s.remote);
                    let e = self.sessions.get_mut(i);
                    e.config = ci;
                    e.flags = if hairpin { session::flags::HAIRPIN } else { 0 };
                    if s.is_live() {
                        let pod = self.pods.get_mut(&s.pod).expect("kept pod is bound");
                        pod.sessions += 1;
                        if s.mapping == NONE {
                            pod.holdings += 1;
                            self.addrs.get_mut(&s.egress).expect("kept address").sessions += 1;
                        }
                    }
                }
                None => {
                    if s.is_live() {
                        self.log_session(false, &s, now);
                    }
                    self.counters.sessions_closed += u64::from(s.is_live());
                    if s.mapping != NONE {
                        // The mapping cools down below (its port's cooldown).
                        let cooldown = old.configs[usize::from(s.config)].timeouts.port_cooldown;
                        let m = self.mappings.get_mut(s.mapping);
                        m.refs -= 1;
                        if m.refs == 0 && s.is_live() {
                            m.deadline = now.secs().saturating_add(cooldown);
                        }
                    }
                    // RFC 6888 REQ-8 on an address that stays, in the form
                    // its new config allocates by: port reuse checks tuples,
                    // so the tuple stays as a cooling tombstone; mappings
                    // check the port bitmap, so the port cools there.
                    let Some(&(eci, _)) = plan.egress.get(&s.egress) else {
                        self.sessions.remove(i);
                        continue;
                    };
                    let next = &plan.configs[usize::from(eci)];
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
                            let off = u32::from(s.egress_port - self.slice.lo);
                            cooled.push(((s.egress, proto_slot(s.proto) as u8, off), until));
                            self.sessions.remove(i);
                        }
                        _ => self.sessions.remove(i),
                    }
                }
            }
        }
        let midxs: Vec<u32> = self.mappings.iter().map(|(i, _)| i).collect();
        for i in midxs {
            let m = *self.mappings.get(i);
            match keep(m.pod, m.egress, m.config, &plan) {
                Some(ci) if m.refs > 0 || m.deadline > now.secs() => {
                    self.mappings.get_mut(i).config = ci;
                    self.pods.get_mut(&m.pod).expect("kept pod is bound").holdings += 1;
                    let off = u32::from(m.egress_port - self.slice.lo);
                    let set = &mut self.addrs.get_mut(&m.egress).expect("kept address").ports[proto_slot(m.proto)];
                    if !set.is_set(off) {
                        set.set(off);
                    }
                }
                _ => {
                    debug_assert_eq!(m.refs, 0, "sessions of a cut mapping were cut");
                    let off = u32::from(m.egress_port - self.slice.lo);
                    let slot = proto_slot(m.proto);
                    let eim = plan.egress.get(&m.egress).is_some_and(|&(eci, _)| {
                        plan.configs[usize::from(eci)].mapping == MappingMode::EndpointIndependent
                    });
                    if eim && m.deadline > now.secs() {
                        // RFC 6888 REQ-8: the port stays taken until its
                        // cooldown ends, whoever holds the address now.
                        cooled.push(((m.egress, slot as u8, off), m.deadline));
                    } else if let Some(a) = self.addrs.get_mut(&m.egress) {
                        if a.ports[slot].is_set(off) {
                            a.ports[slot].clear(off);
                        }
                    }
                    self.mappings.remove(i);
                }
            }
        }
        for ((addr, slot, off), until) in cooled {
            let Some(a) = self.addrs.get_mut(&addr) else { continue };
            let set = &mut a.ports[usize::from(slot)];
            if !set.is_set(off) {
                set.set(off);
            }
            self.cooling.hold((addr, slot, off), until);
        }
        self.pods.retain(|_, p| !p.idle_fallback());
        self.recount_live();
    }

    pub(super) fn recount_live(&mut self) {
        let mut live = vec![[0u64; 3]; self.plan.configs.len()];
        for (_, s) in self.sessions.iter() {
            if s.is_live() {
                live[usize::from(s.config)][proto_slot(s.proto)] += 1;
            }
        }
        self.live = live;
    }
}
