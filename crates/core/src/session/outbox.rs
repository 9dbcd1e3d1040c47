//! A connection's outbound queue: frames waiting to be written, and a close request.
//!
//! Fan-out pushes encoded frames from any task; the connection's own task drains them.
//! It is bounded in frames and bytes: a peer that does not read fast enough is closed
//! rather than allowed to grow the server's memory. Idle, it allocates nothing.
//!
//! Every outbox also counts against one node-wide [`HeldBytes`] budget: the bytes it
//! has queued plus the bytes held on its behalf elsewhere (RECVs written and awaiting
//! their RECVACK in the retry queue, [`Outbox::hold`]). Per-connection caps alone would
//! let thousands of connections that never read each fill their queue; once the node
//! total is over its budget, a connection holding more than its share is closed as a
//! slow reader on its next frame, while connections that keep up go on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why the server closes a connection. Also a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Another login took this connection's place (a DISCONNECT was sent).
    Kicked,
    /// Replaced by a login with the same device id (no DISCONNECT).
    Replaced,
    /// The outbound queue overflowed: the peer reads too slowly.
    SlowReader,
    /// The server is shutting down.
    Shutdown,
    /// Closed by an operator or an API call.
    Requested,
}

impl CloseReason {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Kicked => "kicked",
            Self::Replaced => "replaced",
            Self::SlowReader => "slow_reader",
            Self::Shutdown => "shutdown",
            Self::Requested => "requested",
        }
    }
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue was full; the connection is now being closed as a slow reader.
    #[error("outbound queue full; closing the connection")]
    Full,
    /// The connection is closing or closed.
    #[error("connection is closing")]
    Closed,
}

/// Limits of one outbox.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    /// Most frames waiting at once.
    pub max_frames: usize,
    /// Most bytes waiting at once.
    pub max_bytes: usize,
}

/// The node-wide budget of bytes that connections hold: frames queued to write, and
/// frames written but awaiting their RECVACK.
#[derive(Debug)]
pub struct HeldBytes {
    /// Above this total, connections holding more than `share` are closed.
    limit: usize,
    /// What one connection may hold whatever the total.
    share: usize,
    used: AtomicUsize,
}

impl HeldBytes {
    /// A budget of `limit` bytes in total; over it, a connection holding more than
    /// `share` is closed as a slow reader.
    pub fn new(limit: usize, share: usize) -> Arc<Self> {
        Arc::new(Self { limit, share, used: AtomicUsize::new(0) })
    }

    /// No node-wide limit (tests; the per-connection caps still apply).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX, usize::MAX)
    }

    /// Bytes held now, over all connections.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        // Saturating: accounting must never wrap into "everything is used".
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(n)));
    }

    /// Whether a connection already holding `held` may take `more` bytes.
    fn allows(&self, held: usize, more: usize) -> bool {
        held + more <= self.share || self.used().saturating_add(more) <= self.limit
    }
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<(Instant, CloseReason)>,
}

/// The outbound queue of one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limits: OutboxLimits,
    /// The node-wide budget this outbox counts against.
    budget: Arc<HeldBytes>,
    /// Bytes held for this connection outside the queue ([`Outbox::hold`]).
    held_elsewhere: AtomicUsize,
}

/// What the connection task should do next, taken from the outbox.
#[derive(Debug, Default)]
pub struct Drained {
    /// Frames to write, in order.
    pub frames: Vec<Bytes>,
    /// When to close the socket and why, if a close was requested.
    pub close: Option<(Instant, CloseReason)>,
}

impl Outbox {
    /// An empty outbox with no node-wide budget.
    pub fn new(limits: OutboxLimits) -> Self {
        Self::with_budget(limits, HeldBytes::unlimited())
    }

    /// An empty outbox counting against `budget`.
    pub fn with_budget(limits: OutboxLimits, budget: Arc<HeldBytes>) -> Self {
        Self { state: Mutex::new(State::default()), notify: Notify::new(), limits, budget, held_elsewhere: 0.into() }
    }

    /// Counts `n` bytes held for this connection outside the queue (a RECV awaiting its
    /// RECVACK) against the node's budget, until [`Outbox::release`].
    pub fn hold(&self, n: usize) {
        self.held_elsewhere.fetch_add(n, Ordering::Relaxed);
        self.budget.add(n);
    }

