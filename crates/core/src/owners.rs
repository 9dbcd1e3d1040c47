//! Which node appends to a channel's log: on a single node, this one; in a cluster,
//! the channel's owner (`docs/cluster.md`, "Channel ownership and seqs").
//!
//! A channel belongs to the live node that [`home_of`] names for its key. That node
//! writes a **claim** to the channel's row of [`Table::ChanOwner`] (its id, its boot
//! and an epoch one higher than the claim it replaces) with a compare-and-set
//! ([`Write::Expect`] on the row it read), and then appends to the channel's log under
//! that claim ([`Fence`]): every batch expects the row unchanged. A node that lost the
//! channel — paused past its lease, partitioned, or no longer its home — therefore
//! stores nothing more in it once the new owner has claimed it, whatever it still
//! believes; its batches are refused and its senders resend through the new owner.
//!
//! Liveness and placement come from the [`Topology`]; correctness rests only on the
//! claim row, checked in the same transaction as the messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use hongyan_store::{ChannelKey, Fence, KvBackend, StoreError, Table, Write};

use crate::cluster::{Topology, home_of};

/// The claim format's first byte.
const CLAIM_V1: u8 = 1;

/// Most claims held in memory; beyond, they are forgotten and read back from storage
/// on next use (a claim that is still this boot's is taken back without a new epoch).
const MAX_CLAIMS: usize = 262_144;

/// How often a claim is retried when other nodes claim the same channel meanwhile.
const CLAIM_ATTEMPTS: usize = 3;

/// A node's claim on a channel, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The owner's `node_id`.
    pub node: u64,
    /// One more than the claim it replaced: a count of ownership changes.
    pub epoch: u64,
    /// The owner process's boot id: a restarted node claims anew.
    pub boot: String,
}

impl Claim {
    /// The stored form: format byte, node and epoch (big-endian), the boot id.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(17 + self.boot.len());
        v.push(CLAIM_V1);
        v.extend_from_slice(&self.node.to_be_bytes());
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.extend_from_slice(self.boot.as_bytes());
        v
    }

    /// The claim in a stored row, or `None` for a row of an unknown format.
    pub fn decode(v: &[u8]) -> Option<Self> {
        let (&format, rest) = v.split_first()?;
        if format != CLAIM_V1 || rest.len() < 16 {
            return None;
        }
        let node = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let epoch = u64::from_be_bytes(rest[8..16].try_into().ok()?);
        let boot = String::from_utf8(rest[16..].to_vec()).ok()?;
        Some(Self { node, epoch, boot })
    }
}

/// Where appends to a channel go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// This node appends, under the fence when in a cluster.
    Local(Option<Fence>),
    /// Another node owns the channel: appends are forwarded to it.
    Remote(u64),
}

/// The channels this node owns. See the module documentation.
pub struct Owners {
    kv: Arc<dyn KvBackend>,
    topology: Arc<dyn Topology>,
    /// False on a single node: everything is local, with no claim.
    clustered: bool,
    claims: Mutex<HashMap<ChannelKey, Fence>>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners").field("clustered", &self.clustered).field("owned", &self.owned()).finish()
    }
}

impl Owners {
    /// Ownership over `kv` among the nodes of `topology`; `clustered` false places
    /// every channel here without claims (a single node).
    pub fn new(kv: Arc<dyn KvBackend>, topology: Arc<dyn Topology>, clustered: bool) -> Self {
        Self { kv, topology, clustered, claims: Mutex::default() }
    }

    /// Where appends to `channel` go. Claims the channel when it is this node's and not
    /// claimed yet (a read and a compare-and-set in storage: blocking).
    pub fn place(&self, channel: &ChannelKey) -> Result<Placement, StoreError> {
        if !self.clustered {
            return Ok(Placement::Local(None));
        }
        let local = self.topology.local_id();
        let live = self.topology.live();
        let key = channel.encoded();
        let home = home_of(&key, &live).map_or(local, |n| n.id);
        if home != local {
            self.release(channel);
            return Ok(Placement::Remote(home));
        }
        if let Some(fence) = self.claims().get(channel) {
            return Ok(Placement::Local(Some(fence.clone())));
        }
        let boot = self.topology.local_boot_id();
        let fence = self.claim(key, local, boot)?;
        let mut claims = self.claims();
        if claims.len() >= MAX_CLAIMS {
            claims.clear();
        }
        claims.insert(channel.clone(), fence.clone());
        metrics::gauge!("hongyan_cluster_owned_channels").set(claims.len() as f64);
        Ok(Placement::Local(Some(fence)))
    }

