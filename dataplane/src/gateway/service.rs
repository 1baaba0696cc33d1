//! Running under systemd: `sd_notify` readiness, status and watchdog
//! (`Type=notify`, `WatchdogSec=`), spoken directly on `$NOTIFY_SOCKET`.
//! The watchdog is fed only while every worker's poll loop is turning.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sends one notification; a no-op outside systemd. Abstract socket names
/// (leading `@`) are supported.
pub fn notify(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let sock = UnixDatagram::unbound()?;
    let p = path.to_string_lossy();
    if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &*p)?;
    }
    Ok(())
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any and
/// meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Tracks whether every worker's loop advanced since the last look.
pub struct Liveness {
    beats: Vec<Arc<AtomicU64>>,
    last: Vec<u64>,
}

impl Liveness {
    pub fn new(beats: Vec<Arc<AtomicU64>>) -> Liveness {
        let last = vec![u64::MAX; beats.len()];
        Liveness { beats, last }
    }

    /// The same workers' heartbeats, for another watcher.
    pub fn beats(&self) -> Vec<Arc<AtomicU64>> {
        self.beats.clone()
    }

    /// True when every worker moved since the previous call.
    pub fn all_alive(&mut self) -> bool {
        let mut ok = true;
        for (b, l) in self.beats.iter().zip(self.last.iter_mut()) {
            let now = b.load(Ordering::Relaxed);
            ok &= now != *l;
            *l = now;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket_systemd_names() {
        let dir = std::env::temp_dir().join(format!("egret-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        // SAFETY: this test is the only user of NOTIFY_SOCKET in the process.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &dir) };
        notify("READY=1\nSTATUS=serving").unwrap();
        notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn a_stuck_worker_stops_the_watchdog() {
        let beats = vec![Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let mut l = Liveness::new(beats.clone());
        assert!(l.all_alive(), "first look");
        beats[0].fetch_add(1, Ordering::Relaxed);
        assert!(!l.all_alive(), "worker 1 did not move");
        beats[0].fetch_add(1, Ordering::Relaxed);
        beats[1].fetch_add(1, Ordering::Relaxed);
        assert!(l.all_alive());
    }
}
