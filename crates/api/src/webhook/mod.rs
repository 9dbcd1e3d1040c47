//! Webhooks: events to the app server as `POST {url}?event=<name>` with WuKongIM's
//! bodies, delivered at least once, in order per channel, across restarts.
//!
//! Three stages (the pump in `pump.rs`, the durable queue in `queue.rs`, the lanes in
//! `lane.rs`; this file holds the settings, the sources and the status):
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
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use hmac::{Hmac, Mac};
use hongyan_core::Core;
use hongyan_core::hooks::{Observer, OfflineRule};
use hongyan_core::session::Conn;
use hongyan_store::{ChannelKey, Journaled, KvBackend, NewMessage, Table};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

mod lane;
mod pump;
mod queue;

use lane::Lane;
use pump::{Batch, Gate, Input, Pump, input_size};
pub use queue::EventStatus;
use queue::{LaneState, Queue, lane_event};

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
