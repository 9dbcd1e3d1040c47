//! The WuKongIM binary client protocol, versions 2 to 5, and its handshake crypto.
//!
//! This crate does no IO, reads no clock and spawns nothing: the gateway feeds it bytes
//! and gets packets back, and the test client and load generator use the same code for
//! the client side. See `docs/protocol.md` for the wire format with worked examples.
//!
//! ```
//! use bytes::BytesMut;
//! use hongyan_proto::{Codec, Packet, ProtocolVersion, Recvack};
//!
//! let codec = Codec::new(ProtocolVersion::V2);
//! let mut wire = BytesMut::new();
//! codec.encode(&Packet::Recvack(Recvack { message_id: 1, message_seq: 7, ..Default::default() }), &mut wire)?;
//! codec.encode(&Packet::Ping, &mut wire)?;
//!
//! let mut received = wire.split_to(5); // a read that ends mid-packet
//! assert_eq!(codec.decode(&mut received)?, None);
//! received.unsplit(wire);
//! assert!(matches!(codec.decode(&mut received)?, Some(Packet::Recvack(_))));
//! assert_eq!(codec.decode(&mut received)?, Some(Packet::Ping));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod codec;
mod crypto;
mod error;
mod handshake;
mod header;
mod packet;
mod reason;
mod setting;
mod version;

pub use codec::{Codec, DEFAULT_MAX_FRAME_LEN, MAX_STRING_LEN, encoded_len_bound};
pub use crypto::{KeyPair, SALT_LEN, SessionCipher, generate_salt};
pub use error::{CryptoError, DecodeError, EncodeError};
pub use handshake::{ClientHandshake, HandshakeError, ServerHandshake};
pub use header::{HeaderFlags, MAX_ENCODABLE_REMAINING_LEN, PacketType};
pub use packet::{
    Connack, Connect, DeviceLevel, Disconnect, Event, Packet, Recv, RecvStream, Recvack, Send, Sendack, Sub, Suback,
    device_flag,
};
pub use reason::ReasonCode;
pub use setting::Setting;
pub use version::ProtocolVersion;
