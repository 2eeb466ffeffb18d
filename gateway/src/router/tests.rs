use super::*;
use http::HeaderMap;

fn view<'a>(
    method: &'a Method,
    host: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
) -> RequestView<'a> {
    RequestView {
        method,
        host,
        path,
        headers,
    }
}

fn route(host: Option<&str>, path: PathMatch) -> RouteMatch {
    RouteMatch {
        host: host.map(|h| HostMatch::parse(h).expect("valid host")),
        path,
        methods: None,
        headers: Vec::new(),
    }
}

fn template(t: &str) -> PathTemplate {
    PathTemplate::parse(t).expect("valid template")
}

#[test]
fn prefix_is_segment_aware() {
    let p = PathMatch::Prefix("/api".into());
    assert!(p.matches("/api"));
    assert!(p.matches("/api/"));
    assert!(p.matches("/api/titles"));
    assert!(!p.matches("/apix"));
    assert!(!p.matches("/"));
    let slash = PathMatch::Prefix("/api/".into());
    assert!(slash.matches("/api/x"));
    assert!(!slash.matches("/api"));
}

#[test]
fn template_params_and_rest() {
    let t = template("/titles/{id}");
    assert!(t.matches("/titles/42"));
    assert!(!t.matches("/titles/"));
    assert!(!t.matches("/titles"));
    assert!(!t.matches("/titles/42/seasons"));
    let mut got = Vec::new();
    assert!(template("/t/{id}/s/{n}")
        .captures("/t/7/s/2", |k, v| got.push((k.to_owned(), v.to_owned()))));
    assert_eq!(
        got,
        vec![("id".into(), "7".into()), ("n".into(), "2".into())]
    );
    let rest = template("/files/{*path}");
    assert!(rest.matches("/files/a/b/c"));
    assert!(!rest.matches("/files/"));
}

#[test]
fn template_errors_are_specific() {
    for (bad, needle) in [
        ("titles/{id}", "must start with `/`"),
        ("/t/{id}/{id}", "appears twice"),
        ("/t/{*rest}/x", "must be the last segment"),
        ("/t/x{id}", "whole segment"),
        ("/t/{a-b}", "not a valid parameter"),
    ] {
        let err = PathTemplate::parse(bad).expect_err(bad).0;
        assert!(err.contains(needle), "{bad}: {err}");
    }
}

#[test]
fn host_exact_and_wildcard() {
    let exact = HostMatch::parse("API.example.com").expect("valid");
    assert!(exact.matches("api.EXAMPLE.com"));
    assert!(!exact.matches("x.api.example.com"));
    let wild = HostMatch::parse("*.example.com").expect("valid");
    assert!(wild.matches("a.example.com"));
    assert!(!wild.matches("example.com"));
    assert!(HostMatch::parse("*.").is_err());
    assert!(HostMatch::parse("a/b").is_err());
}

#[test]
fn method_and_header_conditions() {
    let mut m = route(None, PathMatch::Any);
    m.methods = Some(vec![Method::GET]);
    m.headers = vec![
        HeaderMatch {
            name: HeaderName::from_static("x-canary"),
            value: Some(HeaderValue::from_static("1")),
        },
        HeaderMatch {
            name: HeaderName::from_static("x-debug"),
            value: None,
        },
    ];
    let mut headers = HeaderMap::new();
    headers.insert("x-canary", HeaderValue::from_static("1"));
    assert!(
        !m.matches(&view(&Method::GET, "", "/", &headers)),
        "x-debug missing"
    );
    headers.insert("x-debug", HeaderValue::from_static("anything"));
    assert!(m.matches(&view(&Method::GET, "", "/", &headers)));
    assert!(!m.matches(&view(&Method::POST, "", "/", &headers)));
    headers.insert("x-canary", HeaderValue::from_static("2"));
    assert!(!m.matches(&view(&Method::GET, "", "/", &headers)));
}

#[test]
fn shadowing_is_detected_conservatively() {
    let broad = route(None, PathMatch::Prefix("/api".into()));
    let narrow = route(None, PathMatch::Prefix("/api/v2".into()));
    assert!(broad.covers(&narrow));
    assert!(!narrow.covers(&broad));
    assert!(broad.covers(&route(
        Some("a.com"),
        PathMatch::Template(template("/api/{id}"))
    )));
    assert!(!broad.covers(&route(None, PathMatch::Template(template("/{id}")))));
    let with_host = route(Some("a.com"), PathMatch::Prefix("/api".into()));
    assert!(!with_host.covers(&narrow), "narrow may have another host");
    let mut get_only = route(None, PathMatch::Any);
    get_only.methods = Some(vec![Method::GET]);
    assert!(!get_only.covers(&narrow));
    let t = route(None, PathMatch::Template(template("/titles/{id}")));
    assert!(t.covers(&route(None, PathMatch::Exact("/titles/7".into()))));
    assert!(!t.covers(&route(None, PathMatch::Prefix("/titles".into()))));
}

