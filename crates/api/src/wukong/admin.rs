//! Who is online, and what the node is doing: `/user/onlinestatus`, `/connz`, `/varz`;
//! closing one connection: `/conn/kick`, `/conn/remove`; the webhook queues:
//! `/webhook/status`, `/webhook/retry`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiQuery, check_uid, parse};
use crate::{ApiError, AppState, OnlineStatusFormat};
use hongyan_core::conns::{ConnFilter, ConnOrder, MOST_PER_PAGE};
use hongyan_core::session::MAX_ID_LEN;

/// Most uids one `/user/onlinestatus` may ask about.
const ONLINE_STATUS_MAX: usize = 10_000;

/// `POST /user/onlinestatus` with a JSON array of uids. LiMaoIM's answer (the default)
/// is the array of those online; WuKongIM v2's (`api.onlinestatus_format = "devices"`)
/// has one `{uid, device_flag, online: 1}` per online connection, and `{"status":200}`
/// for an empty question. In a cluster both count every node's connections: the uids
/// list from the presence the nodes share, the devices list by asking the nodes that
/// presence names.
pub(super) async fn online_status(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let uids: Vec<String> = parse(&body)?;
    if uids.len() > ONLINE_STATUS_MAX {
        return Err(ApiError::bad(format!("uids: at most {ONLINE_STATUS_MAX}")));
    }
    for (i, uid) in uids.iter().enumerate() {
        check_uid(&format!("[{i}]"), uid)?;
    }
    let registry = &state.registry;
    Ok(Json(match state.settings.online_status_format {
        OnlineStatusFormat::Uids => {
            let mut seen = std::collections::HashSet::new();
            // In a cluster, online on any node.
            let online: Vec<&String> = uids
                .iter()
                .filter(|u| {
                    seen.insert(u.as_str()) && (!registry.connections(u).is_empty() || state.core.online_elsewhere(u))
                })
                .collect();
            json!(online)
        }
        OnlineStatusFormat::Devices if uids.is_empty() => json!({"status": 200}),
        OnlineStatusFormat::Devices => {
            // Every node's connections (in a cluster, those presence finds elsewhere).
            let (found, _) = state.core.connections_of(&uids).await;
            let entries: Vec<Value> =
                found.iter().map(|c| json!({"uid": c.uid, "device_flag": c.device_flag, "online": 1})).collect();
            Value::Array(entries)
        }
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ConnzQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    limit: usize,
    /// One user's connections, on every node of a cluster.
    #[serde(default)]
    uid: String,
    /// `id` (default) or `uptime` (longest first).
    #[serde(default)]
    sort: String,
    /// In a cluster, the node whose connections to list (default: the node asked).
    #[serde(default)]
    node_id: Option<u64>,
    /// Only connections of this device flag (0 app, 1 web, 2 pc).
    #[serde(default)]
    device_flag: Option<u8>,
    /// Only connections with this device id.
    #[serde(default)]
    device_id: String,
    /// Only connections from this IP address.
    #[serde(default)]
    ip: String,
}

/// `GET /connz`: a node's connections, a page at a time (this node's, or with
/// `node_id` another's); with `uid`, that user's connections on every node.
pub(super) async fn connz(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ConnzQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit {
        0 => 20,
        n if n > MOST_PER_PAGE => return Err(ApiError::bad(format!("limit: at most {MOST_PER_PAGE}"))),
        n => n,
    };
    let order = match q.sort.as_str() {
        "" | "id" => ConnOrder::Id,
        "uptime" => ConnOrder::Uptime,
        other => return Err(ApiError::bad(format!("sort: `id` or `uptime`, not `{other}`"))),
    };
    let node = q.node_id.unwrap_or(state.settings.node_id);
    if q.device_id.len() > MAX_ID_LEN {
        return Err(ApiError::bad(format!("device_id: at most {MAX_ID_LEN} bytes")));
    }
    if !q.ip.is_empty() && q.ip.parse::<std::net::IpAddr>().is_err() {
        return Err(ApiError::bad(format!("ip: `{}` is not an IP address", q.ip)));
    }
    let filter = ConnFilter { device_flag: q.device_flag, device_id: q.device_id, ip: q.ip };
    let (total, page) = if q.uid.is_empty() {
        let page = state.core.page_of(node, q.offset, limit, order, filter).await.map_err(ApiError::bad)?;
        (page.total, page.connections)
    } else {
        check_uid("uid", &q.uid)?;
        let (mut found, _) = state.core.connections_of(std::slice::from_ref(&q.uid)).await;
        found.retain(|c| filter.matches(c));
        match order {
            ConnOrder::Id => found.sort_by_key(|c| (c.node, c.id)),
            ConnOrder::Uptime => found.sort_by_key(|c| (c.connected_at_ms, c.node, c.id)),
        }
        let total = found.len() as u64;
        (total, found.into_iter().skip(q.offset).take(limit).collect())
    };
    let now_ms = hongyan_core::now_ms();
    let page: Vec<Value> = page
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "node_id": c.node,
                "uid": c.uid,
                "ip": c.ip,
                "port": c.port,
                "transport": c.transport,
                "device_flag": c.device_flag,
                "device_level": c.device_level,
                "device_id": c.device_id,
                "version": c.version,
                "connected_at": c.connected_at_ms / 1000,
                "uptime_secs": (now_ms - c.connected_at_ms).max(0) / 1000,
                "pending_frames": c.pending_frames,
            })
        })
        .collect();
    Ok(Json(json!({
        "now": now_ms / 1000,
        "node_id": node,
        "total": total,
        "offset": q.offset,
        "limit": limit,
        "connections": page,
    })))
}

