//! Channel types and the stored id of person channels.

/// One-to-one chat.
pub const PERSON: u8 = 1;
/// Group chat: members must be subscribers to send.
pub const GROUP: u8 = 2;
/// Customer service (deprecated upstream): no sender checks.
pub const CUSTOMER_SERVICE: u8 = 3;
/// "Info" channels: no sender checks.
pub const INFO: u8 = 6;
/// The highest channel type defined.
pub const MAX_TYPE: u8 = 12;

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
