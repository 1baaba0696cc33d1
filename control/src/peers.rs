//! What the other egret-control replicas know of their gateways. A gateway
//! subscribes to one replica (through the Service), and its acks and
//! reports reach that replica only; every replica asks its peers, each
//! second, which gateways are subscribed to them and what each applied
//! (`AdminService/ListNodes`, then `GetPlan` for a plan applied that it
//! has not fetched yet). So `egretctl nodes` on any replica says where
//! each gateway is subscribed, and the leader writes the GatewayStatus of
//! gateways subscribed to the others too.
//!
//! Each gateway's port usage comes along (`ListPorts`, when any reported
//! lately), so every replica follows the port pool pressure of them all
//! ([`crate::pressure`]) and the leader writes it.
//!
//! A peer URL's host may name several addresses (a headless Service): each
//! is asked, and the one that answers with this replica's own name is
//! itself and is skipped. Over TLS, peers are called with this replica's
//! own certificate (an admin identity on the others) and the host of the
//! URL as the name checked against theirs.

use crate::state::{ControlState, NodePlan, PeerLink};
use egret_api::client::{endpoint, error_chain, TlsFiles};
use egret_api::v1::{admin_service_client::AdminServiceClient, GetPlanRequest, ListNodesRequest, ListPortsRequest};
use egret_plan::{Plan, WgSecret};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// `http://host:port` or `https://host:port` of the other replicas (or
    /// one name for all of them).
    pub urls: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// This replica's name: a peer answering with it is this replica.
    pub replica: String,
    pub every: Duration,
}

/// A peer URL split for resolving: scheme, host, port.
pub fn split_url(url: &str) -> Result<(&str, &str, u16), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("peer '{url}': not a URL (http://host:port)"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("peer '{url}': the scheme must be http or https"));
    }
    let authority = rest.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, p.parse().map_err(|_| format!("peer '{url}': bad port '{p}'"))?),
        _ => return Err(format!("peer '{url}': the port is required (host:port)")),
    };
    Ok((scheme, host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// A peer's plan as `GetPlan` shows it (tunnel keys redacted), parsed.
pub fn parse_redacted(json: &str) -> Result<Plan, String> {
    let mut v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let placeholder = serde_json::to_value(WgSecret([1; 32])).map_err(|e| e.to_string())?;
    for c in v["configs"].as_array_mut().into_iter().flatten() {
        if let Some(key) = c.get_mut("tunnel").and_then(|t| t.get_mut("privateKey")) {
            // Only as a placeholder: `same_content` compares plans redacted.
            *key = placeholder.clone();
        }
    }
    let mut plan: Plan = serde_json::from_value(v).map_err(|e| e.to_string())?;
    for t in plan.configs.iter_mut().filter_map(|c| c.tunnel.as_mut()) {
        t.private_key = WgSecret::REDACTED;
    }
    Ok(plan)
}

/// Follows the peers forever.
pub async fn follow_peers(state: Arc<ControlState>, opts: PeerOptions) {
    // (replica, node, version) → the plan it applied, fetched once.
    let mut fetched: BTreeMap<(String, String, u64), NodePlan> = BTreeMap::new();
    let mut warned: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let started = Instant::now();
        let mut links = BTreeMap::new();
        for url in &opts.urls {
            for addr in resolve(url).await {
                match ask(&opts, url, &addr, &mut fetched).await {
                    Ok(found) => {
                        warned.remove(&addr);
                        links.extend(found);
                    }
                    Err(e) => {
                        if warned.get(&addr).is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            tracing::warn!(peer = %addr, error = %e, "asking a peer replica failed (this warning: once a minute)");
                            warned.insert(addr.clone(), Instant::now());
                        }
                    }
                }
            }
        }
        // Keep only what a peer still serves.
        fetched.retain(|(replica, node, _), _| links.get(node).is_some_and(|l: &PeerLink| &l.replica == replica));
        state.set_peer_links(links);
        tokio::time::sleep(opts.every.saturating_sub(started.elapsed())).await;
    }
}

/// Each address `url`'s host names, as a URL of its own.
async fn resolve(url: &str) -> Vec<String> {
    let Ok((scheme, host, port)) = split_url(url) else { return Vec::new() };
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let mut out: Vec<String> = addrs.map(|a| format!("{scheme}://{a}")).collect();
            out.sort();
            out.dedup();
            out
        }
        Err(e) => {
            tracing::debug!(peer = url, error = %e, "peer name does not resolve");
            Vec::new()
        }
    }
}

