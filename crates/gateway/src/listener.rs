//! Accept loops for TCP, WS and WSS, and the per-connection set-up before a session:
//! PROXY header, TLS, WebSocket upgrade.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{sleep, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, warn};

use crate::proxy::{self, ProxyHeader};
use crate::session::{self, Shared, handshake_result};
use crate::transport::{Capped, TcpTransport, WsTransport};
use hongyan_core::session::TransportKind;

/// Binds a listener with a backlog deep enough for reconnect storms.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Errors about one incoming connection, not the listener: keep accepting at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

/// Accepts until shutdown. Errors such as EMFILE (out of file descriptors) back off,
/// from 5 ms doubling to 1 s, instead of spinning on a listener that stays readable.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: TransportKind,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    tracker: tokio_util::task::TaskTracker,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(5);
    let mut backoff = MIN_BACKOFF;
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                let Some(admission) = admit(&shared, peer) else {
                    drop(stream); // closed at once: no task, no buffer
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tracker.spawn(set_up(stream, peer, kind, shared.clone(), tls.clone(), admission));
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                metrics::counter!("hongyan_gateway_accept_errors_total", "transport" => kind.label()).increment(1);
                warn!(error = %e, transport = kind.label(), backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A place among the connections not logged in yet, with the deadline of the whole
/// set-up; `None` (counted) when the caps are reached. The per-address cap counts the
/// TCP peer, which behind a proxy is the proxy: it is not applied then.
fn admit(shared: &Shared, peer: SocketAddr) -> Option<Box<session::Admission>> {
    let config = &shared.config;
    let behind_proxy = config.proxy_protocol || config.trust_forwarded_for;
    let ip = (!behind_proxy).then(|| peer.ip());
    match shared.preauth.admit(ip, config.max_unauthenticated, config.max_unauthenticated_per_ip) {
        // Boxed: the set-up task outlives the login, and this should not.
        Ok(ticket) => Some(Box::new(session::Admission {
            deadline: tokio::time::Instant::now() + config.auth_timeout(),
            _ticket: ticket,
        })),
        Err(why) => {
            handshake_result(why);
            None
        }
    }
}

/// Runs one set-up phase (PROXY header, TLS) within `limit`. A failure is counted as
/// `failed` (or `timeout`) and yields `None`. Callers box it, so its state is freed when
/// it ends instead of living in the connection's task.
async fn phase<T>(
    deadline: tokio::time::Instant,
    work: impl std::future::Future<Output = io::Result<T>>,
    peer: SocketAddr,
    failed: &'static str,
) -> Option<T> {
    match timeout_at(deadline, work).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, phase = failed, "connection set-up failed");
            handshake_result(failed);
            None
        }
        Err(_) => {
            handshake_result("timeout");
            None
        }
    }
}

/// Everything between accept and the session, bounded by one deadline (the pre-auth
/// timeout from accept) that the login shares.
///
/// Each phase is boxed: an async fn's state is as large as its largest state, and this
/// task lives as long as the connection. Unboxed, every idle TCP connection would keep
/// room for a TLS handshake and a WebSocket upgrade (about 12 KB).
async fn set_up(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: TransportKind,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    admission: Box<session::Admission>,
) {
    let mut remote = peer;
    if shared.config.proxy_protocol {
        match Box::pin(phase(admission.deadline, read_proxy_header(&mut stream), peer, "bad_proxy_header")).await {
            Some(source) => remote = source.unwrap_or(peer),
            None => return,
        }
    }
    match kind {
        TransportKind::Tcp => {
            let transport = TcpTransport::new(stream);
            Box::pin(session::run(transport, remote, kind, shared, BytesMut::new(), admission)).await;
        }
        TransportKind::Ws => Box::pin(set_up_ws(stream, remote, shared, admission)).await,
        TransportKind::Wss => {
            if let Some(acceptor) = tls {
                Box::pin(set_up_wss(stream, peer, remote, shared, acceptor, admission)).await;
            }
        }
    }
}

/// What a WebSocket client may send before its login: the upgrade request (headers
/// included) and the CONNECT in one message.
fn pre_login_bytes(shared: &Shared) -> usize {
    const UPGRADE_REQUEST: usize = 8 * 1024;
    const WS_FRAMING: usize = 64;
    UPGRADE_REQUEST + shared.config.max_connect_frame_bytes + WS_FRAMING
}

