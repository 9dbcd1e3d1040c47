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
use hongyan_store::{ChannelKey, MessageExtra, Role, StoreError};

use crate::channel::{GROUP, PERSON, person_channel_members};
use crate::{AppSend, Core, now_ms};

/// The `cmd` of the command message that tells online members a channel's extras
/// changed: `{"type":99,"cmd":"syncMessageExtra","param":{"channel_id","channel_type","extra_version"}}`.
pub const SYNC_EXTRA_CMD: &str = "syncMessageExtra";
/// The largest edited content: what one client frame may carry.
pub const MAX_EDIT_BYTES: usize = hongyan_proto::DEFAULT_MAX_FRAME_LEN;
/// The most extras one sync returns.
pub const MAX_EXTRA_SYNC: usize = 1_000;

/// What to do to a stored message.
#[derive(Clone, Debug)]
pub enum Change {
    /// Revoke it: clients show a notice in its place.
    Revoke,
    /// Replace its content with this payload.
    Edit(Bytes),
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
    /// The message was revoked; it can no longer be edited.
    #[error("message {0} was revoked and cannot be edited")]
    Revoked(i64),
    /// The edited content is empty or too long.
    #[error("the edited content must be 1 to {MAX_EDIT_BYTES} bytes")]
    BadContent,
    /// Storage failed or is busy; nothing was changed.
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

impl Core {
    /// Applies `change` to message `message_id` of `channel` on behalf of `operator`,
    /// durably, and tells the channel's online members. Revoking twice is not an
    /// error (the first revoke stands). Blocking: call off the async runtime.
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
        let stored = match self.log().by_message_id(message_id)? {
            Some((at, m)) if at == *channel => m,
            _ => return Err(ChangeError::NotFound(message_id)),
        };
        self.check_operator(channel, &stored.message.from_uid, operator, change)?;
        let before = self.store().extra_version(channel)?;
        let extra = self.store().change_extra(channel, stored.seq, message_id, |extra| {
            match change {
                Change::Revoke if extra.revoked => return Ok(false),
                Change::Revoke => {
                    extra.revoked = true;
                    extra.revoker = match operator {
                        Operator::App => String::new(),
                        Operator::User(uid) => uid.clone(),
                    };
                }
                Change::Edit(_) if extra.revoked => return Err(ChangeError::Revoked(message_id)),
                Change::Edit(payload) => {
                    extra.edited_payload = Some(payload.to_vec());
                    extra.edited_at_ms = now_ms();
                }
            }
            Ok(true)
        })?;
        let label = match change {
            Change::Revoke => "revoke",
            Change::Edit(_) => "edit",
        };
        metrics::counter!("hongyan_core_message_changes_total", "change" => label).increment(1);
        if extra.version > before {
            self.announce_extras(channel, extra.version);
        }
        Ok(extra)
    }

    /// Up to `limit` (at most [`MAX_EXTRA_SYNC`]) extras of `channel` changed after
    /// `version`, oldest change first, each message once in its latest state.
    pub fn message_extras_since(
        &self,
        channel: &ChannelKey,
        version: u64,
        limit: usize,
    ) -> Result<Vec<MessageExtra>, StoreError> {
        self.store().extras_since(channel, version, limit.clamp(1, MAX_EXTRA_SYNC))
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

    /// Tells the channel's online members (every device, the operator's included) that
    /// its extras changed, by a command message that is not stored. Best effort: a
    /// device that misses it learns of the change on its next sync.
    fn announce_extras(self: &Arc<Self>, channel: &ChannelKey, version: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let notice = |channel_id: &str, channel_type: u8| {
            let cmd = serde_json::json!({
                "type": 99,
                "cmd": SYNC_EXTRA_CMD,
                "param": {"channel_id": channel_id, "channel_type": channel_type, "extra_version": version},
            });
            Bytes::from(cmd.to_string())
        };
        let header = HeaderFlags { no_persist: true, sync_once: true, ..HeaderFlags::default() };
        let sends: Vec<AppSend> = if channel.channel_type == PERSON {
            let Some((a, b)) = person_channel_members(&channel.channel_id) else { return };
            // Each side names the conversation by the other's uid.
            [(a, b), (b, a)]
                .into_iter()
                .map(|(to, peer)| AppSend {
                    from_uid: String::new(),
                    channel_id: String::new(),
                    channel_type: PERSON,
                    client_msg_no: String::new(),
                    header,
                    expire: 0,
                    payload: notice(peer, PERSON),
                    subscribers: vec![to.to_owned()],
                })
                .collect()
        } else {
            vec![AppSend {
                from_uid: String::new(),
                channel_id: channel.channel_id.clone(),
                channel_type: channel.channel_type,
                client_msg_no: String::new(),
                header: HeaderFlags { sync_once: false, ..header },
                expire: 0,
                payload: notice(&channel.channel_id, channel.channel_type),
                subscribers: Vec::new(),
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
        assert_eq!(core.message_extras_since(&g, 0, usize::MAX).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn retention_takes_the_extras_of_the_messages_it_removes() {
        let core = test_core();
        let g = ChannelKey::new("g", GROUP);
        let day = 86_400_000;
        core.log().append(g.clone(), message(1, "ann", 3 * day)).await.unwrap();
        core.log().append(g.clone(), message(2, "ann", 0)).await.unwrap();
        for id in [1, 2] {
            core.change_message(&g, id, &Operator::App, &Change::Revoke).unwrap();
        }
        core.sweep_retention(&[(GROUP, std::time::Duration::from_millis(day))]).unwrap();
        let left = core.message_extras_since(&g, 0, 10).unwrap();
        assert_eq!(left.iter().map(|e| e.message_id).collect::<Vec<_>>(), [2]);
        assert_eq!(core.store().message_extra(&g, 1).unwrap(), None);
    }
}
