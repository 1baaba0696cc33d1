//! Fragments of live-session flows (UDP, TCP, ICMP echo), both directions,
//! through one or two NAT engines (handoff between them as the worker does),
//! with a clock that moves so fragment and session timeouts fire. First
//! fragments, later ones at any offset (overlapping, duplicated, out of
//! order, tiny), whole datagrams, TTL 0/1/2/64. Never a panic, never a
//! handoff loop, and everything that goes out is a valid IPv4 packet whose
//! addresses are the translation its flow's first fragment got.
#![no_main]

use egret_core::nat::{CompiledPlan, EngineSettings, NatEngine, ReleaseTo, Time, Verdict};
use egret_core::plan::{Binding, GatewayConfig, Plan, Timeouts};
use egret_core::wire::{checksum, Ipv4Packet};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::Arc;

const POD: [u8; 4] = [198, 18, 0, 2];
const SERVER: [u8; 4] = [198, 19, 0, 100];
const POOL: [u8; 3] = [198, 19, 100]; // 198.19.100.0/30
const POD_PORT: u16 = 40000;
const SERVER_PORT: u16 = 7007;
const PROTOS: [u8; 3] = [17, 6, 1];

fn engines(workers: u16) -> Vec<NatEngine> {
    let mut a = GatewayConfig::new("a", vec!["198.19.100.0/30".parse().unwrap()]);
    a.timeouts = Timeouts { tcp_established: 6, tcp_transitory: 2, udp: 3, icmp: 2, port_cooldown: 1 };
    let plan = Plan {
        network_policies: Vec::new(),
        version: 1,
        configs: vec![a],
        bindings: vec![Binding { pod_ip: POD.into(), config: "a".into(), public_key: None }].into(),
    };
    let plan = Arc::new(CompiledPlan::new(&plan).unwrap());
    (0..workers)
        .map(|worker| {
            let settings = EngineSettings {
                worker,
                workers,
                session_capacity: 32,
                router_ip: [198, 18, 0, 1].into(),
                ports: 1024..=1100,
                frag_datagrams: 6,
                frag_held: 4,
                seed: 11,
                ..Default::default()
            };
            NatEngine::new(settings, plan.clone())
        })
        .collect()
}

/// What the harness knows of one flow: the egress endpoint its last
/// translated inside → outside packet showed.
#[derive(Default, Clone, Copy)]
struct Flow {
    egress: Option<([u8; 4], u16)>,
}

/// One packet the input describes.
struct Op {
    outbound: bool,
    proto: u8,
    /// 0: first fragment, 1: later fragment, 2: whole datagram, 3: tiny first fragment.
    kind: u8,
    more: bool,
    ttl: u8,
    ident: u16,
    advance_ms: u64,
    offset: u16,
    payload: usize,
    bad_checksum: bool,
    dont_frag: bool,
    tcp_flags: u8,
    worker: usize,
}

fn op(h: &[u8; 6]) -> Op {
    let step = u64::from(h[1] >> 2);
    Op {
        outbound: h[0] & 1 == 0,
        proto: PROTOS[usize::from((h[0] >> 1) & 3) % 3],
        kind: (h[0] >> 3) & 3,
        more: h[0] & 0x20 != 0,
        ttl: [64, 1, 0, 2][usize::from(h[0] >> 6)],
        ident: 0x1000 + u16::from(h[1] & 3),
        advance_ms: if step == 63 { 10_000 } else { step * 50 },
        offset: u16::from(h[2]),
        payload: usize::from(h[3]),
        bad_checksum: h[4] & 1 != 0,
        dont_frag: h[4] & 2 != 0,
        tcp_flags: h[4] >> 2,
        worker: usize::from(h[5]),
    }
}

