//! What the core needs to know about the other nodes, as an interface the cluster
//! layer implements (`hongyan-cluster`), and the single-node answer.
//!
//! The placement rule lives here, once: a key (a uid today, a channel with the
//! ownership slice) belongs to the live node with the highest rendezvous score
//! ([`home_of`]), so every node that sees the same membership answers the same, and a
//! node joining or leaving moves only the keys it wins or held (`docs/cluster.md`).

use std::sync::Arc;

/// Where clients and the app server reach a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    /// `host:port` of the TCP listener, as clients reach it.
    pub tcp_addr: String,
    /// `ws://host:port`, or empty.
    pub ws_addr: String,
    /// `wss://host:port`, or empty.
    pub wss_addr: String,
    /// The TCP address for clients inside the network (`/route?intranet=1`).
    pub intranet_tcp_addr: String,
    /// The HTTP API, as the app server reaches it.
    pub api_addr: String,
}

/// A node as the membership knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its `node_id`.
    pub id: u64,
    /// Random per start of the process holding the id.
    pub boot_id: String,
    /// Whether it holds a live lease (and has published its addresses).
    pub online: bool,
    /// When the process holding the id started (ms since the Unix epoch, the
    /// membership's clock).
    pub started_at_ms: u64,
    /// Its last heartbeat (ms since the Unix epoch, the membership's clock).
    pub heartbeat_at_ms: u64,
    /// How long ago its last heartbeat was, by the membership's clock.
    pub heartbeat_age_ms: u64,
    /// Its addresses.
    pub addrs: NodeAddrs,
    /// Client connections at its last heartbeat.
    pub connections: u64,
    /// Channels it owned at its last heartbeat.
    pub owned_channels: u64,
    /// Whether it reached the cluster's message bus at its last heartbeat (always true
    /// for a single node, which needs none).
    pub bus_connected: bool,
}

impl NodeInfo {
    /// A live node known by its id alone: what placement ([`home_of`]) reads.
    pub fn placed_only(id: u64) -> Self {
        Self {
            id,
            boot_id: String::new(),
            online: true,
            started_at_ms: 0,
            heartbeat_at_ms: 0,
            heartbeat_age_ms: 0,
            addrs: NodeAddrs::default(),
            connections: 0,
            owned_channels: 0,
            bus_connected: true,
        }
    }
}

/// Who the nodes are. Implemented by the cluster layer's membership, and by
/// [`SingleNode`] when there is no cluster.
pub trait Topology: Send + Sync + std::fmt::Debug {
    /// This node's id.
    fn local_id(&self) -> u64;
    /// This process's boot id (empty on a single node).
    fn local_boot_id(&self) -> String;
    /// Every node known, live or not, ordered by id.
    fn nodes(&self) -> Vec<NodeInfo>;
    /// The live nodes, ordered by id: what keys are placed on. Never empty while this
    /// node is serving (a node always places on itself when it knows of no other).
    fn live(&self) -> Arc<[NodeInfo]>;
}

/// A SEND handed to the channel's owner on another node: what the owner needs to
/// admit and store it as if it had arrived there. The payload is plaintext (the
/// receiving node opened it with its connection's keys); the message id was made by
/// the receiving node, so it is unique in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedSend {
    /// The sender's uid (for the app server's sends, as it named it; empty for the
    /// system uid).
    pub from_uid: String,
    /// Sent by the app server (`/message/send`: no sender checks) rather than a client.
    pub from_app: bool,
    /// The target as the sender named it: for person chat, the peer's uid.
    pub channel_id: String,
    /// The target's type.
    pub channel_type: u8,
    /// The id the receiving node gave the message.
    pub message_id: i64,
    /// Header flag bits (DUP cleared).
    pub header: u8,
    /// The setting byte.
    pub setting: u8,
    /// The sender's idempotency key (may be empty for clients).
    pub client_msg_no: String,
    /// Seconds until the message expires, 0 = never.
    pub expire: u32,
    /// The topic, when the setting says so.
    pub topic: Option<String>,
    /// The plaintext payload.
    pub payload: bytes::Bytes,
    /// The sending connection (none for the app server's sends).
    pub origin: Origin,
}

/// What the owner answered a [`ForwardedSend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// Stored (or recognised as a resend): the message's id and seq. Seq 0 for a
    /// message that is not stored (NoPersist).
    Stored {
        /// The stored message's id (the original's, for a resend).
        message_id: i64,
        /// Its seq.
        seq: u64,
    },
    /// Refused with this reason code; nothing was stored.
    Refused(hongyan_proto::ReasonCode),
    /// The node asked does not own the channel (its membership differs); nothing was
    /// stored.
    NotOwner,
}

