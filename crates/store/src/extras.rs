//! Message extras: what happened to a stored message after it was stored (revoked,
//! edited, read by whom), kept beside the log, which is never rewritten.
//!
//! Each change gives the message's extra the channel's next *extra version*, so a
//! client that has seen versions up to `v` asks for what changed after `v` and gets
//! every message whose extra changed since, once, in its latest state. Versions
//! commit in order: the channel's counter (`chan_extraversion`) is expected unchanged
//! by every change that moves it (`Write::Expect`, or `Write::Insert` for the first),
//! so two writers that read the same value cannot both commit (the database refuses
//! the second; in one process a lock serialises them). The counter is kept apart from
//! the version index, whose rows are deleted as messages change again, and outlives
//! the messages.

use crate::backend::{KvBackend, Order, Table, Write};
use crate::codec::{ValueReader, push_str16};
use crate::log::ChannelKey;
use crate::tables::Store;
use crate::{Result, StoreError};

const FORMAT_V1: u8 = 1;
/// How long a change keeps trying after other writers took its version (each lost
/// race means another change committed, so the channel moves on meanwhile).
const RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest pause between two tries.
const MAX_BACKOFF_US: u64 = 50_000;

/// The pause before try `attempt` (1 for the first retry): a random share of a
/// window that doubles from 0.5 ms up to [`MAX_BACKOFF_US`], so writers that keep
/// colliding spread out instead of retrying in step.
fn backoff(attempt: u32) -> std::time::Duration {
    let window = (500u64 << attempt.min(10)).min(MAX_BACKOFF_US);
    std::time::Duration::from_micros(fastrand::u64(0..=window))
}

/// What happened to one stored message after it was stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageExtra {
    /// The message.
    pub message_id: i64,
    /// Its seq in its channel.
    pub seq: u64,
    /// The channel's extra version of the latest change (1 for the channel's first).
    pub version: u64,
    /// Revoked: clients show a notice instead of the content.
    pub revoked: bool,
    /// Who revoked it (empty: the app server).
    pub revoker: String,
    /// When it was last edited (ms since the epoch), 0 if never.
    pub edited_at_ms: i64,
    /// How many users other than the sender marked it read.
    pub readed_count: u64,
    /// Reactions: each kind (an emoji or a short name) with how many users gave it, in
    /// byte order of the kind; kinds nobody gives any more are left out.
    pub reactions: Vec<(String, u64)>,
    /// The content that replaces the stored payload, if edited.
    pub edited_payload: Option<Vec<u8>>,
}

/// What a change of an extra does ([`Store::change_extra`]).
#[derive(Debug)]
pub enum ExtraChange {
    /// Nothing: the extra stays as it is and nothing is written.
    Unchanged,
    /// The extra changed; these writes go in the same batch (e.g. a user's read mark).
    Changed(Vec<Write>),
}

/// Serialises this process's changes of one channel's extras (by a stripe of its key):
/// the embedded engine does not refuse a second insert of a version, and a database
/// that does is spared the conflicts.
fn serial(channel: &ChannelKey) -> std::sync::MutexGuard<'static, ()> {
    static STRIPES: [std::sync::Mutex<()>; 64] = [const { std::sync::Mutex::new(()) }; 64];
    use std::hash::BuildHasher as _;
    let hash = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(channel);
    let stripe = &STRIPES[usize::try_from(hash % 64).unwrap_or_default()];
    stripe.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn corrupt() -> StoreError {
    StoreError::Corrupt { table: Table::ChanSeqExtra.name(), what: "message extra" }
}

fn encode(e: &MessageExtra) -> Vec<u8> {
    let edited = e.edited_payload.as_deref();
    let mut v = Vec::with_capacity(40 + e.revoker.len() + edited.map_or(0, <[u8]>::len));
    v.push(FORMAT_V1);
    v.extend_from_slice(&e.message_id.to_be_bytes());
    v.extend_from_slice(&e.version.to_be_bytes());
    v.push(u8::from(e.revoked));
    push_str16(&mut v, &e.revoker);
    v.extend_from_slice(&e.edited_at_ms.to_be_bytes());
    v.extend_from_slice(&e.readed_count.to_be_bytes());
    // Callers cap the kinds (hongyan_core::extras::MAX_REACTION_KINDS) far below this.
    let kinds = u16::try_from(e.reactions.len()).expect("invariant: reaction kinds are capped");
    v.extend_from_slice(&kinds.to_be_bytes());
    for (kind, count) in &e.reactions {
        push_str16(&mut v, kind);
        v.extend_from_slice(&count.to_be_bytes());
    }
    if let Some(payload) = edited {
        v.push(1);
        v.extend_from_slice(payload);
    } else {
        v.push(0);
    }
    v
}

