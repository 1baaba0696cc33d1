//! The tunnel stage of the AKS Static Egress Gateway drop-in: one
//! WireGuard responder per gateway config (kube-egress-gateway gives each
//! StaticGatewayConfiguration one keypair and one UDP port on the ILB
//! frontend address), with a peer per tunnelled pod. Sans-I/O like the NAT
//! core: a datagram and its source in, a verdict out; the worker moves the
//! bytes. The Noise IK handshake, cookies, transport keys, the replay
//! window and the rekey/reject-after timers are boringtun's (`noise::Tunn`,
//! one per peer, behind the config's rate limiter): no cryptography is
//! written here.
//!
//! What this stage adds on top: finding the peer of a datagram (by the
//! receiver index of a data packet, by the initiator's static key of a
//! handshake, which only the private key can reveal), cryptokey routing (a
//! decrypted packet's source must be its peer's pod address), roaming from
//! authenticated datagrams only, resuming a pod's tunnel after a failover
//! or restart (data for a session this node never held, from the pod's own
//! address, makes it start the handshake: see `Tunnel::resume`), and
//! counters for every outcome.

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use hashbrown::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

/// Shared with the NAT engine through the compiled plan.
pub use crate::compiled::{owner_of, PeerConfig, TUNNEL_MTU};

/// Bits of a local session index that name the owning worker (above
/// boringtun's 8 bits of session ring, below the peer slot).
const WORKER_BITS: u32 = 6;
/// Most workers a tunnel can be spread over.
pub const MAX_WORKERS: u16 = 1 << WORKER_BITS;

/// Handshake initiations per second above which the responder answers with
/// cookie replies instead (WireGuard's own DoS defence, whitepaper §5.3).
pub const HANDSHAKES_PER_SEC: u64 = 1000;

/// Resumes (handshakes this gateway starts on unauthenticated data, see
/// `Tunnel::resume`) one config's tunnel on one worker may start per timer
/// tick (about 250 ms): each costs a Diffie-Hellman and an initiation sent,
/// and any VNet host can ask for one by spoofing a pod's address.
pub const RESUMES_PER_TICK: u32 = 64;

/// What became of one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A decrypted inner IPv4 packet of `len` bytes at the start of `out`,
    /// from `pod` (its peer's address, checked).
    Inner { len: usize, pod: Ipv4Addr },
    /// Send the `len` bytes at the start of `out` back to the datagram's
    /// source (a handshake response or a cookie reply).
    Reply { len: usize },
    /// Authenticated and consumed (a keepalive, or nothing to send).
    Consumed,
    /// Dropped; already counted under its reason.
    Drop(TunnelDrop),
    /// The datagram's peer lives on another worker: hand it over (for an
    /// initiation, the rate limiter has already let it through).
    Elsewhere { worker: u16 },
}

crate::counters::reasons! {
    /// Why a datagram was dropped. Each has its own counter.
    pub enum TunnelDrop {
        /// Not a WireGuard message (bad type or length).
        Malformed = "tunnel_malformed",
        /// A handshake from a key that is no peer, or data for no session.
        UnknownPeer = "tunnel_unknown_peer",
        /// MAC, AEAD tag or handshake decryption failed.
        DecryptFailed = "tunnel_decrypt_failed",
        /// A counter already seen or outside the window (replay).
        Replay = "tunnel_replay",
        /// The inner packet's source is not the peer's pod address
        /// (cryptokey routing).
        InnerSourceViolation = "tunnel_inner_source_violation",
        /// Not IPv4 inside (the pod side is IPv4 only).
        NotIpv4 = "tunnel_not_ipv4",
        /// A packet for a tunnelled pod whose peer has no session or endpoint
        /// yet (the pod starts its tunnel; the gateway only resumes one, see `Tunnel::resume`).
        NoSession = "tunnel_no_session",
        /// A message a responder does not take, or one boringtun refused
        /// otherwise (timestamps, expired sessions, under load without source).
        Refused = "tunnel_refused",
        /// Data for no session that would have resumed a pod's tunnel, past
        /// the resume budget of this tick (`RESUMES_PER_TICK`).
        ResumeLimited = "tunnel_resume_limited",
        /// A packet for a pod whose session is being re-established, past the
        /// packets held for it (`HELD_PER_PEER`).
        HeldFull = "tunnel_held_full",
    }
}