/// `GET /varz`: this node's vital statistics.
pub(super) async fn varz(State(state): State<AppState>) -> Json<Value> {
    let started = state.settings.started_at_ms;
    let now = hongyan_core::now_ms();
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096);
    Json(json!({
        "server_id": state.settings.node_id,
        "server_name": "hongyan",
        "version": env!("CARGO_PKG_VERSION"),
        "start": started / 1000,
        "uptime_secs": (now - started).max(0) / 1000,
        "connections": state.registry.len(),
        "users_online": state.registry.user_count(),
        "retry_pending": state.core.retry_queue().len(),
        "mem_rss_bytes": rss,
        "cpu_seconds": cpu_seconds(),
        "cpus": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "storage_failed": state.core.health().has_failed(),
        "storage_failure": state.core.health().failure().map(|f| f.reason.clone()),
        "storage_unreachable": state.core.health().unreachable().map(|f| f.reason),
    }))
}

/// CPU time this process has used, user and system, in seconds (0 where `/proc` is
/// missing). `/proc/<pid>/stat` counts in USER_HZ, which Linux fixes at 100 for
/// user space.
fn cpu_seconds() -> f64 {
    const USER_HZ: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed:
    // state is the first of them, utime the 12th, stime the 13th.
    let Some((_, after)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / USER_HZ
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ConnReq {
    uid: String,
    /// The connection's id (`/connz`'s `id`).
    conn_id: u64,
    /// The node it is on (default: the node asked).
    #[serde(default)]
    node_id: Option<u64>,
}

/// `POST /conn/kick`: DISCONNECT(ConnectKick) to one connection, then close it.
pub(super) async fn conn_kick(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    close_connection(&state, &body, true)
}

/// `POST /conn/remove`: close one connection without a word.
pub(super) async fn conn_remove(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    close_connection(&state, &body, false)
}

/// On this node, 400 when the connection is not here; another node's is asked to close
/// it (in a cluster; the answer does not wait for it).
fn close_connection(state: &AppState, body: &Bytes, kick: bool) -> Result<Json<Value>, ApiError> {
    let req: ConnReq = parse(body)?;
    check_uid("uid", &req.uid)?;
    let node = req.node_id.unwrap_or(state.settings.node_id);
    if node != state.settings.node_id && !state.topology.nodes().iter().any(|n| n.id == node && n.online) {
        return Err(ApiError::bad(format!("node_id: {node} is not a live node of this cluster")));
    }
    match state.core.close_connection(node, &req.uid, req.conn_id, kick) {
        Some(false) => Err(ApiError::bad(format!("no connection {} of `{}` on node {node}", req.conn_id, req.uid))),
        Some(true) | None => Ok(Json(json!({"status": 200}))),
    }
}

/// `GET /webhook/status`: `{"enabled": true, "events": [{event, pending, failing,
/// retries, last_error, last_error_at_ms}]}`; `{"enabled": false, "events": []}` without
/// `webhook.url`.
pub(super) async fn webhook_status(State(state): State<AppState>) -> Json<Value> {
    let events = state.webhooks.as_ref().map(|w| w.status()).unwrap_or_default();
    Json(json!({"enabled": state.webhooks.is_some(), "events": events}))
}

/// The body of calls that take none (`{}` or nothing), for the document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct NoBody {}

/// `POST /webhook/retry`: events waiting to be retried are posted now.
pub(super) async fn webhook_retry(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let webhooks = state.webhooks.as_ref().ok_or_else(|| ApiError::bad("webhooks are off (webhook.url is empty)"))?;
    webhooks.retry_now();
    Ok(Json(json!({"status": 200})))
}
