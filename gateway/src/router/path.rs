//! Path conditions: exact, segment-aware prefix, and templates like `/titles/{id}`.

use std::collections::HashSet;

/// Path condition of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Any path.
    Any,
    /// This path exactly.
    Exact(String),
    /// This prefix, at a segment boundary.
    Prefix(String),
    /// A template with `{name}` segments.
    Template(PathTemplate),
}

impl PathMatch {
    /// Whether `path` satisfies the condition.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(p) => path == p,
            Self::Prefix(p) => prefix_matches(p, path),
            Self::Template(t) => t.matches(path),
        }
    }

    /// Whether every path matched by `later` is matched by `self`. Conservative.
    pub(crate) fn covers(&self, later: &Self) -> bool {
        match (self, later) {
            (Self::Any, _) => true,
            (_, Self::Any) => false,
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(_), _) => false,
            (Self::Prefix(p), Self::Exact(x)) => prefix_matches(p, x),
            (Self::Prefix(p), Self::Prefix(q)) => prefix_matches(p, q),
            // Every path a template matches starts with its leading literal segments.
            (Self::Prefix(p), Self::Template(t)) => prefix_matches(p, &t.literal_lead()),
            (Self::Template(t), Self::Exact(x)) => t.matches(x),
            (Self::Template(t), Self::Template(u)) => t.same_shape(u),
            (Self::Template(_), Self::Prefix(_)) => false,
        }
    }
}

/// `/api` matches `/api` and `/api/x`, not `/apix`; `/api/` matches anything under `/api/`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// A path template: `/titles/{id}`, `/files/{*path}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    raw: String,
    segments: Vec<Segment>,
}

/// Why a template or rewrite does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TemplateError(pub String);

impl PathTemplate {
    /// Parses a template. It must start with `/`; `{name}` is a whole segment; `{*name}` may
    /// only be the last segment; names are unique.
    pub(crate) fn parse(raw: &str) -> Result<Self, TemplateError> {
        let body = raw
            .strip_prefix('/')
            .ok_or_else(|| TemplateError(format!("path template `{raw}` must start with `/`")))?;
        let mut segments = Vec::new();
        let mut names = HashSet::new();
        let parts: Vec<&str> = body.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let seg = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(inner) => {
                    let (rest, name) = match inner.strip_prefix('*') {
                        Some(n) => (true, n),
                        None => (false, inner),
                    };
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(TemplateError(format!(
                            "`{{{inner}}}` in `{raw}` is not a valid parameter; names use letters, digits and `_`"
                        )));
                    }
                    if !names.insert(name.to_owned()) {
                        return Err(TemplateError(format!(
                            "parameter `{name}` appears twice in `{raw}`"
                        )));
                    }
                    if rest && i + 1 != parts.len() {
                        return Err(TemplateError(format!(
                            "`{{*{name}}}` in `{raw}` must be the last segment"
                        )));
                    }
                    if rest {
                        Segment::Rest(name.to_owned())
                    } else {
                        Segment::Param(name.to_owned())
                    }
                }
                None if part.contains('{') || part.contains('}') => {
                    return Err(TemplateError(format!(
                        "segment `{part}` of `{raw}` mixes text and a parameter; a parameter must be a whole segment"
                    )));
                }
                None => Segment::Literal((*part).to_owned()),
            };
            segments.push(seg);
        }
        Ok(Self {
            raw: raw.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the template defines parameter `name`.
    pub(crate) fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(n) | Segment::Rest(n) if n == name))
    }

    /// Whether `path` matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.captures(path, |_, _| ())
    }

    /// Matches `path` and calls `each(name, value)` for every parameter; returns whether it
    /// matched (on a mismatch some parameters may already have been reported).
    pub(crate) fn captures<'p>(&self, path: &'p str, mut each: impl FnMut(&str, &'p str)) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        for (i, seg) in self.segments.iter().enumerate() {
            let last = i + 1 == self.segments.len();
            if let Segment::Rest(name) = seg {
                if rest.is_empty() {
                    return false;
                }
                each(name, rest);
                return true;
            }
            let (part, tail) = match rest.split_once('/') {
                Some((p, t)) => (p, Some(t)),
                None => (rest, None),
            };
            match seg {
                Segment::Literal(l) if l != part => return false,
                Segment::Param(_) if part.is_empty() => return false,
                Segment::Param(name) => each(name, part),
                _ => {}
            }
            match (tail, last) {
                (None, true) => return true,
                (Some(_), true) | (None, false) => return false,
                (Some(t), false) => rest = t,
            }
        }
        false
    }

    fn literal_lead(&self) -> String {
        let mut lead = String::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => {
                    lead.push('/');
                    lead.push_str(l);
                }
                _ => break,
            }
        }
        if lead.is_empty() {
            lead.push('/');
        }
        lead
    }

    fn same_shape(&self, other: &Self) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    (Segment::Param(_), Segment::Param(_) | Segment::Literal(_)) => true,
                    (Segment::Rest(_), _) => true,
                    _ => false,
                })
    }
}
