//! egret-gateway: the node service around the NAT core. Node settings come
//! from `gateway.toml`; the plan from a manifests file (standalone) that is
//! re-read when it changes. An invalid plan is rejected whole and the
//! previous one keeps serving.

pub mod forward_guard;
pub mod http;
pub mod metrics;
pub mod netlink;
pub mod nexthop;
pub mod probe;
pub mod service;
pub mod source;
pub mod worker;
pub mod xdp;
pub mod xsk;

use crate::nat::CompiledPlan;
use crate::nat::{EngineSettings, FqdnCache, NatEngine, SessionRecord};
use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use egret_cluster as cluster;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use worker::{Worker, WorkerReport, HANDOFF_BYTES};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    /// Faces the pods (one-armed mode: the only interface).
    pub inside: String,
    /// Faces the internet; absent in one-armed mode.
    #[serde(default)]
    pub outside: Option<String>,
    /// Queues served on each interface: one worker per queue.
    #[serde(default = "one")]
    pub queues: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UmemSettings {
    #[serde(default = "default_frames")]
    pub frames: u32,
    #[serde(default = "default_frame_size")]
    pub frame_size: u32,
    #[serde(default = "default_ring")]
    pub ring: u32,
}

fn default_frames() -> u32 {
    8192
}
fn default_frame_size() -> u32 {
    4096
}
fn default_ring() -> u32 {
    2048
}

