//! Egret's data plane, read top-down: packet views (`wire`) → the plan
//! (`plan`) → the pure NAT core (`nat`) → workers and AF_XDP I/O at the edge.

pub(crate) mod counters;
pub mod gateway;
pub mod nat;
pub mod tunnel;
pub mod wire;

/// The plan schema, shared with egret-control (crate `egret-plan`).
pub use egret_plan as plan;
