//! The poll-mode worker, DPDK l3fwd style: receive a burst, translate it,
//! send the burst, repeat. All per-worker state lives here; nothing is
//! locked on the packet path. Packets that belong to another worker's
//! sessions go to it through a bounded lock-free ring; overflow is counted,
//! never waited for.

use super::natlog::{DenyLogBudget, LogQueue, LogRecord};
use super::nexthop::{Miss, NextHops, Table};
use super::pod_share::Refused;
use super::rx_bound::RxBound;
use super::xsk::{SocketDrops, WorkerIo};
use crate::nat::CompiledPlan;
use crate::nat::{NatEngine, ReleaseTo, Side, Time};
use crate::pipeline::{self, Entry, Exit};
use crate::tunnel::stage::TunnelReport;
use crate::tunnel::TunnelStage;
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::ipv4;
use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xdpilone::xdp::XdpDesc;

pub use super::rx_bound::BATCH;
pub const HANDOFF_BYTES: usize = 2048;
/// Frames waiting for a TX ring beyond which a worker stops receiving.
const TX_BACKLOG: usize = 512;
/// How long a worker with nothing to do keeps polling its rings before it
/// sleeps in poll().
const SPIN_BEFORE_SLEEP_NS: u64 = 1_000_000;
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

/// A frame on its way to the worker that owns its session or its peer:
/// the one reason to hand over is state another worker owns. It enters
/// that worker's pipeline at the stage it left this one's.
pub struct Handoff {
    pub buf: Box<[u8; HANDOFF_BYTES]>,
    pub len: u16,
    pub entry: Entry,
    /// The side it is taken as arriving from.
    pub from: Side,
}

crate::counters::reasons! {
    /// Why the worker dropped a frame around the NAT core.
    pub enum IoDrop {
        /// Not an IPv4 frame (ARP and IPv6 are the kernel's).
        NotIpv4 = "not_ipv4",
        /// No route toward the destination.
        NoRoute = "no_route",
        /// The next hop's MAC is not known (yet).
        NoNeighbour = "no_neighbour",
        /// The TX ring stayed full; the backlog beyond its bound was shed.
        TxRingFull = "tx_ring_full",
        /// No free UMEM frame to copy into.
        NoFreeFrame = "no_free_frame",
        /// The owning worker's handoff ring, or the frame pool, was full.
        HandoffOverflow = "handoff_overflow",
        /// A tunnel datagram not yet authenticated (handed on by its receiver
        /// index or key alone) found the owner's ring past the half such
        /// datagrams may fill: a VNet host cannot crowd out the handoffs of
        /// flows.
        HandoffUnauthenticatedShare = "handoff_unauthenticated_share",
        /// Lost in the kernel before the worker saw it: the AF_XDP socket
        /// had no fill-ring buffer for the frame.
        SocketNoBuffer = "socket_no_buffer",
        /// Lost in the kernel: the AF_XDP socket's RX ring was full (the
        /// worker fell behind).
        SocketRxRingFull = "socket_rx_ring_full",
        /// Descriptors the kernel refused on an AF_XDP ring.
        SocketInvalidDesc = "socket_invalid_desc",
        /// Shed unread from the head of an RX ring whose queue stood above
        /// the latency budget (`umem.rx_latency_budget_us`) for an interval.
        RxLatencyShed = "rx_latency_shed",
    }
}

crate::counters::counter_set! {
    /// What the gateway itself counts around the NAT core.
    pub struct IoCounters {
        rx_packets,
        tx_packets,
        handoff_sent,
        handoff_received,
        /// A gauge: frames waiting in this worker's handoff ring.
        handoff_ring_depth,
        /// Tunnel datagrams and packets for tunnelled pods handed to their
        /// peer's worker.
        tunnel_handoffs,
        /// NAT and deny log records dropped: the log thread fell behind.
        log_records_lost,
        /// Log records left out because their pod's share of the log
        /// queue (a sixteenth) was full.
        log_records_over_share,
        /// NAT events the IPFIX exporter's queue had no room for.
        ipfix_records_lost,
        /// NAT events left out of the IPFIX queue because their pod's share
        /// of it (a sixteenth) was full.
        ipfix_records_over_share,
        /// ECN-capable frames the RX latency bound's control law marked
        /// Congestion Experienced and forwarded instead of dropping them.
        rx_latency_marked,
    }
    drops: IoDrop
}

