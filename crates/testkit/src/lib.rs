//! A protocol client for tests and the load generator: connects over TCP, WS or WSS,
//! performs the real handshake (X25519 + AES) with `hongyan-proto`'s client side, and
//! reads and writes packets with timeouts so a test fails instead of hanging.

#![warn(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hongyan_proto::{
    ClientHandshake, Codec, Connack, DecodeError, HandshakeError, KeyPair, Packet, ProtocolVersion, SessionCipher,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// How long a read waits before the test counts it as a failure.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// WebSocket failure.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server sent bytes that do not decode.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// Nothing arrived in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The handshake did not complete.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server answered CONNECT with something other than CONNACK.
    #[error("expected CONNACK, got {0:?}")]
    UnexpectedPacket(Box<Packet>),
}

/// A byte stream: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Link {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

/// Which transport to connect over.
#[derive(Clone, Debug)]
pub enum Target {
    /// Plain TCP to this address.
    Tcp(SocketAddr),
    /// WebSocket URL, `ws://…` or `wss://…` (WSS accepts any certificate: tests use
    /// self-signed ones).
    Ws(String),
}

/// Who logs in, and at which protocol version.
#[derive(Clone, Copy, Debug)]
pub struct Login<'a> {
    /// The user.
    pub uid: &'a str,
    /// The registered token.
    pub token: &'a str,
    /// 0 app, 1 web, 2 pc.
    pub device_flag: u8,
    /// The device id.
    pub device_id: &'a str,
    /// The protocol version to announce.
    pub version: u8,
}

/// One client connection.
pub struct Client {
    link: Link,
    codec: Codec,
    buf: BytesMut,
    /// The cipher agreed in the handshake, once logged in.
    pub cipher: Option<SessionCipher>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("version", &self.codec.version()).finish_non_exhaustive()
    }
}

