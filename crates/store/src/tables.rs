//! Typed tables over a [`KvBackend`].

use std::sync::Arc;

use hongyan_proto::DeviceLevel;

use crate::backend::{KvBackend, Order, Table, Write};
use crate::codec::{ValueReader, push_str16};
use crate::{Result, StoreError};

/// Format byte of every value this version writes.
pub(crate) const FORMAT_V1: u8 = 1;

/// Format byte of a device row holding the token's SHA-256 digest (v1 rows held the
/// token itself and are still read).
const DEVICE_DIGEST: u8 = 2;

/// The registration of one (uid, device_flag): what a login must present. Only the
/// token's SHA-256 digest is kept, in memory and on disk; a copy of the data directory
/// gives nobody a token to log in with.
#[derive(Clone, PartialEq, Eq)]
pub struct Device {
    token_digest: [u8; 32],
    /// Master or slave.
    pub level: DeviceLevel,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("level", &self.level).finish_non_exhaustive()
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl Device {
    /// A registration of `token` at `level`.
    pub fn new(token: &str, level: DeviceLevel) -> Self {
        Self { token_digest: digest(token), level }
    }

    /// Whether `token` is the registered one, in time that does not depend on where
    /// they differ. An empty token never matches.
    pub fn token_matches(&self, token: &str) -> bool {
        let presented = digest(token);
        let differ = presented.iter().zip(&self.token_digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        !token.is_empty() && differ == 0
    }
}

/// Attributes of a channel. On a person channel (type 1, id = uid) `ban` bans the user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Nobody may send; on a person channel the user may not log in.
    pub ban: bool,
    /// The group was disbanded.
    pub disband: bool,
    /// Members may not send; on a person channel the user is muted everywhere.
    pub send_ban: bool,
    /// A large group.
    pub large: bool,
    /// Strangers may message (person channels).
    pub allow_stranger: bool,
}

impl ChannelInfo {
    const BAN: u8 = 0x01;
    const DISBAND: u8 = 0x02;
    const SEND_BAN: u8 = 0x04;
    const LARGE: u8 = 0x08;
    const ALLOW_STRANGER: u8 = 0x10;

    fn bits(self) -> u8 {
        [
            (self.ban, Self::BAN),
            (self.disband, Self::DISBAND),
            (self.send_ban, Self::SEND_BAN),
            (self.large, Self::LARGE),
            (self.allow_stranger, Self::ALLOW_STRANGER),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, bit)| acc | bit)
    }

    fn from_bits(bits: u8) -> Self {
        Self {
            ban: bits & Self::BAN != 0,
            disband: bits & Self::DISBAND != 0,
            send_ban: bits & Self::SEND_BAN != 0,
            large: bits & Self::LARGE != 0,
            allow_stranger: bits & Self::ALLOW_STRANGER != 0,
        }
    }
}

fn device_key(uid: &str, device_flag: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + uid.len());
    push_str16(&mut key, uid);
    key.push(device_flag);
    key
}

fn channel_key(channel_id: &str, channel_type: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + channel_id.len());
    key.push(channel_type);
    key.extend_from_slice(channel_id.as_bytes());
    key
}

/// A per-channel list of uids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberList {
    /// Members who receive the channel's messages (and may send to groups).
    Subscribers,
    /// Uids that may not send to the channel.
    Blacklist,
    /// When non-empty, only these uids may send to the channel.
    Whitelist,
}

impl MemberList {
    fn table(self) -> Table {
        match self {
            Self::Subscribers => Table::ChanSubscriber,
            Self::Blacklist => Table::ChanBlacklist,
            Self::Whitelist => Table::ChanWhitelist,
        }
    }
}

/// `[type][len][id]`: the prefix of a channel's entries in a member list.
pub(crate) fn list_prefix(channel_id: &str, channel_type: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + channel_id.len());
    key.push(channel_type);
    push_str16(&mut key, channel_id);
    key
}

/// One user's view of one channel: how far they have read, and where they deleted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    /// Messages up to this seq are read.
    pub read_to: u64,
    /// The conversation was deleted when the channel's last seq was this; it shows
    /// again only with newer messages.
    pub deleted_at: u64,
}

fn conversation_key(uid: &str, channel: &crate::ChannelKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + uid.len() + channel.channel_id.len());
    push_str16(&mut key, uid);
    key.push(channel.channel_type);
    key.extend_from_slice(channel.channel_id.as_bytes());
    key
}

fn conversation_value(c: Conversation) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.push(FORMAT_V1);
    v.extend_from_slice(&c.read_to.to_be_bytes());
    v.extend_from_slice(&c.deleted_at.to_be_bytes());
    v
}

