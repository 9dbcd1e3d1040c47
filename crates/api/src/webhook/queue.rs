//! The durable event queue (table `laneid_hook`): one row per event, keyed by lane
//! and id, and what each lane reports of itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use hongyan_store::{ChannelKey, KvBackend, Table, Write};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::warn;

use super::{FORMAT_V1, LANE_NOTIFY, LANE_PRESENCE, MSG_NOTIFY, MSG_OFFLINE, ONLINE_STATUS};

/// An event in the queue.
pub(super) struct Event {
    pub(super) key: Vec<u8>,
    pub(super) id: u64,
    pub(super) created_ms: i64,
    pub(super) name: &'static str,
    /// The body as posted; for an event with a `message`, only `{"to_uids": [...]}`.
    pub(super) body: Vec<u8>,
    /// A `msg.offline` of a stored message refers to it (stored channel, seq) instead
    /// of carrying it: the body is made from the log when posted, so a message to a
    /// large group with many offline members is not copied once per chunk of uids.
    pub(super) message: Option<(ChannelKey, u64)>,
}

/// The kind byte of a `msg.offline` row that refers to a stored message.
pub(super) const KIND_OFFLINE_REF: u8 = 3;

pub(super) struct Queue {
    pub(super) kv: Arc<dyn KvBackend>,
    /// Per lane: what waits, how delivery goes, and the "retry now" signal.
    pub(super) lanes: Vec<LaneState>,
    pub(super) next_id: AtomicU64,
    pub(super) pending: AtomicI64,
    /// Bytes of the events in the queue (values as stored).
    pub(super) pending_bytes: AtomicI64,
    /// Past this many bytes, new events are dropped (counted) rather than queued.
    pub(super) max_bytes: i64,
    /// When the last "queue full" warning was logged (ms), so a full queue logs once a
    /// minute, not once per event.
    pub(super) full_warned_ms: AtomicI64,
    pub(super) wake: Vec<Notify>,
}

/// How one lane is doing, for [`Webhooks::status`].
#[derive(Debug, Default)]
pub(super) struct LaneState {
    pub(super) pending: AtomicI64,
    pub(super) retries: AtomicU64,
    pub(super) failing: std::sync::atomic::AtomicBool,
    /// The last failed post: when (ms since the epoch) and why.
    pub(super) last_error: std::sync::Mutex<Option<(i64, String)>>,
    /// Cuts a retry's wait short ([`Webhooks::retry_now`]).
    pub(super) retry_now: Notify,
}

/// One event's webhook queue, as operators see it (`GET /webhook/status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventStatus {
    /// `msg.notify`, `user.onlinestatus` or `msg.offline`.
    pub event: &'static str,
    /// Events queued and not delivered yet.
    pub pending: i64,
    /// Whether the last post of this event failed (it is being retried).
    pub failing: bool,
    /// Failed posts since the start.
    pub retries: u64,
    /// Why the last failed post failed.
    pub last_error: Option<String>,
    /// When it failed (ms since the epoch).
    pub last_error_at_ms: Option<i64>,
}

/// The event a lane carries.
pub(super) fn lane_event(lane: usize) -> &'static str {
    match lane {
        l if l == usize::from(LANE_PRESENCE) => ONLINE_STATUS,
        l if l == usize::from(LANE_NOTIFY) => MSG_NOTIFY,
        _ => MSG_OFFLINE,
    }
}

impl Queue {
    pub(super) fn key(lane: u8, id: u64) -> Vec<u8> {
        let mut key = Vec::with_capacity(9);
        key.push(lane);
        key.extend_from_slice(&id.to_be_bytes());
        key
    }

    pub(super) fn encode(name: &str, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(10 + body.len());
        v.push(FORMAT_V1);
        v.extend_from_slice(&hongyan_core::now_ms().to_be_bytes());
        v.push(match name {
            ONLINE_STATUS => 0,
            MSG_NOTIFY => 1,
            _ => 2,
        });
        v.extend_from_slice(body);
        v
    }

