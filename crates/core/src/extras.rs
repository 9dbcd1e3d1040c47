//! Message operations after a message is stored: revoke and edit.
//!
//! The log is never rewritten. A change is kept as the message's *extra*
//! (`hongyan_store::MessageExtra`) under the channel's next extra version; clients
//! learn of it in two ways, as the WuKongIM SDKs expect:
//! * online members get a command message at once (content type 99, `cmd`
//!   [`SYNC_EXTRA_CMD`], not stored), naming the channel and its new version;
//! * any device syncs what changed after the version it has seen
//!   ([`Core::message_extras_since`]), so an offline one catches up on its next sync.
//!
//! Who may do what is decided here, once, for every dialect: the app server (no
//! operator) may change any message; a user may revoke their own messages, and in a
//! group also another's when they are its owner or an admin; a user may edit only their
//! own; a system account may revoke any. A revoked message cannot be edited.

use std::sync::Arc;

use bytes::Bytes;
use hongyan_proto::HeaderFlags;
use hongyan_store::{ChannelKey, ExtraChange, MessageExtra, Reaction, ReactionWrite, Role, StoreError, StoredMessage};

use crate::channel::{GROUP, PERSON, person_channel_members};
use crate::{AppSend, Core, now_ms};

/// The `cmd` of the command message that tells online members a channel's extras
/// changed: `{"type":99,"cmd":"syncMessageExtra","param":{"channel_id","channel_type","extra_version"}}`.
pub const SYNC_EXTRA_CMD: &str = "syncMessageExtra";
/// The largest edited content: what one client frame may carry.
pub const MAX_EDIT_BYTES: usize = hongyan_proto::DEFAULT_MAX_FRAME_LEN;
/// The most extras one sync returns (and readers one call lists).
pub const MAX_EXTRA_SYNC: usize = 1_000;
/// The most messages one call marks read.
pub const MAX_READ_BATCH: usize = 100;
/// The longest reaction kind.
pub const MAX_REACTION_BYTES: usize = 64;
/// The most kinds of reaction one message carries.
pub const MAX_REACTION_KINDS: usize = 64;

/// What to do to a stored message.
#[derive(Clone, Debug)]
pub enum Change {
    /// Revoke it: clients show a notice in its place.
    Revoke,
    /// Replace its content with this payload.
    Edit(Bytes),
    /// The operator read it (counted once per user; the sender's own are not).
    Read,
    /// The operator gives (`add`) or takes back a reaction of this kind (an emoji or a
    /// short name, 1 to [`MAX_REACTION_BYTES`] bytes).
    React {
        /// The reaction.
        kind: String,
        /// Give it (else take it back).
        add: bool,
    },
}

/// Who asks for a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The app server itself: any change to any message.
    App,
    /// A user, whose rights are checked.
    User(String),
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No message with that id in that channel.
    #[error("no message {0} in this channel")]
    NotFound(i64),
    /// The operator may not make this change.
    #[error("{0}")]
    NotAllowed(&'static str),
    /// The message was revoked; it can no longer be edited or reacted to.
    #[error("message {0} was revoked")]
    Revoked(i64),
    /// The edited content is empty or too long.
    #[error("the edited content must be 1 to {MAX_EDIT_BYTES} bytes")]
    BadContent,
    /// The reaction is empty, too long or holds control characters.
    #[error("a reaction is 1 to {MAX_REACTION_BYTES} bytes of text")]
    BadReaction,
    /// Storage failed or is busy; nothing was changed.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

/// An extra as one user sees it: with whether they read the message, and how many
/// have not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraView {
    /// The message's extra.
    pub extra: MessageExtra,
    /// When the viewing user marked it read (ms since the epoch), if they did.
    pub readed_at_ms: Option<i64>,
    /// Members other than the sender who have not marked it read.
    pub unread_count: u64,
    /// The reaction kinds the viewing user gave it.
    pub my_reactions: Vec<String>,
}

