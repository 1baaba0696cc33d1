//! The running gateway: startup (XDP steering, the forward guard, one
//! worker per queue, the side threads), the supervisor loop (signals, plans,
//! watchdog, status and state files, once a second), the drain and the stop.
//! Nothing here touches packets; the workers do.

use super::config::{reload_settings, NodeConfig};
use super::error::StartError;
use super::natlog::NatLogger;
use super::source::PlanSource;
use super::status::{GuardStatus, PlanStatus, Status, XdpStatus};
use super::worker::{Worker, WorkerConfig, WorkerReport, WorkerShared, HANDOFF_BYTES};
use super::{
    addresses_of, forward_guard, http, ipfix, metrics, mtu_of, nexthop, probe, service, xdp, xsk, SteeringSets,
};
use crate::nat::{CompiledPlan, EngineSettings, FqdnCache, NatEngine, SessionRecord, Time};
use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// SIGINT/SIGTERM (stop) and SIGHUP (reload), as flags the loop reads.
pub struct Signals {
    pub term: Arc<AtomicBool>,
    pub hup: Arc<AtomicBool>,
}

impl Signals {
    pub fn register() -> Result<Signals, StartError> {
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&term)).map_err(StartError::Signals)?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup)).map_err(StartError::Signals)?;
        Ok(Signals { term, hup })
    }

    pub fn stopping(&self) -> bool {
        self.term.load(Ordering::Relaxed)
    }
}

/// Everything a started gateway holds until it stops.
pub struct Gateway {
    epoch: Instant,
    workers: usize,
    steering: Vec<xdp::Steering>,
    guard: Option<forward_guard::ForwardGuard>,
    shared: WorkerShared,
    reports: Vec<Arc<Mutex<WorkerReport>>>,
    liveness: service::Liveness,
    probe_liveness: service::Liveness,
    probe_state: Arc<Mutex<probe::ProbeState>>,
    info: Arc<Mutex<metrics::GatewayInfo>>,
    plan_status: PlanStatus,
    handles: Vec<JoinHandle<NatEngine>>,
    side_threads: Vec<JoinHandle<()>>,
    logger: NatLogger,
    ipfix: Option<ipfix::IpfixExporter>,
}

