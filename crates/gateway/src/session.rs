//! One connection's life: CONNECT within the pre-auth timeout, the handshake, then a
//! loop that decodes packets, answers PINGs, writes queued frames and enforces the idle
//! timeout, until someone closes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hongyan_proto::{
    Codec, Connect, DecodeError, KeyPair, Packet, PacketType, ReasonCode, ServerHandshake, generate_salt,
};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::config::GatewayConfig;
use crate::transport::Transport;
use hongyan_core::session::{
    CloseReason, Conn, Displacement, Outbox, Registry, SessionHandler, TransportKind, displace_after,
    is_valid_client_msg_no, is_valid_uid,
};

/// State shared by every connection of a gateway.
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) registry: Arc<Registry>,
    pub(crate) handler: Arc<dyn SessionHandler>,
    pub(crate) node_id: u64,
    pub(crate) shutdown: CancellationToken,
    /// Connections not logged in yet.
    pub(crate) preauth: Arc<crate::preauth::PreAuth>,
}

/// What a connection brings from accept to the end of its login: the one deadline that
/// covers every set-up phase (PROXY header, TLS, WebSocket upgrade, CONNECT and its
/// authentication), and its place among the connections not logged in yet, given back
/// when the login ends either way.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) deadline: Instant,
    pub(crate) _ticket: crate::preauth::Ticket,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn handshake_result(result: &'static str) {
    metrics::counter!("hongyan_gateway_handshakes_total", "result" => result).increment(1);
}

/// How the first packet went.
enum First {
    Connect(Connect),
    /// Nothing usable arrived; the label says why (for metrics).
    Gone(&'static str),
}

async fn read_first<T: Transport>(t: &mut T, buf: &mut BytesMut, codec: &Codec) -> First {
    loop {
        match codec.decode(buf) {
            Ok(Some(Packet::Connect(c))) => return First::Connect(c),
            Ok(Some(other)) => {
                debug!(packet = %other.packet_type(), "first packet is not CONNECT");
                return First::Gone("not_connect");
            }
            Ok(None) => {}
            Err(e) => {
                debug!(error = %e, "malformed first packet");
                return First::Gone(if matches!(e, DecodeError::FrameTooLarge { .. }) {
                    "oversized"
                } else {
                    "malformed"
                });
            }
        }
        match t.read_into(buf).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return First::Gone("closed"),
        }
    }
}

/// A connection that completed CONNECT, before its CONNACK is written.
type LoggedIn<T> = (T, Arc<Conn>, hongyan_proto::Connack, Codec, BytesMut);

/// Runs one connection to its end. `buf` holds bytes already read (after a PROXY header).
///
/// The login is a boxed future of its own: its state (the CONNECT, key material) is
/// freed once the connection is established instead of living as long as it does.
pub(crate) async fn run<T: Transport>(
    t: T,
    remote: SocketAddr,
    kind: TransportKind,
    shared: Arc<Shared>,
    buf: BytesMut,
    admission: Box<Admission>,
) {
    let Some((t, conn, connack, codec, buf)) = Box::pin(log_in(t, remote, kind, &shared, buf, admission)).await else {
        return;
    };
    let span =
        tracing::info_span!("conn", id = conn.id, uid = %conn.uid, flag = conn.device_flag, transport = kind.label());
    established(t, conn, connack, codec, buf, shared).instrument(span).await;
}