/// Why a forward has no outcome.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// It never reached a node that would handle it (no node listening, the bus
    /// down): nothing was stored.
    #[error("not delivered: {0}")]
    NotDelivered(String),
    /// No answer in time: it may or may not have been stored.
    #[error("no answer: {0}")]
    NoAnswer(String),
}

/// A forward in flight.
pub type ForwardFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ForwardOutcome, ForwardError>> + Send>>;

/// Carries SENDs to their channel's owner on another node. Implemented by the cluster
/// layer over NATS request/reply; a single node has none.
pub trait Forwarder: Send + Sync + std::fmt::Debug {
    /// Hands `send` to node `node` and waits for its outcome.
    fn forward(&self, node: u64, send: ForwardedSend) -> ForwardFuture;
}

/// A change other nodes must hear of: they cache what it changed, or hold
/// connections it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// A channel's attributes or member lists.
    Channel(hongyan_store::ChannelKey),
    /// The system accounts.
    SystemAccounts,
    /// A login on the sending node: the connections of the same user it displaces by
    /// the kick rules (a master login: every other device with its flag; any login:
    /// the same device), among those opened before it, are closed.
    Login {
        /// The user.
        uid: String,
        /// The login's device flag.
        device_flag: u8,
        /// The login's device id.
        device_id: String,
        /// The login's device level.
        level: hongyan_proto::DeviceLevel,
        /// When it connected (ms since the Unix epoch, the sending node's clock).
        at_ms: i64,
    },
    /// A user's connections (of one device flag, or all) are closed with a DISCONNECT.
    Kick {
        /// The user.
        uid: String,
        /// The device flag, or every flag.
        device_flag: Option<u8>,
        /// The DISCONNECT's reason code.
        reason: hongyan_proto::ReasonCode,
        /// The DISCONNECT's text.
        text: String,
        /// How long the socket stays open after the DISCONNECT.
        delay_ms: u64,
    },
    /// One connection is closed (`/conn/kick`, `/conn/remove`) by the node it is on.
    CloseConnection {
        /// The node the connection is on.
        node: u64,
        /// Its id there.
        conn_id: u64,
        /// Its user.
        uid: String,
        /// With DISCONNECT(ConnectKick) first, rather than just closed.
        kick: bool,
    },
}

/// Tells the other nodes of changes (best effort, after the change is stored).
pub trait ChangeNotifier: Send + Sync + std::fmt::Debug {
    /// Tells every other node that `what` changed.
    fn changed(&self, what: Changed);
}

/// Where a message's sending connection is: that connection does not get the message
/// back. `conn` 0 is none (the app server's sends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The node the connection is on.
    pub node: u64,
    /// The connection's id on that node.
    pub conn: u64,
}

/// A message handed to another node for its own connections: what the owner (or, for
/// an online-only message, the node it arrived at) delivers there instead of once per
/// recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDelivery {
    /// The channel it is stored in (a command channel for SyncOnce messages).
    pub channel: hongyan_store::ChannelKey,
    /// Its seq; 0 for an online-only message.
    pub seq: u64,
    /// The seq of the message this node sent the same node before on this channel (0:
    /// none it remembers). A receiver that got less reads the gap from storage.
    pub prev_seq: u64,
    /// The sending connection.
    pub origin: Origin,
    /// The recipients, when not the channel's (an online-only send to a list).
    pub only_to: Option<Vec<String>>,
    /// The message.
    pub message: hongyan_store::NewMessage,
}

/// Which uids have connections on which other nodes. Implemented by the cluster layer
/// (deltas and digests over NATS); a single node has none.
pub trait Presence: Send + Sync + std::fmt::Debug {
    /// A connection of `uid` (a master device's when `master`) opened on this node.
    fn connected(&self, uid: &str, master: bool);
    /// A connection of `uid` on this node closed.
    fn disconnected(&self, uid: &str, master: bool);
    /// The other nodes where at least one of `uids` has a connection, ascending.
    fn nodes_with(&self, uids: &mut dyn Iterator<Item = &str>) -> Vec<u64>;
    /// Whether `uid` has a connection (a master device's when `master`) on another
    /// node.
    fn elsewhere(&self, uid: &str, master: bool) -> bool;
}

