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
mod fanout;
mod forward;
pub mod hooks;
pub mod ids;
mod kicks;
pub mod owners;
pub mod retry;
pub mod session;

use std::sync::Arc;

use crate::session::{AuthFuture, Conn, PacketFuture, Registry, SessionHandler, is_valid_client_msg_no, is_valid_uid};
use bytes::Bytes;
use hongyan_proto::{Connect, DeviceLevel, HeaderFlags, Packet, ReasonCode, Send, Sendack, Suback};
use hongyan_store::ChannelInfo;
use hongyan_store::{
    Appended, ChannelKey, Conversation, Fence, MemberList, MessageLog, NewMessage, OnCommit, PendingAppend, Store,
    StoreError, Write,
};
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::channel::{CUSTOMER_SERVICE, INFO, MAX_TYPE, PERSON, base_channel, command_channel, person_channel_id};
use crate::channels::{ChannelCache, ChannelState, ListChange};
use crate::ids::Snowflake;
use crate::retry::{Acked, RetryQueue, RetrySettings};

/// Fan-out shards: each delivers its channels' messages in order; together they spread
/// the per-recipient encryption over the runtime's workers.
const FANOUT_SHARDS: usize = 4;

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

/// A message the app server sends over HTTP.
#[derive(Clone, Debug, Default)]
pub struct AppSend {
    /// The sender; empty for the system uid.
    pub from_uid: String,
    /// The channel (for person chat: the recipient's uid).
    pub channel_id: String,
    /// The channel type.
    pub channel_type: u8,
    /// Deduplication key; resends with the same one return the original.
    pub client_msg_no: String,
    /// NoPersist, RedDot, SyncOnce.
    pub header: HeaderFlags,
    /// Seconds until expiry, 0 = never.
    pub expire: u32,
    /// The payload (plaintext; encrypted per connection on delivery).
    pub payload: Bytes,
    /// Send to just these uids (requires SyncOnce) instead of `channel_id`.
    pub subscribers: Vec<String>,
}

/// What [`Core::send_as_app`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSent {
    /// The message id (the original's for a resend).
    pub message_id: i64,
    /// The seq in its channel (0 for NoPersist).
    pub seq: u64,
    /// The client_msg_no, given or made up.
    pub client_msg_no: String,
}

/// What [`Core::submit`] did.
pub(crate) enum Submitted {
    /// Queued for storage; await for the ids.
    Stored(PendingAppend),
    /// NoPersist: delivered, not stored.
    OnlineOnly,
}

/// Who gets the SENDACK of a message, and what it echoes.
struct AckTo {
    conn: Arc<Conn>,
    /// The connection's in-flight slot, given back once the SENDACK is queued.
    _slot: SendSlot,
    flags: HeaderFlags,
    client_seq: u32,
    /// The id given at admission (a resend is answered with the original's).
    message_id: i64,
}

/// How an admitted SEND is stored: under which id and claim, answered to whom,
/// delivered to all but which connection.
struct Submission {
    /// The id given at arrival.
    message_id: i64,
    /// The sending connection on this node, which gets the SENDACK.
    ack_to: Option<AckTo>,
    /// The ownership claim the append is made under (in a cluster).
    fence: Option<Fence>,
    /// The sending connection, wherever it is.
    origin: cluster::Origin,
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

/// One of a connection's SENDs in flight (admitted, SENDACK not yet queued). The
/// session reads no further packet while all of them are taken, so a client faster
/// than the server is slowed by TCP instead of buffered.
struct SendSlot(Arc<Conn>);

impl SendSlot {
    async fn take(conn: &Arc<Conn>) -> Option<Self> {
        conn.sends_in_flight.acquire().await.ok()?.forget();
        Some(Self(conn.clone()))
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        self.0.sends_in_flight.add_permits(1);
    }
}

/// The messaging core. Shared by the gateway (as its [`SessionHandler`]) and the APIs.
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

fn storage(e: StoreError) -> ReasonCode {
    match e {
        StoreError::Datasource(_) => warn!(error = %e, "the datasource failed while handling a message"),
        StoreError::Busy(_) | StoreError::TooLong { .. } => tracing::debug!(error = %e, "message refused"),
        _ => error!(error = %e, "storage failed while handling a message"),
    }
    ReasonCode::SystemError
}

/// Why [`Core::send_as_app`] did not send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Refused with this reason code (SystemError: storage failed).
    #[error("message refused: {}", .0.name())]
    Refused(ReasonCode),
    /// The channel is not stored here and the datasource did not describe it.
    #[error("{0}")]
    Datasource(String),
}