    /// `[format][created_ms][kind 3][channel type][len][channel id][seq][to_uids JSON]`.
    pub(super) fn encode_reference(channel: &ChannelKey, seq: u64, to_uids: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(22 + channel.channel_id.len() + to_uids.len());
        v.push(FORMAT_V1);
        v.extend_from_slice(&hongyan_core::now_ms().to_be_bytes());
        v.extend_from_slice(&[KIND_OFFLINE_REF, channel.channel_type]);
        // Ids are at most 255 bytes (the id rule), so the length fits.
        v.extend_from_slice(&(channel.channel_id.len() as u16).to_be_bytes());
        v.extend_from_slice(channel.channel_id.as_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(to_uids);
        v
    }

    pub(super) fn decode(key: Vec<u8>, value: &[u8]) -> Option<Event> {
        let id = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
        if value.first() != Some(&FORMAT_V1) {
            return None;
        }
        let created_ms = i64::from_be_bytes(value.get(1..9)?.try_into().ok()?);
        let (name, message, body) = match value.get(9)? {
            0 => (ONLINE_STATUS, None, value.get(10..)?),
            1 => (MSG_NOTIFY, None, value.get(10..)?),
            &KIND_OFFLINE_REF => {
                let channel_type = *value.get(10)?;
                let len = usize::from(u16::from_be_bytes(value.get(11..13)?.try_into().ok()?));
                let channel_id = std::str::from_utf8(value.get(13..13 + len)?).ok()?;
                let at = 13 + len;
                let seq = u64::from_be_bytes(value.get(at..at + 8)?.try_into().ok()?);
                (MSG_OFFLINE, Some((ChannelKey::new(channel_id, channel_type), seq)), value.get(at + 8..)?)
            }
            _ => (MSG_OFFLINE, None, value.get(10..)?),
        };
        Some(Event { key, id, created_ms, name, body: body.to_vec(), message })
    }

    /// Queues an event in `writes`, unless the queue is full (`webhook.max_queue_bytes`):
    /// then the event is dropped and counted, so a receiver that is down for long
    /// cannot fill the disk — and messaging, which never waits for webhooks, goes on.
    /// Returns whether it was queued.
    pub(super) fn put(&self, lane: u8, name: &'static str, body: &Value, writes: &mut Vec<Write>) -> bool {
        let body = serde_json::to_vec(body).unwrap_or_default();
        self.put_value(lane, name, Self::encode(name, &body), writes)
    }

    /// Queues a `msg.offline` that refers to the stored message at `seq` in `channel`.
    pub(super) fn put_reference(
        &self,
        lane: u8,
        channel: &ChannelKey,
        seq: u64,
        to_uids: &Value,
        writes: &mut Vec<Write>,
    ) {
        let to_uids = serde_json::to_vec(&json!({ "to_uids": to_uids })).unwrap_or_default();
        self.put_value(lane, MSG_OFFLINE, Self::encode_reference(channel, seq, &to_uids), writes);
    }

    pub(super) fn put_value(&self, lane: u8, name: &'static str, value: Vec<u8>, writes: &mut Vec<Write>) -> bool {
        let size = value.len() as i64;
        if self.pending_bytes.load(Ordering::Relaxed) + size > self.max_bytes {
            metrics::counter!("hongyan_webhook_dropped_total", "event" => name, "why" => "queue_full").increment(1);
            let now = hongyan_core::now_ms();
            if now - self.full_warned_ms.load(Ordering::Relaxed) >= 60_000 {
                self.full_warned_ms.store(now, Ordering::Relaxed);
                warn!(
                    event = name,
                    max_bytes = self.max_bytes,
                    "webhook queue full (webhook.max_queue_bytes): new events are dropped until the receiver catches up"
                );
            }
            return false;
        }
        // Counted now, while the batch is written: the next put sees it.
        let bytes = self.pending_bytes.fetch_add(size, Ordering::Relaxed) + size;
        metrics::gauge!("hongyan_webhook_pending_bytes").set(bytes as f64);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        writes.push(Write::Put(Table::HookQueue, Self::key(lane, id), value));
        metrics::counter!("hongyan_webhook_queued_total", "event" => name).increment(1);
        true
    }
}