/// CONNECT within the pre-auth timeout, authentication and key agreement. Every refusal
/// is answered here; `None` means the connection is done.
async fn log_in<T: Transport>(
    mut t: T,
    remote: SocketAddr,
    kind: TransportKind,
    shared: &Shared,
    mut buf: BytesMut,
    admission: Box<Admission>,
) -> Option<LoggedIn<T>> {
    let config = &shared.config;
    // Before login a frame may be no larger than a CONNECT needs.
    let mut codec = Codec::default().with_max_frame_len(config.max_connect_frame_bytes);

    let connect = match timeout_at(admission.deadline, read_first(&mut t, &mut buf, &codec)).await {
        Ok(First::Connect(c)) => c,
        Ok(First::Gone(why)) => {
            handshake_result(why);
            t.close().await;
            return None;
        }
        Err(_) => {
            handshake_result("timeout");
            t.close().await;
            return None;
        }
    };

    let handshake = ServerHandshake::new(&connect, now_ms(), shared.node_id);
    codec.set_version(handshake.version());
    let accepted = if !is_valid_uid(&connect.uid) {
        Err(("bad_uid", ReasonCode::AuthFail))
    } else if !is_valid_client_msg_no(&connect.device_id) {
        Err(("bad_device_id", ReasonCode::AuthFail))
    } else {
        match timeout_at(admission.deadline, shared.handler.authenticate(&connect)).await {
            Err(_) => Err(("timeout", ReasonCode::SystemError)),
            Ok(Err(ReasonCode::Ban)) => Err(("banned", ReasonCode::Ban)),
            Ok(Err(reason)) => Err(("auth_fail", reason)),
            Ok(Ok(level))
                if shared.registry.count_after_login(&connect.uid, connect.device_flag, &connect.device_id, level)
                    >= config.max_connections_per_uid =>
            {
                Err(("too_many_connections", ReasonCode::RateLimit))
            }
            Ok(Ok(level)) if !config.encryption => Ok((level, handshake.accept_unencrypted(), None)),
            Ok(Ok(level)) => {
                let keys_and_salt = KeyPair::generate().and_then(|k| Ok((k, generate_salt()?)));
                match keys_and_salt.and_then(|(keys, salt)| handshake.accept(&connect.client_key, &keys, salt)) {
                    Ok((connack, cipher)) => Ok((level, connack, Some(cipher))),
                    Err(e) => Err(("bad_key", e.reason_code())),
                }
            }
        }
    };
    let (level, connack, cipher) = match accepted {
        Ok(ok) => ok,
        Err((why, reason)) => {
            handshake_result(why);
            info!(uid = %connect.uid, device_flag = connect.device_flag, %remote, reason = %reason, "login refused");
            // Always answer: the official SDKs stop reconnecting on a refusal, but retry
            // forever on a silent close.
            if let Ok(frame) = codec.encode_to_bytes(&Packet::Connack(handshake.refuse(reason))) {
                let _ = timeout(config.write_timeout(), t.write_frames(&[frame])).await;
            }
            t.close().await;
            return None;
        }
    };

    codec.set_max_frame_len(config.max_frame_bytes);
    t.logged_in();
    // Keep what the connection needs; the token and key strings are freed here rather
    // than held by this future for the connection's lifetime.
    let Connect { uid, device_id, device_flag, .. } = connect;
    let conn = Arc::new(Conn {
        id: shared.registry.next_conn_id(),
        uid: uid.into(),
        device_flag,
        level,
        device_id: device_id.into_boxed_str(),
        version: handshake.version(),
        cipher,
        transport: kind,
        remote,
        connected_at_ms: now_ms(),
        outbox: Outbox::with_budget(config.outbox_limits(), shared.registry.held().clone()),
        sends_in_flight: tokio::sync::Semaphore::new(config.max_sends_in_flight),
    });
    Some((t, conn, connack, codec, buf))
}

/// The logged-in part of a connection's life, in the connection's span.
async fn established<T: Transport>(
    mut t: T,
    conn: Arc<Conn>,
    connack: hongyan_proto::Connack,
    codec: Codec,
    buf: BytesMut,
    shared: Arc<Shared>,
) {
    let config = &shared.config;
    let (kind, remote) = (conn.transport, conn.remote);

    let Ok(connack) = codec.encode_to_bytes(&Packet::Connack(connack)) else {
        warn!("CONNACK does not encode");
        return;
    };
    // Online before the client hears it is: a message sent to it the moment it has its
    // CONNACK must find it. What fan-out queues meanwhile waits in the outbox, which is
    // only written after the CONNACK.
    for (old, how) in shared.registry.register(conn.clone()) {
        displace(&old, how, config);
    }
    if !matches!(timeout(config.write_timeout(), t.write_frames(&[connack])).await, Ok(Ok(()))) {
        shared.registry.remove(&conn);
        handshake_result("closed");
        return;
    }
    handshake_result("ok");
    info!(%remote, version = conn.version.get(), level = ?conn.level, "connected");
    metrics::gauge!("hongyan_gateway_connections", "transport" => kind.label()).increment(1);
    shared.handler.on_online(&conn);

    let reason = serve(&mut t, &conn, &shared, codec, buf).await;

    shared.registry.remove(&conn);
    metrics::gauge!("hongyan_gateway_connections", "transport" => kind.label()).decrement(1);
    metrics::counter!("hongyan_gateway_disconnects_total", "reason" => reason).increment(1);
    shared.handler.on_offline(&conn);
    info!(reason, "disconnected");
    t.close().await;
}