/// Builds the packet `o` describes; returns the buffer (with room to spare)
/// and the IP total length.
fn build(o: &Op, flows: &[Flow; 3], fill: &[u8]) -> (Vec<u8>, usize) {
    let pi = PROTOS.iter().position(|&p| p == o.proto).unwrap();
    let (src, dst, sport, dport) = if o.outbound {
        (POD, SERVER, POD_PORT, SERVER_PORT)
    } else {
        let (ip, port) = flows[pi].egress.unwrap_or(([POOL[0], POOL[1], POOL[2], 1], 1024));
        (SERVER, ip, SERVER_PORT, port)
    };
    let mut l4 = Vec::new();
    if matches!(o.kind, 0 | 2 | 3) {
        match o.proto {
            17 => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&((8 + o.payload) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            6 => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                // SYN unless the input flips flags (FIN SYN RST PSH ACK URG).
                let flags = 0x02 ^ o.tcp_flags;
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags]);
                l4.extend_from_slice(&[0xff, 0xff, 0x12, 0x34, 0, 0]);
            }
            _ => {
                // Echo request out (identifier: the pod's), reply in (the egress one).
                let (ty, id) = if o.outbound { (8, POD_PORT) } else { (0, dport) };
                l4.extend_from_slice(&[ty, 0, 0, 0]);
                l4.extend_from_slice(&id.to_be_bytes());
                l4.extend_from_slice(&[0, 1]);
            }
        }
        if o.kind == 3 {
            l4.truncate(o.payload % l4.len());
        }
    }
    let data_len = if o.kind == 3 { 0 } else { o.payload };
    let total = 20 + l4.len() + data_len;
    let mut b = vec![0u8; total + 64];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    b[4..6].copy_from_slice(&o.ident.to_be_bytes());
    let (offset, more) = match o.kind {
        0 | 3 => (0, true),
        1 => (o.offset.max(1), o.more),
        _ => (0, false),
    };
    let flags = (u16::from(more) << 13) | (u16::from(o.dont_frag && o.kind == 2) << 14) | offset;
    b[6..8].copy_from_slice(&flags.to_be_bytes());
    b[8] = o.ttl;
    b[9] = o.proto;
    b[12..16].copy_from_slice(&src);
    b[16..20].copy_from_slice(&dst);
    b[20..20 + l4.len()].copy_from_slice(&l4);
    for (i, x) in b[20 + l4.len()..total].iter_mut().enumerate() {
        *x = fill.get(i).copied().unwrap_or(i as u8);
    }
    let c = checksum::checksum(&b[..20]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    if o.bad_checksum {
        b[10] ^= 0x5a;
    }
    (b, total)
}

/// Key of a datagram as the harness tracks it: (outbound, proto, ident).
type DKey = (bool, u8, u16);

struct Harness {
    engines: Vec<NatEngine>,
    flows: [Flow; 3],
    /// The addresses the last forwarded first fragment of a datagram got.
    firsts: HashMap<DKey, ([u8; 4], [u8; 4])>,
}

impl Harness {
    /// Checks a packet that leaves the gateway towards `outside` (or inside).
    fn check_out(&mut self, bytes: &[u8], outside: bool, sent: Option<(&Op, &[u8])>) {
        let ip = Ipv4Packet::new_checked(bytes).expect("forwarded packets parse");
        assert!(ip.verify_checksum(), "forwarded packets carry a valid header checksum");
        let (src, dst) = (ip.src(), ip.dst());
        if outside {
            assert_eq!(dst, SERVER, "inside → outside keeps the destination");
            assert_eq!(src[..3], POOL, "inside → outside leaves from the pool");
            assert!(src[3] < 4);
        } else {
            assert_eq!(dst, POD, "outside → inside reaches the pod");
            assert_eq!(src, SERVER, "outside → inside keeps the source");
        }
        let key = (outside, ip.protocol(), ip.ident());
        if let Some((op, input)) = sent {
            let inp = Ipv4Packet::new_unchecked(input);
            assert_eq!(ip.total_len(), inp.total_len(), "fragments are translated, not reassembled");
            assert_eq!(ip.frag_offset(), inp.frag_offset());
            assert_eq!(ip.more_frags(), inp.more_frags());
            assert!(inp.ttl() >= 2, "a packet whose TTL runs out here is not forwarded");
            assert_eq!(ip.ttl(), inp.ttl() - 1, "TTL decremented once");
            if op.kind == 1 {
                // A later fragment: the translation its first fragment got.
                if let Some(&(s, d)) = self.firsts.get(&key) {
                    assert_eq!((src, dst), (s, d), "a later fragment follows its first");
                }
            } else {
                if op.kind == 0 {
                    self.firsts.insert(key, (src, dst));
                }
                if outside {
                    let l4 = &bytes[ip.header_len()..];
                    let port = if op.proto == 1 { [l4[4], l4[5]] } else { [l4[0], l4[1]] };
                    let pi = PROTOS.iter().position(|&p| p == op.proto).unwrap();
                    self.flows[pi].egress = Some((src, u16::from_be_bytes(port)));
                }
            }
        } else if let Some(&(s, d)) = self.firsts.get(&key) {
            assert_eq!((src, dst), (s, d), "a released fragment follows its first");
        }
    }

