//! Message ids: Twitter-style snowflakes (41 bits of milliseconds since 2010-11-04, 10
//! bits of node id, 12 bits of sequence), as WuKongIM generates them. Unique per node
//! and increasing, even if the clock steps back — across restarts too: the time ids
//! may use is reserved durably ahead of use ([`Snowflake::resume`]), and a restarted
//! generator starts after the last reservation, whatever the clock says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far ahead of the clock a reservation reaches, in milliseconds.
pub const RESERVE_AHEAD_MS: u64 = 60_000;

/// Makes a reservation durable: ids may use milliseconds below the value given.
pub type Reserve = Box<dyn Fn(u64) -> bool + Send + Sync>;

/// The snowflake epoch (Twitter's, as in WuKongIM's generator).
const EPOCH_MS: u64 = 1_288_834_974_657;
const SEQ_BITS: u32 = 12;
const NODE_BITS: u32 = 10;

/// Generates message ids for one node.
pub struct Snowflake {
    node: u64,
    /// (last millisecond used, sequence within it).
    state: Mutex<(u64, u64)>,
    /// Ids may use milliseconds below this (durably reserved); `u64::MAX`: no reservations.
    reserved: AtomicU64,
    reserve: Option<Reserve>,
}

impl std::fmt::Debug for Snowflake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snowflake").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Snowflake {
    /// A generator for `node` (0–1023) with nothing kept across restarts.
    pub fn new(node: u64) -> Self {
        Self {
            node: node & ((1 << NODE_BITS) - 1),
            state: Mutex::new((0, 0)),
            reserved: AtomicU64::new(u64::MAX),
            reserve: None,
        }
    }

    /// A generator that continues after `reserved_until` (the last reservation made
    /// before a restart, in ms since the snowflake epoch), so no id of the last run can
    /// come again even if the clock now reads earlier. `reserve` makes a new
    /// reservation durable; it is called now, then by [`Snowflake::extend`] (and, should
    /// that fall behind, by the generator itself).
    pub fn resume(node: u64, reserved_until: u64, reserve: Reserve) -> Option<Self> {
        let start = Self::now_ms().max(reserved_until);
        let generator = Self {
            node: node & ((1 << NODE_BITS) - 1),
            state: Mutex::new((start, (1 << SEQ_BITS) - 1)),
            reserved: AtomicU64::new(start),
            reserve: Some(reserve),
        };
        generator.extend().then_some(generator)
    }

    /// Reserves [`RESERVE_AHEAD_MS`] beyond now (or beyond the last id). Returns whether
    /// the reservation was made durable.
    pub fn extend(&self) -> bool {
        let Some(reserve) = &self.reserve else { return true };
        let last = self.state.lock().unwrap_or_else(PoisonError::into_inner).0;
        let until = Self::now_ms().max(last) + RESERVE_AHEAD_MS;
        if !reserve(until) {
            return false;
        }
        self.reserved.fetch_max(until, Ordering::Relaxed);
        true
    }

    /// The milliseconds since the snowflake epoch an id was made at.
    pub fn millis_of(id: i64) -> u64 {
        (id as u64) >> (NODE_BITS + SEQ_BITS)
    }

    /// Milliseconds since the snowflake epoch, now.
    pub fn epoch_ms() -> u64 {
        Self::now_ms()
    }

    fn now_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64).saturating_sub(EPOCH_MS)
    }

    /// The next id.
    pub fn next_id(&self) -> i64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, seq) = *state;
        // A clock that steps back keeps using the last millisecond: ids stay increasing.
        let now = Self::now_ms().max(last);
        let (ms, seq) = if now == last {
            let next = (seq + 1) & ((1 << SEQ_BITS) - 1);
            // The sequence ran out within this millisecond: borrow the next one.
            if next == 0 { (last + 1, 0) } else { (last, next) }
        } else {
            (now, 0)
        };
        *state = (ms, seq);
        drop(state);
        if ms >= self.reserved.load(Ordering::Relaxed) {
            // The periodic extension fell behind (or storage is failing): reserve now,
            // before the id is used. Rare: one durable write per reservation window.
            if !self.extend() {
                tracing::error!(
                    "message id reservation not stored; ids may repeat after a restart with the clock set back"
                );
            }
        }
        ((ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_restart_with_the_clock_set_back_never_repeats_an_id() {
        let stored = Arc::new(AtomicU64::new(0));
        let keep = |stored: &Arc<AtomicU64>| -> Reserve {
            let stored = stored.clone();
            Box::new(move |until| {
                stored.store(until, Ordering::Relaxed);
                true
            })
        };
        let first = Snowflake::resume(7, 0, keep(&stored)).unwrap();
        let before: Vec<i64> = (0..10_000).map(|_| first.next_id()).collect();
        let reservation = stored.load(Ordering::Relaxed);
        assert!(before.iter().all(|id| Snowflake::millis_of(*id) < reservation), "ids stay inside the reservation");
        drop(first);
        // The clock reads an hour earlier now: the reservation still bounds the restart.
        let second = Snowflake::resume(7, reservation, keep(&stored)).unwrap();
        let after = second.next_id();
        assert!(after > *before.last().unwrap(), "the first id after the restart is above every earlier one");
        assert!(Snowflake::millis_of(after) >= reservation);
        assert!(stored.load(Ordering::Relaxed) > reservation, "and a new reservation was made");
    }

    #[test]
    fn a_reservation_that_cannot_be_stored_refuses_to_start() {
        assert!(Snowflake::resume(7, 0, Box::new(|_| false)).is_none());
    }

    #[test]
    fn ids_increase_and_carry_the_node() {
        let ids = Snowflake::new(1001);
        let mut last = 0;
        for _ in 0..20_000 {
            let id = ids.next_id();
            assert!(id > last);
            assert_eq!((id >> SEQ_BITS) & 1023, 1001);
            last = id;
        }
    }
}
