//! Path rewrites: replace a matched prefix, or build a new path from template parameters.

use std::fmt::Write as _;

use super::path::{PathTemplate, TemplateError};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

/// How a route changes the path before the request goes upstream. The query string is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Replace the route's matched prefix `from` with `to` (`to = ""` strips it).
    Prefix {
        /// The route's prefix.
        from: String,
        /// Its replacement.
        to: String,
    },
    /// Build the path from a template whose `{name}`s are the route template's parameters.
    Template {
        /// The route's path template (to capture parameters).
        source: PathTemplate,
        /// The new path's parts.
        target: Vec<RewritePart>,
    },
    /// Replace the path with a fixed one (for exact-path routes).
    Fixed(String),
}

/// One part of a rewrite target (opaque; built by [`Rewrite::template`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RewritePart(Part);

impl Rewrite {
    /// A template rewrite: `target` like `/v1/titles/{id}` whose names `source` defines.
    pub(crate) fn template(source: PathTemplate, target: &str) -> Result<Self, TemplateError> {
        if !target.starts_with('/') {
            return Err(TemplateError(format!(
                "rewrite `{target}` must start with `/`"
            )));
        }
        let mut parts = Vec::new();
        let mut rest = target;
        while let Some(open) = rest.find('{') {
            let (lit, after) = rest.split_at(open);
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError(format!("rewrite `{target}` has an unclosed `{{`")))?;
            let name = after
                .get(1..close)
                .unwrap_or_default()
                .trim_start_matches('*');
            if !source.has_param(name) {
                return Err(TemplateError(format!(
                    "rewrite `{target}` uses `{{{name}}}`, which path_template `{}` does not define",
                    source.as_str()
                )));
            }
            if !lit.is_empty() {
                parts.push(RewritePart(Part::Literal(lit.to_owned())));
            }
            parts.push(RewritePart(Part::Param(name.to_owned())));
            rest = after.get(close + 1..).unwrap_or_default();
        }
        if rest.contains('}') {
            return Err(TemplateError(format!(
                "rewrite `{target}` has a stray `}}`"
            )));
        }
        if !rest.is_empty() {
            parts.push(RewritePart(Part::Literal(rest.to_owned())));
        }
        Ok(Self::Template {
            source,
            target: parts,
        })
    }

    /// The rewritten path-and-query, or `None` when the path does not fit the route (cannot
    /// happen for a path the route matched).
    pub(crate) fn apply(&self, path: &str, query: Option<&str>) -> Option<String> {
        let mut out = String::with_capacity(path.len() + 16);
        match self {
            Self::Prefix { from, to } => {
                let rest = path.strip_prefix(from.as_str())?;
                out.push_str(to);
                if !rest.is_empty() && out.ends_with('/') && rest.starts_with('/') {
                    out.push_str(rest.get(1..).unwrap_or_default());
                } else {
                    out.push_str(rest);
                }
                if !out.starts_with('/') {
                    out.insert(0, '/');
                }
            }
            Self::Template { source, target } => {
                let mut captured: Vec<(String, &str)> = Vec::with_capacity(4);
                if !source.captures(path, |n, v| captured.push((n.to_owned(), v))) {
                    return None;
                }
                for RewritePart(part) in target {
                    match part {
                        Part::Literal(l) => out.push_str(l),
                        Part::Param(name) => {
                            let value = captured.iter().find(|(n, _)| n == name)?.1;
                            out.push_str(value);
                        }
                    }
                }
            }
            Self::Fixed(p) => out.push_str(p),
        }
        if let Some(q) = query {
            let _ = write!(out, "?{q}");
        }
        Some(out)
    }
}
