//! The Kubernetes source against a small fake API server speaking the
//! list/watch protocol over real HTTP on 127.0.0.1 (no Kubernetes API server
//! can be installed on this machine): lists with resourceVersions, chunked
//! watch streams with ADDED/MODIFIED/DELETED and BOOKMARK events, a dropped
//! watch resumed from the last resourceVersion without a re-list, a 410
//! Gone answered with a re-list, a CRD that is not installed (404), and a
//! kind whose list is made slow or made to fail with a given status; and
//! what egret-control writes back: GatewayStatus objects by server-side
//! apply (PATCH, `application/apply-patch+yaml`) and events.k8s.io Events
//! (POST, PATCH for a series), stored as received and answered as the API
//! server would, and StaticGatewayConfiguration annotations by JSON merge
//! patch (watchers see the object modified). It also reviews ServiceAccount tokens (TokenReview, with
//! audiences) and serves pods by name, for egret-control's
//! `--gateway-auth=token`, tested end to end over gRPC; and keeps
//! `coordination.k8s.io/v1` Leases (get, create, update refused with 409
//! Conflict unless it carries the stored resourceVersion) for two replicas'
//! leader election, each replica on a listener of its own so that every
//! write says who made it.

use egret_api::v1::{PortUsage, Report};
use egret_cluster::Problem;
use egret_control::kube_source::{watch_kubernetes, watch_kubernetes_with, Options};
use egret_control::kube_status::{write_status, StatusOptions, ANN_PORT_POOL_PRESSURE};
use egret_control::leader::{elect, LeaderOptions, Leadership};
use egret_control::state::PeerLink;
use egret_control::ControlState;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const SGCS: &str = "/apis/egressgateway.kubernetes.azure.com/v1alpha1/staticgatewayconfigurations";
const PODS: &str = "/api/v1/pods";
const NODES: &str = "/api/v1/nodes";
const POD_ENDPOINTS: &str = "/apis/egressgateway.kubernetes.azure.com/v1alpha1/podendpoints";
const VM_CONFIGS: &str = "/apis/egressgateway.kubernetes.azure.com/v1alpha1/gatewayvmconfigurations";
const POLICIES: &str = "/apis/egret.dev/v1alpha1/egresspolicies";
const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
/// kube-egress-gateway's Helm namespace: config Secrets live here.
const SECRETS: &str = "/api/v1/namespaces/kube-egress-gateway-system/secrets";
/// The AKS add-on's namespace, where this fake's RBAC says no (403).
const DENIED: &str = "/api/v1/namespaces/aks-static-egress-gateway/secrets";
/// Where GatewayStatus objects are written (`<ns>/gatewaystatuses/<name>`).
const STATUSES: &str = "/apis/egressgateway.kubernetes.azure.com/v1alpha1/namespaces/";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/";
const STATUS_NS: &str = "kube-egress-gateway-system";
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// One pod by name: `<PODS_IN><namespace>/pods/<name>`.
const PODS_IN: &str = "/api/v1/namespaces/";
/// Leases: `<LEASES><namespace>/leases[/<name>]`.
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

#[derive(Clone, Debug)]
enum Push {
    Event { path: String, line: String },
    Close { path: String },
}

#[derive(Default)]
struct Db {
    rv: u64,
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    lists: BTreeMap<String, usize>,
    /// (path, resourceVersion asked) of every watch request.
    watches: Vec<(String, String)>,
    /// Every POST and PATCH, in order, refused or not.
    writes: Vec<Write>,
    /// GatewayStatus objects by `namespace/name`.
    statuses: BTreeMap<String, Value>,
    /// Events as created (a PATCH to a series is only recorded in writes).
    events: Vec<Value>,
    /// GatewayStatus writes are refused (403), as RBAC would.
    deny_statuses: bool,
    /// Paths whose every GET is answered with this status instead.
    fail: BTreeMap<String, u16>,
    /// Paths whose lists are not answered while they are here.
    held: BTreeSet<String>,
    /// Every list request by path, answered, failed or held.
    attempts: BTreeMap<String, usize>,
    /// Tokens the fake's authenticator knows: what a review of each says.
    tokens: BTreeMap<String, FakeToken>,
    /// TokenReviews asked for.
    reviews: usize,
    /// Leases by `namespace/name`.
    leases: BTreeMap<String, Value>,
    /// Lease calls are not answered while set (an API server gone quiet).
    leases_silent: bool,
}

/// A token as the API server's authenticator knows it.
#[derive(Clone, Debug)]
struct FakeToken {
    username: String,
    audiences: Vec<String>,
    extra: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug)]
struct Write {
    /// The listener the write came in on (`serve_as`): which replica.
    who: String,
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: String,
}

fn status_reply(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": message}),
    )
}

#[derive(Clone)]
struct Fake {
    db: Arc<Mutex<Db>>,
    push: broadcast::Sender<Push>,
}

fn name_of(o: &Value) -> String {
    format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap())
}

impl Fake {
    fn new() -> Fake {
        Fake { db: Arc::default(), push: broadcast::channel(64).0 }
    }

    /// Stores `o` at a new resourceVersion; with `notify`, watchers see it.
    fn put(&self, path: &str, mut o: Value, notify: bool) {
        let mut db = self.db.lock().unwrap();
        db.rv += 1;
        o["metadata"]["resourceVersion"] = json!(db.rv.to_string());
        let old = db.objects.entry(path.into()).or_default().insert(name_of(&o), o.clone());
        if notify {
            let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
            let line = json!({"type": kind, "object": o}).to_string();
            let _ = self.push.send(Push::Event { path: path.into(), line });
        }
    }

    fn delete(&self, path: &str, o: &Value, notify: bool) {
        let mut db = self.db.lock().unwrap();
        db.rv += 1;
        let gone = db.objects.entry(path.into()).or_default().remove(&name_of(o));
        if let (true, Some(mut gone)) = (notify, gone) {
            gone["metadata"]["resourceVersion"] = json!(db.rv.to_string());
            let _ = self
                .push
                .send(Push::Event { path: path.into(), line: json!({"type": "DELETED", "object": gone}).to_string() });
        }
    }

