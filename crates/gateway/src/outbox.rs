//! A connection's outbound queue: frames waiting to be written, and a close request.
//!
//! Fan-out pushes encoded frames from any task; the connection's own task drains them.
//! It is bounded in frames and bytes: a peer that does not read fast enough is closed
//! rather than allowed to grow the server's memory. Idle, it allocates nothing.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
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
}

/// What the connection task should do next, taken from the outbox.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub(crate) frames: Vec<Bytes>,
    pub(crate) close: Option<(Instant, CloseReason)>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(limits: OutboxLimits) -> Self {
        Self { state: Mutex::new(State::default()), notify: Notify::new(), limits }
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
        if s.frames.len() >= self.limits.max_frames || s.bytes + frame.len() > self.limits.max_bytes {
            s.frames.clear();
            s.bytes = 0;
            s.close = Some((Instant::now(), CloseReason::SlowReader));
            drop(s);
            self.notify.notify_one();
            return Err(PushError::Full);
        }
        s.bytes += frame.len();
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
    pub(crate) async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes the waiting frames; for tests of code that pushes to an outbox.
    #[doc(hidden)]
    pub fn drain_for_test(&self) -> Vec<Bytes> {
        self.drain().frames
    }

    /// Takes every waiting frame, and the close request if any.
    pub(crate) fn drain(&self) -> Drained {
        let mut s = self.lock();
        s.bytes = 0;
        let frames = std::mem::take(&mut s.frames).into();
        Drained { frames, close: s.close }
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
}
