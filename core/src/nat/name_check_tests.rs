//! The server name check as a pod and its server see it: which segments
//! pass, which are answered with resets, and what is counted.

use super::tests::{config, plan_with, settings, udp, PacketBuilder, Pkt, POD_A, T0};
use super::*;
use crate::plan::{DenyResponse, EgressPolicy, LiveFlows, PolicyAction, PolicyRule, Protocol, ServerNameCheck};
use crate::wire::tcp as tcpf;

/// One address, many names: a storage stamp, a CDN front.
const SHARED: [u8; 4] = [198, 19, 0, 10];
const DNS: [u8; 4] = [198, 19, 0, 53];
const ISN: u32 = 1000;
const SERVER_ISN: u32 = 50_000;

const PQ_HELLO: &[u8] = include_bytes!("../wire/testdata/firefox-pq-clienthello.bin");

fn rule(name: &str, fqdns: &[&str], proto: Option<Protocol>, ports: &[&str]) -> PolicyRule {
    PolicyRule {
        name: name.into(),
        action: PolicyAction::Allow,
        cidrs: vec![],
        fqdns: fqdns.iter().map(|s| s.to_string()).collect(),
        protocol: proto,
        ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
        pods: None,
        server_name: ServerNameCheck::Required,
        tls_ports: vec![],
        http_ports: vec![],
    }
}

fn policy(rules: Vec<PolicyRule>) -> EgressPolicy {
    EgressPolicy {
        default_action: PolicyAction::Deny,
        rules: [
            vec![PolicyRule {
                cidrs: vec!["198.19.0.53/32".parse().unwrap()],
                ..rule("dns", &[], Some(Protocol::Udp), &["53"])
            }],
            rules,
        ]
        .concat(),
        deny_response: DenyResponse::Reject,
        live_flows: LiveFlows::Cut,
        dns_ttl_floor: 30,
        dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
    }
}

fn engine_with(p: EgressPolicy) -> NatEngine {
    let mut a = config("a", "198.19.100.0/28");
    a.policy = Some(p);
    let mut s = settings();
    s.nat_log = true;
    NatEngine::new(s, plan_with(a, config("b", "198.19.101.0/28")))
}

/// The good storage account's policy: `good.example` on TCP 443 and 80.
fn storage() -> NatEngine {
    engine_with(policy(vec![rule("storage", &["good.example"], Some(Protocol::Tcp), &["443", "80"])]))
}

/// The pod resolves `name` to the shared address through the trusted resolver.
fn resolve(e: &mut NatEngine, pod: [u8; 4], name: &str) {
    let mut q = udp(pod, 5353, DNS, 53, b"query");
    assert!(matches!(q.run(e, T0), Verdict::Forward { .. }));
    let m = crate::wire::dns::tests::response(name, &[(name, 1, SHARED.to_vec(), 300)]);
    assert!(matches!(udp(DNS, 53, q.src(), q.sport(), &m).run(e, T0), Verdict::Forward { .. }));
}

/// A TCP segment with its own sequence numbers.
fn seg((src, sport): ([u8; 4], u16), (dst, dport): ([u8; 4], u16), flags: u8, seq: u32, ack: u32, data: &[u8]) -> Pkt {
    let mut v = Vec::new();
    let mut b = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, seq, 64240);
    if flags & tcpf::SYN != 0 {
        b = b.syn();
    }
    if flags & tcpf::ACK != 0 {
        b = b.ack(ack);
    }
    if flags & tcpf::RST != 0 {
        b = b.rst();
    }
    if flags & tcpf::FIN != 0 {
        b = b.fin();
    }
    b.write(&mut v, data).unwrap();
    Pkt::new(v)
}

/// A pod's connection through the gateway, after the handshake.
struct Conn {
    pod: [u8; 4],
    port: u16,
    dport: u16,
    /// The egress endpoint the server sees.
    egress: ([u8; 4], u16),
    /// The pod's next sequence number.
    next: u32,
}

impl Conn {
    fn open(e: &mut NatEngine, pod: [u8; 4], port: u16, dport: u16) -> Conn {
        let mut syn = seg((pod, port), (SHARED, dport), tcpf::SYN, ISN, 0, b"");
        assert!(matches!(syn.run(e, T0), Verdict::Forward { side: Side::Outside, .. }), "the handshake passes");
        let egress = (syn.src(), syn.sport());
        let mut synack = seg((SHARED, dport), (egress.0, egress.1), tcpf::SYN | tcpf::ACK, SERVER_ISN, ISN + 1, b"");
        assert!(matches!(synack.run(e, T0), Verdict::Forward { side: Side::Inside, .. }));
        let mut ack = seg((pod, port), (SHARED, dport), tcpf::ACK, ISN + 1, SERVER_ISN + 1, b"");
        assert!(matches!(ack.run(e, T0), Verdict::Forward { .. }));
        Conn { pod, port, dport, egress, next: ISN + 1 }
    }

