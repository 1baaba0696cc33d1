//! Control-plane scale benchmark (issue 31): egret-control's Kubernetes
//! source against a fake API server, with N gRPC gateway subscribers.
//!
//! The fake speaks the list/watch protocol over HTTP/1.1 on 127.0.0.1 as an
//! API server does for `resourceVersion=0` lists (served whole from its
//! cache) and chunked watch streams of ADDED/DELETED events, replaying what
//! a watch asks for from its resourceVersion on. The egret-control binary
//! runs as a child process (`--kubernetes --kube-api`), so its RSS is its
//! own. Each subscriber (one per gateway node) records when each plan
//! arrives and which pod IPs it binds.
//!
//! Printed: time from start to every node's first plan; the delay from a
//! pod watch event to every node holding a plan that reflects it, one
//! event at a time (quiet) and under a churn of `--churn-rate` pod changes a
//! second (half adds of new pods, half deletes of listed ones); the control
//! plane's RSS (after the first plan, after each phase, and its peak).
//!
//! `cargo run --release -p egret-control --example scale -- --control target/release/egret-control`

use egret_api::v1::{gateway_message::Msg, plan_service_client::PlanServiceClient, Ack, GatewayMessage, Hello};
use egret_plan::{Plan, PlanDelta};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const SGCS: &str = "/apis/egressgateway.kubernetes.azure.com/v1alpha1/staticgatewayconfigurations";
const PODS: &str = "/api/v1/pods";
const NODES: &str = "/api/v1/nodes";
const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
/// Kinds served as empty lists; everything else is 404 (a CRD not
/// installed, which the source may treat as none).
const LISTED: [&str; 4] = [SGCS, PODS, NODES, NETWORK_POLICIES];

struct Args {
    control: String,
    pods: usize,
    configs: usize,
    nodes: usize,
    quiet_events: usize,
    churn_rate: u32,
    churn_secs: u64,
    /// Whether the subscribers ask for plan deltas (`--deltas off`: every
    /// version whole, as gateways before deltas).
    deltas: bool,
}

fn args() -> Args {
    let mut a = Args {
        control: "target/release/egret-control".into(),
        pods: 100_000,
        configs: 1_000,
        nodes: 10,
        quiet_events: 30,
        churn_rate: 200,
        churn_secs: 60,
        deltas: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{k}: not a number: {v}"));
        match k.as_str() {
            "--control" => a.control = v.clone(),
            "--pods" => a.pods = n(),
            "--configs" => a.configs = n(),
            "--nodes" => a.nodes = n(),
            "--quiet-events" => a.quiet_events = n(),
            "--churn-rate" => a.churn_rate = n() as u32,
            "--churn-secs" => a.churn_secs = n() as u64,
            "--deltas" => a.deltas = v != "off",
            _ => panic!("unknown option {k}"),
        }
    }
    assert!(a.configs <= 4096 && a.pods < 1 << 22, "configs are /28s of 198.19.0.0/16; pods 10.128.0.0/10");
    a
}

#[derive(Default)]
struct Db {
    rv: u64,
    /// path → name → the object's JSON.
    objects: HashMap<&'static str, BTreeMap<String, Arc<str>>>,
    /// Every watch event: (rv, path, line).
    log: Vec<(u64, &'static str, Arc<str>)>,
}

#[derive(Clone)]
struct Fake {
    db: Arc<Mutex<Db>>,
    push: broadcast::Sender<(u64, &'static str, Arc<str>)>,
}

impl Fake {
    fn new() -> Fake {
        Fake { db: Arc::default(), push: broadcast::channel(1 << 16).0 }
    }

    fn put(&self, path: &'static str, name: String, mut o: serde_json::Value, notify: bool) {
        let mut db = self.db.lock().unwrap();
        db.rv += 1;
        let rv = db.rv;
        o["metadata"]["resourceVersion"] = serde_json::json!(rv.to_string());
        let json: Arc<str> = o.to_string().into();
        let old = db.objects.entry(path).or_default().insert(name, json.clone());
        if notify {
            let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
            let line: Arc<str> = format!("{{\"type\":\"{kind}\",\"object\":{json}}}").into();
            db.log.push((rv, path, line.clone()));
            let _ = self.push.send((rv, path, line));
        }
    }

    fn delete(&self, path: &'static str, name: &str) {
        let mut db = self.db.lock().unwrap();
        db.rv += 1;
        let rv = db.rv;
        let Some(gone) = db.objects.entry(path).or_default().remove(name) else { return };
        let mut o: serde_json::Value = serde_json::from_str(&gone).unwrap();
        o["metadata"]["resourceVersion"] = serde_json::json!(rv.to_string());
        let line: Arc<str> = format!("{{\"type\":\"DELETED\",\"object\":{o}}}").into();
        db.log.push((rv, path, line.clone()));
        let _ = self.push.send((rv, path, line));
    }