impl Gateway {
    /// Attaches XDP, installs the forward guard, opens every queue's
    /// sockets and starts the workers on `plan`.
    pub fn start(cfg: &NodeConfig, plan: Arc<CompiledPlan>, problems: Vec<String>) -> Result<Gateway, StartError> {
        let epoch = Instant::now();
        let ifaces = cfg.ifaces();
        let mut local: Vec<Ipv4Addr> = ifaces.iter().flat_map(|i| addresses_of(i)).collect();
        local.push(cfg.router_ip);

        // Steering programs first (maps filled), sockets registered next:
        // until a queue has its socket, our traffic on it is dropped, never
        // passed.
        let mut steering = Vec::new();
        for i in &ifaces {
            let s = xdp::Steering::attach(i, &local).map_err(xdp_error(i))?;
            tracing::info!(interface = %i, mode = ?s.mode, "XDP program attached");
            steering.push(s);
        }
        let sets = SteeringSets::of(&plan);
        for s in &mut steering {
            sets.apply(s).map_err(xdp_error(&s.ifname))?;
        }
        let guard = install_guard(&ifaces)?;

        // Packets too big for the way out get fragmentation needed or are
        // fragmented (RFC 1812), by each side's interface MTU.
        let inside_mtu = mtu_of(&cfg.interfaces.inside)?;
        let outside_mtu = cfg.interfaces.outside.as_deref().map(mtu_of).transpose()?.unwrap_or(inside_mtu);
        tracing::info!(inside = inside_mtu, outside = outside_mtu, "interface MTUs");
        let workers_n = cfg.interfaces.queues as u16;
        let logger = NatLogger::spawn();
        let ipfix = match &cfg.ipfix {
            Some(i) => {
                let settings = ipfix::ExportSettings {
                    collector: i.collector,
                    template_refresh: Duration::from_secs(i.template_refresh_secs),
                    observation_domain: i.observation_domain,
                    destinations: cfg.nat_log.destinations,
                };
                let ex = ipfix::IpfixExporter::spawn(settings, epoch)
                    .map_err(|error| StartError::Ipfix { collector: i.collector, error })?;
                tracing::info!(collector = %i.collector, "IPFIX NAT log export started");
                Some(ex)
            }
            None => None,
        };
        let pool = Arc::new(ArrayQueue::new(4096));
        for _ in 0..4096 {
            let _ = pool.push(Box::new([0u8; HANDOFF_BYTES]));
        }
        let shared = WorkerShared {
            inboxes: (0..workers_n).map(|_| Arc::new(ArrayQueue::new(4096))).collect(),
            pool,
            nexthops: nexthop::NextHops::new(&ifaces),
            plan: Arc::new(ArcSwap::from(Arc::clone(&plan))),
            stop: Arc::new(AtomicBool::new(false)),
            full_snapshots: Arc::new(AtomicBool::new(cfg.state_file.is_some())),
            log: Arc::clone(&logger.queue),
            journal_sessions: cfg.nat_log.enabled,
            ipfix: ipfix.as_ref().map(|x| Arc::clone(&x.queue)),
            epoch,
        };
        let fqdn = FqdnCache::new(1 << 18);
        let saved: Vec<SessionRecord> = cfg
            .state_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let sizes = xsk::XskSizes { frames: cfg.umem.frames, frame_size: cfg.umem.frame_size, ring: cfg.umem.ring };
        let limiters = crate::tunnel::stage::SharedLimiters::default();
        let mut workers = Vec::new();
        for q in 0..cfg.interfaces.queues {
            let index = q as u16;
            let targets: Vec<(String, u32)> = ifaces.iter().map(|i| (i.clone(), q)).collect();
            let io = xsk::WorkerIo::open(&targets, sizes).map_err(|error| StartError::Afxdp { queue: q, error })?;
            for (pi, s) in steering.iter_mut().enumerate() {
                s.register_socket(q, &io.socket_fd(pi)).map_err(xdp_error(&s.ifname))?;
            }
            for p in &io.ports {
                tracing::info!(interface = %p.ifname, queue = p.queue, mode = if p.zero_copy { "zero-copy" } else { "copy" }, "AF_XDP socket bound");
            }
            let settings = EngineSettings {
                worker: index,
                workers: workers_n,
                session_capacity: cfg.sessions_per_worker,
                ports: cfg.egress_ports.0..=cfg.egress_ports.1,
                router_ip: cfg.router_ip,
                nat_log: cfg.nat_log.enabled || ipfix.is_some(),
                nat_log_destinations: cfg.nat_log.destinations,
                mtu: [inside_mtu, outside_mtu],
                ..EngineSettings::default()
            };
            let mut engine = NatEngine::new(settings, Arc::clone(&plan));
            engine.share_fqdn_cache(Arc::clone(&fqdn));
            let mine: Vec<SessionRecord> =
                saved.iter().filter(|r| engine.record_owner(r) == Some(index)).cloned().collect();
            if !mine.is_empty() {
                let st = engine.restore(&mine, engine_time(epoch));
                tracing::info!(worker = q, restored = st.restored, skipped = st.skipped, "sessions restored");
            }
            let mut tunnels = crate::tunnel::TunnelStage::new(index, workers_n, limiters.clone());
            tunnels.apply_plan(&plan);
            let conf = WorkerConfig {
                index,
                side_port: [0, usize::from(ifaces.len() > 1)],
                snapshot_every: Duration::from_secs(cfg.snapshot_interval_secs),
                rx_latency_budget_us: cfg.umem.rx_latency_budget_us,
            };
            workers.push(Worker::new(conf, io, engine, tunnels, &shared));
        }
        let info = Arc::new(Mutex::new(metrics::GatewayInfo {
            plan_version: plan.version,
            modes: steering
                .iter()
                .zip(&workers[0].io.ports)
                .map(|(s, p)| {
                    let afxdp = if p.zero_copy { "zero-copy" } else { "copy" };
                    (s.ifname.clone(), format!("{:?}", s.mode), afxdp.to_string())
                })
                .collect(),
            xdp: Vec::new(),
            fqdn: Some(Arc::clone(&fqdn)),
            ipfix: ipfix.as_ref().map(|x| Arc::clone(&x.counters)),
            ..Default::default()
        }));
        let reports: Vec<_> = workers.iter().map(|w| Arc::clone(&w.report)).collect();
        let liveness = service::Liveness::new(workers.iter().map(|w| Arc::clone(&w.heartbeat)).collect());
        let probe_liveness = service::Liveness::new(liveness.beats());
        let handles = spawn_workers(workers, &cfg.cores);

        let mut side_threads = Vec::new();
        let (nh, st) = (Arc::clone(&shared.nexthops), Arc::clone(&shared.stop));
        side_threads.push(
            std::thread::Builder::new()
                .name("egret-nexthops".into())
                .spawn(move || nh.run_resolver(ifaces, st))
                .expect("spawn resolver"),
        );
        if let Some(addr) = cfg.metrics_address {
            side_threads.push(
                metrics::serve(addr, reports.clone(), Arc::clone(&info), Arc::clone(&shared.stop))
                    .map_err(|error| StartError::Listen { setting: "metrics_address", addr, error })?,
            );
        }
        let probe_state = Arc::new(Mutex::new(probe::ProbeState {
            serving: probe::ProbeState::serving_of(&plan, true),
            draining: false,
            workers_alive: true,
        }));
        if let Some(addr) = cfg.probe_address {
            let st = Arc::clone(&probe_state);
            side_threads.push(
                http::serve(addr, "egret-probe", Arc::clone(&shared.stop), move |path| {
                    st.lock().unwrap_or_else(|e| e.into_inner()).answer(path)
                })
                .map_err(|error| StartError::Listen { setting: "probe_address", addr, error })?,
            );
        }
        let mut plan_status = PlanStatus::default();
        plan_status.applied(plan.version, problems);
        tracing::info!(
            workers = workers_n,
            plan_version = plan.version,
            configs = plan.configs.len(),
            pods = plan.pods.len(),
            "egret-gateway running"
        );
        Ok(Gateway {
            epoch,
            workers: usize::from(workers_n),
            steering,
            guard,
            shared,
            reports,
            liveness,
            probe_liveness,
            probe_state,
            info,
            plan_status,
            handles,
            side_threads,
            logger,
            ipfix,
        })
    }