crate::counters::counter_set! {
    /// Counters of one config's tunnel on one worker.
    pub struct TunnelCounters {
        /// Handshake initiations answered with a response.
        handshakes_completed,
        /// Cookie replies sent instead, under load.
        cookie_replies,
        rx_packets,
        rx_bytes,
        tx_packets,
        tx_bytes,
        /// Peers whose endpoint moved (roaming, from authenticated datagrams).
        roams,
        /// Handshakes this gateway started to resume a pod's tunnel: data for a
        /// session it does not hold came from the pod's own address (the pod's
        /// session is with a gateway that failed over, or with this one before
        /// a restart).
        resumes,
        /// Packets for a pod held while the handshake that re-establishes its
        /// expired session runs; sent when it completes.
        held_for_handshake,
    }
    drops: TunnelDrop
}

struct Peer {
    tunn: Tunn,
    public_key: [u8; 32],
    pod_ip: Ipv4Addr,
    /// Where its last authenticated datagram came from: replies go there.
    endpoint: Option<SocketAddrV4>,
    /// Packets boringtun holds for this peer until a handshake completes.
    held: u16,
}

/// Packets held per peer while its session is re-established: boringtun's
/// own queue depth, past which it drops without telling.
const HELD_PER_PEER: u16 = 256;

/// The WireGuard responder of one gateway config on one worker: it holds
/// the sessions of the peers this worker owns ([`owner_of`]) and knows the
/// others' keys, to send their datagrams where they belong.
pub struct Tunnel {
    private: StaticSecret,
    public: PublicKey,
    /// Shared by the config's tunnels on every worker: one budget of
    /// handshakes a second for the whole gateway, checked before any DH
    /// work is spent on an initiation.
    limiter: Arc<RateLimiter>,
    /// What each peer's `Tunn` checks again inside `decapsulate`: MACs
    /// only, never a cookie (the budget above is the one that answers with
    /// cookies). One for all peers: a per-peer limiter would answer a
    /// replayed initiation with a cookie of its own.
    macs_only: Arc<RateLimiter>,
    /// Resumes this tick may still start.
    resume_budget: u32,
    worker: u16,
    workers: u16,
    /// Peer slot `i` owns local session indexes `(i << 6 | worker) << 8 ..`.
    peers: Vec<Option<Peer>>,
    by_key: HashMap<[u8; 32], u32>,
    by_pod: HashMap<Ipv4Addr, u32>,
    /// Every peer of the config, this worker's or not: key → pod.
    all_keys: HashMap<[u8; 32], Ipv4Addr>,
    /// Every peer's pod address, this worker's or not (resumes).
    all_pods: HashSet<Ipv4Addr>,
    free: Vec<u32>,
    counters: TunnelCounters,
}

/// A received message's type, as boringtun parsed it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Initiation,
    Response,
    CookieReply,
    Data,
}

/// A handshake response's size; a cookie reply is 64 bytes.
const HANDSHAKE_RESPONSE_LEN: usize = 92;
/// Room boringtun needs in an output buffer whatever it writes (a
/// handshake initiation is 148 bytes).
const MIN_OUT: usize = 148;
/// A data message's header and tag.
pub const DATA_OVERHEAD: usize = 32;
/// A data message's type, its first byte (whitepaper §5.4.6).
const DATA_MESSAGE: u8 = 4;

/// Local indexes carry the peer slot and the worker in their upper 24 bits
/// (boringtun keeps the low 8 for its session ring).
const MAX_PEERS: usize = 1 << (24 - WORKER_BITS);

impl Tunnel {
    /// A responder with this private key and these peers.
    pub fn new(private_key: [u8; 32], peers: &[PeerConfig]) -> Tunnel {
        Tunnel::with_handshake_limit(private_key, peers, HANDSHAKES_PER_SEC)
    }

    /// As `new`, answering with cookies above `per_sec` initiations a second.
    pub fn with_handshake_limit(private_key: [u8; 32], peers: &[PeerConfig], per_sec: u64) -> Tunnel {
        let limiter = Tunnel::limiter(private_key, per_sec);
        Tunnel::for_worker(private_key, peers, limiter, 0, 1)
    }

