//! Retention: removing a channel's oldest messages, with their indexes, then what
//! happened to them (extras and marks); the seq counter outlives them.

use super::{ChannelKey, MessageLog, channel_from_message_key, decode, last_seq, seq_from_key};
use crate::Result;
use crate::backend::{Order, Table, Write};

/// What a retention sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Channels that lost messages.
    pub channels: usize,
    /// Messages removed.
    pub messages: usize,
}

impl MessageLog {
    /// Retention: removes the messages of every channel of the stored type
    /// `channel_type` stored before `cutoff_ms`, oldest first, the newest included; the
    /// channel's seq counter is kept apart (`chan_seqfloor`), so seqs never restart.
    /// Their resend index entries go with them. Appends may run meanwhile: they only add
    /// newer seqs. Blocking; works in batches of at most 1,536 deletions.
    pub fn prune_older_than(&self, channel_type: u8, cutoff_ms: i64) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let mut from = vec![channel_type];
        let end = vec![channel_type.saturating_add(1)];
        loop {
            let first = self.kv.scan_range(Table::ChanSeqMessage, &from, &end, 1, Order::Ascending)?;
            let Some((key, _)) = first.into_iter().next() else { break };
            let channel = channel_from_message_key(&key)?;
            let removed_here = self.prune_channel(&channel, seq_from_key(&key)?, cutoff_ms)?;
            if removed_here > 0 {
                pruned.channels += 1;
                pruned.messages += removed_here;
            }
            from = channel.prefix();
            from.extend_from_slice(&[0xff; 9]);
        }
        Ok(pruned)
    }

    /// Removes `channel`'s messages stored before `cutoff_ms` from seq `first` on, oldest
    /// first. Deleting the newest writes its seq as the channel's floor in the same
    /// batch. Returns how many went. Blocking.
    fn prune_channel(&self, channel: &ChannelKey, first: u64, cutoff_ms: i64) -> Result<usize> {
        const PAGE: usize = 512;
        let last = last_seq(&*self.kv, channel)?;
        let mut next = first;
        let mut removed_here = 0;
        while next <= last {
            let page = self.kv.scan_range(
                Table::ChanSeqMessage,
                &channel.message_key(next),
                &channel.message_key(last + 1),
                PAGE,
                Order::Ascending,
            )?;
            if page.is_empty() {
                break;
            }
            // The page's messages that are old enough, oldest first.
            let mut old = Vec::with_capacity(page.len());
            let mut stop = false;
            for (key, value) in &page {
                let message = decode(value)?;
                if message.timestamp_ms >= cutoff_ms {
                    stop = true;
                    break;
                }
                old.push((key, message));
            }
            // Their id index rows, each deleted only where it names this message.
            let ids: Vec<Vec<u8>> = old.iter().map(|(_, m)| m.message_id.to_be_bytes().to_vec()).collect();
            let indexed = self.kv.get_many(Table::MsgIdChanSeq, &ids)?;
            let mut writes = Vec::with_capacity(4 * old.len() + 1);
            for (((key, message), id), index) in old.iter().zip(ids).zip(indexed) {
                let seq = seq_from_key(key)?;
                writes.push(Write::Delete(Table::ChanSeqMessage, (*key).clone()));
                if index.as_ref() == Some(*key) {
                    // Expected as well as deleted: a message change racing this batch
                    // (`Store::change_extra`, which expects the same row) commits before
                    // it or not at all.
                    writes.push(Write::Expect(Table::MsgIdChanSeq, id.clone(), (*key).clone()));
                    writes.push(Write::Delete(Table::MsgIdChanSeq, id));
                }
                if !message.client_msg_no.is_empty() {
                    let index = channel.client_msg_no_key(&message.from_uid, &message.client_msg_no);
                    writes.push(Write::Delete(Table::ChanClientMsgNo, index));
                }
                if seq == last {
                    // The counter outlives the newest message.
                    writes.push(Write::Put(Table::ChanSeqFloor, channel.prefix(), last.to_be_bytes().to_vec()));
                }
                next = seq + 1;
            }
            let count = writes.iter().filter(|w| matches!(w, Write::Delete(Table::ChanSeqMessage, _))).count();
            if count > 0 {
                self.kv.write(writes, true)?;
                // Then what happened to them (revoked, edited, read, reactions): every
                // change that could still commit has, since a change commits only while
                // its message is stored. The first page sweeps from seq 0, for what a
                // crash between the two steps may have left of earlier messages.
                let from = if removed_here == 0 { 0 } else { seq_from_key(&page[0].0)? };
                crate::marks::remove_marks(&*self.kv, channel, from, next - 1)?;
                let extras = crate::extras::removal_writes(&*self.kv, channel, from, next - 1)?;
                if !extras.is_empty() {
                    self.kv.write(extras, true)?;
                }
                removed_here += count;
            }
            if stop || page.len() < PAGE {
                break;
            }
        }
        Ok(removed_here)
    }

    /// Deletes `channel`'s whole history; its seq counter stays, so a channel created
    /// again under the same id continues its seqs. Blocking.
    pub fn clear_channel(&self, channel: &ChannelKey) -> Result<usize> {
        self.prune_channel(channel, 1, i64::MAX)
    }
}
