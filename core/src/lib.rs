//! Egret's pure core, read top-down: packet views (`wire`) → the plan
//! (`plan`) and its lookup form (`compiled`) → the WireGuard tunnel stage
//! (`tunnel`) and the NAT engine (`nat`), siblings that share only the
//! compiled plan → `pipeline`, one packet's way through them in order.
//! Bytes, a clock and a plan in; verdicts out. No sockets, no
//! threads, no build script: AF_XDP, netlink, HTTP and gRPC live in
//! egret-dataplane's `gateway`, on top of this crate.

pub mod compiled;
pub mod counters;
pub mod nat;
pub mod pipeline;
pub mod tunnel;
pub mod wire;

/// The plan schema, shared with egret-control (crate `egret-plan`).
pub use egret_plan as plan;
