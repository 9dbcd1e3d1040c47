//! The twelve packets as plain values.
//!
//! Each struct holds every field any version carries. Fields a version does not carry
//! (`expire` before v3, `node_id` before v4) are left out on encode and read as 0.
//! Fields whose presence a setting bit decides (`topic`, stream fields) are `Option`s
//! that must agree with the bit; the encoder refuses a packet where they do not.

use bytes::Bytes;

use crate::{HeaderFlags, PacketType, ReasonCode, Setting};

/// Device flags as sent in CONNECT and stored with tokens.
pub mod device_flag {
    /// A phone or tablet app.
    pub const APP: u8 = 0;
    /// A browser.
    pub const WEB: u8 = 1;
    /// A desktop program.
    pub const PC: u8 = 2;
    /// The server itself (HTTP sends).
    pub const SYSTEM: u8 = 99;
}

/// Whether a login kicks other logins of the same (uid, device_flag). Registered with
/// the token (`device_level` in the HTTP API: 0 slave, 1 master).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceLevel {
    /// Coexists with other logins of the same flag (unless the device id is the same).
    #[default]
    Slave = 0,
    /// Replaces every other login of the same flag.
    Master = 1,
}

impl DeviceLevel {
    /// The level for its API value (0 slave, 1 master).
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Slave),
            1 => Some(Self::Master),
            _ => None,
        }
    }
}

/// CONNECT: the client logs in and offers its X25519 public key. Same layout in every version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connect {
    /// The protocol version the client speaks.
    pub version: u8,
    /// 0 app, 1 web, 2 pc (see [`device_flag`]).
    pub device_flag: u8,
    /// Client-chosen device id (the JS SDK picks a new one per connection).
    pub device_id: String,
    /// The user id.
    pub uid: String,
    /// The token registered for (uid, device_flag).
    pub token: String,
    /// Client clock, milliseconds since the epoch.
    pub client_timestamp: i64,
    /// Standard padded base64 of the client's 32-byte X25519 public key.
    pub client_key: String,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connack {
    /// The negotiated version, sent (with header bit 0) only to clients above v3.
    pub server_version: Option<u8>,
    /// Server clock minus the client's timestamp, in milliseconds.
    pub time_diff: i64,
    /// `Success` or why the login failed.
    pub reason_code: ReasonCode,
    /// Standard padded base64 of the server's X25519 public key; empty on failure.
    pub server_key: String,
    /// 16 alphanumeric characters used as the AES IV; empty on failure.
    pub salt: String,
    /// The serving node (v4+).
    pub node_id: u64,
}

/// SEND: the client sends a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Send {
    /// Header flags (the server copies them onto SENDACK and RECV).
    pub flags: HeaderFlags,
    /// The setting byte.
    pub setting: Setting,
    /// Per-connection counter the client matches SENDACK by.
    pub client_seq: u32,
    /// Client-chosen message id; Hongyan deduplicates on it.
    pub client_msg_no: String,
    /// Stream number: present in v2–v4 exactly when a stream bit is set.
    pub stream_no: Option<String>,
    /// The channel; for person chat, the peer's uid.
    pub channel_id: String,
    /// The channel type.
    pub channel_type: u8,
    /// Seconds until the message expires, 0 = never (v3+).
    pub expire: u32,
    /// The msgKey (32 lowercase hex characters), empty without encryption.
    pub msg_key: String,
    /// Present exactly when the Topic setting bit is set.
    pub topic: Option<String>,
    /// The payload: base64 text of the ciphertext when encrypted.
    pub payload: Bytes,
}

/// SENDACK: the server acknowledges a SEND. Same 17-byte body in every version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sendack {
    /// Header flags, copied from the SEND.
    pub flags: HeaderFlags,
    /// The server-assigned message id.
    pub message_id: i64,
    /// The SEND's client_seq, echoed.
    pub client_seq: u32,
    /// The message's sequence in its channel; 0 when not stored.
    pub message_seq: u32,
    /// `Success` or why the message was refused.
    pub reason_code: ReasonCode,
}

/// Stream fields of a RECV in v2–v4. The two historical layouts differ in order and types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecvStream {
    /// Setting bit 1 (Go library ≥ 1.0.9): flag u8, stream_no string, stream_id u64.
    Current {
        /// 0 start, 1 ongoing, 2 end.
        flag: u8,
        /// The stream number.
        stream_no: String,
        /// The stream id.
        stream_id: u64,
    },
    /// Setting bit 2 (Go library ≤ 1.0.8, JS SDK 1.0.4): stream_no string, seq u32, flag u8.
    Legacy {
        /// The stream number.
        stream_no: String,
        /// The stream sequence.
        stream_seq: u32,
        /// 0 start, 1 ongoing, 2 end.
        flag: u8,
    },
}

