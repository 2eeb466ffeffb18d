//! Bench-only: `bare_pingora` with the system allocator, to measure what mimalloc buys.

include!("common/bare.rs");

fn main() {
    run();
}