    fn bookmark(&self, path: &str, kind: &str) -> String {
        let mut db = self.db.lock().unwrap();
        db.rv += 1;
        let rv = db.rv.to_string();
        let line = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv}}});
        let _ = self.push.send(Push::Event { path: path.into(), line: line.to_string() });
        rv
    }

    fn gone(&self, path: &str) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410});
        let line = json!({"type": "ERROR", "object": status}).to_string();
        let _ = self.push.send(Push::Event { path: path.into(), line });
    }

    fn lists(&self, path: &str) -> usize {
        self.db.lock().unwrap().lists.get(path).copied().unwrap_or(0)
    }

    /// Answers every GET of `path` with `code` (None: as usual).
    fn fail(&self, path: &str, code: Option<u16>) {
        let mut db = self.db.lock().unwrap();
        match code {
            Some(code) => db.fail.insert(path.into(), code),
            None => db.fail.remove(path),
        };
    }

    /// Holds lists of `path` unanswered (or lets them go).
    fn hold(&self, path: &str, held: bool) {
        let mut db = self.db.lock().unwrap();
        if held {
            db.held.insert(path.into());
        } else {
            db.held.remove(path);
        }
    }

    fn attempts(&self, path: &str) -> usize {
        self.db.lock().unwrap().attempts.get(path).copied().unwrap_or(0)
    }

    fn watches(&self, path: &str) -> Vec<String> {
        self.db.lock().unwrap().watches.iter().filter(|(p, _)| p == path).map(|(_, rv)| rv.clone()).collect()
    }

    async fn serve(self, listener: TcpListener, who: String) {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::spawn(self.clone().connection(sock, who.clone()));
        }
    }

    /// A Lease call, answered as the API server would: GET one, POST
    /// (409 AlreadyExists if there), PUT (404 if not there, 409 Conflict
    /// unless its resourceVersion is the stored one).
    fn lease_call(&self, method: &str, rest: &str, body: &str) -> (u16, Value) {
        let mut db = self.db.lock().unwrap();
        let parts: Vec<&str> = rest.split('/').collect();
        let (ns, name) = match (method, &parts[..]) {
            ("POST", [ns, "leases"]) => {
                let Ok(v) = serde_json::from_str::<Value>(body) else {
                    return status_reply(400, "BadRequest", "the body is not JSON");
                };
                (ns.to_string(), v["metadata"]["name"].as_str().unwrap_or_default().to_string())
            }
            (_, [ns, "leases", name]) => (ns.to_string(), name.to_string()),
            _ => return status_reply(404, "NotFound", "the server could not find the requested resource"),
        };
        let key = format!("{ns}/{name}");
        let stored_rv = db.leases.get(&key).map(|l| l["metadata"]["resourceVersion"].clone());
        let not_found = || status_reply(404, "NotFound", &format!("leases.coordination.k8s.io \"{name}\" not found"));
        match method {
            "GET" => return db.leases.get(&key).map_or_else(not_found, |l| (200, l.clone())),
            "POST" if stored_rv.is_some() => {
                return status_reply(
                    409,
                    "AlreadyExists",
                    &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                )
            }
            "PUT" if stored_rv.is_none() => return not_found(),
            "POST" | "PUT" => {}
            _ => return status_reply(405, "MethodNotAllowed", "not served here"),
        }
        let Ok(mut lease) = serde_json::from_str::<Value>(body) else {
            return status_reply(400, "BadRequest", "the body is not JSON");
        };
        if method == "PUT" && Some(&lease["metadata"]["resourceVersion"]) != stored_rv.as_ref() {
            let message = format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            );
            return status_reply(409, "Conflict", &message);
        }
        db.rv += 1;
        lease["metadata"]["resourceVersion"] = json!(db.rv.to_string());
        lease["metadata"]["namespace"] = json!(ns);
        db.leases.insert(key, lease.clone());
        (if method == "POST" { 201 } else { 200 }, lease)
    }

    fn lease(&self, key: &str) -> Option<Value> {
        self.db.lock().unwrap().leases.get(key).cloned()
    }

    /// Who wrote each GatewayStatus, in order.
    fn status_writers(&self) -> Vec<String> {
        let db = self.db.lock().unwrap();
        db.writes.iter().filter(|w| w.path.contains("/gatewaystatuses/")).map(|w| w.who.clone()).collect()
    }

    fn statuses_written(&self) -> usize {
        self.db.lock().unwrap().writes.iter().filter(|w| w.path.contains("/gatewaystatuses/")).count()
    }

    fn status(&self, key: &str) -> Option<Value> {
        self.db.lock().unwrap().statuses.get(key).cloned()
    }

    /// The Events created regarding `kind` `name`.
    fn events_about(&self, kind: &str, name: &str) -> Vec<Value> {
        let db = self.db.lock().unwrap();
        db.events.iter().filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name).cloned().collect()
    }

    /// A POST or PATCH: GatewayStatus applies and Events; anything else is
    /// not found.
    fn write(&self, w: Write) -> (u16, Value) {
        let mut db = self.db.lock().unwrap();
        db.writes.push(w.clone());
        db.rv += 1;
        let rv = db.rv.to_string();
        let Ok(mut body) = serde_json::from_str::<Value>(&w.body) else {
            return status_reply(400, "BadRequest", "the body is not JSON");
        };
        if w.path == TOKEN_REVIEWS && w.method == "POST" {
            // As kube-apiserver: unknown tokens and tokens for none of the
            // audiences asked are not authenticated; otherwise the user, and
            // the audiences both sides name.
            db.reviews += 1;
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let asked: Vec<String> = body["spec"]["audiences"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            body["status"] = match db.tokens.get(token) {
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
                Some(t) => {
                    let both: Vec<&String> = t.audiences.iter().filter(|a| asked.contains(a)).collect();
                    if both.is_empty() && !asked.is_empty() {
                        json!({"authenticated": false,
                            "error": "invalid bearer token, token audiences is invalid for the target audiences"})
                    } else {
                        json!({"authenticated": true, "audiences": both,
                            "user": {"username": t.username, "uid": "sa-uid", "extra": t.extra,
                                "groups": ["system:serviceaccounts", "system:authenticated"]}})
                    }
                }
            };
            return (201, body);
        }
        if let Some((ns, name)) =
            w.path.strip_prefix(STATUSES).and_then(|r| r.split_once("/staticgatewayconfigurations/"))
        {
            if w.method != "PATCH" || w.content_type != "application/merge-patch+json" {
                return status_reply(415, "UnsupportedMediaType", "only merge patches are served here");
            }
            let key = format!("{ns}/{name}");
            let Some(mut o) = db.objects.get(SGCS).and_then(|m| m.get(&key)).cloned() else {
                return status_reply(404, "NotFound", "staticgatewayconfigurations not found");
            };
            let keys: Vec<&str> = body.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
            assert_eq!(keys, ["metadata"], "only metadata is patched: {body}");
            for (k, v) in body["metadata"]["annotations"].as_object().cloned().unwrap_or_default() {
                let annotations = &mut o["metadata"]["annotations"];
                if annotations.is_null() {
                    *annotations = json!({});
                }
                let annotations = annotations.as_object_mut().unwrap();
                if v.is_null() {
                    annotations.remove(&k);
                } else {
                    annotations.insert(k, v);
                }
            }
            o["metadata"]["resourceVersion"] = json!(rv);
            db.objects.get_mut(SGCS).unwrap().insert(key, o.clone());
            let line = json!({"type": "MODIFIED", "object": o}).to_string();
            let _ = self.push.send(Push::Event { path: SGCS.into(), line });
            return (200, o);
        }
        if let Some(rest) = w.path.strip_prefix(STATUSES) {
            let Some((ns, name)) = rest.split_once("/gatewaystatuses/") else {
                return status_reply(404, "NotFound", "the server could not find the requested resource");
            };
            if w.method != "PATCH" || w.content_type != "application/apply-patch+yaml" {
                return status_reply(415, "UnsupportedMediaType", "only server-side apply is served here");
            }
            if db.deny_statuses {
                let message = "gatewaystatuses is forbidden: User \"system:serviceaccount:egret:egret-control\" \
                               cannot patch resource \"gatewaystatuses\"";
                return status_reply(403, "Forbidden", message);
            }
            body["metadata"]["resourceVersion"] = json!(rv);
            let created = db.statuses.insert(format!("{ns}/{name}"), body.clone()).is_none();
            return (if created { 201 } else { 200 }, body);
        }
        if let Some(rest) = w.path.strip_prefix(EVENTS) {
            let parts: Vec<&str> = rest.split('/').collect();
            match (w.method.as_str(), &parts[..]) {
                ("POST", [_, "events"]) => {
                    body["metadata"]["resourceVersion"] = json!(rv);
                    db.events.push(body.clone());
                    return (201, body);
                }
                ("PATCH", [_, "events", name]) => {
                    if let Some(e) = db.events.iter().find(|e| e["metadata"]["name"] == *name) {
                        return (200, e.clone());
                    }
                }
                _ => {}
            }
        }
        status_reply(404, "NotFound", "the server could not find the requested resource")
    }

    async fn connection(self, sock: TcpStream, who: String) {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let mut content_length = 0;
            let mut content_type = String::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((name, value)) = h.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "content-length" => content_length = value.trim().parse().unwrap_or(0),
                        "content-type" => content_type = value.trim().to_string(),
                        _ => {}
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
            if method == "GET" && !watch {
                *self.db.lock().unwrap().attempts.entry(path.to_string()).or_default() += 1;
            }
            let fail = self.db.lock().unwrap().fail.get(path).copied();
            let reply = if let Some(rest) = path.strip_prefix(LEASES).filter(|r| r.contains("/leases")) {
                while self.db.lock().unwrap().leases_silent {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let body = String::from_utf8_lossy(&body).into_owned();
                if method != "GET" {
                    let w = Write {
                        who: who.clone(),
                        method: method.clone(),
                        path: path.into(),
                        query: query.into(),
                        content_type,
                        body: body.clone(),
                    };
                    self.db.lock().unwrap().writes.push(w);
                }
                Some(self.lease_call(&method, rest, &body))
            } else if method == "POST" || method == "PATCH" {
                let body = String::from_utf8_lossy(&body).into_owned();
                Some(self.write(Write {
                    who: who.clone(),
                    method,
                    path: path.into(),
                    query: query.into(),
                    content_type,
                    body,
                }))
            } else if let Some(code) = fail {
                Some(match code {
                    403 => status_reply(code, "Forbidden", "egresspolicies is forbidden"),
                    404 => status_reply(code, "NotFound", "the server could not find the requested resource"),
                    _ => status_reply(code, "InternalError", "etcdserver: request timed out"),
                })
            } else if let Some((ns, name)) =
                path.strip_prefix(PODS_IN).and_then(|r| r.split_once("/pods/")).filter(|_| method == "GET")
            {
                let db = self.db.lock().unwrap();
                Some(match db.objects.get(PODS).and_then(|m| m.get(&format!("{ns}/{name}"))) {
                    Some(p) => (200, p.clone()),
                    None => status_reply(404, "NotFound", &format!("pods \"{name}\" not found")),
                })
            } else if path == DENIED {
                Some(status_reply(
                    403,
                    "Forbidden",
                    "secrets is forbidden: User \"system:serviceaccount:egret:egret-control\" cannot list resource \"secrets\"",
                ))
            } else if ![SGCS, PODS, NODES, POD_ENDPOINTS, SECRETS, VM_CONFIGS, POLICIES, NETWORK_POLICIES]
                .contains(&path)
            {
                Some(status_reply(404, "NotFound", "the server could not find the requested resource"))
            } else {
                None
            };
            if let Some((code, body)) = reply {
                let body = body.to_string();
                let reason = match code {
                    200 => "OK",
                    201 => "Created",
                    400 => "Bad Request",
                    403 => "Forbidden",
                    404 => "Not Found",
                    409 => "Conflict",
                    415 => "Unsupported Media Type",
                    _ => "Internal Server Error",
                };
                let head = format!(
                    "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if w.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            if watch {
                let mut rx = self.push.subscribe();
                let rv = params.get("resourceVersion").unwrap_or(&"").to_string();
                self.db.lock().unwrap().watches.push((path.to_string(), rv));
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    match rx.recv().await {
                        Ok(Push::Event { path: p, line }) if p == path => {
                            let data = format!("{line}\n");
                            let chunk = format!("{:x}\r\n{data}\r\n", data.len());
                            if w.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        // A dropped connection, as when an API server restarts.
                        Ok(Push::Close { path: p }) if p == path => return,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
            // A slow API server: the list is answered once let go.
            while self.db.lock().unwrap().held.contains(path) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let body = {
                let mut db = self.db.lock().unwrap();
                *db.lists.entry(path.to_string()).or_default() += 1;
                let items: Vec<Value> = db.objects.get(path).map(|m| m.values().cloned().collect()).unwrap_or_default();
                json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": db.rv.to_string()}, "items": items})
                    .to_string()
            };
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
            if w.write_all(format!("{head}{body}").as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

fn sgc(name: &str, prefix: &str) -> Value {
    json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}")},
        "spec": {"gatewayNodepoolName": "gwpool", "provisionPublicIps": true, "defaultRoute": "staticEgressGateway"},
        "status": {"egressIpPrefix": prefix, "gatewayServerProfile": {"ip": "10.0.0.4", "port": 6000}}})
}

fn pod(name: &str, ip: &str, config: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"),
            "annotations": {"kubernetes.azure.com/static-gateway-configuration": config}},
        "spec": {"containers": [{"name": "c", "image": "alpine"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.224.2.10"}})
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.azure.com/agentpool": "gwpool", "kubeegressgateway.azure.com/mode": "true"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "10.224.0.10"}]}})
}

/// Serves `fake` on a loopback port, and a client of it.
async fn serve(fake: &Fake) -> kube::Client {
    serve_as(fake, "egret-control").await
}

/// The same, on a listener of its own whose writes are `who`'s.
async fn serve_as(fake: &Fake, who: &str) -> kube::Client {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(fake.clone().serve(listener, who.to_string()));
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

/// Serves `fake` on a loopback port and a Kubernetes source watching it.
async fn watched(fake: &Fake) -> Arc<ControlState> {
    let state = ControlState::new();
    tokio::spawn(watch_kubernetes(state.clone(), serve(fake).await));
    state
}

/// The same, with egret-control writing GatewayStatus and Events back
/// (failed writes retried after 100 ms).
async fn watched_writing_status(fake: &Fake) -> Arc<ControlState> {
    let state = ControlState::new();
    let client = serve(fake).await;
    tokio::spawn(watch_kubernetes(state.clone(), client.clone()));
    let opts = StatusOptions { retry: Duration::from_millis(100), ..Default::default() };
    tokio::spawn(write_status(state.clone(), client, opts));
    state
}

/// The config gw-0's plan binds `ip` to ("" when unbound), once it holds.
async fn wait_binding(state: &ControlState, node: &str, ip: &str, want: &str, within: Duration) {
    let mut rx = state.watch();
    let ok = tokio::time::timeout(within, async {
        loop {
            let now = {
                let snap = rx.borrow_and_update();
                snap.plans.get(node).map(|p| {
                    p.plan
                        .bindings
                        .iter()
                        .find(|b| b.pod_ip.to_string() == ip)
                        .map(|b| b.config.clone())
                        .unwrap_or_default()
                })
            };
            if now.as_deref() == Some(want) {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    assert!(ok.is_ok(), "{node}: {ip} never bound to '{want}'");
}

async fn wait_until(what: &str, within: Duration, f: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_bookmarks_resume_and_relist_on_410() {
    let fake = Fake::new();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, sgc("blue", "198.19.100.0/30"), false);
    fake.put(SGCS, sgc("green", "198.19.101.0/30"), false);
    fake.put(PODS, pod("web", "198.18.0.2", "blue"), false);
    fake.fail(POLICIES, Some(404));
    let state = watched(&fake).await;
    let long = Duration::from_secs(10);

    // Listed: gw-0 gets both configs and the pod, with the EgressPolicy CRD
    // not installed (404) in the way of nothing.
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    assert_eq!(state.snapshot().plans["gw-0"].plan.configs.len(), 2);
    wait_until("pod watch", long, || !fake.watches(PODS).is_empty()).await;
    wait_until("node watch", long, || !fake.watches(NODES).is_empty()).await;

    // A watch event: the pod is rebound; the plan follows within 2 s.
    fake.put(PODS, pod("web", "198.18.0.2", "green"), true);
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/green", Duration::from_secs(2)).await;

    // A bookmark, then the watch connection drops: the watcher resumes from
    // the bookmark's resourceVersion, without listing again.
    let lists = fake.lists(PODS);
    let rv = fake.bookmark(PODS, "Pod");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = fake.push.send(Push::Close { path: PODS.into() });
    wait_until("a resumed pod watch", long, || fake.watches(PODS).len() >= 2).await;
    assert_eq!(fake.watches(PODS).last().unwrap(), &rv, "resumed from the bookmark");
    assert_eq!(fake.lists(PODS), lists, "no re-list after a plain disconnect");
    fake.put(PODS, pod("batch", "198.18.0.3", "blue"), true);
    wait_binding(&state, "gw-0", "198.18.0.3", "apps/blue", long).await;

    // 410 Gone: the watcher lists again, and so sees a change it was never
    // told about (the pod deleted while events were lost).
    fake.delete(PODS, &pod("web", "", ""), false);
    fake.gone(PODS);
    wait_until("a re-list after 410", long, || fake.lists(PODS) > lists).await;
    wait_binding(&state, "gw-0", "198.18.0.2", "", long).await;
    wait_binding(&state, "gw-0", "198.18.0.3", "apps/blue", long).await;

    // A gateway node joins: it gets a plan, with a share of the addresses.
    fake.put(NODES, node("gw-1"), true);
    wait_until("gw-1's plan", long, || state.snapshot().plans.contains_key("gw-1")).await;
    let snap = state.snapshot();
    let held: usize = ["gw-0", "gw-1"]
        .iter()
        .map(|n| snap.plans[*n].plan.configs.iter().map(|c| c.egress.len()).sum::<usize>())
        .sum();
    assert_eq!(held, 8, "both prefixes, split across both nodes");
}

/// A config as kube-egress-gateway's controller-manager leaves it once
/// ready: its server profile names the key's Secret.
fn tunnelled_sgc(name: &str, prefix: &str, public_key: &str) -> Value {
    json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}")},
        "spec": {"gatewayNodepoolName": "gwpool", "provisionPublicIps": true, "defaultRoute": "staticEgressGateway"},
        "status": {"egressIpPrefix": prefix, "gatewayServerProfile": {"ip": "198.18.50.100", "port": 6000,
            "publicKey": public_key,
            "privateKeySecretRef": {"apiVersion": "v1", "kind": "Secret", "name": format!("sgw-uid-{name}"),
                "namespace": "kube-egress-gateway-system"}}}})
}

fn key_secret(config: &str, private_key: &str) -> Value {
    use base64::Engine;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": format!("sgw-uid-{config}"), "namespace": "kube-egress-gateway-system"},
        "data": {"PrivateKey": b64(private_key)}})
}

/// What kube-egress-cni writes for a tunnelled pod.
fn pod_endpoint(name: &str, ip: &str, config: &str, key: &str) -> Value {
    json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "PodEndpoint",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"staticGatewayConfiguration": config, "podIpAddress": format!("{ip}/32"), "podPublicKey": key}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_come_from_the_config_secret_and_pod_endpoints() {
    let private = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let secret: egret_plan::WgSecret = serde_json::from_value(json!(private)).unwrap();
    let public = secret.public_key().to_string();
    let pod_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let fake = Fake::new();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, tunnelled_sgc("blue", "198.19.100.0/30", &public), false);
    // A Secret without a PrivateKey is nothing Egret keeps.
    fake.put(
        SECRETS,
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "unrelated", "namespace": "kube-egress-gateway-system"}, "data": {"token": "eA=="}}),
        false,
    );
    fake.put(SECRETS, key_secret("blue", &format!("{private}\n")), false);
    fake.put(POD_ENDPOINTS, pod_endpoint("web", "198.18.0.2", "blue", pod_key), false);
    // The anchor's controller placed the config on gw-0 with a secondary IP.
    fake.put(
        VM_CONFIGS,
        json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayVMConfiguration",
        "metadata": {"name": "blue", "namespace": "apps"},
        "spec": {"gatewayNodepoolName": "gwpool", "provisionPublicIps": true},
        "status": {"egressIpPrefix": "198.19.100.0/30",
            "gatewayVMProfiles": [{"nodeName": "gw-0", "primaryIP": "198.18.50.10", "secondaryIP": "198.18.50.11"}]}}),
        false,
    );
    let state = watched(&fake).await;
    let long = Duration::from_secs(10);

    // Listed, with the add-on namespace's Secrets denied (403): that is
    // reported and holds nothing back.
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    let plan = state.snapshot().plans["gw-0"].plan.clone();
    let blue = &plan.configs[0];
    assert_eq!(blue.uid.as_deref(), Some("uid-blue"), "the probe asks by the config's UID");
    let tunnel = blue.tunnel.as_ref().expect("a tunnel from the server profile and its Secret");
    assert_eq!((tunnel.address.to_string(), tunnel.port), ("198.18.50.100".to_string(), 6000));
    assert_eq!(tunnel.private_key.public_key().to_string(), public);
    assert_eq!(
        blue.egress.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        ["198.18.50.11/32"],
        "gw-0 egresses from its secondary IP (GatewayVMConfiguration), which Azure maps to a public IP"
    );
    let web = plan.bindings.iter().find(|b| b.pod_ip.to_string() == "198.18.0.2").unwrap();
    assert_eq!(web.public_key.as_ref().map(|k| k.to_string()).as_deref(), Some(pod_key));

    // A new tunnelled pod: its PodEndpoint lets it through within 2 s;
    // deleting it cuts the pod off.
    wait_until("PodEndpoint watch", long, || !fake.watches(POD_ENDPOINTS).is_empty()).await;
    let batch = pod_endpoint("batch", "198.18.0.3", "blue", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
    fake.put(POD_ENDPOINTS, batch.clone(), true);
    wait_binding(&state, "gw-0", "198.18.0.3", "apps/blue", Duration::from_secs(2)).await;
    fake.delete(POD_ENDPOINTS, &batch, true);
    wait_binding(&state, "gw-0", "198.18.0.3", "", Duration::from_secs(2)).await;

    // The key's Secret goes away: the config is left out with a problem,
    // and its pods with it (nothing tunnelled is served without its key).
    wait_until("Secret watch", long, || !fake.watches(SECRETS).is_empty()).await;
    fake.delete(SECRETS, &key_secret("blue", ""), true);
    wait_binding(&state, "gw-0", "198.18.0.2", "", Duration::from_secs(2)).await;
    assert!(state.snapshot().plans["gw-0"].plan.configs.is_empty());
}

/// The readyPeerConfigurations of `node`'s GatewayStatus, if written.
fn peers(fake: &Fake, node: &str) -> Option<Value> {
    fake.status(&format!("{STATUS_NS}/{node}")).map(|s| s["spec"]["readyPeerConfigurations"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_status_is_written_from_the_plan_a_gateway_applied() {
    let private = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let secret: egret_plan::WgSecret = serde_json::from_value(json!(private)).unwrap();
    let (web_key, batch_key) =
        ("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
    let fake = Fake::new();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, tunnelled_sgc("blue", "198.19.100.0/30", &secret.public_key().to_string()), false);
    fake.put(SECRETS, key_secret("blue", private), false);
    fake.put(POD_ENDPOINTS, pod_endpoint("web", "198.18.0.2", "blue", web_key), false);
    let batch = pod_endpoint("batch", "198.18.0.3", "blue", batch_key);
    fake.put(POD_ENDPOINTS, batch.clone(), false);
    let state = watched_writing_status(&fake).await;
    let long = Duration::from_secs(10);
    wait_binding(&state, "gw-0", "198.18.0.3", "apps/blue", long).await;
    assert!(fake.status(&format!("{STATUS_NS}/gw-0")).is_none(), "nothing is written before the gateway acks");

    // The gateway acks its plan: its GatewayStatus is the anchor daemon's,
    // owned by the Node, with the tunnelled config and both peers.
    state.applied("gw-0", state.snapshot().plans["gw-0"].version, String::new());
    wait_until("gw-0's GatewayStatus", long, || peers(&fake, "gw-0").is_some()).await;
    let status = fake.status(&format!("{STATUS_NS}/gw-0")).unwrap();
    assert_eq!(
        status["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Node", "name": "gw-0", "uid": "uid-gw-0"}])
    );
    assert_eq!(
        status["spec"],
        json!({
            "readyGatewayConfigurations": [{"staticGatewayConfiguration": "apps/blue", "interfaceName": "wg-6000"}],
            "readyPeerConfigurations": [
                {"podEndpoint": "apps/batch", "interfaceName": "wg-6000", "publicKey": batch_key},
                {"podEndpoint": "apps/web", "interfaceName": "wg-6000", "publicKey": web_key},
            ],
        })
    );
    let write = fake.db.lock().unwrap().writes.iter().find(|w| w.path.contains("/gatewaystatuses/")).cloned().unwrap();
    assert_eq!((write.method.as_str(), write.content_type.as_str()), ("PATCH", "application/apply-patch+yaml"));
    assert!(
        write.query.contains("fieldManager=egret-control") && write.query.contains("force=true"),
        "{}",
        write.query
    );

    // A PodEndpoint deleted: once the gateway applied the plan without it,
    // its peer is gone from the GatewayStatus.
    wait_until("PodEndpoint watch", long, || !fake.watches(POD_ENDPOINTS).is_empty()).await;
    fake.delete(POD_ENDPOINTS, &batch, true);
    wait_binding(&state, "gw-0", "198.18.0.3", "", long).await;
    state.applied("gw-0", state.snapshot().plans["gw-0"].version, String::new());
    let web_only = json!([{"podEndpoint": "apps/web", "interfaceName": "wg-6000", "publicKey": web_key}]);
    wait_until("batch's peer removed", long, || peers(&fake, "gw-0").as_ref() == Some(&web_only)).await;
    let db = fake.db.lock().unwrap();
    assert!(db.writes.iter().all(|w| !w.body.contains(private)), "no private key is ever written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_problem_is_one_warning_event_on_its_object() {
    let fake = Fake::new();
    fake.put(NODES, node("gw-0"), false);
    // A tunnelled config whose key Secret is not there: left out, reported.
    let public = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";
    fake.put(SGCS, tunnelled_sgc("blue", "198.19.100.0/30", public), false);
    let state = watched_writing_status(&fake).await;
    let long = Duration::from_secs(10);
    wait_until("blue's Event", long, || !fake.events_about("StaticGatewayConfiguration", "blue").is_empty()).await;

    // More reconciles, each with a problem of its own: once each has its
    // Event the writer has gone over blue's problem again, and left it be.
    wait_until("pod watch", long, || !fake.watches(PODS).is_empty()).await;
    for i in 0..3 {
        let name = format!("stray-{i}");
        fake.put(PODS, pod(&name, &format!("198.18.0.{}", 10 + i), "nope"), true);
        wait_until(&format!("{name}'s Event"), long, || !fake.events_about("Pod", &name).is_empty()).await;
    }
    assert!(state.snapshot().generation >= 4, "a reconcile per pod");
    let events = fake.events_about("StaticGatewayConfiguration", "blue");
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("Warning"), Some("EgretConfigProblem")));
    assert_eq!(e["reportingController"], "egret-control");
    assert_eq!(e["metadata"]["namespace"], "apps");
    assert_eq!(
        e["regarding"],
        json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "StaticGatewayConfiguration",
            "namespace": "apps", "name": "blue", "uid": "uid-blue"})
    );
    let note = e["note"].as_str().unwrap();
    assert!(note.contains("sgw-uid-blue (the private key) is not there"), "{note}");
    for i in 0..3 {
        assert_eq!(fake.events_about("Pod", &format!("stray-{i}")).len(), 1);
    }
    assert!(fake.db.lock().unwrap().writes.iter().all(|w| w.method == "POST"), "no Event was sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_gateway_status_write_stops_nothing_and_is_retried() {
    let fake = Fake::new();
    fake.db.lock().unwrap().deny_statuses = true;
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, sgc("blue", "198.19.100.0/30"), false);
    fake.put(PODS, pod("web", "198.18.0.2", "blue"), false);
    let state = watched_writing_status(&fake).await;
    let long = Duration::from_secs(10);
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    state.applied("gw-0", state.snapshot().plans["gw-0"].version, String::new());
    wait_until("a refused GatewayStatus write", long, || fake.statuses_written() > 0).await;

    // Plans keep following the cluster, and acks keep being taken.
    wait_until("pod watch", long, || !fake.watches(PODS).is_empty()).await;
    fake.put(PODS, pod("batch", "198.18.0.3", "blue"), true);
    wait_binding(&state, "gw-0", "198.18.0.3", "apps/blue", Duration::from_secs(2)).await;
    let version = state.snapshot().plans["gw-0"].version;
    state.applied("gw-0", version, String::new());
    assert_eq!(state.link("gw-0").applied.map(|p| p.version), Some(version));

    // Once RBAC allows it, the next try writes it.
    fake.db.lock().unwrap().deny_statuses = false;
    wait_until("the GatewayStatus, retried", long, || fake.status(&format!("{STATUS_NS}/gw-0")).is_some()).await;
    assert!(fake.statuses_written() >= 2);
}

