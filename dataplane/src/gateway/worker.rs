//! The poll-mode worker, DPDK l3fwd style: receive a burst, translate it,
//! send the burst, repeat. All per-worker state lives here; nothing is
//! locked on the packet path. Packets that belong to another worker's
//! sessions go to it through a bounded lock-free ring; overflow is counted,
//! never waited for.

use super::nexthop::{Miss, NextHops};
use super::xsk::WorkerIo;
use crate::nat::{NatEngine, ReleaseTo, Side, Time, Verdict};
use crate::plan::CompiledPlan;
use crate::wire::ethernet;
use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xdpilone::xdp::XdpDesc;

pub const BATCH: usize = 64;
pub const HANDOFF_BYTES: usize = 2048;
/// Frames waiting for a TX ring beyond which a worker stops receiving.
const TX_BACKLOG: usize = 512;
/// Frames held while the kernel resolves their next hop (Linux holds up
/// to 101 per neighbour), and how long they wait.
const PENDING_MAX: usize = 256;
const PENDING_MS: u64 = 1000;

/// A translated frame waiting for its next hop's MAC.
#[derive(Clone, Copy)]
struct Pending {
    port: usize,
    addr: u64,
    len: usize,
    dst: u32,
    since_ms: u64,
}

/// A frame on its way to the worker that owns its session.
pub struct Handoff {
    pub buf: Box<[u8; HANDOFF_BYTES]>,
    pub len: u16,
    /// The side it arrived on (0 inside, 1 outside).
    pub side: u8,
}

/// What the gateway itself counts around the NAT core.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IoCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub not_ipv4: u64,
    pub no_route: u64,
    pub no_neighbour: u64,
    pub tx_ring_full: u64,
    pub no_free_frame: u64,
    pub handoff_sent: u64,
    pub handoff_received: u64,
    pub handoff_overflow: u64,
    pub handoff_ring_depth: u64,
}

/// Sessions a worker samples for the control plane's session listing.
pub const SESSION_SAMPLE: usize = 1000;

/// A worker's figures, published a few times a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    pub worker: u16,
    pub plan_version: u64,
    pub sessions: usize,
    #[serde(skip)]
    pub sessions_by_config: Vec<(String, [u64; 3])>,
    pub io: IoCounters,
    pub nat: crate::nat::Counters,
    #[serde(skip)]
    pub ports: Vec<crate::nat::PortUsage>,
    #[serde(skip)]
    pub snapshot: Vec<crate::nat::SessionRecord>,
    #[serde(skip)]
    pub rule_hits: Vec<crate::nat::RuleHits>,
    /// Policy denials not logged because of the log rate limit.
    pub deny_logs_suppressed: u64,
}

impl Serialize for crate::nat::Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("in2out_packets", &self.in2out_packets)?;
        m.serialize_entry("out2in_packets", &self.out2in_packets)?;
        m.serialize_entry("in2out_bytes", &self.in2out_bytes)?;
        m.serialize_entry("out2in_bytes", &self.out2in_bytes)?;
        m.serialize_entry("hairpin_packets", &self.hairpin_packets)?;
        m.serialize_entry("bypass_packets", &self.bypass_packets)?;
        m.serialize_entry("handoffs", &self.handoffs)?;
        m.serialize_entry("sessions_created", &self.sessions_created)?;
        m.serialize_entry("sessions_closed", &self.sessions_closed)?;
        m.serialize_entry("icmp_errors_sent", &self.icmp_errors_sent)?;
        m.serialize_entry("fragments_translated", &self.fragments_translated)?;
        m.serialize_entry("fragments_held", &self.fragments_held)?;
        m.serialize_entry("dns_untrusted", &self.dns_untrusted)?;
        m.serialize_entry("pool_scans", &self.pool_scans)?;
        m.serialize_entry("fragments_made", &self.fragments_made)?;
        let drops: std::collections::BTreeMap<&str, u64> =
            crate::nat::DropReason::ALL.iter().map(|r| (r.name(), self.dropped(*r))).collect();
        m.serialize_entry("drops", &drops)?;
        m.end()
    }
}