/// RECV: the server delivers a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recv {
    /// Header flags (RedDot cleared for the sender's own devices).
    pub flags: HeaderFlags,
    /// The setting byte, copied from the SEND.
    pub setting: Setting,
    /// The msgKey computed with the recipient connection's key.
    pub msg_key: String,
    /// The sender; empty for the system uid.
    pub from_uid: String,
    /// The channel as the recipient sees it (person chat: the other party).
    pub channel_id: String,
    /// The channel type.
    pub channel_type: u8,
    /// Seconds until the message expires, 0 = never (v3+).
    pub expire: u32,
    /// The sender's client_msg_no.
    pub client_msg_no: String,
    /// Stream fields: present in v2–v4 exactly when a stream bit is set.
    pub stream: Option<RecvStream>,
    /// The message id.
    pub message_id: i64,
    /// The message's sequence in its channel.
    pub message_seq: u32,
    /// Unix seconds.
    pub timestamp: i32,
    /// Present exactly when the Topic setting bit is set.
    pub topic: Option<String>,
    /// The payload: base64 text of the ciphertext when encrypted.
    pub payload: Bytes,
}

/// RECVACK: the client acknowledges a RECV. Same 12-byte body in every version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recvack {
    /// Header flags, copied by the JS SDK from the RECV (NoPersist, SyncOnce, RedDot).
    pub flags: HeaderFlags,
    /// The acknowledged message id.
    pub message_id: i64,
    /// The acknowledged message's sequence.
    pub message_seq: u32,
}

/// DISCONNECT: the server tells the client to go (clients may send it too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Why; `ConnectKick` for kicks.
    pub reason_code: ReasonCode,
    /// Free text.
    pub reason: String,
}

/// SUB: the client subscribes to or leaves a channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sub {
    /// The setting byte.
    pub setting: Setting,
    /// Client-chosen request id.
    pub sub_no: String,
    /// The channel.
    pub channel_id: String,
    /// The channel type.
    pub channel_type: u8,
    /// 0 subscribe, 1 unsubscribe.
    pub action: u8,
    /// Free-form parameters (JSON in practice).
    pub param: String,
}

/// SUBACK: the server answers SUB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suback {
    /// The SUB's request id.
    pub sub_no: String,
    /// The channel.
    pub channel_id: String,
    /// The channel type.
    pub channel_type: u8,
    /// The SUB's action.
    pub action: u8,
    /// `Success` or why not.
    pub reason_code: ReasonCode,
}

/// EVENT: a server push outside the message log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Event id (may be empty).
    pub id: String,
    /// Event type name, e.g. `stream.delta`.
    pub event_type: String,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The event body (JSON text in practice).
    pub data: Bytes,
}

/// Any packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Connect),
    /// CONNACK.
    Connack(Connack),
    /// SEND.
    Send(Send),
    /// SENDACK.
    Sendack(Sendack),
    /// RECV.
    Recv(Recv),
    /// RECVACK.
    Recvack(Recvack),
    /// PING, the single byte `70`.
    Ping,
    /// PONG, the single byte `80`.
    Pong,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// SUB.
    Sub(Sub),
    /// SUBACK.
    Suback(Suback),
    /// EVENT.
    Event(Event),
}

impl Packet {
    /// This packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::Connack(_) => PacketType::Connack,
            Self::Send(_) => PacketType::Send,
            Self::Sendack(_) => PacketType::Sendack,
            Self::Recv(_) => PacketType::Recv,
            Self::Recvack(_) => PacketType::Recvack,
            Self::Ping => PacketType::Ping,
            Self::Pong => PacketType::Pong,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Sub(_) => PacketType::Sub,
            Self::Suback(_) => PacketType::Suback,
            Self::Event(_) => PacketType::Event,
        }
    }
}

macro_rules! packet_from {
    ($($variant:ident),*) => {
        $(impl From<$variant> for Packet {
            fn from(p: $variant) -> Self {
                Packet::$variant(p)
            }
        })*
    };
}

packet_from!(Connect, Connack, Send, Sendack, Recv, Recvack, Disconnect, Sub, Suback, Event);