impl Core {
    /// Applies `change` to message `message_id` of `channel` on behalf of `operator`,
    /// durably, and tells who needs to know (a revoke or an edit: the channel's online
    /// members; a read: the sender's devices). Revoking twice, or reading twice, is not
    /// an error and changes nothing. Blocking: call off the async runtime.
    pub fn change_message(
        self: &Arc<Self>,
        channel: &ChannelKey,
        message_id: i64,
        operator: &Operator,
        change: &Change,
    ) -> Result<MessageExtra, ChangeError> {
        if let Change::Edit(payload) = change
            && (payload.is_empty() || payload.len() > MAX_EDIT_BYTES)
        {
            return Err(ChangeError::BadContent);
        }
        if let Change::React { kind, .. } = change {
            if kind.is_empty() || kind.len() > MAX_REACTION_BYTES || kind.chars().any(char::is_control) {
                return Err(ChangeError::BadReaction);
            }
            if *operator == Operator::App {
                return Err(ChangeError::NotAllowed("a reaction is a user's: name the user in from_uid"));
            }
        }
        let stored = self.stored_in(channel, message_id)?;
        self.check_operator(channel, &stored.message.from_uid, operator, change)?;
        self.apply_change(channel, &stored, operator, change)
    }

    /// Marks the messages `message_ids` of `channel` read by `reader` (at most
    /// [`MAX_READ_BATCH`]; the reader's own are left as they are). Every id is checked
    /// before anything is written. Returns the messages' extras, in the order asked.
    pub fn mark_read(
        self: &Arc<Self>,
        channel: &ChannelKey,
        reader: &str,
        message_ids: &[i64],
    ) -> Result<Vec<MessageExtra>, ChangeError> {
        if message_ids.is_empty() || message_ids.len() > MAX_READ_BATCH {
            return Err(ChangeError::NotAllowed("mark 1 to 100 messages read at a time"));
        }
        let operator = Operator::User(reader.to_owned());
        let stored = message_ids.iter().map(|id| self.stored_in(channel, *id)).collect::<Result<Vec<_>, _>>()?;
        for m in &stored {
            self.check_operator(channel, &m.message.from_uid, &operator, &Change::Read)?;
        }
        stored.iter().map(|m| self.apply_change(channel, m, &operator, &Change::Read)).collect()
    }

    /// The message `message_id`, if it is in `channel`.
    fn stored_in(&self, channel: &ChannelKey, message_id: i64) -> Result<StoredMessage, ChangeError> {
        match self.log().by_message_id(message_id)? {
            Some((at, m)) if at == *channel => Ok(m),
            _ => Err(ChangeError::NotFound(message_id)),
        }
    }

    fn apply_change(
        self: &Arc<Self>,
        channel: &ChannelKey,
        stored: &StoredMessage,
        operator: &Operator,
        change: &Change,
    ) -> Result<MessageExtra, ChangeError> {
        let message_id = stored.message.message_id;
        let sender = stored.message.from_uid.as_str();
        let store = self.store();
        // Whether the call that decided (the last; earlier ones lost a race) changed it.
        let mut changed = false;
        let extra = store.change_extra(channel, stored.seq, message_id, |extra| {
            changed = false;
            let mut writes = Vec::new();
            match (change, operator) {
                (Change::Revoke, _) if extra.revoked => return Ok(ExtraChange::Unchanged),
                (Change::Revoke, _) => {
                    extra.revoked = true;
                    extra.revoker = match operator {
                        Operator::App => String::new(),
                        Operator::User(uid) => uid.clone(),
                    };
                }
                (Change::Edit(_), _) if extra.revoked => return Err(ChangeError::Revoked(message_id)),
                (Change::Edit(payload), _) => {
                    extra.edited_payload = Some(payload.to_vec());
                    extra.edited_at_ms = now_ms();
                }
                (Change::Read, Operator::User(reader)) if reader != sender => {
                    if store.read_marks(channel, &[stored.seq], reader)?[0].is_some() {
                        return Ok(ExtraChange::Unchanged);
                    }
                    extra.readed_count += 1;
                    writes.push(store.read_mark_write(channel, stored.seq, reader, now_ms()));
                }
                // One's own messages are read; the app server reads nothing.
                (Change::Read, _) => return Ok(ExtraChange::Unchanged),
                (Change::React { .. }, _) if extra.revoked => return Err(ChangeError::Revoked(message_id)),
                (Change::React { kind, add }, Operator::User(uid)) => {
                    let Some(write) = react(extra, store.reaction(channel, stored.seq, uid, kind)?, kind, *add)? else {
                        return Ok(ExtraChange::Unchanged);
                    };
                    writes = store.reaction_writes(channel, stored.seq, uid, kind, write);
                }
                (Change::React { .. }, Operator::App) => return Ok(ExtraChange::Unchanged),
            }
            changed = true;
            Ok(ExtraChange::Changed(writes))
        })?;
        // Retention removed it since it was looked up.
        let Some(extra) = extra else { return Err(ChangeError::NotFound(message_id)) };
        let label = match change {
            Change::Revoke => "revoke",
            Change::Edit(_) => "edit",
            Change::Read => "read",
            Change::React { .. } => "reaction",
        };
        if changed {
            metrics::counter!("hongyan_core_message_changes_total", "change" => label).increment(1);
            match change {
                // Only the sender counts reads.
                Change::Read => self.announce_extras(channel, extra.version, Some(sender)),
                _ => self.announce_extras(channel, extra.version, None),
            }
        }
        Ok(extra)
    }

