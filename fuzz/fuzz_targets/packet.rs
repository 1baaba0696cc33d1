//! Arbitrary bytes through the NAT core, both directions, with live
//! sessions of every protocol and both mapping modes, arrival sides known or
//! not, and small MTUs (so fragmentation and fragmentation-needed run):
//! a fallback source CIDR's sources too: never a panic, a forwarded packet fits its buffer, a released one its
//! MTU, and each carries a valid IP header. Config a's egress policy comes
//! from the input too (any policy plan validation accepts: rules, FQDN
//! rules, DNS TTL floor, deny response), with a DNS answer of a TTL the
//! input picks learned through it before the packets run.
#![no_main]

use egret_core::nat::{CompiledPlan, EngineSettings, NatEngine, ReleaseTo, Side, Time, Verdict};
use egret_core::plan::{
    Binding, DenyResponse, EgressPolicy, FilteringMode, GatewayConfig, LiveFlows, MappingMode, Plan, PolicyAction,
    PolicyRule, PortRange, Protocol,
};
use egret_core::wire::{checksum, Ipv4Packet};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const POD_A: [u8; 4] = [198, 18, 0, 2];
const POD_B: [u8; 4] = [198, 18, 0, 3];
const SERVER: [u8; 4] = [198, 19, 0, 100];

/// A policy read from 16 bytes of input: default action, deny response,
/// live flows, DNS TTL floor, and up to three rules (CIDR, FQDN or any
/// destination; protocol; one port range).
fn policy(p: &[u8; 16]) -> EgressPolicy {
    let pick = |b: u8, n: u8| b % n;
    let rules = (0..usize::from(pick(p[5], 4)))
        .map(|i| {
            let b = &p[6 + 3 * i..9 + 3 * i];
            let lo = u16::from(b[2]).max(1) * 200;
            PolicyRule {
                name: format!("r{i}"),
                action: if b[0] & 1 == 0 { PolicyAction::Allow } else { PolicyAction::Deny },
                cidrs: if b[0] & 2 != 0 { vec![format!("198.19.{}.0/24", b[1] & 3).parse().unwrap()] } else { vec![] },
                fqdns: if b[0] & 4 != 0 { vec!["api.example.com".into(), "*.example.org".into()] } else { vec![] },
                protocol: [None, Some(Protocol::Tcp), Some(Protocol::Udp), Some(Protocol::Icmp)]
                    [usize::from(b[0] >> 3 & 3)],
                ports: if b[0] & 0x20 != 0 && b[0] >> 3 & 3 != 3 {
                    vec![PortRange { lo, hi: lo.saturating_add(100) }]
                } else {
                    vec![]
                },
                pods: (b[0] & 0x40 != 0).then(|| vec![POD_A.into()]),
                server_name: Default::default(),
                tls_ports: vec![],
                http_ports: vec![],
            }
        })
        .collect();
    EgressPolicy {
        default_action: if p[0] & 1 == 0 { PolicyAction::Allow } else { PolicyAction::Deny },
        rules,
        deny_response: if p[0] & 2 == 0 { DenyResponse::Drop } else { DenyResponse::Reject },
        live_flows: if p[0] & 4 == 0 { LiveFlows::Cut } else { LiveFlows::Keep },
        dns_ttl_floor: u32::from_le_bytes([p[1], p[2], p[3], p[4]]),
        dns_resolvers: vec!["198.19.0.100/32".parse().unwrap()],
    }
}

/// A DNS response from SERVER:53 to `to` (egress address and port) saying
/// api.example.com is 198.19.0.10 for `ttl` seconds.
fn dns_answer(to: [u8; 4], port: u16, ttl: u32) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    m.extend(b"\x03api\x07example\x03com\x00");
    m.extend([0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1]);
    m.extend(ttl.to_be_bytes());
    m.extend([0, 4, 198, 19, 0, 10]);
    let mut b = vec![0u8; 28];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&((28 + m.len()) as u16).to_be_bytes());
    b[8] = 64;
    b[9] = 17;
    b[12..16].copy_from_slice(&SERVER);
    b[16..20].copy_from_slice(&to);
    b[20..22].copy_from_slice(&53u16.to_be_bytes());
    b[22..24].copy_from_slice(&port.to_be_bytes());
    b[24..26].copy_from_slice(&((8 + m.len()) as u16).to_be_bytes());
    let c = checksum::checksum(&b[..20]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b.extend(m);
    b
}

