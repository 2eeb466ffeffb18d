//! The `gateway` binary.

use std::process::ExitCode;

// pingora allocates per request and per connection; mimalloc measurably lowers CPU per request
// (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gateway::Gateway::builder().run()
}
