//! The server name check under arbitrary input. First the readers alone:
//! the same bytes whole or cut where the input says give the same answer.
//! Then a pod's flow through the NAT core under a rule that reads names:
//! a handshake, then segments the input orders, shifts, resends, mutates
//! and times. Never a panic; a forwarded packet carries a valid IP header;
//! and a flow is only ever allowed for a name the rule lists.
#![no_main]

use egret_core::nat::{CompiledPlan, EngineSettings, NatEngine, Time, Verdict};
use egret_core::plan::{
    Binding, DenyResponse, EgressPolicy, GatewayConfig, LiveFlows, Plan, PolicyAction, PolicyRule, Protocol,
};
use egret_core::wire::server_name::{ClientHelloReader, HttpHostReader, Progress};
use egret_core::wire::{checksum, Ipv4Packet};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

#[path = "shared/ops.rs"]
mod shared;

const POD: [u8; 4] = [198, 18, 0, 2];
const SHARED_ADDR: [u8; 4] = [198, 19, 0, 10];
const DNS: [u8; 4] = [198, 19, 0, 53];

/// The answer of a reader as an owned value.
fn answer(p: Progress<'_>) -> Option<Result<String, String>> {
    match p {
        Progress::More => None,
        Progress::Name(n) => Some(Ok(n.to_string())),
        Progress::NoName(no) => Some(Err(format!("{no:?}"))),
    }
}

/// Feeds `bytes` whole and cut at `cuts`; both must answer alike.
fn same_whole_and_cut(bytes: &[u8], cuts: &[u8]) {
    let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * bytes.len() / 256).collect();
    points.sort_unstable();
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    for &p in &points {
        pieces.push(&bytes[at..p.max(at)]);
        at = p.max(at);
    }
    pieces.push(&bytes[at..]);
    let mut whole = ClientHelloReader::default();
    let w = answer(whole.feed(bytes));
    let mut cut = ClientHelloReader::default();
    let mut c = None;
    for piece in &pieces {
        c = answer(cut.feed(piece));
        if c.is_some() {
            break;
        }
    }
    assert_eq!(w, c, "TLS reader, cut at {points:?}");
    let mut whole = HttpHostReader::default();
    let w = answer(whole.feed(bytes));
    let mut cut = HttpHostReader::default();
    let mut c = None;
    for piece in &pieces {
        c = answer(cut.feed(piece));
        if c.is_some() {
            break;
        }
    }
    assert_eq!(w, c, "HTTP reader, cut at {points:?}");
}

fn packet(src: [u8; 4], dst: [u8; 4], l4: &[u8], proto: u8) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    b[8] = 64;
    b[9] = proto;
    b[12..16].copy_from_slice(&src);
    b[16..20].copy_from_slice(&dst);
    let c = checksum::checksum(&b[..20]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b.extend_from_slice(l4);
    b
}

fn tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14] = 0xff;
    t.extend_from_slice(data);
    packet(src.0, dst.0, &t, 6)
}

