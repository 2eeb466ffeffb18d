//! Validation of `[[routes]]`: match conditions, rewrites, cluster references, shadowing.

use std::collections::HashMap;
use std::path::Path;

use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;

use crate::config::error::{line_col, Issues};
use crate::config::raw::RawRoute;
use crate::config::RouteSpec;
use crate::router::{HeaderMatch, HostMatch, PathMatch, PathTemplate, Rewrite, RouteMatch};

fn route_match(r: &RawRoute, issues: &mut Issues<'_>) -> RouteMatch {
    let name = r.name.get_ref();
    let host = r
        .host
        .as_ref()
        .and_then(|h| match HostMatch::parse(h.get_ref()) {
            Ok(m) => Some(m),
            Err(e) => {
                issues.at(
                    h.span(),
                    format!("route `{name}`: {e}"),
                    "use `example.com` or `*.example.com`",
                );
                None
            }
        });
    let given: Vec<&Spanned<String>> = [&r.path_exact, &r.path_prefix, &r.path_template]
        .into_iter()
        .flatten()
        .collect();
    if given.len() > 1 {
        issues.at(
            given[1].span(),
            format!("route `{name}` sets more than one of path_exact, path_prefix, path_template"),
            "keep exactly one path condition per route",
        );
    }
    let path = if let Some(p) = &r.path_exact {
        path_literal(p, name, issues).map(PathMatch::Exact)
    } else if let Some(p) = &r.path_prefix {
        path_literal(p, name, issues).map(PathMatch::Prefix)
    } else if let Some(p) = &r.path_template {
        match PathTemplate::parse(p.get_ref()) {
            Ok(t) => Some(PathMatch::Template(t)),
            Err(e) => {
                issues.at(
                    p.span(),
                    format!("route `{name}`: {e}"),
                    "write templates like \"/titles/{id}\" or \"/files/{*path}\"",
                );
                None
            }
        }
    } else {
        Some(PathMatch::Any)
    }
    .unwrap_or(PathMatch::Any);
    let methods = r.methods.as_ref().map(|m| {
        if m.get_ref().is_empty() {
            issues.at(
                m.span(),
                format!("route `{name}` has an empty methods list"),
                "list methods like [\"GET\", \"HEAD\"] or remove the key to allow all",
            );
        }
        m.get_ref()
            .iter()
            .filter_map(
                |s| match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        issues.at(
                            m.span(),
                            format!("route `{name}`: `{s}` is not an HTTP method"),
                            "use method names like \"GET\" or \"POST\"",
                        );
                        None
                    }
                },
            )
            .collect()
    });
    let headers = r
        .headers
        .iter()
        .filter_map(|h| {
            let span = h.span();
            let h = h.get_ref();
            let Ok(hname) = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) else {
                issues.at(
                    span,
                    format!("route `{name}`: `{}` is not a valid header name", h.name),
                    "use a header name like \"x-canary\"",
                );
                return None;
            };
            let value = match h.value.as_deref().map(HeaderValue::from_str) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(_)) => {
                    issues.at(
                        span,
                        format!(
                            "route `{name}`: the value for header `{}` is not a valid header value",
                            h.name
                        ),
                        "use visible ASCII characters",
                    );
                    return None;
                }
            };
            Some(HeaderMatch { name: hname, value })
        })
        .collect();
    RouteMatch {
        host,
        path,
        methods,
        headers,
    }
}

fn path_literal(p: &Spanned<String>, route: &str, issues: &mut Issues<'_>) -> Option<String> {
    let s = p.get_ref();
    if !s.starts_with('/') || s.contains('?') || s.contains(char::is_whitespace) {
        issues.at(
            p.span(),
            format!("route `{route}`: path `{s}` must start with `/` and hold no query or spaces"),
            "write a path like \"/api/catalog\"",
        );
        return None;
    }
    Some(s.clone())
}

