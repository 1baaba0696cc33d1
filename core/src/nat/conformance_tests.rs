//! Defects found against RFC 4787, 5382, 5508, 7857, 6888 and RFC 1812,
//! each pinned by the behaviour a user would notice (issue 14). docs/nat-core.md's
//! conformance table names these tests.

use super::tests::*;
use super::*;
use crate::plan::{Binding, FilteringMode, GatewayConfig, MappingMode, Plan};
use crate::wire::tcp as tcpf;

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
            network_policies: Vec::new(),
            version: v,
            configs: vec![a.clone(), config("b", "198.19.101.0/28")],
            bindings: vec![
                Binding { pod_ip: POD_A.into(), config: "a".into(), public_key: None },
                Binding { pod_ip: POD_B.into(), config: "b".into(), public_key: None },
            ]
            .into(),
        };
        next.version = v;
        e.apply_plan(Arc::new(CompiledPlan::new(&next).unwrap()), T0);
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
/// opening sessions on a pod's mapping count against the same limit, and
/// may open them only while the pod holds less than half of it.
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
    assert_eq!(let_in, 4, "half of 10, the pod's own session counting too");
    assert_eq!(e.counters().dropped(DropReason::SessionLimit), 16);
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
            server_name: Default::default(),
            tls_ports: vec![],
            http_ports: vec![],
        }],
        deny_response: crate::plan::DenyResponse::Drop,
        live_flows: crate::plan::LiveFlows::Cut,
        dns_ttl_floor: 30,
        dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
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

mod dns_trust {
    use super::*;
    use crate::plan::{DenyResponse, EgressPolicy, LiveFlows, PolicyAction, PolicyRule, Protocol};

    const RESOLVER: [u8; 4] = [198, 19, 0, 53];
    const ROGUE: [u8; 4] = [198, 19, 0, 99];
    const API: [u8; 4] = [198, 19, 0, 10];

    fn rule(name: &str, cidrs: &[&str], fqdns: &[&str], proto: Protocol, port: &str) -> PolicyRule {
        PolicyRule {
            name: name.into(),
            action: PolicyAction::Allow,
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            fqdns: fqdns.iter().map(|s| s.to_string()).collect(),
            protocol: Some(proto),
            ports: vec![port.parse().unwrap()],
            pods: None,
            server_name: Default::default(),
            tls_ports: vec![],
            http_ports: vec![],
        }
    }

    /// DNS to any host is allowed (a common rule), FQDN rule for the API.
    fn engine() -> NatEngine {
        let mut a = config("a", "198.19.100.0/28");
        a.policy = Some(EgressPolicy {
            default_action: PolicyAction::Deny,
            rules: vec![
                rule("dns", &["0.0.0.0/0"], &[], Protocol::Udp, "53"),
                rule("api", &[], &["api.example.com", "*.cdn.example.net"], Protocol::Tcp, "443"),
            ],
            deny_response: DenyResponse::Drop,
            live_flows: LiveFlows::Cut,
            dns_ttl_floor: 30,
            dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
        });
        NatEngine::new(settings(), plan_with(a, config("b", "198.19.101.0/28")))
    }

    fn answer(from: [u8; 4], name: &str, addr: [u8; 4], q: &Pkt) -> Pkt {
        let m = crate::wire::dns::tests::response(name, &[(name, 1, addr.to_vec(), 300)]);
        udp(from, 53, q.src(), q.sport(), &m)
    }

    /// A pod that may send DNS to a host it runs must not teach the gateway
    /// that an allowed name resolves to an address of its choosing.
    #[test]
    fn answers_from_hosts_other_than_the_named_resolvers_open_nothing() {
        let mut e = engine();
        let mut q = udp(POD_A, 5353, ROGUE, 53, b"query");
        assert!(matches!(q.run(&mut e, T0), Verdict::Forward { .. }));
        let mut lie = answer(ROGUE, "api.example.com", [198, 19, 0, 66], &q);
        assert!(matches!(lie.run(&mut e, T0), Verdict::Forward { side: Side::Inside, .. }), "still delivered");
        assert_eq!(
            tcp(POD_A, 40000, [198, 19, 0, 66], 443, tcpf::SYN).run(&mut e, T0),
            Verdict::Drop(DropReason::PolicyDenied)
        );
        assert_eq!(e.counters().dns_untrusted, 1);
        // The named resolver's answer does teach.
        let mut q = udp(POD_A, 5354, RESOLVER, 53, b"query");
        q.run(&mut e, T0);
        answer(RESOLVER, "api.example.com", API, &q).run(&mut e, T0);
        assert!(matches!(tcp(POD_A, 40001, API, 443, tcpf::SYN).run(&mut e, T0), Verdict::Forward { .. }));
    }