fn decode_conversation(value: &[u8]) -> Result<Conversation> {
    let mut r = ValueReader { rest: value };
    let bad = || corrupt(Table::UidChanConversation, "conversation");
    if r.u8() != Some(FORMAT_V1) {
        return Err(bad());
    }
    Ok(Conversation { read_to: r.u64().ok_or_else(bad)?, deleted_at: r.u64().ok_or_else(bad)? })
}

pub(crate) fn corrupt(table: Table, what: &'static str) -> StoreError {
    StoreError::Corrupt { table: table.name(), what }
}

/// Typed access to Hongyan's tables. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    kv: Arc<dyn KvBackend>,
}

impl Store {
    /// Typed tables over `kv`.
    pub fn new(kv: Arc<dyn KvBackend>) -> Self {
        Self { kv }
    }

    pub(crate) fn kv(&self) -> &dyn KvBackend {
        &*self.kv
    }

    /// The backend the tables are stored in.
    pub fn backend(&self) -> &Arc<dyn KvBackend> {
        &self.kv
    }

    /// The registration of (uid, device_flag), if any.
    pub fn device(&self, uid: &str, device_flag: u8) -> Result<Option<Device>> {
        let Some(value) = self.kv.get(Table::UidDevice, &device_key(uid, device_flag))? else {
            return Ok(None);
        };
        let mut r = ValueReader { rest: &value };
        let bad = || corrupt(Table::UidDevice, "device");
        let format = r.u8().ok_or_else(bad)?;
        let level = r.u8().and_then(DeviceLevel::from_u8).ok_or_else(bad)?;
        let token_digest = match format {
            DEVICE_DIGEST => r.rest.try_into().map_err(|_| bad())?,
            FORMAT_V1 => digest(r.rest_str().ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        Ok(Some(Device { token_digest, level }))
    }

    /// Registers (or replaces) the token of (uid, device_flag), durably.
    pub fn put_device(&self, uid: &str, device_flag: u8, device: &Device) -> Result<()> {
        let mut value = Vec::with_capacity(2 + device.token_digest.len());
        value.extend_from_slice(&[DEVICE_DIGEST, device.level as u8]);
        value.extend_from_slice(&device.token_digest);
        self.kv.write(vec![Write::Put(Table::UidDevice, device_key(uid, device_flag), value)], true)
    }

    /// Forgets the token of (uid, device_flag), durably, so the next login fails.
    pub fn remove_device(&self, uid: &str, device_flag: u8) -> Result<()> {
        self.kv.write(self.device_removal_writes(uid, &[device_flag]), true)
    }

    /// The writes that forget the tokens of `uid` for `device_flags`, to batch.
    pub fn device_removal_writes(&self, uid: &str, device_flags: &[u8]) -> Vec<Write> {
        device_flags.iter().map(|flag| Write::Delete(Table::UidDevice, device_key(uid, *flag))).collect()
    }

    /// Whether any device of `uid` is registered (i.e. the user exists).
    pub fn user_exists(&self, uid: &str) -> Result<bool> {
        let mut prefix = Vec::with_capacity(2 + uid.len());
        push_str16(&mut prefix, uid);
        Ok(!self.kv.scan_prefix(Table::UidDevice, &prefix, 1)?.is_empty())
    }

    /// The attributes of a channel; `None` if none were ever set.
    pub fn channel_info(&self, channel_id: &str, channel_type: u8) -> Result<Option<ChannelInfo>> {
        let Some(value) = self.kv.get(Table::ChannelInfo, &channel_key(channel_id, channel_type))? else {
            return Ok(None);
        };
        match value.as_slice() {
            [FORMAT_V1, bits] => Ok(Some(ChannelInfo::from_bits(*bits))),
            _ => Err(corrupt(Table::ChannelInfo, "channel info")),
        }
    }

    /// Sets the attributes of a channel, durably.
    pub fn put_channel_info(&self, channel_id: &str, channel_type: u8, info: ChannelInfo) -> Result<()> {
        self.kv.write(vec![self.channel_info_write(channel_id, channel_type, info)], true)
    }

    /// The write of [`Store::put_channel_info`], to batch with others.
    pub fn channel_info_write(&self, channel_id: &str, channel_type: u8, info: ChannelInfo) -> Write {
        Write::Put(Table::ChannelInfo, channel_key(channel_id, channel_type), vec![FORMAT_V1, info.bits()])
    }

    /// The write that forgets a channel's attributes altogether.
    pub fn channel_info_removal(&self, channel_id: &str, channel_type: u8) -> Write {
        Write::Delete(Table::ChannelInfo, channel_key(channel_id, channel_type))
    }

    /// The first channel of `channel_type` after `after` (or the first of all) with an
    /// entry on `list`: one key read per channel, however many members it has.
    pub fn next_channel_with(&self, list: MemberList, channel_type: u8, after: Option<&str>) -> Result<Option<String>> {
        let start = match after {
            Some(id) => {
                let mut key = list_prefix(id, channel_type);
                key.extend_from_slice(&[0xff; 256]);
                key
            }
            None => vec![channel_type],
        };
        let end = vec![channel_type.saturating_add(1)];
        let Some((key, _)) = self.kv.scan_range(list.table(), &start, &end, 1, Order::Ascending)?.into_iter().next()
        else {
            return Ok(None);
        };
        let mut r = ValueReader { rest: key.get(1..).unwrap_or_default() };
        let id = r.str16().ok_or_else(|| corrupt(list.table(), "channel id"))?;
        Ok(Some(id.to_owned()))
    }
}

/// Up to `limit` entries of `table` whose key starts with `prefix`, past the key
/// `prefix + after` (every one when `after` is empty), in key order.
fn scan_after(
    kv: &dyn KvBackend,
    table: Table,
    prefix: &[u8],
    after: &[u8],
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if after.is_empty() {
        return kv.scan_prefix(table, prefix, limit);
    }
    let mut start = [prefix, after].concat();
    start.push(0);
    // The first key past every key that starts with `prefix`.
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    match end.last_mut() {
        Some(last) => *last += 1,
        // Every byte of the prefix is 0xff: the scan runs to the table's end.
        None => {
            return Ok(kv
                .scan_prefix(table, prefix, usize::MAX)?
                .into_iter()
                .filter(|(k, _)| *k >= start)
                .take(limit)
                .collect());
        }
    }
    kv.scan_range(table, &start, &end, limit, Order::Ascending)
}

impl Store {
    /// `uid`'s conversation with `channel`, if it has one.
    pub fn conversation(&self, uid: &str, channel: &crate::ChannelKey) -> Result<Option<Conversation>> {
        self.kv
            .get(Table::UidChanConversation, &conversation_key(uid, channel))?
            .map(|v| decode_conversation(&v))
            .transpose()
    }

    /// Sets `uid`'s conversation with `channel`, durably.
    pub fn put_conversation(&self, uid: &str, channel: &crate::ChannelKey, c: Conversation) -> Result<()> {
        self.kv.write(vec![self.conversation_write(uid, channel, c)], true)
    }

    /// Sets `uid`'s conversation with `channel`; with `durable` false it becomes durable
    /// with the next synced write (for cursor moves that are cheap to repeat).
    pub fn put_conversation_with(
        &self,
        uid: &str,
        channel: &crate::ChannelKey,
        c: Conversation,
        durable: bool,
    ) -> Result<()> {
        self.kv.write(vec![self.conversation_write(uid, channel, c)], durable)
    }

    /// Removes the conversation rows of `uids` with `channel`, durably.
    pub fn remove_conversations(&self, uids: &[String], channel: &crate::ChannelKey) -> Result<()> {
        self.kv.write(self.remove_conversation_writes(uids, channel), true)
    }

    /// The writes of [`Store::remove_conversations`], to batch with others.
    pub fn remove_conversation_writes(&self, uids: &[String], channel: &crate::ChannelKey) -> Vec<Write> {
        uids.iter().map(|uid| Write::Delete(Table::UidChanConversation, conversation_key(uid, channel))).collect()
    }

    /// The write that sets a conversation, to batch with others (e.g. with a message).
    pub fn conversation_write(&self, uid: &str, channel: &crate::ChannelKey, c: Conversation) -> Write {
        Write::Put(Table::UidChanConversation, conversation_key(uid, channel), conversation_value(c))
    }

    /// Every conversation of `uid`.
    pub fn conversations(&self, uid: &str) -> Result<Vec<(crate::ChannelKey, Conversation)>> {
        let mut prefix = Vec::with_capacity(2 + uid.len());
        push_str16(&mut prefix, uid);
        self.kv
            .scan_prefix(Table::UidChanConversation, &prefix, usize::MAX)?
            .into_iter()
            .map(|(key, value)| {
                let rest = &key[prefix.len()..];
                let (&channel_type, id) =
                    rest.split_first().ok_or_else(|| corrupt(Table::UidChanConversation, "key"))?;
                let id = std::str::from_utf8(id).map_err(|_| corrupt(Table::UidChanConversation, "key"))?;
                Ok((crate::ChannelKey::new(id, channel_type), decode_conversation(&value)?))
            })
            .collect()
    }

    /// Every system account.
    pub fn system_uids(&self) -> Result<Vec<String>> {
        self.kv
            .scan_prefix(Table::UidSystem, b"", usize::MAX)?
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).map_err(|_| corrupt(Table::UidSystem, "uid")))
            .collect()
    }

