//! Channel attributes and member lists, cached in memory and written through to storage.
//!
//! Every SEND needs a channel's attributes and lists (admission) and, for groups, its
//! subscribers (fan-out). Reading them from storage per message cost a thread hand-off
//! and a prefix scan each; with the cache, admission of a message to a known channel is
//! a few hash lookups on the connection's own task.
//!
//! Consistency: every change goes through [`Core`] (storage first, then the entry is
//! dropped), and a load that raced with a change is not kept: loads note the cache's
//! epoch before reading storage and insert only if no change happened since. So the
//! cache never holds a state older than the last completed change.
//!
//! Memory is bounded by the number of member entries held; beyond the budget, entries
//! are evicted (arbitrary ones: a reload costs one storage scan).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hongyan_store::{ChannelInfo, ChannelKey, MemberList, Store, StoreError};

use crate::Core;
use crate::channel::PERSON;
use crate::hooks::{Datasource, RemoteChannel};

/// Most member entries (subscribers + blacklist + whitelist over all cached channels)
/// held in memory: about 100 MB with typical uids.
const MEMBER_BUDGET: usize = 2_000_000;

/// What a cached channel costs beyond its members, counted in member entries (about
/// 50 bytes each): its map entry, key and state are about 200 bytes, so a channel with
/// no members is not nearly free (a million users' person channels would otherwise
/// pass for 50 MB while holding 250).
const ENTRY_WEIGHT: usize = 4;

/// What admission and fan-out need to know about one channel.
#[derive(Debug, Default)]
pub struct ChannelState {
    /// Attributes (defaults when never set).
    pub info: ChannelInfo,
    /// Who receives the channel's messages.
    pub subscribers: HashSet<String>,
    /// Who may not send.
    pub blacklist: HashSet<String>,
    /// When non-empty, who alone may send.
    pub whitelist: HashSet<String>,
    /// For a state that came from the datasource: when to ask again.
    pub expires: Option<Instant>,
}

impl ChannelState {
    /// The stored state, or `None` when storage has no record of the channel at all.
    fn load(store: &Store, key: &ChannelKey) -> Result<Option<Self>, StoreError> {
        let (id, ty) = (key.channel_id.as_str(), key.channel_type);
        let list = |l| store.members(l, id, ty).map(|v| v.into_iter().collect::<HashSet<_>>());
        let info = store.channel_info(id, ty)?;
        let state = Self {
            info: info.unwrap_or_default(),
            subscribers: list(MemberList::Subscribers)?,
            blacklist: list(MemberList::Blacklist)?,
            whitelist: list(MemberList::Whitelist)?,
            expires: None,
        };
        let empty = state.subscribers.is_empty() && state.blacklist.is_empty() && state.whitelist.is_empty();
        Ok((info.is_some() || !empty).then_some(state))
    }

    /// The stored state, else the datasource's, else the defaults.
    fn fetch(store: &Store, datasource: Option<&Arc<dyn Datasource>>, key: &ChannelKey) -> Result<Self, StoreError> {
        match (Self::load(store, key)?, datasource) {
            (Some(state), _) => Ok(state),
            (None, Some(source)) => {
                metrics::counter!("hongyan_core_datasource_loads_total").increment(1);
                Ok(Self::from_remote(source.channel(key)?, source.ttl()))
            }
            (None, None) => Ok(Self::default()),
        }
    }

    fn from_remote(remote: RemoteChannel, ttl: Duration) -> Self {
        Self {
            info: remote.info,
            subscribers: remote.subscribers.into_iter().collect(),
            blacklist: remote.blacklist.into_iter().collect(),
            whitelist: remote.whitelist.into_iter().collect(),
            expires: Some(Instant::now() + ttl),
        }
    }

    fn is_fresh(&self) -> bool {
        self.expires.is_none_or(|at| Instant::now() < at)
    }

    fn weight(&self) -> usize {
        ENTRY_WEIGHT + self.subscribers.len() + self.blacklist.len() + self.whitelist.len()
    }
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<ChannelKey, Arc<ChannelState>>,
    /// Member entries held.
    weight: usize,
    /// Bumped by every change; a load that saw another epoch is not kept.
    epoch: u64,
}

