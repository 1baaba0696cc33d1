//! Fallback source CIDRs (a subnet routed to the gateway as a whole, the
//! AKS `userDefinedRouting` NVA pattern): sources no binding names egress
//! through the config whose CIDR holds them; nothing else unbound leaves.

use super::tests::*;
use super::*;
use crate::plan::{Binding, Plan};

/// A node subnet: not a bound pod, but inside config "b"'s source CIDR.
const NODE: [u8; 4] = [198, 18, 7, 20];

fn plan(b_sources: &[&str]) -> Arc<CompiledPlan> {
    let mut b = config("b", "198.19.101.0/28");
    b.sources = b_sources.iter().map(|s| s.parse().unwrap()).collect();
    let plan = Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![config("a", "198.19.100.0/28"), b],
        bindings: vec![Binding { pod_ip: POD_A.into(), config: "a".into(), public_key: None }].into(),
    };
    Arc::new(CompiledPlan::new(&plan).unwrap())
}

fn in_b_pool(ip: [u8; 4]) -> bool {
    ip[..3] == [198, 19, 101] && ip[3] < 16
}

#[test]
fn a_source_in_a_fallback_cidr_egresses_from_its_configs_pool_and_gets_replies() {
    let mut e = NatEngine::new(settings(), plan(&["198.18.0.0/16"]));
    let mut out = udp(NODE, 5000, SERVER, 53, b"q");
    assert_eq!(out.run(&mut e, T0), Verdict::Forward { side: Side::Outside, len: out.len });
    assert!(in_b_pool(out.src()), "{:?}", out.src());
    let mut back = udp(SERVER, 53, out.src(), out.sport(), b"a");
    assert_eq!(back.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: back.len });
    assert_eq!((back.dst(), back.dport()), (NODE, 5000));
    assert_checksums(back.bytes());
}

#[test]
fn a_bound_pod_inside_a_fallback_cidr_keeps_its_own_config() {
    let mut e = NatEngine::new(settings(), plan(&["198.18.0.0/16"]));
    let mut p = udp(POD_A, 5000, SERVER, 53, b"q");
    p.run(&mut e, T0);
    assert_eq!(p.src()[..3], [198, 19, 100], "POD_A is bound to a");
}

#[test]
fn sources_outside_every_binding_are_still_dropped_and_counted() {
    let mut e = NatEngine::new(settings(), plan(&["198.18.7.0/24"]));
    assert_eq!(udp(UNBOUND, 5000, SERVER, 53, b"x").run(&mut e, T0), Verdict::Drop(DropReason::UnboundSource));
    assert_eq!(e.counters().dropped(DropReason::UnboundSource), 1);
}

#[test]
fn a_fallback_source_arriving_from_outside_is_refused() {
    let mut e = NatEngine::new(settings(), plan(&["198.18.7.0/24"]));
    let mut p = udp(NODE, 5000, SERVER, 53, b"x");
    assert_eq!(e.process_from(&mut p.buf, p.len, Some(Side::Outside), T0), Verdict::Drop(DropReason::WrongInterface));
}

#[test]
fn fallback_sources_are_forgotten_once_they_hold_nothing() {
    let mut cfg = config("b", "198.19.101.0/28");
    cfg.sources = vec!["198.18.0.0/16".parse().unwrap()];
    cfg.timeouts.port_cooldown = 0;
    let plan = Plan { network_policies: Vec::new(), version: 1, configs: vec![cfg], bindings: Default::default() };
    let mut e = NatEngine::new(settings(), Arc::new(CompiledPlan::new(&plan).unwrap()));
    for i in 0..100u8 {
        udp([198, 18, 9, i], 5000, SERVER, 53, b"q").run(&mut e, T0);
    }
    assert_eq!(e.holdings.fallbacks.len(), 100);
    // A dropped first packet (a martian destination) leaves nothing behind.
    udp([198, 18, 9, 200], 5000, [127, 0, 0, 1], 53, b"q").run(&mut e, T0);
    assert_eq!(e.holdings.fallbacks.len(), 100);
    e.expire(Time::from_secs(10 + 301), usize::MAX);
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.holdings.fallbacks.len(), 0, "no state is kept per address of the CIDR");
}

#[test]
fn a_plan_that_drops_the_cidr_cuts_its_sessions_and_one_that_keeps_it_keeps_them() {
    let mut e = NatEngine::new(settings(), plan(&["198.18.0.0/16"]));
    let mut out = udp(NODE, 5000, SERVER, 53, b"q");
    out.run(&mut e, T0);
    e.apply_plan(plan(&["198.18.0.0/16"]), T0);
    let mut back = udp(SERVER, 53, out.src(), out.sport(), b"a");
    assert_eq!(back.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: back.len });
    e.apply_plan(plan(&[]), T0);
    // Counts follow the walk over the sessions.
    e.finish_replan();
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.holdings.fallbacks.len(), 0, "the source no CIDR binds is forgotten");
    let mut back = udp(SERVER, 53, out.src(), out.sport(), b"a");
    assert_eq!(back.run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
}

#[test]
fn a_pod_that_loses_its_binding_but_sits_in_a_fallback_cidr_keeps_its_flows_there() {
    let mut b = config("b", "198.19.101.0/28");
    b.sources = vec!["198.18.0.0/16".parse().unwrap()];
    let bound = Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![b.clone()],
        bindings: vec![Binding { pod_ip: POD_A.into(), config: "b".into(), public_key: None }].into(),
    };
    let mut e = NatEngine::new(settings(), Arc::new(CompiledPlan::new(&bound).unwrap()));
    let mut out = udp(POD_A, 5000, SERVER, 53, b"q");
    out.run(&mut e, T0);
    let unbound = Plan { network_policies: Vec::new(), version: 2, configs: vec![b], bindings: Default::default() };
    e.apply_plan(Arc::new(CompiledPlan::new(&unbound).unwrap()), T0);
    assert_eq!(e.session_count(), 1);
    let mut back = udp(SERVER, 53, out.src(), out.sport(), b"a");
    assert_eq!(back.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: back.len });
    assert_eq!(back.dst(), POD_A);
}

#[test]
fn a_fallback_sources_expired_flow_seen_again_opens_a_new_session() {
    // The packet ends the source's last (expired) session and opens the
    // next: the source must not be forgotten in between (the fuzzer's find).
    for mapping in [crate::plan::MappingMode::EndpointIndependent, crate::plan::MappingMode::PortReuse] {
        let mut cfg = config("b", "198.19.101.0/28");
        cfg.sources = vec!["198.18.0.0/16".parse().unwrap()];
        cfg.mapping = mapping;
        cfg.filtering = crate::plan::FilteringMode::EndpointDependent;
        cfg.timeouts.port_cooldown = 0;
        let plan = Plan { network_policies: Vec::new(), version: 1, configs: vec![cfg], bindings: Default::default() };
        let mut e = NatEngine::new(settings(), Arc::new(CompiledPlan::new(&plan).unwrap()));
        udp(NODE, 5000, SERVER, 53, b"q").run(&mut e, T0);
        let later = Time::from_secs(10 + 400);
        let mut again = udp(NODE, 5000, SERVER, 53, b"q");
        assert_eq!(again.run(&mut e, later), Verdict::Forward { side: Side::Outside, len: again.len }, "{mapping:?}");
        assert_eq!(e.session_count(), 1);
        e.expire(Time::from_secs(10 + 800), usize::MAX);
        assert_eq!(e.holdings.fallbacks.len(), 0);
    }
}