    async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            tokio::spawn(self.clone().connection(sock));
        }
    }

    async fn connection(self, sock: TcpStream) {
        let _ = sock.set_nodelay(true);
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let mut content_length = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((name, value)) = h.split_once(':') {
                    if name.trim().eq_ignore_ascii_case("content-length") {
                        content_length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; content_length];
            if r.read_exact(&mut body).await.is_err() {
                return;
            }
            let mut words = line.split_whitespace();
            let method = words.next().unwrap_or("GET").to_string();
            let target = words.next().unwrap_or("/").to_string();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let params: BTreeMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
            let watch = params.get("watch").is_some_and(|v| *v == "true" || *v == "1");
            let Some(path) = LISTED.iter().copied().find(|p| *p == path).filter(|_| method == "GET") else {
                let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#;
                let head = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if w.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
                    return;
                }
                continue;
            };
            if watch {
                let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
                let (backlog, mut rx) = {
                    let db = self.db.lock().unwrap();
                    let backlog: Vec<(u64, Arc<str>)> = db
                        .log
                        .iter()
                        .filter(|(rv, p, _)| *rv > from && *p == path)
                        .map(|(rv, _, l)| (*rv, l.clone()))
                        .collect();
                    (backlog, self.push.subscribe())
                };
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut last = from;
                for (rv, l) in backlog {
                    last = rv;
                    if chunk(&mut w, &l).await.is_err() {
                        return;
                    }
                }
                loop {
                    match rx.recv().await {
                        Ok((rv, p, l)) if p == path && rv > last => {
                            last = rv;
                            if chunk(&mut w, &l).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
            let body = {
                let db = self.db.lock().unwrap();
                let items = db.objects.get(path).map(|m| m.values().map(|s| &**s).collect::<Vec<_>>().join(","));
                format!(
                    "{{\"kind\":\"List\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"{}\"}},\"items\":[{}]}}",
                    db.rv,
                    items.unwrap_or_default()
                )
            };
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
            if w.write_all(head.as_bytes()).await.is_err() || w.write_all(body.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

async fn chunk(w: &mut tokio::net::tcp::OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    let data = format!("{line}\n");
    w.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await
}

fn config_name(i: usize) -> String {
    format!("sgc-{i}")
}

fn sgc(i: usize) -> serde_json::Value {
    let base = u32::from(Ipv4Addr::new(198, 19, 0, 0)) + (i as u32) * 16;
    let prefix = format!("{}/28", Ipv4Addr::from(base));
    serde_json::json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": config_name(i), "namespace": "apps", "uid": format!("uid-sgc-{i}")},
        "spec": {"gatewayNodepoolName": "gwpool", "provisionPublicIps": true, "defaultRoute": "staticEgressGateway"},
        "status": {"egressIpPrefix": prefix, "gatewayServerProfile": {"ip": "10.0.0.4", "port": 6000}}})
}

fn pod(name: &str, ip: Ipv4Addr, config: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"),
            "annotations": {"kubernetes.azure.com/static-gateway-configuration": config}},
        "spec": {"containers": [{"name": "c", "image": "alpine"}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}], "hostIP": "10.224.2.10"}})
}

fn node(i: usize) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("gw-{i}"), "uid": format!("uid-gw-{i}"),
            "labels": {"kubernetes.azure.com/agentpool": "gwpool", "kubeegressgateway.azure.com/mode": "true"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": format!("10.224.0.{}", 10 + i)}]}})
}

fn listed_pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32)
}

fn new_pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 192, 0, 0)) + i as u32)
}

/// A watch event and when each node first held a plan reflecting it.
struct Event {
    ip: u32,
    present: bool,
    at: Instant,
    seen: Vec<Option<Instant>>,
}

#[derive(Default)]
struct Seen {
    events: Vec<Event>,
    /// Per node: (arrival, version) of every plan.
    plans: Vec<Vec<(Instant, u64, usize)>>,
    /// Plans received whole (the rest came as deltas).
    whole: usize,
}

/// One gateway's view of its plan stream: the plan held (as a gateway
/// holds it, decoded) and the pod IPs it binds.
#[derive(Default)]
struct Held {
    plan: Plan,
    ips: HashSet<u32>,
}