    /// The supervisor loop, until SIGINT or SIGTERM: plans, SIGHUP, the
    /// systemd watchdog, the probe's view of worker health, the status and
    /// state files.
    pub fn supervise(&mut self, cfg: &mut NodeConfig, config_path: &Path, source: &mut PlanSource, signals: &Signals) {
        let version = self.plan_status.version;
        // Ready: XDP attached, sockets bound, the first plan applied.
        let _ = service::notify(&format!("READY=1\nSTATUS=serving plan {version} with {} worker(s)", self.workers));
        let watchdog = service::watchdog_interval().map(|d| d / 2);
        let mut last_watchdog = Instant::now();
        let mut last_save = Instant::now();
        let mut last_status = Instant::now();
        while !signals.stopping() {
            std::thread::sleep(Duration::from_millis(100));
            if watchdog.is_some_and(|every| last_watchdog.elapsed() >= every) {
                last_watchdog = Instant::now();
                if self.liveness.all_alive() {
                    let _ = service::notify("WATCHDOG=1");
                } else {
                    tracing::error!("a worker stopped turning; withholding the watchdog");
                }
            }
            let hupped = signals.hup.swap(false, Ordering::Relaxed);
            if hupped {
                let before = cfg.plan_file.clone();
                reload_settings(config_path, cfg);
                if let (Some(p), true) = (&cfg.plan_file, cfg.plan_file != before) {
                    source.set_path(p.clone());
                }
            }
            match source.poll(hupped) {
                Some(Ok((plan, problems))) => self.apply(plan, problems),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "plan rejected; the previous plan keeps serving");
                    self.plan_status.refused(e.to_string());
                }
                None => {}
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                let alive = self.probe_liveness.all_alive();
                let mut probe = self.lock_probe();
                probe.serving = probe::ProbeState::serving_of(&self.shared.plan.load(), alive);
                probe.workers_alive = alive;
                drop(probe);
                source.report(super::report::control_report(&self.reports));
                let xdp = self.steering.iter_mut().map(|s| (s.ifname.clone(), s.stats())).collect();
                let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
                info.xdp = xdp;
                info.plan_rejections = self.plan_status.rejections;
                info.plan_rejected = self.plan_status.rejected.is_some();
                info.control_connected = source.connected();
                drop(info);
                self.write_status(cfg);
            }
            self.shared.full_snapshots.store(cfg.state_file.is_some(), Ordering::Relaxed);
            if let Some(path) = &cfg.state_file {
                if last_save.elapsed() >= Duration::from_secs(cfg.snapshot_interval_secs) {
                    last_save = Instant::now();
                    let all: Vec<SessionRecord> = self
                        .reports
                        .iter()
                        .flat_map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).snapshot.clone())
                        .collect();
                    save_sessions(path, &all);
                }
            }
        }
    }

    /// A new plan: XDP maps, then the workers (through the shared plan).
    fn apply(&mut self, plan: Arc<CompiledPlan>, problems: Vec<String>) {
        let version = plan.version;
        let sets = SteeringSets::of(&plan);
        // Maps first for additions would let traffic reach workers still on
        // the old plan; that is harmless (they drop it as unbound), and
        // removals follow at once.
        for s in &mut self.steering {
            if let Err(e) = sets.apply(s) {
                tracing::error!(%e, "updating XDP maps");
            }
        }
        tracing::info!(version, configs = plan.configs.len(), pods = plan.pods.len(), "plan applied");
        self.info.lock().unwrap_or_else(|e| e.into_inner()).plan_version = version;
        self.plan_status.applied(version, problems);
        let _ = service::notify(&format!("STATUS=serving plan {version}"));
        self.lock_probe().serving = probe::ProbeState::serving_of(&plan, true);
        self.shared.plan.store(plan);
    }

    /// With a probe: answers 503 for `drain_secs` while the workers keep
    /// forwarding, so the load balancer moves new flows away first.
    pub fn drain(&mut self, cfg: &NodeConfig) {
        let _ = service::notify("STOPPING=1");
        if cfg.probe_address.is_none() || cfg.drain_secs == 0 {
            return;
        }
        self.lock_probe().draining = true;
        tracing::info!(seconds = cfg.drain_secs, "draining: the probe answers 503 before the workers stop");
        let _ = service::notify(&format!("STATUS=draining for {} s", cfg.drain_secs));
        let until = Instant::now() + Duration::from_secs(cfg.drain_secs);
        let mut last_status = Instant::now();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            if last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                self.write_status(cfg);
            }
        }
    }

    /// Stops the workers and side threads, saves the sessions, detaches XDP.
    pub fn stop(mut self, cfg: &NodeConfig) {
        tracing::info!("stopping");
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut snapshot = Vec::new();
        for h in std::mem::take(&mut self.handles) {
            if let Ok(engine) = h.join() {
                snapshot.extend(engine.snapshot(engine_time(self.epoch)));
            }
        }
        for t in std::mem::take(&mut self.side_threads) {
            let _ = t.join();
        }
        self.write_status(cfg);
        if let Some(p) = &cfg.state_file {
            save_sessions(p, &snapshot);
            tracing::info!(sessions = snapshot.len(), path = %p.display(), "sessions saved");
        }
        let Gateway { steering, guard, logger, ipfix, .. } = self;
        logger.finish();
        if let Some(x) = ipfix {
            x.finish();
        }
        drop(steering);
        if guard.is_some() {
            tracing::info!("forward guard left in place until the next start (egret-gateway remove-guard removes it)");
        }
        tracing::info!("XDP detached; stopped");
    }

    fn lock_probe(&self) -> std::sync::MutexGuard<'_, probe::ProbeState> {
        self.probe_state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_status(&mut self, cfg: &NodeConfig) {
        let Some(path) = &cfg.status_file else { return };
        let workers: Vec<WorkerReport> = super::worker::read_reports(&self.reports);
        let status = Status {
            plan: &self.plan_status,
            workers: &workers,
            xdp: self.steering.iter_mut().map(XdpStatus::of).collect(),
            tunnels: crate::tunnel::stage::merge(workers.iter().flat_map(|w| &w.tunnels)),
            forward_guard: GuardStatus {
                installed: self.guard.is_some(),
                refused: self.guard.as_ref().and_then(|g| g.refused()),
            },
        };
        status.write(path);
    }
}