/// One egret-control replica against the fake: its source, its election
/// (Lease `egret-system/egret-control`, 2 s, renewed every 200 ms) and its
/// status writer, on a listener of its own (writes are `name`'s).
struct Replica {
    name: &'static str,
    state: Arc<ControlState>,
    leader: Leadership,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const LEASE: &str = "egret-system/egret-control";

fn lease_options(identity: &str) -> LeaderOptions {
    LeaderOptions {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1200),
        retry_period: Duration::from_millis(200),
        ..LeaderOptions::new("egret-system", identity)
    }
}

impl Replica {
    async fn start(fake: &Fake, name: &'static str) -> Replica {
        let client = serve_as(fake, name).await;
        let state = ControlState::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (leader, election) = elect(client.clone(), lease_options(name), async move {
            let _ = stopped.await;
        });
        let opts = StatusOptions {
            retry: Duration::from_millis(100),
            leader: leader.clone(),
            pressure_every: Duration::from_millis(50),
            ..Default::default()
        };
        let tasks = vec![
            tokio::spawn(watch_kubernetes(state.clone(), client.clone())),
            tokio::spawn(election),
            tokio::spawn(write_status(state.clone(), client, opts)),
        ];
        Replica { name, state, leader, stop: Some(stop), tasks }
    }

