//! Serving: the plan and admin services, gRPC health and server reflection
//! (so `grpcurl` works without the .proto), optionally over TLS or mutual TLS.

use crate::service::{Admin, Plans};
use crate::state::ControlState;
use egret_api::v1::{
    admin_service_server::AdminServiceServer, plan_service_server::PlanServiceServer, FILE_DESCRIPTOR_SET,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// PEM files for the server: its certificate and key, and with `client_ca`
/// mutual TLS (clients must present a certificate that CA signed).
#[derive(Debug, Clone, Default)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    pub fn read(cert: &str, key: &str, client_ca: Option<&str>) -> Result<ServerTls, String> {
        let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
        Ok(ServerTls { cert_pem: read(cert)?, key_pem: read(key)?, client_ca_pem: client_ca.map(read).transpose()? })
    }

    fn config(&self) -> ServerTlsConfig {
        let mut c = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.client_ca_pem {
            c = c.client_ca_root(Certificate::from_pem(ca));
        }
        c
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ControlState>,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PlanServiceServer<Plans>>().await;
    health.set_serving::<AdminServiceServer<Admin>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let mut server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Some(t) = &tls {
        server = server.tls_config(t.config()).map_err(|e| format!("TLS configuration: {e}"))?;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(PlanServiceServer::new(Plans { state: state.clone(), stopping }))
        .add_service(AdminServiceServer::new(Admin { state }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("gRPC server: {}", egret_api::client::error_chain(&e)))
}
