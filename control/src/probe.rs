//! Kubernetes probes over plain HTTP (the kubelet's gRPC probe speaks no
//! TLS, and egret-control serves gRPC over TLS): `GET /readyz` answers 200
//! once this replica is synced and serving (its source has listed the
//! cluster, so its plans are whole, and its gRPC server is accepting), 503
//! before that and from the moment it starts shutting down, so the Service
//! sends gateways only to replicas that can serve them. `GET /livez`
//! answers 200 while the process runs. `GET /metrics`: egret-control's
//! own counters (crate::metrics), for Prometheus. Nothing else is served.

use crate::state::ControlState;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Whether a replica is ready, and why not.
pub fn readiness(generation: u64, serving: bool) -> Result<(), &'static str> {
    match (generation > 0, serving) {
        (false, _) => Err("not synced: the cluster has not been listed yet"),
        (true, false) => Err("not serving: the gRPC server is not accepting (starting or shutting down)"),
        (true, true) => Ok(()),
    }
}

/// What an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Text(&'static str),
    /// The metrics as they are now (made by the caller, which has them).
    Metrics,
}

/// The answer to one request line: status code and body.
pub fn answer(request_line: &str, ready: Result<(), &'static str>) -> (u16, Body) {
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return (405, Body::Text("GET only\n"));
    }
    match path {
        "/livez" => (200, Body::Text("ok\n")),
        "/metrics" => (200, Body::Metrics),
        "/readyz" => match ready {
            Ok(()) => (200, Body::Text("ready: synced and serving\n")),
            Err(why) => (503, Body::Text(why)),
        },
        _ => (404, Body::Text("/readyz, /livez or /metrics\n")),
    }
}

/// Serves the probes on `listener` forever.
pub async fn serve_probes(listener: TcpListener, state: Arc<ControlState>, serving: watch::Receiver<bool>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let ready = readiness(state.snapshot().generation, *serving.borrow());
        let state = state.clone();
        tokio::spawn(async move {
            // A probe that does not send its request within a second is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), reply(sock, ready, &state)).await;
        });
    }
}

async fn reply(mut sock: TcpStream, ready: Result<(), &'static str>, state: &ControlState) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    let mut len = 0;
    // The request line is all that is read.
    while !buf[..len].contains(&b'\n') && len < buf.len() {
        let n = sock.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let request_line = line.lines().next().unwrap_or("");
    let (code, body) = answer(request_line, ready);
    let (content_type, body) = match body {
        Body::Text(text) => ("text/plain", std::borrow::Cow::Borrowed(text)),
        Body::Metrics => (crate::metrics::OPENMETRICS, std::borrow::Cow::Owned(state.metrics_text())),
    };
    let head = request_line.starts_with("HEAD ");
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    // HEAD: the headers a GET would get, no body.
    let text = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        if head { "" } else { &body }
    );
    sock.write_all(text.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_synced_and_serving() {
        assert!(readiness(0, true).unwrap_err().starts_with("not synced"));
        assert!(readiness(3, false).unwrap_err().starts_with("not serving"));
        assert_eq!(readiness(3, true), Ok(()));
    }

    #[test]
    fn readyz_says_why_not_and_livez_always_answers() {
        let not = readiness(0, true);
        assert_eq!(answer("GET /readyz HTTP/1.1", not).0, 503);
        assert_eq!(answer("GET /readyz HTTP/1.1", Ok(())).0, 200);
        assert_eq!(answer("GET /livez HTTP/1.1", not).0, 200);
        assert_eq!(answer("GET /other HTTP/1.1", Ok(())).0, 404);
        assert_eq!(answer("POST /readyz HTTP/1.1", Ok(())).0, 405);
        assert_eq!(answer("", Ok(())).0, 405);
    }

    #[tokio::test]
    async fn the_probe_answers_over_http() {
        let state = ControlState::new();
        let (serving_tx, serving) = watch::channel(true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_probes(listener, state.clone(), serving));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503 "), "generation 0: not synced");
        state.update(&egret_cluster::ClusterState::default());
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200 "));
        serving_tx.send_replace(false);
        let down = get("/readyz").await;
        assert!(down.starts_with("HTTP/1.1 503 ") && down.contains("not serving"), "{down}");
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 "), "{metrics}");
        assert!(metrics.lines().any(|l| l == "egret_control_reconciles_total 1"), "{metrics}");
    }
}
