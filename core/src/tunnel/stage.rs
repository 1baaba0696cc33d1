//! The tunnel stage of a worker: every config's [`Tunnel`] between the
//! NIC and the NAT core. Sans-I/O: IPv4 packets in (the frame past its
//! Ethernet header), IPv4 packets out, in the same buffer.
//!
//! Inbound, a UDP datagram to a config's (tunnel address, port) is
//! WireGuard: its inner packet replaces it in the buffer for the NAT core,
//! or a handshake answer replaces it, addressed back to its sender from the
//! tunnel address and port (the ILB frontend: a reply from anywhere else
//! would make the pod roam past the load balancer). Outbound, a packet the
//! NAT core sends to a tunnelled pod is encrypted to its peer, in place.

use super::{owner_of, PeerConfig, Received, Tunnel, TunnelCounters, TunnelDrop, HANDSHAKES_PER_SEC};
use crate::compiled::CompiledPlan;
use crate::plan::WgSecret;
use crate::wire::ipv4::Header;
use crate::wire::udp;
use boringtun::noise::rate_limiter::RateLimiter;
use hashbrown::HashMap;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};

/// The handshake budget of each config's key, shared by the workers.
#[derive(Default, Clone)]
pub struct SharedLimiters {
    by_key: Arc<Mutex<HashMap<[u8; 32], Arc<RateLimiter>>>>,
    per_sec: Option<u64>,
}

impl SharedLimiters {
    /// Limiters that answer with cookies above `per_sec` initiations a
    /// second per config.
    pub fn with_limit(per_sec: u64) -> SharedLimiters {
        SharedLimiters { by_key: Arc::default(), per_sec: Some(per_sec) }
    }

    fn get(&self, key: &WgSecret) -> Arc<RateLimiter> {
        let mut m = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let per_sec = self.per_sec.unwrap_or(HANDSHAKES_PER_SEC);
        Arc::clone(m.entry(key.0).or_insert_with(|| Tunnel::limiter(key.0, per_sec)))
    }
}

/// What became of a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Not for a tunnel: the NAT core's as it is.
    NotTunnel,
    /// `buf[..len]` now holds the decrypted inner packet of a pod (its
    /// source checked against its peer).
    Inner { len: usize },
    /// `buf[..len]` now holds a datagram back to the sender (a handshake
    /// response or a cookie reply).
    Reply { len: usize },
    /// Authenticated and used up (a keepalive).
    Consumed,
    /// Dropped and counted.
    Drop(TunnelDrop),
    /// For a peer another worker owns: hand the packet over unchanged.
    Elsewhere { worker: u16 },
}

/// What became of a packet for a tunnelled pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// `buf[..len]` now holds the encrypted datagram, to the peer's endpoint.
    Sealed { len: usize, to: SocketAddrV4 },
    /// The pod's peer lives on another worker: hand the packet over.
    Elsewhere { worker: u16 },
    /// Not sent now: dropped and counted (no session yet, or no room), or
    /// held by the tunnel until the handshake that renews the pod's
    /// expired session completes (counted as `held_for_handshake`).
    Drop(TunnelDrop),
}

struct ConfigTunnel {
    name: String,
    key: WgSecret,
    address: SocketAddrV4,
    tunnel: Tunnel,
}

/// One config's tunnel figures on one worker; serialized, the status
/// file's form (the public key only: it is what pods are configured with).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TunnelReport {
    pub config: String,
    pub address: Option<SocketAddrV4>,
    #[serde(serialize_with = "public_key_text")]
    pub public_key: [u8; 32],
    #[serde(flatten)]
    pub counters: TunnelCounters,
    /// Peers this worker holds, and of those the ones with a live session.
    pub peers: usize,
    pub live_peers: usize,
}

pub struct TunnelStage {
    worker: u16,
    workers: u16,
    limiters: SharedLimiters,
    plan: Option<Arc<CompiledPlan>>,
    /// By config index of `plan`.
    tunnels: Vec<Option<ConfigTunnel>>,
    /// Counters of tunnels the plan removed, kept so totals never go back.
    retired: Vec<TunnelReport>,
    scratch: Vec<u8>,
    frame: Vec<u8>,
}

