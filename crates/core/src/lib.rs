//! The messaging core: who may log in, who may send where, and how a message travels
//! from a SEND to the log and on to every online recipient.
//!
//! The path of a SEND (`on_packet`):
//! 1. **Admission**, awaited by the connection's session so that a connection's SENDs
//!    are admitted in order: the sender's global mute (25), msgKey and decryption (9),
//!    the channel's ban (19) and disband (24), then the sender's rights — blacklist (4),
//!    subscriber (3), whitelist (13) — and finally the append is *enqueued* on the log.
//! 2. **Durability**: the log's writer commits the batch (one fsync) and, in commit
//!    order, hands each new message to a fan-out shard; a resend of a stored
//!    `client_msg_no` gets the original's id and seq and is not delivered again.
//! 3. **SENDACK** to the sender once the append is durable.
//! 4. **Fan-out** on the channel's shard (so each channel's messages go out in seq
//!    order): one RECV per online connection of every recipient except the sending
//!    connection, encrypted with that connection's key.
//!
//! 5. **Retry**: each stored RECV waits in the [`retry::RetryQueue`] until the
//!    connection's RECVACK, and is re-sent byte for byte if it does not come in time.
//!
//! Admission and fan-out read channels through the [`channels`] cache, so a SEND to a
//! known channel is admitted on the connection's own task without touching storage.
//! SyncOnce messages take the same path into the channel's command channel
//! ([`commands`]).

#![warn(missing_docs)]

pub mod channel;
pub mod channels;
pub mod cluster;
pub mod commands;
pub mod conns;
pub mod conversation;
pub mod directory;
pub mod extras;
mod fanout;
mod forward;
pub mod hooks;
pub mod ids;
mod kicks;
pub mod owners;
pub mod retry;
mod send;
pub mod session;
mod sessions;

pub use send::{AppSend, AppSent, SendError};
pub(crate) use send::{Submission, Submitted, storage};
pub use sessions::Sessions;

use std::sync::Arc;

use crate::session::{Conn, Registry};
use hongyan_proto::{Connect, DeviceLevel, ReasonCode};
use hongyan_store::{ChannelKey, MessageLog, NewMessage, Store, StoreError};
use tokio::sync::mpsc;
use tracing::warn;

use crate::channels::ChannelCache;
use crate::ids::Snowflake;
use crate::retry::{RetryQueue, RetrySettings};

/// Fan-out shards: each delivers its channels' messages in order; together they spread
/// the per-recipient encryption over the runtime's workers, one shard per core (at
/// least 4, so a busy channel does not hold up every other on a small machine).
fn fanout_shards() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().max(4))
}

/// Where the message id reservation is kept (`Store::meta_u64`).
const IDS_RESERVED: &str = "ids_reserved_until_ms";

/// What a message costs the pipeline budget beyond its own bytes: the log's job, the
/// commit callback, the delivery, the keys and rows that travel with it (measured at
/// about 1 KiB under load). It also bounds the number of messages in the pipeline: at
/// most `pipeline_bytes / MESSAGE_OVERHEAD`.
const MESSAGE_OVERHEAD: usize = 1024;

/// Settings of the core.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    /// Check CONNECT tokens (off only for demos).
    pub token_auth: bool,
    /// Person chats follow the receiver's whitelist when it is not empty.
    pub person_whitelist: bool,
    /// The uid that logs in with the manager token.
    pub manager_uid: String,
    /// The manager token; empty disables manager logins.
    pub manager_token: String,
    /// The uid of server-originated messages; it cannot log in and receives nothing.
    pub system_uid: String,
    /// The snowflake node id.
    pub node_id: u64,
    /// How unacknowledged RECVs are retried.
    pub retry: RetrySettings,
    /// Bytes of messages admitted but not yet delivered (in the log's queue, being
    /// committed, waiting for or in fan-out), counting 1 KiB more than each payload. Past
    /// it, senders wait: a connection's next packet is not read, an HTTP send waits.
    pub pipeline_bytes: usize,
    /// How long a connection displaced by a login on another node keeps its socket
    /// after its DISCONNECT (the gateway's `kick_close_delay_ms`).
    pub kick_close_delay: std::time::Duration,
}

