//! Egret's control API, shared by egret-control, egret-gateway and egretctl
//! (the linkerd2-proxy-api pattern): the generated gRPC code of
//! `control/proto/egret.proto`, and [`client`], the gateway side of the plan
//! stream, which turns it into a value the data plane watches.

pub mod client;

pub mod v1 {
    tonic::include_proto!("egret.v1");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("egret_descriptor");
}
