//! egretctl: the operator's CLI over egret-control's admin service.

use clap::{Parser, Subcommand, ValueEnum};
use egret_api::client::{endpoint, error_chain, status_text, TlsFiles};
use egret_api::v1::{self as api, admin_service_client::AdminServiceClient};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Query Egret's control plane")]
struct Cli {
    /// egret-control's address (https:// for TLS).
    #[arg(long, short, global = true, default_value = "http://127.0.0.1:50051", env = "EGRET_SERVER")]
    server: String,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, global = true, env = "EGRET_CA")]
    ca: Option<String>,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, global = true, env = "EGRET_CERT", requires = "key")]
    cert: Option<String>,
    /// Client key (PEM), for mutual TLS.
    #[arg(long, global = true, env = "EGRET_KEY", requires = "cert")]
    key: Option<String>,
    /// Name to check the server's certificate against (default: its host).
    #[arg(long, global = true)]
    tls_name: Option<String>,
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Gateway configs: target, prefix, which node holds which addresses.
    Configs,
    /// A node's plan, its version, and what the gateway applied.
    Plan { node: String },
    /// Gateway nodes: readiness, plan and applied versions, connection, and
    /// the egret-control replica each is subscribed to (its reports are there).
    Nodes,
    /// Objects left out of the plans, and why.
    Problems,
    /// Live sessions (from the gateways' latest reports).
    Sessions {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        pod: Option<String>,
        #[arg(long)]
        egress: Option<String>,
    },
    /// Port usage per config, egress address and protocol, and each
    /// config's pool per node (flagged past 90%, as the alert fires).
    Ports {
        #[arg(long)]
        node: Option<String>,
    },
    /// Egress policy rules per config, with the new flows each decided.
    Rules {
        /// namespace/name of one config.
        #[arg(long)]
        config: Option<String>,
    },
    /// Gateways' counters.
    Stats {
        #[arg(long)]
        node: Option<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("egretctl: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: &Cli) -> Result<String, String> {
    let tls = match &cli.ca {
        Some(ca) => {
            let mut t = TlsFiles::read(ca, cli.cert.as_deref(), cli.key.as_deref())?;
            t.domain = cli.tls_name.clone();
            Some(t)
        }
        None if cli.server.starts_with("https://") => {
            return Err("an https:// server needs --ca (the CA that signed its certificate)".into())
        }
        None => None,
    };
    let ep = endpoint(&cli.server, tls.as_ref(), Duration::from_secs(3))?.timeout(Duration::from_secs(10));
    let channel = ep.connect().await.map_err(|e| {
        let chain = error_chain(&e);
        if tls.is_some() && (chain.contains("certificate") || chain.contains("tls") || chain.contains("TLS")) {
            format!("TLS handshake with {} failed: {chain}", cli.server)
        } else {
            format!("cannot reach egret-control at {}: {chain}", cli.server)
        }
    })?;
    let mut c = AdminServiceClient::new(channel);
    let st = |s: tonic::Status| match s.code() {
        tonic::Code::NotFound => s.message().to_string(),
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            format!(
                "egret-control at {} failed the call ({}); with mutual TLS, check --cert/--key",
                cli.server,
                status_text(&s)
            )
        }
        _ => status_text(&s),
    };
    let json_out = cli.output == Output::Json;
    let (value, table): (Value, String) = match &cli.cmd {
        Cmd::Configs => {
            let r = c.list_configs(api::ListConfigsRequest {}).await.map_err(st)?.into_inner();
            let mut rows = vec![row(["CONFIG", "TARGET", "PREFIX", "SERVED", "NODE", "ADDRESSES", "PODS"])];
            for cf in &r.configs {
                let pods = cf.pod_ips.len().to_string();
                if cf.shares.is_empty() {
                    rows.push(row([&cf.name, &cf.target, &cf.prefix, yes(cf.served), "-", "-", &pods]));
                }
                for (i, s) in cf.shares.iter().enumerate() {
                    let (n, t, p, sv, pd) = if i == 0 {
                        (cf.name.as_str(), cf.target.as_str(), cf.prefix.as_str(), yes(cf.served), pods.as_str())
                    } else {
                        ("", "", "", "", "")
                    };
                    rows.push(row([n, t, p, sv, &s.node, &address_ranges(&s.addresses), pd]));
                }
            }
            let v = json!({"generation": r.generation, "configs": r.configs.iter().map(|cf| json!({
                "name": cf.name, "target": cf.target, "prefix": cf.prefix, "served": cf.served,
                "shares": cf.shares.iter().map(|s| (s.node.clone(), json!(s.addresses))).collect::<serde_json::Map<_, _>>(),
                "pods": cf.pod_ips,
            })).collect::<Vec<_>>()});
            (v, table(rows))
        }
        Cmd::Plan { node } => {
            let r = c.get_plan(api::GetPlanRequest { node: node.clone() }).await.map_err(st)?.into_inner();
            let plan: Value = serde_json::from_str(&r.plan_json).map_err(|e| format!("plan from server: {e}"))?;
            let v = json!({"node": r.node, "version": r.version, "appliedVersion": r.applied_version,
                "appliedError": r.applied_error, "connected": r.connected, "plan": plan});
            let mut t = format!(
                "node {}  plan version {}  applied {}{}  {}\n",
                r.node,
                r.version,
                r.applied_version,
                if r.applied_error.is_empty() { String::new() } else { format!(" (rejected: {})", r.applied_error) },
                if r.connected { "connected" } else { "not connected" }
            );
            let mut rows = vec![row(["CONFIG", "EGRESS", "EXCLUDE", "MAPPING", "QUOTA", "PODS"])];
            for cf in plan["configs"].as_array().into_iter().flatten() {
                let name = cf["name"].as_str().unwrap_or_default();
                let pods = plan["bindings"].as_array().into_iter().flatten().filter(|b| b["config"] == name).count();
                rows.push(row([
                    name,
                    &strings(&cf["egress"]).join(","),
                    &strings(&cf["exclude"]).join(","),
                    cf["mapping"].as_str().unwrap_or_default(),
                    &cf["portQuota"].to_string(),
                    &pods.to_string(),
                ]));
            }
            t.push_str(&table(rows));
            let policies = plan["networkPolicies"].as_array().filter(|p| !p.is_empty());
            if let Some(policies) = policies {
                let mut rows = vec![row(["NETWORKPOLICY", "PODS", "EGRESS RULES"])];
                for p in policies {
                    let count = |k: &str| p[k].as_array().map_or(0, Vec::len).to_string();
                    let rules = if count("egress") == "0" { "0 (deny all)".to_string() } else { count("egress") };
                    rows.push(row([p["name"].as_str().unwrap_or_default(), &count("pods"), &rules]));
                }
                t.push('\n');
                t.push_str(&table(rows));
            }
            (v, t)
        }
        Cmd::Nodes => {
            let r = c.list_nodes(api::ListNodesRequest {}).await.map_err(st)?.into_inner();
            let mut rows =
                vec![row(["NODE", "POOL", "IP", "READY", "PLAN", "APPLIED", "CONNECTED", "REPLICA", "REPORT AGE"])];
            for n in &r.nodes {
                rows.push(row([
                    &n.name,
                    &n.pool,
                    &n.internal_ip,
                    yes(n.ready),
                    &n.plan_version.to_string(),
                    &if n.applied_error.is_empty() {
                        n.applied_version.to_string()
                    } else {
                        format!("{} (rejected)", n.applied_version)
                    },
                    yes(n.connected),
                    if n.replica.is_empty() { "-" } else { &n.replica },
                    &n.report_age_s.map_or("-".into(), |a| format!("{a}s")),
                ]));
            }
            let v = json!(r
                .nodes
                .iter()
                .map(|n| json!({"name": n.name, "pool": n.pool, "internalIp": n.internal_ip,
                "ready": n.ready, "planVersion": n.plan_version, "appliedVersion": n.applied_version,
                "appliedError": n.applied_error, "connected": n.connected, "replica": n.replica,
                "reportAgeSeconds": n.report_age_s}))
                .collect::<Vec<_>>());
            let mut t = table(rows);
            if !r.replica.is_empty() {
                let role = if r.leader { " (leader: writes GatewayStatus and Events)" } else { "" };
                t.push_str(&format!("answered by replica {}{role}\n", r.replica));
            }
            (v, t)
        }
        Cmd::Problems => {
            let r = c.list_problems(api::ListProblemsRequest {}).await.map_err(st)?.into_inner();
            let mut rows = vec![row(["OBJECT", "PROBLEM"])];
            rows.extend(r.problems.iter().map(|p| row([&p.object, &p.message])));
            let v =
                json!(r.problems.iter().map(|p| json!({"object": p.object, "message": p.message})).collect::<Vec<_>>());
            (v, table(rows))
        }
        Cmd::Sessions { node, pod, egress } => {
            let req = api::ListSessionsRequest {
                node: node.clone().unwrap_or_default(),
                pod_ip: pod.clone().unwrap_or_default(),
                egress_ip: egress.clone().unwrap_or_default(),
            };
            let r = c.list_sessions(req).await.map_err(st)?.into_inner();
            let mut rows = vec![row(["NODE", "PROTO", "POD", "EGRESS", "REMOTE", "CONFIG", "STATE", "IDLE"])];
            let mut js = Vec::new();
            for ns in &r.sessions {
                let Some(s) = &ns.session else { continue };
                rows.push(row([
                    &ns.node,
                    &s.protocol,
                    &format!("{}:{}", s.pod_ip, s.pod_port),
                    &format!("{}:{}", s.egress_ip, s.egress_port),
                    &format!("{}:{}", s.remote_ip, s.remote_port),
                    &s.config,
                    &s.state,
                    &format!("{}ms", s.idle_ms),
                ]));
                js.push(json!({"node": ns.node, "protocol": s.protocol, "podIp": s.pod_ip, "podPort": s.pod_port,
                    "egressIp": s.egress_ip, "egressPort": s.egress_port, "remoteIp": s.remote_ip,
                    "remotePort": s.remote_port, "config": s.config, "state": s.state, "idleMs": s.idle_ms}));
            }
            let mut t = table(rows);
            t.push_str(&format!("{} shown of {} live sessions (gateways report a sample)\n", js.len(), r.total));
            (json!({"total": r.total, "sessions": js}), t)
        }
        Cmd::Ports { node } => {
            let r = c
                .list_ports(api::ListPortsRequest { node: node.clone().unwrap_or_default() })
                .await
                .map_err(st)?
                .into_inner();
            ports_view(&r)
        }
        Cmd::Rules { config } => {
            let r = c
                .list_rules(api::ListRulesRequest { config: config.clone().unwrap_or_default() })
                .await
                .map_err(st)?
                .into_inner();
            let mut t = String::new();
            let mut js = Vec::new();
            if r.policies.is_empty() {
                t.push_str("no config has an egress policy and no NetworkPolicy selects a pod (every destination is allowed)\n");
            }
            for p in &r.policies {
                t.push_str(&format!(
                    "{}  default {}  denied flows: {}  live flows on rule change: {}  (hits from {} gateway{}{})\n",
                    p.config,
                    p.default_action,
                    p.deny_response,
                    p.live_flows,
                    p.reporting_nodes,
                    if p.reporting_nodes == 1 { "" } else { "s" },
                    p.oldest_report_age_s.map_or(String::new(), |a| format!(", oldest report {a}s"))
                ));
                let any = |v: &[String]| if v.is_empty() { "any".to_string() } else { v.join(",") };
                let mut rows = vec![row([
                    "#",
                    "RULE",
                    "ACTION",
                    "DESTINATIONS",
                    "PROTO",
                    "PORTS",
                    "PODS",
                    "HITS",
                    "NAME REFUSED",
                ])];
                for (i, rule) in p.rules.iter().enumerate() {
                    let dst: Vec<String> = rule.cidrs.iter().chain(&rule.fqdns).cloned().collect();
                    let pods = if rule.any_pod {
                        "all".to_string()
                    } else if rule.pods.is_empty() {
                        "none".into()
                    } else {
                        rule.pods.join(",")
                    };
                    rows.push(row([
                        &(i + 1).to_string(),
                        &rule.name,
                        &rule.action,
                        &any(&dst),
                        if rule.protocol.is_empty() { "any" } else { &rule.protocol },
                        &any(&rule.ports),
                        &pods,
                        &rule.hits.to_string(),
                        &refused_cell(rule),
                    ]));
                }
                rows.push(row([
                    "-",
                    "(no rule matched)",
                    &p.default_action,
                    "",
                    "",
                    "",
                    "",
                    &p.default_hits.to_string(),
                    "",
                ]));
                t.push_str(&table(rows));
                js.push(json!({"config": p.config, "defaultAction": p.default_action, "denyResponse": p.deny_response,
                    "liveFlows": p.live_flows, "defaultHits": p.default_hits, "reportingNodes": p.reporting_nodes,
                    "oldestReportAgeSeconds": p.oldest_report_age_s,
                    "rules": p.rules.iter().map(|x| json!({"name": x.name, "action": x.action, "cidrs": x.cidrs,
                        "fqdns": x.fqdns, "protocol": x.protocol, "ports": x.ports, "pods": if x.any_pod { Value::Null } else { json!(x.pods) },
                        "hits": x.hits, "serverName": x.server_name, "nameRefused": x.refused})).collect::<Vec<_>>()}));
            }
            (json!(js), t)
        }
        Cmd::Stats { node } => {
            let r = c
                .get_stats(api::GetStatsRequest { node: node.clone().unwrap_or_default() })
                .await
                .map_err(st)?
                .into_inner();
            let mut rows = vec![row(["NODE", "COUNTER", "VALUE"])];
            let mut js = serde_json::Map::new();
            for n in &r.nodes {
                let mut counters: Vec<_> = n.counters.iter().collect();
                counters.sort();
                if counters.is_empty() {
                    rows.push(row([&n.node, "(no report yet)", ""]));
                }
                for (k, v) in &counters {
                    rows.push(row([&n.node, k, &v.to_string()]));
                }
                js.insert(n.node.clone(), json!({"counters": n.counters, "reportAgeSeconds": n.report_age_s}));
            }
            let mut t = format!("generation {}  problems {}\n", r.generation, r.problems);
            t.push_str(&table(rows));
            (json!({"generation": r.generation, "problems": r.problems, "nodes": js}), t)
        }
    };
    Ok(if json_out {
        format!("{}\n", serde_json::to_string_pretty(&value).expect("JSON values serialise"))
    } else {
        table
    })
}

