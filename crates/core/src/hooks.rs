//! What the core tells the outside world and asks of it: an [`Observer`] hears of
//! logins, logouts and messages that are never stored (the webhooks' sources besides
//! the log's journal), and a [`Datasource`] supplies channels the server has no record
//! of. Both are traits so the core knows nothing of HTTP.

use std::sync::Arc;

use crate::session::Conn;
use hongyan_proto::DeviceLevel;
use hongyan_store::{ChannelInfo, ChannelKey, NewMessage, StoreError};

use crate::Core;
use crate::channel::{PERSON, base_channel, person_channel_members};

/// Hears what happens on the node. Called on the threads where it happens: it must
/// not block.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// `conn` logged in (`online`) or went away. `same_flag` and `total` count the
    /// user's connections after the change: with the same device flag, and in all.
    fn presence(&self, conn: &Conn, online: bool, same_flag: usize, total: usize);

    /// A NoPersist message went out (never stored, so the journal never sees it):
    /// to `channel`'s members, or only to the uids in `only_to`.
    fn unstored(&self, channel: &ChannelKey, message: &NewMessage, only_to: Option<&[String]>);
}

/// A channel as an external datasource describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteChannel {
    /// Attributes (`getChannelInfo`).
    pub info: ChannelInfo,
    /// Members (`getSubscribers`).
    pub subscribers: Vec<String>,
    /// `getBlacklist`.
    pub blacklist: Vec<String>,
    /// `getWhitelist`.
    pub whitelist: Vec<String>,
}

/// Where channels the server has no record of come from (WuKongIM's datasource).
/// Blocking; the core calls it from the blocking pool and caches the answers.
pub trait Datasource: Send + Sync + std::fmt::Debug + 'static {
    /// The channel's attributes and lists. An error fails the operation that needed
    /// them; it is never taken as an empty channel.
    fn channel(&self, key: &ChannelKey) -> Result<RemoteChannel, StoreError>;

    /// The system accounts the datasource knows of.
    fn system_uids(&self) -> Result<Vec<String>, StoreError>;

    /// How long an answer may be used.
    fn ttl(&self) -> std::time::Duration;
}

/// Which recipients count as offline for offline notifications.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OfflineRule {
    /// No master device online (WuKongIM's rule: a user on the web only still gets
    /// pushes on the phone).
    #[default]
    NoMasterOnline,
    /// No device online at all.
    NoDeviceOnline,
}

impl Core {
    /// Makes `observer` hear of logins, logouts and unstored messages. Only the first
    /// call takes effect.
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.get()
    }

    /// The uids a message in `channel` is for: both members of a person chat, or the
    /// subscribers of the channel (of its base channel, for a command channel).
    /// Blocking on a cache miss.
    pub fn recipient_uids(&self, channel: &ChannelKey) -> Result<Vec<String>, StoreError> {
        let base = base_channel(channel);
        if base.channel_type == PERSON {
            return Ok(match person_channel_members(&base.channel_id) {
                Some((a, b)) if a == b => vec![a.to_owned()],
                Some((a, b)) => vec![a.to_owned(), b.to_owned()],
                None => Vec::new(),
            });
        }
        let state = self.channel_state(&base)?;
        let mut uids: Vec<String> = state.subscribers.iter().cloned().collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// Whether `uid` counts as offline under `rule` right now, on every node.
    pub fn is_offline(&self, uid: &str, rule: OfflineRule) -> bool {
        let connections = self.registry.connections(uid);
        let master = rule == OfflineRule::NoMasterOnline;
        let here = match rule {
            OfflineRule::NoDeviceOnline => !connections.is_empty(),
            OfflineRule::NoMasterOnline => connections.iter().any(|c| c.level == DeviceLevel::Master),
        };
        // In a cluster, a connection on any node counts.
        !here && !self.links.presence.get().is_some_and(|p| p.elsewhere(uid, master))
    }
}