pub struct Worker {
    pub index: u16,
    pub io: WorkerIo,
    pub engine: NatEngine,
    /// Port index for each side: `[inside, outside]` (the same in one-armed mode).
    pub side_port: [usize; 2],
    pub inbox: Arc<ArrayQueue<Handoff>>,
    pub peers: Vec<Arc<ArrayQueue<Handoff>>>,
    pub pool: Arc<ArrayQueue<Box<[u8; HANDOFF_BYTES]>>>,
    pub nexthops: Arc<NextHops>,
    pub plan: Arc<ArcSwap<CompiledPlan>>,
    pub stop: Arc<AtomicBool>,
    pub report: Arc<Mutex<WorkerReport>>,
    /// Poll-loop turns, for the watchdog.
    pub heartbeat: Arc<std::sync::atomic::AtomicU64>,
    /// How often the session snapshot in the report is refreshed.
    pub snapshot_every: Duration,
    /// Whether the snapshot holds every session (a state file saves them)
    /// or a sample of [`SESSION_SAMPLE`] for the control plane: copying
    /// millions of sessions only to show a thousand would stall the loop.
    pub full_snapshots: Arc<AtomicBool>,
    pub epoch: Instant,
    pub io_counters: IoCounters,
    tx: Vec<Vec<XdpDesc>>,
    pending: Vec<Pending>,
    /// Deny log lines left this second, and the second they count for.
    deny_log_budget: (u64, u32),
    deny_logs_suppressed: u64,
}