/// The cache. See the module documentation.
#[derive(Debug)]
pub(crate) struct ChannelCache {
    entries: RwLock<Entries>,
    /// Most member entries held.
    budget: usize,
}

impl Default for ChannelCache {
    fn default() -> Self {
        Self { entries: RwLock::default(), budget: MEMBER_BUDGET }
    }
}

impl ChannelCache {
    /// The cached state, if any. Never blocks on storage.
    pub(crate) fn cached(&self, key: &ChannelKey) -> Option<Arc<ChannelState>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).map.get(key).filter(|s| s.is_fresh()).cloned()
    }

    /// The state, loading it on a miss from storage or, when storage has no record of
    /// the channel, from `datasource`. Blocking.
    pub(crate) fn get(
        &self,
        store: &Store,
        datasource: Option<&Arc<dyn Datasource>>,
        key: &ChannelKey,
    ) -> Result<Arc<ChannelState>, StoreError> {
        self.get_with(key, || ChannelState::fetch(store, datasource, key))
    }

    /// Like [`Self::get`], but a state not cached is read and not kept: for a look
    /// that says nothing about what will be needed next (a login's ban check would
    /// otherwise keep a state per connected user, idle or not).
    pub(crate) fn peek(
        &self,
        store: &Store,
        datasource: Option<&Arc<dyn Datasource>>,
        key: &ChannelKey,
    ) -> Result<Arc<ChannelState>, StoreError> {
        match self.cached(key) {
            Some(state) => Ok(state),
            None => ChannelState::fetch(store, datasource, key).map(Arc::new),
        }
    }

    fn get_with(
        &self,
        key: &ChannelKey,
        load: impl FnOnce() -> Result<ChannelState, StoreError>,
    ) -> Result<Arc<ChannelState>, StoreError> {
        let epoch = {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(state) = entries.map.get(key).filter(|s| s.is_fresh()) {
                return Ok(state.clone());
            }
            entries.epoch
        };
        let state = Arc::new(load()?);
        let weight = state.weight();
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.epoch == epoch && weight <= self.budget {
            if let Some(stale) = entries.map.remove(key) {
                entries.weight -= stale.weight();
            }
            while entries.weight + weight > self.budget {
                let Some(victim) = entries.map.keys().next().cloned() else { break };
                if let Some(old) = entries.map.remove(&victim) {
                    entries.weight -= old.weight();
                }
            }
            entries.weight += weight;
            entries.map.insert(key.clone(), state.clone());
        }
        Ok(state)
    }

    /// Forgets every entry.
    pub(crate) fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.epoch += 1;
        entries.map.clear();
        entries.weight = 0;
    }

    /// Forgets `key` after a change to it was stored.
    pub(crate) fn changed(&self, key: &ChannelKey) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.epoch += 1;
        if let Some(old) = entries.map.remove(key) {
            entries.weight -= old.weight();
        }
    }
}

/// How a member list changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListChange {
    /// Add the uids.
    Add,
    /// Replace the list with the uids.
    Set,
    /// Remove the uids.
    Remove,
}

impl Core {
    /// A channel's attributes and lists (cached). Blocking on a miss.
    pub fn channel_state(&self, key: &ChannelKey) -> Result<Arc<ChannelState>, StoreError> {
        self.channels.get(self.store(), self.datasource.get(), key)
    }

    /// Sets a channel's attributes (on a person channel, the user's ban and mute). Blocking.
    pub fn set_channel_info(&self, key: &ChannelKey, info: ChannelInfo) -> Result<(), StoreError> {
        self.store().put_channel_info(&key.channel_id, key.channel_type, info)?;
        self.channel_changed(key);
        Ok(())
    }

