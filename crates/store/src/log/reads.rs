//! Reading the log: ranges by seq, the newest messages of many channels, lookups by
//! message id and client_msg_no. Reads go straight to the backend, beside the writer.

use super::{
    ChannelKey, FORMAT_V1, MessageLog, StoredMessage, channel_from_message_key, decode, lookup_client_msg_no,
    seq_from_key,
};
use crate::backend::{KvBackend, Order, Table};
use crate::codec::ValueReader;
use crate::{Result, StoreError};

/// The channel's highest seq: its newest stored message's, or, when messages up to the
/// newest were deleted (retention, channel deletion), the floor kept for it.
pub(super) fn last_seq(kv: &dyn KvBackend, channel: &ChannelKey) -> Result<u64> {
    let start = channel.prefix();
    let mut end = start.clone();
    end.extend_from_slice(&[0xff; 9]);
    let stored = match kv.scan_range(Table::ChanSeqMessage, &start, &end, 1, Order::Descending)?.first() {
        Some((key, _)) => seq_from_key(key)?,
        None => 0,
    };
    Ok(stored.max(seq_floor(kv, channel)?))
}

/// For each channel: its last seq (the larger of its newest stored message's and its
/// floor) and that newest stored message, in two reads for all of them.
pub(super) fn newest_of(kv: &dyn KvBackend, channels: &[&ChannelKey]) -> Result<Vec<(u64, Option<StoredMessage>)>> {
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = channels
        .iter()
        .map(|c| {
            let start = c.prefix();
            let mut end = start.clone();
            end.extend_from_slice(&[0xff; 9]);
            (start, end)
        })
        .collect();
    let lasts = kv.last_in_ranges(Table::ChanSeqMessage, &ranges)?;
    let prefixes: Vec<Vec<u8>> = ranges.into_iter().map(|(start, _)| start).collect();
    let floors = kv.get_many(Table::ChanSeqFloor, &prefixes)?;
    lasts
        .into_iter()
        .zip(floors)
        .map(|(last, floor)| {
            let newest = last
                .map(|(key, value)| {
                    Ok::<_, StoreError>(StoredMessage { seq: seq_from_key(&key)?, message: decode(&value)? })
                })
                .transpose()?;
            let floor = floor
                .map(|v| {
                    v.as_slice()
                        .try_into()
                        .map(u64::from_be_bytes)
                        .map_err(|_| StoreError::Corrupt { table: Table::ChanSeqFloor.name(), what: "seq" })
                })
                .transpose()?
                .unwrap_or(0);
            Ok((newest.as_ref().map_or(0, |m| m.seq).max(floor), newest))
        })
        .collect()
}

pub(super) fn seq_floor(kv: &dyn KvBackend, channel: &ChannelKey) -> Result<u64> {
    match kv.get(Table::ChanSeqFloor, &channel.prefix())? {
        Some(value) => value
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt { table: Table::ChanSeqFloor.name(), what: "seq" }),
        None => Ok(0),
    }
}

impl MessageLog {
    /// The highest seq stored in `channel` (0 when empty). Blocking.
    pub fn last_seq(&self, channel: &ChannelKey) -> Result<u64> {
        last_seq(&*self.kv, channel)
    }

    /// For each channel, its last seq (as [`Self::last_seq`]) and its newest stored
    /// message, for all of them in two reads (a user's conversation list). Blocking.
    pub fn newest(&self, channels: &[&ChannelKey]) -> Result<Vec<(u64, Option<StoredMessage>)>> {
        newest_of(&*self.kv, channels)
    }

    /// Up to `limit` messages with `from <= seq < to` (`to == 0`: no upper bound), in
    /// `order`. Blocking.
    pub fn read(
        &self,
        channel: &ChannelKey,
        from: u64,
        to: u64,
        limit: usize,
        order: Order,
    ) -> Result<Vec<StoredMessage>> {
        let start = channel.message_key(from);
        let end = if to == 0 {
            let mut end = channel.prefix();
            end.extend_from_slice(&[0xff; 9]);
            end
        } else {
            channel.message_key(to)
        };
        self.kv
            .scan_range(Table::ChanSeqMessage, &start, &end, limit, order)?
            .into_iter()
            .map(|(key, value)| Ok(StoredMessage { seq: seq_from_key(&key)?, message: decode(&value)? }))
            .collect()
    }

    /// For each `(channel, from, to)`, up to `limit` messages with `from <= seq < to`
    /// (`to == 0`: no upper bound) in `order`: all of them in one read. Blocking.
    pub fn read_many(
        &self,
        ranges: &[(&ChannelKey, u64, u64)],
        limit: usize,
        order: Order,
    ) -> Result<Vec<Vec<StoredMessage>>> {
        let bounds: Vec<(Vec<u8>, Vec<u8>)> = ranges
            .iter()
            .map(|(channel, from, to)| {
                let end = if *to == 0 {
                    let mut end = channel.prefix();
                    end.extend_from_slice(&[0xff; 9]);
                    end
                } else {
                    channel.message_key(*to)
                };
                (channel.message_key(*from), end)
            })
            .collect();
        self.kv
            .scan_ranges(Table::ChanSeqMessage, &bounds, limit, order)?
            .into_iter()
            .map(|page| {
                page.into_iter()
                    .map(|(key, value)| Ok(StoredMessage { seq: seq_from_key(&key)?, message: decode(&value)? }))
                    .collect()
            })
            .collect()
    }

    /// The message with `message_id` and its channel, if stored. Blocking.
    pub fn by_message_id(&self, message_id: i64) -> Result<Option<(ChannelKey, StoredMessage)>> {
        let Some(key) = self.kv.get(Table::MsgIdChanSeq, &message_id.to_be_bytes())? else { return Ok(None) };
        let channel = channel_from_message_key(&key)?;
        let seq = seq_from_key(&key)?;
        Ok(self.read(&channel, seq, seq + 1, 1, Order::Ascending)?.into_iter().next().map(|m| (channel, m)))
    }

    /// The messages stored under `client_msg_no` in `channel`, by any sender, in seq
    /// order. Blocking.
    pub fn read_by_client_msg_no(&self, channel: &ChannelKey, client_msg_no: &str) -> Result<Vec<StoredMessage>> {
        if client_msg_no.is_empty() || client_msg_no.len() > usize::from(u16::MAX) {
            return Ok(Vec::new());
        }
        let prefix = channel.client_msg_no_prefix(client_msg_no);
        let mut found = Vec::new();
        for (_, value) in self.kv.scan_prefix(Table::ChanClientMsgNo, &prefix, 64)? {
            let mut r = ValueReader { rest: &value };
            let bad = || StoreError::Corrupt { table: Table::ChanClientMsgNo.name(), what: "ids" };
            if r.u8() != Some(FORMAT_V1) {
                return Err(bad());
            }
            let (_, seq) = (r.i64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
            found.extend(self.read(channel, seq, seq + 1, 1, Order::Ascending)?);
        }
        found.sort_by_key(|m| m.seq);
        Ok(found)
    }

    /// The message a sender stored under `client_msg_no`, if any. Blocking.
    pub fn by_client_msg_no(
        &self,
        channel: &ChannelKey,
        from_uid: &str,
        client_msg_no: &str,
    ) -> Result<Option<StoredMessage>> {
        let Some((_, seq)) = lookup_client_msg_no(&*self.kv, channel, from_uid, client_msg_no)? else {
            return Ok(None);
        };
        Ok(self.read(channel, seq, seq + 1, 1, Order::Ascending)?.into_iter().next())
    }
}