/// The WebSocket upgrade, then the session.
async fn set_up_ws(stream: TcpStream, remote: SocketAddr, shared: Arc<Shared>, admission: Box<session::Admission>) {
    let stream = Capped::new(stream, pre_login_bytes(&shared));
    if let Some((ws, remote)) = Box::pin(upgrade(stream, remote, &shared, admission.deadline)).await {
        let transport = WsTransport::new(ws);
        Box::pin(session::run(transport, remote, TransportKind::Ws, shared, BytesMut::new(), admission)).await;
    }
}

/// TLS, then the WebSocket upgrade, then the session.
async fn set_up_wss(
    stream: TcpStream,
    peer: SocketAddr,
    remote: SocketAddr,
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    admission: Box<session::Admission>,
) {
    let Some(tls_stream) = Box::pin(phase(admission.deadline, acceptor.accept(stream), peer, "tls_failed")).await
    else {
        return;
    };
    let stream = Capped::new(tls_stream, pre_login_bytes(&shared));
    if let Some((ws, remote)) = Box::pin(upgrade(stream, remote, &shared, admission.deadline)).await {
        let transport = WsTransport::new(ws);
        Box::pin(session::run(transport, remote, TransportKind::Wss, shared, BytesMut::new(), admission)).await;
    }
}

/// Small buffers: tungstenite's defaults (128 KiB read buffer) cost ~134 KiB per idle
/// connection. Its read chunk is allocated for the connection's life, so it is kept at
/// 1 KiB, above a typical packet (a SEND or RECV of a short message is 200–400 bytes):
/// larger messages just take more reads. 2 KiB cost 1 KiB more per idle connection
/// (6.4 against 5.4 KiB at 10,000 connections).
fn ws_config(shared: &Shared) -> WebSocketConfig {
    let max = shared.config.ws_max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(shared.config.outbound_queue_bytes.max(64 * 1024))
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// The WebSocket upgrade, on any path. Returns the stream and the client address,
/// taken from forwarding headers when they are trusted.
async fn upgrade<S>(
    stream: S,
    remote: SocketAddr,
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Option<(tokio_tungstenite::WebSocketStream<S>, SocketAddr)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut forwarded = None;
    let trust = shared.config.trust_forwarded_for;
    // The error type is tungstenite's, fixed by its callback trait.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        if trust {
            forwarded = forwarded_client(req);
        }
        Ok(resp)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config(shared)));
    match timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => Some((ws, forwarded.map_or(remote, |ip| SocketAddr::new(ip, remote.port())))),
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "WebSocket upgrade failed");
            handshake_result("ws_upgrade_failed");
            None
        }
        Err(_) => {
            handshake_result("timeout");
            None
        }
    }
}

/// The client's IP from `X-Forwarded-For` (first entry) or `X-Real-IP`.
fn forwarded_client(req: &Request) -> Option<IpAddr> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    header("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .or_else(|| header("x-real-ip"))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads a PROXY header off the stream, leaving the bytes after it unread.
async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let mut peeked = [0u8; 256];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match proxy::parse(&peeked[..n]) {
            Ok(ProxyHeader::Complete { len, source }) => {
                let mut header = vec![0; len];
                stream.read_exact(&mut header).await?;
                return Ok(source);
            }
            Ok(ProxyHeader::Incomplete) if n < peeked.len() => {
                // Proxies send the header in one write; a partial one is rare. Peek
                // returns at once while any byte is buffered, so wait before looking again.
                sleep(Duration::from_millis(5)).await;
            }
            Ok(ProxyHeader::Incomplete) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "PROXY header too long"));
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_up_future_size() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let shared = Arc::new(Shared {
            config: crate::GatewayConfig::default(),
            registry: Arc::new(crate::Registry::new()),
            handler: Arc::new(crate::session::tests_support::AcceptAll),
            node_id: 1,
            shutdown: tokio_util::sync::CancellationToken::new(),
            preauth: Arc::default(),
        });
        let admission = admit(&shared, "127.0.0.1:1".parse().unwrap()).unwrap();
        let fut = set_up(stream, "127.0.0.1:1".parse().unwrap(), TransportKind::Tcp, shared, None, admission);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 256, "set_up future is {size} bytes; it lives as long as the connection");
    }
}