fn xdp_error(interface: &str) -> impl FnOnce(xdp::XdpError) -> StartError + '_ {
    move |error| StartError::Xdp { interface: interface.to_string(), error }
}

fn engine_time(epoch: Instant) -> Time {
    Time::from_millis(epoch.elapsed().as_millis() as u64)
}

/// What XDP leaves to the kernel must not be forwarded out untranslated.
fn install_guard(ifaces: &[String]) -> Result<Option<forward_guard::ForwardGuard>, StartError> {
    match forward_guard::ForwardGuard::install(ifaces) {
        Ok(g) => {
            tracing::info!(interfaces = ?ifaces, "forward guard installed");
            Ok(Some(g))
        }
        Err(e) if forward_guard::forwarding_on() => Err(StartError::ForwardGuard(e)),
        Err(e) => {
            tracing::warn!(error = %e, "no forward guard (IPv4 forwarding is off here)");
            Ok(None)
        }
    }
}

/// One thread per worker, pinned to its core when `cores` names one.
fn spawn_workers(workers: Vec<Worker>, cores: &[usize]) -> Vec<JoinHandle<NatEngine>> {
    workers
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let core = cores.get(i).copied();
            std::thread::Builder::new()
                .name(format!("egret-worker-{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                            tracing::warn!(worker = i, core = c, "could not pin worker");
                        }
                    }
                    w.run()
                })
                .expect("spawn worker")
        })
        .collect()
}

fn save_sessions(path: &Path, records: &[SessionRecord]) {
    if let Err(e) = super::status::write_json(path, &records) {
        tracing::error!(path = %path.display(), error = %e, "saving sessions failed");
    }
}