    /// The pod's next data segment.
    fn send(&mut self, e: &mut NatEngine, data: &[u8], at: Time) -> (Verdict, Pkt) {
        let mut p = seg((self.pod, self.port), (SHARED, self.dport), tcpf::ACK, self.next, SERVER_ISN + 1, data);
        let v = p.run(e, at);
        if matches!(v, Verdict::Forward { .. }) {
            self.next = self.next.wrapping_add(data.len() as u32);
        }
        (v, p)
    }

    /// A data segment at `seq` (out of order, or resent).
    fn send_at(&self, e: &mut NatEngine, seq: u32, data: &[u8]) -> Verdict {
        seg((self.pod, self.port), (SHARED, self.dport), tcpf::ACK, seq, SERVER_ISN + 1, data).run(e, T0)
    }
}

/// A minimal ClientHello naming `name`, from testdata's captured curl hello
/// with its name swapped (same length names keep its lengths right).
fn hello(name: &str) -> Vec<u8> {
    let curl = include_bytes!("../wire/testdata/curl-clienthello.bin");
    let old = b"curl.example.com";
    assert_eq!(name.len(), old.len(), "same length as the captured name");
    let at = curl.windows(old.len()).position(|w| w == old).unwrap();
    let mut h = curl.to_vec();
    h[at..at + old.len()].copy_from_slice(name.as_bytes());
    h
}

fn is_rst(p: &[u8], src: [u8; 4], dst: [u8; 4]) -> bool {
    let ip = etherparse::Ipv4HeaderSlice::from_slice(p).unwrap();
    let t = etherparse::TcpHeaderSlice::from_slice(&p[ip.slice().len()..]).unwrap();
    ip.source() == src && ip.destination() == dst && t.rst()
}

fn seq_of(p: &[u8]) -> u32 {
    let hl = usize::from(p[0] & 0xf) * 4;
    u32::from_be_bytes(p[hl + 4..hl + 8].try_into().unwrap())
}

#[test]
fn a_tls_flow_passes_once_its_client_hello_names_an_allowed_server() {
    let mut e = engine_with(policy(vec![rule("storage", &["good.example.com"], Some(Protocol::Tcp), &["443"])]));
    resolve(&mut e, POD_A, "good.example.com");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (v, p) = c.send(&mut e, &hello("good.example.com"), T0);
    assert!(matches!(v, Verdict::Forward { side: Side::Outside, .. }));
    assert!(!is_rst(p.bytes(), c.egress.0, SHARED));
    assert_eq!(p.len, hello("good.example.com").len() + 40, "the ClientHello itself, translated");
    let (v, _) = c.send(&mut e, b"application data", T0);
    assert!(matches!(v, Verdict::Forward { side: Side::Outside, .. }));
    assert_eq!(e.counters().names_allowed, 1);
    let ev: Vec<_> = e.take_name_events().collect();
    assert_eq!(
        (ev[0].name.as_str(), ev[0].rule.as_str()),
        ("good.example.com", "storage"),
        "the NAT log says which name"
    );
}

#[test]
fn another_name_on_the_same_address_is_reset_both_ways_and_counted_on_the_rule() {
    let mut e = engine_with(policy(vec![rule("storage", &["good.example.com"], Some(Protocol::Tcp), &["443"])]));
    resolve(&mut e, POD_A, "good.example.com");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (v, p) = c.send(&mut e, &hello("evil.example.com"), T0);
    assert!(matches!(v, Verdict::Forward { side: Side::Outside, .. }));
    assert!(is_rst(p.bytes(), c.egress.0, SHARED), "the server's side is closed");
    assert_eq!(seq_of(p.bytes()), ISN + 1, "at the sequence number the server expects");
    let to_pod = e.take_released().expect("a reset for the pod");
    assert_eq!(to_pod.to, ReleaseTo::Side(Side::Inside));
    assert!(is_rst(&to_pod.bytes, SHARED, POD_A), "the pod's connection fails fast");
    assert_eq!(seq_of(&to_pod.bytes), SERVER_ISN + 1, "at the sequence number the pod expects");
    assert_eq!(e.counters().dropped(DropReason::SniMismatch), 1);
    let hits = e.rule_hits();
    assert_eq!(hits[0].refused, vec![(1, "sni_mismatch", 1)]);
    // The session is gone: what the pod sends next is judged anew, and
    // refused (it is no ClientHello).
    let (_, p) = c.send(&mut e, b"exfiltrate", T0);
    assert!(is_rst(p.bytes(), c.egress.0, SHARED));
    assert_eq!(e.counters().names_allowed, 0);
}

