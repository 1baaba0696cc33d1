//! Prometheus metrics over HTTP (`GET /metrics`, OpenMetrics text by prometheus-client),
//! rendered from the reports the workers publish a few times a second: the
//! packet path never touches this.

use super::http::Response;
use super::worker::{IoDrop, WorkerReport};
use crate::wire::IpProtocol;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the gateway knows beyond the workers' reports.
#[derive(Debug, Clone, Default)]
pub struct GatewayInfo {
    pub plan_version: u64,
    /// (interface, XDP mode, AF_XDP mode)
    pub modes: Vec<(String, String, String)>,
    /// (interface, redirected, dropped for want of a socket, passed)
    pub xdp: Vec<(String, super::xdp::XdpStats)>,
    /// The workers' shared FQDN cache.
    pub fqdn: Option<Arc<crate::nat::FqdnCache>>,
    /// Plans refused whole since start, and whether the latest one was.
    pub plan_rejections: u64,
    pub plan_rejected: bool,
    /// Whether the stream from egret-control is up (None: plan from a file).
    pub control_connected: Option<bool>,
    /// The IPFIX exporter's figures, when it runs.
    pub ipfix: Option<Arc<super::ipfix::IpfixCounters>>,
}

/// The exposition's families, each declared once here: name (counters
/// without the `_total` the encoder appends), type and help.
mod family {
    use prometheus_client::metrics::MetricType::{self, Counter, Gauge};
    pub type Family = (&'static str, MetricType, &'static str);
    pub const PLAN_VERSION: Family = ("egret_plan_version", Gauge, "Version of the plan being served.");
    pub const MODE: Family = ("egret_mode", Gauge, "XDP and AF_XDP modes in use (1 per interface).");
    pub const XDP_PACKETS: Family = ("egret_xdp_packets", Counter, "Packets seen by the XDP program, by verdict.");
    pub const PLAN_REJECTIONS: Family =
        ("egret_plan_rejections", Counter, "Plans refused whole (the previous plan kept serving).");
    pub const PLAN_REJECTED: Family =
        ("egret_plan_rejected", Gauge, "1 while the latest plan given was refused and an older one serves.");
    pub const CONTROL_CONNECTED: Family =
        ("egret_control_connected", Gauge, "1 while the plan stream from egret-control is up.");
    pub const SESSIONS: Family = ("egret_sessions", Gauge, "Live sessions by config and protocol.");
    pub const SESSION_SLOTS: Family =
        ("egret_session_slots", Gauge, "Session table slots in use (live and cooling), by worker.");
    pub const SESSION_CAPACITY: Family =
        ("egret_session_capacity", Gauge, "Session table capacity, by worker: new flows are refused at it.");
    pub const WORKER_TURNS: Family =
        ("egret_worker_turns", Counter, "Poll-loop turns, by worker (a worker that stops turning has hung).");
    pub const PORTS_IN_USE: Family =
        ("egret_ports_in_use", Gauge, "Egress ports held, by address and protocol (mappings), or port-reuse sessions.");
    pub const PORTS_FREE: Family = (
        "egret_ports_free",
        Gauge,
        "Egress ports free for new endpoint-independent mappings, by address and protocol.",
    );
    pub const PORTS_REFUSED: Family = (
        "egret_ports_refused",
        Counter,
        "New flows refused for want of a port, by the address their pod is paired with and protocol.",
    );
    pub const BUSY_SCANS: Family = (
        "egret_port_reuse_busy_scans",
        Counter,
        "Port reuse: new flows to a destination that found no free port by random probes and scanned (its tuples ~85% taken or more), for the busiest destinations.",
    );
    pub const BUSY_REFUSED: Family = (
        "egret_port_reuse_busy_refused",
        Counter,
        "Port reuse: new flows to a destination refused because every tuple toward it was taken, for the busiest destinations.",
    );
    pub const PACKETS: Family = ("egret_packets", Counter, "Packets translated, by worker and direction.");
    pub const BYTES: Family = ("egret_bytes", Counter, "Bytes translated, by worker and direction.");
    pub const DROPS: Family = ("egret_drops", Counter, "Packets dropped, by worker and reason.");
    pub const ALLOC_FAILURES: Family = ("egret_alloc_failures", Counter, "New flows refused, by reason.");
    pub const HANDOFF: Family = ("egret_handoff", Counter, "Frames handed to the worker owning their session.");
    pub const HANDOFF_RING_DEPTH: Family =
        ("egret_handoff_ring_depth", Gauge, "Frames waiting in a worker's handoff ring.");
    pub const BUSY_UNFOLLOWED: Family = (
        "egret_port_reuse_busy_unfollowed",
        Counter,
        "Port-reuse scans and refusals toward destinations not followed as busy: the table, or the config's quarter of it, was full.",
    );
    pub const RX_LATENCY_MARKED: Family = (
        "egret_rx_latency_marked",
        Counter,
        "ECN-capable frames the RX latency bound marked Congestion Experienced and forwarded instead of shedding.",
    );
    pub const RULE_HITS: Family = (
        "egret_policy_rule_hits",
        Counter,
        "New flows decided by each egress policy rule (\"default\": no rule matched).",
    );
    pub const DENY_LOGS_SUPPRESSED: Family = (
        "egret_policy_deny_logs_suppressed",
        Counter,
        "Policy denials not logged (rate limit: 20 per second per worker, 2 of them per pod).",
    );
    pub const SESSIONS_CREATED: Family = ("egret_sessions_created", Counter, "Sessions opened.");
    pub const NAT_LOG_LOST: Family = (
        "egret_nat_log_lost",
        Counter,
        "NAT log records lost because the logger fell behind (a pod's share of its queue included).",
    );
    pub const LOG_OVER_SHARE: Family = (
        "egret_log_records_over_share",
        Counter,
        "Log records (sessions, names, denials) left out because their pod's share of the log queue was full.",
    );
    pub const IPFIX_RECORDS: Family =
        ("egret_ipfix_records_exported", Counter, "NAT event records sent to the IPFIX collector.");
    pub const IPFIX_MESSAGES: Family = ("egret_ipfix_messages", Counter, "IPFIX messages sent.");
    pub const IPFIX_TEMPLATES: Family = ("egret_ipfix_templates", Counter, "IPFIX template sets sent.");
    pub const IPFIX_SEND_ERRORS: Family =
        ("egret_ipfix_send_errors", Counter, "IPFIX messages the socket refused to send.");
    pub const IPFIX_DROPPED: Family = (
        "egret_ipfix_records_dropped",
        Counter,
        "NAT event records not exported, by reason (the queue full, the pod's share of it full, or in a failed send).",
    );
    pub const DNS_UNTRUSTED: Family = (
        "egret_dns_untrusted",
        Counter,
        "DNS answers not learned from: their source is not in the policy's dnsResolvers.",
    );
    pub const CUT_FLOW_RESETS: Family = (
        "egret_cut_flow_resets",
        Counter,
        "Server segments of TCP flows a rejecting policy cut, sent on to the pod as resets.",
    );
    pub const TUNNEL_PEERS: Family = ("egret_tunnel_peers", Gauge, "WireGuard peers (tunnelled pods), by config.");
    pub const TUNNEL_LIVE_PEERS: Family =
        ("egret_tunnel_live_peers", Gauge, "Peers with a session (a handshake within 180 s), by config.");
    pub const TUNNEL_HANDSHAKES: Family =
        ("egret_tunnel_handshakes", Counter, "Handshake initiations answered, by config and outcome.");
    pub const TUNNEL_PACKETS: Family =
        ("egret_tunnel_packets", Counter, "Tunnel data packets, by config and direction.");
    pub const TUNNEL_BYTES: Family =
        ("egret_tunnel_bytes", Counter, "Inner bytes through tunnels, by config and direction.");
    pub const TUNNEL_ROAMS: Family =
        ("egret_tunnel_roams", Counter, "Peer endpoint changes learned from authenticated datagrams.");
    pub const TUNNEL_RESUMES: Family =
        ("egret_tunnel_resumes", Counter, "Handshakes started to resume a pod's tunnel after a failover or restart.");
    pub const TUNNEL_HELD: Family = (
        "egret_tunnel_held_for_handshake",
        Counter,
        "Packets for a pod held while the handshake renewing its expired session ran.",
    );
    pub const TUNNEL_DROPS: Family = ("egret_tunnel_drops", Counter, "Tunnel datagrams dropped, by config and reason.");
    pub const FQDN_ENTRIES: Family =
        ("egret_fqdn_cache_entries", Gauge, "(pod, address) pairs the FQDN rules' DNS learning holds.");
    pub const FQDN_LEARNED: Family = ("egret_fqdn_learned", Counter, "DNS answers learned for FQDN rules.");
    pub const FQDN_REFUSED: Family = (
        "egret_fqdn_refused",
        Counter,
        "DNS answers not learned (or a name displaced): the cache, or that pod's share of it, was full.",
    );
    pub const NAME_REFUSED: Family = (
        "egret_policy_name_refused",
        Counter,
        "Flows an FQDN rule allowed on condition, then refused for the name on the wire (TLS SNI, HTTP Host), by rule and reason.",
    );
    pub const NAME_CHECKS_PENDING: Family = (
        "egret_name_checks_pending",
        Gauge,
        "Flows awaiting their name on the wire, per worker (bound: 16384 per worker, 1/16 of it per pod, 1/4 per config).",
    );
    pub const NETWORK_POLICY_DENIED: Family = (
        "egret_network_policy_denied",
        Counter,
        "New flows denied by Kubernetes NetworkPolicies, per policy (namespace/name) that selects the pod.",
    );
    pub const HTTP_REFUSED: Family = (
        "egret_http_connections_refused",
        Counter,
        "Connections to the probe or metrics port closed at once: the server or that source held its share.",
    );
}

