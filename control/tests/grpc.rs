//! egret-control end to end, in process, on 127.0.0.1 ephemeral ports: the
//! file source, the plan stream (edit the YAML, get the new plan within 2 s),
//! acks, the control plane going away and coming back, admin calls, health,
//! reflection, and TLS / mutual TLS accepted and rejected.

use egret_api::client::{subscribe, LinkState, Received, SubscribeConfig, Subscription, TlsFiles};
use egret_api::v1::{admin_service_client::AdminServiceClient, GetPlanRequest, ListConfigsRequest, Report};
use egret_control::{serve, source, ControlState, ServerTls};
use egret_plan::Plan;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

const NODE: &str = "gw-0";

fn manifests(config_of_web: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Node
metadata:
  name: gw-0
  labels: {{kubernetes.azure.com/agentpool: gwpool, kubeegressgateway.azure.com/mode: "true"}}
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {{name: blue, namespace: apps}}
spec: {{gatewayNodepoolName: gwpool}}
status: {{egressIpPrefix: 198.19.100.0/30}}
---
apiVersion: egressgateway.kubernetes.azure.com/v1alpha1
kind: StaticGatewayConfiguration
metadata: {{name: green, namespace: apps}}
spec: {{gatewayNodepoolName: gwpool}}
status: {{egressIpPrefix: 198.19.101.0/30}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: apps
  annotations: {{kubernetes.azure.com/static-gateway-configuration: {config_of_web}}}
status: {{phase: Running, podIP: 198.18.0.2}}
"#
    )
}

struct Control {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Control {
    async fn start(state: Arc<ControlState>, tls: Option<ServerTls>, addr: &str) -> Control {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, state, tls, async {
            let _ = rx.await;
        }));
        Control { addr, stop: Some(stop), task }
    }
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn next_plan(rx: &mut tokio::sync::watch::Receiver<Option<Arc<Received>>>, within: Duration) -> Arc<Received> {
    tokio::time::timeout(within, async {
        loop {
            rx.changed().await.unwrap();
            if let Some(p) = rx.borrow_and_update().clone() {
                return p;
            }
        }
    })
    .await
    .expect("a plan within the deadline")
}

