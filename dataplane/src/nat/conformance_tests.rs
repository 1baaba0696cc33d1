//! Defects found against RFC 4787, 5382, 5508, 7857, 6888 and RFC 1812,
//! each pinned by the behaviour a user would notice (issue 14). The README's
//! conformance table names these tests.

use super::tests::*;
use super::*;
use crate::plan::{Binding, FilteringMode, GatewayConfig, MappingMode, Plan};
use crate::wire::l4::tcp as tcpf;

fn plan_of(configs: Vec<GatewayConfig>, bindings: &[([u8; 4], &str)]) -> Arc<CompiledPlan> {
    let bindings = bindings.iter().map(|&(p, c)| Binding { pod_ip: p.into(), config: c.into() }).collect();
    Arc::new(Plan { version: 1, configs, bindings }.compile().unwrap())
}

fn at(secs: u64) -> Time {
    Time::from_secs(T0.millis() / 1000 + secs)
}

/// RFC 7857 2.2: a spoofed or out-of-window RST must not cut an idle
/// established connection after the transitory timeout.
#[test]
fn a_stray_rst_does_not_shorten_an_established_connection() {
    let mut e = engine();
    let mut syn = tcp(POD_A, 5000, SERVER, 443, tcpf::SYN);
    syn.run(&mut e, T0);
    let (egress, port) = (syn.src(), syn.sport());
    tcp(SERVER, 443, egress, port, tcpf::SYN | tcpf::ACK).run(&mut e, T0);
    tcp(POD_A, 5000, SERVER, 443, tcpf::ACK).run(&mut e, T0);
    // A spoofed RST from the internet, then the connection carries on.
    tcp(SERVER, 443, egress, port, tcpf::RST).run(&mut e, at(1));
    tcp(POD_A, 5000, SERVER, 443, tcpf::ACK).run(&mut e, at(2));
    // Idle for an hour: well past the transitory 240 s.
    e.expire(at(3600), 1 << 16);
    let mut back = tcp(SERVER, 443, egress, port, tcpf::ACK);
    assert_eq!(back.run(&mut e, at(3600)), Verdict::Forward { side: Side::Inside, len: back.len });
}

