//! Behaviour a user of the gateway would notice, driven through `process`
//! with packets built by an independent library (etherparse), and checked
//! against full checksum recomputation.

use super::*;
use crate::plan::{Binding, FilteringMode, GatewayConfig, MappingMode, Plan};
use crate::wire::{icmp, tcp as tcpf};
pub use etherparse::{Ipv4HeaderSlice, PacketBuilder, TcpHeaderSlice, UdpHeaderSlice};

pub const POD_A: [u8; 4] = [198, 18, 0, 2];
pub const POD_B: [u8; 4] = [198, 18, 0, 3];
pub const UNBOUND: [u8; 4] = [198, 18, 0, 9];
pub const SERVER: [u8; 4] = [198, 19, 0, 100];
pub const SERVER2: [u8; 4] = [198, 19, 0, 101];
pub const ROUTER: [u8; 4] = [198, 19, 0, 254];
pub const EXCLUDED: [u8; 4] = [198, 18, 200, 5];
pub const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

pub fn plan_with(a: GatewayConfig, b: GatewayConfig) -> Arc<CompiledPlan> {
    let plan = Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![a, b],
        bindings: vec![
            Binding { pod_ip: POD_A.into(), config: "a".into(), public_key: None },
            Binding { pod_ip: POD_B.into(), config: "b".into(), public_key: None },
        ]
        .into(),
    };
    Arc::new(CompiledPlan::new(&plan).unwrap())
}

pub fn config(name: &str, pool: &str) -> GatewayConfig {
    let mut c = GatewayConfig::new(name, vec![pool.parse().unwrap()]);
    c.exclude = vec!["198.18.200.0/24".parse().unwrap()];
    c
}

pub fn default_plan() -> Arc<CompiledPlan> {
    plan_with(config("a", "198.19.100.0/28"), config("b", "198.19.101.0/28"))
}

pub fn settings() -> EngineSettings {
    EngineSettings { session_capacity: 1 << 16, router_ip: GW, seed: 42, ..Default::default() }
}

pub fn engine() -> NatEngine {
    NatEngine::new(settings(), default_plan())
}

/// A packet in a frame-sized buffer, as the worker hands it over.
pub struct Pkt {
    pub buf: Vec<u8>,
    pub len: usize,
}