    /// The rate limiter the config's tunnels on all workers share.
    pub fn limiter(private_key: [u8; 32], per_sec: u64) -> Arc<RateLimiter> {
        let public = PublicKey::from(&StaticSecret::from(private_key));
        Arc::new(RateLimiter::new(&public, per_sec))
    }

    /// The config's responder on worker `worker` of `workers`.
    pub fn for_worker(
        private_key: [u8; 32],
        peers: &[PeerConfig],
        limiter: Arc<RateLimiter>,
        worker: u16,
        workers: u16,
    ) -> Tunnel {
        let private = StaticSecret::from(private_key);
        let public = PublicKey::from(&private);
        let workers = workers.clamp(1, MAX_WORKERS);
        let macs_only = Arc::new(RateLimiter::new(&public, u64::MAX));
        let mut t = Tunnel {
            private,
            public,
            limiter,
            macs_only,
            resume_budget: RESUMES_PER_TICK,
            worker: worker.min(workers - 1),
            workers,
            peers: Vec::new(),
            by_key: HashMap::new(),
            by_pod: HashMap::new(),
            all_keys: HashMap::new(),
            all_pods: HashSet::new(),
            free: Vec::new(),
            counters: TunnelCounters::default(),
        };
        t.set_peers(peers);
        t
    }

    fn mine(&self, pod: Ipv4Addr) -> bool {
        owner_of(u32::from(pod), self.workers) == self.worker
    }