    /// As `kill -9`: everything stops where it is; the Lease is not released.
    fn kill(mut self) {
        self.stop.take();
        for t in &self.tasks {
            t.abort();
        }
    }

    /// As SIGTERM: the election ends and releases the Lease.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let election = self.tasks.remove(1);
        tokio::time::timeout(Duration::from_secs(2), election).await.expect("the election ends").unwrap();
        self.kill();
    }

    /// gw-0's gateway acks this replica's current plan (as if subscribed here).
    fn ack(&self) {
        self.state.applied("gw-0", self.state.snapshot().plans["gw-0"].version, String::new());
    }
}

fn holder(fake: &Fake) -> Option<String> {
    fake.lease(LEASE).and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// Both replicas listed gw-0 with `ip` bound, and gw-0's gateway acked it on both.
async fn both_acked(a: &Replica, b: &Replica, ip: &str) {
    for r in [a, b] {
        wait_binding(&r.state, "gw-0", ip, "apps/blue", Duration::from_secs(10)).await;
        r.ack();
    }
}

/// gw-0 with tunnelled config blue and web's PodEndpoint: its
/// GatewayStatus lists a peer per PodEndpoint, so each one added changes it.
fn tunnelled_gateway(fake: &Fake) {
    let private = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let secret: egret_plan::WgSecret = serde_json::from_value(json!(private)).unwrap();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, tunnelled_sgc("blue", "198.19.100.0/30", &secret.public_key().to_string()), false);
    fake.put(SECRETS, key_secret("blue", private), false);
    fake.put(POD_ENDPOINTS, pod_endpoint("web", "198.18.0.2", "blue", &peer_key(1)), false);
}

fn peer_key(n: u8) -> String {
    egret_plan::WgKey([n; 32]).to_string()
}

