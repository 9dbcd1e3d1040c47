//! The fixed header: packet type, flag bits and the base-128 remaining length.
//!
//! Byte 0 is `(type << 4) | flags`. PING and PONG are that single byte and nothing
//! else; every other packet follows byte 0 with a remaining length of one to four
//! bytes, seven bits each, low group first (the MQTT encoding).

use std::fmt;

/// The largest remaining length four base-128 bytes can express.
pub const MAX_ENCODABLE_REMAINING_LEN: usize = (1 << 28) - 1;

/// The packet type carried in the high nibble of byte 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Client asks to log in; must be the first packet of a connection.
    Connect = 1,
    /// Server answers CONNECT.
    Connack = 2,
    /// Client sends a message.
    Send = 3,
    /// Server acknowledges a SEND.
    Sendack = 4,
    /// Server delivers a message.
    Recv = 5,
    /// Client acknowledges a RECV.
    Recvack = 6,
    /// Client heartbeat (one byte).
    Ping = 7,
    /// Server heartbeat answer (one byte).
    Pong = 8,
    /// Server kicks the client (the server also accepts it from clients).
    Disconnect = 9,
    /// Client subscribes to or unsubscribes from a channel.
    Sub = 10,
    /// Server answers SUB.
    Suback = 11,
    /// Server pushes an event (protocol 5 era; old SDKs do not know it).
    Event = 12,
}

impl PacketType {
    /// The packet type for a high nibble, or `None` for 0 and 13–15.
    pub fn from_nibble(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Connect,
            2 => Self::Connack,
            3 => Self::Send,
            4 => Self::Sendack,
            5 => Self::Recv,
            6 => Self::Recvack,
            7 => Self::Ping,
            8 => Self::Pong,
            9 => Self::Disconnect,
            10 => Self::Sub,
            11 => Self::Suback,
            12 => Self::Event,
            _ => return None,
        })
    }

    /// The upper-case protocol name, e.g. `SENDACK`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::Connack => "CONNACK",
            Self::Send => "SEND",
            Self::Sendack => "SENDACK",
            Self::Recv => "RECV",
            Self::Recvack => "RECVACK",
            Self::Ping => "PING",
            Self::Pong => "PONG",
            Self::Disconnect => "DISCONNECT",
            Self::Sub => "SUB",
            Self::Suback => "SUBACK",
            Self::Event => "EVENT",
        }
    }

    /// PING and PONG are a single byte with no remaining length.
    pub fn is_single_byte(self) -> bool {
        matches!(self, Self::Ping | Self::Pong)
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The message flags of byte 0's low nibble, as used by SEND, SENDACK, RECV and RECVACK.
///
/// CONNACK gives bit 0 another meaning (HasServerVersion); [`crate::Connack`] models that
/// as `server_version: Option<u8>` instead of using this type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderFlags {
    /// Bit 3: the packet is a resend. Informational.
    pub dup: bool,
    /// Bit 2: a command message consumed once per user.
    pub sync_once: bool,
    /// Bit 1: the receiver should count it as unread.
    pub red_dot: bool,
    /// Bit 0: the message is not stored.
    pub no_persist: bool,
}

impl HeaderFlags {
    /// Bit 3.
    pub const DUP: u8 = 0x08;
    /// Bit 2.
    pub const SYNC_ONCE: u8 = 0x04;
    /// Bit 1.
    pub const RED_DOT: u8 = 0x02;
    /// Bit 0.
    pub const NO_PERSIST: u8 = 0x01;

    /// Reads the low nibble of byte 0.
    pub fn from_bits(bits: u8) -> Self {
        Self {
            dup: bits & Self::DUP != 0,
            sync_once: bits & Self::SYNC_ONCE != 0,
            red_dot: bits & Self::RED_DOT != 0,
            no_persist: bits & Self::NO_PERSIST != 0,
        }
    }

    /// The low nibble of byte 0.
    pub fn bits(self) -> u8 {
        (u8::from(self.dup) * Self::DUP)
            | (u8::from(self.sync_once) * Self::SYNC_ONCE)
            | (u8::from(self.red_dot) * Self::RED_DOT)
            | (u8::from(self.no_persist) * Self::NO_PERSIST)
    }
}

/// Outcome of reading a remaining length from the start of `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarintRead {
    /// The value and how many bytes encoded it.
    Complete { value: usize, len: usize },
    /// Every buffered byte says "more follows" and fewer than four are buffered.
    NeedMore,
    /// Four bytes all say "more follows": no valid encoding is that long.
    TooLong,
}

/// Reads a base-128 remaining length of at most four bytes.
pub(crate) fn read_remaining_len(buf: &[u8]) -> VarintRead {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return VarintRead::Complete { value, len: i + 1 };
        }
    }
    if buf.len() >= 4 { VarintRead::TooLong } else { VarintRead::NeedMore }
}

/// Writes `value` as a base-128 remaining length into `out`, returning the byte count.
///
/// Zero is written as one `00` byte (the Go and JS encoders write nothing for zero; no
/// real packet has an empty body, so the difference never shows on the wire).
///
/// The caller guarantees `value <= MAX_ENCODABLE_REMAINING_LEN`.
pub(crate) fn write_remaining_len(mut value: usize, out: &mut [u8; 4]) -> usize {
    debug_assert!(value <= MAX_ENCODABLE_REMAINING_LEN);
    let mut n = 0;
    loop {
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out[n] = byte;
        n += 1;
        if value == 0 || n == 4 {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: usize) -> Vec<u8> {
        let mut out = [0; 4];
        let n = write_remaining_len(value, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn remaining_length_examples_from_the_reference() {
        assert_eq!(encode(0), [0x00]);
        assert_eq!(encode(73), [0x49]);
        assert_eq!(encode(321), [0xc1, 0x02]);
        assert_eq!(encode(16384), [0x80, 0x80, 0x01]);
        assert_eq!(encode(MAX_ENCODABLE_REMAINING_LEN), [0xff, 0xff, 0xff, 0x7f]);
    }

    #[test]
    fn remaining_length_reads_back() {
        for value in [0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, MAX_ENCODABLE_REMAINING_LEN] {
            let bytes = encode(value);
            assert_eq!(read_remaining_len(&bytes), VarintRead::Complete { value, len: bytes.len() });
        }
    }

    #[test]
    fn remaining_length_distinguishes_need_more_from_too_long() {
        assert_eq!(read_remaining_len(&[]), VarintRead::NeedMore);
        assert_eq!(read_remaining_len(&[0x80, 0x80, 0x80]), VarintRead::NeedMore);
        assert_eq!(read_remaining_len(&[0x80, 0x80, 0x80, 0x80]), VarintRead::TooLong);
        assert_eq!(read_remaining_len(&[0xff, 0xff, 0xff, 0xff, 0x01]), VarintRead::TooLong);
    }

    #[test]
    fn flags_round_trip_every_nibble() {
        for bits in 0..16 {
            assert_eq!(HeaderFlags::from_bits(bits).bits(), bits);
        }
    }

    #[test]
    fn packet_types_cover_one_to_twelve() {
        assert_eq!(PacketType::from_nibble(0), None);
        for n in 1..=12 {
            assert_eq!(PacketType::from_nibble(n).map(|t| t as u8), Some(n));
        }
        for n in 13..=15 {
            assert_eq!(PacketType::from_nibble(n), None);
        }
    }
}