    /// The public key pods are configured with.
    pub fn public_key(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    pub fn counters(&self) -> &TunnelCounters {
        &self.counters
    }

    /// Peers this worker holds sessions for.
    pub fn peer_count(&self) -> usize {
        self.by_key.len()
    }

    /// Makes the peer set exactly `peers`: peers that stay keep their
    /// sessions and endpoints, a peer whose pod address changed keeps its
    /// session under the new address, the others come and go.
    pub fn set_peers(&mut self, peers: &[PeerConfig]) {
        self.all_keys = peers.iter().map(|p| (p.public_key, p.pod_ip)).collect();
        self.all_pods = peers.iter().map(|p| p.pod_ip).collect();
        // A peer whose pod moved to another worker's share goes, and comes
        // back there: it re-handshakes, as after a gateway restart.
        let want: HashMap<[u8; 32], Ipv4Addr> =
            peers.iter().filter(|p| self.mine(p.pod_ip)).map(|p| (p.public_key, p.pod_ip)).collect();
        let gone: Vec<[u8; 32]> = self.by_key.keys().filter(|k| !want.contains_key(*k)).copied().collect();
        for k in gone {
            if let Some(slot) = self.by_key.remove(&k) {
                if let Some(p) = self.peers[slot as usize].take() {
                    self.by_pod.remove(&p.pod_ip);
                }
                self.free.push(slot);
            }
        }
        for (key, pod_ip) in want {
            if let Some(&slot) = self.by_key.get(&key) {
                self.peers[slot as usize].as_mut().expect("indexed peer").pod_ip = pod_ip;
                continue;
            }
            let slot = match self.free.pop() {
                Some(s) => s,
                None if self.peers.len() < MAX_PEERS => {
                    self.peers.push(None);
                    (self.peers.len() - 1) as u32
                }
                None => continue,
            };
            let index = slot << WORKER_BITS | u32::from(self.worker);
            let limiter = Some(Arc::clone(&self.macs_only));
            let tunn = Tunn::new(self.private.clone(), PublicKey::from(key), None, None, index, limiter);
            self.peers[slot as usize] = Some(Peer { tunn, public_key: key, pod_ip, endpoint: None, held: 0 });
            self.by_key.insert(key, slot);
        }
        // Rebuilt whole, not patched peer by peer: two peers trading pod
        // addresses would otherwise remove each other's entries, in
        // whatever order the map yields them.
        self.by_pod.clear();
        for (slot, p) in self.peers.iter().enumerate() {
            if let Some(p) = p {
                self.by_pod.insert(p.pod_ip, slot as u32);
            }
        }
    }

    /// Takes one datagram that arrived for this config's port from `src`;
    /// whatever is to be sent or delivered is written to `out`.
    pub fn receive(&mut self, src: SocketAddrV4, datagram: &[u8], out: &mut [u8]) -> Received {
        self.receive_checked(src, datagram, out, false)
    }

    /// As `receive`, for a datagram another worker handed over: its
    /// initiation already passed the (shared) rate limiter once.
    pub fn receive_handed(&mut self, src: SocketAddrV4, datagram: &[u8], out: &mut [u8]) -> Received {
        self.receive_checked(src, datagram, out, true)
    }

    /// The worker a local session index belongs to, and the peer slot there.
    fn split_index(&self, receiver_idx: u32) -> Result<u32, Received> {
        let tag = receiver_idx >> 8;
        let worker = (tag & (u32::from(MAX_WORKERS) - 1)) as u16;
        if worker >= self.workers {
            return Err(Received::Drop(TunnelDrop::UnknownPeer));
        }
        if worker != self.worker {
            return Err(Received::Elsewhere { worker });
        }
        Ok(tag >> WORKER_BITS)
    }

    fn receive_checked(&mut self, src: SocketAddrV4, datagram: &[u8], out: &mut [u8], limited: bool) -> Received {
        // boringtun writes at most the datagram's size (or a 92-byte
        // response, or a 64-byte cookie) and panics on less room.
        if out.len() < datagram.len().max(MIN_OUT) {
            return self.drop(TunnelDrop::Malformed);
        }
        let (slot, kind) = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => return self.drop(TunnelDrop::Malformed),
            Ok(Packet::HandshakeInit(init)) => {
                // MACs (and, under load, the cookie) before any DH work.
                if !limited {
                    match self.limiter.verify_packet(Some(IpAddr::V4(*src.ip())), datagram, out) {
                        Ok(_) => {}
                        Err(TunnResult::WriteToNetwork(cookie)) => {
                            self.counters.cookie_replies += 1;
                            return Received::Reply { len: cookie.len() };
                        }
                        Err(TunnResult::Err(e)) => return self.drop(classify(&e)),
                        Err(_) => return self.drop(TunnelDrop::Refused),
                    }
                }
                let Ok(half) = parse_handshake_anon(&self.private, &self.public, &init) else {
                    return self.drop(TunnelDrop::DecryptFailed);
                };
                match self.by_key.get(&half.peer_static_public) {
                    Some(&slot) => (slot, Kind::Initiation),
                    None => match self.all_keys.get(&half.peer_static_public) {
                        Some(&pod) => return Received::Elsewhere { worker: owner_of(u32::from(pod), self.workers) },
                        None => return self.drop(TunnelDrop::UnknownPeer),
                    },
                }
            }
            Ok(Packet::PacketData(d)) => (d.receiver_idx, Kind::Data),
            Ok(Packet::HandshakeResponse(r)) => (r.receiver_idx, Kind::Response),
            Ok(Packet::PacketCookieReply(c)) => (c.receiver_idx, Kind::CookieReply),
        };
        let (initiation, data) = (kind == Kind::Initiation, kind == Kind::Data);
        let slot = if initiation {
            slot
        } else {
            match self.split_index(slot) {
                Ok(s) => s,
                // Handed already: its session index names another worker,
                // but its pod is ours (a session this gateway never held).
                Err(Received::Elsewhere { .. }) if data && limited && self.by_pod.contains_key(src.ip()) => {
                    return self.resume(src, out);
                }
                // An index no worker here hands out (the other gateway ran more).
                Err(Received::Drop(_)) if data => return self.resume(src, out),
                Err(Received::Drop(r)) => return self.drop(r),
                Err(other) => return other,
            }
        };
        let Some(peer) = self.peers.get_mut(slot as usize).and_then(Option::as_mut) else {
            return if data { self.resume(src, out) } else { self.drop(TunnelDrop::UnknownPeer) };
        };
        // Whether the datagram proved it came from the peer: a completed
        // handshake or data that decrypted. A cookie reply, sent or taken,
        // proves nothing (anyone can replay a pod's initiation).
        let mut authenticated = true;
        let verdict = match peer.tunn.decapsulate(Some(IpAddr::V4(*src.ip())), datagram, out) {
            TunnResult::WriteToNetwork(reply) => {
                let len = reply.len();
                match (kind, len) {
                    (Kind::Initiation, HANDSHAKE_RESPONSE_LEN) => self.counters.handshakes_completed += 1,
                    (Kind::Initiation, _) => {
                        self.counters.cookie_replies += 1;
                        authenticated = false;
                    }
                    // A response to a handshake this gateway started (a
                    // resume), answered with a keepalive.
                    (Kind::Response, _) => self.counters.handshakes_completed += 1,
                    _ => {}
                }
                Received::Reply { len }
            }
            TunnResult::WriteToTunnelV4(packet, from) => {
                if from != peer.pod_ip {
                    return self.drop(TunnelDrop::InnerSourceViolation);
                }
                self.counters.rx_packets += 1;
                self.counters.rx_bytes += packet.len() as u64;
                Received::Inner { len: packet.len(), pod: from }
            }
            TunnResult::WriteToTunnelV6(..) => return self.drop(TunnelDrop::NotIpv4),
            TunnResult::Done => {
                authenticated = kind == Kind::Data;
                Received::Consumed
            }
            TunnResult::Err(e) if data && classify(&e) == TunnelDrop::UnknownPeer => {
                return self.resume(src, out);
            }
            TunnResult::Err(e) => return self.drop(classify(&e)),
        };
        // Authenticated: the peer is where this came from (roaming).
        let peer = self.peers[slot as usize].as_mut().expect("peer just used");
        if authenticated && peer.endpoint != Some(src) {
            if peer.endpoint.is_some() {
                self.counters.roams += 1;
            }
            peer.endpoint = Some(src);
        }
        verdict
    }

