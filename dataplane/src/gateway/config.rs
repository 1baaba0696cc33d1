//! `gateway.toml`: the node's settings, validated at load with errors that
//! name the file and the field; SIGHUP reloads what can change live.

use super::probe;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    /// Faces the pods (one-armed mode: the only interface).
    pub inside: String,
    /// Faces the internet; absent in one-armed mode.
    #[serde(default)]
    pub outside: Option<String>,
    /// Queues served on each interface: one worker per queue.
    #[serde(default = "one")]
    pub queues: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UmemSettings {
    #[serde(default = "default_frames")]
    pub frames: u32,
    #[serde(default = "default_frame_size")]
    pub frame_size: u32,
    #[serde(default = "default_ring")]
    pub ring: u32,
    /// The wait in an RX ring a standing queue is held to (see `rx_bound`:
    /// CoDel's drops above it, all beyond twice it, or beyond 16 times it
    /// for a queue of TCP's); 0: as long as the ring holds.
    #[serde(default = "default_rx_latency_budget_us")]
    pub rx_latency_budget_us: u32,
}

fn default_frames() -> u32 {
    8192
}
fn default_frame_size() -> u32 {
    4096
}
fn default_ring() -> u32 {
    2048
}
fn default_rx_latency_budget_us() -> u32 {
    250
}
/// A budget beyond this is no bound at all (the ring is shorter).
const MAX_RX_LATENCY_BUDGET_US: u32 = 100_000;

impl Default for UmemSettings {
    fn default() -> Self {
        UmemSettings {
            frames: default_frames(),
            frame_size: default_frame_size(),
            ring: default_ring(),
            rx_latency_budget_us: default_rx_latency_budget_us(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatLogSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub destinations: bool,
}

/// The NAT log over IPFIX to a collector (see `ipfix`); `[nat_log]`'s
/// `destinations` decides whether records carry the destination.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IpfixSettings {
    /// The collector's `ip:port` (UDP; IANA's IPFIX port is 4739).
    pub collector: std::net::SocketAddr,
    /// How often the template is sent again (RFC 7011 section 8.4: over UDP
    /// a collector that restarted learns it no other way).
    #[serde(default = "default_template_refresh_secs")]
    pub template_refresh_secs: u64,
    #[serde(default = "default_observation_domain")]
    pub observation_domain: u32,
}

fn default_template_refresh_secs() -> u64 {
    20
}
fn default_observation_domain() -> u32 {
    1
}

/// Subscribing to egret-control instead of reading a plan file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlSettings {
    /// `http://host:port`, or `https://host:port` with `ca`: one address
    /// (egret-control's Service), or the replicas' addresses as a list
    /// (kept here comma-separated). When a replica goes away the gateway
    /// subscribes to the next at once.
    #[serde(deserialize_with = "one_or_more_urls")]
    pub url: String,
    /// This gateway's node name (its Kubernetes Node).
    pub node: String,
    /// CA that signed the control plane's certificate (TLS).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This gateway's client certificate and key (mutual TLS).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// A file holding this gateway's bearer token for egret-control's
    /// `--gateway-auth=token`: the pod's projected ServiceAccount token
    /// (audience `egret-control`). Read again on every (re)connect, as the
    /// kubelet rotates it.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// A URL, or a list of URLs joined with commas.
fn one_or_more_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        More(Vec<String>),
    }
    Ok(match Urls::deserialize(d)? {
        Urls::One(u) => u,
        Urls::More(list) => list.join(","),
    })
}

