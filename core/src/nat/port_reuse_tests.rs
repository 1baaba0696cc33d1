//! Port-reuse allocation once the pod's paired address is full toward a
//! destination: the next flows spill to the other addresses without a scan
//! of the full address's whole port range each (bench scenario 4 saw the
//! gateway fall to ~20k packets/s from exactly that).

use super::tests::{settings, udp};
use super::*;
use crate::plan::{Binding, GatewayConfig, MappingMode, Plan};
use std::time::Instant;

const POD: [u8; 4] = [198, 18, 0, 2];
const SERVER: [u8; 4] = [198, 19, 0, 100];
const T: Time = Time::from_secs(10);

fn engine() -> NatEngine {
    let mut a = GatewayConfig::new("a", vec!["198.19.100.0/31".parse().unwrap()]);
    a.mapping = MappingMode::PortReuse;
    a.port_quota = 1 << 20;
    let plan = Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![a],
        bindings: vec![Binding { pod_ip: POD.into(), config: "a".into(), public_key: None }].into(),
    };
    let s = EngineSettings { session_capacity: 1 << 18, ports: 1024..=65535, ..settings() };
    NatEngine::new(s, Arc::new(CompiledPlan::new(&plan).unwrap()))
}

#[test]
fn a_full_paired_address_spills_without_scanning_it_for_every_flow() {
    let mut e = engine();
    // 65,535 flows to one destination: more than one address's 64,512 ports.
    let mut per_addr = HashMap::new();
    let mut timing = Vec::new();
    let batch = 1000u32;
    let mut sport: u32 = 1;
    while sport <= 65_535 {
        let t0 = Instant::now();
        let end = (sport + batch).min(65_536);
        for p in sport..end {
            let mut pkt = udp(POD, p as u16, SERVER, 53, b"x");
            assert!(matches!(pkt.run(&mut e, T), Verdict::Forward { .. }), "flow from port {p}");
            *per_addr.entry(pkt.src()).or_insert(0u32) += 1;
        }
        timing.push(t0.elapsed().as_secs_f64() / f64::from(end - sport));
        sport = end;
    }
    assert_eq!(e.session_count(), 65_535);
    assert_eq!(per_addr.len(), 2, "both addresses in use: {per_addr:?}");
    assert!(per_addr.values().all(|&n| n <= 64_512));
    // The last flows cost about what the first did; a scan of a full
    // address per flow would make them thousands of times dearer.
    let first = timing[..3].iter().sum::<f64>() / 3.0;
    let last = timing[timing.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < first * 50.0, "first flows {:.1} us each, last {:.1} us", first * 1e6, last * 1e6);
}

/// Four addresses of 16 ports each: 64 tuples toward any one destination.
fn small_pool() -> NatEngine {
    let mut a = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
    a.mapping = MappingMode::PortReuse;
    let plan = Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![a],
        bindings: vec![Binding { pod_ip: POD.into(), config: "a".into(), public_key: None }].into(),
    };
    let s = EngineSettings { ports: 1024..=1039, ..settings() };
    NatEngine::new(s, Arc::new(CompiledPlan::new(&plan).unwrap()))
}

#[test]
fn exhaustion_is_claimed_only_when_every_tuple_is_taken() {
    let mut e = small_pool();
    // 4 addresses x 16 ports toward one destination: all 64 succeed.
    for p in 0..64u16 {
        assert!(matches!(udp(POD, 5000 + p, SERVER, 53, b"x").run(&mut e, T), Verdict::Forward { .. }), "flow {p}");
    }
    assert!(matches!(udp(POD, 6000, SERVER, 53, b"x").run(&mut e, T), Verdict::Reply { .. }), "65th flow refused");
    assert_eq!(e.counters().dropped(DropReason::PoolExhausted), 1);
    // Another destination still has every port.
    assert!(matches!(udp(POD, 6000, [198, 19, 0, 101], 53, b"x").run(&mut e, T), Verdict::Forward { .. }));
}

#[test]
fn the_destinations_whose_tuples_run_scarce_are_reported_busiest_first() {
    let mut e = small_pool();
    let quiet = [198, 19, 0, 101];
    for p in 0..8u16 {
        let _ = udp(POD, 5000 + p, quiet, 53, b"x").run(&mut e, T);
    }
    assert!(e.busy_destinations().is_empty(), "a destination with free tuples is not busy");
    // 64 tuples toward SERVER taken, then three flows more: refused.
    for p in 0..67u16 {
        let _ = udp(POD, 6000 + p, SERVER, 53, b"x").run(&mut e, T);
    }
    let busy = e.busy_destinations();
    assert_eq!(busy.len(), 1, "{busy:?}");
    let b = &busy[0];
    assert_eq!((&*b.config, b.proto, b.remote, b.remote_port), ("a", 17, Ipv4Addr::from(SERVER), 53));
    assert_eq!(b.refused, 3);
    assert!(b.scans >= 1, "the first refusal scanned; later ones know it is exhausted");
}

/// One tenant whose pods run many destinations out of tuples follows at
/// most its quarter of the busy-destinations table; another tenant's busy
/// destination is still followed.
#[test]
fn one_config_follows_at_most_its_share_of_busy_destinations() {
    let pool = |name: &str, cidr: &str| {
        let mut c = GatewayConfig::new(name, vec![cidr.parse().unwrap()]);
        c.mapping = MappingMode::PortReuse;
        c
    };
    let other_pod = [198, 18, 0, 3];
    let plan = Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![pool("a", "198.19.100.0/30"), pool("b", "198.19.101.0/30")],
        bindings: vec![
            Binding { pod_ip: POD.into(), config: "a".into(), public_key: None },
            Binding { pod_ip: other_pod.into(), config: "b".into(), public_key: None },
        ]
        .into(),
    };
    let s = EngineSettings { ports: 1024..=1039, ..settings() };
    let mut e = NatEngine::new(s, Arc::new(CompiledPlan::new(&plan).unwrap()));
    let share = BUSY_DESTINATIONS_KEPT / BUSY_DESTINATIONS_CONFIG_SHARE_DIVISOR;
    // Each destination: 64 tuples taken, then one flow refused.
    let exhaust = |e: &mut NatEngine, pod: [u8; 4], dst: [u8; 4]| {
        for p in 0..65u16 {
            let _ = udp(pod, 5000 + p, dst, 53, b"x").run(e, T);
        }
    };
    for d in 0..share as u8 + 10 {
        exhaust(&mut e, POD, [198, 19, 1, d]);
    }
    assert_eq!(e.ports.busy.len(), share, "config a follows its share");
    assert!(
        e.counters().busy_destinations_unfollowed >= 10,
        "each unfollowed destination's scans and refusals are counted"
    );
    exhaust(&mut e, other_pod, SERVER);
    assert!(e.busy_destinations().iter().any(|b| &*b.config == "b"), "config b's busy destination is followed");
}