    /// FQDN rules without resolvers are a config error, not a silent hole.
    #[test]
    fn fqdn_rules_without_resolvers_are_rejected_with_the_field_named() {
        let mut p = EgressPolicy {
            default_action: PolicyAction::Deny,
            rules: vec![rule("api", &[], &["api.example.com"], Protocol::Tcp, "443")],
            deny_response: DenyResponse::Drop,
            live_flows: LiveFlows::Cut,
            dns_ttl_floor: 30,
            dns_resolvers: Vec::new(),
        };
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains("dnsResolvers"), "{err}");
        p.dns_resolvers = vec!["198.19.0.53/32".parse().unwrap()];
        assert!(p.validate().is_ok());
    }

    /// Names kept per (pod, address) are bounded: a flood of names on one
    /// address neither grows without limit nor locks out a fresh name.
    #[test]
    fn names_per_address_are_bounded() {
        let cache = FqdnCache::new(1024);
        for i in 0..1000u32 {
            cache.learn(1, 2, &format!("n{i}.cdn.example.net"), 100 + i);
        }
        let names = cache.names(1, 2, 0);
        assert_eq!(names.len(), policy::NAMES_PER_ADDRESS);
        assert!(names.iter().any(|n| &**n == "n999.cdn.example.net"), "the newest name is kept");
    }
}

mod hairpin {
    use super::*;

    fn engine() -> NatEngine {
        NatEngine::new(settings(), plan_with(config("a", "198.19.100.0/28"), eif_config("b", "198.19.101.0/28")))
    }

    /// Pod B's public UDP endpoint (as a STUN server would report it).
    fn b_endpoint(e: &mut NatEngine) -> ([u8; 4], u16) {
        let mut bout = udp(POD_B, 7000, SERVER, 3478, b"stun");
        assert!(matches!(bout.run(e, T0), Verdict::Forward { .. }));
        (bout.src(), bout.sport())
    }

    /// RFC 5508 REQ-7 / RFC 4787 REQ-9: every fragment of a hairpinned
    /// datagram reaches the pod behind the egress address, none leaves.
    #[test]
    fn fragments_of_a_hairpinned_datagram_all_stay_inside() {
        let mut e = engine();
        let (b_ip, b_port) = b_endpoint(&mut e);
        let big = udp(POD_A, 5000, b_ip, b_port, &[5u8; 600]);
        let (mut f1, mut f2) = fragment(&big, 304);
        assert!(matches!(f1.run(&mut e, T0), Verdict::Forward { side: Side::Inside, .. }));
        assert_eq!(f2.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: f2.len });
        assert_eq!((f1.dst(), f2.dst()), (POD_B, POD_B));
        assert_eq!(f1.src(), f2.src());
        assert_eq!((f1.ttl(), f2.ttl()), (63, 63));
        reassembled_udp_is_valid(&f1, &f2);
    }

    /// RFC 5508 REQ-7 (a MUST): an ICMP error a pod sends about a hairpinned
    /// packet reaches the pod that sent it, translated, not the outside.
    #[test]
    fn an_icmp_error_about_a_hairpinned_packet_reaches_the_other_pod() {
        let mut e = engine();
        let (b_ip, b_port) = b_endpoint(&mut e);
        let mut a_to_b = udp(POD_A, 5000, b_ip, b_port, b"hello b");
        assert!(matches!(a_to_b.run(&mut e, T0), Verdict::Forward { side: Side::Inside, .. }));
        // B's socket is gone: port unreachable about what B received.
        let mut err = icmp_error(POD_B, a_to_b.src(), 3, 3, a_to_b.bytes());
        assert_eq!(err.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: err.len });
        assert_eq!(err.dst(), POD_A);
        assert_eq!(err.src(), b_ip, "from B's egress address, as A addressed B");
        assert_eq!(err.ttl(), 63);
        assert_checksums(err.bytes());
        let quoted = &err.l4()[8..];
        assert_eq!((&quoted[12..16], &quoted[16..20]), (&POD_A[..], &b_ip[..]), "A's own packet, as A sent it");
    }

    /// A hairpinned packet is forwarded once: one TTL decrement, also when
    /// its return leg runs on another worker.
    #[test]
    fn a_hairpinned_packet_loses_one_ttl_even_when_handed_between_workers() {
        let plan = plan_with(config("a", "198.19.100.0/28"), eif_config("b", "198.19.101.0/28"));
        let mut w = [
            NatEngine::new(EngineSettings { worker: 0, workers: 2, ..settings() }, plan.clone()),
            NatEngine::new(EngineSettings { worker: 1, workers: 2, ..settings() }, plan),
        ];
        let run = |w: &mut [NatEngine; 2], p: &mut Pkt| {
            let mut on = 0usize;
            let mut handed = 0;
            loop {
                match p.run(&mut w[on], T0) {
                    Verdict::Handoff { worker, .. } => {
                        on = usize::from(worker);
                        handed += 1;
                    }
                    v => return (v, handed),
                }
            }
        };
        let mut bout = udp(POD_B, 7000, SERVER, 3478, b"stun");
        run(&mut w, &mut bout);
        let mut cross_worker = 0;
        for port in 0..32 {
            let mut p = udp(POD_A, 5000 + port, bout.src(), bout.sport(), b"hi");
            let (v, handed) = run(&mut w, &mut p);
            assert_eq!(v, Verdict::Forward { side: Side::Inside, len: p.len });
            assert_eq!((p.dst(), p.ttl()), (POD_B, 63), "port {port}, handed {handed} times");
            assert_checksums(p.bytes());
            cross_worker += usize::from(handed >= 2);
        }
        assert!(cross_worker > 0, "some flows crossed workers on their return leg");
    }
}

