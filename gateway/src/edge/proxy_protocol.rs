//! PROXY protocol v1 (text) and v2 (binary) headers sent by an L4 balancer (AWS NLB, HAProxy)
//! before the client's bytes: the client's real address. Parsing is `ppp`'s; this module
//! reads exactly one header off the stream so nothing after it is consumed.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header (the spec's 107 bytes).
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's PROXY header was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    /// The stream failed or ended before a whole header arrived.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a PROXY protocol header.
    #[error("the connection did not start with a PROXY protocol header")]
    Missing,
    /// A header that `ppp` could not parse.
    #[error("malformed PROXY protocol v{version} header: {detail}")]
    Malformed {
        /// 1 or 2.
        version: u8,
        /// The parser's words.
        detail: String,
    },
}

/// Reads one PROXY protocol header. Returns the source address it names, or `None` for a
/// header without one (v1 `UNKNOWN`, v2 `LOCAL` such as a balancer's health check, or a
/// non-IP family): the socket peer stands then.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; 5];
    stream.read_exact(&mut buf).await?;
    if buf == b"PROXY" {
        // v1: text up to CRLF. The stream is buffered, so byte reads are cheap.
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(malformed(1, "longer than 107 bytes without CRLF"));
            }
            stream.read_exact(&mut byte).await?;
            buf.push(byte[0]);
        }
        let header = ppp::v1::Header::try_from(buf.as_slice())
            .map_err(|e| malformed(1, &format!("{e:?}")))?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if V2_SIGNATURE.starts_with(&buf) {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[5..]).await?;
        if !buf.starts_with(V2_SIGNATURE) {
            return Err(ProxyHeaderError::Missing);
        }
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await?;
        let header = ppp::v2::Header::try_from(buf.as_slice())
            .map_err(|e| malformed(2, &format!("{e:?}")))?;
        if header.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return Ok(match header.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
        });
    }
    Err(ProxyHeaderError::Missing)
}

fn malformed(version: u8, detail: &str) -> ProxyHeaderError {
    ProxyHeaderError::Malformed {
        version,
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut input = bytes;
        let r = read_header(&mut input).await;
        (r, input.to_vec())
    }

    #[tokio::test]
    async fn v1_headers() {
        let (r, rest) =
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r.ok().flatten(), "203.0.113.7:51000".parse().ok());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (r, _) = parse(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n").await;
        assert_eq!(r.ok().flatten(), "[2001:db8::1]:1".parse().ok());
        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert!(matches!(r, Ok(None)));
        let (r, _) = parse(b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n").await;
        assert!(matches!(
            r,
            Err(ProxyHeaderError::Malformed { version: 1, .. })
        ));
        let (r, _) = parse(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(matches!(r, Err(ProxyHeaderError::Missing)));
        let (r, _) = parse(b"PROXY TCP4").await;
        assert!(matches!(r, Err(ProxyHeaderError::Io(_))));
    }

    #[tokio::test]
    async fn v2_headers() {
        let src: SocketAddr = "198.51.100.9:4000".parse().expect("addr");
        let dst: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        let mut bytes = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .expect("header");
        bytes.extend_from_slice(b"rest");
        let (r, rest) = parse(&bytes).await;
        assert_eq!(r.ok().flatten(), Some(src));
        assert_eq!(rest, b"rest");
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .expect("header");
        let (r, _) = parse(&local).await;
        assert!(matches!(r, Ok(None)));
    }
}