/// Sessions a worker samples for the control plane's session listing.
pub const SESSION_SAMPLE: usize = 1000;
/// Session table slots a periodic snapshot copies per turn of the loop:
/// about half a millisecond here, so a snapshot of 4M sessions spreads
/// over a thousand turns instead of stalling one for half a second.
const SNAPSHOT_SLOTS_PER_TURN: usize = 4096;
/// Session and mapping slots a plan change checks per turn (about 40 ns
/// each: a turn's share well under a millisecond).
const REPLAN_SLOTS_PER_TURN: usize = 8192;

/// A periodic session snapshot taken a step a turn.
struct SnapshotInProgress {
    next_slot: usize,
    records: Vec<crate::nat::SessionRecord>,
    limit: usize,
}

/// A worker's figures, published a few times a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    pub worker: u16,
    pub plan_version: u64,
    pub sessions: usize,
    /// Session slots in use (live and cooling) and the table's capacity:
    /// a new flow is refused once they meet.
    pub session_slots: usize,
    pub session_capacity: usize,
    /// Poll-loop turns since start: a worker whose count stops has hung.
    pub turns: u64,
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
    #[serde(skip)]
    pub network_policy_denials: Vec<crate::nat::NetworkPolicyDenials>,
    /// Policy denials not logged because of the log rate limit.
    pub deny_logs_suppressed: u64,
    #[serde(skip)]
    pub tunnels: Vec<TunnelReport>,
    /// Port reuse: the destinations whose tuples ran scarcest.
    #[serde(skip)]
    pub busy_destinations: Vec<crate::nat::BusyDestination>,
    /// Flows awaiting their name on the wire (TLS SNI, HTTP Host).
    pub name_checks_pending: usize,
}

/// Every worker's figures, copied without the session snapshot: that may
/// hold millions of sessions, and a worker waits on this lock to publish.
pub fn read_reports(reports: &[Arc<Mutex<WorkerReport>>]) -> Vec<WorkerReport> {
    reports
        .iter()
        .map(|r| {
            let mut g = r.lock().unwrap_or_else(|e| e.into_inner());
            let snapshot = std::mem::take(&mut g.snapshot);
            let copy = g.clone();
            g.snapshot = snapshot;
            copy
        })
        .collect()
}

/// One egress address's ports (in one config), summed over workers.
#[derive(Debug, Default)]
pub struct PortTotals {
    /// Ports held by endpoint-independent mappings, per protocol.
    pub mapped: [u64; 3],
    /// Port-reuse sessions.
    pub sessions: u64,
    /// Ports the workers' slices hold, per protocol.
    pub slice: u64,
    /// New flows refused for want of a port, per protocol.
    pub refused: [u64; 3],
}

/// The workers' port usage by (egress address, config): what `/metrics`
/// and the control plane's report both show.
pub fn ports_by_address(
    reports: &[WorkerReport],
) -> std::collections::BTreeMap<(std::net::Ipv4Addr, String), PortTotals> {
    let mut ports: std::collections::BTreeMap<_, PortTotals> = Default::default();
    for u in reports.iter().flat_map(|r| &r.ports) {
        let e = ports.entry((u.addr, u.config.clone())).or_default();
        for i in 0..3 {
            e.mapped[i] += u64::from(u.mapped[i]);
            e.refused[i] += u.refused[i];
        }
        e.sessions += u64::from(u.sessions);
        e.slice += u64::from(u.slice);
    }
    ports
}

