//! Which uids are connected to which node: the core's [`Presence`] for a cluster,
//! kept in memory on every node from what the others publish over NATS
//! (`docs/cluster.md`, "Presence").
//!
//! * Each node counts its own connections per uid, and how many of them are master
//!   devices. A change of a uid's *state* — offline, online, online with a master
//!   device — is a *delta*, numbered 1, 2, 3… per boot of the node, published on
//!   `hy.<cluster>.presence` as soon as the previous publish is done (so in batches
//!   under load).
//! * Every second each node also publishes a *digest*: its boot, the number of its
//!   last delta, how many uids it has online and a hash of them; and at once when a
//!   node that just started says hello.
//! * Another node applies the deltas. A gap in the numbers, a digest that names a
//!   delta it never got or disagrees with what it holds, or a node (or boot) it has not
//!   heard of makes it read that node's set again, in 256 buckets of uids
//!   (`hy.<cluster>.presence.snap.<node>`, request/reply). A bucket's answer names the
//!   delta it is current to; deltas up to it are skipped for that bucket, later ones
//!   applied, whichever arrives first.
//! * A node not heard from (no digest) for 3.5 s is dropped, as are the uids of a boot
//!   that is no longer the node's.
//!
//! Nothing correct rests on it: a node missing from the answer for a uid means that
//! device gets the message by sync instead of at once; an extra node costs one
//! message that finds nobody there.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hongyan_core::cluster::Presence;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::wire::{get_str, put_str};

mod sets;

use sets::{Local, Peer};

/// How many buckets a node's set is read back in.
const BUCKETS: usize = 256;
/// How often a node publishes its digest.
const DIGEST_EVERY: Duration = Duration::from_secs(1);
/// A node with no digest for this long is dropped.
const SILENT: Duration = Duration::from_millis(3500);
/// Deltas not yet published, at most; past it they are dropped and the numbers jump,
/// so the other nodes read the set again.
const MOST_PENDING: usize = 65_536;
/// Deltas in one message.
const DELTAS_PER_MESSAGE: usize = 2048;
/// How long one bucket's answer may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// FNV-1a, 64 bits: the uid's bucket and its share of a digest's hash.
fn hash_uid(uid: &str) -> u64 {
    uid.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn bucket_of(uid: &str) -> usize {
    (hash_uid(uid) % BUCKETS as u64) as usize
}

/// Offline.
const OFFLINE: u8 = 0;
/// Online, no master device.
const ONLINE: u8 = 1;
/// Online with a master device.
const MASTER: u8 = 2;

/// A uid's share of a digest's hash in `state`.
fn contribution(uid: &str, state: u8) -> u64 {
    if state == OFFLINE { 0 } else { hash_uid(uid).wrapping_add(u64::from(state)) }
}

/// The state of a uid with `all` connections, `masters` of them master devices.
fn state_of((all, masters): (u32, u32)) -> u8 {
    match (all, masters) {
        (0, _) => OFFLINE,
        (_, 0) => ONLINE,
        _ => MASTER,
    }
}

struct Inner {
    node_id: u64,
    boot_id: String,
    bus: Bus,
    local: Mutex<Local>,
    /// Held while deltas or a snapshot answer are published, so that an answer
    /// current to delta n is sent before delta n + 1.
    order: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Publish the digest at the next wake (a node just started and asked for it).
    digest_soon: std::sync::atomic::AtomicBool,
    peers: RwLock<HashMap<u64, Peer>>,
}

/// The presence of uids on every node of the cluster, as this node knows it.
#[derive(Clone)]
pub struct PresenceBook {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PresenceBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceBook").field("node_id", &self.inner.node_id).finish_non_exhaustive()
    }
}

