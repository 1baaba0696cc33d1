//! Micro-benchmark of the tunnel stage without I/O: what one core spends
//! per 64 B packet to open a pod's WireGuard data message (inbound:
//! `TunnelStage::receive`, decrypt + the copy back into the frame) and to
//! seal a reply to a pod (`TunnelStage::seal`: the copy out of the frame +
//! encrypt), over 1,024 peers with live sessions, next to boringtun's
//! `Tunn::decapsulate` / `encapsulate` alone (the same AEAD and per-packet
//! work, no stage) and the per-packet copy alone. Prints a markdown table of
//! medians over several runs, in this thread's CPU time.
//!
//! `cargo bench -p egret-core --bench tunnel_stage` (`-- --quick` for a
//! smoke run).

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use egret_core::compiled::CompiledPlan;
use egret_core::plan::{Binding, GatewayConfig, Plan, TunnelConfig, WgKey, WgSecret};
use egret_core::tunnel::stage::SharedLimiters;
use egret_core::tunnel::{Inbound, Outbound, TunnelStage};
use egret_core::wire::ipv4::Header;
use egret_core::wire::udp;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

const PEERS: u32 = 1024;
const GW_KEY: [u8; 32] = [7; 32];
/// An inner packet that leaves the gateway as a 64 B frame.
const INNER: usize = 46;
const TUNNEL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 50, 100), 6001);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 254), 9);

fn secret(i: u32) -> StaticSecret {
    let mut b = [0x5au8; 32];
    b[1..5].copy_from_slice(&i.to_le_bytes());
    StaticSecret::from(b)
}

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i)
}

fn endpoint(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 80, 0)) + i), 40000)
}

fn plan() -> Arc<CompiledPlan> {
    let mut c = GatewayConfig::new("bench", vec!["198.18.50.128/26".parse().unwrap()]);
    c.tunnel = Some(TunnelConfig { address: *TUNNEL.ip(), port: TUNNEL.port(), private_key: WgSecret(GW_KEY) });
    let bindings = (0..PEERS)
        .map(|i| Binding {
            pod_ip: pod_ip(i),
            config: "bench".into(),
            public_key: Some(WgKey(*PublicKey::from(&secret(i)).as_bytes())),
        })
        .collect();
    Arc::new(CompiledPlan::new(&Plan { network_policies: Vec::new(), version: 1, configs: vec![c], bindings }).unwrap())
}

/// An IPv4/UDP packet of `len` bytes from `src` to `dst`.
fn ip_udp(buf: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> usize {
    buf[udp::HEADERS..udp::HEADERS + payload.len()].copy_from_slice(payload);
    udp::emit(buf, src, dst, payload.len())
}

/// The inner packet of pod `i` (46 bytes, zero payload).
fn inner(i: u32) -> [u8; INNER] {
    let mut b = [0u8; INNER];
    udp::emit(&mut b, SocketAddrV4::new(pod_ip(i), 1024 + i as u16), SERVER, INNER - udp::HEADERS);
    b
}

/// The pods' side, each with a live session with the stage.
fn connect(stage: &mut TunnelStage) -> Vec<Tunn> {
    let gw_pub = PublicKey::from(&StaticSecret::from(GW_KEY));
    let mut pods: Vec<Tunn> = (0..PEERS).map(|i| Tunn::new(secret(i), gw_pub, None, None, i, None)).collect();
    let (mut frame, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    for (i, pod) in pods.iter_mut().enumerate() {
        let from = endpoint(i as u32);
        let init = match pod.format_handshake_initiation(&mut out, false) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("no initiation: {other:?}"),
        };
        let n = ip_udp(&mut frame, from, TUNNEL, &init);
        let ip = Header::check(&frame, n).unwrap();
        let Inbound::Reply { len } = stage.receive(&mut frame, &ip, false) else { panic!("no response for peer {i}") };
        let response = frame[udp::HEADERS..len].to_vec();
        let keepalive = match pod.decapsulate(None, &response, &mut out) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("no keepalive: {other:?}"),
        };
        let n = ip_udp(&mut frame, from, TUNNEL, &keepalive);
        let ip = Header::check(&frame, n).unwrap();
        assert_eq!(stage.receive(&mut frame, &ip, false), Inbound::Consumed);
    }
    pods
}

/// `per_peer` data datagrams from every pod (IPv4/UDP, round-robin over
/// the peers), each in a 128-byte slot: (bytes, lengths).
fn datagrams(pods: &mut [Tunn], per_peer: usize) -> (Vec<u8>, Vec<usize>) {
    let count = pods.len() * per_peer;
    let mut wire = vec![0u8; count * 128];
    let mut lens = Vec::with_capacity(count);
    let mut out = [0u8; 256];
    for j in 0..count {
        let p = j % pods.len();
        let d = match pods[p].encapsulate(&inner(p as u32), &mut out) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("no data: {other:?}"),
        };
        lens.push(ip_udp(&mut wire[j * 128..(j + 1) * 128], endpoint(p as u32), TUNNEL, &d));
    }
    (wire, lens)
}

/// This thread's CPU time: the box is shared, and wall time would count
/// other processes' slices.
struct Instant(f64);

impl Instant {
    fn now() -> Instant {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        Instant(t.tv_sec as f64 * 1e9 + t.tv_nsec as f64)
    }