/// Up to `n` sessions of the workers' latest snapshots.
pub fn sample_sessions(reports: &[Arc<Mutex<WorkerReport>>], n: usize) -> Vec<crate::nat::SessionRecord> {
    let mut out = Vec::with_capacity(n);
    for r in reports {
        let g = r.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(g.snapshot.iter().take(n - out.len()).cloned());
    }
    out
}

/// What every worker shares, built once before any starts.
#[derive(Clone)]
pub struct WorkerShared {
    /// Each worker's handoff inbox, by worker index.
    pub inboxes: Vec<Arc<ArrayQueue<Handoff>>>,
    pub pool: Arc<ArrayQueue<Box<[u8; HANDOFF_BYTES]>>>,
    pub nexthops: Arc<NextHops>,
    pub plan: Arc<ArcSwap<CompiledPlan>>,
    pub stop: Arc<AtomicBool>,
    /// Whether snapshots hold every session (see [`Worker::full_snapshots`]).
    pub full_snapshots: Arc<AtomicBool>,
    pub log: LogQueue,
    /// Whether session events go to the journal NAT log (`[nat_log]`).
    pub journal_sessions: bool,
    /// The IPFIX exporter's queue, when `[ipfix]` is configured.
    pub ipfix: Option<super::ipfix::IpfixQueue>,
    pub epoch: Instant,
}

/// One worker's fixed settings, filled before its loop starts (DPDK
/// l3fwd's `lcore_conf`).
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub index: u16,
    /// Port index for each side: `[inside, outside]` (the same in one-armed mode).
    pub side_port: [usize; 2],
    /// How often the session snapshot in the report is refreshed.
    pub snapshot_every: Duration,
    /// How long a frame may wait in an RX ring (0: no bound).
    pub rx_latency_budget_us: u32,
}

pub struct Worker {
    pub index: u16,
    pub io: WorkerIo,
    pub engine: NatEngine,
    pub tunnels: TunnelStage,
    /// Port index for each side: `[inside, outside]` (the same in one-armed mode).
    pub side_port: [usize; 2],
    pub inbox: Arc<ArrayQueue<Handoff>>,
    pub peers: Vec<Arc<ArrayQueue<Handoff>>>,
    pub pool: Arc<ArrayQueue<Box<[u8; HANDOFF_BYTES]>>>,
    pub nexthops: Arc<NextHops>,
    /// The next-hop table as of this turn's start (one load a turn, not
    /// one a packet).
    routes: Arc<Table>,
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
    log: LogQueue,
    /// A periodic snapshot being taken across turns.
    snapshot_building: Option<SnapshotInProgress>,
    journal_sessions: bool,
    ipfix: Option<super::ipfix::IpfixQueue>,
    pub io_counters: IoCounters,
    tx: Vec<Vec<XdpDesc>>,
    pending: Vec<Pending>,
    /// Deny log lines left this second, each pod's share of them.
    deny_log_budget: DenyLogBudget,
    deny_logs_suppressed: u64,
    /// The sockets' kernel drop counts as last read (they are cumulative).
    socket_drops: SocketDrops,
    rx_bound: RxBound,
}

/// Counts a record a shared queue refused, by why: the queue full, or
/// the pod's share of it.
fn count_refused(r: Result<(), Refused>, full: &mut u64, over_share: &mut u64) {
    match r {
        Ok(()) => {}
        Err(Refused::Full) => *full += 1,
        Err(Refused::PodShare) => *over_share += 1,
    }
}