/// A message on its way to recipients.
struct Delivery {
    channel: ChannelKey,
    message: NewMessage,
    seq: u64,
    /// The sending connection, which does not get its own message back.
    origin: cluster::Origin,
    /// The recipients, when not the channel's (an online-only send to a list).
    only_to: Option<Vec<String>>,
    /// How it reached this node.
    arrival: fanout::Arrival,
    /// The message's share of the pipeline budget, given back once it is delivered.
    _budget: tokio::sync::OwnedSemaphorePermit,
}

/// The pipeline budget in bytes, within what one semaphore acquisition can take.
fn pipeline_capacity(settings: &CoreSettings) -> usize {
    settings.pipeline_bytes.clamp(MESSAGE_OVERHEAD, u32::MAX as usize)
}

/// The messaging core. Shared by the gateway (as its [`session::SessionHandler`], through [`Sessions`]) and the APIs.
#[derive(Debug)]
pub struct Core {
    store: Store,
    log: Arc<MessageLog>,
    registry: Arc<Registry>,
    ids: Snowflake,
    settings: CoreSettings,
    shards: Vec<mpsc::Sender<Delivery>>,
    /// Bytes of messages in the pipeline (see [`CoreSettings::pipeline_bytes`]).
    pipeline: Arc<tokio::sync::Semaphore>,
    retry: RetryQueue,
    /// System accounts, written through to storage: the send path reads only this.
    system_accounts: std::sync::RwLock<std::collections::HashSet<String>>,
    /// Channel attributes and member lists, written through to storage.
    channels: ChannelCache,
    /// Serialises read-modify-write of one user's rows (striped by uid).
    conversation_locks: Vec<std::sync::Mutex<()>>,
    /// What each user's last `/message/sync` returned, for its `/message/syncack`.
    command_syncs: commands::SyncedCommands,
    /// Hears of logins, logouts and unstored messages (the webhooks).
    observer: std::sync::OnceLock<Arc<dyn hooks::Observer>>,
    /// Supplies channels there is no local record of.
    datasource: std::sync::OnceLock<Arc<dyn hooks::Datasource>>,
    /// System accounts the datasource names, refreshed by [`Core::refresh_system_accounts`].
    remote_system_accounts: std::sync::RwLock<std::collections::HashSet<String>>,
    /// In a cluster: the channels this node owns (unset on a single node: all).
    owners: std::sync::OnceLock<Arc<owners::Owners>>,
    /// In a cluster: carries sends to the owners of other nodes' channels.
    forwarder: std::sync::OnceLock<Arc<dyn cluster::Forwarder>>,
    /// In a cluster: tells the other nodes of changes to what they cache.
    notifier: std::sync::OnceLock<Arc<dyn cluster::ChangeNotifier>>,
    /// In a cluster: deliveries to and from the other nodes.
    links: fanout::Links,
    /// In a cluster: asks the other nodes about their connections.
    peers: std::sync::OnceLock<Arc<dyn conns::Peers>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("channel", &self.channel).field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Core {
    /// A core over `store` and `log`, delivering to `registry`'s connections. Starts the
    /// fan-out tasks on the current runtime.
    pub fn start(
        store: Store,
        log: Arc<MessageLog>,
        registry: Arc<Registry>,
        settings: CoreSettings,
    ) -> Result<Arc<Self>, StoreError> {
        let system_accounts = std::sync::RwLock::new(store.system_uids()?.into_iter().collect());
        // Message ids continue after the last run's reservation, whatever the clock says.
        // One reservation per node id: nodes of a cluster share the table. The first
        // format had one for the whole store, read when a node has none of its own yet.
        let key = format!("{IDS_RESERVED}/{}", settings.node_id);
        let reserved_until = match store.meta_u64(&key)? {
            Some(until) => until,
            None => store.meta_u64(IDS_RESERVED)?.unwrap_or(0),
        };
        let reserve: crate::ids::Reserve = {
            let store = store.clone();
            Box::new(move |until| store.put_meta_u64(&key, until).is_ok())
        };
        let ids = Snowflake::resume(settings.node_id, reserved_until, reserve)
            .ok_or_else(|| StoreError::Engine("cannot store the message id reservation".into()))?;
        let mut receivers = Vec::new();
        let mut shards = Vec::new();
        // Every delivery holds a share of the pipeline budget, so a shard never holds
        // more than the budget's message count; the channel's own bound says so too.
        let pipeline_bytes = pipeline_capacity(&settings);
        let most_messages = (pipeline_bytes / MESSAGE_OVERHEAD).max(1);
        for _ in 0..fanout_shards() {
            let (tx, rx) = mpsc::channel(most_messages);
            shards.push(tx);
            receivers.push(rx);
        }
        let retry = RetryQueue::new(settings.retry);
        let core = Arc::new(Self {
            store,
            log,
            registry,
            ids,
            settings,
            shards,
            pipeline: Arc::new(tokio::sync::Semaphore::new(pipeline_bytes)),
            retry,
            system_accounts,
            channels: ChannelCache::default(),
            conversation_locks: (0..64).map(|_| std::sync::Mutex::new(())).collect(),
            command_syncs: commands::SyncedCommands::default(),
            observer: std::sync::OnceLock::new(),
            datasource: std::sync::OnceLock::new(),
            remote_system_accounts: std::sync::RwLock::default(),
            owners: std::sync::OnceLock::new(),
            forwarder: std::sync::OnceLock::new(),
            notifier: std::sync::OnceLock::new(),
            links: fanout::Links::default(),
            peers: std::sync::OnceLock::new(),
        });
        for mut rx in receivers {
            // Holds only a weak reference: the shard ends when the core is dropped.
            let weak = Arc::downgrade(&core);
            tokio::spawn(async move {
                while let Some(delivery) = rx.recv().await {
                    let Some(core) = weak.upgrade() else { break };
                    core.deliver(delivery).await;
                }
            });
        }
        let weak = Arc::downgrade(&core);
        tokio::spawn(async move {
            // Keep the id reservation ahead of the clock, off the async workers.
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(crate::ids::RESERVE_AHEAD_MS / 4));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(core) = weak.upgrade() else { break };
                let _ = tokio::task::spawn_blocking(move || core.ids.extend()).await;
            }
        });
        let weak = Arc::downgrade(&core);
        let scan_every = (core.settings.retry.interval / 2).max(std::time::Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(scan_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(core) = weak.upgrade() else { break };
                let outcome = core.retry.scan(tokio::time::Instant::now());
                metrics::counter!("hongyan_core_retries_total").increment(outcome.resent as u64);
                metrics::counter!("hongyan_core_retry_dropped_total", "why" => "out_of_retries")
                    .increment(outcome.given_up as u64);
                metrics::gauge!("hongyan_core_retry_pending").set(core.retry.len() as f64);
                let in_use = pipeline_capacity(&core.settings).saturating_sub(core.pipeline.available_permits());
                metrics::gauge!("hongyan_core_pipeline_bytes").set(in_use as f64);
                let fanout: usize = core.shards.iter().map(|s| s.max_capacity() - s.capacity()).sum();
                metrics::gauge!("hongyan_core_fanout_queue_depth").set(fanout as f64);
                metrics::gauge!("hongyan_log_queue_depth").set(core.log.queued() as f64);
                metrics::gauge!("hongyan_gateway_held_bytes").set(core.registry.held().used() as f64);
            }
        });
        Ok(core)
    }

    /// Whether `uid` is a system account (sends without sender checks; anyone may
    /// message it).
    pub fn is_system_account(&self, uid: &str) -> bool {
        self.system_accounts.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(uid)
            || self.remote_system_accounts.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(uid)
    }

    /// Takes channels there is no local record of (and more system accounts) from
    /// `datasource`. Only the first call takes effect.
    pub fn set_datasource(&self, datasource: Arc<dyn hooks::Datasource>) {
        let _ = self.datasource.set(datasource);
    }

    /// Reloads the datasource's system accounts (keeping the last ones on failure).
    /// Blocking; does nothing without a datasource.
    pub fn refresh_system_accounts(&self) -> Result<(), StoreError> {
        let Some(source) = self.datasource.get() else { return Ok(()) };
        let uids = source.system_uids()?;
        *self.remote_system_accounts.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            uids.into_iter().collect();
        Ok(())
    }

    /// Every system account, sorted.
    pub fn system_accounts(&self) -> Vec<String> {
        let set = self.system_accounts.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut uids: Vec<String> = set.iter().cloned().collect();
        uids.sort_unstable();
        uids
    }

    /// Makes `uids` system accounts (or ordinary ones again), durably, then in memory.
    /// Blocking.
    pub fn set_system_accounts(&self, uids: &[String], system: bool) -> Result<(), StoreError> {
        self.store.set_system_uids(uids, system)?;
        let mut set = self.system_accounts.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for uid in uids {
            if system {
                set.insert(uid.clone());
            } else {
                set.remove(uid);
            }
        }
        drop(set);
        self.tell_others(cluster::Changed::SystemAccounts);
        Ok(())
    }

    /// Retention: for each (channel type, maximum age), removes older messages from
    /// the type's channels and their command channels (each channel keeps its newest
    /// message). Blocking.
    pub fn sweep_retention(&self, rules: &[(u8, std::time::Duration)]) -> Result<hongyan_store::Pruned, StoreError> {
        let mut total = hongyan_store::Pruned::default();
        for (channel_type, age) in rules {
            let cutoff = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            for stored_type in [*channel_type, channel_type | crate::channel::COMMAND] {
                let pruned = self.log.prune_older_than(stored_type, cutoff)?;
                total.channels += pruned.channels;
                total.messages += pruned.messages;
            }
        }
        metrics::counter!("hongyan_core_retention_removed_total").increment(total.messages as u64);
        Ok(total)
    }

    /// A fresh snowflake id (for ids the server makes up, e.g. group ids).
    pub fn next_id(&self) -> i64 {
        self.ids.next_id()
    }

    /// The durable tables.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The uid of server-originated messages.
    pub fn system_uid(&self) -> &str {
        &self.settings.system_uid
    }

    /// RECVs written but not yet acknowledged.
    pub fn retry_queue(&self) -> &RetryQueue {
        &self.retry
    }

    /// The message log.
    pub fn log(&self) -> &Arc<MessageLog> {
        &self.log
    }

    fn report_presence(&self, conn: &Conn, online: bool) {
        if let Some(presence) = self.links.presence.get() {
            let master = conn.level == DeviceLevel::Master;
            if online {
                presence.connected(&conn.uid, master);
            } else {
                presence.disconnected(&conn.uid, master);
            }
        }
        if let Some(observer) = self.observer() {
            let connections = self.registry.connections(&conn.uid);
            let same_flag = connections.iter().filter(|c| c.device_flag == conn.device_flag).count();
            observer.presence(conn, online, same_flag, connections.len());
        }
    }

    /// Waits until `message` fits in the pipeline budget and takes its share.
    async fn budget(&self, message: &NewMessage) -> tokio::sync::OwnedSemaphorePermit {
        let size = MESSAGE_OVERHEAD
            + message.payload.len()
            + message.client_msg_no.len()
            + message.topic.as_ref().map_or(0, String::len);
        // A message larger than the whole budget takes all of it.
        let cost = size.min(pipeline_capacity(&self.settings));
        let started = std::time::Instant::now();
        let permit = self
            .pipeline
            .clone()
            .acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX))
            .await
            .expect("invariant: the pipeline semaphore is never closed");
        let waited = started.elapsed();
        if waited > std::time::Duration::from_millis(1) {
            metrics::histogram!("hongyan_core_pipeline_wait_seconds").record(waited.as_secs_f64());
        }
        permit
    }

    fn shard(&self, channel: &ChannelKey) -> &mpsc::Sender<Delivery> {
        let hash = crc32fast::hash(channel.channel_id.as_bytes()) as usize ^ usize::from(channel.channel_type);
        &self.shards[hash % self.shards.len()]
    }

    /// Whether `token` is the one registered for (uid, device_flag) (`/user/token`).
    pub fn token_matches(&self, uid: &str, device_flag: u8, token: &str) -> Result<bool, StoreError> {
        Ok(self.store.device(uid, device_flag)?.is_some_and(|d| d.token_matches(token)))
    }

    fn check_login(&self, connect: &Connect) -> Result<DeviceLevel, ReasonCode> {
        let s = &self.settings;
        if self.health().has_failed() {
            // Fail-stop: a node whose storage failed takes no new sessions.
            return Err(ReasonCode::SystemError);
        }
        if connect.uid == s.system_uid {
            return Err(ReasonCode::AuthFail);
        }
        if connect.uid == s.manager_uid && !s.manager_token.is_empty() {
            return if eq_constant_time(&connect.token, &s.manager_token) {
                Ok(DeviceLevel::Slave)
            } else {
                Err(ReasonCode::AuthFail)
            };
        }
        let level = if s.token_auth {
            match self.store.device(&connect.uid, connect.device_flag).map_err(storage)? {
                Some(device) if device.token_matches(&connect.token) => device.level,
                _ => return Err(ReasonCode::AuthFail),
            }
        } else {
            DeviceLevel::Slave
        };
        // The ban is read only for a verified login, so a stranger's CONNECT costs one
        // point read and leaves nothing in the channel cache.
        if self.is_user_banned(&connect.uid).map_err(storage)? {
            return Err(ReasonCode::Ban);
        }
        Ok(level)
    }

    /// The health of the storage this core writes to: fail-stop once it has failed.
    pub fn health(&self) -> &Arc<hongyan_store::Health> {
        self.log.health()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Compares secrets without an early exit on the first differing byte (the length
/// still shows).
pub fn eq_constant_time(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A message from `from` stored `age` ago, for unit tests.
#[cfg(test)]
pub(crate) fn test_message(id: i64, from: &str, age: std::time::Duration) -> NewMessage {
    NewMessage {
        message_id: id,
        timestamp_ms: now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX),
        from_uid: from.into(),
        client_msg_no: format!("c{id}"),
        header: 0,
        setting: 0,
        expire: 0,
        topic: None,
        payload: bytes::Bytes::from_static(b"m"),
    }
}

/// A core over in-memory storage, for unit tests.
#[cfg(test)]
pub(crate) fn test_core() -> Arc<Core> {
    test_core_over(Arc::new(hongyan_store::MemoryBackend::new()))
}

/// A core over `kv`, for unit tests.
#[cfg(test)]
pub(crate) fn test_core_over(kv: Arc<dyn hongyan_store::KvBackend>) -> Arc<Core> {
    let log = Arc::new(MessageLog::open(kv.clone(), hongyan_store::Durability::Fsync).expect("log opens"));
    let settings = CoreSettings {
        token_auth: true,
        person_whitelist: false,
        manager_uid: "____manager".into(),
        manager_token: String::new(),
        system_uid: "____system".into(),
        node_id: 1,
        retry: RetrySettings::default(),
        pipeline_bytes: 1 << 24,
        kick_close_delay: std::time::Duration::from_millis(100),
    };
    Core::start(Store::new(kv), log, Arc::new(Registry::new()), settings).expect("core starts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::command_channel;
    use hongyan_store::{ChannelInfo, Write};

    fn old_message(id: i64, age: std::time::Duration) -> NewMessage {
        test_message(id, "a", age)
    }

    /// Memory storage whose writes fail while `failing` is set.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: hongyan_store::MemoryBackend,
        failing: std::sync::atomic::AtomicBool,
        /// Write batches attempted.
        batches: std::sync::atomic::AtomicUsize,
    }

    impl hongyan_store::KvBackend for Flaky {
        fn health(&self) -> &Arc<hongyan_store::Health> {
            self.inner.health()
        }
        fn get(&self, table: hongyan_store::Table, key: &[u8]) -> hongyan_store::Result<Option<Vec<u8>>> {
            self.inner.get(table, key)
        }
        fn scan_prefix(
            &self,
            table: hongyan_store::Table,
            prefix: &[u8],
            limit: usize,
        ) -> hongyan_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.inner.scan_prefix(table, prefix, limit)
        }
        fn scan_range(
            &self,
            table: hongyan_store::Table,
            start: &[u8],
            end: &[u8],
            limit: usize,
            order: hongyan_store::Order,
        ) -> hongyan_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.inner.scan_range(table, start, end, limit, order)
        }
        fn write(&self, writes: Vec<Write>, durable: bool) -> hongyan_store::Result<()> {
            self.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Engine("disk on fire".into()));
            }
            self.inner.write(writes, durable)
        }
        fn sync(&self) -> hongyan_store::Result<()> {
            self.inner.sync()
        }
    }

    #[tokio::test]
    async fn a_failed_channel_write_leaves_nothing_half_done() {
        let kv = Arc::new(Flaky::default());
        let core = test_core_over(kv.clone());
        let g = ChannelKey::new("g", 2);
        let members = vec!["a".to_owned(), "b".to_owned()];
        core.put_channel(&g, ChannelInfo::default(), &members, false).unwrap();
        core.set_role("g", "a", hongyan_store::Role::Owner).unwrap();

        kv.failing.store(true, std::sync::atomic::Ordering::Relaxed);
        let batches = || kv.batches.load(std::sync::atomic::Ordering::Relaxed);
        let banned = ChannelInfo { ban: true, ..ChannelInfo::default() };
        let before = batches();
        assert!(core.put_channel(&g, banned, &["c".to_owned()], true).is_err());
        assert!(core.delete_channel(&g).is_err());
        assert_eq!(batches() - before, 2, "each change is a single batch");
        kv.failing.store(false, std::sync::atomic::Ordering::Relaxed);

        // Neither the attributes, the members, the new member's rows nor the owner's
        // role changed: each call was one batch, and it failed whole.
        let state = core.channel_state(&g).unwrap();
        assert!(!state.info.ban && !state.info.disband);
        let mut now: Vec<&String> = state.subscribers.iter().collect();
        now.sort();
        assert_eq!(now, ["a", "b"]);
        assert_eq!(core.store().conversation("c", &g).unwrap(), None);
        assert!(core.store().conversation("a", &command_channel(&g)).unwrap().is_some());
        assert_eq!(core.roles("g").unwrap(), [("a".to_owned(), hongyan_store::Role::Owner)]);
    }

    #[tokio::test]
    async fn retention_sweeps_a_type_and_its_commands_only() {
        let core = test_core();
        let day = std::time::Duration::from_secs(86_400);
        let (g, g_cmd, p) =
            (ChannelKey::new("g", 2), command_channel(&ChannelKey::new("g", 2)), ChannelKey::new("a@b", 1));
        for (id, age) in [(1, 3 * day), (2, 2 * day), (3, day / 2)] {
            core.log().append(g.clone(), old_message(id, age)).await.unwrap();
            core.log().append(p.clone(), old_message(id, age)).await.unwrap();
        }
        core.log().append(g_cmd.clone(), old_message(9, 5 * day)).await.unwrap();
        core.log().append(g_cmd.clone(), old_message(10, 4 * day)).await.unwrap();

        let pruned = core.sweep_retention(&[(2, day)]).unwrap();
        assert_eq!((pruned.channels, pruned.messages), (2, 4));
        let seqs = |c: &ChannelKey| {
            core.log()
                .read(c, 1, 0, 10, hongyan_store::Order::Ascending)
                .unwrap()
                .iter()
                .map(|m| m.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&g), [3]);
        assert_eq!(seqs(&g_cmd), Vec::<u64>::new(), "old commands go, the newest too");
        assert_eq!(core.log().last_seq(&g_cmd).unwrap(), 2, "while the command seqs carry on");
        assert_eq!(seqs(&p), [1, 2, 3], "person chats have no retention here");
        // (The two channels' messages share ids here; the id index names p's, and keeps them.)
        let by_id = core.log().by_message_id(1).unwrap().map(|(c, m)| (c, m.seq));
        assert_eq!(by_id, Some((p.clone(), 1)), "an id row naming another message stays");
    }
}
