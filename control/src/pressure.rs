//! Port pool pressure: whether a config's pool is nearly full on some
//! gateway node, from the gateways' reports (here, and those of gateways
//! subscribed to other replicas, as [`crate::peers`] learns them), with
//! hysteresis: a config becomes nearly full when a pool passes 90% (as
//! `egretctl ports` flags it and `EgretPortPoolNearlyFull` fires) and is
//! relieved only once every pool is below 85% again, so usage hovering
//! around 90% does not flap. A pool is a config's addresses together on
//! one node, per protocol (tcp, udp, icmp: mappings against the ports the
//! node hands out; "all" from gateways older than per-protocol reports).
//!
//! Every replica follows the pressure, so a new leader knows where it
//! stands; only the leader writes it ([`crate::kube_status`]).

use egret_api::v1::PortUsage;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;

/// A pool past this share of its capacity is nearly full.
pub const NEARLY_FULL_PERCENT: u64 = 90;
/// A nearly full config is relieved once every pool is below this.
pub const RELIEVED_PERCENT: u64 = 85;

/// One pool: a config's addresses on `node`, for `protocol`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUse {
    pub node: String,
    pub protocol: String,
    pub used: u64,
    pub capacity: u64,
}

impl PoolUse {
    /// `used` is more than `percent` of the capacity.
    fn above(&self, percent: u64) -> bool {
        u128::from(self.used) * 100 > u128::from(self.capacity) * u128::from(percent)
    }

    /// `used` is less than `percent` of the capacity.
    fn below(&self, percent: u64) -> bool {
        (u128::from(self.used) * 100) < u128::from(self.capacity) * u128::from(percent)
    }

    /// Fuller than `other`.
    fn fuller(&self, other: &PoolUse) -> bool {
        u128::from(self.used) * u128::from(other.capacity) > u128::from(other.used) * u128::from(self.capacity)
    }

    /// `node gw-0, tcp: 950/1000 ports in use (95.0%)`.
    pub fn describe(&self) -> String {
        let percent = if self.capacity == 0 { 0.0 } else { 100.0 * self.used as f64 / self.capacity as f64 };
        format!("node {}, {}: {}/{} ports in use ({percent:.1}%)", self.node, self.protocol, self.used, self.capacity)
    }
}

/// Pools from `(node, usage)` rows (one per node, config and egress
/// address): (config, node, protocol) → (ports used, capacity), a config's
/// addresses together. Rows of gateways older than per-protocol reports
/// make one "all" pool.
pub fn pools<'a>(
    usages: impl IntoIterator<Item = (&'a str, &'a PortUsage)>,
) -> BTreeMap<(&'a str, &'a str, &'a str), (u64, u64)> {
    let mut pools: BTreeMap<(&str, &str, &str), (u64, u64)> = BTreeMap::new();
    for (node, u) in usages {
        let mut add = |protocol: &'a str, used: u32, capacity: u32| {
            if capacity > 0 {
                let p = pools.entry((u.config.as_str(), node, protocol)).or_default();
                p.0 += u64::from(used);
                p.1 += u64::from(capacity);
            }
        };
        if u.in_use_by_protocol.is_empty() {
            add("all", u.in_use, u.capacity);
        }
        for protocol in ["tcp", "udp", "icmp"] {
            if let Some(&used) = u.in_use_by_protocol.get(protocol) {
                add(protocol, used, u.capacity_per_protocol);
            }
        }
    }
    pools
}

/// Whether `used` of `capacity` is past `NEARLY_FULL_PERCENT`.
pub fn nearly_full(used: u64, capacity: u64) -> bool {
    u128::from(used) * 100 > u128::from(capacity) * u128::from(NEARLY_FULL_PERCENT)
}

/// Each config's fullest pool, from `(node, usage)` rows (one per node,
/// config and egress address).
pub fn fullest<'a>(usages: impl IntoIterator<Item = (&'a str, &'a PortUsage)>) -> BTreeMap<String, PoolUse> {
    let pools = pools(usages);
    let mut out: BTreeMap<String, PoolUse> = BTreeMap::new();
    for ((config, node, protocol), (used, capacity)) in pools {
        let pool = PoolUse { node: node.into(), protocol: protocol.into(), used, capacity };
        match out.get(config) {
            Some(best) if !pool.fuller(best) => {}
            _ => {
                out.insert(config.into(), pool);
            }
        }
    }
    out
}

/// A config's pressure changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A pool passed 90%: this one.
    NearlyFull(PoolUse),
    /// Every pool is below 85% again; the fullest now.
    Relieved(PoolUse),
}

