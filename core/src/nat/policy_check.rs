//! Egress policy as the engine applies it: one decision per new flow (never
//! per packet), hits per rule, DNS answers learned for FQDN rules, and the
//! live sessions a changed policy cuts.

use super::policy::CompiledPolicy;
use super::rewrite::write_bare_tcp;
use super::{
    ipv4, name_check, Arc, CompiledConfig, Decision, DropReason, FlowKey, FqdnCache, HashMap, NatEngine, Session, Side,
    Time, Verdict,
};
use crate::wire::tcp::{TcpPacket, TcpRepr};

/// How long a TCP flow cut by a rejecting policy answers its server's
/// segments with a reset to the pod.
const CUT_RESET_SECS: u32 = 60;
/// Cut flows remembered at most; a plan that cuts more leaves the rest to
/// their applications' timeouts, as before.
const CUT_RESETS_MAX: usize = 1 << 16;

/// A cut flow's pod endpoint, and until when its server's segments are
/// reset (engine seconds).
#[derive(Clone, Copy)]
struct CutFlow {
    pod: u32,
    pod_port: u16,
    until: u32,
}

/// What the egress policies keep on this worker: the names learned from
/// DNS answers (one cache the workers share), hits per rule, the new
/// flows each NetworkPolicy denied, the TCP flows a rejecting policy cut
/// (reset when their server sends), and name refusals per rule.
pub(super) struct PolicyState {
    pub(super) fqdn: Arc<FqdnCache>,
    /// Per config: hits per policy rule, then the default's hits last.
    pub(super) hits: Vec<Vec<u64>>,
    /// New flows each NetworkPolicy of the plan denied, by index.
    pub(super) network_policy_denials: Vec<u64>,
    pub(super) cut_resets: CutResets,
    /// Flows refused for their name, by (config, rule, reason).
    pub(super) name_refusals: HashMap<name_check::RefusalKey, u64>,
}

impl PolicyState {
    pub(super) fn new(fqdn: Arc<FqdnCache>) -> PolicyState {
        PolicyState {
            fqdn,
            hits: Vec::new(),
            network_policy_denials: Vec::new(),
            cut_resets: CutResets::default(),
            name_refusals: HashMap::new(),
        }
    }
}

/// TCP flows a rejecting policy (`denyResponse: reject`, `liveFlows: cut`)
/// cut, by outside key (`Session::out_key`): the pod's endpoint and until
/// when. A cut flow's pod learns of the cut from its own next segment (the
/// policy answers it with a reset), but a pod that only waits for its
/// server would wait for its own timeout: so the server's next segment,
/// which carries the sequence number the pod expects, comes to the pod as
/// a reset instead. (A reset made at the cut could not: the NAT tracks no
/// sequence numbers.)
#[derive(Default)]
pub(super) struct CutResets {
    flows: hashbrown::HashMap<FlowKey, CutFlow>,
    /// When the next sweep of ended entries is due (engine seconds).
    next_sweep: u32,
}

impl CutResets {
    /// Remembers a cut flow; `false` when the table is full (the flow is
    /// left to its application's timeout, as before cuts were reset).
    pub(super) fn record(&mut self, s: &Session, now: Time) -> bool {
        if self.flows.len() >= CUT_RESETS_MAX {
            return false;
        }
        let until = now.secs().saturating_add(CUT_RESET_SECS);
        let f = CutFlow { pod: s.pod, pod_port: s.pod_port, until };
        self.flows.insert(s.out_key(), f);
        true
    }

    /// The pod endpoint of a cut flow that `k` (outside → inside) belongs to.
    #[inline]
    pub(super) fn find(&self, k: &FlowKey, now: Time) -> Option<(u32, u16)> {
        if self.flows.is_empty() {
            return None;
        }
        let f = self.flows.get(k)?;
        (f.until > now.secs()).then_some((f.pod, f.pod_port))
    }

    /// Forgets the flows whose time is up, once a second at most.
    pub(super) fn expire(&mut self, now: Time) {
        let secs = now.secs();
        if !self.flows.is_empty() && secs >= self.next_sweep {
            self.next_sweep = secs + 1;
            self.flows.retain(|_, f| f.until > secs);
        }
    }
}

/// Policy rule hit counts of one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHits {
    pub config: String,
    /// `(rule name, hits)`, in rule order, then `("default", hits)`.
    pub rules: Vec<(String, u64)>,
    /// Flows a rule allowed on condition and then refused for the name on
    /// the wire: `(rule index, reason, flows)`, nonzero counts only.
    pub refused: Vec<(u32, &'static str, u64)>,
}

