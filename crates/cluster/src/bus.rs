//! The cluster's message bus: core NATS, one client per node. Subjects start with
//! `hy.<cluster id>.`, the id the database holds, so clusters that share a NATS server
//! but not a database never hear each other.
//!
//! Core NATS delivers at most once and nothing correct rests on it: a membership
//! notice that is lost costs the other nodes one heartbeat interval.

use std::time::Duration;

use tracing::{info, warn};

/// This node's NATS client.
#[derive(Clone, Debug)]
pub struct Bus {
    client: async_nats::Client,
    prefix: String,
}

impl Bus {
    /// A client for `url` (comma-separated server URLs) that connects in the
    /// background and reconnects for ever: a NATS server that is down at start-up or
    /// restarts later delays notices, it does not stop the node.
    pub(crate) async fn connect(url: &str, cluster_id: &str, node_id: u64) -> Result<Self, String> {
        let servers: Vec<async_nats::ServerAddr> = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>().map_err(|e| format!("{u:?}: {e}")))
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err("no server URL".into());
        }
        let client = async_nats::ConnectOptions::new()
            .name(format!("hongyan-{node_id}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| async move {
                match event {
                    async_nats::Event::Connected => info!(node_id, "NATS connected"),
                    async_nats::Event::Disconnected => warn!(node_id, "NATS disconnected; reconnecting"),
                    other => tracing::debug!(node_id, "NATS: {other}"),
                }
            })
            .connect(servers)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { client, prefix: format!("hy.{cluster_id}") })
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the client is connected right now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The subject for `name` in this cluster.
    pub fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Tells every node that membership changed (best effort).
    pub(crate) async fn announce(&self) {
        // Bounded: with the bus down, publishing and flushing wait for a reconnection
        // that may never come, and a node leaving must not hang on a notice that only
        // hastens what the heartbeat brings anyway.
        let notice = async {
            if let Err(e) = self.client.publish(self.subject("nodes"), bytes::Bytes::new()).await {
                tracing::debug!("membership notice not sent: {e}");
            }
            let _ = self.client.flush().await;
        };
        if tokio::time::timeout(Duration::from_secs(1), notice).await.is_err() {
            tracing::debug!("membership notice not sent: the bus did not answer within 1 s");
        }
    }

    /// Membership notices from every node (this one included).
    pub(crate) async fn notices(&self) -> Option<async_nats::Subscriber> {
        match self.client.subscribe(self.subject("nodes")).await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot subscribe to membership notices: {e}; membership is read at each heartbeat only");
                None
            }
        }
    }

    /// Flushes and stops the client.
    pub(crate) async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.clone().drain()).await;
    }
}
