//! The writer thread: it alone assigns seqs, takes whatever appends have queued up,
//! plans them into one atomic batch (new seqs, resends recognised, fences checked),
//! commits and syncs it, and only then answers the callers.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

use super::{
    Appended, ChannelKey, Durability, FORMAT_V1, Fence, Job, Journal, Journaled, MAX_BATCH, decode_ids, encode,
    last_seq, newest_of,
};
use crate::backend::{KvBackend, Table, Write};
use crate::health::panic_message;
use crate::{Result, StoreError};

/// Most channel counters the writer keeps in memory (about 80 bytes each).
#[cfg(not(test))]
const MAX_CACHED_COUNTERS: usize = 262_144;
/// Small in tests, so that they go through the emptying.
#[cfg(test)]
const MAX_CACHED_COUNTERS: usize = 8;

/// The writer thread's state: it alone assigns seqs.
pub(super) struct Writer {
    pub(super) kv: Arc<dyn KvBackend>,
    pub(super) durability: Durability,
    pub(super) queued: Arc<AtomicUsize>,
    /// Next seq per channel touched lately, loaded from storage on first use; emptied
    /// when it reaches [`MAX_CACHED_COUNTERS`] (every counter is in storage too).
    pub(super) next_seq: HashMap<ChannelKey, u64>,
    /// The claim each fenced channel's counter was loaded under: a counter loaded under
    /// another claim is reloaded, since another owner may have appended in between.
    pub(super) counted_under: HashMap<ChannelKey, Vec<u8>>,
    pub(super) journal: Option<Journal>,
}

