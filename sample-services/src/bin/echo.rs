//! `echo --listen 127.0.0.1:9001 --name echo-1`: the echo service (see `sample_services::echo`).

use std::net::SocketAddr;

use clap::Parser;
use discovery::consul::{Consul, ConsulConfig, Service};
use sample_services::echo::EchoServer;

#[derive(Debug, Parser)]
#[command(about = "HTTP/1.1 + h2c echo service")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Instance name, returned in every answer and in `x-echo-instance`.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Answer every request with this status (fault injection; see also `PUT /__fault`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(100..=599))]
    fail_status: Option<u16>,
    /// Wait this long before every answer (fault injection; 60000 makes it hang).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Serve at most this many requests at a time; the rest wait in line (an origin of fixed
    /// capacity, for overload benchmarks). Needs --service-ms.
    #[arg(long, requires = "service_ms")]
    capacity: Option<usize>,
    /// How long each request holds one of the --capacity workers.
    #[arg(long, requires = "capacity")]
    service_ms: Option<u64>,
    /// Register in Consul at this agent address (`CONSUL_HTTP_ADDR` works too) with an HTTP
    /// health check on `/health`; deregistered on SIGTERM / Ctrl-C.
    #[arg(long, env = "CONSUL_HTTP_ADDR")]
    consul: Option<String>,
    /// The service name to register as.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Tags to register with (repeat for several, e.g. `--tag canary`).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let server = EchoServer::bind(args.listen, args.name.clone()).await?;
    server.set_fault(
        args.fail_status,
        std::time::Duration::from_millis(args.delay_ms),
    );
    if let (Some(n), Some(ms)) = (args.capacity, args.service_ms) {
        server.set_capacity(n, std::time::Duration::from_millis(ms));
    }
    println!("echo `{}` listening on {}", args.name, server.addr());
    let registration = match &args.consul {
        Some(address) => {
            let service = args
                .tags
                .iter()
                .fold(Service::new(&args.service, server.addr()), |s, t| s.tag(t))
                .meta("instance", &args.name)
                .http_check("/health");
            let consul = ConsulConfig::with_address(address)
                .map(Consul::new)
                .map_err(std::io::Error::other)?;
            let registration = consul
                .register(service)
                .await
                .map_err(std::io::Error::other)?;
            println!(
                "registered as `{}` ({}) in Consul at {address}",
                args.service,
                registration.service().id
            );
            Some(registration)
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if let Some(r) = registration {
        if let Err(e) = r.deregister().await {
            eprintln!("could not deregister from Consul: {e}");
        }
    }
    server.stop();
    Ok(())
}
