//! Command (SyncOnce) messages: consumed once per user, not once per device.
//!
//! A SyncOnce message is stored in its channel's command channel (the channel's type
//! with [`crate::channel::COMMAND`] set), with its own dense seqs. Each user with a
//! part in the channel has a command cursor there (a conversation row of the command
//! channel): group subscribers get one when they join, both sides of a person chat with
//! the chat's first command.
//!
//! The cursor moves when the user's **master** device acknowledges the command's RECV,
//! or when the app server confirms a `/message/sync` page with `/message/syncack`. A
//! command the user has consumed is never returned by `/message/sync` again; one not
//! yet consumed is returned until it is. Own commands and expired ones are skipped.
//!
//! All functions here block (storage): call them off the async workers.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use hongyan_store::{ChannelKey, Conversation, Order, StoreError, StoredMessage};

use crate::Core;
use crate::channel::is_command;

/// Users whose last `/message/sync` page is remembered for `/message/syncack`; beyond
/// that, the oldest pages are forgotten (their commands are returned again).
const REMEMBERED_SYNCS: usize = 100_000;

/// Per user, how far the last `/message/sync` page went in each command channel.
#[derive(Debug, Default)]
pub(crate) struct SyncedCommands {
    pages: Mutex<SyncedPages>,
}

#[derive(Debug, Default)]
struct SyncedPages {
    by_uid: HashMap<String, (u64, Vec<(ChannelKey, u64)>)>,
    next_stamp: u64,
}

impl SyncedCommands {
    fn remember(&self, uid: &str, page: Vec<(ChannelKey, u64)>) {
        let mut pages = self.pages.lock().unwrap_or_else(PoisonError::into_inner);
        pages.next_stamp += 1;
        let stamp = pages.next_stamp;
        pages.by_uid.insert(uid.to_owned(), (stamp, page));
        if pages.by_uid.len() > REMEMBERED_SYNCS {
            // Forget the oldest tenth at once, so eviction is rare.
            let mut stamps: Vec<u64> = pages.by_uid.values().map(|(s, _)| *s).collect();
            let cut = REMEMBERED_SYNCS / 10;
            stamps.select_nth_unstable(cut);
            let below = stamps[cut];
            pages.by_uid.retain(|_, (s, _)| *s > below);
        }
    }

    fn take(&self, uid: &str) -> Option<Vec<(ChannelKey, u64)>> {
        self.pages.lock().unwrap_or_else(PoisonError::into_inner).by_uid.remove(uid).map(|(_, page)| page)
    }
}

/// Whether `message` has expired at `now_ms` (expire 0: never).
pub fn is_expired(message: &hongyan_store::NewMessage, now_ms: i64) -> bool {
    message.expire > 0 && message.timestamp_ms.saturating_add(i64::from(message.expire) * 1000) <= now_ms
}

impl Core {
    /// Moves `uid`'s cursor in a command channel forward to `seq` (never back). Without
    /// `durable` the move rides on the next synced write: losing it in a crash only
    /// means the command is offered once more.
    pub fn advance_command_cursor(
        &self,
        uid: &str,
        channel: &ChannelKey,
        seq: u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        let _guard = self.lock_user(uid);
        let mut state = self.store().conversation(uid, channel)?.unwrap_or_default();
        if state.read_to >= seq {
            return Ok(());
        }
        state.read_to = seq;
        self.store().put_conversation_with(uid, channel, state, durable)
    }

    /// Up to `limit` commands `uid` has not consumed, oldest first per channel, with
    /// their (command) channels. Remembers how far the page went for
    /// [`Core::ack_synced_commands`].
    pub fn pending_commands(&self, uid: &str, limit: usize) -> Result<Vec<(ChannelKey, StoredMessage)>, StoreError> {
        let now = crate::now_ms();
        let mut page = Vec::new();
        let mut reached = Vec::new();
        for (channel, Conversation { read_to, .. }) in self.store().conversations(uid)? {
            if !is_command(&channel) || page.len() >= limit {
                continue;
            }
            let messages = self.log().read(&channel, read_to + 1, 0, limit - page.len(), Order::Ascending)?;
            let Some(last) = messages.last() else { continue };
            reached.push((channel.clone(), last.seq));
            for m in messages {
                if m.message.from_uid != uid && !is_expired(&m.message, now) {
                    page.push((channel.clone(), m));
                }
            }
        }
        self.command_syncs.remember(uid, reached);
        Ok(page)
    }