impl Default for UmemSettings {
    fn default() -> Self {
        UmemSettings { frames: default_frames(), frame_size: default_frame_size(), ring: default_ring() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatLogSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub destinations: bool,
}

/// Subscribing to egret-control instead of reading a plan file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlSettings {
    /// `http://host:port`, or `https://host:port` with `ca`.
    pub url: String,
    /// This gateway's node name (its Kubernetes Node).
    pub node: String,
    /// CA that signed the control plane's certificate (TLS).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This gateway's client certificate and key (mutual TLS).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `gateway.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub interfaces: Interfaces,
    /// The gateway's inside address: the source of ICMP errors sent to pods.
    pub router_ip: Ipv4Addr,
    /// Worker cores, one per queue, in queue order; empty: no pinning.
    #[serde(default)]
    pub cores: Vec<usize>,
    #[serde(default)]
    pub umem: UmemSettings,
    /// Session capacity per worker.
    #[serde(default = "default_sessions")]
    pub sessions_per_worker: usize,
    /// Manifests file or directory (standalone mode).
    #[serde(default)]
    pub plan_file: Option<PathBuf>,
    /// The control plane to subscribe to (instead of `plan_file`).
    #[serde(default)]
    pub control: Option<ControlSettings>,
    /// Where sessions are saved on stop and restored from on start.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Counters as JSON, rewritten every second.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    #[serde(default)]
    pub nat_log: NatLogSettings,
    /// Prometheus `/metrics` listen address, e.g. "127.0.0.1:9464".
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The load balancer's health probe (kube-egress-gateway's: port
    /// 8082, `GET /gw/<config UID>`), e.g. "0.0.0.0:8082"; none: no probe
    /// and no drain.
    #[serde(default)]
    pub probe_address: Option<std::net::SocketAddr>,
    /// With a probe: seconds of answering 503 while still forwarding,
    /// after SIGTERM and before the workers stop.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
    /// How often sessions are saved to `state_file` while running (a
    /// `kill -9` loses at most the sessions opened since).
    #[serde(default = "default_snapshot_secs")]
    pub snapshot_interval_secs: u64,
}

fn default_drain_secs() -> u64 {
    probe::DEFAULT_DRAIN_SECS
}

fn default_snapshot_secs() -> u64 {
    10
}

fn default_sessions() -> usize {
    1 << 20
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl NodeConfig {
    /// Reads and validates; errors name the file and the field.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let bad = |message: String| ConfigError::Invalid { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let c: NodeConfig =
            toml::from_str(&text).map_err(|e| bad(e.to_string().replace('\n', " ").trim().to_string()))?;
        if c.interfaces.queues == 0 || c.interfaces.queues > 64 {
            return Err(bad(format!("interfaces.queues = {} must be 1..=64", c.interfaces.queues)));
        }
        if !c.umem.frame_size.is_power_of_two() || !(2048..=4096).contains(&c.umem.frame_size) {
            return Err(bad(format!("umem.frame_size = {} must be 2048 or 4096", c.umem.frame_size)));
        }
        if !c.umem.ring.is_power_of_two() || c.umem.ring > c.umem.frames {
            return Err(bad(format!("umem.ring = {} must be a power of two no larger than umem.frames", c.umem.ring)));
        }
        match (&c.plan_file, &c.control) {
            (None, None) => return Err(bad("plan_file is required when no [control] is configured".into())),
            (Some(_), Some(_)) => {
                return Err(bad("plan_file and [control] exclude each other: choose one plan source".into()))
            }
            _ => {}
        }
        if let Some(ctl) = &c.control {
            if !(ctl.url.starts_with("http://") || ctl.url.starts_with("https://")) {
                return Err(bad(format!("control.url '{}' must start with http:// or https://", ctl.url)));
            }
            if ctl.node.is_empty() {
                return Err(bad("control.node must name this gateway's node".into()));
            }
            if ctl.url.starts_with("https://") && ctl.ca.is_none() {
                return Err(bad("control.ca is required for an https:// control.url".into()));
            }
            if ctl.cert.is_some() != ctl.key.is_some() {
                return Err(bad("control.cert and control.key go together (mutual TLS)".into()));
            }
        }
        if !c.cores.is_empty() && c.cores.len() < c.interfaces.queues as usize {
            return Err(bad(format!("cores lists {} cores for {} queues", c.cores.len(), c.interfaces.queues)));
        }
        if c.snapshot_interval_secs == 0 {
            return Err(bad("snapshot_interval_secs must be at least 1".into()));
        }
        if c.sessions_per_worker == 0 {
            return Err(bad("sessions_per_worker must be at least 1".into()));
        }
        if c.drain_secs > 300 {
            return Err(bad(format!("drain_secs = {} must be at most 300", c.drain_secs)));
        }
        Ok(c)
    }

    fn ifaces(&self) -> Vec<String> {
        let mut v = vec![self.interfaces.inside.clone()];
        v.extend(self.interfaces.outside.clone());
        v
    }
}

/// Reads and compiles the plan file; problems with single objects are
/// logged and those objects left out.
pub fn load_plan(path: &Path, version: u64) -> Result<CompiledPlan, String> {
    let (plan, problems) = cluster::plan_from_yaml_path(path, version).map_err(|e| e.to_string())?;
    for p in &problems {
        tracing::warn!(%p, "object left out of the plan");
    }
    CompiledPlan::new(&plan).map_err(|e| format!("{}: {e}", path.display()))
}

/// An interface's MTU, as the kernel has it (read at start).
fn mtu_of(ifname: &str) -> Result<usize, String> {
    let path = format!("/sys/class/net/{ifname}/mtu");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.trim().parse().map_err(|_| format!("{path}: '{}' is not an MTU", text.trim()))
}

fn addresses_of(ifname: &str) -> Vec<Ipv4Addr> {
    #[derive(Deserialize)]
    struct Link {
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    #[derive(Deserialize)]
    struct AddrInfo {
        local: String,
    }
    let out = std::process::Command::new("ip").args(["-json", "-4", "addr", "show", "dev", ifname]).output();
    let links: Vec<Link> = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
    links.iter().flat_map(|l| l.addr_info.iter().filter_map(|a| a.local.parse().ok())).collect()
}

/// What the steering maps hold for a plan.
struct SteeringSets {
    pods: HashSet<u32>,
    egress: HashSet<u32>,
    tunnels: HashSet<(u32, u16)>,
    sources: HashSet<crate::plan::Ipv4Cidr>,
}

impl SteeringSets {
    fn of(p: &CompiledPlan) -> SteeringSets {
        SteeringSets {
            pods: p.pods.keys().copied().collect(),
            egress: p.egress.keys().copied().collect(),
            tunnels: p.tunnels.keys().copied().collect(),
            sources: p.sources.cidrs().collect(),
        }
    }

    fn apply(&self, s: &mut xdp::Steering) -> Result<(), xdp::XdpError> {
        s.follow_plan(&self.pods, &self.egress)?;
        s.follow_tunnels(&self.tunnels)?;
        s.follow_sources(&self.sources)
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    let m = std::fs::metadata(p).ok()?;
    if m.is_dir() {
        std::fs::read_dir(p).ok()?.filter_map(|e| e.ok()?.metadata().ok()?.modified().ok()).max()
    } else {
        m.modified().ok()
    }
}

/// Settings that SIGHUP can change without a restart.
fn reload_settings(path: &Path, cfg: &mut NodeConfig) {
    let new = match NodeConfig::load(path) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: settings not reloaded");
            return;
        }
    };
    if new.plan_file != cfg.plan_file {
        tracing::info!(plan_file = ?new.plan_file, "SIGHUP: plan file changed");
        cfg.plan_file = new.plan_file.clone();
    }
    if new.status_file != cfg.status_file || new.state_file != cfg.state_file {
        cfg.status_file = new.status_file.clone();
        cfg.state_file = new.state_file.clone();
        tracing::info!("SIGHUP: status and state file paths reloaded");
    }
    let restart: Vec<&str> = [
        ("interfaces", format!("{:?}", new.interfaces) != format!("{:?}", cfg.interfaces)),
        ("router_ip", new.router_ip != cfg.router_ip),
        ("cores", new.cores != cfg.cores),
        ("umem", format!("{:?}", new.umem) != format!("{:?}", cfg.umem)),
        ("sessions_per_worker", new.sessions_per_worker != cfg.sessions_per_worker),
        ("nat_log", format!("{:?}", new.nat_log) != format!("{:?}", cfg.nat_log)),
        ("metrics_address", new.metrics_address != cfg.metrics_address),
        ("probe_address", new.probe_address != cfg.probe_address),
        ("snapshot_interval_secs", new.snapshot_interval_secs != cfg.snapshot_interval_secs),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    if !restart.is_empty() {
        tracing::warn!(fields = ?restart, "SIGHUP: these settings changed and need a restart to apply");
    }
}

fn save_sessions(path: &Path, records: &[SessionRecord]) {
    let tmp = path.with_extension("tmp");
    match serde_json::to_vec(records) {
        Ok(b) => {
            if std::fs::write(&tmp, b).and_then(|_| std::fs::rename(&tmp, path)).is_err() {
                tracing::error!(path = %path.display(), "saving sessions failed");
            }
        }
        Err(e) => tracing::error!(%e, "encoding sessions"),
    }
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn run(mut cfg: NodeConfig, config_path: &Path) -> Result<(), String> {
    let epoch = Instant::now();
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&term)).map_err(|e| e.to_string())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup)).map_err(|e| e.to_string())?;
    let mut source = match (&cfg.control, &cfg.plan_file) {
        (Some(c), _) => {
            tracing::info!(url = %c.url, node = %c.node, "subscribing to the control plane");
            source::PlanSource::control(c)?
        }
        (None, Some(p)) => source::PlanSource::file(p.clone()),
        (None, None) => return Err("no plan source".into()),
    };
    let plan = Arc::new(source.first(|| term.load(Ordering::Relaxed))?);
    let ifaces = cfg.ifaces();
    let mut local: Vec<Ipv4Addr> = ifaces.iter().flat_map(|i| addresses_of(i)).collect();
    local.push(cfg.router_ip);

    // Steering programs first (maps filled), sockets registered next: until
    // a queue has its socket, our traffic on it is dropped, never passed.
    let mut steering = Vec::new();
    for i in &ifaces {
        let s = xdp::Steering::attach(i, &local).map_err(|e| e.to_string())?;
        tracing::info!(interface = %i, mode = ?s.mode, "XDP program attached");
        steering.push(s);
    }
    let sets = SteeringSets::of(&plan);
    for s in &mut steering {
        sets.apply(s).map_err(|e| e.to_string())?;
    }
    // What XDP leaves to the kernel must not be forwarded out untranslated.
    let guard = match forward_guard::ForwardGuard::install(&ifaces) {
        Ok(g) => {
            tracing::info!(interfaces = ?ifaces, "forward guard installed");
            Some(g)
        }
        Err(e) if forward_guard::forwarding_on() => {
            return Err(format!("this node forwards IPv4 and the forward guard could not be installed: {e}"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no forward guard (IPv4 forwarding is off here)");
            None
        }
    };

    let workers_n = cfg.interfaces.queues as u16;
    // Packets too big for the way out get fragmentation needed or are
    // fragmented (RFC 1812), by each side's interface MTU.
    let inside_mtu = mtu_of(&cfg.interfaces.inside)?;
    let outside_mtu = cfg.interfaces.outside.as_deref().map(mtu_of).transpose()?.unwrap_or(inside_mtu);
    let mtu = [inside_mtu, outside_mtu];
    tracing::info!(inside = inside_mtu, outside = outside_mtu, "interface MTUs");
    let stop = Arc::new(AtomicBool::new(false));
    let shared_plan = Arc::new(ArcSwap::from(Arc::clone(&plan)));
    let nexthops = nexthop::NextHops::new(&ifaces);
    let pool = Arc::new(ArrayQueue::new(4096));
    for _ in 0..4096 {
        let _ = pool.push(Box::new([0u8; HANDOFF_BYTES]));
    }
    let inboxes: Vec<_> = (0..workers_n).map(|_| Arc::new(ArrayQueue::new(4096))).collect();
    let fqdn = FqdnCache::new(1 << 18);
    let saved: Vec<SessionRecord> = cfg
        .state_file
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let sizes = xsk::XskSizes { frames: cfg.umem.frames, frame_size: cfg.umem.frame_size, ring: cfg.umem.ring };
    let full_snapshots = Arc::new(AtomicBool::new(cfg.state_file.is_some()));
    let limiters = crate::tunnel::stage::SharedLimiters::default();
    let mut workers = Vec::new();
    for q in 0..cfg.interfaces.queues {
        let targets: Vec<(String, u32)> = ifaces.iter().map(|i| (i.clone(), q)).collect();
        let io = xsk::WorkerIo::open(&targets, sizes).map_err(|e| format!("AF_XDP on queue {q}: {e}"))?;
        for (pi, s) in steering.iter_mut().enumerate() {
            s.register_socket(q, &io.socket_fd(pi)).map_err(|e| e.to_string())?;
        }
        for p in &io.ports {
            tracing::info!(interface = %p.ifname, queue = p.queue, mode = if p.zero_copy { "zero-copy" } else { "copy" }, "AF_XDP socket bound");
        }
        let settings = EngineSettings {
            worker: q as u16,
            workers: workers_n,
            session_capacity: cfg.sessions_per_worker,
            router_ip: cfg.router_ip,
            nat_log: cfg.nat_log.enabled,
            nat_log_destinations: cfg.nat_log.destinations,
            mtu,
            ..EngineSettings::default()
        };
        let mut engine = NatEngine::new(settings, Arc::clone(&plan));
        engine.share_fqdn_cache(Arc::clone(&fqdn));
        let now = crate::nat::Time::from_millis(epoch.elapsed().as_millis() as u64);
        let mine: Vec<SessionRecord> =
            saved.iter().filter(|r| engine.record_owner(r) == Some(q as u16)).cloned().collect();
        if !mine.is_empty() {
            let st = engine.restore(&mine, now);
            tracing::info!(worker = q, restored = st.restored, skipped = st.skipped, "sessions restored");
        }
        let side_port = [0, if ifaces.len() > 1 { 1 } else { 0 }];
        let mut tunnels = crate::tunnel::TunnelStage::new(q as u16, workers_n, limiters.clone());
        tunnels.apply_plan(&plan);
        let mut w = Worker::new(
            q as u16,
            io,
            engine,
            tunnels,
            side_port,
            Arc::clone(&inboxes[q as usize]),
            inboxes.clone(),
            Arc::clone(&pool),
            Arc::clone(&nexthops),
            Arc::clone(&shared_plan),
            Arc::clone(&stop),
            epoch,
        );
        w.snapshot_every = Duration::from_secs(cfg.snapshot_interval_secs);
        w.full_snapshots = Arc::clone(&full_snapshots);
        workers.push(w);
    }
    let info = Arc::new(Mutex::new(metrics::GatewayInfo {
        plan_version: plan.version,
        modes: steering
            .iter()
            .zip(&workers[0].io.ports)
            .map(|(s, p)| {
                (s.ifname.clone(), format!("{:?}", s.mode), if p.zero_copy { "zero-copy" } else { "copy" }.to_string())
            })
            .collect(),
        xdp: Vec::new(),
    }));

    let reports: Vec<Arc<Mutex<WorkerReport>>> = workers.iter().map(|w| Arc::clone(&w.report)).collect();
    let mut liveness = service::Liveness::new(workers.iter().map(|w| Arc::clone(&w.heartbeat)).collect());
    let cores = cfg.cores.clone();
    let handles: Vec<_> = workers
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
        .collect();
    let resolver = {
        let (nh, ifs, st) = (Arc::clone(&nexthops), ifaces.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("egret-nexthops".into())
            .spawn(move || nh.run_resolver(ifs, st))
            .expect("spawn resolver")
    };
    let metrics_thread = match cfg.metrics_address {
        Some(addr) => Some(
            metrics::serve(addr, reports.clone(), Arc::clone(&info), Arc::clone(&stop))
                .map_err(|e| format!("metrics_address {addr}: {e}"))?,
        ),
        None => None,
    };
    let probe_state = Arc::new(Mutex::new(probe::ProbeState {
        serving: probe::ProbeState::serving_of(&plan, true),
        draining: false,
    }));
    let mut probe_liveness = service::Liveness::new(liveness.beats());
    let probe_thread = match cfg.probe_address {
        Some(addr) => {
            let st = Arc::clone(&probe_state);
            Some(
                http::serve(addr, "egret-probe", Arc::clone(&stop), move |path| {
                    st.lock().unwrap_or_else(|e| e.into_inner()).answer(path)
                })
                .map_err(|e| format!("probe_address {addr}: {e}"))?,
            )
        }
        None => None,
    };
    tracing::info!(
        workers = workers_n,
        plan_version = plan.version,
        configs = plan.configs.len(),
        pods = plan.pods.len(),
        "egret-gateway running"
    );
    // Ready: XDP attached, sockets bound, the first plan applied.
    let _ = service::notify(&format!("READY=1\nSTATUS=serving plan {} with {} worker(s)", plan.version, workers_n));
    let watchdog = service::watchdog_interval().map(|d| d / 2);
    let mut last_watchdog = Instant::now();
    let mut last_save = Instant::now();

    let mut last_status = Instant::now();
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(every) = watchdog {
            if last_watchdog.elapsed() >= every {
                last_watchdog = Instant::now();
                if liveness.all_alive() {
                    let _ = service::notify("WATCHDOG=1");
                } else {
                    tracing::error!("a worker stopped turning; withholding the watchdog");
                }
            }
        }
        let hupped = hup.swap(false, Ordering::Relaxed);
        if hupped {
            let before = cfg.plan_file.clone();
            reload_settings(config_path, &mut cfg);
            if let (Some(p), true) = (&cfg.plan_file, cfg.plan_file != before) {
                source.set_path(p.clone());
            }
        }
        if let Some(update) = source.poll(hupped) {
            match update {
                Ok(p) => {
                    let version = p.version;
                    let sets = SteeringSets::of(&p);
                    // Maps first for additions would let traffic reach
                    // workers still on the old plan; that is harmless (they
                    // drop it as unbound), and removals follow at once.
                    for s in &mut steering {
                        if let Err(e) = sets.apply(s) {
                            tracing::error!(%e, "updating XDP maps");
                        }
                    }
                    tracing::info!(version, configs = p.configs.len(), pods = p.pods.len(), "plan applied");
                    info.lock().unwrap_or_else(|e| e.into_inner()).plan_version = version;
                    let _ = service::notify(&format!("STATUS=serving plan {version}"));
                    probe_state.lock().unwrap_or_else(|e| e.into_inner()).serving =
                        probe::ProbeState::serving_of(&p, true);
                    shared_plan.store(Arc::new(p));
                }
                Err(e) => tracing::error!(error = %e, "plan rejected; the previous plan keeps serving"),
            }
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            let alive = probe_liveness.all_alive();
            probe_state.lock().unwrap_or_else(|e| e.into_inner()).serving =
                probe::ProbeState::serving_of(&shared_plan.load(), alive);
            source.report(control_report(&reports));
            let xdp = steering.iter_mut().map(|s| (s.ifname.clone(), s.stats()));
            info.lock().unwrap_or_else(|e| e.into_inner()).xdp = xdp.collect();
            if let Some(path) = &cfg.status_file {
                write_status(path, &reports, &mut steering, guard.as_ref());
            }
        }
        full_snapshots.store(cfg.state_file.is_some(), Ordering::Relaxed);
        if let Some(path) = &cfg.state_file {
            if last_save.elapsed() >= Duration::from_secs(cfg.snapshot_interval_secs) {
                last_save = Instant::now();
                let all: Vec<SessionRecord> =
                    reports.iter().flat_map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).snapshot.clone()).collect();
                save_sessions(path, &all);
            }
        }
    }
    let _ = service::notify("STOPPING=1");
    if probe_thread.is_some() && cfg.drain_secs > 0 {
        // The load balancer moves new flows away once it sees 503s; the
        // workers keep forwarding what still comes meanwhile.
        probe_state.lock().unwrap_or_else(|e| e.into_inner()).draining = true;
        tracing::info!(seconds = cfg.drain_secs, "draining: the probe answers 503 before the workers stop");
        let _ = service::notify(&format!("STATUS=draining for {} s", cfg.drain_secs));
        let until = Instant::now() + Duration::from_secs(cfg.drain_secs);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            if let Some(path) = cfg.status_file.as_ref().filter(|_| last_status.elapsed() >= Duration::from_secs(1)) {
                last_status = Instant::now();
                write_status(path, &reports, &mut steering, guard.as_ref());
            }
        }
    }
    tracing::info!("stopping");
    stop.store(true, Ordering::Relaxed);
    let mut snapshot = Vec::new();
    for h in handles {
        if let Ok(engine) = h.join() {
            snapshot.extend(engine.snapshot(crate::nat::Time::from_millis(epoch.elapsed().as_millis() as u64)));
        }
    }
    let _ = resolver.join();
    for t in [metrics_thread, probe_thread].into_iter().flatten() {
        let _ = t.join();
    }
    if let Some(path) = &cfg.status_file {
        write_status(path, &reports, &mut steering, guard.as_ref());
    }
    if let Some(p) = &cfg.state_file {
        save_sessions(p, &snapshot);
        tracing::info!(sessions = snapshot.len(), path = %p.display(), "sessions saved");
    }
    drop(steering);
    if guard.is_some() {
        tracing::info!("forward guard left in place until the next start (egret-gateway remove-guard removes it)");
    }
    tracing::info!("XDP detached; stopped");
    Ok(())
}

