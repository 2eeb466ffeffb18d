//! The gateway as a library: a service team builds its own gateway binary with extra filters.
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn main() -> ExitCode {
//!     gateway::Gateway::builder()
//!         // .filter("tenant", my_plugin::TenantFilter::from_settings)
//!         .run()
//! }
//! ```
//!
//! The binary then accepts the same command line as `gateway` (`run --config F`,
//! `check --config F`), and config files may name the registered filters.

use std::process::ExitCode;

use filters::{FilterFactory, FilterRegistry};

/// Entry point of the library API.
#[derive(Debug)]
pub struct Gateway;

impl Gateway {
    /// A builder with the built-in filters registered.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            registry: FilterRegistry::with_builtins(),
            problems: Vec::new(),
        }
    }
}

/// Collects plugin filters, then runs the gateway command line.
#[derive(Debug)]
pub struct GatewayBuilder {
    registry: FilterRegistry,
    problems: Vec<String>,
}

impl GatewayBuilder {
    /// Registers a filter factory under `name`, the name config files use
    /// (`filter = "name"`). A name already taken (a built-in or an earlier plugin) is an error
    /// reported by [`GatewayBuilder::run`].
    pub fn filter(mut self, name: impl Into<String>, factory: impl FilterFactory) -> Self {
        if let Err(e) = self.registry.register(name, factory) {
            self.problems.push(e.to_string());
        }
        self
    }

    /// The filters registered so far.
    pub fn registry(&self) -> &FilterRegistry {
        &self.registry
    }

    /// Runs the gateway command line (`run` / `check`) with the process arguments.
    pub fn run(self) -> ExitCode {
        if !self.problems.is_empty() {
            for p in &self.problems {
                eprintln!("gateway: {p}");
            }
            return ExitCode::FAILURE;
        }
        crate::cli::main_with(&self.registry)
    }
}
