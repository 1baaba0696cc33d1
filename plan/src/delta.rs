//! A plan as the change from the one before it (version N → N+1), what
//! egret-control streams once a gateway holds a full plan: a pod coming or
//! going costs a few bindings on the wire, not the node's whole plan.
//!
//! Bindings are keyed by pod IP. A delta is made only between plans whose
//! bindings are in their canonical order, (config, pod IP), with each pod IP
//! once, which is how reconcile writes them; applying it to the base plan
//! rebuilds the new plan exactly, in that order. Configs and
//! NetworkPolicies are few and travel whole when they change.

use crate::{Binding, Bindings, GatewayConfig, NetworkPolicy, Plan, PlanError};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDelta {
    /// The version this delta applies to.
    pub base: u64,
    /// The version it makes.
    pub version: u64,
    /// The new plan's configs, whole, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configs: Option<Vec<GatewayConfig>>,
    /// The new plan's NetworkPolicies, whole, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policies: Option<Vec<NetworkPolicy>>,
    /// Bindings new or changed (a pod moved to another config, a new key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind: Vec<Binding>,
    /// Pod IPs no longer bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unbind: Vec<Ipv4Addr>,
}

/// Why a delta cannot be applied; the receiver asks for the full plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta from version {base} does not follow the plan held, version {held}")]
    Gap { base: u64, held: u64 },
    #[error("the plan held does not bind each pod IP once, in order")]
    HeldNotCanonical,
    #[error("the delta binds pod {0} twice")]
    Twice(Ipv4Addr),
}

#[cfg(test)]
fn key(b: &Binding) -> (&str, Ipv4Addr) {
    (&b.config, b.pod_ip)
}

/// Compares the config names of two plans' bindings, which are runs of
/// one shared name each: the names are compared once per pair of runs,
/// not once per binding.
#[derive(Default)]
struct ConfigOrder {
    last: Option<(*const u8, *const u8, Ordering)>,
}

impl ConfigOrder {
    fn cmp(&mut self, a: &Binding, b: &Binding) -> Ordering {
        let ptrs = (a.config.as_ptr(), b.config.as_ptr());
        let by_config = match self.last {
            Some((x, y, o)) if (x, y) == ptrs => o,
            _ => {
                let o = a.config.cmp(&b.config);
                self.last = Some((ptrs.0, ptrs.1, o));
                o
            }
        };
        by_config.then(a.pod_ip.cmp(&b.pod_ip))
    }
}

/// Whether `bindings` are in (config, pod IP) order with each pod IP once
/// (checked in the same pass as the diff: IPs of one config are adjacent,
/// and a plan that passed validation binds an IP to one config only).
fn canonical(bindings: &[Binding]) -> bool {
    bindings.windows(2).all(|w| w[0].canonical_cmp(&w[1]) == Ordering::Less)
}

impl PlanDelta {
    /// `new` as a change from `old`; `None` when either plan's bindings are
    /// not canonical (the full plan is sent instead).
    pub fn between(old: &Plan, new: &Plan) -> Option<PlanDelta> {
        if !canonical(&old.bindings) || !canonical(&new.bindings) {
            return None;
        }
        let mut delta = PlanDelta {
            base: old.version,
            version: new.version,
            configs: (old.configs != new.configs).then(|| new.configs.clone()),
            network_policies: (old.network_policies != new.network_policies).then(|| new.network_policies.clone()),
            ..Default::default()
        };
        let (mut old_iter, mut new_iter) = (old.bindings.iter().peekable(), new.bindings.iter().peekable());
        let mut order = ConfigOrder::default();
        loop {
            let order = match (old_iter.peek(), new_iter.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => order.cmp(x, y),
            };
            match order {
                Ordering::Less => delta.unbind.extend(old_iter.next().map(|x| x.pod_ip)),
                Ordering::Greater => delta.bind.extend(new_iter.next().cloned()),
                Ordering::Equal => {
                    let (x, y) = (old_iter.next(), new_iter.next());
                    // Same config and IP: only the key can differ.
                    if x.map(|x| x.public_key) != y.map(|y| y.public_key) {
                        delta.bind.extend(y.cloned());
                    }
                }
            }
        }
        // A pod that moved config is unbound from one and bound to the
        // other: the bind says it all.
        if !delta.unbind.is_empty() && !delta.bind.is_empty() {
            let bound: HashSet<Ipv4Addr> = delta.bind.iter().map(|b| b.pod_ip).collect();
            delta.unbind.retain(|ip| !bound.contains(ip));
        }
        Some(delta)
    }

    /// Whether the delta changes nothing but the version.
    pub fn is_empty(&self) -> bool {
        self.configs.is_none() && self.network_policies.is_none() && self.bind.is_empty() && self.unbind.is_empty()
    }