#[test]
fn rewrites() {
    let strip = Rewrite::Prefix {
        from: "/api/catalog".into(),
        to: String::new(),
    };
    assert_eq!(
        strip.apply("/api/catalog/titles", Some("q=1")).as_deref(),
        Some("/titles?q=1")
    );
    assert_eq!(strip.apply("/api/catalog", None).as_deref(), Some("/"));
    let swap = Rewrite::Prefix {
        from: "/old".into(),
        to: "/new/".into(),
    };
    assert_eq!(swap.apply("/old/x", None).as_deref(), Some("/new/x"));
    let tpl =
        Rewrite::template(template("/titles/{id}"), "/v1/catalog/{id}/detail").expect("valid");
    assert_eq!(
        tpl.apply("/titles/9", Some("a=b")).as_deref(),
        Some("/v1/catalog/9/detail?a=b")
    );
    let err = Rewrite::template(template("/titles/{id}"), "/v1/{name}").expect_err("unknown param");
    assert!(err.0.contains("does not define"), "{}", err.0);
}

#[test]
fn request_host_strips_port() {
    let mut headers = HeaderMap::new();
    let uri: http::Uri = "/x".parse().expect("uri");
    assert_eq!(request_host(&uri, &headers), "");
    headers.insert("host", HeaderValue::from_static("api.example.com:8080"));
    assert_eq!(request_host(&uri, &headers), "api.example.com");
    headers.insert("host", HeaderValue::from_static("[::1]:8080"));
    assert_eq!(request_host(&uri, &headers), "[::1]");
    let abs: http::Uri = "http://h2.example.com:443/x".parse().expect("uri");
    assert_eq!(request_host(&abs, &headers), "h2.example.com");
    for (host, want) in [
        ("api.example.com", "api.example.com"),
        ("[::1]", "[::1]"),
        ("[::1", "[::1"),
        ("a:b:8080", "a:b"),
        (":8080", ""),
        ("caf\u{e9}.example:81", ""), // not visible ASCII: no host
    ] {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_str(host).expect("value"));
        assert_eq!(request_host(&uri, &h), want, "{host}");
    }
}

mod properties {
    use super::*;
    use crate::edge::{Normalized, PathOptions};
    use proptest::prelude::*;

    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("%2e".to_owned()),
            Just("%2f".to_owned()),
            Just("pub".to_owned()),
            Just("priv".to_owned()),
            Just(";".to_owned()),
            Just("{".to_owned()),
            Just("*".to_owned()),
            "[a-z]{1,3}",
            "\\PC{1,3}",
        ];
        proptest::collection::vec(piece, 0..10).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Templates and prefixes accept or refuse any text without panicking, and matching
        /// any path never panics.
        #[test]
        fn parsing_and_matching_never_panic(t in path(), p in path()) {
            if let Ok(tpl) = PathTemplate::parse(&t) {
                let _ = tpl.matches(&p);
                let _ = PathMatch::Template(tpl).covers(&PathMatch::Prefix(p.clone()));
            }
            let _ = PathMatch::Prefix(t.clone()).matches(&p);
            let _ = HostMatch::parse(&t);
        }

        /// After normalization, a path lands on the protected route exactly when a
        /// normalizing backend would serve it from there: no spelling crosses the boundary.
        #[test]
        fn normalized_paths_respect_route_boundaries(p in path()) {
            let public = PathMatch::Prefix("/pub".into());
            let private = PathMatch::Prefix("/priv".into());
            if let Ok(Normalized::Path(n)) = PathOptions::default().normalize(&p) {
                // A backend that resolves dot segments once more sees the same path.
                let again = PathOptions::default().normalize(&n);
                prop_assert_eq!(again, Ok(Normalized::Path(std::borrow::Cow::Borrowed(&*n))));
                prop_assert!(!(public.matches(&n) && private.matches(&n)));
                if public.matches(&n) {
                    prop_assert!(n.starts_with("/pub"));
                }
            }
        }
    }
}