/// A flood of orphan fragments from the internet (random IDs to an egress
/// address) cannot take the hold buffers from the pods' out-of-order
/// fragments, and one source cannot take all of the internet's share.
#[test]
fn an_internet_fragment_flood_does_not_starve_the_pods_fragments() {
    let mut e = engine(); // 256 hold buffers
    let held_from = |e: &mut NatEngine, src: [u8; 4], n: u16| {
        let mut held = 0;
        for id in 0..n {
            let orphan = udp(src, 9000, [198, 19, 100, 1], 40000, &[1u8; 600]);
            let (_, mut f2) = fragment(&orphan, 304);
            f2.buf[4..6].copy_from_slice(&id.to_be_bytes());
            f2.buf[10..12].copy_from_slice(&[0, 0]);
            let c = fold(&f2.buf[..20]);
            f2.buf[10..12].copy_from_slice(&c.to_be_bytes());
            held += usize::from(f2.run(e, T0) == Verdict::Held);
        }
        held
    };
    assert_eq!(held_from(&mut e, SERVER, 1000), 16, "one source: an eighth of the internet's half");
    let mut total = 16;
    for s in 0..20u8 {
        total += held_from(&mut e, [198, 19, 7, s], 100);
    }
    assert_eq!(total, 128, "the internet: half of the hold buffers");
    // A pod's out-of-order fragment is still held and released.
    let big = udp(POD_A, 5000, SERVER, 9000, &[7u8; 600]);
    let (mut f1, mut f2) = fragment(&big, 304);
    assert_eq!(f2.run(&mut e, T0), Verdict::Held);
    assert!(matches!(f1.run(&mut e, T0), Verdict::Forward { .. }));
    assert!(e.take_released().is_some());
}

mod plan_cooldown {
    use super::*;