/// Policy denials logged per worker per second; the rest are counted.
const DENY_LOGS_PER_SEC: u32 = 20;

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u16,
        io: WorkerIo,
        engine: NatEngine,
        side_port: [usize; 2],
        inbox: Arc<ArrayQueue<Handoff>>,
        peers: Vec<Arc<ArrayQueue<Handoff>>>,
        pool: Arc<ArrayQueue<Box<[u8; HANDOFF_BYTES]>>>,
        nexthops: Arc<NextHops>,
        plan: Arc<ArcSwap<CompiledPlan>>,
        stop: Arc<AtomicBool>,
        epoch: Instant,
    ) -> Worker {
        let tx = (0..io.ports.len()).map(|_| Vec::with_capacity(4 * TX_BACKLOG)).collect();
        Worker {
            index,
            io,
            engine,
            side_port,
            inbox,
            peers,
            pool,
            nexthops,
            plan,
            stop,
            report: Arc::new(Mutex::new(WorkerReport::default())),
            heartbeat: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            snapshot_every: Duration::from_secs(10),
            full_snapshots: Arc::new(AtomicBool::new(true)),
            epoch,
            io_counters: IoCounters::default(),
            tx,
            pending: Vec::with_capacity(PENDING_MAX),
            deny_log_budget: (0, DENY_LOGS_PER_SEC),
            deny_logs_suppressed: 0,
        }
    }

    fn now(&self) -> Time {
        Time::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// The poll loop; returns when `stop` is set, with a last report
    /// (including the session snapshot) published.
    pub fn run(mut self) -> NatEngine {
        let mut rx: Vec<XdpDesc> = Vec::with_capacity(BATCH);
        let mut idle = 0u32;
        let mut last_report = Instant::now();
        let mut last_snapshot = Instant::now();
        let fds: Vec<libc::pollfd> = (0..self.io.ports.len())
            .map(|p| libc::pollfd { fd: self.io.socket_fd(p), events: libc::POLLIN, revents: 0 })
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            let now = self.now();
            let plan = self.plan.load();
            if !Arc::ptr_eq(&plan, self.engine.plan()) {
                self.engine.apply_plan(Arc::clone(&plan), now);
            }
            let mut work = 0;
            for port in 0..self.io.ports.len() {
                self.io.service(port);
                rx.clear();
                // Backpressure: while a TX backlog waits, leave packets in
                // the kernel's RX ring rather than drop them here.
                if self.tx.iter().all(|t| t.len() < TX_BACKLOG) {
                    self.io.receive(port, &mut rx, BATCH as u32);
                }
                work += rx.len();
                self.io_counters.rx_packets += rx.len() as u64;
                if self.engine.prefetch_worthwhile() {
                    for d in &rx {
                        // SAFETY: received descriptors are ours until released or sent.
                        let f = unsafe { self.io.frame_mut(d.addr) };
                        if d.len as usize > ethernet::HEADER_LEN {
                            self.engine.prefetch_index(&f[ethernet::HEADER_LEN..d.len as usize]);
                        }
                    }
                    for d in &rx {
                        let f = unsafe { self.io.frame_mut(d.addr) };
                        if d.len as usize > ethernet::HEADER_LEN {
                            self.engine.prefetch_session(&f[ethernet::HEADER_LEN..d.len as usize]);
                        }
                    }
                }
                for d in rx.drain(..) {
                    self.handle(port, d.addr, d.len as usize, now);
                }
            }
            work += self.drain_inbox(now);
            self.drain_released();
            if !self.pending.is_empty() {
                self.retry_pending(now);
            }
            for port in 0..self.io.ports.len() {
                let sent = self.io.transmit(port, &self.tx[port]);
                self.io_counters.tx_packets += sent as u64;
                self.tx[port].drain(..sent);
                if self.tx[port].len() > 2 * TX_BACKLOG {
                    // The kernel is not taking frames at all: shed the oldest.
                    let shed = self.tx[port].len() - TX_BACKLOG;
                    for d in self.tx[port].drain(..shed) {
                        self.io.release(d.addr);
                    }
                    self.io_counters.tx_ring_full += shed as u64;
                }
                work += usize::from(!self.tx[port].is_empty());
            }
            self.engine.expire(now, 256);
            self.log_events();
            if last_report.elapsed() >= Duration::from_millis(250) {
                // Periodic snapshots bound what a crash loses.
                let snap = last_snapshot.elapsed() >= self.snapshot_every;
                self.publish(snap);
                if snap {
                    last_snapshot = Instant::now();
                }
                last_report = Instant::now();
            }
            if work == 0 {
                idle += 1;
                if idle > 256 {
                    // Nothing for a while: sleep in poll() until traffic or 1 ms.
                    let mut f = fds.clone();
                    unsafe { libc::poll(f.as_mut_ptr(), f.len() as libc::nfds_t, 1) };
                }
            } else {
                idle = 0;
            }
        }
        self.publish(true);
        self.engine
    }

    fn publish(&mut self, with_snapshot: bool) {
        let now = self.now();
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.worker = self.index;
        r.plan_version = self.engine.plan().version;
        r.sessions = self.engine.session_count();
        r.sessions_by_config = self.engine.sessions_by_config();
        self.io_counters.handoff_ring_depth = self.inbox.len() as u64;
        r.io = self.io_counters.clone();
        r.nat = self.engine.counters().clone();
        r.ports = self.engine.port_usage();
        r.rule_hits = self.engine.rule_hits();
        r.deny_logs_suppressed = self.deny_logs_suppressed;
        if with_snapshot {
            let limit = if self.full_snapshots.load(Ordering::Relaxed) { usize::MAX } else { SESSION_SAMPLE };
            r.snapshot = self.engine.snapshot_at_most(now, limit);
        }
    }

    fn log_events(&mut self) {
        let sec = self.epoch.elapsed().as_secs();
        if self.deny_log_budget.0 != sec {
            self.deny_log_budget = (sec, DENY_LOGS_PER_SEC);
        }
        let events: Vec<_> = self.engine.take_deny_events().collect();
        for e in events {
            if self.deny_log_budget.1 == 0 {
                self.deny_logs_suppressed += 1;
                continue;
            }
            self.deny_log_budget.1 -= 1;
            tracing::info!(target: "egret::policy", pod = %e.pod, dst = %e.dst, proto = e.proto, port = e.port,
                config = %e.config, reason = %e.rule.as_deref().map_or("no rule matched".to_string(), |r| format!("denied by rule {r}")),
                "egress denied");
        }
        for e in self.engine.take_nat_events() {
            let event = if e.open { "open" } else { "close" };
            let (pod, egress) = (format!("{}:{}", e.pod, e.pod_port), format!("{}:{}", e.egress, e.egress_port));
            match e.remote {
                Some((a, p)) => tracing::info!(target: "egret::natlog", event = %event, proto = e.proto, pod = %pod,
                    egress = %egress, dst = %format!("{a}:{p}"), at = e.at, "session"),
                None => tracing::info!(target: "egret::natlog", event = %event, proto = e.proto, pod = %pod,
                    egress = %egress, at = e.at, "session"),
            }
        }
    }

    /// Translates one received frame and queues what comes of it.
    fn handle(&mut self, port: usize, addr: u64, len: usize, now: Time) {
        // SAFETY: a received frame is ours until we send or release it.
        let frame = unsafe { self.io.frame_mut(addr) };
        if len < ethernet::HEADER_LEN || ethernet::ethertype(frame) != Some(ethernet::ETHERTYPE_IPV4) {
            self.io_counters.not_ipv4 += 1;
            self.io.release(addr);
            return;
        }
        let (eth, ip) = frame.split_at_mut(ethernet::HEADER_LEN);
        // Two-armed, the port tells the side; one-armed, nothing does.
        let from = if self.side_port[0] == self.side_port[1] {
            None
        } else if port == self.side_port[0] {
            Some(Side::Inside)
        } else {
            Some(Side::Outside)
        };
        match self.engine.process_from(ip, len - ethernet::HEADER_LEN, from, now) {
            Verdict::Forward { side, len } => {
                let out = match side {
                    Side::Inside => self.side_port[0],
                    Side::Outside => self.side_port[1],
                };
                let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
                let p = &self.io.ports[out];
                match self.nexthops.table().lookup(p.ifindex, dst) {
                    Ok(mac) => {
                        eth[0..6].copy_from_slice(&mac);
                        eth[6..12].copy_from_slice(&p.mac);
                        self.tx[out].push(WorkerIo::desc(addr, len + ethernet::HEADER_LEN));
                    }
                    Err(Miss::NoNeighbour(hop)) => {
                        // Hold it while the kernel resolves the next hop,
                        // as the kernel itself would.
                        self.nexthops.request(p.ifindex, hop);
                        if self.pending.len() < PENDING_MAX {
                            let len = len + ethernet::HEADER_LEN;
                            self.pending.push(Pending { port: out, addr, len, dst, since_ms: now.millis() });
                        } else {
                            self.io_counters.no_neighbour += 1;
                            self.io.release(addr);
                        }
                    }
                    Err(Miss::NoRoute) => {
                        self.io_counters.no_route += 1;
                        self.io.release(addr);
                    }
                }
            }
            Verdict::Reply { len } => {
                eth.copy_within(6..12, 0);
                eth[6..12].copy_from_slice(&self.io.ports[port].mac);
                self.tx[port].push(WorkerIo::desc(addr, len + ethernet::HEADER_LEN));
            }
            Verdict::Handoff { worker, from } => {
                self.hand_off(worker, &frame[..len], u8::from(from == Side::Outside));
                self.io.release(addr);
            }
            Verdict::Held | Verdict::Drop(_) => self.io.release(addr),
        }
    }

    /// Sends held frames whose next hop is now known; drops (and counts)
    /// those that waited too long.
    fn retry_pending(&mut self, now: Time) {
        let table = self.nexthops.table();
        let mut i = 0;
        while i < self.pending.len() {
            let p = self.pending[i];
            let port = &self.io.ports[p.port];
            match table.lookup(port.ifindex, p.dst) {
                Ok(mac) => {
                    // SAFETY: a held frame is ours until sent or released.
                    let f = unsafe { self.io.frame_mut(p.addr) };
                    f[0..6].copy_from_slice(&mac);
                    f[6..12].copy_from_slice(&port.mac);
                    self.tx[p.port].push(WorkerIo::desc(p.addr, p.len));
                    self.pending.swap_remove(i);
                }
                Err(_) if now.millis().saturating_sub(p.since_ms) > PENDING_MS => {
                    self.io_counters.no_neighbour += 1;
                    self.io.release(p.addr);
                    self.pending.swap_remove(i);
                }
                Err(_) => i += 1,
            }
        }
    }

    fn hand_off(&mut self, worker: u16, bytes: &[u8], side: u8) {
        let Some(peer) = self.peers.get(usize::from(worker)) else { return };
        if bytes.len() > HANDOFF_BYTES {
            self.io_counters.handoff_overflow += 1;
            return;
        }
        let Some(mut buf) = self.pool.pop() else {
            self.io_counters.handoff_overflow += 1;
            return;
        };
        buf[..bytes.len()].copy_from_slice(bytes);
        match peer.push(Handoff { buf, len: bytes.len() as u16, side }) {
            Ok(()) => self.io_counters.handoff_sent += 1,
            Err(h) => {
                let _ = self.pool.push(h.buf);
                self.io_counters.handoff_overflow += 1;
            }
        }
    }

    fn drain_inbox(&mut self, now: Time) -> usize {
        let mut n = 0;
        while n < BATCH {
            let Some(h) = self.inbox.pop() else { break };
            n += 1;
            self.io_counters.handoff_received += 1;
            match self.io.alloc() {
                Some(addr) => {
                    let len = usize::from(h.len);
                    // SAFETY: a frame just taken from the free pool is ours.
                    let f = unsafe { self.io.frame_mut(addr) };
                    f[..len].copy_from_slice(&h.buf[..len]);
                    let port = self.side_port[usize::from(h.side & 1)];
                    self.handle(port, addr, len, now);
                }
                None => self.io_counters.no_free_frame += 1,
            }
            let _ = self.pool.push(h.buf);
        }
        n
    }

    /// Sends the out-of-order fragments the engine released.
    fn drain_released(&mut self) {
        while let Some(r) = self.engine.take_released() {
            match r.to {
                ReleaseTo::Worker { worker, from } => {
                    let mut f = vec![0u8; ethernet::HEADER_LEN];
                    f[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
                    f.extend_from_slice(&r.bytes);
                    self.hand_off(worker, &f, u8::from(from == Side::Outside));
                }
                ReleaseTo::Side(side) => {
                    let out = if side == Side::Inside { self.side_port[0] } else { self.side_port[1] };
                    let Some(addr) = self.io.alloc() else {
                        self.io_counters.no_free_frame += 1;
                        continue;
                    };
                    let total = ethernet::HEADER_LEN + r.bytes.len();
                    let dst = u32::from_be_bytes([r.bytes[16], r.bytes[17], r.bytes[18], r.bytes[19]]);
                    let p = &self.io.ports[out];
                    let Ok(mac) = self.nexthops.table().lookup(p.ifindex, dst) else {
                        self.io_counters.no_neighbour += 1;
                        self.io.release(addr);
                        continue;
                    };
                    let src_mac = p.mac;
                    // SAFETY: a frame just taken from the free pool is ours.
                    let f = unsafe { self.io.frame_mut(addr) };
                    if total > f.len() {
                        self.io.release(addr);
                        continue;
                    }
                    f[0..6].copy_from_slice(&mac);
                    f[6..12].copy_from_slice(&src_mac);
                    f[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV4.to_be_bytes());
                    f[ethernet::HEADER_LEN..total].copy_from_slice(&r.bytes);
                    self.tx[out].push(WorkerIo::desc(addr, total));
                }
            }
        }
    }
}
