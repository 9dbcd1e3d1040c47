//! Conversations: per user and channel, a read cursor and a deletion mark. Unread
//! counts are computed from them when asked, never stored.
//!
//! * **Unread** = messages from others after both the cursor and the user's own latest
//!   message. Own messages never count, and writing in a channel implies having read it.
//! * **Deleted** conversations stay hidden until a message newer than the deletion.
//! * The cursor moves only forward (`set_unread`, `clear_unread`), and is one per user,
//!   so every device of the user sees the same count.
//!
//! Rows appear when a user is added to a group (cursor at the group's last seq, so old
//! history is not unread) and with the first message of a person chat (in the same
//! atomic batch as the message). Command channels have rows too (their cursors, see
//! [`crate::commands`]); conversation listings leave them out.
//!
//! Expired messages neither count as unread nor show as recents.
//!
//! All functions here block (storage reads): call them off the async workers.

use hongyan_store::{ChannelKey, Conversation, MemberList, Order, StoredMessage, Write};

use crate::Core;
use crate::channel::{PERSON, command_channel, is_command};
use crate::commands::is_expired;

/// Most messages scanned to count one conversation's unread; beyond it the count is
/// the number of messages after the cursor.
const UNREAD_SCAN_LIMIT: usize = 10_000;
/// Unread messages read for every conversation at once; a conversation with more is
/// read on its own.
const UNREAD_PAGE: usize = 64;

/// One conversation as `conversation/sync` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationView {
    /// The stored channel.
    pub channel: ChannelKey,
    /// The user's cursor and deletion mark.
    pub state: Conversation,
    /// The channel's last seq.
    pub last_seq: u64,
    /// Unread messages.
    pub unread: u64,
    /// The newest messages, newest first (as many as asked for).
    pub recents: Vec<StoredMessage>,
    /// The newest message's time, milliseconds since the epoch.
    pub last_timestamp_ms: i64,
    /// The newest message's client_msg_no.
    pub last_client_msg_no: String,
}

/// Which of a user's conversations [`Core::conversations`] lists.
#[derive(Clone, Debug)]
pub struct ConversationQuery {
    /// What the client holds: channel → the last seq it has. A conversation with
    /// nothing newer is left out.
    pub known: std::collections::HashMap<ChannelKey, u64>,
    /// Newest messages to include with each.
    pub recents: usize,
    /// Only conversations whose newest message is newer than this (ms since the
    /// epoch; 0 or less: all).
    pub newer_than_ms: i64,
    /// Only conversations with unread messages.
    pub only_unread: bool,
    /// Leave out channels of these types.
    pub exclude_types: Vec<u8>,
    /// Conversations to skip, newest first, before the page.
    pub offset: usize,
    /// The page's length.
    pub limit: usize,
}

/// A conversation with news, before its unread count is read.
struct Shown {
    channel: ChannelKey,
    state: Conversation,
    last_seq: u64,
    newest: StoredMessage,
}

/// What went wrong with a conversation call.
#[derive(Debug)]
pub enum ConversationError {
    /// Storage failed.
    Storage(hongyan_store::StoreError),
    /// The user has no conversation with that channel.
    NotFound,
}

impl From<hongyan_store::StoreError> for ConversationError {
    fn from(e: hongyan_store::StoreError) -> Self {
        Self::Storage(e)
    }
}

impl Core {
    /// The stored channel a user means by `channel_id`: for person chats, the pair.
    pub fn channel_for(&self, uid: &str, channel_id: &str, channel_type: u8) -> ChannelKey {
        if channel_type == PERSON {
            ChannelKey::new(crate::channel::person_channel_id(uid, channel_id), PERSON)
        } else {
            ChannelKey::new(channel_id, channel_type)
        }
    }

    /// Unread messages in `channel` for `uid` with cursor `state`, up to `last_seq`.
    /// Counts `uid`'s unread messages in `newest_first` (the channel's messages after
    /// the read cursor, newest first): those of others, newer than the user's own latest
    /// message, not expired. `None` when the page is full and holds no message of the
    /// user's: the count needs more of the channel.
    fn count_unread(uid: &str, newest_first: &[hongyan_store::StoredMessage], page: usize, now: i64) -> Option<u64> {
        let own = newest_first.iter().position(|m| m.message.from_uid == uid);
        if own.is_none() && newest_first.len() >= page {
            return None;
        }
        let counted = &newest_first[..own.unwrap_or(newest_first.len())];
        Some(counted.iter().filter(|m| !is_expired(&m.message, now)).count() as u64)
    }

    /// Unread messages of one channel, reading as far back as needed.
    fn unread(&self, uid: &str, channel: &ChannelKey, from: u64, last_seq: u64) -> hongyan_store::Result<u64> {
        let newest_first = self.log().read(channel, from, last_seq + 1, UNREAD_SCAN_LIMIT, Order::Descending)?;
        let now = crate::now_ms();
        Ok(Self::count_unread(uid, &newest_first, UNREAD_SCAN_LIMIT, now).unwrap_or(last_seq + 1 - from))
    }