/// Addresses as runs: `198.19.100.0-198.19.100.15` rather than sixteen.
fn address_ranges(addrs: &[String]) -> String {
    let mut ips: Vec<u32> = Vec::new();
    for a in addrs {
        match a.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => ips.push(u32::from(ip)),
            Err(_) => return addrs.join(","),
        }
    }
    ips.sort_unstable();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for ip in ips {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(ip) => *hi = ip,
            _ => runs.push((ip, ip)),
        }
    }
    let ip = |x: u32| std::net::Ipv4Addr::from(x).to_string();
    runs.iter()
        .map(|&(lo, hi)| if lo == hi { ip(lo) } else { format!("{}-{}", ip(lo), ip(hi)) })
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn address_runs_are_compressed() {
    let v: Vec<String> = ["198.19.100.2", "198.19.100.0", "198.19.100.1", "198.19.100.9"].map(String::from).into();
    assert_eq!(address_ranges(&v), "198.19.100.0-198.19.100.2,198.19.100.9");
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect()
}

/// A rule's name refusals as `reason=n`, most first; `-` when none (or the
/// rule reads no name).
fn refused_cell(rule: &api::RuleInfo) -> String {
    let mut v: Vec<(&String, &u64)> = rule.refused.iter().filter(|(_, n)| **n > 0).collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if v.is_empty() {
        return if rule.server_name.is_empty() { "-".into() } else { "0".into() };
    }
    v.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(",")
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn percent(in_use: u64, capacity: u64) -> String {
    if capacity == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * in_use as f64 / capacity as f64)
    }
}