    /// Up to `limit` (at most [`MAX_EXTRA_SYNC`]) extras of `channel` changed after
    /// `version`, oldest change first, each message once in its latest state, as
    /// `viewer` sees them (`None`: nobody's read marks).
    pub fn message_extras_since(
        &self,
        channel: &ChannelKey,
        version: u64,
        limit: usize,
        viewer: Option<&str>,
    ) -> Result<Vec<ExtraView>, StoreError> {
        let extras = self.store().extras_since(channel, version, limit.clamp(1, MAX_EXTRA_SYNC))?;
        self.extra_views(channel, extras, viewer)
    }

    /// The extras of the messages at `seqs` (at most [`MAX_EXTRA_SYNC`] are read), for
    /// those that have one, in the order asked, as `viewer` sees them.
    pub fn message_extras_at(
        &self,
        channel: &ChannelKey,
        seqs: &[u64],
        viewer: Option<&str>,
    ) -> Result<Vec<ExtraView>, StoreError> {
        let seqs = &seqs[..seqs.len().min(MAX_EXTRA_SYNC)];
        let extras = self.store().message_extras(channel, seqs)?.into_iter().flatten().collect();
        self.extra_views(channel, extras, viewer)
    }

    /// `extras` as `viewer` sees them: their read marks and reactions, and how many of
    /// the audience have not read each.
    fn extra_views(
        &self,
        channel: &ChannelKey,
        extras: Vec<MessageExtra>,
        viewer: Option<&str>,
    ) -> Result<Vec<ExtraView>, StoreError> {
        let (reads, mine) = match viewer {
            Some(uid) if !extras.is_empty() => {
                let seqs: Vec<u64> = extras.iter().map(|e| e.seq).collect();
                let reacted: Vec<u64> = extras.iter().filter(|e| !e.reactions.is_empty()).map(|e| e.seq).collect();
                let mut given = self.store().reactions_by(channel, &reacted, uid)?.into_iter();
                let mine = extras
                    .iter()
                    .map(|e| if e.reactions.is_empty() { Vec::new() } else { given.next().unwrap_or_default() })
                    .collect();
                (self.store().read_marks(channel, &seqs, uid)?, mine)
            }
            _ => (vec![None; extras.len()], vec![Vec::new(); extras.len()]),
        };
        // Who could read a message: the other side of a person chat, else the members
        // but the sender.
        let audience = if channel.channel_type == PERSON || extras.is_empty() {
            1
        } else {
            u64::try_from(self.channel_state(channel)?.subscribers.len()).unwrap_or(u64::MAX).saturating_sub(1)
        };
        Ok(extras
            .into_iter()
            .zip(reads.into_iter().zip(mine))
            .map(|(extra, (readed_at_ms, my_reactions))| {
                let unread_count = audience.saturating_sub(extra.readed_count);
                ExtraView { extra, readed_at_ms, unread_count, my_reactions }
            })
            .collect())
    }