    /// Changes a member list of a channel. New subscribers get conversations starting at
    /// the channel's last seq (history before joining is not unread); removed ones stop
    /// getting the channel's commands. Blocking.
    pub fn change_members(
        &self,
        list: MemberList,
        key: &ChannelKey,
        uids: &[String],
        change: ListChange,
    ) -> Result<(), StoreError> {
        let store = self.store();
        let (id, ty) = (key.channel_id.as_str(), key.channel_type);
        let result = match (list, change) {
            (MemberList::Subscribers, ListChange::Add | ListChange::Set) => {
                self.add_subscribers(key, uids, change == ListChange::Set)
            }
            (MemberList::Subscribers, ListChange::Remove) => self.remove_subscribers(key, uids).map(|()| uids.to_vec()),
            (_, ListChange::Add | ListChange::Set) => {
                store.add_members(list, id, ty, uids, change == ListChange::Set).map(|()| Vec::new())
            }
            (_, ListChange::Remove) => store.remove_members(list, id, ty, uids).map(|()| Vec::new()),
        };
        // Forget the entry even after a failure: part of a change may have landed.
        self.channel_changed(key);
        self.after_members_left(key, &result?)
    }

    /// Creates or updates a channel: its attributes and, when `subscribers` is not empty
    /// or `reset`, its subscribers (replaced when `reset`), in one atomic batch. Blocking.
    pub fn put_channel(
        &self,
        key: &ChannelKey,
        info: ChannelInfo,
        subscribers: &[String],
        reset: bool,
    ) -> Result<(), StoreError> {
        let mut writes = vec![self.store().channel_info_write(&key.channel_id, key.channel_type, info)];
        let mut left = Vec::new();
        if reset || !subscribers.is_empty() {
            let (more, removed) = self.subscriber_writes(key, subscribers, reset)?;
            writes.extend(more);
            left = removed;
        }
        let stored = self.store().apply(writes);
        self.channel_changed(key);
        stored?;
        self.after_members_left(key, &left)
    }

    /// Deletes a channel (not a person channel): disbanded and its member lists emptied
    /// in one atomic batch, then its chat and command history deleted, the newest
    /// messages too; the seq counters stay (the log's floors). Blocking.
    pub fn delete_channel(&self, key: &ChannelKey) -> Result<(), StoreError> {
        let store = self.store();
        let (id, ty) = (key.channel_id.as_str(), key.channel_type);
        let mut writes =
            vec![store.channel_info_write(id, ty, ChannelInfo { disband: true, ..ChannelInfo::default() })];
        let (subscriber_writes, left) = self.subscriber_writes(key, &[], true)?;
        writes.extend(subscriber_writes);
        for list in [MemberList::Blacklist, MemberList::Whitelist] {
            writes.extend(store.add_member_writes(list, id, ty, &[], true)?);
        }
        let stored = store.apply(writes);
        self.channel_changed(key);
        stored?;
        self.after_members_left(key, &left)?;
        self.log().clear_channel(key)?;
        self.log().clear_channel(&crate::channel::command_channel(key))?;
        Ok(())
    }

