//! The gateway side of the plan stream.
//!
//! [`subscribe`] keeps one `PlanService/Subscribe` stream open to
//! egret-control, reconnecting with exponential backoff, and publishes each
//! new plan on a `tokio::sync::watch` channel. The channel keeps the last
//! plan while the control plane is away, so the gateway goes on serving it;
//! the data plane reads the channel between batches and never touches gRPC.
//! The gateway tells what it did with each plan through [`Subscription::ack`];
//! acks and reports are (re)sent on every new stream. With
//! [`SubscribeConfig::token_file`] each stream carries the file's token as
//! `authorization: Bearer ...`, read again on every connect.
//!
//! ```no_run
//! # async fn demo() {
//! use egret_api::client::{subscribe, SubscribeConfig};
//! let cfg = SubscribeConfig::new("http://127.0.0.1:50051", "gw-0");
//! // Any `serde::de::DeserializeOwned` plan type; egret-gateway uses
//! // `egret_plan::Plan`.
//! let sub = subscribe::<serde_json::Value>(cfg);
//! let mut plans = sub.plans();
//! while plans.changed().await.is_ok() {
//!     let Some(p) = plans.borrow_and_update().clone() else { continue };
//!     // ... compile and swap in p.plan ...
//!     sub.ack(p.version, Ok(()));
//! }
//! # }
//! ```

/// Largest plan message a gateway accepts: a plan at the policy limits
/// (100,000 rules) encodes to well under this.
pub const MAX_PLAN_BYTES: usize = 64 << 20;

use crate::v1::{gateway_message::Msg, plan_service_client::PlanServiceClient, Ack, GatewayMessage, Hello, Report};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct SubscribeConfig {
    /// `http://host:port`, or `https://host:port` with `tls`.
    pub endpoint: String,
    pub node: String,
    pub tls: Option<TlsFiles>,
    /// A file holding this gateway's bearer token (its pod's projected
    /// ServiceAccount token), sent as `authorization: Bearer ...`. Read
    /// again on every connect: the kubelet rotates it.
    pub token_file: Option<PathBuf>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
}

impl SubscribeConfig {
    pub fn new(endpoint: &str, node: &str) -> Self {
        SubscribeConfig {
            endpoint: endpoint.to_string(),
            node: node.to_string(),
            tls: None,
            token_file: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// PEM material for TLS: the CA that signed the server, and for mutual TLS
/// the client's own certificate and key.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the server certificate against (default: the
    /// endpoint's host).
    pub domain: Option<String>,
}

impl TlsFiles {
    /// Reads `ca`, and `cert` + `key` when both are given.
    pub fn read(ca: &str, cert: Option<&str>, key: Option<&str>) -> Result<TlsFiles, String> {
        let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => return Err("a client certificate needs both --cert and --key".into()),
        };
        Ok(TlsFiles { ca_pem: read(ca)?, identity, domain: None })
    }

    pub fn client_config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// Longest bearer token read from a token file.
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Reads a bearer token: the file's one line, which must be printable ASCII
/// (it goes into a header).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{}: empty token file", path.display()));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("{}: a token longer than {MAX_TOKEN_BYTES} bytes", path.display()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{}: not a token (one line of printable ASCII)", path.display()));
    }
    Ok(token.to_string())
}

/// An endpoint for `url`, with TLS when given.
pub fn endpoint(url: &str, tls: Option<&TlsFiles>, connect_timeout: Duration) -> Result<Endpoint, String> {
    let mut e = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("invalid control-plane address '{url}': {e}"))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if let Some(t) = tls {
        e = e.tls_config(t.client_config()).map_err(|e| format!("TLS configuration: {e}"))?;
    }
    Ok(e)
}

/// One plan as received.
#[derive(Debug)]
pub struct Received<T> {
    pub version: u64,
    pub plan: T,
    /// The plan as it came (what a resent plan is compared by).
    pub json: String,
}

