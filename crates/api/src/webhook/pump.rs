//! The pump: one thread that turns stored messages (from the journal), unstored ones
//! and presence changes into queued events, in batches, within a bounded input.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hongyan_core::Core;
use hongyan_core::channel::base_channel;
use hongyan_store::{ChannelKey, Journaled, NewMessage, StoredMessage, Table, Write};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::queue::Queue;
use super::{FIRST_OFFLINE_LANE, LANE_NOTIFY, LANE_PRESENCE, MSG_NOTIFY, MSG_OFFLINE, ONLINE_STATUS, WebhookSettings};
use crate::wukong::message_json;

/// What the pump takes in.
pub(super) enum Input {
    Stored(Journaled),
    Unstored { channel: ChannelKey, message: NewMessage, only_to: Option<Vec<String>> },
    Presence(String),
    Stop,
}

/// Most inputs waiting for the pump, and their bytes. Stored messages wait for room
/// (on the log's writer thread, which holds up senders through the core's pipeline
/// budget); logins and unstored messages that find no room are dropped and counted.
pub(super) const PUMP_MAX_ITEMS: usize = 16_384;
pub(super) const PUMP_MAX_BYTES: usize = 32 * 1024 * 1024;

/// What an input holds, roughly, in bytes.
pub(super) fn input_size(input: &Input) -> usize {
    const BASE: usize = 256;
    match input {
        Input::Stored(j) => BASE + j.message.payload.len() + j.message.client_msg_no.len(),
        Input::Unstored { message, only_to, .. } => {
            BASE + message.payload.len() + only_to.as_ref().map_or(0, |u| u.iter().map(|s| 24 + s.len()).sum())
        }
        Input::Presence(entry) => BASE + entry.len(),
        Input::Stop => 0,
    }
}

/// The bound on the pump's input: items and bytes queued.
#[derive(Debug, Default)]
pub(super) struct Gate {
    pub(super) used: std::sync::Mutex<(usize, usize)>,
    pub(super) room: std::sync::Condvar,
}

impl Gate {
    pub(super) fn fits(used: (usize, usize), bytes: usize) -> bool {
        // One input always fits into an empty queue, however large.
        used.0 == 0 || (used.0 < PUMP_MAX_ITEMS && used.1 + bytes <= PUMP_MAX_BYTES)
    }

    /// Waits for room. Blocking: only for threads outside the async runtime.
    pub(super) fn enter(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while !Self::fits(*used, bytes) {
            used = self.room.wait(used).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used = (used.0 + 1, used.1 + bytes);
    }

    /// Takes room if there is some now.
    pub(super) fn try_enter(&self, bytes: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fits = Self::fits(*used, bytes);
        if fits {
            *used = (used.0 + 1, used.1 + bytes);
        }
        fits
    }

    pub(super) fn leave(&self, input: &Input) {
        if matches!(input, Input::Stop) {
            return; // sent without entering
        }
        let bytes = input_size(input);
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *used = (used.0.saturating_sub(1), used.1.saturating_sub(bytes));
        metrics::gauge!("hongyan_webhook_pump_queue").set(used.0 as f64);
        self.room.notify_all();
    }
}

/// Entries waiting to become one event.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) entries: Vec<Value>,
    /// Journal rows to delete when the batch is written.
    pub(super) journal: Vec<u64>,
    pub(super) since: Option<Instant>,
}

impl Batch {
    pub(super) fn push(&mut self, entry: Value, journal: Option<u64>) {
        self.since.get_or_insert_with(Instant::now);
        self.entries.push(entry);
        self.journal.extend(journal);
    }

    pub(super) fn deadline(&self, interval: Duration) -> Option<Instant> {
        self.since.map(|t| t + interval)
    }
}

pub(super) struct Pump {
    pub(super) settings: Arc<WebhookSettings>,
    pub(super) core: Arc<Core>,
    pub(super) queue: Arc<Queue>,
    pub(super) notify: Batch,
    pub(super) presence: Batch,
    /// Journal rows whose events are all in this round's writes.
    pub(super) journal_done: Vec<u64>,
}

