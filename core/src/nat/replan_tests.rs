//! A plan change walked a bounded number of sessions at a time behaves, for
//! every packet, as the same change applied to all sessions at once.

use super::tests::{config, echo, settings, tcp, udp, Pkt, POD_A, POD_B, SERVER, SERVER2, T0};
use super::*;
use crate::plan::{Binding, GatewayConfig, Plan};
use crate::wire::tcp as tcpf;
use proptest::prelude::*;

/// Configs `a` and `b`; pod A bound to `a_of` (none: unbound), pod B to b.
fn plan(a: GatewayConfig, b: GatewayConfig, a_of: Option<&str>, version: u64) -> Arc<CompiledPlan> {
    let mut bindings = vec![Binding { pod_ip: POD_B.into(), config: "b".into(), public_key: None }];
    if let Some(c) = a_of {
        bindings.push(Binding { pod_ip: POD_A.into(), config: c.into(), public_key: None });
    }
    let plan = Plan { network_policies: Vec::new(), version, configs: vec![a, b], bindings: bindings.into() };
    Arc::new(CompiledPlan::new(&plan).unwrap())
}

/// The plans a case moves between, in one mapping mode: as it started;
/// pod A moved to b; a's pool replaced; SERVER2 excluded from a; pod A
/// unbound.
fn plans(mode: MappingMode) -> Vec<Arc<CompiledPlan>> {
    let a = |pool: &str| {
        let mut c = config("a", pool);
        c.mapping = mode;
        c
    };
    let b = || {
        let mut c = config("b", "198.19.101.0/31");
        c.mapping = mode;
        c
    };
    let mut excluding = a("198.19.100.0/31");
    excluding.exclude.push("198.19.0.101/32".parse().unwrap());
    vec![
        plan(a("198.19.100.0/31"), b(), Some("a"), 1),
        plan(a("198.19.100.0/31"), b(), Some("b"), 2),
        plan(a("198.19.102.0/31"), b(), Some("a"), 3),
        plan(excluding, b(), Some("a"), 4),
        plan(a("198.19.100.0/31"), b(), None, 5),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// A pod's packet: (pod A?, source port, destination, protocol).
    Out(bool, u16, u8, u8),
    /// The answer to the n-th packet that went out (modulo their count).
    Back(usize),
    Plan(usize),
    /// The lazy engine's walk advances this many slots.
    Walk(usize),
    Clock(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0u16..12, 0u8..2, 0u8..3).prop_map(|(a, p, d, pr)| Op::Out(a, p, d, pr)),
        3 => (0usize..64).prop_map(Op::Back),
        1 => (0usize..5).prop_map(Op::Plan),
        2 => (0usize..6).prop_map(Op::Walk),
        1 => (0u32..200).prop_map(Op::Clock),
    ]
}

fn packet(pod_a: bool, sport: u16, dst: u8, proto: u8) -> Pkt {
    let pod = if pod_a { POD_A } else { POD_B };
    let dst = [SERVER, SERVER2][usize::from(dst)];
    match proto {
        0 => udp(pod, 2000 + sport, dst, 53, b"x"),
        1 => tcp(pod, 2000 + sport, dst, 80, tcpf::SYN),
        _ => echo(pod, dst, 2000 + sport, false),
    }
}