/// Asks the replica at `addr` (one address of `url`) which gateways are
/// subscribed to it; nothing if it is this replica.
async fn ask(
    opts: &PeerOptions,
    url: &str,
    addr: &str,
    fetched: &mut BTreeMap<(String, String, u64), NodePlan>,
) -> Result<BTreeMap<String, PeerLink>, String> {
    let tls = opts.tls.clone().map(|mut t| {
        if t.domain.is_none() {
            t.domain = split_url(url).ok().map(|(_, host, _)| host.to_string());
        }
        t
    });
    let call = async {
        let channel = endpoint(addr, tls.as_ref(), Duration::from_secs(1))?
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {}", error_chain(&e)))?;
        let mut admin = AdminServiceClient::new(channel).max_decoding_message_size(egret_api::client::MAX_PLAN_BYTES);
        let nodes = admin.list_nodes(ListNodesRequest {}).await.map_err(|s| egret_api::client::status_text(&s))?;
        let nodes = nodes.into_inner();
        let mut out = BTreeMap::new();
        if nodes.replica == opts.replica || nodes.replica.is_empty() {
            return Ok(out);
        }
        for n in nodes.nodes.into_iter().filter(|n| n.connected && n.replica == nodes.replica) {
            let key = (nodes.replica.clone(), n.name.clone(), n.applied_version);
            let applied_ok = n.applied_error.is_empty() && n.applied_version > 0;
            if applied_ok && !fetched.contains_key(&key) {
                let p = admin.get_plan(GetPlanRequest { node: n.name.clone() }).await;
                let p = p.map_err(|s| egret_api::client::status_text(&s))?.into_inner();
                // Its current plan is the one applied, or it moved on: asked again next round.
                if p.applied_version == p.version && p.version == n.applied_version {
                    let plan = parse_redacted(&p.plan_json).map_err(|e| format!("{}'s plan: {e}", n.name))?;
                    fetched.insert(key.clone(), NodePlan::new(p.version, plan));
                }
            }
            out.insert(
                n.name.clone(),
                PeerLink {
                    replica: nodes.replica.clone(),
                    applied_version: n.applied_version,
                    applied_error: n.applied_error,
                    applied: fetched.get(&key).cloned(),
                    report_age_s: n.report_age_s,
                    ports: Vec::new(),
                },
            );
        }
        let fresh = |age: Option<u64>| age.is_some_and(|s| s < crate::state::REPORT_FRESH.as_secs());
        if out.values().any(|l| fresh(l.report_age_s)) {
            let ports = admin.list_ports(ListPortsRequest { node: String::new() }).await;
            for p in ports.map_err(|s| egret_api::client::status_text(&s))?.into_inner().ports {
                let (Some(link), Some(usage)) = (out.get_mut(&p.node), p.usage) else { continue };
                if fresh(link.report_age_s) {
                    link.ports.push(usage);
                }
            }
        }
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(2), call).await.unwrap_or_else(|_| Err("no answer within 2 s".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_split_into_scheme_host_and_port() {
        assert_eq!(split_url("http://127.0.0.1:50052"), Ok(("http", "127.0.0.1", 50052)));
        assert_eq!(
            split_url("https://egret-control-peers.egret-system.svc:50051/"),
            Ok(("https", "egret-control-peers.egret-system.svc", 50051))
        );
        assert_eq!(split_url("http://[::1]:50051"), Ok(("http", "::1", 50051)));
        assert!(split_url("egret-control:50051").unwrap_err().contains("not a URL"));
        assert!(split_url("http://egret-control").unwrap_err().contains("port is required"));
        assert!(split_url("ftp://x:1").unwrap_err().contains("scheme"));
    }

    #[test]
    fn a_redacted_plan_parses_and_says_the_same_as_the_plan_it_came_from() {
        let mut c = egret_plan::GatewayConfig::new("apps/blue", vec!["198.19.100.1/32".parse().unwrap()]);
        c.tunnel = Some(egret_plan::TunnelConfig {
            address: "198.18.50.100".parse().unwrap(),
            port: 6000,
            private_key: WgSecret([7; 32]),
        });
        let plan = Plan { version: 4, configs: vec![c], bindings: Default::default(), network_policies: Vec::new() };
        let shown = serde_json::to_string(&plan.redacted()).unwrap();
        assert!(shown.contains("<redacted>"));
        let parsed = parse_redacted(&shown).unwrap();
        assert_eq!(parsed.configs[0].tunnel.as_ref().unwrap().port, 6000);
        let mut ours = plan.clone();
        ours.version = 9;
        assert!(crate::state::same_content(&parsed, &ours), "same content, another replica's version");
    }
}
