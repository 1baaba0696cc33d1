//! The whole tunnel stage, as a worker drives it: arbitrary IPv4 packets
//! and UDP datagrams to the tunnel endpoint (from changing sources, handed
//! over or not), and packets to seal for the tunnelled pods, on worker 0 of
//! 2 with two peers, after a real pod's handshake so data reaches the
//! session. Never a panic; every length the stage reports fits the buffer;
//! an inner packet comes only from a peer's pod address. With bit 0x20 of
//! an op, the packet goes through the whole pipeline instead (the header
//! check, this stage, the NAT core, sealing), entering at any stage a
//! handoff can: what it leaves in the buffer fits and is IPv4.
#![no_main]

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use egret_core::nat::{CompiledPlan, EngineSettings, NatEngine, Time};
use egret_core::pipeline::{self, Entry, Exit};
use egret_core::plan::{Binding, GatewayConfig, Plan, TunnelConfig, WgKey, WgSecret};
use egret_core::tunnel::stage::SharedLimiters;
use egret_core::tunnel::{Inbound, Outbound, TunnelStage};
use egret_core::wire::ipv4::Header;
use egret_core::wire::udp;
use libfuzzer_sys::fuzz_target;
#[path = "shared/ops.rs"]
mod shared;
use shared::{mutate, ops};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

const GW: [u8; 32] = [7; 32];
const ILB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 50, 100), 6000);
const PODS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];

fn public(k: [u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(k)).as_bytes()
}

fn stage() -> (TunnelStage, NatEngine) {
    let mut c = GatewayConfig::new("demo/a", vec!["198.19.100.0/30".parse().unwrap()]);
    c.tunnel = Some(TunnelConfig { address: *ILB.ip(), port: ILB.port(), private_key: WgSecret(GW) });
    let bindings = PODS
        .iter()
        .enumerate()
        .map(|(i, p)| Binding {
            pod_ip: *p,
            config: "demo/a".into(),
            public_key: Some(WgKey(public([i as u8 + 1; 32]))),
        })
        .collect();
    let plan = Arc::new(
        CompiledPlan::new(&Plan { version: 1, configs: vec![c], bindings, network_policies: Vec::new() }).unwrap(),
    );
    let mut st = TunnelStage::new(0, 2, SharedLimiters::with_limit(4));
    st.apply_plan(&plan);
    let settings = EngineSettings { worker: 0, workers: 2, session_capacity: 1024, seed: 1, ..Default::default() };
    (st, NatEngine::new(settings, plan))
}

fn datagram(buf: &mut [u8], payload: &[u8], from: SocketAddrV4) -> usize {
    let n = payload.len().min(buf.len() - udp::HEADERS);
    buf[udp::HEADERS..udp::HEADERS + n].copy_from_slice(&payload[..n]);
    udp::emit(buf, from, ILB, n)
}

fuzz_target!(|data: &[u8]| {
    let (mut st, mut engine) = stage();
    let mut buf = vec![0u8; 2048];
    // Pod 0's real handshake, so that its data reaches the replay window.
    let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 51820);
    let mut pod = Tunn::new(StaticSecret::from([1; 32]), PublicKey::from(public(GW)), None, None, 1, None);
    let mut scratch = vec![0u8; 2048];
    let mut real: Vec<Vec<u8>> = Vec::new();
    if let TunnResult::WriteToNetwork(init) = pod.format_handshake_initiation(&mut scratch, true) {
        let init = init.to_vec();
        let n = datagram(&mut buf, &init, from);
        if let Inbound::Reply { len } = receive(&mut st, &mut buf, n, false) {
            let response = buf[udp::HEADERS..len].to_vec();
            if let TunnResult::WriteToNetwork(k) = pod.decapsulate(None, &response, &mut scratch) {
                real.push(k.to_vec());
            }
        }
        real.push(init);
    }
    // [op][port][len][bytes]...
    for (op, port, bytes) in ops(data) {
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2 + (port & 3)), 51820 + u16::from(port >> 2));
        match op % 4 {
            // Raw bytes as a whole packet.
            0 => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                through(&mut st, &mut engine, &mut buf, n, op);
            }
            // A datagram to the tunnel endpoint carrying the bytes.
            1 => {
                let n = datagram(&mut buf, bytes, src);
                through(&mut st, &mut engine, &mut buf, n, op);
            }
            // A real message of the pod's, with the bytes xored in.
            2 => {
                let Some(r) = real.get(usize::from(op >> 4) % real.len().max(1)) else { continue };
                let n = datagram(&mut buf, &mutate(r, bytes), src);
                through(&mut st, &mut engine, &mut buf, n, op & !0x10);
            }
            // A packet to seal for a tunnelled pod.
            _ => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                if n >= 20 {
                    buf[16..20].copy_from_slice(&PODS[usize::from(port & 1)].octets());
                }
                match st.seal(&mut buf, n) {
                    Outbound::Sealed { len, .. } => assert!(len <= buf.len()),
                    Outbound::Elsewhere { worker } => assert!(worker < 2),
                    Outbound::Drop(_) => {}
                }
            }
        }
    }
});

/// `buf[..n]` through the stage alone, or with bit 0x20 of `op` through
/// the whole pipeline, entering where bits 6–7 say.
fn through(st: &mut TunnelStage, engine: &mut NatEngine, buf: &mut [u8], n: usize, op: u8) {
    if op & 0x20 == 0 {
        return check(receive(st, buf, n, op & 0x10 != 0), buf);
    }
    let entry = [Entry::Arrived, Entry::Datagram, Entry::Tunnelled, Entry::Seal][usize::from(op >> 6)];
    match pipeline::run(st, engine, buf, n, entry, None, Time::from_secs(1)) {
        Exit::Forward { len, .. } | Exit::Reply { len } => {
            assert!((20..=buf.len()).contains(&len), "{len}");
            assert_eq!(buf[0] >> 4, 4, "what leaves is IPv4");
        }
        Exit::HandOff { worker, len, .. } => assert!(worker < 2 && len <= buf.len() && len <= n),
        Exit::Done => {}
    }
}

/// As the pipeline hands a packet to the stage: its header checked first.
fn receive(st: &mut TunnelStage, buf: &mut [u8], n: usize, handed: bool) -> Inbound {
    match Header::check(buf, n) {
        Ok(ip) => st.receive(buf, &ip, handed),
        Err(_) => Inbound::NotTunnel,
    }
}

fn check(r: Inbound, buf: &[u8]) {
    match r {
        Inbound::Inner { len } => {
            assert!((20..=buf.len()).contains(&len));
            let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            assert!(PODS.contains(&src), "inner source {src} is no peer's pod");
        }
        Inbound::Reply { len } => assert!(len <= buf.len()),
        Inbound::Elsewhere { worker } => assert!(worker < 2),
        Inbound::NotTunnel | Inbound::Consumed | Inbound::Drop(_) => {}
    }
}
