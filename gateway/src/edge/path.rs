//! Request-path normalization before routing: what a route matches is what goes upstream, so
//! no spelling of a path (dot segments, percent-encoding, doubled or escaped slashes, `..;`)
//! crosses a route boundary.
//!
//! Steps, in order (RFC 3986 §6.2.2 and §5.2.4):
//! 1. percent-encoding is checked (`%` + two hex digits, else refused) and encoded unreserved
//!    characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other escapes keep their meaning with
//!    uppercase hex; `%00` is refused;
//! 2. encoded slashes and backslashes (`%2F`, `%5C`, a raw `\`) follow [`EscapedSlashes`];
//! 3. runs of `/` become one (`merge_slashes`);
//! 4. `.` and `..` segments are removed; a `.`/`..` segment with `;` parameters (`..;x`,
//!    which servlet containers read as `..`) is refused.

use std::borrow::Cow;

/// What to do with `%2F`, `%5C` and `\` in a path (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EscapedSlashes {
    /// Answer 400 (the default).
    Reject,
    /// Leave them encoded and forward them so; a spelling that would cross a dot segment once
    /// decoded is still refused.
    Keep,
    /// Decode them to `/` before merging and dot-segment removal, and forward the result.
    Decode,
    /// Decode as `Decode` does and answer a redirect to the decoded path.
    Redirect,
}

/// Path handling of a listener (`[http]`, `[listeners.http]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathOptions {
    /// Percent-encoding checks, unreserved decoding and dot-segment removal.
    pub normalize: bool,
    /// Runs of `/` become one.
    pub merge_slashes: bool,
    /// Encoded slashes and backslashes.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// A `%` not followed by two hex digits.
    InvalidEncoding,
    /// `%00`.
    Nul,
    /// `%2F`, `%5C` or `\` with `escaped_slashes = "reject"`.
    EscapedSlash,
    /// A `.`/`..` segment with parameters, or one hidden behind an escaped slash.
    AmbiguousDotSegment,
    /// Not an absolute path (and not `*`).
    NotAbsolute,
}

impl PathError {
    /// The reason, for the client's error body.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::InvalidEncoding => "invalid percent-encoding in the path",
            Self::Nul => "the path contains an encoded NUL byte",
            Self::EscapedSlash => "the path contains an encoded slash or a backslash",
            Self::AmbiguousDotSegment => "the path contains an ambiguous dot segment",
            Self::NotAbsolute => "the request target is not an absolute path",
        }
    }
}

/// The outcome of normalizing a path that was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Normalized<'a> {
    /// Route on this path and forward it (borrowed when nothing changed).
    Path(Cow<'a, str>),
    /// Answer a redirect to this path (`escaped_slashes = "redirect"`).
    Redirect(String),
}

