//! Egret's data plane, read top-down: packet views (`wire`) → the plan
//! (`plan`) → the pure NAT core (`nat`) → workers and AF_XDP I/O at the edge.

pub mod cluster;
pub mod gateway;
pub mod nat;
pub mod plan;
pub mod tunnel;
pub mod wire;