impl PresenceBook {
    /// Starts publishing this node's presence and following the other nodes', until
    /// `stop`.
    pub async fn start(bus: Bus, node_id: u64, boot_id: String, stop: CancellationToken) -> Result<Self, String> {
        let client = bus.client().clone();
        let mut heard = client.subscribe(bus.subject("presence")).await.map_err(|e| e.to_string())?;
        let mut asked =
            client.subscribe(bus.subject(&format!("presence.snap.{node_id}"))).await.map_err(|e| e.to_string())?;
        let inner = Arc::new(Inner {
            node_id,
            boot_id,
            bus,
            local: Mutex::new(Local::default()),
            order: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            digest_soon: std::sync::atomic::AtomicBool::new(false),
            peers: RwLock::new(HashMap::new()),
        });
        let book = Self { inner };
        let (publisher, stopping) = (book.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DIGEST_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let digest = tokio::select! {
                    () = stopping.cancelled() => break,
                    () = publisher.inner.wake.notified() => {
                        publisher.inner.digest_soon.swap(false, std::sync::atomic::Ordering::Relaxed)
                    }
                    _ = tick.tick() => true,
                };
                publisher.publish(digest).await;
                if digest {
                    publisher.drop_silent();
                }
            }
        });
        let (answering, stopping) = (book.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    () = stopping.cancelled() => break,
                    next = asked.next() => match next { Some(r) => r, None => break },
                };
                if let (Some(reply), Some(&b)) = (request.reply, request.payload.first()) {
                    answering.answer(reply, usize::from(b)).await;
                }
            }
        });
        // Asks every node for its digest now, rather than within a second: a node
        // that just started learns who is where before it owns anything.
        let mut hello = BytesMut::with_capacity(48);
        hello.put_u8(2);
        hello.put_u64(node_id);
        let _ = put_str(&mut hello, &book.inner.boot_id);
        if let Err(e) = book.inner.bus.client().publish(book.inner.bus.subject("presence"), hello.freeze()).await {
            tracing::debug!("presence hello not sent: {e}");
        }
        let following = book.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => break,
                    next = heard.next() => match next { Some(m) => m, None => break },
                };
                following.heard(message.payload);
            }
        });
        Ok(book)
    }

    /// Publishes the pending deltas and, when `digest`, the digest.
    async fn publish(&self, digest: bool) {
        let inner = &self.inner;
        let _order = inner.order.lock().await;
        let (first, deltas, summary) = {
            let mut local = inner.local.lock().unwrap_or_else(PoisonError::into_inner);
            let deltas = std::mem::take(&mut local.pending);
            (local.pending_from, deltas, (local.seq, local.counts.len() as u64, local.hash))
        };
        let client = inner.bus.client();
        let subject = inner.bus.subject("presence");
        for (i, chunk) in deltas.chunks(DELTAS_PER_MESSAGE).enumerate() {
            let mut out = BytesMut::with_capacity(64 + chunk.len() * 16);
            out.put_u8(0);
            out.put_u64(inner.node_id);
            let _ = put_str(&mut out, &inner.boot_id);
            out.put_u64(first + (i * DELTAS_PER_MESSAGE) as u64);
            out.put_u32(chunk.len() as u32);
            for (state, uid) in chunk {
                out.put_u8(*state);
                let _ = put_str(&mut out, uid);
            }
            if let Err(e) = client.publish(subject.clone(), out.freeze()).await {
                tracing::debug!("presence deltas not sent: {e}");
            }
        }
        if digest {
            let (seq, online, hash) = summary;
            let mut out = BytesMut::with_capacity(64);
            out.put_u8(1);
            out.put_u64(inner.node_id);
            let _ = put_str(&mut out, &inner.boot_id);
            out.put_u64(seq);
            out.put_u64(online);
            out.put_u64(hash);
            if let Err(e) = client.publish(subject, out.freeze()).await {
                tracing::debug!("presence digest not sent: {e}");
            }
        }
    }

    /// Answers a request for bucket `b` of this node's set.
    async fn answer(&self, reply: async_nats::Subject, b: usize) {
        if b >= BUCKETS {
            return;
        }
        let inner = &self.inner;
        let _order = inner.order.lock().await;
        let mut out = BytesMut::new();
        {
            let local = inner.local.lock().unwrap_or_else(PoisonError::into_inner);
            let uids: Vec<(&Arc<str>, u8)> = local
                .counts
                .iter()
                .filter(|(u, _)| bucket_of(u) == b)
                .map(|(u, counts)| (u, state_of(*counts)))
                .collect();
            let _ = put_str(&mut out, &inner.boot_id);
            out.put_u64(local.seq);
            out.put_u32(uids.len() as u32);
            for (uid, state) in uids {
                out.put_u8(state);
                let _ = put_str(&mut out, uid);
            }
        }
        if let Err(e) = inner.bus.client().publish(reply, out.freeze()).await {
            tracing::debug!("a presence snapshot was not sent: {e}");
        }
    }

    /// Applies a delta or digest another node published.
    fn heard(&self, mut input: Bytes) {
        if input.remaining() < 9 {
            return;
        }
        let (kind, node) = (input.get_u8(), input.get_u64());
        let Some(boot) = get_str(&mut input) else { return };
        if node == self.inner.node_id {
            return;
        }
        if kind == 2 {
            // A node started: publish the digest at once.
            self.inner.digest_soon.store(true, std::sync::atomic::Ordering::Relaxed);
            self.inner.wake.notify_one();
            return;
        }
        if input.remaining() < 8 {
            return;
        }
        let seq = input.get_u64();
        let resync = {
            let mut peers = self.inner.peers.write().unwrap_or_else(PoisonError::into_inner);
            let peer = peers.entry(node).or_insert_with(|| Peer::new(&boot));
            if peer.boot != boot {
                *peer = Peer::new(&boot);
            }
            peer.heard = Instant::now();
            match kind {
                0 => {
                    let Some(deltas) = decode_states(&mut input) else { return };
                    peer.apply_deltas(seq, deltas);
                }
                1 if input.remaining() >= 16 => peer.check_digest(seq, input.get_u64(), input.get_u64()),
                _ => return,
            }
            let resync = peer.stale && !peer.syncing;
            if resync {
                peer.syncing = true;
            }
            resync
        };
        if resync {
            let book = self.clone();
            tokio::spawn(async move { book.read_again(node, boot).await });
        }
    }

    /// Reads node `node`'s whole set again, bucket by bucket, until a pass completes
    /// with no new gap (or the node, or its boot, is gone).
    async fn read_again(&self, node: u64, boot: String) {
        metrics::counter!("hongyan_cluster_presence_resyncs_total").increment(1);
        let client = self.inner.bus.client().clone();
        let subject = self.inner.bus.subject(&format!("presence.snap.{node}"));
        loop {
            if !self.with_peer(node, &boot, |p| p.stale = false) {
                return;
            }
            let mut through = 0;
            let mut complete = true;
            for b in 0..BUCKETS {
                let asked = client.request(subject.clone(), Bytes::from(vec![b as u8]));
                let answer = match tokio::time::timeout(SNAPSHOT_TIMEOUT, asked).await {
                    Ok(Ok(answer)) => answer.payload,
                    _ => {
                        complete = false;
                        break;
                    }
                };
                let Some((their_boot, seq, uids)) = decode_snapshot(answer) else {
                    complete = false;
                    break;
                };
                if their_boot != boot {
                    return;
                }
                through = through.max(seq);
                if !self.with_peer(node, &boot, |p| p.apply_snapshot(b, seq, uids)) {
                    return;
                }
            }
            let mut again = !complete;
            let present = self.with_peer(node, &boot, |p| {
                if complete {
                    p.synced(through);
                }
                again |= p.stale;
                if !again {
                    p.syncing = false;
                }
            });
            if !present || !again {
                return;
            }
            if !complete {
                tokio::time::sleep(DIGEST_EVERY).await;
            }
        }
    }

    /// Runs `f` on node `node`'s entry if it still has boot `boot`.
    fn with_peer(&self, node: u64, boot: &str, f: impl FnOnce(&mut Peer)) -> bool {
        let mut peers = self.inner.peers.write().unwrap_or_else(PoisonError::into_inner);
        match peers.get_mut(&node) {
            Some(peer) if peer.boot == boot => {
                f(peer);
                true
            }
            _ => false,
        }
    }

    /// Forgets the nodes not heard from for a while.
    fn drop_silent(&self) {
        let mut peers = self.inner.peers.write().unwrap_or_else(PoisonError::into_inner);
        peers.retain(|node, peer| {
            let keep = peer.heard.elapsed() < SILENT;
            if !keep {
                tracing::info!(node, "presence of a silent node forgotten");
            }
            keep
        });
        metrics::gauge!("hongyan_cluster_presence_nodes").set(peers.len() as f64);
    }

    /// The other nodes this node knows a set for (for tests and `/cluster/nodes`).
    pub fn known_nodes(&self) -> Vec<u64> {
        let peers = self.inner.peers.read().unwrap_or_else(PoisonError::into_inner);
        let mut nodes: Vec<u64> = peers.keys().copied().collect();
        nodes.sort_unstable();
        nodes
    }
}

