//! The gateway's two small HTTP endpoints (`/metrics`, the load balancer's
//! probe) share this server: hyper (HTTP/1.1, keep-alive, a header read
//! timeout) on a current-thread runtime of its own thread, off the packet
//! path. A handler maps a path to a [`Response`]; only GET and HEAD are
//! served.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    std::thread::Builder::new().name(name.into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            while !stop.load(Ordering::Relaxed) {
                // Wakes every 100 ms to see `stop`.
                let Ok(Ok((stream, _))) = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                else {
                    continue;
                };
                let h = Arc::clone(&handler);
                tokio::spawn(async move {
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
}
