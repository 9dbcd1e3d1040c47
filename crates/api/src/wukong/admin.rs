//! Who is online, and what the node is doing: `/user/onlinestatus`, `/connz`, `/varz`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiQuery, check_uid, parse};
use crate::{ApiError, AppState, OnlineStatusFormat};

/// Most uids one `/user/onlinestatus` may ask about.
const ONLINE_STATUS_MAX: usize = 10_000;

/// `POST /user/onlinestatus` with a JSON array of uids. LiMaoIM's answer (the default)
/// is the array of those online; WuKongIM v2's (`api.onlinestatus_format = "devices"`)
/// has one `{uid, device_flag, online: 1}` per online connection, and `{"status":200}`
/// for an empty question. In a cluster the uids list counts every node's connections
/// (from the presence the nodes share); the devices list is this node's only.
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
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<Value> = uids
                .iter()
                .filter(|u| seen.insert(u.as_str()))
                .flat_map(|u| registry.connections(u))
                .map(|c| json!({"uid": &*c.uid, "device_flag": c.device_flag, "online": 1}))
                .collect();
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
    #[serde(default)]
    uid: String,
    /// `id` (default) or `uptime` (longest first).
    #[serde(default)]
    sort: String,
}

/// `GET /connz`: this node's connections, a page at a time.
pub(super) async fn connz(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ConnzQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit {
        0 => 20,
        n if n > 1_000 => return Err(ApiError::bad("limit: at most 1000")),
        n => n,
    };
    let mut conns = if q.uid.is_empty() { state.registry.all() } else { state.registry.connections(&q.uid) };
    match q.sort.as_str() {
        "" | "id" => conns.sort_by_key(|c| c.id),
        "uptime" => conns.sort_by_key(|c| (c.connected_at_ms, c.id)),
        other => return Err(ApiError::bad(format!("sort: `id` or `uptime`, not `{other}`"))),
    }
    let now_ms = hongyan_core::now_ms();
    let total = conns.len();
    let page: Vec<Value> = conns
        .iter()
        .skip(q.offset)
        .take(limit)
        .map(|c| {
            json!({
                "id": c.id,
                "uid": &*c.uid,
                "ip": c.remote.ip().to_string(),
                "port": c.remote.port(),
                "transport": c.transport.label(),
                "device_flag": c.device_flag,
                "device_level": c.level as u8,
                "device_id": &*c.device_id,
                "version": c.version.get(),
                "connected_at": c.connected_at_ms / 1000,
                "uptime_secs": (now_ms - c.connected_at_ms).max(0) / 1000,
                "pending_frames": c.outbox.queued_frames(),
            })
        })
        .collect();
    Ok(Json(json!({
        "now": now_ms / 1000,
        "node_id": state.settings.node_id,
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
        "cpus": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "storage_failed": state.core.health().has_failed(),
        "storage_failure": state.core.health().failure().map(|f| f.reason.clone()),
        "storage_unreachable": state.core.health().unreachable().map(|f| f.reason),
    }))
}