impl ControlSettings {
    /// What `check-config` checks beyond the settings: the files they name
    /// exist and hold what they should (PEM for TLS, a token for
    /// `token_file`).
    pub fn check_files(&self) -> Result<(), String> {
        for (field, path) in [("control.ca", &self.ca), ("control.cert", &self.cert), ("control.key", &self.key)] {
            let Some(path) = path else { continue };
            match std::fs::read_to_string(path) {
                Ok(text) if text.contains("-----BEGIN ") => {}
                Ok(_) => return Err(format!("{field} = {}: not a PEM file", path.display())),
                Err(e) => return Err(format!("{field} = {}: {e}", path.display())),
            }
        }
        if let Some(path) = &self.token_file {
            let token = egret_api::client::read_token(path).map_err(|e| format!("control.token_file = {e}"))?;
            // A ServiceAccount token is a JWT: header.payload.signature.
            if token.split('.').count() != 3 || token.split('.').any(str::is_empty) {
                return Err(format!(
                    "control.token_file = {}: not a ServiceAccount token (a JWT: header.payload.signature)",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// Whether `url`'s host is this machine (a token may go there in the clear).
fn loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `gateway.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub interfaces: Interfaces,
    /// The gateway's inside address: the source of ICMP errors sent to pods.
    pub router_ip: Ipv4Addr,
    /// Worker cores, one per queue, in queue order; empty: no pinning.
    #[serde(default)]
    pub cores: Vec<usize>,
    #[serde(default)]
    pub umem: UmemSettings,
    /// Session capacity per worker.
    #[serde(default = "default_sessions")]
    pub sessions_per_worker: usize,
    /// The ports every egress address hands out, `"LO-HI"` (default
    /// 1024-65535), split among the workers: narrower to keep them clear of
    /// a range something else on the address uses.
    #[serde(default = "default_egress_ports", deserialize_with = "port_range")]
    pub egress_ports: (u16, u16),
    /// Manifests file or directory (standalone mode).
    #[serde(default)]
    pub plan_file: Option<PathBuf>,
    /// The control plane to subscribe to (instead of `plan_file`).
    #[serde(default)]
    pub control: Option<ControlSettings>,
    /// Where sessions are saved on stop and restored from on start.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Counters as JSON, rewritten every second.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    #[serde(default)]
    pub nat_log: NatLogSettings,
    /// Export the NAT log over IPFIX too (or instead: `[nat_log]` need not
    /// be enabled).
    #[serde(default)]
    pub ipfix: Option<IpfixSettings>,
    /// Prometheus `/metrics` listen address, e.g. "127.0.0.1:9464".
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The load balancer's health probe (kube-egress-gateway's: port
    /// 8082, `GET /gw/<config UID>`), e.g. "0.0.0.0:8082"; none: no probe
    /// and no drain.
    #[serde(default)]
    pub probe_address: Option<std::net::SocketAddr>,
    /// With a probe: seconds of answering 503 while still forwarding,
    /// after SIGTERM and before the workers stop.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
    /// How often sessions are saved to `state_file` while running (a
    /// `kill -9` loses at most the sessions opened since).
    #[serde(default = "default_snapshot_secs")]
    pub snapshot_interval_secs: u64,
}

fn default_drain_secs() -> u64 {
    probe::DEFAULT_DRAIN_SECS
}

fn default_snapshot_secs() -> u64 {
    10
}

fn default_egress_ports() -> (u16, u16) {
    (1024, 65535)
}

fn port_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    let s = String::deserialize(d)?;
    let bad = || serde::de::Error::custom(format!("egress_ports '{s}' must be \"LO-HI\" with 1 <= LO <= HI <= 65535"));
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?);
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn default_sessions() -> usize {
    1 << 20
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl NodeConfig {
    /// Reads and validates; errors name the file and the field.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let bad = |message: String| ConfigError::Invalid { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let c: NodeConfig =
            toml::from_str(&text).map_err(|e| bad(e.to_string().replace('\n', " ").trim().to_string()))?;
        if c.interfaces.queues == 0 || c.interfaces.queues > 64 {
            return Err(bad(format!("interfaces.queues = {} must be 1..=64", c.interfaces.queues)));
        }
        if !c.umem.frame_size.is_power_of_two() || !(2048..=4096).contains(&c.umem.frame_size) {
            return Err(bad(format!("umem.frame_size = {} must be 2048 or 4096", c.umem.frame_size)));
        }
        if !c.umem.ring.is_power_of_two() || c.umem.ring > c.umem.frames {
            return Err(bad(format!("umem.ring = {} must be a power of two no larger than umem.frames", c.umem.ring)));
        }
        if c.umem.rx_latency_budget_us > MAX_RX_LATENCY_BUDGET_US {
            return Err(bad(format!(
                "umem.rx_latency_budget_us = {} must be at most {MAX_RX_LATENCY_BUDGET_US} (0: no bound)",
                c.umem.rx_latency_budget_us
            )));
        }
        match (&c.plan_file, &c.control) {
            (None, None) => return Err(bad("plan_file is required when no [control] is configured".into())),
            (Some(_), Some(_)) => {
                return Err(bad("plan_file and [control] exclude each other: choose one plan source".into()))
            }
            _ => {}
        }
        if let Some(ctl) = &c.control {
            let urls = egret_api::client::split_endpoints(&ctl.url);
            if urls.is_empty() {
                return Err(bad("control.url must name egret-control (http://host:port)".into()));
            }
            for url in &urls {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad(format!("control.url '{url}' must start with http:// or https://")));
                }
                if url.starts_with("https://") && ctl.ca.is_none() {
                    return Err(bad("control.ca is required for an https:// control.url".into()));
                }
                if ctl.token_file.is_some() && url.starts_with("http://") && !loopback_url(url) {
                    return Err(bad(format!(
                        "control.token_file needs an https:// control.url (or a loopback one): '{url}' would send \
                         the token in the clear"
                    )));
                }
            }
            if ctl.node.is_empty() {
                return Err(bad("control.node must name this gateway's node".into()));
            }
            if ctl.cert.is_some() != ctl.key.is_some() {
                return Err(bad("control.cert and control.key go together (mutual TLS)".into()));
            }
        }
        if !c.cores.is_empty() && c.cores.len() < c.interfaces.queues as usize {
            return Err(bad(format!("cores lists {} cores for {} queues", c.cores.len(), c.interfaces.queues)));
        }
        if c.snapshot_interval_secs == 0 {
            return Err(bad("snapshot_interval_secs must be at least 1".into()));
        }
        if c.sessions_per_worker == 0 {
            return Err(bad("sessions_per_worker must be at least 1".into()));
        }
        let (lo, hi) = c.egress_ports;
        let per_worker = (u32::from(hi) - u32::from(lo) + 1) / c.interfaces.queues.max(1);
        if per_worker < MIN_PORTS_PER_WORKER {
            return Err(bad(format!(
                "egress_ports {lo}-{hi} leaves {per_worker} ports to each of {} workers; each needs at least {MIN_PORTS_PER_WORKER}",
                c.interfaces.queues
            )));
        }
        if c.ipfix.as_ref().is_some_and(|i| !(1..=3600).contains(&i.template_refresh_secs)) {
            return Err(bad("ipfix.template_refresh_secs must be 1..=3600".into()));
        }
        if c.drain_secs > 300 {
            return Err(bad(format!("drain_secs = {} must be at most 300", c.drain_secs)));
        }
        Ok(c)
    }

    pub(super) fn ifaces(&self) -> Vec<String> {
        let mut v = vec![self.interfaces.inside.clone()];
        v.extend(self.interfaces.outside.clone());
        v
    }
}

/// Egress ports a worker needs at least (its slice of `egress_ports`).
const MIN_PORTS_PER_WORKER: u32 = 16;

/// Settings that SIGHUP can change without a restart.
pub(super) fn reload_settings(path: &Path, cfg: &mut NodeConfig) {
    let new = match NodeConfig::load(path) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: settings not reloaded");
            return;
        }
    };
    if new.plan_file != cfg.plan_file {
        tracing::info!(plan_file = ?new.plan_file, "SIGHUP: plan file changed");
        cfg.plan_file = new.plan_file.clone();
    }
    if new.status_file != cfg.status_file || new.state_file != cfg.state_file {
        cfg.status_file = new.status_file.clone();
        cfg.state_file = new.state_file.clone();
        tracing::info!("SIGHUP: status and state file paths reloaded");
    }
    let restart: Vec<&str> = [
        ("interfaces", format!("{:?}", new.interfaces) != format!("{:?}", cfg.interfaces)),
        ("router_ip", new.router_ip != cfg.router_ip),
        ("cores", new.cores != cfg.cores),
        ("umem", format!("{:?}", new.umem) != format!("{:?}", cfg.umem)),
        ("sessions_per_worker", new.sessions_per_worker != cfg.sessions_per_worker),
        ("egress_ports", new.egress_ports != cfg.egress_ports),
        ("nat_log", format!("{:?}", new.nat_log) != format!("{:?}", cfg.nat_log)),
        ("ipfix", new.ipfix != cfg.ipfix),
        ("metrics_address", new.metrics_address != cfg.metrics_address),
        ("probe_address", new.probe_address != cfg.probe_address),
        ("snapshot_interval_secs", new.snapshot_interval_secs != cfg.snapshot_interval_secs),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    if !restart.is_empty() {
        tracing::warn!(fields = ?restart, "SIGHUP: these settings changed and need a restart to apply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `extra` appended to a minimal valid config.
    fn load_with(extra: &str) -> Result<NodeConfig, ConfigError> {
        // One file per call: tests run in parallel, and two extras of one
        // length once shared a name (one test removed the other's file).
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("egret-config-test-{}-{n}.toml", std::process::id()));
        let text = format!(
            "router_ip = \"198.18.0.1\"\nplan_file = \"/nonexistent/plan.yaml\"\n[interfaces]\ninside = \"gw-in\"\n{extra}"
        );
        std::fs::write(&path, text).unwrap();
        let c = NodeConfig::load(&path);
        let _ = std::fs::remove_file(&path);
        c
    }

    #[test]
    fn the_rx_latency_budget_defaults_to_250_us() {
        assert_eq!(load_with("").unwrap().umem.rx_latency_budget_us, 250);
        assert_eq!(load_with("[umem]\nrx_latency_budget_us = 0\n").unwrap().umem.rx_latency_budget_us, 0);
    }

    fn control(url: &str, token_file: &str) -> String {
        format!(
            "router_ip = \"198.18.0.1\"\n[interfaces]\ninside = \"gw-in\"\n[control]\nurl = \"{url}\"\nnode = \"gw-0\"\n\
             ca = \"/etc/egret/tls/ca.pem\"\ntoken_file = \"{token_file}\"\n"
        )
    }

    fn load_text(name: &str, text: &str) -> Result<NodeConfig, ConfigError> {
        let path = std::env::temp_dir().join(format!("egret-config-test-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let c = NodeConfig::load(&path);
        let _ = std::fs::remove_file(&path);
        c
    }

    #[test]
    fn a_token_file_is_read_from_control_and_never_sent_in_the_clear() {
        let c = load_text("token-https", &control("https://ctl:50051", "/run/token")).unwrap();
        assert_eq!(c.control.unwrap().token_file, Some(PathBuf::from("/run/token")));
        for url in ["http://127.0.0.1:50051", "http://localhost:50051", "http://[::1]:50051"] {
            assert!(load_text("token-loop", &control(url, "/run/token")).is_ok(), "{url}");
        }
        let e = load_text("token-http", &control("http://ctl:50051", "/run/token")).unwrap_err().to_string();
        assert!(e.contains("control.token_file needs an https:// control.url"), "{e}");
    }

    fn control_urls(urls: &str) -> String {
        format!(
            "router_ip = \"198.18.0.1\"\n[interfaces]\ninside = \"gw-in\"\n[control]\nurl = {urls}\nnode = \"gw-0\"\n"
        )
    }

    #[test]
    fn control_url_takes_the_replicas_as_a_list() {
        let c = load_text("urls", &control_urls(r#"["http://127.0.0.1:50051", "http://127.0.0.1:50052"]"#)).unwrap();
        let url = c.control.unwrap().url;
        assert_eq!(egret_api::client::split_endpoints(&url), ["http://127.0.0.1:50051", "http://127.0.0.1:50052"]);
        let e = load_text("urls-bad", &control_urls(r#"["http://a:1", "a:2"]"#)).unwrap_err().to_string();
        assert!(e.contains("control.url 'a:2' must start with http://"), "{e}");
        let e = load_text("urls-empty", &control_urls("[]")).unwrap_err().to_string();
        assert!(e.contains("control.url must name egret-control"), "{e}");
        let e = load_text("urls-tls", &control_urls(r#"["http://a:1", "https://b:2"]"#)).unwrap_err().to_string();
        assert!(e.contains("control.ca is required"), "{e}");
    }

    #[test]
    fn check_config_checks_the_token_file() {
        let dir = std::env::temp_dir().join(format!("egret-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let token = dir.join("token");
        let settings = ControlSettings {
            url: "https://ctl:50051".into(),
            node: "gw-0".into(),
            ca: Some(ca),
            cert: None,
            key: None,
            token_file: Some(token.clone()),
        };
        let e = settings.check_files().unwrap_err();
        assert!(e.starts_with("control.token_file = ") && e.contains("No such file"), "{e}");
        std::fs::write(&token, "\n").unwrap();
        assert!(settings.check_files().unwrap_err().contains("empty token file"));
        std::fs::write(&token, "not a jwt").unwrap();
        assert!(settings.check_files().unwrap_err().contains("not a token"));
        std::fs::write(&token, "opaque").unwrap();
        assert!(settings.check_files().unwrap_err().contains("not a ServiceAccount token"));
        std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiZWdyZXQtY29udHJvbCJdfQ.c2ln\n").unwrap();
        assert_eq!(settings.check_files(), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn with_egress_ports(ports: &str, queues: u32) -> Result<NodeConfig, ConfigError> {
        let text = format!(
            "router_ip = \"198.18.0.1\"\nplan_file = \"/nonexistent/plan.yaml\"\negress_ports = \"{ports}\"\n[interfaces]\ninside = \"gw-in\"\nqueues = {queues}\n"
        );
        load_text("egress-ports", &text)
    }

    #[test]
    fn egress_ports_narrow_the_range_each_address_hands_out() {
        assert_eq!(with_egress_ports("40000-40999", 2).unwrap().egress_ports, (40000, 40999));
        assert_eq!(load_with("").unwrap().egress_ports, (1024, 65535), "the default");
        for bad in ["40000", "0-100", "500-400", "1-70000", "a-b"] {
            let e = with_egress_ports(bad, 1).unwrap_err().to_string();
            assert!(e.contains(&format!("egress_ports '{bad}' must be \"LO-HI\"")), "{e}");
        }
        let e = with_egress_ports("40000-40030", 2).unwrap_err().to_string();
        assert!(
            e.contains("egress_ports 40000-40030 leaves 15 ports to each of 2 workers; each needs at least 16"),
            "{e}"
        );
    }

    #[test]
    fn an_rx_latency_budget_past_100_ms_is_refused_by_name() {
        let e = load_with("[umem]\nrx_latency_budget_us = 200000\n").unwrap_err().to_string();
        assert!(e.contains("umem.rx_latency_budget_us = 200000 must be at most 100000"), "{e}");
    }
}
