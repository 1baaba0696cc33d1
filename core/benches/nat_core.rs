//! Micro-benchmark of the NAT core without I/O: Mpps per core for
//! established-flow translation both ways at 10k and 1M live sessions,
//! new-session creation, and bytes of memory per session. Prints a markdown
//! table of medians over several runs.
//!
//! `cargo bench -p egret-core --bench nat_core` (add `-- --quick` for a smoke run,
//! `-- --only new` for one group of rows).

use egret_core::nat::{CompiledPlan, EngineSettings, NatEngine, Time, Verdict};
use egret_core::plan::{Binding, GatewayConfig, MappingMode, Plan};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATED.fetch_add(n, Ordering::Relaxed);
        ALLOCATED.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

const PODS: u32 = 1024;
const FRAME: usize = 64;

fn pod(i: u32) -> [u8; 4] {
    (u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 16 + i % PODS).to_be_bytes()
}

fn plan(mode: MappingMode) -> Arc<CompiledPlan> {
    plan_with_policy(mode, None)
}

/// A default-deny policy of `n` rules: n-1 /32 allows elsewhere, then one
/// allow for the benchmark's destinations, so every flow walks the trie
/// and is allowed by the last rule.
fn policy(n: usize) -> egret_core::plan::EgressPolicy {
    use egret_core::plan::{EgressPolicy, PolicyAction, PolicyRule, Protocol};
    let rule = |i: usize, cidr: String| PolicyRule {
        name: format!("r{i}"),
        action: PolicyAction::Allow,
        cidrs: vec![cidr.parse().unwrap()],
        fqdns: vec![],
        protocol: Some(Protocol::Udp),
        ports: vec!["443".parse().unwrap()],
        pods: None,
        server_name: Default::default(),
        tls_ports: vec![],
        http_ports: vec![],
    };
    let mut rules: Vec<PolicyRule> =
        (0..n - 1).map(|i| rule(i, format!("198.19.{}.{}/32", 1 + (i >> 8) % 250, i & 255))).collect();
    rules.push(rule(n, "198.19.0.0/24".into()));
    EgressPolicy {
        default_action: PolicyAction::Deny,
        rules,
        deny_response: Default::default(),
        live_flows: Default::default(),
        dns_ttl_floor: 30,
        dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
    }
}

/// `n` NetworkPolicies of one rule each (UDP 443 to a /32 elsewhere);
/// `selected`: each selects one of the benchmark's pods (round robin) and
/// the last of a pod's policies allows the benchmark's destinations, so
/// every new flow walks all of its pod's policies; otherwise they select
/// pods that send nothing here.
fn network_policies(n: usize, selected: bool) -> Vec<egret_core::plan::NetworkPolicy> {
    use egret_core::plan::{IpBlock, NetworkPolicy, NetworkPolicyRule, NetworkPort, NetworkProtocol};
    (0..n)
        .map(|i| {
            let last_of_pod = i + PODS as usize >= n;
            let cidr = if selected && last_of_pod {
                "198.19.0.0/24".to_string()
            } else {
                format!("198.19.{}.{}/32", 1 + (i >> 8) % 250, i & 255)
            };
            let pod_ip = if selected {
                pod(i as u32).into()
            } else {
                Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i as u32)
            };
            NetworkPolicy {
                name: format!("ns{}/p{i}", i % 100),
                pods: vec![pod_ip],
                egress: vec![NetworkPolicyRule {
                    to: Some(vec![IpBlock { cidr: cidr.parse().unwrap(), except: vec![] }]),
                    ports: Some(vec![NetworkPort { protocol: NetworkProtocol::Udp, lo: 443, hi: 443 }]),
                }],
            }
        })
        .collect()
}

fn plan_with_policy(mode: MappingMode, policy: Option<egret_core::plan::EgressPolicy>) -> Arc<CompiledPlan> {
    plan_with(mode, policy, Vec::new())
}

