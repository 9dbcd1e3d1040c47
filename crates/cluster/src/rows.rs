//! The SQL of the membership table (`cluster_nodes`, migration 0002 of
//! hongyan-store-postgres) and the claim at start-up. Every time is the database's
//! `now()`; a row is live while `left_at IS NULL AND heartbeat_at + lease > now()`.

use std::time::Duration;

use deadpool_postgres::Pool;
use hongyan_core::cluster::{NodeAddrs, NodeInfo};
use tokio_postgres::Row;

/// The statements, with the schema filled in.
pub(crate) struct Sql {
    pub(crate) cluster_id: String,
    pub(crate) claim: String,
    pub(crate) holder: String,
    pub(crate) heartbeat: String,
    pub(crate) publish: String,
    pub(crate) leave: String,
    pub(crate) nodes: String,
}

/// `true` while the row's lease holds, by the database's clock.
const LIVE: &str = "(left_at IS NULL AND heartbeat_at + lease_ms * interval '1 millisecond' > now())";

impl Sql {
    pub(crate) fn new(schema: &str) -> Self {
        let t = format!("{schema}.cluster_nodes");
        Self {
            cluster_id: format!("SELECT cluster_id FROM {schema}.cluster_info"),
            // Take the row if it is new, left, or its lease ran out; a live holder
            // keeps it (no row returned).
            claim: format!(
                "INSERT INTO {t} AS n (node_id, boot_id, started_at, heartbeat_at, lease_ms)
                 VALUES ($1, $2, now(), now(), $3)
                 ON CONFLICT (node_id) DO UPDATE SET
                     boot_id = EXCLUDED.boot_id, started_at = now(), heartbeat_at = now(),
                     lease_ms = EXCLUDED.lease_ms, left_at = NULL, ready = false,
                     connections = 0, owned_channels = 0, nats = false
                 WHERE NOT (n.left_at IS NULL AND n.heartbeat_at + n.lease_ms * interval '1 millisecond' > now())
                 RETURNING node_id"
            ),
            holder: format!(
                "SELECT boot_id, (extract(epoch FROM heartbeat_at) * 1000)::bigint,
                        (extract(epoch FROM now() - heartbeat_at) * 1000)::bigint, api_addr
                 FROM {t} WHERE node_id = $1"
            ),
            heartbeat: format!(
                "UPDATE {t} SET heartbeat_at = now(), connections = $3, owned_channels = $4, nats = $5
                 WHERE node_id = $1 AND boot_id = $2 AND left_at IS NULL"
            ),
            publish: format!(
                "UPDATE {t} SET ready = true, tcp_addr = $3, ws_addr = $4, wss_addr = $5,
                        intranet_tcp_addr = $6, api_addr = $7, heartbeat_at = now()
                 WHERE node_id = $1 AND boot_id = $2"
            ),
            leave: format!("UPDATE {t} SET left_at = now(), ready = false WHERE node_id = $1 AND boot_id = $2"),
            nodes: format!(
                "SELECT node_id, boot_id, ready AND {LIVE},
                        (extract(epoch FROM started_at) * 1000)::bigint,
                        (extract(epoch FROM heartbeat_at) * 1000)::bigint,
                        greatest((extract(epoch FROM now() - heartbeat_at) * 1000)::bigint, 0),
                        tcp_addr, ws_addr, wss_addr, intranet_tcp_addr, api_addr,
                        connections, owned_channels, nats
                 FROM {t} ORDER BY node_id"
            ),
        }
    }
}

/// A row of the `nodes` statement.
pub(crate) fn node_info(row: &Row) -> NodeInfo {
    let ms = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    NodeInfo {
        id: u64::try_from(row.get::<_, i32>(0)).unwrap_or(0),
        boot_id: row.get(1),
        online: row.get(2),
        started_at_ms: ms(3),
        heartbeat_at_ms: ms(4),
        heartbeat_age_ms: ms(5),
        addrs: NodeAddrs {
            tcp_addr: row.get(6),
            ws_addr: row.get(7),
            wss_addr: row.get(8),
            intranet_tcp_addr: row.get(9),
            api_addr: row.get(10),
        },
        connections: ms(11),
        owned_channels: ms(12),
        bus_connected: row.get(13),
    }
}

pub(crate) enum ClaimError {
    Db(String),
    /// A live process holds the id: its heartbeat moved while this one waited.
    Held {
        boot_id: String,
        age_ms: i64,
        api_addr: String,
    },
}

/// Claims node `id` for `boot_id`. While the row is held, waits for its lease to run
/// out (a crashed process of this node) but gives up as soon as the holder's heartbeat
/// moves (a live process).
pub(crate) async fn claim(pool: &Pool, sql: &Sql, id: u64, boot_id: &str, lease: Duration) -> Result<(), ClaimError> {
    let db = |e: &dyn std::fmt::Display| ClaimError::Db(e.to_string());
    let key = super::node_key(id);
    let lease_ms = i32::try_from(lease.as_millis()).unwrap_or(i32::MAX);
    // A little over a lease: by then a silent holder's lease has run out.
    let deadline = tokio::time::Instant::now() + lease + lease / 2;
    let mut first_heartbeat = None;
    loop {
        let client = pool.get().await.map_err(|e| db(&e))?;
        if client.query_opt(&sql.claim, &[&key, &boot_id, &lease_ms]).await.map_err(|e| db(&e))?.is_some() {
            return Ok(());
        }
        let Some(row) = client.query_opt(&sql.holder, &[&key]).await.map_err(|e| db(&e))? else {
            continue; // deleted meanwhile: claim again
        };
        drop(client);
        let (holder, heartbeat, age_ms, api_addr): (String, i64, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let moved = first_heartbeat.is_some_and(|first| first != heartbeat);
        if moved || tokio::time::Instant::now() >= deadline {
            return Err(ClaimError::Held { boot_id: holder, age_ms, api_addr });
        }
        if first_heartbeat.is_none() {
            tracing::info!(node_id = id, holder, age_ms, "node_id still held; waiting for the lease to run out");
            first_heartbeat = Some(heartbeat);
        }
        tokio::time::sleep(lease / 8).await;
    }
}
