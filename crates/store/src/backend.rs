//! The key-value contract and its two backends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::{Result, StoreError};

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
}

impl Table {
    /// Every table, for backends that open them up front.
    pub const ALL: [Table; 17] = [
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
        }
    }
}

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
    /// Remove if present.
    Delete(Table, Vec<u8>),
}

/// What a storage engine must provide. Implementations are blocking; async callers run
/// them off the runtime's worker threads.
pub trait KvBackend: Send + Sync + std::fmt::Debug + 'static {
    /// The value stored under `key`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
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
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(engine)?;
        let db = Database::builder(dir).open().map_err(engine)?;
        let keyspaces = Table::ALL
            .iter()
            .map(|t| db.keyspace(t.name(), KeyspaceCreateOptions::default).map_err(engine))
            .collect::<Result<_>>()?;
        Ok(Self { db, keyspaces })
    }

    fn keyspace(&self, table: Table) -> &Keyspace {
        &self.keyspaces[Table::ALL.iter().position(|t| *t == table).expect("invariant: every table is opened")]
    }
}

impl KvBackend for FjallBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.keyspace(table).get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.keyspace(table)
            .prefix(prefix)
            .take(limit)
            .map(|guard| guard.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine))
            .collect()
    }

    fn scan_range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
        order: Order,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let iter = self.keyspace(table).range(start..end);
        let pair = |guard: fjall::Guard| guard.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine);
        match order {
            Order::Ascending => iter.take(limit).map(pair).collect(),
            Order::Descending => iter.rev().take(limit).map(pair).collect(),
        }
    }

    fn sync(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll).map_err(engine)
    }

    fn write(&self, writes: Vec<Write>, durable: bool) -> Result<()> {
        let mut batch = self.db.batch();
        for w in writes {
            match w {
                Write::Put(t, k, v) => batch.insert(self.keyspace(t), k, v),
                Write::Delete(t, k) => batch.remove(self.keyspace(t), k),
            }
        }
        batch.commit().map_err(engine)?;
        if durable {
            self.db.persist(PersistMode::SyncAll).map_err(engine)?;
        }
        Ok(())
    }
}

/// Every table in one ordered map, keyed by (table, key).
type MemoryTables = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// Ordered maps in memory, for tests. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    tables: Mutex<MemoryTables>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvBackend for MemoryBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(tables.get(&(table, key.to_vec())).cloned())
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
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
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        for w in writes {
            match w {
                Write::Put(t, k, v) => tables.insert((t, k), v),
                Write::Delete(t, k) => tables.remove(&(t, k)),
            };
        }
        Ok(())
    }
}