impl PathOptions {
    /// Normalizes `path` (no query) according to these options.
    pub(crate) fn normalize<'a>(&self, path: &'a str) -> Result<Normalized<'a>, PathError> {
        let b = path.as_bytes();
        if b.first() != Some(&b'/') {
            return if path == "*" {
                Ok(Normalized::Path(Cow::Borrowed(path)))
            } else {
                Err(PathError::NotAbsolute)
            };
        }
        if !self.needs_work(b) {
            return Ok(Normalized::Path(Cow::Borrowed(path)));
        }
        let (decoded, escaped_seen) = self.decode(b)?;
        let merged = if self.merge_slashes {
            merge_slashes(decoded)
        } else {
            decoded
        };
        let out = if self.normalize {
            remove_dot_segments(&merged, self.escaped_slashes == EscapedSlashes::Keep)?
        } else {
            merged
        };
        // invariant: only ASCII bytes from a `&str` or from `%XX` escapes of unreserved
        // characters were written.
        let out = String::from_utf8(out).map_err(|_| PathError::InvalidEncoding)?;
        if escaped_seen && self.escaped_slashes == EscapedSlashes::Redirect {
            return Ok(Normalized::Redirect(out));
        }
        Ok(Normalized::Path(if out == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(out)
        }))
    }

    /// Cheap scan: nothing to do for the common path without `%`, `\`, `//` or a dot segment.
    fn needs_work(&self, b: &[u8]) -> bool {
        let mut prev = 0u8;
        for (i, &c) in b.iter().enumerate() {
            match c {
                b'%' | b'\\' => return true,
                b'/' if prev == b'/' && self.merge_slashes => return true,
                b'.' if prev == b'/' && self.normalize => {
                    // `/.` starts a dot segment when followed by `/`, `;`, the end, or `./`...
                    match b.get(i + 1) {
                        None | Some(b'/' | b';' | b'.') => return true,
                        _ => {}
                    }
                }
                _ => {}
            }
            prev = c;
        }
        false
    }

    /// Step 1 and 2: percent-encoding and escaped slashes. Returns the bytes and whether an
    /// escaped slash or backslash was seen.
    fn decode(&self, b: &[u8]) -> Result<(Vec<u8>, bool), PathError> {
        let mut out = Vec::with_capacity(b.len());
        let mut escaped = false;
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'%' => {
                    let (Some(h), Some(l)) = (
                        b.get(i + 1).copied().and_then(hex),
                        b.get(i + 2).copied().and_then(hex),
                    ) else {
                        return Err(PathError::InvalidEncoding);
                    };
                    let v = h << 4 | l;
                    if v == 0 {
                        return Err(PathError::Nul);
                    }
                    if v == b'/' || v == b'\\' {
                        escaped = true;
                        self.escaped_slash(v, &mut out)?;
                    } else if self.normalize && is_unreserved(v) {
                        out.push(v);
                    } else {
                        out.extend_from_slice(&[b'%', HEX[usize::from(h)], HEX[usize::from(l)]]);
                    }
                    i += 3;
                }
                b'\\' => {
                    escaped = true;
                    self.escaped_slash(b'\\', &mut out)?;
                    i += 1;
                }
                _ => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Ok((out, escaped))
    }

    fn escaped_slash(&self, v: u8, out: &mut Vec<u8>) -> Result<(), PathError> {
        match self.escaped_slashes {
            EscapedSlashes::Reject => Err(PathError::EscapedSlash),
            EscapedSlashes::Keep => {
                out.extend_from_slice(if v == b'/' { b"%2F" } else { b"%5C" });
                Ok(())
            }
            EscapedSlashes::Decode | EscapedSlashes::Redirect => {
                out.push(b'/');
                Ok(())
            }
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn merge_slashes(mut b: Vec<u8>) -> Vec<u8> {
    b.dedup_by(|a, prev| *a == b'/' && *prev == b'/');
    b
}

/// RFC 3986 §5.2.4 over `/`-separated segments of an absolute path. A `.`/`..` segment with
/// `;` parameters is refused, and with `kept_escapes`, so is a segment that holds a dot
/// segment behind `%2F`/`%5C` (a backend that decodes them would see it).
fn remove_dot_segments(b: &[u8], kept_escapes: bool) -> Result<Vec<u8>, PathError> {
    let mut out: Vec<&[u8]> = Vec::new();
    // Skip the leading `/`: segments follow each `/`.
    let segments = b.get(1..).unwrap_or_default().split(|c| *c == b'/');
    let mut trailing_slash = false;
    for seg in segments {
        let bare = seg.split(|c| *c == b';').next().unwrap_or_default();
        let dot = bare == b"." || bare == b"..";
        if dot && bare.len() != seg.len() {
            return Err(PathError::AmbiguousDotSegment);
        }
        if kept_escapes && hides_dot_segment(seg) {
            return Err(PathError::AmbiguousDotSegment);
        }
        trailing_slash = dot;
        match bare {
            b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    let mut path = Vec::with_capacity(b.len());
    for seg in &out {
        path.push(b'/');
        path.extend_from_slice(seg);
    }
    if path.is_empty() || trailing_slash {
        path.push(b'/');
    }
    Ok(path)
}

/// Whether splitting `seg` at `%2F`/`%5C` yields a `.` or `..` piece.
fn hides_dot_segment(seg: &[u8]) -> bool {
    let has_escape = seg.windows(3).any(|w| w == b"%2F" || w == b"%5C");
    if !has_escape {
        return false;
    }
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < seg.len() {
        let w = seg.get(i..i + 3);
        if w == Some(b"%2F") || w == Some(b"%5C") {
            pieces.push(seg.get(start..i).unwrap_or_default());
            i += 3;
            start = i;
        } else {
            i += 1;
        }
    }
    pieces.push(seg.get(start..).unwrap_or_default());
    pieces.iter().any(|p| {
        let bare = p.split(|c| *c == b';').next().unwrap_or_default();
        bare == b"." || bare == b".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(path: &str) -> Result<String, PathError> {
        norm_with(PathOptions::default(), path)
    }

    fn norm_with(o: PathOptions, path: &str) -> Result<String, PathError> {
        match o.normalize(path)? {
            Normalized::Path(p) => Ok(p.into_owned()),
            Normalized::Redirect(p) => Ok(format!("redirect:{p}")),
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("/pub/../priv/x").as_deref(), Ok("/priv/x"));
        assert_eq!(norm("/pub/%2e%2e/priv/x").as_deref(), Ok("/priv/x"));
        assert_eq!(norm("/pub/%2E./priv").as_deref(), Ok("/priv"));
        assert_eq!(norm("/pub//..//priv").as_deref(), Ok("/priv"));
        assert_eq!(norm("/a/./b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(norm("/../../x").as_deref(), Ok("/x"));
        assert_eq!(norm("/..").as_deref(), Ok("/"));
        assert_eq!(norm("//priv").as_deref(), Ok("/priv"));
        assert_eq!(norm("/a/.b/..c").as_deref(), Ok("/a/.b/..c"));
        assert_eq!(norm("/%7Euser/%41").as_deref(), Ok("/~user/A"));
        assert_eq!(norm("/a%c3%a9").as_deref(), Ok("/a%C3%A9"));
        assert_eq!(norm("/plain/path").as_deref(), Ok("/plain/path"));
        assert_eq!(norm("*").as_deref(), Ok("*"));
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("/a%zz"), Err(PathError::InvalidEncoding));
        assert_eq!(norm("/a%4"), Err(PathError::InvalidEncoding));
        assert_eq!(norm("/a%00b"), Err(PathError::Nul));
        assert_eq!(norm("/pub%2F..%2Fpriv"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/pub\\..\\priv"), Err(PathError::EscapedSlash));
        assert_eq!(norm("/pub/..;/priv"), Err(PathError::AmbiguousDotSegment));
        assert_eq!(norm("/pub/.;x/priv"), Err(PathError::AmbiguousDotSegment));
        assert_eq!(norm("relative"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn escaped_slash_actions() {
        let with = |a| PathOptions {
            escaped_slashes: a,
            ..PathOptions::default()
        };
        let decode = with(EscapedSlashes::Decode);
        assert_eq!(
            norm_with(decode, "/pub%2F..%2Fpriv").as_deref(),
            Ok("/priv")
        );
        assert_eq!(norm_with(decode, "/a\\b").as_deref(), Ok("/a/b"));
        let keep = with(EscapedSlashes::Keep);
        assert_eq!(norm_with(keep, "/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(
            norm_with(keep, "/pub/..%2Fpriv"),
            Err(PathError::AmbiguousDotSegment)
        );
        assert_eq!(
            norm_with(with(EscapedSlashes::Redirect), "/a%2F%2Fb").as_deref(),
            Ok("redirect:/a/b")
        );
    }

    #[test]
    fn switches() {
        let raw = PathOptions {
            normalize: false,
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        };
        assert_eq!(norm_with(raw, "/a//../b").as_deref(), Ok("/a//../b"));
        let no_merge = PathOptions {
            merge_slashes: false,
            ..PathOptions::default()
        };
        assert_eq!(norm_with(no_merge, "/a//b/../c").as_deref(), Ok("/a//c"));
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%5c".to_owned()),
            Just("\\".to_owned()),
            Just(";".to_owned()),
            Just("%".to_owned()),
            Just("%41".to_owned()),
            Just("%c3%a9".to_owned()),
            "[a-zA-Z0-9_~-]{1,4}",
            "[ -~]{1,3}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    fn options() -> impl Strategy<Value = PathOptions> {
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                Just(EscapedSlashes::Reject),
                Just(EscapedSlashes::Keep),
                Just(EscapedSlashes::Decode),
                Just(EscapedSlashes::Redirect),
            ],
        )
            .prop_map(|(normalize, merge_slashes, escaped_slashes)| PathOptions {
                normalize,
                merge_slashes,
                escaped_slashes,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any input: no panic; a normalized path normalizes to itself (idempotent).
        #[test]
        fn idempotent_and_total(path in path_strategy(), o in options()) {
            if let Ok(Normalized::Path(p)) = o.normalize(&path) {
                let again = o.normalize(&p);
                prop_assert_eq!(again, Ok(Normalized::Path(Cow::Borrowed(&*p))));
            }
        }

        /// With the defaults, the result never contains a dot segment, a `//`, an escaped
        /// slash or a backslash: nothing a backend could resolve into another route.
        #[test]
        fn default_output_is_canonical(path in path_strategy()) {
            if let Ok(Normalized::Path(p)) = PathOptions::default().normalize(&path) {
                prop_assert!(p.starts_with('/'));
                prop_assert!(!p.contains("//"));
                prop_assert!(!p.contains('\\'));
                prop_assert!(!p.to_ascii_uppercase().contains("%2F"));
                prop_assert!(!p.to_ascii_uppercase().contains("%5C"));
                prop_assert!(!p.to_ascii_uppercase().contains("%2E"));
                for seg in p.split('/') {
                    let bare = seg.split(';').next().unwrap_or_default();
                    prop_assert!(bare != "." && bare != "..", "dot segment in {}", p);
                }
            }
        }

        /// Arbitrary bytes (as text) never panic.
        #[test]
        fn no_panic_on_any_text(path in "\\PC{0,40}", o in options()) {
            let _ = o.normalize(&path);
        }
    }
}
