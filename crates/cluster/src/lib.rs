//! Hongyan's cluster layer (`docs/cluster.md`): nodes that share a PostgreSQL database
//! find each other there and talk over NATS.
//!
//! * [`Membership`] keeps this node's row in `cluster_nodes` — claimed at start-up
//!   (refused while another live process holds the `node_id`), renewed by a heartbeat
//!   written with the database's clock, marked left at shutdown — and reads every
//!   node's row back, which makes it the core's [`Topology`] for many nodes.
//! * [`bus`] is the NATS side: one client per node, subjects named after the cluster's
//!   id. Nothing that must be correct rests on it; a notice that membership changed
//!   only makes the other nodes re-read the table before their next heartbeat would.

#![warn(missing_docs)]

pub mod bus;
pub mod deliver;
pub mod forward;
pub mod peers;
pub mod presence;
mod rows;
mod wire;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use hongyan_core::cluster::{NodeAddrs, NodeInfo, Topology};
use hongyan_store_postgres::{PostgresConfig, redact};
use tokio::sync::Notify;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bus::Bus;
use crate::rows::Sql;

/// What a node needs to join.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// This node's id, unique among live nodes.
    pub node_id: u64,
    /// The shared database (the storage's URL and schema).
    pub postgres: PostgresConfig,
    /// The NATS server(s), comma-separated URLs.
    pub nats_url: String,
    /// A node whose heartbeat is older than this is no longer a member.
    pub lease: Duration,
}

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The database could not be reached or answered an error.
    #[error("cluster: cannot reach PostgreSQL at {url}: {reason}")]
    Database {
        /// The URL without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// Another live process holds this node id.
    #[error(
        "node_id {node_id} is held by a live node (boot {boot_id}, heartbeat {age_ms} ms ago, api {api_addr:?}); each node needs its own node_id"
    )]
    Duplicate {
        /// The id.
        node_id: u64,
        /// The holder's boot id.
        boot_id: String,
        /// How old its heartbeat was when last read.
        age_ms: i64,
        /// The holder's API address, to find it.
        api_addr: String,
    },
    /// The NATS URL does not parse.
    #[error("cluster.nats_url: {0}")]
    Nats(String),
}

/// This node's membership and its view of the others.
#[derive(Clone, Debug)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    boot_id: String,
    lease: Duration,
    url: String,
    pool: Pool,
    sql: Sql,
    bus: Bus,
    view: RwLock<View>,
    /// Until when this node's lease is known to hold: the send time of the last
    /// heartbeat the database accepted, plus the lease.
    lease_until: Mutex<Instant>,
    /// Re-read the membership now (a NATS notice came).
    refresh: Notify,
    connections: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Counts the channels this node owns, once the core is there.
    owned: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
    on_evicted: Box<dyn Fn(String) + Send + Sync>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node_id", &self.node_id)
            .field("boot_id", &self.boot_id)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct View {
    nodes: Vec<NodeInfo>,
    live: Arc<[NodeInfo]>,
}

/// How often a heartbeat is written, as a fraction of the lease.
const BEATS_PER_LEASE: u32 = 4;