impl From<ReasonCode> for SendError {
    fn from(reason: ReasonCode) -> Self {
        Self::Refused(reason)
    }
}

impl SendError {
    fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::Datasource(why) => Self::Datasource(why),
            other => Self::Refused(storage(other)),
        }
    }

    /// The reason code a binary client would get (SystemError for a datasource failure).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::Refused(reason) => *reason,
            Self::Datasource(_) => ReasonCode::SystemError,
        }
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
        for _ in 0..FANOUT_SHARDS {
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

    /// The channels whose state admission reads: the sender's own person channel (ban,
    /// mute) and the target: a group, or the peer's person channel (its blacklist).
    fn admission_keys(sender: &str, send: &Send) -> (ChannelKey, Option<ChannelKey>) {
        let valid = send.channel_type != 0 && send.channel_type <= MAX_TYPE && is_valid_uid(&send.channel_id);
        (ChannelKey::new(sender, PERSON), valid.then(|| ChannelKey::new(send.channel_id.clone(), send.channel_type)))
    }

    /// Checks a SEND in WuKongIM's order against the channels' states and returns the
    /// stored channel (the command channel for SyncOnce), the plaintext payload and the
    /// rows the channel's first message must bring, or the SENDACK reason code.
    fn admit(
        &self,
        sender: &str,
        send: &Send,
        open: impl FnOnce() -> Result<Bytes, ReasonCode>,
        sender_state: &ChannelState,
        target: Option<&ChannelState>,
    ) -> Result<(ChannelKey, Bytes, Vec<Write>), ReasonCode> {
        if sender_state.info.send_ban {
            return Err(ReasonCode::SendBan);
        }
        let plain = open()?;
        let channel_type = send.channel_type;
        if channel_type == 0 || channel_type > MAX_TYPE {
            return Err(ReasonCode::NotSupportChannelType);
        }
        if channel_type == crate::channel::TEMP {
            // Temporary channels exist for the app server's sends to a list of uids.
            return Err(ReasonCode::NotSupportChannelType);
        }
        let Some(target) = target.filter(|_| is_valid_uid(&send.channel_id)) else {
            return Err(ReasonCode::ChannelIdError);
        };
        let sync_once = send.flags.sync_once;
        if channel_type == PERSON {
            let peer = &send.channel_id;
            if *peer == self.settings.system_uid {
                return Err(ReasonCode::ChannelIdError);
            }
            // Anyone may message a system account; a system account may message anyone.
            let privileged = self.is_system_account(peer) || self.is_system_account(sender);
            if !privileged && target.blacklist.contains(sender) {
                return Err(ReasonCode::InBlacklist);
            }
            let whitelisted = target.whitelist.is_empty() || target.whitelist.contains(sender);
            if self.settings.person_whitelist && !privileged && !whitelisted {
                return Err(ReasonCode::NotInWhitelist);
            }
            let key = self.stored_channel(ChannelKey::new(person_channel_id(sender, peer), PERSON), sync_once);
            let rows = self.person_rows(&key, [sender, peer]);
            return Ok((key, plain, rows));
        }
        let id = &send.channel_id;
        Self::check_open(target.info)?;
        let key = self.stored_channel(ChannelKey::new(id.clone(), channel_type), sync_once);
        if matches!(channel_type, CUSTOMER_SERVICE | INFO) || self.is_system_account(sender) {
            return Ok((key, plain, Vec::new()));
        }
        if target.blacklist.contains(sender) {
            return Err(ReasonCode::InBlacklist);
        }
        if !target.subscribers.contains(sender) {
            return Err(ReasonCode::SubscriberNotExist);
        }
        if !target.whitelist.is_empty() && !target.whitelist.contains(sender) {
            return Err(ReasonCode::NotInWhitelist);
        }
        Ok((key, plain, Vec::new()))
    }

    /// A banned or disbanded channel takes no messages, from anyone.
    fn check_open(info: ChannelInfo) -> Result<(), ReasonCode> {
        if info.ban {
            return Err(ReasonCode::Ban);
        }
        if info.disband {
            return Err(ReasonCode::Disband);
        }
        Ok(())
    }

    /// Where a message to `channel` is stored: SyncOnce messages go to its command channel.
    fn stored_channel(&self, channel: ChannelKey, sync_once: bool) -> ChannelKey {
        if sync_once { command_channel(&channel) } else { channel }
    }

    /// The conversation rows of a person chat (cursor 0; own messages never count as
    /// unread anyway). The log writes them with the channel's first message only, in
    /// the same atomic batch, so an acknowledged message always has its conversations.
    fn person_rows(&self, channel: &ChannelKey, uids: [&str; 2]) -> Vec<Write> {
        let mut rows = Vec::with_capacity(2);
        for (i, uid) in uids.iter().enumerate() {
            if *uid != self.settings.system_uid && (i == 0 || uids[0] != uids[1]) {
                rows.push(self.store.conversation_write(uid, channel, Conversation::default()));
            }
        }
        rows
    }

    /// The states of `keys` from the cache, loading the missing ones off the async
    /// workers.
    async fn channel_states(self: &Arc<Self>, keys: Vec<ChannelKey>) -> Result<Vec<Arc<ChannelState>>, StoreError> {
        let cached: Option<Vec<_>> = keys.iter().map(|k| self.channels.cached(k)).collect();
        if let Some(states) = cached {
            return Ok(states);
        }
        let core = self.clone();
        tokio::task::spawn_blocking(move || keys.iter().map(|k| core.channel_state(k)).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|e| StoreError::Engine(format!("channel load task failed: {e}")))?
    }

    async fn on_send(self: &Arc<Self>, conn: &Arc<Conn>, send: Send) {
        // Wait for one of the connection's in-flight slots first: while they are all
        // taken, the session reads nothing more from this client.
        let Some(slot) = SendSlot::take(conn).await else { return };
        let message_id = self.ids.next_id();
        let ack = |message_id: i64, message_seq: u64, reason_code: ReasonCode| {
            let ack = Sendack {
                flags: send.flags,
                message_id,
                client_seq: send.client_seq,
                message_seq: message_seq as u32,
                reason_code,
            };
            let _ = conn.send(&Packet::Sendack(ack));
        };
        // In a cluster, a message is stored by its channel's owner; online-only ones are
        // delivered from where they arrive.
        let owned = if send.flags.no_persist {
            None
        } else {
            Self::owned_channel(&conn.uid, &send.channel_id, send.channel_type)
        };
        let fence = match self.placement(owned.as_ref()).await {
            Ok(owners::Placement::Local(fence)) => fence,
            Ok(owners::Placement::Remote(node)) => {
                self.forward_client_send(conn, send.clone(), message_id, node).await;
                drop(slot);
                return;
            }
            Err(reason) => return ack(message_id, 0, reason),
        };
        // The SENDACK goes out from the log's commit callback, once the append is
        // durable, without holding up the connection's next packet.
        let ack_to =
            AckTo { conn: conn.clone(), _slot: slot, flags: send.flags, client_seq: send.client_seq, message_id };
        let open = || match &conn.cipher {
            Some(cipher) => cipher.open_send(&send).map(Bytes::from).map_err(|e| e.reason_code()),
            None => Ok(send.payload.clone()),
        };
        let how = Submission { message_id, ack_to: Some(ack_to), fence, origin: self.here(conn.id) };
        match self.admit_and_submit(&conn.uid, &send, open, how).await {
            Ok(Submitted::Stored(_)) => {}
            Ok(Submitted::OnlineOnly) => ack(message_id, 0, ReasonCode::Success),
            Err(reason) => ack(message_id, 0, reason),
        }
    }

    /// Admits a SEND from `sender` (in WuKongIM's order of checks; `open` gives the
    /// plaintext payload) and submits it. A refusal is counted here and returned.
    async fn admit_and_submit(
        self: &Arc<Self>,
        sender: &str,
        send: &Send,
        open: impl FnOnce() -> Result<Bytes, ReasonCode>,
        how: Submission,
    ) -> Result<Submitted, ReasonCode> {
        let Submission { message_id, ack_to, fence, origin } = how;
        let (sender_key, target_key) = Self::admission_keys(sender, send);
        let has_target = target_key.is_some();
        let admitted = match self.channel_states([sender_key].into_iter().chain(target_key).collect()).await {
            Ok(states) => {
                let target = if has_target { states.get(1).map(|s| &**s) } else { None };
                self.admit(sender, send, open, &states[0], target)
            }
            Err(e) => Err(storage(e)),
        };
        let (channel, payload, rows) = admitted.inspect_err(|reason| {
            metrics::counter!("hongyan_core_sends_total", "result" => reason.name()).increment(1);
        })?;
        let message = NewMessage {
            message_id,
            timestamp_ms: now_ms(),
            from_uid: sender.to_owned(),
            client_msg_no: send.client_msg_no.clone(),
            header: send.flags.bits() & !HeaderFlags::DUP,
            setting: send.setting.0,
            expire: send.expire,
            topic: send.topic.clone(),
            payload,
        };
        self.submit(channel, message, ack_to, rows, fence, origin).await
    }

    /// Stores (unless NoPersist) and delivers an admitted message; `ack_to` is the
    /// sending connection, which gets the SENDACK once the append is decided and not
    /// its own message back. Waits for the message's share of the pipeline budget,
    /// then enqueues without awaiting anything else, so calls from one connection are
    /// stored in the order they are made.
    async fn submit(
        &self,
        channel: ChannelKey,
        message: NewMessage,
        ack_to: Option<AckTo>,
        rows: Vec<Write>,
        fence: Option<Fence>,
        origin: cluster::Origin,
    ) -> Result<Submitted, ReasonCode> {
        if !is_valid_client_msg_no(&message.client_msg_no) {
            metrics::counter!("hongyan_core_sends_total", "result" => "bad_client_msg_no").increment(1);
            return Err(ReasonCode::NotAllowSend);
        }
        let budget = self.budget(&message).await;
        if self.health().has_failed() {
            metrics::counter!("hongyan_core_sends_total", "result" => "storage_failed").increment(1);
            return Err(ReasonCode::SystemError);
        }
        if HeaderFlags::from_bits(message.header).no_persist {
            // Online only: not stored, no seq, delivered at once.
            metrics::counter!("hongyan_core_sends_total", "result" => "no_persist").increment(1);
            if let Some(observer) = self.observer() {
                observer.unstored(&channel, &message, None);
            }
            let delivery = Delivery {
                channel,
                message,
                seq: 0,
                origin,
                only_to: None,
                arrival: fanout::Arrival::Here,
                _budget: budget,
            };
            let _ = self.shard(&delivery.channel).send(delivery).await;
            return Ok(Submitted::OnlineOnly);
        }
        // An append refused under a claim may mean the channel moved: forget the claim.
        let claim = fence.is_some().then(|| self.owners.get().cloned()).flatten().map(|o| (o, base_channel(&channel)));
        let on_commit: OnCommit = {
            let shard = self.shard(&channel).clone();
            let (channel, message) = (channel.clone(), message.clone());
            Box::new(move |appended| {
                if let (None, Some((owners, owned))) = (&appended, &claim) {
                    owners.release(owned);
                }
                let label = match appended {
                    Some(Appended::New { seq, .. }) => {
                        // On the writer thread: a full shard holds up the writer, which
                        // holds up senders through the pipeline budget.
                        let delivery = Delivery {
                            channel,
                            message,
                            seq,
                            origin,
                            only_to: None,
                            arrival: fanout::Arrival::Here,
                            _budget: budget,
                        };
                        let _ = shard.blocking_send(delivery);
                        "stored"
                    }
                    Some(Appended::Duplicate { .. }) => "duplicate",
                    None => "not_stored",
                };
                metrics::counter!("hongyan_core_sends_total", "result" => label).increment(1);
                if let Some(to) = ack_to {
                    let (message_id, seq, reason) = match appended {
                        Some(appended) => {
                            let (id, seq) = appended.ids();
                            (id, seq, ReasonCode::Success)
                        }
                        None => (to.message_id, 0, ReasonCode::SystemError),
                    };
                    let ack = Sendack {
                        flags: to.flags,
                        message_id,
                        client_seq: to.client_seq,
                        message_seq: seq as u32,
                        reason_code: reason,
                    };
                    let _ = to.conn.send(&Packet::Sendack(ack));
                }
            })
        };
        let pending = self.log.enqueue_fenced(channel, message, rows, fence, Some(on_commit)).map_err(storage)?;
        Ok(Submitted::Stored(pending))
    }

    /// Sends a message on the app server's behalf (HTTP `/message/send`): no sender
    /// checks (it speaks for the system), but a banned or disbanded channel refuses it.
    /// An empty `from_uid` is the system uid; an empty `client_msg_no` gets one made up.
    /// With `subscribers` (and SyncOnce), the message goes to just those uids through a
    /// new temporary channel. Returns once the message is durable (a resend returns the
    /// original).
    pub async fn send_as_app(self: &Arc<Self>, request: AppSend) -> Result<AppSent, SendError> {
        self.send_as_app_placed(request, None, None).await
    }

    /// [`Self::send_as_app`], with the id a forwarding node gave the message and, when
    /// placed already (by the owner admitting a forward), the claim to store under.
    pub(crate) async fn send_as_app_placed(
        self: &Arc<Self>,
        request: AppSend,
        message_id: Option<i64>,
        placed: Option<Option<Fence>>,
    ) -> Result<AppSent, SendError> {
        let from_uid =
            if request.from_uid.is_empty() { self.settings.system_uid.clone() } else { request.from_uid.clone() };
        if !is_valid_uid(&from_uid) {
            return Err(ReasonCode::ChannelIdError.into());
        }
        let message_id = message_id.unwrap_or_else(|| self.ids.next_id());
        let to_channel = request.subscribers.is_empty() && !request.header.no_persist;
        let owned =
            if to_channel { Self::owned_channel(&from_uid, &request.channel_id, request.channel_type) } else { None };
        let fence = match placed {
            Some(fence) => fence,
            None => match self.placement(owned.as_ref()).await? {
                owners::Placement::Local(fence) => fence,
                owners::Placement::Remote(node) => {
                    let client_msg_no = if request.client_msg_no.is_empty() {
                        format!("{message_id:x}0")
                    } else {
                        request.client_msg_no.clone()
                    };
                    let forwarded = cluster::ForwardedSend {
                        from_uid: request.from_uid,
                        from_app: true,
                        channel_id: request.channel_id,
                        channel_type: request.channel_type,
                        message_id,
                        header: request.header.bits() & !HeaderFlags::DUP,
                        setting: 0,
                        client_msg_no,
                        expire: request.expire,
                        topic: None,
                        payload: request.payload,
                        origin: cluster::Origin::default(),
                    };
                    let owned = owned.expect("invariant: only a stored channel is placed remotely");
                    return self.forward_app_send(node, &owned, forwarded).await;
                }
            },
        };
        let sync_once = request.header.sync_once;
        let mut only_to = None;
        let (channel, rows) = if request.subscribers.is_empty() {
            let channel_type = request.channel_type;
            if channel_type == 0 || channel_type > MAX_TYPE {
                return Err(ReasonCode::NotSupportChannelType.into());
            }
            if !is_valid_uid(&request.channel_id) {
                return Err(ReasonCode::ChannelIdError.into());
            }
            if channel_type == PERSON {
                let key = ChannelKey::new(person_channel_id(&from_uid, &request.channel_id), PERSON);
                let key = self.stored_channel(key, sync_once);
                let rows = self.person_rows(&key, [&from_uid, &request.channel_id]);
                (key, rows)
            } else {
                let key = ChannelKey::new(request.channel_id, channel_type);
                let state = self.channel_states(vec![key.clone()]).await.map_err(SendError::from_store)?;
                Self::check_open(state[0].info)?;
                (self.stored_channel(key, sync_once), Vec::new())
            }
        } else {
            if !sync_once {
                return Err(ReasonCode::NotSupportHeader.into());
            }
            let mut uids = request.subscribers;
            if uids.iter().any(|u| !is_valid_uid(u)) {
                return Err(ReasonCode::ChannelIdError.into());
            }
            uids.sort_unstable();
            uids.dedup();
            let temp = ChannelKey::new(commands::temp_channel_id(message_id), crate::channel::TEMP);
            if request.header.no_persist {
                // Online only: nothing is stored, not even the temporary channel.
                only_to = Some(uids);
            } else {
                let (core, k) = (self.clone(), temp.clone());
                tokio::task::spawn_blocking(move || {
                    core.change_members(MemberList::Subscribers, &k, &uids, ListChange::Add)
                })
                .await
                .map_err(|_| ReasonCode::SystemError)?
                .map_err(SendError::from_store)?;
            }
            (self.stored_channel(temp, true), Vec::new())
        };
        let client_msg_no =
            if request.client_msg_no.is_empty() { format!("{message_id:x}0") } else { request.client_msg_no };
        let message = NewMessage {
            message_id,
            timestamp_ms: now_ms(),
            from_uid,
            client_msg_no: client_msg_no.clone(),
            header: request.header.bits() & !HeaderFlags::DUP,
            setting: 0,
            expire: request.expire,
            topic: None,
            payload: request.payload,
        };
        if let Some(uids) = only_to {
            if let Some(observer) = self.observer() {
                observer.unstored(&channel, &message, Some(&uids));
            }
            let budget = self.budget(&message).await;
            let delivery = Delivery {
                channel,
                message,
                seq: 0,
                origin: cluster::Origin::default(),
                only_to: Some(uids),
                arrival: fanout::Arrival::Here,
                _budget: budget,
            };
            let _ = self.shard(&delivery.channel).send(delivery).await;
            return Ok(AppSent { message_id, seq: 0, client_msg_no });
        }
        let origin = cluster::Origin::default();
        let (message_id, seq) = match self.submit(channel, message, None, rows, fence, origin).await? {
            Submitted::OnlineOnly => (message_id, 0),
            Submitted::Stored(pending) => pending.await.map(Appended::ids).map_err(SendError::from_store)?,
        };
        Ok(AppSent { message_id, seq, client_msg_no })
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

/// The gateway's view of the core. Implemented on `Arc<Core>` because sends outlive the
/// call that admits them.
#[derive(Debug, Clone)]
pub struct Sessions(pub Arc<Core>);

impl SessionHandler for Sessions {
    fn authenticate<'a>(&'a self, connect: &'a Connect) -> AuthFuture<'a> {
        let (core, connect) = (self.0.clone(), connect.clone());
        Box::pin(async move {
            // Storage reads block; keep them off the async workers.
            tokio::task::spawn_blocking(move || core.check_login(&connect))
                .await
                .unwrap_or(Err(ReasonCode::SystemError))
        })
    }

    fn on_online(&self, conn: &Arc<Conn>) {
        self.0.announce_login(conn);
        self.0.report_presence(conn, true);
    }

    fn on_packet<'a>(&'a self, conn: &'a Arc<Conn>, packet: Packet) -> PacketFuture<'a> {
        Box::pin(async move {
            match packet {
                Packet::Send(send) => self.0.on_send(conn, send).await,
                Packet::Sub(sub) => {
                    // WuKongIM answers SUB only for data channels, which are not built yet.
                    let ack = Suback {
                        sub_no: sub.sub_no,
                        channel_id: sub.channel_id,
                        channel_type: sub.channel_type,
                        action: sub.action,
                        reason_code: ReasonCode::NotSupportChannelType,
                    };
                    let _ = conn.send(&Packet::Suback(ack));
                }
                // The JS SDK copies NoPersist from the RECV: nothing was queued for those.
                Packet::Recvack(ack) if !ack.flags.no_persist => {
                    // A master device that took a command consumes it for the user.
                    if let Acked::Recv(Some(position)) = self.0.retry.ack(conn.id, ack.message_id)
                        && conn.level == DeviceLevel::Master
                    {
                        let (core, uid) = (self.0.clone(), conn.uid.clone());
                        tokio::task::spawn_blocking(move || {
                            if let Err(e) = core.advance_command_cursor(&uid, &position.channel, position.seq, false) {
                                storage(e);
                            }
                        });
                    }
                }
                _ => {}
            }
        })
    }

    fn on_offline(&self, conn: &Arc<Conn>) {
        self.0.retry.forget(conn.id);
        self.0.report_presence(conn, false);
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

    fn old_message(id: i64, age: std::time::Duration) -> NewMessage {
        NewMessage {
            message_id: id,
            timestamp_ms: now_ms() - age.as_millis() as i64,
            from_uid: "a".into(),
            client_msg_no: format!("c{id}"),
            header: 0,
            setting: 0,
            expire: 0,
            topic: None,
            payload: Bytes::from_static(b"m"),
        }
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
    }
}
