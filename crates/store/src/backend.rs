//! The key-value contract and its two backends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::health::Health;
use crate::{Result, StoreError};

/// Longest key any backend takes (the embedded engine's limit, kept by every backend so
/// that tests on memory refuse what production refuses).
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Each keyspace's write buffer (memtable) before it is flushed to a table file. The
/// engine's default (64 MiB) lets the four tables a message writes hold a quarter of a
/// gigabyte under a burst of sends; this keeps memory under overload within budget.
const MEMTABLE_BYTES: u64 = 32 * 1024 * 1024;

/// Longest value any backend takes.
pub const MAX_VALUE_LEN: usize = u32::MAX as usize;

/// Refuses a key the engines cannot hold, as an error rather than a panic inside them.
fn check_key(key: &[u8], max_key_len: usize) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::TooLong { what: "key (empty keys are not stored either)" });
    }
    if key.len() > max_key_len {
        return Err(StoreError::TooLong { what: "storage key" });
    }
    Ok(())
}

/// Whether `key` could have been stored: a read of one that could not finds nothing
/// (and never reaches the engine, which may panic on it).
fn storable(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN
}

/// A scan bound or prefix may be empty (the whole table) but not longer than a key
/// (the embedded engine panics on one byte more).
pub fn check_bound(bound: &[u8]) -> Result<()> {
    if bound.len() > MAX_KEY_LEN {
        return Err(StoreError::TooLong { what: "storage key" });
    }
    Ok(())
}

/// Checks a whole batch against a backend's longest key before any of it is applied.
pub fn check_writes(writes: &[Write], max_key_len: usize) -> Result<()> {
    for w in writes {
        match w {
            Write::Put(_, key, value) | Write::Insert(_, key, value) | Write::Expect(_, key, value) => {
                check_key(key, max_key_len)?;
                if value.len() > MAX_VALUE_LEN {
                    return Err(StoreError::TooLong { what: "stored value" });
                }
            }
            Write::Delete(_, key) => check_key(key, max_key_len)?,
        }
    }
    Ok(())
}

/// The tables Hongyan keeps. Names follow `<key>_<value>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// (uid, device_flag) → device token and level.
    UidDevice,
    /// (channel_type, channel_id) → channel attributes.
    ChannelInfo,
    /// (channel, seq) → message: the per-channel message log.
    ChanSeqMessage,
    /// (channel, from_uid, client_msg_no) → (message_id, seq): the idempotency index.
    ChanClientMsgNo,
    /// (channel, uid) → (): subscribers (members).
    ChanSubscriber,
    /// (channel, uid) → (): blacklist.
    ChanBlacklist,
    /// (channel, uid) → (): whitelist.
    ChanWhitelist,
    /// (uid, channel) → read cursor and deletion mark: conversations.
    UidChanConversation,
    /// uid → (): system accounts.
    UidSystem,
    /// uid → profile (name, avatar, gender, mobile, birth, email, ex).
    UidProfile,
    /// (channel, uid) → role, for members who are not ordinary (owner, admin).
    ChanUidRole,
    /// thread id → the thread's group, name, owner, parent message and creation time.
    ThreadInfo,
    /// (group id, thread id) → (): the threads of a group.
    GroupThread,
    /// message_id → (channel, seq): where a message is.
    MsgIdChanSeq,
    /// group id → group profile (name, notification, introduction, avatar, ex, creator).
    GroupProfile,
    /// journal id → log key: stored messages the webhooks have not taken in yet.
    Journal,
    /// (lane, event id) → event: webhook events waiting to be delivered.
    HookQueue,
    /// name → value: this node's own bookkeeping (e.g. how far message ids are reserved).
    Meta,
    /// channel → the highest seq it ever had, once messages up to it were deleted: the
    /// seq counter outlives the messages.
    ChanSeqFloor,
    /// channel → its owner's claim (node, epoch, boot): in a cluster, which node alone
    /// may append to the channel's log (`docs/cluster.md`).
    ChanOwner,
    /// (channel, seq) → the message's extra: revoked, edited, with its extra version.
    ChanSeqExtra,
    /// (channel, extra version) → seq: which message each version changed.
    ChanVersionSeq,
    /// (channel, seq, uid) → when: who marked which message read.
    ChanSeqUidRead,
    /// (channel, seq, uid, kind) → when: who reacted to which message, how.
    ChanSeqUidReaction,
    /// channel → its newest extra version: the counter every extra change moves.
    ChanExtraVersion,
}

