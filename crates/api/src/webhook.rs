//! Webhooks: events to the app server as `POST {url}?event=<name>` with WuKongIM's
//! bodies, delivered at least once, in order per channel, across restarts.
//!
//! Three stages:
//! 1. **Sources.** Stored messages come from the message log's journal (a row written
//!    in the message's own batch, so a crash cannot lose one); logins, logouts and
//!    NoPersist messages come from the core as an [`Observer`].
//! 2. **The pump** (one thread) turns them into events: `msg.offline` per message for
//!    the recipients who are offline right then, `msg.notify` batches of up to
//!    `batch_max` messages or `batch_interval`, `user.onlinestatus` batches likewise.
//!    It writes events to the durable queue (table `laneid_hook`) and deletes the
//!    journal rows they came from in the same atomic batch.
//! 3. **Lanes** (one task each) post the queue's events in id order: lane 0 presence,
//!    lane 1 `msg.notify`, then `offline_lanes` lanes of `msg.offline` chosen by
//!    channel, so a channel's events keep their order while different channels' pushes
//!    go out side by side. A failed post (non-2xx, timeout) is retried with exponential
//!    backoff and holds up its lane; an event older than `max_age` is dropped with a
//!    counter and a log line. An event leaves the queue only after a 2xx.
//!
//! Each post carries `X-Hongyan-Event-Id` (the queue id: the same on every retry, also
//! after a restart) for receivers to deduplicate, and with a secret
//! `X-Hongyan-Signature: sha256=<hex HMAC-SHA256 of the body>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use hongyan_core::Core;
use hongyan_core::channel::base_channel;
use hongyan_core::hooks::{Observer, OfflineRule};
use hongyan_core::session::Conn;
use hongyan_store::{ChannelKey, Journaled, KvBackend, NewMessage, StoredMessage, Table, Write};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::wukong::message_json;

/// `user.onlinestatus`: logins and logouts.
pub const ONLINE_STATUS: &str = "user.onlinestatus";
/// `msg.offline`: a message for recipients who are offline.
pub const MSG_OFFLINE: &str = "msg.offline";
/// `msg.notify`: stored messages.
pub const MSG_NOTIFY: &str = "msg.notify";

const FORMAT_V1: u8 = 1;
const LANE_PRESENCE: u8 = 0;
const LANE_NOTIFY: u8 = 1;
const FIRST_OFFLINE_LANE: u8 = 2;
/// Rows a lane reads from the queue at a time.
const LANE_READ: usize = 64;

/// How webhooks behave (`[webhook]` in the configuration).
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Where events are posted (`?event=<name>` is appended).
    pub url: String,
    /// Send `user.onlinestatus`.
    pub online_status: bool,
    /// Send `msg.offline`.
    pub offline: bool,
    /// Send `msg.notify`.
    pub notify: bool,
    /// Who counts as offline for `msg.offline`.
    pub offline_rule: OfflineRule,
    /// Most entries in one `msg.notify` or `user.onlinestatus` post.
    pub batch_max: usize,
    /// Longest a batch waits to fill.
    pub batch_interval: Duration,
    /// Most uids in one `msg.offline` post; more are split into several posts.
    pub offline_max_uids: usize,
    /// Parallel lanes for `msg.offline` (a channel always uses the same one).
    pub offline_lanes: u8,
    /// One post's time limit.
    pub timeout: Duration,
    /// First retry delay; doubled per failure.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Events older than this are dropped instead of retried.
    pub max_age: Duration,
    /// Most bytes of events waiting in the durable queue; past it, new events are dropped
    /// (counted) until the receiver catches up.
    pub max_queue_bytes: u64,
    /// HMAC-SHA256 key for `X-Hongyan-Signature`; empty for none.
    pub secret: String,
    /// The node id, sent as `source_id` in `msg.offline`.
    pub node_id: u64,
    /// The system uid (blanked as `from_uid`, never a recipient).
    pub system_uid: String,
}

/// What the pump takes in.
enum Input {
    Stored(Journaled),
    Unstored { channel: ChannelKey, message: NewMessage, only_to: Option<Vec<String>> },
    Presence(String),
    Stop,
}