impl Worker {
    pub fn new(
        conf: WorkerConfig,
        io: WorkerIo,
        engine: NatEngine,
        tunnels: TunnelStage,
        shared: &WorkerShared,
    ) -> Worker {
        let io_ports = io.ports.len();
        let tx = (0..io_ports).map(|_| Vec::with_capacity(4 * TX_BACKLOG)).collect();
        let shared = shared.clone();
        Worker {
            index: conf.index,
            io,
            engine,
            tunnels,
            side_port: conf.side_port,
            inbox: Arc::clone(&shared.inboxes[usize::from(conf.index)]),
            peers: shared.inboxes,
            pool: shared.pool,
            routes: shared.nexthops.current(),
            nexthops: shared.nexthops,
            plan: shared.plan,
            stop: shared.stop,
            report: Arc::new(Mutex::new(WorkerReport::default())),
            heartbeat: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            snapshot_every: conf.snapshot_every,
            full_snapshots: shared.full_snapshots,
            epoch: shared.epoch,
            log: shared.log,
            snapshot_building: None,
            journal_sessions: shared.journal_sessions,
            ipfix: shared.ipfix,
            io_counters: IoCounters::default(),
            tx,
            pending: Vec::with_capacity(PENDING_MAX),
            deny_log_budget: DenyLogBudget::default(),
            deny_logs_suppressed: 0,
            socket_drops: SocketDrops::default(),
            rx_bound: RxBound::new(conf.rx_latency_budget_us, io_ports),
        }
    }

