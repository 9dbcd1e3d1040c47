//! Storage for Hongyan.
//!
//! Two layers. [`KvBackend`] is the small contract a storage engine meets: named
//! tables of ordered byte keys, point reads, prefix scans and atomic write batches that
//! are durable when the batch says so. [`Store`] puts typed tables on top (devices and
//! tokens, channel attributes), so every backend shares one key and value encoding.
//!
//! [`MessageLog`] is the per-channel message log: dense seqs, deduplication of resends,
//! and group commit (one writer thread, one fsync per batch, acks after durability).
//!
//! Backends: [`FjallBackend`] (embedded, the default) and [`MemoryBackend`] (tests)
//! here; PostgreSQL in the `hongyan-store-postgres` crate. [`testing`] holds the
//! conformance checks every backend must pass.
//!
//! Storage errors are fail-stop: a caller that gets [`StoreError`] from a write must not
//! acknowledge the operation, and the server stops rather than run on a store it cannot
//! trust.

#![warn(missing_docs)]

mod backend;
mod codec;
mod directory;
mod extras;
mod health;
mod log;
mod marks;
mod tables;
#[doc(hidden)]
pub mod testing;

pub use backend::{
    Entry, FjallBackend, KvBackend, MAX_KEY_LEN, MAX_VALUE_LEN, MemoryBackend, Order, Table, Write, check_bound,
    check_writes,
};
pub use directory::{GroupProfile, Role, Thread, UserProfile};
pub use extras::{ExtraChange, MessageExtra};
pub use health::{Failure, Health};
pub use log::{
    Appended, ChannelKey, Durability, Fence, JournalSink, Journaled, MAX_QUEUED, MessageLog, NewMessage, OnCommit,
    PendingAppend, Pruned, StoredMessage,
};
pub use marks::{Reaction, ReactionWrite};
pub use tables::{ChannelInfo, Conversation, Device, MemberList, Store};

/// A storage failure. The operation that got it did not happen (or not durably).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O, corruption, poisoned state, a commit whose outcome is
    /// unknown). Fail-stop: the node stops trusting its store.
    #[error("storage engine failed: {0}")]
    Engine(String),
    /// The engine could not be reached (a database server that is down or unreachable);
    /// nothing of the operation was applied. Not a failure of the store: the operation
    /// may be retried, and the node recovers when the engine is back.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A value is too long to be stored (strings are stored with 2-byte lengths).
    #[error("{what} is longer than 65,535 bytes")]
    TooLong {
        /// What was too long.
        what: &'static str,
    },
    /// A stored value does not decode: the data directory is damaged or from another version.
    #[error("stored value in table {table} is corrupt: {what}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What did not decode.
        what: &'static str,
    },
    /// Too much is queued already; nothing was done. Try again later (a refusal, not a
    /// storage failure).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// A row that had to be new exists already ([`Write::Insert`]): another writer
    /// stored it. Nothing of the batch was applied; not a failure of the store.
    #[error("conflict: {0}")]
    Conflict(String),
    /// An external source of records (the datasource) did not answer usefully.
    #[error("datasource failed: {0}")]
    Datasource(String),
}

/// Result of storage calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