/// `egretctl ports`: a row per node, egress address, config and protocol
/// (mappings against the ports the node hands out on the address; port-reuse
/// sessions share ports and have no capacity), then each config's pool per
/// node and protocol, its addresses together, flagged past 90%. Gateways
/// older than per-protocol reports give one row per address ("all").
fn ports_view(r: &api::ListPortsResponse) -> (Value, String) {
    let mut rows = vec![row(["NODE", "CONFIG", "EGRESS", "PROTO", "IN USE", "CAPACITY", "USED", "REFUSED"])];
    let mut js = Vec::new();
    let mut usages: Vec<(&str, &api::PortUsage)> =
        r.ports.iter().filter_map(|p| Some((p.node.as_str(), p.usage.as_ref()?))).collect();
    usages.sort_by(|a, b| (a.0, &a.1.config, &a.1.egress_ip).cmp(&(b.0, &b.1.config, &b.1.egress_ip)));
    for &(node, u) in &usages {
        let mut protocols = Vec::new();
        if u.in_use_by_protocol.is_empty() {
            let (n, cap) = (u64::from(u.in_use), u64::from(u.capacity));
            rows.push(row([
                node,
                &u.config,
                &u.egress_ip,
                "all",
                &n.to_string(),
                &cap.to_string(),
                &percent(n, cap),
                "-",
            ]));
        }
        for proto in ["tcp", "udp", "icmp", "port-reuse"] {
            let Some(&n) = u.in_use_by_protocol.get(proto) else { continue };
            let n = u64::from(n);
            let cap = if proto == "port-reuse" { 0 } else { u64::from(u.capacity_per_protocol) };
            let refused = u.refused_by_protocol.get(proto).copied().unwrap_or(0);
            rows.push(row([
                node,
                &u.config,
                &u.egress_ip,
                proto,
                &n.to_string(),
                &if cap == 0 { "-".into() } else { cap.to_string() },
                &percent(n, cap),
                &if proto == "port-reuse" { "-".into() } else { refused.to_string() },
            ]));
            protocols.push(json!({"protocol": proto, "inUse": n, "capacity": cap, "refused": refused}));
        }
        js.push(json!({"node": node, "egressIp": u.egress_ip, "config": u.config, "inUse": u.in_use,
            "capacity": u.capacity, "protocols": protocols}));
    }
    let mut t = table(rows);
    // The pools egret-control judges pressure by (the same sum), by node;
    // older gateways' "all" rows have none per protocol.
    let pools: std::collections::BTreeMap<_, _> = egret_control::pressure::pools(usages)
        .into_iter()
        .filter(|((_, _, proto), _)| *proto != "all")
        .map(|((config, node, proto), v)| ((node, config, proto), v))
        .collect();
    if !pools.is_empty() {
        let mut rows = vec![row(["NODE", "CONFIG", "PROTO", "IN USE", "CAPACITY", "USED", ""])];
        for ((node, config, proto), (n, cap)) in pools {
            let full = egret_control::pressure::nearly_full(n, cap);
            let flag = if full { "NEARLY FULL" } else { "" };
            rows.push(row([node, config, proto, &n.to_string(), &cap.to_string(), &percent(n, cap), flag]));
        }
        t.push_str("\npools (a config's addresses together, per node and protocol; flagged past 90%):\n");
        t.push_str(&table(rows));
    }
    (json!(js), t)
}

