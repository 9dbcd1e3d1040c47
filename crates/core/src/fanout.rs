//! Fan-out: from a stored (or online-only) message to a RECV on every online
//! connection of its recipients, on this node and, in a cluster, on the others
//! (`docs/cluster.md`, "Delivery across nodes").
//!
//! A message is delivered by the node that stored it (or, online only, received it):
//! to its own connections, and once to each other node where a recipient has a
//! connection ([`Presence`]), which delivers it to its own. Each node delivers a
//! channel's messages on one shard, so in the order they reach it. Core NATS may lose
//! a delivery between nodes: every delivery names the seq its sender sent the same
//! node before on that channel, and a receiver that did not get it reads the gap from
//! storage and delivers it first, to the connections that were already open when it
//! was sent. Clients close any remaining gap by syncing, as after every reconnect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::session::Conn;
use bytes::Bytes;
use hongyan_proto::{HeaderFlags, Packet, Recv, Setting};
use hongyan_store::{ChannelKey, Order};
use tracing::warn;

use crate::channel::{PERSON, base_channel, is_command, person_channel_members};
use crate::channels::ChannelState;
use crate::cluster::{Deliverer, Origin, Presence, RemoteDelivery};
use crate::retry::CommandPosition;
use crate::{Core, Delivery};

/// Channels whose last seq sent to (or received from) each node is remembered; past
/// this the memory is dropped and the next delivery of each starts afresh (a gap then
/// goes unnoticed here and is closed by clients' sync).
const REMEMBERED_CHANNELS: usize = 65_536;
/// The most messages one gap is read back for; a longer gap is left to clients' sync.
const MOST_HEALED: usize = 64;

/// How a delivery reached this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Stored (or received, online only) here: delivered here and to other nodes.
    Here,
    /// From the node that stored it: delivered here only.
    FromNode,
    /// Read back from storage to close a gap: delivered here only, to the connections
    /// that were open when it was sent (the others got it, or will, by sync).
    Healed,
}

/// Who a message is for (borrowed from the delivery where it can be: this is read
/// once per message on the fan-out path).
enum Audience<'a> {
    /// A list of uids.
    List(&'a [String]),
    /// The one or two members of a person chat, `(a, b)`.
    Pair(&'a str, Option<&'a str>),
    /// The subscribers of this channel.
    Members(Arc<ChannelState>),
}

impl Audience<'_> {
    fn uids(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Self::List(uids) => Box::new(uids.iter().map(String::as_str)),
            Self::Pair(a, b) => Box::new(std::iter::once(*a).chain(*b)),
            Self::Members(state) => Box::new(state.subscribers.iter().map(String::as_str)),
        }
    }
}

/// What this node remembers of deliveries between nodes, per channel.
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// The last seq sent to each node, per channel.
    sent: Mutex<HashMap<(ChannelKey, u64), u64>>,
    /// The last seq received from another node, per channel.
    received: Mutex<HashMap<ChannelKey, u64>>,
    /// Where uids are connected on the other nodes.
    pub(crate) presence: std::sync::OnceLock<Arc<dyn Presence>>,
    /// Carries deliveries to the other nodes.
    pub(crate) deliverer: std::sync::OnceLock<Arc<dyn Deliverer>>,
}

/// Remembers `value` under `key`, forgetting everything once the map is full; returns
/// what was there.
fn remember<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, u64>>, key: K, value: u64) -> Option<u64> {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= REMEMBERED_CHANNELS && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value)
}

impl Core {
    /// Delivers messages to and from the other nodes of a cluster: `presence` says
    /// where uids are connected, `deliverer` carries the messages. Call once, before
    /// serving.
    pub fn join_delivery(&self, presence: Arc<dyn Presence>, deliverer: Arc<dyn Deliverer>) {
        let _ = self.links.presence.set(presence);
        let _ = self.links.deliverer.set(deliverer);
    }

    /// Whether `uid` has a connection on another node, as far as this node knows.
    pub fn online_elsewhere(&self, uid: &str) -> bool {
        self.links.presence.get().is_some_and(|p| p.elsewhere(uid, false))
    }