/// A plan change while a flow awaits its name (any tenant's object can
/// cause one) does not let the flow pass unjudged.
#[test]
fn a_plan_change_does_not_end_a_flows_wait_for_its_name() {
    let mut e = engine_with(policy(vec![rule("storage", &["good.example.com"], Some(Protocol::Tcp), &["443"])]));
    resolve(&mut e, POD_A, "good.example.com");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let same = Arc::new((**e.plan()).clone());
    e.apply_plan(same, T0);
    let (_, p) = c.send(&mut e, &hello("evil.example.com"), T0);
    assert!(is_rst(p.bytes(), c.egress.0, SHARED), "judged, and refused");
    assert_eq!(e.counters().dropped(DropReason::SniMismatch), 1);
}

#[test]
fn a_post_quantum_hello_in_three_segments_is_judged_before_its_last_segment_passes() {
    let mut e = engine_with(policy(vec![rule("jd", &["ja4db.com"], Some(Protocol::Tcp), &["443"])]));
    resolve(&mut e, POD_A, "ja4db.com");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let pieces: Vec<&[u8]> = PQ_HELLO.chunks(PQ_HELLO.len() / 3 + 1).collect();
    assert_eq!(pieces.len(), 3);
    for p in &pieces {
        let (v, pkt) = c.send(&mut e, p, T0);
        assert!(matches!(v, Verdict::Forward { side: Side::Outside, .. }));
        assert!(!is_rst(pkt.bytes(), c.egress.0, SHARED));
    }
    assert_eq!(e.counters().names_allowed, 1);
    // The same hello to a policy that names another server: refused, by the
    // segment that completes its name at the latest.
    let mut e = engine_with(policy(vec![rule("other", &["ja4db.org"], Some(Protocol::Tcp), &["443"])]));
    resolve(&mut e, POD_A, "ja4db.org");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let mut refused = false;
    for p in &pieces {
        let (_, pkt) = c.send(&mut e, p, T0);
        if is_rst(pkt.bytes(), c.egress.0, SHARED) {
            refused = true;
            break;
        }
    }
    assert!(refused);
    assert_eq!(e.counters().dropped(DropReason::SniMismatch), 1);
}

#[test]
fn before_the_verdict_a_gap_or_a_changed_resend_is_dropped_and_a_true_resend_passes() {
    let mut e = engine_with(policy(vec![rule("jd", &["ja4db.com"], Some(Protocol::Tcp), &["443"])]));
    resolve(&mut e, POD_A, "ja4db.com");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (first, second) = PQ_HELLO.split_at(100);
    // The second piece before the first: a gap.
    assert_eq!(c.send_at(&mut e, ISN + 1 + 100, &second[..100]), Verdict::Drop(DropReason::NameCheckUnordered));
    let (v, _) = c.send(&mut e, first, T0);
    assert!(matches!(v, Verdict::Forward { .. }));
    assert!(matches!(c.send_at(&mut e, ISN + 1, first), Verdict::Forward { .. }), "the very same bytes again");
    let mut changed = first.to_vec();
    changed[50] ^= 0xff;
    assert_eq!(c.send_at(&mut e, ISN + 1, &changed), Verdict::Drop(DropReason::NameCheckUnordered));
    assert_eq!(
        c.send_at(&mut e, ISN + 1, &first[..60]),
        Verdict::Drop(DropReason::NameCheckUnordered),
        "a part of them"
    );
    let (v, _) = c.send(&mut e, second, T0);
    assert!(matches!(v, Verdict::Forward { .. }));
    assert_eq!(e.counters().names_allowed, 1);
    assert_eq!(e.counters().dropped(DropReason::NameCheckUnordered), 3);
}

