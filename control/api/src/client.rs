//! The gateway side of the plan stream.
//!
//! [`subscribe`] keeps one `PlanService/Subscribe` stream open to
//! egret-control, and publishes each new plan on a `tokio::sync::watch`
//! channel. egret-control may run as several replicas: the subscriber takes
//! several addresses (or one Service address in front of them all) and,
//! when its stream ends or its replica refuses, subscribes to the next at
//! once; only after every address failed in a row does it back off
//! (exponentially, to at most a second while the failures are refusals or
//! closes, to `backoff_max` for anything else: an unknown node, a refused
//! token, a bad certificate). Replicas number their plans each their own
//! way; a plan that says the same as the one held under another version is
//! acknowledged under the new version without being published again, so
//! the data plane does not recompile it. The subscriber says it accepts
//! deltas: after the first whole plan each version comes as the change from
//! the one before (`egret_plan::PlanDelta`), applied here to the plan held,
//! so the channel always carries whole plans; a delta that does not follow
//! the plan held ends the stream, and subscribing again sends the plan
//! whole. The channel keeps the last
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
//! let sub = subscribe(cfg);
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
use egret_plan::{Plan, PlanDelta};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct SubscribeConfig {
    /// Each `http://host:port`, or `https://host:port` with `tls`: the
    /// replicas of egret-control, or one Service address for them all.
    /// The first tried is chosen by the node's name, so gateways spread.
    pub endpoints: Vec<String>,
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
    /// `endpoints`: one address, or several separated by commas.
    pub fn new(endpoints: &str, node: &str) -> Self {
        SubscribeConfig {
            endpoints: split_endpoints(endpoints),
            node: node.to_string(),
            tls: None,
            token_file: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// Addresses separated by commas, each trimmed; empty ones left out.
pub fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect()
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

/// One plan as received (whole, or made from the one before by a delta).
#[derive(Debug)]
pub struct Received {
    pub version: u64,
    pub plan: Plan,
    /// Counts the plans this subscription has held (versions may repeat:
    /// a restarted control plane numbers from 1 again).
    pub seq: u64,
    /// What changed since the plan held before it (`seq - 1`), when it came
    /// as a delta: the data plane may then change its tables rather than
    /// compile the plan whole.
    pub delta: Option<PlanDelta>,
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
pub struct Subscription {
    plans: watch::Receiver<Option<Arc<Received>>>,
    link: watch::Receiver<LinkState>,
    out: mpsc::UnboundedSender<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The latest plan (None until the first one arrives); it stays when the
    /// control plane goes away.
    pub fn plans(&self) -> watch::Receiver<Option<Arc<Received>>> {
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

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts subscribing on the current Tokio runtime. Plans that do not parse
/// as a [`Plan`] are rejected (acked with the parse error) and never
/// published.
pub fn subscribe(cfg: SubscribeConfig) -> Subscription {
    let (plan_tx, plans) = watch::channel(None);
    let (link_tx, link) = watch::channel(LinkState::Connecting);
    let (out, out_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(cfg, plan_tx, link_tx, out_rx, out.clone()));
    Subscription { plans, link, out, task }
}

/// For a gateway without a Tokio runtime: runs [`subscribe`] on a thread of
/// its own. The returned receivers are usable from plain threads
/// (`has_changed`, `borrow_and_update`).
pub fn subscribe_in_thread(cfg: SubscribeConfig) -> std::io::Result<Subscription> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("egret-control-client".into()).spawn(move || {
        rt.block_on(async move {
            let sub = subscribe(cfg);
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

async fn run(
    cfg: SubscribeConfig,
    plan_tx: watch::Sender<Option<Arc<Received>>>,
    link_tx: watch::Sender<LinkState>,
    mut out_rx: mpsc::UnboundedReceiver<Msg>,
    self_tx: mpsc::UnboundedSender<Msg>,
) {
    let resend = Arc::new(Mutex::new(Resend::default()));
    if cfg.endpoints.is_empty() {
        link_tx.send_replace(LinkState::Down("no control-plane address".into()));
        return;
    }
    let mut retry = Retry::new(&cfg);
    loop {
        let endpoint = &cfg.endpoints[retry.next];
        link_tx.send_replace(LinkState::Connecting);
        let started = tokio::time::Instant::now();
        let end = once(&cfg, endpoint, &plan_tx, &link_tx, &mut out_rx, &self_tx, &resend).await;
        let up_for = end.up_since.map(|t| t.elapsed());
        tracing::warn!(endpoint = %endpoint, node = %cfg.node, error = %end.why, up_s = up_for.map(|d| d.as_secs_f32()), "plan stream down; keeping the last plan");
        link_tx.send_replace(LinkState::Down(end.why));
        let wait = retry.after(up_for, end.transient, started.elapsed());
        tokio::time::sleep(wait).await;
    }
}

/// When and where to subscribe next: the next address at once, until every
/// address failed in a row; then backoff.
struct Retry {
    endpoints: usize,
    next: usize,
    /// Failures in a row since a stream was last up.
    failures: usize,
    backoff: Duration,
    min: Duration,
    max: Duration,
}

/// A stream up at least this long, then gone, is a replica going away:
/// the next is tried at once. A shorter one counts as a failure.
const STEADY: Duration = Duration::from_secs(1);
/// The most a subscriber waits while its failures are refusals and closes
/// (a replica restarting, or the Service moving to another).
const TRANSIENT_MAX: Duration = Duration::from_secs(1);

impl Retry {
    fn new(cfg: &SubscribeConfig) -> Retry {
        // FNV-1a of the node name: gateways start on different replicas.
        let hash = cfg.node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        Retry {
            endpoints: cfg.endpoints.len(),
            next: (hash % cfg.endpoints.len() as u64) as usize,
            failures: 0,
            backoff: cfg.backoff_min,
            min: cfg.backoff_min,
            max: cfg.backoff_max,
        }
    }

    /// How long to wait after a stream that was up for `up_for` (None:
    /// never up) ended, `transient` or not, `took` after it was begun; moves
    /// to the next address.
    fn after(&mut self, up_for: Option<Duration>, transient: bool, took: Duration) -> Duration {
        self.next = (self.next + 1) % self.endpoints;
        if up_for.is_some_and(|d| d >= STEADY) {
            self.failures = 0;
            self.backoff = self.min;
            return Duration::ZERO;
        }
        self.failures += 1;
        if !self.failures.is_multiple_of(self.endpoints) {
            return Duration::ZERO;
        }
        let cap = if transient { TRANSIENT_MAX.max(self.min) } else { self.max };
        let wait = self.backoff.min(cap);
        self.backoff = (self.backoff * 2).min(self.max);
        // A connect that timed out has waited already.
        wait.saturating_sub(took.min(wait / 2))
    }
}

/// How a stream ended.
struct Ended {
    why: String,
    /// When it was up (subscribed), if it was.
    up_since: Option<tokio::time::Instant>,
    /// A refusal or close (a replica stopping or gone), not an error that
    /// trying again soon would only repeat.
    transient: bool,
}

impl Ended {
    fn before_up(why: String, transient: bool) -> Ended {
        Ended { why, up_since: None, transient }
    }
}

/// Whether a status is a replica going away or not there yet.
fn transient(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Aborted)
}

/// One stream, from connect to its end; says why it ended.
async fn once(
    cfg: &SubscribeConfig,
    endpoint_url: &str,
    plan_tx: &watch::Sender<Option<Arc<Received>>>,
    link_tx: &watch::Sender<LinkState>,
    out_rx: &mut mpsc::UnboundedReceiver<Msg>,
    self_tx: &mpsc::UnboundedSender<Msg>,
    resend: &Arc<Mutex<Resend>>,
) -> Ended {
    // Read on every connect: a rotated token replaces the one that expired.
    let token = match cfg.token_file.as_deref().map(read_token).transpose() {
        Ok(t) => t,
        Err(e) => return Ended::before_up(format!("token file: {e}"), false),
    };
    let ep = match endpoint(endpoint_url, cfg.tls.as_ref(), cfg.connect_timeout) {
        Ok(e) => e,
        Err(e) => return Ended::before_up(e, false),
    };
    let channel = match ep.connect().await {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot connect to {endpoint_url}: {}", error_chain(&e));
            // Refused or timed out: a replica not (or no longer) there. A
            // TLS failure is not.
            let refused = !why.contains("certificate") && !why.contains("tls") && !why.contains("TLS");
            return Ended::before_up(why, refused);
        }
    };
    let mut client = PlanServiceClient::new(channel).max_decoding_message_size(MAX_PLAN_BYTES);
    let (tx, rx) = mpsc::unbounded_channel::<GatewayMessage>();
    let serving = plan_tx.borrow().as_ref().map_or(0, |p| p.version);
    let _ = tx.send(GatewayMessage {
        msg: Some(Msg::Hello(Hello {
            node: cfg.node.clone(),
            serving_version: serving,
            accepts_deltas: true,
            accepts_parts: true,
        })),
    });
    {
        let r = resend.lock().unwrap();
        for m in [r.ack.clone().map(Msg::Ack), r.report.clone().map(Msg::Report)].into_iter().flatten() {
            let _ = tx.send(GatewayMessage { msg: Some(m) });
        }
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    if let Some(t) = token {
        let Ok(mut v) = MetadataValue::try_from(format!("Bearer {t}")) else {
            return Ended::before_up("token file: not a valid header value".into(), false);
        };
        v.set_sensitive(true);
        request.metadata_mut().insert("authorization", v);
    }
    let mut inbound = match client.subscribe(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Ended::before_up(status_text(&s), transient(&s)),
    };
    let up_since = Some(tokio::time::Instant::now());
    let ended = |why: String, transient: bool| Ended { why, up_since, transient };
    link_tx.send_replace(LinkState::Connected);
    // The version of this stream's last plan that did not parse, if any.
    let mut unparsed: Option<u64> = None;
    // A whole plan's parts so far (PlanUpdate.more), and its version.
    let mut parts: Option<(u64, String)> = None;
    tracing::info!(endpoint = %endpoint_url, node = %cfg.node, "plan stream up");
    loop {
        tokio::select! {
            m = out_rx.recv() => {
                let Some(m) = m else { return ended("subscription dropped".into(), false) };
                {
                    let mut r = resend.lock().unwrap();
                    match &m {
                        Msg::Ack(a) => r.ack = Some(a.clone()),
                        Msg::Report(rep) => r.report = Some(rep.clone()),
                        Msg::Hello(_) => {}
                    }
                }
                if tx.send(GatewayMessage { msg: Some(m) }).is_err() {
                    return ended("stream closed".into(), true);
                }
            }
            u = inbound.message() => {
                let u = match u {
                    Ok(Some(u)) => u,
                    Ok(None) => return ended("control plane closed the stream".into(), true),
                    Err(s) => {
                        let t = transient(&s);
                        return ended(status_text(&s), t);
                    }
                };
                let u = match join_parts(&mut parts, u) {
                    Ok(Some(u)) => u,
                    Ok(None) => continue,
                    Err(why) => return ended(why, true),
                };
                // A delta on a version that did not parse is refused the
                // same way, without a resubscribe that would only fetch
                // the same plan again.
                if !u.delta_json.is_empty() && unparsed == Some(u.base_version) {
                    unparsed = Some(u.version);
                    let error = format!("builds on version {}, which did not parse", u.base_version);
                    let _ = self_tx.send(Msg::Ack(Ack { version: u.version, error }));
                    continue;
                }
                let (plan, delta) = match received_plan(plan_tx, &u) {
                    Ok(got) => got,
                    Err(Refused::Parse(e)) => {
                        tracing::error!(version = u.version, error = %e, "plan does not parse; keeping the last one");
                        unparsed = Some(u.version);
                        let _ = self_tx.send(Msg::Ack(Ack { version: u.version, error: format!("plan does not parse: {e}") }));
                        continue;
                    }
                    // The stream's plans no longer follow the one held:
                    // subscribing again sends the plan whole.
                    Err(Refused::Delta(e)) => return ended(format!("plan version {}: {e}", u.version), true),
                };
                // The same plan again after a reconnect (the last ack was
                // resent). Compared by content too: a restarted control plane
                // numbers its plans from 1 again, and its version 1 need not
                // be the one this gateway holds.
                let same = plan_tx.borrow().as_ref().is_some_and(|p| p.version == u.version && p.plan == plan);
                if same {
                    continue;
                }
                if reack_same_content(plan_tx, &tx, resend, u.version, &plan) {
                    continue;
                }
                tracing::info!(version = u.version, delta = !u.delta_json.is_empty(), "new plan from the control plane");
                let seq = plan_tx.borrow().as_ref().map_or(0, |p| p.seq + 1);
                plan_tx.send_replace(Some(Arc::new(Received { version: u.version, plan, seq, delta })));
            }
        }
    }
}

/// `u`, or, for the parts of a whole plan, nothing until the last arrives
/// and then the plan whole. Parts of another version, or past
/// [`MAX_PLAN_BYTES`] together, end the stream (subscribing again sends
/// the plan anew).
pub fn join_parts(
    parts: &mut Option<(u64, String)>,
    mut u: crate::v1::PlanUpdate,
) -> Result<Option<crate::v1::PlanUpdate>, String> {
    if u.more && !u.delta_json.is_empty() {
        return Err(format!("plan version {}: a part of a whole plan carries a delta", u.version));
    }
    let Some((version, mut joined)) = parts.take() else {
        if u.more {
            *parts = Some((u.version, std::mem::take(&mut u.plan_json)));
        }
        return Ok((!u.more).then_some(u));
    };
    if u.version != version || !u.delta_json.is_empty() {
        return Err(format!("plan version {version} in parts, then an update of version {}", u.version));
    }
    if joined.len() + u.plan_json.len() > MAX_PLAN_BYTES {
        return Err(format!("plan version {version} in parts is larger than {MAX_PLAN_BYTES} bytes"));
    }
    joined.push_str(&u.plan_json);
    if u.more {
        *parts = Some((version, joined));
        return Ok(None);
    }
    u.plan_json = joined;
    Ok(Some(u))
}

/// Why an update gave no plan.
enum Refused {
    /// A whole plan that does not parse (acked as rejected).
    Parse(String),
    /// A delta that does not parse or does not follow the plan held.
    Delta(String),
}

/// The plan an update carries: whole, or the plan held changed by its delta
/// (and that delta).
fn received_plan(
    plan_tx: &watch::Sender<Option<Arc<Received>>>,
    u: &crate::v1::PlanUpdate,
) -> Result<(Plan, Option<PlanDelta>), Refused> {
    if u.delta_json.is_empty() {
        let plan = serde_json::from_str::<Plan>(&u.plan_json).map_err(|e| Refused::Parse(e.to_string()))?;
        return Ok((plan, None));
    }
    let delta: PlanDelta = serde_json::from_str(&u.delta_json).map_err(|e| Refused::Delta(format!("delta: {e}")))?;
    if delta.version != u.version || delta.base != u.base_version {
        return Err(Refused::Delta("the delta's versions are not the update's".into()));
    }
    // The plan held carries its version: `apply` refuses one that is not
    // the delta's base.
    let held = plan_tx.borrow().clone().ok_or_else(|| Refused::Delta("a delta before any plan".into()))?;
    let plan = delta.apply(&held.plan).map_err(|e| Refused::Delta(e.to_string()))?;
    Ok((plan, Some(delta)))
}

/// Another replica's plan (or a restarted one's) that says what the plan
/// held says, under another version: once the held plan was acknowledged,
/// the new version is acknowledged the same way and held without waking
/// the data plane (nothing to recompile, no session disturbed). True when
/// done; false when the plan is to be published as new.
fn reack_same_content(
    plan_tx: &watch::Sender<Option<Arc<Received>>>,
    tx: &mpsc::UnboundedSender<GatewayMessage>,
    resend: &Arc<Mutex<Resend>>,
    version: u64,
    plan: &Plan,
) -> bool {
    let held = plan_tx.borrow().clone();
    let Some(held) = held else { return false };
    if !held.plan.same_but_version(plan) {
        return false;
    }
    let mut r = resend.lock().unwrap();
    let Some(ack) = r.ack.clone().filter(|a| a.version == held.version) else { return false };
    let ack = Ack { version, error: ack.error };
    r.ack = Some(ack.clone());
    let _ = tx.send(GatewayMessage { msg: Some(Msg::Ack(ack)) });
    plan_tx.send_if_modified(|p| {
        *p = Some(Arc::new(Received { version, plan: plan.clone(), seq: held.seq + 1, delta: None }));
        false
    });
    tracing::info!(version, was = held.version, "the same plan under another version; acknowledged as applied");
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(endpoints: &str, node: &str) -> Retry {
        let mut cfg = SubscribeConfig::new(endpoints, node);
        cfg.backoff_min = Duration::from_millis(100);
        cfg.backoff_max = Duration::from_secs(10);
        Retry::new(&cfg)
    }

    const NEVER_UP: Option<Duration> = None;
    const NO_TIME: Duration = Duration::ZERO;

    #[test]
    fn addresses_are_split_on_commas() {
        assert_eq!(split_endpoints(" http://a:1 , http://b:2,"), ["http://a:1", "http://b:2"]);
        assert_eq!(split_endpoints("http://a:1"), ["http://a:1"]);
    }

    #[test]
    fn a_stream_that_was_up_is_followed_at_once_by_the_next_address() {
        let mut r = retry("http://a:1,http://b:2", "gw-0");
        let first = r.next;
        assert_eq!(r.after(Some(Duration::from_secs(30)), true, NO_TIME), Duration::ZERO);
        assert_eq!(r.next, 1 - first);
    }

    #[test]
    fn each_address_is_tried_at_once_before_any_backoff() {
        let mut r = retry("http://a:1,http://b:2,http://c:3", "gw-0");
        assert_eq!(r.after(NEVER_UP, true, NO_TIME), Duration::ZERO);
        assert_eq!(r.after(NEVER_UP, true, NO_TIME), Duration::ZERO);
        assert_eq!(r.after(NEVER_UP, true, NO_TIME), Duration::from_millis(100), "all three refused: back off");
    }

    #[test]
    fn refusals_and_closes_back_off_to_at_most_a_second_and_other_errors_further() {
        let mut r = retry("http://svc:1", "gw-0");
        let waits: Vec<Duration> = (0..8).map(|_| r.after(NEVER_UP, true, NO_TIME)).collect();
        assert_eq!(waits[0], Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)), "{waits:?}");
        assert_eq!(waits[7], Duration::from_secs(1));
        let mut r = retry("http://svc:1", "gw-0");
        let last = (0..8).map(|_| r.after(NEVER_UP, false, NO_TIME)).last().unwrap();
        assert_eq!(last, Duration::from_secs(10), "an unknown node or a bad token is not retried each second");
    }

    #[test]
    fn a_stream_up_only_briefly_counts_as_a_failure() {
        let mut r = retry("http://svc:1", "gw-0");
        assert_eq!(r.after(Some(Duration::from_millis(10)), true, NO_TIME), Duration::from_millis(100));
        assert_eq!(r.after(Some(Duration::from_secs(5)), true, NO_TIME), Duration::ZERO, "steady: start over");
        assert_eq!(r.after(NEVER_UP, true, NO_TIME), Duration::from_millis(100), "backoff reset");
    }

    #[test]
    fn gateways_start_on_replicas_their_names_choose() {
        let starts: std::collections::BTreeSet<usize> =
            (0..16).map(|i| retry("http://a:1,http://b:2", &format!("gw-{i}")).next).collect();
        assert_eq!(starts.len(), 2, "sixteen gateways spread over both");
        assert_eq!(retry("http://a:1,http://b:2", "gw-3").next, retry("http://a:1,http://b:2", "gw-3").next);
    }
}