impl Pkt {
    pub fn new(bytes: Vec<u8>) -> Pkt {
        let len = bytes.len();
        let mut buf = bytes;
        buf.resize(len.max(2048), 0);
        Pkt { buf, len }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    pub fn src(&self) -> [u8; 4] {
        self.buf[12..16].try_into().unwrap()
    }
    pub fn dst(&self) -> [u8; 4] {
        self.buf[16..20].try_into().unwrap()
    }
    pub fn ttl(&self) -> u8 {
        self.buf[8]
    }
    fn hl(&self) -> usize {
        usize::from(self.buf[0] & 0xf) * 4
    }
    pub fn sport(&self) -> u16 {
        u16::from_be_bytes([self.buf[self.hl()], self.buf[self.hl() + 1]])
    }
    pub fn dport(&self) -> u16 {
        u16::from_be_bytes([self.buf[self.hl() + 2], self.buf[self.hl() + 3]])
    }
    pub fn icmp_id(&self) -> u16 {
        u16::from_be_bytes([self.buf[self.hl() + 4], self.buf[self.hl() + 5]])
    }
    pub fn l4(&self) -> &[u8] {
        &self.buf[self.hl()..self.len]
    }
    pub fn run(&mut self, e: &mut NatEngine, now: Time) -> Verdict {
        let v = e.process(&mut self.buf, self.len, now);
        match v {
            Verdict::Forward { len, .. } | Verdict::Reply { len } => self.len = len,
            _ => {}
        }
        v
    }
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Pkt {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src, dst, 64).udp(sport, dport).write(&mut v, payload).unwrap();
    Pkt::new(v)
}

pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Pkt {
    let mut v = Vec::new();
    let mut b = PacketBuilder::ipv4(src, dst, 64).tcp(sport, dport, 1000, 64240);
    if flags & tcpf::SYN != 0 {
        b = b.syn();
    }
    if flags & tcpf::ACK != 0 {
        b = b.ack(1);
    }
    if flags & tcpf::FIN != 0 {
        b = b.fin();
    }
    if flags & tcpf::RST != 0 {
        b = b.rst();
    }
    b.write(&mut v, b"hello").unwrap();
    Pkt::new(v)
}

pub fn echo(src: [u8; 4], dst: [u8; 4], id: u16, reply: bool) -> Pkt {
    let mut v = Vec::new();
    let b = PacketBuilder::ipv4(src, dst, 64);
    if reply {
        b.icmpv4_echo_reply(id, 1).write(&mut v, b"ping").unwrap();
    } else {
        b.icmpv4_echo_request(id, 1).write(&mut v, b"ping").unwrap();
    }
    Pkt::new(v)
}

/// An ICMP error from `from` to `to` quoting the first 28 bytes of `quoted`.
pub fn icmp_error(from: [u8; 4], to: [u8; 4], ty: u8, code: u8, quoted: &[u8]) -> Pkt {
    let q = &quoted[..quoted.len().min(28)];
    let mut msg = vec![ty, code, 0, 0, 0, 0, 0, 0];
    if ty == icmp::DEST_UNREACHABLE && code == icmp::CODE_FRAG_NEEDED {
        msg[6..8].copy_from_slice(&1400u16.to_be_bytes());
    }
    msg.extend_from_slice(q);
    let c = fold(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut v = Vec::new();
    let mut hdr = etherparse::Ipv4Header::new(msg.len() as u16, 64, etherparse::IpNumber::ICMP, from, to).unwrap();
    hdr.header_checksum = hdr.calc_header_checksum();
    hdr.write(&mut v).unwrap();
    v.extend_from_slice(&msg);
    Pkt::new(v)
}

/// Internet checksum written independently of the crate's own.
pub fn fold(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    for c in data.chunks(2) {
        s += u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Every checksum in the packet equals a full recomputation.
pub fn assert_checksums(p: &[u8]) {
    let iph = Ipv4HeaderSlice::from_slice(p).unwrap().to_header();
    assert_eq!(iph.calc_header_checksum(), iph.header_checksum, "IP header checksum");
    let hl = iph.header_len();
    let payload = &p[hl..usize::from(iph.total_len)];
    if iph.is_fragmenting_payload() {
        return;
    }
    match iph.protocol {
        etherparse::IpNumber::UDP => {
            let u = UdpHeaderSlice::from_slice(payload).unwrap().to_header();
            if u.checksum != 0 {
                assert_eq!(u.calc_checksum_ipv4(&iph, &payload[8..]).unwrap(), u.checksum, "UDP checksum");
            }
        }
        etherparse::IpNumber::TCP => {
            let t = TcpHeaderSlice::from_slice(payload).unwrap().to_header();
            let th = t.header_len();
            assert_eq!(t.calc_checksum_ipv4(&iph, &payload[th..]).unwrap(), t.checksum, "TCP checksum");
        }
        etherparse::IpNumber::ICMP => {
            assert_eq!(fold(payload), 0, "ICMP checksum");
            if icmp::is_error(payload[0]) {
                let inner = &payload[8..];
                let ihl = usize::from(inner[0] & 0xf) * 4;
                assert_eq!(fold(&inner[..ihl]), 0, "quoted IP header checksum");
            }
        }
        _ => {}
    }
}

pub fn in_pool(addr: [u8; 4], pool: [u8; 3]) -> bool {
    addr[..3] == pool && addr[3] < 16
}

pub const T0: Time = Time::from_secs(10);

#[test]
fn udp_round_trip_translates_and_restores() {
    let mut e = engine();
    let mut out = udp(POD_A, 5000, SERVER, 53, b"query");
    assert_eq!(out.run(&mut e, T0), Verdict::Forward { side: Side::Outside, len: out.len });
    assert!(in_pool(out.src(), [198, 19, 100]), "source from config a's pool: {:?}", out.src());
    assert!(out.sport() >= 1024);
    assert_eq!(out.dst(), SERVER);
    assert_eq!(out.ttl(), 63);
    assert_checksums(out.bytes());

    let mut back = udp(SERVER, 53, out.src(), out.sport(), b"answer");
    assert_eq!(back.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: back.len });
    assert_eq!((back.dst(), back.dport(), back.src(), back.sport()), (POD_A, 5000, SERVER, 53));
    assert_checksums(back.bytes());
    assert_eq!(e.counters().in2out_packets, 1);
    assert_eq!(e.counters().out2in_packets, 1);
}

#[test]
fn pods_of_different_configs_leave_through_their_own_pools() {
    let mut e = engine();
    let mut a = udp(POD_A, 5000, SERVER, 80, b"x");
    let mut b = udp(POD_B, 5000, SERVER, 80, b"x");
    a.run(&mut e, T0);
    b.run(&mut e, T0);
    assert!(in_pool(a.src(), [198, 19, 100]));
    assert!(in_pool(b.src(), [198, 19, 101]));
}

#[test]
fn unbound_sources_and_unsolicited_traffic_are_dropped_and_counted() {
    let mut e = engine();
    assert_eq!(udp(UNBOUND, 5000, SERVER, 53, b"x").run(&mut e, T0), Verdict::Drop(DropReason::UnboundSource));
    let pool_addr = [198, 19, 100, 3];
    assert_eq!(udp(SERVER, 53, pool_addr, 40000, b"x").run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
    assert_eq!(tcp(SERVER, 80, pool_addr, 40000, tcpf::SYN).run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
    assert_eq!(echo(SERVER, pool_addr, 7, false).run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
    assert_eq!(e.counters().dropped(DropReason::UnboundSource), 1);
    assert_eq!(e.counters().dropped(DropReason::Unsolicited), 3);
}

#[test]
fn excluded_destinations_pass_untranslated() {
    let mut e = engine();
    let mut p = udp(POD_A, 5000, EXCLUDED, 53, b"x");
    assert_eq!(p.run(&mut e, T0), Verdict::Forward { side: Side::Outside, len: p.len });
    assert_eq!((p.src(), p.sport(), p.ttl()), (POD_A, 5000, 63));
    assert_checksums(p.bytes());
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.counters().bypass_packets, 1);
    // The reply comes back to the pod's own address, untranslated; only
    // excluded sources may do that.
    let mut back = udp(EXCLUDED, 53, POD_A, 5000, b"y");
    assert_eq!(back.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: back.len });
    assert_eq!(udp(SERVER, 53, POD_A, 5000, b"y").run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
}

#[test]
fn endpoint_independent_mapping_keeps_one_port_per_pod_endpoint() {
    let mut e = engine();
    let mut a = udp(POD_A, 5000, SERVER, 3478, b"stun");
    let mut b = udp(POD_A, 5000, SERVER2, 3478, b"stun");
    a.run(&mut e, T0);
    b.run(&mut e, T0);
    assert_eq!((a.src(), a.sport()), (b.src(), b.sport()), "RFC 4787 REQ-1");
    // Endpoint-dependent filtering: SERVER2 may answer, a stranger may not.
    let mut stranger = udp([198, 19, 0, 77], 9999, a.src(), a.sport(), b"hi");
    assert_eq!(stranger.run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
    assert_eq!(e.mapping_count(), 1);
    assert_eq!(e.session_count(), 2);
    assert_eq!(e.sessions_by_config()[0], ("a".to_string(), [0, 2, 0]));
}

#[test]
fn endpoint_independent_filtering_lets_new_udp_peers_reach_a_live_mapping() {
    let mut a = config("a", "198.19.100.0/28");
    a.filtering = FilteringMode::EndpointIndependent;
    let mut e = NatEngine::new(settings(), plan_with(a, config("b", "198.19.101.0/28")));
    let mut out = udp(POD_A, 5000, SERVER, 3478, b"stun");
    out.run(&mut e, T0);
    let mut peer = udp([198, 19, 0, 77], 9999, out.src(), out.sport(), b"hi");
    assert_eq!(peer.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: peer.len });
    assert_eq!((peer.dst(), peer.dport()), (POD_A, 5000));
    // TCP stays endpoint-dependent.
    let mut t = tcp([198, 19, 0, 77], 9999, out.src(), out.sport(), tcpf::SYN);
    assert_eq!(t.run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
}

#[test]
fn outside_hosts_fill_at_most_half_a_pods_sessions_on_its_open_mapping() {
    let mut a = config("a", "198.19.100.0/28");
    (a.filtering, a.session_limit) = (FilteringMode::EndpointIndependent, 20);
    let mut e = NatEngine::new(settings(), plan_with(a, config("b", "198.19.101.0/28")));
    let mut out = udp(POD_A, 5000, SERVER, 3478, b"stun");
    out.run(&mut e, T0);
    let reached = (1..=50u8)
        .filter(|h| {
            let mut peer = udp([198, 19, 7, *h], 9999, out.src(), out.sport(), b"hi");
            matches!(peer.run(&mut e, T0), Verdict::Forward { .. })
        })
        .count();
    assert_eq!(reached, 9, "up to half of 20, the pod's own session included");
    // The pod's own new flows still open, to its limit.
    let own = (0..20u16)
        .filter(|i| matches!(udp(POD_A, 6000 + i, SERVER, 53, b"q").run(&mut e, T0), Verdict::Forward { .. }));
    assert_eq!(own.count(), 10);
}

pub fn small_pool_engine(mapping: MappingMode, ports: RangeInclusive<u16>) -> NatEngine {
    let mut a = config("a", "198.19.100.0/31");
    a.mapping = mapping;
    let plan = plan_with(a, config("b", "198.19.101.0/28"));
    NatEngine::new(EngineSettings { ports, ..settings() }, plan)
}

#[test]
fn pod_keeps_its_paired_address_and_spills_only_when_full() {
    let mut e = small_pool_engine(MappingMode::EndpointIndependent, 1024..=1027);
    let mut srcs = Vec::new();
    for port in 0..8 {
        let mut p = udp(POD_A, 6000 + port, SERVER, 53, b"x");
        assert!(matches!(p.run(&mut e, T0), Verdict::Forward { .. }));
        srcs.push(p.src());
    }
    assert!(srcs[..4].iter().all(|s| *s == srcs[0]), "first four on the paired address: {srcs:?}");
    assert!(srcs[4..].iter().all(|s| *s != srcs[0]), "then the other address of the /31");
}

#[test]
fn exhausted_pool_refuses_with_icmp_admin_prohibited_and_evicts_nothing() {
    let mut e = small_pool_engine(MappingMode::EndpointIndependent, 1024..=1027);
    let mut first = udp(POD_A, 6000, SERVER, 53, b"x");
    first.run(&mut e, T0);
    for port in 1..8 {
        udp(POD_A, 6000 + port, SERVER, 53, b"x").run(&mut e, T0);
    }
    let mut p = udp(POD_A, 7000, SERVER, 53, b"x");
    assert_eq!(p.run(&mut e, T0), Verdict::Reply { len: 56 });
    let reply = p.l4();
    assert_eq!((reply[0], reply[1]), (icmp::DEST_UNREACHABLE, icmp::CODE_ADMIN_PROHIBITED));
    assert_eq!((p.src(), p.dst()), (GW.octets(), POD_A));
    assert_eq!(&reply[8 + 12..8 + 16], &POD_A, "quotes the refused packet");
    assert_checksums(p.bytes());
    assert_eq!(e.counters().dropped(DropReason::PoolExhausted), 1);
    assert_eq!(e.session_count(), 8, "no live session evicted");
    let mut back = udp(SERVER, 53, first.src(), first.sport(), b"y");
    assert!(matches!(back.run(&mut e, T0), Verdict::Forward { .. }));
}

#[test]
fn refused_flows_are_counted_on_the_pods_paired_address_and_protocol() {
    let mut e = small_pool_engine(MappingMode::EndpointIndependent, 1024..=1027);
    let mut first = udp(POD_A, 6000, SERVER, 53, b"x");
    first.run(&mut e, T0);
    for port in 1..8 {
        udp(POD_A, 6000 + port, SERVER, 53, b"x").run(&mut e, T0);
    }
    for port in 0..3 {
        udp(POD_A, 7000 + port, SERVER, 53, b"x").run(&mut e, T0);
    }
    let paired = Ipv4Addr::from(first.src());
    for u in e.port_usage() {
        let want = if u.addr == paired { [0, 3, 0] } else { [0; 3] };
        assert_eq!(u.refused, want, "{}", u.addr);
    }
}

#[test]
fn port_reuse_refusals_are_counted_also_once_a_destination_is_known_exhausted() {
    let mut e = small_pool_engine(MappingMode::PortReuse, 1024..=1027);
    for port in 0..8 {
        udp(POD_A, 6000 + port, SERVER, 53, b"x").run(&mut e, T0);
    }
    for port in 0..2 {
        udp(POD_A, 7000 + port, SERVER, 53, b"x").run(&mut e, T0);
    }
    let refused: u64 = e.port_usage().iter().map(|u| u.refused[1]).sum();
    assert_eq!(refused, 2, "the scan's refusal and the remembered one");
}

#[test]
fn port_reuse_serves_many_destinations_from_one_port() {
    // 2 addresses × 4 ports = 8 egress ports, 24 flows to 3 destinations.
    let mut e = small_pool_engine(MappingMode::PortReuse, 1024..=1027);
    for dst in [SERVER, SERVER2, ROUTER] {
        for port in 0..8 {
            let mut p = udp(POD_A, 6000 + port, dst, 53, b"x");
            assert!(matches!(p.run(&mut e, T0), Verdict::Forward { .. }), "flow {port} to {dst:?}");
        }
    }
    assert_eq!(e.session_count(), 24);
    let mut p = udp(POD_A, 7000, SERVER, 53, b"x");
    assert!(matches!(p.run(&mut e, T0), Verdict::Reply { .. }), "9th flow to one destination");
    assert_eq!(e.counters().dropped(DropReason::PoolExhausted), 1);
    // The same pool in endpoint-independent mode holds only 8.
    let mut eim = small_pool_engine(MappingMode::EndpointIndependent, 1024..=1027);
    let ok = (0..24u16)
        .filter(|i| {
            let dst = [SERVER, SERVER2, ROUTER][usize::from(i / 8)];
            matches!(udp(POD_A, 6000 + i, dst, 53, b"x").run(&mut eim, T0), Verdict::Forward { .. })
        })
        .count();
    assert_eq!(ok, 8);
}

#[test]
fn per_pod_quota_refuses_only_that_pod() {
    let mut a = config("a", "198.19.100.0/28");
    a.port_quota = 3;
    let mut b = config("b", "198.19.101.0/28");
    b.port_quota = 3;
    let mut e = NatEngine::new(settings(), plan_with(a, b));
    for port in 0..3 {
        assert!(matches!(udp(POD_A, 6000 + port, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
    }
    let mut p = udp(POD_A, 6100, SERVER, 53, b"x");
    assert!(matches!(p.run(&mut e, T0), Verdict::Reply { .. }));
    assert_eq!(p.l4()[1], icmp::CODE_ADMIN_PROHIBITED);
    assert_eq!(e.counters().dropped(DropReason::QuotaExceeded), 1);
    // Existing flows keep working, and another pod still gets ports.
    assert!(matches!(udp(POD_A, 6000, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
    assert!(matches!(udp(POD_B, 6000, SERVER, 53, b"x").run(&mut e, T0), Verdict::Forward { .. }));
}

#[test]
fn tcp_timers_follow_the_connection_state() {
    let mut e = engine();
    let mut syn = tcp(POD_A, 40000, SERVER, 443, tcpf::SYN);
    syn.run(&mut e, T0);
    let (eip, eport) = (syn.src(), syn.sport());
    let inbound = |flags| tcp(SERVER, 443, eip, eport, flags);
    assert!(matches!(inbound(tcpf::SYN | tcpf::ACK).run(&mut e, T0), Verdict::Forward { .. }));
    tcp(POD_A, 40000, SERVER, 443, tcpf::ACK).run(&mut e, T0);
    // Established: idle for an hour and still alive (UDP would be gone).
    let later = Time::from_secs(10 + 3600);
    e.expire(later, usize::MAX);
    assert!(matches!(inbound(tcpf::ACK).run(&mut e, later), Verdict::Forward { .. }));
    // FIN both ways: transitory, gone 240 s later.
    tcp(POD_A, 40000, SERVER, 443, tcpf::FIN | tcpf::ACK).run(&mut e, later);
    inbound(tcpf::FIN | tcpf::ACK).run(&mut e, later);
    let t = Time::from_secs(10 + 3600 + 241);
    e.expire(t, usize::MAX);
    assert_eq!(e.session_count(), 0);
    assert_eq!(inbound(tcpf::ACK).run(&mut e, t), Verdict::Drop(DropReason::Unsolicited));
}

#[test]
fn an_unanswered_syn_expires_after_the_transitory_timeout() {
    let mut e = engine();
    tcp(POD_A, 40000, SERVER, 443, tcpf::SYN).run(&mut e, T0);
    e.expire(Time::from_secs(10 + 239), usize::MAX);
    assert_eq!(e.session_count(), 1);
    e.expire(Time::from_secs(10 + 241), usize::MAX);
    assert_eq!(e.session_count(), 0);
}

#[test]
fn bad_tcp_flags_do_not_open_sessions() {
    let mut e = engine();
    for flags in [tcpf::SYN | tcpf::FIN, tcpf::SYN | tcpf::RST, tcpf::RST, 0] {
        assert_eq!(tcp(POD_A, 40000, SERVER, 443, flags).run(&mut e, T0), Verdict::Drop(DropReason::TcpBadFlags));
    }
    assert_eq!(e.session_count(), 0);
}

#[test]
fn udp_expiry_frees_ports_after_the_cooldown() {
    let mut e = engine();
    for port in 0..50 {
        udp(POD_A, 6000 + port, SERVER, 53, b"x").run(&mut e, T0);
    }
    assert_eq!(e.port_usage().iter().map(|u| u.mapped[1]).sum::<u32>(), 50);
    let t = Time::from_secs(10 + 301);
    e.expire(t, usize::MAX);
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.port_usage().iter().map(|u| u.mapped[1]).sum::<u32>(), 50, "cooling ports stay taken");
    e.expire(Time::from_secs(10 + 301 + 121), usize::MAX);
    assert!(e.port_usage().iter().all(|u| u.mapped == [0; 3] && u.sessions == 0));
    assert_eq!(e.mapping_count(), 0);
}

#[test]
fn port_reuse_does_not_reuse_a_tuple_during_its_cooldown() {
    let mut e = small_pool_engine(MappingMode::PortReuse, 1024..=1025);
    // 4 egress ports toward SERVER:80; close one flow and the 5th still fails.
    let mut first = tcp(POD_A, 40000, SERVER, 80, tcpf::SYN);
    first.run(&mut e, T0);
    for p in 1..4 {
        tcp(POD_A, 40000 + p, SERVER, 80, tcpf::SYN).run(&mut e, T0);
    }
    tcp(SERVER, 80, first.src(), first.sport(), tcpf::RST).run(&mut e, T0);
    let t = Time::from_secs(10 + 241);
    e.expire(t, usize::MAX);
    assert_eq!(e.session_count(), 0);
    let mut again = tcp(POD_A, 41000, SERVER, 80, tcpf::SYN);
    assert!(matches!(again.run(&mut e, t), Verdict::Reply { .. }), "tuples are cooling");
    // Another destination is fine meanwhile, and after the cooldown SERVER too.
    assert!(matches!(tcp(POD_A, 41000, SERVER2, 80, tcpf::SYN).run(&mut e, t), Verdict::Forward { .. }));
    let t2 = Time::from_secs(10 + 241 + 121);
    e.expire(t2, usize::MAX);
    assert!(matches!(tcp(POD_A, 41001, SERVER, 80, tcpf::SYN).run(&mut e, t2), Verdict::Forward { .. }));
}

#[test]
fn icmp_echo_identifiers_are_translated_like_ports() {
    let mut e = engine();
    let mut req = echo(POD_A, SERVER, 77, false);
    req.run(&mut e, T0);
    assert!(in_pool(req.src(), [198, 19, 100]));
    assert_checksums(req.bytes());
    let mut rep = echo(SERVER, req.src(), req.icmp_id(), true);
    assert_eq!(rep.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: rep.len });
    assert_eq!((rep.dst(), rep.icmp_id()), (POD_A, 77));
    assert_checksums(rep.bytes());
    // The ICMP query timeout is 60 s.
    e.expire(Time::from_secs(10 + 61), usize::MAX);
    assert_eq!(e.session_count(), 0);
}

#[test]
fn time_exceeded_from_a_router_reaches_the_pod_translated() {
    let mut e = engine();
    let mut probe = udp(POD_A, 33434, SERVER, 33434, b"traceroute");
    probe.run(&mut e, T0);
    let mut err = icmp_error(ROUTER, probe.src(), icmp::TIME_EXCEEDED, 0, probe.bytes());
    assert_eq!(err.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: err.len });
    assert_eq!(err.dst(), POD_A);
    let quoted = &err.l4()[8..];
    assert_eq!(&quoted[12..16], &POD_A, "quoted source restored");
    assert_eq!(u16::from_be_bytes([quoted[20], quoted[21]]), 33434, "quoted port restored");
    assert_checksums(err.bytes());
}

#[test]
fn fragmentation_needed_reaches_the_pod_for_pmtu_discovery() {
    let mut e = engine();
    let mut seg = tcp(POD_A, 40000, SERVER, 443, tcpf::SYN);
    seg.run(&mut e, T0);
    let mut err = icmp_error(ROUTER, seg.src(), icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED, seg.bytes());
    assert!(matches!(err.run(&mut e, T0), Verdict::Forward { side: Side::Inside, .. }));
    let m = err.l4();
    assert_eq!((m[0], m[1], u16::from_be_bytes([m[6], m[7]])), (3, 4, 1400), "MTU kept");
    assert_eq!(&m[8 + 12..8 + 16], &POD_A);
    assert_checksums(err.bytes());
}

#[test]
fn icmp_errors_about_unknown_flows_nested_errors_and_bad_checksums_are_dropped() {
    let mut e = engine();
    let mut seg = udp(POD_A, 5000, SERVER, 53, b"x");
    seg.run(&mut e, T0);
    let stranger = udp([198, 19, 100, 3], 1, SERVER, 2, b"x");
    let mut err = icmp_error(ROUTER, [198, 19, 100, 3], icmp::TIME_EXCEEDED, 0, stranger.bytes());
    assert_eq!(err.run(&mut e, T0), Verdict::Drop(DropReason::IcmpErrorNoSession));
    let inner_err = icmp_error(seg.src(), SERVER, icmp::DEST_UNREACHABLE, 3, seg.bytes());
    let mut nested = icmp_error(ROUTER, seg.src(), icmp::TIME_EXCEEDED, 0, inner_err.bytes());
    assert_eq!(nested.run(&mut e, T0), Verdict::Drop(DropReason::IcmpErrorNested));
    let mut bad = icmp_error(ROUTER, seg.src(), icmp::TIME_EXCEEDED, 0, seg.bytes());
    bad.buf[22] ^= 0xff;
    assert_eq!(bad.run(&mut e, T0), Verdict::Drop(DropReason::IcmpBadChecksum));
    let mut short = icmp_error(ROUTER, seg.src(), icmp::TIME_EXCEEDED, 0, &seg.bytes()[..24]);
    assert_eq!(short.run(&mut e, T0), Verdict::Drop(DropReason::IcmpErrorTruncated));
}

#[test]
fn a_pods_port_unreachable_leaves_with_the_egress_address() {
    let mut e = engine();
    let mut out = udp(POD_A, 5000, SERVER, 53, b"q");
    out.run(&mut e, T0);
    // The late reply the pod rejects, as the pod received it.
    let delivered = udp(SERVER, 53, POD_A, 5000, b"late");
    let mut err = icmp_error(POD_A, SERVER, icmp::DEST_UNREACHABLE, 3, delivered.bytes());
    assert_eq!(err.run(&mut e, T0), Verdict::Forward { side: Side::Outside, len: err.len });
    assert_eq!(err.src(), out.src());
    let q = &err.l4()[8..];
    assert_eq!(&q[16..20], &out.src(), "quoted destination is the egress address");
    assert_eq!(u16::from_be_bytes([q[22], q[23]]), out.sport());
    assert_checksums(err.bytes());
}

#[test]
fn ttl_expiry_is_answered_with_time_exceeded_from_the_gateway() {
    let mut e = engine();
    let mut p = udp(POD_A, 33434, SERVER, 33434, b"x");
    p.buf[8] = 1;
    let c = fold(&{
        let mut h = p.buf[..20].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    p.buf[10..12].copy_from_slice(&c.to_be_bytes());
    assert!(matches!(p.run(&mut e, T0), Verdict::Reply { .. }));
    assert_eq!((p.src(), p.dst(), p.l4()[0]), (GW.octets(), POD_A, icmp::TIME_EXCEEDED));
    assert_checksums(p.bytes());
    assert_eq!(e.session_count(), 0);
}

#[test]
fn no_icmp_error_type_is_ever_answered_with_an_icmp_error() {
    // A redirect, source quench, unreachable, time exceeded or parameter
    // problem that expires at the gateway is dropped, never answered.
    let probe = udp(POD_A, 33434, SERVER, 33434, b"x");
    for ty in [icmp::DEST_UNREACHABLE, 4, 5, icmp::TIME_EXCEEDED, icmp::PARAMETER_PROBLEM] {
        let mut e = engine();
        let mut err = icmp_error(POD_A, SERVER, ty, 0, probe.bytes());
        err.buf[8] = 1;
        err.buf[10] = 0;
        err.buf[11] = 0;
        let c = fold(&err.buf[..20]);
        err.buf[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(err.run(&mut e, T0), Verdict::Drop(DropReason::TtlExpired), "ICMP type {ty}");
        assert_eq!(e.counters().icmp_errors_sent, 0, "ICMP type {ty}");
    }
}

/// Whether a TTL=1 UDP packet from `pod` is answered with time exceeded.
fn expires_answered(e: &mut NatEngine, pod: [u8; 4]) -> bool {
    let mut p = udp(pod, 1, SERVER, 1, b"x");
    p.buf[8] = 1;
    p.buf[10] = 0;
    p.buf[11] = 0;
    let c = fold(&p.buf[..20]);
    p.buf[10..12].copy_from_slice(&c.to_be_bytes());
    matches!(p.run(e, T0), Verdict::Reply { .. })
}

#[test]
fn icmp_errors_are_rate_limited() {
    // Twenty sources of a fallback CIDR.
    let mut b = config("b", "198.19.101.0/28");
    b.sources = vec!["198.18.1.0/24".parse().unwrap()];
    let plan = plan_with(config("a", "198.19.100.0/28"), b);
    let mut e = NatEngine::new(EngineSettings { icmp_errors_per_sec: 8, ..settings() }, plan);
    // Twenty pods, one expiring packet each: eight answers in all.
    let replies = (10..30u8).filter(|i| expires_answered(&mut e, [198, 18, 1, *i])).count();
    assert_eq!(replies, 8);
    assert_eq!(e.counters().icmp_rate_limited, 12);
    assert_eq!(e.counters().dropped(DropReason::TtlExpired), 20);
}

#[test]
fn one_pods_expiring_packets_take_a_quarter_of_the_icmp_error_budget() {
    let mut e = NatEngine::new(EngineSettings { icmp_errors_per_sec: 8, ..settings() }, default_plan());
    let greedy = (0..20).filter(|_| expires_answered(&mut e, POD_A)).count();
    assert_eq!(greedy, 2, "a quarter of 8");
    assert!(expires_answered(&mut e, POD_B), "another pod is still answered");
}

/// Splits an IPv4 packet into two fragments at byte `at` of its payload.
pub fn fragment(p: &Pkt, at: usize) -> (Pkt, Pkt) {
    let b = p.bytes();
    let hl = 20;
    let mk = |data: &[u8], off: usize, more: bool| {
        let mut v = b[..hl].to_vec();
        v.extend_from_slice(data);
        let tl = v.len() as u16;
        v[2..4].copy_from_slice(&tl.to_be_bytes());
        let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
        v[6..8].copy_from_slice(&fo.to_be_bytes());
        v[10] = 0;
        v[11] = 0;
        let c = fold(&v[..hl]);
        v[10..12].copy_from_slice(&c.to_be_bytes());
        Pkt::new(v)
    };
    (mk(&b[hl..hl + at], 0, true), mk(&b[hl + at..], at, false))
}

pub fn reassembled_udp_is_valid(first: &Pkt, second: &Pkt) {
    let mut whole = first.bytes().to_vec();
    whole.extend_from_slice(&second.bytes()[20..]);
    let tl = whole.len() as u16;
    whole[2..4].copy_from_slice(&tl.to_be_bytes());
    whole[6] = 0;
    whole[7] = 0;
    whole[10] = 0;
    whole[11] = 0;
    let c = fold(&whole[..20]);
    whole[10..12].copy_from_slice(&c.to_be_bytes());
    assert_checksums(&whole);
}

#[test]
fn fragments_follow_their_first_fragment_in_order_and_out_of_order() {
    let mut e = engine();
    let big = udp(POD_A, 5000, SERVER, 9000, &[7u8; 600]);
    let (mut f1, mut f2) = fragment(&big, 304);
    assert!(matches!(f1.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
    assert!(matches!(f2.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
    assert_eq!(f1.src(), f2.src());
    reassembled_udp_is_valid(&f1, &f2);

    // Out of order: the later fragment is held until its first arrives.
    let mut big2 = udp(POD_A, 5001, SERVER, 9000, &[9u8; 600]);
    big2.buf[5] = 0x99; // another IP ident
    big2.buf[10] = 0;
    big2.buf[11] = 0;
    let c = fold(&big2.buf[..20]);
    big2.buf[10..12].copy_from_slice(&c.to_be_bytes());
    let (mut g1, mut g2) = fragment(&big2, 304);
    assert_eq!(g2.run(&mut e, T0), Verdict::Held);
    assert!(e.take_released().is_none());
    assert!(matches!(g1.run(&mut e, T0), Verdict::Forward { .. }));
    let rel = e.take_released().expect("held fragment released");
    assert_eq!(rel.to, ReleaseTo::Side(Side::Outside));
    let g2 = Pkt::new(rel.bytes);
    assert_eq!(g2.src(), g1.src());
    reassembled_udp_is_valid(&g1, &g2);

    // Inbound fragments go back to the pod.
    let reply = udp(SERVER, 9000, f1.src(), f1.sport(), &[1u8; 600]);
    let (mut r1, mut r2) = fragment(&reply, 304);
    r1.run(&mut e, T0);
    assert_eq!(r2.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: r2.len });
    assert_eq!((r1.dst(), r2.dst()), (POD_A, POD_A));
}

/// `p` with IP identification `id` (its checksum fixed).
fn with_ident(mut p: Pkt, id: u16) -> Pkt {
    p.buf[4..6].copy_from_slice(&id.to_be_bytes());
    p.buf[10] = 0;
    p.buf[11] = 0;
    let c = fold(&p.buf[..20]);
    p.buf[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn a_datagram_in_three_fragments_sent_first_last_middle_arrives_whole() {
    // RFC 4787 REQ-14: any order. The last fragment used to end the
    // datagram's note, so the middle one that came after it was lost.
    let mut e = engine();
    let big = udp(POD_A, 5000, SERVER, 9000, &[7u8; 2992]);
    let first = fragment_of(&big, 0, 1480, true);
    let middle = fragment_of(&big, 1480, 2960, true);
    let last = fragment_of(&big, 2960, 3000, false);
    let mut srcs = Vec::new();
    for mut f in [first, last, middle] {
        assert!(matches!(f.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
        srcs.push(f.src());
    }
    assert!(srcs.iter().all(|s| in_pool(*s, [198, 19, 100]) && *s == srcs[0]), "{srcs:?}");
    // Complete: the note is gone, and a stray repeat is held, not sent.
    let mut again = fragment_of(&big, 1480, 2960, true);
    assert_eq!(again.run(&mut e, T0), Verdict::Held);
}

#[test]
fn the_internets_first_fragments_take_at_most_their_share_of_datagram_notes() {
    // Worker 0 of 2 notes first fragments for ports worker 1 owns before
    // any session is looked up: one host, or the whole internet, must not
    // fill those notes for the pods.
    let s = EngineSettings { worker: 0, workers: 2, frag_datagrams: 64, ..settings() };
    let mut e = NatEngine::new(s, default_plan());
    let port = (1024..=65535u16).find(|p| e.ports.slice.owner(*p) == Some(1)).unwrap();
    let egress = [198, 19, 100, 1];
    let notes = |e: &mut NatEngine, from: [u8; 4], id: u16| {
        let p = with_ident(udp(from, 9000, egress, port, &[1u8; 600]), id);
        let mut f = fragment_of(&p, 0, 304, true);
        assert!(matches!(f.run(e, T0), Verdict::Handoff { worker: 1, .. }));
    };
    for id in 0..20 {
        notes(&mut e, SERVER, id);
    }
    // One host: an eighth of the internet's half of 64.
    assert_eq!(e.counters().fragment_notes_refused, 16);
    for host in 1..=40u8 {
        notes(&mut e, [198, 19, 9, host], 1);
    }
    // The internet: half of 64, 4 of them SERVER's.
    assert_eq!(e.counters().fragment_notes_refused, 16 + 12);
    // A pod's datagram is still noted and followed.
    let big = udp(POD_A, 5000, SERVER, 9000, &[7u8; 600]);
    let owner = e.inside_owner(17, u32::from_be_bytes(POD_A), 5000);
    let (mut f1, mut f2) = fragment(&big, 304);
    assert!(matches!(f1.run(&mut e, T0), Verdict::Handoff { .. } | Verdict::Forward { .. }), "owner {owner}");
    assert!(matches!(f2.run(&mut e, T0), Verdict::Handoff { .. } | Verdict::Forward { .. }));
    assert_eq!(e.counters().fragment_notes_refused, 28);
}

#[test]
fn orphan_fragments_time_out_and_are_counted() {
    let mut e = engine();
    let big = udp(POD_A, 5000, SERVER, 9000, &[7u8; 600]);
    let (_, mut f2) = fragment(&big, 304);
    assert_eq!(f2.run(&mut e, T0), Verdict::Held);
    e.expire(Time::from_millis(T0.millis() + 2500), 16);
    assert_eq!(e.counters().dropped(DropReason::FragmentTimeout), 1);
}

#[test]
fn a_first_fragment_without_the_transport_header_is_dropped() {
    let mut e = engine();
    let big = udp(POD_A, 5000, SERVER, 9000, &[7u8; 600]);
    let (mut tiny, _) = fragment(&big, 0);
    assert_eq!(tiny.run(&mut e, T0), Verdict::Drop(DropReason::FragmentTooShort));
}

/// A fragment holding bytes `from..to` of `p`'s payload at offset `from`.
pub fn fragment_of(p: &Pkt, from: usize, to: usize, more: bool) -> Pkt {
    let b = p.bytes();
    let mut v = b[..20].to_vec();
    v.extend_from_slice(&b[20 + from..20 + to]);
    let tl = v.len() as u16;
    v[2..4].copy_from_slice(&tl.to_be_bytes());
    let fo = (from / 8) as u16 | if more { 0x2000 } else { 0 };
    v[6..8].copy_from_slice(&fo.to_be_bytes());
    v[10] = 0;
    v[11] = 0;
    let c = fold(&v[..20]);
    v[10..12].copy_from_slice(&c.to_be_bytes());
    Pkt::new(v)
}

#[test]
fn a_tcp_fragment_at_offset_8_is_dropped_both_ways() {
    // RFC 1858 3.1: the first fragment carries a plain SYN; a fragment at
    // offset 8 would overwrite its flags (say, with SYN+FIN) after the
    // gateway has checked them.
    let mut e = engine();
    let syn = tcp(POD_A, 5000, SERVER, 443, tcpf::SYN);
    let mut first = fragment_of(&syn, 0, 24, true);
    assert!(matches!(first.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
    let mut over = fragment_of(&syn, 8, 25, false);
    over.buf[20 + 5] = tcpf::SYN | tcpf::FIN; // byte 13 of the TCP header
    assert_eq!(over.run(&mut e, T0), Verdict::Drop(DropReason::FragmentTooShort));
    // From the internet too, on the live session.
    let reply = tcp(SERVER, 443, first.src(), first.sport(), tcpf::SYN | tcpf::ACK);
    let mut r1 = fragment_of(&reply, 0, 24, true);
    assert!(matches!(r1.run(&mut e, T0), Verdict::Forward { side: Side::Inside, .. }));
    let mut r2 = fragment_of(&reply, 8, 25, false);
    assert_eq!(r2.run(&mut e, T0), Verdict::Drop(DropReason::FragmentTooShort));
    assert_eq!(e.counters().dropped(DropReason::FragmentTooShort), 2);
    // Further on, TCP fragments follow their first as any other; UDP at 8 too.
    let mut tail = fragment_of(&syn, 16, 25, false);
    assert!(matches!(tail.run(&mut e, T0), Verdict::Forward { side: Side::Outside, .. }));
    let big = udp(POD_A, 5001, SERVER, 9000, &[7u8; 40]);
    let (mut u1, mut u2) = (fragment_of(&big, 0, 8, true), fragment_of(&big, 8, 48, false));
    assert!(matches!(u1.run(&mut e, T0), Verdict::Forward { .. }));
    assert!(matches!(u2.run(&mut e, T0), Verdict::Forward { .. }));
}

#[test]
fn a_held_fragment_whose_ttl_runs_out_is_counted_not_lost() {
    let mut e = engine();
    let big = udp(POD_A, 5000, SERVER, 9000, &[7u8; 600]);
    let (mut f1, mut f2) = fragment(&big, 304);
    f2.buf[8] = 1;
    f2.buf[10] = 0;
    f2.buf[11] = 0;
    let c = fold(&f2.buf[..20]);
    f2.buf[10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(f2.run(&mut e, T0), Verdict::Held);
    assert!(matches!(f1.run(&mut e, T0), Verdict::Forward { .. }));
    assert!(e.take_released().is_none(), "a fragment with TTL 1 is not forwarded");
    assert_eq!(e.counters().dropped(DropReason::TtlExpired), 1);
}

#[test]
fn hairpinning_delivers_to_the_pod_behind_an_egress_address() {
    let mut b = config("b", "198.19.101.0/28");
    b.filtering = FilteringMode::EndpointIndependent;
    let mut e = NatEngine::new(settings(), plan_with(config("a", "198.19.100.0/28"), b));
    // Pod B has a public UDP endpoint (say, a STUN-discovered one).
    let mut bout = udp(POD_B, 7000, SERVER, 3478, b"stun");
    bout.run(&mut e, T0);
    // Pod A sends to B's public endpoint.
    let mut p = udp(POD_A, 5000, bout.src(), bout.sport(), b"hello b");
    assert_eq!(p.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: p.len });
    assert_eq!((p.dst(), p.dport()), (POD_B, 7000));
    assert!(in_pool(p.src(), [198, 19, 100]), "B sees A's egress address, as from the internet");
    assert_checksums(p.bytes());
    assert_eq!(e.counters().hairpin_packets, 1);
}

#[test]
fn malformed_packets_are_dropped_by_reason() {
    let mut e = engine();
    let good = udp(POD_A, 5000, SERVER, 53, b"x");
    let mut trunc = Pkt::new(good.bytes()[..10].to_vec());
    assert_eq!(trunc.run(&mut e, T0), Verdict::Drop(DropReason::Truncated));
    let mut v6 = Pkt::new(good.bytes().to_vec());
    v6.buf[0] = 0x65;
    assert_eq!(v6.run(&mut e, T0), Verdict::Drop(DropReason::Malformed));
    let mut bad = Pkt::new(good.bytes().to_vec());
    bad.buf[10] ^= 1;
    assert_eq!(bad.run(&mut e, T0), Verdict::Drop(DropReason::BadIpChecksum));
    let mut lie = Pkt::new(good.bytes().to_vec());
    lie.len = 25;
    assert_eq!(lie.run(&mut e, T0), Verdict::Drop(DropReason::Truncated));
    let mut short_udp = Pkt::new(good.bytes()[..24].to_vec());
    short_udp.buf[3] = 24;
    short_udp.buf[10] = 0;
    short_udp.buf[11] = 0;
    let c = fold(&short_udp.buf[..20]);
    short_udp.buf[10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(short_udp.run(&mut e, T0), Verdict::Drop(DropReason::Truncated));
    let mut mcast = udp(POD_A, 5000, [224, 0, 0, 251], 5353, b"x");
    assert_eq!(mcast.run(&mut e, T0), Verdict::Drop(DropReason::MartianDestination));
    assert_eq!(e.counters().total_drops(), 6);
}

#[test]
fn a_full_session_table_refuses_new_flows_and_keeps_old_ones() {
    let mut e = NatEngine::new(EngineSettings { session_capacity: 4, ..settings() }, default_plan());
    let mut first = udp(POD_A, 5000, SERVER, 53, b"x");
    first.run(&mut e, T0);
    for p in 1..4 {
        udp(POD_A, 5000 + p, SERVER, 53, b"x").run(&mut e, T0);
    }
    let mut p = udp(POD_B, 5000, SERVER, 53, b"x");
    assert!(matches!(p.run(&mut e, T0), Verdict::Reply { .. }));
    assert_eq!(e.counters().dropped(DropReason::SessionTableFull), 1);
    let mut back = udp(SERVER, 53, first.src(), first.sport(), b"y");
    assert!(matches!(back.run(&mut e, T0), Verdict::Forward { .. }));
}

#[test]
fn workers_hand_off_what_other_workers_own() {
    let plan = default_plan();
    let mut w0 = NatEngine::new(EngineSettings { worker: 0, workers: 2, ..settings() }, plan.clone());
    let mut w1 = NatEngine::new(EngineSettings { worker: 1, workers: 2, ..settings() }, plan);
    let (mut handed, mut translated) = (0, 0);
    for port in 0..64 {
        let mut p = udp(POD_A, 5000 + port, SERVER, 53, b"x");
        let mut v = p.run(&mut w0, T0);
        if let Verdict::Handoff { worker: 1, .. } = v {
            handed += 1;
            v = p.run(&mut w1, T0);
        }
        let Verdict::Forward { .. } = v else { panic!("{v:?}") };
        translated += 1;
        // The reply lands on worker 0 first; the owner is the allocating worker.
        let mut r = udp(SERVER, 53, p.src(), p.sport(), b"y");
        let mut v = r.run(&mut w0, T0);
        if let Verdict::Handoff { worker, .. } = v {
            assert_eq!(worker, 1);
            v = r.run(&mut w1, T0);
        }
        assert_eq!(v, Verdict::Forward { side: Side::Inside, len: r.len });
        assert_eq!((r.dst(), r.dport()), (POD_A, 5000 + port));
    }
    assert!(handed > 10 && handed < 54, "flows spread over workers: {handed}");
    assert_eq!(translated, 64);
    assert!(w0.port_usage().iter().all(|u| u.slice == 32256));
}

#[test]
fn a_new_plan_moves_new_flows_and_cuts_sessions_it_no_longer_covers() {
    let mut e = engine();
    let mut a1 = udp(POD_A, 5000, SERVER, 53, b"x");
    a1.run(&mut e, T0);
    let mut b1 = udp(POD_B, 5000, SERVER, 53, b"x");
    b1.run(&mut e, T0);
    // Rebind pod A to config b; b is unchanged.
    let plan = Plan {
        network_policies: Vec::new(),
        version: 2,
        configs: vec![config("a", "198.19.100.0/28"), config("b", "198.19.101.0/28")],
        bindings: vec![
            Binding { pod_ip: POD_A.into(), config: "b".into(), public_key: None },
            Binding { pod_ip: POD_B.into(), config: "b".into(), public_key: None },
        ]
        .into(),
    };
    e.apply_plan(Arc::new(CompiledPlan::new(&plan).unwrap()), T0);
    assert_eq!(udp(SERVER, 53, a1.src(), a1.sport(), b"y").run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
    assert!(matches!(udp(SERVER, 53, b1.src(), b1.sport(), b"y").run(&mut e, T0), Verdict::Forward { .. }));
    let mut a2 = udp(POD_A, 5000, SERVER, 53, b"x");
    a2.run(&mut e, T0);
    assert!(in_pool(a2.src(), [198, 19, 101]), "pod A now leaves through b");
    assert_eq!(e.plan().version, 2);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Flow {
        Udp(u16, u16),
        Tcp(u16, u16),
        Echo(u16),
    }

    fn flow() -> impl Strategy<Value = Flow> {
        prop_oneof![
            (1u16.., 1u16..).prop_map(|(a, b)| Flow::Udp(a, b)),
            (1u16.., 1u16..).prop_map(|(a, b)| Flow::Tcp(a, b)),
            any::<u16>().prop_map(Flow::Echo),
        ]
    }

    fn build(f: &Flow, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Pkt {
        match *f {
            Flow::Udp(s, d) => udp(src, s, dst, d, payload),
            Flow::Tcp(s, d) => tcp(src, s, dst, d, tcpf::SYN),
            Flow::Echo(id) => {
                let mut v = Vec::new();
                PacketBuilder::ipv4(src, dst, 64).icmpv4_echo_request(id, 3).write(&mut v, payload).unwrap();
                Pkt::new(v)
            }
        }
    }

    fn reply(f: &Flow, out: &Pkt) -> Pkt {
        match *f {
            Flow::Udp(..) => udp(out.dst(), out.dport(), out.src(), out.sport(), b"r"),
            Flow::Tcp(..) => tcp(out.dst(), out.dport(), out.src(), out.sport(), tcpf::SYN | tcpf::ACK),
            Flow::Echo(_) => echo(out.dst(), out.src(), out.icmp_id(), true),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Out and back restores the original tuple; every rewritten packet's
        /// checksums equal a full recomputation.
        #[test]
        fn out_and_back_restores_the_tuple(
            f in flow(),
            pod in prop::sample::select(vec![POD_A, POD_B]),
            dst in (1u8..=223, any::<u8>(), any::<u8>(), any::<u8>()),
            payload in prop::collection::vec(any::<u8>(), 0..300),
            mode in prop::sample::select(vec![MappingMode::EndpointIndependent, MappingMode::PortReuse]),
        ) {
            let dst = [dst.0, dst.1, dst.2, dst.3];
            prop_assume!(dst[0] != 127 && dst[..2] != [198, 18]);
            let mut a = config("a", "198.19.100.0/28");
            a.mapping = mode;
            let mut b = config("b", "198.19.101.0/30");
            b.mapping = mode;
            let mut e = NatEngine::new(settings(), plan_with(a, b));
            let mut out = build(&f, pod, dst, &payload);
            let orig = out.bytes().to_vec();
            let v = out.run(&mut e, T0);
            prop_assert!(matches!(v, Verdict::Forward { side: Side::Outside, .. }), "{:?}", v);
            assert_checksums(out.bytes());
            prop_assert_eq!(&out.bytes()[20..], &orig[20..].iter().enumerate().map(|(i, &b)| {
                // Everything past the IP header is untouched but ports/ids and checksums.
                let l4 = &out.bytes()[20..];
                let mutable = match f { Flow::Udp(..) => [0usize, 1, 6, 7].contains(&i), Flow::Tcp(..) => [0usize, 1, 16, 17].contains(&i), Flow::Echo(_) => [2usize, 3, 4, 5].contains(&i) };
                if mutable { l4[i] } else { b }
            }).collect::<Vec<u8>>()[..]);
            let mut back = reply(&f, &out);
            let v = back.run(&mut e, T0);
            prop_assert_eq!(v, Verdict::Forward { side: Side::Inside, len: back.len });
            assert_checksums(back.bytes());
            prop_assert_eq!(back.dst(), pod);
            prop_assert_eq!(back.src(), dst);
            match f {
                Flow::Udp(s, d) | Flow::Tcp(s, d) => prop_assert_eq!((back.dport(), back.sport()), (s, d)),
                Flow::Echo(id) => prop_assert_eq!(back.icmp_id(), id),
            }
        }

        /// Under any sequence of new flows and clock steps: no two live
        /// sessions share an outside tuple (port reuse) and no two mappings
        /// share an (address, port) (endpoint-independent); once everything
        /// expires, every port is free again.
        #[test]
        fn ports_are_never_shared_and_all_come_back(
            ops in prop::collection::vec((any::<bool>(), 0u16..40, 0u8..3, 0u8..3, 0u32..400), 1..120),
            mode in prop::sample::select(vec![MappingMode::EndpointIndependent, MappingMode::PortReuse]),
        ) {
            let mut a = config("a", "198.19.100.0/31");
            a.mapping = mode;
            a.port_quota = 20;
            let plan = plan_with(a, config("b", "198.19.101.0/31"));
            let mut e = NatEngine::new(EngineSettings { ports: 1024..=1039, ..settings() }, plan);
            let mut now = 10u64;
            for (pod_a, sport, dst, proto, step) in ops {
                now += u64::from(step);
                let t = Time::from_secs(now);
                let pod = if pod_a { POD_A } else { POD_B };
                let dst = [SERVER, SERVER2, ROUTER][usize::from(dst)];
                let mut p = match proto {
                    0 => udp(pod, 2000 + sport, dst, 53, b"x"),
                    1 => tcp(pod, 2000 + sport, dst, 80, tcpf::SYN),
                    _ => echo(pod, dst, 2000 + sport, false),
                };
                let v = p.run(&mut e, t);
                prop_assert!(matches!(v, Verdict::Forward { .. } | Verdict::Reply { .. }), "{:?}", v);
                e.expire(t, 64);
                prop_assert_eq!(e.session_count(), e.sessions().count(), "live session counters");
                let mut outside = std::collections::HashSet::new();
                for s in e.sessions() {
                    prop_assert!(outside.insert(s.out_key()), "two live sessions on one outside tuple");
                }
                if mode == MappingMode::EndpointIndependent {
                    let mut seen = std::collections::HashSet::new();
                    for (_, m) in e.mappings.iter() {
                        prop_assert!(seen.insert((m.proto, m.egress, m.egress_port)), "two mappings on one port");
                    }
                }
            }
            let end = Time::from_secs(now + 7440 + 121);
            e.expire(end, usize::MAX);
            e.expire(end, usize::MAX);
            prop_assert_eq!(e.session_slots(), 0);
            prop_assert_eq!(e.mapping_count(), 0);
            for u in e.port_usage() {
                prop_assert_eq!((u.mapped, u.sessions), ([0; 3], 0));
            }
            for p in e.holdings.counts.values() {
                prop_assert_eq!(p.holdings, 0);
            }
        }

        /// Arbitrary bytes never panic, whatever sessions exist.
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200), fix in any::<bool>()) {
            let mut e = engine();
            udp(POD_A, 5000, SERVER, 53, b"x").run(&mut e, T0);
            let mut buf = data.clone();
            if fix && buf.len() >= 20 {
                buf[0] = 0x45;
                let tl = buf.len() as u16;
                buf[2..4].copy_from_slice(&tl.to_be_bytes());
                buf[6] &= 0x3f;
                buf[10] = 0;
                buf[11] = 0;
                let c = fold(&buf[..20]);
                buf[10..12].copy_from_slice(&c.to_be_bytes());
            }
            let len = buf.len();
            buf.resize(len + 64, 0);
            let _ = e.process(&mut buf, len, T0);
        }
    }
}

mod policy {
    use super::*;
    use crate::plan::{DenyResponse, EgressPolicy, LiveFlows, PolicyAction, PolicyRule, Protocol};

    const API: [u8; 4] = [198, 19, 0, 10];
    const DNS: [u8; 4] = [198, 19, 0, 53];

    fn rule(name: &str, cidrs: &[&str], fqdns: &[&str], proto: Option<Protocol>, ports: &[&str]) -> PolicyRule {
        PolicyRule {
            name: name.into(),
            action: PolicyAction::Allow,
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            fqdns: fqdns.iter().map(|s| s.to_string()).collect(),
            protocol: proto,
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            pods: None,
            server_name: Default::default(),
            tls_ports: vec![],
            http_ports: vec![],
        }
    }

    fn policy(deny: DenyResponse, live: LiveFlows) -> EgressPolicy {
        EgressPolicy {
            default_action: PolicyAction::Deny,
            rules: vec![
                rule("web", &["198.19.0.100/32"], &[], Some(Protocol::Tcp), &["443"]),
                rule("dns", &["198.19.0.53/32"], &[], Some(Protocol::Udp), &["53"]),
                rule("api", &[], &["api.example.com"], Some(Protocol::Tcp), &["443"]),
            ],
            deny_response: deny,
            live_flows: live,
            dns_ttl_floor: 30,
            dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
        }
    }

    fn engine_with(p: EgressPolicy) -> NatEngine {
        let mut a = config("a", "198.19.100.0/28");
        a.policy = Some(p);
        NatEngine::new(settings(), plan_with(a, config("b", "198.19.101.0/28")))
    }

    #[test]
    fn default_deny_allows_exactly_the_rules() {
        let mut e = engine_with(policy(DenyResponse::Drop, LiveFlows::Cut));
        assert!(matches!(tcp(POD_A, 40000, SERVER, 443, tcpf::SYN).run(&mut e, T0), Verdict::Forward { .. }));
        assert_eq!(tcp(POD_A, 40001, SERVER, 80, tcpf::SYN).run(&mut e, T0), Verdict::Drop(DropReason::PolicyDenied));
        assert_eq!(udp(POD_A, 5000, SERVER, 443, b"x").run(&mut e, T0), Verdict::Drop(DropReason::PolicyDenied));
        // Config b has no policy.
        assert!(matches!(tcp(POD_B, 40000, SERVER, 80, tcpf::SYN).run(&mut e, T0), Verdict::Forward { .. }));
        let ev: Vec<_> = e.take_deny_events().collect();
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0].pod, ev[0].dst, ev[0].port, ev[0].rule.clone()), (POD_A.into(), SERVER.into(), 80, None));
        let hits = e.rule_hits();
        assert_eq!(hits[0].rules[0], ("web".to_string(), 1));
        assert_eq!(hits[0].rules[3], ("default".to_string(), 2));
        // Established flows are not re-checked per packet.
        assert_eq!(e.rule_hits()[0].rules[0].1, 1);
    }

    #[test]
    fn reject_answers_tcp_with_rst_and_udp_with_icmp_admin_prohibited() {
        let mut e = engine_with(policy(DenyResponse::Reject, LiveFlows::Cut));
        let mut syn = tcp(POD_A, 40001, SERVER, 80, tcpf::SYN);
        assert_eq!(syn.run(&mut e, T0), Verdict::Reply { len: 40 });
        assert_eq!((syn.src(), syn.dst(), syn.sport(), syn.dport()), (SERVER, POD_A, 80, 40001));
        let t = syn.l4();
        assert_eq!(t[13], tcpf::RST | tcpf::ACK);
        assert_eq!(u32::from_be_bytes([t[8], t[9], t[10], t[11]]), 1000 + 5 + 1, "acks the SYN and its data");
        assert_checksums(syn.bytes());
        let mut u = udp(POD_A, 5000, SERVER, 443, b"x");
        assert!(matches!(u.run(&mut e, T0), Verdict::Reply { .. }));
        assert_eq!((u.l4()[0], u.l4()[1]), (icmp::DEST_UNREACHABLE, icmp::CODE_ADMIN_PROHIBITED));
        assert_eq!(e.counters().dropped(DropReason::PolicyDenied), 2);
    }

    fn dns_answer(name: &str, addr: [u8; 4], ttl: u32, q: &Pkt) -> Pkt {
        let m = crate::wire::dns::tests::response(name, &[(name, 1, addr.to_vec(), ttl)]);
        udp(DNS, 53, q.src(), q.sport(), &m)
    }

    #[test]
    fn the_highest_dns_ttl_floor_learns_an_answer_for_a_day_and_no_longer() {
        // A floor above a day is refused by validation (plan tests); at a
        // day exactly, a week's TTL is still capped at a day.
        let floor = crate::plan::MAX_DNS_TTL;
        let mut e = engine_with(EgressPolicy { dns_ttl_floor: floor, ..policy(DenyResponse::Drop, LiveFlows::Cut) });
        let mut q = udp(POD_A, 5353, DNS, 53, b"query");
        assert!(matches!(q.run(&mut e, T0), Verdict::Forward { .. }));
        assert!(matches!(dns_answer("api.example.com", API, 7 * floor, &q).run(&mut e, T0), Verdict::Forward { .. }));
        let at = |secs: u32| Time::from_millis(T0.millis() + u64::from(secs) * 1000);
        assert!(matches!(tcp(POD_A, 40001, API, 443, tcpf::SYN).run(&mut e, at(floor - 1)), Verdict::Forward { .. }));
        let late = tcp(POD_A, 40002, API, 443, tcpf::SYN).run(&mut e, at(floor + 1));
        assert_eq!(late, Verdict::Drop(DropReason::PolicyDenied));
    }

    #[test]
    fn fqdn_rules_open_what_the_pods_own_dns_answers_resolved() {
        let mut e = engine_with(policy(DenyResponse::Drop, LiveFlows::Cut));
        assert_eq!(tcp(POD_A, 40000, API, 443, tcpf::SYN).run(&mut e, T0), Verdict::Drop(DropReason::PolicyDenied));
        let mut q = udp(POD_A, 5353, DNS, 53, b"query");
        assert!(matches!(q.run(&mut e, T0), Verdict::Forward { .. }));
        let mut a = dns_answer("api.example.com", API, 5, &q);
        assert!(matches!(a.run(&mut e, T0), Verdict::Forward { side: Side::Inside, .. }));
        assert!(matches!(tcp(POD_A, 40001, API, 443, tcpf::SYN).run(&mut e, T0), Verdict::Forward { .. }));
        assert_eq!(tcp(POD_A, 40002, API, 80, tcpf::SYN).run(&mut e, T0), Verdict::Drop(DropReason::PolicyDenied));
        // An answer for a name no rule allows teaches nothing.
        let mut other = dns_answer("evil.example.org", [198, 19, 0, 66], 300, &q);
        other.run(&mut e, T0);
        assert_eq!(
            tcp(POD_A, 40003, [198, 19, 0, 66], 443, tcpf::SYN).run(&mut e, T0),
            Verdict::Drop(DropReason::PolicyDenied)
        );
        // A TTL of 5 s is held for the 30 s floor, then expires.
        let t = Time::from_secs(10 + 29);
        assert!(matches!(tcp(POD_A, 40004, API, 443, tcpf::SYN).run(&mut e, t), Verdict::Forward { .. }));
        let t = Time::from_secs(10 + 31);
        assert_eq!(tcp(POD_A, 40005, API, 443, tcpf::SYN).run(&mut e, t), Verdict::Drop(DropReason::PolicyDenied));
    }

    /// An engine in `mode` whose pod-a has a live TCP flow to SERVER:443,
    /// then a plan without the rule that allowed it (`deny`, live flows
    /// cut). Returns the engine and the pod's SYN as it left.
    fn cut_flow(mode: MappingMode, deny: DenyResponse) -> (NatEngine, Pkt) {
        let with = |p: EgressPolicy| {
            let mut a = config("a", "198.19.100.0/28");
            a.mapping = mode;
            a.policy = Some(p);
            plan_with(a, config("b", "198.19.101.0/28"))
        };
        let mut e = NatEngine::new(settings(), with(policy(deny, LiveFlows::Cut)));
        let mut syn = tcp(POD_A, 40000, SERVER, 443, tcpf::SYN);
        assert!(matches!(syn.run(&mut e, T0), Verdict::Forward { .. }));
        let mut p = policy(deny, LiveFlows::Cut);
        p.rules.remove(0);
        e.apply_plan(with(p), T0);
        (e, syn)
    }

    #[test]
    fn a_flow_a_rejecting_policy_cut_is_reset_to_the_pod_when_its_server_sends() {
        for mode in [MappingMode::EndpointIndependent, MappingMode::PortReuse] {
            let (mut e, syn) = cut_flow(mode, DenyResponse::Reject);
            // The server answers a request the pod sent before the cut.
            let mut data = tcp(SERVER, 443, syn.src(), syn.sport(), tcpf::ACK);
            assert_eq!(data.run(&mut e, T0), Verdict::Forward { side: Side::Inside, len: 40 }, "{mode:?}");
            assert_eq!((data.src(), data.dst(), data.sport(), data.dport()), (SERVER, POD_A, 443, 40000));
            let t = data.l4();
            assert_eq!(t[13], tcpf::RST, "a reset, no data");
            assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 1000, "the sequence number the pod expects");
            assert_checksums(data.bytes());
            assert_eq!(e.counters().cut_flow_resets, 1);
            assert_eq!(e.counters().dropped(DropReason::PolicyDenied), 1);
        }
    }

    #[test]
    fn a_cut_flow_is_only_reset_under_reject_and_never_in_answer_to_a_reset() {
        let (mut e, syn) = cut_flow(MappingMode::EndpointIndependent, DenyResponse::Drop);
        let v = tcp(SERVER, 443, syn.src(), syn.sport(), tcpf::ACK).run(&mut e, T0);
        assert_eq!(v, Verdict::Drop(DropReason::Unsolicited), "drop: the server's segment is dropped");
        let (mut e, syn) = cut_flow(MappingMode::EndpointIndependent, DenyResponse::Reject);
        let v = tcp(SERVER, 443, syn.src(), syn.sport(), tcpf::RST).run(&mut e, T0);
        assert_eq!(v, Verdict::Drop(DropReason::Unsolicited), "a reset is not answered");
        assert_eq!(e.counters().cut_flow_resets, 0);
    }

    #[test]
    fn a_cut_flow_is_reset_for_a_minute_then_forgotten() {
        let (mut e, syn) = cut_flow(MappingMode::EndpointIndependent, DenyResponse::Reject);
        let later = Time::from_secs(10 + 59);
        let v = tcp(SERVER, 443, syn.src(), syn.sport(), tcpf::ACK).run(&mut e, later);
        assert!(matches!(v, Verdict::Forward { side: Side::Inside, .. }), "{v:?}");
        let gone = Time::from_secs(10 + 61);
        e.expire(gone, usize::MAX);
        let v = tcp(SERVER, 443, syn.src(), syn.sport(), tcpf::ACK).run(&mut e, gone);
        assert_eq!(v, Verdict::Drop(DropReason::Unsolicited));
    }

    #[test]
    fn rule_changes_cut_live_flows_they_deny_unless_told_to_keep() {
        for (live, survives) in [(LiveFlows::Cut, false), (LiveFlows::Keep, true)] {
            let mut e = engine_with(policy(DenyResponse::Drop, live));
            let mut syn = tcp(POD_A, 40000, SERVER, 443, tcpf::SYN);
            syn.run(&mut e, T0);
            let mut p = policy(DenyResponse::Drop, live);
            p.rules.remove(0);
            let mut a = config("a", "198.19.100.0/28");
            a.policy = Some(p);
            e.apply_plan(plan_with(a, config("b", "198.19.101.0/28")), T0);
            let v = tcp(SERVER, 443, syn.src(), syn.sport(), tcpf::SYN | tcpf::ACK).run(&mut e, T0);
            assert_eq!(matches!(v, Verdict::Forward { .. }), survives, "{live:?}: {v:?}");
            assert_eq!(
                tcp(POD_A, 40009, SERVER, 443, tcpf::SYN).run(&mut e, T0),
                Verdict::Drop(DropReason::PolicyDenied)
            );
        }
    }
}

#[test]
fn sessions_survive_a_snapshot_and_restore_into_a_new_engine() {
    for mode in [MappingMode::EndpointIndependent, MappingMode::PortReuse] {
        let mut a = config("a", "198.19.100.0/28");
        a.mapping = mode;
        let plan = plan_with(a, config("b", "198.19.101.0/28"));
        let mut e = NatEngine::new(settings(), plan.clone());
        let mut syn = tcp(POD_A, 40000, SERVER, 443, tcpf::SYN);
        syn.run(&mut e, T0);
        tcp(SERVER, 443, syn.src(), syn.sport(), tcpf::SYN | tcpf::ACK).run(&mut e, T0);
        let mut u = udp(POD_A, 5000, SERVER, 53, b"x");
        u.run(&mut e, T0);
        let saved = e.snapshot(Time::from_secs(100));
        assert_eq!(saved.len(), 2);
        // Without a state file the report carries only a sample.
        assert_eq!(e.snapshot_at_most(Time::from_secs(100), 1).len(), 1);
        // The new process's clock starts over.
        let mut fresh = NatEngine::new(settings(), plan);
        let st = fresh.restore(&saved, Time::from_secs(1));
        assert_eq!((st.restored, st.skipped), (2, 0), "{mode:?}");
        let mut back = tcp(SERVER, 443, syn.src(), syn.sport(), tcpf::ACK);
        assert_eq!(back.run(&mut fresh, Time::from_secs(2)), Verdict::Forward { side: Side::Inside, len: back.len });
        let mut again = udp(POD_A, 5000, SERVER, 53, b"x");
        again.run(&mut fresh, Time::from_secs(2));
        assert_eq!((again.src(), again.sport()), (u.src(), u.sport()), "same mapping after restart");
        // A second restore of the same records clashes and is skipped.
        assert_eq!(fresh.restore(&saved, Time::from_secs(3)).restored, 0);
        // UDP had 300 - 90 s left at the snapshot: gone after that.
        fresh.expire(Time::from_secs(2 + 300), usize::MAX);
        assert_eq!(fresh.session_count(), 1, "the established TCP session remains");
    }
}

#[test]
fn a_snapshot_taken_in_bounded_steps_holds_what_a_whole_one_does() {
    let mut e = engine();
    for port in 0..50 {
        udp(POD_A, 5000 + port, SERVER, 53, b"x").run(&mut e, T0);
    }
    let now = Time::from_secs(u64::from(T0.secs()) + 1);
    let whole = e.snapshot(now);
    let (mut stepped, mut from, mut steps) = (Vec::new(), Some(0), 0);
    while let Some(f) = from {
        from = e.snapshot_step(f, 7, usize::MAX, now, &mut stepped);
        steps += 1;
    }
    assert_eq!(stepped, whole);
    assert_eq!(steps, 50usize.div_ceil(7), "7 slots a step");
    // A sample's limit ends it early.
    let mut sample = Vec::new();
    assert_eq!(e.snapshot_step(0, 7, 5, now, &mut sample), None);
    assert_eq!(sample.len(), 5);
}

#[test]
fn the_nat_log_records_who_used_which_egress_port_when() {
    let mut e = NatEngine::new(EngineSettings { nat_log: true, ..settings() }, default_plan());
    let mut u = udp(POD_A, 5000, SERVER, 53, b"x");
    u.run(&mut e, T0);
    tcp(POD_B, 40000, SERVER, 443, tcpf::SYN).run(&mut e, T0);
    e.expire(Time::from_secs(10 + 301), usize::MAX);
    let ev: Vec<NatEvent> = e.take_nat_events().collect();
    assert_eq!(ev.len(), 4, "{ev:?}");
    assert_eq!(
        ev[0],
        NatEvent {
            open: true,
            at: 10,
            at_ms: T0.millis(),
            proto: 17,
            pod: POD_A.into(),
            pod_port: 5000,
            egress: u.src().into(),
            egress_port: u.sport(),
            remote: None
        }
    );
    assert_eq!(ev.iter().filter(|x| !x.open).count(), 2);
    assert!(ev.iter().all(|x| x.remote.is_none()), "no destinations by default (RFC 6888 REQ-12)");
    let mut e =
        NatEngine::new(EngineSettings { nat_log: true, nat_log_destinations: true, ..settings() }, default_plan());
    udp(POD_A, 5000, SERVER, 53, b"x").run(&mut e, T0);
    assert_eq!(e.take_nat_events().next().unwrap().remote, Some((SERVER.into(), 53)));
}

mod tunnelled {
    //! Pods that reach the gateway through a WireGuard tunnel.
    use super::*;
    use crate::plan::{TunnelConfig, WgKey, WgSecret};

    fn tunnel_engine(inside_mtu: usize) -> NatEngine {
        tunnel_engine_on(EngineSettings { mtu: [inside_mtu, 1500], ..settings() }, config("a", "198.19.100.0/28"))
    }

    fn tunnel_engine_on(s: EngineSettings, mut a: GatewayConfig) -> NatEngine {
        a.tunnel =
            Some(TunnelConfig { address: [198, 18, 50, 100].into(), port: 6000, private_key: WgSecret([7; 32]) });
        let plan = Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![a, config("b", "198.19.101.0/28")],
            bindings: vec![
                Binding { pod_ip: POD_A.into(), config: "a".into(), public_key: Some(WgKey([1; 32])) },
                Binding { pod_ip: POD_B.into(), config: "b".into(), public_key: None },
            ]
            .into(),
        };
        NatEngine::new(s, Arc::new(CompiledPlan::new(&plan).unwrap()))
    }

    #[test]
    fn a_tunnelled_pod_gets_its_whole_port_quota_and_session_limit_with_four_workers() {
        // Its flows all live on its peer's worker: a quarter of each (the
        // share of a routed pod, whose flows spread) would be all it got.
        let owner = crate::tunnel::owner_of(u32::from_be_bytes(POD_A), 4);
        let mut a = config("a", "198.19.100.0/28");
        (a.port_quota, a.session_limit) = (40, 60);
        let mut e = tunnel_engine_on(EngineSettings { worker: owner, workers: 4, ..settings() }, a);
        for port in 0..40 {
            let mut p = udp(POD_A, 5000 + port, SERVER, 53, b"q");
            let v = e.process_tunnelled(&mut p.buf, p.len, T0);
            assert!(matches!(v, Verdict::Forward { side: Side::Outside, .. }), "flow {port}: {v:?}");
        }
        let mut p = udp(POD_A, 6000, SERVER, 53, b"q");
        assert!(!matches!(e.process_tunnelled(&mut p.buf, p.len, T0), Verdict::Forward { .. }));
        assert_eq!(e.counters().dropped(DropReason::QuotaExceeded), 1);
        // Endpoint-independent: one port, many destinations: the session limit.
        for host in 1..=30u8 {
            let mut p = udp(POD_A, 5000, [198, 19, 3, host], 53, b"q");
            let _ = e.process_tunnelled(&mut p.buf, p.len, T0);
        }
        assert_eq!(e.session_count(), 60);
        assert_eq!(e.counters().dropped(DropReason::SessionLimit), 10);
    }

    #[test]
    fn a_plain_packet_from_a_tunnelled_pod_is_dropped_and_counted() {
        let mut e = tunnel_engine(1500);
        let mut p = udp(POD_A, 5000, SERVER, 53, b"q");
        assert_eq!(e.process(&mut p.buf, p.len, Time::default()), Verdict::Drop(DropReason::NotTunnelled));
        assert_eq!(e.counters().dropped(DropReason::NotTunnelled), 1);
    }

    #[test]
    fn the_same_packet_through_its_tunnel_is_translated() {
        let mut e = tunnel_engine(1500);
        let mut p = udp(POD_A, 5000, SERVER, 53, b"q");
        assert!(matches!(
            e.process_tunnelled(&mut p.buf, p.len, Time::default()),
            Verdict::Forward { side: Side::Outside, .. }
        ));
        assert!(e.is_tunnelled(u32::from_be_bytes(POD_A)));
        assert!(!e.is_tunnelled(u32::from_be_bytes(POD_B)));
    }

    #[test]
    fn the_verdict_says_what_goes_through_a_tunnel_and_what_is_routed() {
        let mut e = tunnel_engine(1500);
        for (pod, sealed) in [(POD_A, true), (POD_B, false)] {
            let mut p = udp(pod, 5000, SERVER, 7000, b"q");
            let v = if sealed { e.process_tunnelled(&mut p.buf, p.len, T0) } else { e.process(&mut p.buf, p.len, T0) };
            assert!(matches!(v, Verdict::Forward { side: Side::Outside, .. }), "{v:?}");
            let (eaddr, eport) = (p.src(), p.sport());
            let mut answer = udp(SERVER, 7000, eaddr, eport, b"a");
            let v = e.process(&mut answer.buf, answer.len, T0);
            if sealed {
                assert!(matches!(v, Verdict::Seal { .. }), "to the tunnelled pod: {v:?}");
            } else {
                assert!(matches!(v, Verdict::Forward { side: Side::Inside, .. }), "to the routed pod: {v:?}");
            }
            assert_eq!(answer.dst(), pod, "translated back either way");
        }
    }

    #[test]
    fn a_routed_pod_cannot_come_through_a_tunnel() {
        let mut e = tunnel_engine(1500);
        let mut p = udp(POD_B, 5000, SERVER, 53, b"q");
        assert_eq!(e.process_tunnelled(&mut p.buf, p.len, Time::default()), Verdict::Drop(DropReason::NotTunnelled));
    }

    #[test]
    fn a_returning_df_packet_larger_than_the_tunnel_mtu_gets_fragmentation_needed_1420() {
        let mut e = tunnel_engine(1500);
        let now = Time::default();
        let mut p = udp(POD_A, 5000, SERVER, 7000, b"q");
        let Verdict::Forward { len, .. } = e.process_tunnelled(&mut p.buf, p.len, now) else { panic!() };
        let out = UdpHeaderSlice::from_slice(&p.buf[20..len]).unwrap();
        let (eport, eaddr) = (out.source_port(), Ipv4HeaderSlice::from_slice(&p.buf).unwrap().source());
        let mut v = Vec::new();
        let mut ip = etherparse::Ipv4Header::new(1458, 64, etherparse::IpNumber::UDP, SERVER, eaddr).unwrap();
        ip.dont_fragment = true;
        PacketBuilder::ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .udp(7000, eport)
            .write(&mut v, &[0u8; 1450])
            .unwrap();
        let mut big = Pkt::new(v);
        big.buf.resize(4096, 0);
        let Verdict::Reply { len } = e.process(&mut big.buf, big.len, now) else { panic!("no frag needed") };
        let icmp_msg = &big.buf[20..len];
        assert_eq!((icmp_msg[0], icmp_msg[1]), (icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED));
        assert_eq!(u16::from_be_bytes([icmp_msg[6], icmp_msg[7]]), 1420);
    }
}

mod network_policy {
    //! Kubernetes NetworkPolicy's egress rules, enforced on new flows.
    use super::*;
    use crate::plan::{
        EgressPolicy, IpBlock, NetworkPolicy, NetworkPolicyRule, NetworkPort, NetworkProtocol, PolicyAction, PolicyRule,
    };

    const ECHO: [u8; 4] = [198, 19, 0, 254];

    /// pod-a selected by "team/default-deny" (no rules) and by
    /// "team/allow-echo" (TCP 8080 to the echo server's /32); pod-b by none.
    fn policies() -> Vec<NetworkPolicy> {
        vec![
            NetworkPolicy { name: "team/default-deny".into(), pods: vec![POD_A.into()], egress: vec![] },
            NetworkPolicy {
                name: "team/allow-echo".into(),
                pods: vec![POD_A.into()],
                egress: vec![NetworkPolicyRule {
                    to: Some(vec![IpBlock { cidr: "198.19.0.254/32".parse().unwrap(), except: vec![] }]),
                    ports: Some(vec![NetworkPort { protocol: NetworkProtocol::Tcp, lo: 8080, hi: 8080 }]),
                }],
            },
        ]
    }

    fn plan(a: GatewayConfig, network_policies: Vec<NetworkPolicy>) -> Arc<CompiledPlan> {
        let plan = Plan {
            version: 1,
            configs: vec![a, config("b", "198.19.101.0/28")],
            bindings: vec![
                Binding { pod_ip: POD_A.into(), config: "a".into(), public_key: None },
                Binding { pod_ip: POD_B.into(), config: "b".into(), public_key: None },
            ]
            .into(),
            network_policies,
        };
        Arc::new(CompiledPlan::new(&plan).unwrap())
    }

    fn forwarded(v: Verdict) -> bool {
        matches!(v, Verdict::Forward { side: Side::Outside, .. })
    }

    #[test]
    fn a_selected_pod_sends_only_what_one_of_its_policies_allows() {
        let mut e = NatEngine::new(settings(), plan(config("a", "198.19.100.0/28"), policies()));
        assert!(forwarded(tcp(POD_A, 40000, ECHO, 8080, tcpf::SYN).run(&mut e, T0)), "the allowed port");
        let denied = Verdict::Drop(DropReason::NetworkPolicyDenied);
        assert_eq!(tcp(POD_A, 40001, ECHO, 80, tcpf::SYN).run(&mut e, T0), denied, "another port");
        assert_eq!(tcp(POD_A, 40002, SERVER, 8080, tcpf::SYN).run(&mut e, T0), denied, "another address");
        assert_eq!(echo(POD_A, ECHO, 7, false).run(&mut e, T0), denied, "ping: ports name TCP only");
        assert_eq!(udp(POD_A, 5000, ECHO, 8080, b"q").run(&mut e, T0), denied, "UDP to the TCP port");
        assert_eq!(e.counters().dropped(DropReason::NetworkPolicyDenied), 4);
        // Each selecting policy counts the flows none allowed.
        let d = e.network_policy_denials();
        assert_eq!(
            d.iter().map(|d| (d.policy.as_str(), d.denied)).collect::<Vec<_>>(),
            [("team/default-deny", 4), ("team/allow-echo", 4)]
        );
    }

    #[test]
    fn a_pod_no_policy_selects_is_not_restricted() {
        let mut e = NatEngine::new(settings(), plan(config("a", "198.19.100.0/28"), policies()));
        assert!(forwarded(tcp(POD_B, 40000, SERVER, 80, tcpf::SYN).run(&mut e, T0)));
        assert!(forwarded(echo(POD_B, SERVER, 7, false).run(&mut e, T0)));
    }

    #[test]
    fn an_egress_policy_deny_wins_over_a_network_policy_allow() {
        let mut a = config("a", "198.19.100.0/28");
        a.policy = Some(EgressPolicy {
            default_action: PolicyAction::Allow,
            rules: vec![PolicyRule {
                name: "no-echo".into(),
                action: PolicyAction::Deny,
                cidrs: vec!["198.19.0.254/32".parse().unwrap()],
                fqdns: vec![],
                protocol: None,
                ports: vec![],
                pods: None,
                server_name: Default::default(),
                tls_ports: vec![],
                http_ports: vec![],
            }],
            deny_response: crate::plan::DenyResponse::Drop,
            live_flows: crate::plan::LiveFlows::Cut,
            dns_ttl_floor: 30,
            dns_resolvers: vec![],
        });
        let mut e = NatEngine::new(settings(), plan(a, policies()));
        assert_eq!(tcp(POD_A, 40000, ECHO, 8080, tcpf::SYN).run(&mut e, T0), Verdict::Drop(DropReason::PolicyDenied));
    }

    #[test]
    fn a_policy_change_cuts_the_live_flows_it_denies_and_keeps_the_others() {
        let mut e = NatEngine::new(settings(), plan(config("a", "198.19.100.0/28"), vec![]));
        let mut to_echo = tcp(POD_A, 40000, ECHO, 8080, tcpf::SYN);
        assert!(forwarded(to_echo.run(&mut e, T0)));
        let mut elsewhere = udp(POD_A, 5000, SERVER, 53, b"q");
        assert!(forwarded(elsewhere.run(&mut e, T0)));
        let mut b = udp(POD_B, 5000, SERVER, 53, b"q");
        assert!(forwarded(b.run(&mut e, T0)));
        // The SYN-ACK makes the TCP flow live.
        let mut synack = tcp(ECHO, 8080, to_echo.src(), to_echo.sport(), tcpf::SYN | tcpf::ACK);
        assert!(matches!(synack.run(&mut e, T0), Verdict::Forward { side: Side::Inside, .. }));
        assert_eq!(e.session_count(), 3);
        e.apply_plan(plan(config("a", "198.19.100.0/28"), policies()), T0);
        e.finish_replan();
        assert_eq!(e.session_count(), 2, "pod-a's UDP flow to the server is cut; its echo flow and pod-b's stay");
        let mut reply = udp(SERVER, 53, elsewhere.src(), elsewhere.sport(), b"a");
        assert_eq!(reply.run(&mut e, T0), Verdict::Drop(DropReason::Unsolicited));
        // Removing the policies restores egress.
        e.apply_plan(plan(config("a", "198.19.100.0/28"), vec![]), T0);
        assert!(forwarded(udp(POD_A, 5001, SERVER, 53, b"q").run(&mut e, T0)));
    }

    #[test]
    fn denial_counts_follow_a_policy_by_name_across_plans() {
        let mut e = NatEngine::new(settings(), plan(config("a", "198.19.100.0/28"), policies()));
        let _ = tcp(POD_A, 40001, ECHO, 80, tcpf::SYN).run(&mut e, T0);
        let mut reordered = policies();
        reordered.reverse();
        e.apply_plan(plan(config("a", "198.19.100.0/28"), reordered), T0);
        let d = e.network_policy_denials();
        assert_eq!(
            d.iter().map(|d| (d.policy.as_str(), d.denied)).collect::<Vec<_>>(),
            [("team/allow-echo", 1), ("team/default-deny", 1)]
        );
    }
}