/// A ClientHello naming `name`, in one record.
fn hello(name: &[u8]) -> Vec<u8> {
    let mut sni = vec![0, 0];
    let list_len = (name.len() + 3) as u16;
    sni.extend_from_slice(&(list_len + 2).to_be_bytes());
    sni.extend_from_slice(&list_len.to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    body.extend_from_slice(&sni);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn engine() -> NatEngine {
    let rule = PolicyRule {
        name: "api".into(),
        action: PolicyAction::Allow,
        cidrs: vec![],
        fqdns: vec!["api.example.com".into()],
        protocol: Some(Protocol::Tcp),
        ports: vec!["443".parse().unwrap(), "80".parse().unwrap()],
        pods: None,
        server_name: Default::default(),
        tls_ports: vec![],
        http_ports: vec![],
    };
    let dns = PolicyRule {
        name: "dns".into(),
        cidrs: vec!["198.19.0.53/32".parse().unwrap()],
        fqdns: vec![],
        protocol: Some(Protocol::Udp),
        ports: vec!["53".parse().unwrap()],
        ..rule.clone()
    };
    let mut a = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
    a.policy = Some(EgressPolicy {
        default_action: PolicyAction::Deny,
        rules: vec![dns, rule],
        deny_response: DenyResponse::Reject,
        live_flows: LiveFlows::Cut,
        dns_ttl_floor: 30,
        dns_resolvers: vec!["198.19.0.53/32".parse().unwrap()],
    });
    let plan = Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![a],
        bindings: vec![Binding { pod_ip: POD.into(), config: "a".into(), public_key: None }].into(),
    };
    let settings = EngineSettings {
        session_capacity: 64,
        router_ip: [198, 18, 0, 1].into(),
        ports: 1024..=1100,
        seed: 7,
        nat_log: true,
        ..Default::default()
    };
    let mut e = NatEngine::new(settings, Arc::new(CompiledPlan::new(&plan).unwrap()));
    // The pod resolves api.example.com to the shared address.
    let mut q = packet(POD, DNS, &[0x13, 0x88, 0, 53, 0, 8, 0, 0], 17);
    q.resize(128, 0);
    assert!(matches!(e.process(&mut q, 28, Time::from_secs(1)), Verdict::Forward { .. }));
    let (egress, port) = ([q[12], q[13], q[14], q[15]], u16::from_be_bytes([q[20], q[21]]));
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    m.extend(b"\x03api\x07example\x03com\x00");
    m.extend([0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0, 0, 4]);
    m.extend(SHARED_ADDR);
    let mut udp = vec![0, 53];
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&((8 + m.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend(m);
    let mut a = packet(DNS, egress, &udp, 17);
    let len = a.len();
    a.resize(len + 64, 0);
    assert!(matches!(e.process(&mut a, len, Time::from_secs(1)), Verdict::Forward { .. }));
    e
}

fn check_forwarded(buf: &[u8], v: Verdict) {
    if let Verdict::Forward { len, .. } | Verdict::Reply { len } = v {
        assert!(len <= buf.len());
        let ip = Ipv4Packet::new_checked(&buf[..len]).expect("a forwarded packet has a valid IPv4 header");
        assert_eq!(ip.total_len(), len);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let (cuts, rest) = rest.split_at(rest.len().min(usize::from(ctl & 7)));
    same_whole_and_cut(rest, cuts);

    let mut e = engine();
    let dport = if ctl & 8 != 0 { 80 } else { 443 };
    let pod = (POD, 40000u16);
    let mut now = 2_000u64;
    let mut syn = tcp(pod, (SHARED_ADDR, dport), 0x02, 1000, 0, &[]);
    let n = syn.len();
    syn.resize(n + 64, 0);
    let v = e.process(&mut syn, n, Time::from_millis(now));
    assert!(matches!(v, Verdict::Forward { .. }));
    let egress = ([syn[12], syn[13], syn[14], syn[15]], u16::from_be_bytes([syn[20], syn[21]]));
    let mut synack = tcp((SHARED_ADDR, dport), egress, 0x12, 9000, 1001, &[]);
    let n = synack.len();
    let _ = e.process(&mut synack, n, Time::from_millis(now));

    let good = if dport == 443 {
        hello(b"api.example.com")
    } else {
        b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec()
    };
    let mut next = 1001u32;
    let mut offered = 0usize;
    for (op, arg, bytes) in shared::ops(rest) {
        let (flags, seq, payload): (u8, u32, Vec<u8>) = match op % 6 {
            // The next piece of the good message, as the pod would send it.
            0 => {
                let n = usize::from(arg).max(1).min(good.len().saturating_sub(offered));
                let p = good[offered..offered + n].to_vec();
                (0x18, next, p)
            }
            // The next piece, mutated.
            1 => {
                let n = usize::from(arg).max(1).min(good.len().saturating_sub(offered));
                (0x18, next, shared::mutate(&good[offered..offered + n], bytes))
            }
            // Raw bytes at a shifted sequence number.
            2 => (0x18, next.wrapping_add(u32::from(arg)).wrapping_sub(128), bytes.to_vec()),
            // A resend of what was sent.
            3 => (0x18, 1001, good[..offered.min(good.len())].to_vec()),
            // A bare ACK, a FIN or a RST.
            4 => ([0x10, 0x11, 0x04][usize::from(arg % 3)], next, Vec::new()),
            // Time passes; overdue flows are reset.
            _ => {
                now += u64::from(arg) * 100;
                e.expire(Time::from_millis(now), 64);
                while e.take_released().is_some() {}
                continue;
            }
        };
        let mut p = tcp(pod, (SHARED_ADDR, dport), flags, seq, 9001, &payload);
        let n = p.len();
        p.resize(n + 64, 0);
        let v = e.process(&mut p, n, Time::from_millis(now));
        check_forwarded(&p, v);
        if matches!(v, Verdict::Forward { .. }) && seq == next && !payload.is_empty() {
            next = next.wrapping_add(payload.len() as u32);
            if op % 6 <= 1 {
                offered += payload.len();
            }
        }
        while let Some(r) = e.take_released() {
            Ipv4Packet::new_checked(&r.bytes[..]).expect("a released packet has a valid IPv4 header");
        }
    }
    for ev in e.take_name_events() {
        assert_eq!(ev.name, "api.example.com", "a flow is allowed only for a name the rule lists");
    }
    assert!(e.name_checks_pending() <= 1);
});
