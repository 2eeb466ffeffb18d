//! ACME's gateway: the stock gateway plus the `tenant` filter. Same command line as `gateway`:
//! `acme-gateway run --config FILE`, `acme-gateway check --config FILE`.

use std::process::ExitCode;

fn main() -> ExitCode {
    gateway::Gateway::builder()
        .filter("tenant", tenant_filter::TenantFilter::from_settings)
        .run()
}