    fn now(&self) -> Time {
        Time::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// The poll loop; returns when `stop` is set, with a last report
    /// (including the session snapshot) published.
    pub fn run(mut self) -> NatEngine {
        let mut rx: Vec<XdpDesc> = Vec::with_capacity(BATCH);
        // When the last turn that had work began.
        let mut busy_ns = 0u64;
        let mut last_report = Instant::now();
        let mut last_snapshot = Instant::now();
        let fds: Vec<libc::pollfd> = (0..self.io.ports.len())
            .map(|p| libc::pollfd { fd: self.io.socket_fd(p), events: libc::POLLIN, revents: 0 })
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            let elapsed = self.epoch.elapsed();
            let now = Time::from_millis(elapsed.as_millis() as u64);
            let now_ns = elapsed.as_nanos() as u64;
            self.rx_bound.begin_turn(now_ns);
            self.routes = self.nexthops.current();
            // A plan's walk over the sessions goes a bounded step a turn;
            // a newer plan waits for it to end.
            let plan = self.plan.load();
            if !self.engine.replan_step(REPLAN_SLOTS_PER_TURN) && !Arc::ptr_eq(&plan, self.engine.plan()) {
                self.engine.apply_plan(Arc::clone(&plan), now);
                self.tunnels.apply_plan(&plan);
            }
            let mut work = 0;
            for port in 0..self.io.ports.len() {
                self.io.service(port);
                rx.clear();
                let shed = self.io.shed_standing(port, &mut self.rx_bound, now_ns, &mut rx);
                self.io_counters.drop_n(IoDrop::RxLatencyShed, u64::from(shed.shed));
                self.io_counters.rx_latency_marked += u64::from(shed.marked);
                // Backpressure: while a TX backlog waits, leave packets in
                // the kernel's RX ring rather than drop them here.
                if self.tx.iter().all(|t| t.len() < TX_BACKLOG) {
                    self.io.receive(port, &mut rx, BATCH as u32);
                }
                work += rx.len();
                self.rx_bound.received(rx.len());
                self.io_counters.rx_packets += rx.len() as u64;
                self.prefetch_batch(&rx);
                for d in rx.drain(..) {
                    self.handle(port, d.addr, d.len as usize, Entry::Arrived, now);
                }
            }
            work += self.drain_inbox(now);
            self.drain_released(now);
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
                    self.io_counters.drop_n(IoDrop::TxRingFull, shed as u64);
                }
                work += usize::from(!self.tx[port].is_empty());
            }
            self.engine.expire_paced(now);
            self.snapshot_step(now);
            self.log_events();
            if last_report.elapsed() >= Duration::from_millis(250) {
                self.tick_tunnels(now);
                // Periodic snapshots bound what a crash loses.
                if last_snapshot.elapsed() >= self.snapshot_every && self.snapshot_building.is_none() {
                    let limit = if self.full_snapshots.load(Ordering::Relaxed) { usize::MAX } else { SESSION_SAMPLE };
                    // Room up front: a growing vector's copy of millions
                    // of records would be the very pause this avoids.
                    let room = self.engine.session_count().saturating_mul(9) / 8;
                    let records = Vec::with_capacity(room.min(limit));
                    self.snapshot_building = Some(SnapshotInProgress { next_slot: 0, records, limit });
                    last_snapshot = Instant::now();
                }
                self.publish(false);
                last_report = Instant::now();
            }
            if work > 0 {
                busy_ns = now_ns;
            } else if now_ns.saturating_sub(busy_ns) > SPIN_BEFORE_SLEEP_NS {
                // Nothing for a while: sleep in poll() until traffic or 1 ms.
                // Spinning first keeps a wake-up (tens of µs) off every
                // packet of a sparse flow.
                let mut f = fds.clone();
                unsafe { libc::poll(f.as_mut_ptr(), f.len() as libc::nfds_t, 1) };
            }
        }
        self.publish(true);
        self.engine
    }

    /// Starts a received batch's cache misses before any packet of it is
    /// processed, so that they overlap (VPP-style stages): the frames' first
    /// lines, always (the kernel's RX copy wrote them on another core: the
    /// first read of each was 90% of `handle`'s samples at 1k flows); then,
    /// once the sessions outgrow the caches, each packet's flow-index slot,
    /// then its session and a new flow's slots.
    fn prefetch_batch(&self, rx: &[XdpDesc]) {
        for d in rx {
            self.io.prefetch_frame(d.addr + ethernet::HEADER_LEN as u64);
        }
        if !self.engine.prefetch_worthwhile() {
            return;
        }
        let packets = || {
            rx.iter().filter(|d| d.len as usize > ethernet::HEADER_LEN).map(|d| {
                // SAFETY: received descriptors are ours until released or
                // sent; the frames are only read here.
                let f = unsafe { self.io.frame_mut(d.addr) };
                &f[ethernet::HEADER_LEN..d.len as usize]
            })
        };
        packets().for_each(|p| self.engine.prefetch_index(p));
        packets().for_each(|p| self.engine.prefetch_session(p));
        self.engine.prefetch_new_flows();
    }

    /// Advances a periodic session snapshot by one bounded step (a whole
    /// one of millions of sessions would stall forwarding for hundreds of
    /// ms); the report gets it once it is complete.
    fn snapshot_step(&mut self, now: Time) {
        let Some(b) = &mut self.snapshot_building else { return };
        if let Some(next) =
            self.engine.snapshot_step(b.next_slot, SNAPSHOT_SLOTS_PER_TURN, b.limit, now, &mut b.records)
        {
            b.next_slot = next;
            return;
        }
        let Some(done) = self.snapshot_building.take() else { return };
        self.report.lock().unwrap_or_else(|e| e.into_inner()).snapshot = done.records;
    }

    fn publish(&mut self, with_snapshot: bool) {
        let now = self.now();
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.worker = self.index;
        r.plan_version = self.engine.plan().version;
        r.sessions = self.engine.session_count();
        r.session_slots = self.engine.session_slots();
        r.session_capacity = self.engine.settings().session_capacity;
        r.turns = self.heartbeat.load(Ordering::Relaxed);
        r.sessions_by_config = self.engine.sessions_by_config();
        self.io_counters.handoff_ring_depth = self.inbox.len() as u64;
        let s = self.io.socket_drops();
        let was = std::mem::replace(&mut self.socket_drops, s);
        for (reason, total, seen) in [
            (IoDrop::SocketNoBuffer, s.no_buffer, was.no_buffer),
            (IoDrop::SocketRxRingFull, s.rx_ring_full, was.rx_ring_full),
            (IoDrop::SocketInvalidDesc, s.invalid_desc, was.invalid_desc),
        ] {
            self.io_counters.drop_n(reason, total.saturating_sub(seen));
        }
        r.io = self.io_counters.clone();
        r.nat = self.engine.counters().clone();
        r.ports = self.engine.port_usage();
        r.busy_destinations = self.engine.busy_destinations();
        r.rule_hits = self.engine.rule_hits();
        r.name_checks_pending = self.engine.name_checks_pending();
        r.network_policy_denials = self.engine.network_policy_denials();
        r.deny_logs_suppressed = self.deny_logs_suppressed;
        r.tunnels = self.tunnels.reports();
        if with_snapshot {
            let limit = if self.full_snapshots.load(Ordering::Relaxed) { usize::MAX } else { SESSION_SAMPLE };
            r.snapshot = self.engine.snapshot_at_most(now, limit);
        }
    }

    /// Hands the engine's log events to the log thread, each pod within
    /// its share of the queue; denials past the per-second budget (or the
    /// pod's share of it) are only counted.
    fn log_events(&mut self) {
        let sec = self.epoch.elapsed().as_secs();
        let (mut lost, mut over_share) = (0, 0);
        let log = &self.log;
        let mut push = |r: LogRecord| count_refused(log.push(r), &mut lost, &mut over_share);
        for e in self.engine.take_deny_events() {
            if !self.deny_log_budget.take(sec, e.pod) {
                self.deny_logs_suppressed += 1;
                continue;
            }
            push(LogRecord::Deny(e));
        }
        let (mut ipfix_lost, mut ipfix_over_share) = (0, 0);
        for e in self.engine.take_nat_events() {
            if let Some(q) = &self.ipfix {
                count_refused(q.push(e), &mut ipfix_lost, &mut ipfix_over_share);
            }
            if self.journal_sessions {
                push(LogRecord::Session(e));
            }
        }
        for e in self.engine.take_name_events() {
            if self.journal_sessions {
                push(LogRecord::Name(e));
            }
        }
        self.io_counters.log_records_lost += lost;
        self.io_counters.log_records_over_share += over_share;
        self.io_counters.ipfix_records_lost += ipfix_lost;
        self.io_counters.ipfix_records_over_share += ipfix_over_share;
    }

    /// Runs one frame through the pipeline's stages (entering at `entry`)
    /// and queues what comes of it: the next hop and transmit, a reply,
    /// or the handoff ring of the worker that owns its state.
    fn handle(&mut self, port: usize, addr: u64, len: usize, entry: Entry, now: Time) {
        // SAFETY: a received frame is ours until we send or release it.
        let frame = unsafe { self.io.frame_mut(addr) };
        if len < ethernet::HEADER_LEN || ethernet::ethertype(frame) != Some(ethernet::ETHERTYPE_IPV4) {
            self.io_counters.drop(IoDrop::NotIpv4);
            self.io.release(addr);
            return;
        }
        let ip = &mut frame[ethernet::HEADER_LEN..];
        let from = self.arrival(port);
        let exit = pipeline::run(&mut self.tunnels, &mut self.engine, ip, len - ethernet::HEADER_LEN, entry, from, now);
        self.leave(port, addr, exit, now);
    }

    /// Takes frame `addr` (received on `port`) where the stages' exit says.
    fn leave(&mut self, port: usize, addr: u64, exit: Exit, now: Time) {
        match exit {
            Exit::Forward { side, len, dst } => {
                self.route_out(self.side_port[side as usize], addr, len + ethernet::HEADER_LEN, dst, now)
            }
            Exit::Reply { len } => self.reply(port, addr, len),
            Exit::HandOff { worker, entry, from, len } => {
                if matches!(entry, Entry::Datagram | Entry::Seal) {
                    self.io_counters.tunnel_handoffs += 1;
                }
                // SAFETY: the frame is ours; the stages are done with it.
                let frame = unsafe { self.io.frame_mut(addr) };
                self.hand_off(worker, &frame[..len + ethernet::HEADER_LEN], entry, from);
                self.io.release(addr);
            }
            Exit::Done => self.io.release(addr),
        }
    }

    /// The side a port's packets arrive from: two-armed, the port tells;
    /// one-armed, nothing does.
    fn arrival(&self, port: usize) -> Option<Side> {
        if self.side_port[0] == self.side_port[1] {
            None
        } else if port == self.side_port[0] {
            Some(Side::Inside)
        } else {
            Some(Side::Outside)
        }
    }

    /// Sends the `len`-byte IPv4 packet in frame `addr` back where the
    /// frame came from.
    fn reply(&mut self, port: usize, addr: u64, len: usize) {
        // SAFETY: the frame is ours (being handled).
        let own = self.io.ports[port].mac;
        EthernetFrame::new_unchecked(unsafe { self.io.frame_mut(addr) }).reply_from(own);
        self.tx[port].push(WorkerIo::desc(addr, len + ethernet::HEADER_LEN));
    }

    /// Sends frame `addr` (`len` bytes, IPv4 to `dst`) out of `out` to its
    /// next hop, holding it while the kernel resolves the hop's MAC.
    fn route_out(&mut self, out: usize, addr: u64, len: usize, dst: u32, now: Time) {
        let p = &self.io.ports[out];
        match self.routes.lookup(p.ifindex, dst) {
            Ok(mac) => {
                let src_mac = p.mac;
                // SAFETY: the frame is ours until sent.
                EthernetFrame::new_unchecked(unsafe { self.io.frame_mut(addr) }).emit(mac, src_mac);
                self.tx[out].push(WorkerIo::desc(addr, len));
            }
            Err(Miss::NoNeighbour(hop)) => {
                // Hold it while the kernel resolves the next hop,
                // as the kernel itself would.
                self.nexthops.request(p.ifindex, hop);
                if self.pending.len() < PENDING_MAX {
                    self.pending.push(Pending { port: out, addr, len, dst, since_ms: now.millis() });
                } else {
                    self.io_counters.drop(IoDrop::NoNeighbour);
                    self.io.release(addr);
                }
            }
            Err(Miss::NoRoute) => {
                self.io_counters.drop(IoDrop::NoRoute);
                self.io.release(addr);
            }
        }
    }

    /// Tunnel timers: keepalives and rekeys leave toward the peers.
    fn tick_tunnels(&mut self, now: Time) {
        if !self.tunnels.active() {
            return;
        }
        let mut out: Vec<Vec<u8>> = Vec::new();
        self.tunnels.tick(|d| out.push(d.to_vec()));
        for d in out {
            let Some(addr) = self.io.alloc() else {
                self.io_counters.drop(IoDrop::NoFreeFrame);
                continue;
            };
            // SAFETY: a frame just taken from the free pool is ours.
            let f = unsafe { self.io.frame_mut(addr) };
            let total = ethernet::HEADER_LEN + d.len();
            if total > f.len() {
                self.io.release(addr);
                continue;
            }
            f[ethernet::HEADER_LEN..total].copy_from_slice(&d);
            let dst = ipv4::destination(&d);
            self.route_out(self.side_port[Side::Inside as usize], addr, total, dst, now);
        }
    }

    /// Sends held frames whose next hop is now known; drops (and counts)
    /// those that waited too long.
    fn retry_pending(&mut self, now: Time) {
        let table = Arc::clone(&self.routes);
        let mut i = 0;
        while i < self.pending.len() {
            let p = self.pending[i];
            let port = &self.io.ports[p.port];
            match table.lookup(port.ifindex, p.dst) {
                Ok(mac) => {
                    // SAFETY: a held frame is ours until sent or released.
                    EthernetFrame::new_unchecked(unsafe { self.io.frame_mut(p.addr) }).readdress(mac, port.mac);
                    self.tx[p.port].push(WorkerIo::desc(p.addr, p.len));
                    self.pending.swap_remove(i);
                }
                Err(_) if now.millis().saturating_sub(p.since_ms) > PENDING_MS => {
                    self.io_counters.drop(IoDrop::NoNeighbour);
                    self.io.release(p.addr);
                    self.pending.swap_remove(i);
                }
                Err(_) => i += 1,
            }
        }
    }

    fn hand_off(&mut self, worker: u16, bytes: &[u8], entry: Entry, from: Side) {
        let Some(peer) = self.peers.get(usize::from(worker)) else { return };
        if bytes.len() > HANDOFF_BYTES {
            self.io_counters.drop(IoDrop::HandoffOverflow);
            return;
        }
        if !admits_handoff(entry, peer.len(), peer.capacity()) {
            self.io_counters.drop(IoDrop::HandoffUnauthenticatedShare);
            return;
        }
        let Some(mut buf) = self.pool.pop() else {
            self.io_counters.drop(IoDrop::HandoffOverflow);
            return;
        };
        buf[..bytes.len()].copy_from_slice(bytes);
        match peer.push(Handoff { buf, len: bytes.len() as u16, entry, from }) {
            Ok(()) => self.io_counters.handoff_sent += 1,
            Err(h) => {
                let _ = self.pool.push(h.buf);
                self.io_counters.drop(IoDrop::HandoffOverflow);
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
                    let port = self.side_port[h.from as usize];
                    self.handle(port, addr, len, h.entry, now);
                }
                None => self.io_counters.drop(IoDrop::NoFreeFrame),
            }
            let _ = self.pool.push(h.buf);
        }
        n
    }

    /// Sends the out-of-order fragments the engine released.
    fn drain_released(&mut self, now: Time) {
        while let Some(r) = self.engine.take_released() {
            match r.to {
                ReleaseTo::Worker { worker, from, tunnelled } => {
                    let mut f = vec![0u8; ethernet::HEADER_LEN];
                    EthernetFrame::new_unchecked(&mut f[..]).set_ipv4();
                    f.extend_from_slice(&r.bytes);
                    let entry = if tunnelled { Entry::Tunnelled } else { Entry::Arrived };
                    self.hand_off(worker, &f, entry, from);
                }
                to @ (ReleaseTo::Side(_) | ReleaseTo::Seal) => {
                    let Some(addr) = self.io.alloc() else {
                        self.io_counters.drop(IoDrop::NoFreeFrame);
                        continue;
                    };
                    // SAFETY: a frame just taken from the free pool is ours.
                    let f = unsafe { self.io.frame_mut(addr) };
                    let total = ethernet::HEADER_LEN + r.bytes.len();
                    if total > f.len() {
                        self.io.release(addr);
                        continue;
                    }
                    f[ethernet::HEADER_LEN..total].copy_from_slice(&r.bytes);
                    let ip = &mut f[ethernet::HEADER_LEN..];
                    let exit = match to {
                        ReleaseTo::Side(side) => {
                            Exit::Forward { side, len: r.bytes.len(), dst: ipv4::destination(&ip[..r.bytes.len()]) }
                        }
                        _ => pipeline::seal(&mut self.tunnels, ip, r.bytes.len()),
                    };
                    let inside = self.side_port[Side::Inside as usize];
                    self.leave(inside, addr, exit, now);
                }
            }
        }
    }
}

/// Whether a handoff entering at `entry` may join a ring holding `depth` of
/// `capacity`: unauthenticated tunnel datagrams only up to half of it.
fn admits_handoff(entry: Entry, depth: usize, capacity: usize) -> bool {
    entry != Entry::Datagram || depth < capacity / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_datagrams_fill_at_most_half_a_handoff_ring() {
        assert!(admits_handoff(Entry::Datagram, 511, 1024));
        assert!(!admits_handoff(Entry::Datagram, 512, 1024));
        for kind in [Entry::Arrived, Entry::Tunnelled, Entry::Seal] {
            assert!(admits_handoff(kind, 1023, 1024), "{kind:?}");
        }
    }
}