type Labels = Vec<(&'static str, String)>;

/// Writes one family: its descriptor, then a sample per label set.
fn emit(
    enc: &mut DescriptorEncoder,
    (name, kind, help): family::Family,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let sample = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(sample)?,
            _ => ConstGauge::new(v).encode(sample)?,
        }
    }
    Ok(())
}

fn one(v: u64) -> std::iter::Once<(Labels, u64)> {
    std::iter::once((Vec::new(), v))
}

macro_rules! labels {
    ($($k:expr => $v:expr),* $(,)?) => { vec![$(($k, $v.to_string())),*] };
}

/// The workers' reports as metric families, read at each scrape.
#[derive(Debug)]
struct ReportCollector {
    reports: Vec<Arc<Mutex<WorkerReport>>>,
    info: Arc<Mutex<GatewayInfo>>,
}

impl Collector for ReportCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rs: Vec<WorkerReport> = super::worker::read_reports(&self.reports);
        let info = self.info.lock().unwrap_or_else(|e| e.into_inner()).clone();
        encode_reports(&mut enc, &rs, &info)
    }
}

fn encode_reports(
    enc: &mut DescriptorEncoder,
    reports: &[WorkerReport],
    info: &GatewayInfo,
) -> Result<(), std::fmt::Error> {
    use crate::nat::DropReason;
    emit(enc, family::PLAN_VERSION, one(info.plan_version))?;
    emit(enc, family::PLAN_REJECTIONS, one(info.plan_rejections))?;
    emit(enc, family::PLAN_REJECTED, one(u64::from(info.plan_rejected)))?;
    if let Some(up) = info.control_connected {
        emit(enc, family::CONTROL_CONNECTED, one(u64::from(up)))?;
    }
    let per_worker = |f: fn(&WorkerReport) -> u64| reports.iter().map(move |r| (labels!("worker" => r.worker), f(r)));
    emit(enc, family::SESSION_SLOTS, per_worker(|r| r.session_slots as u64))?;
    emit(enc, family::SESSION_CAPACITY, per_worker(|r| r.session_capacity as u64))?;
    emit(enc, family::WORKER_TURNS, per_worker(|r| r.turns))?;
    emit(enc, family::HTTP_REFUSED, one(super::http::CONNECTIONS_REFUSED.load(std::sync::atomic::Ordering::Relaxed)))?;
    if let Some(f) = &info.fqdn {
        use std::sync::atomic::Ordering::Relaxed;
        emit(enc, family::FQDN_ENTRIES, one(f.len() as u64))?;
        emit(enc, family::FQDN_LEARNED, one(f.learned.load(Relaxed)))?;
        emit(enc, family::FQDN_REFUSED, one(f.full.load(Relaxed)))?;
    }
    emit(
        enc,
        family::MODE,
        info.modes.iter().map(|(i, x, a)| (labels!("interface" => i, "xdp" => x, "afxdp" => a), 1)),
    )?;
    emit(
        enc,
        family::XDP_PACKETS,
        info.xdp.iter().flat_map(|(i, st)| {
            [("redirected", st.redirected), ("dropped_no_socket", st.dropped_no_socket), ("passed", st.passed)]
                .map(|(verdict, n)| (labels!("interface" => i, "verdict" => verdict), n))
        }),
    )?;

    let mut by_config: BTreeMap<(String, usize), u64> = Default::default();
    for r in reports {
        for (c, counts) in &r.sessions_by_config {
            for (i, n) in counts.iter().enumerate() {
                *by_config.entry((c.clone(), i)).or_default() += n;
            }
        }
    }
    let proto = |i: usize| IpProtocol::ALL[i].name();
    emit(
        enc,
        family::SESSIONS,
        by_config.iter().map(|((c, i), n)| (labels!("config" => c, "proto" => proto(*i)), *n)),
    )?;

    let ports = super::worker::ports_by_address(reports);
    let per_proto =
        |(a, c): &(std::net::Ipv4Addr, String), i: usize| labels!("address" => a, "config" => c, "proto" => proto(i));
    emit(
        enc,
        family::PORTS_IN_USE,
        ports.iter().flat_map(|(k, p)| {
            (0..3).map(|i| (per_proto(k, i), p.mapped[i])).chain(std::iter::once((
                labels!("address" => k.0, "config" => k.1, "proto" => "port-reuse"),
                p.sessions,
            )))
        }),
    )?;
    emit(
        enc,
        family::PORTS_FREE,
        ports.iter().flat_map(|(k, p)| (0..3).map(move |i| (per_proto(k, i), p.slice - p.mapped[i]))),
    )?;
    emit(
        enc,
        family::PORTS_REFUSED,
        ports.iter().flat_map(|(k, p)| (0..3).map(move |i| (per_proto(k, i), p.refused[i]))),
    )?;
    // Port reuse's busiest destinations, summed over workers.
    let mut busy: BTreeMap<(String, &str, String), (u64, u64)> = Default::default();
    for b in reports.iter().flat_map(|r| &r.busy_destinations) {
        let name = IpProtocol::from_number(b.proto).map_or("other", |p| p.name());
        let e = busy.entry((b.config.clone(), name, format!("{}:{}", b.remote, b.remote_port))).or_default();
        (e.0, e.1) = (e.0 + b.scans, e.1 + b.refused);
    }
    let busy_labels = |(c, p, d): &(String, &str, String)| labels!("config" => c, "proto" => *p, "destination" => d);
    emit(enc, family::BUSY_SCANS, busy.iter().map(|(k, v)| (busy_labels(k), v.0)))?;
    emit(enc, family::BUSY_REFUSED, busy.iter().map(|(k, v)| (busy_labels(k), v.1)))?;

    let by_direction = |f: fn(&crate::nat::Counters) -> [u64; 2]| {
        reports.iter().flat_map(move |r| {
            let [i, o] = f(&r.nat);
            [("in2out", i), ("out2in", o)].map(|(d, v)| (labels!("worker" => r.worker, "direction" => d), v))
        })
    };
    emit(enc, family::PACKETS, by_direction(|n| [n.in2out_packets, n.out2in_packets]))?;
    emit(enc, family::BYTES, by_direction(|n| [n.in2out_bytes, n.out2in_bytes]))?;
    emit(
        enc,
        family::DROPS,
        reports.iter().flat_map(|r| {
            let nat = DropReason::ALL.map(|d| (labels!("worker" => r.worker, "reason" => d.name()), r.nat.dropped(d)));
            let io = IoDrop::ALL.map(|d| (labels!("worker" => r.worker, "reason" => d.name()), r.io.dropped(d)));
            nat.into_iter().chain(io)
        }),
    )?;
    emit(
        enc,
        family::ALLOC_FAILURES,
        [
            ("quota", DropReason::QuotaExceeded),
            ("pool_exhausted", DropReason::PoolExhausted),
            ("session_table_full", DropReason::SessionTableFull),
        ]
        .map(|(reason, d)| (labels!("reason" => reason), reports.iter().map(|r| r.nat.dropped(d)).sum())),
    )?;
    emit(enc, family::HANDOFF, reports.iter().map(|r| (labels!("worker" => r.worker), r.io.handoff_sent)))?;
    emit(
        enc,
        family::HANDOFF_RING_DEPTH,
        reports.iter().map(|r| (labels!("worker" => r.worker), r.io.handoff_ring_depth)),
    )?;
    emit(
        enc,
        family::RX_LATENCY_MARKED,
        reports.iter().map(|r| (labels!("worker" => r.worker), r.io.rx_latency_marked)),
    )?;
    let mut hits: BTreeMap<(String, usize, String), u64> = Default::default();
    for r in reports {
        for h in &r.rule_hits {
            for (i, (rule, n)) in h.rules.iter().enumerate() {
                *hits.entry((h.config.clone(), i, rule.clone())).or_default() += n;
            }
        }
    }
    emit(enc, family::RULE_HITS, hits.iter().map(|((c, _, rule), n)| (labels!("config" => c, "rule" => rule), *n)))?;
    let mut refused: BTreeMap<(String, String, &str), u64> = Default::default();
    for h in reports.iter().flat_map(|r| &r.rule_hits) {
        for &(i, why, n) in &h.refused {
            let rule = h.rules.get(i as usize).map_or("default", |(name, _)| name.as_str());
            *refused.entry((h.config.clone(), rule.to_string(), why)).or_default() += n;
        }
    }
    emit(
        enc,
        family::NAME_REFUSED,
        refused.iter().map(|((c, rule, why), n)| (labels!("config" => c, "rule" => rule, "reason" => *why), *n)),
    )?;
    emit(
        enc,
        family::NAME_CHECKS_PENDING,
        reports.iter().map(|r| (labels!("worker" => r.worker), r.name_checks_pending as u64)),
    )?;
    let mut denied: BTreeMap<String, u64> = Default::default();
    for d in reports.iter().flat_map(|r| &r.network_policy_denials) {
        *denied.entry(d.policy.clone()).or_default() += d.denied;
    }
    emit(enc, family::NETWORK_POLICY_DENIED, denied.iter().map(|(p, n)| (labels!("policy" => p), *n)))?;
    let sum = |f: fn(&WorkerReport) -> u64| one(reports.iter().map(f).sum());
    emit(enc, family::DENY_LOGS_SUPPRESSED, sum(|r| r.deny_logs_suppressed))?;
    emit(enc, family::SESSIONS_CREATED, sum(|r| r.nat.sessions_created))?;
    // Every record lost, a pod's share full included (the alert watches
    // this one); the share's alone on its own.
    emit(
        enc,
        family::NAT_LOG_LOST,
        sum(|r| r.nat.nat_events_lost + r.io.log_records_lost + r.io.log_records_over_share),
    )?;
    emit(enc, family::LOG_OVER_SHARE, sum(|r| r.io.log_records_over_share))?;
    if let Some(x) = &info.ipfix {
        use std::sync::atomic::Ordering::Relaxed;
        emit(enc, family::IPFIX_RECORDS, one(x.records_exported.load(Relaxed)))?;
        emit(enc, family::IPFIX_MESSAGES, one(x.messages_sent.load(Relaxed)))?;
        emit(enc, family::IPFIX_TEMPLATES, one(x.templates_sent.load(Relaxed)))?;
        emit(enc, family::IPFIX_SEND_ERRORS, one(x.send_errors.load(Relaxed)))?;
        let queue_full: u64 = reports.iter().map(|r| r.io.ipfix_records_lost).sum();
        let pod_share: u64 = reports.iter().map(|r| r.io.ipfix_records_over_share).sum();
        emit(
            enc,
            family::IPFIX_DROPPED,
            [
                ("queue_full", queue_full),
                ("pod_share", pod_share),
                ("send_failed", x.records_send_failed.load(Relaxed)),
            ]
            .map(|(reason, n)| (labels!("reason" => reason), n)),
        )?;
    }
    emit(enc, family::DNS_UNTRUSTED, sum(|r| r.nat.dns_untrusted))?;
    emit(enc, family::BUSY_UNFOLLOWED, sum(|r| r.nat.busy_destinations_unfollowed))?;
    emit(enc, family::CUT_FLOW_RESETS, sum(|r| r.nat.cut_flow_resets))?;
    encode_tunnels(enc, reports)
}