/// How the stream stands, for logs and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Connected,
    /// Disconnected, with why; retrying after backoff.
    Down(String),
}

/// A running subscription. Dropping it stops the background task.
pub struct Subscription<T> {
    plans: watch::Receiver<Option<Arc<Received<T>>>>,
    link: watch::Receiver<LinkState>,
    out: mpsc::UnboundedSender<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Subscription<T> {
    /// The latest plan (None until the first one arrives); it stays when the
    /// control plane goes away.
    pub fn plans(&self) -> watch::Receiver<Option<Arc<Received<T>>>> {
        self.plans.clone()
    }
    pub fn link(&self) -> watch::Receiver<LinkState> {
        self.link.clone()
    }
    /// Tells the control plane what became of `version`: applied, or
    /// rejected with why (the gateway then keeps its previous plan).
    pub fn ack(&self, version: u64, result: Result<(), String>) {
        let error = result.err().unwrap_or_default();
        let _ = self.out.send(Msg::Ack(Ack { version, error }));
    }
    /// Sends counters, port usage and a session sample; the latest is
    /// re-sent after a reconnect.
    pub fn report(&self, report: Report) {
        let _ = self.out.send(Msg::Report(report));
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts subscribing on the current Tokio runtime. Plans that do not parse
/// as `T` are rejected (acked with the parse error) and never published.
pub fn subscribe<T>(cfg: SubscribeConfig) -> Subscription<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let (plan_tx, plans) = watch::channel(None);
    let (link_tx, link) = watch::channel(LinkState::Connecting);
    let (out, out_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(cfg, plan_tx, link_tx, out_rx, out.clone()));
    Subscription { plans, link, out, task }
}

/// For a gateway without a Tokio runtime: runs [`subscribe`] on a thread of
/// its own. The returned receivers are usable from plain threads
/// (`has_changed`, `borrow_and_update`).
pub fn subscribe_in_thread<T>(cfg: SubscribeConfig) -> std::io::Result<Subscription<T>>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("egret-control-client".into()).spawn(move || {
        rt.block_on(async move {
            let sub = subscribe::<T>(cfg);
            let done = sub.out.clone();
            let _ = tx.send(sub);
            // Live until the Subscription (and so its sender) is dropped.
            done.closed().await;
        })
    })?;
    rx.recv().map_err(|_| std::io::Error::other("subscriber thread failed to start"))
}

/// What survives a reconnect: the last ack sent and the last report.
#[derive(Default)]
struct Resend {
    ack: Option<Ack>,
    report: Option<Report>,
}

async fn run<T: DeserializeOwned + Send + Sync + 'static>(
    cfg: SubscribeConfig,
    plan_tx: watch::Sender<Option<Arc<Received<T>>>>,
    link_tx: watch::Sender<LinkState>,
    mut out_rx: mpsc::UnboundedReceiver<Msg>,
    self_tx: mpsc::UnboundedSender<Msg>,
) {
    let resend = Arc::new(Mutex::new(Resend::default()));
    let mut backoff = cfg.backoff_min;
    loop {
        link_tx.send_replace(LinkState::Connecting);
        let started = tokio::time::Instant::now();
        let why = once(&cfg, &plan_tx, &link_tx, &mut out_rx, &self_tx, &resend).await;
        tracing::warn!(endpoint = %cfg.endpoint, node = %cfg.node, error = %why, "plan stream down; keeping the last plan");
        link_tx.send_replace(LinkState::Down(why));
        if started.elapsed() > Duration::from_secs(30) {
            backoff = cfg.backoff_min; // it was up a good while: start over
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// One stream, from connect to its end; returns why it ended.
async fn once<T: DeserializeOwned + Send + Sync + 'static>(
    cfg: &SubscribeConfig,
    plan_tx: &watch::Sender<Option<Arc<Received<T>>>>,
    link_tx: &watch::Sender<LinkState>,
    out_rx: &mut mpsc::UnboundedReceiver<Msg>,
    self_tx: &mpsc::UnboundedSender<Msg>,
    resend: &Arc<Mutex<Resend>>,
) -> String {
    // Read on every connect: a rotated token replaces the one that expired.
    let token = match cfg.token_file.as_deref().map(read_token).transpose() {
        Ok(t) => t,
        Err(e) => return format!("token file: {e}"),
    };
    let ep = match endpoint(&cfg.endpoint, cfg.tls.as_ref(), cfg.connect_timeout) {
        Ok(e) => e,
        Err(e) => return e,
    };
    let channel = match ep.connect().await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect to {}: {}", cfg.endpoint, error_chain(&e)),
    };
    let mut client = PlanServiceClient::new(channel).max_decoding_message_size(MAX_PLAN_BYTES);
    let (tx, rx) = mpsc::unbounded_channel::<GatewayMessage>();
    let serving = plan_tx.borrow().as_ref().map_or(0, |p| p.version);
    let _ =
        tx.send(GatewayMessage { msg: Some(Msg::Hello(Hello { node: cfg.node.clone(), serving_version: serving })) });
    {
        let r = resend.lock().unwrap();
        for m in [r.ack.clone().map(Msg::Ack), r.report.clone().map(Msg::Report)].into_iter().flatten() {
            let _ = tx.send(GatewayMessage { msg: Some(m) });
        }
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    if let Some(t) = token {
        let Ok(mut v) = MetadataValue::try_from(format!("Bearer {t}")) else {
            return "token file: not a valid header value".into();
        };
        v.set_sensitive(true);
        request.metadata_mut().insert("authorization", v);
    }
    let mut inbound = match client.subscribe(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return status_text(&s),
    };
    link_tx.send_replace(LinkState::Connected);
    tracing::info!(endpoint = %cfg.endpoint, node = %cfg.node, "plan stream up");
    loop {
        tokio::select! {
            m = out_rx.recv() => {
                let Some(m) = m else { return "subscription dropped".into() };
                {
                    let mut r = resend.lock().unwrap();
                    match &m {
                        Msg::Ack(a) => r.ack = Some(a.clone()),
                        Msg::Report(rep) => r.report = Some(rep.clone()),
                        Msg::Hello(_) => {}
                    }
                }
                if tx.send(GatewayMessage { msg: Some(m) }).is_err() {
                    return "stream closed".into();
                }
            }
            u = inbound.message() => {
                let u = match u {
                    Ok(Some(u)) => u,
                    Ok(None) => return "control plane closed the stream".into(),
                    Err(s) => return status_text(&s),
                };
                // The same plan again after a reconnect (the last ack was
                // resent). Compared by content too: a restarted control plane
                // numbers its plans from 1 again, and its version 1 need not
                // be the one this gateway holds.
                let same = plan_tx.borrow().as_ref().is_some_and(|p| p.version == u.version && p.json == u.plan_json);
                if same {
                    continue;
                }
                match serde_json::from_str::<T>(&u.plan_json) {
                    Ok(plan) => {
                        tracing::info!(version = u.version, "new plan from the control plane");
                        plan_tx.send_replace(Some(Arc::new(Received { version: u.version, plan, json: u.plan_json })));
                    }
                    Err(e) => {
                        tracing::error!(version = u.version, error = %e, "plan does not parse; keeping the last one");
                        let _ = self_tx.send(Msg::Ack(Ack { version: u.version, error: format!("plan does not parse: {e}") }));
                    }
                }
            }
        }
    }
}

/// A status as one line: code and message.
pub fn status_text(s: &tonic::Status) -> String {
    let src = std::error::Error::source(s).map(|e| format!(": {}", error_chain(e))).unwrap_or_default();
    format!("{:?}: {}{src}", s.code(), s.message())
}

/// An error and its sources, joined by ": " (TLS failures hide in sources).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