    /// Gives back `n` bytes counted by [`Outbox::hold`].
    pub fn release(&self, n: usize) {
        let before = self
            .held_elsewhere
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| Some(h.saturating_sub(n)))
            .unwrap_or_default();
        self.budget.sub(before.min(n));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one frame. On overflow the connection is closed as a slow reader.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut s = self.lock();
        if s.close.is_some() {
            return Err(PushError::Closed);
        }
        let held = s.bytes + self.held_elsewhere.load(Ordering::Relaxed);
        if s.frames.len() >= self.limits.max_frames
            || s.bytes + frame.len() > self.limits.max_bytes
            || !self.budget.allows(held, frame.len())
        {
            s.frames.clear();
            self.budget.sub(std::mem::take(&mut s.bytes));
            s.close = Some((Instant::now(), CloseReason::SlowReader));
            drop(s);
            self.notify.notify_one();
            return Err(PushError::Full);
        }
        s.bytes += frame.len();
        self.budget.add(frame.len());
        s.frames.push_back(frame);
        drop(s);
        self.notify.notify_one();
        Ok(())
    }

    /// Queues `last_frame` (if any) past the limits, then closes `after` from now. Later
    /// pushes are refused. An earlier close request is kept if it is sooner.
    pub fn close_after(&self, last_frame: Option<Bytes>, after: Duration, reason: CloseReason) {
        let mut s = self.lock();
        let at = Instant::now() + after;
        if s.close.is_some_and(|(sooner, _)| sooner <= at) {
            return;
        }
        if let Some(frame) = last_frame {
            s.bytes += frame.len();
            self.budget.add(frame.len());
            s.frames.push_back(frame);
        }
        s.close = Some((at, reason));
        drop(s);
        self.notify.notify_one();
    }

    /// Whether a close has been requested.
    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Frames waiting to be written.
    pub fn queued_frames(&self) -> usize {
        self.lock().frames.len()
    }

    /// Waits until something was pushed or a close was requested.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes the waiting frames; for tests of code that pushes to an outbox.
    #[doc(hidden)]
    pub fn drain_for_test(&self) -> Vec<Bytes> {
        self.drain().frames
    }

    /// Takes every waiting frame, and the close request if any.
    pub fn drain(&self) -> Drained {
        let mut s = self.lock();
        self.budget.sub(std::mem::take(&mut s.bytes));
        let frames = std::mem::take(&mut s.frames).into();
        Drained { frames, close: s.close }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let queued = self.state.get_mut().map_or(0, |s| s.bytes);
        self.budget.sub(queued + *self.held_elsewhere.get_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox::new(OutboxLimits { max_frames, max_bytes })
    }

    #[test]
    fn frames_come_out_in_order() {
        let o = outbox(8, 1024);
        o.push(Bytes::from_static(b"a")).unwrap();
        o.push(Bytes::from_static(b"b")).unwrap();
        let d = o.drain();
        assert_eq!(d.frames, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(d.close.is_none());
        assert!(o.drain().frames.is_empty());
    }

    #[test]
    fn overflow_closes_as_slow_reader_and_drops_the_backlog() {
        let o = outbox(2, 1024);
        o.push(Bytes::from_static(b"1")).unwrap();
        o.push(Bytes::from_static(b"2")).unwrap();
        assert_eq!(o.push(Bytes::from_static(b"3")), Err(PushError::Full));
        assert_eq!(o.push(Bytes::from_static(b"4")), Err(PushError::Closed));
        let d = o.drain();
        assert!(d.frames.is_empty());
        assert_eq!(d.close.map(|c| c.1), Some(CloseReason::SlowReader));
    }

    #[test]
    fn byte_limit_counts_too() {
        let o = outbox(100, 10);
        o.push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(o.push(Bytes::from_static(b"123456")), Err(PushError::Full));
    }

    #[tokio::test(start_paused = true)]
    async fn kick_frame_is_queued_then_close_is_scheduled() {
        let o = outbox(1, 1);
        o.close_after(Some(Bytes::from_static(b"bye")), Duration::from_secs(2), CloseReason::Kicked);
        let d = o.drain();
        assert_eq!(d.frames, [Bytes::from_static(b"bye")]);
        let (at, reason) = d.close.unwrap();
        assert_eq!(reason, CloseReason::Kicked);
        assert_eq!(at - Instant::now(), Duration::from_secs(2));
        // A later, softer request does not postpone it.
        o.close_after(None, Duration::from_secs(10), CloseReason::Requested);
        assert_eq!(o.drain().close.unwrap().1, CloseReason::Kicked);
    }

    #[test]
    fn over_the_node_budget_a_connection_above_its_share_is_closed_and_others_go_on() {
        let budget = HeldBytes::new(100, 30);
        let limits = OutboxLimits { max_frames: 100, max_bytes: 1000 };
        let (slow, fast) = (Outbox::with_budget(limits, budget.clone()), Outbox::with_budget(limits, budget.clone()));
        // Under the budget a connection may hold more than its share.
        for _ in 0..9 {
            slow.push(Bytes::from_static(&[0; 10])).unwrap();
        }
        slow.hold(10);
        assert_eq!(budget.used(), 100);
        // Over it: the slow one (100 held) is closed, its queue given back...
        assert_eq!(slow.push(Bytes::from_static(&[0; 10])), Err(PushError::Full));
        assert_eq!(slow.drain().close.map(|c| c.1), Some(CloseReason::SlowReader));
        assert_eq!(budget.used(), 10);
        // ...and one within its share goes on even when the total is over.
        slow.hold(95);
        fast.push(Bytes::from_static(&[0; 20])).unwrap();
        assert_eq!(fast.drain().frames.len(), 1);
        assert_eq!(budget.used(), 105);
        drop(slow);
        assert_eq!(budget.used(), 0, "a connection gone gives back what was held for it");
        fast.hold(5);
        fast.release(5);
        fast.release(5);
        assert_eq!(budget.used(), 0, "releasing more than held never goes below zero");
    }
}