    /// A number this node keeps for itself under `name`, if set.
    pub fn meta_u64(&self, name: &str) -> Result<Option<u64>> {
        let Some(value) = self.kv.get(Table::Meta, name.as_bytes())? else { return Ok(None) };
        let bytes: [u8; 8] = value.as_slice().try_into().map_err(|_| corrupt(Table::Meta, "number"))?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// Sets such a number, durably.
    pub fn put_meta_u64(&self, name: &str, value: u64) -> Result<()> {
        self.kv.write(vec![Write::Put(Table::Meta, name.as_bytes().to_vec(), value.to_be_bytes().to_vec())], true)
    }

    /// Adds or removes system accounts, durably.
    pub fn set_system_uids(&self, uids: &[String], system: bool) -> Result<()> {
        let writes = uids
            .iter()
            .map(|u| {
                let key = u.as_bytes().to_vec();
                if system {
                    Write::Put(Table::UidSystem, key, vec![FORMAT_V1])
                } else {
                    Write::Delete(Table::UidSystem, key)
                }
            })
            .collect();
        self.kv.write(writes, true)
    }

    /// Every uid on `list` of a channel, in uid order.
    pub fn members(&self, list: MemberList, channel_id: &str, channel_type: u8) -> Result<Vec<String>> {
        let prefix = list_prefix(channel_id, channel_type);
        self.kv
            .scan_prefix(list.table(), &prefix, usize::MAX)?
            .into_iter()
            .map(|(key, _)| {
                std::str::from_utf8(&key[prefix.len()..]).map(str::to_owned).map_err(|_| corrupt(list.table(), "uid"))
            })
            .collect()
    }

    /// Every uid on `list` of a channel with when it was (last) added, milliseconds
    /// since the epoch, in uid order.
    pub fn member_entries(&self, list: MemberList, channel_id: &str, channel_type: u8) -> Result<Vec<(String, i64)>> {
        self.member_page(list, channel_id, channel_type, "", usize::MAX)
    }

    /// Up to `limit` uids on `list` of a channel after `after` (from the first when
    /// empty), in uid order, with when each was (last) added: one page of a list too
    /// long to read at once.
    pub fn member_page(
        &self,
        list: MemberList,
        channel_id: &str,
        channel_type: u8,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        let prefix = list_prefix(channel_id, channel_type);
        let entries = scan_after(self.kv.as_ref(), list.table(), &prefix, after.as_bytes(), limit)?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let bad = || corrupt(list.table(), "member");
                let uid = std::str::from_utf8(&key[prefix.len()..]).map_err(|_| bad())?.to_owned();
                let mut r = ValueReader { rest: &value };
                if r.u8() != Some(FORMAT_V1) {
                    return Err(bad());
                }
                Ok((uid, r.i64().unwrap_or(0)))
            })
            .collect()
    }

    /// Up to `limit` channels of `channel_type` with stored attributes whose id starts
    /// with `prefix`, after `after` (from the first when empty), in id order.
    pub fn channels_by_prefix(
        &self,
        channel_type: u8,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, ChannelInfo)>> {
        let key_prefix = channel_key(prefix, channel_type);
        // `after` is a whole id; the scan starts past it, within the prefix. An `after`
        // outside the prefix is before all of it or past all of it.
        let rest = match after.strip_prefix(prefix) {
            Some(rest) => rest,
            None if after.is_empty() || after < prefix => "",
            None => return Ok(Vec::new()),
        };
        let entries = scan_after(self.kv.as_ref(), Table::ChannelInfo, &key_prefix, rest.as_bytes(), limit)?;
        entries
            .into_iter()
            .map(|(key, value)| {
                let bad = || corrupt(Table::ChannelInfo, "channel info");
                let id = std::str::from_utf8(&key[1..]).map_err(|_| bad())?.to_owned();
                match value.as_slice() {
                    [FORMAT_V1, bits] => Ok((id, ChannelInfo::from_bits(*bits))),
                    _ => Err(bad()),
                }
            })
            .collect()
    }

    /// Whether `uid` is on `list` of a channel.
    pub fn is_member(&self, list: MemberList, channel_id: &str, channel_type: u8, uid: &str) -> Result<bool> {
        let mut key = list_prefix(channel_id, channel_type);
        key.extend_from_slice(uid.as_bytes());
        Ok(self.kv.get(list.table(), &key)?.is_some())
    }

    /// Whether `list` of a channel has anyone on it.
    pub fn has_members(&self, list: MemberList, channel_id: &str, channel_type: u8) -> Result<bool> {
        Ok(!self.kv.scan_prefix(list.table(), &list_prefix(channel_id, channel_type), 1)?.is_empty())
    }

    /// Adds `uids` to `list` (atomically, durably), first clearing it when `reset`.
    pub fn add_members(
        &self,
        list: MemberList,
        channel_id: &str,
        channel_type: u8,
        uids: &[String],
        reset: bool,
    ) -> Result<()> {
        self.kv.write(self.add_member_writes(list, channel_id, channel_type, uids, reset)?, true)
    }

    /// The writes of [`Store::add_members`], to batch with others.
    pub fn add_member_writes(
        &self,
        list: MemberList,
        channel_id: &str,
        channel_type: u8,
        uids: &[String],
        reset: bool,
    ) -> Result<Vec<Write>> {
        let prefix = list_prefix(channel_id, channel_type);
        let mut writes = Vec::new();
        if reset {
            for (key, _) in self.kv.scan_prefix(list.table(), &prefix, usize::MAX)? {
                writes.push(Write::Delete(list.table(), key));
            }
        }
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for uid in uids {
            let mut key = prefix.clone();
            key.extend_from_slice(uid.as_bytes());
            let mut value = Vec::with_capacity(9);
            value.push(FORMAT_V1);
            value.extend_from_slice(&now_ms.to_be_bytes());
            writes.push(Write::Put(list.table(), key, value));
        }
        Ok(writes)
    }

    /// Removes `uids` from `list`, durably.
    pub fn remove_members(&self, list: MemberList, channel_id: &str, channel_type: u8, uids: &[String]) -> Result<()> {
        self.kv.write(self.remove_member_writes(list, channel_id, channel_type, uids), true)
    }

    /// The writes of [`Store::remove_members`], to batch with others.
    pub fn remove_member_writes(
        &self,
        list: MemberList,
        channel_id: &str,
        channel_type: u8,
        uids: &[String],
    ) -> Vec<Write> {
        let prefix = list_prefix(channel_id, channel_type);
        uids.iter()
            .map(|uid| {
                let mut key = prefix.clone();
                key.extend_from_slice(uid.as_bytes());
                Write::Delete(list.table(), key)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FjallBackend, MemoryBackend};

    #[test]
    fn memory_backend_conforms() {
        crate::testing::tables_contract(&Store::new(Arc::new(MemoryBackend::new())));
    }

    #[test]
    fn fjall_backend_conforms_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::new(Arc::new(FjallBackend::open(dir.path()).unwrap()));
            crate::testing::tables_contract(&store);
            store.put_device("kept", 2, &Device::new("tok", DeviceLevel::Slave)).unwrap();
        }
        let store = Store::new(Arc::new(FjallBackend::open(dir.path()).unwrap()));
        assert!(store.device("kept", 2).unwrap().unwrap().token_matches("tok"));
        assert_eq!(store.channel_info("u1", 1).unwrap().map(|i| i.ban), Some(true));
    }

    #[test]
    fn tokens_are_stored_as_digests_and_old_plaintext_rows_still_log_in() {
        let kv = Arc::new(MemoryBackend::new());
        let store = Store::new(kv.clone());
        store.put_device("u", 1, &Device::new("secret-token", DeviceLevel::Master)).unwrap();
        let raw = kv.get(Table::UidDevice, &device_key("u", 1)).unwrap().unwrap();
        assert!(!raw.windows(12).any(|w| w == b"secret-token"), "the token itself is not stored");
        assert_eq!(raw.len(), 2 + 32);
        // A row written by an earlier version holds the token itself.
        let mut v1 = vec![FORMAT_V1, DeviceLevel::Slave as u8];
        v1.extend_from_slice(b"old-token");
        kv.write(vec![Write::Put(Table::UidDevice, device_key("v", 1), v1)], true).unwrap();
        let old = store.device("v", 1).unwrap().unwrap();
        assert!(old.token_matches("old-token") && !old.token_matches("old-toke"));
        assert_eq!(old.level, DeviceLevel::Slave);
    }

    #[test]
    fn corrupt_values_are_errors() {
        let kv = Arc::new(MemoryBackend::new());
        kv.write(vec![Write::Put(Table::UidDevice, device_key("u", 1), vec![9, 9])], true).unwrap();
        assert!(matches!(Store::new(kv).device("u", 1), Err(StoreError::Corrupt { .. })));
    }
}
