//! `egret-gateway check-config` as an operator runs it: exit status and the
//! line it prints, for each plan source.

use std::path::PathBuf;
use std::process::Command;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("egret-check-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_egret-gateway")).arg("check-config").arg(path).output().unwrap()
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[test]
fn a_control_plane_config_is_accepted_without_a_plan_file() {
    let d = dir("control");
    for f in ["ca.pem", "node.pem", "node-key.pem"] {
        std::fs::write(d.join(f), PEM).unwrap();
    }
    let toml = format!(
        "router_ip = \"198.18.0.1\"\n[interfaces]\ninside = \"eth0\"\n[control]\nurl = \"https://egret-control:50051\"\nnode = \"gw-0\"\nca = \"{0}/ca.pem\"\ncert = \"{0}/node.pem\"\nkey = \"{0}/node-key.pem\"\n",
        d.display()
    );
    std::fs::write(d.join("gateway.toml"), toml).unwrap();
    let out = check(&d.join("gateway.toml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("plan from https://egret-control:50051 as node gw-0"), "{stdout}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_missing_tls_file_is_named_and_fails() {
    let d = dir("missing");
    let toml = format!(
        "router_ip = \"198.18.0.1\"\n[interfaces]\ninside = \"eth0\"\n[control]\nurl = \"https://egret-control:50051\"\nnode = \"gw-0\"\nca = \"{}/absent.pem\"\n",
        d.display()
    );
    std::fs::write(d.join("gateway.toml"), toml).unwrap();
    let out = check(&d.join("gateway.toml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("control.ca"));
    std::fs::remove_dir_all(d).unwrap();
}