impl NatEngine {
    /// Hits per policy rule, per config with a policy.
    pub fn rule_hits(&self) -> Vec<RuleHits> {
        self.plan
            .configs
            .iter()
            .enumerate()
            .zip(&self.policy.hits)
            .filter_map(|((ci, c), hits)| {
                let p = c.policy.as_ref()?;
                let mut rules: Vec<(String, u64)> =
                    (0..p.rule_count()).map(|i| (p.rule_name(i as u32).to_string(), hits[i])).collect();
                rules.push(("default".into(), hits[p.rule_count()]));
                let mut refused: Vec<(u32, &'static str, u64)> = self
                    .policy
                    .name_refusals
                    .iter()
                    .filter(|((config, rule, _), _)| usize::from(*config) == ci && (*rule as usize) < p.rule_count())
                    .map(|(&(_, rule, why), &n)| (rule, why.as_str(), n))
                    .collect();
                refused.sort_unstable();
                Some(RuleHits { config: c.name.clone(), rules, refused })
            })
            .collect()
    }

    /// The names `pod`'s DNS answers resolved `remote` from, for a policy
    /// with FQDN rules (none looked up for one without).
    pub(super) fn learned_names(&self, p: &CompiledPolicy, pod: u32, remote: u32, now: Time) -> Vec<Arc<str>> {
        if p.has_fqdns() {
            self.policy.fqdn.names(pod, remote, now.secs())
        } else {
            Vec::new()
        }
    }

    /// Whether a changed policy cuts this live session.
    pub(super) fn policy_cuts(&self, cfg: &CompiledConfig, s: &Session, now: Time) -> bool {
        let Some(p) = &cfg.policy else { return false };
        if p.live_flows == crate::plan::LiveFlows::Keep {
            return false;
        }
        let names = self.learned_names(p, s.pod, s.remote, now);
        p.evaluate(s.pod, s.remote, s.proto, s.remote_port, &names).action == crate::plan::PolicyAction::Deny
    }

    /// Whether a live session that `cfg`'s policy cuts is reset when its
    /// server next sends: TCP, under a policy that rejects.
    pub(super) fn resets_when_cut(cfg: &CompiledConfig, s: &Session) -> bool {
        s.proto == ipv4::PROTO_TCP && cfg.policy.as_ref().is_some_and(|p| p.rejects())
    }

    /// A segment from the server of a flow a rejecting policy cut, made
    /// into the reset the server would send the pod (RFC 793: its sequence
    /// number is the one the pod expects next). `None` when the segment
    /// is a reset itself (a reset is never answered) or the pod is gone.
    pub(super) fn reset_cut_flow(
        &mut self,
        buf: &mut [u8],
        len: usize,
        hl: usize,
        k: &FlowKey,
        now: Time,
    ) -> Option<Verdict> {
        let (pod, pod_port) = self.policy.cut_resets.find(k, now)?;
        let (flags, seq) = {
            let seg = TcpPacket::new_unchecked(&buf[hl..len]);
            (seg.flags(), seg.seq())
        };
        if flags & crate::wire::tcp::RST != 0 || self.pod(pod).is_none() {
            return None;
        }
        let rst = TcpRepr { src_port: k.remote_port, dst_port: pod_port, seq, ack: 0, flags: crate::wire::tcp::RST };
        self.counters.drop(DropReason::PolicyDenied);
        self.counters.cut_flow_resets += 1;
        Some(Verdict::Forward { side: Side::Inside, len: write_bare_tcp(buf, &rst, k.remote, pod) })
    }

    /// The policy decision for a new flow, counted per rule; `None` when the
    /// config has no policy.
    pub(super) fn decide(&mut self, ci: u16, k: &FlowKey, now: Time) -> Option<Decision> {
        let plan = self.plan.clone();
        let p = plan.configs[usize::from(ci)].policy.as_ref()?;
        let names = self.learned_names(p, k.local, k.remote, now);
        let d = p.evaluate(k.local, k.remote, k.proto, k.remote_port, &names);
        let slot = d.rule.map_or(p.rule_count(), |r| r as usize);
        self.policy.hits[usize::from(ci)][slot] += 1;
        if d.action == crate::plan::PolicyAction::Deny
            && !self.events.deny(&plan.configs[usize::from(ci)], k, d.rule, now)
        {
            self.counters.deny_events_lost += 1;
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
                // Floor first, cap last: `clamp` would panic on a floor
                // above the cap, and a plan is not the place to trust that.
                let ttl = a.ttl.max(p.ttl_floor).min(crate::plan::MAX_DNS_TTL);
                let until = now.secs().saturating_add(ttl);
                self.policy.fqdn.learn(s.pod, u32::from_be_bytes(a.addr), &a.name, until);
            }
        }
    }
}
