//! egret-gateway: the egress NAT gateway node service.
//!
//! ```text
//! egret-gateway --config gateway.toml        run until SIGINT/SIGTERM
//! egret-gateway check-config gateway.toml    validate settings and plan, then exit
//! egret-gateway remove-guard                 remove the forward guard (Egret leaves the node)
//! ```

use egret_dataplane::gateway::{self, NodeConfig};
use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: egret-gateway --config FILE [--log-format text|json]\n       egret-gateway check-config FILE\n       egret-gateway remove-guard"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = None;
    let mut check = false;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => config = it.next().map(PathBuf::from),
            "check-config" => {
                check = true;
                config = it.next().map(PathBuf::from);
            }
            "remove-guard" => {
                return match gateway::forward_guard::ForwardGuard::remove() {
                    Ok(true) => {
                        println!("forward guard removed");
                        ExitCode::SUCCESS
                    }
                    Ok(false) => {
                        println!("no forward guard installed");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("egret-gateway: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            "--log-format" => json = it.next().map(String::as_str) == Some("json"),
            "-h" | "--help" => return usage(),
            other => {
                eprintln!("egret-gateway: unknown argument '{other}'");
                return usage();
            }
        }
    }
    let Some(config) = config else { return usage() };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let cfg = match NodeConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("egret-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    if check {
        return check_config(&cfg, &config);
    }
    match gateway::run(cfg, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: the settings were validated on load; this checks what
/// they point to (the plan file, or the control plane's TLS material).
fn check_config(cfg: &NodeConfig, config: &std::path::Path) -> ExitCode {
    let queues = format!(
        "{} queue(s) on {}{}",
        cfg.interfaces.queues,
        cfg.interfaces.inside,
        cfg.interfaces.outside.as_deref().map(|o| format!(" and {o}")).unwrap_or_else(|| " (one-armed)".into())
    );
    let Some(plan) = cfg.plan_file.as_ref() else {
        // NodeConfig::load guarantees one plan source: here, [control].
        let Some(ctl) = cfg.control.as_ref() else { return usage() };
        for (field, path) in [("control.ca", &ctl.ca), ("control.cert", &ctl.cert), ("control.key", &ctl.key)] {
            let Some(path) = path else { continue };
            match std::fs::read_to_string(path) {
                Ok(text) if text.contains("-----BEGIN ") => {}
                Ok(_) => {
                    eprintln!("egret-gateway: {field} = {}: not a PEM file", path.display());
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("egret-gateway: {field} = {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        println!("{}: ok — plan from {} as node {}; {queues}", config.display(), ctl.url, ctl.node);
        return ExitCode::SUCCESS;
    };
    match gateway::load_plan(plan, 1) {
        Ok(p) => {
            println!(
                "{}: ok — {} configs, {} egress addresses, {} bound pods; {queues}",
                config.display(),
                p.configs.len(),
                p.egress.len(),
                p.pods.len(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egret-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