/// What the gateway tells the control plane once a second: counters, port
/// usage, and a sample of sessions (the latest snapshot, at most 1000).
fn control_report(reports: &[Arc<Mutex<WorkerReport>>]) -> egret_api::v1::Report {
    use egret_api::v1;
    let rs: Vec<WorkerReport> = reports.iter().map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
    let mut total = crate::nat::Counters::default();
    let mut io = worker::IoCounters::default();
    for r in &rs {
        total.add(&r.nat);
        io.handoff_sent += r.io.handoff_sent;
        io.no_neighbour += r.io.no_neighbour;
    }
    let mut counters: std::collections::HashMap<String, u64> = [
        ("in2out_packets", total.in2out_packets),
        ("out2in_packets", total.out2in_packets),
        ("in2out_bytes", total.in2out_bytes),
        ("out2in_bytes", total.out2in_bytes),
        ("sessions_created", total.sessions_created),
        ("sessions_closed", total.sessions_closed),
        ("handoffs", io.handoff_sent),
        ("no_neighbour", io.no_neighbour),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for r in crate::nat::DropReason::ALL {
        counters.insert(format!("drop_{}", r.name()), total.dropped(r));
    }
    for t in crate::tunnel::stage::merge(rs.iter().flat_map(|r| &r.tunnels)) {
        let c = &t.counters;
        for (k, v) in [
            ("handshakes_completed", c.handshakes_completed),
            ("cookie_replies", c.cookie_replies),
            ("rx_packets", c.rx_packets),
            ("tx_packets", c.tx_packets),
            ("live_peers", t.live_peers as u64),
        ] {
            *counters.entry(format!("tunnel_{k}")).or_default() += v;
        }
        for r in crate::tunnel::TunnelDrop::ALL {
            *counters.entry(format!("drop_{}", r.name())).or_default() += c.dropped(r);
        }
    }
    let mut ports: std::collections::BTreeMap<(Ipv4Addr, String), (u32, u32)> = Default::default();
    for r in &rs {
        for u in &r.ports {
            let e = ports.entry((u.addr, u.config.clone())).or_default();
            e.0 += u.mapped.iter().sum::<u32>() + u.sessions;
            e.1 += u.slice * 3;
        }
    }
    let proto = |p: u8| match p {
        6 => "tcp",
        17 => "udp",
        _ => "icmp",
    };
    let sessions = rs
        .iter()
        .flat_map(|r| r.snapshot.iter())
        .take(1000)
        .map(|s| v1::Session {
            protocol: proto(s.proto).into(),
            pod_ip: s.pod.to_string(),
            pod_port: u32::from(s.pod_port),
            egress_ip: s.egress.to_string(),
            egress_port: u32::from(s.egress_port),
            remote_ip: s.remote.to_string(),
            remote_port: u32::from(s.remote_port),
            config: s.config.clone(),
            state: format!("{:#x}", s.state),
            idle_ms: 0,
        })
        .collect();
    // Workers count separately; the rule lists are the same plan's.
    let mut hits: std::collections::BTreeMap<(String, u32), (String, u64)> = Default::default();
    for r in &rs {
        for h in &r.rule_hits {
            for (i, (rule, n)) in h.rules.iter().enumerate() {
                hits.entry((h.config.clone(), i as u32)).or_insert_with(|| (rule.clone(), 0)).1 += n;
            }
        }
    }
    let rule_hits =
        hits.into_iter().map(|((config, index), (rule, hits))| v1::RuleHits { config, rule, index, hits }).collect();
    v1::Report {
        rule_hits,
        counters,
        ports: ports
            .into_iter()
            .map(|((a, c), (in_use, capacity))| v1::PortUsage { egress_ip: a.to_string(), config: c, in_use, capacity })
            .collect(),
        sessions,
        sessions_total: rs.iter().map(|r| r.sessions as u64).sum(),
    }
}

fn write_status(
    path: &Path,
    reports: &[Arc<Mutex<WorkerReport>>],
    steering: &mut [xdp::Steering],
    guard: Option<&forward_guard::ForwardGuard>,
) {
    let workers: Vec<WorkerReport> =
        reports.iter().map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
    let xdp: Vec<serde_json::Value> = steering
        .iter_mut()
        .map(|s| {
            let st = s.stats();
            serde_json::json!({"interface": s.ifname, "mode": format!("{:?}", s.mode), "redirected": st.redirected, "dropped_no_socket": st.dropped_no_socket, "passed": st.passed})
        })
        .collect();
    let refused = guard.and_then(|g| g.refused());
    let tunnels: Vec<serde_json::Value> =
        crate::tunnel::stage::merge(workers.iter().flat_map(|w| &w.tunnels)).iter().map(|t| t.to_json()).collect();
    let doc = serde_json::json!({ "workers": workers, "xdp": xdp, "tunnels": tunnels, "forward_guard": {"installed": guard.is_some(), "refused": refused} });
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, doc.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
