//! Datagrams on a config's WireGuard port: arbitrary bytes, and mutations
//! of a real pod's handshake and data messages, from changing sources, into
//! a responder with a live session. Never a panic; whatever is delivered
//! inside comes from its peer's pod address; replies fit their buffer.
#![no_main]

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use egret_core::tunnel::{PeerConfig, Received, Tunnel};
use libfuzzer_sys::fuzz_target;
#[path = "shared/ops.rs"]
mod shared;
use shared::{mutate, ops};
use std::net::{Ipv4Addr, SocketAddrV4};

const GW: [u8; 32] = [7; 32];
const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn public(k: [u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(k)).as_bytes()
}

fn inner() -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 19, 0, 100];
    p.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
    p
}

fuzz_target!(|data: &[u8]| {
    let mut gw = Tunnel::with_handshake_limit(GW, &[PeerConfig { public_key: public([1; 32]), pod_ip: POD }], 4);
    let mut pod = Tunn::new(StaticSecret::from([1; 32]), PublicKey::from(public(GW)), None, None, 1, None);
    let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 51820);
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    // A real session first, so data messages reach the replay window.
    let mut real = Vec::new();
    if let TunnResult::WriteToNetwork(init) = pod.encapsulate(&inner(), &mut buf) {
        real.push(init.to_vec());
        if let Received::Reply { len } = gw.receive(from, &real[0], &mut out) {
            let response = out[..len].to_vec();
            if let TunnResult::WriteToNetwork(d) = pod.decapsulate(None, &response, &mut buf) {
                real.push(d.to_vec());
            }
            if let TunnResult::WriteToNetwork(d) = pod.decapsulate(None, &[], &mut buf) {
                real.push(d.to_vec());
            }
        }
    }
    // [selector][port][len][bytes]...: a real message mutated, or raw bytes.
    for (sel, port, bytes) in ops(data) {
        let datagram = match real.get(usize::from(sel % 4)) {
            Some(r) if sel & 0x80 != 0 => {
                let mut m = mutate(r, bytes);
                if sel & 0x40 != 0 {
                    m.truncate(bytes.len());
                }
                m
            }
            Some(r) if sel & 0x20 != 0 => r.clone(),
            _ => bytes.to_vec(),
        };
        let src = SocketAddrV4::new(*from.ip(), 51820 + u16::from(port & 3));
        match gw.receive(src, &datagram, &mut out) {
            Received::Inner { len, pod } => {
                assert_eq!(pod, POD, "cryptokey routing");
                assert!(len <= out.len());
            }
            Received::Reply { len } => assert!(len <= out.len()),
            Received::Consumed | Received::Drop(_) => {}
            Received::Elsewhere { .. } => panic!("a one-worker tunnel has no other worker"),
        }
        if let Some((len, _)) = gw.send(POD, &inner(), &mut out) {
            assert!(len <= out.len());
        }
    }
});