fn engine(workers: u16, mtu: [usize; 2], p: &[u8; 16], ttl: u32) -> Option<NatEngine> {
    let mut a = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
    a.exclude = vec!["198.18.200.0/24".parse().unwrap()];
    a.filtering = FilteringMode::EndpointIndependent;
    a.policy = Some(policy(p));
    let mut b = GatewayConfig::new("b", vec!["198.19.101.0/31".parse().unwrap()]);
    b.mapping = MappingMode::PortReuse;
    b.port_quota = 8;
    // A fallback source CIDR: sources adopted on a first packet, forgotten
    // when idle.
    b.sources = vec!["198.18.7.0/24".parse().unwrap()];
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
    let settings = EngineSettings {
        session_capacity: 64,
        router_ip: [198, 18, 0, 1].into(),
        ports: 1024..=1100,
        workers,
        frag_datagrams: 8,
        frag_held: 4,
        seed: 7,
        mtu,
        ..Default::default()
    };
    // Any plan validation accepts must be servable.
    plan.validate().ok()?;
    let mut e = NatEngine::new(settings, Arc::new(CompiledPlan::new(&plan).unwrap()));
    // Live sessions the input can hit: UDP, TCP, echo from both pods.
    for (pod, proto) in [(POD_A, 17u8), (POD_A, 6), (POD_A, 1), (POD_B, 17), (POD_B, 6), (POD_B, 1)] {
        let mut b = [0u8; 128];
        let l4 = if proto == 1 { [8u8, 0, 0, 0, 0x12, 0x34, 0, 1] } else { [0x13, 0x88, 0, 53, 0, 8, 0, 0] };
        b[0] = 0x45;
        b[3] = if proto == 6 { 40 } else { 28 };
        b[8] = 64;
        b[9] = proto;
        b[12..16].copy_from_slice(&pod);
        b[16..20].copy_from_slice(&SERVER);
        b[20..28].copy_from_slice(&l4);
        if proto == 6 {
            b[32] = 0x50;
            b[33] = 0x02;
        }
        let c = checksum::checksum(&b[..20]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        let len = usize::from(b[3]);
        let v = e.process(&mut b, len, Time::from_secs(1));
        // The DNS session's answer, through the policy's learning.
        if let (Verdict::Forward { .. }, true) = (v, pod == POD_A && proto == 17) {
            let mut answer = dns_answer([b[12], b[13], b[14], b[15]], u16::from_be_bytes([b[20], b[21]]), ttl);
            let len = answer.len();
            answer.resize(len + 64, 0);
            let _ = e.process(&mut answer, len, Time::from_secs(1));
        }
    }
    Some(e)
}

/// Makes the header plausible so the fuzzer spends its time past parsing.
fn fix_up(p: &mut [u8], src_sel: u8) {
    if p.len() < 20 {
        return;
    }
    p[0] = 0x45;
    let tl = p.len() as u16;
    p[2..4].copy_from_slice(&tl.to_be_bytes());
    match src_sel % 5 {
        0 => p[12..16].copy_from_slice(&POD_A),
        1 => p[12..16].copy_from_slice(&POD_B),
        2 => p[16..20].copy_from_slice(&[198, 19, 100, src_sel >> 6]),
        3 => p[16..20].copy_from_slice(&[198, 19, 101, src_sel >> 7]),
        _ => p[12..16].copy_from_slice(&[198, 18, 7, src_sel >> 5]),
    }
    p[10] = 0;
    p[11] = 0;
    let c = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let mut p = [0u8; 16];
    let mut ttl = [0u8; 4];
    let rest = match (rest.get(..16), rest.get(16..20)) {
        (Some(a), Some(b)) if ctl & 1 != 0 => {
            p.copy_from_slice(a);
            ttl.copy_from_slice(b);
            &rest[20..]
        }
        // No policy bytes: a policy that allows everything.
        _ => rest,
    };
    // 68: the smallest MTU IPv4 allows; 96: a few pieces per packet.
    let mtu = [if ctl & 0x40 != 0 { 68 } else { 65535 }, if ctl & 0x20 != 0 { 96 } else { 65535 }];
    let Some(mut e) = engine(if ctl & 0x80 != 0 { 2 } else { 1 }, mtu, &p, u32::from_be_bytes(ttl)) else { return };
    let mut now = 1_000u64;
    // Several packets: [len][flags][bytes...] each.
    let mut rest = rest;
    while rest.len() >= 2 {
        let (n, flags) = (usize::from(rest[0]), rest[1]);
        let take = n.min(rest.len() - 2);
        let mut buf = vec![0u8; take + 64];
        buf[..take].copy_from_slice(&rest[2..2 + take]);
        rest = &rest[2 + take..];
        if flags & 1 != 0 {
            fix_up(&mut buf[..take], flags >> 1);
        }
        now += u64::from(flags & 0x0f) * 977;
        let from = match (ctl & 0x10 != 0, flags & 0x10 != 0) {
            (false, _) => None,
            (true, false) => Some(Side::Inside),
            (true, true) => Some(Side::Outside),
        };
        let v = e.process_from(&mut buf, take, from, Time::from_millis(now));
        if let Verdict::Forward { len, .. } | Verdict::Reply { len } = v {
            assert!(len <= buf.len());
            let ip = Ipv4Packet::new_checked(&buf[..len]).expect("forwarded packets parse");
            assert!(ip.verify_checksum(), "forwarded packets carry a valid header checksum");
        }
        while let Some(r) = e.take_released() {
            let ip = Ipv4Packet::new_checked(&r.bytes[..]).expect("released packets parse");
            assert!(ip.verify_checksum(), "released packets carry a valid header checksum");
            if let ReleaseTo::Side(side) = r.to {
                assert!(r.bytes.len() <= mtu[side as usize], "a released packet fits its MTU");
            }
        }
        e.expire(Time::from_millis(now), 16);
    }
});
