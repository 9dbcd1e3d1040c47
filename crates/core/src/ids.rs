//! Message ids: Twitter-style snowflakes (41 bits of milliseconds since 2010-11-04, 10
//! bits of node id, 12 bits of sequence), as WuKongIM generates them. Unique per node
//! and increasing, even if the clock steps back.

use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// The snowflake epoch (Twitter's, as in WuKongIM's generator).
const EPOCH_MS: u64 = 1_288_834_974_657;
const SEQ_BITS: u32 = 12;
const NODE_BITS: u32 = 10;

/// Generates message ids for one node.
#[derive(Debug)]
pub struct Snowflake {
    node: u64,
    /// (last millisecond used, sequence within it).
    state: Mutex<(u64, u64)>,
}

impl Snowflake {
    /// A generator for `node` (0–1023).
    pub fn new(node: u64) -> Self {
        Self { node: node & ((1 << NODE_BITS) - 1), state: Mutex::new((0, 0)) }
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
        ((ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
