//! The PROXY protocol header (v1 text, v2 binary) that load balancers put before a
//! connection's first byte to pass on the client's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, including CRLF.
const V1_MAX: usize = 107;

/// What reading a PROXY header from the start of a buffer found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProxyHeader {
    /// A header `len` bytes long; `source` is the client, or `None` for LOCAL/UNKNOWN
    /// (health checks from the proxy itself).
    Complete { len: usize, source: Option<SocketAddr> },
    /// More bytes are needed.
    Incomplete,
}

/// Why a PROXY header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid PROXY protocol header: {0}")]
pub(crate) struct ProxyError(&'static str);

/// Parses a PROXY header at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let probe = buf.len().min(V2_SIGNATURE.len());
    if buf[..probe] == V2_SIGNATURE[..probe] {
        return if buf.len() < 16 { Ok(ProxyHeader::Incomplete) } else { parse_v2(buf) };
    }
    let probe = buf.len().min(6);
    if buf[..probe] == b"PROXY "[..probe] {
        return parse_v1(buf);
    }
    Err(ProxyError("missing"))
}

fn parse_v1(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX { Err(ProxyError("v1 line too long")) } else { Ok(ProxyHeader::Incomplete) };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError("v1 not ASCII"))?;
    let line = line.strip_suffix('\r').ok_or(ProxyError("v1 line must end with CRLF"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let source = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", "TCP4" | "TCP6", src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| ProxyError("v1 source address"))?;
            let port: u16 = sport.parse().map_err(|_| ProxyError("v1 source port"))?;
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyError("v1 malformed")),
    };
    Ok(ProxyHeader::Complete { len: end + 1, source })
}

fn parse_v2(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError("v2 version"));
    }
    let family = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body_len;
    if buf.len() < len {
        return Ok(ProxyHeader::Incomplete);
    }
    let body = &buf[16..len];
    let local = version_command & 0x0f == 0;
    let source = match family >> 4 {
        _ if local => None,
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]])))
        }
        2 if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().map_err(|_| ProxyError("v2 address"))?;
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), u16::from_be_bytes([body[32], body[33]])))
        }
        0 | 3 => None,
        _ => return Err(ProxyError("v2 address block")),
    };
    Ok(ProxyHeader::Complete { len, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_unknown() {
        let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nREST";
        assert_eq!(
            parse(h),
            Ok(ProxyHeader::Complete { len: h.len() - 4, source: Some("192.168.0.1:56324".parse().unwrap()) })
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(ProxyHeader::Complete { len: 15, source: None }));
        assert_eq!(
            parse(b"PROXY TCP6 ::1 ::2 1 2\r\n").unwrap(),
            ProxyHeader::Complete { len: 24, source: Some("[::1]:1".parse().unwrap()) }
        );
    }

    #[test]
    fn partial_headers_ask_for_more() {
        assert_eq!(parse(b"PRO"), Ok(ProxyHeader::Incomplete));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(ProxyHeader::Incomplete));
        assert_eq!(parse(&V2_SIGNATURE[..5]), Ok(ProxyHeader::Incomplete));
    }

    #[test]
    fn v2_tcp4() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c, 10, 0, 0, 7, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb]);
        assert_eq!(parse(&h), Ok(ProxyHeader::Complete { len: 28, source: Some("10.0.0.7:8080".parse().unwrap()) }));
        assert_eq!(parse(&h[..20]), Ok(ProxyHeader::Incomplete));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse(b"\x10\x45"), Err(ProxyError("missing")));
        assert_eq!(parse(b"PROXY TCP4 x y 1 2\r\n"), Err(ProxyError("v1 source address")));
        assert_eq!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(20)), Err(ProxyError("v1 line too long")));
    }
}
