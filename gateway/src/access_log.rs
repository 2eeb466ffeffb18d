//! The access log: one line per request, buffered like nginx's `access_log ... buffer=32k
//! flush=200ms`. Lines are serialized straight into a shared batch; full batches (and, every
//! 200 ms, partial ones) are written to stdout by a background thread ([`sink`]). Handing each
//! line to that thread on its own cost about 12 µs per request (a wake-up and a write per line).

mod sink;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::LogFormat;
use sink::Sink;

static SINK: OnceLock<(Sink, LogFormat)> = OnceLock::new();

/// Sends access lines to stdout in `format` from now on, through a writer thread. Call
/// [`flush`] before exiting. Without this, lines go through `tracing` (target `access`).
pub(crate) fn install(format: LogFormat) {
    let sink = Sink::new(Box::new(std::io::stdout()), sink::MAX_QUEUED);
    if SINK.set((sink, format)).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(|| {
            if let Some((sink, _)) = SINK.get() {
                sink.run();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no access-log writer thread; lines are written at exit only");
    }
}

/// Writes out every buffered line (before exiting).
pub(crate) fn flush() {
    if let Some((sink, _)) = SINK.get() {
        sink.write_out(true);
    }
}

/// Access lines dropped since the start because stdout could not keep up or failed.
pub(crate) fn dropped_lines() -> u64 {
    SINK.get().map_or(0, |(sink, _)| sink.dropped())
}

/// One request's access record.
#[derive(Debug, Serialize)]
pub(crate) struct AccessRecord<'a> {
    /// Request method.
    pub method: &'a str,
    /// Path as received.
    pub path: &'a str,
    /// Host as received (without port).
    pub host: &'a str,
    /// Matched route, `-` when none.
    pub route: &'a str,
    /// The route's cluster, `-` when none.
    pub cluster: &'a str,
    /// Endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Status sent to the client (0 when none could be sent).
    pub status: u16,
    /// The `grpc-status` of a gRPC response whose status came in the headers (a gateway
    /// answer to a gRPC request, or an upstream's trailers-only error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Request body bytes read from the client.
    pub bytes_received: u64,
    /// Time from request start to the end of the response, in milliseconds.
    pub duration_ms: f64,
    /// The last upstream attempt's time from its start to the response headers (or its
    /// failure), in milliseconds; absent when no attempt was made.
    pub upstream_ms: Option<f64>,
    /// Upstream attempts made (retries and the fallback cluster included).
    pub attempts: u32,
    /// The request id.
    pub request_id: &'a str,
    /// The W3C trace id, `-` when the request carries no trace.
    pub trace_id: &'a str,
    /// Client address.
    pub client: Option<IpAddr>,
    /// Why the gateway answered itself (`filter:NAME`, `fallback:KIND`, or an error code such
    /// as `circuit_open`), `-` when the upstream's response was relayed.
    pub reason: &'a str,
}

/// The JSON line as serde would write it; [`write_json`] writes the same bytes (checked by
/// the tests).
#[cfg(test)]
#[derive(Serialize)]
struct Line<'a> {
    timestamp: &'a str,
    target: &'static str,
    #[serde(flatten)]
    record: &'a AccessRecord<'a>,
}

/// Writes one line.
pub(crate) fn write(record: &AccessRecord<'_>) {
    let Some((sink, format)) = SINK.get() else {
        tracing::info!(target: "access", record = ?record);
        return;
    };
    let mut ts = [0u8; 27];
    let ts = timestamp(SystemTime::now(), &mut ts);
    sink.append(|buf| match format {
        LogFormat::Json => {
            write_json(buf, ts, record);
            true
        }
        LogFormat::Text => write_text(buf, ts, record),
    });
}

/// `2026-11-21T23:01:35.272350Z` into `out`.
fn rfc3339_micros(now: SystemTime, out: &mut [u8; 27]) -> &str {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let year = u32::try_from(year.clamp(0, 9999)).unwrap_or(0);
    let fields = [
        (year / 100, 0),
        (year % 100, 2),
        (month as u32, 5),
        (day as u32, 8),
        ((rem / 3600) as u32, 11),
        ((rem % 3600 / 60) as u32, 14),
        ((rem % 60) as u32, 17),
    ];
    *out = *b"0000-00-00T00:00:00.000000Z";
    for (v, at) in fields {
        if let Some(d) = out.get_mut(at..at + 2) {
            d.copy_from_slice(&two_digits(v));
        }
    }
    write_micros(out, d.subsec_micros());
    std::str::from_utf8(out).unwrap_or("")
}