    /// A page of `uid`'s conversations with news (those not deleted since their last
    /// message and newer than what the client holds), newest conversation first.
    ///
    /// Every conversation's newest message is read to order them (in one read for all:
    /// the list, every channel's last seq and newest message). The rest is only done
    /// for the page: one page (`UNREAD_PAGE`) of unread messages of each of its channels
    /// whose newest message is someone else's (in one read), and recents beyond the
    /// newest. Only a channel with more unread than a page, or a request for more
    /// recents than one, is read on its own. With `only_unread`, candidates are counted
    /// a page at a time in order until the page is full.
    pub fn conversations(&self, uid: &str, q: &ConversationQuery) -> hongyan_store::Result<Vec<ConversationView>> {
        let now = crate::now_ms();
        let all: Vec<(ChannelKey, Conversation)> = self
            .store()
            .conversations(uid)?
            .into_iter()
            .filter(|(channel, _)| !is_command(channel) && !q.exclude_types.contains(&channel.channel_type))
            .collect();
        let channels: Vec<&ChannelKey> = all.iter().map(|(channel, _)| channel).collect();
        let newest = self.log().newest(&channels)?;
        // The conversations with news, each with its newest stored message, newest first.
        let mut shown = Vec::new();
        for ((channel, state), (last_seq, newest)) in all.into_iter().zip(newest) {
            if last_seq == 0 || last_seq <= state.deleted_at || q.known.get(&channel).is_some_and(|k| *k >= last_seq) {
                continue;
            }
            if let Some(newest) = newest.filter(|m| q.newer_than_ms <= 0 || m.message.timestamp_ms > q.newer_than_ms) {
                shown.push(Shown { channel, state, last_seq, newest });
            }
        }
        shown.sort_by(|a, b| {
            b.newest.message.timestamp_ms.cmp(&a.newest.message.timestamp_ms).then_with(|| a.channel.cmp(&b.channel))
        });
        if !q.only_unread {
            let page: Vec<Shown> = shown.into_iter().skip(q.offset).take(q.limit).collect();
            return self.views(uid, page, q.recents, now);
        }
        // Only those with unread: count in order, a page's worth at a time.
        let (mut skipped, mut views) = (0, Vec::new());
        let mut rest = shown.into_iter().peekable();
        while views.len() < q.limit && rest.peek().is_some() {
            let chunk: Vec<Shown> = rest.by_ref().take(q.limit.max(UNREAD_PAGE)).collect();
            for view in self.views(uid, chunk, q.recents, now)?.into_iter().filter(|v| v.unread > 0) {
                if skipped < q.offset {
                    skipped += 1;
                } else if views.len() < q.limit {
                    views.push(view);
                }
            }
        }
        Ok(views)
    }

    /// The views of `shown`, in its order: unread counts and recents read.
    fn views(
        &self,
        uid: &str,
        shown: Vec<Shown>,
        recents: usize,
        now: i64,
    ) -> hongyan_store::Result<Vec<ConversationView>> {
        // Which of them may have unread messages: someone else's message after the
        // cursor. One page of each, in one read.
        let unread_from = |state: &Conversation| state.read_to.max(state.deleted_at) + 1;
        let pending: Vec<(&ChannelKey, u64, u64)> = shown
            .iter()
            .filter(|s| s.newest.seq >= unread_from(&s.state) && s.newest.message.from_uid != uid)
            .map(|s| (&s.channel, unread_from(&s.state), s.last_seq + 1))
            .collect();
        let pages = self.log().read_many(&pending, UNREAD_PAGE, Order::Descending)?;
        let mut page_of: std::collections::HashMap<&ChannelKey, Vec<hongyan_store::StoredMessage>> =
            pending.iter().map(|(channel, _, _)| *channel).zip(pages).collect();
        let mut views = Vec::with_capacity(shown.len());
        for s in &shown {
            let unread = match page_of.remove(&s.channel) {
                None => 0,
                Some(page) => match Self::count_unread(uid, &page, UNREAD_PAGE, now) {
                    Some(unread) => unread,
                    None => self.unread(uid, &s.channel, unread_from(&s.state), s.last_seq)?,
                },
            };
            let newest_first = if recents <= 1 {
                vec![s.newest.clone()]
            } else {
                self.log().read(&s.channel, 1, 0, recents, Order::Descending)?
            };
            let Some(last) = newest_first.first() else { continue };
            let (last_timestamp_ms, last_client_msg_no) =
                (last.message.timestamp_ms, last.message.client_msg_no.clone());
            let recents = if recents == 0 {
                Vec::new()
            } else {
                newest_first.into_iter().filter(|m| !is_expired(&m.message, now)).collect()
            };
            views.push(ConversationView {
                channel: s.channel.clone(),
                state: s.state,
                last_seq: s.last_seq,
                unread,
                recents,
                last_timestamp_ms,
                last_client_msg_no,
            });
        }
        Ok(views)
    }