    /// Whether `uid` is banned from logging in (the ban of its person channel). Blocking.
    pub fn is_user_banned(&self, uid: &str) -> Result<bool, StoreError> {
        let key = ChannelKey::new(uid, PERSON);
        Ok(self.channels.peek(self.store(), self.datasource.get(), &key)?.info.ban)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hongyan_store::MemoryBackend;

    fn store() -> Store {
        Store::new(Arc::new(MemoryBackend::new()))
    }

    #[test]
    fn a_peek_reads_through_without_keeping_the_state() {
        let (store, cache) = (store(), ChannelCache::default());
        let u = ChannelKey::new("u", PERSON);
        store.put_channel_info("u", PERSON, ChannelInfo { ban: true, ..ChannelInfo::default() }).unwrap();
        assert!(cache.peek(&store, None, &u).unwrap().info.ban);
        assert!(cache.cached(&u).is_none(), "a peek keeps nothing");
        let kept = cache.get(&store, None, &u).unwrap();
        assert!(Arc::ptr_eq(&cache.peek(&store, None, &u).unwrap(), &kept), "a cached state is used");
    }

    #[test]
    fn a_change_is_seen_by_the_next_read() {
        let (store, cache) = (store(), ChannelCache::default());
        let g = ChannelKey::new("g", 2);
        assert!(cache.get(&store, None, &g).unwrap().subscribers.is_empty());
        assert!(cache.cached(&g).is_some());
        store.add_members(MemberList::Subscribers, "g", 2, &["a".into()], false).unwrap();
        cache.changed(&g);
        assert!(cache.cached(&g).is_none());
        assert!(cache.get(&store, None, &g).unwrap().subscribers.contains("a"));
    }

    #[test]
    fn a_load_that_raced_with_a_change_is_not_kept() {
        let cache = ChannelCache::default();
        let g = ChannelKey::new("g", 2);
        // A change lands while the load is reading storage: the loaded state may be from
        // before it, so it serves this one caller but is not cached.
        let state = cache
            .get_with(&g, || {
                cache.changed(&g);
                Ok(ChannelState::default())
            })
            .unwrap();
        assert!(state.subscribers.is_empty());
        assert!(cache.cached(&g).is_none());
        // An undisturbed load is kept.
        cache.get_with(&g, || Ok(ChannelState::default())).unwrap();
        assert!(cache.cached(&g).is_some());
    }

    #[test]
    fn the_member_budget_evicts() {
        let store = store();
        let cache = ChannelCache { entries: RwLock::default(), budget: 10 };
        let six: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
        store.add_members(MemberList::Subscribers, "big1", 2, &six, false).unwrap();
        store.add_members(MemberList::Subscribers, "big2", 2, &six, false).unwrap();
        let (a, b) = (ChannelKey::new("big1", 2), ChannelKey::new("big2", 2));
        cache.get(&store, None, &a).unwrap();
        assert!(cache.cached(&a).is_some());
        cache.get(&store, None, &b).unwrap();
        assert!(cache.cached(&a).is_none(), "the first was evicted to make room");
        assert!(cache.cached(&b).is_some());
        assert!(cache.entries.read().unwrap().weight <= 10);
        // A channel over the whole budget is served but never cached.
        let twelve: Vec<String> = (0..12).map(|i| format!("v{i}")).collect();
        store.add_members(MemberList::Subscribers, "huge", 2, &twelve, false).unwrap();
        let huge = ChannelKey::new("huge", 2);
        assert_eq!(cache.get(&store, None, &huge).unwrap().subscribers.len(), 12);
        assert!(cache.cached(&huge).is_none());
    }

    #[derive(Debug, Default)]
    struct Remote {
        calls: std::sync::atomic::AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Datasource for Remote {
        fn channel(&self, key: &ChannelKey) -> Result<RemoteChannel, StoreError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Datasource("getSubscribers: HTTP 500".into()));
            }
            Ok(RemoteChannel { subscribers: vec![format!("{}-member", key.channel_id)], ..RemoteChannel::default() })
        }
        fn system_uids(&self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
        fn ttl(&self) -> Duration {
            Duration::from_millis(50)
        }
    }

    #[test]
    fn unknown_channels_come_from_the_datasource_until_their_ttl_and_local_records_win() {
        let (store, cache) = (store(), ChannelCache::default());
        let remote = Arc::new(Remote::default());
        let source: Arc<dyn Datasource> = remote.clone();
        let g = ChannelKey::new("g", 2);
        let calls = || remote.calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(cache.get(&store, Some(&source), &g).unwrap().subscribers.contains("g-member"));
        assert!(cache.get(&store, Some(&source), &g).unwrap().subscribers.contains("g-member"));
        assert_eq!(calls(), 1, "answered from the cache within the TTL");
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.cached(&g).is_none(), "expired");
        remote.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let failed = cache.get(&store, Some(&source), &g).unwrap_err();
        assert!(matches!(failed, StoreError::Datasource(_)), "a failure is an error, not an empty channel");
        assert_eq!(calls(), 2);
        // A channel stored here never asks the datasource.
        store.add_members(MemberList::Subscribers, "h", 2, &["local".into()], false).unwrap();
        let h = cache.get(&store, Some(&source), &ChannelKey::new("h", 2)).unwrap();
        assert!(h.subscribers.contains("local") && h.expires.is_none());
        assert_eq!(calls(), 2);
    }
}