impl Table {
    /// Every table, for backends that open them up front.
    pub const ALL: [Table; 25] = [
        Table::UidDevice,
        Table::ChannelInfo,
        Table::ChanSeqMessage,
        Table::ChanClientMsgNo,
        Table::ChanSubscriber,
        Table::ChanBlacklist,
        Table::ChanWhitelist,
        Table::UidChanConversation,
        Table::UidSystem,
        Table::UidProfile,
        Table::ChanUidRole,
        Table::ThreadInfo,
        Table::GroupThread,
        Table::MsgIdChanSeq,
        Table::GroupProfile,
        Table::Journal,
        Table::HookQueue,
        Table::Meta,
        Table::ChanSeqFloor,
        Table::ChanOwner,
        Table::ChanSeqExtra,
        Table::ChanVersionSeq,
        Table::ChanSeqUidRead,
        Table::ChanSeqUidReaction,
        Table::ChanExtraVersion,
    ];

    /// The table's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Self::UidDevice => "uiddev_device",
            Self::ChannelInfo => "chan_info",
            Self::ChanSeqMessage => "chanseq_msg",
            Self::ChanClientMsgNo => "chancmn_msg",
            Self::ChanSubscriber => "chanuid_subscriber",
            Self::ChanBlacklist => "chanuid_blacklist",
            Self::ChanWhitelist => "chanuid_whitelist",
            Self::UidChanConversation => "uidchan_conv",
            Self::UidSystem => "uid_system",
            Self::UidProfile => "uid_profile",
            Self::ChanUidRole => "chanuid_role",
            Self::ThreadInfo => "thread_info",
            Self::GroupThread => "groupthread_none",
            Self::MsgIdChanSeq => "msgid_chanseq",
            Self::GroupProfile => "group_profile",
            Self::Journal => "seq_journal",
            Self::HookQueue => "laneid_hook",
            Self::Meta => "name_meta",
            Self::ChanSeqFloor => "chan_seqfloor",
            Self::ChanOwner => "chan_owner",
            Self::ChanSeqExtra => "chanseq_extra",
            Self::ChanVersionSeq => "chanversion_seq",
            Self::ChanSeqUidRead => "chansequid_read",
            Self::ChanSeqUidReaction => "chansequid_reaction",
            Self::ChanExtraVersion => "chan_extraversion",
        }
    }
}

/// A stored entry: key and value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Which end of a range scan comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Smallest key first.
    Ascending,
    /// Largest key first.
    Descending,
}

/// One change in an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Insert a key that must not exist yet: if it does, nothing of the batch is applied
    /// and the write fails with [`StoreError::Conflict`] (on a backend that
    /// [enforces](KvBackend::enforces_inserts) it). The message log writes its rows so:
    /// two writers can never both store the same seq.
    Insert(Table, Vec<u8>, Vec<u8>),
    /// Remove if present.
    Delete(Table, Vec<u8>),
    /// Apply nothing of the batch unless the stored row holds exactly this value (as
    /// stored before the batch; a missing row never matches): otherwise the write
    /// fails with [`StoreError::Conflict`]. A fence: the row cannot change between the
    /// check and the commit. A cluster's channel owner writes its claim so with every
    /// batch, and a batch of an owner that lost its claim is refused.
    Expect(Table, Vec<u8>, Vec<u8>),
}

