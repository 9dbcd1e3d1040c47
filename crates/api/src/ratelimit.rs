//! Requests per client address: a token bucket per IP, for the endpoints that trade a
//! secret for a token (OpenIM's `auth/user_token`, Easemob's `token`), so a secret
//! cannot be guessed at the speed of the network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Most addresses remembered. Past it, addresses whose bucket is full again are
/// forgotten; if none is, new addresses wait until some are (they are refused).
const MAX_ADDRESSES: usize = 65_536;

/// A token bucket per address: `per_sec` requests a second, bursts of twice that.
#[derive(Debug)]
pub struct PerAddress {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl PerAddress {
    /// `per_sec` requests a second per address (at least 1).
    pub fn new(per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self { per_sec, burst: 2.0 * per_sec, buckets: Mutex::default() }
    }

    /// Whether `ip` may make a request now (and counts it).
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&ip) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst);
            if buckets.len() >= MAX_ADDRESSES {
                return false;
            }
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The client's address, when the listener recorded it (every listener the binary
/// serves does).
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let info = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(Self(info.map(|c| c.0.ip())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_per_address() {
        let limit = PerAddress::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| limit.allow_at(a, t0)).count();
        assert_eq!(allowed, 4, "a burst of twice the rate");
        assert!(limit.allow_at(b, t0), "another address has its own bucket");
        assert!(!limit.allow_at(a, t0 + Duration::from_millis(100)));
        assert!(limit.allow_at(a, t0 + Duration::from_millis(600)), "refilled at 2 a second");
    }
}
