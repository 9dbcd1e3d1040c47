//! Channel types and the stored id of person channels.

use hongyan_store::ChannelKey;

/// One-to-one chat.
pub const PERSON: u8 = 1;
/// Group chat: members must be subscribers to send.
pub const GROUP: u8 = 2;
/// Customer service (deprecated upstream): no sender checks.
pub const CUSTOMER_SERVICE: u8 = 3;
/// "Info" channels: no sender checks.
pub const INFO: u8 = 6;
/// Temporary channel of an HTTP send to an explicit list of subscribers.
pub const TEMP: u8 = 8;
/// The highest channel type defined.
pub const MAX_TYPE: u8 = 12;

/// Set in the stored type of a channel's **command channel**, where its SyncOnce
/// messages live with their own seqs and per-user cursors. WuKongIM names it by the
/// suffix `____cmd` on the channel id; a type bit names it without taking any ids
/// away from users.
pub const COMMAND: u8 = 0x80;

/// The command channel of `channel`.
pub fn command_channel(channel: &ChannelKey) -> ChannelKey {
    ChannelKey::new(channel.channel_id.clone(), channel.channel_type | COMMAND)
}

/// The channel whose command channel `channel` is (itself when it is not one).
pub fn base_channel(channel: &ChannelKey) -> ChannelKey {
    ChannelKey::new(channel.channel_id.clone(), channel.channel_type & !COMMAND)
}

/// Whether `channel` is a command channel.
pub fn is_command(channel: &ChannelKey) -> bool {
    channel.channel_type & COMMAND != 0
}

/// The stored id of the person channel between `a` and `b`: the two uids joined by `@`,
/// the one with the larger CRC-32 first (so both sides name the same channel). On equal
/// checksums `b@a`, as WuKongIM does.
pub fn person_channel_id(a: &str, b: &str) -> String {
    if crc32fast::hash(a.as_bytes()) > crc32fast::hash(b.as_bytes()) { format!("{a}@{b}") } else { format!("{b}@{a}") }
}

/// The two uids of a stored person channel id.
pub fn person_channel_members(stored_id: &str) -> Option<(&str, &str)> {
    stored_id.split_once('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_channel_id_matches_the_reference_example() {
        assert_eq!(crc32fast::hash(b"u1"), 1_112_514_422);
        assert_eq!(crc32fast::hash(b"u2"), 3_678_850_764);
        assert_eq!(person_channel_id("u1", "u2"), "u2@u1");
        assert_eq!(person_channel_id("u2", "u1"), "u2@u1");
        assert_eq!(person_channel_members("u2@u1"), Some(("u2", "u1")));
    }
}