/// Sends a displaced connection on its way: DISCONNECT(ConnectKick) first when kicked.
pub(crate) fn displace(old: &Conn, how: Displacement, config: &GatewayConfig) {
    displace_after(old, how, config.kick_close_delay());
}

/// The authenticated loop. Returns why it ended (a metrics label).
async fn serve<T: Transport>(
    t: &mut T,
    conn: &Arc<Conn>,
    shared: &Shared,
    codec: Codec,
    mut buf: BytesMut,
) -> &'static str {
    let config = &shared.config;
    let label = conn.transport.label();
    let mut idle_deadline = Instant::now() + config.idle_timeout();
    let mut close_at: Option<(Instant, CloseReason)> = None;
    let pong = Bytes::from_static(&[0x80]);

    loop {
        // Everything buffered first: a read may have brought several packets. Their
        // PONGs go out together, in one write.
        let mut pongs = 0usize;
        loop {
            let packet = match codec.decode(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "protocol error");
                    return "protocol_error";
                }
            };
            let ty = packet.packet_type();
            metrics::counter!("hongyan_gateway_frames_received_total", "type" => ty.name()).increment(1);
            match packet {
                Packet::Ping => pongs += 1,
                Packet::Send(_) | Packet::Recvack(_) | Packet::Sub(_) => shared.handler.on_packet(conn, packet).await,
                Packet::Disconnect(_) => return "client_disconnect",
                _ => {
                    debug!(packet = %ty, "packet a client must not send");
                    return "protocol_error";
                }
            }
        }
        if pongs > 0 && !write(t, &vec![pong.clone(); pongs], config, label).await {
            return "write_failed";
        }
        if buf.is_empty() && buf.capacity() > 0 {
            // Give the memory back while idle; the next read reserves again.
            buf = BytesMut::new();
        }

        let before = buf.len();
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return CloseReason::Shutdown.label(),
            () = conn.outbox.changed() => {
                let drained = conn.outbox.drain();
                if !write(t, &drained.frames, config, label).await {
                    return "write_failed";
                }
                if drained.close.is_some() {
                    close_at = drained.close;
                }
            }
            () = async { sleep_until(close_at.map_or_else(Instant::now, |c| c.0)).await }, if close_at.is_some() => {
                return close_at.map_or("closed", |c| c.1.label());
            }
            read = t.read_into(&mut buf) => match read {
                Ok(true) => idle_deadline = Instant::now() + config.idle_timeout(),
                Ok(false) => return "peer_closed",
                Err(_) => return "read_failed",
            },
            () = sleep_until(idle_deadline) => return "idle_timeout",
        }
        // What this read brought (not what the buffer holds: a partial frame would be
        // counted again at every read).
        let received = buf.len().saturating_sub(before);
        if received > 0 {
            metrics::counter!("hongyan_gateway_bytes_received_total", "transport" => label).increment(received as u64);
        }
    }
}