/// The reply a server sends to a translated packet.
fn answer(out: &Pkt) -> Pkt {
    let b = out.bytes();
    match b[9] {
        ipv4::PROTO_UDP => udp(out.dst(), out.dport(), out.src(), out.sport(), b"y"),
        ipv4::PROTO_TCP => tcp(out.dst(), out.dport(), out.src(), out.sport(), tcpf::SYN | tcpf::ACK),
        _ => echo(out.dst(), out.src(), u16::from_be_bytes([b[24], b[25]]), true),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The same packets, clock and plans through two engines: one walks
    /// each plan change at once, the other a few slots now and then. Every
    /// verdict and every translated byte is the same, and once the walk
    /// is done so are the counts.
    #[test]
    fn a_walked_plan_change_is_the_same_change_applied_at_once(
        ops in prop::collection::vec(op(), 1..160),
        mode in prop::sample::select(vec![MappingMode::EndpointIndependent, MappingMode::PortReuse]),
    ) {
        let plans = plans(mode);
        let s = EngineSettings { ports: 1024..=1031, ..settings() };
        let mut eager = NatEngine::new(s.clone(), Arc::clone(&plans[0]));
        let mut lazy = NatEngine::new(s, Arc::clone(&plans[0]));
        let mut sent: Vec<Pkt> = Vec::new();
        let mut now = 10u64;
        for op in ops {
            let t = Time::from_secs(now);
            match op {
                Op::Out(a, p, d, pr) => {
                    let (mut x, mut y) = (packet(a, p, d, pr), packet(a, p, d, pr));
                    let (vx, vy) = (x.run(&mut eager, t), y.run(&mut lazy, t));
                    prop_assert_eq!(vx, vy);
                    prop_assert_eq!(x.bytes(), y.bytes());
                    if matches!(vx, Verdict::Forward { side: Side::Outside, .. }) {
                        sent.push(x);
                    }
                }
                Op::Back(n) if !sent.is_empty() => {
                    let out = &sent[n % sent.len()];
                    let (mut x, mut y) = (answer(out), answer(out));
                    let (vx, vy) = (x.run(&mut eager, t), y.run(&mut lazy, t));
                    prop_assert_eq!(vx, vy);
                    prop_assert_eq!(x.bytes(), y.bytes());
                }
                Op::Back(_) => {}
                Op::Plan(i) => {
                    eager.apply_plan(Arc::clone(&plans[i]), t);
                    eager.finish_replan();
                    lazy.apply_plan(Arc::clone(&plans[i]), t);
                }
                Op::Walk(n) => {
                    lazy.replan_step(n);
                }
                Op::Clock(d) => {
                    now += u64::from(d);
                    let t = Time::from_secs(now);
                    // Whole sweeps: the two tables' slots are laid out
                    // differently (cuts free slots at different times).
                    prop_assert_eq!(eager.expire(t, usize::MAX), lazy.expire(t, usize::MAX));
                }
            }
        }
        lazy.finish_replan();
        prop_assert_eq!(eager.session_count(), lazy.session_count());
        prop_assert_eq!(lazy.session_count(), lazy.sessions().count(), "live counts");
        prop_assert_eq!(eager.sessions_by_config(), lazy.sessions_by_config());
        prop_assert_eq!(eager.session_slots(), lazy.session_slots());
        prop_assert_eq!(eager.mapping_count(), lazy.mapping_count());
        prop_assert_eq!(eager.port_usage(), lazy.port_usage());
        let pods = |e: &NatEngine| {
            let mut v: Vec<_> =
                e.holdings.counts.iter().filter(|(_, c)| !c.is_zero()).map(|(&p, c)| (p, c.holdings, c.sessions)).collect();
            v.sort();
            v
        };
        prop_assert_eq!(pods(&eager), pods(&lazy));
    }
}

/// Sessions of pod A on config a, then a plan that moves pod A to b.
fn with_sessions(n: u16) -> NatEngine {
    let plans = plans(MappingMode::PortReuse);
    let mut e = NatEngine::new(EngineSettings { ports: 1024..=65535, ..settings() }, Arc::clone(&plans[0]));
    for p in 0..n {
        assert!(matches!(udp(POD_A, 10_000 + p, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
    }
    e
}

/// Applying a plan costs the plan's size; the sessions are checked a
/// bounded number per step afterwards.
#[test]
fn a_plan_change_walks_the_sessions_a_bounded_number_per_step() {
    let mut e = with_sessions(1000);
    e.apply_plan(Arc::clone(&plans(MappingMode::PortReuse)[1]), T0);
    assert!(e.replanning());
    let mut steps = 1;
    while e.replan_step(100) {
        steps += 1;
    }
    assert_eq!(steps, 10, "1,000 slots, 100 a step");
    assert_eq!(e.session_count(), 0, "pod A moved to b: all cut");
}

/// A packet of a session the walk has not reached is judged by the new
/// plan all the same.
#[test]
fn a_packet_ahead_of_the_walk_is_judged_by_the_new_plan() {
    let mut e = with_sessions(1);
    let mut out = udp(POD_A, 10_000, SERVER, 53, b"x");
    assert!(matches!(out.run(&mut e, T0), Verdict::Forward { .. }));
    e.apply_plan(Arc::clone(&plans(MappingMode::PortReuse)[4]), T0);
    assert!(e.replanning(), "nothing walked yet");
    let mut back = udp(SERVER, 53, out.src(), out.sport(), b"y");
    assert_eq!(back.run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited), "pod A is unbound: cut");
    assert_eq!(e.session_count(), 0);
}