/// What a storage engine must provide. Implementations are blocking; async callers run
/// them off the runtime's worker threads.
///
/// Every call refuses keys over [`MAX_KEY_LEN`] (and empty keys in writes) with
/// [`StoreError::TooLong`] before the engine sees them, never panics, and records an
/// engine failure in [`KvBackend::health`]: storage is fail-stop.
pub trait KvBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Whether this store can still be trusted.
    fn health(&self) -> &Arc<Health>;
    /// The longest key this backend takes; longer ones are refused with
    /// [`StoreError::TooLong`]. Callers that build keys check against it first.
    fn max_key_len(&self) -> usize {
        MAX_KEY_LEN
    }
    /// Whether [`Write::Insert`] fails on an existing key. A store that several
    /// processes write (a database) must enforce it; an embedded store owned by one
    /// process, whose message log has one writer that never inserts a key twice, may
    /// treat it as a put and save the lookups.
    fn enforces_inserts(&self) -> bool {
        true
    }
    /// The value stored under `key`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The values stored under `keys`, in their order: one round trip on a backend
    /// that has round trips (the message log looks up a whole batch's resends at once).
    fn get_many(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(table, k)).collect()
    }
    /// For each `(start, end)` range, up to `limit` of its entries in `order`: one round
    /// trip on a backend that has round trips (a user's conversations read the unread
    /// messages of all of them at once).
    fn scan_ranges(
        &self,
        table: Table,
        ranges: &[(Vec<u8>, Vec<u8>)],
        limit: usize,
        order: Order,
    ) -> Result<Vec<Vec<Entry>>> {
        ranges.iter().map(|(start, end)| self.scan_range(table, start, end, limit, order)).collect()
    }
    /// For each `(start, end)` range, its last entry (`start <= key < end`), if any (the
    /// message log finds the last seq of every new channel in a batch at once).
    fn last_in_ranges(&self, table: Table, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Option<Entry>>> {
        Ok(self.scan_ranges(table, ranges, 1, Order::Descending)?.into_iter().map(|r| r.into_iter().next()).collect())
    }
    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Up to `limit` entries with `start <= key < end`, in `order`.
    fn scan_range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies all writes or none. Applied writes survive a crash of this process; with
    /// `durable` they also survive a power loss before this returns.
    fn write(&self, writes: Vec<Write>, durable: bool) -> Result<()>;
    /// Makes every applied write survive a power loss.
    fn sync(&self) -> Result<()>;
}

/// The embedded default: one fjall database, one keyspace per [`Table`].
#[derive(Clone)]
pub struct FjallBackend {
    db: Database,
    keyspaces: Vec<Keyspace>,
    health: Arc<Health>,
    /// Held from checking a batch's expectations to its commit.
    fence: Arc<Mutex<()>>,
}

impl std::fmt::Debug for FjallBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallBackend").finish_non_exhaustive()
    }
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl FjallBackend {
    /// Opens (or creates) the database in `dir`. A directory it creates is readable by
    /// its owner only (0700): it holds every message and token digest.
    pub fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(engine)?;
        let db = Database::builder(dir).open().map_err(engine)?;
        let keyspaces = Table::ALL
            .iter()
            .map(|t| {
                db.keyspace(t.name(), || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES))
                    .map_err(engine)
            })
            .collect::<Result<_>>()?;
        Ok(Self { db, keyspaces, health: Arc::new(Health::new()), fence: Arc::new(Mutex::new(())) })
    }

    fn keyspace(&self, table: Table) -> &Keyspace {
        &self.keyspaces[Table::ALL.iter().position(|t| *t == table).expect("invariant: every table is opened")]
    }
}

impl KvBackend for FjallBackend {
    fn health(&self) -> &Arc<Health> {
        &self.health
    }

    fn enforces_inserts(&self) -> bool {
        false
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if !storable(key) {
            return Ok(None);
        }
        self.health.guard("read", || Ok(self.keyspace(table).get(key).map_err(engine)?.map(|v| v.to_vec())))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_bound(prefix)?;
        self.health.guard("scan", || {
            self.keyspace(table)
                .prefix(prefix)
                .take(limit)
                .map(|guard| guard.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine))
                .collect()
        })
    }

    fn scan_range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_bound(start)?;
        check_bound(end)?;
        if start >= end {
            return Ok(Vec::new());
        }
        self.health.guard("scan", || {
            let iter = self.keyspace(table).range(start..end);
            let pair = |guard: fjall::Guard| guard.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine);
            match order {
                Order::Ascending => iter.take(limit).map(pair).collect(),
                Order::Descending => iter.rev().take(limit).map(pair).collect(),
            }
        })
    }

    fn sync(&self) -> Result<()> {
        self.health.guard("fsync", || self.db.persist(PersistMode::SyncAll).map_err(engine))
    }

    fn write(&self, writes: Vec<Write>, durable: bool) -> Result<()> {
        check_writes(&writes, MAX_KEY_LEN)?;
        self.health.guard("write", || {
            // Only batches with expectations take the lock, and only until their commit:
            // every write of a fenced row carries its expectation.
            let fenced = writes.iter().any(|w| matches!(w, Write::Expect(..)));
            let _fence = fenced.then(|| self.fence.lock().unwrap_or_else(PoisonError::into_inner));
            let mut batch = self.db.batch();
            for w in writes {
                match w {
                    // One process, one log writer: see `enforces_inserts`.
                    Write::Put(t, k, v) | Write::Insert(t, k, v) => batch.insert(self.keyspace(t), k, v),
                    Write::Delete(t, k) => batch.remove(self.keyspace(t), k),
                    Write::Expect(t, k, v) => {
                        let stored = self.keyspace(t).get(&k).map_err(engine)?;
                        if stored.as_deref() != Some(v.as_slice()) {
                            return Err(StoreError::Conflict(format!("a row of {} changed", t.name())));
                        }
                    }
                }
            }
            batch.commit().map_err(engine)?;
            drop(_fence);
            if durable {
                self.db.persist(PersistMode::SyncAll).map_err(engine)?;
            }
            Ok(())
        })
    }
}