/// `(state, uid)` pairs: a count, then each as a state byte and a string; a count
/// the input cannot hold and an unknown state are refused.
fn decode_states(input: &mut Bytes) -> Option<Vec<(u8, String)>> {
    if input.remaining() < 4 {
        return None;
    }
    let n = input.get_u32() as usize;
    if n > input.remaining() / 5 {
        return None;
    }
    let mut deltas = Vec::with_capacity(n);
    for _ in 0..n {
        if input.remaining() < 1 {
            return None;
        }
        let state = input.get_u8();
        if state > MASTER {
            return None;
        }
        deltas.push((state, get_str(input)?));
    }
    Some(deltas)
}

/// A bucket's answer: the node's boot, the delta it is current to, the uids' states.
type Snapshot = (String, u64, Vec<(u8, String)>);

fn decode_snapshot(mut input: Bytes) -> Option<Snapshot> {
    let boot = get_str(&mut input)?;
    if input.remaining() < 8 {
        return None;
    }
    let seq = input.get_u64();
    Some((boot, seq, decode_states(&mut input)?))
}

impl Presence for PresenceBook {
    fn connected(&self, uid: &str, master: bool) {
        let changed = self.inner.local.lock().unwrap_or_else(PoisonError::into_inner).count(uid, master, true);
        if changed {
            self.inner.wake.notify_one();
        }
    }