/// An event in the queue.
struct Event {
    key: Vec<u8>,
    id: u64,
    created_ms: i64,
    name: &'static str,
    /// The body as posted; for an event with a `message`, only `{"to_uids": [...]}`.
    body: Vec<u8>,
    /// A `msg.offline` of a stored message refers to it (stored channel, seq) instead
    /// of carrying it: the body is made from the log when posted, so a message to a
    /// large group with many offline members is not copied once per chunk of uids.
    message: Option<(ChannelKey, u64)>,
}

/// The kind byte of a `msg.offline` row that refers to a stored message.
const KIND_OFFLINE_REF: u8 = 3;

/// Most inputs waiting for the pump, and their bytes. Stored messages wait for room
/// (on the log's writer thread, which holds up senders through the core's pipeline
/// budget); logins and unstored messages that find no room are dropped and counted.
const PUMP_MAX_ITEMS: usize = 16_384;
const PUMP_MAX_BYTES: usize = 32 * 1024 * 1024;

/// What an input holds, roughly, in bytes.
fn input_size(input: &Input) -> usize {
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
struct Gate {
    used: std::sync::Mutex<(usize, usize)>,
    room: std::sync::Condvar,
}

impl Gate {
    fn fits(used: (usize, usize), bytes: usize) -> bool {
        // One input always fits into an empty queue, however large.
        used.0 == 0 || (used.0 < PUMP_MAX_ITEMS && used.1 + bytes <= PUMP_MAX_BYTES)
    }

    /// Waits for room. Blocking: only for threads outside the async runtime.
    fn enter(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while !Self::fits(*used, bytes) {
            used = self.room.wait(used).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used = (used.0 + 1, used.1 + bytes);
    }

    /// Takes room if there is some now.
    fn try_enter(&self, bytes: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fits = Self::fits(*used, bytes);
        if fits {
            *used = (used.0 + 1, used.1 + bytes);
        }
        fits
    }

    fn leave(&self, input: &Input) {
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

/// The webhooks of one node. See the module documentation.
pub struct Webhooks {
    input: Sender<Input>,
    queue: Arc<Queue>,
    gate: Arc<Gate>,
    pump: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    lanes: tokio_util::task::TaskTracker,
    stop: CancellationToken,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("status", &self.status()).finish_non_exhaustive()
    }
}

/// The sending half of the journal, for [`hongyan_store::MessageLog::open_journaled`];
/// the receiving half goes to [`Webhooks::start`].
#[derive(Debug)]
pub struct JournalFeed {
    sender: Sender<Input>,
    receiver: Receiver<Input>,
    gate: Arc<Gate>,
}

impl JournalFeed {
    /// A new feed.
    pub fn new() -> Self {
        let (sender, receiver) = std::sync::mpsc::channel();
        Self { sender, receiver, gate: Arc::default() }
    }

    /// The sink to give the message log. It runs on the log's writer thread and waits
    /// for room in the pump's bounded input.
    pub fn sink(&self) -> hongyan_store::JournalSink {
        let (sender, gate) = (self.sender.clone(), self.gate.clone());
        Box::new(move |journaled| {
            let input = Input::Stored(journaled);
            gate.enter(input_size(&input));
            let _ = sender.send(input);
        })
    }
}

impl Default for JournalFeed {
    fn default() -> Self {
        Self::new()
    }
}

struct Queue {
    kv: Arc<dyn KvBackend>,
    /// Per lane: what waits, how delivery goes, and the "retry now" signal.
    lanes: Vec<LaneState>,
    next_id: AtomicU64,
    pending: AtomicI64,
    /// Bytes of the events in the queue (values as stored).
    pending_bytes: AtomicI64,
    /// Past this many bytes, new events are dropped (counted) rather than queued.
    max_bytes: i64,
    /// When the last "queue full" warning was logged (ms), so a full queue logs once a
    /// minute, not once per event.
    full_warned_ms: AtomicI64,
    wake: Vec<Notify>,
}

/// How one lane is doing, for [`Webhooks::status`].
#[derive(Debug, Default)]
struct LaneState {
    pending: AtomicI64,
    retries: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
    /// The last failed post: when (ms since the epoch) and why.
    last_error: std::sync::Mutex<Option<(i64, String)>>,
    /// Cuts a retry's wait short ([`Webhooks::retry_now`]).
    retry_now: Notify,
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
fn lane_event(lane: usize) -> &'static str {
    match lane {
        l if l == usize::from(LANE_PRESENCE) => ONLINE_STATUS,
        l if l == usize::from(LANE_NOTIFY) => MSG_NOTIFY,
        _ => MSG_OFFLINE,
    }
}

impl Queue {
    fn key(lane: u8, id: u64) -> Vec<u8> {
        let mut key = Vec::with_capacity(9);
        key.push(lane);
        key.extend_from_slice(&id.to_be_bytes());
        key
    }

    fn encode(name: &str, body: &[u8]) -> Vec<u8> {
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
    fn encode_reference(channel: &ChannelKey, seq: u64, to_uids: &[u8]) -> Vec<u8> {
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

    fn decode(key: Vec<u8>, value: &[u8]) -> Option<Event> {
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
    fn put(&self, lane: u8, name: &'static str, body: &Value, writes: &mut Vec<Write>) -> bool {
        let body = serde_json::to_vec(body).unwrap_or_default();
        self.put_value(lane, name, Self::encode(name, &body), writes)
    }

    /// Queues a `msg.offline` that refers to the stored message at `seq` in `channel`.
    fn put_reference(&self, lane: u8, channel: &ChannelKey, seq: u64, to_uids: &Value, writes: &mut Vec<Write>) {
        let to_uids = serde_json::to_vec(&json!({ "to_uids": to_uids })).unwrap_or_default();
        self.put_value(lane, MSG_OFFLINE, Self::encode_reference(channel, seq, &to_uids), writes);
    }

    fn put_value(&self, lane: u8, name: &'static str, value: Vec<u8>, writes: &mut Vec<Write>) -> bool {
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

impl Webhooks {
    /// Starts the pump and the lanes. `backlog` is what the journal still held at start
    /// (from [`hongyan_store::MessageLog::open_journaled`]); it is processed first.
    pub fn start(
        settings: WebhookSettings,
        core: Arc<Core>,
        kv: Arc<dyn KvBackend>,
        feed: JournalFeed,
        backlog: Vec<Journaled>,
    ) -> Result<Arc<Self>, hongyan_store::StoreError> {
        let lanes = FIRST_OFFLINE_LANE + settings.offline_lanes.max(1);
        let mut next_id = 1;
        let (mut pending, mut pending_bytes) = (0i64, 0i64);
        let lane_states: Vec<LaneState> = (0..lanes).map(|_| LaneState::default()).collect();
        // What waits from before: counted a page at a time, never loaded whole.
        for lane in 0..lanes {
            let mut from = vec![lane];
            let end = vec![lane, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
            loop {
                let rows = kv.scan_range(Table::HookQueue, &from, &end, 1024, hongyan_store::Order::Ascending)?;
                let Some((last, _)) = rows.last() else { break };
                pending += rows.len() as i64;
                lane_states[usize::from(lane)].pending.fetch_add(rows.len() as i64, Ordering::Relaxed);
                pending_bytes += rows.iter().map(|(_, v)| v.len() as i64).sum::<i64>();
                if let Some(id) = last.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) {
                    next_id = next_id.max(id + 1);
                }
                from = last.clone();
                from.push(0);
                if rows.len() < 1024 {
                    break;
                }
            }
        }
        if pending > 0 {
            info!(pending, "webhook events waiting from before the restart");
        }
        let queue = Arc::new(Queue {
            kv,
            lanes: lane_states,
            next_id: AtomicU64::new(next_id),
            pending: AtomicI64::new(pending),
            pending_bytes: AtomicI64::new(pending_bytes),
            max_bytes: i64::try_from(settings.max_queue_bytes).unwrap_or(i64::MAX),
            full_warned_ms: AtomicI64::new(0),
            wake: (0..lanes).map(|_| Notify::new()).collect(),
        });
        let stop = CancellationToken::new();
        let client = app_server_client(settings.timeout)
            .map_err(|e| hongyan_store::StoreError::Engine(format!("webhook HTTP client: {e}")))?;
        let tracker = tokio_util::task::TaskTracker::new();
        let settings = Arc::new(settings);
        for lane in 0..lanes {
            let lane = Lane {
                lane,
                queue: queue.clone(),
                core: core.clone(),
                client: client.clone(),
                settings: settings.clone(),
                stop: stop.clone(),
            };
            tracker.spawn(lane.run());
        }
        tracker.close();
        let JournalFeed { sender, receiver, gate } = feed;
        let pump = Pump {
            settings,
            core,
            queue: queue.clone(),
            notify: Batch::default(),
            presence: Batch::default(),
            journal_done: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("hongyan-webhook-pump".into())
            .spawn({
                let gate = gate.clone();
                move || pump.run(&receiver, &gate, backlog)
            })
            .map_err(|e| hongyan_store::StoreError::Engine(format!("cannot start the webhook pump: {e}")))?;
        Ok(Arc::new(Self {
            input: sender,
            queue,
            gate,
            pump: std::sync::Mutex::new(Some(handle)),
            lanes: tracker,
            stop,
        }))
    }

    /// Each event's queue: what waits, whether posts fail and why.
    pub fn status(&self) -> Vec<EventStatus> {
        let mut out: Vec<EventStatus> = Vec::new();
        for (lane, state) in self.queue.lanes.iter().enumerate() {
            let event = lane_event(lane);
            let at = match out.iter().position(|e| e.event == event) {
                Some(at) => at,
                None => {
                    out.push(EventStatus {
                        event,
                        pending: 0,
                        failing: false,
                        retries: 0,
                        last_error: None,
                        last_error_at_ms: None,
                    });
                    out.len() - 1
                }
            };
            let entry = &mut out[at];
            entry.pending += state.pending.load(Ordering::Relaxed).max(0);
            entry.failing |= state.failing.load(Ordering::Relaxed);
            entry.retries += state.retries.load(Ordering::Relaxed);
            let last = state.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if let Some((at_ms, why)) = last
                && entry.last_error_at_ms.is_none_or(|t| at_ms > t)
            {
                entry.last_error = Some(why);
                entry.last_error_at_ms = Some(at_ms);
            }
        }
        out
    }

    /// Posts the events waiting to be retried now rather than after their wait.
    pub fn retry_now(&self) {
        for lane in &self.queue.lanes {
            lane.retry_now.notify_waiters();
        }
    }

    /// Hands an event from the async side to the pump, or drops it (counted) when the
    /// pump's input is full: a login burst or a flood of unstored messages must not
    /// grow memory or hold up the runtime.
    fn offer(&self, input: Input, event: &'static str) {
        let size = input_size(&input);
        if !self.gate.try_enter(size) {
            metrics::counter!("hongyan_webhook_dropped_total", "event" => event, "why" => "overload").increment(1);
            return;
        }
        let _ = self.input.send(input);
    }

    /// Flushes what the pump holds into the queue and stops the pump and the lanes
    /// (undelivered events stay queued for the next start). Blocking: call it after
    /// the message log is closed, off the async workers.
    pub fn stop(&self) {
        let _ = self.input.send(Input::Stop);
        if let Some(handle) = self.pump.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = handle.join();
        }
        self.stop.cancel();
    }

    /// Waits for the lanes to finish after [`Self::stop`].
    pub async fn wait(&self) {
        self.lanes.wait().await;
    }
}

impl Observer for Webhooks {
    fn presence(&self, conn: &Conn, online: bool, same_flag: usize, total: usize) {
        let entry =
            format!("{}-{}-{}-{}-{}-{}", conn.uid, conn.device_flag, u8::from(online), conn.id, same_flag, total);
        self.offer(Input::Presence(entry), ONLINE_STATUS);
    }

    fn unstored(&self, channel: &ChannelKey, message: &NewMessage, only_to: Option<&[String]>) {
        let input = Input::Unstored {
            channel: channel.clone(),
            message: message.clone(),
            only_to: only_to.map(<[String]>::to_vec),
        };
        self.offer(input, MSG_OFFLINE);
    }
}

/// Entries waiting to become one event.
#[derive(Default)]
struct Batch {
    entries: Vec<Value>,
    /// Journal rows to delete when the batch is written.
    journal: Vec<u64>,
    since: Option<Instant>,
}

impl Batch {
    fn push(&mut self, entry: Value, journal: Option<u64>) {
        self.since.get_or_insert_with(Instant::now);
        self.entries.push(entry);
        self.journal.extend(journal);
    }

    fn deadline(&self, interval: Duration) -> Option<Instant> {
        self.since.map(|t| t + interval)
    }
}

struct Pump {
    settings: Arc<WebhookSettings>,
    core: Arc<Core>,
    queue: Arc<Queue>,
    notify: Batch,
    presence: Batch,
    /// Journal rows whose events are all in this round's writes.
    journal_done: Vec<u64>,
}

impl Pump {
    fn run(mut self, input: &Receiver<Input>, gate: &Gate, backlog: Vec<Journaled>) {
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

    fn take_stored(&mut self, j: Journaled, writes: &mut Vec<Write>, woken: &mut Vec<u8>) {
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

    fn flush_batches(&mut self, stopping: bool, writes: &mut Vec<Write>, woken: &mut Vec<u8>) {
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
    fn offline_events(
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
fn offline_body(stored: &StoredMessage, base: &ChannelKey, settings: &WebhookSettings) -> Value {
    let mut body = message_json(stored, base, &settings.system_uid);
    body["source_id"] = json!(settings.node_id);
    body
}

struct Lane {
    lane: u8,
    queue: Arc<Queue>,
    core: Arc<Core>,
    client: reqwest::Client,
    settings: Arc<WebhookSettings>,
    stop: CancellationToken,
}

impl Lane {
    async fn run(self) {
        loop {
            let (kv, lane) = (self.queue.kv.clone(), self.lane);
            let rows = tokio::task::spawn_blocking(move || kv.scan_prefix(Table::HookQueue, &[lane], LANE_READ)).await;
            let rows = match rows {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    error!(error = %e, lane, "webhook queue unreadable");
                    Vec::new()
                }
                Err(_) => return,
            };
            if rows.is_empty() {
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = self.queue.wake[usize::from(lane)].notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            for (key, value) in rows {
                let Some(event) = Queue::decode(key.clone(), &value) else {
                    error!(lane, "an undecodable webhook event was dropped");
                    self.remove(key, value.len()).await;
                    continue;
                };
                let event = match self.render(event).await {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        self.remove(key, value.len()).await;
                        continue;
                    }
                    Err(()) => {
                        // Storage could not be read: try again in a while, from this event.
                        tokio::select! {
                            () = self.stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        break;
                    }
                };
                if !self.deliver(&event).await {
                    return; // stopping; the event stays queued
                }
                self.remove(event.key, value.len()).await;
            }
        }
    }

    /// Makes the body of an event that refers to a stored message: the message from the
    /// log, with the event's `to_uids`. `None` when the message is gone (retention or
    /// channel deletion removed it first): the event is dropped and counted.
    async fn render(&self, mut event: Event) -> Result<Option<Event>, ()> {
        let Some((channel, seq)) = event.message.clone() else { return Ok(Some(event)) };
        let core = self.core.clone();
        let read = channel.clone();
        let found = tokio::task::spawn_blocking(move || {
            core.log().read(&read, seq, seq + 1, 1, hongyan_store::Order::Ascending)
        })
        .await
        .map_err(|_| ())?
        .map_err(|e| error!(error = %e, "msg.offline: the message could not be read"))?;
        let Some(stored) = found.into_iter().next() else {
            metrics::counter!("hongyan_webhook_dropped_total", "event" => MSG_OFFLINE, "why" => "message_gone")
                .increment(1);
            warn!(id = event.id, seq, "msg.offline dropped: its message was deleted before it was posted");
            return Ok(None);
        };
        let mut body = offline_body(&stored, &base_channel(&channel), &self.settings);
        let to: Value = serde_json::from_slice(&event.body).unwrap_or_default();
        body["to_uids"] = to["to_uids"].clone();
        event.body = serde_json::to_vec(&body).unwrap_or_default();
        Ok(Some(event))
    }

    /// Posts until a 2xx or until the event is too old. False when stopping first.
    async fn deliver(&self, event: &Event) -> bool {
        let mut delay = self.settings.retry_initial;
        let max_age_ms = i64::try_from(self.settings.max_age.as_millis()).unwrap_or(i64::MAX);
        let state = &self.queue.lanes[usize::from(self.lane)];
        loop {
            let failure = match self.post(event).await {
                Ok(()) => {
                    state.failing.store(false, Ordering::Relaxed);
                    let waited = (hongyan_core::now_ms() - event.created_ms).max(0) as f64 / 1000.0;
                    metrics::counter!("hongyan_webhook_sent_total", "event" => event.name).increment(1);
                    metrics::histogram!("hongyan_webhook_latency_seconds", "event" => event.name).record(waited);
                    return true;
                }
                Err(failure) => failure,
            };
            if hongyan_core::now_ms() - event.created_ms > max_age_ms {
                metrics::counter!("hongyan_webhook_dropped_total", "event" => event.name).increment(1);
                warn!(id = event.id, event = event.name, last_failure = %failure, "webhook event dropped after webhook.max_age_secs");
                return true;
            }
            metrics::counter!("hongyan_webhook_retries_total", "event" => event.name).increment(1);
            state.retries.fetch_add(1, Ordering::Relaxed);
            state.failing.store(true, Ordering::Relaxed);
            *state.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((hongyan_core::now_ms(), failure.clone()));
            warn!(id = event.id, event = event.name, failure = %failure, retry_in_ms = delay.as_millis() as u64, "webhook post failed");
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
                () = state.retry_now.notified() => {}
            }
            delay = (delay * 2).min(self.settings.retry_max);
        }
    }

    async fn post(&self, event: &Event) -> Result<(), String> {
        let id = event.id.to_string();
        let mut request = self
            .client
            .post(&self.settings.url)
            .query(&[("event", event.name)])
            .header("content-type", "application/json")
            .header("x-hongyan-event-id", &id)
            .body(event.body.clone());
        if !self.settings.secret.is_empty() {
            request = sign(request, &self.settings.secret, event.name, &id, &event.body);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
            Err(e) => {
                // reqwest's own text names the URL; the cause (refused, timed out…) is
                // further down the chain.
                let mut why = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    why.push_str(": ");
                    why.push_str(&c.to_string());
                    cause = c.source();
                }
                Err(why)
            }
        }
    }

    async fn remove(&self, key: Vec<u8>, size: usize) {
        let queue = self.queue.clone();
        let removed = tokio::task::spawn_blocking(move || {
            // Not fsynced: after a power loss the event is posted again, which
            // at-least-once allows.
            queue.kv.write(vec![Write::Delete(Table::HookQueue, key)], false)
        })
        .await;
        if let Ok(Err(e)) = removed {
            error!(error = %e, "a delivered webhook event could not be removed; it will be posted again");
        }
        let left = self.queue.pending.fetch_sub(1, Ordering::Relaxed) - 1;
        self.queue.lanes[usize::from(self.lane)].pending.fetch_sub(1, Ordering::Relaxed);
        let bytes = self.queue.pending_bytes.fetch_sub(size as i64, Ordering::Relaxed) - size as i64;
        metrics::gauge!("hongyan_webhook_pending_bytes").set(bytes.max(0) as f64);
        metrics::gauge!("hongyan_webhook_pending").set(left.max(0) as f64);
    }
}

/// `v1=<hex>`: the HMAC-SHA256, under `secret`, of `<timestamp>.<event>.<id>.<body>`.
/// Signing the time, the event's name and its id with the body makes a captured post
/// useless elsewhere: a receiver that refuses old timestamps and ids it has seen
/// cannot be replayed to, and an event cannot pass for another.
pub fn signature(secret: &str, timestamp: i64, event: &str, id: &str, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("invariant: HMAC takes any key length");
    for part in [timestamp.to_string().as_bytes(), event.as_bytes(), id.as_bytes()] {
        mac.update(part);
        mac.update(b".");
    }
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// Adds `X-Hongyan-Timestamp` (seconds, now) and `X-Hongyan-Signature` to a request
/// whose event name and id are given (webhook posts and datasource requests alike).
pub(crate) fn sign(
    request: reqwest::RequestBuilder,
    secret: &str,
    event: &str,
    id: &str,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let timestamp = hongyan_core::now_ms() / 1000;
    request
        .header("x-hongyan-timestamp", timestamp.to_string())
        .header("x-hongyan-signature", signature(secret, timestamp, event, id, body))
}

/// An HTTP client for the app server: no redirects followed (a 3xx is a failure, so
/// a compromised or misconfigured receiver cannot point Hongyan at another host).
pub(crate) fn app_server_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none()).build()
}