    /// Validates `new`, the plan this delta makes of its base, a plan that
    /// passed [`Plan::validate`]: as that would, but in time bounded by the
    /// delta when only plain bindings changed. Then the configs (and every
    /// check of them alone) are the base's; each pod IP is bound once,
    /// since the base's were and every IP the delta binds was taken out of
    /// the base first; unbinding never makes a plan invalid; so only what
    /// each new binding says is left to check. Otherwise the whole plan.
    pub fn validate(&self, new: &Plan) -> Result<(), PlanError> {
        let plain = self.bind.iter().all(|b| b.public_key.is_none());
        if self.configs.is_some() || self.network_policies.is_some() || !plain {
            return new.validate();
        }
        for b in &self.bind {
            if !new.configs.iter().any(|c| *c.name == *b.config) {
                return Err(PlanError::UnknownConfig { pod: b.pod_ip, config: b.config.to_string() });
            }
            let ip = u32::from(b.pod_ip);
            if let Some(c) = new.configs.iter().find(|c| c.egress.iter().any(|p| p.contains(ip))) {
                return Err(PlanError::PodIsEgress { pod: b.pod_ip, config: c.name.clone() });
            }
        }
        Ok(())
    }

    /// The plan this delta makes of `held`, which must be its base.
    pub fn apply(&self, held: &Plan) -> Result<Plan, DeltaError> {
        if held.version != self.base {
            return Err(DeltaError::Gap { base: self.base, held: held.version });
        }
        Ok(Plan {
            version: self.version,
            configs: self.configs.clone().unwrap_or_else(|| held.configs.clone()),
            bindings: self.apply_to_bindings(&held.bindings)?,
            network_policies: self.network_policies.clone().unwrap_or_else(|| held.network_policies.clone()),
        })
    }

