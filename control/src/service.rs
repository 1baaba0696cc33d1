//! The gRPC services: the plan stream gateways subscribe to, and the admin
//! calls operators make.

use crate::metrics::ControlMetrics;
use crate::state::{ControlState, NodePlan, Snapshot};
use egret_api::v1::{
    self as api, admin_service_server::AdminService, gateway_message::Msg, plan_service_server::PlanService,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct Plans {
    pub state: Arc<ControlState>,
    /// Turns true when the server shuts down: open streams end then, so the
    /// graceful shutdown does not wait on them forever.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    pub authz: crate::authz::Authz,
}

fn unknown_node(node: &str) -> Status {
    Status::not_found(format!(
        "unknown node '{node}': not a gateway node (no Node labelled kubeegressgateway.azure.com/mode=true \
         or kubernetes.azure.com/mode=gateway with that name)"
    ))
}

#[tonic::async_trait]
impl PlanService for Plans {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<api::PlanUpdate, Status>> + Send + 'static>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<api::GatewayMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let names = crate::authz::peer_names(&request);
        let authz = self.authz.clone();
        let (meta, ext, mut inbound) = request.into_parts();
        let hello = match inbound.message().await? {
            Some(api::GatewayMessage { msg: Some(Msg::Hello(h)) }) if !h.node.is_empty() => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello with a node name")),
        };
        check_name("Hello.node", &hello.node, NODE_NAME_MAX)?;
        let node = hello.node.clone();
        authz.check_node(&Request::from_parts(meta, ext, ()), &node).await.inspect_err(|e| {
            tracing::warn!(node, ?peer, certificate = ?names, code = ?e.code(), "subscription refused: {}", e.message());
        })?;
        let mut snapshots = self.state.watch();
        if snapshots.borrow().plan_for(&node).is_none() {
            return Err(unknown_node(&node));
        }
        tracing::info!(node, ?peer, serving = hello.serving_version, "gateway subscribed");
        self.state.with_link(&node, |l| l.connected += 1);

        let (tx, rx) = mpsc::channel::<Result<api::PlanUpdate, Status>>(4);
        let state = self.state.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut shutting_down = false;
            let mut refused = None;
            loop {
                let updates = {
                    // Taken out of the snapshot first: a whole plan is
                    // encoded below, without holding up the next publish.
                    let now = snapshots.borrow_and_update().plan_for(&node).cloned();
                    match now {
                        Some(p) if p.version != sent => {
                            let updates = plan_updates(&node, &p, sent, &hello, state.metrics());
                            sent = p.version;
                            updates
                        }
                        Some(_) => Vec::new(),
                        None => vec![Err(Status::not_found(format!("node '{node}' is no longer a gateway node")))],
                    }
                };
                let mut closed = false;
                for u in updates {
                    let last = u.is_err();
                    // A whole plan is many parts: a gateway slow to read
                    // them does not hold up this replica's shutdown.
                    let sent = tokio::select! {
                        r = tx.send(u) => r.is_ok(),
                        r = stopping.wait_for(|s| *s) => {
                            shutting_down = r.is_ok();
                            false
                        }
                    };
                    if !sent || last {
                        closed = true;
                        break;
                    }
                }
                if closed {
                    break;
                }
                tokio::select! {
                    c = snapshots.changed() => if c.is_err() { break },
                    m = inbound.next() => match m {
                        Some(Ok(m)) => if let Err(e) = handle(&state, &node, m) {
                            tracing::warn!(node, "gateway message refused: {}", e.message());
                            refused = Some(e);
                            break;
                        },
                        Some(Err(e)) => {
                            tracing::info!(node, error = %e, "gateway stream error");
                            break;
                        }
                        None => break,
                    },
                    _ = tx.closed() => break,
                    r = stopping.wait_for(|s| *s) => {
                        shutting_down = r.is_ok();
                        break;
                    }
                }
            }
            if shutting_down {
                let _ = tx.send(Err(Status::unavailable("control plane shutting down"))).await;
            } else if let Some(e) = refused {
                let _ = tx.send(Err(e)).await;
            }
            state.with_link(&node, |l| l.connected = l.connected.saturating_sub(1));
            tracing::info!(node, "gateway unsubscribed");
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Bounds on what a gateway may send (its own sends stay far below).
const MAX_COUNTERS: usize = 1024;
const MAX_SESSIONS: usize = 10_000;
const MAX_PORT_ROWS: usize = 65_536;
const MAX_RULE_HITS: usize = 1_000_000;
const MAX_TEXT: usize = 1024;

/// Longest node name (a DNS subdomain).
const NODE_NAME_MAX: usize = 253;
/// Longest config name: namespace (at most 63) / name (at most 253).
const CONFIG_NAME_MAX: usize = 63 + 1 + 253;

/// A node, config or filter name: what Kubernetes allows (a DNS subdomain,
/// `namespace/name` for configs), so nothing odd reaches logs or maps.
fn check_name(field: &str, v: &str, max: usize) -> Result<(), Status> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field} '{}': not a Kubernetes name (letters, digits, '-', '.', at most {max} characters)",
            v.chars().take(64).collect::<String>()
        )))
    }
}