/// [`rfc3339_micros`], with the date and time of day worked out once per second per thread.
fn timestamp(now: SystemTime, out: &mut [u8; 27]) -> &str {
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; 27])> =
            const { std::cell::Cell::new((u64::MAX, [0; 27])) };
    }
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, cached) = LAST.get();
    if secs == d.as_secs() {
        *out = cached;
        write_micros(out, d.subsec_micros());
        return std::str::from_utf8(out).unwrap_or("");
    }
    rfc3339_micros(now, out);
    LAST.set((d.as_secs(), *out));
    std::str::from_utf8(out).unwrap_or("")
}

/// The six digits of the microseconds into `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
fn write_micros(out: &mut [u8; 27], mut micros: u32) {
    for i in (20..26).rev() {
        if let Some(c) = out.get_mut(i) {
            *c = b'0' + (micros % 10) as u8;
        }
        micros /= 10;
    }
}

/// `v` (below 100) as two ASCII digits.
fn two_digits(v: u32) -> [u8; 2] {
    [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8]
}

/// Writes `record` as one JSON object: the bytes `serde_json` writes for [`Line`], without
/// its per-field machinery. Serializing through serde cost ~11,000 instructions per line (its
/// string escaping alone ~3,900, keys included, and `flatten` goes through a map); here keys
/// are constants and values are escaped a run at a time.
fn write_json(out: &mut Vec<u8>, ts: &str, r: &AccessRecord<'_>) {
    out.extend_from_slice(b"{\"timestamp\":");
    json_str(out, ts);
    out.extend_from_slice(b",\"target\":\"access\"");
    let names = [
        ("method", r.method),
        ("path", r.path),
        ("host", r.host),
        ("route", r.route),
        ("cluster", r.cluster),
    ];
    for (key, value) in names {
        json_key(out, key);
        json_str(out, value);
    }
    json_key(out, "endpoint");
    match r.endpoint {
        Some(a) => json_addr(out, a.ip(), Some(a)),
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, "status");
    json_uint(out, u64::from(r.status));
    if let Some(g) = r.grpc_status {
        json_key(out, "grpc_status");
        json_uint(out, u64::from(g));
    }
    for (key, value) in [
        ("bytes_sent", r.bytes_sent),
        ("bytes_received", r.bytes_received),
    ] {
        json_key(out, key);
        json_uint(out, value);
    }
    json_key(out, "duration_ms");
    json_float(out, r.duration_ms);
    json_key(out, "upstream_ms");
    match r.upstream_ms {
        Some(u) => json_float(out, u),
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, "attempts");
    json_uint(out, u64::from(r.attempts));
    for (key, value) in [("request_id", r.request_id), ("trace_id", r.trace_id)] {
        json_key(out, key);
        json_str(out, value);
    }
    json_key(out, "client");
    match r.client {
        Some(a) => json_addr(out, a, None),
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, "reason");
    json_str(out, r.reason);
    out.push(b'}');
}

/// `,"key":` (the keys are constants with nothing to escape).
fn json_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string: `"`, `\\` and control characters escaped as `serde_json` escapes them
/// (short forms where JSON has them, `\u00XX` otherwise); runs of other bytes copied whole.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(i) = first_to_escape(rest) {
        let (run, tail) = rest.split_at(i);
        out.extend_from_slice(run);
        let Some((&b, tail)) = tail.split_first() else {
            break;
        };
        escape_byte(out, b);
        rest = tail;
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// The index of the first byte JSON needs escaped (`"`, `\\`, below 0x20), eight bytes per
/// step: a log line's values rarely have one, and a byte at a time cost ~12 instructions each.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // A byte's high bit is set where it is below 0x20, equal to `"` or equal to `\\`
        // (the classic "has zero byte" test on w, w ^ '"' and w ^ '\\'). Bytes from 0x80 up
        // can set a false bit, so a hit is confirmed a byte at a time.
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        if control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) != 0 {
            if let Some(i) = chunk.iter().position(|&b| needs_escape(b)) {
                return Some(at + i);
            }
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|i| at + i)
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn escape_byte(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        _ => {
            let hex = |n: u8| HEX.get(usize::from(n)).copied().unwrap_or(b'0');
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex(b >> 4), hex(b & 0xf)]);
            return;
        }
    };
    out.extend_from_slice(short);
}