    /// The bindings this delta makes of its base's `held` (what [`apply`]
    /// makes of them, for a caller that keeps the rest of the plan).
    ///
    /// [`apply`]: PlanDelta::apply
    pub fn apply_to_bindings(&self, held: &Bindings) -> Result<Bindings, DeltaError> {
        if !canonical(held) {
            return Err(DeltaError::HeldNotCanonical);
        }
        let mut touched: HashSet<Ipv4Addr> = self.unbind.iter().copied().collect();
        for b in &self.bind {
            if !touched.insert(b.pod_ip) {
                return Err(DeltaError::Twice(b.pod_ip));
            }
        }
        let mut added: Vec<&Binding> = self.bind.iter().collect();
        added.sort_unstable_by(|x, y| x.canonical_cmp(y));
        // Most held bindings are untouched: a 4,096-bit filter of the
        // touched IPs spares them the hash lookup.
        let bit = |ip: Ipv4Addr| (u32::from(ip).wrapping_mul(0x9e37_79b1) >> 20) as usize;
        let mut filter = [0u64; 64];
        for ip in &touched {
            filter[bit(*ip) / 64] |= 1 << (bit(*ip) % 64);
        }
        let maybe_touched = |ip: Ipv4Addr| filter[bit(ip) / 64] & (1 << (bit(ip) % 64)) != 0;
        let kept = held.iter().filter(|b| !(maybe_touched(b.pod_ip) && touched.contains(&b.pod_ip)));
        // Merge two sorted runs into the canonical order.
        let mut bindings = Vec::with_capacity(held.len() + added.len());
        let mut added = added.into_iter().peekable();
        for b in kept {
            while let Some(a) = added.next_if(|a| a.canonical_cmp(b) == Ordering::Less) {
                bindings.push(a.clone());
            }
            bindings.push(b.clone());
        }
        bindings.extend(added.cloned());
        Ok(bindings.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(version: u64, configs: &[&str], bindings: &[(u8, usize)]) -> Plan {
        let mut p = Plan {
            version,
            configs: configs
                .iter()
                .enumerate()
                .map(|(i, n)| GatewayConfig::new(n, vec![format!("198.19.{i}.0/30").parse().unwrap()]))
                .collect(),
            bindings: bindings
                .iter()
                .map(|&(ip, c)| Binding {
                    pod_ip: Ipv4Addr::new(198, 18, 0, ip),
                    config: configs[c].into(),
                    public_key: None,
                })
                .collect(),
            network_policies: Vec::new(),
        };
        let mut seen = HashSet::new();
        p.bindings.make_mut().retain(|b| seen.insert(b.pod_ip));
        p.bindings.make_mut().sort_by(|a, b| key(a).cmp(&key(b)));
        p
    }

    #[test]
    fn a_pod_added_is_one_binding_on_the_wire() {
        let old = plan(1, &["a/x", "b/y"], &[(1, 0), (2, 1)]);
        let new = plan(2, &["a/x", "b/y"], &[(1, 0), (2, 1), (3, 1)]);
        let d = PlanDelta::between(&old, &new).unwrap();
        assert_eq!((d.base, d.version, d.bind.len(), d.unbind.len()), (1, 2, 1, 0));
        assert!(d.configs.is_none() && d.network_policies.is_none());
        assert_eq!(d.apply(&old).unwrap(), new);
    }

    #[test]
    fn a_pod_moved_to_another_config_is_bound_not_also_unbound() {
        let old = plan(1, &["a/x", "b/y"], &[(1, 0)]);
        let new = plan(2, &["a/x", "b/y"], &[(1, 1)]);
        let d = PlanDelta::between(&old, &new).unwrap();
        assert_eq!((d.bind.len(), d.unbind.len()), (1, 0));
        assert_eq!(d.apply(&old).unwrap(), new);
    }

    #[test]
    fn a_delta_refuses_a_base_it_does_not_follow() {
        let old = plan(1, &["a/x"], &[(1, 0)]);
        let new = plan(3, &["a/x"], &[]);
        let d = PlanDelta::between(&old, &new).unwrap();
        let other = plan(2, &["a/x"], &[(1, 0)]);
        assert_eq!(d.apply(&other), Err(DeltaError::Gap { base: 1, held: 2 }));
    }

    #[test]
    fn plans_with_a_pod_ip_twice_in_a_config_get_no_delta() {
        let mut old = plan(1, &["a/x"], &[(1, 0)]);
        let first = old.bindings[0].clone();
        old.bindings.make_mut().push(first);
        let new = plan(2, &["a/x"], &[(1, 0)]);
        assert_eq!(PlanDelta::between(&old, &new), None);
    }

    #[test]
    fn a_delta_survives_its_json_form() {
        let old = plan(1, &["a/x", "b/y"], &[(1, 0), (2, 1)]);
        let new = plan(2, &["a/x"], &[(1, 0)]);
        let d = PlanDelta::between(&old, &new).unwrap();
        let back: PlanDelta = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back.apply(&old).unwrap(), new);
    }

    proptest! {
        /// Any canonical plan to any other: the delta rebuilds it exactly.
        #[test]
        fn applying_the_delta_rebuilds_the_new_plan(
            old in proptest::collection::vec((0u8..40, 0usize..3), 0..30),
            new in proptest::collection::vec((0u8..40, 0usize..3), 0..30),
            more_configs in any::<bool>(),
        ) {
            let old = plan(4, &["a/x", "b/y", "c/z"], &old);
            let names: &[&str] = if more_configs { &["a/x", "b/y", "c/z", "d/w"] } else { &["a/x", "b/y", "c/z"] };
            let new = plan(9, names, &new);
            let d = PlanDelta::between(&old, &new).unwrap();
            prop_assert_eq!(d.apply(&old).unwrap(), new.clone());
            prop_assert_eq!(d.is_empty(), old.configs == new.configs && old.bindings == new.bindings);
        }

        /// From a valid plan, the delta's check says what checking the
        /// whole new plan says.
        #[test]
        fn a_deltas_check_agrees_with_the_whole_plans(
            old in proptest::collection::vec((0u8..12, 0usize..3), 0..12),
            new in proptest::collection::vec((0u8..12, 0usize..3), 0..12),
            stray in proptest::option::of((0u8..12, prop_oneof![Just("gone/x"), Just("a/x")])),
            egress in any::<bool>(),
        ) {
            let names = ["a/x", "b/y", "c/z"];
            let mut old = plan(1, &names, &old);
            let mut new = plan(2, &names, &new);
            if egress {
                // A pod IP inside c/z's pool.
                for p in [&mut old, &mut new] {
                    p.configs[2].egress = vec!["198.18.0.8/30".parse().unwrap()];
                }
                old.bindings.make_mut().retain(|b| !(8..12).contains(&b.pod_ip.octets()[3]));
            }
            if let Some((ip, config)) = stray {
                new.bindings.make_mut().retain(|b| b.pod_ip.octets()[3] != ip);
                new.bindings.make_mut().push(Binding { pod_ip: Ipv4Addr::new(198, 18, 0, ip), config: config.into(), public_key: None });
                new.bindings.make_mut().sort_by(|a, b| key(a).cmp(&key(b)));
            }
            prop_assume!(old.validate().is_ok());
            let d = PlanDelta::between(&old, &new).unwrap();
            prop_assert_eq!(d.validate(&new).is_ok(), new.validate().is_ok());
        }
    }
}
