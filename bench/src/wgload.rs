//! egret-wgload: a thousand WireGuard pods in one process, for
//! `bench/tunnel.sh` and the handshake-flood check of `tests/test_tunnel.py`.
//! Every peer is a boringtun `noise::Tunn`, the crate Egret's tunnel stage
//! uses, so the load is real Noise IK and real transport data.
//!
//! ```text
//! egret-wgload peers --count N [--seed S] --pods IP --config NAME --out DIR
//! egret-wgload handshakes --count N [--seed S] --gateway IP:PORT --gateway-key B64
//!                         [--sources IP] [--seconds T] [--window W]
//! egret-wgload data --count N [--seed S] --pods IP --gateway IP:PORT --gateway-key B64
//!                   --dst IP:PORT --packets P [--inner-len L] [--new-flows] [--sources IP]
//!                   [--seconds T] [--wait] [--inject DEV --src-mac M --dst-mac M [--netns NS] [--xdp]]
//!                   [--plain IP]
//! ```
//!
//! Peer i's key is derived from (seed, i) and its pod IP is `--pods` + i, so
//! the three commands agree without sharing files. With `--sources IP`, peer
//! i's datagrams leave from IP + i (a pod's own address, as in a cluster;
//! the range must be local, e.g. a prefix on `lo`), else all from one. `peers` writes what the
//! gateway must know: DIR/peers.yaml (one PodEndpoint per peer, as
//! kube-egress-cni writes them) and DIR/peers.conf (`wg addconf` peers with
//! AllowedIPs podIP/32, as the anchor's daemon adds them).
//!
//! `handshakes` keeps up to `--window` initiations in flight across all
//! peers for `--seconds` (no peer initiates more often than every 25 ms:
//! wireguard-go drops faster ones as floods) and counts the handshake
//! responses and cookie replies that come back. A cookie reply is
//! consumed (so the next initiation carries mac2, as WireGuard's DoS
//! defence asks) and the peer initiates again. One response in 16 is
//! completed (two more X25519 operations) to prove responses are genuine;
//! completing every one would make this side as slow as the gateway.
//!
//! `data` completes a handshake with every peer, then encrypts `--packets`
//! IPv4/UDP packets of `--inner-len` bytes (round-robin over the peers, each
//! from its pod IP to `--dst`; with `--new-flows` each packet a new inner
//! source port) before sending any, so encryption does not pace the send,
//! and sends them with `sendmmsg` as fast as the kernel takes them (or until
//! `--seconds`). With `--wait` it prints "armed" and waits for a line on
//! stdin first (the benchmark attaches its sink in between).
//!
//! With `--inject DEV --xdp` the frames are built straight into a BPF array
//! (mapped into this process) and sent by the `replay` XDP program run with
//! `BPF_PROG_RUN` in live-frames mode, out of DEV, one entry per frame in
//! order: no entry is sent twice (a WireGuard counter may be used once), so
//! `--packets` bounds the run. This outruns the gateway (several Mpps on one
//! core, where `sendmmsg` on a packet socket reached 0.5–0.6 Mpps). With
//! `--plain IP` the same frames carry the inner packets unencrypted, from
//! IP + i instead of peer i's pod address and no handshake: a routed
//! config's plain forwarding, to compare with in the same run.
//!
//! Each prints one line of JSON. Everything is bounded: at most 65,536
//! peers, 120 s, 16 M packets.

use aya::maps::{Array, Map, MapData};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use base64::Engine;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use clap::Parser;
use egret_bench::mac;
use egret_dataplane::wire::udp;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const MAX_PEERS: u32 = 65_536;
const MAX_SECONDS: f64 = 120.0;
const MAX_PACKETS: usize = 16 << 20;
/// wireguard-go refuses a peer's initiations closer than 20 ms apart.
const INITIATION_GAP: Duration = Duration::from_millis(25);
/// An initiation unanswered this long is taken as lost.
const LOST_AFTER: Duration = Duration::from_secs(1);
/// Every this many responses, one is completed to check it is genuine.
const VERIFY_EVERY: u64 = 16;
const BATCH: usize = 64;