#[test]
fn http_host_decides_on_an_http_port() {
    let mut e = storage();
    resolve(&mut e, POD_A, "good.example");
    let mut c = Conn::open(&mut e, POD_A, 40000, 80);
    let (v, p) = c.send(&mut e, b"GET / HTTP/1.1\r\nHost: good.example\r\nAccept: */*\r\n\r\n", T0);
    assert!(matches!(v, Verdict::Forward { .. }) && !is_rst(p.bytes(), c.egress.0, SHARED));
    let mut c = Conn::open(&mut e, POD_A, 40001, 80);
    let (_, p) = c.send(&mut e, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", T0);
    assert!(is_rst(p.bytes(), c.egress.0, SHARED));
    let mut c = Conn::open(&mut e, POD_A, 40002, 80);
    let (_, p) = c.send(&mut e, b"GET / HTTP/1.0\r\n\r\n", T0);
    assert!(is_rst(p.bytes(), c.egress.0, SHARED));
    assert_eq!(e.counters().dropped(DropReason::HostMismatch), 1);
    assert_eq!(e.counters().dropped(DropReason::HostMissing), 1);
}

#[test]
fn non_tls_bytes_on_a_tls_port_are_refused() {
    let mut e = storage();
    resolve(&mut e, POD_A, "good.example");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (_, p) = c.send(&mut e, b"GET / HTTP/1.1\r\nHost: good.example\r\n\r\n", T0);
    assert!(is_rst(p.bytes(), c.egress.0, SHARED));
    assert_eq!(e.counters().dropped(DropReason::SniMissing), 1);
}

#[test]
fn quic_under_a_rule_that_reads_names_is_refused_so_clients_fall_back_to_tcp() {
    let mut e = engine_with(policy(vec![rule("storage", &["good.example"], None, &["443"])]));
    resolve(&mut e, POD_A, "good.example");
    let mut initial = udp(POD_A, 50000, SHARED, 443, &[0xc3; 1200]);
    let v = initial.run(&mut e, T0);
    assert!(matches!(v, Verdict::Reply { .. }), "rejected: ICMP administratively prohibited, {v:?}");
    assert_eq!(e.counters().dropped(DropReason::QuicRefused), 1);
    assert_eq!(e.rule_hits()[0].refused, vec![(1, "quic_refused", 1)]);
    // TCP to the same name still works.
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (v, p) = c.send(&mut e, &hello("good.example1234"), T0);
    assert!(
        matches!(v, Verdict::Forward { .. }) && is_rst(p.bytes(), c.egress.0, SHARED),
        "a name the rule lists only"
    );
}

#[test]
fn a_rule_that_does_not_check_names_lets_dns_decide_alone() {
    let unchecked = PolicyRule {
        server_name: ServerNameCheck::Unchecked,
        ..rule("storage", &["good.example"], Some(Protocol::Tcp), &["443"])
    };
    let mut e = engine_with(policy(vec![unchecked]));
    resolve(&mut e, POD_A, "good.example");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (_, p) = c.send(&mut e, &hello("evil.example.com"), T0);
    assert!(!is_rst(p.bytes(), c.egress.0, SHARED));
}

#[test]
fn other_ports_keep_dns_learning_alone() {
    let mut e = engine_with(policy(vec![rule("ssh", &["good.example"], Some(Protocol::Tcp), &["22"])]));
    resolve(&mut e, POD_A, "good.example");
    let mut c = Conn::open(&mut e, POD_A, 40000, 22);
    let (_, p) = c.send(&mut e, b"SSH-2.0-OpenSSH_9.2\r\n", T0);
    assert!(!is_rst(p.bytes(), c.egress.0, SHARED));
}

#[test]
fn listed_tls_and_http_ports_are_read_like_443_and_80() {
    let r = PolicyRule {
        tls_ports: vec!["8443".parse().unwrap()],
        http_ports: vec!["8080".parse().unwrap()],
        ..rule("storage", &["good.example.com"], Some(Protocol::Tcp), &["8443", "8080"])
    };
    let mut e = engine_with(policy(vec![r]));
    resolve(&mut e, POD_A, "good.example.com");
    let mut c = Conn::open(&mut e, POD_A, 40000, 8443);
    let (_, p) = c.send(&mut e, &hello("evil.example.com"), T0);
    assert!(is_rst(p.bytes(), c.egress.0, SHARED));
    let mut c = Conn::open(&mut e, POD_A, 40001, 8080);
    let (_, p) = c.send(&mut e, b"GET / HTTP/1.1\r\nHost: evil.example.com\r\n\r\n", T0);
    assert!(is_rst(p.bytes(), c.egress.0, SHARED));
}

#[test]
fn the_name_must_be_one_the_rule_that_allowed_the_address_lists() {
    // Two rules, two names; the pod resolved only a.example. A ClientHello
    // for b.example (allowed by another rule, not learned on this address)
    // does not pass: address and name must both be one rule's.
    let mut e = engine_with(policy(vec![
        rule("a", &["a.example.com123"], Some(Protocol::Tcp), &["443"]),
        rule("b", &["b.example.com123"], Some(Protocol::Tcp), &["443"]),
    ]));
    resolve(&mut e, POD_A, "a.example.com123");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (_, p) = c.send(&mut e, &hello("b.example.com123"), T0);
    assert!(is_rst(p.bytes(), c.egress.0, SHARED));
    // Once the pod resolved b.example to the same address, both hold.
    resolve(&mut e, POD_A, "b.example.com123");
    let mut c = Conn::open(&mut e, POD_A, 40001, 443);
    let (_, p) = c.send(&mut e, &hello("b.example.com123"), T0);
    assert!(!is_rst(p.bytes(), c.egress.0, SHARED));
}

#[test]
fn a_flow_that_never_names_its_server_is_reset_both_ways_after_its_time() {
    let mut e = storage();
    resolve(&mut e, POD_A, "good.example");
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (v, _) = c.send(&mut e, &hello("good.example1234")[..40], T0);
    assert!(matches!(v, Verdict::Forward { .. }));
    e.expire(Time::from_millis(T0.millis() + 5_000), 1024);
    assert!(e.take_released().is_none(), "still in time");
    e.expire(Time::from_millis(T0.millis() + NAME_VERDICT_MS + 1), 1024);
    let resets: Vec<_> = std::iter::from_fn(|| e.take_released()).collect();
    assert_eq!(resets.len(), 2);
    assert!(resets.iter().any(|r| r.to == ReleaseTo::Side(Side::Inside) && is_rst(&r.bytes, SHARED, POD_A)));
    assert!(resets.iter().any(|r| r.to == ReleaseTo::Side(Side::Outside)
        && is_rst(&r.bytes, c.egress.0, SHARED)
        && seq_of(&r.bytes) == ISN + 1 + 40));
    assert_eq!(e.counters().dropped(DropReason::SniTimeout), 1);
}

#[test]
fn one_pod_holds_at_most_its_share_of_flows_awaiting_their_name() {
    let mut e = storage();
    resolve(&mut e, POD_A, "good.example");
    let share = (NAME_CHECKS_MAX / NAME_CHECKS_POD_SHARE_DIVISOR) as u16;
    for i in 0..share {
        let mut syn = seg((POD_A, 10_000 + i), (SHARED, 443), tcpf::SYN, ISN, 0, b"");
        assert!(matches!(syn.run(&mut e, T0), Verdict::Forward { .. }));
    }
    let mut over = seg((POD_A, 10_000 + share), (SHARED, 443), tcpf::SYN, ISN, 0, b"");
    assert!(matches!(over.run(&mut e, T0), Verdict::Reply { .. }), "refused with a reset, never let through unread");
    assert_eq!(e.counters().dropped(DropReason::NameChecksFull), 1);
    // A flow that ends gives its place back.
    let mut rst = seg((POD_A, 10_000), (SHARED, 443), tcpf::RST, ISN + 1, 0, b"");
    assert!(matches!(rst.run(&mut e, T0), Verdict::Forward { .. }));
    let mut again = seg((POD_A, 20_000), (SHARED, 443), tcpf::SYN, ISN, 0, b"");
    assert!(matches!(again.run(&mut e, T0), Verdict::Forward { .. }));
}

#[test]
fn flows_without_a_name_rule_are_never_read() {
    let mut e = engine_with(policy(vec![PolicyRule {
        cidrs: vec!["198.19.0.0/24".parse().unwrap()],
        ..rule("web", &[], Some(Protocol::Tcp), &["443"])
    }]));
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let (_, p) = c.send(&mut e, b"not a client hello", T0);
    assert!(!is_rst(p.bytes(), c.egress.0, SHARED));
    assert_eq!(e.name_checks_pending(), 0);
}

/// `good.example.com` (a name as long as the captured hello's) on TCP 443
/// and 80, resolved by POD_A.
fn good_com() -> NatEngine {
    let mut e = engine_with(policy(vec![rule("storage", &["good.example.com"], Some(Protocol::Tcp), &["443", "80"])]));
    resolve(&mut e, POD_A, "good.example.com");
    e
}

/// Whether a pod's segment went on to the server as it was (not turned
/// into a reset, not dropped).
fn passed(v: Verdict, p: &Pkt, egress: [u8; 4]) -> bool {
    matches!(v, Verdict::Forward { side: Side::Outside, .. }) && !is_rst(p.bytes(), egress, SHARED)
}

impl Conn {
    /// A segment from the server acknowledging the pod's bytes up to `ack`.
    fn server_acks(&self, e: &mut NatEngine, ack: u32) {
        let mut p = seg((SHARED, self.dport), self.egress, tcpf::ACK, SERVER_ISN + 1, ack, b"");
        assert!(matches!(p.run(e, T0), Verdict::Forward { side: Side::Inside, .. }));
    }
}

#[test]
fn a_reset_the_server_ignores_does_not_end_the_check() {
    // An RST out of the server's window: the server keeps the connection;
    // the gateway must not keep it with no check left.
    let mut e = good_com();
    let c = Conn::open(&mut e, POD_A, 40000, 443);
    let mut rst = seg((POD_A, c.port), (SHARED, 443), tcpf::RST, ISN + 1 + 1_000_000, 0, b"");
    assert!(matches!(rst.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }), "the reset goes on");
    let mut evil = seg((POD_A, c.port), (SHARED, 443), tcpf::ACK, ISN + 1, SERVER_ISN + 1, &hello("evil.example.com"));
    let v = evil.run(&mut e, T0);
    assert!(!passed(v, &evil, c.egress.0), "an unjudged hello reached the server: {v:?}");
}

