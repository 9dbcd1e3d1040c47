//! What one user did to one stored message: read it (`chansequid_read`), reacted to it
//! (`chansequid_reaction`). A mark is written in the batch of the extra change that
//! counts it (`Store::change_extra`): an insert to add, an expectation and a delete to
//! remove, so a mark raced by two nodes is counted once.

use crate::backend::{KvBackend, Order, Table, Write};
use crate::codec::{ValueReader, push_str16};
use crate::extras::seq_key;
use crate::log::ChannelKey;
use crate::tables::Store;
use crate::{Result, StoreError};

/// One user's reaction to a message, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    /// Who.
    pub uid: String,
    /// The kind: an emoji or a short name.
    pub kind: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

fn corrupt(table: Table) -> StoreError {
    StoreError::Corrupt { table: table.name(), what: "mark" }
}

fn at_of(table: Table, value: &[u8]) -> Result<i64> {
    Ok(i64::from_be_bytes(value.try_into().map_err(|_| corrupt(table))?))
}

/// `(channel, seq, uid)`: the uid is the key's last part.
fn read_key(channel: &ChannelKey, seq: u64, uid: &str) -> Vec<u8> {
    let mut key = seq_key(channel, seq);
    key.extend_from_slice(uid.as_bytes());
    key
}

/// `(channel, seq, uid, kind)`: the uid length-prefixed, the kind last.
fn reaction_key(channel: &ChannelKey, seq: u64, uid: &str, kind: &str) -> Vec<u8> {
    let mut key = seq_key(channel, seq);
    push_str16(&mut key, uid);
    key.extend_from_slice(kind.as_bytes());
    key
}

impl Store {
    /// The write that marks the message at `seq` read by `uid` at `at_ms`, for the batch
    /// of the change that counts it.
    pub fn read_mark_write(&self, channel: &ChannelKey, seq: u64, uid: &str, at_ms: i64) -> Write {
        Write::Insert(Table::ChanSeqUidRead, read_key(channel, seq, uid), at_ms.to_be_bytes().to_vec())
    }

    /// When `uid` marked each message at `seqs` read (ms since the epoch), in their order.
    pub fn read_marks(&self, channel: &ChannelKey, seqs: &[u64], uid: &str) -> Result<Vec<Option<i64>>> {
        let keys: Vec<Vec<u8>> = seqs.iter().map(|seq| read_key(channel, *seq, uid)).collect();
        let values = self.kv().get_many(Table::ChanSeqUidRead, &keys)?;
        values.into_iter().map(|v| v.as_deref().map(|v| at_of(Table::ChanSeqUidRead, v)).transpose()).collect()
    }

    /// Up to `limit` users who marked the message at `seq` read, after `after_uid` in uid
    /// order, with when (ms since the epoch).
    pub fn readers(&self, channel: &ChannelKey, seq: u64, after_uid: &str, limit: usize) -> Result<Vec<(String, i64)>> {
        let mut start = read_key(channel, seq, after_uid);
        if !after_uid.is_empty() {
            start.push(0);
        }
        let prefix_len = seq_key(channel, seq).len();
        let end = seq_key(channel, seq.saturating_add(1));
        let rows = self.kv().scan_range(Table::ChanSeqUidRead, &start, &end, limit, Order::Ascending)?;
        rows.into_iter()
            .map(|(key, value)| {
                let bad = || corrupt(Table::ChanSeqUidRead);
                let uid = key.get(prefix_len..).and_then(|u| std::str::from_utf8(u).ok()).ok_or_else(bad)?;
                Ok((uid.to_owned(), at_of(Table::ChanSeqUidRead, &value)?))
            })
            .collect()
    }

    /// When `uid` gave the message at `seq` the reaction `kind`, if they did.
    pub fn reaction(&self, channel: &ChannelKey, seq: u64, uid: &str, kind: &str) -> Result<Option<i64>> {
        let value = self.kv().get(Table::ChanSeqUidReaction, &reaction_key(channel, seq, uid, kind))?;
        value.as_deref().map(|v| at_of(Table::ChanSeqUidReaction, v)).transpose()
    }