/// The WireGuard tunnels, per config (never a key: the public one is in
/// the status file).
fn encode_tunnels(enc: &mut DescriptorEncoder, reports: &[WorkerReport]) -> Result<(), std::fmt::Error> {
    let tunnels = crate::tunnel::stage::merge(reports.iter().flat_map(|r| &r.tunnels));
    if tunnels.is_empty() {
        return Ok(());
    }
    let per_config = |f: fn(&crate::tunnel::stage::TunnelReport) -> u64| {
        tunnels.iter().map(move |t| (labels!("config" => t.config), f(t)))
    };
    let two =
        |a: &'static str, b: &'static str, key: &'static str, f: fn(&crate::tunnel::TunnelCounters) -> [u64; 2]| {
            tunnels.iter().flat_map(move |t| {
                let [x, y] = f(&t.counters);
                [(a, x), (b, y)].map(|(v, n)| (labels!("config" => t.config, key => v), n))
            })
        };
    emit(enc, family::TUNNEL_PEERS, per_config(|t| t.peers as u64))?;
    emit(enc, family::TUNNEL_LIVE_PEERS, per_config(|t| t.live_peers as u64))?;
    emit(
        enc,
        family::TUNNEL_HANDSHAKES,
        two("completed", "cookie", "outcome", |c| [c.handshakes_completed, c.cookie_replies]),
    )?;
    emit(enc, family::TUNNEL_PACKETS, two("rx", "tx", "direction", |c| [c.rx_packets, c.tx_packets]))?;
    emit(enc, family::TUNNEL_BYTES, two("rx", "tx", "direction", |c| [c.rx_bytes, c.tx_bytes]))?;
    emit(enc, family::TUNNEL_ROAMS, per_config(|t| t.counters.roams))?;
    emit(enc, family::TUNNEL_RESUMES, per_config(|t| t.counters.resumes))?;
    emit(enc, family::TUNNEL_HELD, per_config(|t| t.counters.held_for_handshake))?;
    emit(
        enc,
        family::TUNNEL_DROPS,
        tunnels.iter().flat_map(|t| {
            crate::tunnel::TunnelDrop::ALL
                .map(|r| (labels!("config" => t.config, "reason" => r.name()), t.counters.dropped(r)))
        }),
    )
}

