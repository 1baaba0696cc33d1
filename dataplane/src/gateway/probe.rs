//! The load balancer's health probe, answered as kube-egress-gateway's
//! gateway daemon answers it (its `pkg/healthprobe`): the internal load
//! balancer asks every gateway node `GET /gw/<StaticGatewayConfiguration
//! UID>` on port 8082 and sends a config's tunnel traffic only to nodes
//! that answer 200. 200: this node serves that config now (it is in the
//! applied plan, with its tunnel, and every worker turns); 503: it does not,
//! or the node is draining; 400: a path of another shape under `/gw/`.
//! On SIGTERM the gateway drains: every config answers 503 for the drain
//! period (the anchor's is 10 s: two probe intervals of 5 s) while the
//! workers keep forwarding, and only then stop.
//!
//! `GET /healthz` is the kubelet's liveness probe: 200 while every worker
//! turns, 503 once one stops (a worker that panics takes the process down
//! itself; this catches one that is stuck), draining or not.

use super::http::Response;
use crate::nat::CompiledPlan;
use std::collections::HashSet;

/// The anchor's probe port.
pub const DEFAULT_PORT: u16 = 8082;
/// The anchor's drain delay.
pub const DEFAULT_DRAIN_SECS: u64 = 10;

#[derive(Debug, Default, Clone)]
pub struct ProbeState {
    /// UIDs of the configs this node serves now.
    pub serving: HashSet<String>,
    /// Set on SIGTERM: every config answers 503.
    pub draining: bool,
    /// Every worker turned in the last second.
    pub workers_alive: bool,
}

impl ProbeState {
    /// The configs of `plan` that name their object's UID (a compiled
    /// config always has egress addresses), when every worker is alive;
    /// none otherwise.
    pub fn serving_of(plan: &CompiledPlan, workers_alive: bool) -> HashSet<String> {
        if !workers_alive {
            return HashSet::new();
        }
        plan.configs.iter().filter_map(|c| c.uid.clone()).collect()
    }

    /// The probe's status code for `path`.
    pub fn status(&self, path: &str) -> u16 {
        if path == "/healthz" {
            return if self.workers_alive { 200 } else { 503 };
        }
        // As the anchor: a path under /gw/ splits into exactly "", "gw", UID.
        if !path.starts_with("/gw/") {
            return 404;
        }
        let uid = match path.split('/').collect::<Vec<_>>()[..] {
            [_, _, uid] => uid,
            _ => return 400,
        };
        if !self.draining && self.serving.contains(uid) {
            200
        } else {
            503
        }
    }

    pub fn answer(&self, path: &str) -> Response {
        let s = self.status(path);
        Response::text(
            s,
            match s {
                200 if path == "/healthz" => "ok\n",
                503 if path == "/healthz" => "a worker stopped turning\n",
                200 => "serving\n",
                503 if self.draining => "draining\n",
                503 => "not serving this config\n",
                400 => "expected /gw/<config UID>\n",
                _ => "try /gw/<config UID>\n",
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{GatewayConfig, Plan};

    const UID: &str = "0a0a0a0a-0000-0000-0000-00000000000a";

    fn serving() -> ProbeState {
        ProbeState { serving: [UID.to_string()].into(), draining: false, workers_alive: true }
    }

    #[test]
    fn a_served_config_answers_200() {
        assert_eq!(serving().status(&format!("/gw/{UID}")), 200);
    }

    #[test]
    fn a_config_this_node_does_not_serve_answers_503() {
        assert_eq!(serving().status("/gw/1b1b1b1b-0000-0000-0000-00000000000b"), 503);
        assert_eq!(serving().status("/gw/"), 503, "an empty UID is no config");
    }

    #[test]
    fn draining_answers_503_for_every_config() {
        let s = ProbeState { draining: true, ..serving() };
        assert_eq!(s.status(&format!("/gw/{UID}")), 503);
        assert_eq!(s.answer(&format!("/gw/{UID}")).body, "draining\n");
    }

    #[test]
    fn a_malformed_path_answers_400_and_another_path_404() {
        assert_eq!(serving().status(&format!("/gw/{UID}/extra")), 400);
        assert_eq!(serving().status("/health"), 404);
    }

    #[test]
    fn healthz_answers_whether_every_worker_turns_draining_or_not() {
        assert_eq!(serving().status("/healthz"), 200);
        assert_eq!(ProbeState { draining: true, ..serving() }.status("/healthz"), 200);
        let stuck = ProbeState { workers_alive: false, ..serving() };
        assert_eq!(
            (stuck.status("/healthz"), stuck.answer("/healthz").body.as_str()),
            (503, "a worker stopped turning\n")
        );
    }

    #[test]
    fn only_configs_with_a_uid_are_served() {
        let mut with_uid = GatewayConfig::new("demo/a", vec!["198.19.100.1/32".parse().unwrap()]);
        with_uid.uid = Some(UID.into());
        let no_uid = GatewayConfig::new("demo/c", vec!["198.19.101.1/32".parse().unwrap()]);
        let plan = CompiledPlan::new(&Plan {
            network_policies: Vec::new(),
            version: 1,
            configs: vec![with_uid, no_uid],
            bindings: Default::default(),
        })
        .unwrap();
        assert_eq!(ProbeState::serving_of(&plan, true), [UID.to_string()].into());
        assert!(ProbeState::serving_of(&plan, false).is_empty(), "a stuck worker serves nothing");
    }
}