fn plan_with(
    mode: MappingMode,
    policy: Option<egret_core::plan::EgressPolicy>,
    network_policies: Vec<egret_core::plan::NetworkPolicy>,
) -> Arc<CompiledPlan> {
    let mut c = GatewayConfig::new("bench", vec!["198.19.100.0/28".parse().unwrap()]);
    c.policy = policy;
    c.mapping = mode;
    c.port_quota = u32::MAX;
    let bindings =
        (0..PODS).map(|i| Binding { pod_ip: pod(i).into(), config: "bench".into(), public_key: None }).collect();
    Arc::new(CompiledPlan::new(&Plan { network_policies, version: 1, configs: vec![c], bindings }).unwrap())
}

fn engine(mode: MappingMode, capacity: usize) -> NatEngine {
    let s = EngineSettings {
        session_capacity: capacity,
        router_ip: Ipv4Addr::new(198, 18, 0, 1),
        seed: 1,
        ..Default::default()
    };
    NatEngine::new(s, plan(mode))
}

/// A 64-byte-frame's worth of UDP (42 B of IP+UDP+payload).
fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> [u8; FRAME] {
    let mut b = [0u8; FRAME];
    let len = 20 + 8 + 18;
    b[0] = 0x45;
    b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    b[8] = 64;
    b[9] = 17;
    b[12..16].copy_from_slice(&src);
    b[16..20].copy_from_slice(&dst);
    let c = egret_core::wire::checksum::checksum(&b[..20]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b[20..22].copy_from_slice(&sport.to_be_bytes());
    b[22..24].copy_from_slice(&dport.to_be_bytes());
    b[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    let mut acc = egret_core::wire::checksum::pseudo_header(src, dst, 17, (len - 20) as u16);
    acc = egret_core::wire::checksum::sum(acc, &b[20..len]);
    let c = egret_core::wire::checksum::finish(acc);
    b[26..28].copy_from_slice(&c.to_be_bytes());
    b
}

const PKT_LEN: usize = 46;

fn flow(i: u32) -> [u8; FRAME] {
    let dst = (u32::from(Ipv4Addr::new(198, 19, 0, 0)) + 2 + (i / PODS) % 200).to_be_bytes();
    udp(pod(i), 1024 + (i / PODS / 200) as u16, dst, 443)
}

/// Shuffled order so that 1M sessions do not walk memory sequentially.
fn order(n: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

struct Established {
    engine: NatEngine,
    outbound: Vec<[u8; FRAME]>,
    inbound: Vec<[u8; FRAME]>,
}

fn establish(n: usize) -> Established {
    let mut engine = engine(MappingMode::EndpointIndependent, n + 1024);
    let now = Time::from_secs(1);
    let mut outbound = Vec::with_capacity(n);
    let mut inbound = Vec::with_capacity(n);
    for i in order(n) {
        let p = flow(i);
        let mut b = p;
        let v = engine.process(&mut b, PKT_LEN, now);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        outbound.push(p);
        let (s, d) = ([b[12], b[13], b[14], b[15]], [b[16], b[17], b[18], b[19]]);
        inbound.push(udp(d, 443, s, u16::from_be_bytes([b[20], b[21]])));
    }
    Established { engine, outbound, inbound }
}

/// Translates every packet once (restoring its bytes first, as a fresh
/// frame would arrive); returns Mpps.
fn run(engine: &mut NatEngine, pkts: &[[u8; FRAME]], rounds: usize) -> f64 {
    let now = Time::from_secs(2);
    let mut buf = [0u8; FRAME];
    let start = Instant::now();
    for _ in 0..rounds {
        for p in pkts {
            buf[..PKT_LEN].copy_from_slice(&p[..PKT_LEN]);
            let v = engine.process(black_box(&mut buf), PKT_LEN, now);
            debug_assert!(matches!(v, Verdict::Forward { .. }));
            black_box(v);
        }
    }
    (pkts.len() * rounds) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// The same in batches of 32 as the worker loop runs it: with the three
/// prefetch stages first when the engine says they pay.
fn run_batched(engine: &mut NatEngine, pkts: &[[u8; FRAME]], rounds: usize) -> f64 {
    const BATCH: usize = 32;
    let now = Time::from_secs(2);
    let mut bufs = [[0u8; FRAME]; BATCH];
    let start = Instant::now();
    for _ in 0..rounds {
        for chunk in pkts.chunks(BATCH) {
            let warm = engine.prefetch_worthwhile();
            for (b, p) in bufs.iter_mut().zip(chunk) {
                b[..PKT_LEN].copy_from_slice(&p[..PKT_LEN]);
                if warm {
                    engine.prefetch_index(&b[..PKT_LEN]);
                }
            }
            if warm {
                for b in &bufs[..chunk.len()] {
                    engine.prefetch_session(&b[..PKT_LEN]);
                }
                engine.prefetch_new_flows();
            }
            for b in &mut bufs[..chunk.len()] {
                let v = engine.process(black_box(b), PKT_LEN, now);
                debug_assert!(matches!(v, Verdict::Forward { .. }));
                black_box(v);
            }
        }
    }
    (pkts.len() * rounds) as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// New flows a second through a fresh engine on `plan`, once per run.
fn new_flow_rates(plan: &Arc<CompiledPlan>, pkts: &[[u8; FRAME]], runs: usize) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let s = EngineSettings {
                session_capacity: pkts.len() + 1024,
                router_ip: Ipv4Addr::new(198, 18, 0, 1),
                seed: 1,
                ..Default::default()
            };
            let mut e = NatEngine::new(s, plan.clone());
            run(&mut e, pkts, 1)
        })
        .collect()
}

/// TLS flows to one shared address under an FQDN rule, reading the name on
/// the wire (`required`) or not (`unchecked`): what a new flow costs when
/// its ClientHello is judged. Each flow is the pod's SYN, the server's
/// SYN-ACK, curl's captured 517-byte ClientHello (naming
/// `curl.example.com`) and the server's ACK of it, after every pod resolved
/// the name through the trusted resolver.
mod names {
    use super::*;
    use egret_core::plan::{EgressPolicy, PolicyAction, PolicyRule, Protocol, ServerNameCheck};
    use etherparse::PacketBuilder;

    const SHARED: [u8; 4] = [198, 19, 0, 10];
    const RESOLVER: [u8; 4] = [198, 19, 0, 53];
    const NAME: &str = "curl.example.com";
    const HELLO: &[u8] = include_bytes!("../src/wire/testdata/curl-clienthello.bin");
    const ISN: u32 = 1000;

    pub fn plan(check: ServerNameCheck) -> Arc<CompiledPlan> {
        let rule = |name: &str, cidrs: Vec<&str>, fqdns: Vec<&str>, proto, port: &str| PolicyRule {
            name: name.into(),
            action: PolicyAction::Allow,
            cidrs: cidrs.into_iter().map(|c| c.parse().unwrap()).collect(),
            fqdns: fqdns.into_iter().map(String::from).collect(),
            protocol: Some(proto),
            ports: vec![port.parse().unwrap()],
            pods: None,
            server_name: check,
            tls_ports: vec![],
            http_ports: vec![],
        };
        let mut pol: EgressPolicy = serde_json::from_str(r#"{"defaultAction": "deny"}"#).unwrap();
        pol.dns_resolvers = vec!["198.19.0.53/32".parse().unwrap()];
        pol.rules = vec![
            rule("dns", vec!["198.19.0.53/32"], vec![], Protocol::Udp, "53"),
            rule("storage", vec![], vec![NAME], Protocol::Tcp, "443"),
        ];
        plan_with_policy(MappingMode::PortReuse, Some(pol))
    }

    macro_rules! packet {
        ($b:expr, $payload:expr) => {{
            let mut v = Vec::with_capacity(2048);
            $b.write(&mut v, $payload).unwrap();
            v
        }};
    }

    fn dns_answer() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        for label in NAME.split('.') {
            m.push(label.len() as u8);
            m.extend(label.as_bytes());
        }
        m.extend([0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4]);
        m.extend(SHARED);
        m
    }

    /// Every pod resolves the name (its query passes, the answer teaches).
    pub fn resolve_all(e: &mut NatEngine, now: Time) {
        for i in 0..PODS {
            let mut q = packet!(PacketBuilder::ipv4(pod(i), RESOLVER, 64).udp(5353, 53), b"query");
            let len = q.len();
            assert!(matches!(e.process(&mut q, len, now), Verdict::Forward { .. }));
            let (egress, port) = ([q[12], q[13], q[14], q[15]], u16::from_be_bytes([q[20], q[21]]));
            let mut a = packet!(PacketBuilder::ipv4(RESOLVER, egress, 64).udp(53, port), &dns_answer());
            let len = a.len();
            assert!(matches!(e.process(&mut a, len, now), Verdict::Forward { .. }));
        }
    }

    /// Flow `i`'s SYN and its hello segment.
    pub fn flow(i: u32) -> [Vec<u8>; 2] {
        let sport = 1024 + (i / PODS) as u16;
        let syn = PacketBuilder::ipv4(pod(i), SHARED, 64).tcp(sport, 443, ISN, 64240).syn();
        let hello = PacketBuilder::ipv4(pod(i), SHARED, 64).tcp(sport, 443, ISN + 1, 64240).ack(SERVER_ISN + 1).psh();
        [packet!(syn, &[]), packet!(hello, HELLO)]
    }

    const SERVER_ISN: u32 = 7000;

    fn engine(plan: &Arc<CompiledPlan>, flows: usize) -> NatEngine {
        let s = EngineSettings {
            session_capacity: flows + 4096,
            router_ip: Ipv4Addr::new(198, 18, 0, 1),
            seed: 1,
            ..Default::default()
        };
        let mut e = NatEngine::new(s, plan.clone());
        resolve_all(&mut e, Time::from_secs(1));
        e
    }

    /// Each flow as the gateway sees it: the pod's SYN, the server's
    /// SYN-ACK (to the egress endpoint, learned from a scratch engine: the
    /// engine is deterministic for a seed), the hello, the server's ACK of
    /// it (which ends the check).
    pub fn conversations(plan: &Arc<CompiledPlan>, flows: &[[Vec<u8>; 2]]) -> Vec<Vec<u8>> {
        let mut e = engine(plan, flows.len());
        let now = Time::from_secs(1);
        let mut out = Vec::with_capacity(4 * flows.len());
        let mut buf = vec![0u8; 2048];
        let run = |e: &mut NatEngine, p: &[u8], buf: &mut Vec<u8>| {
            buf[..p.len()].copy_from_slice(p);
            let v = e.process(buf, p.len(), now);
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        };
        for [syn, hello] in flows {
            run(&mut e, syn, &mut buf);
            let (egress, port) = ([buf[12], buf[13], buf[14], buf[15]], u16::from_be_bytes([buf[20], buf[21]]));
            let synack = PacketBuilder::ipv4(SHARED, egress, 64).tcp(443, port, SERVER_ISN, 64240).syn().ack(ISN + 1);
            let synack = packet!(synack, &[]);
            run(&mut e, &synack, &mut buf);
            run(&mut e, hello, &mut buf);
            let ack = PacketBuilder::ipv4(SHARED, egress, 64)
                .tcp(443, port, SERVER_ISN + 1, 64240)
                .ack(ISN + 1 + HELLO.len() as u32);
            let ack = packet!(ack, &[]);
            run(&mut e, &ack, &mut buf);
            out.extend([syn.clone(), synack, hello.clone(), ack]);
        }
        out
    }

    /// New TLS flows a second, each a whole conversation's opening.
    pub fn rate(plan: &Arc<CompiledPlan>, packets: &[Vec<u8>]) -> f64 {
        let mut e = engine(plan, packets.len() / 4);
        let now = Time::from_secs(1);
        let mut buf = vec![0u8; 2048];
        let start = Instant::now();
        for p in packets {
            buf[..p.len()].copy_from_slice(p);
            let v = e.process(black_box(&mut buf), p.len(), now);
            debug_assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
            black_box(v);
        }
        (packets.len() / 4) as f64 / start.elapsed().as_secs_f64() / 1e6
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only established|new|policy|netpol|names|pauses|memory`: one group of rows (to profile it).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let want = |group: &str| only.as_deref().is_none_or(|o| o == group);
    let runs = if quick { 1 } else { 5 };
    let mut rows: Vec<(String, (f64, f64, f64), &str)> = Vec::new();

    for (label, n, rounds) in
        [("10k", 10_000usize, if quick { 100 } else { 300 }), ("1M", 1_000_000, if quick { 1 } else { 5 })]
    {
        if (quick && n > 10_000) || !want("established") {
            continue;
        }
        let mut est = establish(n);
        let out: Vec<f64> = (0..runs).map(|_| run_batched(&mut est.engine, &est.outbound, rounds)).collect();
        let inn: Vec<f64> = (0..runs).map(|_| run_batched(&mut est.engine, &est.inbound, rounds)).collect();
        let one: Vec<f64> = (0..runs).map(|_| run(&mut est.engine, &est.outbound, rounds)).collect();
        rows.push((format!("established, inside → outside, {label} sessions"), median(out), "Mpps"));
        rows.push((format!("established, outside → inside, {label} sessions"), median(inn), "Mpps"));
        rows.push((format!("established, inside → outside, {label}, no batch prefetch"), median(one), "Mpps"));
    }

    for mode in [MappingMode::EndpointIndependent, MappingMode::PortReuse].into_iter().filter(|_| want("new")) {
        let n = if quick { 50_000 } else { 1_000_000 };
        let pkts: Vec<[u8; FRAME]> = order(n).into_iter().map(flow).collect();
        let rates: Vec<f64> = (0..runs)
            .map(|_| {
                let mut e = engine(mode, n + 1024);
                run(&mut e, &pkts, 1)
            })
            .collect();
        let batched: Vec<f64> = (0..runs)
            .map(|_| {
                let mut e = engine(mode, n + 1024);
                run_batched(&mut e, &pkts, 1)
            })
            .collect();
        let name = match mode {
            MappingMode::EndpointIndependent => "endpoint-independent",
            MappingMode::PortReuse => "port reuse",
        };
        rows.push((format!("new sessions ({name}), {n} flows"), median(rates), "M/s"));
        rows.push((
            format!("new sessions ({name}), {n} flows, batches of 32 as the worker runs"),
            median(batched),
            "M/s",
        ));
    }

    // The cost of a 10k-rule egress policy, paid once per new flow.
    if want("policy") {
        let n = if quick { 50_000 } else { 500_000 };
        let pkts: Vec<[u8; FRAME]> = order(n).into_iter().map(flow).collect();
        for (label, pol) in [("no policy", None), ("10k-rule policy", Some(policy(10_000)))] {
            let rates = new_flow_rates(&plan_with_policy(MappingMode::PortReuse, pol), &pkts, runs);
            rows.push((format!("new sessions (port reuse), {label}, {n} flows"), median(rates), "M/s"));
        }
    }

    // Kubernetes NetworkPolicies: none; 10,000 that select other pods (the
    // cost for a pod no policy selects); 10,000 over the benchmark's pods.
    if want("netpol") {
        let n = if quick { 50_000 } else { 500_000 };
        let pkts: Vec<[u8; FRAME]> = order(n).into_iter().map(flow).collect();
        for (label, nps) in [
            ("no NetworkPolicy", Vec::new()),
            ("10,000 NetworkPolicies selecting other pods", network_policies(10_000, false)),
            ("10,000 NetworkPolicies, ~10 selecting each flow's pod", network_policies(10_000, true)),
        ] {
            let rates = new_flow_rates(&plan_with(MappingMode::PortReuse, None, nps), &pkts, runs);
            rows.push((format!("new sessions (port reuse), {label}, {n} flows"), median(rates), "M/s"));
        }
    }

    // TLS flows under an FQDN rule: the ClientHello read and judged, or not.
    if want("names") {
        let n = if quick { 20_000 } else { 200_000 };
        let flows: Vec<[Vec<u8>; 2]> = order(n).into_iter().map(names::flow).collect();
        for (label, check) in [
            ("DNS alone (serverName: unchecked)", egret_core::plan::ServerNameCheck::Unchecked),
            ("ClientHello judged (serverName: required)", egret_core::plan::ServerNameCheck::Required),
        ] {
            let plan = names::plan(check);
            let packets = names::conversations(&plan, &flows);
            let rates: Vec<f64> = (0..runs).map(|_| names::rate(&plan, &packets)).collect();
            rows.push((
                format!("new TLS flows (SYN, SYN-ACK, 517 B hello, its ACK), FQDN rule, {label}, {n} flows"),
                median(rates),
                "M/s",
            ));
        }
    }

    // The pause a plan change or a session snapshot puts in a worker's
    // loop: both walk every session, a bounded step a turn (issue 31 asks
    // for under 1 ms).
    if want("pauses") {
        for n in if quick { vec![100_000usize] } else { vec![1_000_000, 4_000_000] } {
            let mut est = establish(n);
            let now = Time::from_secs(2);
            let mut replan_at_once = || {
                let next = plan_with(MappingMode::EndpointIndependent, None, Vec::new());
                let t = Instant::now();
                est.engine.apply_plan(next, now);
                est.engine.finish_replan();
                t.elapsed().as_secs_f64() * 1e3
            };
            let at_once: Vec<f64> = (0..runs).map(|_| replan_at_once()).collect();
            // The worker applies a plan (work bounded by the plan's size),
            // then walks the sessions 8,192 slots a turn.
            let mut applies = Vec::new();
            let walk_steps: Vec<f64> = (0..runs)
                .map(|_| {
                    let next = plan_with(MappingMode::EndpointIndependent, None, Vec::new());
                    let t = Instant::now();
                    est.engine.apply_plan(next, now);
                    applies.push(t.elapsed().as_secs_f64() * 1e3);
                    let mut took = Vec::new();
                    loop {
                        let t = Instant::now();
                        let more = est.engine.replan_step(8192);
                        took.push(t.elapsed().as_secs_f64() * 1e3);
                        if !more {
                            break;
                        }
                    }
                    took.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    took[took.len() * 99 / 100]
                })
                .collect();
            let snaps: Vec<f64> = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    black_box(est.engine.snapshot(now));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            // The worker takes it in steps of 4,096 slots a turn, into room reserved
            // up front (a growing vector's copy would be the longest step).
            let steps: Vec<f64> = (0..runs)
                .map(|_| {
                    let mut out = Vec::with_capacity(est.engine.session_count() * 9 / 8);
                    let (mut from, mut took) = (Some(0), Vec::new());
                    while let Some(f) = from {
                        let t = Instant::now();
                        from = est.engine.snapshot_step(f, 4096, usize::MAX, now, &mut out);
                        took.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    black_box(out);
                    // The 99th percentile: a shared machine's preemptions
                    // make the very longest a measure of the scheduler.
                    took.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    took[took.len() * 99 / 100]
                })
                .collect();
            let label = if n >= 1_000_000 { format!("{}M", n / 1_000_000) } else { format!("{}k", n / 1000) };
            rows.push((format!("p99 step of that snapshot taken 4,096 slots a turn, {label}"), median(steps), "ms"));
            rows.push((format!("plan applied over {label} live sessions, before its walk"), median(applies), "ms"));
            rows.push((format!("p99 step of that plan's walk, 8,192 slots a turn, {label}"), median(walk_steps), "ms"));
            rows.push((
                format!("plan applied and walked in one call, {label} (the pause before)"),
                median(at_once),
                "ms",
            ));
            rows.push((format!("session snapshot of {label} sessions (the worker's pause)"), median(snaps), "ms"));
        }
    }

    // A plan the size of a large cluster's: applying it costs the plan's
    // size in the worker's loop, whatever the sessions.
    if want("pauses") {
        let (pods, configs) = if quick { (10_000u32, 100u32) } else { (100_000, 1_000) };
        // `more`: that many configs more (their pools change the layout).
        let plan_of = |version: u64, more: u32| {
            let pools = u32::from(Ipv4Addr::new(198, 19, 192, 0));
            let configs: Vec<GatewayConfig> = (0..configs + more)
                .map(|c| {
                    let pool = format!("{}/28", Ipv4Addr::from(pools + c * 16));
                    GatewayConfig::new(&format!("ns{c}/gw"), vec![pool.parse().unwrap()])
                })
                .collect();
            let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
            let names: Vec<std::sync::Arc<str>> = configs.iter().map(|c| c.name.as_str().into()).collect();
            let mut bindings: Vec<Binding> = (0..pods)
                .map(|i| Binding {
                    pod_ip: Ipv4Addr::from(base + i),
                    config: names[(i % configs.len() as u32) as usize].clone(),
                    public_key: None,
                })
                .collect();
            // As egret-control writes them (deltas need it).
            bindings.sort_by(Binding::canonical_cmp);
            Plan { network_policies: Vec::new(), version, configs, bindings: bindings.into() }
        };
        let big = |version: u64, more: u32| Arc::new(CompiledPlan::new(&plan_of(version, more)).unwrap());
        let mut e = NatEngine::new(EngineSettings { session_capacity: 1 << 16, ..Default::default() }, big(1, 0));
        // The plans stay referenced here: which thread frees a retired
        // plan is the gateway's business, not the apply's.
        let mut kept = Vec::new();
        let mut apply = |i: usize, more: u32| {
            let next = big(2 + i as u64, more);
            kept.push(Arc::clone(&next));
            let t = Instant::now();
            e.apply_plan(next, Time::from_secs(2));
            t.elapsed().as_secs_f64() * 1e3
        };
        let same_pools: Vec<f64> = (0..runs).map(|i| apply(i, 0)).collect();
        let new_pools: Vec<f64> = (0..runs).map(|i| apply(runs + i, u32::from(i % 2 == 0))).collect();
        let label = format!("plan of {}k pods in {configs} configs applied", pods / 1000);
        rows.push((format!("{label}, pools unchanged (the worker's part)"), median(same_pools), "ms"));
        rows.push((format!("{label}, a config added or removed (the worker's part)"), median(new_pools), "ms"));

        // The gateway's supervisor, before the workers: a pod added,
        // compiled whole or as a change of the plan compiled before.
        let old = plan_of(1, 0);
        let compiled = CompiledPlan::new(&old).unwrap();
        let mut new = old.clone();
        new.version = 2;
        // Past the pods (198.18.0.0 on) and below the pools (198.19.192.0 on).
        let pod = Binding {
            pod_ip: Ipv4Addr::new(198, 19, 150, 1),
            config: new.bindings[0].config.clone(),
            public_key: None,
        };
        new.bindings.make_mut().push(pod);
        new.bindings.make_mut().sort_by(Binding::canonical_cmp);
        let delta = egret_core::plan::PlanDelta::between(&old, &new).expect("canonical plans");
        let time = |f: &dyn Fn()| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        };
        let whole: Vec<f64> = (0..runs).map(|_| time(&|| drop(CompiledPlan::new(&new).unwrap()))).collect();
        let changed: Vec<f64> =
            (0..runs).map(|_| time(&|| drop(compiled.changed_by(&delta, &new).expect("pods only").unwrap()))).collect();
        let label = format!("plan of {}k pods in {configs} configs, a pod added", pods / 1000);
        rows.push((format!("{label}: compiled whole (the supervisor's part)"), median(whole), "ms"));
        rows.push((format!("{label}: compiled from its delta (the supervisor's part)"), median(changed), "ms"));
    }

    // Memory: bytes the engine allocates per session slot of capacity.
    if want("memory") {
        let cap = if quick { 100_000 } else { 4 << 20 };
        let before = ALLOCATED.load(Ordering::Relaxed);
        let e = engine(MappingMode::EndpointIndependent, cap);
        // The tables are mappings of their own, not the allocator's.
        let bytes = ALLOCATED.load(Ordering::Relaxed) - before + e.table_bytes();
        let per = bytes as f64 / cap as f64;
        drop(e);
        rows.push((format!("memory per session (capacity {cap}, incl. its mapping)"), (per, per, per), "bytes"));
    }

    println!("| NAT core, one core, no I/O | median | min | max | unit |");
    println!("|---|---:|---:|---:|---|");
    for (name, (m, lo, hi), unit) in rows {
        println!("| {name} | {m:.2} | {lo:.2} | {hi:.2} | {unit} |");
    }
    println!("\n{} runs each; cpu: {}", runs, cpu_model());
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
