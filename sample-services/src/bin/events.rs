//! `events --listen 127.0.0.1:9104 --redis redis://127.0.0.1:6379`: the Events service (see
//! `sample_services::events`).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use sample_services::events::{self, EventStore};
use sample_services::service::{self, CommonArgs, Faults};

#[derive(Debug, Parser)]
#[command(about = "Events: playback events (start, stop, heartbeat) appended to a Redis stream")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9104")]
    listen: SocketAddr,
    /// The Redis the stream lives in.
    #[arg(long, env = "EVENTS_REDIS", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The stream's key.
    #[arg(long, default_value = "playback-events")]
    stream: String,
    /// Keep the stream near this many entries (XADD MAXLEN ~).
    #[arg(long, default_value_t = 100_000)]
    max_len: u64,
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let _telemetry = sample_services::telemetry::init("events");
    let faults = args.common.faults().map_err(std::io::Error::other)?;
    let store =
        EventStore::new(&args.redis, &args.stream, args.max_len).map_err(std::io::Error::other)?;
    let listener = service::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let instance = service::instance_name(&args.common, "events", addr);
    println!(
        "events `{instance}` listening on {addr} (stream `{}` on {}; answers 503 while Redis is away)",
        args.stream, args.redis
    );
    let router = service::with_basics(
        events::router(Arc::new(store)),
        Faults::new(faults),
        &instance,
    );
    let registration = service::register(&args.common, "events", &instance, addr).await?;
    service::serve(listener, router, registration).await
}
