//! Serving: the plan and admin services, gRPC health and server reflection
//! (so `grpcurl` works without the .proto), optionally over TLS or mutual TLS,
//! gateways by client certificate or by ServiceAccount token.

use crate::authz::Authz;
use crate::leader::Leadership;
use crate::service::{Admin, Plans};
use crate::state::ControlState;
use crate::token::TokenAuth;
use egret_api::v1::{
    admin_service_server::AdminServiceServer, plan_service_server::PlanServiceServer, FILE_DESCRIPTOR_SET,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

/// PEM files for the server: its certificate and key, and with `client_ca`
/// mutual TLS (clients must present a certificate that CA signed).
#[derive(Debug, Clone, Default)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
    /// With mutual TLS: client certificate names allowed the admin service.
    pub admin_identities: Vec<String>,
}

impl ServerTls {
    pub fn read(cert: &str, key: &str, client_ca: Option<&str>) -> Result<ServerTls, String> {
        let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
        Ok(ServerTls {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: client_ca.map(read).transpose()?,
            admin_identities: Vec::new(),
        })
    }

    fn config(&self) -> ServerTlsConfig {
        let mut c = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.client_ca_pem {
            c = c.client_ca_root(Certificate::from_pem(ca));
        }
        c
    }
}

/// Largest message a gateway may send (a Report with its session sample is
/// far smaller).
pub const MAX_GATEWAY_MESSAGE: usize = 4 << 20;

/// Serves on `listener` until `shutdown` resolves; gateways by client
/// certificate (with `tls.client_ca_pem`) or unchecked (without).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ControlState>,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    serve_with(listener, state, ServeOptions { tls, ..Default::default() }, shutdown).await
}

/// How to serve: TLS, and how gateways are authenticated.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub tls: Option<ServerTls>,
    /// Gateways by ServiceAccount token (`--gateway-auth=token`): client
    /// certificates are then optional, and name only admins.
    pub tokens: Option<Arc<TokenAuth>>,
    /// This replica's name, as `egretctl nodes` shows it.
    pub replica: String,
    /// Whether this replica writes to the cluster (leader election).
    pub leader: Option<Leadership>,
    /// Set true while the server accepts, false from the moment it starts
    /// shutting down (the readiness probe's "serving").
    pub serving: Option<watch::Sender<bool>>,
}

/// gRPC health follows the plans: the plan service (and the server as a
/// whole) is NOT_SERVING until the source has listed the cluster.
async fn follow_sync(health: tonic_health::server::HealthReporter, state: Arc<ControlState>) {
    let mut snapshots = state.watch();
    let mut synced = None;
    loop {
        let now = snapshots.borrow_and_update().generation > 0;
        if synced != Some(now) {
            synced = Some(now);
            let status = if now { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status("", status).await;
            health.set_service_status(PLAN_SERVICE, status).await;
        }
        if now || snapshots.changed().await.is_err() {
            return;
        }
    }
}

const PLAN_SERVICE: &str = "egret.v1.PlanService";

/// [`serve`], with gateways by token when `opts.tokens` says so.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<ControlState>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let ServeOptions { tls, tokens, replica, leader, serving } = opts;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServiceServer<Admin>>().await;
    let synced = state.snapshot().generation > 0;
    let status = if synced { ServingStatus::Serving } else { ServingStatus::NotServing };
    health.set_service_status("", status).await;
    health.set_service_status(PLAN_SERVICE, status).await;
    if !synced {
        tokio::spawn(follow_sync(health.clone(), state.clone()));
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let mut server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Some(t) = &tls {
        // Gateways with tokens present no certificate; admins still do.
        let config = t.config().client_auth_optional(tokens.is_some());
        server = server.tls_config(config).map_err(|e| format!("TLS configuration: {e}"))?;
    }
    let mut authz = match &tls {
        Some(t) if t.client_ca_pem.is_some() => Authz::mutual_tls(t.admin_identities.iter().cloned()),
        _ => Authz::open(),
    };
    if let Some(t) = tokens {
        authz = authz.with_tokens(t);
    }
    let admin_authz = authz.clone();
    let admin = AdminServiceServer::with_interceptor(
        Admin { state: state.clone(), replica, leader },
        move |req: tonic::Request<()>| {
            admin_authz.check_admin(&req)?;
            Ok(req)
        },
    );
    let (stop_tx, stopping) = tokio::sync::watch::channel(false);
    let plans = PlanServiceServer::new(Plans { state, stopping, authz })
        .max_decoding_message_size(MAX_GATEWAY_MESSAGE)
        .max_encoding_message_size(egret_api::client::MAX_PLAN_BYTES);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Some(s) = &serving {
        s.send_replace(true);
    }
    let shutdown = async move {
        shutdown.await;
        if let Some(s) = &serving {
            s.send_replace(false);
        }
        stop_tx.send_replace(true);
    };
    server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(plans)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("gRPC server: {}", egret_api::client::error_chain(&e)))
}