impl Pump {
    pub(super) fn run(mut self, input: &Receiver<Input>, gate: &Gate, backlog: Vec<Journaled>) {
        if !backlog.is_empty() {
            info!(messages = backlog.len(), "webhooks: taking in messages journaled before the restart");
        }
        let mut round: Vec<Input> = backlog.into_iter().map(Input::Stored).collect();
        let mut stopping = false;
        loop {
            if round.is_empty() {
                let deadline = [&self.notify, &self.presence]
                    .iter()
                    .filter_map(|b| b.deadline(self.settings.batch_interval))
                    .min();
                let wait = deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
                match input.recv_timeout(wait) {
                    Ok(item) => {
                        gate.leave(&item);
                        round.push(item);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => stopping = true,
                }
            }
            while round.len() < 4096 {
                match input.try_recv() {
                    Ok(item) => {
                        gate.leave(&item);
                        round.push(item);
                    }
                    Err(_) => break,
                }
            }
            let mut writes = Vec::new();
            let mut woken = Vec::new();
            for item in round.drain(..) {
                match item {
                    Input::Stored(j) => self.take_stored(j, &mut writes, &mut woken),
                    Input::Unstored { channel, message, only_to } => {
                        if self.settings.offline {
                            self.offline_events(&channel, 0, &message, only_to.as_deref(), &mut writes, &mut woken);
                        }
                    }
                    Input::Presence(entry) => {
                        if self.settings.online_status {
                            self.presence.push(Value::String(entry), None);
                        }
                    }
                    Input::Stop => stopping = true,
                }
            }
            self.flush_batches(stopping, &mut writes, &mut woken);
            writes
                .extend(self.journal_done.drain(..).map(|id| Write::Delete(Table::Journal, id.to_be_bytes().to_vec())));
            if !writes.is_empty() {
                let queued: Vec<u8> = writes
                    .iter()
                    .filter_map(|w| match w {
                        Write::Put(Table::HookQueue, key, _) => key.first().copied(),
                        _ => None,
                    })
                    .collect();
                match self.queue.kv.write(writes, true) {
                    Ok(()) => {
                        self.queue.pending.fetch_add(queued.len() as i64, Ordering::Relaxed);
                        for lane in queued {
                            self.queue.lanes[usize::from(lane)].pending.fetch_add(1, Ordering::Relaxed);
                        }
                        metrics::gauge!("hongyan_webhook_pending")
                            .set(self.queue.pending.load(Ordering::Relaxed) as f64);
                        woken.sort_unstable();
                        woken.dedup();
                        for lane in woken {
                            self.queue.wake[usize::from(lane)].notify_one();
                        }
                    }
                    // The journal rows stay, so stored messages are taken in again at
                    // the next start; presence and NoPersist events of this round are lost.
                    Err(e) => error!(error = %e, "webhook events could not be queued"),
                }
            }
            if stopping {
                break;
            }
        }
    }

    pub(super) fn take_stored(&mut self, j: Journaled, writes: &mut Vec<Write>, woken: &mut Vec<u8>) {
        if self.settings.offline {
            self.offline_events(&j.channel, j.seq, &j.message, None, writes, woken);
        }
        if self.settings.notify {
            let base = base_channel(&j.channel);
            let stored = StoredMessage { seq: j.seq, message: j.message };
            self.notify.push(message_json(&stored, &base, &self.settings.system_uid), Some(j.id));
        } else {
            self.journal_done.push(j.id);
        }
    }

    pub(super) fn flush_batches(&mut self, stopping: bool, writes: &mut Vec<Write>, woken: &mut Vec<u8>) {
        let (max, interval) = (self.settings.batch_max.max(1), self.settings.batch_interval);
        for (lane, name) in [(LANE_NOTIFY, MSG_NOTIFY), (LANE_PRESENCE, ONLINE_STATUS)] {
            let batch = if lane == LANE_NOTIFY { &mut self.notify } else { &mut self.presence };
            let due = batch.deadline(interval).is_some_and(|d| Instant::now() >= d);
            if batch.entries.is_empty() || !(stopping || due || batch.entries.len() >= max) {
                continue;
            }
            let entries = std::mem::take(&mut batch.entries);
            self.journal_done.append(&mut batch.journal);
            batch.since = None;
            for chunk in entries.chunks(max) {
                self.queue.put(lane, name, &Value::Array(chunk.to_vec()), writes);
            }
            woken.push(lane);
        }
    }

    /// `msg.offline` for the message's recipients who are offline now (never the
    /// sender or the system uid), split into posts of at most `offline_max_uids`.
    pub(super) fn offline_events(
        &self,
        channel: &ChannelKey,
        seq: u64,
        message: &NewMessage,
        only_to: Option<&[String]>,
        writes: &mut Vec<Write>,
        woken: &mut Vec<u8>,
    ) {
        let recipients = match only_to {
            Some(uids) => uids.to_vec(),
            None => match self.core.recipient_uids(channel) {
                Ok(uids) => uids,
                Err(e) => {
                    warn!(error = %e, channel = %channel.channel_id, "msg.offline: recipients unknown; event skipped");
                    return;
                }
            },
        };
        let rule = self.settings.offline_rule;
        let offline: Vec<&String> = recipients
            .iter()
            .filter(|u| **u != message.from_uid && **u != self.settings.system_uid && self.core.is_offline(u, rule))
            .collect();
        if offline.is_empty() {
            return;
        }
        let base = base_channel(channel);
        let lane = FIRST_OFFLINE_LANE
            + (crc32fast::hash(base.channel_id.as_bytes()) % u32::from(self.settings.offline_lanes.max(1))) as u8;
        if seq > 0 {
            // Stored: each chunk refers to the message in the log; none copies it.
            for chunk in offline.chunks(self.settings.offline_max_uids.max(1)) {
                self.queue.put_reference(lane, channel, seq, &json!(chunk), writes);
            }
        } else {
            // Not stored (NoPersist): nothing to refer to, so the event carries it.
            let stored = StoredMessage { seq, message: message.clone() };
            let mut body = offline_body(&stored, &base, &self.settings);
            for chunk in offline.chunks(self.settings.offline_max_uids.max(1)) {
                body["to_uids"] = json!(chunk);
                self.queue.put(lane, MSG_OFFLINE, &body, writes);
            }
        }
        woken.push(lane);
    }
}

/// The body of a `msg.offline`, without its `to_uids`: the message as the sync APIs
/// show it, and the node it came from.
pub(super) fn offline_body(stored: &StoredMessage, base: &ChannelKey, settings: &WebhookSettings) -> Value {
    let mut body = message_json(stored, base, &settings.system_uid);
    body["source_id"] = json!(settings.node_id);
    body
}