impl Membership {
    /// Claims `settings.node_id` in the database and starts the heartbeat (and the NATS
    /// client). Waits up to one lease if the row is still held, which it is after a
    /// crash of this node's previous process; refuses if its holder is alive.
    ///
    /// `connections` counts this node's client connections for its row; `on_evicted`
    /// is called once if another process takes the id over (this node must stop).
    pub async fn join(
        settings: &ClusterSettings,
        connections: Box<dyn Fn() -> u64 + Send + Sync>,
        on_evicted: Box<dyn Fn(String) + Send + Sync>,
    ) -> Result<Self, JoinError> {
        let url = redact(&settings.postgres.url);
        let db = |e: &dyn std::fmt::Display| JoinError::Database { url: url.clone(), reason: e.to_string() };
        let pool = pool(&settings.postgres, settings.lease).map_err(|e| db(&e))?;
        let sql = Sql::new(&settings.postgres.schema);
        let client = pool.get().await.map_err(|e| db(&e))?;
        let cluster_id: String = client.query_one(&sql.cluster_id, &[]).await.map_err(|e| db(&e))?.get(0);
        drop(client);
        let boot_id = new_boot_id();
        rows::claim(&pool, &sql, settings.node_id, &boot_id, settings.lease).await.map_err(|e| match e {
            rows::ClaimError::Db(e) => db(&e),
            rows::ClaimError::Held { boot_id, age_ms, api_addr } => {
                JoinError::Duplicate { node_id: settings.node_id, boot_id, age_ms, api_addr }
            }
        })?;
        let bus = Bus::connect(&settings.nats_url, &cluster_id, settings.node_id).await.map_err(JoinError::Nats)?;
        let inner = Arc::new(Inner {
            node_id: settings.node_id,
            boot_id,
            lease: settings.lease,
            url,
            pool,
            sql,
            bus,
            view: RwLock::new(View::default()),
            lease_until: Mutex::new(Instant::now() + settings.lease),
            refresh: Notify::new(),
            connections,
            owned: std::sync::OnceLock::new(),
            on_evicted,
            stop: CancellationToken::new(),
        });
        inner.read_view().await;
        let membership = Self { inner };
        membership.spawn_heartbeat();
        membership.spawn_notices();
        info!(
            node_id = settings.node_id,
            boot_id = membership.inner.boot_id,
            cluster = cluster_id,
            "joined the cluster"
        );
        Ok(membership)
    }

    /// This process's boot id.
    pub fn boot_id(&self) -> &str {
        &self.inner.boot_id
    }

    /// Counts the channels this node owns for its row (`/cluster/nodes`); set once.
    pub fn count_owned(&self, owned: Box<dyn Fn() -> u64 + Send + Sync>) {
        let _ = self.inner.owned.set(owned);
    }

    /// The NATS client of this node.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Whether this node's lease is known to hold right now (its last accepted
    /// heartbeat was sent less than a lease ago).
    pub fn holds_lease(&self) -> bool {
        Instant::now() < *self.inner.lease_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes this node's addresses and makes it routable: from now on `/route`
    /// may name it.
    pub async fn publish(&self, addrs: &NodeAddrs) -> Result<(), JoinError> {
        let inner = &self.inner;
        let db = |e: &dyn std::fmt::Display| JoinError::Database { url: inner.url.clone(), reason: e.to_string() };
        let client = inner.pool.get().await.map_err(|e| db(&e))?;
        client
            .execute(
                &inner.sql.publish,
                &[
                    &node_key(inner.node_id),
                    &inner.boot_id,
                    &addrs.tcp_addr,
                    &addrs.ws_addr,
                    &addrs.wss_addr,
                    &addrs.intranet_tcp_addr,
                    &addrs.api_addr,
                ],
            )
            .await
            .map_err(|e| db(&e))?;
        drop(client);
        inner.bus.announce().await;
        inner.read_view().await;
        Ok(())
    }

    /// Marks this node left (out of every route at once), stops the heartbeat and
    /// tells the others.
    pub async fn leave(&self) {
        let inner = &self.inner;
        inner.stop.cancel();
        let left = async {
            let client = inner.pool.get().await.map_err(|e| e.to_string())?;
            client
                .execute(&inner.sql.leave, &[&node_key(inner.node_id), &inner.boot_id])
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(inner.lease, left).await {
            Ok(Ok(_)) => info!(node_id = inner.node_id, "left the cluster"),
            Ok(Err(e)) => warn!(node_id = inner.node_id, "could not mark this node left ({e}); its lease runs out"),
            Err(_) => warn!(node_id = inner.node_id, "marking this node left timed out; its lease runs out"),
        }
        inner.bus.announce().await;
        inner.bus.close().await;
    }

    fn spawn_heartbeat(&self) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(inner.lease / BEATS_PER_LEASE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    () = inner.stop.cancelled() => return,
                    _ = tick.tick() => {}
                    () = inner.refresh.notified() => {
                        inner.read_view().await;
                        continue;
                    }
                }
                match inner.beat().await {
                    Ok(true) => {
                        if failing {
                            info!(node_id = inner.node_id, "heartbeats accepted again");
                            failing = false;
                        }
                    }
                    Ok(false) => {
                        let reason = format!(
                            "cluster: node_id {} was taken over by another process while this one (boot {}) could not renew its lease; this process stops",
                            inner.node_id, inner.boot_id
                        );
                        tracing::error!("{reason}");
                        (inner.on_evicted)(reason);
                        return;
                    }
                    Err(e) => {
                        metrics::counter!("hongyan_cluster_heartbeat_failures_total").increment(1);
                        if Instant::now() >= *inner.lease_until.lock().unwrap_or_else(|p| p.into_inner()) {
                            metrics::gauge!("hongyan_cluster_lease_held").set(0.0);
                        }
                        if !failing {
                            warn!(node_id = inner.node_id, "heartbeat failed: {e}");
                            failing = true;
                        }
                    }
                }
                inner.read_view().await;
            }
        });
    }

    fn spawn_notices(&self) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let Some(mut notices) = inner.bus.notices().await else { return };
            loop {
                tokio::select! {
                    () = inner.stop.cancelled() => return,
                    notice = futures_util::StreamExt::next(&mut notices) => match notice {
                        Some(_) => inner.refresh.notify_one(),
                        None => return,
                    }
                }
            }
        });
    }
}

