//! Prometheus metrics over HTTP (`GET /metrics`, text exposition format),
//! rendered from the reports the workers publish a few times a second: the
//! packet path never touches this.

use super::http::Response;
use super::worker::WorkerReport;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// What the gateway knows beyond the workers' reports.
#[derive(Debug, Clone, Default)]
pub struct GatewayInfo {
    pub plan_version: u64,
    /// (interface, XDP mode, AF_XDP mode)
    pub modes: Vec<(String, String, String)>,
    /// (interface, redirected, dropped for want of a socket, passed)
    pub xdp: Vec<(String, super::xdp::XdpStats)>,
}

const PROTOS: [&str; 3] = ["tcp", "udp", "icmp"];

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The exposition text for these reports.
pub fn render(reports: &[WorkerReport], info: &GatewayInfo) -> String {
    let mut o = String::with_capacity(8192);
    metric(&mut o, "egret_plan_version", "gauge", "Version of the plan being served.");
    let _ = writeln!(o, "egret_plan_version {}", info.plan_version);
    metric(&mut o, "egret_mode", "gauge", "XDP and AF_XDP modes in use (1 per interface).");
    for (i, x, a) in &info.modes {
        let _ = writeln!(o, "egret_mode{{interface=\"{i}\",xdp=\"{x}\",afxdp=\"{a}\"}} 1");
    }
    metric(&mut o, "egret_xdp_packets_total", "counter", "Packets seen by the XDP program, by verdict.");
    for (i, st) in &info.xdp {
        for (verdict, n) in
            [("redirected", st.redirected), ("dropped_no_socket", st.dropped_no_socket), ("passed", st.passed)]
        {
            let _ = writeln!(o, "egret_xdp_packets_total{{interface=\"{i}\",verdict=\"{verdict}\"}} {n}");
        }
    }

    metric(&mut o, "egret_sessions", "gauge", "Live sessions by config and protocol.");
    let mut by_config: std::collections::BTreeMap<(String, usize), u64> = Default::default();
    for r in reports {
        for (c, counts) in &r.sessions_by_config {
            for (i, n) in counts.iter().enumerate() {
                *by_config.entry((c.clone(), i)).or_default() += n;
            }
        }
    }
    for ((c, i), n) in &by_config {
        let _ = writeln!(o, "egret_sessions{{config=\"{c}\",proto=\"{}\"}} {n}", PROTOS[*i]);
    }

    metric(
        &mut o,
        "egret_ports_in_use",
        "gauge",
        "Egress ports held, by address and protocol (mappings), or port-reuse sessions.",
    );
    metric(
        &mut o,
        "egret_ports_free",
        "gauge",
        "Egress ports free for new endpoint-independent mappings, by address and protocol.",
    );
    let mut ports: std::collections::BTreeMap<(std::net::Ipv4Addr, String), ([u64; 3], u64, u64)> = Default::default();
    for r in reports {
        for u in &r.ports {
            let e = ports.entry((u.addr, u.config.clone())).or_default();
            for i in 0..3 {
                e.0[i] += u64::from(u.mapped[i]);
            }
            e.1 += u64::from(u.sessions);
            e.2 += u64::from(u.slice);
        }
    }
    for ((a, c), (mapped, sessions, slice)) in &ports {
        for (i, p) in PROTOS.iter().enumerate() {
            let _ = writeln!(o, "egret_ports_in_use{{address=\"{a}\",config=\"{c}\",proto=\"{p}\"}} {}", mapped[i]);
            let _ =
                writeln!(o, "egret_ports_free{{address=\"{a}\",config=\"{c}\",proto=\"{p}\"}} {}", slice - mapped[i]);
        }
        let _ = writeln!(o, "egret_ports_in_use{{address=\"{a}\",config=\"{c}\",proto=\"port-reuse\"}} {sessions}");
    }

    metric(&mut o, "egret_packets_total", "counter", "Packets translated, by worker and direction.");
    metric(&mut o, "egret_bytes_total", "counter", "Bytes translated, by worker and direction.");
    for r in reports {
        let w = r.worker;
        let n = &r.nat;
        let _ = writeln!(o, "egret_packets_total{{worker=\"{w}\",direction=\"in2out\"}} {}", n.in2out_packets);
        let _ = writeln!(o, "egret_packets_total{{worker=\"{w}\",direction=\"out2in\"}} {}", n.out2in_packets);
        let _ = writeln!(o, "egret_bytes_total{{worker=\"{w}\",direction=\"in2out\"}} {}", n.in2out_bytes);
        let _ = writeln!(o, "egret_bytes_total{{worker=\"{w}\",direction=\"out2in\"}} {}", n.out2in_bytes);
    }
    metric(&mut o, "egret_drops_total", "counter", "Packets dropped, by worker and reason.");
    for r in reports {
        for reason in crate::nat::DropReason::ALL {
            let _ = writeln!(
                o,
                "egret_drops_total{{worker=\"{}\",reason=\"{}\"}} {}",
                r.worker,
                reason.name(),
                r.nat.dropped(reason)
            );
        }
        let io = &r.io;
        for (reason, v) in [
            ("not_ipv4", io.not_ipv4),
            ("no_route", io.no_route),
            ("no_neighbour", io.no_neighbour),
            ("tx_ring_full", io.tx_ring_full),
            ("no_free_frame", io.no_free_frame),
            ("handoff_overflow", io.handoff_overflow),
        ] {
            let _ = writeln!(o, "egret_drops_total{{worker=\"{}\",reason=\"{reason}\"}} {v}", r.worker);
        }
    }
    metric(&mut o, "egret_alloc_failures_total", "counter", "New flows refused, by reason.");
    for (reason, drop) in [
        ("quota", crate::nat::DropReason::QuotaExceeded),
        ("pool_exhausted", crate::nat::DropReason::PoolExhausted),
        ("session_table_full", crate::nat::DropReason::SessionTableFull),
    ] {
        let v: u64 = reports.iter().map(|r| r.nat.dropped(drop)).sum();
        let _ = writeln!(o, "egret_alloc_failures_total{{reason=\"{reason}\"}} {v}");
    }
    metric(&mut o, "egret_handoff_total", "counter", "Frames handed to the worker owning their session.");
    metric(&mut o, "egret_handoff_ring_depth", "gauge", "Frames waiting in a worker's handoff ring.");
    for r in reports {
        let _ = writeln!(o, "egret_handoff_total{{worker=\"{}\"}} {}", r.worker, r.io.handoff_sent);
        let _ = writeln!(o, "egret_handoff_ring_depth{{worker=\"{}\"}} {}", r.worker, r.io.handoff_ring_depth);
    }
    metric(
        &mut o,
        "egret_policy_rule_hits_total",
        "counter",
        "New flows decided by each egress policy rule (\"default\": no rule matched).",
    );
    let mut hits: std::collections::BTreeMap<(String, usize, String), u64> = Default::default();
    for r in reports {
        for h in &r.rule_hits {
            for (i, (rule, n)) in h.rules.iter().enumerate() {
                *hits.entry((h.config.clone(), i, rule.clone())).or_default() += n;
            }
        }
    }
    for ((c, _, rule), n) in &hits {
        let _ = writeln!(o, "egret_policy_rule_hits_total{{config=\"{c}\",rule=\"{rule}\"}} {n}");
    }
    metric(
        &mut o,
        "egret_policy_deny_logs_suppressed_total",
        "counter",
        "Policy denials not logged (rate limit: 20 per second per worker).",
    );
    let v: u64 = reports.iter().map(|r| r.deny_logs_suppressed).sum();
    let _ = writeln!(o, "egret_policy_deny_logs_suppressed_total {v}");
    metric(&mut o, "egret_sessions_created_total", "counter", "Sessions opened.");
    let v: u64 = reports.iter().map(|r| r.nat.sessions_created).sum();
    let _ = writeln!(o, "egret_sessions_created_total {v}");
    metric(&mut o, "egret_nat_log_lost_total", "counter", "NAT log records lost because the logger fell behind.");
    let v: u64 = reports.iter().map(|r| r.nat.nat_events_lost).sum();
    let _ = writeln!(o, "egret_nat_log_lost_total {v}");
    metric(
        &mut o,
        "egret_dns_untrusted_total",
        "counter",
        "DNS answers not learned from: their source is not in the policy's dnsResolvers.",
    );
    let v: u64 = reports.iter().map(|r| r.nat.dns_untrusted).sum();
    let _ = writeln!(o, "egret_dns_untrusted_total {v}");
    render_tunnels(&mut o, reports);
    o
}

