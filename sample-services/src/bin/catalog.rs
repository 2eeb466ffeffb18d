//! `catalog --listen 127.0.0.1:9101 --data config/catalog.json`: the Catalog service (see
//! `sample_services::catalog`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use sample_services::catalog::{self, Catalog};
use sample_services::service::{self, CommonArgs, Faults};

#[derive(Debug, Parser)]
#[command(about = "Catalog: titles, licences and plans over HTTP/JSON")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: SocketAddr,
    /// The catalog data.
    #[arg(long, default_value = "config/catalog.json")]
    data: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let _telemetry = sample_services::telemetry::init("catalog");
    let faults = args.common.faults().map_err(std::io::Error::other)?;
    let data = Catalog::load(&args.data).map_err(std::io::Error::other)?;
    let listener = service::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let instance = service::instance_name(&args.common, "catalog", addr);
    println!(
        "catalog `{instance}` listening on {addr} ({} titles)",
        data.len()
    );
    let router = service::with_basics(
        catalog::router(Arc::new(data)),
        Faults::new(faults),
        &instance,
    );
    let registration = service::register(&args.common, "catalog", &instance, addr).await?;
    service::serve(listener, router, registration).await
}