/// Accepts any server certificate: test servers use self-signed ones.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn insecure_tls() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("invariant: ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects from `local` (any port) when given: load tests spread connections over
/// 127.0.0.x source addresses to stay clear of one address's ephemeral ports.
async fn connect_tcp(addr: SocketAddr, local: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let stream = match local {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket =
                if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Client {
    /// Opens the transport (no handshake yet).
    pub async fn open(target: &Target) -> Result<Self, ClientError> {
        Self::open_from(target, None).await
    }

    /// Opens the transport from source address `local`.
    pub async fn open_from(target: &Target, local: Option<std::net::IpAddr>) -> Result<Self, ClientError> {
        let link = match target {
            Target::Tcp(addr) => Link::Tcp(connect_tcp(*addr, local).await?),
            Target::Ws(url) => {
                let (secure, rest) = match url.split_once("://") {
                    Some(("wss", rest)) => (true, rest),
                    Some(("ws", rest)) => (false, rest),
                    _ => {
                        return Err(
                            io::Error::new(io::ErrorKind::InvalidInput, "URL must start with ws:// or wss://").into()
                        );
                    }
                };
                let host_port = rest.split('/').next().unwrap_or(rest);
                let addr = tokio::net::lookup_host(host_port)
                    .await?
                    .next()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address for host"))?;
                let tcp = connect_tcp(addr, local).await?;
                let io: Box<dyn Io> = if secure {
                    let name = rustls::pki_types::ServerName::try_from("localhost").expect("invariant: valid name");
                    Box::new(insecure_tls().connect(name, tcp).await?)
                } else {
                    Box::new(tcp)
                };
                let (ws, _) = tokio_tungstenite::client_async(url.as_str(), io).await?;
                Link::Ws(Box::new(ws))
            }
        };
        Ok(Self { link, codec: Codec::default(), buf: BytesMut::new(), cipher: None })
    }

    /// Opens the transport and logs in at protocol `version`. Returns the client and
    /// the server's CONNACK (whatever its reason code; check it).
    pub async fn connect(
        target: &Target,
        uid: &str,
        token: &str,
        device_flag: u8,
        device_id: &str,
        version: u8,
    ) -> Result<(Self, Connack), ClientError> {
        Self::connect_from(target, None, Login { uid, token, device_flag, device_id, version }).await
    }

    /// Like [`Client::connect`], from source address `local`.
    pub async fn connect_from(
        target: &Target,
        local: Option<std::net::IpAddr>,
        login: Login<'_>,
    ) -> Result<(Self, Connack), ClientError> {
        let Login { uid, token, device_flag, device_id, version } = login;
        let mut client = Self::open_from(target, local).await?;
        // The CONNACK's layout depends on the version this client announces.
        client.codec.set_version(ProtocolVersion::negotiate(version));
        let handshake = ClientHandshake::new(KeyPair::generate().map_err(HandshakeError::from)?, version);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        client.send(&Packet::Connect(handshake.connect(uid, token, device_flag, device_id, now))).await?;
        let connack = match client.recv().await? {
            Packet::Connack(c) => c,
            other => return Err(ClientError::UnexpectedPacket(Box::new(other))),
        };
        if connack.reason_code == hongyan_proto::ReasonCode::Success {
            let (negotiated, cipher) = handshake.finish(&connack)?;
            client.codec.set_version(negotiated);
            client.cipher = Some(cipher);
        }
        Ok((client, connack))
    }

    /// Changes the cap on frames this client decodes (and encodes).
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.codec.set_max_frame_len(max);
    }

    /// The version packets are encoded with.
    pub fn version(&self) -> ProtocolVersion {
        self.codec.version()
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        let frame = self.codec.encode_to_bytes(packet).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.send_raw(frame).await
    }

    /// Writes raw bytes (one WS binary message, or bytes on the TCP stream).
    pub async fn send_raw(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        match &mut self.link {
            Link::Tcp(s) => s.write_all(&bytes).await?,
            Link::Ws(ws) => ws.send(Message::Binary(bytes)).await?,
        }
        Ok(())
    }

    /// Writes raw bytes as one WebSocket *text* message (TCP: plain bytes).
    pub async fn send_text(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.link {
            Link::Tcp(s) => s.write_all(bytes).await?,
            Link::Ws(ws) => {
                // Arbitrary bytes are not always UTF-8; the server must accept text
                // frames with packets in them, which it only can when they are.
                let text = String::from_utf8_lossy(bytes).into_owned();
                ws.send(Message::Text(text.into())).await?;
            }
        }
        Ok(())
    }

    /// The next packet, waiting at most [`DEFAULT_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        self.recv_within(DEFAULT_TIMEOUT).await
    }

    /// The next packet, waiting at most `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Packet, ClientError> {
        timeout(limit, self.recv_forever()).await.map_err(|_| ClientError::Timeout)?
    }

    /// The next raw WebSocket message's payload (to check framing), waiting at most `limit`.
    pub async fn recv_ws_message(&mut self, limit: Duration) -> Result<Bytes, ClientError> {
        let Link::Ws(ws) = &mut self.link else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "not a WebSocket").into());
        };
        loop {
            match timeout(limit, ws.next()).await.map_err(|_| ClientError::Timeout)? {
                Some(Ok(Message::Binary(b))) => return Ok(b),
                Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The next packet, waiting as long as it takes. Cancel-safe: a caller may wrap it
    /// in its own timeout and call again without losing bytes.
    pub async fn recv_forever(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.codec.decode(&mut self.buf)? {
                return Ok(packet);
            }
            match &mut self.link {
                Link::Tcp(s) => {
                    if s.read_buf(&mut self.buf).await? == 0 {
                        return Err(ClientError::Closed);
                    }
                }
                Link::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                },
            }
        }
    }

    /// Waits until the server closes the connection, failing on any packet or timeout.
    pub async fn expect_closed(&mut self, limit: Duration) -> Result<(), ClientError> {
        match self.recv_within(limit).await {
            Err(ClientError::Closed) => Ok(()),
            Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            Err(ClientError::Ws(_)) => Ok(()),
            Err(e) => Err(e),
            Ok(p) => Err(ClientError::UnexpectedPacket(Box::new(p))),
        }
    }
}

/// Reads whatever is on a raw stream within `limit` (for tests that speak bytes).
pub async fn read_some<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, limit: Duration) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; 4096];
    let n = timeout(limit, s.read(&mut buf)).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    buf.truncate(n);
    Ok(buf)
}
