//! The sets presence keeps: this node's own connections per uid with the deltas it has
//! not yet published ([`Local`]), and what it knows of each other node ([`Peer`]): its
//! uids in buckets, the last delta applied, and which buckets are being read again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{BUCKETS, MASTER, MOST_PENDING, OFFLINE, ONLINE, bucket_of, contribution, state_of};

/// This node's own connections per uid, and the deltas not yet published.
#[derive(Default)]
pub(super) struct Local {
    /// Per uid online here: its connections, and how many are master devices.
    pub(super) counts: HashMap<Arc<str>, (u32, u32)>,
    /// The number of the last delta made.
    pub(super) seq: u64,
    /// The number of the first pending delta.
    pub(super) pending_from: u64,
    pub(super) pending: Vec<(u8, Arc<str>)>,
    /// XOR of the [`contribution`]s of the uids online.
    pub(super) hash: u64,
}

impl Local {
    /// Counts a connection of `uid` (a master device's when `master`) opening or
    /// closing; true when the uid's state changed (a delta was made).
    pub(super) fn count(&mut self, uid: &str, master: bool, opened: bool) -> bool {
        let before = self.counts.get(uid).copied().unwrap_or((0, 0));
        if !opened && before.0 == 0 {
            return false;
        }
        let step = |n: u32, applies: bool| match (applies, opened) {
            (false, _) => n,
            (true, true) => n + 1,
            (true, false) => n.saturating_sub(1),
        };
        let after = (step(before.0, true), step(before.1, master));
        let uid: Arc<str> = match self.counts.get_key_value(uid) {
            Some((key, _)) => key.clone(),
            None => Arc::from(uid),
        };
        if after.0 == 0 {
            self.counts.remove(&uid);
        } else {
            self.counts.insert(uid.clone(), after);
        }
        let (was, now) = (state_of(before), state_of(after));
        if was == now {
            return false;
        }
        self.change(uid, was, now);
        true
    }

    pub(super) fn change(&mut self, uid: Arc<str>, was: u8, now: u8) {
        self.seq += 1;
        self.hash ^= contribution(&uid, was) ^ contribution(&uid, now);
        if self.pending.len() >= MOST_PENDING {
            // The other nodes see the jump and read the set again.
            self.pending.clear();
        }
        if self.pending.is_empty() {
            self.pending_from = self.seq;
        }
        self.pending.push((now, uid));
    }
}

/// What one uid's last known state on a peer is, and from which delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) state: u8,
    pub(super) seq: u64,
}

/// Another node's set as this node knows it.
#[derive(Debug)]
pub(super) struct Peer {
    pub(super) boot: String,
    pub(super) buckets: Vec<HashMap<Arc<str>, Entry>>,
    /// Per bucket, the delta its last snapshot was current to.
    pub(super) snap_seq: Vec<u64>,
    /// One past the last delta applied.
    pub(super) next_seq: u64,
    pub(super) online: u64,
    pub(super) hash: u64,
    pub(super) heard: Instant,
    /// Being read again; while it is, offline uids are kept (with their delta number)
    /// so that an older snapshot cannot bring them back.
    pub(super) syncing: bool,
    /// Needs reading again (set by a gap or a disagreeing digest).
    pub(super) stale: bool,
}

impl Peer {
    pub(super) fn new(boot: &str) -> Self {
        Self {
            boot: boot.to_owned(),
            buckets: (0..BUCKETS).map(|_| HashMap::new()).collect(),
            snap_seq: vec![0; BUCKETS],
            next_seq: 1,
            online: 0,
            hash: 0,
            heard: Instant::now(),
            syncing: false,
            stale: true,
        }
    }

    pub(super) fn set(&mut self, uid: Arc<str>, entry: Entry) {
        let b = bucket_of(&uid);
        let was = self.buckets[b].get(&uid).map_or(OFFLINE, |e| e.state);
        self.hash ^= contribution(&uid, was) ^ contribution(&uid, entry.state);
        match (was != OFFLINE, entry.state != OFFLINE) {
            (false, true) => self.online += 1,
            (true, false) => self.online -= 1,
            _ => {}
        }
        if entry.state != OFFLINE || self.syncing {
            self.buckets[b].insert(uid, entry);
        } else {
            self.buckets[b].remove(&uid);
        }
    }

    /// Applies deltas `first`, `first + 1`, …; marks the peer stale on a gap.
    pub(super) fn apply_deltas(&mut self, first: u64, deltas: Vec<(u8, String)>) {
        if first > self.next_seq {
            self.stale = true;
        }
        let n = deltas.len() as u64;
        for (i, (state, uid)) in deltas.into_iter().enumerate() {
            let seq = first + i as u64;
            let b = bucket_of(&uid);
            if seq < self.next_seq || seq <= self.snap_seq[b] {
                continue;
            }
            if self.buckets[b].get(uid.as_str()).is_some_and(|e| e.seq >= seq) {
                continue;
            }
            self.set(Arc::from(uid), Entry { state, seq });
        }
        self.next_seq = self.next_seq.max(first + n);
    }

    /// Bucket `b` as of delta `seq`: the uids online then, with their states, except
    /// where a later delta already arrived.
    pub(super) fn apply_snapshot(&mut self, b: usize, seq: u64, uids: Vec<(u8, String)>) {
        let old = std::mem::take(&mut self.buckets[b]);
        for (uid, entry) in &old {
            if entry.state != OFFLINE {
                self.hash ^= contribution(uid, entry.state);
                self.online -= 1;
            }
        }
        for (state, uid) in uids {
            if bucket_of(&uid) == b && state != OFFLINE {
                self.set(Arc::from(uid), Entry { state, seq });
            }
        }
        for (uid, entry) in old {
            if entry.seq > seq {
                self.set(uid, entry);
            }
        }
        self.snap_seq[b] = self.snap_seq[b].max(seq);
    }

    /// Marks the peer stale when its digest says it holds something else.
    pub(super) fn check_digest(&mut self, seq: u64, online: u64, hash: u64) {
        if self.syncing {
            return;
        }
        if seq >= self.next_seq || (seq + 1 == self.next_seq && (online, hash) != (self.online, self.hash)) {
            self.stale = true;
        }
    }

    /// After reading every bucket, each current to delta `through` or earlier: the
    /// offline uids kept meanwhile are older than any answer still to come.
    pub(super) fn synced(&mut self, through: u64) {
        self.next_seq = self.next_seq.max(through + 1);
        for bucket in &mut self.buckets {
            bucket.retain(|_, e| e.state != OFFLINE);
        }
    }

    /// Whether `uid` (in bucket `b`) is online here, with a master device if `master`.
    pub(super) fn has(&self, uid: &str, b: usize, master: bool) -> bool {
        let wanted = if master { MASTER } else { ONLINE };
        self.buckets[b].get(uid).is_some_and(|e| e.state >= wanted)
    }
}