    fn update(
        &self,
        uid: &str,
        channel: &ChannelKey,
        change: impl FnOnce(&mut Conversation, u64),
    ) -> Result<(), ConversationError> {
        let _guard = self.lock_user(uid);
        let mut state = self.store().conversation(uid, channel)?.ok_or(ConversationError::NotFound)?;
        let last_seq = self.log().last_seq(channel)?;
        change(&mut state, last_seq);
        self.store().put_conversation(uid, channel, state)?;
        Ok(())
    }

    /// Leaves `unread` messages unread: the cursor moves to `last − unread`, only forward.
    pub fn set_unread(&self, uid: &str, channel: &ChannelKey, unread: u64) -> Result<(), ConversationError> {
        self.update(uid, channel, |c, last| c.read_to = c.read_to.max(last.saturating_sub(unread)))
    }

    /// Marks everything up to `up_to` read (0: everything).
    pub fn clear_unread(&self, uid: &str, channel: &ChannelKey, up_to: u64) -> Result<(), ConversationError> {
        self.update(uid, channel, |c, last| {
            let to = if up_to == 0 { last } else { up_to.min(last) };
            c.read_to = c.read_to.max(to);
        })
    }

    /// Hides the conversation until a newer message arrives.
    pub fn delete_conversation(&self, uid: &str, channel: &ChannelKey) -> Result<(), ConversationError> {
        self.update(uid, channel, |c, last| {
            c.deleted_at = last;
            c.read_to = c.read_to.max(last);
        })
    }

    /// The writes that add subscribers (replacing them all when `reset`): each new one
    /// gets a conversation whose cursor is the channel's last seq (history before
    /// joining is not unread) and a command cursor at the command channel's last seq;
    /// those who leave lose their command cursor and group role. Also returns who left
    /// (with `reset`, the members not in `uids`).
    pub(crate) fn subscriber_writes(
        &self,
        channel: &ChannelKey,
        uids: &[String],
        reset: bool,
    ) -> hongyan_store::Result<(Vec<Write>, Vec<String>)> {
        let store = self.store();
        let (id, ty) = (channel.channel_id.as_str(), channel.channel_type);
        let removed: Vec<String> = if reset {
            let keep: std::collections::HashSet<&String> = uids.iter().collect();
            store.members(MemberList::Subscribers, id, ty)?.into_iter().filter(|u| !keep.contains(u)).collect()
        } else {
            Vec::new()
        };
        let mut writes = store.add_member_writes(MemberList::Subscribers, id, ty, uids, reset)?;
        let commands = command_channel(channel);
        writes.extend(self.leaving_writes(channel, &removed));
        let last_seq = self.log().last_seq(channel)?;
        let last_command = self.log().last_seq(&commands)?;
        for uid in uids {
            if store.conversation(uid, channel)?.is_none() {
                let start = Conversation { read_to: last_seq, deleted_at: 0 };
                writes.push(store.conversation_write(uid, channel, start));
            }
            if store.conversation(uid, &commands)?.is_none() {
                let start = Conversation { read_to: last_command, deleted_at: 0 };
                writes.push(store.conversation_write(uid, &commands, start));
            }
        }
        Ok((writes, removed))
    }

    /// What leaving a channel takes with it: the command cursor and (in a group) the
    /// role. The chat conversation stays (the history the member saw).
    fn leaving_writes(&self, channel: &ChannelKey, left: &[String]) -> Vec<Write> {
        let store = self.store();
        let mut writes = store.remove_conversation_writes(left, &command_channel(channel));
        if channel.channel_type == crate::channel::GROUP {
            for uid in left {
                writes.push(store.role_write(
                    &channel.channel_id,
                    channel.channel_type,
                    uid,
                    hongyan_store::Role::Member,
                ));
            }
        }
        writes
    }

    /// Adds subscribers in one atomic batch; see [`Core::subscriber_writes`]. Callers
    /// go through [`Core::change_members`], which keeps the channel cache right.
    /// Returns who left.
    pub(crate) fn add_subscribers(
        &self,
        channel: &ChannelKey,
        uids: &[String],
        reset: bool,
    ) -> hongyan_store::Result<Vec<String>> {
        let (writes, removed) = self.subscriber_writes(channel, uids, reset)?;
        self.store().apply(writes)?;
        Ok(removed)
    }

    /// Removes subscribers in one atomic batch; they stop getting the channel's
    /// commands, including those not consumed yet.
    pub(crate) fn remove_subscribers(&self, channel: &ChannelKey, uids: &[String]) -> hongyan_store::Result<()> {
        let store = self.store();
        let (id, ty) = (channel.channel_id.as_str(), channel.channel_type);
        let mut writes = store.remove_member_writes(MemberList::Subscribers, id, ty, uids);
        writes.extend(self.leaving_writes(channel, uids));
        store.apply(writes)
    }
}
