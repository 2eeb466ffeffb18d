//! `steering --listen 127.0.0.1:9102 --topology config/topology.toml`: the Steering gRPC
//! service (see `sample_services::steering`), with the standard gRPC health service, and
//! `/health` and `/__fault` over HTTP on the same port.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use sample_services::service::{self, CommonArgs, Faults};
use sample_services::steering::proto::steering_server::SteeringServer;
use sample_services::steering::{SteeringService, Topology};

#[derive(Debug, Parser)]
#[command(about = "Steering: ranked CDN servers for a client and a title, over gRPC")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9102")]
    listen: SocketAddr,
    /// The CDN topology.
    #[arg(long, default_value = "config/topology.toml")]
    topology: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let _telemetry = sample_services::telemetry::init("steering");
    let faults = args.common.faults().map_err(std::io::Error::other)?;
    let topology = Topology::load(&args.topology).map_err(std::io::Error::other)?;
    let servers = topology.servers.len();
    let listener = service::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let instance = service::instance_name(&args.common, "steering", addr);
    println!("steering `{instance}` listening on {addr} (gRPC, {servers} CDN servers)");

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SteeringServer<SteeringService>>()
        .await;
    let grpc = tonic::service::Routes::new(SteeringServer::new(SteeringService::new(topology)))
        .add_service(health_service)
        .into_axum_router();
    let router = service::with_basics(grpc, Faults::new(faults), &instance);
    let registration = service::register(&args.common, "steering", &instance, addr).await?;
    service::serve(listener, router, registration).await
}
