//! `play --listen 127.0.0.1:9103 --catalog 127.0.0.1:9101 --steering 127.0.0.1:9102`: the Play
//! service (see `sample_services::play`). With `--consul`, it registers there and finds
//! Catalog and Steering there too (passing instances only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use discovery::consul::{Consul, ConsulConfig, ConsulDiscovery};
use sample_services::play::{Backends, Guard, Play, PlayConfig};
use sample_services::service::{self, CommonArgs, Faults};

#[derive(Debug, Parser)]
#[command(about = "Play: POST /play turns a verified caller and a title into a playback manifest")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9103")]
    listen: SocketAddr,
    /// Catalog instances (repeatable; ignored with --consul, which discovers `catalog`).
    #[arg(long, default_value = "127.0.0.1:9101")]
    catalog: Vec<SocketAddr>,
    /// Steering instances (repeatable; ignored with --consul, which discovers `steering`).
    #[arg(long, default_value = "127.0.0.1:9102")]
    steering: Vec<SocketAddr>,
    /// Timeout of a Catalog call.
    #[arg(long, default_value_t = 500)]
    catalog_timeout_ms: u64,
    /// Timeout of a Steering call.
    #[arg(long, default_value_t = 300)]
    steering_timeout_ms: u64,
    /// Concurrent calls allowed to each dependency (bulkhead).
    #[arg(long, default_value_t = 64)]
    max_concurrent: usize,
    /// Servers the manifest lists when Steering cannot answer (repeatable).
    #[arg(long = "default-server", default_values_t = [
        "https://origin-1.cdn.example/".to_owned(),
        "https://origin-2.cdn.example/".to_owned(),
    ])]
    default_servers: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let _telemetry = sample_services::telemetry::init("play");
    let faults = args.common.faults().map_err(std::io::Error::other)?;
    let (catalog, steering) = match &args.common.consul {
        Some(address) => {
            let consul = ConsulConfig::with_address(address)
                .map(Consul::new)
                .map_err(std::io::Error::other)?;
            let discovery = ConsulDiscovery::new(consul);
            println!("finding catalog and steering in Consul at {address}");
            (
                Backends::discovered("catalog", &discovery).map_err(std::io::Error::other)?,
                Backends::discovered("steering", &discovery).map_err(std::io::Error::other)?,
            )
        }
        None => (
            Backends::fixed("catalog", args.catalog.clone()),
            Backends::fixed("steering", args.steering.clone()),
        ),
    };
    let play = Arc::new(Play::new(PlayConfig {
        catalog,
        steering,
        catalog_guard: Guard::new(
            "catalog",
            Duration::from_millis(args.catalog_timeout_ms),
            args.max_concurrent,
        ),
        steering_guard: Guard::new(
            "steering",
            Duration::from_millis(args.steering_timeout_ms),
            args.max_concurrent,
        ),
        default_servers: args.default_servers.clone(),
    }));
    let listener = service::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let instance = service::instance_name(&args.common, "play", addr);
    println!("play `{instance}` listening on {addr}");
    let router = service::with_basics(play.router(), Faults::new(faults), &instance);
    let registration = service::register(&args.common, "play", &instance, addr).await?;
    service::serve(listener, router, registration).await
}