/// Adds PodEndpoint `name` (a watch event), once `watchers` PodEndpoint
/// watches are up (the fake replays no events to later ones).
async fn add_pod_endpoint(fake: &Fake, watchers: usize, name: &str, ip: &str, key: u8) {
    let up = || fake.watches(POD_ENDPOINTS).len() >= watchers;
    wait_until("PodEndpoint watches", Duration::from_secs(10), up).await;
    fake.put(POD_ENDPOINTS, pod_endpoint(name, ip, "blue", &peer_key(key)), true);
}

/// How many GatewayStatus writes came from `who`.
fn status_writes_by(fake: &Fake, who: &str) -> usize {
    fake.status_writers().iter().filter(|w| *w == who).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_only_the_lease_holder_writes_and_the_other_takes_over_when_it_dies() {
    let fake = Fake::new();
    tunnelled_gateway(&fake);
    let a = Replica::start(&fake, "control-a").await;
    let b = Replica::start(&fake, "control-b").await;
    let long = Duration::from_secs(10);
    both_acked(&a, &b, "198.18.0.2").await;
    wait_until("a GatewayStatus", long, || fake.status(&format!("{STATUS_NS}/gw-0")).is_some()).await;
    wait_until("a Lease holder", long, || holder(&fake).is_some()).await;
    let (leader, follower) = if holder(&fake).as_deref() == Some("control-a") { (a, b) } else { (b, a) };
    assert!(leader.leader.is_leader() && !follower.leader.is_leader(), "exactly one leads");

    // A PodEndpoint added and acked on both: written again, by the leader alone.
    add_pod_endpoint(&fake, 2, "batch", "198.18.0.3", 2).await;
    both_acked(&leader, &follower, "198.18.0.3").await;
    wait_until("the second GatewayStatus write", long, || fake.statuses_written() >= 2).await;
    assert_eq!(status_writes_by(&fake, follower.name), 0, "the follower wrote: {:?}", fake.status_writers());
    assert!(status_writes_by(&fake, leader.name) >= 2);

    // The leader dies without a word: the follower takes the Lease once it
    // has not been renewed for its duration (2 s, seen within one 200 ms
    // retry), and writes.
    let dead = leader.name;
    let before = fake.statuses_written();
    let killed = std::time::Instant::now();
    leader.kill();
    wait_until("the follower leading", Duration::from_secs(5), || follower.leader.is_leader()).await;
    let takeover = killed.elapsed();
    eprintln!("lease takeover after the leader was killed: {} ms", takeover.as_millis());
    assert!(takeover <= Duration::from_millis(2000 + 2 * 200 + 100), "took {takeover:?}");
    let lease = fake.lease(LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], follower.name);
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);

    // The new leader writes what its gateway applied: everything afresh,
    // then each change.
    wait_until("the new leader's GatewayStatus write", long, || fake.statuses_written() > before).await;
    add_pod_endpoint(&fake, 2, "cron", "198.18.0.4", 3).await;
    wait_binding(&follower.state, "gw-0", "198.18.0.4", "apps/blue", long).await;
    follower.ack();
    let three =
        |s: Option<Value>| s.is_some_and(|s| s["spec"]["readyPeerConfigurations"].as_array().unwrap().len() == 3);
    wait_until("cron's peer in the GatewayStatus", long, || three(fake.status(&format!("{STATUS_NS}/gw-0")))).await;
    let writers = fake.status_writers();
    assert!(writers[before..].iter().all(|w| w == follower.name), "{writers:?}");
    assert!(writers.iter().filter(|w| *w == dead).count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_releases_the_lease_and_the_other_takes_it_at_its_next_try() {
    let fake = Fake::new();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, sgc("blue", "198.19.100.0/30"), false);
    let a = Replica::start(&fake, "control-a").await;
    wait_until("control-a leading", Duration::from_secs(5), || a.leader.is_leader()).await;
    let b = Replica::start(&fake, "control-b").await;
    // b has seen a's Lease: it follows.
    wait_until("control-b's first look", Duration::from_secs(5), || {
        fake.db.lock().unwrap().writes.iter().any(|w| w.who == "control-a" && w.method == "PUT")
    })
    .await;
    assert!(!b.leader.is_leader());

    let stopped = std::time::Instant::now();
    a.stop().await;
    assert_eq!(holder(&fake), None, "released: no holder");
    wait_until("control-b leading", Duration::from_secs(5), || b.leader.is_leader()).await;
    let takeover = stopped.elapsed();
    eprintln!("lease takeover after the leader stopped: {} ms", takeover.as_millis());
    assert!(takeover < Duration::from_secs(1), "well within the 2 s lease: {takeover:?}");
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_stops_writing_at_once() {
    let fake = Fake::new();
    tunnelled_gateway(&fake);
    let a = Replica::start(&fake, "control-a").await;
    let long = Duration::from_secs(10);
    wait_until("control-a leading", long, || a.leader.is_leader()).await;
    wait_binding(&a.state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    a.ack();
    wait_until("a GatewayStatus", long, || fake.statuses_written() == 1).await;

    // Another replica holds the Lease now and keeps renewing it (as after
    // a partition): a's next renewal finds it and steps down.
    let intruder = {
        let fake = fake.clone();
        tokio::spawn(async move {
            loop {
                let mut lease = fake.lease(LEASE).unwrap();
                lease["spec"]["holderIdentity"] = json!("control-z");
                lease["spec"]["renewTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
                fake.lease_call("PUT", "egret-system/leases/egret-control", &lease.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_until("control-a stepping down", Duration::from_secs(1), || !a.leader.is_leader()).await;

    // A new plan acked: nothing is written.
    add_pod_endpoint(&fake, 1, "batch", "198.18.0.3", 2).await;
    wait_binding(&a.state, "gw-0", "198.18.0.3", "apps/blue", long).await;
    a.ack();
    // Time for a write to go out had a still led (its retry is 100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.statuses_written(), 1, "{:?}", fake.status_writers());
    assert!(!a.leader.is_leader());
    intruder.abort();
    a.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_lease_stops_writing_by_its_renew_deadline() {
    let fake = Fake::new();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, sgc("blue", "198.19.100.0/30"), false);
    let a = Replica::start(&fake, "control-a").await;
    let long = Duration::from_secs(10);
    wait_until("control-a leading", long, || a.leader.is_leader()).await;

    // Lease calls hang (the API server unreachable for them): leadership
    // ends by itself within the 1.2 s renew deadline of the last renewal,
    // before the 2 s lease could pass to another replica.
    fake.db.lock().unwrap().leases_silent = true;
    let cut = std::time::Instant::now();
    wait_until("control-a no longer leading", Duration::from_secs(2), || !a.leader.is_leader()).await;
    assert!(cut.elapsed() <= Duration::from_millis(1200 + 50), "{:?}", cut.elapsed());
    fake.db.lock().unwrap().leases_silent = false;
    wait_until("control-a leading again", long, || a.leader.is_leader()).await;
    a.kill();
}

/// The same, retrying failed lists after 10 to 40 ms.
async fn watched_fast(fake: &Fake) -> Arc<ControlState> {
    let state = ControlState::new();
    let opts =
        Options { retry_min: Duration::from_millis(10), retry_max: Duration::from_millis(40), ..Default::default() };
    tokio::spawn(watch_kubernetes_with(state.clone(), serve(fake).await, opts));
    state
}

fn policy(config: &str) -> Value {
    json!({"apiVersion": "egret.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": config, "namespace": "apps", "uid": format!("uid-policy-{config}")},
        "spec": {"gatewayConfiguration": config, "defaultAction": "deny"}})
}

const POD_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// One object of every kind a tunnelled, policed config needs: gw-0, apps/blue
/// with its key's Secret, a PodEndpoint for 198.18.0.2, gw-0's secondary IP
/// and an EgressPolicy denying everything.
fn tunnelled_cluster(fake: &Fake) {
    let private = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let secret: egret_plan::WgSecret = serde_json::from_value(json!(private)).unwrap();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, tunnelled_sgc("blue", "198.19.100.0/30", &secret.public_key().to_string()), false);
    fake.put(SECRETS, key_secret("blue", private), false);
    fake.put(POD_ENDPOINTS, pod_endpoint("web", "198.18.0.2", "blue", POD_KEY), false);
    fake.put(
        VM_CONFIGS,
        json!({"apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1", "kind": "GatewayVMConfiguration",
        "metadata": {"name": "blue", "namespace": "apps"},
        "spec": {"gatewayNodepoolName": "gwpool", "provisionPublicIps": true},
        "status": {"gatewayVMProfiles": [{"nodeName": "gw-0", "primaryIP": "198.18.50.10", "secondaryIP": "198.18.50.11"}]}}),
        false,
    );
    fake.put(POLICIES, policy("blue"), false);
}

/// gw-0's plan holds everything `tunnelled_cluster` put there.
fn assert_whole(state: &ControlState, what: &str) {
    let snap = state.snapshot();
    let plan = &snap.plans["gw-0"].plan;
    let blue = plan.configs.iter().find(|c| c.name == "apps/blue").unwrap_or_else(|| panic!("{what}: no apps/blue"));
    assert!(blue.policy.is_some(), "{what}: apps/blue served without its EgressPolicy");
    assert!(blue.tunnel.is_some(), "{what}: apps/blue served without its key");
    assert_eq!(blue.egress.iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["198.18.50.11/32"], "{what}");
    let web = plan.bindings.iter().find(|b| b.pod_ip.to_string() == "198.18.0.2");
    assert_eq!(web.and_then(|b| b.public_key).map(|k| k.to_string()).as_deref(), Some(POD_KEY), "{what}");
}

/// The problem the Kubernetes source reports about `object`, if any.
fn problem(state: &ControlState, object: &str) -> Option<Problem> {
    state.problems().into_iter().find(|p| p.object == object)
}

const POLICY_LIST: &str = "EgressPolicy list (egret.dev/v1alpha1, all namespaces)";
const POD_ENDPOINT_LIST: &str = "PodEndpoint list (egressgateway.kubernetes.azure.com/v1alpha1, all namespaces)";
const VM_CONFIG_LIST: &str =
    "GatewayVMConfiguration list (egressgateway.kubernetes.azure.com/v1alpha1, all namespaces)";
const SECRET_LIST: &str = "Secret list (namespace kube-egress-gateway-system)";
const DENIED_LIST: &str = "Secret list (namespace aks-static-egress-gateway)";
const NETWORK_POLICY_LIST: &str = "NetworkPolicy list (networking.k8s.io/v1, all namespaces)";
const LISTED: [&str; 8] = [SGCS, PODS, NODES, POLICIES, POD_ENDPOINTS, VM_CONFIGS, SECRETS, NETWORK_POLICIES];

/// Waits until every kind but `path` listed and the source went on to watch
/// it (so it has taken the list in), and `path` was tried twice more.
async fn wait_all_but(fake: &Fake, path: &str) {
    let long = Duration::from_secs(5);
    for p in LISTED.iter().filter(|p| **p != path) {
        wait_until(&format!("{p} watched"), long, || !fake.watches(p).is_empty()).await;
    }
    let tries = fake.attempts(path);
    wait_until(&format!("two more tries of {path}"), long, || fake.attempts(path) >= tries + 2).await;
}

/// `path` answering `code` holds back the first plan, and is reported,
/// until it lists; the first plan published then has everything.
async fn holds_back_the_first_plan(path: &str, object: &str, code: u16) {
    let what = format!("{object} answering {code}");
    let fake = Fake::new();
    tunnelled_cluster(&fake);
    fake.fail(path, Some(code));
    let state = watched_fast(&fake).await;
    wait_all_but(&fake, path).await;
    let snap = state.snapshot();
    assert!(snap.plans.is_empty() && snap.generation == 0, "{what}: a plan went out without it");
    let p = problem(&state, object).unwrap_or_else(|| panic!("{what}: not reported: {:?}", state.problems()));
    assert!(p.message.starts_with("not listed yet") && p.message.contains(&code.to_string()), "{p}");

    fake.fail(path, None);
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", Duration::from_secs(5)).await;
    assert_eq!(state.snapshot().plans["gw-0"].version, 1, "{what}: one plan, made once everything listed");
    assert_whole(&state, &what);
    assert_eq!(problem(&state, object), None, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_policy_list_holds_back_the_first_plan() {
    holds_back_the_first_plan(POLICIES, POLICY_LIST, 500).await;
}

/// A policy that exists but cannot be read is not "no policy".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_policy_list_holds_back_the_first_plan() {
    holds_back_the_first_plan(POLICIES, POLICY_LIST, 403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pod_endpoint_list_holds_back_the_first_plan() {
    holds_back_the_first_plan(POD_ENDPOINTS, POD_ENDPOINT_LIST, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_secret_list_holds_back_the_first_plan() {
    holds_back_the_first_plan(SECRETS, SECRET_LIST, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_vm_config_list_holds_back_the_first_plan() {
    holds_back_the_first_plan(VM_CONFIGS, VM_CONFIG_LIST, 500).await;
}

/// NetworkPolicy is a built-in API: a failing list (a 403 too, RBAC not
/// granted) is never "there are none", which would allow what they deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_network_policy_list_holds_back_the_first_plan() {
    holds_back_the_first_plan(NETWORK_POLICIES, NETWORK_POLICY_LIST, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_network_policy_list_holds_back_the_first_plan() {
    holds_back_the_first_plan(NETWORK_POLICIES, NETWORK_POLICY_LIST, 403).await;
}

fn network_policy(name: &str, egress: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-np-{name}")},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"], "egress": egress}})
}

/// gw-0's NetworkPolicies as (name, pods, egress JSON).
fn network_policies(state: &ControlState) -> Vec<(String, Vec<String>, Value)> {
    let snap = state.snapshot();
    let Some(np) = snap.plans.get("gw-0") else { return vec![] };
    np.plan
        .network_policies
        .iter()
        .map(|p| {
            (p.name.clone(), p.pods.iter().map(|ip| ip.to_string()).collect(), serde_json::to_value(&p.egress).unwrap())
        })
        .collect()
}

/// NetworkPolicies are listed with everything else, select the tunnelled
/// pod by its Pod's labels, and follow the watch: an edit and a delete each
/// make a new plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_are_listed_watched_and_reach_the_plan() {
    let fake = Fake::new();
    tunnelled_cluster(&fake);
    let mut web = pod("web", "198.18.0.2", "blue");
    web["metadata"]["labels"] = json!({"app": "web"});
    fake.put(PODS, web, false);
    let https =
        json!([{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]);
    fake.put(NETWORK_POLICIES, network_policy("lock", https), false);
    let state = watched_fast(&fake).await;
    let long = Duration::from_secs(5);
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    assert_eq!(state.snapshot().plans["gw-0"].version, 1);
    assert_whole(&state, "with a NetworkPolicy");
    let want = json!([{"to": [{"cidr": "198.51.100.0/24"}], "ports": [{"protocol": "TCP", "lo": 443, "hi": 443}]}]);
    assert_eq!(network_policies(&state), [("apps/lock".to_string(), vec!["198.18.0.2".to_string()], want)]);
    wait_until("NetworkPolicies watched", long, || !fake.watches(NETWORK_POLICIES).is_empty()).await;

    // Edited: default deny.
    fake.put(NETWORK_POLICIES, network_policy("lock", json!([])), true);
    wait_until("the edit in the plan", long, || {
        network_policies(&state) == [("apps/lock".to_string(), vec!["198.18.0.2".to_string()], json!([]))]
    })
    .await;
    assert!(state.snapshot().plans["gw-0"].version > 1, "a new plan version");
    // Deleted: gone from the plan.
    fake.delete(NETWORK_POLICIES, &network_policy("lock", json!([])), true);
    wait_until("the delete in the plan", long, || network_policies(&state).is_empty()).await;
    assert_whole(&state, "after the delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_policy_list_holds_back_the_first_plan() {
    let fake = Fake::new();
    tunnelled_cluster(&fake);
    fake.hold(POLICIES, true);
    let state = watched_fast(&fake).await;
    let long = Duration::from_secs(5);
    for p in LISTED.iter().filter(|p| **p != POLICIES) {
        wait_until(&format!("{p} watched"), long, || !fake.watches(p).is_empty()).await;
    }
    assert_eq!(fake.attempts(POLICIES), 1, "the list is in flight");
    assert!(state.snapshot().plans.is_empty(), "a plan went out before the policies were listed");
    fake.hold(POLICIES, false);
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    assert_eq!(state.snapshot().plans["gw-0"].version, 1);
    assert_whole(&state, "after a slow policy list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_crd_not_installed_lets_plans_out_and_is_reported() {
    let fake = Fake::new();
    tunnelled_cluster(&fake);
    fake.fail(POLICIES, Some(404));
    let state = watched_fast(&fake).await;
    let long = Duration::from_secs(5);
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    let blue = state.snapshot().plans["gw-0"].plan.configs[0].clone();
    assert!(blue.policy.is_none() && blue.tunnel.is_some());
    let p = problem(&state, POLICY_LIST).expect("the missing CRD is reported");
    assert!(p.message.starts_with("served as if there were none") && p.message.contains("404"), "{p}");
    // The add-on namespace's Secrets (RBAC: 403) are reported the same way.
    let p = problem(&state, DENIED_LIST).expect("the denied namespace is reported");
    assert!(p.message.starts_with("served as if there were none") && p.message.contains("403"), "{p}");

    // The CRD installed: the next retry lists it, the policy is served and
    // the problem goes.
    fake.fail(POLICIES, None);
    wait_until("the policy served", long, || {
        state.snapshot().plans["gw-0"].plan.configs[0].policy.is_some() && problem(&state, POLICY_LIST).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_published_a_failing_list_keeps_what_was_listed() {
    let fake = Fake::new();
    tunnelled_cluster(&fake);
    let state = watched_fast(&fake).await;
    let long = Duration::from_secs(5);
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    for p in LISTED {
        wait_until(&format!("{p} watched"), long, || !fake.watches(p).is_empty()).await;
    }

    // Every kind's watch expires and its re-list fails (500, then 404 as
    // if the CRD went away): nothing it listed before is dropped.
    for code in [500, 404] {
        for p in LISTED {
            fake.fail(p, Some(code));
        }
        let tries: Vec<usize> = LISTED.iter().map(|p| fake.attempts(p)).collect();
        for p in LISTED {
            fake.gone(p);
        }
        for (p, t) in LISTED.iter().zip(tries) {
            wait_until(&format!("{p} failing to list"), long, || fake.attempts(p) >= t + 2).await;
        }
        wait_until("the failing lists reported", long, || {
            [POLICY_LIST, POD_ENDPOINT_LIST, VM_CONFIG_LIST, SECRET_LIST, NETWORK_POLICY_LIST].iter().all(|o| {
                problem(&state, o)
                    .is_some_and(|p| p.message.starts_with("listing fails") && p.message.contains(&code.to_string()))
            })
        })
        .await;
        assert_whole(&state, &format!("re-lists answering {code}"));
    }

    // They list again: the problems go.
    for p in LISTED {
        fake.fail(p, None);
    }
    wait_until("the problems gone", long, || problem(&state, POLICY_LIST).is_none()).await;
    assert_whole(&state, "listed again");
}

/// An EgressPolicy the API server accepts but Egret cannot read (here a
/// default action it does not know) is not skipped, which would serve its
/// config unpoliced: the config is left out and the policy reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_does_not_decode_leaves_its_config_unserved() {
    let fake = Fake::new();
    tunnelled_cluster(&fake);
    let mut bad = policy("blue");
    bad["spec"]["defaultAction"] = json!("maybe");
    fake.put(POLICIES, bad, false);
    fake.put(SGCS, sgc("green", "198.19.101.0/30"), false);
    let state = watched_fast(&fake).await;
    wait_until("gw-0's plan", Duration::from_secs(5), || state.snapshot().plans.contains_key("gw-0")).await;
    let snap = state.snapshot();
    let served: Vec<&str> = snap.plans["gw-0"].plan.configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(served, ["apps/green"], "the other config is served, blue is not");
    let p = snap.reconciled.problems.iter().find(|p| p.object == "EgressPolicy apps/blue").expect("reported");
    assert!(p.message.contains("apps/blue is not served"), "{p}");
}

// Gateways' identity by ServiceAccount token (--gateway-auth=token): the
// fake API server reviews tokens it was told about, and serves pods by name.

const GATEWAY_SA: &str = "system:serviceaccount:egret-system:egret-gateway";
const BOUND_NODE: &str = "authentication.kubernetes.io/node-name";
const BOUND_POD: &str = "authentication.kubernetes.io/pod-name";
const BOUND_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

impl Fake {
    /// The authenticator knows `token` as `username`, for `audiences`,
    /// with these extras.
    fn token(&self, token: &str, username: &str, audiences: &[&str], extra: &[(&str, &str)]) {
        let mut db = self.db.lock().unwrap();
        let t = FakeToken {
            username: username.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            extra: extra.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect(),
        };
        db.tokens.insert(token.into(), t);
    }

    fn reviews(&self) -> usize {
        self.db.lock().unwrap().reviews
    }
}

/// A gateway pod of the DaemonSet, scheduled on `node`.
fn gateway_pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "egret-system", "uid": format!("uid-{name}")},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "egret-gateway", "image": "egret"}]},
        "status": {"phase": "Running"}})
}

/// Two gateway nodes and a config with a pod, and the tokens the tests
/// present: gw-0's gateway (Kubernetes ≥ 1.32: the review names the node),
/// gw-1's (older: the pod is looked up), and the ones to refuse.
fn token_cluster(fake: &Fake) {
    fake.put(NODES, node("gw-0"), false);
    fake.put(NODES, node("gw-1"), false);
    fake.put(SGCS, sgc("blue", "198.19.100.0/30"), false);
    fake.put(PODS, pod("web", "198.18.0.2", "blue"), false);
    fake.put(PODS, gateway_pod("egret-gateway-b", "gw-1"), false);
    fake.fail(POLICIES, Some(404));
    let aud = &["egret-control"][..];
    let a = [(BOUND_POD, "egret-gateway-a"), (BOUND_POD_UID, "uid-egret-gateway-a"), (BOUND_NODE, "gw-0")];
    fake.token("token-a", GATEWAY_SA, aud, &a);
    fake.token("token-b", GATEWAY_SA, aud, &[(BOUND_POD, "egret-gateway-b"), (BOUND_POD_UID, "uid-egret-gateway-b")]);
    // Bound to a pod of that name that has since been replaced.
    fake.token("token-stale", GATEWAY_SA, aud, &[(BOUND_POD, "egret-gateway-b"), (BOUND_POD_UID, "uid-replaced")]);
    // An application pod's token, for our audience, on gw-0.
    let web = [(BOUND_POD, "web"), (BOUND_POD_UID, "uid-web"), (BOUND_NODE, "gw-0")];
    fake.token("token-web", "system:serviceaccount:apps:web", aud, &web);
    // The gateway's own ServiceAccount, but a token for the API server.
    fake.token("token-api", GATEWAY_SA, &["https://kubernetes.default.svc.cluster.local"], &a);
    // A long-lived Secret token of the gateway's ServiceAccount: no pod.
    fake.token("token-unbound", GATEWAY_SA, aud, &[]);
}

/// Serves the plan stream with gateways by token, reviewed by `fake`.
async fn serve_tokens(
    fake: &Fake,
    state: Arc<ControlState>,
    tls: Option<egret_control::ServerTls>,
) -> (std::net::SocketAddr, Arc<egret_control::token::TokenAuth>) {
    let tokens = Arc::new(egret_control::token::TokenAuth::new(serve(fake).await, Default::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = egret_control::ServeOptions { tls, tokens: Some(tokens.clone()), ..Default::default() };
    tokio::spawn(egret_control::serve_with(listener, state, opts, std::future::pending()));
    (addr, tokens)
}

/// Opens the plan stream by hand: Hello as `node`, with `token` as the
/// bearer; the first update's version, or the status the server answered.
async fn subscribe_as(
    url: &str,
    tls: Option<&egret_api::client::TlsFiles>,
    token: Option<&str>,
    node: &str,
) -> Result<u64, tonic::Status> {
    use egret_api::v1::{gateway_message::Msg, plan_service_client::PlanServiceClient, GatewayMessage, Hello};
    let ch = egret_api::client::endpoint(url, tls, Duration::from_secs(2)).unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(GatewayMessage {
        msg: Some(Msg::Hello(Hello {
            node: node.into(),
            serving_version: 0,
            accepts_deltas: false,
            accepts_parts: false,
        })),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut s = PlanServiceClient::new(ch).subscribe(req).await?.into_inner();
    let first = s.message().await?.map(|u| u.version).unwrap_or_default();
    drop(tx);
    Ok(first)
}

fn refused(r: Result<u64, tonic::Status>, code: tonic::Code, says: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(says), "'{}' does not say '{says}'", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_token_opens_its_own_nodes_plan_and_no_other() {
    use tonic::Code::{PermissionDenied, Unauthenticated};
    let fake = Fake::new();
    token_cluster(&fake);
    let state = watched(&fake).await;
    let long = Duration::from_secs(10);
    wait_until("both nodes' plans", long, || {
        let snap = state.snapshot();
        snap.plans.contains_key("gw-0") && snap.plans.contains_key("gw-1")
    })
    .await;
    let (addr, tokens) = serve_tokens(&fake, state.clone(), None).await;
    let url = format!("http://{addr}");

    // Node A's token gets node A's plan; asking for node B's is refused.
    assert!(subscribe_as(&url, None, Some("token-a"), "gw-0").await.unwrap() > 0);
    let a_said = "bound to pod egret-system/egret-gateway-a, which runs on node 'gw-0', not 'gw-1'";
    refused(subscribe_as(&url, None, Some("token-a"), "gw-1").await, PermissionDenied, a_said);

    // Before Kubernetes 1.32 the review names the pod only: its node comes
    // from the pod, and the pod must be the one the token was issued to.
    assert!(subscribe_as(&url, None, Some("token-b"), "gw-1").await.unwrap() > 0);
    let b_said = "egret-gateway-b, which runs on node 'gw-1', not 'gw-0'";
    refused(subscribe_as(&url, None, Some("token-b"), "gw-0").await, PermissionDenied, b_said);
    refused(subscribe_as(&url, None, Some("token-stale"), "gw-1").await, Unauthenticated, "has been replaced");

    // No token, one the API server does not know, another ServiceAccount's,
    // one for another audience, one bound to no pod.
    refused(subscribe_as(&url, None, None, "gw-0").await, Unauthenticated, "no token");
    refused(subscribe_as(&url, None, Some("forged"), "gw-0").await, Unauthenticated, "invalid bearer token");
    refused(subscribe_as(&url, None, Some("token-web"), "gw-0").await, PermissionDenied, "apps:web");
    refused(subscribe_as(&url, None, Some("token-api"), "gw-0").await, Unauthenticated, "audiences is invalid");
    refused(subscribe_as(&url, None, Some("token-unbound"), "gw-0").await, PermissionDenied, "not bound to a pod");

    // Successful reviews are cached (a reconnect asks nothing); refusals
    // are not.
    let reviews = fake.reviews();
    assert_eq!(tokens.cached(), 2, "token-a and token-b");
    assert!(subscribe_as(&url, None, Some("token-a"), "gw-0").await.is_ok());
    refused(subscribe_as(&url, None, Some("token-a"), "gw-1").await, PermissionDenied, a_said);
    assert_eq!(fake.reviews(), reviews, "token-a was reviewed again");
    refused(subscribe_as(&url, None, Some("forged"), "gw-0").await, Unauthenticated, "invalid bearer token");
    assert_eq!(fake.reviews(), reviews + 1, "a refusal was cached");

    // The gateway's subscriber reads its token file on every connect: one
    // the kubelet has just rotated is used on the next retry.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "expired-token\n").unwrap();
    let mut cfg = egret_api::client::SubscribeConfig::new(&url, "gw-0");
    cfg.token_file = Some(file.clone());
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(100);
    let sub = egret_api::client::subscribe(cfg);
    let link = sub.link();
    wait_until(
        "the expired token refused",
        long,
        || matches!(&*link.borrow(), egret_api::client::LinkState::Down(why) if why.contains("Unauthenticated")),
    )
    .await;
    assert!(sub.plans().borrow().is_none());
    std::fs::write(&file, "token-a\n").unwrap();
    let plans = sub.plans();
    wait_until("gw-0's plan with the rotated token", long, || plans.borrow().is_some()).await;
    let got = plans.borrow().clone().unwrap();
    assert_eq!(got.version, state.snapshot().plans["gw-0"].version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_token_needs_no_client_certificate_and_admins_still_need_theirs() {
    use egret_api::v1::{admin_service_client::AdminServiceClient, ListConfigsRequest};
    let fake = Fake::new();
    token_cluster(&fake);
    let state = watched(&fake).await;
    wait_until("gw-0's plan", Duration::from_secs(10), || state.snapshot().plans.contains_key("gw-0")).await;

    let ca = rcgen_ca();
    let (server_cert, server_key) = sign(&ca, "localhost", false);
    let server = egret_control::ServerTls {
        cert_pem: server_cert.into(),
        key_pem: server_key.into(),
        client_ca_pem: Some(ca.0.clone().into()),
        admin_identities: vec!["ops".into()],
    };
    let (addr, _) = serve_tokens(&fake, state.clone(), Some(server)).await;
    let url = format!("https://127.0.0.1:{}", addr.port());
    let tls = |identity: Option<(String, String)>| egret_api::client::TlsFiles {
        ca_pem: ca.0.clone().into_bytes(),
        identity: identity.map(|(c, k)| (c.into_bytes(), k.into_bytes())),
        domain: Some("localhost".into()),
    };

    // A gateway with its token and no client certificate.
    let gateway = tls(None);
    assert!(subscribe_as(&url, Some(&gateway), Some("token-a"), "gw-0").await.unwrap() > 0);
    let e = subscribe_as(&url, Some(&gateway), None, "gw-0").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // A client certificate naming gw-1 does not open gw-1's plan: the token decides.
    let with_cert = tls(Some(sign(&ca, "gw-1", true)));
    let e = subscribe_as(&url, Some(&with_cert), Some("token-a"), "gw-1").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // The admin service still needs an admin's certificate.
    let admin = |t: egret_api::client::TlsFiles| {
        let url = url.clone();
        async move {
            let ch = egret_api::client::endpoint(&url, Some(&t), Duration::from_secs(2)).unwrap().connect().await;
            AdminServiceClient::new(ch.unwrap()).list_configs(ListConfigsRequest {}).await.map(|_| ())
        }
    };
    assert_eq!(admin(tls(None)).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert_eq!(admin(with_cert.clone()).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    admin(tls(Some(sign(&ca, "ops", true)))).await.unwrap();
}

/// A CA: its PEM certificate and its issuer.
fn rcgen_ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "egret test CA");
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(p, key))
}

/// A certificate `ca` signed for `name`: (PEM certificate, PEM key).
fn sign(ca: &(String, rcgen::Issuer<'static, rcgen::KeyPair>), name: &str, client: bool) -> (String, String) {
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A config's ports on one node: two addresses of 100 ports per protocol,
/// `tcp` of them held by TCP mappings in all, as a gateway reports.
fn ports(config: &str, tcp: u32) -> Vec<PortUsage> {
    ["198.19.100.1", "198.19.100.2"]
        .iter()
        .enumerate()
        .map(|(i, ip)| PortUsage {
            egress_ip: ip.to_string(),
            config: config.into(),
            in_use_by_protocol: [("tcp".to_string(), if i == 0 { tcp.min(100) } else { tcp.saturating_sub(100) })]
                .into(),
            capacity_per_protocol: 100,
            ..Default::default()
        })
        .collect()
}

fn sgc_annotation(fake: &Fake, key: &str) -> Option<Value> {
    let db = fake.db.lock().unwrap();
    let value =
        db.objects.get(SGCS)?.get(key)?["metadata"]["annotations"][ANN_PORT_POOL_PRESSURE].as_str()?.to_string();
    Some(serde_json::from_str(&value).expect("the annotation is JSON"))
}

fn sgc_patches(fake: &Fake) -> usize {
    fake.db.lock().unwrap().writes.iter().filter(|w| w.path.contains("/staticgatewayconfigurations/")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_pool_past_90_percent_is_one_warning_and_an_annotation_until_it_falls_below_85() {
    let fake = Fake::new();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, sgc("blue", "198.19.100.0/30"), false);
    fake.put(PODS, pod("web", "198.18.0.2", "blue"), false);
    let state = ControlState::new();
    let client = serve(&fake).await;
    tokio::spawn(watch_kubernetes(state.clone(), client.clone()));
    let opts = StatusOptions {
        retry: Duration::from_millis(100),
        pressure_every: Duration::from_millis(50),
        ..Default::default()
    };
    tokio::spawn(write_status(state.clone(), client, opts));
    let long = Duration::from_secs(10);
    wait_binding(&state, "gw-0", "198.18.0.2", "apps/blue", long).await;
    wait_until("the config watch", long, || !fake.watches(SGCS).is_empty()).await;
    let report = |tcp| Report { ports: ports("apps/blue", tcp), ..Default::default() };

    // 180 of 200: 90%, not past it. Nothing is written.
    state.reported("gw-0", report(180));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sgc_patches(&fake), 0);
    assert!(fake.events_about("StaticGatewayConfiguration", "blue").is_empty());

    // 185 of 200 (92.5%): a Warning Event and the annotation.
    state.reported("gw-0", report(185));
    wait_until("the Warning", long, || !fake.events_about("StaticGatewayConfiguration", "blue").is_empty()).await;
    let events = fake.events_about("StaticGatewayConfiguration", "blue");
    let e = &events[0];
    assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("Warning"), Some("PortPoolNearlyFull")));
    assert_eq!(e["regarding"]["uid"], "uid-blue");
    let note = e["note"].as_str().unwrap();
    assert!(
        note.starts_with("port pool nearly full: node gw-0, tcp: 185/200 ports in use (92.5%), past 90%"),
        "{note}"
    );
    let condition = sgc_annotation(&fake, "apps/blue").expect("the annotation");
    assert_eq!((condition["type"].as_str(), condition["status"].as_str()), (Some("PortPoolNearlyFull"), Some("True")));
    assert_eq!(condition["message"], "node gw-0, tcp: 185/200 ports in use (92.5%), past 90%");
    assert!(condition["lastTransitionTime"].as_str().unwrap().ends_with('Z'), "{condition}");
    wait_until("the annotation watched", long, || state.snapshot().pressure_annotations.contains_key("apps/blue"))
        .await;

    // Fuller, then 88%, then 92% again: still nearly full, nothing new.
    for tcp in [199, 176, 184] {
        state.reported("gw-0", report(tcp));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fake.events_about("StaticGatewayConfiguration", "blue").len(), 1);
    assert_eq!(sgc_patches(&fake), 1);

    // 160 of 200 (80%): relieved, a Normal Event, the annotation removed.
    state.reported("gw-0", report(160));
    wait_until("the Normal Event", long, || fake.events_about("StaticGatewayConfiguration", "blue").len() == 2).await;
    let e = &fake.events_about("StaticGatewayConfiguration", "blue")[1];
    assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("Normal"), Some("PortPoolRelieved")));
    assert_eq!(
        e["note"],
        "port pool below 85% on every node again (fullest: node gw-0, tcp: 160/200 ports in use (80.0%))"
    );
    assert!(sgc_annotation(&fake, "apps/blue").is_none());
    wait_until("the removal watched", long, || state.snapshot().pressure_annotations.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sgc_patches(&fake), 2);
    assert_eq!(fake.events_about("StaticGatewayConfiguration", "blue").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_publishes_the_pressure_of_a_gateway_on_the_other_replica_and_its_successor_carries_on() {
    let fake = Fake::new();
    fake.put(NODES, node("gw-0"), false);
    fake.put(SGCS, sgc("blue", "198.19.100.0/30"), false);
    let a = Replica::start(&fake, "control-a").await;
    let b = Replica::start(&fake, "control-b").await;
    let long = Duration::from_secs(10);
    wait_until("a Lease holder", long, || holder(&fake).is_some()).await;
    let (leader, follower) = if holder(&fake).as_deref() == Some("control-a") { (a, b) } else { (b, a) };
    wait_until("both config watches", long, || fake.watches(SGCS).len() >= 2).await;
    // gw-0's gateway is subscribed to the follower, which reports its
    // ports; each replica holds them as peers.rs fetches them (the leader
    // from the follower; the follower as the leader would pass them on).
    let on = |r: &Replica, replica: &str, tcp| {
        let link = PeerLink {
            replica: replica.into(),
            applied_version: 0,
            applied_error: String::new(),
            applied: None,
            report_age_s: Some(0),
            ports: ports("apps/blue", tcp),
        };
        r.state.set_peer_links([("gw-0".to_string(), link)].into());
    };
    on(&leader, follower.name, 190);
    on(&follower, leader.name, 190);
    wait_until("the Warning", long, || !fake.events_about("StaticGatewayConfiguration", "blue").is_empty()).await;
    let writers: Vec<String> =
        fake.db.lock().unwrap().writes.iter().filter(|w| w.path.contains("/events")).map(|w| w.who.clone()).collect();
    assert_eq!(writers, [leader.name]);
    assert!(sgc_annotation(&fake, "apps/blue").is_some());
    wait_until("the annotation watched", long, || {
        follower.state.snapshot().pressure_annotations.contains_key("apps/blue")
    })
    .await;

    // The leader dies: its successor finds the annotation and says nothing
    // new while the pool stays full, then the relief.
    let dead = leader.name;
    leader.kill();
    wait_until("the follower leading", Duration::from_secs(5), || follower.leader.is_leader()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.events_about("StaticGatewayConfiguration", "blue").len(), 1, "no second Warning");
    assert_eq!(sgc_patches(&fake), 1);
    on(&follower, "control-z", 100);
    wait_until("the Normal Event", long, || fake.events_about("StaticGatewayConfiguration", "blue").len() == 2).await;
    let e = &fake.events_about("StaticGatewayConfiguration", "blue")[1];
    assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("Normal"), Some("PortPoolRelieved")));
    assert!(sgc_annotation(&fake, "apps/blue").is_none());
    let writers: Vec<String> = fake
        .db
        .lock()
        .unwrap()
        .writes
        .iter()
        .filter(|w| w.path.contains("/events") || w.path.contains("/staticgatewayconfigurations/"))
        .map(|w| w.who.clone())
        .collect();
    assert_eq!(writers, [dead, dead, follower.name, follower.name], "annotation and Event, by each leader");
    follower.kill();
}