    /// Consumes what `uid`'s last [`Core::pending_commands`] returned. Returns how many
    /// command channels moved.
    pub fn ack_synced_commands(&self, uid: &str) -> Result<usize, StoreError> {
        let Some(page) = self.command_syncs.take(uid) else { return Ok(0) };
        for (channel, seq) in &page {
            self.advance_command_cursor(uid, channel, *seq, true)?;
        }
        Ok(page.len())
    }

    /// Holds the lock over `uid`'s rows (conversations, profile), for a read-modify-write.
    pub(crate) fn lock_user(&self, uid: &str) -> std::sync::MutexGuard<'_, ()> {
        let stripe = crc32fast::hash(uid.as_bytes()) as usize % self.conversation_locks.len();
        self.conversation_locks[stripe].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The id of a temporary channel made for the send to a list whose message id is `id`.
pub(crate) fn temp_channel_id(message_id: i64) -> String {
    format!("tmp{message_id:x}")
}

impl Core {
    /// Removes the temporary channels of sends to a list of uids made more than
    /// `max_age` ago: their members (and command cursors), messages and attributes. Their
    /// age is in their id (the send's snowflake). Returns how many went. Blocking.
    pub fn expire_temp_channels(&self, max_age: std::time::Duration) -> Result<usize, StoreError> {
        let store = self.store();
        let now = crate::ids::Snowflake::epoch_ms();
        let max_age = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        let mut after: Option<String> = None;
        let mut removed = 0;
        while let Some(id) =
            store.next_channel_with(hongyan_store::MemberList::Subscribers, crate::channel::TEMP, after.as_deref())?
        {
            let made = id.strip_prefix("tmp").and_then(|hex| i64::from_str_radix(hex, 16).ok());
            if let Some(message_id) = made
                && now.saturating_sub(crate::ids::Snowflake::millis_of(message_id)) > max_age
            {
                let key = ChannelKey::new(id.clone(), crate::channel::TEMP);
                self.delete_channel(&key)?;
                store.apply(vec![store.channel_info_removal(&id, crate::channel::TEMP)])?;
                self.channel_changed(&key);
                removed += 1;
            }
            after = Some(id);
        }
        metrics::counter!("hongyan_core_temp_channels_expired_total").increment(removed as u64);
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_pages_are_bounded_and_taken_once() {
        let synced = SyncedCommands::default();
        let g = ChannelKey::new("g", 0x82);
        synced.remember("a", vec![(g.clone(), 3)]);
        assert_eq!(synced.take("a"), Some(vec![(g.clone(), 3)]));
        assert_eq!(synced.take("a"), None);
        for i in 0..=REMEMBERED_SYNCS {
            synced.remember(&format!("u{i}"), Vec::new());
        }
        let pages = synced.pages.lock().unwrap();
        assert!(pages.by_uid.len() <= REMEMBERED_SYNCS);
        assert!(pages.by_uid.contains_key(&format!("u{REMEMBERED_SYNCS}")), "the newest page is kept");
    }

    #[test]
    fn expiry() {
        let m = hongyan_store::NewMessage {
            message_id: 1,
            timestamp_ms: 10_000,
            from_uid: "a".into(),
            client_msg_no: String::new(),
            header: 0,
            setting: 0,
            expire: 5,
            topic: None,
            payload: bytes::Bytes::new(),
        };
        assert!(!is_expired(&m, 14_999));
        assert!(is_expired(&m, 15_000));
        assert!(!is_expired(&hongyan_store::NewMessage { expire: 0, ..m }, i64::MAX));
    }
}
