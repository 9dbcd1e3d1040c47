//! RECVs waiting for their RECVACK.
//!
//! Every stored message written to a connection is remembered, with its encoded frame,
//! until that connection acknowledges it. A scan re-sends the frame, byte for byte, to
//! the same connection once the retry interval has passed, up to a maximum number of
//! times. A connection that goes away takes its entries with it: the client catches up
//! through sync instead. Each connection keeps at most a fixed number of entries (the
//! oldest is given up beyond that), so a client that never acknowledges costs bounded
//! memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::session::Conn;
use bytes::Bytes;
use hongyan_store::ChannelKey;
use tokio::time::Instant;

/// How unacknowledged RECVs are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    /// Time between a RECV (or its last retry) and the next retry.
    pub interval: Duration,
    /// Retries before giving up on a RECV.
    pub max_retries: u32,
    /// Most RECVs remembered per connection.
    pub max_per_connection: usize,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self { interval: Duration::from_secs(60), max_retries: 5, max_per_connection: 1024 }
    }
}

/// Where a command (SyncOnce) message sits in its command channel: a master device's
/// RECVACK moves the user's command cursor there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandPosition {
    /// The command channel.
    pub channel: ChannelKey,
    /// The message's seq in it.
    pub seq: u64,
}

/// What a RECVACK matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acked {
    /// Nothing was waiting (already acknowledged, given up, or never sent).
    Unknown,
    /// A waiting RECV; for a command message, where it sits.
    Recv(Option<CommandPosition>),
}

/// 72 bytes (the rare command position is boxed), so a connection's first few RECVs
/// fit one small allocation.
#[derive(Debug)]
struct Pending {
    message_id: i64,
    frame: Bytes,
    due: Instant,
    retries: u32,
    command: Option<Box<CommandPosition>>,
}

#[derive(Debug)]
struct ConnRetries {
    conn: Weak<Conn>,
    /// Ordered by message id, so the first entry is the oldest. RECVs go out in about
    /// that order and are mostly acknowledged in it: inserts land at the back and acks
    /// at the front, each O(1), where a tree allocated a node of a kilobyte for a
    /// connection's first entry.
    pending: VecDeque<Pending>,
}

const _: () = assert!(std::mem::size_of::<Pending>() <= 72);

impl ConnRetries {
    /// Where `message_id` is or would go: the back or the front without a search, as
    /// a RECV newer than all and an ack of the oldest are the common cases.
    fn position(&self, message_id: i64) -> Result<usize, usize> {
        match (self.pending.front(), self.pending.back()) {
            (_, None) => Err(0),
            (_, Some(last)) if last.message_id < message_id => Err(self.pending.len()),
            (Some(first), _) if first.message_id == message_id => Ok(0),
            _ => self.pending.binary_search_by_key(&message_id, |p| p.message_id),
        }
    }
}

/// What one scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// RECVs re-sent.
    pub resent: usize,
    /// RECVs given up after the last retry.
    pub given_up: usize,
}

/// Shards of the queue, by connection id: a RECV's track and its RECVACK lock one
/// shard, and a scan holds one shard at a time, so fan-out on several cores and a scan
/// of a large backlog do not all wait on one lock.
const SHARDS: usize = 64;

/// Connection ids are the node's own sequence numbers, not anyone's input: a fast
/// hash is safe here (SipHash showed in the fan-out profile).
type Shard = Mutex<HashMap<u64, ConnRetries, foldhash::fast::FixedState>>;

/// The retry queue of this node.
#[derive(Debug)]
pub struct RetryQueue {
    settings: RetrySettings,
    shards: Box<[Shard]>,
}

impl RetryQueue {
    /// An empty queue.
    pub fn new(settings: RetrySettings) -> Self {
        Self { settings, shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect() }
    }