    /// The writes that add (`Some(at_ms)`) or remove (`None`, given the stored time
    /// `stored_at_ms`) `uid`'s reaction `kind` to the message at `seq`, for the batch of
    /// the change that counts it.
    pub fn reaction_writes(
        &self,
        channel: &ChannelKey,
        seq: u64,
        uid: &str,
        kind: &str,
        change: ReactionWrite,
    ) -> Vec<Write> {
        let key = reaction_key(channel, seq, uid, kind);
        match change {
            ReactionWrite::Add { at_ms } => {
                vec![Write::Insert(Table::ChanSeqUidReaction, key, at_ms.to_be_bytes().to_vec())]
            }
            ReactionWrite::Remove { stored_at_ms } => vec![
                Write::Expect(Table::ChanSeqUidReaction, key.clone(), stored_at_ms.to_be_bytes().to_vec()),
                Write::Delete(Table::ChanSeqUidReaction, key),
            ],
        }
    }

    /// The reaction kinds `uid` gave each message at `seqs`, in their order.
    pub fn reactions_by(&self, channel: &ChannelKey, seqs: &[u64], uid: &str) -> Result<Vec<Vec<String>>> {
        let ranges: Vec<(Vec<u8>, Vec<u8>)> = seqs
            .iter()
            .map(|seq| {
                let start = reaction_key(channel, *seq, uid, "");
                let mut end = start.clone();
                end.push(0xff);
                (start, end)
            })
            .collect();
        let found = self.kv().scan_ranges(Table::ChanSeqUidReaction, &ranges, usize::MAX, Order::Ascending)?;
        found
            .into_iter()
            .zip(&ranges)
            .map(|(rows, (start, _))| {
                rows.into_iter()
                    .map(|(key, _)| {
                        let kind = key.get(start.len()..).and_then(|k| std::str::from_utf8(k).ok());
                        kind.map(str::to_owned).ok_or_else(|| corrupt(Table::ChanSeqUidReaction))
                    })
                    .collect()
            })
            .collect()
    }

    /// Up to `limit` reactions to the message at `seq`, grouped by user (shorter uids
    /// first, then byte order) and by kind in byte order, after the reaction `after`
    /// (paging).
    pub fn reactions_to(
        &self,
        channel: &ChannelKey,
        seq: u64,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<Reaction>> {
        let prefix_len = seq_key(channel, seq).len();
        let start = match after {
            Some((uid, kind)) => {
                let mut key = reaction_key(channel, seq, uid, kind);
                key.push(0);
                key
            }
            None => seq_key(channel, seq),
        };
        let end = seq_key(channel, seq.saturating_add(1));
        let rows = self.kv().scan_range(Table::ChanSeqUidReaction, &start, &end, limit, Order::Ascending)?;
        rows.into_iter()
            .map(|(key, value)| {
                let bad = || corrupt(Table::ChanSeqUidReaction);
                let mut r = ValueReader { rest: key.get(prefix_len..).ok_or_else(bad)? };
                let uid = r.str16().ok_or_else(bad)?.to_owned();
                let kind = r.rest_str().ok_or_else(bad)?.to_owned();
                Ok(Reaction { uid, kind, at_ms: at_of(Table::ChanSeqUidReaction, &value)? })
            })
            .collect()
    }
}

/// What [`Store::reaction_writes`] writes.
#[derive(Clone, Copy, Debug)]
pub enum ReactionWrite {
    /// Add the reaction, given at this time.
    Add {
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// Remove the reaction, stored with this time (the batch expects it unchanged).
    Remove {
        /// The stored time.
        stored_at_ms: i64,
    },
}

/// Forgets the marks (reads, reactions) on `channel`'s messages from `from_seq` through
/// `through_seq`, in batches of their own (there may be one per member per message):
/// before the messages go, so a failure between leaves messages without their marks,
/// never marks without messages.
pub(crate) fn remove_marks(kv: &dyn KvBackend, channel: &ChannelKey, from_seq: u64, through_seq: u64) -> Result<()> {
    const BATCH: usize = 4_096;
    let (start, end) = (seq_key(channel, from_seq), seq_key(channel, through_seq.saturating_add(1)));
    for table in [Table::ChanSeqUidRead, Table::ChanSeqUidReaction] {
        loop {
            let rows = kv.scan_range(table, &start, &end, BATCH, Order::Ascending)?;
            let last = rows.len() < BATCH;
            if !rows.is_empty() {
                kv.write(rows.into_iter().map(|(key, _)| Write::Delete(table, key)).collect(), true)?;
            }
            if last {
                break;
            }
        }
    }
    Ok(())
}