fn rewrite(r: &RawRoute, matcher: &RouteMatch, issues: &mut Issues<'_>) -> Option<Rewrite> {
    let name = r.name.get_ref();
    match (&r.prefix_rewrite, &r.rewrite, &matcher.path) {
        (Some(p), Some(_), _) => {
            issues.at(
                p.span(),
                format!("route `{name}` sets both prefix_rewrite and rewrite"),
                "keep one of them",
            );
            None
        }
        (Some(p), None, PathMatch::Prefix(from)) => {
            if !(p.get_ref().is_empty() || p.get_ref().starts_with('/')) {
                issues.at(
                    p.span(),
                    format!(
                        "route `{name}`: prefix_rewrite `{}` must be empty or start with `/`",
                        p.get_ref()
                    ),
                    "use \"\" to strip the prefix or a path like \"/v2\"",
                );
            }
            Some(Rewrite::Prefix {
                from: from.clone(),
                to: p.get_ref().clone(),
            })
        }
        (Some(p), None, _) => {
            issues.at(
                p.span(),
                format!("route `{name}` sets prefix_rewrite without path_prefix"),
                "add path_prefix, or use rewrite with path_template / path_exact",
            );
            None
        }
        (None, Some(t), PathMatch::Template(source)) => {
            match Rewrite::template(source.clone(), t.get_ref()) {
                Ok(rw) => Some(rw),
                Err(e) => {
                    issues.at(
                        t.span(),
                        format!("route `{name}`: {e}"),
                        "use only parameters the route's path_template defines",
                    );
                    None
                }
            }
        }
        (None, Some(t), PathMatch::Exact(_)) => {
            if !t.get_ref().starts_with('/') || t.get_ref().contains('{') {
                issues.at(
                    t.span(),
                    format!(
                        "route `{name}`: rewrite `{}` must be a plain path starting with `/`",
                        t.get_ref()
                    ),
                    "parameters need path_template",
                );
            }
            Some(Rewrite::Fixed(t.get_ref().clone()))
        }
        (None, Some(t), _) => {
            issues.at(
                t.span(),
                format!("route `{name}` sets rewrite without path_template or path_exact"),
                "for prefix routes use prefix_rewrite",
            );
            None
        }
        (None, None, _) => None,
    }
}

/// What route validation needs from the rest of the document.
pub(super) struct Context<'a> {
    pub(super) clusters: &'a HashMap<String, usize>,
    pub(super) specs: &'a [crate::config::ClusterSpec],
    pub(super) cluster_names: &'a [&'a str],
    pub(super) text: &'a str,
    pub(super) registry: &'a filters::FilterRegistry,
    pub(super) base_dir: &'a Path,
}

pub(super) fn routes(
    raw: &[Spanned<RawRoute>],
    cx: &Context<'_>,
    issues: &mut Issues<'_>,
) -> Vec<RouteSpec> {
    let (clusters, cluster_names, text) = (cx.clusters, cx.cluster_names, cx.text);
    let mut out: Vec<(RouteSpec, usize)> = Vec::new();
    for r in raw {
        let span = r.span();
        let r = r.get_ref();
        let name = r.name.get_ref();
        if name.is_empty() {
            issues.at(
                r.name.span(),
                "route name is empty",
                "give every route a unique name",
            );
        }
        if let Some((_, line)) = out.iter().find(|(o, _)| &o.name == name) {
            issues.at(
                r.name.span(),
                format!("route name `{name}` is already used by the route at line {line}"),
                "give every route a unique name",
            );
        }
        let cluster = clusters.get(r.cluster.get_ref()).copied();
        if cluster.is_none() {
            let known = if cluster_names.is_empty() {
                "none are declared".to_owned()
            } else {
                cluster_names.join(", ")
            };
            issues.at(
                r.cluster.span(),
                format!(
                    "route `{name}` names unknown cluster `{}`",
                    r.cluster.get_ref()
                ),
                format!(
                    "declare [clusters.{}] or use a declared cluster ({known})",
                    r.cluster.get_ref()
                ),
            );
        }
        let matcher = route_match(r, issues);
        let rw = rewrite(r, &matcher, issues);
        if let Some((earlier, line)) = out.iter().find(|(o, _)| o.matcher.covers(&matcher)) {
            issues.at(
                span.clone(),
                format!("route `{name}` can never match: route `{}` (line {line}) is declared earlier and matches every request it would", earlier.name),
                format!("move route `{name}` above route `{}`, or narrow route `{}`", earlier.name, earlier.name),
            );
        }
        let line = line_col(text, span.start).0;
        let filters = super::filters::filter_list(
            &r.filters,
            &format!("route `{name}`"),
            cx.registry,
            cx.base_dir,
            issues,
        );
        let cluster_retry = cluster
            .and_then(|i| cx.specs.get(i))
            .map(|c| c.policy.retry);
        let policy = super::policy::route_policy(r, cluster_retry, clusters, issues);
        out.push((
            RouteSpec {
                policy,
                name: name.clone(),
                cluster: cluster.unwrap_or(0),
                matcher,
                rewrite: rw,
                filters,
            },
            line,
        ));
    }
    out.into_iter().map(|(r, _)| r).collect()
}
