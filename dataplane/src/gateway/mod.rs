//! egret-gateway: the node service around the NAT core. Node settings come
//! from `gateway.toml`; the plan from a manifests file (standalone) that is
//! re-read when it changes. An invalid plan is rejected whole and the
//! previous one keeps serving.

pub mod caps;
pub mod config;
pub mod error;
pub mod forward_guard;
pub mod http;
pub mod ipfix;
pub mod metrics;
pub mod natlog;
pub mod netlink;
pub mod nexthop;
pub mod pod_share;
pub mod probe;
pub mod report;
pub mod rx_bound;
pub mod service;
pub mod source;
pub mod status;
pub mod supervisor;
pub mod worker;
pub mod xdp;
pub mod xsk;

pub use config::{ConfigError, ControlSettings, Interfaces, IpfixSettings, NatLogSettings, NodeConfig, UmemSettings};
pub use error::{PlanRefused, StartError};

use crate::nat::CompiledPlan;
use egret_cluster as cluster;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::SystemTime;

/// Runs the gateway until SIGINT or SIGTERM: the first plan, startup, the
/// supervisor loop, the drain, the stop (XDP detached).
pub fn run(mut cfg: NodeConfig, config_path: &Path) -> Result<(), StartError> {
    let signals = supervisor::Signals::register()?;
    let mut source = match (&cfg.control, &cfg.plan_file) {
        (Some(c), _) => {
            tracing::info!(url = %c.url, node = %c.node, "subscribing to the control plane");
            source::PlanSource::control(c)?
        }
        (None, Some(p)) => source::PlanSource::file(p.clone()),
        // NodeConfig::load refuses settings without a plan source.
        (None, None) => unreachable!("NodeConfig::load requires plan_file or [control]"),
    };
    let (plan, problems) = source.first(|| signals.stopping())?;
    let mut gateway = supervisor::Gateway::start(&cfg, plan, problems)?;
    gateway.supervise(&mut cfg, config_path, &mut source, &signals);
    gateway.drain(&cfg);
    gateway.stop(&cfg);
    Ok(())
}

/// A compiled plan (shared: the workers run it, and a plan source may
/// change it by the next delta) and the objects it left out, each with why.
pub type LoadedPlan = (std::sync::Arc<CompiledPlan>, Vec<String>);

/// Reads and compiles the plan file; problems with single objects are
/// logged and those objects left out.
pub fn load_plan(path: &Path, version: u64) -> Result<LoadedPlan, PlanRefused> {
    let (plan, problems) = cluster::plan_from_yaml_path(path, version)?;
    let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for p in &problems {
        tracing::warn!(%p, "object left out of the plan");
    }
    let compiled = CompiledPlan::new(&plan)
        .map_err(|error| PlanRefused::Invalid { source_name: path.display().to_string(), error })?;
    Ok((std::sync::Arc::new(compiled), problems))
}

/// An interface's MTU, as the kernel has it (read at start).
fn mtu_of(ifname: &str) -> Result<usize, StartError> {
    let path = format!("/sys/class/net/{ifname}/mtu");
    let text =
        std::fs::read_to_string(&path).map_err(|e| StartError::Mtu { path: path.clone(), message: e.to_string() })?;
    text.trim().parse().map_err(|_| StartError::Mtu { message: format!("'{}' is not an MTU", text.trim()), path })
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