#[test]
fn a_new_connection_on_a_tuple_once_judged_is_judged_again() {
    let mut e = good_com();
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let h = hello("good.example.com");
    let (v, p) = c.send(&mut e, &h, T0);
    assert!(passed(v, &p, c.egress.0));
    c.server_acks(&mut e, c.next);
    assert_eq!(e.name_checks_pending(), 0, "acknowledged: the check is over");
    // The pod closes and opens a new connection from the same port: the
    // session lives on (TIME_WAIT), the new SYN reuses it.
    for (src, dst, f, seq, ack) in [
        ((POD_A, c.port), (SHARED, 443), tcpf::FIN | tcpf::ACK, c.next, SERVER_ISN + 1),
        ((SHARED, 443), c.egress, tcpf::FIN | tcpf::ACK, SERVER_ISN + 1, c.next + 1),
        ((POD_A, c.port), (SHARED, 443), tcpf::ACK, c.next + 1, SERVER_ISN + 2),
    ] {
        assert!(matches!(seg(src, dst, f, seq, ack, b"").run(&mut e, T0), Verdict::Forward { .. }));
    }
    let isn2 = 7_000_000;
    let mut syn = seg((POD_A, c.port), (SHARED, 443), tcpf::SYN, isn2, 0, b"");
    assert!(matches!(syn.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
    assert_eq!((syn.src(), syn.sport()), c.egress, "the same session");
    let mut synack = seg((SHARED, 443), c.egress, tcpf::SYN | tcpf::ACK, 9_000_000, isn2 + 1, b"");
    assert!(matches!(synack.run(&mut e, T0), Verdict::Forward { .. }));
    let mut evil = seg((POD_A, c.port), (SHARED, 443), tcpf::ACK, isn2 + 1, 9_000_001, &hello("evil.example.com"));
    let v = evil.run(&mut e, T0);
    assert!(!passed(v, &evil, c.egress.0), "the second connection's hello went unjudged: {v:?}");
    assert_eq!(e.counters().dropped(DropReason::SniMismatch), 1);
}

#[test]
fn judged_bytes_the_server_never_took_cannot_be_replaced() {
    // The pod's good hello carries an acknowledgment of data the server
    // never sent (or a TTL that expires past the gateway, or a bad
    // checksum): the server drops it. The gateway judged it: the bytes the
    // server then takes at that place must be the judged ones.
    let mut e = good_com();
    let c = Conn::open(&mut e, POD_A, 40000, 443);
    let good = hello("good.example.com");
    let mut g = seg((POD_A, c.port), (SHARED, 443), tcpf::ACK, ISN + 1, SERVER_ISN + 1_000_001, &good);
    let v = g.run(&mut e, T0);
    assert!(passed(v, &g, c.egress.0));
    let mut evil = seg((POD_A, c.port), (SHARED, 443), tcpf::ACK, ISN + 1, SERVER_ISN + 1, &hello("evil.example.com"));
    let v = evil.run(&mut e, T0);
    assert!(!passed(v, &evil, c.egress.0), "other bytes in place of the judged ones: {v:?}");
    // The judged bytes themselves may be sent again; once the server has
    // them, the check is over and data flows.
    assert!(matches!(c.send_at(&mut e, ISN + 1, &good), Verdict::Forward { side: Side::Outside, .. }));
    let end = ISN + 1 + good.len() as u32;
    c.server_acks(&mut e, end);
    assert_eq!(e.name_checks_pending(), 0);
    assert!(matches!(c.send_at(&mut e, end, b"application data"), Verdict::Forward { side: Side::Outside, .. }));
}

#[test]
fn an_acknowledgment_beyond_what_was_sent_does_not_end_the_check() {
    let mut e = good_com();
    let c = Conn::open(&mut e, POD_A, 40000, 443);
    let good = hello("good.example.com");
    assert!(matches!(c.send_at(&mut e, ISN + 1, &good), Verdict::Forward { side: Side::Outside, .. }));
    c.server_acks(&mut e, ISN + 1 + 1_000_000);
    assert_eq!(e.name_checks_pending(), 1);
    c.server_acks(&mut e, ISN + 1);
    assert_eq!(e.name_checks_pending(), 1, "not yet the judged bytes");
}

#[test]
fn a_flow_picked_up_mid_stream_is_not_judged_at_a_place_the_pod_chooses() {
    // No SYN through the gateway (the session opens with an ACK): the pod
    // would anchor the check at a good hello the server drops (out of its
    // window), then send its real bytes elsewhere.
    let mut e = good_com();
    let (sport, mut seq) = (40000, 5_000_000u32);
    let mut ack = seg((POD_A, sport), (SHARED, 443), tcpf::ACK, seq, SERVER_ISN + 1, b"");
    assert!(matches!(ack.run(&mut e, T0), Verdict::Forward { .. }));
    let egress = ack.src();
    let good = hello("good.example.com");
    let mut g = seg((POD_A, sport), (SHARED, 443), tcpf::ACK, seq, SERVER_ISN + 1, &good);
    let _ = g.run(&mut e, T0);
    seq = seq.wrapping_add(100_000);
    let mut evil = seg((POD_A, sport), (SHARED, 443), tcpf::ACK, seq, SERVER_ISN + 1, &hello("evil.example.com"));
    let v = evil.run(&mut e, T0);
    assert!(!passed(v, &evil, egress), "bytes at another place went unjudged: {v:?}");
}

#[test]
fn data_before_the_servers_syn_ack_is_not_read() {
    // A second SYN on a tuple whose server connection already exists is
    // answered with a bare ACK: bytes at the new SYN's place would land
    // anywhere in the server's stream.
    let mut e = good_com();
    let mut syn = seg((POD_A, 40000), (SHARED, 443), tcpf::SYN, ISN, 0, b"");
    assert!(matches!(syn.run(&mut e, T0), Verdict::Forward { .. }));
    let egress = (syn.src(), syn.sport());
    let mut challenge = seg((SHARED, 443), egress, tcpf::ACK, SERVER_ISN + 1, 77, b"");
    assert!(matches!(challenge.run(&mut e, T0), Verdict::Forward { .. }));
    let mut g = seg((POD_A, 40000), (SHARED, 443), tcpf::ACK, ISN + 1, SERVER_ISN + 1, &hello("good.example.com"));
    assert_eq!(g.run(&mut e, T0), Verdict::Drop(DropReason::NameCheckUnordered));
    // Nor does a SYN with another sequence number move the place.
    let mut other = seg((POD_A, 40000), (SHARED, 443), tcpf::SYN, ISN + 500, 0, b"");
    assert_eq!(other.run(&mut e, T0), Verdict::Drop(DropReason::NameCheckUnordered));
}

#[test]
fn urgent_data_is_not_read_before_the_verdict() {
    // The byte an urgent pointer marks leaves the stream the server's
    // application reads: the gateway would judge a hello one byte longer
    // than the server's.
    let mut e = good_com();
    let c = Conn::open(&mut e, POD_A, 40000, 443);
    let mut v = Vec::new();
    PacketBuilder::ipv4(POD_A, SHARED, 64)
        .tcp(c.port, 443, ISN + 1, 64240)
        .ack(SERVER_ISN + 1)
        .urg(40)
        .write(&mut v, &hello("good.example.com"))
        .unwrap();
    assert_eq!(Pkt::new(v).run(&mut e, T0), Verdict::Drop(DropReason::NameCheckUnordered));
    assert_eq!(e.counters().names_allowed, 0);
}

#[test]
#[ignore = "known limit (README): only an HTTP/1.x connection's first request is read; a pipelined or \
            keep-alive second request names any Host, and front ends route each request by its Host. \
            Reading every request means following Content-Length/chunked bodies: not a small fix"]
fn a_second_http_request_on_the_connection_cannot_name_another_host() {
    let mut e = good_com();
    let mut c = Conn::open(&mut e, POD_A, 40000, 80);
    let (v, p) = c.send(
        &mut e,
        b"GET / HTTP/1.1\r\nHost: good.example.com\r\n\r\nPUT /x HTTP/1.1\r\nHost: evil.example.com\r\nContent-Length: 6\r\n\r\nsecret",
        T0,
    );
    assert!(!passed(v, &p, c.egress.0), "a pipelined request to another host passed");
}

#[test]
#[ignore = "ECH: the outer SNI is judged, but a client-facing server that holds ECH keys for many sites \
            (a CDN) routes by the encrypted inner name whatever outer name the pod writes; GREASE ECH \
            (Chrome sends it always) cannot be told from real ECH on the wire, so refusing 0xfe0d would \
            refuse every Chrome connection. A design decision, not a small fix"]
fn an_encrypted_client_hello_cannot_reach_another_name_behind_an_allowed_outer_one() {
    let mut e = good_com();
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    // The captured hello plus an encrypted_client_hello (outer) extension.
    let mut h = hello("good.example.com");
    let ech = [0xfe, 0x0d, 0x00, 0x04, 0x00, 0x00, 0x01, 0x00];
    let ext_at = 5 + 4 + 2 + 32 + 1 + usize::from(h[5 + 4 + 2 + 32]);
    let cs = usize::from(u16::from_be_bytes([h[ext_at], h[ext_at + 1]]));
    let comp = ext_at + 2 + cs;
    let exts = comp + 1 + usize::from(h[comp]);
    h.splice(exts + 2..exts + 2, ech);
    for (at, add) in [(3usize, 2usize), (6, 3), (exts, 2)] {
        let n = if add == 3 {
            (u32::from_be_bytes([0, h[at], h[at + 1], h[at + 2]]) + ech.len() as u32).to_be_bytes()[1..].to_vec()
        } else {
            (u16::from_be_bytes([h[at], h[at + 1]]) + ech.len() as u16).to_be_bytes().to_vec()
        };
        h[at..at + add].copy_from_slice(&n);
    }
    let (v, p) = c.send(&mut e, &h, T0);
    assert!(!passed(v, &p, c.egress.0), "a hello with ECH passed on its outer name");
}

#[test]
fn one_tenant_holds_at_most_its_configs_share_of_flows_awaiting_a_name() {
    // Sixteen pods of config a (one tenant), one pod of config b (another).
    let pods: Vec<[u8; 4]> = (0..=NAME_CHECKS_POD_SHARE_DIVISOR as u8).map(|k| [198, 18, 1, 1 + k]).collect();
    let storage = || Some(policy(vec![rule("storage", &["good.example"], Some(Protocol::Tcp), &["443"])]));
    let mut a = config("a", "198.19.100.0/28");
    let mut b = config("b", "198.19.101.0/28");
    (a.policy, b.policy) = (storage(), storage());
    let bind = |p: &[u8; 4], c: &str| crate::plan::Binding { pod_ip: (*p).into(), config: c.into(), public_key: None };
    let plan = crate::plan::Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![a, b],
        bindings: pods.iter().enumerate().map(|(k, p)| bind(p, if k == 0 { "b" } else { "a" })).collect(),
    };
    let mut e = NatEngine::new(settings(), Arc::new(CompiledPlan::new(&plan).unwrap()));
    for pod in &pods {
        resolve(&mut e, *pod, "good.example");
    }
    // Each of config a's pods opens its own share of flows and never sends
    // a hello: together they stop at the config's share.
    let pod_share = NAME_CHECKS_MAX / NAME_CHECKS_POD_SHARE_DIVISOR;
    for pod in &pods[1..] {
        for i in 0..pod_share as u16 {
            let _ = seg((*pod, 10_000 + i), (SHARED, 443), tcpf::SYN, ISN, 0, b"").run(&mut e, T0);
        }
    }
    let config_share = NAME_CHECKS_MAX / NAME_CHECKS_CONFIG_SHARE_DIVISOR;
    assert_eq!(e.name_checks_pending(), config_share);
    assert_eq!(e.counters().dropped(DropReason::NameChecksFull), (16 * pod_share - config_share) as u64);
    // Config b's pod still gets its place.
    let mut other = seg((pods[0], 9_999), (SHARED, 443), tcpf::SYN, ISN, 0, b"");
    assert!(matches!(other.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
    assert_eq!(e.name_checks_pending(), config_share + 1);
}

#[test]
fn a_hello_across_the_sequence_wrap_is_judged_and_released_like_any() {
    let mut e = good_com();
    let isn = u32::MAX - 50;
    let mut syn = seg((POD_A, 40000), (SHARED, 443), tcpf::SYN, isn, 0, b"");
    assert!(matches!(syn.run(&mut e, T0), Verdict::Forward { .. }));
    let egress = (syn.src(), syn.sport());
    let mut synack = seg((SHARED, 443), egress, tcpf::SYN | tcpf::ACK, SERVER_ISN, isn.wrapping_add(1), b"");
    assert!(matches!(synack.run(&mut e, T0), Verdict::Forward { .. }));
    let mut c = Conn { pod: POD_A, port: 40000, dport: 443, egress, next: isn.wrapping_add(1) };
    let h = hello("good.example.com");
    let (a, b) = h.split_at(30);
    let (v, p) = c.send(&mut e, a, T0);
    assert!(passed(v, &p, egress.0));
    let mut changed = a.to_vec();
    changed[3] ^= 1;
    assert_eq!(c.send_at(&mut e, isn.wrapping_add(1), &changed), Verdict::Drop(DropReason::NameCheckUnordered));
    let (v, p) = c.send(&mut e, b, T0);
    assert!(passed(v, &p, egress.0));
    assert_eq!(e.counters().names_allowed, 1);
    c.server_acks(&mut e, c.next.wrapping_sub(1));
    assert_eq!(e.name_checks_pending(), 1, "one judged byte short");
    c.server_acks(&mut e, c.next);
    assert_eq!(e.name_checks_pending(), 0);
}

#[test]
fn the_segment_that_names_a_refused_server_never_passes_though_the_hello_goes_on() {
    // The name is read before the hello's end (extensions follow it): an
    // SNI router may act on that segment, so it must not reach the server.
    let mut e = good_com();
    let mut c = Conn::open(&mut e, POD_A, 40000, 443);
    let h = hello("evil.example.com");
    let at = h.windows(16).position(|w| w == b"evil.example.com").unwrap() + 16;
    assert!(at + 10 < h.len(), "extensions follow the name");
    let (v, p) = c.send(&mut e, &h[..at], T0);
    assert!(!passed(v, &p, c.egress.0), "the segment naming another server was forwarded: {v:?}");
    assert_eq!(e.counters().dropped(DropReason::SniMismatch), 1);
    // Allowed, the same split passes, and the hello's end decides the rest.
    let mut c = Conn::open(&mut e, POD_A, 40001, 443);
    let h = hello("good.example.com");
    let (v, p) = c.send(&mut e, &h[..at], T0);
    assert!(passed(v, &p, c.egress.0));
    assert_eq!(e.counters().names_allowed, 0, "not before the hello's end");
    let (v, p) = c.send(&mut e, &h[at..], T0);
    assert!(passed(v, &p, c.egress.0));
    assert_eq!(e.counters().names_allowed, 1);
}