impl Held {
    /// Takes an update as a gateway does: a whole plan decoded, or a delta
    /// applied to the plan held. False when a delta does not follow.
    fn take(&mut self, u: &egret_api::v1::PlanUpdate) -> bool {
        if u.delta_json.is_empty() {
            self.plan = serde_json::from_str(&u.plan_json).expect("the plan decodes");
            self.ips = self.plan.bindings.iter().map(|b| u32::from(b.pod_ip)).collect();
            return true;
        }
        let delta: PlanDelta = serde_json::from_str(&u.delta_json).expect("the delta decodes");
        let Ok(plan) = delta.apply(&self.plan) else { return false };
        for ip in &delta.unbind {
            self.ips.remove(&u32::from(*ip));
        }
        self.ips.extend(delta.bind.iter().map(|b| u32::from(b.pod_ip)));
        self.plan = plan;
        true
    }
}

async fn subscriber(url: String, node: usize, deltas: bool, seen: Arc<Mutex<Seen>>) {
    let name = format!("gw-{node}");
    loop {
        let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let hello = Hello { node: name.clone(), serving_version: 0, accepts_deltas: deltas, accepts_parts: true };
        tx.send(GatewayMessage { msg: Some(Msg::Hello(hello)) }).await.unwrap();
        let mut client = PlanServiceClient::new(ch).max_decoding_message_size(egret_api::client::MAX_PLAN_BYTES);
        let Ok(stream) = client.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut held = Held::default();
        // A whole plan's parts so far, joined as a gateway joins them.
        let mut parts = None;
        while let Ok(Some(u)) = stream.message().await {
            let u = match egret_api::client::join_parts(&mut parts, u) {
                Ok(Some(u)) => u,
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("gw-{node}: {e}; subscribing again");
                    break;
                }
            };
            if !held.take(&u) {
                eprintln!("gw-{node}: delta to version {} does not follow; subscribing again", u.version);
                break;
            }
            let now = Instant::now();
            {
                let mut s = seen.lock().unwrap();
                s.plans[node].push((now, u.version, held.ips.len()));
                s.whole += u.delta_json.is_empty() as usize;
                for e in s.events.iter_mut().filter(|e| e.seen[node].is_none() && e.at <= now) {
                    if held.ips.contains(&e.ip) == e.present {
                        e.seen[node] = Some(now);
                    }
                }
            }
            let ack = GatewayMessage { msg: Some(Msg::Ack(Ack { version: u.version, error: String::new() })) };
            let _ = tx.send(ack).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (p50, p99, max, count, unseen) in ms of events `from..to`.
fn delays(seen: &Seen, from: usize, to: usize) -> (f64, f64, f64, usize, usize) {
    let mut d = Vec::new();
    let mut unseen = 0;
    for e in &seen.events[from..to] {
        match e.seen.iter().copied().collect::<Option<Vec<_>>>() {
            Some(all) => d.push(all.iter().max().unwrap().duration_since(e.at).as_secs_f64() * 1e3),
            None => unseen += 1,
        }
    }
    d.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (pct(&d, 0.5), pct(&d, 0.99), d.last().copied().unwrap_or(f64::NAN), d.len(), unseen)
}

fn all_seen(seen: &Arc<Mutex<Seen>>, from: usize) -> bool {
    seen.lock().unwrap().events[from..].iter().all(|e| e.seen.iter().all(Option::is_some))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let fake = Fake::new();
    let t = Instant::now();
    for i in 0..a.nodes {
        fake.put(NODES, format!("/gw-{i}"), node(i), false);
    }
    for i in 0..a.configs {
        fake.put(SGCS, format!("apps/{}", config_name(i)), sgc(i), false);
    }
    for i in 0..a.pods {
        let name = format!("p-{i}");
        fake.put(PODS, format!("apps/{name}"), pod(&name, listed_pod_ip(i), &config_name(i % a.configs)), false);
    }
    fake.db.lock().unwrap().objects.entry(NETWORK_POLICIES).or_default();
    eprintln!("objects made in {:.1} s", t.elapsed().as_secs_f64());

    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", api.local_addr().unwrap());
    tokio::spawn(fake.clone().serve(api));
    let grpc = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let log = std::fs::File::create(std::env::temp_dir().join("egret-control-scale.log")).unwrap();
    let start = Instant::now();
    let child = Command::new(&a.control)
        .args(["--kubernetes", "--kube-api", &api_url, "--listen", &grpc.to_string()])
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", a.control));
    let pid = child.id();
    let _child = Killed(child);

    let seen = Arc::new(Mutex::new(Seen { events: Vec::new(), plans: vec![Vec::new(); a.nodes], whole: 0 }));
    for n in 0..a.nodes {
        tokio::spawn(subscriber(format!("http://{grpc}"), n, a.deltas, seen.clone()));
    }
    // First plans.
    let first = loop {
        {
            let s = seen.lock().unwrap();
            if s.plans.iter().all(|p| !p.is_empty()) {
                break s.plans.iter().map(|p| p[0].0).max().unwrap().duration_since(start);
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            panic!("no first plan on every node within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let bindings = seen.lock().unwrap().plans[0][0].2;
    eprintln!("first plan on every node after {:.2} s ({bindings} bindings each)", first.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_first = rss_kib(pid).0;

    let mut added = 0usize;
    let mut deleted = 0usize;
    let event = |fake: &Fake, added: &mut usize, deleted: &mut usize, add: bool| {
        let (ip, present) = if add {
            let i = *added;
            *added += 1;
            let name = format!("new-{i}");
            let ip = new_pod_ip(i);
            let e = Event { ip: u32::from(ip), present: true, at: Instant::now(), seen: vec![None; a.nodes] };
            seen.lock().unwrap().events.push(e);
            fake.put(PODS, format!("apps/{name}"), pod(&name, ip, &config_name(i % a.configs)), true);
            (ip, true)
        } else {
            let i = a.pods - 1 - *deleted;
            *deleted += 1;
            let ip = listed_pod_ip(i);
            let e = Event { ip: u32::from(ip), present: false, at: Instant::now(), seen: vec![None; a.nodes] };
            seen.lock().unwrap().events.push(e);
            fake.delete(PODS, &format!("apps/p-{i}"));
            (ip, false)
        };
        let _ = (ip, present);
    };

    // Quiet: one event at a time.
    for k in 0..a.quiet_events {
        let from = seen.lock().unwrap().events.len();
        event(&fake, &mut added, &mut deleted, k.is_multiple_of(2));
        let t = Instant::now();
        while !all_seen(&seen, from) && t.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet_end = seen.lock().unwrap().events.len();
    let rss_quiet = rss_kib(pid).0;

    // Churn.
    let churn_from = quiet_end;
    let mut rss_max = 0;
    if a.churn_secs > 0 && a.churn_rate > 0 {
        let every = Duration::from_secs_f64(1.0 / a.churn_rate as f64);
        let t0 = Instant::now();
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut last_rss = Instant::now();
        while t0.elapsed() < Duration::from_secs(a.churn_secs) {
            tick.tick().await;
            while t0 + every * n as u32 <= Instant::now() {
                event(&fake, &mut added, &mut deleted, n.is_multiple_of(2));
                n += 1;
            }
            if last_rss.elapsed() >= Duration::from_millis(500) {
                rss_max = rss_max.max(rss_kib(pid).0);
                last_rss = Instant::now();
            }
        }
        let t = Instant::now();
        while !all_seen(&seen, churn_from) && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            rss_max = rss_max.max(rss_kib(pid).0);
        }
    }
    let churn_end = seen.lock().unwrap().events.len();
    let (rss_end, hwm) = rss_kib(pid);

    let s = seen.lock().unwrap();
    let (q50, q99, qmax, qn, qun) = delays(&s, 0, quiet_end);
    let (c50, c99, cmax, cn, cun) = delays(&s, churn_from, churn_end);
    let plans: usize = s.plans.iter().map(|p| p.len()).sum();
    let mib = |k: u64| k as f64 / 1024.0;
    let deltas = if a.deltas { "plan deltas" } else { "whole plans" };
    println!("control-plane scale: {} pods, {} configs, {} nodes, {deltas}", a.pods, a.configs, a.nodes);
    println!("| measure | value |");
    println!("|---|---|");
    println!("| first plan on every node | {:.2} s ({bindings} bindings per plan) |", first.as_secs_f64());
    println!("| quiet: event → every node, p50 / p99 / max | {q50:.0} / {q99:.0} / {qmax:.0} ms ({qn} events, {qun} unseen) |");
    println!(
        "| churn {}/s for {} s: event → every node, p50 / p99 / max | {c50:.0} / {c99:.0} / {cmax:.0} ms ({cn} events, {cun} unseen) |",
        a.churn_rate, a.churn_secs
    );
    println!("| plans received (all nodes) | {plans} ({} whole) |", s.whole);
    println!(
        "| control RSS: first plan / after quiet / churn max / end / peak (VmHWM) | {:.0} / {:.0} / {:.0} / {:.0} / {:.0} MiB |",
        mib(rss_first),
        mib(rss_quiet),
        mib(rss_max),
        mib(rss_end),
        mib(hwm)
    );
}
