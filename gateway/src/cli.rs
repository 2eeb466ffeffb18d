//! The `gateway` command line: `gateway run --config FILE` serves, `gateway check --config FILE`
//! validates (like `nginx -t`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use filters::FilterRegistry;

use crate::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Programmable edge API gateway on pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Developer machine only: accept the published development keys in config/dev-keys
    /// (anyone can sign tokens with them). Never in production.
    #[arg(long, global = true, env = "GATEWAY_DEV", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    dev: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic with a config file.
    Run {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the listening sockets of the running gateway (zero-downtime binary
        /// upgrade or listener change): it is sent SIGQUIT when `[server] pid_file` is set,
        /// hands its sockets over through `[server] upgrade_sock`, drains and exits.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config file and exit: 0 when valid, 1 with every problem listed otherwise.
    Check {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

/// Runs the CLI with the process arguments; config files may name the filters in `registry`.
pub(crate) fn main_with(registry: &FilterRegistry) -> ExitCode {
    let cli = Cli::parse();
    let mut registry = registry.clone();
    registry.set_dev_mode(cli.dev);
    let registry = &registry;
    if cli.dev {
        eprintln!(
            "gateway: dev mode: the development keys in config/dev-keys are accepted; never use --dev in production"
        );
    }
    match cli.command {
        Command::Check { config } => match Config::load_with(&config, registry) {
            Ok(c) => {
                let filters =
                    c.filters.len() + c.routes.iter().map(|r| r.filters.len()).sum::<usize>();
                let from_consul = c
                    .clusters
                    .iter()
                    .filter(|s| matches!(s.endpoints, crate::config::EndpointSource::Consul(_)))
                    .count();
                let consul = match &c.consul {
                    Some(k) if from_consul > 0 => {
                        format!("; {from_consul} from Consul at {}", k.address)
                    }
                    _ => String::new(),
                };
                println!(
                    "{}: ok ({} listeners, {} clusters, {} routes, {} filters{consul})",
                    config.display(),
                    c.listeners.len(),
                    c.clusters.len(),
                    c.routes.len(),
                    filters
                );
                for w in c.warnings() {
                    eprintln!("{}: warning: {w}", config.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, upgrade } => {
            let loaded = std::fs::read_to_string(&config)
                .map_err(|e| crate::config::ConfigError::io(&config, &e).to_string())
                .and_then(|text| {
                    Config::parse_with(&text, &config, registry)
                        .map(|c| (c, text))
                        .map_err(|e| e.to_string())
                });
            let (cfg, text) = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let guards = Mutex::new(vec![init_logging(cfg.access_log.format)]);
            crate::access_log::install(cfg.access_log.format);
            // Trace export, when the OTEL_* environment asks for it (off by default).
            let tracing_provider = match crate::telemetry::init_from_env("gateway") {
                Ok(Some(p)) => {
                    tracing::info!("trace export on (OTLP/HTTP, configured by OTEL_* variables)");
                    Some(p)
                }
                Ok(None) => None,
                Err(e) => {
                    eprintln!("gateway: tracing: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let flush = Box::new(move || {
                crate::access_log::flush();
                if let Some(p) = &tracing_provider {
                    if let Err(e) = p.shutdown() {
                        tracing::warn!(error = %e, "could not send the last spans");
                    }
                }
                if let Ok(mut g) = guards.lock() {
                    g.clear();
                }
            });
            match crate::server::run(cfg, &config, &text, registry.clone(), upgrade, Some(flush)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs (access log included) go to stdout through a background writer so a slow reader never
/// stalls a proxy thread. `RUST_LOG` overrides the default `info` level.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::io::stdout(),
    ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    guard
}
