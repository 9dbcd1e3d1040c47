//! Listing connections for the app server (`/connz`, the devices form of
//! `/user/onlinestatus`): this node's from its registry, the other nodes' through
//! [`Peers`] (`docs/cluster.md`, "Connections on every node").

use std::sync::Arc;

use crate::session::Conn;

use crate::Core;

/// Most connections one page may list.
pub const MOST_PER_PAGE: usize = 1_000;

/// A connection as the app server sees it, on whichever node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnSummary {
    /// The node it is on.
    pub node: u64,
    /// Its id on that node.
    pub id: u64,
    /// The user.
    pub uid: String,
    /// The client's IP address.
    pub ip: String,
    /// The client's port.
    pub port: u16,
    /// `tcp`, `ws` or `wss`.
    pub transport: String,
    /// The device flag.
    pub device_flag: u8,
    /// The device level (0 slave, 1 master).
    pub device_level: u8,
    /// The device id.
    pub device_id: String,
    /// The protocol version.
    pub version: u8,
    /// When it connected (ms since the Unix epoch).
    pub connected_at_ms: i64,
    /// Frames queued for it, not yet written.
    pub pending_frames: u32,
}

/// How a page of connections is ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConnOrder {
    /// By connection id (the order they connected on their node).
    #[default]
    Id,
    /// Longest connected first.
    Uptime,
}

/// Which connections a page lists: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnFilter {
    /// The device flag (0 app, 1 web, 2 pc).
    pub device_flag: Option<u8>,
    /// The device id, exactly.
    pub device_id: String,
    /// The client's IP address, exactly.
    pub ip: String,
}

impl ConnFilter {
    /// Whether it lets every connection through.
    pub fn is_empty(&self) -> bool {
        self.device_flag.is_none() && self.device_id.is_empty() && self.ip.is_empty()
    }

    /// Whether `c` passes.
    pub fn matches(&self, c: &ConnSummary) -> bool {
        self.device_flag.is_none_or(|f| f == c.device_flag)
            && (self.device_id.is_empty() || self.device_id == c.device_id)
            && (self.ip.is_empty() || self.ip == c.ip)
    }
}

/// A page of one node's connections and how many it has in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnPage {
    /// Connections on the node.
    pub total: u64,
    /// The page.
    pub connections: Vec<ConnSummary>,
}

/// A question to other nodes in flight.
pub type PeersFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send>>;

/// Asks other nodes about their connections. Implemented by the cluster layer (NATS
/// request/reply); a single node has none.
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// The connections of `uids` on node `node`.
    fn connections_of(&self, node: u64, uids: Vec<String>) -> PeersFuture<Vec<ConnSummary>>;
    /// A page of node `node`'s connections that pass `filter`.
    fn page(
        &self,
        node: u64,
        offset: usize,
        limit: usize,
        order: ConnOrder,
        filter: ConnFilter,
    ) -> PeersFuture<ConnPage>;
}

impl Core {
    /// Lets the core ask the other nodes about their connections. Call once.
    pub fn join_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    fn summary(&self, c: &Conn) -> ConnSummary {
        ConnSummary {
            node: self.settings.node_id,
            id: c.id,
            uid: c.uid.to_string(),
            ip: c.remote.ip().to_string(),
            port: c.remote.port(),
            transport: c.transport.label().to_owned(),
            device_flag: c.device_flag,
            device_level: c.level as u8,
            device_id: c.device_id.to_string(),
            version: c.version.get(),
            connected_at_ms: c.connected_at_ms,
            pending_frames: u32::try_from(c.outbox.queued_frames()).unwrap_or(u32::MAX),
        }
    }

    /// The connections of `uids` on this node, each uid once.
    pub fn local_connections_of(&self, uids: &[String]) -> Vec<ConnSummary> {
        let mut seen = std::collections::HashSet::new();
        uids.iter()
            .filter(|u| seen.insert(u.as_str()))
            .flat_map(|u| self.registry.connections(u))
            .map(|c| self.summary(&c))
            .collect()
    }

    /// A page of this node's connections that pass `filter` (at most
    /// [`MOST_PER_PAGE`]); `total` counts those that pass.
    pub fn local_page(&self, offset: usize, limit: usize, order: ConnOrder, filter: &ConnFilter) -> ConnPage {
        let mut conns = self.registry.all();
        match order {
            ConnOrder::Id => conns.sort_by_key(|c| c.id),
            ConnOrder::Uptime => conns.sort_by_key(|c| (c.connected_at_ms, c.id)),
        }
        let limit = limit.min(MOST_PER_PAGE);
        if filter.is_empty() {
            let total = conns.len() as u64;
            let connections = conns.iter().skip(offset).take(limit).map(|c| self.summary(c)).collect();
            return ConnPage { total, connections };
        }
        let mut total = 0u64;
        let mut connections = Vec::new();
        for summary in conns.iter().map(|c| self.summary(c)).filter(|s| filter.matches(s)) {
            if total >= offset as u64 && connections.len() < limit {
                connections.push(summary);
            }
            total += 1;
        }
        ConnPage { total, connections }
    }

    /// The connections of `uids` on every node: this one's, then the other nodes'
    /// where presence finds any of them (a node that does not answer is left out, and
    /// named in the second list).
    pub async fn connections_of(&self, uids: &[String]) -> (Vec<ConnSummary>, Vec<u64>) {
        let mut found = self.local_connections_of(uids);
        let mut silent = Vec::new();
        let (Some(peers), Some(presence)) = (self.peers.get(), self.links.presence.get()) else {
            return (found, silent);
        };
        let nodes = presence.nodes_with(&mut uids.iter().map(String::as_str));
        let asked = nodes.iter().map(|&node| peers.connections_of(node, uids.to_vec()));
        for (node, answer) in nodes.iter().zip(futures_util::future::join_all(asked).await) {
            match answer {
                Ok(mut theirs) => found.append(&mut theirs),
                Err(e) => {
                    tracing::warn!(node, "connections of another node not listed: {e}");
                    silent.push(*node);
                }
            }
        }
        (found, silent)
    }

    /// A page of node `node`'s connections (this node's when it is this node).
    pub async fn page_of(
        &self,
        node: u64,
        offset: usize,
        limit: usize,
        order: ConnOrder,
        filter: ConnFilter,
    ) -> Result<ConnPage, String> {
        if node == self.settings.node_id {
            return Ok(self.local_page(offset, limit, order, &filter));
        }
        match self.peers.get() {
            Some(peers) => peers.page(node, offset, limit.min(MOST_PER_PAGE), order, filter).await,
            None => Err(format!("no node {node}: this node is not in a cluster")),
        }
    }
}