static PROGRAMS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/loadgen.bpf.o"));
/// `REPLAY_FRAME` in loadgen.bpf.c: one entry of `replay_frames`.
const REPLAY_FRAME: usize = 128;
/// Frames per `BPF_PROG_RUN` call at most. A call sets up and tears down
/// a page pool, and the teardown sleeps (both cores idled ~16% with calls
/// of 2^18 frames): every entry goes in one call when it can.
const REPLAY_REPEAT_MAX: u32 = 1 << 24;

/// WireGuard message types (the first byte; the next three are zero).
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;

fn secret(seed: u32, i: u32) -> StaticSecret {
    // Clear of the bits X25519 clamps (the low three of byte 0).
    let mut b = [0x5au8; 32];
    b[1..5].copy_from_slice(&i.to_le_bytes());
    b[5..9].copy_from_slice(&seed.to_le_bytes());
    StaticSecret::from(b)
}

fn b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// A WireGuard public key in base64, as `wg` prints it.
fn key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| "not base64")?;
    bytes.try_into().map_err(|_| "not a 32-byte key".to_string())
}

/// Which peers: `--count` of them, keys derived from `--seed`.
#[derive(clap::Args)]
struct Common {
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PEERS)))]
    count: u32,
    #[arg(long, default_value_t = 1)]
    seed: u32,
}

/// Where the peers' datagrams go, and from where.
#[derive(clap::Args)]
struct Target {
    #[arg(long)]
    gateway: SocketAddrV4,
    #[arg(long, value_parser = key)]
    gateway_key: [u8; 32],
    /// Peer i sends from this address + i (a pod's own, local on this host).
    #[arg(long)]
    sources: Option<Ipv4Addr>,
}

#[derive(Parser)]
#[command(name = "egret-wgload", about = "Many WireGuard pods in one process (boringtun), for the tunnel benchmark")]
enum Cli {
    /// Write the gateway's view of the peers: peers.yaml and peers.conf.
    Peers(PeersArgs),
    /// Keep initiations in flight; count responses and cookie replies.
    Handshakes(HandshakesArgs),
    /// Handshake every peer, then send encrypted data as fast as it goes.
    Data(DataArgs),
}

#[derive(clap::Args)]
struct PeersArgs {
    #[command(flatten)]
    common: Common,
    /// The first peer's pod address (peer i: + i).
    #[arg(long)]
    pods: Ipv4Addr,
    /// The StaticGatewayConfiguration the PodEndpoints name.
    #[arg(long)]
    config: String,
    #[arg(long)]
    out: std::path::PathBuf,
}

#[derive(clap::Args)]
struct HandshakesArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Initiations in flight at most.
    #[arg(long, default_value_t = 256)]
    window: usize,
}

#[derive(clap::Args)]
struct DataArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    pods: Ipv4Addr,
    /// The inner packets' destination.
    #[arg(long)]
    dst: SocketAddrV4,
    #[arg(long, default_value_t = 1_000_000)]
    packets: usize,
    #[arg(long, default_value_t = 46)]
    inner_len: usize,
    /// Each packet a new inner source port.
    #[arg(long)]
    new_flows: bool,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Print "armed" and wait for a line on stdin before sending.
    #[arg(long)]
    wait: bool,
    /// Send as frames on this interface (a packet socket) instead of UDP.
    #[arg(long, requires_all = ["src_mac", "dst_mac"])]
    inject: Option<String>,
    #[arg(long, value_parser = mac)]
    src_mac: Option<[u8; 6]>,
    #[arg(long, value_parser = mac)]
    dst_mac: Option<[u8; 6]>,
    /// The network namespace (/run/netns) of the --inject interface.
    #[arg(long)]
    netns: Option<String>,
    /// With --inject: send by XDP live frames (the `replay` program) instead
    /// of a packet socket.
    #[arg(long, requires = "inject")]
    xdp: bool,
    /// Plain frames (no tunnel, no handshake) from this address + i.
    #[arg(long)]
    plain: Option<Ipv4Addr>,
}

fn pod_ip(first: Ipv4Addr, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(first) + i)
}