/// An address as a JSON string (no character in one needs escaping). IPv4 is written digit by
/// digit, since its `Display` goes through four formatted integers; IPv6 keeps `Display`.
fn json_addr(out: &mut Vec<u8>, ip: IpAddr, socket: Option<SocketAddr>) {
    let IpAddr::V4(v4) = ip else {
        let _ = match socket {
            Some(a) => write!(out, "\"{a}\""),
            None => write!(out, "\"{ip}\""),
        };
        return;
    };
    let mut digits = itoa::Buffer::new();
    out.push(b'"');
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(digits.format(octet).as_bytes());
    }
    if let Some(a) = socket {
        out.push(b':');
        out.extend_from_slice(digits.format(a.port()).as_bytes());
    }
    out.push(b'"');
}

fn json_uint(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A number as `serde_json` writes an `f64` (shortest round-trip form; `null` when not finite).
fn json_float(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(out, &v);
}

/// Writes `r` as one text line (`key=value` pairs); false when writing failed.
fn write_text(out: &mut Vec<u8>, ts: &str, r: &AccessRecord<'_>) -> bool {
    write!(
        out,
        "{ts} access method={} path={} host={} route={} cluster={} endpoint={} status={} grpc_status={} bytes_sent={} bytes_received={} duration_ms={:.3} upstream_ms={} attempts={} request_id={} trace_id={} client={} reason={}",
        Plain(r.method),
        Plain(r.path),
        Plain(r.host),
        Plain(r.route),
        Plain(r.cluster),
        OrDash(r.endpoint),
        r.status,
        OrDash(r.grpc_status),
        r.bytes_sent,
        r.bytes_received,
        r.duration_ms,
        OrDash(r.upstream_ms.map(Millis)),
        r.attempts,
        Plain(r.request_id),
        Plain(r.trace_id),
        OrDash(r.client),
        Plain(r.reason)
    )
    .is_ok()
}

/// A text-format value: as it is when plain (visible ASCII without a space, `"`, `=` or `\`),
/// else quoted and escaped (Rust's `Debug` form), so that a client's host or request id cannot
/// add a field to the line or fake one.
struct Plain<'a>(&'a str);

