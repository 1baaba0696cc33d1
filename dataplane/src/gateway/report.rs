//! What the gateway tells the control plane once a second.

use super::worker::{self, WorkerReport};
use std::sync::{Arc, Mutex};

/// What the gateway tells the control plane once a second: counters, port
/// usage, and a sample of sessions (the latest snapshot, at most 1000).
pub fn control_report(reports: &[Arc<Mutex<WorkerReport>>]) -> egret_api::v1::Report {
    use egret_api::v1;
    let rs = worker::read_reports(reports);
    let mut total = crate::nat::Counters::default();
    let mut io = worker::IoCounters::default();
    for r in &rs {
        total.add(&r.nat);
        io.add(&r.io);
    }
    let mut counters: std::collections::HashMap<String, u64> = [
        ("in2out_packets", total.in2out_packets),
        ("out2in_packets", total.out2in_packets),
        ("in2out_bytes", total.in2out_bytes),
        ("out2in_bytes", total.out2in_bytes),
        ("sessions_created", total.sessions_created),
        ("sessions_closed", total.sessions_closed),
        ("handoffs", io.handoff_sent),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for r in crate::nat::DropReason::ALL {
        counters.insert(format!("drop_{}", r.name()), total.dropped(r));
    }
    for r in worker::IoDrop::ALL {
        counters.insert(r.name().to_string(), io.dropped(r));
    }
    for t in crate::tunnel::stage::merge(rs.iter().flat_map(|r| &r.tunnels)) {
        let c = &t.counters;
        for (k, v) in [
            ("handshakes_completed", c.handshakes_completed),
            ("cookie_replies", c.cookie_replies),
            ("rx_packets", c.rx_packets),
            ("tx_packets", c.tx_packets),
            ("live_peers", t.live_peers as u64),
        ] {
            *counters.entry(format!("tunnel_{k}")).or_default() += v;
        }
        for r in crate::tunnel::TunnelDrop::ALL {
            *counters.entry(format!("drop_{}", r.name())).or_default() += c.dropped(r);
        }
    }
    let ports = worker::ports_by_address(&rs).into_iter().map(|((a, c), t)| {
        let protocols = crate::wire::IpProtocol::ALL.iter().map(|p| p.name().to_string());
        let mut in_use_by_protocol: std::collections::HashMap<String, u32> =
            protocols.clone().zip(t.mapped.map(|n| n as u32)).collect();
        in_use_by_protocol.insert("port-reuse".into(), t.sessions as u32);
        v1::PortUsage {
            egress_ip: a.to_string(),
            config: c,
            in_use: (t.mapped.iter().sum::<u64>() + t.sessions) as u32,
            capacity: (t.slice * 3) as u32,
            capacity_per_protocol: t.slice as u32,
            in_use_by_protocol,
            refused_by_protocol: protocols.zip(t.refused).collect(),
        }
    });
    let sessions = worker::sample_sessions(reports, worker::SESSION_SAMPLE)
        .iter()
        .map(|s| v1::Session {
            protocol: crate::wire::IpProtocol::name_of(s.proto).into_owned(),
            pod_ip: s.pod.to_string(),
            pod_port: u32::from(s.pod_port),
            egress_ip: s.egress.to_string(),
            egress_port: u32::from(s.egress_port),
            remote_ip: s.remote.to_string(),
            remote_port: u32::from(s.remote_port),
            config: s.config.clone(),
            state: crate::nat::session::state::name(s.proto, s.state).into(),
            idle_ms: 0,
        })
        .collect();
    // Workers count separately; the rule lists are the same plan's.
    let mut hits: std::collections::BTreeMap<(String, u32), (String, u64)> = Default::default();
    let mut refused: std::collections::HashMap<(String, u32), std::collections::HashMap<String, u64>> =
        Default::default();
    for r in &rs {
        for h in &r.rule_hits {
            for (i, (rule, n)) in h.rules.iter().enumerate() {
                hits.entry((h.config.clone(), i as u32)).or_insert_with(|| (rule.clone(), 0)).1 += n;
            }
            for &(i, why, n) in &h.refused {
                *refused.entry((h.config.clone(), i)).or_default().entry(why.to_string()).or_default() += n;
            }
        }
    }
    // NetworkPolicies' denials ride along as one "denied" row per policy,
    // named `NetworkPolicy namespace/name` (egretctl rules shows them).
    let mut denied: std::collections::BTreeMap<String, u64> = Default::default();
    for d in rs.iter().flat_map(|r| &r.network_policy_denials) {
        *denied.entry(d.policy.clone()).or_default() += d.denied;
    }
    let rule_hits = hits
        .into_iter()
        .map(|((config, index), (rule, hits))| {
            let refused = refused.remove(&(config.clone(), index)).unwrap_or_default();
            v1::RuleHits { config, rule, index, hits, refused }
        })
        .chain(denied.into_iter().map(|(policy, hits)| v1::RuleHits {
            config: format!("NetworkPolicy {policy}"),
            rule: "denied".into(),
            index: 0,
            hits,
            refused: Default::default(),
        }))
        .collect();
    v1::Report {
        rule_hits,
        counters,
        ports: ports.collect(),
        sessions,
        sessions_total: rs.iter().map(|r| r.sessions as u64).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_usage_is_summed_over_workers_per_address_and_protocol() {
        let usage = |mapped, sessions, refused| crate::nat::PortUsage {
            addr: "198.19.100.3".parse().unwrap(),
            config: "demo/a".into(),
            mapped,
            sessions,
            slice: 100,
            refused,
        };
        let workers: Vec<_> = [usage([1, 90, 0], 0, [0, 4, 0]), usage([2, 3, 1], 5, [0, 1, 0])]
            .into_iter()
            .enumerate()
            .map(|(i, u)| Arc::new(Mutex::new(WorkerReport { worker: i as u16, ports: vec![u], ..Default::default() })))
            .collect();
        let r = control_report(&workers);
        assert_eq!(r.ports.len(), 1, "one row per address and config");
        let p = &r.ports[0];
        assert_eq!((p.egress_ip.as_str(), p.config.as_str()), ("198.19.100.3", "demo/a"));
        assert_eq!((p.in_use, p.capacity, p.capacity_per_protocol), (1 + 90 + 2 + 3 + 1 + 5, 600, 200));
        let by = |m: &std::collections::HashMap<String, u32>, k: &str| m.get(k).copied();
        assert_eq!(
            ["tcp", "udp", "icmp", "port-reuse"].map(|k| by(&p.in_use_by_protocol, k)),
            [Some(3), Some(93), Some(1), Some(5)]
        );
        assert_eq!(p.refused_by_protocol.get("udp"), Some(&5));
    }
}