    /// Up to `limit` (at most [`MAX_EXTRA_SYNC`]) reactions to message `message_id`,
    /// grouped by user in a stable order, after `after` (paging).
    pub fn message_reactions(
        &self,
        channel: &ChannelKey,
        message_id: i64,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<Reaction>, ChangeError> {
        let stored = self.stored_in(channel, message_id)?;
        Ok(self.store().reactions_to(channel, stored.seq, after, limit.clamp(1, MAX_EXTRA_SYNC))?)
    }

    /// Up to `limit` (at most [`MAX_EXTRA_SYNC`]) users who marked message
    /// `message_id` read, after `after_uid` in uid order, with when (ms).
    pub fn message_readers(
        &self,
        channel: &ChannelKey,
        message_id: i64,
        after_uid: &str,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, ChangeError> {
        let stored = self.stored_in(channel, message_id)?;
        Ok(self.store().readers(channel, stored.seq, after_uid, limit.clamp(1, MAX_EXTRA_SYNC))?)
    }

    fn check_operator(
        &self,
        channel: &ChannelKey,
        sender: &str,
        operator: &Operator,
        change: &Change,
    ) -> Result<(), ChangeError> {
        let Operator::User(uid) = operator else { return Ok(()) };
        if channel.channel_type == PERSON
            && person_channel_members(&channel.channel_id).is_none_or(|(a, b)| a != uid && b != uid)
        {
            return Err(ChangeError::NotAllowed("the operator is not in this conversation"));
        }
        if uid == sender {
            return Ok(());
        }
        match change {
            Change::Read | Change::React { .. } if channel.channel_type == PERSON => Ok(()),
            Change::Read | Change::React { .. } if self.channel_state(channel)?.subscribers.contains(uid) => Ok(()),
            Change::Read => Err(ChangeError::NotAllowed("only the channel's members may mark its messages read")),
            Change::React { .. } => {
                Err(ChangeError::NotAllowed("only the channel's members may react to its messages"))
            }
            Change::Edit(_) => Err(ChangeError::NotAllowed("only the sender may edit a message")),
            Change::Revoke if self.is_system_account(uid) => Ok(()),
            Change::Revoke if channel.channel_type == GROUP => match self.role(&channel.channel_id, uid)? {
                Some(Role::Owner | Role::Admin) => Ok(()),
                _ => {
                    Err(ChangeError::NotAllowed("only the sender, the group's owner or an admin may revoke a message"))
                }
            },
            Change::Revoke => Err(ChangeError::NotAllowed("only the sender may revoke a message")),
        }
    }

    /// Tells the channel's online members (every device, the operator's included), or
    /// only `only` (a read's sender), that its extras changed, by a command message
    /// that is not stored. Best effort: a device that misses it learns of the change
    /// on its next sync.
    fn announce_extras(self: &Arc<Self>, channel: &ChannelKey, version: u64, only: Option<&str>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let header = HeaderFlags { no_persist: true, sync_once: true, ..HeaderFlags::default() };
        let to = |uid: &str, channel_id: &str| AppSend {
            from_uid: String::new(),
            channel_id: String::new(),
            channel_type: channel.channel_type,
            client_msg_no: String::new(),
            header,
            expire: 0,
            payload: extras_notice(channel_id, channel.channel_type, version),
            subscribers: vec![uid.to_owned()],
        };
        let sends: Vec<AppSend> = if channel.channel_type == PERSON {
            let Some((a, b)) = person_channel_members(&channel.channel_id) else { return };
            // Each side names the conversation by the other's uid.
            [(a, b), (b, a)]
                .into_iter()
                .filter(|(uid, _)| only.is_none_or(|o| o == *uid))
                .map(|(uid, peer)| to(uid, peer))
                .collect()
        } else if let Some(uid) = only {
            vec![to(uid, &channel.channel_id)]
        } else {
            vec![AppSend {
                channel_id: channel.channel_id.clone(),
                header: HeaderFlags { sync_once: false, ..header },
                subscribers: Vec::new(),
                ..to("", &channel.channel_id)
            }]
        };
        for send in sends {
            let core = self.clone();
            runtime.spawn(async move {
                if let Err(e) = core.send_as_app(send).await {
                    tracing::debug!(error = ?e, "message change notice not sent");
                }
            });
        }
    }
}

/// Gives (`add`) or takes back one user's reaction `kind` in `extra`'s counts, given
/// when they gave it (`None`: they have not). Returns the mark's write, or `None` when
/// nothing changes.
fn react(
    extra: &mut MessageExtra,
    given: Option<i64>,
    kind: &str,
    add: bool,
) -> Result<Option<ReactionWrite>, ChangeError> {
    let at = extra.reactions.binary_search_by(|(k, _)| k.as_str().cmp(kind));
    Ok(Some(match (add, given, at) {
        (true, None, Ok(i)) => {
            extra.reactions[i].1 += 1;
            ReactionWrite::Add { at_ms: now_ms() }
        }
        (true, None, Err(_)) if extra.reactions.len() >= MAX_REACTION_KINDS => {
            return Err(ChangeError::NotAllowed("this message has as many kinds of reaction as it may"));
        }
        (true, None, Err(i)) => {
            extra.reactions.insert(i, (kind.to_owned(), 1));
            ReactionWrite::Add { at_ms: now_ms() }
        }
        (false, Some(stored_at_ms), at) => {
            if let Ok(i) = at {
                extra.reactions[i].1 = extra.reactions[i].1.saturating_sub(1);
                if extra.reactions[i].1 == 0 {
                    extra.reactions.remove(i);
                }
            }
            ReactionWrite::Remove { stored_at_ms }
        }
        // Given already, or not given to take back.
        _ => return Ok(None),
    }))
}

/// The command message that tells a device a channel's extras changed.
fn extras_notice(channel_id: &str, channel_type: u8, version: u64) -> Bytes {
    let cmd = serde_json::json!({
        "type": 99,
        "cmd": SYNC_EXTRA_CMD,
        "param": {"channel_id": channel_id, "channel_type": channel_type, "extra_version": version},
    });
    Bytes::from(cmd.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_core, test_message};
    use hongyan_store::ChannelInfo;

    fn message(id: i64, from: &str, age_ms: u64) -> hongyan_store::NewMessage {
        test_message(id, from, std::time::Duration::from_millis(age_ms))
    }

    #[tokio::test]
    async fn group_owners_and_admins_revoke_others_but_edit_only_their_own() {
        let core = test_core();
        let g = ChannelKey::new("g", GROUP);
        let members: Vec<String> = ["ann", "boss", "adm", "joe"].map(String::from).to_vec();
        core.put_channel(&g, ChannelInfo::default(), &members, false).unwrap();
        core.set_role("g", "boss", Role::Owner).unwrap();
        core.set_role("g", "adm", Role::Admin).unwrap();
        for id in 1..=3 {
            core.log().append(g.clone(), message(id, "ann", 0)).await.unwrap();
        }
        let user = |u: &str| Operator::User(u.into());
        let joe = core.change_message(&g, 1, &user("joe"), &Change::Revoke);
        assert!(matches!(joe, Err(ChangeError::NotAllowed(_))), "{joe:?}");
        let edit = Change::Edit(Bytes::from_static(b"new"));
        assert!(matches!(core.change_message(&g, 1, &user("boss"), &edit), Err(ChangeError::NotAllowed(_))));
        assert_eq!(core.change_message(&g, 1, &user("boss"), &Change::Revoke).unwrap().revoker, "boss");
        assert_eq!(core.change_message(&g, 2, &user("adm"), &Change::Revoke).unwrap().version, 2);
        // A message of another channel, and content over the cap, are refused.
        let other = ChannelKey::new("h", GROUP);
        assert!(matches!(
            core.change_message(&other, 3, &Operator::App, &Change::Revoke),
            Err(ChangeError::NotFound(3))
        ));
        let big = Change::Edit(Bytes::from(vec![b'x'; MAX_EDIT_BYTES + 1]));
        assert!(matches!(core.change_message(&g, 3, &Operator::App, &big), Err(ChangeError::BadContent)));
        assert_eq!(core.message_extras_since(&g, 0, usize::MAX, None).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn members_mark_messages_read_once_and_the_sender_sees_how_many_have_not() {
        let core = test_core();
        let g = ChannelKey::new("g", GROUP);
        let members: Vec<String> = ["ann", "ben", "cat", "dan"].map(String::from).to_vec();
        core.put_channel(&g, ChannelInfo::default(), &members, false).unwrap();
        for id in 1..=2 {
            core.log().append(g.clone(), message(id, "ann", 0)).await.unwrap();
        }
        let read = core.mark_read(&g, "ben", &[1, 2]).unwrap();
        assert_eq!(read.iter().map(|e| (e.readed_count, e.version)).collect::<Vec<_>>(), [(1, 1), (1, 2)]);
        // Again, and one's own: nothing changes.
        assert_eq!(core.mark_read(&g, "ben", &[1]).unwrap()[0].version, 1);
        assert_eq!(core.mark_read(&g, "ann", &[1]).unwrap()[0].readed_count, 1);
        assert_eq!(core.mark_read(&g, "cat", &[1]).unwrap()[0].readed_count, 2);
        // A stranger, an unknown id (nothing written for the known one), too many.
        assert!(matches!(core.mark_read(&g, "eve", &[1]), Err(ChangeError::NotAllowed(_))));
        assert!(matches!(core.mark_read(&g, "dan", &[2, 99]), Err(ChangeError::NotFound(99))));
        let too_many = vec![1; MAX_READ_BATCH + 1];
        assert!(matches!(core.mark_read(&g, "dan", &too_many), Err(ChangeError::NotAllowed(_))));
        let seen = core.message_extras_since(&g, 0, 10, Some("cat")).unwrap();
        let view: Vec<(i64, u64, bool)> =
            seen.iter().map(|v| (v.extra.message_id, v.unread_count, v.readed_at_ms.is_some())).collect();
        assert_eq!(view, [(2, 2, false), (1, 1, true)], "3 others could read each; cat read only 1");
        let readers = core.message_readers(&g, 1, "", 10).unwrap();
        assert_eq!(readers.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), ["ben", "cat"]);
        // The app server reads nothing.
        let app = core.change_message(&g, 2, &Operator::App, &Change::Read).unwrap();
        assert_eq!(app.readed_count, 1);
    }

    #[tokio::test]
    async fn members_react_once_per_kind_and_take_reactions_back() {
        let core = test_core();
        let g = ChannelKey::new("g", GROUP);
        let members: Vec<String> = ["ann", "ben", "cat"].map(String::from).to_vec();
        core.put_channel(&g, ChannelInfo::default(), &members, false).unwrap();
        core.log().append(g.clone(), message(1, "ann", 0)).await.unwrap();
        let react = |uid: &str, kind: &str, add: bool| {
            core.change_message(&g, 1, &Operator::User(uid.into()), &Change::React { kind: kind.into(), add })
        };
        react("ben", "👍", true).unwrap();
        react("ben", "👍", true).unwrap();
        react("ann", "👍", true).unwrap();
        let e = react("cat", "🎉", true).unwrap();
        assert_eq!(e.reactions, [("🎉".to_owned(), 1), ("👍".to_owned(), 2)], "kinds in byte order");
        let e = react("ben", "👍", false).unwrap();
        assert_eq!(e.reactions, [("🎉".to_owned(), 1), ("👍".to_owned(), 1)]);
        assert_eq!(react("ben", "👍", false).unwrap().version, e.version, "taking back twice changes nothing");
        assert!(matches!(react("eve", "👍", true), Err(ChangeError::NotAllowed(_))));
        assert!(matches!(react("ben", "", true), Err(ChangeError::BadReaction)));
        assert!(matches!(react("ben", &"x".repeat(MAX_REACTION_BYTES + 1), true), Err(ChangeError::BadReaction)));
        assert!(matches!(react("ben", "a\nb", true), Err(ChangeError::BadReaction)));
        let app = core.change_message(&g, 1, &Operator::App, &Change::React { kind: "x".into(), add: true });
        assert!(matches!(app, Err(ChangeError::NotAllowed(_))));
        for n in 0..MAX_REACTION_KINDS - 2 {
            react("cat", &format!("k{n}"), true).unwrap();
        }
        assert!(matches!(react("cat", "one-too-many", true), Err(ChangeError::NotAllowed(_))));
        let view = core.message_extras_since(&g, 0, 10, Some("cat")).unwrap();
        assert_eq!(view[0].my_reactions.len(), MAX_REACTION_KINDS - 1);
        let listed = core.message_reactions(&g, 1, None, 2).unwrap();
        assert_eq!(
            listed.iter().map(|r| (r.uid.as_str(), r.kind.as_str())).collect::<Vec<_>>(),
            [("ann", "👍"), ("cat", "k0")]
        );
        core.change_message(&g, 1, &Operator::App, &Change::Revoke).unwrap();
        assert!(matches!(react("ben", "👍", true), Err(ChangeError::Revoked(1))));
    }

    #[tokio::test]
    async fn retention_takes_the_extras_of_the_messages_it_removes() {
        let core = test_core();
        let g = ChannelKey::new("g", GROUP);
        let day = 86_400_000;
        core.log().append(g.clone(), message(1, "ann", 3 * day)).await.unwrap();
        core.log().append(g.clone(), message(2, "ann", 0)).await.unwrap();
        let members: Vec<String> = ["ann", "ben"].map(String::from).to_vec();
        core.put_channel(&g, ChannelInfo::default(), &members, false).unwrap();
        for id in [1, 2] {
            core.change_message(&g, id, &Operator::App, &Change::Revoke).unwrap();
            core.mark_read(&g, "ben", &[id]).unwrap();
        }
        core.sweep_retention(&[(GROUP, std::time::Duration::from_millis(day))]).unwrap();
        let left = core.message_extras_since(&g, 0, 10, None).unwrap();
        assert_eq!(left.iter().map(|e| e.extra.message_id).collect::<Vec<_>>(), [2]);
        assert_eq!(core.store().message_extra(&g, 1).unwrap(), None);
        assert!(core.message_readers(&g, 2, "", 10).unwrap().len() == 1);
        assert!(core.store().readers(&g, 1, "", 10).unwrap().is_empty(), "the read marks went too");
    }
}
