//! The setting byte of SEND, RECV and SUB.
//!
//! Three bits change the packet layout: Topic (a topic string follows), and the stream
//! bit, which moved: WuKongIM's Go library used bit 2 until early 2025 (the JS SDK 1.0.4
//! still does) and bit 1 since. Stream fields exist only in protocol versions 2–4; in
//! version 5 neither bit changes the layout. The other bits are copied through untouched.

/// The setting byte, kept whole so that unknown bits survive a SEND → RECV copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Setting(pub u8);

impl Setting {
    /// Bit 7: the sender wants read receipts (business level; copied through).
    pub const RECEIPT: u8 = 0x80;
    /// Bit 5: reserved for signal-protocol encryption; no implementation uses it.
    pub const SIGNAL: u8 = 0x20;
    /// Bit 4: the payload is not encrypted (only honoured where the server says so).
    pub const NO_ENCRYPT: u8 = 0x10;
    /// Bit 3: a topic string is present.
    pub const TOPIC: u8 = 0x08;
    /// Bit 2: the stream bit of Go library ≤ 1.0.8 and JS SDK 1.0.4 (versions 2–4 only).
    pub const STREAM_LEGACY: u8 = 0x04;
    /// Bit 1: the stream bit since Go library 1.0.9 (versions 2–4 only).
    pub const STREAM: u8 = 0x02;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Whether the sender asked for read receipts.
    pub fn receipt(self) -> bool {
        self.has(Self::RECEIPT)
    }

    /// Whether the payload claims to be unencrypted.
    pub fn no_encrypt(self) -> bool {
        self.has(Self::NO_ENCRYPT)
    }

    /// Whether a topic string is on the wire.
    pub fn topic(self) -> bool {
        self.has(Self::TOPIC)
    }

    /// Whether the current stream bit (bit 1) is set.
    pub fn stream(self) -> bool {
        self.has(Self::STREAM)
    }

    /// Whether the legacy stream bit (bit 2) is set.
    pub fn stream_legacy(self) -> bool {
        self.has(Self::STREAM_LEGACY)
    }

    /// Returns a copy with `bit` set or cleared.
    #[must_use]
    pub fn with(self, bit: u8, on: bool) -> Self {
        if on { Self(self.0 | bit) } else { Self(self.0 & !bit) }
    }
}
