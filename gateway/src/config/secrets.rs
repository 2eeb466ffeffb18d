//! Secrets out of the config file: a string value may reference `${env:NAME}` (or
//! `${NAME}` for an uppercase variable name) and `${file:PATH}` (relative to the config file),
//! resolved at load, never logged or served. Served config text has secret-looking values
//! redacted.

use std::borrow::Cow;
use std::path::Path;

/// Resolves the references in `value`; the error names the reference, never a value. Other
/// `${...}` text (header templates such as `${client_ip}`) is left as written.
pub(crate) fn resolve<'a>(value: &'a str, base_dir: &Path) -> Result<Cow<'a, str>, String> {
    if !value.contains("${") {
        return Ok(Cow::Borrowed(value));
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut changed = false;
    while let Some(at) = rest.find("${") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let Some(end) = from.find('}') else {
            if from.starts_with("${env:") || from.starts_with("${file:") {
                return Err("a `${` reference has no closing `}`".into());
            }
            out.push_str(from);
            rest = "";
            break;
        };
        let reference = &from[2..end];
        if is_secret_reference(reference) {
            out.push_str(&lookup(reference, base_dir)?);
            changed = true;
        } else {
            out.push_str(&from[..=end]);
        }
        rest = &from[end + 1..];
    }
    out.push_str(rest);
    Ok(if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(value)
    })
}

/// `env:NAME`, `file:PATH`, or a bare environment-style `NAME` (uppercase letters, digits and
/// `_`, not starting with a digit); lowercase names are header-template placeholders.
fn is_secret_reference(r: &str) -> bool {
    if r.starts_with("env:") || r.starts_with("file:") {
        return true;
    }
    !r.is_empty()
        && !r.starts_with(|c: char| c.is_ascii_digit())
        && r.chars().any(|c| c.is_ascii_uppercase())
        && r.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn lookup(reference: &str, base_dir: &Path) -> Result<String, String> {
    if let Some(path) = reference.strip_prefix("file:") {
        let path = base_dir.join(path.trim());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("secret file `{}` cannot be read: {e}", path.display()))?;
        // One trailing newline is how files are written, not part of the secret.
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(format!("secret file `{}` is empty", path.display()));
        }
        return Ok(text.to_owned());
    }
    let name = reference.strip_prefix("env:").unwrap_or(reference).trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`${{{reference}}}` is not a usable reference; use ${{env:NAME}} or ${{file:PATH}}"
        ));
    }
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(format!("environment variable {name} is empty")),
        Err(_) => Err(format!("environment variable {name} is not set")),
    }
}

/// Resolves every string inside a TOML value (filter settings).
pub(crate) fn resolve_value(value: &mut toml::Value, base_dir: &Path) -> Result<(), String> {
    match value {
        toml::Value::String(s) => {
            if let Cow::Owned(r) = resolve(s, base_dir)? {
                *s = r;
            }
            Ok(())
        }
        toml::Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| resolve_value(v, base_dir)),
        toml::Value::Table(t) => t
            .iter_mut()
            .try_for_each(|(_, v)| resolve_value(v, base_dir)),
        _ => Ok(()),
    }
}

/// Whether a key names a secret: its value is redacted wherever config text is served.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "passwd",
        "private_key",
        "api_key",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The config text with every secret-looking value replaced by `"<redacted>"` (references
/// such as `${env:NAME}` are kept: they are not secrets). Text without inline secrets is
/// returned as written; text that does not parse is withheld entirely.
pub(crate) fn redact(text: &str) -> String {
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return "# <withheld: the document does not parse, so secrets cannot be redacted>\n"
            .to_owned();
    };
    fn hide(s: &mut String) -> bool {
        if is_reference(s) {
            return false;
        }
        *s = "<redacted>".to_owned();
        true
    }
    fn walk(t: &mut toml::Table) -> bool {
        let mut changed = false;
        for (k, v) in t.iter_mut() {
            match v {
                toml::Value::String(s) if is_secret_key(k) => changed |= hide(s),
                toml::Value::Table(inner) => changed |= walk(inner),
                toml::Value::Array(items) => {
                    for item in items {
                        match item {
                            toml::Value::Table(inner) => changed |= walk(inner),
                            toml::Value::String(s) if is_secret_key(k) => changed |= hide(s),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        changed
    }
    if !walk(&mut doc) {
        return text.to_owned();
    }
    let body = toml::to_string(&doc).unwrap_or_default();
    format!("# inline secrets redacted; keep them out of the file with ${{env:NAME}} or ${{file:PATH}}\n{body}")
}

fn is_reference(s: &str) -> bool {
    let s = s.trim();
    s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_file_references() {
        let dir = std::env::temp_dir().join(format!("gw-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tok"), "s3cret\n").expect("write");
        assert_eq!(resolve("${file:tok}", &dir).as_deref(), Ok("s3cret"));
        assert_eq!(resolve("plain", &dir).as_deref(), Ok("plain"));
        assert_eq!(
            resolve("ip=${client_ip} ${route}", &dir).as_deref(),
            Ok("ip=${client_ip} ${route}"),
            "header templates are not references"
        );
        let path = std::env::var("PATH").expect("PATH");
        assert_eq!(resolve("${env:PATH}", &dir).as_deref(), Ok(path.as_str()));
        assert_eq!(
            resolve("x-${PATH}-${route}", &dir).map(|c| c.len()),
            Ok(path.len() + 11)
        );
        let missing = resolve("${env:GATEWAY_TEST_SURELY_UNSET}", &dir);
        assert_eq!(
            missing,
            Err("environment variable GATEWAY_TEST_SURELY_UNSET is not set".into())
        );
        assert!(resolve("${file:nope}", &dir).is_err());
        assert!(resolve("${env:OPEN", &dir).is_err());
        assert!(resolve("${env:bad name}", &dir).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn redaction() {
        let text = r#"
[discovery.consul]
token = "consul-acl-secret"
[admin]
token = "${env:ADMIN}"
[[filters]]
filter = "jwt"
secret = "hmac-key"
issuer = "me"
"#;
        let out = redact(text);
        assert!(!out.contains("consul-acl-secret"), "{out}");
        assert!(!out.contains("hmac-key"), "{out}");
        assert!(out.contains("${env:ADMIN}"), "{out}");
        assert!(out.contains("issuer"), "{out}");
        assert!(redact("not = [toml").contains("withheld"));
    }
}
