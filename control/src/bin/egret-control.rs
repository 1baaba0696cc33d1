//! egret-control: cluster state in, one plan per gateway node out, over gRPC.

use clap::Parser;
use egret_control::{serve_with, source, ControlState, ServeOptions, ServerTls};
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
    /// How a gateway proves which node it is: `certificate` (the names of
    /// its client certificate; needs --client-ca) or `token` (its pod's
    /// bound ServiceAccount token, checked by TokenReview; needs
    /// --kubernetes). With `token`, client certificates open only the admin
    /// service.
    #[arg(long, value_enum, default_value_t = GatewayAuth::Certificate)]
    gateway_auth: GatewayAuth,
    /// With --gateway-auth=token: the audience gateways' tokens are issued
    /// for (their projected volume's `audience`).
    #[arg(long, default_value = egret_control::token::DEFAULT_AUDIENCE)]
    token_audience: String,
    /// With --gateway-auth=token: the gateways' ServiceAccount,
    /// `namespace:name`; tokens of any other account are refused.
    #[arg(long, default_value = "egret-system:egret-gateway")]
    gateway_service_account: String,
    /// With --gateway-auth=token: seconds a successful TokenReview is
    /// trusted before the token is reviewed again (less when it expires
    /// sooner).
    #[arg(long, default_value_t = 60)]
    token_cache_secs: u64,
    /// This replica's name: its Lease holder identity and what `egretctl
    /// nodes` says gateways are subscribed to; unique per replica (the pod
    /// name). Default: the host name and process id.
    #[arg(long, env = "POD_NAME")]
    replica_name: Option<String>,
    /// The other replicas, asked each second which gateways are subscribed
    /// to them (`http(s)://host:port`; a name with several addresses, such
    /// as a headless Service, is each of them). Repeatable. Over TLS they
    /// are called with --tls-cert/--tls-key (an --admin-identity there),
    /// checked against --client-ca.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Serve plain-HTTP probes here: /readyz (200 once synced and serving)
    /// and /livez, and /metrics (Prometheus text), e.g. 0.0.0.0:8080.
    #[arg(long)]
    health_listen: Option<String>,
    /// With --kubernetes: the namespace of the Lease whose holder alone
    /// writes GatewayStatus and Events (egret-control's own).
    #[arg(long, default_value = "egret-system", conflicts_with = "manifests")]
    lease_namespace: String,
    #[arg(long, default_value = egret_control::leader::LEASE_NAME, conflicts_with = "manifests")]
    lease_name: String,
    /// Seconds a Lease not renewed stays its holder's; the holder stops
    /// writing 2/3 of it after its last renewal, and tries every 2/15.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600), conflicts_with = "manifests")]
    lease_duration_secs: u64,
}

/// The replica's name when none is given: host name and process id.
fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{}-{}", if host.is_empty() { "egret-control" } else { host }, std::process::id())
}