fn check_report(r: &api::Report) -> Result<(), Status> {
    let too_many = |what: &str, n: usize, max: usize| {
        Err(Status::invalid_argument(format!("Report.{what}: {n} entries, at most {max}")))
    };
    if r.counters.len() > MAX_COUNTERS {
        return too_many("counters", r.counters.len(), MAX_COUNTERS);
    }
    if r.sessions.len() > MAX_SESSIONS {
        return too_many("sessions", r.sessions.len(), MAX_SESSIONS);
    }
    if r.ports.len() > MAX_PORT_ROWS {
        return too_many("ports", r.ports.len(), MAX_PORT_ROWS);
    }
    if r.rule_hits.len() > MAX_RULE_HITS {
        return too_many("rule_hits", r.rule_hits.len(), MAX_RULE_HITS);
    }
    if r.counters.keys().any(|k| k.len() > 128) {
        return Err(Status::invalid_argument("Report.counters: a counter name longer than 128 bytes"));
    }
    Ok(())
}

fn handle(state: &ControlState, node: &str, m: api::GatewayMessage) -> Result<(), Status> {
    match m.msg {
        Some(Msg::Ack(mut a)) => {
            crate::truncate_utf8(&mut a.error, MAX_TEXT);
            if a.error.is_empty() {
                tracing::info!(node, version = a.version, "gateway applied plan");
            } else {
                tracing::warn!(node, version = a.version, error = %a.error, "gateway rejected plan");
            }
            state.applied(node, a.version, a.error);
        }
        Some(Msg::Report(r)) => {
            check_report(&r)?;
            state.reported(node, r);
        }
        Some(Msg::Hello(_)) => return Err(Status::invalid_argument("Hello comes once, first")),
        None => {}
    }
    Ok(())
}

#[derive(Clone)]
pub struct Admin {
    pub state: Arc<ControlState>,
    /// This replica's name (what `egretctl nodes` says a gateway here is
    /// subscribed to).
    pub replica: String,
    /// Whether this replica writes to the cluster; None: no election (it
    /// does not, or it is the only writer by construction).
    pub leader: Option<crate::leader::Leadership>,
}

impl Admin {
    /// The nodes a node filter names: one (which must exist) or all.
    fn nodes(&self, snap: &Snapshot, node: &str) -> Result<Vec<String>, Status> {
        if !node.is_empty() {
            check_name("node", node, NODE_NAME_MAX)?;
        }
        if node.is_empty() {
            let mut all: Vec<String> = snap.plans.keys().cloned().collect();
            all.extend(self.state.links().into_keys().filter(|n| !snap.plans.contains_key(n)));
            return Ok(all);
        }
        if snap.plan_for(node).is_none() && !self.state.links().contains_key(node) {
            return Err(unknown_node(node));
        }
        Ok(vec![node.to_string()])
    }
}

/// What takes a subscriber from version `sent` (0: nothing yet) to `p`: the
/// deltas between, when it accepts them and they are all kept, else the
/// plan whole (in parts of at most [`PLAN_PART_BYTES`] when it joins
/// them).
fn plan_updates(
    node: &str,
    p: &NodePlan,
    sent: u64,
    hello: &api::Hello,
    metrics: &ControlMetrics,
) -> Vec<Result<api::PlanUpdate, Status>> {
    let update = |version, plan_json, delta_json, base_version, more| api::PlanUpdate {
        node: node.to_string(),
        version,
        plan_json,
        delta_json,
        base_version,
        more,
    };
    if let Some(deltas) = p.deltas_since(sent).filter(|_| hello.accepts_deltas && sent != 0) {
        metrics.sent_deltas(deltas.len());
        return deltas.iter().map(|d| Ok(update(d.version, String::new(), d.json.clone(), d.base, false))).collect();
    }
    let json = p.json();
    if !hello.accepts_parts {
        metrics.sent_whole(1);
        return vec![Ok(update(p.version, json, String::new(), 0, false))];
    }
    let parts = json_parts(&json, PLAN_PART_BYTES);
    metrics.sent_whole(parts.len());
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| Ok(update(p.version, part.to_string(), String::new(), 0, i < last)))
        .collect()
}

