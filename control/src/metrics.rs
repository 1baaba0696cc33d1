//! egret-control's own counters, in Prometheus' text format
//! (`GET /metrics` on the probe listener): how often the cluster is
//! reconciled whole, how often pod changes are applied alone and why they
//! are not, and in which form plans go out. A gateway pool whose pod
//! changes keep falling back to whole reconciles, or whose gateways keep
//! getting whole plans, shows it here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct ControlMetrics {
    reconciles_whole: AtomicU64,
    pod_changes_alone: AtomicU64,
    /// Why pod changes were reconciled whole, by reason.
    pod_changes_whole: Mutex<BTreeMap<&'static str, u64>>,
    updates_delta: AtomicU64,
    updates_whole: AtomicU64,
    updates_part: AtomicU64,
}

/// How a plan update went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Delta,
    /// A whole plan, in `parts` messages (1: not cut).
    Whole {
        parts: usize,
    },
}

impl ControlMetrics {
    pub fn reconciled_whole(&self) {
        self.reconciles_whole.fetch_add(1, Relaxed);
    }

    pub fn pod_changes_applied_alone(&self) {
        self.pod_changes_alone.fetch_add(1, Relaxed);
    }

    pub fn pod_changes_applied_alone_count(&self) -> u64 {
        self.pod_changes_alone.load(Relaxed)
    }

    /// Pod changes reconciled whole, and why (a short fixed phrase).
    pub fn pod_changes_reconciled_whole(&self, why: &'static str) {
        *self.pod_changes_whole.lock().unwrap().entry(why).or_default() += 1;
    }

    pub fn sent(&self, how: Sent) {
        match how {
            Sent::Delta => self.updates_delta.fetch_add(1, Relaxed),
            Sent::Whole { parts } => {
                self.updates_part.fetch_add(parts as u64, Relaxed);
                self.updates_whole.fetch_add(1, Relaxed)
            }
        };
    }

    /// The counters, and `gauges` (name, help, value), as Prometheus text.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let plain = |v: &AtomicU64| vec![(String::new(), v.load(Relaxed))];
        family(
            "egret_control_reconciles_total",
            "counter",
            "Reconciles of the whole cluster.",
            &plain(&self.reconciles_whole),
        );
        family(
            "egret_control_pod_changes_applied_alone_total",
            "counter",
            "Batches of pod changes applied to the last reconcile, without reconciling the cluster.",
            &plain(&self.pod_changes_alone),
        );
        let whole: Vec<(String, u64)> = self
            .pod_changes_whole
            .lock()
            .unwrap()
            .iter()
            .map(|(why, n)| (format!("{{reason=\"{}\"}}", slug(why)), *n))
            .collect();
        family(
            "egret_control_pod_changes_reconciled_whole_total",
            "counter",
            "Batches of pod changes the last reconcile could not take alone, by why (reconciled whole).",
            &whole,
        );
        let sent = [("delta", &self.updates_delta), ("whole", &self.updates_whole)]
            .map(|(form, v)| (format!("{{form=\"{form}\"}}"), v.load(Relaxed)));
        family("egret_control_plan_updates_total", "counter", "Plans sent to gateways, by form.", &sent);
        family(
            "egret_control_whole_plan_messages_total",
            "counter",
            "Messages whole plans were sent in (parts of at most 64 KiB to gateways that join them).",
            &plain(&self.updates_part),
        );
        for (name, help, v) in gauges {
            family(name, "gauge", help, &[(String::new(), *v)]);
        }
        out
    }
}

/// `why` as a label value: lower case words joined by `_`.
fn slug(why: &str) -> String {
    let words: Vec<String> = why
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    words.join("_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text_with_their_labels() {
        let m = ControlMetrics::default();
        m.reconciled_whole();
        m.pod_changes_reconciled_whole("a pod IP another pod claims");
        m.pod_changes_reconciled_whole("a pod IP another pod claims");
        m.sent(Sent::Delta);
        m.sent(Sent::Whole { parts: 3 });
        let text = m.render(&[("egret_control_generation", "The published generation.", 7)]);
        for line in [
            "egret_control_reconciles_total 1",
            "egret_control_pod_changes_reconciled_whole_total{reason=\"a_pod_ip_another_pod_claims\"} 2",
            "egret_control_plan_updates_total{form=\"delta\"} 1",
            "egret_control_plan_updates_total{form=\"whole\"} 1",
            "egret_control_whole_plan_messages_total 3",
            "# TYPE egret_control_generation gauge",
            "egret_control_generation 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