/// A delivery on its way to another node.
pub type DeliverFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Carries messages to other nodes for their connections (at most once: a lost one is
/// healed by the receiver's gap check and by clients' sync). Waits while the carrier's
/// buffer is full, which slows the fan-out and through it the senders.
pub trait Deliverer: Send + Sync + std::fmt::Debug {
    /// Hands `delivery` to node `node`.
    fn deliver(&self, node: u64, delivery: &RemoteDelivery) -> DeliverFuture;
}

/// The live node a key belongs to: the highest rendezvous score, ties (which need a
/// 64-bit collision) to the lower id. `None` only for an empty list.
pub fn home_of<'a>(key: &[u8], live: &'a [NodeInfo]) -> Option<&'a NodeInfo> {
    let hashed = fnv1a(key);
    live.iter().max_by(|a, b| score(hashed, a.id).cmp(&score(hashed, b.id)).then(b.id.cmp(&a.id)))
}

/// A key's score on a node: the key's hash mixed with the node id through a 64-bit
/// finaliser, so that each node's ranking of keys is independent of the others'.
fn score(key_hash: u64, node: u64) -> u64 {
    mix(key_hash ^ mix(node.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// FNV-1a, 64 bits: fixed forever, since every node of every version must agree.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The topology of a node that is not in a cluster: itself, always online.
pub struct SingleNode {
    node: NodeInfo,
    live: Arc<[NodeInfo]>,
    connections: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for SingleNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleNode").field("node", &self.node).finish_non_exhaustive()
    }
}

impl SingleNode {
    /// Node `id` at `addrs`, started now; `connections` counts its client connections.
    pub fn new(id: u64, addrs: NodeAddrs, connections: Box<dyn Fn() -> u64 + Send + Sync>) -> Self {
        let now = u64::try_from(crate::now_ms()).unwrap_or(0);
        let node = NodeInfo {
            id,
            boot_id: String::new(),
            online: true,
            started_at_ms: now,
            heartbeat_at_ms: now,
            heartbeat_age_ms: 0,
            addrs,
            connections: 0,
            owned_channels: 0,
            bus_connected: true,
        };
        Self { live: Arc::from(vec![node.clone()]), node, connections }
    }
}

impl Topology for SingleNode {
    fn local_id(&self) -> u64 {
        self.node.id
    }

    fn local_boot_id(&self) -> String {
        self.node.boot_id.clone()
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        let now = u64::try_from(crate::now_ms()).unwrap_or(0);
        vec![NodeInfo { heartbeat_at_ms: now, connections: (self.connections)(), ..self.node.clone() }]
    }

    fn live(&self) -> Arc<[NodeInfo]> {
        self.live.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeInfo {
        NodeInfo::placed_only(id)
    }

    fn homes(keys: &[String], live: &[NodeInfo]) -> Vec<u64> {
        keys.iter().map(|k| home_of(k.as_bytes(), live).unwrap().id).collect()
    }

    #[test]
    fn the_hash_is_fixed() {
        // Every node of every version must place keys the same way: these values may
        // never change.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let live: Vec<NodeInfo> = (1..=3).map(node).collect();
        // Placements computed once and written down.
        assert_eq!(homes(&["u1".into(), "u2".into(), "u3".into(), "alice".into()], &live), [3, 3, 1, 2]);
        assert_eq!(home_of(b"x", &[]), None);
    }

    #[test]
    fn keys_spread_evenly() {
        let live: Vec<NodeInfo> = (1..=3).map(node).collect();
        let keys: Vec<String> = (0..30_000).map(|i| format!("user{i}")).collect();
        let placed = homes(&keys, &live);
        for id in 1..=3 {
            let share = placed.iter().filter(|h| **h == id).count();
            assert!((9_000..11_000).contains(&share), "node {id} got {share} of 30000");
        }
    }

    #[test]
    fn a_node_joining_or_leaving_moves_only_its_keys() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("u{i}")).collect();
        let three: Vec<NodeInfo> = [1, 2, 5].into_iter().map(node).collect();
        let four: Vec<NodeInfo> = [1, 2, 5, 9].into_iter().map(node).collect();
        let before = homes(&keys, &three);
        let after = homes(&keys, &four);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(*a, 9, "a key moved between two nodes that stayed");
                moved += 1;
            }
        }
        assert!((4_000..6_000).contains(&moved), "{moved} of 20000 keys moved to the new node");
        // The order of the list does not matter.
        let shuffled: Vec<NodeInfo> = [9, 5, 1, 2].into_iter().map(node).collect();
        assert_eq!(homes(&keys, &shuffled), after);
    }

    #[test]
    fn a_single_node_is_its_own_home() {
        let single = SingleNode::new(7, NodeAddrs::default(), Box::new(|| 3));
        assert_eq!(home_of(b"anyone", &single.live()).unwrap().id, 7);
        let nodes = single.nodes();
        assert_eq!((nodes.len(), nodes[0].connections, nodes[0].online), (1, 3, true));
    }
}
