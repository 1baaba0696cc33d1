//! Kubernetes NetworkPolicy's egress rules as the engine applies them: one
//! decision per new flow of a pod some policy selects (never per packet,
//! and no lookup at all while the plan carries none), denials counted per
//! policy, and the live flows a changed policy no longer allows cut.
//!
//! A flow no selecting policy allows counts once against each policy that
//! selects its pod: each of them, read alone, denied it.

use super::{CompiledPlan, FlowKey, HashMap, NatEngine, Session};
use crate::plan::{NetworkPolicy, NetworkPolicyRule};

/// The plan's NetworkPolicies in lookup form.
#[derive(Debug, Clone, Default)]
pub struct CompiledNetworkPolicies {
    names: Vec<String>,
    rules: Vec<Vec<NetworkPolicyRule>>,
    /// Pod → the policies that select it.
    by_pod: HashMap<u32, Vec<u32>>,
}

/// What the NetworkPolicies say of one new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement<'a> {
    /// No policy selects the pod: this layer does not restrict it.
    Unselected,
    Allowed,
    /// Denied; these policies select the pod.
    Denied(&'a [u32]),
}

impl CompiledNetworkPolicies {
    pub fn new(policies: &[NetworkPolicy]) -> CompiledNetworkPolicies {
        let mut by_pod: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            for pod in &p.pods {
                let list = by_pod.entry(u32::from(*pod)).or_default();
                if list.last() != Some(&(i as u32)) {
                    list.push(i as u32);
                }
            }
        }
        CompiledNetworkPolicies {
            names: policies.iter().map(|p| p.name.clone()).collect(),
            rules: policies.iter().map(|p| p.egress.clone()).collect(),
            by_pod,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }

    /// Whether some policy selects `pod`.
    pub fn selects(&self, pod: u32) -> bool {
        self.by_pod.contains_key(&pod)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// A new flow of `proto` from `pod` to `dst`:`port`: allowed when a
    /// rule of any policy selecting the pod allows it (the union).
    #[inline]
    pub fn judge(&self, pod: u32, proto: u8, dst: u32, port: u16) -> Judgement<'_> {
        if self.by_pod.is_empty() {
            return Judgement::Unselected;
        }
        let Some(selecting) = self.by_pod.get(&pod) else { return Judgement::Unselected };
        let allowed = selecting.iter().any(|&i| self.rules[i as usize].iter().any(|r| r.allows(proto, dst, port)));
        if allowed {
            Judgement::Allowed
        } else {
            Judgement::Denied(selecting)
        }
    }
}

/// Denials of one NetworkPolicy (`namespace/name`), summed over a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicyDenials {
    pub policy: String,
    pub denied: u64,
}

impl NatEngine {
    /// Whether the NetworkPolicies deny the new flow `k` (outbound key:
    /// `local` is the pod); a denial is counted per selecting policy.
    pub(super) fn network_policy_denies(&mut self, k: &FlowKey) -> bool {
        if !self.pod(k.local).is_some_and(|p| p.policed) {
            return false;
        }
        let plan = &self.plan;
        match plan.network_policies.judge(k.local, k.proto, k.remote, k.remote_port) {
            Judgement::Unselected | Judgement::Allowed => false,
            Judgement::Denied(selecting) => {
                for &i in selecting {
                    if let Some(n) = self.policy.network_policy_denials.get_mut(i as usize) {
                        *n += 1;
                    }
                }
                true
            }
        }
    }

    /// Whether `plan`'s NetworkPolicies no longer allow the live session `s`.
    pub(super) fn network_policy_cuts(plan: &CompiledPlan, s: &Session) -> bool {
        matches!(plan.network_policies.judge(s.pod, s.proto, s.remote, s.remote_port), Judgement::Denied(_))
    }

    /// Denials per NetworkPolicy of the plan, in plan order.
    pub fn network_policy_denials(&self) -> Vec<NetworkPolicyDenials> {
        let np = &self.plan.network_policies;
        (0..np.len())
            .map(|i| NetworkPolicyDenials {
                policy: np.name(i).to_string(),
                denied: self.policy.network_policy_denials.get(i).copied().unwrap_or(0),
            })
            .collect()
    }

    /// The denial counts for a new plan's policies: kept by name.
    pub(super) fn carry_network_policy_denials(&self, old: &CompiledPlan, new: &CompiledPlan) -> Vec<u64> {
        let by_name: HashMap<&str, u64> = (0..old.network_policies.len())
            .map(|i| (old.network_policies.name(i), self.policy.network_policy_denials.get(i).copied().unwrap_or(0)))
            .collect();
        (0..new.network_policies.len())
            .map(|i| by_name.get(new.network_policies.name(i)).copied().unwrap_or(0))
            .collect()
    }
}
