//! egret-gateway: the egress NAT gateway node service.
//!
//! ```text
//! egret-gateway --config gateway.toml        run until SIGINT/SIGTERM
//! egret-gateway check-config gateway.toml    validate settings and plan, then exit
//! ```

use egret_dataplane::gateway::{self, NodeConfig};
use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: egret-gateway --config FILE [--log-format text|json]\n       egret-gateway check-config FILE");
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
        let plan = cfg.plan_file.as_ref().expect("validated");
        return match gateway::load_plan(plan, 1) {
            Ok(p) => {
                println!(
                    "{}: ok — {} configs, {} egress addresses, {} bound pods; {} queue(s) on {}{}",
                    config.display(),
                    p.configs.len(),
                    p.egress.len(),
                    p.pods.len(),
                    cfg.interfaces.queues,
                    cfg.interfaces.inside,
                    cfg.interfaces
                        .outside
                        .as_deref()
                        .map(|o| format!(" and {o}"))
                        .unwrap_or_else(|| " (one-armed)".into())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("egret-gateway: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match gateway::run(cfg, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