/// Every table in one ordered map, keyed by (table, key).
type MemoryTables = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// Ordered maps in memory, for tests. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    tables: Mutex<MemoryTables>,
    health: Arc<Health>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvBackend for MemoryBackend {
    fn health(&self) -> &Arc<Health> {
        &self.health
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if !storable(key) {
            return Ok(None);
        }
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(tables.get(&(table, key.to_vec())).cloned())
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_bound(prefix)?;
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(tables
            .range((table, prefix.to_vec())..)
            .take_while(|((t, k), _)| *t == table && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_bound(start)?;
        check_bound(end)?;
        if start >= end {
            return Ok(Vec::new());
        }
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let range = tables.range((table, start.to_vec())..(table, end.to_vec()));
        let pair = |((_, k), v): (&(Table, Vec<u8>), &Vec<u8>)| (k.clone(), v.clone());
        Ok(match order {
            Order::Ascending => range.take(limit).map(pair).collect(),
            Order::Descending => range.rev().take(limit).map(pair).collect(),
        })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn write(&self, writes: Vec<Write>, _durable: bool) -> Result<()> {
        check_writes(&writes, MAX_KEY_LEN)?;
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        // Inserts are checked against the batch's own earlier writes as well.
        let mut written: BTreeMap<(Table, &[u8]), bool> = BTreeMap::new();
        for w in &writes {
            match w {
                Write::Insert(t, k, _) => {
                    let exists = written
                        .get(&(*t, k.as_slice()))
                        .copied()
                        .unwrap_or_else(|| tables.contains_key(&(*t, k.clone())));
                    if exists {
                        return Err(StoreError::Conflict(format!("a row of {} exists already", t.name())));
                    }
                    written.insert((*t, k), true);
                }
                Write::Put(t, k, _) => {
                    written.insert((*t, k), true);
                }
                Write::Delete(t, k) => {
                    written.insert((*t, k), false);
                }
                Write::Expect(t, k, v) => {
                    if tables.get(&(*t, k.clone())) != Some(v) {
                        return Err(StoreError::Conflict(format!("a row of {} changed", t.name())));
                    }
                }
            }
        }
        for w in writes {
            match w {
                Write::Put(t, k, v) | Write::Insert(t, k, v) => tables.insert((t, k), v),
                Write::Delete(t, k) => tables.remove(&(t, k)),
                Write::Expect(..) => None,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_keeps_the_contract() {
        crate::testing::kv_contract(&MemoryBackend::new());
        crate::testing::expectations_are_atomic(Arc::new(MemoryBackend::new()));
        let store = crate::Store::new(Arc::new(MemoryBackend::new()));
        crate::testing::extras_contract(&store, &store.clone());
    }

    #[test]
    fn a_new_data_directory_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/data");
        drop(FjallBackend::open(&data).unwrap());
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn fjall_keeps_the_contract_and_refuses_what_it_cannot_hold_instead_of_panicking() {
        let dir = tempfile::tempdir().unwrap();
        crate::testing::kv_contract(&FjallBackend::open(dir.path()).unwrap());
        let other = tempfile::tempdir().unwrap();
        crate::testing::expectations_are_atomic(Arc::new(FjallBackend::open(other.path()).unwrap()));
        let third = tempfile::tempdir().unwrap();
        let store = crate::Store::new(Arc::new(FjallBackend::open(third.path()).unwrap()));
        crate::testing::extras_contract(&store, &store.clone());
    }
}