    /// Config a holds one address and one port per protocol; pods A and B.
    fn one_port(mapping: MappingMode, a_binds: &str) -> Arc<CompiledPlan> {
        let mut a = config("a", "198.19.100.1/32");
        a.mapping = mapping;
        let plan = Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![a, config("b", "198.19.101.0/28")],
            bindings: vec![
                Binding { pod_ip: POD_A.into(), config: a_binds.into(), public_key: None },
                Binding { pod_ip: [198, 18, 0, 5].into(), config: "a".into(), public_key: None },
            ]
            .into(),
        };
        Arc::new(CompiledPlan::new(&plan).unwrap())
    }

    /// RFC 6888 REQ-8: a port freed because a plan moved its pod away cools
    /// down before another pod gets it, as a port freed by expiry does.
    #[test]
    fn a_port_a_plan_frees_cools_down_before_reuse() {
        for mapping in [MappingMode::EndpointIndependent, MappingMode::PortReuse] {
            let s = EngineSettings { ports: 1024..=1024, ..settings() };
            let mut e = NatEngine::new(s, one_port(mapping, "a"));
            let mut first = udp(POD_A, 5000, SERVER, 53, b"x");
            assert!(matches!(first.run(&mut e, T0), Verdict::Forward { .. }), "{mapping:?}");
            // Pod A moves to config b: its session and port are cut.
            e.apply_plan(one_port(mapping, "b"), at(1));
            let other = [198, 18, 0, 5];
            let v = udp(other, 6000, SERVER, 53, b"x").run(&mut e, at(2));
            assert!(matches!(v, Verdict::Reply { .. }), "{mapping:?}: the port is cooling: {v:?}");
            assert_eq!(e.counters().dropped(DropReason::PoolExhausted), 1);
            // After the cooldown (120 s) it is free again.
            e.expire(at(1 + 121), 1 << 16);
            let mut later = udp(other, 6000, SERVER, 53, b"x");
            assert!(matches!(later.run(&mut e, at(1 + 121)), Verdict::Forward { .. }), "{mapping:?}");
            assert_eq!((later.src(), later.sport()), (first.src(), first.sport()));
        }
    }
}

