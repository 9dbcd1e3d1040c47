//! Errors of decoding, encoding and the handshake crypto.
//!
//! "Not enough bytes yet" is not an error: the decoder answers `Ok(None)` for it,
//! because it happens in normal traffic whenever a packet spans two reads.

use crate::{PacketType, ReasonCode};

/// A frame that cannot be a valid packet. Every variant names where it went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The high nibble of byte 0 is 0 or 13–15.
    #[error("unknown packet type {value} in byte 0")]
    UnknownPacketType {
        /// The high nibble.
        value: u8,
    },
    /// The remaining length did not end within four bytes.
    #[error("remaining length starting at offset 1 is longer than 4 bytes")]
    RemainingLengthTooLong,
    /// The remaining length is over the configured cap; nothing was allocated for it.
    #[error("{packet} frame body of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The packet type from byte 0.
        packet: PacketType,
        /// The announced body length.
        len: usize,
        /// The configured cap.
        max: usize,
    },
    /// The body ended before a field did.
    #[error("{packet} field `{field}` at offset {offset} runs past the end of the frame")]
    Truncated {
        /// The packet being decoded.
        packet: PacketType,
        /// The field that did not fit.
        field: &'static str,
        /// Offset of the field from the start of the frame.
        offset: usize,
    },
    /// A string field is not UTF-8.
    #[error("{packet} field `{field}` at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The packet being decoded.
        packet: PacketType,
        /// The string field.
        field: &'static str,
        /// Offset of the field (its length prefix) from the start of the frame.
        offset: usize,
    },
    /// A field holds a value the protocol does not define.
    #[error("{packet} field `{field}` at offset {offset} has invalid value {value}")]
    InvalidValue {
        /// The packet being decoded.
        packet: PacketType,
        /// The field.
        field: &'static str,
        /// Offset of the field from the start of the frame.
        offset: usize,
        /// The value found.
        value: u64,
    },
}

/// A packet that cannot be put on the wire as it stands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string is longer than the 32,767 bytes peers can read (they read the length as i16).
    #[error("{packet} field `{field}` is {len} bytes; strings are limited to {max}")]
    StringTooLong {
        /// The packet being encoded.
        packet: PacketType,
        /// The string field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is over the configured cap.
    #[error("{packet} body of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The packet being encoded.
        packet: PacketType,
        /// The body length.
        len: usize,
        /// The configured cap.
        max: usize,
    },
    /// A setting bit and an optional field disagree (e.g. Topic set but no topic).
    #[error("{packet} field `{field}`: {problem}")]
    Inconsistent {
        /// The packet being encoded.
        packet: PacketType,
        /// The optional field.
        field: &'static str,
        /// What disagrees.
        problem: &'static str,
    },
}

/// A failure of the handshake or of message encryption.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// CONNECT carried no client key.
    #[error("the client key is empty")]
    EmptyPeerKey,
    /// The peer key is not base64 of at least 32 bytes, or is a low-order point.
    #[error("the peer key is not a usable X25519 public key: {0}")]
    InvalidPeerKey(&'static str),
    /// The salt cannot serve as a 16-byte IV.
    #[error("the salt must be at least 16 bytes, got {0}")]
    InvalidSalt(usize),
    /// The msgKey does not match the packet.
    #[error("msgKey does not match the packet")]
    MsgKeyMismatch,
    /// The payload is not base64 of a well-padded AES-CBC ciphertext under this key.
    #[error("payload does not decrypt: {0}")]
    Decrypt(&'static str),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

impl CryptoError {
    /// The reason code a server answers with: CONNACK codes for handshake failures,
    /// the SENDACK code 9 for message failures.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::EmptyPeerKey => ReasonCode::ClientKeyIsEmpty,
            Self::InvalidPeerKey(_) | Self::InvalidSalt(_) => ReasonCode::AuthFail,
            Self::MsgKeyMismatch | Self::Decrypt(_) => ReasonCode::PayloadDecodeError,
            Self::Random => ReasonCode::SystemError,
        }
    }
}
