//! Egret's data plane: AF_XDP workers, XDP steering, netlink, the HTTP and
//! gRPC edges and the egret-gateway binary (`gateway`), on top of the pure
//! core (crate `egret-core`: `wire`, `nat`, `tunnel`, re-exported here).

pub mod gateway;
pub use egret_core::{counters, nat, pipeline, tunnel, wire};

/// The plan schema, shared with egret-control (crate `egret-plan`).
pub use egret_plan as plan;
