//! Size limits of a request head (414/431) and of an upstream response head (502), checked
//! before routing and before relaying.

use http::HeaderMap;

/// Request and response head limits of a listener (`[http.limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadLimits {
    /// Longest request target (path and query) in bytes: 414 beyond.
    pub max_uri_bytes: usize,
    /// Longest single header line (`name: value`) in bytes: 431 beyond.
    pub max_header_bytes: usize,
    /// All request header lines together in bytes: 431 beyond.
    pub max_headers_bytes: usize,
    /// Number of request header lines: 431 beyond.
    pub max_headers: usize,
    /// All upstream response header lines together in bytes: 502 beyond.
    pub max_response_headers_bytes: usize,
    /// Number of upstream response header lines: 502 beyond.
    pub max_response_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 8 * 1024,
            max_headers_bytes: 32 * 1024,
            max_headers: 100,
            max_response_headers_bytes: 64 * 1024,
            max_response_headers: 100,
        }
    }
}

/// Which request limit a head broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadViolation {
    /// The request target is longer than `max_uri_bytes` (414).
    UriTooLong,
    /// One header line is longer than `max_header_bytes` (431).
    HeaderTooLarge,
    /// The header lines together exceed `max_headers_bytes` (431).
    HeadersTooLarge,
    /// More than `max_headers` header lines (431).
    TooManyHeaders,
}

/// Bytes a header line takes on the wire: `name: value`.
fn line_len(name: &http::HeaderName, value: &http::HeaderValue) -> usize {
    name.as_str().len() + 2 + value.len()
}

impl HeadLimits {
    /// Checks a request head: its raw target length and its headers.
    pub(crate) fn check_request(
        &self,
        target_len: usize,
        headers: &HeaderMap,
    ) -> Result<(), HeadViolation> {
        if target_len > self.max_uri_bytes {
            return Err(HeadViolation::UriTooLong);
        }
        if headers.len() > self.max_headers {
            return Err(HeadViolation::TooManyHeaders);
        }
        let mut total = 0;
        for (name, value) in headers {
            let len = line_len(name, value);
            if len > self.max_header_bytes {
                return Err(HeadViolation::HeaderTooLarge);
            }
            total += len;
        }
        if total > self.max_headers_bytes {
            return Err(HeadViolation::HeadersTooLarge);
        }
        Ok(())
    }

    /// Whether an upstream response head fits; the reason when it does not.
    pub(crate) fn check_response(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        if headers.len() > self.max_response_headers {
            return Err("the upstream response has too many header lines");
        }
        let total: usize = headers.iter().map(|(n, v)| line_len(n, v)).sum();
        if total > self.max_response_headers_bytes {
            return Err("the upstream response headers are too large");
        }
        Ok(())
    }

    /// The HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` that admits every head these limits admit
    /// (RFC 9113 counts 32 bytes of overhead per field); larger lists are refused by the
    /// HTTP/2 layer itself.
    pub(crate) fn h2_max_header_list_size(&self) -> u32 {
        let size = self.max_headers_bytes + self.max_uri_bytes + 32 * (self.max_headers + 8);
        u32::try_from(size).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(n: usize, value_len: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        for i in 0..n {
            let name = http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name");
            h.append(
                name,
                HeaderValue::from_str(&"v".repeat(value_len)).expect("value"),
            );
        }
        h
    }

    #[test]
    fn request_limits() {
        let l = HeadLimits::default();
        assert_eq!(l.check_request(100, &headers(10, 100)), Ok(()));
        assert_eq!(
            l.check_request(8193, &headers(1, 1)),
            Err(HeadViolation::UriTooLong)
        );
        assert_eq!(
            l.check_request(10, &headers(101, 1)),
            Err(HeadViolation::TooManyHeaders)
        );
        assert_eq!(
            l.check_request(10, &headers(1, 64 * 1024)),
            Err(HeadViolation::HeaderTooLarge)
        );
        assert_eq!(
            l.check_request(10, &headers(12, 4000)),
            Err(HeadViolation::HeadersTooLarge)
        );
    }

    #[test]
    fn response_limits() {
        let l = HeadLimits::default();
        assert!(l.check_response(&headers(10, 100)).is_ok());
        assert!(l.check_response(&headers(101, 1)).is_err());
        assert!(l.check_response(&headers(20, 4000)).is_err());
        assert!(l.h2_max_header_list_size() as usize > l.max_headers_bytes);
    }
}
