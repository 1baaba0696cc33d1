//! The status file: one typed document the gateway writes (atomically)
//! once a second and at exit. Operators, the end-to-end tests and the
//! benchmark read it; its keys are these structs' fields.

use super::worker::WorkerReport;
use super::xdp::{Steering, XdpStats};
use crate::tunnel::stage::TunnelReport;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub plan: &'a PlanStatus,
    pub workers: &'a [WorkerReport],
    pub xdp: Vec<XdpStatus>,
    /// Per config, the workers' figures summed.
    pub tunnels: Vec<TunnelReport>,
    pub forward_guard: GuardStatus,
}

/// What became of the plans the gateway was given.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanStatus {
    /// The version being served.
    pub version: u64,
    /// Objects the served plan left out, each with why (an overlapping
    /// config, a pod of no config): the rest of the plan serves.
    pub problems: Vec<String>,
    /// Why the latest plan was refused whole, until a later one is applied;
    /// the served plan kept serving meanwhile.
    pub rejected: Option<String>,
    /// Plans refused since start.
    pub rejections: u64,
}

impl PlanStatus {
    pub fn applied(&mut self, version: u64, problems: Vec<String>) {
        self.version = version;
        self.problems = problems;
        self.rejected = None;
    }

    pub fn refused(&mut self, why: String) {
        self.rejected = Some(why);
        self.rejections += 1;
    }
}

#[derive(Debug, Serialize)]
pub struct XdpStatus {
    pub interface: String,
    pub mode: String,
    #[serde(flatten)]
    pub stats: XdpStats,
}

impl XdpStatus {
    pub fn of(s: &mut Steering) -> XdpStatus {
        XdpStatus { interface: s.ifname.clone(), mode: format!("{:?}", s.mode), stats: s.stats() }
    }
}

#[derive(Debug, Serialize)]
pub struct GuardStatus {
    pub installed: bool,
    /// Packets the guard refused to forward untranslated (None when it is
    /// not installed or nft could not be read).
    pub refused: Option<u64>,
}

impl Status<'_> {
    pub fn write(&self, path: &Path) {
        if let Err(e) = write_json(path, self) {
            tracing::warn!(path = %path.display(), error = %e, "writing the status file failed");
        }
    }
}

/// Writes `value` as JSON to `path` through a rename, so a reader never
/// sees half of it (the status file, the saved sessions).
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)?;
    std::fs::rename(&tmp, path)
}
