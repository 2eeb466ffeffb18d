//! Bench-only: the engine's ceiling. A pingora proxy whose `ProxyHttp` only picks the peer
//! (one fixed upstream), with the gateway's engine settings: mimalloc, `work_stealing` only
//! when `threads > 1`, a 1024-connection upstream pool.
//!
//! `bare_pingora LISTEN UPSTREAM [THREADS]`, e.g. `bare_pingora 127.0.0.1:8081 127.0.0.1:9000 1`.
//! `bare_pingora_sysalloc` is the same with the system allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

include!("common/bare.rs");

fn main() {
    run();
}
