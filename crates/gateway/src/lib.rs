//! The client gateway: where devices connect.
//!
//! TCP, WebSocket and WSS listeners; one task per connection running the CONNECT
//! handshake, heartbeats, the idle timeout and kicks, and writing what the core queued
//! in the connection's outbox. The connection, its outbox, the registry of who is
//! online and the [`SessionHandler`] interface are the core's (`hongyan_core::session`):
//! what a login is allowed and what a SEND means is decided there, and this crate
//! implements the socket side of it.
//!
//! Only this crate touches client sockets.

#![warn(missing_docs)]

mod config;
mod listener;
mod preauth;
mod proxy;
mod session;
mod transport;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hongyan_core::session::{Registry, SessionHandler, TransportKind};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ConfigError, GatewayConfig, parse_listen_addr};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not bind.
    #[error("cannot listen on {addr} (gateway.{key}): {source}")]
    Bind {
        /// The configuration key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("gateway.{key}: {problem}")]
    Tls {
        /// The configuration key.
        key: &'static str,
        /// What went wrong.
        problem: String,
    },
}

/// A running gateway: where it listens, and how to wait for its connections to end.
#[derive(Debug)]
pub struct Gateway {
    /// Bound TCP address, if enabled.
    pub tcp_addr: Option<SocketAddr>,
    /// Bound WebSocket address, if enabled.
    pub ws_addr: Option<SocketAddr>,
    /// Bound WSS address, if enabled.
    pub wss_addr: Option<SocketAddr>,
    tracker: TaskTracker,
}

impl Gateway {
    /// Binds every configured listener and starts accepting. Connections end when
    /// `shutdown` is cancelled.
    pub async fn start(
        config: GatewayConfig,
        registry: Arc<Registry>,
        handler: Arc<dyn SessionHandler>,
        node_id: u64,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let tcp = parse_listen_addr("tcp_addr", &config.tcp_addr)?;
        let ws = parse_listen_addr("ws_addr", &config.ws_addr)?;
        let wss = parse_listen_addr("wss_addr", &config.wss_addr)?;
        let tls = match wss {
            Some(_) => Some(tls_acceptor(&config)?),
            None => None,
        };
        let shared =
            Arc::new(session::Shared { config, registry, handler, node_id, shutdown, preauth: Arc::default() });
        let tracker = TaskTracker::new();
        let mut gateway = Self { tcp_addr: None, ws_addr: None, wss_addr: None, tracker: tracker.clone() };
        for (key, addr, kind) in [
            ("tcp_addr", tcp, TransportKind::Tcp),
            ("ws_addr", ws, TransportKind::Ws),
            ("wss_addr", wss, TransportKind::Wss),
        ] {
            let Some(addr) = addr else { continue };
            let listener = listener::bind(addr).map_err(|source| StartError::Bind { key, addr, source })?;
            let bound = listener.local_addr().map_err(|source| StartError::Bind { key, addr, source })?;
            match kind {
                TransportKind::Tcp => gateway.tcp_addr = Some(bound),
                TransportKind::Ws => gateway.ws_addr = Some(bound),
                TransportKind::Wss => gateway.wss_addr = Some(bound),
            }
            let acceptor = if kind == TransportKind::Wss { tls.clone() } else { None };
            tracker.spawn(listener::accept_loop(listener, kind, shared.clone(), acceptor, tracker.clone()));
            tracing::debug!(transport = kind.label(), addr = %bound, "listening");
        }
        Ok(gateway)
    }

    /// Waits until every listener and connection task has ended (after shutdown).
    pub async fn wait_closed(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn tls_acceptor(config: &GatewayConfig) -> Result<TlsAcceptor, StartError> {
    use pki_types::pem::PemObject;
    let tls_err = |key, problem: String| StartError::Tls { key, problem };
    let path = |p: &Option<std::path::PathBuf>| p.clone().unwrap_or_default();
    let cert_path = path(&config.tls_cert);
    let key_path = path(&config.tls_key);
    let certs = pki_types::CertificateDer::pem_file_iter(&cert_path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| tls_err("tls_cert", format!("{}: {e}", show(&cert_path))))?;
    if certs.is_empty() {
        return Err(tls_err("tls_cert", format!("{}: no certificate found", show(&cert_path))));
    }
    let key = pki_types::PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| tls_err("tls_key", format!("{}: {e}", show(&key_path))))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("tls_key", format!("certificate and key do not fit: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn show(path: &Path) -> String {
    path.display().to_string()
}