    /// Nanoseconds of CPU since `self`.
    fn elapsed_ns(&self) -> f64 {
        Instant::now().0 - self.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 1 } else { 5 };
    let per_peer = if quick { 16 } else { 256 };
    let count = PEERS as usize * per_peer;
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("stage.receive: open a data message (decrypt + copy back into the frame)", vec![]),
        ("boringtun Tunn::decapsulate alone (same datagrams, no stage)", vec![]),
        ("stage.seal: seal a packet to a pod (copy out of the frame + encrypt)", vec![]),
        ("boringtun Tunn::encapsulate alone", vec![]),
        ("the frame copy of each row (128 B slot → frame)", vec![]),
    ];
    let gw_secret = StaticSecret::from(GW_KEY);
    for _ in 0..runs {
        // Inbound through the stage.
        // No cookie replies: the handshakes here are set-up, not the load.
        let mut stage = TunnelStage::new(0, 1, SharedLimiters::with_limit(u64::MAX));
        stage.apply_plan(&plan());
        let mut pods = connect(&mut stage);
        let (wire, lens) = datagrams(&mut pods, per_peer);
        let mut frame = [0u8; 2048];
        let t = Instant::now();
        for (j, &n) in lens.iter().enumerate() {
            frame[..n].copy_from_slice(&wire[j * 128..j * 128 + n]);
            let ip = Header::check(&frame, n).unwrap();
            match stage.receive(&mut frame, &ip, false) {
                Inbound::Inner { len } => {
                    black_box(&frame[..len]);
                }
                other => panic!("packet {j}: {other:?}"),
            }
        }
        rows[0].1.push(t.elapsed_ns() / count as f64);

        // Outbound through the stage: replies to every pod.
        let replies: Vec<[u8; INNER]> = (0..PEERS)
            .map(|i| {
                let mut b = [0u8; INNER];
                udp::emit(&mut b, SERVER, SocketAddrV4::new(pod_ip(i), 1024 + i as u16), INNER - udp::HEADERS);
                b
            })
            .collect();
        let t = Instant::now();
        for j in 0..count {
            let r = &replies[j % PEERS as usize];
            frame[..INNER].copy_from_slice(r);
            match stage.seal(&mut frame, INNER) {
                Outbound::Sealed { len, .. } => {
                    black_box(&frame[..len]);
                }
                other => panic!("reply {j}: {other:?}"),
            }
        }
        rows[2].1.push(t.elapsed_ns() / count as f64);

        // boringtun alone: a responder Tunn per peer, fresh handshakes.
        let mut responders: Vec<Tunn> = (0..PEERS)
            .map(|i| Tunn::new(gw_secret.clone(), PublicKey::from(&secret(i)), None, None, i << 8, None))
            .collect();
        let gw_pub = PublicKey::from(&gw_secret);
        let mut pods: Vec<Tunn> =
            (0..PEERS).map(|i| Tunn::new(secret(i), gw_pub, None, None, (PEERS + i) << 8, None)).collect();
        let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
        for (p, r) in pods.iter_mut().zip(responders.iter_mut()) {
            let TunnResult::WriteToNetwork(init) = p.format_handshake_initiation(&mut a, false) else { panic!() };
            let TunnResult::WriteToNetwork(resp) = r.decapsulate(None, init, &mut b) else { panic!() };
            let TunnResult::WriteToNetwork(ka) = p.decapsulate(None, resp, &mut a) else { panic!() };
            assert!(matches!(r.decapsulate(None, ka, &mut b), TunnResult::Done));
        }
        let mut msgs = vec![0u8; count * 128];
        let mut mlens = Vec::with_capacity(count);
        for j in 0..count {
            let p = j % PEERS as usize;
            let TunnResult::WriteToNetwork(d) = pods[p].encapsulate(&inner(p as u32), &mut a) else { panic!() };
            msgs[j * 128..j * 128 + d.len()].copy_from_slice(d);
            mlens.push(d.len());
        }
        let t = Instant::now();
        for (j, &n) in mlens.iter().enumerate() {
            let p = j % PEERS as usize;
            match responders[p].decapsulate(None, &msgs[j * 128..j * 128 + n], &mut b) {
                TunnResult::WriteToTunnelV4(d, _) => {
                    black_box(d);
                }
                other => panic!("packet {j}: {other:?}"),
            }
        }
        rows[1].1.push(t.elapsed_ns() / count as f64);
        let t = Instant::now();
        for j in 0..count {
            let p = j % PEERS as usize;
            match responders[p].encapsulate(&replies[p], &mut b) {
                TunnResult::WriteToNetwork(d) => {
                    black_box(d);
                }
                other => panic!("reply {j}: {other:?}"),
            }
        }
        rows[3].1.push(t.elapsed_ns() / count as f64);

        let t = Instant::now();
        for (j, &n) in lens.iter().enumerate() {
            frame[..n].copy_from_slice(&wire[j * 128..j * 128 + n]);
            black_box(&mut frame);
        }
        rows[4].1.push(t.elapsed_ns() / count as f64);
    }
    println!(
        "| tunnel stage, one core, {PEERS} peers, {INNER} B inner packets ({runs} runs, median) | ns/packet | Mpps |"
    );
    println!("|---|---|---|");
    for (name, v) in rows {
        let ns = median(v);
        println!("| {name} | {ns:.0} | {:.2} |", 1e3 / ns);
    }
}
