//! The NAT log and the policy-deny log, written by a thread of their own:
//! workers hand the engine's events over (plain structs, no formatting)
//! through a bounded queue, so a slow log sink never stalls a poll loop.
//! What does not fit is counted (`log_records_lost`), not waited for.

use crate::nat::{DenyEvent, NameEvent, NatEvent};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub enum LogRecord {
    Deny(DenyEvent),
    Session(NatEvent),
    /// The name (TLS SNI, HTTP Host) a flow was allowed for.
    Name(NameEvent),
}

pub type LogQueue = Arc<ArrayQueue<LogRecord>>;

/// Records a queue holds before workers count them lost.
const QUEUE_RECORDS: usize = 1 << 16;

pub struct NatLogger {
    pub queue: LogQueue,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl NatLogger {
    pub fn spawn() -> NatLogger {
        let queue: LogQueue = Arc::new(ArrayQueue::new(QUEUE_RECORDS));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (Arc::clone(&queue), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("egret-natlog".into())
            .spawn(move || loop {
                let stopping = st.load(Ordering::Relaxed);
                let mut wrote = false;
                while let Some(r) = q.pop() {
                    write(&r);
                    wrote = true;
                }
                if stopping {
                    return;
                }
                if !wrote {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .expect("spawn the NAT log thread");
        NatLogger { queue, stop, thread }
    }

    /// Writes what is queued, then ends the thread (after the workers stop).
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn write(r: &LogRecord) {
    match r {
        LogRecord::Deny(e) => tracing::info!(target: "egret::policy", pod = %e.pod, dst = %e.dst, proto = e.proto,
            port = e.port, config = %e.config,
            reason = %e.rule.as_deref().map_or("no rule matched".to_string(), |r| format!("denied by rule {r}")),
            "egress denied"),
        LogRecord::Session(e) => {
            let event = if e.open { "open" } else { "close" };
            let (pod, egress) = (format!("{}:{}", e.pod, e.pod_port), format!("{}:{}", e.egress, e.egress_port));
            match e.remote {
                Some((a, p)) => tracing::info!(target: "egret::natlog", event = %event, proto = e.proto, pod = %pod,
                    egress = %egress, dst = %format!("{a}:{p}"), at = e.at, "session"),
                None => tracing::info!(target: "egret::natlog", event = %event, proto = e.proto, pod = %pod,
                    egress = %egress, at = e.at, "session"),
            }
        }
        LogRecord::Name(e) => {
            tracing::info!(target: "egret::natlog", event = "name", pod = %format!("{}:{}", e.pod, e.pod_port),
            egress = %format!("{}:{}", e.egress, e.egress_port), dst = %format!("{}:{}", e.remote.0, e.remote.1),
            name = %e.name, config = %e.config, rule = %e.rule, at = e.at, "session allowed for name")
        }
    }
}