/// The most bytes of a whole plan one update carries, for gateways that
/// join parts: tonic keeps a stream's encode buffer at the size of the
/// largest message it sent, for as long as the stream lasts (at 100,000
/// pods a whole plan is ~5 MB, held once per subscribed node).
pub const PLAN_PART_BYTES: usize = 64 << 10;

/// `json` cut into pieces of at most `max` bytes, on character boundaries
/// (at least one piece, empty or not).
fn json_parts(json: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::with_capacity(json.len() / max + 1);
    let mut rest = json;
    loop {
        let mut at = rest.len().min(max);
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        if at == 0 {
            // `max` below one character: that character alone.
            at = rest.char_indices().nth(1).map_or(rest.len(), |(i, _)| i);
        }
        let (part, tail) = rest.split_at(at);
        parts.push(part);
        if tail.is_empty() {
            return parts;
        }
        rest = tail;
    }
}

/// A node subscribed to another replica, as that replica says; its applied
/// version in this replica's numbering when it applied what this replica
/// would send it (`ours`).
fn subscribed_elsewhere(info: &mut api::NodeInfo, p: &crate::state::PeerLink, ours: Option<&NodePlan>) {
    info.connected = true;
    info.replica = p.replica.clone();
    let same = p.applied.as_ref().zip(ours).is_some_and(|(a, o)| crate::state::same_content(&a.plan, &o.plan));
    info.applied_version = if same { info.plan_version } else { p.applied_version };
    info.applied_error = p.applied_error.clone();
    info.report_age_s = p.report_age_s;
}