fn decode(seq: u64, value: &[u8]) -> Result<MessageExtra> {
    let mut r = ValueReader { rest: value };
    if r.u8() != Some(FORMAT_V1) {
        return Err(corrupt());
    }
    let message_id = r.i64().ok_or_else(corrupt)?;
    let version = r.u64().ok_or_else(corrupt)?;
    let revoked = match r.u8() {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(corrupt()),
    };
    let revoker = r.str16().ok_or_else(corrupt)?.to_owned();
    let edited_at_ms = r.i64().ok_or_else(corrupt)?;
    let readed_count = r.u64().ok_or_else(corrupt)?;
    let kinds = r.u16().ok_or_else(corrupt)?;
    let mut reactions = Vec::with_capacity(usize::from(kinds).min(r.rest.len() / 10));
    for _ in 0..kinds {
        let kind = r.str16().ok_or_else(corrupt)?.to_owned();
        reactions.push((kind, r.u64().ok_or_else(corrupt)?));
    }
    let edited_payload = match r.u8() {
        Some(0) => None,
        Some(1) => Some(std::mem::take(&mut r.rest).to_vec()),
        _ => return Err(corrupt()),
    };
    Ok(MessageExtra {
        message_id,
        seq,
        version,
        revoked,
        revoker,
        edited_at_ms,
        readed_count,
        reactions,
        edited_payload,
    })
}