impl Writer {
    pub(super) fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        loop {
            let first = match self.durability {
                Durability::Fsync => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Durability::Interval(every) => jobs.recv_timeout(every.saturating_sub(last_sync.elapsed())),
            };
            let first = match first {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Job> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let (taken, started) = (batch.len(), Instant::now());
                metrics::histogram!("hongyan_log_batch_messages").record(taken as f64);
                // A panic anywhere in a commit (a callback, the journal sink) must not end
                // the writer silently: it becomes the store's failure, and every later
                // append is refused with an error instead of waiting forever.
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.commit(batch))) {
                    self.kv.health().fail(format!("the log writer panicked: {}", panic_message(&*panic)));
                }
                metrics::histogram!("hongyan_log_commit_seconds").record(started.elapsed().as_secs_f64());
                let left = self.queued.fetch_sub(taken, Ordering::Relaxed) - taken;
                metrics::gauge!("hongyan_log_queue_depth").set(left as f64);
                unsynced = true;
            }
            if let Durability::Interval(every) = self.durability
                && unsynced
                && last_sync.elapsed() >= every
            {
                if let Err(e) = self.kv.sync() {
                    self.fail(&e);
                }
                last_sync = Instant::now();
                unsynced = false;
            }
        }
        if unsynced && !self.kv.health().has_failed() {
            let _ = self.kv.sync();
        }
    }

    fn fail(&self, e: &StoreError) {
        self.kv.health().fail(format!("message log write failed: {e}"));
    }

    fn commit(&mut self, batch: Vec<Job>) {
        if self.kv.health().has_failed() {
            for job in batch {
                if let Some(on_commit) = job.on_commit {
                    on_commit(None);
                }
                let _ = job.reply.send(Err(StoreError::Engine("the message log stopped after a storage error".into())));
            }
            return;
        }
        let durable = self.durability == Durability::Fsync;
        // Planning reads storage and the write runs the engine: either may fail, and
        // neither may take the writer thread down with a panic.
        let planned = catch_unwind(AssertUnwindSafe(|| {
            let (writes, results, journal_ids) = self.plan(&batch)?;
            self.kv.write(writes, durable)?;
            Ok((results, journal_ids))
        }))
        .unwrap_or_else(|panic| {
            Err(StoreError::Engine(format!("the log writer panicked: {}", panic_message(&*panic))))
        });
        match planned {
            Err(StoreError::Conflict(why)) if batch.iter().any(|j| j.fence.is_some()) => {
                self.commit_without_lost_claims(batch, &why);
            }
            Ok((results, journal_ids)) => {
                for ((job, result), journal_id) in batch.into_iter().zip(results).zip(journal_ids) {
                    // The message is stored whatever its listeners do; a panic in one of
                    // them is a bug that stops the node (fail-stop), but this caller is
                    // still told the truth.
                    let heard = catch_unwind(AssertUnwindSafe(|| {
                        if let (Some(journal), Some(id), Appended::New { seq, .. }) =
                            (&self.journal, journal_id, result)
                        {
                            let journaled =
                                Journaled { id, channel: job.channel.clone(), seq, message: job.message.clone() };
                            (journal.sink)(journaled);
                        }
                        if let Some(on_commit) = job.on_commit {
                            on_commit(Some(result));
                        }
                    }));
                    if let Err(panic) = heard {
                        self.kv.health().fail(format!("a commit listener panicked: {}", panic_message(&*panic)));
                    }
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(e) => self.fail_batch(batch, &e),
        }
    }

    /// A fenced batch met a conflict: the appends whose claim moved are refused (their
    /// channel has another owner now); if that leaves the rest, it is committed again,
    /// so one channel's ownership change does not refuse other channels' messages.
    fn commit_without_lost_claims(&mut self, batch: Vec<Job>, why: &str) {
        let keys: Vec<Vec<u8>> = batch.iter().filter_map(|j| j.fence.as_ref().map(|f| f.key.clone())).collect();
        let stored = match self.kv.get_many(Table::ChanOwner, &keys) {
            Ok(stored) => keys.into_iter().zip(stored).collect::<HashMap<_, _>>(),
            Err(e) => return self.fail_batch(batch, &e),
        };
        let (lost, kept): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| {
            j.fence.as_ref().is_some_and(|f| stored.get(&f.key).is_none_or(|v| v.as_deref() != Some(&f.value[..])))
        });
        if lost.is_empty() || kept.is_empty() {
            let all = if lost.is_empty() { kept } else { lost };
            return self.fail_batch(all, &StoreError::Conflict(why.to_owned()));
        }
        metrics::counter!("hongyan_log_fenced_appends_total").increment(lost.len() as u64);
        self.fail_batch(lost, &StoreError::Conflict("the channel's owner changed".into()));
        self.commit(kept);
    }

    fn fail_batch(&mut self, batch: Vec<Job>, e: &StoreError) {
        // An engine that could not be reached applied nothing, and neither did a batch
        // that met another writer's rows: the batch is refused and the log goes on (with
        // each channel's counter reloaded). Anything else (an error, or a commit whose
        // outcome is unknown) is the store's failure: fail-stop.
        let unreachable = matches!(e, StoreError::Unavailable(_) | StoreError::Conflict(_));
        if !unreachable {
            self.fail(e);
        }
        // Seqs handed out for this batch were not stored; forget them so the next
        // append reloads each channel's counter from storage.
        self.next_seq.clear();
        for job in batch {
            if let Some(on_commit) = job.on_commit {
                on_commit(None);
            }
            let error = if let StoreError::Conflict(why) = e {
                StoreError::Conflict(format!("message not stored: {why}"))
            } else if unreachable {
                StoreError::Unavailable(format!("message not stored: {e}"))
            } else {
                StoreError::Engine(format!("message not stored: {e}"))
            };
            let _ = job.reply.send(Err(error));
        }
    }

    /// Seqs, dedupe, journal ids and the writes for one batch.
    #[allow(clippy::type_complexity)]
    fn plan(&mut self, batch: &[Job]) -> Result<(Vec<Write>, Vec<Appended>, Vec<Option<u64>>)> {
        self.load_counters(batch)?;
        let mut writes = Vec::with_capacity(batch.len() * 2);
        let mut fences: Vec<&Fence> = batch.iter().filter_map(|j| j.fence.as_ref()).collect();
        fences.sort_unstable_by(|a, b| (&a.key, &a.value).cmp(&(&b.key, &b.value)));
        fences.dedup();
        for f in fences {
            writes.push(Write::Expect(Table::ChanOwner, f.key.clone(), f.value.clone()));
        }
        let mut results = Vec::with_capacity(batch.len());
        let mut journal_ids = Vec::with_capacity(batch.len());
        // Every resend-index row the batch could meet, read at once; rows the batch
        // itself writes are added as it goes. `slots` says where each message's key is.
        let mut wanted: Vec<Vec<u8>> = Vec::new();
        let slots: Vec<Option<usize>> = batch
            .iter()
            .map(|job| {
                let m = &job.message;
                (!m.client_msg_no.is_empty()).then(|| {
                    wanted.push(job.channel.client_msg_no_key(&m.from_uid, &m.client_msg_no));
                    wanted.len() - 1
                })
            })
            .collect();
        let mut known: HashMap<Vec<u8>, (i64, u64)> = HashMap::new();
        for (key, value) in wanted.iter().zip(self.kv.get_many(Table::ChanClientMsgNo, &wanted)?) {
            if let Some(value) = value {
                known.insert(key.clone(), decode_ids(&value)?);
            }
        }
        for (job, slot) in batch.iter().zip(slots) {
            let m = &job.message;
            if let Some((message_id, seq)) = slot.and_then(|i| known.get(&wanted[i]).copied()) {
                results.push(Appended::Duplicate { message_id, seq });
                journal_ids.push(None);
                continue;
            }
            let seq = self.take_seq(&job.channel)?;
            let key = job.channel.message_key(seq);
            // The message and its resend index are inserts: a row already there means
            // another writer stored this seq (or this resend), and the batch fails as a
            // conflict. (Message ids are unique by construction: their index is a put.)
            writes.push(Write::Put(Table::MsgIdChanSeq, m.message_id.to_be_bytes().to_vec(), key.clone()));
            let journal_id = self.journal.as_mut().map(|journal| {
                let id = journal.next_id;
                journal.next_id += 1;
                writes.push(Write::Put(Table::Journal, id.to_be_bytes().to_vec(), key.clone()));
                id
            });
            journal_ids.push(journal_id);
            writes.push(Write::Insert(Table::ChanSeqMessage, key, encode(m)));
            if seq == 1 {
                writes.extend(job.with_first.iter().cloned());
            }
            if let Some(i) = slot {
                let key = std::mem::take(&mut wanted[i]);
                let mut ids = Vec::with_capacity(17);
                ids.push(FORMAT_V1);
                ids.extend_from_slice(&m.message_id.to_be_bytes());
                ids.extend_from_slice(&seq.to_be_bytes());
                writes.push(Write::Insert(Table::ChanClientMsgNo, key.clone(), ids));
                known.insert(key, (m.message_id, seq));
            }
            results.push(Appended::New { message_id: m.message_id, seq });
        }
        Ok((writes, results, journal_ids))
    }

    /// Loads the seq counter of every channel in `batch` not seen yet, all at once.
    fn load_counters(&mut self, batch: &[Job]) -> Result<()> {
        // Bounded: a node that has seen millions of channels does not keep a counter
        // for each. Every earlier batch is committed, so storage has them all.
        if self.next_seq.len() >= MAX_CACHED_COUNTERS {
            self.next_seq.clear();
            self.counted_under.clear();
        }
        for job in batch {
            if let Some(fence) = &job.fence
                && self.counted_under.get(&job.channel) != Some(&fence.value)
            {
                self.next_seq.remove(&job.channel);
                self.counted_under.insert(job.channel.clone(), fence.value.clone());
            }
        }
        let mut new: Vec<&ChannelKey> =
            batch.iter().map(|j| &j.channel).filter(|c| !self.next_seq.contains_key(*c)).collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return Ok(());
        }
        for (channel, (last, _)) in new.iter().zip(newest_of(&*self.kv, &new)?) {
            self.next_seq.insert((*channel).clone(), last + 1);
        }
        Ok(())
    }

    fn take_seq(&mut self, channel: &ChannelKey) -> Result<u64> {
        let next = match self.next_seq.get_mut(channel) {
            Some(next) => next,
            None => {
                let last = last_seq(&*self.kv, channel)?;
                self.next_seq.entry(channel.clone()).or_insert(last + 1)
            }
        };
        let seq = *next;
        *next += 1;
        Ok(seq)
    }
}