/// The WireGuard tunnels, per config (never a key: the public one is in
/// the status file).
fn render_tunnels(o: &mut String, reports: &[WorkerReport]) {
    let tunnels = crate::tunnel::stage::merge(reports.iter().flat_map(|r| &r.tunnels));
    if tunnels.is_empty() {
        return;
    }
    metric(o, "egret_tunnel_peers", "gauge", "WireGuard peers (tunnelled pods), by config.");
    metric(o, "egret_tunnel_live_peers", "gauge", "Peers with a session (a handshake within 180 s), by config.");
    metric(o, "egret_tunnel_handshakes_total", "counter", "Handshake initiations answered, by config and outcome.");
    metric(o, "egret_tunnel_packets_total", "counter", "Tunnel data packets, by config and direction.");
    metric(o, "egret_tunnel_bytes_total", "counter", "Inner bytes through tunnels, by config and direction.");
    metric(o, "egret_tunnel_roams_total", "counter", "Peer endpoint changes learned from authenticated datagrams.");
    metric(
        o,
        "egret_tunnel_resumes_total",
        "counter",
        "Handshakes started to resume a pod's tunnel after a failover or restart.",
    );
    metric(o, "egret_tunnel_drops_total", "counter", "Tunnel datagrams dropped, by config and reason.");
    for t in &tunnels {
        let (c, n) = (&t.config, &t.counters);
        let _ = writeln!(o, "egret_tunnel_peers{{config=\"{c}\"}} {}", t.peers);
        let _ = writeln!(o, "egret_tunnel_live_peers{{config=\"{c}\"}} {}", t.live_peers);
        let _ = writeln!(
            o,
            "egret_tunnel_handshakes_total{{config=\"{c}\",outcome=\"completed\"}} {}",
            n.handshakes_completed
        );
        let _ = writeln!(o, "egret_tunnel_handshakes_total{{config=\"{c}\",outcome=\"cookie\"}} {}", n.cookie_replies);
        let _ = writeln!(o, "egret_tunnel_packets_total{{config=\"{c}\",direction=\"rx\"}} {}", n.rx_packets);
        let _ = writeln!(o, "egret_tunnel_packets_total{{config=\"{c}\",direction=\"tx\"}} {}", n.tx_packets);
        let _ = writeln!(o, "egret_tunnel_bytes_total{{config=\"{c}\",direction=\"rx\"}} {}", n.rx_bytes);
        let _ = writeln!(o, "egret_tunnel_bytes_total{{config=\"{c}\",direction=\"tx\"}} {}", n.tx_bytes);
        let _ = writeln!(o, "egret_tunnel_roams_total{{config=\"{c}\"}} {}", n.roams);
        let _ = writeln!(o, "egret_tunnel_resumes_total{{config=\"{c}\"}} {}", n.resumes);
        for r in crate::tunnel::TunnelDrop::ALL {
            let _ = writeln!(o, "egret_tunnel_drops_total{{config=\"{c}\",reason=\"{}\"}} {}", r.name(), n.dropped(r));
        }
    }
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
        let rs: Vec<WorkerReport> =
            reports.iter().map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
        let i = info.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Response { status: 200, content_type: "text/plain; version=0.0.4", body: render(&rs, &i) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let mut r = WorkerReport { worker: 1, ..Default::default() };
        r.nat.in2out_packets = 5;
        r.nat.drops[crate::nat::DropReason::QuotaExceeded as usize] = 2;
        r.sessions_by_config = vec![("demo/a".into(), [1, 2, 0])];
        r.ports = vec![crate::nat::PortUsage {
            addr: "198.19.100.3".parse().unwrap(),
            config: "demo/a".into(),
            mapped: [1, 2, 0],
            sessions: 0,
            slice: 64512,
        }];
        let info =
            GatewayInfo { plan_version: 3, modes: vec![("gw-in".into(), "Native".into(), "copy".into())], xdp: vec![] };
        let text = render(&[r], &info);
        for line in [
            "egret_plan_version 3",
            "egret_mode{interface=\"gw-in\",xdp=\"Native\",afxdp=\"copy\"} 1",
            "egret_sessions{config=\"demo/a\",proto=\"udp\"} 2",
            "egret_ports_in_use{address=\"198.19.100.3\",config=\"demo/a\",proto=\"udp\"} 2",
            "egret_ports_free{address=\"198.19.100.3\",config=\"demo/a\",proto=\"udp\"} 64510",
            "egret_packets_total{worker=\"1\",direction=\"in2out\"} 5",
            "egret_drops_total{worker=\"1\",reason=\"quota_exceeded\"} 2",
            "egret_alloc_failures_total{reason=\"quota\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