fn age(r: &Option<(Instant, api::Report)>) -> Option<u64> {
    r.as_ref().map(|(t, _)| t.elapsed().as_secs())
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn list_configs(
        &self,
        _: Request<api::ListConfigsRequest>,
    ) -> Result<Response<api::ListConfigsResponse>, Status> {
        let snap = self.state.snapshot();
        // Single-gateway mode: whoever subscribes serves every config of the
        // standalone plan whole.
        let anyone: std::collections::BTreeMap<&str, (Vec<String>, Vec<String>)> = snap
            .anyone
            .iter()
            .flat_map(|np| {
                np.plan.configs.iter().map(|c| {
                    let addrs = c.egress.iter().flat_map(|p| p.addrs()).map(|a| a.to_string()).collect();
                    let pods = np
                        .plan
                        .bindings
                        .iter()
                        .filter(|b| *b.config == *c.name)
                        .map(|b| b.pod_ip.to_string())
                        .collect();
                    (c.name.as_str(), (addrs, pods))
                })
            })
            .collect();
        let configs = snap
            .reconciled
            .configs
            .iter()
            .map(|c| match anyone.get(c.name.as_str()) {
                Some((addrs, pods)) => api::ConfigInfo {
                    name: c.name.clone(),
                    target: format!("{} (single-gateway mode: any subscriber)", c.target),
                    prefix: c.prefix.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                    served: true,
                    shares: vec![api::NodeShare { node: "*".into(), addresses: addrs.clone() }],
                    pod_ips: pods.clone(),
                },
                None => api::ConfigInfo {
                    name: c.name.clone(),
                    target: c.target.clone(),
                    prefix: c.prefix.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                    served: c.served,
                    shares: c
                        .shares
                        .iter()
                        .map(|(n, a)| api::NodeShare {
                            node: n.clone(),
                            addresses: a.iter().map(|x| x.to_string()).collect(),
                        })
                        .collect(),
                    pod_ips: c.pods.iter().map(|p| p.to_string()).collect(),
                },
            })
            .collect();
        Ok(Response::new(api::ListConfigsResponse { configs, generation: snap.generation }))
    }

    async fn get_plan(&self, req: Request<api::GetPlanRequest>) -> Result<Response<api::GetPlanResponse>, Status> {
        let node = req.into_inner().node;
        check_name("node", &node, NODE_NAME_MAX)?;
        let snap = self.state.snapshot();
        let p = snap.plan_for(&node).ok_or_else(|| unknown_node(&node))?;
        let link = self.state.link(&node);
        Ok(Response::new(api::GetPlanResponse {
            node,
            version: p.version,
            // Operators see the plan, never a tunnel's private key.
            plan_json: serde_json::to_string(&p.plan.redacted()).expect("a plan always serialises"),
            applied_version: link.applied_version,
            applied_error: link.applied_error,
            connected: link.connected > 0,
        }))
    }

    async fn list_nodes(&self, _: Request<api::ListNodesRequest>) -> Result<Response<api::ListNodesResponse>, Status> {
        let snap = self.state.snapshot();
        let links = self.state.links();
        let peers = self.state.peer_links();
        let mut nodes: Vec<api::NodeInfo> = snap
            .reconciled
            .nodes
            .iter()
            .map(|n| {
                let l = links.get(&n.name).cloned().unwrap_or_default();
                let mut info = api::NodeInfo {
                    name: n.name.clone(),
                    pool: n.pool.clone().unwrap_or_default(),
                    internal_ip: n.internal_ip.map(|i| i.to_string()).unwrap_or_default(),
                    ready: n.ready,
                    plan_version: snap.plans.get(&n.name).map_or(0, |p| p.version),
                    applied_version: l.applied_version,
                    applied_error: l.applied_error.clone(),
                    connected: l.connected > 0,
                    report_age_s: age(&l.report),
                    replica: if l.connected > 0 { self.replica.clone() } else { String::new() },
                };
                if let Some(p) = peers.get(&n.name) {
                    subscribed_elsewhere(&mut info, p, snap.plans.get(&n.name));
                }
                info
            })
            .collect();
        // Subscribers served in single-gateway mode are not Nodes: list them
        // too, here or at a peer.
        let names: std::collections::BTreeSet<&String> = links.keys().chain(peers.keys()).collect();
        for name in names.into_iter().filter(|n| !snap.plans.contains_key(*n)) {
            let l = links.get(name).cloned().unwrap_or_default();
            let mut info = api::NodeInfo {
                name: name.clone(),
                ready: true,
                plan_version: snap.anyone.as_ref().map_or(0, |p| p.version),
                applied_version: l.applied_version,
                applied_error: l.applied_error.clone(),
                connected: l.connected > 0,
                report_age_s: age(&l.report),
                replica: if l.connected > 0 { self.replica.clone() } else { String::new() },
                ..Default::default()
            };
            if let Some(p) = peers.get(name) {
                subscribed_elsewhere(&mut info, p, snap.anyone.as_ref());
            }
            nodes.push(info);
        }
        Ok(Response::new(api::ListNodesResponse {
            nodes,
            replica: self.replica.clone(),
            leader: self.leader.as_ref().is_some_and(|l| l.is_leader()),
        }))
    }

    async fn list_problems(
        &self,
        _: Request<api::ListProblemsRequest>,
    ) -> Result<Response<api::ListProblemsResponse>, Status> {
        let problems =
            self.state.problems().into_iter().map(|p| api::Problem { object: p.object, message: p.message }).collect();
        Ok(Response::new(api::ListProblemsResponse { problems }))
    }

    async fn list_sessions(
        &self,
        req: Request<api::ListSessionsRequest>,
    ) -> Result<Response<api::ListSessionsResponse>, Status> {
        let r = req.into_inner();
        for (field, v) in [("pod_ip", &r.pod_ip), ("egress_ip", &r.egress_ip)] {
            if !v.is_empty() && v.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(Status::invalid_argument(format!("{field} '{v}' is not an IPv4 address")));
            }
        }
        let snap = self.state.snapshot();
        let mut out = api::ListSessionsResponse::default();
        for node in self.nodes(&snap, &r.node)? {
            let Some((_, rep)) = self.state.link(&node).report else { continue };
            out.total += rep.sessions_total;
            for s in rep.sessions {
                if (r.pod_ip.is_empty() || s.pod_ip == r.pod_ip)
                    && (r.egress_ip.is_empty() || s.egress_ip == r.egress_ip)
                {
                    out.sessions.push(api::NodeSession { node: node.clone(), session: Some(s) });
                }
            }
        }
        Ok(Response::new(out))
    }

    async fn list_ports(
        &self,
        req: Request<api::ListPortsRequest>,
    ) -> Result<Response<api::ListPortsResponse>, Status> {
        let r = req.into_inner();
        let snap = self.state.snapshot();
        let mut out = api::ListPortsResponse::default();
        for node in self.nodes(&snap, &r.node)? {
            let Some((_, rep)) = self.state.link(&node).report else { continue };
            out.ports.extend(rep.ports.into_iter().map(|u| api::NodePorts { node: node.clone(), usage: Some(u) }));
        }
        Ok(Response::new(out))
    }

    async fn list_rules(
        &self,
        req: Request<api::ListRulesRequest>,
    ) -> Result<Response<api::ListRulesResponse>, Status> {
        let want = req.into_inner().config;
        if !want.is_empty() {
            check_name("config", &want, CONFIG_NAME_MAX)?;
        }
        let snap = self.state.snapshot();
        // A config's policy is the same in every node's plan: take the first.
        let mut policies: std::collections::BTreeMap<String, egret_plan::EgressPolicy> = Default::default();
        for np in snap.plans.values().chain(snap.anyone.as_ref()) {
            for c in &np.plan.configs {
                if let Some(p) = &c.policy {
                    policies.entry(c.name.clone()).or_insert_with(|| p.clone());
                }
            }
        }
        if !want.is_empty() && !policies.contains_key(&want) {
            let exists = snap.reconciled.configs.iter().any(|c| c.name == want);
            return Err(Status::not_found(if exists {
                format!("config '{want}' has no egress policy (every destination is allowed)")
            } else {
                format!("unknown config '{want}' (namespace/name of a served StaticGatewayConfiguration)")
            }));
        }
        let links = self.state.links();
        let reports: Vec<&(std::time::Instant, api::Report)> =
            links.values().filter_map(|l| l.report.as_ref()).collect();
        let mut out = api::ListRulesResponse::default();
        // Summed once over every report, by config, position and name, so a
        // report from a gateway still on an older rule list does not count
        // toward a renamed rule.
        let mut sums: std::collections::HashMap<(&str, u32, &str), u64> = Default::default();
        let mut refusals: std::collections::HashMap<(&str, u32, &str), std::collections::HashMap<String, u64>> =
            Default::default();
        for h in reports.iter().flat_map(|(_, r)| &r.rule_hits) {
            *sums.entry((h.config.as_str(), h.index, h.rule.as_str())).or_default() += h.hits;
            let by_reason = refusals.entry((h.config.as_str(), h.index, h.rule.as_str())).or_default();
            for (why, n) in &h.refused {
                *by_reason.entry(why.clone()).or_default() += n;
            }
        }
        for (name, p) in policies.iter().filter(|(n, _)| want.is_empty() || **n == want) {
            let hits = |index: usize, rule: &str| sums.get(&(name.as_str(), index as u32, rule)).copied().unwrap_or(0);
            let rules = p
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| api::RuleInfo {
                    name: r.name.clone(),
                    action: kebab(&r.action),
                    cidrs: r.cidrs.iter().map(|c| c.to_string()).collect(),
                    fqdns: r.fqdns.clone(),
                    protocol: r.protocol.as_ref().map(kebab).unwrap_or_default(),
                    ports: r.ports.iter().map(|p| p.to_string()).collect(),
                    pods: r.pods.iter().flatten().map(|a| a.to_string()).collect(),
                    any_pod: r.pods.is_none(),
                    hits: hits(i, &r.name),
                    refused: refusals.get(&(name.as_str(), i as u32, r.name.as_str())).cloned().unwrap_or_default(),
                    server_name: if r.reads_server_name(egret_plan::TLS_PORT).is_some() {
                        "required".into()
                    } else {
                        String::new()
                    },
                })
                .collect();
            out.policies.push(api::PolicyInfo {
                config: name.clone(),
                default_action: kebab(&p.default_action),
                deny_response: kebab(&p.deny_response),
                live_flows: kebab(&p.live_flows),
                rules,
                default_hits: hits(p.rules.len(), "default"),
                reporting_nodes: reports.len() as u32,
                oldest_report_age_s: reports.iter().map(|(t, _)| t.elapsed().as_secs()).max(),
            });
        }
        // Kubernetes NetworkPolicies, listed after the configs' policies as
        // `NetworkPolicy namespace/name`: their egress rules allow, what none
        // allows is denied (the gateways report those denials per policy).
        if want.is_empty() {
            let mut netpols: std::collections::BTreeMap<&str, (Vec<String>, &egret_plan::NetworkPolicy)> =
                Default::default();
            for np in snap.plans.values().chain(snap.anyone.as_ref()) {
                for p in &np.plan.network_policies {
                    let e = netpols.entry(p.name.as_str()).or_insert_with(|| (Vec::new(), p));
                    e.0.extend(p.pods.iter().map(|a| a.to_string()));
                }
            }
            for (name, (mut pods, p)) in netpols {
                pods.sort();
                pods.dedup();
                let label = format!("NetworkPolicy {name}");
                let denied = sums.get(&(label.as_str(), 0, "denied")).copied().unwrap_or(0);
                let rules = p.egress.iter().enumerate().map(|(i, r)| network_policy_rule(i, r, &pods)).collect();
                out.policies.push(api::PolicyInfo {
                    config: label,
                    default_action: "deny".into(),
                    deny_response: "drop".into(),
                    live_flows: "cut".into(),
                    rules,
                    default_hits: denied,
                    reporting_nodes: reports.len() as u32,
                    oldest_report_age_s: reports.iter().map(|(t, _)| t.elapsed().as_secs()).max(),
                });
            }
        }
        Ok(Response::new(out))
    }

    async fn get_stats(&self, req: Request<api::GetStatsRequest>) -> Result<Response<api::GetStatsResponse>, Status> {
        let r = req.into_inner();
        let snap = self.state.snapshot();
        let mut out = api::GetStatsResponse {
            generation: snap.generation,
            problems: self.state.problems().len() as u64,
            ..Default::default()
        };
        for node in self.nodes(&snap, &r.node)? {
            let l = self.state.link(&node);
            out.nodes.push(api::NodeCounters {
                node,
                report_age_s: age(&l.report),
                counters: l.report.map(|(_, r)| r.counters).unwrap_or_default(),
            });
        }
        Ok(Response::new(out))
    }
}

