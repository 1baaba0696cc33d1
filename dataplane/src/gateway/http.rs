//! The gateway's two small HTTP endpoints (`/metrics`, the load balancer's
//! probe) share this responder: one thread, one request per connection,
//! off the packet path. Requests are a GET line and headers; nothing is
//! read beyond the first 1 KiB.

use std::io::{Read, Write};
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

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The path of a `GET` (or `HEAD`) request line, without its query.
pub fn request_path(request: &str) -> Option<&str> {
    let line = request.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    if method != "GET" && method != "HEAD" {
        return None;
    }
    Some(target.split('?').next().unwrap_or(target))
}

/// Serves `handler(path)` on `addr` from a thread named `name` until `stop`.
pub fn serve(
    addr: SocketAddr,
    name: &str,
    stop: Arc<AtomicBool>,
    handler: impl Fn(&str) -> Response + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name(name.into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut req = [0u8; 1024];
            let n = conn.read(&mut req).unwrap_or(0);
            let text = String::from_utf8_lossy(&req[..n]);
            let r = match request_path(&text) {
                Some(path) => handler(path),
                None => Response::text(405, "GET only\n"),
            };
            let head = text.starts_with("HEAD ");
            let _ = write!(
                conn,
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                r.status,
                reason(r.status),
                r.content_type,
                r.body.len(),
                if head { "" } else { &r.body }
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_comes_from_a_get_line_without_its_query() {
        assert_eq!(request_path("GET /gw/abc?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"), Some("/gw/abc"));
        assert_eq!(request_path("HEAD /metrics HTTP/1.0\r\n\r\n"), Some("/metrics"));
        assert_eq!(request_path("POST /gw/abc HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_path(""), None);
    }
}
