//! The forward guard: gateway nodes forward (`net.ipv4.ip_forward=1`, as
//! every Kubernetes node does), so traffic Egret does not take — an unbound
//! pod's SYN, say — would otherwise be routed out by the kernel
//! untranslated. A netfilter forward-hook rule drops what arrives on one of
//! Egret's interfaces and would leave by one of them, unless kube-proxy
//! DNATed it (a LoadBalancer or external IP on this node is still served).
//! Netfilter rather than XDP because only netfilter sees the DNAT; Egret's
//! own traffic is redirected by XDP before it and never meets this rule.
//!
//! The table outlives the gateway process, stop or crash alike: while the
//! gateway restarts, nothing leaks either (pods' flows wait and resume).
//! The next start replaces it; `egret-gateway remove-guard` removes it when
//! Egret is taken off the node.

use std::io::Write;
use std::process::{Command, Stdio};

const TABLE: &str = "egret_guard";

pub struct ForwardGuard;

/// Whether this network namespace forwards IPv4.
pub fn forwarding_on() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|s| s.trim() == "1")
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("interface name '{0}' cannot be used in a netfilter rule")]
    BadInterfaceName(String),
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft {command}: {stderr}")]
    Refused { command: String, stderr: String },
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, GuardError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuardError::Spawn)?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes()).map_err(GuardError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(GuardError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(GuardError::Refused { command: args.join(" "), stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rules for these interfaces (names are checked by the caller's
/// settings to be interface names: no quotes or spaces).
fn ruleset(ifaces: &[String]) -> String {
    let set = ifaces.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "table ip {TABLE} {{\n  counter refused {{}}\n  chain forward {{\n    type filter hook forward priority filter - 10; policy accept;\n    iifname {{ {set} }} oifname {{ {set} }} ct status dnat accept\n    iifname {{ {set} }} oifname {{ {set} }} counter name refused drop\n  }}\n}}\n"
    )
}

impl ForwardGuard {
    /// Installs (or replaces) the guard for Egret's interfaces.
    pub fn install(ifaces: &[String]) -> Result<ForwardGuard, GuardError> {
        if let Some(bad) = ifaces.iter().find(|i| !i.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.@".contains(&c)))
        {
            return Err(GuardError::BadInterfaceName(bad.clone()));
        }
        let _ = nft(&["delete", "table", "ip", TABLE], None);
        nft(&["-f", "-"], Some(&ruleset(ifaces)))?;
        Ok(ForwardGuard)
    }

    /// Removes the guard (Egret leaves the node); Ok when there was none.
    pub fn remove() -> Result<bool, GuardError> {
        match nft(&["list", "table", "ip", TABLE], None) {
            Ok(_) => nft(&["delete", "table", "ip", TABLE], None).map(|_| true),
            Err(_) => Ok(false),
        }
    }

    /// Packets refused so far (what the kernel would have forwarded
    /// untranslated).
    pub fn refused(&self) -> Option<u64> {
        let out = nft(&["-j", "list", "counter", "ip", TABLE, "refused"], None).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["nftables"].as_array()?.iter().find_map(|o| o["counter"]["packets"].as_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_accepts_dnat_then_drops_between_egret_interfaces() {
        let r = ruleset(&["gw-in".into(), "gw-out".into()]);
        let accept = r.find("ct status dnat accept").unwrap();
        let drop = r.find("counter name refused drop").unwrap();
        assert!(accept < drop, "DNAT'ed service traffic is accepted before the drop");
        assert!(r.contains("iifname { \"gw-in\", \"gw-out\" } oifname { \"gw-in\", \"gw-out\" }"));
        assert!(r.contains("hook forward"));
    }
}