/// Which configs are nearly full: the pool that passed 90%, and when
/// (seconds).
#[derive(Clone, Debug, Default)]
pub struct Pressure {
    full: BTreeMap<String, (PoolUse, Timestamp)>,
}

impl Pressure {
    /// Takes each config's fullest pool now. A config nobody reports on
    /// keeps its state (its gateways' reports stopped or have not come
    /// yet); one that `exists` no longer is forgotten.
    pub fn update(&mut self, now: &BTreeMap<String, PoolUse>, exists: impl Fn(&str) -> bool) -> Vec<(String, Change)> {
        self.full.retain(|config, _| exists(config));
        let mut changes = Vec::new();
        for (config, pool) in now {
            if self.full.contains_key(config) {
                if pool.below(RELIEVED_PERCENT) {
                    self.full.remove(config);
                    changes.push((config.clone(), Change::Relieved(pool.clone())));
                }
            } else if pool.above(NEARLY_FULL_PERCENT) && exists(config) {
                let since = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now());
                self.full.insert(config.clone(), (pool.clone(), since));
                changes.push((config.clone(), Change::NearlyFull(pool.clone())));
            }
        }
        changes
    }

    /// The configs nearly full, each with the pool that passed 90% and when.
    pub fn nearly_full(&self) -> &BTreeMap<String, (PoolUse, Timestamp)> {
        &self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(config: &str, ip: &str, tcp: u32, udp: u32, cap: u32) -> PortUsage {
        PortUsage {
            egress_ip: ip.into(),
            config: config.into(),
            in_use_by_protocol: [("tcp".to_string(), tcp), ("udp".to_string(), udp), ("port-reuse".to_string(), 9999)]
                .into(),
            capacity_per_protocol: cap,
            ..Default::default()
        }
    }

    #[test]
    fn a_pool_is_a_configs_addresses_together_per_node_and_protocol() {
        let rows = [
            ("gw-0", usage("apps/blue", "198.19.100.1", 50, 95, 100)),
            ("gw-0", usage("apps/blue", "198.19.100.2", 40, 90, 100)),
            ("gw-1", usage("apps/blue", "198.19.100.3", 91, 0, 100)),
            ("gw-0", usage("apps/red", "198.19.101.1", 1, 2, 100)),
        ];
        let got = fullest(rows.iter().map(|(n, u)| (*n, u)));
        let pool = |node: &str, protocol: &str, used, capacity| PoolUse {
            node: node.into(),
            protocol: protocol.into(),
            used,
            capacity,
        };
        // gw-0 udp: 185/200 (92.5%), fuller than gw-1 tcp's 91%; port-reuse has no capacity.
        assert_eq!(got["apps/blue"], pool("gw-0", "udp", 185, 200));
        assert_eq!(got["apps/red"], pool("gw-0", "udp", 2, 100));
        assert_eq!(got["apps/blue"].describe(), "node gw-0, udp: 185/200 ports in use (92.5%)");

        let old = PortUsage { config: "apps/old".into(), in_use: 10, capacity: 20, ..Default::default() };
        assert_eq!(fullest([("gw-0", &old)])["apps/old"], pool("gw-0", "all", 10, 20));
    }

    #[test]
    fn nearly_full_past_90_percent_relieved_below_85_and_quiet_in_between() {
        let at = |used| -> BTreeMap<String, PoolUse> {
            [("apps/blue".to_string(), PoolUse { node: "gw-0".into(), protocol: "tcp".into(), used, capacity: 100 })]
                .into()
        };
        let mut p = Pressure::default();
        assert!(p.update(&at(90), |_| true).is_empty(), "90% is not past 90%");
        let c = p.update(&at(91), |_| true);
        assert!(matches!(&c[..], [(name, Change::NearlyFull(u))] if name == "apps/blue" && u.used == 91));
        for used in [95, 89, 85, 91] {
            assert!(p.update(&at(used), |_| true).is_empty(), "{used}%: still nearly full, nothing new");
        }
        assert!(p.update(&BTreeMap::new(), |_| true).is_empty(), "no report: no change");
        assert_eq!(p.nearly_full()["apps/blue"].0.used, 91, "the pool as it passed 90%");
        let c = p.update(&at(84), |_| true);
        assert!(matches!(&c[..], [(_, Change::Relieved(u))] if u.used == 84));
        assert!(p.update(&at(89), |_| true).is_empty());
        assert!(p.nearly_full().is_empty());

        p.update(&at(99), |_| true);
        assert!(p.update(&BTreeMap::new(), |_| false).is_empty(), "a config deleted is forgotten quietly");
        assert!(p.nearly_full().is_empty());
        assert!(p.update(&at(99), |_| false).is_empty(), "nor taken up again");
    }
}
