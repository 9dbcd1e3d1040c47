//! Where clients connect: `/route`, `/route/batch` (each uid's home node among the
//! live ones) and `/cluster/nodes`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use hongyan_core::cluster::{NodeInfo, home_of};
use hongyan_core::session::{ID_RULE, is_valid_uid};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiQuery, MAX_SEND_SUBSCRIBERS, parse};
use crate::{ApiError, AppState};

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RouteQuery {
    /// The user to place (`/route`); without it, the node asked answers with itself.
    #[serde(default)]
    uid: Option<String>,
    /// `1`: the intranet TCP address instead of the public ones.
    #[serde(default)]
    intranet: Option<String>,
}

/// A node's addresses in `/route`'s shape.
pub(super) fn route_addrs(node: &NodeInfo, intranet: bool) -> Value {
    let a = &node.addrs;
    if intranet {
        json!({"tcp_addr": a.intranet_tcp_addr, "ws_addr": "", "wss_addr": ""})
    } else {
        json!({"tcp_addr": a.tcp_addr, "ws_addr": a.ws_addr, "wss_addr": a.wss_addr})
    }
}

/// `GET /route?uid=…&intranet=0|1`: where a client should connect — the uid's home
/// node among the live nodes (`docs/cluster.md`), or this node without a uid.
pub(super) async fn route(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RouteQuery>,
) -> Result<Json<Value>, ApiError> {
    let intranet = q.intranet.as_deref() == Some("1");
    let live = state.topology.live();
    let node = match q.uid.as_deref() {
        Some(uid) => {
            if !is_valid_uid(uid) {
                return Err(ApiError::bad(format!("uid: {ID_RULE}")));
            }
            home_of(uid.as_bytes(), &live)
        }
        None => live.iter().find(|n| n.id == state.topology.local_id()).or_else(|| live.first()),
    };
    Ok(Json(node.map_or_else(|| json!({"tcp_addr": "", "ws_addr": "", "wss_addr": ""}), |n| route_addrs(n, intranet))))
}

/// `POST /route/batch` with a JSON array of uids: one group per home node, in node-id
/// order, each with that node's addresses and its uids in the order given.
pub(super) async fn route_batch(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RouteQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let uids: Vec<String> = parse(&body)?;
    if uids.len() > MAX_SEND_SUBSCRIBERS {
        return Err(ApiError::bad(format!("uids: at most {MAX_SEND_SUBSCRIBERS} per call")));
    }
    if let Some(i) = uids.iter().position(|u| !is_valid_uid(u)) {
        return Err(ApiError::bad(format!("[{i}]: {ID_RULE}")));
    }
    let intranet = q.intranet.as_deref() == Some("1");
    let live = state.topology.live();
    let mut groups: std::collections::BTreeMap<u64, (&NodeInfo, Vec<&str>)> = std::collections::BTreeMap::new();
    for uid in &uids {
        if let Some(node) = home_of(uid.as_bytes(), &live) {
            groups.entry(node.id).or_insert_with(|| (node, Vec::new())).1.push(uid);
        }
    }
    let groups = groups
        .into_values()
        .map(|(node, uids)| {
            let mut group = route_addrs(node, intranet);
            group["uids"] = json!(uids);
            group
        })
        .collect();
    Ok(Json(Value::Array(groups)))
}

/// `GET /cluster/nodes`: every node the membership knows, live or not, by id.
pub(super) async fn cluster_nodes(State(state): State<AppState>) -> Json<Value> {
    let local = state.topology.local_id();
    let nodes = state
        .topology
        .nodes()
        .into_iter()
        .map(|n| {
            json!({
                "id": n.id,
                "boot_id": n.boot_id,
                "online": n.online,
                "is_self": n.id == local,
                "started_at": n.started_at_ms,
                "heartbeat_at": n.heartbeat_at_ms,
                "heartbeat_age_ms": n.heartbeat_age_ms,
                "tcp_addr": n.addrs.tcp_addr,
                "ws_addr": n.addrs.ws_addr,
                "wss_addr": n.addrs.wss_addr,
                "intranet_tcp_addr": n.addrs.intranet_tcp_addr,
                "api_addr": n.addrs.api_addr,
                "connections": n.connections,
                "owned_channels": n.owned_channels,
                "nats": n.bus_connected,
            })
        })
        .collect();
    Json(Value::Array(nodes))
}
