//! Validation of filter lists (`[[filters]]`, `[[routes.filters]]`): each entry names a
//! registered filter whose factory checks the settings and builds it once for this version.

use std::path::Path;

use filters::{FilterRegistry, FilterSettings, NamedFilter};
use toml::Spanned;

use crate::config::error::Issues;
use crate::config::raw::RawFilter;

/// Builds the filters of one list; `owner` names the list in messages (`global`,
/// ``route `api` ``).
pub(super) fn filter_list(
    raw: &[Spanned<RawFilter>],
    owner: &str,
    registry: &FilterRegistry,
    base_dir: &Path,
    issues: &mut Issues<'_>,
) -> Vec<NamedFilter> {
    let mut out = Vec::new();
    for entry in raw {
        let span = entry.span();
        let entry = entry.get_ref();
        let name = entry.iter().find(|(k, _)| k.get_ref() == "filter");
        let Some((name_key, name_value)) = name else {
            issues.at(
                span,
                format!("{owner} filter entry has no `filter` key"),
                format!(
                    "name the filter, e.g. filter = \"jwt\" (registered: {})",
                    registry.names().join(", ")
                ),
            );
            continue;
        };
        let Some(name) = name_value.get_ref().as_str() else {
            issues.at(
                name_value.span(),
                format!("{owner}: `filter` must be a string"),
                "write filter = \"NAME\"",
            );
            continue;
        };
        let mut table = toml::Table::new();
        let mut resolved = true;
        for (k, v) in entry.iter().filter(|(k, _)| k.get_ref() != "filter") {
            let mut value = v.get_ref().clone();
            if let Err(e) = crate::config::secrets::resolve_value(&mut value, base_dir) {
                issues.at(
                    v.span(),
                    format!("{owner} filter `{name}`, {}: {e}", k.get_ref()),
                    "set the variable or create the file the reference names",
                );
                resolved = false;
            }
            table.insert(k.get_ref().clone(), value);
        }
        if !resolved {
            continue;
        }
        // A digest, so that resolved secrets never sit in the fingerprint's text.
        let fingerprint = {
            use sha2::Digest;
            let text = format!("{owner}\u{1f}{}\u{1f}{name}\u{1f}{table}", out.len());
            let hash = sha2::Sha256::digest(text.as_bytes());
            hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let settings = FilterSettings::new(table, base_dir);
        match registry.build(name, &settings) {
            Ok(f) => out.push(f.with_fingerprint(fingerprint)),
            Err(e) => {
                let at = if !registry.contains(name) {
                    name_value.span()
                } else {
                    e.key
                        .as_deref()
                        .and_then(|key| entry.iter().find(|(k, _)| k.get_ref() == key))
                        .map_or_else(|| name_key.span(), |(k, _)| k.span())
                };
                issues.at(at, format!("{owner} filter `{name}`: {}", e.message), e.fix);
            }
        }
    }
    out
}
