//! One authenticated connection as the rest of the server sees it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hongyan_proto::{Codec, DeviceLevel, EncodeError, Packet, ProtocolVersion, SessionCipher};

use super::outbox::{Outbox, PushError};

/// How a connection reached us. Also a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Plain TCP.
    Tcp,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl TransportKind {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }
}

/// Why an outbound packet was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The packet cannot be encoded for this connection's version.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The queue refused it.
    #[error(transparent)]
    Queue(#[from] PushError),
}

/// An authenticated connection. Shared between its task, the registry and fan-out.
#[derive(Debug)]
pub struct Conn {
    /// Unique on this node for the life of the process.
    pub id: u64,
    /// The logged-in user.
    pub uid: Arc<str>,
    /// 0 app, 1 web, 2 pc.
    pub device_flag: u8,
    /// Master or slave.
    pub level: DeviceLevel,
    /// The client's device id.
    pub device_id: Box<str>,
    /// The negotiated protocol version.
    pub version: ProtocolVersion,
    /// The connection's AES key and IV; `None` when encryption is disabled.
    pub cipher: Option<SessionCipher>,
    /// TCP, WS or WSS.
    pub transport: TransportKind,
    /// The client's address (from the PROXY header or `X-Forwarded-For` when trusted).
    pub remote: SocketAddr,
    /// When the login completed, milliseconds since the epoch.
    pub connected_at_ms: i64,
    /// Frames waiting to be written.
    pub outbox: Outbox,
    /// Slots for SENDs admitted whose SENDACK is not queued yet
    /// (`gateway.max_sends_in_flight`). The handler takes one before admitting a SEND;
    /// while none is free the session reads no further packet.
    pub sends_in_flight: tokio::sync::Semaphore,
}

impl Conn {
    /// The codec for this connection's version, for what the server writes. Outgoing
    /// frames are not held to the inbound cap: a RECV carries more fields than the SEND
    /// it comes from, so a SEND that fits `max_frame_bytes` must still be deliverable.
    pub fn codec(&self) -> Codec {
        Codec::new(self.version).with_max_frame_len(hongyan_proto::MAX_ENCODABLE_REMAINING_LEN)
    }

    /// Encodes `packet` for this connection and queues it.
    pub fn send(&self, packet: &Packet) -> Result<(), SendError> {
        let frame = self.codec().encode_to_bytes(packet)?;
        self.send_frame(frame)
    }

    /// Queues an already encoded frame (e.g. a retried RECV, byte for byte).
    pub fn send_frame(&self, frame: Bytes) -> Result<(), SendError> {
        Ok(self.outbox.push(frame)?)
    }
}
