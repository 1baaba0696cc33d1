//! The gateway's two small HTTP endpoints (`/metrics`, the load balancer's
//! probe) share this server: hyper (HTTP/1.1, keep-alive, a header read
//! timeout) on a current-thread runtime of its own thread, off the packet
//! path. A handler maps a path to a [`Response`]; only GET and HEAD are
//! served. The probe port faces the whole VNet: connections are bounded,
//! in all and per source address, and the ones refused are counted.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections one server holds at once, and one source address of them.
pub const MAX_CONNECTIONS: u32 = 256;
pub const MAX_CONNECTIONS_PER_SOURCE: u32 = 16;

/// Connections refused (closed at once) because the server or the
/// source held its share, summed over the gateway's HTTP servers.
pub static CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);

/// The connections a server holds, by source.
#[derive(Default)]
struct Connections {
    total: u32,
    by_source: HashMap<IpAddr, u32>,
}

/// A held connection's place; given back when dropped.
struct Admitted {
    table: Arc<Mutex<Connections>>,
    source: IpAddr,
}

fn admit(table: &Arc<Mutex<Connections>>, source: IpAddr) -> Option<Admitted> {
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    let held = t.by_source.get(&source).copied().unwrap_or(0);
    if t.total >= MAX_CONNECTIONS || held >= MAX_CONNECTIONS_PER_SOURCE {
        CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    t.total += 1;
    t.by_source.insert(source, held + 1);
    Some(Admitted { table: Arc::clone(table), source })
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.total -= 1;
        if let Some(n) = t.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                t.by_source.remove(&self.source);
            }
        }
    }
}

/// An answer: status code, content type and body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

/// How long a client may take to send its request head, and to be served.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

fn answer(handler: &(impl Fn(&str) -> Response + ?Sized), req: &Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let (r, allow) = if req.method() == Method::GET || req.method() == Method::HEAD {
        (handler(req.uri().path()), false)
    } else {
        (Response::text(405, "GET only\n"), true)
    };
    let mut out = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *out.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    if allow {
        out.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    out
}

/// Serves `handler(path)` on `addr` from a thread named `name` until `stop`.
/// Binding happens here, so a taken address is an error at start.
pub fn serve(
    addr: SocketAddr,
    name: &str,
    stop: Arc<AtomicBool>,
    handler: impl Fn(&str) -> Response + Send + Sync + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let handler = Arc::new(handler);
    let table = Arc::new(Mutex::new(Connections::default()));
    std::thread::Builder::new().name(name.into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            while !stop.load(Ordering::Relaxed) {
                // Wakes every 100 ms to see `stop`.
                let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                else {
                    continue;
                };
                // Refused: the stream is dropped, closing it.
                let Some(place) = admit(&table, peer.ip()) else { continue };
                let h = Arc::clone(&handler);
                tokio::spawn(async move {
                    let _place = place;
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let r = answer(&*h, &req);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                });
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[test]
    fn paths_are_served_without_their_query_and_only_to_get_and_head() {
        let stop = Arc::new(AtomicBool::new(false));
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let t = serve(addr, "test-http", Arc::clone(&stop), |path| Response::text(200, format!("{path}\n"))).unwrap();
        let ok = get(addr, "GET /gw/abc?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\n/gw/abc\n"), "{ok}");
        let head = get(addr, "HEAD /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "no body: {head}");
        let post = get(addr, "POST /gw/abc HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("allow: GET, HEAD"), "{post}");
        let junk = get(addr, "NONSENSE\r\n\r\n");
        assert!(junk.starts_with("HTTP/1.1 400 ") || junk.is_empty(), "{junk}");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }

    #[test]
    fn one_source_holds_at_most_its_share_of_connections_and_the_rest_are_counted() {
        let table = Arc::new(Mutex::new(Connections::default()));
        let (a, b): (IpAddr, IpAddr) = ("198.18.0.2".parse().unwrap(), "198.18.0.3".parse().unwrap());
        let refused = CONNECTIONS_REFUSED.load(Ordering::Relaxed);
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_SOURCE + 5).filter_map(|_| admit(&table, a)).collect();
        assert_eq!(held.len() as u32, MAX_CONNECTIONS_PER_SOURCE);
        assert!(CONNECTIONS_REFUSED.load(Ordering::Relaxed) >= refused + 5);
        assert!(admit(&table, b).is_some(), "another source still gets in");
        drop(held);
        assert!(admit(&table, a).is_some(), "closed connections give their places back");
        let mut all = Vec::new();
        for i in 0..MAX_CONNECTIONS + 1 {
            let src = IpAddr::from([198, 18, (i / 250) as u8, (i % 250) as u8 + 1]);
            all.extend(admit(&table, src));
        }
        assert_eq!(all.len() as u32, MAX_CONNECTIONS, "and the server holds at most its bound");
    }
}
