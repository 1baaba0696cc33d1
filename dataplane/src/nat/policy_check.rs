//! Egress policy as the engine applies it: one decision per new flow (never
//! per packet), hits per rule, DNS answers learned for FQDN rules, and the
//! live sessions a changed policy cuts.

use super::*;

/// Policy rule hit counts of one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHits {
    pub config: String,
    /// `(rule name, hits)`, in rule order, then `("default", hits)`.
    pub rules: Vec<(String, u64)>,
}

impl NatEngine {
    /// Hits per policy rule, per config with a policy.
    pub fn rule_hits(&self) -> Vec<RuleHits> {
        self.plan
            .configs
            .iter()
            .zip(&self.policy_hits)
            .filter_map(|(c, hits)| {
                let p = c.policy.as_ref()?;
                let mut rules: Vec<(String, u64)> =
                    (0..p.rule_count()).map(|i| (p.rule_name(i as u32).to_string(), hits[i])).collect();
                rules.push(("default".into(), hits[p.rule_count()]));
                Some(RuleHits { config: c.name.clone(), rules })
            })
            .collect()
    }

    /// Whether a changed policy cuts this live session.
    pub(super) fn policy_cuts(&self, cfg: &CompiledConfig, s: &Session, now: Time) -> bool {
        let Some(p) = &cfg.policy else { return false };
        if p.live_flows == crate::plan::LiveFlows::Keep {
            return false;
        }
        let names = if p.has_fqdns() { self.fqdn.names(s.pod, s.remote, now.secs()) } else { Vec::new() };
        p.evaluate(s.pod, s.remote, s.proto, s.remote_port, &names).action == crate::plan::PolicyAction::Deny
    }

    /// The policy decision for a new flow, counted per rule; `None` when the
    /// config has no policy.
    pub(super) fn decide(&mut self, ci: u16, k: &FlowKey, now: Time) -> Option<Decision> {
        let plan = self.plan.clone();
        let p = plan.configs[usize::from(ci)].policy.as_ref()?;
        let names = if p.has_fqdns() { self.fqdn.names(k.local, k.remote, now.secs()) } else { Vec::new() };
        let d = p.evaluate(k.local, k.remote, k.proto, k.remote_port, &names);
        let slot = d.rule.map_or(p.rule_count(), |r| r as usize);
        self.policy_hits[usize::from(ci)][slot] += 1;
        if d.action == crate::plan::PolicyAction::Deny {
            if self.deny_events.len() < DENY_EVENTS_KEPT {
                self.deny_events.push_back(DenyEvent {
                    at: now,
                    pod: Ipv4Addr::from(k.local),
                    dst: Ipv4Addr::from(k.remote),
                    proto: k.proto,
                    port: k.remote_port,
                    config: plan.configs[usize::from(ci)].name.clone(),
                    rule: d.rule.map(|r| p.rule_name(r).to_string()),
                });
            } else {
                self.counters.deny_events_lost += 1;
            }
        }
        Some(d)
    }

    /// Learns which addresses the names in a DNS answer resolved to, for
    /// the pod it goes to, when the pod's config has FQDN rules.
    pub(super) fn learn_dns(&mut self, s: &Session, dns: &[u8], now: Time) {
        let Some(p) = self.plan.configs[usize::from(s.config)].policy.clone() else { return };
        if !p.has_fqdns() {
            return;
        }
        if !p.trusts_resolver(s.remote) {
            self.counters.dns_untrusted += 1;
            return;
        }
        for a in crate::wire::dns::answers(dns) {
            if p.wants_name(&a.name) {
                let until = now.secs().saturating_add(a.ttl.clamp(p.ttl_floor, 86_400));
                self.fqdn.learn(s.pod, u32::from_be_bytes(a.addr), &a.name, until);
            }
        }
    }
}
