//! Gateway settings, read from the `[gateway]` section of the server's configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use hongyan_core::session::OutboxLimits;

/// How the gateway listens and treats connections. Durations carry their unit in the name.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Binary protocol over TCP; empty disables it.
    pub tcp_addr: String,
    /// WebSocket (any path); empty disables it.
    pub ws_addr: String,
    /// WebSocket over TLS; needs `tls_cert` and `tls_key`. Empty (the default) disables it.
    pub wss_addr: String,
    /// PEM certificate chain for WSS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for WSS.
    pub tls_key: Option<PathBuf>,
    /// Largest frame body a client may send.
    pub max_frame_bytes: usize,
    /// Time a new connection has to complete its CONNECT (and WS/TLS handshakes).
    pub auth_timeout_ms: u64,
    /// An authenticated connection that sends nothing for this long is closed.
    /// Official SDKs PING every 60 s.
    pub idle_timeout_secs: u64,
    /// Most frames waiting to be written to one connection before it counts as a slow
    /// reader and is closed.
    pub outbound_queue_frames: usize,
    /// Most bytes waiting to be written to one connection.
    pub outbound_queue_bytes: usize,
    /// Most bytes all connections together may hold (RECVs queued to write, or written
    /// and awaiting their RECVACK) before those holding more than `held_share_bytes`
    /// are closed as slow readers.
    pub max_held_bytes: usize,
    /// What one connection may hold even when the node is over `max_held_bytes`.
    pub held_share_bytes: usize,
    /// A write that does not finish within this time closes the connection.
    pub write_timeout_ms: u64,
    /// Time between a kick's DISCONNECT and closing the socket.
    pub kick_close_delay_ms: u64,
    /// Expect a PROXY protocol (v1 or v2) header before anything else on TCP and WS.
    pub proxy_protocol: bool,
    /// Take the client address from `X-Forwarded-For` / `X-Real-IP` on WS upgrades.
    pub trust_forwarded_for: bool,
    /// X25519 + AES as the official SDKs require. Turning it off breaks them; it exists
    /// for clients that do not encrypt.
    pub encryption: bool,
    /// Largest WebSocket message accepted.
    pub ws_max_message_bytes: usize,
    /// Largest frame accepted before login (the CONNECT). A client that announces more
    /// is disconnected before anything is buffered for it.
    pub max_connect_frame_bytes: usize,
    /// Most connections that have not completed their login, on all listeners. More
    /// are closed at accept.
    pub max_unauthenticated: usize,
    /// Most connections not yet logged in from one IP address (the TCP peer; not
    /// checked with `proxy_protocol` or `trust_forwarded_for`, where the peer is a
    /// proxy).
    pub max_unauthenticated_per_ip: usize,
    /// Most connections one uid may hold on this node (counted after the kick rules);
    /// a login beyond it is refused with CONNACK 22 RateLimit.
    pub max_connections_per_uid: usize,
    /// Most SENDs of one connection admitted and not yet acknowledged. While that many
    /// wait for storage, the server reads nothing more from the connection, so TCP
    /// slows the client down.
    pub max_sends_in_flight: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            tcp_addr: "0.0.0.0:5100".into(),
            ws_addr: "0.0.0.0:5200".into(),
            wss_addr: String::new(),
            tls_cert: None,
            tls_key: None,
            max_frame_bytes: hongyan_proto::DEFAULT_MAX_FRAME_LEN,
            auth_timeout_ms: 4_000,
            idle_timeout_secs: 180,
            outbound_queue_frames: 1_024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            max_held_bytes: 512 * 1024 * 1024,
            held_share_bytes: 256 * 1024,
            write_timeout_ms: 10_000,
            kick_close_delay_ms: 2_000,
            proxy_protocol: false,
            trust_forwarded_for: false,
            encryption: true,
            ws_max_message_bytes: 2 * 1024 * 1024,
            max_sends_in_flight: 128,
            max_connect_frame_bytes: 4 * 1024,
            max_unauthenticated: 8_192,
            max_unauthenticated_per_ip: 256,
            max_connections_per_uid: 64,
        }
    }
}

/// A setting that cannot work, naming its key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("gateway.{key}: {problem}")]
pub struct ConfigError {
    /// The key under `[gateway]`.
    pub key: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key, problem: problem.into() }
}

/// Parses an optional listen address: empty means "off".
pub fn parse_listen_addr(key: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| bad(key, format!("`{value}` is not an address like 0.0.0.0:5100")))
}

impl GatewayConfig {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_listen_addr("tcp_addr", &self.tcp_addr)?;
        parse_listen_addr("ws_addr", &self.ws_addr)?;
        if parse_listen_addr("wss_addr", &self.wss_addr)?.is_some() {
            if self.tls_cert.is_none() {
                return Err(bad("tls_cert", "required when wss_addr is set"));
            }
            if self.tls_key.is_none() {
                return Err(bad("tls_key", "required when wss_addr is set"));
            }
        }
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("auth_timeout_ms", self.auth_timeout_ms),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("outbound_queue_frames", self.outbound_queue_frames as u64),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("max_held_bytes", self.max_held_bytes as u64),
            ("held_share_bytes", self.held_share_bytes as u64),
            ("write_timeout_ms", self.write_timeout_ms),
            ("ws_max_message_bytes", self.ws_max_message_bytes as u64),
            ("max_sends_in_flight", self.max_sends_in_flight as u64),
            ("max_connect_frame_bytes", self.max_connect_frame_bytes as u64),
            ("max_unauthenticated", self.max_unauthenticated as u64),
            ("max_unauthenticated_per_ip", self.max_unauthenticated_per_ip as u64),
            ("max_connections_per_uid", self.max_connections_per_uid as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(bad(key, "must be greater than 0"));
            }
        }
        if self.max_sends_in_flight > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(bad("max_sends_in_flight", "is too large"));
        }
        if self.max_connect_frame_bytes > self.max_frame_bytes {
            return Err(bad("max_connect_frame_bytes", "must not exceed max_frame_bytes"));
        }
        if self.max_frame_bytes > hongyan_proto::MAX_ENCODABLE_REMAINING_LEN {
            return Err(bad("max_frame_bytes", "must be below 256 MiB (four length bytes)"));
        }
        Ok(())
    }

    /// The node-wide budget these settings describe, for the registry.
    pub fn held_budget(&self) -> std::sync::Arc<hongyan_core::session::HeldBytes> {
        hongyan_core::session::HeldBytes::new(self.max_held_bytes, self.held_share_bytes)
    }

    pub(crate) fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits { max_frames: self.outbound_queue_frames, max_bytes: self.outbound_queue_bytes }
    }

    pub(crate) fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub(crate) fn kick_close_delay(&self) -> Duration {
        Duration::from_millis(self.kick_close_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_wukongim_and_validate() {
        let c = GatewayConfig::default();
        assert_eq!(c.tcp_addr, "0.0.0.0:5100");
        assert_eq!(c.ws_addr, "0.0.0.0:5200");
        assert!(c.wss_addr.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let c = GatewayConfig { tcp_addr: "nowhere".into(), ..GatewayConfig::default() };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "gateway.tcp_addr: `nowhere` is not an address like 0.0.0.0:5100"
        );
        let c = GatewayConfig { wss_addr: "0.0.0.0:5210".into(), ..GatewayConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "tls_cert");
        let c = GatewayConfig { idle_timeout_secs: 0, ..GatewayConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "idle_timeout_secs");
    }
}