fn lease_options(a: &Args, identity: &str) -> egret_control::leader::LeaderOptions {
    let lease = Duration::from_secs(a.lease_duration_secs);
    egret_control::leader::LeaderOptions {
        name: a.lease_name.clone(),
        lease_duration: lease,
        renew_deadline: lease * 2 / 3,
        retry_period: lease * 2 / 15,
        ..egret_control::leader::LeaderOptions::new(&a.lease_namespace, identity)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GatewayAuth {
    Certificate,
    Token,
}

#[tokio::main]
async fn main() {
    fixed_mmap_threshold();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("egret-control: {e}");
        std::process::exit(1);
    }
}

/// Allocations of 128 KiB and more (a node's plan as JSON, a list's body)
/// get pages of their own, returned when freed. glibc otherwise raises the
/// threshold to the largest such block freed, and later multi-megabyte plans
/// land in the heap, where what is freed stays resident between the small
/// objects kept (the pods): `bench/control.sh` at 100,000 pods peaked at
/// ~340 MiB that way, ~277 MiB with the threshold fixed.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// What clap cannot say: the token options' needs.
fn token_options(a: &Args) -> Result<Option<egret_control::token::TokenOptions>, String> {
    if a.gateway_auth == GatewayAuth::Certificate {
        return Ok(None);
    }
    if !a.kubernetes {
        return Err("--gateway-auth=token needs --kubernetes: tokens are checked by the Kubernetes API \
                    (TokenReview)"
            .into());
    }
    if a.token_audience.is_empty() {
        return Err("--token-audience must not be empty".into());
    }
    Ok(Some(egret_control::token::TokenOptions {
        audience: a.token_audience.clone(),
        service_account: egret_control::token::service_account_username(&a.gateway_service_account)
            .map_err(|e| format!("--gateway-service-account: {e}"))?,
        cache_ttl: Duration::from_secs(a.token_cache_secs),
        ..Default::default()
    }))
}

async fn run(a: Args) -> Result<(), String> {
    let token_opts = token_options(&a)?;
    let mut tokens = None;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(ServerTls {
            admin_identities: a.admin_identities.clone(),
            ..ServerTls::read(c, k, a.client_ca.as_deref())?
        }),
        _ => None,
    };
    let replica = a.replica_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(default_replica_name);
    // Turns true on SIGTERM / ^C: the election releases the Lease.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut leader = None;
    let mut election = None;
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
        let lease = lease_options(&a, &replica);
        lease.check().map_err(|e| format!("leader election: {e}"))?;
        let (leadership, elect) = egret_control::leader::elect(client.clone(), lease, stopped(stopping.clone()));
        election = Some(tokio::spawn(elect));
        leader = Some(leadership.clone());
        let status = egret_control::kube_status::StatusOptions {
            namespace: a.status_namespace.clone(),
            leader: leadership,
            ..Default::default()
        };
        if let Some(opts) = token_opts {
            tokens = Some(std::sync::Arc::new(egret_control::token::TokenAuth::new(client.clone(), opts)));
        }
        tokio::spawn(egret_control::kube_status::write_status(state.clone(), client, status));
    }
    if !a.peers.is_empty() {
        for p in &a.peers {
            egret_control::peers::split_url(p).map_err(|e| format!("--peer: {e}"))?;
        }
        let peer_tls = match (&a.tls_cert, &a.tls_key, &a.client_ca) {
            (Some(c), Some(k), Some(ca)) => {
                Some(egret_api::client::TlsFiles::read(ca, Some(c), Some(k)).map_err(|e| format!("--peer TLS: {e}"))?)
            }
            (Some(_), _, None) => return Err("--peer with --tls-cert needs --client-ca (to check the peers)".into()),
            _ => None,
        };
        let opts = egret_control::peers::PeerOptions {
            urls: a.peers.clone(),
            tls: peer_tls,
            replica: replica.clone(),
            every: Duration::from_secs(1),
        };
        tokio::spawn(egret_control::peers::follow_peers(state.clone(), opts));
    }
    let (serving_tx, serving) = tokio::sync::watch::channel(false);
    if let Some(addr) = &a.health_listen {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("--health-listen {addr}: {e}"))?;
        tokio::spawn(egret_control::probe::serve_probes(l, state.clone(), serving));
    }
    let listener =
        tokio::net::TcpListener::bind(&a.listen).await.map_err(|e| format!("listen on {}: {e}", a.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if !local.ip().is_loopback() && a.client_ca.is_none() && !a.insecure_listen {
        return Err(if tokens.is_some() {
            format!(
                "refusing to serve {local} without --client-ca: anyone could call the admin service (and \
                 gateways' tokens would cross the network in the clear without --tls-cert). Use \
                 --tls-cert/--tls-key/--client-ca (and --admin-identity), or --insecure-listen on a network you \
                 trust"
            )
        } else {
            format!(
                "refusing to serve {local} without mutual TLS: any client could read every node's plan and call \
                 the admin service. Use --tls-cert/--tls-key/--client-ca (and --admin-identity), or \
                 --insecure-listen on a network you trust"
            )
        });
    }
    if tokens.is_some() && tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!("--gateway-auth=token without TLS: gateways' tokens cross the network in the clear");
    }
    if a.client_ca.is_some() && a.admin_identities.is_empty() {
        tracing::warn!("mutual TLS with no --admin-identity: admin calls (egretctl) are refused");
    }
    tracing::info!(
        addr = %local,
        replica = %replica,
        tls = tls.is_some(),
        mtls = a.client_ca.is_some(),
        gateway_auth = ?a.gateway_auth,
        "serving"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        stopping_tx.send_replace(true);
    };
    let opts = ServeOptions { tls, tokens, replica, leader, serving: Some(serving_tx) };
    let served = serve_with(listener, state, opts, shutdown).await;
    // The Lease released before exiting, so another replica takes it at
    // its next try instead of after the lease duration.
    if let Some(e) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_options_are_refused_with_manifests() {
        for extra in [
            ["--kube-api", "http://127.0.0.1:8001"],
            ["--secret-namespace", "x"],
            ["--status-namespace", "x"],
            ["--lease-namespace", "x"],
            ["--lease-duration-secs", "30"],
        ] {
            let args = ["egret-control", "--manifests", "/m"].into_iter().chain(extra);
            let e = Args::try_parse_from(args).err().unwrap_or_else(|| panic!("{extra:?} accepted with --manifests"));
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{extra:?}: {e}");
        }
        assert!(Args::try_parse_from(["egret-control", "--kubernetes", "--kube-api", "http://127.0.0.1:8001"]).is_ok());
        assert!(Args::try_parse_from(["egret-control", "--manifests", "/m"]).is_ok());
    }

    #[test]
    fn the_lease_renews_well_within_its_duration() {
        let a = Args::try_parse_from(["egret-control", "--kubernetes", "--lease-duration-secs", "15"]).unwrap();
        let o = lease_options(&a, "control-0");
        assert_eq!(
            (o.lease_duration, o.renew_deadline, o.retry_period),
            (Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(2)),
            "client-go's defaults"
        );
        assert_eq!(
            (o.namespace.as_str(), o.name.as_str(), o.identity.as_str()),
            ("egret-system", "egret-control", "control-0")
        );
        o.check().unwrap();
        let shortest = Args::try_parse_from(["egret-control", "--kubernetes", "--lease-duration-secs", "3"]).unwrap();
        lease_options(&shortest, "x").check().unwrap();
        assert!(Args::try_parse_from(["egret-control", "--kubernetes", "--lease-duration-secs", "2"]).is_err());
        assert!(!default_replica_name().is_empty());
    }

    #[test]
    fn token_mode_needs_the_kubernetes_api_and_a_service_account() {
        let parse = |args: &[&str]| Args::try_parse_from(["egret-control"].iter().chain(args)).unwrap();
        assert!(token_options(&parse(&["--manifests", "/m"])).unwrap().is_none(), "certificate mode by default");
        let e = token_options(&parse(&["--manifests", "/m", "--gateway-auth=token"])).unwrap_err();
        assert!(e.contains("needs --kubernetes"), "{e}");
        let o = token_options(&parse(&["--kubernetes", "--gateway-auth=token"])).unwrap().unwrap();
        assert_eq!(o.audience, "egret-control");
        assert_eq!(o.service_account, "system:serviceaccount:egret-system:egret-gateway");
        let o = token_options(&parse(&["--kubernetes", "--gateway-auth=token", "--gateway-service-account=gw:sa"]));
        assert_eq!(o.unwrap().unwrap().service_account, "system:serviceaccount:gw:sa");
        let e = token_options(&parse(&["--kubernetes", "--gateway-auth=token", "--gateway-service-account=sa"]));
        assert!(e.unwrap_err().contains("--gateway-service-account"));
        assert!(Args::try_parse_from(["egret-control", "--kubernetes", "--gateway-auth=password"]).is_err());
    }
}