/// The exposition (OpenMetrics text) for these reports.
pub fn render(reports: &[WorkerReport], info: &GatewayInfo) -> String {
    let collector = ReportCollector {
        reports: reports.iter().map(|r| Arc::new(Mutex::new(r.clone()))).collect(),
        info: Arc::new(Mutex::new(info.clone())),
    };
    encode_registry(collector)
}

fn encode_registry(collector: ReportCollector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Serves `/metrics` on `addr` until `stop`.
pub fn serve(
    addr: SocketAddr,
    reports: Vec<Arc<Mutex<WorkerReport>>>,
    info: Arc<Mutex<GatewayInfo>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    super::http::serve(addr, "egret-metrics", stop, move |path| {
        if path != "/metrics" {
            return Response::text(404, "try /metrics\n");
        }
        let collector = ReportCollector { reports: reports.clone(), info: Arc::clone(&info) };
        Response { status: 200, content_type: OPENMETRICS, body: encode_registry(collector) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let mut r = WorkerReport { worker: 1, session_capacity: 1000, turns: 77, ..Default::default() };
        r.nat.in2out_packets = 5;
        r.io.ipfix_records_lost = 3;
        r.io.log_records_lost = 4;
        r.io.log_records_over_share = 5;
        r.io.rx_latency_marked = 11;
        r.nat.busy_destinations_unfollowed = 6;
        r.busy_destinations = vec![crate::nat::BusyDestination {
            config: "demo/a".into(),
            proto: 17,
            remote: std::net::Ipv4Addr::new(198, 19, 0, 53),
            remote_port: 53,
            scans: 4,
            refused: 9,
        }];
        r.nat.drops[crate::nat::DropReason::QuotaExceeded as usize] = 2;
        r.sessions_by_config = vec![("demo/a".into(), [1, 2, 0])];
        r.network_policy_denials =
            vec![crate::nat::NetworkPolicyDenials { policy: "team-a/default-deny".into(), denied: 7 }];
        r.ports = vec![crate::nat::PortUsage {
            addr: "198.19.100.3".parse().unwrap(),
            config: "demo/a".into(),
            mapped: [1, 2, 0],
            sessions: 0,
            slice: 64512,
            refused: [0, 4, 0],
        }];
        let fqdn = crate::nat::FqdnCache::new(16);
        fqdn.learn(1, 2, "api.example.com", 100);
        let info = GatewayInfo {
            plan_version: 3,
            modes: vec![("gw-in".into(), "Native".into(), "copy".into())],
            xdp: vec![],
            fqdn: Some(fqdn),
            plan_rejections: 2,
            plan_rejected: true,
            control_connected: Some(false),
            ipfix: Some(Arc::new(crate::gateway::ipfix::IpfixCounters::default())),
        };
        let text = render(&[r], &info);
        for line in [
            "egret_plan_version 3",
            "egret_plan_rejections_total 2",
            "egret_plan_rejected 1",
            "egret_control_connected 0",
            "egret_ipfix_records_dropped_total{reason=\"queue_full\"} 3",
            "egret_port_reuse_busy_refused_total{config=\"demo/a\",proto=\"udp\",destination=\"198.19.0.53:53\"} 9",
            "egret_mode{interface=\"gw-in\",xdp=\"Native\",afxdp=\"copy\"} 1",
            "egret_sessions{config=\"demo/a\",proto=\"udp\"} 2",
            "egret_ports_in_use{address=\"198.19.100.3\",config=\"demo/a\",proto=\"udp\"} 2",
            "egret_ports_free{address=\"198.19.100.3\",config=\"demo/a\",proto=\"udp\"} 64510",
            "egret_ports_refused_total{address=\"198.19.100.3\",config=\"demo/a\",proto=\"udp\"} 4",
            "egret_session_capacity{worker=\"1\"} 1000",
            "egret_worker_turns_total{worker=\"1\"} 77",
            "egret_packets_total{worker=\"1\",direction=\"in2out\"} 5",
            "egret_rx_latency_marked_total{worker=\"1\"} 11",
            "egret_nat_log_lost_total 9",
            "egret_log_records_over_share_total 5",
            "egret_port_reuse_busy_unfollowed_total 6",
            "egret_drops_total{worker=\"1\",reason=\"quota_exceeded\"} 2",
            "egret_alloc_failures_total{reason=\"quota\"} 2",
            "egret_fqdn_cache_entries 1",
            "egret_network_policy_denied_total{policy=\"team-a/default-deny\"} 7",
            "egret_fqdn_learned_total 1",
            "egret_fqdn_refused_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        for reason in crate::nat::DropReason::ALL.map(|r| r.name()).into_iter().chain(IoDrop::ALL.map(|r| r.name())) {
            let prefix = format!("egret_drops_total{{worker=\"1\",reason=\"{reason}\"}} ");
            assert!(text.lines().any(|l| l.starts_with(&prefix)), "no drop counter for {reason}");
        }
        assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    }
}