/// Room for the largest packet a frame holds.
const SCRATCH: usize = 1 << 16;

impl TunnelStage {
    pub fn new(worker: u16, workers: u16, limiters: SharedLimiters) -> TunnelStage {
        TunnelStage {
            worker,
            workers: workers.max(1),
            limiters,
            plan: None,
            tunnels: Vec::new(),
            retired: Vec::new(),
            scratch: vec![0; SCRATCH],
            frame: vec![0; SCRATCH],
        }
    }

    /// Whether any config has a tunnel (else every packet is NotTunnel).
    #[inline]
    pub fn active(&self) -> bool {
        self.plan.as_ref().is_some_and(|p| !p.tunnels.is_empty())
    }

    /// Follows a new plan: a config that keeps its name and key keeps its
    /// tunnel (peers that stay keep their sessions), the others are made
    /// or dropped.
    pub fn apply_plan(&mut self, plan: &Arc<CompiledPlan>) {
        if self.plan.as_ref().is_some_and(|p| Arc::ptr_eq(p, plan)) {
            return;
        }
        let mut old: HashMap<String, ConfigTunnel> =
            self.tunnels.drain(..).flatten().map(|t| (t.name.clone(), t)).collect();
        for c in &plan.configs {
            let Some(t) = &c.tunnel else {
                self.tunnels.push(None);
                continue;
            };
            let address = SocketAddrV4::new(t.address, t.port);
            let peers: &[PeerConfig] = &t.peers;
            let kept = old.remove(&c.name).filter(|o| o.key == t.private_key);
            let tunnel = match kept {
                Some(mut o) => {
                    o.tunnel.set_peers(peers);
                    o.address = address;
                    o
                }
                None => ConfigTunnel {
                    name: c.name.clone(),
                    key: t.private_key.clone(),
                    address,
                    tunnel: Tunnel::for_worker(
                        t.private_key.0,
                        peers,
                        self.limiters.get(&t.private_key),
                        self.worker,
                        self.workers,
                    ),
                },
            };
            self.tunnels.push(Some(tunnel));
        }
        if !old.is_empty() {
            let gone = old.values().map(|t| TunnelReport { peers: 0, live_peers: 0, address: None, ..report(t) });
            self.retired = merge(self.retired.iter().cloned().chain(gone).collect::<Vec<_>>().iter());
        }
        self.plan = Some(Arc::clone(plan));
    }

    /// Takes a received IPv4 packet in `buf`, its header `ip` checked;
    /// `handed`: another worker passed it on (its initiation already
    /// rate-limited).
    pub fn receive(&mut self, buf: &mut [u8], ip: &Header, handed: bool) -> Inbound {
        let Some(plan) = &self.plan else { return Inbound::NotTunnel };
        let Some(port) = udp::dst_port(buf, ip) else { return Inbound::NotTunnel };
        let Some(&ci) = plan.tunnels.get(&(ip.dst, port)) else { return Inbound::NotTunnel };
        let Some(t) = self.tunnels.get_mut(usize::from(ci)).and_then(Option::as_mut) else {
            return Inbound::NotTunnel;
        };
        let Some(d) = udp::datagram(buf, ip) else {
            t.tunnel.count_drop(TunnelDrop::Malformed);
            return Inbound::Drop(TunnelDrop::Malformed);
        };
        let datagram = &buf[d.payload.clone()];
        let r = if handed {
            t.tunnel.receive_handed(d.src, datagram, &mut self.scratch)
        } else {
            t.tunnel.receive(d.src, datagram, &mut self.scratch)
        };
        match r {
            Received::Inner { len, .. } => {
                if len > buf.len() {
                    return Inbound::Drop(TunnelDrop::Malformed);
                }
                buf[..len].copy_from_slice(&self.scratch[..len]);
                Inbound::Inner { len }
            }
            Received::Reply { len } => {
                if udp::HEADERS + len > buf.len() {
                    return Inbound::Drop(TunnelDrop::Malformed);
                }
                buf[udp::HEADERS..udp::HEADERS + len].copy_from_slice(&self.scratch[..len]);
                Inbound::Reply { len: udp::emit(buf, t.address, d.src, len) }
            }
            Received::Consumed => Inbound::Consumed,
            Received::Drop(r) => Inbound::Drop(r),
            Received::Elsewhere { worker } => Inbound::Elsewhere { worker },
        }
    }

