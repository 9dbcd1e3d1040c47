//! Reason codes, shared by CONNACK, SENDACK, SUBACK, DISCONNECT and some HTTP answers.
//!
//! The numbering is append-only upstream; the names follow WuKongIM's.

use std::fmt;

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// A reason code (0–25).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ReasonCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ReasonCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ReasonCode] = &[$(ReasonCode::$name,)*];

            /// The code for `value`, or `None` outside 0–25.
            pub fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// The upstream name, e.g. `AuthFail`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }
        }
    };
}

reason_codes! {
    /// No reason given.
    #[default]
    Unknown = 0,
    /// The operation succeeded.
    Success = 1,
    /// Bad or missing token, or a bad client key (CONNACK).
    AuthFail = 2,
    /// The sender is not a subscriber of the channel (SENDACK).
    SubscriberNotExist = 3,
    /// The sender is on the channel's or the peer's blacklist (SENDACK).
    InBlacklist = 4,
    /// The channel does not exist.
    ChannelNotExist = 5,
    /// Cluster: the user is not on this node.
    UserNotOnNode = 6,
    /// Cluster: the sender is offline.
    SenderOffline = 7,
    /// The msgKey did not verify (defined upstream; servers answer 9 instead).
    MsgKeyError = 8,
    /// The payload failed to decrypt or the msgKey did not verify (SENDACK).
    PayloadDecodeError = 9,
    /// Cluster: forwarding the SEND failed.
    ForwardSendPacketError = 10,
    /// Sending is not allowed.
    NotAllowSend = 11,
    /// The connection was kicked (DISCONNECT).
    ConnectKick = 12,
    /// The channel has a whitelist and the sender is not on it (SENDACK).
    NotInWhitelist = 13,
    /// Looking up the token failed.
    QueryTokenError = 14,
    /// An internal error.
    SystemError = 15,
    /// The channel id is invalid.
    ChannelIdError = 16,
    /// Cluster: node mismatch.
    NodeMatchError = 17,
    /// Cluster: node mismatch.
    NodeNotMatch = 18,
    /// The channel is banned (SENDACK) or the user is banned (CONNACK).
    Ban = 19,
    /// A header flag is not supported.
    NotSupportHeader = 20,
    /// CONNECT carried an empty client key.
    ClientKeyIsEmpty = 21,
    /// Too many requests.
    RateLimit = 22,
    /// The channel type is not supported here.
    NotSupportChannelType = 23,
    /// The group was disbanded (SENDACK).
    Disband = 24,
    /// The sender is muted everywhere (SENDACK).
    SendBan = 25,
}

impl ReasonCode {
    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_from_zero_to_twenty_five() {
        assert_eq!(ReasonCode::ALL.len(), 26);
        for (i, code) in ReasonCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(code.as_u8()), i);
            assert_eq!(ReasonCode::from_u8(code.as_u8()), Some(*code));
        }
        assert_eq!(ReasonCode::from_u8(26), None);
    }

    #[test]
    fn names_match_upstream() {
        assert_eq!(ReasonCode::AuthFail.name(), "AuthFail");
        assert_eq!(ReasonCode::ConnectKick.to_string(), "ConnectKick (12)");
        assert_eq!(ReasonCode::SendBan.as_u8(), 25);
    }
}