/// Left-aligned columns, two spaces apart.
fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(node: &str, ip: &str, udp: u32, cap: u32) -> api::NodePorts {
        api::NodePorts {
            node: node.into(),
            usage: Some(api::PortUsage {
                egress_ip: ip.into(),
                config: "demo/a".into(),
                in_use: udp + 1,
                capacity: 3 * cap,
                in_use_by_protocol: [
                    ("tcp".into(), 1),
                    ("udp".into(), udp),
                    ("icmp".into(), 0),
                    ("port-reuse".into(), 0),
                ]
                .into(),
                capacity_per_protocol: cap,
                refused_by_protocol: [("udp".into(), 7)].into(),
            }),
        }
    }

    #[test]
    fn ports_show_each_protocol_and_flag_a_pool_past_90_percent() {
        let r = api::ListPortsResponse {
            ports: vec![
                usage("gw-0", "198.19.100.1", 95, 100),
                usage("gw-0", "198.19.100.2", 90, 100),
                usage("gw-1", "198.19.100.1", 10, 100),
            ],
        };
        let (v, t) = ports_view(&r);
        let line = |prefix: &[&str]| {
            t.lines().find(|l| l.split_whitespace().take(prefix.len()).eq(prefix.iter().copied())).map(str::to_string)
        };
        let udp = line(&["gw-0", "demo/a", "198.19.100.1", "udp"]).expect(&t);
        assert_eq!(udp.split_whitespace().skip(4).collect::<Vec<_>>(), ["95", "100", "95.0%", "7"]);
        let reuse = line(&["gw-0", "demo/a", "198.19.100.1", "port-reuse"]).expect(&t);
        assert_eq!(reuse.split_whitespace().skip(4).collect::<Vec<_>>(), ["0", "-", "-", "-"]);
        // gw-0's pool: 185 of 200 UDP ports (92.5%) is flagged; gw-1's is not.
        let pool = line(&["gw-0", "demo/a", "udp"]).expect(&t);
        assert_eq!(pool.split_whitespace().skip(3).collect::<Vec<_>>(), ["185", "200", "92.5%", "NEARLY", "FULL"]);
        assert!(!line(&["gw-1", "demo/a", "udp"]).expect(&t).contains("NEARLY"));
        assert!(!line(&["gw-0", "demo/a", "tcp"]).expect(&t).contains("NEARLY"));
        assert_eq!(v[0]["protocols"][1], json!({"protocol": "udp", "inUse": 95, "capacity": 100, "refused": 7}));
    }

    #[test]
    fn an_older_gateways_ports_show_as_one_row_per_address() {
        let mut p = usage("gw-0", "198.19.100.1", 0, 100);
        let u = p.usage.as_mut().unwrap();
        (u.in_use, u.capacity, u.capacity_per_protocol) = (30, 300, 0);
        u.in_use_by_protocol.clear();
        u.refused_by_protocol.clear();
        let (_, t) = ports_view(&api::ListPortsResponse { ports: vec![p] });
        assert!(
            t.lines().any(|l| l.split_whitespace().eq([
                "gw-0",
                "demo/a",
                "198.19.100.1",
                "all",
                "30",
                "300",
                "10.0%",
                "-"
            ])),
            "{t}"
        );
        assert!(!t.contains("pools"), "no per-protocol pool without per-protocol rows");
    }
}