    fn disconnected(&self, uid: &str, master: bool) {
        let changed = self.inner.local.lock().unwrap_or_else(PoisonError::into_inner).count(uid, master, false);
        if changed {
            self.inner.wake.notify_one();
        }
    }

    fn nodes_with(&self, uids: &mut dyn Iterator<Item = &str>) -> Vec<u64> {
        let peers = self.inner.peers.read().unwrap_or_else(PoisonError::into_inner);
        if peers.is_empty() {
            return Vec::new();
        }
        let mut found = HashSet::new();
        for uid in uids {
            let b = bucket_of(uid);
            for (node, peer) in peers.iter() {
                if !found.contains(node) && peer.has(uid, b, false) {
                    found.insert(*node);
                }
            }
            if found.len() == peers.len() {
                break;
            }
        }
        let mut nodes: Vec<u64> = found.into_iter().collect();
        nodes.sort_unstable();
        nodes
    }

    fn elsewhere(&self, uid: &str, master: bool) -> bool {
        let peers = self.inner.peers.read().unwrap_or_else(PoisonError::into_inner);
        let b = bucket_of(uid);
        peers.values().any(|p| p.has(uid, b, master))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(p: &Peer, uid: &str) -> bool {
        p.has(uid, bucket_of(uid), false)
    }

    fn d(state: u8, uid: &str) -> (u8, String) {
        (state, uid.to_owned())
    }

    fn fresh() -> Peer {
        let mut p = Peer::new("b1");
        p.synced(0);
        p.stale = false;
        p
    }

    #[test]
    fn deltas_in_order_keep_the_set_and_its_digest() {
        let mut p = fresh();
        p.apply_deltas(1, vec![d(ONLINE, "a"), d(MASTER, "b")]);
        p.apply_deltas(3, vec![d(OFFLINE, "a"), d(ONLINE, "b")]);
        assert!(!online(&p, "a") && online(&p, "b"));
        assert!(!p.has("b", bucket_of("b"), true), "b's master device left");
        assert!(!p.stale);
        p.check_digest(4, 1, contribution("b", ONLINE));
        assert!(!p.stale, "an agreeing digest");
        p.check_digest(4, 1, contribution("b", MASTER));
        assert!(p.stale, "a disagreeing digest");
    }

    #[test]
    fn a_gap_or_a_digest_ahead_marks_the_peer_stale() {
        let mut p = fresh();
        p.apply_deltas(2, vec![d(ONLINE, "a")]);
        assert!(p.stale, "delta 1 never came");
        let mut q = fresh();
        q.apply_deltas(1, vec![d(ONLINE, "a")]);
        q.check_digest(2, 1, contribution("a", ONLINE));
        assert!(q.stale, "the digest names delta 2, which never came");
    }

    #[test]
    fn a_snapshot_and_deltas_agree_whichever_arrives_first() {
        // The node had "a" and "b" (with a master device) online at delta 4; delta 5
        // takes "a" offline and delta 6 brings "c" online.
        let all = || vec![d(ONLINE, "a"), d(MASTER, "b")];
        for deltas_first in [false, true] {
            let mut p = Peer::new("b1");
            p.syncing = true;
            if deltas_first {
                p.apply_deltas(5, vec![d(OFFLINE, "a"), d(ONLINE, "c")]);
            }
            for b in 0..BUCKETS {
                p.apply_snapshot(b, 4, all().into_iter().filter(|(_, u)| bucket_of(u) == b).collect());
            }
            if !deltas_first {
                // Deltas up to 4 arriving late are skipped; 5 and 6 apply.
                p.apply_deltas(3, vec![d(ONLINE, "a"), d(ONLINE, "x"), d(OFFLINE, "a"), d(ONLINE, "c")]);
            }
            p.synced(4);
            assert!(!online(&p, "a") && online(&p, "b") && online(&p, "c"), "deltas first: {deltas_first}");
            assert!(p.has("b", bucket_of("b"), true), "b's master device");
            assert!(!online(&p, "x"), "delta 4 was before the snapshot");
            assert_eq!(p.online, 2);
            assert_eq!(p.hash, contribution("b", MASTER) ^ contribution("c", ONLINE));
            assert!(p.buckets.iter().all(|b| b.values().all(|e| e.state != OFFLINE)), "no offline entries kept");
        }
    }

    #[test]
    fn local_counts_make_a_delta_only_when_a_uids_state_changes() {
        let mut local = Local::default();
        assert!(local.count("a", false, true), "a's first connection");
        assert!(!local.count("a", false, true), "a second one changes nothing");
        assert!(local.count("a", true, true), "a master device");
        assert!(local.count("b", true, true));
        assert_eq!((local.pending_from, local.seq), (1, 3));
        let states: Vec<(u8, &str)> = local.pending.iter().map(|(s, u)| (*s, &**u)).collect();
        assert_eq!(states, [(ONLINE, "a"), (MASTER, "a"), (MASTER, "b")]);
        local.pending.clear();
        assert!(local.count("a", true, false), "the master device left");
        assert!(!local.count("a", false, false));
        assert!(local.count("a", false, false), "a's last connection");
        assert!(!local.count("a", false, false), "a close of an unknown uid is ignored");
        assert_eq!((local.pending_from, local.seq), (4, 5));
        assert_eq!(local.hash, contribution("b", MASTER));
        assert!(!local.counts.contains_key("a"));
    }

    #[test]
    fn forged_counts_and_states_are_refused_before_allocating() {
        let mut out = BytesMut::new();
        out.put_u32(u32::MAX);
        assert_eq!(decode_states(&mut out.freeze()), None);
        let mut out = BytesMut::new();
        out.put_u32(1);
        out.put_u8(9);
        put_str(&mut out, "a").unwrap();
        assert_eq!(decode_states(&mut out.freeze()), None, "no state 9");
        let mut out = BytesMut::new();
        put_str(&mut out, "boot").unwrap();
        out.put_u64(1);
        out.put_u32(u32::MAX);
        assert_eq!(decode_snapshot(out.freeze()), None);
    }
}