    /// Encrypts `inner` (an IPv4 packet for `pod`) to the pod's peer; the
    /// datagram is written to `out`, to be sent to the returned endpoint.
    /// With its session expired, the packet is held until the handshake
    /// this starts completes (`out` then holds the initiation, or `None`
    /// while one is already under way); `tick` sends what was held.
    /// `None` too: no peer for that pod, or it has no endpoint yet (the
    /// gateway starts a handshake only to resume a tunnel whose pod it has
    /// heard from: it knows no endpoint before that).
    pub fn send(&mut self, pod: Ipv4Addr, inner: &[u8], out: &mut [u8]) -> Option<(usize, SocketAddrV4)> {
        if out.len() < (inner.len() + DATA_OVERHEAD).max(MIN_OUT) {
            self.counters.drop(TunnelDrop::Malformed);
            return None;
        }
        let Some(peer) = self.by_pod.get(&pod).and_then(|&slot| self.peers[slot as usize].as_mut()) else {
            return self.no_send(TunnelDrop::NoSession);
        };
        let Some(endpoint) = peer.endpoint else { return self.no_send(TunnelDrop::NoSession) };
        // Asked of the session only at the cap (it reads the clock): this is
        // the per-packet path.
        if peer.held >= HELD_PER_PEER && peer.tunn.time_since_last_handshake().is_none() {
            return self.no_send(TunnelDrop::HeldFull);
        }
        // Without a session boringtun holds the packet and answers with an
        // initiation (or nothing, one being under way); with one, the packet
        // is a data message.
        let (sent, live) = match peer.tunn.encapsulate(inner, out) {
            TunnResult::WriteToNetwork(d) => (Some((d.len(), endpoint)), d.first() == Some(&DATA_MESSAGE)),
            _ => (None, false),
        };
        if live {
            self.counters.tx_packets += 1;
            self.counters.tx_bytes += inner.len() as u64;
        } else {
            peer.held += 1;
            self.counters.held_for_handshake += 1;
        }
        sent
    }

    fn no_send(&mut self, r: TunnelDrop) -> Option<(usize, SocketAddrV4)> {
        self.counters.drop(r);
        None
    }