/// A policy enum as its YAML spelling (kebab-case), for display.
fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// One NetworkPolicy egress rule as `egretctl rules` shows it: its
/// destinations (`any` when it has no `to`, `none outside` when only
/// in-cluster peers), its ports (`any` when none), the pods it serves here.
/// Allowed flows are not counted per rule: its hits stay 0.
fn network_policy_rule(i: usize, r: &egret_plan::NetworkPolicyRule, pods: &[String]) -> api::RuleInfo {
    let cidrs = match &r.to {
        None => Vec::new(),
        Some(blocks) if blocks.is_empty() => vec!["none outside".into()],
        Some(blocks) => blocks
            .iter()
            .map(|b| match b.except.as_slice() {
                [] => b.cidr.to_string(),
                ex => format!("{} except {}", b.cidr, ex.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" ")),
            })
            .collect(),
    };
    let ports = match &r.ports {
        None => Vec::new(),
        Some(ps) if ps.is_empty() => vec!["none".into()],
        Some(ps) => ps
            .iter()
            .map(|p| {
                let proto = match p.protocol {
                    egret_plan::NetworkProtocol::Tcp => "tcp",
                    egret_plan::NetworkProtocol::Udp => "udp",
                };
                if p.lo == p.hi {
                    format!("{proto}/{}", p.lo)
                } else {
                    format!("{proto}/{}-{}", p.lo, p.hi)
                }
            })
            .collect(),
    };
    api::RuleInfo {
        name: format!("egress-{}", i + 1),
        action: "allow".into(),
        cidrs,
        fqdns: Vec::new(),
        protocol: String::new(),
        ports,
        pods: pods.to_vec(),
        any_pod: false,
        hits: 0,
        refused: Default::default(),
        server_name: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::json_parts;

    #[test]
    fn a_plan_is_cut_into_parts_on_character_boundaries_and_joins_back() {
        let json = r#"{"name":"é-config","x":"ab"}"#.repeat(5);
        for max in [1, 2, 3, 7, 64, 10_000] {
            let parts = json_parts(&json, max);
            assert_eq!(parts.concat(), json, "max {max}");
            assert!(parts.iter().all(|p| p.len() <= max.max(2)), "max {max}: {parts:?}");
        }
        assert_eq!(json_parts("", 8), [""], "an empty text is one empty part");
    }
}
