//! The TOML shapes of the config file, as written by people. Unknown keys are rejected;
//! values that need a location in error messages are `Spanned`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) access_log: RawAccessLog,
    #[serde(default)]
    pub(crate) listeners: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub(crate) clusters: BTreeMap<Spanned<String>, Spanned<RawCluster>>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    /// Global filters, run before every route's own.
    #[serde(default)]
    pub(crate) filters: Vec<Spanned<RawFilter>>,
}

/// One `[[filters]]` / `[[routes.filters]]` entry: `filter = "NAME"` plus the filter's own
/// settings, kept with their positions so a bad setting is reported at its line.
pub(crate) type RawFilter = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) threads: Option<Spanned<i64>>,
    pub(crate) work_stealing: Option<bool>,
    pub(crate) grace_period_seconds: Option<Spanned<i64>>,
    pub(crate) graceful_shutdown_timeout_seconds: Option<Spanned<i64>>,
    pub(crate) upstream_keepalive_pool_size: Option<Spanned<i64>>,
    pub(crate) via: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) address: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub(crate) enabled: Option<bool>,
    pub(crate) format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) address: Spanned<String>,
    #[serde(default)]
    pub(crate) h2c: bool,
    pub(crate) tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    #[serde(default)]
    /// `"IP:PORT"` strings or `{ address, weight }` tables, interpreted in validation so that
    /// a bad entry gets a specific message rather than serde's "no variant matched".
    pub(crate) endpoints: Vec<Spanned<toml::Value>>,
    pub(crate) load_balancing: Option<Spanned<String>>,
    pub(crate) hash_key: Option<Spanned<String>>,
    pub(crate) protocol: Option<Spanned<String>>,
    pub(crate) connect_timeout_ms: Option<Spanned<i64>>,
    pub(crate) read_timeout_ms: Option<Spanned<i64>>,
    pub(crate) write_timeout_ms: Option<Spanned<i64>>,
    pub(crate) idle_timeout_ms: Option<Spanned<i64>>,
    pub(crate) max_h2_streams: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: Spanned<String>,
    pub(crate) cluster: Spanned<String>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_exact: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    pub(crate) path_template: Option<Spanned<String>>,
    pub(crate) methods: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) headers: Vec<Spanned<RawHeaderMatch>>,
    pub(crate) prefix_rewrite: Option<Spanned<String>>,
    pub(crate) rewrite: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) filters: Vec<Spanned<RawFilter>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderMatch {
    pub(crate) name: String,
    pub(crate) value: Option<String>,
}