    /// Delivers a packet to worker `w`, following handoffs; checks the result.
    fn deliver(&mut self, w: usize, buf: &mut [u8], len: usize, now: Time, sent: Option<&Op>) {
        self.deliver_from(w, buf, len, None, now, sent)
    }

    fn deliver_from(
        &mut self,
        mut w: usize,
        buf: &mut [u8],
        len: usize,
        mut from: Option<egret_core::nat::Side>,
        now: Time,
        sent: Option<&Op>,
    ) {
        let input = buf[..len].to_vec();
        for _hop in 0..3 {
            match self.engines[w].process_from(buf, len, from, now) {
                Verdict::Handoff { worker, from: next } => {
                    assert_ne!(usize::from(worker), w, "handoff to itself");
                    // Handed off unchanged, except a hairpinned packet's
                    // return leg: its source already translated, its
                    // destination (an egress address) and TTL as they came.
                    let hairpin = next == egret_core::nat::Side::Outside
                        && from != Some(next)
                        && buf[16..20] == input[16..20]
                        && buf[8] == input[8];
                    assert!(hairpin || buf[..len] == input[..], "a handed-off packet is unchanged");
                    w = usize::from(worker);
                    from = Some(next);
                }
                // Sealed: to a tunnelled pod, the inside.
                Verdict::Seal { len } => {
                    assert!(len <= buf.len());
                    self.check_out(&buf[..len], false, sent.map(|o| (o, &input[..])));
                    return;
                }
                Verdict::Forward { side, len } => {
                    assert!(len <= buf.len());
                    let outside = side == egret_core::nat::Side::Outside;
                    self.check_out(&buf[..len], outside, sent.map(|o| (o, &input[..])));
                    return;
                }
                Verdict::Reply { len } => {
                    assert!(len <= buf.len());
                    let ip = Ipv4Packet::new_checked(&buf[..len]).expect("replies parse");
                    assert!(ip.verify_checksum());
                    assert_eq!(ip.protocol(), 1, "the gateway only answers with ICMP");
                    assert_eq!(checksum::checksum(ip.payload()), 0, "ICMP replies carry a valid checksum");
                    return;
                }
                Verdict::Held | Verdict::Drop(_) => return,
            }
        }
        panic!("a packet was handed off more than twice");
    }

    fn drain_released(&mut self, now: Time) {
        // Each release is bounded by the hold buffers; so is this loop.
        for _ in 0..64 {
            let mut any = false;
            for w in 0..self.engines.len() {
                while let Some(r) = self.engines[w].take_released() {
                    any = true;
                    match r.to {
                        ReleaseTo::Side(side) => {
                            let outside = side == egret_core::nat::Side::Outside;
                            self.check_out(&r.bytes, outside, None);
                        }
                        ReleaseTo::Seal => self.check_out(&r.bytes, false, None),
                        ReleaseTo::Worker { worker: to, from, .. } => {
                            let to = usize::from(to);
                            assert!(to < self.engines.len() && to != w, "released to a real other worker");
                            let mut buf = r.bytes.clone();
                            buf.resize(r.bytes.len() + 64, 0);
                            self.deliver_from(to, &mut buf, r.bytes.len(), Some(from), now, None);
                        }
                    }
                }
            }
            if !any {
                return;
            }
        }
        panic!("released fragments keep coming");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut rest)) = data.split_first() else { return };
    let workers = 1 + u16::from(ctl & 1);
    let mut h = Harness { engines: engines(workers), flows: [Flow::default(); 3], firsts: HashMap::new() };
    let mut now = 1_000u64;
    // Open one session per protocol, so outside → inside has something to hit.
    for pi in 0..3 {
        let o = op(&[(pi << 1) as u8 | 0x10, 0, 0, 8, 0, 0]);
        let (mut b, len) = build(&o, &h.flows, &[]);
        h.deliver(0, &mut b, len, Time::from_millis(now), Some(&o));
    }
    let mut n = 0;
    while rest.len() >= 6 && n < 256 {
        n += 1;
        let o = op(rest[..6].try_into().unwrap());
        rest = &rest[6..];
        let fill_len = o.payload.min(rest.len());
        let (fill, tail) = rest.split_at(fill_len);
        rest = tail;
        now += o.advance_ms;
        let t = Time::from_millis(now);
        let (mut b, len) = build(&o, &h.flows, fill);
        h.deliver(o.worker % h.engines.len(), &mut b, len, t, Some(&o));
        h.drain_released(t);
        for e in h.engines.iter_mut() {
            e.expire(t, 16);
        }
        h.drain_released(t);
    }
});