pub(crate) fn seq_key(channel: &ChannelKey, seq: u64) -> Vec<u8> {
    let mut key = channel.encoded();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn version_key(channel: &ChannelKey, version: u64) -> Vec<u8> {
    seq_key(channel, version)
}

fn tail_u64(key: &[u8]) -> Result<u64> {
    let tail = key.len().checked_sub(8).and_then(|at| key.get(at..)).ok_or_else(corrupt)?;
    Ok(u64::from_be_bytes(tail.try_into().map_err(|_| corrupt())?))
}

impl Store {
    /// The extra of the message at `seq`, if anything happened to it.
    pub fn message_extra(&self, channel: &ChannelKey, seq: u64) -> Result<Option<MessageExtra>> {
        self.kv().get(Table::ChanSeqExtra, &seq_key(channel, seq))?.map(|v| decode(seq, &v)).transpose()
    }

    /// The extras of the messages at `seqs`, in their order (`None` where nothing happened).
    pub fn message_extras(&self, channel: &ChannelKey, seqs: &[u64]) -> Result<Vec<Option<MessageExtra>>> {
        let keys: Vec<Vec<u8>> = seqs.iter().map(|s| seq_key(channel, *s)).collect();
        let values = self.kv().get_many(Table::ChanSeqExtra, &keys)?;
        seqs.iter().zip(values).map(|(seq, v)| v.map(|v| decode(*seq, &v)).transpose()).collect()
    }

    /// The extras of the channel's messages with `first <= seq <= last`, by seq: one
    /// range read (a page of history asks for its messages' extras so). At most
    /// 10,000 seqs are looked at, from `first`.
    pub fn extras_between(&self, channel: &ChannelKey, first: u64, last: u64) -> Result<Vec<MessageExtra>> {
        const MOST: u64 = 10_000;
        if first > last {
            return Ok(Vec::new());
        }
        let end = last.min(first.saturating_add(MOST - 1)).saturating_add(1);
        let rows = self.kv().scan_range(
            Table::ChanSeqExtra,
            &seq_key(channel, first),
            &seq_key(channel, end),
            usize::try_from(end - first).unwrap_or(usize::MAX),
            crate::Order::Ascending,
        )?;
        rows.iter().map(|(key, value)| decode(tail_u64(key)?, value)).collect()
    }

    /// The channel's newest extra version, 0 if none.
    pub fn extra_version(&self, channel: &ChannelKey) -> Result<u64> {
        Ok(self.version_head(channel)?.map_or(0, |(v, _)| v))
    }

    /// The channel's newest extra version with its stored bytes, if it has one.
    fn version_head(&self, channel: &ChannelKey) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(bytes) = self.kv().get(Table::ChanExtraVersion, &channel.encoded())? else { return Ok(None) };
        let version = u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| corrupt())?);
        Ok(Some((version, bytes)))
    }

    /// Up to `limit` extras that changed after `version`, oldest change first: each
    /// message once, in its latest state.
    pub fn extras_since(&self, channel: &ChannelKey, version: u64, limit: usize) -> Result<Vec<MessageExtra>> {
        let Some(from) = version.checked_add(1) else { return Ok(Vec::new()) };
        let rows = self.kv().scan_range(
            Table::ChanVersionSeq,
            &version_key(channel, from),
            &version_key(channel, u64::MAX),
            limit,
            Order::Ascending,
        )?;
        let seqs = rows
            .iter()
            .map(|(_, v)| Ok(u64::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt())?)))
            .collect::<Result<Vec<u64>>>()?;
        // Each index row is written with its extra; one missing here was removed (with
        // its message, by retention) between the two reads.
        Ok(self.message_extras(channel, &seqs)?.into_iter().flatten().collect())
    }

    /// Changes the extra of message `message_id` at `seq` under the channel's next
    /// version, durably. `change` gets the current extra (a default one, with the ids
    /// filled in, for the message's first change) and changes it, leaves it
    /// ([`ExtraChange::Unchanged`]: nothing is written, the current extra is returned)
    /// or refuses with an error of its own. It is called again if another writer
    /// changed the channel's extras meanwhile, so it sees the state it changes.
    /// `None`: the message is not stored (or retention removed it meanwhile). A change
    /// commits only while the message's id index row names it (expected in the batch;
    /// retention expects and deletes that row with the message), so retention, which
    /// removes the extras after their messages, never leaves one behind.
    pub fn change_extra<E: From<StoreError>>(
        &self,
        channel: &ChannelKey,
        seq: u64,
        message_id: i64,
        change: impl FnMut(&mut MessageExtra) -> Result<ExtraChange, E>,
    ) -> Result<Option<MessageExtra>, E> {
        let _serial = serial(channel);
        self.change_extra_unserialised(channel, seq, message_id, change)
    }

    /// [`Self::change_extra`] without this process's lock: correct only on a backend
    /// that [enforces inserts](crate::KvBackend::enforces_inserts). For the contract
    /// checks, which race writers against the database itself.
    #[doc(hidden)]
    pub fn change_extra_unserialised<E: From<StoreError>>(
        &self,
        channel: &ChannelKey,
        seq: u64,
        message_id: i64,
        mut change: impl FnMut(&mut MessageExtra) -> Result<ExtraChange, E>,
    ) -> Result<Option<MessageExtra>, E> {
        let key = seq_key(channel, seq);
        // The message's id index row: small, written with the message and deleted with it.
        let (index_key, message_key) = (message_id.to_be_bytes().to_vec(), channel.message_key(seq));
        let deadline = std::time::Instant::now() + RETRY_BUDGET;
        for attempt in 0u32.. {
            if attempt > 0 {
                // Another node (or connection) won: back off, more the more often.
                if std::time::Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(backoff(attempt));
            }
            if self.kv().get(Table::MsgIdChanSeq, &index_key)?.as_ref() != Some(&message_key) {
                return Ok(None);
            }
            let stored = self.kv().get(Table::ChanSeqExtra, &key)?;
            let mut extra = match &stored {
                Some(v) => decode(seq, v)?,
                None => MessageExtra { message_id, seq, ..MessageExtra::default() },
            };
            let ExtraChange::Changed(mut writes) = change(&mut extra)? else { return Ok(Some(extra)) };
            // The message is still stored when this commits (retention deletes it first,
            // expecting it too, and then its extras).
            writes.push(Write::Expect(Table::MsgIdChanSeq, index_key.clone(), message_key.clone()));
            // The channel's version counter: every change expects it unchanged, so two
            // writers that read the same one cannot both commit.
            let head = self.version_head(channel)?;
            extra.version = head.as_ref().map_or(0, |(v, _)| *v) + 1;
            let next = extra.version.to_be_bytes().to_vec();
            match head {
                Some((_, bytes)) => {
                    writes.push(Write::Expect(Table::ChanExtraVersion, channel.encoded(), bytes));
                    writes.push(Write::Put(Table::ChanExtraVersion, channel.encoded(), next));
                }
                None => writes.push(Write::Insert(Table::ChanExtraVersion, channel.encoded(), next)),
            }
            let value = encode(&extra);
            match stored {
                Some(old) => {
                    let previous = decode(seq, &old)?.version;
                    writes.push(Write::Expect(Table::ChanSeqExtra, key.clone(), old));
                    writes.push(Write::Delete(Table::ChanVersionSeq, version_key(channel, previous)));
                    writes.push(Write::Put(Table::ChanSeqExtra, key.clone(), value));
                }
                // The first change: no other writer may create the row meanwhile.
                None => writes.push(Write::Insert(Table::ChanSeqExtra, key.clone(), value)),
            }
            writes.push(Write::Insert(
                Table::ChanVersionSeq,
                version_key(channel, extra.version),
                seq.to_be_bytes().to_vec(),
            ));
            match self.kv().write(writes, true) {
                Ok(()) => return Ok(Some(extra)),
                Err(StoreError::Conflict(_)) => {
                    metrics::counter!("hongyan_storage_extra_conflicts_total").increment(1);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        metrics::counter!("hongyan_storage_extra_busy_total").increment(1);
        Err(StoreError::Busy("message extras: too many concurrent changes to this channel").into())
    }

    /// The writes that forget the extras of a channel's messages up to `seq` (with the
    /// messages themselves, by retention or clearing).
    pub fn extras_removal_writes(&self, channel: &ChannelKey, through_seq: u64) -> Result<Vec<Write>> {
        crate::marks::remove_marks(self.kv(), channel, 0, through_seq)?;
        removal_writes(self.kv(), channel, 0, through_seq)
    }
}

/// The writes that forget the extras of `channel`'s messages from `from_seq` through
/// `through_seq`.
pub(crate) fn removal_writes(
    kv: &dyn KvBackend,
    channel: &ChannelKey,
    from_seq: u64,
    through_seq: u64,
) -> Result<Vec<Write>> {
    let rows = kv.scan_range(
        Table::ChanSeqExtra,
        &seq_key(channel, from_seq),
        &seq_key(channel, through_seq.saturating_add(1)),
        usize::MAX,
        Order::Ascending,
    )?;
    let mut writes = Vec::with_capacity(rows.len() * 2);
    for (key, value) in rows {
        let extra = decode(tail_u64(&key)?, &value)?;
        writes.push(Write::Delete(Table::ChanVersionSeq, version_key(channel, extra.version)));
        writes.push(Write::Delete(Table::ChanSeqExtra, key));
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_varies() {
        let longest = |attempt| (0..200).map(|_| backoff(attempt)).max().unwrap();
        assert!(longest(1) <= std::time::Duration::from_micros(1_000));
        assert!(longest(40) <= std::time::Duration::from_micros(MAX_BACKOFF_US));
        assert!(longest(40) > std::time::Duration::from_micros(MAX_BACKOFF_US / 2), "late tries wait longer");
        let pauses: std::collections::HashSet<_> = (0..20).map(|_| backoff(6)).collect();
        assert!(pauses.len() > 10, "writers that collided do not retry in step");
    }

    #[test]
    fn extras_round_trip_and_refuse_damage() {
        let e = MessageExtra {
            message_id: -7,
            seq: 3,
            version: 9,
            revoked: true,
            revoker: "ann".into(),
            edited_at_ms: 1_700_000_000_000,
            readed_count: 4,
            reactions: vec![("👍".into(), 2), ("ok".into(), 1)],
            edited_payload: Some(b"new".to_vec()),
        };
        let bytes = encode(&e);
        assert_eq!(decode(3, &bytes).unwrap(), e);
        let plain = MessageExtra { message_id: 1, seq: 1, version: 1, ..MessageExtra::default() };
        assert_eq!(decode(1, &encode(&plain)).unwrap(), plain);
        for cut in 0..bytes.len() - 4 {
            // Every cut before the payload is refused (a cut payload is still a payload).
            assert!(decode(3, &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
