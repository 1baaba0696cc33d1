//! Arbitrary bytes through the NAT core, both directions, with live
//! sessions of every protocol and both mapping modes, arrival sides known or
//! not, and small MTUs (so fragmentation and fragmentation-needed run):
//! a fallback source CIDR's sources too: never a panic, a forwarded packet fits its buffer, a released one its
//! MTU, and each carries a valid IP header.
#![no_main]

use egret_dataplane::nat::{CompiledPlan, EngineSettings, NatEngine, ReleaseTo, Side, Time, Verdict};
use egret_dataplane::plan::{Binding, FilteringMode, GatewayConfig, MappingMode, Plan};
use egret_dataplane::wire::{checksum, Ipv4Packet};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const POD_A: [u8; 4] = [198, 18, 0, 2];
const POD_B: [u8; 4] = [198, 18, 0, 3];
const SERVER: [u8; 4] = [198, 19, 0, 100];

fn engine(workers: u16, mtu: [usize; 2]) -> NatEngine {
    let mut a = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
    a.exclude = vec!["198.18.200.0/24".parse().unwrap()];
    a.filtering = FilteringMode::EndpointIndependent;
    let mut b = GatewayConfig::new("b", vec!["198.19.101.0/31".parse().unwrap()]);
    b.mapping = MappingMode::PortReuse;
    b.port_quota = 8;
    // A fallback source CIDR: sources adopted on a first packet, forgotten
    // when idle.
    b.sources = vec!["198.18.7.0/24".parse().unwrap()];
    let plan = Plan {
        version: 1,
        configs: vec![a, b],
        bindings: vec![
            Binding { pod_ip: POD_A.into(), config: "a".into(), public_key: None },
            Binding { pod_ip: POD_B.into(), config: "b".into(), public_key: None },
        ],
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
        let _ = e.process(&mut b, len, Time::from_secs(1));
    }
    e
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
    // 68: the smallest MTU IPv4 allows; 96: a few pieces per packet.
    let mtu = [if ctl & 0x40 != 0 { 68 } else { 65535 }, if ctl & 0x20 != 0 { 96 } else { 65535 }];
    let mut e = engine(if ctl & 0x80 != 0 { 2 } else { 1 }, mtu);
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