    /// Where this node's own connections come from.
    pub(crate) fn here(&self, conn: u64) -> Origin {
        Origin { node: self.settings.node_id, conn }
    }

    /// Who `d` is for: both members of a person chat, or the subscribers of the
    /// channel (of its base channel, for a command channel), or its list.
    async fn audience<'a>(self: &Arc<Self>, d: &'a Delivery) -> Option<Audience<'a>> {
        if let Some(uids) = &d.only_to {
            return Some(Audience::List(uids));
        }
        // A person chat, or its command channel: the pair is in the channel id.
        if d.channel.channel_type & !crate::channel::COMMAND == PERSON {
            return match person_channel_members(&d.channel.channel_id) {
                Some((a, b)) if a == b => Some(Audience::Pair(a, None)),
                Some((a, b)) => Some(Audience::Pair(a, Some(b))),
                None => None,
            };
        }
        let base = base_channel(&d.channel);
        let states = self.channel_states(vec![base]).await.ok()?;
        states.into_iter().next().map(Audience::Members)
    }

    /// The connections on this node `audience` has. The cost follows whichever is
    /// smaller, the member list or the users online.
    fn local_connections(&self, audience: &Audience<'_>) -> Vec<Arc<Conn>> {
        let mut conns = Vec::new();
        match audience {
            Audience::List(uids) => self.registry.extend_with_connections(uids.iter().map(String::as_str), &mut conns),
            Audience::Pair(a, b) => self.registry.extend_with_connections([*a].into_iter().chain(*b), &mut conns),
            Audience::Members(state) => {
                let subscribers = &state.subscribers;
                if subscribers.len() > self.registry.user_count() {
                    return self.registry.connections_where(|uid| subscribers.contains(uid));
                }
                conns.reserve(subscribers.len().min(self.registry.len()));
                self.registry.extend_with_connections(subscribers.iter().map(|u| &**u), &mut conns);
            }
        }
        conns
    }

    /// Sends one message to every online connection of its recipients: here, and when
    /// it arrived here, on the other nodes.
    pub(crate) async fn deliver(self: &Arc<Self>, d: Delivery) {
        let Some(audience) = self.audience(&d).await else { return };
        let mut connections = self.local_connections(&audience);
        if d.arrival == Arrival::Healed {
            // Not to the sender's devices: which of them sent it is not known here.
            let from = d.message.from_uid.as_str();
            connections.retain(|c| c.connected_at_ms <= d.message.timestamp_ms && *c.uid != *from);
        }
        self.deliver_to(&d, connections);
        if d.arrival == Arrival::Here {
            self.deliver_to_nodes(&d, &audience).await;
        }
    }

    /// One RECV per connection in `connections` (but the sender's and the system
    /// uid's), each encrypted with the connection's keys and queued for RECVACK.
    fn deliver_to(&self, d: &Delivery, connections: Vec<Arc<Conn>>) {
        let from = d.message.from_uid.as_str();
        let base = base_channel(&d.channel);
        let command =
            (is_command(&d.channel) && d.seq > 0).then(|| CommandPosition { channel: d.channel.clone(), seq: d.seq });
        let header = HeaderFlags::from_bits(d.message.header);
        // Stream fields are never produced; their bits would change the RECV layout.
        let mut setting = Setting(d.message.setting).with(Setting::STREAM, false).with(Setting::STREAM_LEGACY, false);
        setting = setting.with(Setting::TOPIC, d.message.topic.is_some());
        let origin = (d.origin.node == self.settings.node_id).then_some(d.origin.conn);
        let mut delivered = 0u64;
        // One RECV for the recipients and one for the sender's other devices, built
        // once; each connection only changes the payload and msgKey (its own keys).
        let from_uid = if from == self.settings.system_uid { String::new() } else { from.to_owned() };
        let template = |own: bool| {
            let channel_id = match (base.channel_type, own) {
                (PERSON, false) => from.to_owned(),
                (PERSON, true) => person_channel_members(&base.channel_id)
                    .map(|(a, b)| if a == from { b } else { a })
                    .unwrap_or_default()
                    .to_owned(),
                _ => base.channel_id.clone(),
            };
            Recv {
                flags: HeaderFlags { red_dot: header.red_dot && !own, dup: false, ..header },
                setting,
                msg_key: String::new(),
                from_uid: from_uid.clone(),
                channel_id,
                channel_type: base.channel_type,
                expire: d.message.expire,
                client_msg_no: d.message.client_msg_no.clone(),
                stream: None,
                message_id: d.message.message_id,
                message_seq: d.seq as u32,
                timestamp: (d.message.timestamp_ms / 1000) as i32,
                topic: d.message.topic.clone(),
                payload: Bytes::new(),
            }
        };
        let (mut to_others, mut to_own) = (None, None);
        for conn in connections {
            if Some(conn.id) == origin || *conn.uid == self.settings.system_uid {
                continue;
            }
            let own = *conn.uid == *from;
            let slot = if own { &mut to_own } else { &mut to_others };
            let mut recv = slot.take().unwrap_or_else(|| template(own));
            match &conn.cipher {
                Some(cipher) => cipher.seal_recv(&mut recv, &d.message.payload),
                None => recv.payload = d.message.payload.clone(),
            }
            let packet = Packet::Recv(recv);
            let encoded = conn.codec().encode_to_bytes(&packet);
            if let Packet::Recv(recv) = packet {
                *slot = Some(recv);
            }
            let frame = match encoded {
                Ok(frame) => frame,
                Err(e) => {
                    warn!(conn = conn.id, error = %e, "RECV does not encode");
                    continue;
                }
            };
            match conn.send_frame(frame.clone()) {
                Ok(()) => {
                    delivered += 1;
                    // Stored messages wait for their RECVACK; online-only ones do not.
                    if d.seq > 0 {
                        self.retry.track(&conn, d.message.message_id, frame, command.clone());
                    }
                }
                Err(e) => warn!(conn = conn.id, error = %e, "RECV not queued"),
            }
        }
        metrics::counter!("hongyan_core_deliveries_total").increment(delivered);
    }

    /// Hands `d` once to each other node where someone in `audience` is connected.
    async fn deliver_to_nodes(&self, d: &Delivery, audience: &Audience<'_>) {
        let (Some(presence), Some(deliverer)) = (self.links.presence.get(), self.links.deliverer.get()) else {
            return;
        };
        let nodes = presence.nodes_with(&mut audience.uids());
        if nodes.is_empty() {
            return;
        }
        let mut remote = RemoteDelivery {
            channel: d.channel.clone(),
            seq: d.seq,
            prev_seq: 0,
            origin: d.origin,
            only_to: d.only_to.clone(),
            message: d.message.clone(),
        };
        for node in nodes {
            remote.prev_seq =
                if d.seq > 0 { remember(&self.links.sent, (d.channel.clone(), node), d.seq).unwrap_or(0) } else { 0 };
            deliverer.deliver(node, &remote).await;
            metrics::counter!("hongyan_cluster_deliveries_sent_total").increment(1);
        }
    }

    /// Delivers a message another node sent for this node's connections, after the
    /// messages it sent before that never arrived (read from storage). Waits for the
    /// messages' share of the pipeline budget, so a node that cannot keep up slows the
    /// bus subscription (NATS then drops, and the gap check heals).
    pub async fn deliver_remote(self: &Arc<Self>, d: RemoteDelivery) {
        metrics::counter!("hongyan_cluster_deliveries_received_total").increment(1);
        if d.seq > 0
            && let Some(last) = remember(&self.links.received, d.channel.clone(), d.seq)
            && last < d.prev_seq
            && d.prev_seq < d.seq
        {
            self.heal(&d.channel, last + 1, d.prev_seq + 1).await;
        }
        let budget = self.budget(&d.message).await;
        let delivery = Delivery {
            channel: d.channel,
            message: d.message,
            seq: d.seq,
            origin: d.origin,
            only_to: d.only_to,
            arrival: Arrival::FromNode,
            _budget: budget,
        };
        let _ = self.shard(&delivery.channel).send(delivery).await;
    }

    /// Delivers the messages of `channel` with `from <= seq < to`, which another node
    /// sent here and which did not arrive.
    async fn heal(self: &Arc<Self>, channel: &ChannelKey, from: u64, to: u64) {
        let (log, key) = (self.log.clone(), channel.clone());
        let read = tokio::task::spawn_blocking(move || log.read(&key, from, to, MOST_HEALED, Order::Ascending)).await;
        let Ok(Ok(messages)) = read else {
            warn!(channel = %channel.channel_id, from, to, "a gap in deliveries from another node could not be read");
            return;
        };
        metrics::counter!("hongyan_cluster_deliveries_healed_total").increment(messages.len() as u64);
        for stored in messages {
            let budget = self.budget(&stored.message).await;
            let delivery = Delivery {
                channel: channel.clone(),
                message: stored.message,
                seq: stored.seq,
                origin: Origin::default(),
                only_to: None,
                arrival: Arrival::Healed,
                _budget: budget,
            };
            let _ = self.shard(&delivery.channel).send(delivery).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::person_channel_id;
    use crate::session::{Outbox, OutboxLimits, TransportKind};
    use hongyan_proto::{Codec, DeviceLevel, ProtocolVersion};
    use hongyan_store::NewMessage;

    fn conn(id: u64, uid: &str, device_flag: u8, connected_at_ms: i64) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            uid: uid.into(),
            device_flag,
            level: DeviceLevel::Master,
            device_id: "d".into(),
            version: ProtocolVersion::LATEST,
            cipher: None,
            transport: TransportKind::Tcp,
            remote: "127.0.0.1:1".parse().unwrap(),
            connected_at_ms,
            outbox: Outbox::with_budget(
                OutboxLimits { max_frames: 64, max_bytes: 1 << 20 },
                crate::session::HeldBytes::unlimited(),
            ),
            sends_in_flight: tokio::sync::Semaphore::new(8),
        })
    }

    fn message(n: i64) -> NewMessage {
        NewMessage {
            message_id: 1000 + n,
            timestamp_ms: 10_000 * n,
            from_uid: "ann".into(),
            client_msg_no: format!("m{n}"),
            header: 0,
            setting: 0,
            expire: 0,
            topic: None,
            payload: Bytes::from(format!("text {n}")),
        }
    }

    /// The seqs of the RECVs `conn` has been given, once `n` are there.
    async fn seqs(conn: &Conn, n: usize) -> Vec<u32> {
        let mut frames = Vec::new();
        for _ in 0..200 {
            frames.extend(conn.outbox.drain_for_test());
            if frames.len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let codec = Codec::new(ProtocolVersion::LATEST);
        frames
            .into_iter()
            .map(|f| match codec.decode(&mut bytes::BytesMut::from(&f[..])) {
                Ok(Some(Packet::Recv(recv))) => recv.message_seq,
                other => panic!("not a RECV: {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn deliveries_lost_between_nodes_are_read_back_in_order_for_who_was_online() {
        let core = crate::test_core();
        let channel = ChannelKey::new(person_channel_id("ann", "bob"), PERSON);
        for n in 1..=5 {
            core.log.enqueue(channel.clone(), message(n), None).unwrap().await.unwrap();
        }
        // bob's first device was online all along; the second opened after message 2.
        let (early, late) = (conn(7, "bob", 1, 0), conn(8, "bob", 2, 25_000));
        core.registry.register(early.clone());
        core.registry.register(late.clone());
        let remote = |seq: u64, prev_seq: u64| RemoteDelivery {
            channel: channel.clone(),
            seq,
            prev_seq,
            origin: Origin { node: 2, conn: 9 },
            only_to: None,
            message: message(seq as i64),
        };
        core.deliver_remote(remote(1, 0)).await;
        // 2, 3 and 4 were sent here and lost; 5 says 4 was the one before it.
        core.deliver_remote(remote(5, 4)).await;
        assert_eq!(seqs(&early, 5).await, [1, 2, 3, 4, 5], "the gap first, in order");
        assert_eq!(seqs(&late, 3).await, [1, 3, 4, 5], "only what was sent while it was open");
        // No gap: nothing read back.
        core.deliver_remote(remote(6, 5)).await;
        assert_eq!(seqs(&early, 1).await, [6]);
    }
}
