//! egret-control's own counters, as OpenMetrics text by prometheus-client
//! (as the gateway's), on `GET /metrics` of the probe listener: how often
//! the cluster is reconciled whole, how often pod changes are applied alone
//! and why they are not, and in which form plans go out. A gateway pool
//! whose pod changes keep falling back to whole reconciles, or whose
//! gateways keep getting whole plans, shows it here.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`ControlMetrics::render`]'s text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set: the labels' values are fixed phrases, never object names.
type Labels = Vec<(&'static str, String)>;

pub struct ControlMetrics {
    registry: Registry,
    reconciles_whole: Counter,
    pod_changes_alone: Counter,
    /// Why pod changes were reconciled whole, by reason.
    pod_changes_whole: Family<Labels, Counter>,
    /// Plans sent, by form.
    updates: Family<Labels, Counter>,
    whole_messages: Counter,
    generation: Gauge,
    problems: Gauge,
    planned_nodes: Gauge,
}

impl std::fmt::Debug for ControlMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlMetrics")
    }
}

impl Default for ControlMetrics {
    fn default() -> ControlMetrics {
        let m = ControlMetrics {
            registry: Registry::default(),
            reconciles_whole: Counter::default(),
            pod_changes_alone: Counter::default(),
            pod_changes_whole: Family::default(),
            updates: Family::default(),
            whole_messages: Counter::default(),
            generation: Gauge::default(),
            problems: Gauge::default(),
            planned_nodes: Gauge::default(),
        };
        let mut r = Registry::default();
        r.register("egret_control_reconciles", "Reconciles of the whole cluster", m.reconciles_whole.clone());
        r.register(
            "egret_control_pod_changes_applied_alone",
            "Batches of pod changes applied to the last reconcile, without reconciling the cluster",
            m.pod_changes_alone.clone(),
        );
        r.register(
            "egret_control_pod_changes_reconciled_whole",
            "Batches of pod changes the last reconcile could not take alone, by why (reconciled whole)",
            m.pod_changes_whole.clone(),
        );
        r.register("egret_control_plan_updates", "Plans sent to gateways, by form", m.updates.clone());
        r.register(
            "egret_control_whole_plan_messages",
            "Messages whole plans were sent in (parts of at most 64 KiB to gateways that join them)",
            m.whole_messages.clone(),
        );
        r.register("egret_control_generation", "The generation of plans published", m.generation.clone());
        r.register("egret_control_problems", "Problems reported (egretctl problems)", m.problems.clone());
        r.register("egret_control_planned_nodes", "Gateway nodes with a plan", m.planned_nodes.clone());
        ControlMetrics { registry: r, ..m }
    }
}

impl ControlMetrics {
    pub fn reconciled_whole(&self) {
        self.reconciles_whole.inc();
    }

    pub fn pod_changes_applied_alone(&self) {
        self.pod_changes_alone.inc();
    }

    pub fn pod_changes_applied_alone_count(&self) -> u64 {
        self.pod_changes_alone.get()
    }

    /// Pod changes reconciled whole, and why (a short fixed phrase).
    pub fn pod_changes_reconciled_whole(&self, why: &'static str) {
        self.pod_changes_whole.get_or_create(&vec![("reason", slug(why))]).inc();
    }

    /// `n` plans sent as deltas.
    pub fn sent_deltas(&self, n: usize) {
        self.updates.get_or_create(&vec![("form", "delta".into())]).inc_by(n as u64);
    }

    /// A plan sent whole, in `parts` messages (1: not cut).
    pub fn sent_whole(&self, parts: usize) {
        self.updates.get_or_create(&vec![("form", "whole".into())]).inc();
        self.whole_messages.inc_by(parts as u64);
    }

    /// The exposition, with the published generation, problems and nodes
    /// planned as they are now.
    pub fn render(&self, generation: u64, problems: usize, planned_nodes: usize) -> String {
        self.generation.set(generation as i64);
        self.problems.set(problems as i64);
        self.planned_nodes.set(planned_nodes as i64);
        let mut out = String::with_capacity(2048);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
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
        m.sent_deltas(1);
        m.sent_whole(3);
        let text = m.render(7, 0, 0);
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
