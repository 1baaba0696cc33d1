//! egret-control: reads cluster state (a manifests file or directory, or the
//! Kubernetes API), reconciles it into one plan per gateway node
//! (`egret_cluster::reconcile`), and streams the plans to the
//! gateways over gRPC (`control/proto/egret.proto`). Operators query it with
//! egretctl or grpcurl. From the Kubernetes API it also writes each gateway
//! node's GatewayStatus and an Event per problem ([`kube_status`]); of
//! several replicas, only the one holding the Lease writes ([`leader`]).

pub mod authz;
pub mod kube_source;
pub mod kube_status;
pub mod leader;
pub mod metrics;
pub mod peers;
pub mod pressure;
pub mod probe;
mod raw_object;
pub mod server;
pub mod service;
pub mod source;
pub mod state;
pub mod token;

pub use server::{serve, serve_with, ServeOptions, ServerTls};
pub use state::ControlState;

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}
