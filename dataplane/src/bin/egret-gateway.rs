//! egret-gateway: the egress NAT gateway node service.
//!
//! ```text
//! egret-gateway --config gateway.toml        run until SIGINT/SIGTERM
//! egret-gateway check-config gateway.toml    validate settings and plan, then exit
//! egret-gateway remove-guard                 remove the forward guard (Egret leaves the node)
//! ```

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use egret_dataplane::gateway::{self, NodeConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "egret-gateway", version, about = "The Egret egress NAT gateway node service")]
struct Cli {
    /// The node's settings (gateway.toml); runs until SIGINT or SIGTERM.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log lines as text or as JSON records.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the settings and what they point to (the plan, TLS files), then exit.
    CheckConfig { file: PathBuf },
    /// Remove the forward guard (Egret leaves the node).
    RemoveGuard,
}

fn main() -> ExitCode {
    abort_on_panic();
    let cli = Cli::parse();
    let (config, check) = match cli.command {
        Some(Command::RemoveGuard) => return remove_guard(),
        Some(Command::CheckConfig { file }) => (file, true),
        None => match cli.config {
            Some(c) => (c, false),
            None => Cli::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, "--config FILE is required to run")
                .exit(),
        },
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
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
            // One line, the one a crash-looping pod shows: what failed and,
            // where a capability is missing, which.
            match e.capability_hint() {
                Some(hint) => eprintln!("egret-gateway: {e}: {hint}"),
                None => eprintln!("egret-gateway: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// A panic anywhere ends the process, after the usual message: a worker
/// thread that died alone would leave its queue's traffic dropped with
/// the process still up, and nothing would restart it. Ended, systemd (or
/// the DaemonSet) restarts it, its sessions restored from the state file,
/// and the XDP program goes with it (bpf_link). The release profile sets
/// `panic = "abort"` as well; this covers every build.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("egret-gateway: a thread panicked; aborting so that the service restarts");
        std::process::abort();
    }));
}

fn remove_guard() -> ExitCode {
    match gateway::forward_guard::ForwardGuard::remove() {
        Ok(true) => println!("forward guard removed"),
        Ok(false) => println!("no forward guard installed"),
        Err(e) => {
            eprintln!("egret-gateway: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `check-config`: the settings were validated on load; this checks what
/// they point to (the plan file, or the control plane's TLS material and
/// token file).
fn check_config(cfg: &NodeConfig, config: &std::path::Path) -> ExitCode {
    let queues = format!(
        "{} queue(s) on {}{}",
        cfg.interfaces.queues,
        cfg.interfaces.inside,
        cfg.interfaces.outside.as_deref().map(|o| format!(" and {o}")).unwrap_or_else(|| " (one-armed)".into())
    );
    let Some(plan) = cfg.plan_file.as_ref() else {
        // NodeConfig::load guarantees one plan source: here, [control].
        let Some(ctl) = cfg.control.as_ref() else { return ExitCode::FAILURE };
        if let Err(e) = ctl.check_files() {
            eprintln!("egret-gateway: {e}");
            return ExitCode::FAILURE;
        }
        println!("{}: ok — plan from {} as node {}; {queues}", config.display(), ctl.url, ctl.node);
        return ExitCode::SUCCESS;
    };
    match gateway::load_plan(plan, 1) {
        Ok((p, _)) => {
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
