//! egret-control: cluster state in, one plan per gateway node out, over gRPC.

use clap::Parser;
use egret_control::{serve, source, ControlState, ServerTls};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Egret's control plane: streams each gateway node its plan")]
struct Args {
    /// Address to serve gRPC on (plan stream, admin, health, reflection).
    #[arg(long, default_value = "127.0.0.1:50051", env = "EGRET_LISTEN")]
    listen: String,
    /// A manifests file or directory (StaticGatewayConfigurations, Pods,
    /// Nodes, EgressPolicies as `kubectl get -o yaml` prints them), re-read
    /// when it changes.
    #[arg(long, env = "EGRET_MANIFESTS", required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
    manifests: Option<PathBuf>,
    /// Read cluster state from the Kubernetes API (in-cluster service
    /// account, or the kubeconfig) instead of manifests.
    #[arg(long)]
    kubernetes: bool,
    /// The API server's URL, overriding the inferred one (e.g. the
    /// `http://127.0.0.1:8001` of `kubectl proxy`).
    #[arg(long, conflicts_with = "manifests")]
    kube_api: Option<String>,
    /// Namespace of kube-egress-gateway's config Secrets (sgw-<UID>);
    /// repeat for several. Default: its Helm chart's and the AKS add-on's.
    #[arg(long = "secret-namespace", conflicts_with = "manifests")]
    secret_namespaces: Vec<String>,
    /// Namespace to write each gateway node's GatewayStatus in (as
    /// kube-egress-gateway's daemon does, in its own namespace).
    #[arg(long, conflicts_with = "manifests", default_value = egret_control::kube_status::STATUS_NAMESPACE)]
    status_namespace: String,
    /// How often to check the manifests for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// Serve TLS with this certificate (PEM) ...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<String>,
    /// ... and this key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<String>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<String>,
    /// With mutual TLS: a client certificate name (DNS SAN or CN) allowed
    /// the admin service (egretctl). Repeatable. Gateways need none: each
    /// may subscribe only as the node its certificate names.
    #[arg(long = "admin-identity", requires = "client_ca")]
    admin_identities: Vec<String>,
    /// Serve a non-loopback address without mutual TLS. Anyone who can
    /// connect may then read every plan and call the admin service.
    #[arg(long)]
    insecure_listen: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("egret-control: {e}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> Result<(), String> {
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(ServerTls {
            admin_identities: a.admin_identities.clone(),
            ..ServerTls::read(c, k, a.client_ca.as_deref())?
        }),
        _ => None,
    };
    let state = ControlState::new();
    if let Some(path) = &a.manifests {
        // The first load must work: a typo at start-up is an error, not an empty plan.
        source::load_file(&state, path)?;
        tokio::spawn(source::watch_file(state.clone(), path.clone(), Duration::from_millis(a.poll_ms)));
    } else {
        let config = match &a.kube_api {
            Some(url) => kube::Config::new(url.parse().map_err(|e| format!("--kube-api '{url}': {e}"))?),
            None => kube::Config::infer().await.map_err(|e| format!("Kubernetes configuration: {e}"))?,
        };
        let client = kube::Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
        let mut opts = egret_control::kube_source::Options::default();
        if !a.secret_namespaces.is_empty() {
            opts.secret_namespaces = a.secret_namespaces.clone();
        }
        tokio::spawn(egret_control::kube_source::watch_kubernetes_with(state.clone(), client.clone(), opts));
        let status =
            egret_control::kube_status::StatusOptions { namespace: a.status_namespace.clone(), ..Default::default() };
        tokio::spawn(egret_control::kube_status::write_status(state.clone(), client, status));
    }
    let listener =
        tokio::net::TcpListener::bind(&a.listen).await.map_err(|e| format!("listen on {}: {e}", a.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if !local.ip().is_loopback() && a.client_ca.is_none() && !a.insecure_listen {
        return Err(format!(
            "refusing to serve {local} without mutual TLS: any client could read every node's plan and call the \
             admin service. Use --tls-cert/--tls-key/--client-ca (and --admin-identity), or --insecure-listen on a \
             network you trust"
        ));
    }
    if a.client_ca.is_some() && a.admin_identities.is_empty() {
        tracing::warn!("mutual TLS with no --admin-identity: admin calls (egretctl) are refused");
    }
    tracing::info!(addr = %local, tls = tls.is_some(), mtls = a.client_ca.is_some(), "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    serve(listener, state, tls, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_options_are_refused_with_manifests() {
        for extra in [["--kube-api", "http://127.0.0.1:8001"], ["--secret-namespace", "x"], ["--status-namespace", "x"]]
        {
            let args = ["egret-control", "--manifests", "/m"].into_iter().chain(extra);
            let e = Args::try_parse_from(args).err().unwrap_or_else(|| panic!("{extra:?} accepted with --manifests"));
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{extra:?}: {e}");
        }
        assert!(Args::try_parse_from(["egret-control", "--kubernetes", "--kube-api", "http://127.0.0.1:8001"]).is_ok());
        assert!(Args::try_parse_from(["egret-control", "--manifests", "/m"]).is_ok());
    }
}