fn config_of(plan: &Plan, pod: &str) -> String {
    plan.bindings.iter().find(|b| b.pod_ip.to_string() == pod).map(|b| b.config.to_string()).unwrap_or_default()
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and ConfigMap updates do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn fast(cfg: SubscribeConfig) -> SubscribeConfig {
    SubscribeConfig { backoff_min: Duration::from_millis(50), backoff_max: Duration::from_millis(200), ..cfg }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_the_yaml_and_the_gateway_gets_the_new_plan_within_2s() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("cluster.yaml");
    write(&file, &manifests("blue"));
    let state = ControlState::new();
    source::load_file(&state, &file).unwrap();
    tokio::spawn(source::watch_file(state.clone(), file.clone(), Duration::from_millis(100)));
    let ctl = Control::start(state.clone(), None, "127.0.0.1:0").await;
    let url = format!("http://{}", ctl.addr);

    let sub: Subscription = subscribe(fast(SubscribeConfig::new(&url, NODE)));
    let mut plans = sub.plans();
    let first = next_plan(&mut plans, Duration::from_secs(5)).await;
    assert_eq!(config_of(&first.plan, "198.18.0.2"), "apps/blue");
    first.plan.validate().unwrap();
    sub.ack(first.version, Ok(()));

    // Rebind the pod to the other config: the new plan arrives within 2 s.
    let t0 = std::time::Instant::now();
    write(&file, &manifests("green"));
    let second = next_plan(&mut plans, Duration::from_secs(2)).await;
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(second.version > first.version);
    assert_eq!(config_of(&second.plan, "198.18.0.2"), "apps/green");
    // Handed on with the change that made it, for the data plane to apply.
    assert_eq!(second.seq, first.seq + 1);
    let delta = second.delta.as_ref().expect("the change came as a delta");
    assert_eq!((delta.base, delta.version), (first.version, second.version));
    sub.ack(second.version, Ok(()));
    sub.report(Report { counters: [("rx_packets".to_string(), 42)].into(), ..Default::default() });

    // The admin service sees the ack.
    let mut admin = AdminServiceClient::connect(url.clone()).await.unwrap();
    let applied = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let r = admin.get_plan(GetPlanRequest { node: NODE.into() }).await.unwrap().into_inner();
            if r.applied_version == second.version {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("ack seen by admin");
    assert!(applied.connected);
    let configs = admin.list_configs(ListConfigsRequest {}).await.unwrap().into_inner().configs;
    assert_eq!(configs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["apps/blue", "apps/green"]);

    // A broken edit is not applied: the gateway keeps its plan.
    write(&file, "kind: [");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!plans.has_changed().unwrap());

    // The control plane goes away: the gateway keeps its last plan ...
    let port = ctl.addr;
    ctl.stop().await;
    let mut link = sub.link();
    tokio::time::timeout(Duration::from_secs(5), link.wait_for(|l| matches!(l, LinkState::Down(_))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plans.borrow().as_ref().unwrap().version, second.version);

    // ... and picks up where it left off when it comes back.
    write(&file, &manifests("blue"));
    source::load_file(&state, &file).unwrap();
    let ctl = Control::start(state.clone(), None, &port.to_string()).await;
    let third = next_plan(&mut plans, Duration::from_secs(5)).await;
    assert_eq!(config_of(&third.plan, "198.18.0.2"), "apps/blue");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_nodes_are_refused_clearly_and_health_and_reflection_answer() {
    let state = ControlState::new();
    state.update(&egret_cluster::ClusterState::parse(&manifests("blue"), "t").unwrap());
    let ctl = Control::start(state, None, "127.0.0.1:0").await;
    let url = format!("http://{}", ctl.addr);

    let sub: Subscription = subscribe(fast(SubscribeConfig::new(&url, "stranger")));
    let mut link = sub.link();
    let down = tokio::time::timeout(Duration::from_secs(5), link.wait_for(|l| matches!(l, LinkState::Down(_))))
        .await
        .unwrap()
        .unwrap()
        .clone();
    let LinkState::Down(why) = down else { unreachable!() };
    assert!(why.starts_with("NotFound: unknown node 'stranger'"), "{why}");

    let mut admin = AdminServiceClient::connect(url.clone()).await.unwrap();
    let e = admin.get_plan(GetPlanRequest { node: "stranger".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "egret.v1.PlanService", "egret.v1.AdminService"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service}");
    }

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in ["egret.v1.PlanService", "egret.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }
    ctl.stop().await;
}

/// A CA, and a certificate it signed for `name` (PEM cert, PEM key).
struct Ca {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert_pem: cert.pem(), issuer: rcgen::Issuer::new(p, key) }
    }
    fn sign(&self, name: &str, client: bool) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

async fn admin_call(url: &str, tls: Option<TlsFiles>) -> Result<u64, String> {
    let ep = egret_api::client::endpoint(url, tls.as_ref(), Duration::from_secs(2))?;
    let ch = ep.connect().await.map_err(|e| egret_api::client::error_chain(&e))?;
    let r = AdminServiceClient::new(ch).list_configs(ListConfigsRequest {}).await;
    r.map(|r| r.into_inner().generation).map_err(|s| egret_api::client::status_text(&s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_accept_the_right_peers_and_reject_the_rest() {
    let ca = Ca::new("egret test CA");
    let other = Ca::new("some other CA");
    let (server_cert, server_key) = ca.sign("localhost", false);
    let (client_cert, client_key) = ca.sign("gw-0", true);
    let (rogue_cert, rogue_key) = other.sign("gw-0", true);
    let tls = |identity: Option<(&String, &String)>, ca_pem: &String| TlsFiles {
        ca_pem: ca_pem.clone().into_bytes(),
        identity: identity.map(|(c, k)| (c.clone().into_bytes(), k.clone().into_bytes())),
        domain: Some("localhost".into()),
    };
    let state = ControlState::new();
    state.update(&egret_cluster::ClusterState::parse(&manifests("blue"), "t").unwrap());

    // TLS: a client that trusts the CA gets in; one that trusts another CA,
    // or speaks plaintext, does not.
    let server =
        ServerTls { cert_pem: server_cert.clone().into(), key_pem: server_key.clone().into(), ..Default::default() };
    let ctl = Control::start(state.clone(), Some(server), "127.0.0.1:0").await;
    let url = format!("https://127.0.0.1:{}", ctl.addr.port());
    assert_eq!(admin_call(&url, Some(tls(None, &ca.cert_pem))).await, Ok(1));
    let e = admin_call(&url, Some(tls(None, &other.cert_pem))).await.unwrap_err();
    assert!(e.contains("certificate") || e.contains("UnknownIssuer"), "{e}");
    assert!(admin_call(&format!("http://127.0.0.1:{}", ctl.addr.port()), None).await.is_err());
    ctl.stop().await;

    // Mutual TLS: only a client certificate from the CA gets in.
    let server = ServerTls {
        cert_pem: server_cert.into(),
        key_pem: server_key.into(),
        client_ca_pem: Some(ca.cert_pem.clone().into()),
        admin_identities: vec!["ops".into()],
    };
    let ctl = Control::start(state.clone(), Some(server), "127.0.0.1:0").await;
    let url = format!("https://127.0.0.1:{}", ctl.addr.port());
    let (ops_cert, ops_key) = ca.sign("ops", true);
    assert_eq!(admin_call(&url, Some(tls(Some((&ops_cert, &ops_key)), &ca.cert_pem))).await, Ok(1));
    // A gateway's certificate does not open the admin service.
    let e = admin_call(&url, Some(tls(Some((&client_cert, &client_key)), &ca.cert_pem))).await.unwrap_err();
    assert!(e.contains("PermissionDenied") || e.contains("permission"), "{e}");
    assert!(e.contains("admin identity (ops); this one names gw-0"), "{e}");
    assert!(admin_call(&url, Some(tls(None, &ca.cert_pem))).await.is_err(), "no client certificate");
    assert!(
        admin_call(&url, Some(tls(Some((&rogue_cert, &rogue_key)), &ca.cert_pem))).await.is_err(),
        "a client certificate from another CA"
    );

    // A gateway may read only its own node's plan.
    let gw0 = tls(Some((&client_cert, &client_key)), &ca.cert_pem);
    let e = raw_subscribe(&url, Some(&gw0), "gw-1").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("names gw-0, not 'gw-1'"), "{}", e.message());
    assert!(raw_subscribe(&url, Some(&gw0), NODE).await.is_ok());

    // And the plan stream works over mutual TLS.
    let mut cfg = fast(SubscribeConfig::new(&url, NODE));
    cfg.tls = Some(tls(Some((&client_cert, &client_key)), &ca.cert_pem));
    let sub: Subscription = subscribe(cfg);
    let mut plans = sub.plans();
    let p = next_plan(&mut plans, Duration::from_secs(5)).await;
    assert_eq!(config_of(&p.plan, "198.18.0.2"), "apps/blue");
    ctl.stop().await;
}

/// The form a thread-based gateway uses: no runtime of its own, polling the
/// watch channel between batches.
#[test]
fn a_gateway_without_a_runtime_subscribes_from_a_thread() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = ControlState::new();
    state.update(&egret_cluster::ClusterState::parse(&manifests("blue"), "t").unwrap());
    let ctl = rt.block_on(Control::start(state.clone(), None, "127.0.0.1:0"));
    let url = format!("http://{}", ctl.addr);

    let sub = egret_api::client::subscribe_in_thread(fast(SubscribeConfig::new(&url, NODE))).unwrap();
    let mut plans = sub.plans();
    let t0 = std::time::Instant::now();
    let p = loop {
        if plans.has_changed().unwrap() {
            if let Some(p) = plans.borrow_and_update().clone() {
                break p;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no plan");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(config_of(&p.plan, "198.18.0.2"), "apps/blue");
    sub.ack(p.version, Err("test rejects it".into()));
    let link = loop {
        let l = state.link(NODE);
        if !l.applied_error.is_empty() || t0.elapsed() > Duration::from_secs(5) {
            break l;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((link.applied_version, link.applied_error.as_str()), (0, "test rejects it"));
    drop(sub);
    rt.block_on(ctl.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rules_shows_resolved_pods_and_the_gateways_hit_counts() {
    use egret_api::v1::{ListRulesRequest, RuleHits};
    let policy = r#"
---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: lockdown, namespace: apps}
spec:
  gatewayConfiguration: blue
  defaultAction: deny
  denyResponse: reject
  rules:
  - {name: web-https, action: allow, cidrs: [198.19.0.0/24], protocol: tcp, ports: [443, "8000-8080"],
     podSelector: {matchLabels: {app: web}}}
  - {name: dns, action: allow, cidrs: [198.19.0.53/32], protocol: udp, ports: [53]}
"#;
    let text = manifests("blue").replace("  name: web\n", "  name: web\n  labels: {app: web}\n") + policy;
    let state = ControlState::new();
    state.update(&egret_cluster::ClusterState::parse(&text, "t").unwrap());
    let ctl = Control::start(state.clone(), None, "127.0.0.1:0").await;
    let url = format!("http://{}", ctl.addr);
    let mut admin = AdminServiceClient::connect(url.clone()).await.unwrap();

    // Before any report: the rules, resolved, with no hits.
    let r = admin.list_rules(ListRulesRequest::default()).await.unwrap().into_inner();
    assert_eq!(r.policies.len(), 1);
    let p = &r.policies[0];
    assert_eq!(
        (p.config.as_str(), p.default_action.as_str(), p.deny_response.as_str()),
        ("apps/blue", "deny", "reject")
    );
    assert_eq!(p.rules[0].pods, ["198.18.0.2"]);
    assert!(!p.rules[0].any_pod && p.rules[1].any_pod);
    assert_eq!(p.rules[0].ports, ["443", "8000-8080"]);
    assert_eq!(p.reporting_nodes, 0);

    // A gateway reports its hits; they show against the right rules.
    let sub: Subscription = subscribe(fast(SubscribeConfig::new(&url, NODE)));
    let mut plans = sub.plans();
    let plan = next_plan(&mut plans, Duration::from_secs(5)).await;
    plan.plan.validate().expect("the plan with a resolved selector compiles");
    let hit = |rule: &str, index: u32, hits: u64| RuleHits {
        config: "apps/blue".into(),
        rule: rule.into(),
        index,
        hits,
        refused: Default::default(),
    };
    let mut web = hit("web-https", 0, 7);
    web.refused.insert("sni_mismatch".into(), 2);
    sub.report(Report { rule_hits: vec![web, hit("dns", 1, 3), hit("default", 2, 5)], ..Default::default() });
    let p = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let r = admin.list_rules(ListRulesRequest { config: "apps/blue".into() }).await.unwrap().into_inner();
            if r.policies[0].reporting_nodes == 1 {
                return r.policies[0].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the report arrives");
    assert_eq!(p.rules.iter().map(|r| r.hits).collect::<Vec<_>>(), [7, 3]);
    assert_eq!(p.default_hits, 5);
    assert_eq!(p.rules[0].refused.get("sni_mismatch"), Some(&2), "name refusals show against their rule");

    // Clear answers for a config without a policy and one that does not exist.
    let e = admin.list_rules(ListRulesRequest { config: "apps/green".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("has no egress policy"), "{}", e.message());
    let e = admin.list_rules(ListRulesRequest { config: "apps/nosuch".into() }).await.unwrap_err();
    assert!(e.message().contains("unknown config"), "{}", e.message());
    drop(sub);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rules_shows_network_policies_with_the_gateways_denials() {
    use egret_api::v1::{ListRulesRequest, RuleHits};
    let netpol = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: apps}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 198.19.0.0/24, except: [198.19.0.128/25]}}]
    ports: [{protocol: TCP, port: 443}, {protocol: UDP, port: 32000, endPort: 32768}]
"#;
    let text = manifests("blue").replace(
        "  name: web
",
        "  name: web
  labels: {app: web}
",
    ) + netpol;
    let state = ControlState::new();
    state.update(&egret_cluster::ClusterState::parse(&text, "t").unwrap());
    let ctl = Control::start(state.clone(), None, "127.0.0.1:0").await;
    let url = format!("http://{}", ctl.addr);
    let mut admin = AdminServiceClient::connect(url.clone()).await.unwrap();
    let sub: Subscription = subscribe(fast(SubscribeConfig::new(&url, NODE)));
    let mut plans = sub.plans();
    next_plan(&mut plans, Duration::from_secs(5)).await;
    sub.report(Report {
        rule_hits: vec![RuleHits {
            config: "NetworkPolicy apps/web-egress".into(),
            rule: "denied".into(),
            index: 0,
            hits: 4,
            refused: Default::default(),
        }],
        ..Default::default()
    });
    let p = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let r = admin.list_rules(ListRulesRequest::default()).await.unwrap().into_inner();
            if let Some(p) =
                r.policies.iter().find(|p| p.config == "NetworkPolicy apps/web-egress" && p.reporting_nodes == 1)
            {
                return p.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the policy and the report");
    assert_eq!((p.default_action.as_str(), p.default_hits), ("deny", 4), "denials per policy");
    assert_eq!(p.rules[0].cidrs, ["198.19.0.0/24 except 198.19.0.128/25"]);
    assert_eq!(p.rules[0].ports, ["tcp/443", "udp/32000-32768"]);
    assert_eq!(p.rules[0].pods, ["198.18.0.2"]);
    drop(sub);
    ctl.stop().await;
}

/// Opens the plan stream by hand with one Hello; returns the first update's
/// version, or the status the server answered with.
async fn raw_subscribe(url: &str, tls: Option<&TlsFiles>, node: &str) -> Result<u64, tonic::Status> {
    use egret_api::v1::{gateway_message::Msg, plan_service_client::PlanServiceClient, GatewayMessage, Hello};
    let ch = egret_api::client::endpoint(url, tls, Duration::from_secs(2)).unwrap().connect().await.unwrap();
    let hello = GatewayMessage {
        msg: Some(Msg::Hello(Hello {
            node: node.into(),
            serving_version: 0,
            accepts_deltas: false,
            accepts_parts: false,
        })),
    };
    // Keep the sending side open so the server does not see the stream end.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await.unwrap();
    let mut s =
        PlanServiceClient::new(ch).subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let first = s.message().await?.map(|u| u.version).unwrap_or_default();
    drop(tx);
    Ok(first)
}

/// Opens the plan stream by hand, saying whether it accepts deltas.
async fn raw_stream(
    url: &str,
    accepts_deltas: bool,
) -> (tokio::sync::mpsc::Sender<egret_api::v1::GatewayMessage>, tonic::Streaming<egret_api::v1::PlanUpdate>) {
    use egret_api::v1::{gateway_message::Msg, plan_service_client::PlanServiceClient, GatewayMessage, Hello};
    let ch = egret_api::client::endpoint(url, None, Duration::from_secs(2)).unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = Hello { node: NODE.into(), serving_version: 0, accepts_deltas, accepts_parts: false };
    tx.send(GatewayMessage { msg: Some(Msg::Hello(hello)) }).await.unwrap();
    let s = PlanServiceClient::new(ch).subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    (tx, s.into_inner())
}

async fn next(s: &mut tonic::Streaming<egret_api::v1::PlanUpdate>) -> egret_api::v1::PlanUpdate {
    tokio::time::timeout(Duration::from_secs(3), s.message()).await.unwrap().unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_whole_plan_a_gateway_that_accepts_deltas_is_sent_each_change() {
    let cluster = |config: &str| egret_cluster::ClusterState::parse(&manifests(config), "t").unwrap();
    let state = ControlState::new();
    state.update(&cluster("blue"));
    let ctl = Control::start(state.clone(), None, "127.0.0.1:0").await;
    let url = format!("http://{}", ctl.addr);
    let (_keep, mut deltas) = raw_stream(&url, true).await;
    let (_keep_too, mut whole) = raw_stream(&url, false).await;
    let first = next(&mut deltas).await;
    assert!(first.delta_json.is_empty(), "the first plan is whole");
    let held: Plan = serde_json::from_str(&first.plan_json).unwrap();
    assert_eq!(next(&mut whole).await.version, first.version);

    state.update(&cluster("green"));
    let second = next(&mut deltas).await;
    assert!(second.plan_json.is_empty(), "the change comes as a delta, not the plan whole");
    assert_eq!(second.base_version, first.version);
    let delta: egret_plan::PlanDelta = serde_json::from_str(&second.delta_json).unwrap();
    assert_eq!((delta.bind.len(), delta.unbind.len()), (1, 0), "one pod moved config");
    let served = state.snapshot().plans[NODE].plan.clone();
    assert_eq!(delta.apply(&held).unwrap(), *served);

    let other = next(&mut whole).await;
    assert!(other.delta_json.is_empty(), "a gateway that did not ask for deltas gets the plan whole");
    assert_eq!(serde_json::from_str::<Plan>(&other.plan_json).unwrap(), *served);
    ctl.stop().await;
}

/// `manifests(config)` and `n` more pods of config blue (198.18.1.0 on).
fn manifests_with_pods(n: u32) -> String {
    let mut text = manifests("blue");
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 1, 0)) + i);
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: apps, annotations: \
             {{kubernetes.azure.com/static-gateway-configuration: blue}}}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_larger_than_a_part_travels_in_parts_and_arrives_whole() {
    use egret_api::v1::{gateway_message::Msg, plan_service_client::PlanServiceClient, GatewayMessage, Hello};
    let state = ControlState::new();
    state.update(&egret_cluster::ClusterState::parse(&manifests_with_pods(3_000), "t").unwrap());
    let served = state.snapshot().plans[NODE].plan.clone();
    let whole = serde_json::to_string(&*served).unwrap();
    assert!(whole.len() > 2 * egret_control::service::PLAN_PART_BYTES, "a plan of three parts or more");
    let ctl = Control::start(state.clone(), None, "127.0.0.1:0").await;
    let url = format!("http://{}", ctl.addr);

    let ch = egret_api::client::endpoint(&url, None, Duration::from_secs(2)).unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = Hello { node: NODE.into(), serving_version: 0, accepts_deltas: true, accepts_parts: true };
    tx.send(GatewayMessage { msg: Some(Msg::Hello(hello)) }).await.unwrap();
    let mut s = PlanServiceClient::new(ch).subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    let s = s.get_mut();
    let mut joined = String::new();
    loop {
        let u = next(s).await;
        assert!(
            u.plan_json.len() <= egret_control::service::PLAN_PART_BYTES,
            "{} bytes in one part",
            u.plan_json.len()
        );
        joined.push_str(&u.plan_json);
        if !u.more {
            break;
        }
    }
    assert_eq!(serde_json::from_str::<Plan>(&joined).unwrap(), *served);

    // The gateway's subscriber joins them.
    let sub = subscribe(fast(SubscribeConfig::new(&url, NODE)));
    let got = next_plan(&mut sub.plans(), Duration::from_secs(5)).await;
    assert_eq!(got.plan, *served);
    drop(tx);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_invalid_argument_and_name_the_field() {
    use egret_api::v1::{gateway_message::Msg, plan_service_client::PlanServiceClient, GatewayMessage, Hello};
    use egret_api::v1::{ListRulesRequest, ListSessionsRequest};
    let state = ControlState::new();
    state.update(&egret_cluster::ClusterState::parse(&manifests("blue"), "t").unwrap());
    let ctl = Control::start(state.clone(), None, "127.0.0.1:0").await;
    let url = format!("http://{}", ctl.addr);
    let mut admin = AdminServiceClient::connect(url.clone()).await.unwrap();

    let e = admin
        .list_sessions(ListSessionsRequest { pod_ip: "198.18.0.300".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "pod_ip '198.18.0.300' is not an IPv4 address"));
    let e = admin.get_plan(GetPlanRequest { node: "gw-0\n; rm -rf".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("node 'gw-0"), "{}", e.message());
    let e = admin.list_rules(ListRulesRequest { config: "x".repeat(400) }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = raw_subscribe(&url, None, &"n".repeat(300)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("Hello.node"), "{}", e.message());

    // A report past the bounds ends that gateway's stream with a clear status.
    let ch = egret_api::client::endpoint(&url, None, Duration::from_secs(2)).unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(GatewayMessage {
        msg: Some(Msg::Hello(Hello {
            node: NODE.into(),
            serving_version: 0,
            accepts_deltas: false,
            accepts_parts: false,
        })),
    })
    .await
    .unwrap();
    let mut s = PlanServiceClient::new(ch)
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(s.message().await.unwrap().is_some(), "the plan comes first");
    let huge = Report { counters: (0..5000).map(|i| (format!("c{i}"), 1)).collect(), ..Default::default() };
    tx.send(GatewayMessage { msg: Some(Msg::Report(huge)) }).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(3), s.message()).await.unwrap().unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "Report.counters: 5000 entries, at most 1024"));
    assert!(state.link(NODE).report.is_none(), "the oversized report was not kept");
    drop(tx);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_gateway_mode_lists_configs_as_served_by_any_subscriber() {
    // The manifests name no gateway Node: every subscriber gets every config whole.
    let text = manifests("blue").split("---").skip(1).collect::<Vec<_>>().join("---");
    let state = ControlState::new();
    state.update(&egret_cluster::ClusterState::parse(&text, "t").unwrap());
    let ctl = Control::start(state, None, "127.0.0.1:0").await;
    let mut admin = AdminServiceClient::connect(format!("http://{}", ctl.addr)).await.unwrap();
    let configs = admin.list_configs(ListConfigsRequest {}).await.unwrap().into_inner().configs;
    let blue = configs.iter().find(|c| c.name == "apps/blue").unwrap();
    assert!(blue.served, "{blue:?}");
    assert_eq!(blue.shares[0].node, "*");
    assert_eq!(blue.shares[0].addresses.len(), 4);
    assert_eq!(blue.pod_ips, ["198.18.0.2"]);
    ctl.stop().await;
}

/// Two replicas of egret-control in one process, each with its own state
/// (as two pods listing the same cluster), named as `egretctl nodes` shows.
async fn replica(state: Arc<ControlState>, name: &str) -> Control {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel();
    let opts = egret_control::ServeOptions { replica: name.into(), ..Default::default() };
    let task = tokio::spawn(egret_control::serve_with(listener, state, opts, async {
        let _ = rx.await;
    }));
    Control { addr, stop: Some(stop), task }
}

/// gw-0 as `url`'s ListNodes shows it, and the replica that answered.
async fn node_at(url: &str) -> (egret_api::v1::NodeInfo, String) {
    let mut admin = AdminServiceClient::connect(url.to_string()).await.unwrap();
    let r = admin.list_nodes(egret_api::v1::ListNodesRequest {}).await.unwrap().into_inner();
    (r.nodes.into_iter().find(|n| n.name == NODE).unwrap(), r.replica)
}

async fn poll_until<F: std::future::Future<Output = bool>>(what: &str, within: Duration, mut f: impl FnMut() -> F) {
    let t0 = std::time::Instant::now();
    while !f().await {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Replica B has published the same content under version 3 (A: 1).
fn two_states() -> (Arc<ControlState>, Arc<ControlState>) {
    let parse = |c: &str| egret_cluster::ClusterState::parse(&manifests(c), "t").unwrap();
    let (a, b) = (ControlState::new(), ControlState::new());
    a.update(&parse("blue"));
    for c in ["blue", "green", "blue"] {
        b.update(&parse(c));
    }
    assert_eq!((a.snapshot().plans[NODE].version, b.snapshot().plans[NODE].version), (1, 3));
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_its_replica_stops_a_gateway_resubscribes_to_the_other_within_a_second_and_acks_its_plan_unrepublished() {
    let (a, b) = two_states();
    let ctl_a = replica(a.clone(), "control-a").await;
    let ctl_b = replica(b.clone(), "control-b").await;
    let urls = [format!("http://{}", ctl_a.addr), format!("http://{}", ctl_b.addr)];
    let sub: Subscription = subscribe(SubscribeConfig::new(&urls.join(","), NODE));
    let mut plans = sub.plans();
    let first = next_plan(&mut plans, Duration::from_secs(5)).await;
    sub.ack(first.version, Ok(()));

    // On whichever replica its name chose; acked there.
    let (on, off) = if a.link(NODE).connected > 0 { ((ctl_a, a), (ctl_b, b)) } else { ((ctl_b, b), (ctl_a, a)) };
    let (on_url, off_url) = (format!("http://{}", on.0.addr), format!("http://{}", off.0.addr));
    let (n, answered) = node_at(&on_url).await;
    assert_eq!((n.connected, n.replica.as_str()), (true, answered.as_str()), "{n:?}");
    poll_until("the ack", Duration::from_secs(2), || {
        let s = on.1.clone();
        async move { s.link(NODE).applied_version == s.snapshot().plans[NODE].version }
    })
    .await;
    // Up a while, as a steady stream is.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let t0 = std::time::Instant::now();
    on.0.stop().await;
    let off_version = off.1.snapshot().plans[NODE].version;
    poll_until("the ack of the other replica's version", Duration::from_secs(1), || {
        let s = off.1.clone();
        async move { s.link(NODE).applied_version == off_version }
    })
    .await;
    let gap = t0.elapsed();
    eprintln!("resubscribed and acked on the other replica {} ms after its replica stopped", gap.as_millis());
    let (n, answered) = node_at(&off_url).await;
    assert_eq!((n.connected, n.replica, n.applied_version, n.plan_version), (true, answered, off_version, off_version));
    assert!(!plans.has_changed().unwrap(), "the same content under another version is not published again");
    assert_eq!(plans.borrow().as_ref().unwrap().version, off_version, "held under the new version");
    off.0.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_learns_from_its_peer_which_gateways_are_subscribed_there_and_what_they_applied() {
    let (a, b) = two_states();
    let ctl_a = replica(a.clone(), "control-a").await;
    let ctl_b = replica(b.clone(), "control-b").await;
    let (url_a, url_b) = (format!("http://{}", ctl_a.addr), format!("http://{}", ctl_b.addr));
    // Each asks both addresses (as a headless Service's name gives): itself is skipped.
    for (state, me) in [(a.clone(), "control-a"), (b.clone(), "control-b")] {
        let opts = egret_control::peers::PeerOptions {
            urls: vec![url_a.clone(), url_b.clone()],
            tls: None,
            replica: me.into(),
            every: Duration::from_millis(100),
        };
        tokio::spawn(egret_control::peers::follow_peers(state, opts));
    }
    let sub: Subscription = subscribe(SubscribeConfig::new(&url_b, NODE));
    let mut plans = sub.plans();
    let p = next_plan(&mut plans, Duration::from_secs(5)).await;
    sub.ack(p.version, Ok(()));

    // A says gw-0 is on control-b, applied the plan A would send (same
    // content: A's version), and holds that plan as applied (what its
    // GatewayStatus is written from).
    poll_until("A's view of gw-0", Duration::from_secs(3), || {
        let url = url_a.clone();
        async move {
            let (n, _) = node_at(&url).await;
            n.connected && n.replica == "control-b" && n.applied_version == 1
        }
    })
    .await;
    let applied = a.applied_plan(NODE).expect("the plan gw-0 applied, as B says");
    assert!(egret_control::state::same_content(&applied.plan, &a.snapshot().plans[NODE].plan));

    // Its port usage, reported to B, comes along: A follows the pressure
    // on its pool too (and would publish it, leading).
    let usage = egret_api::v1::PortUsage {
        egress_ip: "198.19.100.1".into(),
        config: "apps/blue".into(),
        in_use_by_protocol: [("tcp".to_string(), 95)].into(),
        capacity_per_protocol: 100,
        ..Default::default()
    };
    assert!(a.port_usage().is_empty());
    sub.report(Report { ports: vec![usage.clone()], ..Default::default() });
    poll_until("gw-0's ports at A", Duration::from_secs(3), || {
        let a = a.clone();
        let want = vec![(NODE.to_string(), usage.clone())];
        async move { a.port_usage() == want }
    })
    .await;
    assert_eq!(b.port_usage().len(), 1, "B's own, from the report");
    let (n, answered) = node_at(&url_b).await;
    assert_eq!((n.replica.as_str(), answered.as_str()), ("control-b", "control-b"), "B's own view is unchanged");

    // The gateway moves to A: B now says it is on control-a.
    ctl_b.stop().await;
    drop(sub);
    let sub: Subscription = subscribe(SubscribeConfig::new(&url_a, NODE));
    let mut plans = sub.plans();
    let p = next_plan(&mut plans, Duration::from_secs(5)).await;
    sub.ack(p.version, Ok(()));
    poll_until("A's own link", Duration::from_secs(3), || {
        let url = url_a.clone();
        async move { node_at(&url).await.0.replica == "control-a" }
    })
    .await;
    ctl_a.stop().await;
}