    /// Where appends to `channel` go, when that needs no storage: `None` when this node
    /// must claim the channel first ([`Self::place`]).
    pub fn placed(&self, channel: &ChannelKey) -> Option<Placement> {
        if !self.clustered {
            return Some(Placement::Local(None));
        }
        let local = self.topology.local_id();
        let home = home_of(&channel.encoded(), &self.topology.live()).map_or(local, |n| n.id);
        if home != local {
            self.release(channel);
            return Some(Placement::Remote(home));
        }
        self.claims().get(channel).map(|fence| Placement::Local(Some(fence.clone())))
    }

    /// Forgets this node's claim on `channel` (an append under it was refused, or the
    /// channel moved): the next placement reads the row again.
    /// Whether node `node` is live by the membership this node last read.
    pub fn is_live(&self, node: u64) -> bool {
        self.topology.live().iter().any(|n| n.id == node)
    }

    /// Forgets the claim on `channel` (an append under it was refused).
    pub fn release(&self, channel: &ChannelKey) {
        let mut claims = self.claims();
        if claims.remove(channel).is_some() {
            metrics::gauge!("hongyan_cluster_owned_channels").set(claims.len() as f64);
        }
    }

    /// Channels this node holds a claim on.
    pub fn owned(&self) -> usize {
        self.claims().len()
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelKey, Fence>> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the channel's row for this boot: kept as it is when it is already this
    /// boot's, else replaced with the next epoch if nobody changed it meanwhile.
    fn claim(&self, key: Vec<u8>, node: u64, boot: String) -> Result<Fence, StoreError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let stored = self.kv.get(Table::ChanOwner, &key)?;
            let current = stored.as_deref().and_then(Claim::decode);
            if let (Some(value), Some(c)) = (&stored, &current)
                && c.node == node
                && c.boot == boot
            {
                return Ok(Fence { key, value: value.clone() });
            }
            let epoch = current.map_or(0, |c| c.epoch) + 1;
            let value = Claim { node, epoch, boot: boot.clone() }.encode();
            let writes = match stored {
                Some(old) => vec![
                    Write::Expect(Table::ChanOwner, key.clone(), old),
                    Write::Put(Table::ChanOwner, key.clone(), value.clone()),
                ],
                None => vec![Write::Insert(Table::ChanOwner, key.clone(), value.clone())],
            };
            match self.kv.write(writes, true) {
                Ok(()) => {
                    metrics::counter!("hongyan_cluster_channel_claims_total").increment(1);
                    return Ok(Fence { key, value });
                }
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict("other nodes keep claiming the channel".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeInfo;
    use hongyan_store::{Durability, MemoryBackend, MessageLog, NewMessage};
    use std::sync::RwLock;

    /// A membership the test moves by hand.
    #[derive(Debug)]
    struct Nodes {
        local: u64,
        boot: String,
        live: RwLock<Vec<u64>>,
    }

    impl Topology for Nodes {
        fn local_id(&self) -> u64 {
            self.local
        }
        fn local_boot_id(&self) -> String {
            self.boot.clone()
        }
        fn nodes(&self) -> Vec<NodeInfo> {
            self.live().to_vec()
        }
        fn live(&self) -> Arc<[NodeInfo]> {
            self.live.read().unwrap().iter().map(|&id| NodeInfo::placed_only(id)).collect()
        }
    }

    fn node(kv: &Arc<dyn KvBackend>, id: u64, boot: &str, live: &[u64]) -> (Arc<Nodes>, Owners) {
        let nodes = Arc::new(Nodes { local: id, boot: boot.into(), live: RwLock::new(live.to_vec()) });
        let owners = Owners::new(kv.clone(), nodes.clone(), true);
        (nodes, owners)
    }

    fn message(id: i64) -> NewMessage {
        NewMessage {
            message_id: id,
            timestamp_ms: 0,
            from_uid: "u".into(),
            client_msg_no: String::new(),
            header: 0,
            setting: 0,
            expire: 0,
            topic: None,
            payload: bytes::Bytes::from_static(b"m"),
        }
    }

    #[test]
    fn claims_round_trip_and_unknown_formats_are_not_claims() {
        let c = Claim { node: 7, epoch: 3, boot: "b00t".into() };
        assert_eq!(Claim::decode(&c.encode()), Some(c));
        assert_eq!(Claim::decode(&[2, 0, 0]), None);
        assert_eq!(Claim::decode(&[]), None);
    }

    #[test]
    fn a_single_node_places_everything_here_without_claims() {
        let kv: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        let (nodes, _) = node(&kv, 1, "a", &[1, 2, 3]);
        let owners = Owners::new(kv.clone(), nodes, false);
        assert_eq!(owners.place(&ChannelKey::new("g", 2)).unwrap(), Placement::Local(None));
        assert!(kv.get(Table::ChanOwner, &ChannelKey::new("g", 2).encoded()).unwrap().is_none());
    }

    /// Every channel is placed on its home; the home claims it once; when the home
    /// leaves, the next node claims it with the next epoch; the old owner's appends
    /// under its claim are refused, and it forwards once it sees the new membership.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_home_claims_and_a_stale_owner_stores_nothing() {
        let kv: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        let (n1_nodes, n1) = node(&kv, 1, "boot1", &[1, 2]);
        let (_, n2) = node(&kv, 2, "boot2", &[1, 2]);
        // A channel whose home among {1, 2} is node 1.
        let g = (0..100)
            .map(|i| ChannelKey::new(format!("g{i}"), 2))
            .find(|g| matches!(n1.place(g), Ok(Placement::Local(_))))
            .unwrap();
        assert_eq!(n2.place(&g).unwrap(), Placement::Remote(1));
        let Placement::Local(Some(fence1)) = n1.place(&g).unwrap() else { panic!("node 1 owns it") };
        assert_eq!(Claim::decode(&fence1.value).unwrap(), Claim { node: 1, epoch: 1, boot: "boot1".into() });
        assert_eq!(n1.owned(), 1);

        let log1 = MessageLog::open(kv.clone(), Durability::Fsync).unwrap();
        let log2 = MessageLog::open(kv.clone(), Durability::Fsync).unwrap();
        let append = |log: &MessageLog, fence: Fence, id| {
            log.enqueue_fenced(g.clone(), message(id), Vec::new(), Some(fence), None).unwrap()
        };
        assert_eq!(append(&log1, fence1.clone(), 1).await.unwrap().ids(), (1, 1));

        // Node 1 is paused past its lease: node 2 sees only itself and takes over,
        // while node 1 still believes it owns the channel.
        let (_, n2) = node(&kv, 2, "boot2", &[2]);
        let Placement::Local(Some(fence2)) = n2.place(&g).unwrap() else { panic!("node 2 owns it now") };
        assert_eq!(Claim::decode(&fence2.value).unwrap().epoch, 2);
        assert_eq!(append(&log2, fence2, 2).await.unwrap().ids(), (2, 2));
        assert_eq!(n1.place(&g).unwrap(), Placement::Local(Some(fence1.clone())), "node 1 has not noticed");
        // Twice: the first refusal empties node 1's counters, so the second try takes a
        // seq no row holds yet, and only the claim refuses it.
        for _ in 0..2 {
            assert!(matches!(append(&log1, fence1.clone(), 3).await, Err(StoreError::Conflict(_))));
        }
        n1.release(&g);

        // Node 1 resumes under a new boot and sees both nodes again: it claims anew.
        let (_, n1) = node(&kv, 1, "boot1b", &[1, 2]);
        let Placement::Local(Some(fence3)) = n1.place(&g).unwrap() else { panic!("node 1 is home again") };
        assert_eq!(Claim::decode(&fence3.value).unwrap(), Claim { node: 1, epoch: 3, boot: "boot1b".into() });
        assert_eq!(append(&log1, fence3, 4).await.unwrap().ids(), (4, 3));
        drop(n1_nodes);
    }

    #[test]
    fn a_claim_of_this_boot_is_taken_back_without_a_new_epoch() {
        let kv: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        let (_, n1) = node(&kv, 1, "boot1", &[1]);
        let g = ChannelKey::new("g", 2);
        let Placement::Local(Some(first)) = n1.place(&g).unwrap() else { panic!("alone, node 1 owns all") };
        n1.release(&g);
        assert_eq!(n1.owned(), 0);
        assert_eq!(n1.place(&g).unwrap(), Placement::Local(Some(first)));
    }
}
