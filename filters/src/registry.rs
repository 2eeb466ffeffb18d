//! Filter factories by name, and the settings a config file gives them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Filter, FilterServices, NamedFilter};

/// Why a filter's settings were refused; the config loader adds the file, line and route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterConfigError {
    /// The settings key at fault, when one is (the loader then points at its line).
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl FilterConfigError {
    /// A problem with the filter's settings as a whole.
    pub fn new(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: None,
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// A problem with one settings key.
    pub fn at_key(key: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: Some(key.to_owned()),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// The settings of one filter entry in the config (every key except `filter`), plus where the
/// config file lives so that relative file paths resolve against it.
#[derive(Debug, Clone, Default)]
pub struct FilterSettings {
    table: toml::Table,
    base_dir: PathBuf,
    dev_mode: bool,
    owner: String,
    services: FilterServices,
}

impl FilterSettings {
    /// Settings from a TOML table; relative paths resolve against `base_dir`.
    pub fn new(table: toml::Table, base_dir: impl Into<PathBuf>) -> Self {
        Self {
            table,
            base_dir: base_dir.into(),
            dev_mode: false,
            owner: String::new(),
            services: FilterServices::default(),
        }
    }

    /// The same settings, for a filter owned by `owner` (`global`, or a route's name).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Who the filter belongs to: `global`, a route's name, or empty when unknown.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The same settings, with the services the host gateway offers.
    pub fn with_services(mut self, services: FilterServices) -> Self {
        self.services = services;
        self
    }

    /// The services the host gateway offers (a limit store, the fleet, observers).
    pub fn services(&self) -> &FilterServices {
        &self.services
    }

    /// The same settings, built on a developer machine (`gateway --dev`) or not.
    pub fn with_dev_mode(mut self, dev_mode: bool) -> Self {
        self.dev_mode = dev_mode;
        self
    }

    /// Whether the gateway runs in dev mode (`gateway --dev`): filters may then accept what
    /// must never be trusted in production, such as the published development keys.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Settings parsed from TOML text (for tests and programmatic use).
    pub fn from_toml(text: &str) -> Result<Self, FilterConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            FilterConfigError::new(e.message().to_owned(), "fix the TOML syntax")
        })?;
        Ok(Self::new(table, "."))
    }

    /// Deserializes the settings into a filter's own settings type. Use
    /// `#[serde(deny_unknown_fields)]` on it so misspelt keys are reported.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, FilterConfigError> {
        T::deserialize(toml::Value::Table(self.table.clone())).map_err(|e| {
            FilterConfigError::new(
                e.message().trim().to_owned(),
                "see the filter's settings in README.md (Filters)",
            )
        })
    }

    /// The raw settings table.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// `path` resolved against the config file's directory when relative.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// Builds a filter from its settings: validates everything once, at config load, so the
/// request path never parses or looks up by name.
///
/// Any `Fn(&FilterSettings) -> Result<F, FilterConfigError>` where `F: Filter` is a factory, so
/// a plugin usually registers `MyFilter::from_settings`.
pub trait FilterFactory: Send + Sync + 'static {
    /// Validates `settings` and builds the filter (once per config version).
    fn build(&self, settings: &FilterSettings) -> Result<Arc<dyn Filter>, FilterConfigError>;
}

impl<F, T> FilterFactory for F
where
    F: Fn(&FilterSettings) -> Result<T, FilterConfigError> + Send + Sync + 'static,
    T: Filter,
{
    fn build(&self, settings: &FilterSettings) -> Result<Arc<dyn Filter>, FilterConfigError> {
        Ok(Arc::new(self(settings)?))
    }
}

/// A second factory was registered under a name already taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a filter named `{0}` is already registered; choose another name for the plugin")]
pub struct DuplicateFilter(pub String);

/// Filter factories by the name config files use.
#[derive(Clone, Default)]
pub struct FilterRegistry {
    factories: BTreeMap<String, Arc<dyn FilterFactory>>,
    dev_mode: bool,
    services: FilterServices,
}

impl fmt::Debug for FilterRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterRegistry")
            .field("filters", &self.factories.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl FilterRegistry {
    /// A registry with no filters.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry with the built-in filters (see [`crate::builtin`]).
    pub fn with_builtins() -> Self {
        let mut r = Self::empty();
        crate::builtin::register_all(&mut r);
        r
    }

    /// Registers `factory` under `name`; a name can be registered once.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        factory: impl FilterFactory,
    ) -> Result<(), DuplicateFilter> {
        let name = name.into();
        if self.factories.contains_key(&name) {
            return Err(DuplicateFilter(name));
        }
        self.factories.insert(name, Arc::new(factory));
        Ok(())
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// Builds the filter registered as `name`.
    pub fn build(
        &self,
        name: &str,
        settings: &FilterSettings,
    ) -> Result<NamedFilter, FilterConfigError> {
        let (key, factory) = self.factories.get_key_value(name).ok_or_else(|| {
            FilterConfigError::new(
                format!("unknown filter `{name}`"),
                format!(
                    "use one of the registered filters: {}",
                    self.names().join(", ")
                ),
            )
        })?;
        let settings = settings
            .clone()
            .with_dev_mode(self.dev_mode)
            .with_services(self.services.clone());
        Ok(NamedFilter::new(key.as_str(), factory.build(&settings)?))
    }

    /// Dev mode (`gateway --dev`): the filters this registry builds see
    /// [`FilterSettings::dev_mode`].
    pub fn set_dev_mode(&mut self, dev_mode: bool) {
        self.dev_mode = dev_mode;
    }

    /// Whether dev mode is on.
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// The services the filters this registry builds see ([`FilterSettings::services`]).
    pub fn set_services(&mut self, services: FilterServices) {
        self.services = services;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        greeting: String,
    }

    #[derive(Debug)]
    struct Hello(#[allow(dead_code)] String);

    impl Filter for Hello {}

    fn hello(s: &FilterSettings) -> Result<Hello, FilterConfigError> {
        let settings: Settings = s.parse()?;
        if settings.greeting.is_empty() {
            return Err(FilterConfigError::at_key(
                "greeting",
                "greeting is empty",
                "say something",
            ));
        }
        Ok(Hello(settings.greeting))
    }

    #[test]
    fn factories_validate_settings() {
        let mut r = FilterRegistry::empty();
        r.register("hello", hello).expect("first registration");
        assert_eq!(
            r.register("hello", hello),
            Err(DuplicateFilter("hello".into()))
        );
        let ok = FilterSettings::from_toml("greeting = \"hi\"").expect("toml");
        assert_eq!(&*r.build("hello", &ok).expect("builds").name, "hello");

        let empty = FilterSettings::from_toml("greeting = \"\"").expect("toml");
        let e = r.build("hello", &empty).expect_err("refused");
        assert_eq!(e.key.as_deref(), Some("greeting"));

        let typo = FilterSettings::from_toml("greting = \"hi\"").expect("toml");
        let e = r.build("hello", &typo).expect_err("refused");
        assert!(e.message.contains("unknown field `greting`"), "{e}");

        let e = r.build("nope", &ok).expect_err("unknown");
        assert!(e.message.contains("unknown filter `nope`"));
        assert!(e.fix.contains("hello"));
    }

    #[test]
    fn builtins_are_registered() {
        let r = FilterRegistry::with_builtins();
        for name in [
            "jwt",
            "rate_limit",
            "headers",
            "request_id",
            "cors",
            "ip_filter",
            "body_limit",
        ] {
            assert!(r.contains(name), "{name}");
        }
    }
}