impl std::fmt::Display for Plain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'));
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// `-` for `None`, in the text format.
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Milliseconds with three decimals, in the text format.
struct Millis(f64);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut buf = [0u8; 27];
        let t = UNIX_EPOCH + Duration::from_micros(1_795_302_095_272_350);
        assert_eq!(rfc3339_micros(t, &mut buf), "2026-11-21T23:01:35.272350Z");
        let mut buf = [0u8; 27];
        assert_eq!(
            rfc3339_micros(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut buf),
            "2000-02-29T00:00:00.000000Z"
        );
        let mut buf = [0u8; 27];
        assert_eq!(
            rfc3339_micros(
                UNIX_EPOCH + Duration::from_micros(4_102_444_799_000_001),
                &mut buf
            ),
            "2099-12-31T23:59:59.000001Z"
        );
    }

    #[test]
    fn cached_timestamps_are_the_computed_ones() {
        let base = 1_795_302_095_000_000u64;
        for micros in [
            base,
            base + 1,
            base + 999_999,
            base + 1_000_000,
            base + 7,
            base + 1,
        ] {
            let t = UNIX_EPOCH + Duration::from_micros(micros);
            let (mut a, mut b) = ([0u8; 27], [0u8; 27]);
            assert_eq!(timestamp(t, &mut a), rfc3339_micros(t, &mut b));
        }
    }

    fn record<'a>(text: &'a str, id: &'a str) -> AccessRecord<'a> {
        AccessRecord {
            method: "GET",
            path: text,
            host: text,
            route: "all",
            cluster: "up",
            endpoint: Some("127.0.0.1:8080".parse().expect("address")),
            status: 200,
            grpc_status: None,
            bytes_sent: 1024,
            bytes_received: 0,
            duration_ms: 0.123_456,
            upstream_ms: Some(0.1),
            attempts: 1,
            request_id: id,
            trace_id: "-",
            client: Some("::1".parse().expect("address")),
            reason: text,
        }
    }

    fn serde_line(ts: &str, record: &AccessRecord<'_>) -> String {
        serde_json::to_string(&Line {
            timestamp: ts,
            target: "access",
            record,
        })
        .expect("serializes")
    }

    fn own_line(ts: &str, record: &AccessRecord<'_>) -> String {
        let mut out = Vec::new();
        write_json(&mut out, ts, record);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn json_lines_are_what_serde_writes_for_any_text() {
        let every_ascii: String = (0u8..=0x7f).map(char::from).collect();
        let texts = [
            "/api/v1/titles/12345",
            "",
            "\"quoted\" and \\back\\slashed",
            "tab\there\r\nnew line \u{7f} \u{1} \u{1f} \u{8}\u{c}",
            "\u{e9}t\u{e9} \u{1F600} \u{2028} </script>",
            every_ascii.as_str(),
        ];
        for text in texts {
            let r = record(text, text);
            assert_eq!(own_line("ts", &r), serde_line("ts", &r), "text {text:?}");
        }
        let mut r = record("/", "id");
        r.endpoint = Some("[2001:db8::1]:443".parse().expect("address"));
        r.client = None;
        r.upstream_ms = None;
        r.grpc_status = Some(14);
        r.duration_ms = 12_345.0;
        r.bytes_sent = u64::MAX;
        assert_eq!(own_line("t\"s", &r), serde_line("t\"s", &r));
        r.endpoint = Some("[fe80::1%3]:8443".parse().expect("address"));
        r.client = Some("10.255.0.7".parse().expect("address"));
        assert_eq!(own_line("ts", &r), serde_line("ts", &r));
        r.endpoint = None;
        r.duration_ms = f64::NAN;
        r.upstream_ms = Some(f64::INFINITY);
        assert_eq!(own_line("ts", &r), serde_line("ts", &r));
        let mut r = record("/", "id");
        r.client = Some("10.255.0.7".parse().expect("address"));
        r.endpoint = Some("10.0.0.1:65535".parse().expect("address"));
        assert_eq!(own_line("ts", &r), serde_line("ts", &r));
        let parsed: serde_json::Value =
            serde_json::from_str(&own_line("ts", &record(&every_ascii, "x"))).expect("valid JSON");
        assert_eq!(parsed["path"], every_ascii.as_str());
    }

    #[test]
    fn text_lines_keep_hostile_values_in_their_field() {
        let mut out = Vec::new();
        let mut r = record("/a", "id-1");
        r.host = "evil.example route=admin";
        r.request_id = "x\"y\\z";
        r.reason = "";
        r.upstream_ms = None;
        r.client = None;
        assert!(write_text(&mut out, "ts", &r));
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "ts access method=GET path=/a host=\"evil.example route=admin\" route=all cluster=up \
             endpoint=127.0.0.1:8080 status=200 grpc_status=- bytes_sent=1024 bytes_received=0 \
             duration_ms=0.123 upstream_ms=- attempts=1 request_id=\"x\\\"y\\\\z\" trace_id=- \
             client=- reason=\"\""
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_written_as_serde_writes_it(
            text in "(?s).{0,80}",
            bytes in proptest::collection::vec(0u8..0x80, 0..80),
        ) {
            let ascii = String::from_utf8(bytes).expect("ASCII");
            let r = record(&text, &ascii);
            proptest::prop_assert_eq!(own_line(&ascii, &r), serde_line(&ascii, &r));
        }

        #[test]
        fn text_lines_have_their_fields_whatever_the_values(
            text in "(?s).{0,40}",
            id in "[ -~]{0,40}",
        ) {
            let mut r = record(&text, &id);
            r.reason = &text;
            let mut out = Vec::new();
            proptest::prop_assert!(write_text(&mut out, "ts", &r));
            let line = String::from_utf8(out).expect("UTF-8");
            proptest::prop_assert!(!line.contains('\n'));
            // Split on spaces outside quotes (a backslash escapes the next character).
            let (mut keys, mut token, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
            for c in line.chars().chain([' ']) {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    ' ' if !quoted => {
                        keys.push(token.split('=').next().unwrap_or_default().to_owned());
                        token.clear();
                        continue;
                    }
                    _ => {}
                }
                token.push(c);
            }
            proptest::prop_assert_eq!(
                keys,
                [
                    "ts", "access", "method", "path", "host", "route", "cluster", "endpoint",
                    "status", "grpc_status", "bytes_sent", "bytes_received", "duration_ms",
                    "upstream_ms", "attempts", "request_id", "trace_id", "client", "reason",
                ]
            );
        }
    }
}