    /// Runs every peer's timers (call about every 250 ms) and the rate
    /// limiter's second; `emit` gets each datagram to send (keepalives,
    /// rekeys) and its endpoint.
    /// Sends the packets held for a peer whose handshake completed.
    pub fn tick(&mut self, out: &mut [u8], mut emit: impl FnMut(&[u8], SocketAddrV4)) {
        self.limiter.reset_count();
        self.resume_budget = RESUMES_PER_TICK;
        if out.len() < MIN_OUT {
            return;
        }
        for peer in self.peers.iter_mut().flatten() {
            if let TunnResult::WriteToNetwork(d) = peer.tunn.update_timers(out) {
                if let Some(ep) = peer.endpoint {
                    emit(d, ep);
                }
            }
            // Held packets go once there is a session to seal them with (a
            // flush without one would only turn the queue around).
            if peer.held > 0 && peer.tunn.time_since_last_handshake().is_some() {
                let Some(ep) = peer.endpoint else { continue };
                for _ in 0..=HELD_PER_PEER {
                    match peer.tunn.decapsulate(None, &[], out) {
                        TunnResult::WriteToNetwork(d) => {
                            self.counters.tx_packets += 1;
                            self.counters.tx_bytes += d.len().saturating_sub(DATA_OVERHEAD) as u64;
                            emit(d, ep);
                        }
                        _ => break,
                    }
                }
                peer.held = 0;
            }
        }
    }

    /// Peers with a live session (handshake within the reject-after time).
    pub fn live_peers(&self) -> usize {
        self.peers.iter().flatten().filter(|p| p.tunn.time_since_last_handshake().is_some()).count()
    }

    /// The peer public keys, for reports (never the private key).
    pub fn peer_keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.peers.iter().flatten().map(|p| &p.public_key)
    }

    /// A data message for a session this gateway does not hold: counted as
    /// `UnknownPeer`, and if it comes from the address of one of the
    /// config's pods, this gateway starts a handshake with that pod's peer
    /// (sent back to where the datagram came from), so the tunnel resumes in
    /// a round trip instead of after the pod's own 15 s timeout (WireGuard's
    /// keepalive + rekey timeouts). That is what a failover to this node, or
    /// a restart of it, looks like. A spoofed datagram buys at most one
    /// initiation per peer while one is in progress (boringtun resends it
    /// every 5 s for up to 90 s), sent to the pod's own address only; the
    /// pod answers only if it holds the config's key as its peer.
    fn resume(&mut self, src: SocketAddrV4, out: &mut [u8]) -> Received {
        let pod = *src.ip();
        let Some(&slot) = self.by_pod.get(&pod) else {
            // Another worker owns the pod's peer: there the datagram ends
            // (its pod is that worker's), so it travels at most twice.
            return match self.all_pods.contains(&pod) {
                true => Received::Elsewhere { worker: owner_of(u32::from(pod), self.workers) },
                false => self.drop(TunnelDrop::UnknownPeer),
            };
        };
        if self.resume_budget == 0 {
            return self.drop(TunnelDrop::ResumeLimited);
        }
        // The datagram itself is dropped either way.
        self.counters.drop(TunnelDrop::UnknownPeer);
        let peer = self.peers[slot as usize].as_mut().expect("indexed peer");
        match peer.tunn.format_handshake_initiation(out, false) {
            TunnResult::WriteToNetwork(init) => {
                let len = init.len();
                // Where boringtun's timers resend it if it is lost.
                peer.endpoint.get_or_insert(src);
                self.counters.resumes += 1;
                self.resume_budget -= 1;
                Received::Reply { len }
            }
            _ => Received::Drop(TunnelDrop::UnknownPeer),
        }
    }

    /// Counts a drop the stage around the tunnel decided.
    pub fn count_drop(&mut self, r: TunnelDrop) {
        self.counters.drop(r);
    }

    fn drop(&mut self, r: TunnelDrop) -> Received {
        self.counters.drop(r);
        Received::Drop(r)
    }
}

fn classify(e: &WireGuardError) -> TunnelDrop {
    match e {
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => TunnelDrop::Replay,
        WireGuardError::InvalidMac | WireGuardError::InvalidAeadTag | WireGuardError::WrongKey => {
            TunnelDrop::DecryptFailed
        }
        WireGuardError::WrongIndex | WireGuardError::NoCurrentSession => TunnelDrop::UnknownPeer,
        WireGuardError::IncorrectPacketLength | WireGuardError::InvalidPacket | WireGuardError::WrongPacketType => {
            TunnelDrop::Malformed
        }
        _ => TunnelDrop::Refused,
    }
}

pub mod stage;
pub use stage::{Inbound, Outbound, TunnelStage};

#[cfg(test)]
mod tests;