/// Fragments after the first of a datagram to an excluded destination
/// bypass translation as the first did (they used to be held, then lost).
#[test]
fn later_fragments_to_an_excluded_destination_follow_the_first() {
    let mut e = engine();
    let big = udp(POD_A, 5000, EXCLUDED, 9000, &[7u8; 600]);
    let (mut f1, mut f2) = fragment(&big, 304);
    assert!(matches!(f1.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
    assert_eq!(f2.run(&mut e, T0), Verdict::Forward { side: Side::Outside, len: f2.len });
    assert_eq!((f1.src(), f2.src()), (POD_A, POD_A), "untranslated");
    assert_eq!(f2.ttl(), 63);
    reassembled_udp_is_valid(&f1, &f2);
    assert_eq!(e.counters().fragments_held, 0);
}

/// `egret_ports_in_use{proto="port-reuse"}` comes from these counts; a plan
/// push that keeps every session must leave them as they were.
#[test]
fn a_plan_push_keeps_port_reuse_session_counts() {
    let mut a = config("a", "198.19.100.0/28");
    a.mapping = MappingMode::PortReuse;
    let plan = plan_with(a.clone(), config("b", "198.19.101.0/28"));
    let mut e = NatEngine::new(settings(), plan);
    for p in 0..10 {
        udp(POD_A, 5000 + p, SERVER, 53, b"x").run(&mut e, T0);
    }
    let sessions = |e: &NatEngine| e.port_usage().iter().map(|u| u.sessions).sum::<u32>();
    assert_eq!(sessions(&e), 10);
    for v in 2..5 {
        let mut next = Plan {
            version: v,
            configs: vec![a.clone(), config("b", "198.19.101.0/28")],
            bindings: vec![
                Binding { pod_ip: POD_A.into(), config: "a".into() },
                Binding { pod_ip: POD_B.into(), config: "b".into() },
            ],
        };
        next.version = v;
        e.apply_plan(Arc::new(next.compile().unwrap()), T0);
        assert_eq!(sessions(&e), 10, "after plan {v}");
    }
}

fn eif_config(name: &str, pool: &str) -> GatewayConfig {
    let mut c = config(name, pool);
    c.filtering = FilteringMode::EndpointIndependent;
    c
}

/// RFC 6888 REQ-5: a pod whose one socket talks to many destinations holds
/// one endpoint-independent mapping but a session per destination; the
/// session limit stops it before it fills the worker's table.
#[test]
fn one_pods_many_destinations_stop_at_its_session_limit() {
    let mut a = config("a", "198.19.100.0/28");
    a.session_limit = 100;
    let mut e = NatEngine::new(settings(), plan_with(a, config("b", "198.19.101.0/28")));
    let mut refused = 0;
    for d in 0..150u16 {
        let dst = [198, 19, 1 + (d >> 8) as u8, d as u8];
        if !matches!(udp(POD_A, 5000, dst, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }) {
            refused += 1;
        }
    }
    assert_eq!(refused, 50);
    assert_eq!(e.counters().dropped(DropReason::SessionLimit), 50);
    assert_eq!(e.mapping_count(), 1, "one socket, one mapping");
    // Other pods still get sessions.
    assert!(matches!(udp(POD_B, 5000, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
    // Sessions that end give their room back.
    e.expire(at(400), 1 << 16);
    assert!(matches!(udp(POD_A, 5000, SERVER, 53, b"x").run(&mut e, at(400)), Verdict::Forward { .. }));
}

/// RFC 6888 REQ-5 under endpoint-independent filtering: outside peers
/// opening sessions on a pod's mapping count against the same limit.
#[test]
fn outside_peers_on_a_mapping_stop_at_the_pods_session_limit() {
    let mut a = eif_config("a", "198.19.100.0/28");
    a.session_limit = 10;
    let mut e = NatEngine::new(settings(), plan_with(a, config("b", "198.19.101.0/28")));
    let mut out = udp(POD_A, 5000, SERVER, 3478, b"stun");
    out.run(&mut e, T0);
    let mut let_in = 0;
    for peer in 0..20u8 {
        let mut p = udp([198, 19, 0, 100 + peer], 9999, out.src(), out.sport(), b"hi");
        let_in += usize::from(matches!(p.run(&mut e, T0), Verdict::Forward { .. }));
    }
    assert_eq!(let_in, 9, "the pod's own session counts too");
    assert_eq!(e.counters().dropped(DropReason::SessionLimit), 11);
}

/// Endpoint-independent filtering must not open what the config forbids:
/// a host the EgressPolicy denies, or an excluded destination, may not
/// reach the pod through its mapping (and then be talked to freely).
#[test]
fn endpoint_independent_filtering_obeys_the_policy_and_exclusions() {
    use crate::plan::{EgressPolicy, PolicyAction, PolicyRule};
    let mut a = eif_config("a", "198.19.100.0/28");
    a.policy = Some(EgressPolicy {
        default_action: PolicyAction::Deny,
        rules: vec![PolicyRule {
            name: "stun".into(),
            action: PolicyAction::Allow,
            cidrs: vec!["198.19.0.0/25".parse().unwrap()],
            fqdns: Vec::new(),
            protocol: None,
            ports: Vec::new(),
            pods: None,
            pod_selector: None,
        }],
        deny_response: crate::plan::DenyResponse::Drop,
        live_flows: crate::plan::LiveFlows::Cut,
        dns_ttl_floor: 30,
    });
    let mut e = NatEngine::new(settings(), plan_with(a, config("b", "198.19.101.0/28")));
    let mut out = udp(POD_A, 5000, SERVER, 3478, b"stun");
    assert!(matches!(out.run(&mut e, T0), Verdict::Forward { .. }));
    let allowed = [198, 19, 0, 77];
    let denied = [198, 19, 0, 200];
    let mut ok = udp(allowed, 9999, out.src(), out.sport(), b"hi");
    assert!(matches!(ok.run(&mut e, T0), Verdict::Forward { side: Side::Inside, .. }));
    let mut bad = udp(denied, 9999, out.src(), out.sport(), b"hi");
    assert_eq!(bad.run(&mut e, T0), Verdict::Drop(DropReason::PolicyDenied));
    let mut excluded = udp(EXCLUDED, 9999, out.src(), out.sport(), b"hi");
    assert_eq!(excluded.run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
    // And the pod's answer to the denied host gets no session either.
    assert_eq!(udp(POD_A, 5000, denied, 9999, b"x").run(&mut e, T0), Verdict::Drop(DropReason::PolicyDenied));
}

/// RFC 4787 REQ-9 / RFC 5508: a pod that answers a hairpinned peer on a
/// session opened from its mapping reaches that peer inside, not by the
/// outside interface.
#[test]
fn a_reply_on_a_hairpin_session_opened_from_a_mapping_stays_inside() {
    let mut e =
        NatEngine::new(settings(), plan_with(config("a", "198.19.100.0/28"), eif_config("b", "198.19.101.0/28")));
    let mut bout = udp(POD_B, 7000, SERVER, 3478, b"stun");
    bout.run(&mut e, T0);
    let mut a_to_b = udp(POD_A, 5000, bout.src(), bout.sport(), b"hello b");
    assert_eq!(a_to_b.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: a_to_b.len });
    // B answers A's egress endpoint, as it saw it.
    let mut b_to_a = udp(POD_B, 7000, a_to_b.src(), a_to_b.sport(), b"hello a");
    assert_eq!(b_to_a.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: b_to_a.len });
    assert_eq!((b_to_a.dst(), b_to_a.dport()), (POD_A, 5000));
    assert_eq!(b_to_a.src(), bout.src(), "A sees B's egress address");
    assert_checksums(b_to_a.bytes());
}
