//! Why the gateway could not start, and why a plan was refused. Each
//! names what failed (the setting, interface, queue or file) so the one
//! line an operator sees says what to fix.

use super::forward_guard::GuardError;
use super::xdp::XdpError;
use std::net::SocketAddr;

/// A plan refused whole: the previous one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum PlanRefused {
    /// The manifests could not be read or parsed.
    #[error(transparent)]
    Manifests(#[from] egret_cluster::ClusterError),
    /// Read, but not a valid plan.
    #[error("{source_name}: {error}")]
    Invalid { source_name: String, error: crate::plan::PlanError },
}

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("control plane TLS material: {0}")]
    ControlTls(String),
    #[error("control client: {0}")]
    ControlClient(#[source] std::io::Error),
    #[error("stopped before the control plane sent a plan")]
    StoppedBeforePlan,
    #[error("the first plan: {0}")]
    FirstPlan(#[from] PlanRefused),
    #[error("XDP on {interface}: {error}")]
    Xdp { interface: String, error: XdpError },
    #[error("this node forwards IPv4 and the forward guard could not be installed: {0}")]
    ForwardGuard(#[source] GuardError),
    #[error("{path}: {message}")]
    Mtu { path: String, message: String },
    #[error("AF_XDP on queue {queue}: {error}")]
    Afxdp { queue: u32, error: std::io::Error },
    #[error("{setting} {addr}: {error}")]
    Listen { setting: &'static str, addr: SocketAddr, error: std::io::Error },
    #[error("ipfix.collector {collector}: {error}")]
    Ipfix { collector: SocketAddr, error: std::io::Error },
}
