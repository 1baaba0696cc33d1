//! The NAT log and the policy-deny log, written by a thread of their own:
//! workers hand the engine's events over (plain structs, no formatting)
//! through a bounded queue, so a slow log sink never stalls a poll loop.
//! Each pod holds at most a share of that queue (`pod_share`), so one
//! pod's churn cannot cost another tenant its records. What does not fit
//! is counted (`log_records_lost`, `log_records_over_share`), not waited
//! for.

use super::pod_share::{OfPod, PodShareQueue};
use crate::nat::{DenyEvent, NameEvent, NatEvent};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub enum LogRecord {
    Deny(DenyEvent),
    Session(NatEvent),
    /// The name (TLS SNI, HTTP Host) a flow was allowed for.
    Name(NameEvent),
}

impl OfPod for LogRecord {
    fn pod(&self) -> Ipv4Addr {
        match self {
            LogRecord::Deny(e) => e.pod,
            LogRecord::Session(e) => e.pod,
            LogRecord::Name(e) => e.pod,
        }
    }
}

pub type LogQueue = Arc<PodShareQueue<LogRecord>>;

/// Policy denials logged per worker per second; the rest are counted.
const DENY_LOGS_PER_SEC: u32 = 20;
/// What one pod (a keyed hash slot of them) may take of that a second:
/// ten pods, not one, are needed to use it all.
const DENY_LOGS_PER_POD_PER_SEC: u8 = 2;
const DENY_LOG_SLOTS: usize = 64;

/// A worker's budget of denials to log this second, each pod a tenth of
/// it: a pod whose flows are denied by the thousand cannot keep another
/// tenant's denials out of the log.
pub struct DenyLogBudget {
    sec: u64,
    left: u32,
    by_slot: [u8; DENY_LOG_SLOTS],
    keys: std::collections::hash_map::RandomState,
}

impl Default for DenyLogBudget {
    fn default() -> Self {
        DenyLogBudget { sec: 0, left: DENY_LOGS_PER_SEC, by_slot: [0; DENY_LOG_SLOTS], keys: Default::default() }
    }
}

impl DenyLogBudget {
    /// Whether a denial of `pod` in second `sec` may be logged (and takes
    /// it from the budget if so).
    pub fn take(&mut self, sec: u64, pod: Ipv4Addr) -> bool {
        use std::hash::BuildHasher;
        if sec != self.sec {
            (self.sec, self.left, self.by_slot) = (sec, DENY_LOGS_PER_SEC, [0; DENY_LOG_SLOTS]);
        }
        let slot = &mut self.by_slot[self.keys.hash_one(pod) as usize % DENY_LOG_SLOTS];
        if self.left == 0 || *slot >= DENY_LOGS_PER_POD_PER_SEC {
            return false;
        }
        self.left -= 1;
        *slot += 1;
        true
    }
}

/// Records a queue holds before workers count them lost.
const QUEUE_RECORDS: usize = 1 << 16;

pub struct NatLogger {
    pub queue: LogQueue,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl NatLogger {
    pub fn spawn() -> NatLogger {
        let queue: LogQueue = Arc::new(PodShareQueue::new(QUEUE_RECORDS));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(b: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, b)
    }

    #[test]
    fn one_pod_takes_at_most_a_tenth_of_a_seconds_deny_logs() {
        let mut b = DenyLogBudget::default();
        assert_eq!((0..100).filter(|_| b.take(7, pod(2))).count(), 2);
        // Pods in other slots still get theirs, up to the worker's budget.
        let others = (3..=255).filter(|&p| b.take(7, pod(p))).count();
        assert_eq!(others, DENY_LOGS_PER_SEC as usize - 2);
        assert!(b.take(8, pod(2)), "a new second, a new budget");
    }
}