    /// Encrypts `buf[..len]`, a packet for a tunnelled pod, to the pod's
    /// peer; the datagram replaces it.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Outbound {
        let Some(plan) = &self.plan else { return Outbound::Drop(TunnelDrop::NoSession) };
        let len = len.min(buf.len());
        // The NAT core hands whole IPv4 packets; anything else is dropped
        // here rather than read past.
        let Ok(ip) = crate::wire::Ipv4Packet::new_checked(&buf[..len]) else {
            return Outbound::Drop(TunnelDrop::Malformed);
        };
        let pod = ip.dst_addr();
        let owner = owner_of(u32::from(pod), self.workers);
        if owner != self.worker {
            return Outbound::Elsewhere { worker: owner };
        }
        let Some(ci) = plan.pods.get(&u32::from(pod)).map(|p| p.config) else {
            return Outbound::Drop(TunnelDrop::NoSession);
        };
        let Some(t) = self.tunnels.get_mut(usize::from(ci)).and_then(Option::as_mut) else {
            return Outbound::Drop(TunnelDrop::NoSession);
        };
        if udp::HEADERS + len + super::DATA_OVERHEAD > buf.len() {
            t.tunnel.count_drop(TunnelDrop::Malformed);
            return Outbound::Drop(TunnelDrop::Malformed);
        }
        self.scratch[..len].copy_from_slice(&buf[..len]);
        match t.tunnel.send(pod, &self.scratch[..len], &mut buf[udp::HEADERS..]) {
            Some((n, to)) => Outbound::Sealed { len: udp::emit(buf, t.address, to, n), to },
            None => Outbound::Drop(TunnelDrop::NoSession),
        }
    }

    /// Runs the tunnels' timers (about every 250 ms); `emit` gets each
    /// datagram to send (an IPv4 packet).
    pub fn tick(&mut self, mut emit: impl FnMut(&[u8])) {
        let frame = &mut self.frame;
        for t in self.tunnels.iter_mut().flatten() {
            let from = t.address;
            t.tunnel.tick(&mut self.scratch, |d, to| {
                if udp::HEADERS + d.len() <= frame.len() {
                    frame[udp::HEADERS..udp::HEADERS + d.len()].copy_from_slice(d);
                    let n = udp::emit(frame, from, to, d.len());
                    emit(&frame[..n]);
                }
            });
        }
    }

    /// Every config's figures on this worker (never a private key).
    pub fn reports(&self) -> Vec<TunnelReport> {
        let live: Vec<TunnelReport> = self.tunnels.iter().flatten().map(report).collect();
        merge(live.iter().chain(&self.retired))
    }
}

fn report(t: &ConfigTunnel) -> TunnelReport {
    TunnelReport {
        config: t.name.clone(),
        address: Some(t.address),
        public_key: t.tunnel.public_key(),
        counters: t.tunnel.counters().clone(),
        peers: t.tunnel.peer_count(),
        live_peers: t.tunnel.live_peers(),
    }
}

/// The gateway's figures per config: the workers' reports summed (each
/// holds its own share of the peers).
pub fn merge<'a>(reports: impl IntoIterator<Item = &'a TunnelReport>) -> Vec<TunnelReport> {
    let mut out: Vec<TunnelReport> = Vec::new();
    for r in reports {
        match out.iter_mut().find(|x| x.config == r.config) {
            Some(x) => {
                x.counters.add(&r.counters);
                x.peers += r.peers;
                x.live_peers += r.live_peers;
                x.address = x.address.or(r.address);
            }
            None => out.push(r.clone()),
        }
    }
    out.sort_by(|a, b| a.config.cmp(&b.config));
    out
}

fn public_key_text<S: serde::Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&crate::plan::WgKey(*key))
}