fn seconds(s: f64) -> Result<Duration, String> {
    if !(s > 0.0 && s <= MAX_SECONDS) {
        return Err(format!("--seconds {s}: must be in (0, {MAX_SECONDS}]"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn peers(a: &PeersArgs) -> Result<(), String> {
    let (c, first, config, out) = (&a.common, a.pods, a.config.as_str(), a.out.as_path());
    let mut yaml = String::new();
    let mut conf = String::new();
    for i in 0..c.count {
        let public = b64(PublicKey::from(&secret(c.seed, i)).as_bytes());
        let ip = pod_ip(first, i);
        yaml.push_str(&format!(
            "---\napiVersion: egressgateway.kubernetes.azure.com/v1alpha1\nkind: PodEndpoint\n\
             metadata: {{name: load-{i}, namespace: demo}}\n\
             spec: {{staticGatewayConfiguration: {config}, podIpAddress: {ip}/32, podPublicKey: {public}}}\n"
        ));
        conf.push_str(&format!("[Peer]\nPublicKey = {public}\nAllowedIPs = {ip}/32\n\n"));
    }
    std::fs::write(out.join("peers.yaml"), yaml).map_err(|e| format!("writing peers.yaml: {e}"))?;
    std::fs::write(out.join("peers.conf"), conf).map_err(|e| format!("writing peers.conf: {e}"))?;
    println!("{{\"peers\":{}}}", c.count);
    Ok(())
}

/// The peers and the socket they share; peer i sends from `sources` + i.
struct Load {
    tunns: Vec<Tunn>,
    socket: UdpSocket,
    sources: Option<Ipv4Addr>,
    gateway: SocketAddrV4,
}

/// Room for one IP_PKTINFO control message.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct PktInfo([u8; 32]);

impl PktInfo {
    /// The control message that makes a datagram leave from `src`.
    fn new(src: Ipv4Addr) -> PktInfo {
        let mut c = PktInfo([0; 32]);
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(src).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        // SAFETY: the buffer is aligned and CMSG_SPACE(12) = 32 bytes long.
        unsafe {
            let h = c.0.as_mut_ptr().cast::<libc::cmsghdr>();
            (*h).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
            (*h).cmsg_level = libc::IPPROTO_IP;
            (*h).cmsg_type = libc::IP_PKTINFO;
            std::ptr::write_unaligned(libc::CMSG_DATA(h).cast::<libc::in_pktinfo>(), info);
        }
        c
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// Points `m` at one datagram to `to` (none on a bound packet socket),
/// from `info`'s address if given. The kernel only reads what they point at.
fn fill(m: &mut libc::msghdr, iov: &mut libc::iovec, to: Option<&libc::sockaddr_in>, info: Option<&PktInfo>) {
    match to {
        Some(to) => {
            m.msg_name = (to as *const libc::sockaddr_in).cast_mut().cast();
            m.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
        None => {
            m.msg_name = std::ptr::null_mut();
            m.msg_namelen = 0;
        }
    }
    m.msg_iov = iov;
    m.msg_iovlen = 1;
    match info {
        Some(c) => {
            m.msg_control = c.0.as_ptr().cast_mut().cast();
            m.msg_controllen = c.0.len();
        }
        None => {
            m.msg_control = std::ptr::null_mut();
            m.msg_controllen = 0;
        }
    }
}

impl Load {
    fn new(a: &Target, c: &Common) -> Result<Load, String> {
        let (gateway, gw_key, sources) = (a.gateway, PublicKey::from(a.gateway_key), a.sources);
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("binding a UDP socket: {e}"))?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        let tunns = (0..c.count).map(|i| Tunn::new(secret(c.seed, i), gw_key, None, None, i, None)).collect();
        Ok(Load { tunns, socket, sources, gateway })
    }

    fn pktinfo(&self, peer: usize) -> Option<PktInfo> {
        self.sources.map(|s| PktInfo::new(pod_ip(s, peer as u32)))
    }

    /// Sends one datagram of `peer`'s to the gateway.
    fn send(&self, peer: usize, d: &[u8]) -> bool {
        let to = sockaddr(self.gateway);
        let info = self.pktinfo(peer);
        let mut iov = libc::iovec { iov_base: d.as_ptr().cast_mut().cast(), iov_len: d.len() };
        // SAFETY: msghdr is plain C data; zero is a valid empty header.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        fill(&mut m, &mut iov, Some(&to), info.as_ref());
        // SAFETY: the header points at live buffers for the call.
        unsafe { libc::sendmsg(self.socket.as_raw_fd(), &m, 0) >= 0 }
    }

    /// The peer a gateway message is for: its receiver index is the peer's
    /// index shifted by boringtun's 8 session bits.
    fn peer_of(&self, d: &[u8]) -> Option<usize> {
        let at = match d.first()? {
            &MSG_RESPONSE => 8,
            _ => 4,
        };
        let idx = u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?);
        let p = (idx >> 8) as usize;
        (p < self.tunns.len()).then_some(p)
    }

    fn initiate(&mut self, peer: usize, buf: &mut [u8]) -> bool {
        match self.tunns[peer].format_handshake_initiation(buf, true) {
            TunnResult::WriteToNetwork(d) => self.send(peer, d),
            _ => false,
        }
    }
}

#[derive(Default)]
struct Handshakes {
    initiations: u64,
    responses: u64,
    cookies: u64,
    verified: u64,
    verify_failed: u64,
    lost: u64,
}

fn handshakes(a: &HandshakesArgs) -> Result<(), String> {
    let c = &a.common;
    let run_for = seconds(a.seconds)?;
    let window = a.window;
    let mut load = Load::new(&a.target, c)?;
    let n = load.tunns.len();
    let mut sent_at: Vec<Option<Instant>> = vec![None; n];
    let mut last_init = vec![Instant::now() - INITIATION_GAP; n];
    let mut h = Handshakes::default();
    let (mut buf, mut rx, mut scratch) = ([0u8; 256], [0u8; 2048], [0u8; 2048]);
    let mut in_flight = 0usize;
    let mut next = 0usize;
    let start = Instant::now();
    let mut swept = start;
    while start.elapsed() < run_for {
        let now = Instant::now();
        if now - swept >= Duration::from_millis(50) {
            swept = now;
            for t in sent_at.iter_mut() {
                if t.is_some_and(|t| now - t >= LOST_AFTER) {
                    *t = None;
                    h.lost += 1;
                    in_flight -= 1;
                }
            }
        }
        // Fill the window, visiting each peer at most once per pass.
        for _ in 0..n {
            if in_flight >= window {
                break;
            }
            let p = next;
            next = (next + 1) % n;
            if sent_at[p].is_some() || now - last_init[p] < INITIATION_GAP {
                continue;
            }
            if load.initiate(p, &mut buf) {
                h.initiations += 1;
                sent_at[p] = Some(now);
                last_init[p] = now;
                in_flight += 1;
            }
        }
        while let Ok((len, _)) = load.socket.recv_from(&mut rx) {
            let d = &rx[..len];
            let Some(p) = load.peer_of(d) else { continue };
            if sent_at[p].take().is_none() {
                continue;
            }
            in_flight -= 1;
            match d[0] {
                MSG_RESPONSE => {
                    h.responses += 1;
                    if h.responses % VERIFY_EVERY == 0 {
                        match load.tunns[p].decapsulate(None, d, &mut scratch) {
                            TunnResult::Err(_) => h.verify_failed += 1,
                            _ => h.verified += 1,
                        }
                    }
                }
                MSG_COOKIE => {
                    h.cookies += 1;
                    // Stores the cookie: the next initiation carries mac2.
                    let _ = load.tunns[p].decapsulate(None, d, &mut scratch);
                    last_init[p] = now - INITIATION_GAP;
                }
                _ => {}
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"peers\":{n},\"seconds\":{secs:.2},\"initiations\":{},\"responses\":{},\"cookies\":{},\"lost\":{},\
         \"verified\":{},\"verify_failed\":{},\"handshakes_per_sec\":{:.0}}}",
        h.initiations,
        h.responses,
        h.cookies,
        h.lost,
        h.verified,
        h.verify_failed,
        h.responses as f64 / secs
    );
    if h.verify_failed > 0 {
        return Err(format!("{} handshake responses did not verify", h.verify_failed));
    }
    Ok(())
}

/// Completes a handshake with every peer (retrying lost ones, answering
/// cookies) and sends each one's first keepalive, which confirms the
/// session on the gateway's side. Returns how many are up.
fn connect_all(load: &mut Load, within: Duration) -> usize {
    let n = load.tunns.len();
    let mut up = vec![false; n];
    let mut sent_at: Vec<Option<Instant>> = vec![None; n];
    let (mut buf, mut rx, mut scratch) = ([0u8; 256], [0u8; 2048], [0u8; 2048]);
    let mut done = 0;
    let start = Instant::now();
    while done < n && start.elapsed() < within {
        let now = Instant::now();
        let waiting = |t: &Option<Instant>| t.is_some_and(|t| now - t < LOST_AFTER);
        let mut in_flight = sent_at.iter().filter(|t| waiting(t)).count();
        for p in 0..n {
            if up[p] || in_flight >= 128 || waiting(&sent_at[p]) {
                continue;
            }
            if load.initiate(p, &mut buf) {
                sent_at[p] = Some(now);
                in_flight += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
        while let Ok((len, _)) = load.socket.recv_from(&mut rx) {
            let Some(p) = load.peer_of(&rx[..len]) else { continue };
            let r = load.tunns[p].decapsulate(None, &rx[..len], &mut scratch);
            match r {
                TunnResult::WriteToNetwork(keepalive) if !up[p] => {
                    load.send(p, keepalive);
                    up[p] = true;
                    sent_at[p] = None;
                    done += 1;
                }
                // A cookie reply: initiate again, now with mac2.
                TunnResult::Done => sent_at[p] = None,
                _ => {}
            }
        }
    }
    done
}

/// Where `data` sends: the UDP socket, or frames written straight onto a
/// link (`--inject`), which skips this side's UDP stack and the VNet's
/// forwarding so that the generator outruns the gateway.
struct Inject {
    fd: std::os::fd::OwnedFd,
    ifindex: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl Inject {
    /// A packet socket on `dev` in network namespace `netns` (as
    /// /run/netns names it); the process stays there afterwards.
    fn open(a: &DataArgs) -> Result<Option<Inject>, String> {
        let Some(dev) = a.inject.as_deref() else { return Ok(None) };
        let (Some(src_mac), Some(dst_mac)) = (a.src_mac, a.dst_mac) else {
            return Err("--inject needs --src-mac and --dst-mac".into());
        };
        if let Some(ns) = a.netns.as_deref() {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("netns {ns}: {e}"))?;
            // SAFETY: a namespace file descriptor; this process has one thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("entering netns {ns}: {}", std::io::Error::last_os_error()));
            }
        }
        let name = std::ffi::CString::new(dev).map_err(|_| "--inject: bad name")?;
        // SAFETY: a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(format!("--inject {dev}: no such interface"));
        }
        // SAFETY: plain socket calls on a descriptor we own.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(format!("packet socket: {}", std::io::Error::last_os_error()));
            }
            let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let mut ll: libc::sockaddr_ll = std::mem::zeroed();
            ll.sll_family = libc::AF_PACKET as u16;
            ll.sll_ifindex = ifindex as i32;
            if libc::bind(fd.as_raw_fd(), (&ll as *const libc::sockaddr_ll).cast(), std::mem::size_of_val(&ll) as u32)
                != 0
            {
                return Err(format!("binding to {dev}: {}", std::io::Error::last_os_error()));
            }
            Ok(Some(Inject { fd, ifindex, src_mac, dst_mac }))
        }
    }

    /// Ethernet, IPv4 and UDP headers (42 bytes) before `payload` bytes
    /// already at `frame[42..]`.
    fn headers(&self, frame: &mut [u8], from: SocketAddrV4, to: SocketAddrV4, payload: usize) {
        frame[..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        udp::emit(&mut frame[14..], from, to, payload);
    }
}

/// `struct replay_config` in loadgen.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ReplayConfig {
    ifindex: u32,
    len: u32,
    frames: u64,
    limit: u64,
    cycle: u32,
    _pad: u32,
}

/// `struct replay_state` in loadgen.bpf.c.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ReplayState {
    seq: u64,
    idx: u64,
    done: u64,
    first_ns: u64,
    last_ns: u64,
}

// SAFETY: plain C structs of integers, no padding the kernel could leak.
unsafe impl aya::Pod for ReplayConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for ReplayState {}

/// The `replay` program with room for `frames` entries of `REPLAY_FRAME`
/// bytes, its array mapped into this process to be filled in place.
struct Replay {
    ebpf: Ebpf,
    mem: *mut u8,
    size: usize,
    frames: usize,
}

impl Replay {
    fn new(frames: usize) -> Result<Replay, String> {
        let entries = u32::try_from(frames).map_err(|_| "too many frames")?;
        let ebpf = EbpfLoader::new()
            .map_max_entries("replay_frames", entries)
            .map_max_entries("sink_seen", 1)
            .load(PROGRAMS)
            .map_err(|e| format!("loading the replay program: {e}"))?;
        let fd = match ebpf.map("replay_frames") {
            Some(Map::Array(d)) => d.fd().as_fd().as_raw_fd(),
            _ => return Err("map replay_frames missing".into()),
        };
        let size = (frames * REPLAY_FRAME).div_ceil(4096) * 4096;
        // SAFETY: maps a BPF_F_MMAPABLE array of exactly this many entries;
        // unmapped in Drop, before the map closes.
        let mem = unsafe {
            libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if mem == libc::MAP_FAILED {
            return Err(format!("mapping replay_frames ({size} B): {}", std::io::Error::last_os_error()));
        }
        Ok(Replay { ebpf, mem: mem.cast(), size, frames })
    }

    /// All entries, `REPLAY_FRAME` bytes each.
    fn entries(&mut self) -> &mut [u8] {
        // SAFETY: `mem` maps `size` >= frames * REPLAY_FRAME bytes, this
        // process's only view of them while `self` is borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.mem, self.frames * REPLAY_FRAME) }
    }

    fn state(&mut self) -> Result<ReplayState, String> {
        let m = self.ebpf.map_mut("replay_state").ok_or("map replay_state missing")?;
        let a: Array<&mut MapData, ReplayState> = Array::try_from(m).map_err(|e| e.to_string())?;
        a.get(&0, 0).map_err(|e| e.to_string())
    }

    /// Sends the entries once each, in order, each `len` bytes long, out
    /// of `ifindex`, until the last or until `run_for`. Returns the frames
    /// sent and the seconds from the first to the last.
    fn run(&mut self, ifindex: u32, len: usize, run_for: Duration) -> Result<(u64, f64), String> {
        let cfg = ReplayConfig {
            ifindex,
            len: len as u32,
            frames: self.frames as u64,
            limit: self.frames as u64,
            cycle: 0,
            _pad: 0,
        };
        {
            let m = self.ebpf.map_mut("replay_cfg").ok_or("map replay_cfg missing")?;
            let mut a: Array<&mut MapData, ReplayConfig> = Array::try_from(m).map_err(|e| e.to_string())?;
            a.set(0, cfg, 0).map_err(|e| e.to_string())?;
        }
        let first = self.entries()[..len].to_vec();
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("replay")
            .ok_or("program replay missing")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        prog.load().map_err(|e| format!("loading replay: {e:?}"))?;
        let fd = prog.fd().map_err(|e| e.to_string())?.as_fd().as_raw_fd();
        let start = Instant::now();
        loop {
            let repeat = (self.frames as u32).clamp(1, REPLAY_REPEAT_MAX);
            egret_bench::run_live_frames(fd, &first, repeat)?;
            let st = self.state()?;
            if st.done > 0 || st.seq >= self.frames as u64 || start.elapsed() >= run_for {
                let secs = st.last_ns.saturating_sub(st.first_ns) as f64 / 1e9;
                return Ok((st.seq, secs));
            }
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used no more.
        unsafe { libc::munmap(self.mem.cast(), self.size) };
    }
}

/// An IPv4/UDP packet of `len` bytes (zero payload) with valid checksums.
fn inner_packet(out: &mut [u8], src: Ipv4Addr, dst: SocketAddrV4, sport: u16, len: usize) {
    out[udp::HEADERS..len].fill(0);
    udp::emit(out, SocketAddrV4::new(src, sport), dst, len - udp::HEADERS);
}

fn data(a: &DataArgs) -> Result<(), String> {
    let c = &a.common;
    let (first, dst, packets) = (a.pods, a.dst, a.packets);
    if packets == 0 || packets > MAX_PACKETS {
        return Err(format!("--packets {packets}: must be 1..={MAX_PACKETS}"));
    }
    let inner_len = a.inner_len;
    if !(28..=1420).contains(&inner_len) {
        return Err(format!("--inner-len {inner_len}: must be 28..=1420"));
    }
    let new_flows = a.new_flows;
    let run_for = seconds(a.seconds)?;
    let mut load = Load::new(&a.target, c)?;
    let n = load.tunns.len();
    let t0 = Instant::now();
    let up = if a.plain.is_some() { n } else { connect_all(&mut load, Duration::from_secs(30)) };
    let connect_secs = t0.elapsed().as_secs_f64();
    if up < n {
        return Err(format!("only {up} of {n} peers completed a handshake within 30 s"));
    }
    let inject = Inject::open(a)?;
    if inject.is_some() && load.sources.is_none() && a.plain.is_none() {
        return Err("--inject needs --sources (the frames' source addresses)".into());
    }
    if a.plain.is_some() && (inject.is_none() || !a.xdp) {
        return Err("--plain needs --inject and --xdp".into());
    }
    let port = load.socket.local_addr().map_err(|e| e.to_string())?.port();

    // Encrypt everything first: packet j is peer j % n's (j / n)-th. A
    // data message is the inner packet (padded to 16 bytes) plus 32; a
    // frame puts 42 bytes of headers in front. Plain frames put 14 in
    // front of the inner packet.
    let head = match (&inject, a.plain) {
        (None, _) => 0,
        (Some(_), None) => 42,
        (Some(_), Some(_)) => 14,
    };
    let msg_len = if a.plain.is_some() { inner_len } else { inner_len.div_ceil(16) * 16 + 32 };
    let mut replay = None;
    let mut heap = Vec::new();
    let stride = if a.xdp {
        if head + msg_len > REPLAY_FRAME {
            return Err(format!("--xdp: a frame of {} B does not fit {REPLAY_FRAME} B", head + msg_len));
        }
        REPLAY_FRAME
    } else {
        (head + msg_len).div_ceil(64) * 64
    };
    let wire: &mut [u8] = if a.xdp {
        replay.insert(Replay::new(packets)?).entries()
    } else {
        heap.resize(packets * stride, 0u8);
        &mut heap
    };
    let mut lens = vec![0u16; packets];
    let mut inner = [0u8; 1500];
    for j in 0..packets {
        let p = j % n;
        let sport = if new_flows { 1024 + ((j / n) % 64_512) as u16 } else { 1024 + (p % 64_512) as u16 };
        let frame = &mut wire[j * stride..(j + 1) * stride];
        if let (Some(i), Some(base)) = (&inject, a.plain) {
            inner_packet(&mut frame[14..], pod_ip(base, p as u32), dst, sport, inner_len);
            frame[..6].copy_from_slice(&i.dst_mac);
            frame[6..12].copy_from_slice(&i.src_mac);
            frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            lens[j] = (14 + inner_len) as u16;
            continue;
        }
        inner_packet(&mut inner, pod_ip(first, p as u32), dst, sport, inner_len);
        let len = match load.tunns[p].encapsulate(&inner[..inner_len], &mut frame[head..]) {
            TunnResult::WriteToNetwork(d) => d.len(),
            other => return Err(format!("encrypting for peer {p}: {other:?}")),
        };
        if let (Some(i), Some(s)) = (&inject, load.sources) {
            i.headers(frame, SocketAddrV4::new(pod_ip(s, p as u32), port), load.gateway, len);
        }
        lens[j] = (head + len) as u16;
    }
    let encrypt_secs = t0.elapsed().as_secs_f64() - connect_secs;
    if a.wait {
        println!("armed");
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }

    let (sent, refused, secs, mode) = match (&mut replay, &inject) {
        (Some(r), Some(i)) => {
            if lens.iter().any(|&l| l != lens[0]) {
                return Err("--xdp: frames of different lengths".into());
            }
            let (sent, secs) = r.run(i.ifindex, usize::from(lens[0]), run_for)?;
            (sent as usize, 0, secs, "xdp")
        }
        _ => {
            let (sent, refused, secs) = send_all(&load, inject.as_ref(), &heap, stride, &lens, run_for);
            (sent, refused, secs, if inject.is_some() { "packet" } else { "udp" })
        }
    };
    println!(
        "{{\"peers\":{n},\"packets\":{packets},\"sent\":{sent},\"refused_calls\":{refused},\"seconds\":{secs:.3},\
         \"sent_pps\":{:.0},\"inner_len\":{inner_len},\"new_flows\":{new_flows},\"plain\":{},\"mode\":\"{mode}\",\
         \"connect_secs\":{connect_secs:.2},\"encrypt_secs\":{encrypt_secs:.2}}}",
        sent as f64 / secs.max(1e-9),
        a.plain.is_some()
    );
    Ok(())
}

/// Sends the frames (or datagrams) in `wire` with `sendmmsg`, in order,
/// until the last or `run_for`: (sent, refused calls, seconds).
fn send_all(
    load: &Load,
    inject: Option<&Inject>,
    wire: &[u8],
    stride: usize,
    lens: &[u16],
    run_for: Duration,
) -> (usize, u64, f64) {
    let (n, packets) = (load.tunns.len(), lens.len());
    let to = sockaddr(load.gateway);
    let (fd, to, infos) = match inject {
        Some(i) => (i.fd.as_raw_fd(), None, vec![None; n]),
        None => (load.socket.as_raw_fd(), Some(&to), (0..n).map(|p| load.pktinfo(p)).collect()),
    };
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
    // SAFETY: mmsghdr is plain C data; zero is a valid empty header.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let (mut sent, mut refused, mut next) = (0usize, 0u64, 0usize);
    let start = Instant::now();
    while next < packets && start.elapsed() < run_for {
        let m = (packets - next).min(BATCH);
        for i in 0..m {
            let j = next + i;
            iov[i] =
                libc::iovec { iov_base: wire[j * stride..].as_ptr().cast_mut().cast(), iov_len: usize::from(lens[j]) };
            fill(&mut msgs[i].msg_hdr, &mut iov[i], to, infos[j % n].as_ref());
        }
        // SAFETY: `m` headers pointing at live iovecs, names and buffers
        // (the kernel only reads them).
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), m as u32, 0) };
        if r > 0 {
            sent += r as usize;
            next += r as usize;
        } else {
            // A full socket buffer (EAGAIN) or ENOBUFS: count it, try again.
            refused += 1;
            std::thread::yield_now();
        }
    }
    (sent, refused, start.elapsed().as_secs_f64())
}

fn main() -> ExitCode {
    let (name, result) = match Cli::parse() {
        Cli::Peers(a) => ("peers", peers(&a)),
        Cli::Handshakes(a) => ("handshakes", handshakes(&a)),
        Cli::Data(a) => ("data", data(&a)),
    };
    egret_bench::exit_with("egret-wgload", name, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_packets_carry_valid_checksums() {
        let mut b = [0u8; 64];
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 254), 9);
        inner_packet(&mut b, Ipv4Addr::new(198, 18, 128, 7), dst, 4000, 46);
        let p = etherparse::SlicedPacket::from_ip(&b[..46]).expect("parses");
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { panic!("not IPv4") };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(198, 18, 128, 7));
        assert_eq!(egret_bench::checksum(&b[..20]), 0, "IPv4 header checksum");
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else { panic!("not UDP") };
        let sum = udp.to_header().calc_checksum_ipv4_raw([198, 18, 128, 7], [198, 19, 0, 254], udp.payload()).unwrap();
        assert_eq!(sum, udp.checksum());
    }

    #[test]
    fn peers_derive_the_same_keys_every_time() {
        let a = PublicKey::from(&secret(1, 5));
        let b = PublicKey::from(&secret(1, 5));
        let other = PublicKey::from(&secret(2, 5));
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), other.as_bytes());
    }

    #[test]
    fn neighbouring_peers_get_distinct_keys() {
        // X25519 clamps the low bits of the first byte: indexes must not live there.
        let keys: std::collections::HashSet<[u8; 32]> =
            (0..64).map(|i| *PublicKey::from(&secret(1, i)).as_bytes()).collect();
        assert_eq!(keys.len(), 64);
    }

    #[test]
    fn gateway_messages_map_back_to_their_peer() {
        let tunns =
            (0..3).map(|i| Tunn::new(secret(1, i), PublicKey::from(&secret(9, 0)), None, None, i, None)).collect();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let load = Load { tunns, socket, sources: None, gateway: "198.18.50.100:6000".parse().unwrap() };
        let mut response = [0u8; 92];
        response[0] = MSG_RESPONSE;
        response[8..12].copy_from_slice(&((2u32 << 8) | 3).to_le_bytes());
        assert_eq!(load.peer_of(&response), Some(2));
        let mut cookie = [0u8; 64];
        cookie[0] = MSG_COOKIE;
        cookie[4..8].copy_from_slice(&(7u32 << 8).to_le_bytes());
        assert_eq!(load.peer_of(&cookie), None, "peer 7 does not exist");
    }
}