async fn write<T: Transport>(t: &mut T, frames: &[Bytes], config: &GatewayConfig, label: &'static str) -> bool {
    if frames.is_empty() {
        return true;
    }
    let ok = matches!(timeout(config.write_timeout(), t.write_frames(frames)).await, Ok(Ok(())));
    if ok {
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        metrics::counter!("hongyan_gateway_bytes_sent_total", "transport" => label).increment(bytes as u64);
        for f in frames {
            let ty = f.first().and_then(|b| PacketType::from_nibble(b >> 4)).map_or("unknown", PacketType::name);
            metrics::counter!("hongyan_gateway_frames_sent_total", "type" => ty).increment(1);
        }
    }
    ok
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use hongyan_core::session::{AuthFuture, PacketFuture};
    use hongyan_proto::DeviceLevel;

    /// A handler that lets everyone in and ignores packets.
    pub(crate) struct AcceptAll;

    impl SessionHandler for AcceptAll {
        fn authenticate<'a>(&'a self, _: &'a Connect) -> AuthFuture<'a> {
            Box::pin(async { Ok(DeviceLevel::Slave) })
        }
        fn on_online(&self, _: &Arc<Conn>) {}
        fn on_packet<'a>(&'a self, _: &'a Arc<Conn>, _: Packet) -> PacketFuture<'a> {
            Box::pin(async {})
        }
        fn on_offline(&self, _: &Arc<Conn>) {}
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::AcceptAll;
    use super::*;
    use std::io;
    use std::time::Duration;

    use hongyan_proto::ClientHandshake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use hongyan_core::session::OutboxLimits;

    /// An in-memory transport, so time can be paused without real sockets.
    struct Duplex(DuplexStream);

    impl Transport for Duplex {
        async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
            buf.reserve(256);
            Ok(self.0.read_buf(buf).await? > 0)
        }
        async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
            for f in frames {
                self.0.write_all(f).await?;
            }
            Ok(())
        }
        async fn close(&mut self) {
            let _ = self.0.shutdown().await;
        }
    }

    /// A place for a test connection, with the default deadline from now.
    fn admission(shared: &Shared) -> Box<Admission> {
        let ticket = shared.preauth.admit(None, usize::MAX, usize::MAX).unwrap();
        Box::new(Admission { deadline: Instant::now() + shared.config.auth_timeout(), _ticket: ticket })
    }

    /// Starts a session on one end of a pipe and logs in from the other.
    async fn logged_in() -> (DuplexStream, Arc<Registry>) {
        let (server_end, mut client) = tokio::io::duplex(4096);
        let registry = Arc::new(Registry::new());
        let shared = Arc::new(Shared {
            config: GatewayConfig::default(),
            registry: registry.clone(),
            handler: Arc::new(AcceptAll),
            node_id: 1,
            shutdown: CancellationToken::new(),
            preauth: Arc::default(),
        });
        let remote = "127.0.0.1:9".parse().unwrap();
        let admission = admission(&shared);
        tokio::spawn(run(Duplex(server_end), remote, TransportKind::Tcp, shared, BytesMut::new(), admission));
        let hs = ClientHandshake::new(KeyPair::generate().unwrap(), 5);
        let codec = Codec::default();
        let connect = codec.encode_to_bytes(&Packet::Connect(hs.connect("u", "t", 0, "d", 0))).unwrap();
        client.write_all(&connect).await.unwrap();
        let mut buf = BytesMut::new();
        loop {
            if let Some(p) = codec.decode(&mut buf).unwrap() {
                assert!(matches!(p, Packet::Connack(c) if c.reason_code == ReasonCode::Success));
                break;
            }
            client.read_buf(&mut buf).await.unwrap();
        }
        (client, registry)
    }

    /// Reads until the server closes; fails (rather than hangs) after an hour of paused time.
    async fn read_until_closed(client: &mut DuplexStream) -> Vec<u8> {
        let mut all = Vec::new();
        let read = async { while client.read_buf(&mut all).await.unwrap() > 0 {} };
        timeout(Duration::from_secs(3600), read).await.expect("the server never closed the connection");
        all
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_closes_after_three_minutes() {
        let (mut client, registry) = logged_in().await;
        let start = Instant::now();
        assert_eq!(read_until_closed(&mut client).await, b"");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(180) && waited < Duration::from_secs(181), "{waited:?}");
        assert!(registry.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_minute_keep_it_open() {
        let (mut client, registry) = logged_in().await;
        let start = Instant::now();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(&[0x70]).await.unwrap();
            let mut pong = [0u8; 1];
            client.read_exact(&mut pong).await.unwrap();
            assert_eq!(pong, [0x80]);
        }
        assert_eq!(registry.len(), 1, "still online after 10 minutes of PINGs");
        assert_eq!(read_until_closed(&mut client).await, b"");
        assert!(start.elapsed() >= Duration::from_secs(600 + 180));
    }

    #[tokio::test]
    async fn session_future_size() {
        let (server_end, _client) = tokio::io::duplex(64);
        let shared = Arc::new(Shared {
            config: GatewayConfig::default(),
            registry: Arc::new(Registry::new()),
            handler: Arc::new(AcceptAll),
            node_id: 1,
            shutdown: CancellationToken::new(),
            preauth: Arc::default(),
        });
        let admission = admission(&shared);
        let remote = "127.0.0.1:9".parse().unwrap();
        let fut = run(Duplex(server_end), remote, TransportKind::Tcp, shared, BytesMut::new(), admission);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 2048, "session future is {size} bytes; it lives as long as the connection");
    }

    #[test]
    fn outbox_limits_come_from_config() {
        let limits: OutboxLimits = GatewayConfig::default().outbox_limits();
        assert_eq!((limits.max_frames, limits.max_bytes), (1024, 4 * 1024 * 1024));
    }
}