    /// The shard holding `conn_id`'s entries, locked.
    fn lock(&self, conn_id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, ConnRetries, foldhash::fast::FixedState>> {
        lock(&self.shards[(conn_id % SHARDS as u64) as usize])
    }

    /// Remembers that `frame` (a RECV of `message_id`) was written to `conn`. Its bytes
    /// count against the node's held budget (`Outbox::hold`) until it is acknowledged,
    /// given up or the connection is gone.
    pub fn track(&self, conn: &Arc<Conn>, message_id: i64, frame: Bytes, command: Option<CommandPosition>) {
        let mut conns = self.lock(conn.id);
        let entry = conns
            .entry(conn.id)
            .or_insert_with(|| ConnRetries { conn: Arc::downgrade(conn), pending: VecDeque::new() });
        let due = Instant::now() + self.settings.interval;
        conn.outbox.hold(frame.len());
        let pending = Pending { message_id, frame, due, retries: 0, command: command.map(Box::new) };
        match entry.position(message_id) {
            Ok(i) => {
                let replaced = std::mem::replace(&mut entry.pending[i], pending);
                conn.outbox.release(replaced.frame.len());
            }
            Err(i) => {
                entry.pending.insert(i, pending);
                if entry.pending.len() > self.settings.max_per_connection
                    && let Some(oldest) = entry.pending.pop_front()
                {
                    conn.outbox.release(oldest.frame.len());
                    metrics::counter!("hongyan_core_retry_dropped_total", "why" => "connection_full").increment(1);
                }
            }
        }
    }

    /// `conn` acknowledged `message_id`.
    pub fn ack(&self, conn_id: u64, message_id: i64) -> Acked {
        let mut conns = self.lock(conn_id);
        let Some(entry) = conns.get_mut(&conn_id) else { return Acked::Unknown };
        let removed = entry.position(message_id).ok().and_then(|i| entry.pending.remove(i));
        if let (Some(p), Some(conn)) = (&removed, entry.conn.upgrade()) {
            conn.outbox.release(p.frame.len());
        }
        if entry.pending.is_empty() {
            conns.remove(&conn_id);
        }
        drop(conns);
        // The frame is freed outside the shard's lock.
        removed.map_or(Acked::Unknown, |p| Acked::Recv(p.command.map(|c| *c)))
    }

    /// `conn` is gone: forget its entries.
    pub fn forget(&self, conn_id: u64) {
        let Some(entry) = self.lock(conn_id).remove(&conn_id) else { return };
        if let Some(conn) = entry.conn.upgrade() {
            conn.outbox.release(entry.pending.iter().map(|p| p.frame.len()).sum());
        }
    }

    /// RECVs waiting for an ack, over all connections.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).values().map(|c| c.pending.len()).sum::<usize>()).sum()
    }

    /// Whether nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// RECVs waiting for an ack from one connection.
    pub fn pending_for(&self, conn_id: u64) -> usize {
        self.lock(conn_id).get(&conn_id).map_or(0, |c| c.pending.len())
    }

    /// Re-sends every RECV that is due, and gives up on those out of retries.
    pub fn scan(&self, now: Instant) -> ScanOutcome {
        let mut outcome = ScanOutcome::default();
        let mut resend: Vec<(Arc<Conn>, Bytes)> = Vec::new();
        for shard in &self.shards {
            let mut conns = lock(shard);
            conns.retain(|_, entry| {
                let Some(conn) = entry.conn.upgrade() else { return false };
                entry.pending.retain_mut(|p| {
                    if p.due > now {
                        return true;
                    }
                    if p.retries >= self.settings.max_retries {
                        outcome.given_up += 1;
                        conn.outbox.release(p.frame.len());
                        return false;
                    }
                    p.retries += 1;
                    p.due = now + self.settings.interval;
                    resend.push((conn.clone(), p.frame.clone()));
                    true
                });
                !entry.pending.is_empty()
            });
        }
        // Outside the lock: queueing may close a slow connection.
        for (conn, frame) in resend {
            if conn.send_frame(frame).is_ok() {
                outcome.resent += 1;
            }
        }
        outcome
    }
}

fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, HashMap<u64, ConnRetries, foldhash::fast::FixedState>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Outbox, OutboxLimits, TransportKind};
    use hongyan_proto::{DeviceLevel, ProtocolVersion};

    fn conn(id: u64) -> Arc<Conn> {
        conn_counting(id, crate::session::HeldBytes::unlimited())
    }

    fn conn_counting(id: u64, budget: Arc<crate::session::HeldBytes>) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            uid: "u".into(),
            device_flag: 0,
            level: DeviceLevel::Slave,
            device_id: "d".into(),
            version: ProtocolVersion::LATEST,
            cipher: None,
            transport: TransportKind::Tcp,
            remote: "127.0.0.1:1".parse().unwrap(),
            connected_at_ms: 0,
            outbox: Outbox::with_budget(OutboxLimits { max_frames: 64, max_bytes: 1 << 20 }, budget),
            sends_in_flight: tokio::sync::Semaphore::new(8),
        })
    }

    fn settings(max_retries: u32, max_per_connection: usize) -> RetrySettings {
        RetrySettings { interval: Duration::from_secs(60), max_retries, max_per_connection }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_in_every_shard_are_counted_scanned_and_acked() {
        let q = RetryQueue::new(settings(2, 16));
        let conns: Vec<Arc<Conn>> = (0..3 * SHARDS as u64).map(conn).collect();
        for c in &conns {
            q.track(c, 1, Bytes::from_static(b"recv-1"), None);
        }
        assert_eq!(q.len(), conns.len());
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(q.scan(later), ScanOutcome { resent: conns.len(), given_up: 0 });
        for c in &conns {
            assert_eq!(q.pending_for(c.id), 1);
            assert_eq!(q.ack(c.id, 1), Acked::Recv(None));
        }
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn unacked_frames_are_resent_byte_for_byte_until_out_of_retries() {
        let q = RetryQueue::new(settings(2, 16));
        let c = conn(1);
        q.track(&c, 7, Bytes::from_static(b"recv-7"), None);
        assert_eq!(q.scan(Instant::now()), ScanOutcome::default(), "not due yet");
        let mut now = Instant::now();
        for _ in 0..2 {
            now += Duration::from_secs(60);
            assert_eq!(q.scan(now), ScanOutcome { resent: 1, given_up: 0 });
            assert_eq!(c.outbox.drain_for_test(), [Bytes::from_static(b"recv-7")]);
        }
        now += Duration::from_secs(60);
        assert_eq!(q.scan(now), ScanOutcome { resent: 0, given_up: 1 });
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn acks_and_departures_clear_entries() {
        let q = RetryQueue::new(settings(5, 16));
        let (a, b) = (conn(1), conn(2));
        let position = CommandPosition { channel: ChannelKey::new("g", 2 | crate::channel::COMMAND), seq: 4 };
        q.track(&a, 1, Bytes::from_static(b"1"), Some(position.clone()));
        q.track(&a, 2, Bytes::from_static(b"2"), None);
        q.track(&a, 3, Bytes::from_static(b"3"), None);
        q.track(&b, 1, Bytes::from_static(b"x"), None);
        assert_eq!(q.ack(1, 1), Acked::Recv(Some(position)));
        assert_eq!(q.ack(1, 1), Acked::Unknown, "acked once");
        assert_eq!(q.ack(2, 99), Acked::Unknown);
        assert_eq!(q.ack(1, 2), Acked::Recv(None));
        assert_eq!((q.pending_for(1), q.pending_for(2)), (1, 1));
        q.forget(2);
        assert_eq!(q.len(), 1);
        drop(a);
        // A connection that is gone is dropped by the next scan, due or not.
        assert_eq!(q.scan(Instant::now() + Duration::from_secs(120)), ScanOutcome::default());
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_acks_costs_bounded_memory() {
        let q = RetryQueue::new(settings(5, 3));
        let c = conn(1);
        for id in 1..=10 {
            q.track(&c, id, Bytes::from_static(b"f"), None);
        }
        assert_eq!(q.pending_for(1), 3);
        assert!([10, 9, 8].iter().all(|id| q.ack(1, *id) != Acked::Unknown), "the newest are kept");
    }

    #[tokio::test(start_paused = true)]
    async fn recvs_tracked_and_acked_out_of_order_are_matched_by_id() {
        let budget = crate::session::HeldBytes::new(1 << 20, 1 << 10);
        let q = RetryQueue::new(settings(5, 4));
        let c = conn_counting(1, budget.clone());
        for id in [5, 3, 9, 7] {
            q.track(&c, id, Bytes::from(vec![0; id as usize]), None);
        }
        q.track(&c, 9, Bytes::from(vec![0; 9]), None); // the same RECV again: one entry
        assert_eq!((q.pending_for(1), budget.used()), (4, 24));
        assert_eq!(q.ack(1, 7), Acked::Recv(None));
        assert_eq!(q.ack(1, 4), Acked::Unknown);
        assert_eq!(q.ack(1, 3), Acked::Recv(None));
        // Over the cap, the lowest id goes, wherever the new one lands.
        for id in [8, 1, 6] {
            q.track(&c, id, Bytes::from(vec![0; id as usize]), None);
        }
        assert_eq!(q.pending_for(1), 4);
        assert_eq!(q.ack(1, 1), Acked::Unknown, "the oldest was given up");
        assert_eq!(budget.used(), 5 + 6 + 8 + 9);
        for id in [9, 5, 8, 6] {
            assert_eq!(q.ack(1, id), Acked::Recv(None), "{id}");
        }
        assert!(q.is_empty());
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_awaiting_an_ack_count_against_the_node_budget_until_settled() {
        let budget = crate::session::HeldBytes::new(1 << 20, 1 << 10);
        let q = RetryQueue::new(settings(1, 2));
        let (a, b) = (conn_counting(1, budget.clone()), conn_counting(2, budget.clone()));
        q.track(&a, 1, Bytes::from_static(&[0; 100]), None);
        q.track(&a, 2, Bytes::from_static(&[0; 10]), None);
        q.track(&b, 1, Bytes::from_static(&[0; 1]), None);
        assert_eq!(budget.used(), 111);
        q.track(&a, 3, Bytes::from_static(&[0; 5]), None);
        assert_eq!(budget.used(), 16, "the oldest dropped past max_per_connection is given back");
        q.ack(1, 2);
        assert_eq!(budget.used(), 6);
        q.forget(2);
        assert_eq!(budget.used(), 5);
        // Out of retries: given back too (one retry, then given up).
        let _ = a.outbox.drain_for_test();
        q.scan(Instant::now() + Duration::from_secs(61));
        let _ = a.outbox.drain_for_test();
        q.scan(Instant::now() + Duration::from_secs(200));
        assert_eq!(budget.used(), 0);
    }
}