impl Inner {
    /// Renews this node's row. `Ok(false)`: the row belongs to another boot.
    async fn beat(&self) -> Result<bool, String> {
        let sent = Instant::now();
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let connections = i64::try_from((self.connections)()).unwrap_or(i64::MAX);
        let owned = i64::try_from(self.owned.get().map_or(0, |count| count())).unwrap_or(i64::MAX);
        let renewed = client
            .execute(
                &self.sql.heartbeat,
                &[&node_key(self.node_id), &self.boot_id, &connections, &owned, &self.bus.connected()],
            )
            .await
            .map_err(|e| e.to_string())?;
        if renewed == 1 {
            *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + self.lease;
            metrics::gauge!("hongyan_cluster_lease_held").set(1.0);
            return Ok(true);
        }
        // Not renewed: left (shutting down), or another boot holds the row.
        let holder = client.query_opt(&self.sql.holder, &[&node_key(self.node_id)]).await.map_err(|e| e.to_string())?;
        Ok(holder.is_some_and(|row| row.get::<_, String>(0) == self.boot_id))
    }

    /// Re-reads every node's row. On failure the last view stays.
    async fn read_view(&self) {
        let read = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client.query(&self.sql.nodes, &[]).await.map_err(|e| e.to_string())
        };
        match read.await {
            Ok(found) => {
                let nodes: Vec<NodeInfo> = found.iter().map(rows::node_info).collect();
                let live: Arc<[NodeInfo]> = nodes.iter().filter(|n| n.online).cloned().collect();
                metrics::gauge!("hongyan_cluster_live_nodes").set(live.len() as f64);
                let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
                *view = View { nodes, live };
            }
            Err(e) => tracing::debug!(node_id = self.node_id, "reading the membership failed: {e}"),
        }
    }
}

impl Topology for Membership {
    fn local_id(&self) -> u64 {
        self.inner.node_id
    }

    fn local_boot_id(&self) -> String {
        self.inner.boot_id.clone()
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        self.inner.view.read().unwrap_or_else(|p| p.into_inner()).nodes.clone()
    }

    fn live(&self) -> Arc<[NodeInfo]> {
        let view = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        if !view.live.is_empty() {
            return view.live.clone();
        }
        // Knowing of no live node (not published yet, or the database unreadable since
        // start): place everything here rather than nowhere.
        let own = view.nodes.iter().find(|n| n.id == self.inner.node_id).cloned();
        drop(view);
        Arc::from(own.map(|n| NodeInfo { online: true, ..n }).into_iter().collect::<Vec<_>>())
    }
}

/// The `node_id` column's value.
fn node_key(id: u64) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

/// 16 random bytes, hex.
fn new_boot_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: the clock still differs between two starts.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small pool of its own, so a heartbeat never waits behind message writes.
/// Statements are cut off well within a lease.
fn pool(config: &PostgresConfig, lease: Duration) -> Result<Pool, String> {
    let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e: tokio_postgres::Error| e.to_string())?;
    let timeout = config.statement_timeout.min(lease / 2).max(Duration::from_millis(100));
    pg.application_name("hongyan-cluster")
        .connect_timeout(config.connect_timeout.min(lease))
        .options(format!("-c statement_timeout={}", timeout.as_millis()));
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(2)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(config.connect_timeout.min(lease)))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_ids_differ() {
        let (a, b) = (new_boot_id(), new_boot_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
