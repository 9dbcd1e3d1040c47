//! Protocol versions and what each one puts on the wire.
//!
//! A client announces its version in CONNECT; the connection then speaks
//! `min(client, LATEST)` for every later packet, in both directions.

use std::fmt;

/// A negotiated protocol version, 1 to [`ProtocolVersion::LATEST`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion(u8);

impl ProtocolVersion {
    /// The newest version this crate speaks.
    pub const LATEST: Self = Self(5);
    /// The version of the official JS SDK 1.0.4.
    pub const V2: Self = Self(2);
    /// Adds `expire` to SEND and RECV.
    pub const V3: Self = Self(3);
    /// Adds the node id to CONNACK.
    pub const V4: Self = Self(4);
    /// Drops the stream fields of SEND and RECV.
    pub const V5: Self = Self(5);

    /// The version a connection speaks when the client announces `client`:
    /// `min(client, LATEST)`. Version 0 names no protocol; it is read as 1, the oldest
    /// layout (no stream fields, no expire), so such a client still gets an answer.
    pub fn negotiate(client: u8) -> Self {
        Self(client.clamp(1, Self::LATEST.0))
    }

    /// The version number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// SEND and RECV carry a 4-byte `expire` (v3+).
    pub fn has_expire(self) -> bool {
        self.0 >= 3
    }

    /// CONNACK carries an 8-byte node id (v4+).
    pub fn has_node_id(self) -> bool {
        self.0 >= 4
    }

    /// The stream setting bits add fields to SEND and RECV (v2 to v4).
    pub fn has_stream_fields(self) -> bool {
        (2..=4).contains(&self.0)
    }

    /// A CONNACK to a client that announced `client` carries the server version byte
    /// only when `client > 3`; older SDKs would misread it.
    pub fn connack_has_server_version(client: u8) -> bool {
        client > 3
    }
}

impl Default for ProtocolVersion {
    fn default() -> Self {
        Self::LATEST
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_caps_at_latest_and_reads_zero_as_one() {
        assert_eq!(ProtocolVersion::negotiate(0).get(), 1);
        assert_eq!(ProtocolVersion::negotiate(2), ProtocolVersion::V2);
        assert_eq!(ProtocolVersion::negotiate(5), ProtocolVersion::V5);
        assert_eq!(ProtocolVersion::negotiate(9), ProtocolVersion::LATEST);
    }

    #[test]
    fn features_per_version() {
        let v = ProtocolVersion::negotiate;
        assert!(!v(2).has_expire() && v(3).has_expire() && v(5).has_expire());
        assert!(!v(3).has_node_id() && v(4).has_node_id());
        assert!(!v(1).has_stream_fields() && v(2).has_stream_fields());
        assert!(v(4).has_stream_fields() && !v(5).has_stream_fields());
        assert!(!ProtocolVersion::connack_has_server_version(3));
        assert!(ProtocolVersion::connack_has_server_version(4));
    }
}