/// Port reuse: once every tuple toward a destination is taken, refused new
/// flows to it cost a lookup, not a scan of every address's range each;
/// the destination is scanned again as soon as one of its tuples frees.
#[test]
fn an_exhausted_destination_is_not_rescanned_for_every_refused_flow() {
    let mut a = config("a", "198.19.100.0/31");
    a.mapping = MappingMode::PortReuse;
    a.timeouts.port_cooldown = 0;
    let plan = plan_with(a, config("b", "198.19.101.0/28"));
    let mut e = NatEngine::new(EngineSettings { ports: 1024..=1039, ..settings() }, plan);
    for p in 0..32 {
        assert!(matches!(udp(POD_A, 5000 + p, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
    }
    // Filling the last tuples may take scans (random probes miss); refusing
    // may take one more, to find the destination full.
    let filled = e.counters().pool_scans;
    for p in 0..1000 {
        // Refused (answered while the pod's share of ICMP errors lasts).
        assert!(!matches!(udp(POD_A, 6000 + p, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
    }
    assert_eq!(e.counters().dropped(DropReason::PoolExhausted), 1000);
    let scans = e.counters().pool_scans - filled;
    assert!(scans <= 1, "one scan found the destination full, not one per refusal: {scans}");
    // Another destination is not affected.
    assert!(matches!(udp(POD_A, 5000, SERVER2, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
    // One session to SERVER ends: the next flow gets its tuple.
    e.expire(at(301), 1 << 16);
    assert!(matches!(udp(POD_A, 7000, SERVER, 53, b"x").run(&mut e, at(301)), Verdict::Forward { .. }));
}

mod arrival_interface {
    use super::*;

    fn run_from(p: &mut Pkt, e: &mut NatEngine, from: Side) -> Verdict {
        let v = e.process_from(&mut p.buf, p.len, Some(from), T0);
        if let Verdict::Forward { len, .. } | Verdict::Reply { len } = v {
            p.len = len;
        }
        v
    }

    /// A packet from the internet carrying a pod's source address is not
    /// translated as that pod's traffic.
    #[test]
    fn a_pods_source_arriving_on_the_outside_is_dropped() {
        let mut e = engine();
        let mut spoof = udp(POD_A, 5000, SERVER, 53, b"x");
        assert_eq!(run_from(&mut spoof, &mut e, Side::Outside), Verdict::Drop(DropReason::WrongInterface));
        assert_eq!(e.session_count(), 0);
        let mut real = udp(POD_A, 5000, SERVER, 53, b"x");
        assert!(matches!(run_from(&mut real, &mut e, Side::Inside), Verdict::Forward { side: Side::Outside, .. }));
    }

    /// An excluded host's address reaches pods only from the outside, where
    /// excluded destinations live; from the inside it is a spoof.
    #[test]
    fn an_excluded_source_reaches_pods_only_from_the_outside() {
        let mut e = engine();
        let mut spoof = udp(EXCLUDED, 53, POD_A, 5000, b"x");
        assert_eq!(run_from(&mut spoof, &mut e, Side::Inside), Verdict::Drop(DropReason::WrongInterface));
        let mut back = udp(EXCLUDED, 53, POD_A, 5000, b"x");
        assert!(matches!(run_from(&mut back, &mut e, Side::Outside), Verdict::Forward { side: Side::Inside, .. }));
    }

    /// Traffic for egress addresses from the inside is not the internet's.
    #[test]
    fn traffic_to_an_egress_address_from_the_inside_is_not_taken_as_the_internets() {
        let mut e = engine();
        let mut out = udp(POD_A, 5000, SERVER, 53, b"x");
        run_from(&mut out, &mut e, Side::Inside);
        let mut spoof = udp(SERVER, 53, out.src(), out.sport(), b"y");
        assert_eq!(run_from(&mut spoof, &mut e, Side::Inside), Verdict::Drop(DropReason::WrongInterface));
        let mut reply = udp(SERVER, 53, out.src(), out.sport(), b"y");
        assert!(matches!(run_from(&mut reply, &mut e, Side::Outside), Verdict::Forward { side: Side::Inside, .. }));
        // Hairpinning is still the pods' own way to an egress address.
        let mut hairpin = udp(POD_B, 6000, out.src(), out.sport(), b"z");
        assert!(matches!(run_from(&mut hairpin, &mut e, Side::Inside), Verdict::Drop(DropReason::Unsolicited)));
    }
}

mod mtu {
    use super::*;

    fn set_df(p: &mut Pkt, df: bool) {
        p.buf[6] = if df { p.buf[6] | 0x40 } else { p.buf[6] & !0x40 };
        p.buf[10..12].copy_from_slice(&[0, 0]);
        let c = fold(&p.buf[..20]);
        p.buf[10..12].copy_from_slice(&c.to_be_bytes());
    }

    fn engine_mtu(inside: usize, outside: usize) -> NatEngine {
        NatEngine::new(EngineSettings { mtu: [inside, outside], ..settings() }, default_plan())
    }

    /// RFC 1812 / RFC 1191: DF set and too big for the way out: the sender
    /// gets fragmentation needed with the next-hop MTU, nothing vanishes.
    #[test]
    fn a_df_packet_too_big_for_the_outside_gets_fragmentation_needed_with_the_mtu() {
        let mut e = engine_mtu(1500, 1280);
        let mut big = udp(POD_A, 5000, SERVER, 9000, &[1u8; 1400]);
        set_df(&mut big, true);
        assert!(matches!(big.run(&mut e, T0), Verdict::Reply { .. }));
        assert_eq!((big.src(), big.dst()), (GW.octets(), POD_A));
        let icmp = big.l4();
        assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1280, "next-hop MTU");
        assert_eq!(&icmp[8 + 12..8 + 16], &POD_A[..], "quotes the pod's own packet");
        assert_checksums(big.bytes());
        assert_eq!(e.counters().dropped(DropReason::PacketTooBig), 1);
        // What fits goes through.
        let mut fits = udp(POD_A, 5000, SERVER, 9000, &[1u8; 1200]);
        set_df(&mut fits, true);
        assert!(matches!(fits.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
    }

    /// The same toward a pod: the internet host is told, from the egress
    /// address it sent to.
    #[test]
    fn a_df_reply_too_big_for_the_inside_gets_fragmentation_needed_from_the_egress_address() {
        let mut e = engine_mtu(1280, 1500);
        let mut out = udp(POD_A, 5000, SERVER, 9000, b"x");
        out.run(&mut e, T0);
        let mut big = udp(SERVER, 9000, out.src(), out.sport(), &[1u8; 1400]);
        set_df(&mut big, true);
        assert!(matches!(big.run(&mut e, T0), Verdict::Reply { .. }));
        assert_eq!((big.src(), big.dst()), (out.src(), SERVER));
        assert_eq!(u16::from_be_bytes([big.l4()[6], big.l4()[7]]), 1280);
    }

    /// RFC 4787 REQ-13 / RFC 1812: DF clear and too big: fragmented after
    /// translation, every piece within the MTU, reassembling to the packet.
    #[test]
    fn a_packet_without_df_too_big_for_the_outside_is_fragmented() {
        let mut e = engine_mtu(1500, 576);
        let payload: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
        let mut big = udp(POD_A, 5000, SERVER, 9000, &payload);
        set_df(&mut big, false);
        let Verdict::Forward { side: Side::Outside, len } = big.run(&mut e, T0) else { panic!() };
        assert!(len <= 576);
        let mut pieces = vec![big.bytes().to_vec()];
        while let Some(r) = e.take_released() {
            assert_eq!(r.to, ReleaseTo::Side(Side::Outside));
            pieces.push(r.bytes);
        }
        assert_eq!(pieces.len(), 3);
        let mut data = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            assert!(p.len() <= 576);
            let ip = Ipv4HeaderSlice::from_slice(p).unwrap();
            assert_eq!(fold(&p[..20]), 0, "header checksum");
            assert_eq!(usize::from(ip.fragments_offset().byte_offset()), data.len());
            assert_eq!(ip.more_fragments(), i < 2);
            assert_eq!(ip.source(), pieces[0][12..16], "every piece translated alike");
            assert_eq!(ip.ttl(), 63);
            data.extend_from_slice(&p[20..]);
        }
        let mut whole = pieces[0][..20].to_vec();
        whole.extend_from_slice(&data);
        let tl = whole.len() as u16;
        whole[2..4].copy_from_slice(&tl.to_be_bytes());
        whole[6..8].copy_from_slice(&[0, 0]);
        whole[10..12].copy_from_slice(&[0, 0]);
        let c = fold(&whole[..20]);
        whole[10..12].copy_from_slice(&c.to_be_bytes());
        assert_checksums(&whole);
        assert_eq!(&whole[28..], &payload[..]);
        assert_eq!(e.counters().fragments_made, 3);
    }
}

mod mode_switch_cooldown {
    use super::*;

    fn plan(mapping: MappingMode) -> Arc<CompiledPlan> {
        let mut a = config("a", "198.19.100.1/32");
        a.mapping = mapping;
        let plan = Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![a, config("b", "198.19.101.0/28")],
            bindings: vec![
                Binding { pod_ip: POD_A.into(), config: "a".into(), public_key: None },
                Binding { pod_ip: [198, 18, 0, 5].into(), config: "a".into(), public_key: None },
            ]
            .into(),
        };
        Arc::new(CompiledPlan::new(&plan).unwrap())
    }

    /// Switching a config from port reuse to endpoint-independent mapping
    /// cuts its sessions; their ports cool in the bitmap new mappings
    /// allocate from, so no reply of a new flow is lost to a stale tuple.
    #[test]
    fn port_reuse_to_endpoint_independent_keeps_cut_ports_cooling() {
        let s = EngineSettings { ports: 1024..=1024, ..settings() };
        let mut e = NatEngine::new(s, plan(MappingMode::PortReuse));
        assert!(matches!(udp(POD_A, 5000, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
        e.apply_plan(plan(MappingMode::EndpointIndependent), at(1));
        let other = [198, 18, 0, 5];
        assert!(matches!(udp(other, 6000, SERVER, 53, b"x").run(&mut e, at(2)), Verdict::Reply { .. }));
        e.expire(at(122), 1 << 16);
        let mut later = udp(other, 6000, SERVER, 53, b"x");
        assert!(matches!(later.run(&mut e, at(122)), Verdict::Forward { .. }));
        let mut back = udp(SERVER, 53, later.src(), later.sport(), b"y");
        assert!(matches!(back.run(&mut e, at(122)), Verdict::Forward { side: Side::Inside, .. }), "its reply arrives");
    }

    /// The other way: the cut mapping's tuples become cooling tombstones,
    /// which port-reuse allocation does check.
    #[test]
    fn endpoint_independent_to_port_reuse_keeps_cut_tuples_cooling() {
        let s = EngineSettings { ports: 1024..=1024, ..settings() };
        let mut e = NatEngine::new(s, plan(MappingMode::EndpointIndependent));
        assert!(matches!(udp(POD_A, 5000, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
        e.apply_plan(plan(MappingMode::PortReuse), at(1));
        let other = [198, 18, 0, 5];
        assert!(matches!(udp(other, 6000, SERVER, 53, b"x").run(&mut e, at(2)), Verdict::Reply { .. }));
        assert!(
            matches!(udp(other, 6001, SERVER2, 53, b"x").run(&mut e, at(2)), Verdict::Forward { .. }),
            "another destination may share the port (port reuse)"
        );
    }
}
