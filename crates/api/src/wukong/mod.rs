//! The WuKongIM v2 / LiMaoIM dialect: field names, response shapes and error bodies as
//! WuKongIM's server has them, so app servers switch by changing a base URL.
//!
//! Implemented so far: routes, user tokens and device logout, channels with their
//! attributes, subscribers, blacklists and whitelists, health.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use hongyan_core::channels::ListChange;
use hongyan_core::cluster::{NodeInfo, home_of};
use hongyan_core::conversation::ConversationQuery;
use hongyan_core::session::{CLIENT_MSG_NO_RULE, ID_RULE, is_valid_client_msg_no, is_valid_uid};
use hongyan_proto::{DeviceLevel, ReasonCode};
use hongyan_store::{ChannelInfo, ChannelKey, Device, MemberList, Order, StoredMessage};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::openapi::{self, Dialect, Endpoint, schema_of};
use crate::{ApiError, AppState};
use lists::ChannelQuery;
use render::{ConversationOut, MessageOut, SyncPage};

mod admin;
mod extras;
mod lists;
mod lookup;
mod render;

/// Channel type of person (one-to-one) channels.
const PERSON: u8 = 1;
/// Highest channel type WuKongIM defines (AgentGroup).
const MAX_CHANNEL_TYPE: u8 = 12;

/// The list endpoints: path, list and change.
const LIST_ROUTES: [(&str, MemberList, Change); 11] = [
    ("/channel/subscriber_add", MemberList::Subscribers, Change::Add),
    ("/channel/subscriber_remove", MemberList::Subscribers, Change::Remove),
    ("/channel/blacklist_add", MemberList::Blacklist, Change::Add),
    ("/channel/blacklist_set", MemberList::Blacklist, Change::Set),
    ("/channel/blacklist_remove", MemberList::Blacklist, Change::Remove),
    ("/channel/whitelist_add", MemberList::Whitelist, Change::Add),
    ("/channel/whitelist_set", MemberList::Whitelist, Change::Set),
    ("/channel/whitelist_remove", MemberList::Whitelist, Change::Remove),
    ("/channel/subscriber_remove_all", MemberList::Subscribers, Change::RemoveAll),
    ("/channel/blacklist_remove_all", MemberList::Blacklist, Change::RemoveAll),
    ("/channel/whitelist_remove_all", MemberList::Whitelist, Change::RemoveAll),
];

/// An endpoint of this dialect.
fn endpoint(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    handler: MethodRouter<AppState>,
) -> Endpoint {
    openapi::endpoint(Dialect::WuKong, method, path, summary, handler)
}

/// Channel bodies of `/channel` and `/channel/info`, for the document (the handlers
/// read the 0/1 attributes loosely).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ChannelBody {
    channel_id: String,
    channel_type: u8,
    ban: Option<u8>,
    disband: Option<u8>,
    send_ban: Option<u8>,
    large: Option<u8>,
    allow_stranger: Option<u8>,
    /// `/channel` only: replace the subscribers.
    reset: Option<u8>,
    /// `/channel` only.
    subscribers: Option<Vec<String>>,
}

/// Bodies of the subscriber endpoints, for the document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct SubscribersBody {
    channel_id: String,
    channel_type: u8,
    subscribers: Vec<String>,
    /// `subscriber_add` only: replace the list.
    reset: Option<u8>,
}

/// Bodies of the blacklist and whitelist endpoints, for the document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct UidsBody {
    channel_id: String,
    channel_type: u8,
    uids: Vec<String>,
}

/// Bodies that name only a channel, for the document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ChannelRefBody {
    channel_id: String,
    channel_type: u8,
}

/// Every endpoint of the dialect. The router and the OpenAPI document are both built
/// from this list, so the document names exactly what is served.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    let system_uids_add = || post(|s: State<AppState>, b: Bytes| set_system_uids(s, b, true));
    let system_uids_remove = || post(|s: State<AppState>, b: Bytes| set_system_uids(s, b, false));
    let mut all = vec![
        endpoint("get", "/health", "Liveness", get(health)),
        endpoint("get", "/openapi.json", "This document", get(openapi_json)),
        endpoint("get", "/route", "Addresses a client connects to", get(route)).query(schema_of::<RouteQuery>),
        endpoint("post", "/route/batch", "Addresses for many uids, grouped by node", post(route_batch))
            .body(schema_of::<Vec<String>>)
            .query(schema_of::<RouteQuery>),
        endpoint("get", "/cluster/nodes", "The cluster's nodes, live or not", get(cluster_nodes)),
        endpoint("post", "/user/token", "Register a login token for (uid, device flag)", post(user_token))
            .body(schema_of::<UserTokenReq>),
        endpoint("get", "/user/devices", "A user's registered devices (never their tokens)", get(user_devices))
            .query(schema_of::<UidQuery>),
        endpoint("post", "/user/device_quit", "Forget a device's token and kick it", post(device_quit))
            .body(schema_of::<DeviceQuitReq>),
        endpoint("post", "/user/onlinestatus", "Which of these uids are online", post(admin::online_status))
            .body(schema_of::<Vec<String>>),
        endpoint("get", "/user/systemuids", "The system accounts", get(system_uids)),
        endpoint("post", "/user/systemuids_add", "Make uids system accounts", system_uids_add())
            .body(schema_of::<UidsReq>),
        endpoint("post", "/user/systemuids_remove", "Make system accounts ordinary", system_uids_remove())
            .body(schema_of::<UidsReq>),
        endpoint("post", "/systemuids_add", "LiMaoIM's path of /user/systemuids_add", system_uids_add())
            .body(schema_of::<UidsReq>),
        endpoint("post", "/systemuids_remove", "LiMaoIM's path of /user/systemuids_remove", system_uids_remove())
            .body(schema_of::<UidsReq>),
        endpoint("post", "/channel", "Create or update a channel and add subscribers", post(channel_create))
            .body(schema_of::<ChannelBody>),
        endpoint("get", "/channel/info", "A channel's attributes", get(lists::channel_info))
            .query(schema_of::<ChannelQuery>),
        endpoint("get", "/channel/search", "Channels with attributes, by id prefix", get(lists::search))
            .query(schema_of::<lists::SearchQuery>),
        endpoint("get", "/channel/subscribers", "A page of a channel's subscribers", get(lists::subscribers))
            .query(schema_of::<lists::ListQuery>),
        endpoint("get", "/channel/blacklist", "A page of a channel's blacklist", get(lists::blacklist))
            .query(schema_of::<lists::ListQuery>),
        endpoint("post", "/channel/info", "Set a channel's attributes", post(channel_info))
            .body(schema_of::<ChannelBody>),
        endpoint("post", "/channel/delete", "Disband a channel and delete its history", post(channel_delete))
            .body(schema_of::<ChannelRefBody>),
        endpoint("get", "/channel/whitelist", "A page of a channel's whitelist", get(lists::whitelist))
            .query(schema_of::<lists::ListQuery>),
        endpoint("post", "/channel/messagesync", "A page of a channel's history", post(message_sync))
            .body(schema_of::<MessageSyncReq>),
        endpoint("get", "/channel/max_message_seq", "A channel's last seq", get(lookup::max_message_seq))
            .query(schema_of::<lookup::ChannelQuery>),
        endpoint("get", "/channel/last_message", "A channel's newest message", get(lookup::last_message))
            .query(schema_of::<lookup::ChannelQuery>),
        endpoint("post", "/message/send", "Send a message", post(message_send)).body(schema_of::<MessageSendReq>),
        endpoint("post", "/message/sendbatch", "Send one message to many people", post(send_batch))
            .body(schema_of::<SendBatchReq>),
        endpoint("post", "/message/sync", "A user's unconsumed command messages", post(command_sync))
            .body(schema_of::<CommandSyncReq>),
        endpoint("post", "/message/syncack", "Consume what the last /message/sync returned", post(command_sync_ack))
            .body(schema_of::<CommandSyncAckReq>),
        endpoint("post", "/messages", "Messages of a channel by seq, id or client_msg_no", post(lookup::messages))
            .body(schema_of::<lookup::MessagesReq>),
        endpoint("post", "/message", "One message by id or client_msg_no", post(lookup::message))
            .body(schema_of::<lookup::MessageReq>),
        endpoint("get", "/message/byclientmsgno", "One message by client_msg_no", get(lookup::by_client_msg_no))
            .query(schema_of::<lookup::ByClientMsgNoQuery>),
        endpoint("post", "/message/revoke", "Revoke a message (sender, group owner or admin)", post(extras::revoke))
            .body(schema_of::<extras::ChangeReq>),
        endpoint("post", "/message/edit", "Replace a message's content (its sender)", post(extras::edit))
            .body(schema_of::<extras::ChangeReq>),
        endpoint("post", "/message/readed", "Mark messages read by a user (read receipts)", post(extras::readed))
            .body(schema_of::<extras::ReadReq>),
        endpoint("post", "/message/readers", "Who read a message", post(extras::readers))
            .body(schema_of::<extras::ReadersReq>),
        endpoint("post", "/message/extras", "The extras of a channel's messages by seq", post(extras::extras))
            .body(schema_of::<extras::ExtrasReq>),
        endpoint("post", "/message/reaction", "Give a message a reaction, or take it back", post(extras::reaction))
            .body(schema_of::<extras::ReactionReq>),
        endpoint("post", "/message/reactions", "Who gave a message which reaction", post(extras::reactions))
            .body(schema_of::<extras::ReactionsReq>),
        endpoint(
            "post",
            "/message/extra/sync",
            "What changed in a channel's messages after a version",
            post(extras::sync),
        )
        .body(schema_of::<extras::ExtraSyncReq>),
        endpoint("post", "/conversation/sync", "A user's conversations with unread counts", post(conversation_sync))
            .body(schema_of::<ConversationSyncReq>),
        endpoint(
            "post",
            "/conversation/channels",
            "A user's conversations as stored channels",
            post(lookup::conversation_channels),
        )
        .body(schema_of::<lookup::UidReq>),
        endpoint("post", "/conversation/syncMessages", "Catch up on several channels", post(lookup::sync_messages))
            .body(schema_of::<lookup::SyncMessagesReq>),
        endpoint("post", "/conversations/setUnread", "Leave N messages unread", post(set_unread))
            .body(schema_of::<ConversationReq>),
        endpoint("post", "/conversations/clearUnread", "Mark a conversation read", post(clear_unread))
            .body(schema_of::<ConversationReq>),
        endpoint("post", "/conversations/delete", "Hide a conversation until news", post(delete_conversation))
            .body(schema_of::<ConversationReq>),
        endpoint("get", "/connz", "A node's connections, or a user's on every node", get(admin::connz))
            .query(schema_of::<admin::ConnzQuery>),
        endpoint("get", "/varz", "This node's statistics", get(admin::varz)),
        endpoint("get", "/webhook/status", "Each webhook event's queue and last error", get(admin::webhook_status)),
        endpoint(
            "post",
            "/webhook/retry",
            "Post the webhook events waiting for a retry now",
            post(admin::webhook_retry),
        )
        .body(schema_of::<admin::NoBody>),
        endpoint("post", "/conn/kick", "Kick one connection (DISCONNECT, then close)", post(admin::conn_kick))
            .body(schema_of::<admin::ConnReq>),
        endpoint("post", "/conn/remove", "Close one connection", post(admin::conn_remove))
            .body(schema_of::<admin::ConnReq>),
    ];
    for (path, list, change) in LIST_ROUTES {
        let handler = post(move |s: State<AppState>, b: Bytes| members(s, b, list, change));
        let summary = match change {
            Change::Add => "Add uids to a channel list",
            Change::Set => "Replace a channel list",
            Change::Remove => "Remove uids from a channel list",
            Change::RemoveAll => "Empty a channel list",
        };
        let body: fn() -> Value = match (list, change) {
            (_, Change::RemoveAll) => schema_of::<ChannelRefBody>,
            (MemberList::Subscribers, _) => schema_of::<SubscribersBody>,
            _ => schema_of::<UidsBody>,
        };
        all.push(endpoint("post", path, summary, handler).body(body));
    }
    all
}

/// The dialect's routes, with the manager-token check and the body limit applied.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    openapi::routes(endpoints())
        .layer(middleware::from_fn_with_state(state.clone(), require_manager_token))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::map_response(move |r: Response| json_body_limit(r, limit)))
        .with_state(state)
}

/// A body over the limit is refused (413) before any handler runs; say so in
/// WuKongIM's JSON error shape, naming the setting. Other plain-text rejections get
/// the same shape.
async fn json_body_limit(response: Response, limit: usize) -> Response {
    if response.status() != axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return openapi::json_errors(Dialect::WuKong, response).await;
    }
    let body = json!({"msg": format!("body: larger than {limit} bytes (api.max_body_bytes)"), "status": 413});
    (axum::http::StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response()
}

/// `/openapi.json`: the document of every dialect this server has turned on.
async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(openapi::document(&state.settings))
}

/// With a manager token configured, every request must carry it in the `token` header.
async fn require_manager_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let expected = &state.settings.manager_token;
    if !expected.is_empty() && !crate::presents_token(&headers, expected) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Parses a JSON body; errors name the field (`device_flag: invalid type …`).
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad(format!("invalid body: {}", e.inner()))
        } else {
            ApiError::bad(format!("{path}: {}", e.inner()))
        }
    })
}

/// A query string parsed like a body: a malformed one is a 400 in WuKongIM's shape.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| Self(q))
            .map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))
    }
}

fn ok() -> Json<Value> {
    Json(json!({"status": 200}))
}

fn check_uid(field: &str, uid: &str) -> Result<(), ApiError> {
    if is_valid_uid(uid) { Ok(()) } else { Err(ApiError::bad(format!("{field}: {ID_RULE}"))) }
}

fn check_channel(channel_id: &str, channel_type: u8) -> Result<(), ApiError> {
    if !is_valid_uid(channel_id) {
        return Err(ApiError::bad(format!("channel_id: {ID_RULE}")));
    }
    if channel_type == 0 || channel_type > MAX_CHANNEL_TYPE {
        return Err(ApiError::bad(format!("channel_type: unknown channel type {channel_type}")));
    }
    Ok(())
}

async fn health(State(state): State<AppState>) -> Response {
    crate::health_response(&state.core)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RouteQuery {
    /// The user to place (`/route`); without it, the node asked answers with itself.
    #[serde(default)]
    uid: Option<String>,
    /// `1`: the intranet TCP address instead of the public ones.
    #[serde(default)]
    intranet: Option<String>,
}

/// A node's addresses in `/route`'s shape.
fn route_addrs(node: &NodeInfo, intranet: bool) -> Value {
    let a = &node.addrs;
    if intranet {
        json!({"tcp_addr": a.intranet_tcp_addr, "ws_addr": "", "wss_addr": ""})
    } else {
        json!({"tcp_addr": a.tcp_addr, "ws_addr": a.ws_addr, "wss_addr": a.wss_addr})
    }
}

/// `GET /route?uid=…&intranet=0|1`: where a client should connect — the uid's home
/// node among the live nodes (`docs/cluster.md`), or this node without a uid.
async fn route(State(state): State<AppState>, ApiQuery(q): ApiQuery<RouteQuery>) -> Result<Json<Value>, ApiError> {
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
async fn route_batch(
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
async fn cluster_nodes(State(state): State<AppState>) -> Json<Value> {
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

#[derive(Deserialize, utoipa::ToSchema)]
struct UidQuery {
    uid: String,
}

/// `GET /user/devices?uid=`: `[{device_flag, device_level}]` for each device flag a
/// token is registered for. Tokens are stored as digests and never shown.
async fn user_devices(State(state): State<AppState>, ApiQuery(q): ApiQuery<UidQuery>) -> Result<Json<Value>, ApiError> {
    check_uid("uid", &q.uid)?;
    let devices = state
        .on_core(move |c| {
            let mut found = Vec::new();
            for flag in 0..=2u8 {
                if let Some(device) = c.store().device(&q.uid, flag).map_err(ApiError::Storage)? {
                    found.push(json!({"device_flag": flag, "device_level": device.level as u8}));
                }
            }
            Ok::<_, ApiError>(found)
        })
        .await?;
    Ok(Json(Value::Array(devices)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct UserTokenReq {
    uid: String,
    token: String,
    #[serde(default)]
    device_flag: u8,
    #[serde(default)]
    device_level: u8,
}

fn check_device_flag(flag: u8) -> Result<(), ApiError> {
    if flag <= 2 { Ok(()) } else { Err(ApiError::bad("device_flag: must be 0 (app), 1 (web) or 2 (pc)")) }
}

/// `POST /user/token`: registers the token a (uid, device_flag) must present. A master
/// registration kicks the current logins of that flag.
async fn user_token(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: UserTokenReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    if req.uid == state.settings.system_uid {
        return Err(ApiError::bad("uid: the system uid cannot log in"));
    }
    if req.token.is_empty() {
        return Err(ApiError::bad("token: must not be empty"));
    }
    check_device_flag(req.device_flag)?;
    let level = DeviceLevel::from_u8(req.device_level)
        .ok_or_else(|| ApiError::bad("device_level: must be 0 (slave) or 1 (master)"))?;

    let uid = req.uid.clone();
    let banned = state.on_core(move |c| c.is_user_banned(&uid).map_err(ApiError::Storage)).await?;
    if banned {
        return Ok(Json(json!({"status": ReasonCode::Ban.as_u8()})));
    }
    let (uid, flag) = (req.uid.clone(), req.device_flag);
    let device = Device::new(&req.token, level);
    state.on_core(move |c| c.store().put_device(&uid, flag, &device).map_err(ApiError::Storage)).await?;
    if level == DeviceLevel::Master {
        let delay = state.settings.token_kick_close_delay;
        state.core.kick(&req.uid, Some(flag), ReasonCode::ConnectKick, "login in other device", delay);
    }
    Ok(ok())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct DeviceQuitReq {
    uid: String,
    #[serde(default = "all_devices")]
    device_flag: i16,
}

fn all_devices() -> i16 {
    -1
}

/// `POST /user/device_quit`: forgets the token of one device flag (-1: all) and kicks
/// its connections, so that device must log in again.
async fn device_quit(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: DeviceQuitReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    let flags: Vec<u8> = match req.device_flag {
        -1 => vec![0, 1, 2],
        f @ 0..=2 => vec![f as u8],
        _ => return Err(ApiError::bad("device_flag: must be -1 (all), 0 (app), 1 (web) or 2 (pc)")),
    };
    let uid = req.uid.clone();
    let removed = flags.clone();
    state
        .on_core(move |c| c.store().apply(c.store().device_removal_writes(&uid, &removed)).map_err(ApiError::Storage))
        .await?;
    for flag in flags {
        state.core.kick(&req.uid, Some(flag), ReasonCode::ConnectKick, "device quit", state.settings.kick_close_delay);
    }
    Ok(ok())
}

#[derive(Deserialize)]
struct ChannelInfoReq {
    channel_id: String,
    channel_type: u8,
    #[serde(flatten)]
    flags: HashMap<String, Value>,
}

/// Reads a 0/1 attribute; absent means 0.
fn flag(flags: &HashMap<String, Value>, name: &str) -> Result<bool, ApiError> {
    match flags.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(ApiError::bad(format!("{name}: must be 0 or 1"))),
        },
    }
}

/// `POST /channel/info`: sets a channel's attributes. `ban=1` on a person channel bans
/// the user: current connections get DISCONNECT(Ban) and new logins CONNACK(Ban).
async fn channel_info(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ChannelInfoReq = parse(&body)?;
    check_channel(&req.channel_id, req.channel_type)?;
    let info = channel_attributes(&req.flags)?;
    let key = ChannelKey::new(req.channel_id.clone(), req.channel_type);
    state.on_core(move |c| c.set_channel_info(&key, info).map_err(ApiError::Storage)).await?;
    if req.channel_type == PERSON && info.ban {
        state.core.kick(&req.channel_id, None, ReasonCode::Ban, "banned", state.settings.kick_close_delay);
    }
    Ok(ok())
}

/// Parses the 0/1 attributes of a channel body.
fn channel_attributes(flags: &HashMap<String, Value>) -> Result<ChannelInfo, ApiError> {
    Ok(ChannelInfo {
        ban: flag(flags, "ban")?,
        disband: flag(flags, "disband")?,
        send_ban: flag(flags, "send_ban")?,
        large: flag(flags, "large")?,
        allow_stranger: flag(flags, "allow_stranger")?,
    })
}

/// Reads an optional list of uids from a body, checking each.
fn uid_list(flags: &HashMap<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    let Some(value) = flags.get(field).filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list: Vec<String> = serde_json::from_value(value.clone())
        .map_err(|_| ApiError::bad(format!("{field}: must be an array of uids")))?;
    for (i, uid) in list.iter().enumerate() {
        check_uid(&format!("{field}[{i}]"), uid)?;
    }
    Ok(list)
}

/// `POST /channel`: creates or updates a channel's attributes and adds subscribers
/// (`reset=1` replaces them). Person channels take no subscribers.
async fn channel_create(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ChannelInfoReq = parse(&body)?;
    check_channel(&req.channel_id, req.channel_type)?;
    let info = channel_attributes(&req.flags)?;
    let subscribers = uid_list(&req.flags, "subscribers")?;
    let reset = flag(&req.flags, "reset")?;
    if req.channel_type == PERSON && !subscribers.is_empty() {
        return Err(ApiError::bad("subscribers: person channels have no subscribers"));
    }
    let key = ChannelKey::new(req.channel_id.clone(), req.channel_type);
    state.on_core(move |c| c.put_channel(&key, info, &subscribers, reset).map_err(ApiError::Storage)).await?;
    Ok(ok())
}

/// How a list endpoint changes a list.
#[derive(Clone, Copy, Debug)]
enum Change {
    Add,
    Set,
    Remove,
    /// Empty the list; the body names only the channel.
    RemoveAll,
}

/// The subscriber, blacklist and whitelist endpoints. Subscriber bodies name the uids
/// `subscribers`, list bodies `uids`; `subscriber_add` also honours `reset`.
async fn members(
    State(state): State<AppState>,
    body: Bytes,
    list: MemberList,
    change: Change,
) -> Result<Json<Value>, ApiError> {
    let req: ChannelInfoReq = parse(&body)?;
    check_channel(&req.channel_id, req.channel_type)?;
    let field = if list == MemberList::Subscribers { "subscribers" } else { "uids" };
    let uids = if matches!(change, Change::RemoveAll) { Vec::new() } else { uid_list(&req.flags, field)? };
    if uids.len() > MAX_LIST_CHANGE {
        return Err(ApiError::bad(format!("{field}: at most {MAX_LIST_CHANGE} uids per call")));
    }
    if list == MemberList::Subscribers && req.channel_type == PERSON {
        return Err(ApiError::bad("channel_type: person channels have no subscribers"));
    }
    if list == MemberList::Subscribers && flag(&req.flags, "temp_subscriber")? {
        return Err(ApiError::bad("temp_subscriber: temporary subscribers are not supported"));
    }
    let reset = matches!(change, Change::Set) || (matches!(change, Change::Add) && flag(&req.flags, "reset")?);
    let change = match change {
        Change::Remove => ListChange::Remove,
        Change::RemoveAll => ListChange::Set,
        _ if reset => ListChange::Set,
        _ => ListChange::Add,
    };
    let key = ChannelKey::new(req.channel_id.clone(), req.channel_type);
    state.on_core(move |c| c.change_members(list, &key, &uids, change).map_err(ApiError::Storage)).await?;
    Ok(ok())
}

/// Most uids one list change may name.
const MAX_LIST_CHANGE: usize = 100_000;

/// `POST /channel/delete`: disbands the channel, empties its lists and deletes its
/// history (but the newest message, which keeps the seq counter). Person channels
/// cannot be deleted.
async fn channel_delete(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ChannelInfoReq = parse(&body)?;
    check_channel(&req.channel_id, req.channel_type)?;
    if req.channel_type == PERSON {
        return Err(ApiError::bad("channel_type: person channels cannot be deleted"));
    }
    let key = ChannelKey::new(req.channel_id, req.channel_type);
    state.on_core(move |c| c.delete_channel(&key).map_err(ApiError::Storage)).await?;
    Ok(ok())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SendBatchReq {
    #[serde(default)]
    header: HeaderReq,
    from_uid: String,
    subscribers: Vec<String>,
    payload: String,
}

/// `POST /message/sendbatch`: the same payload as a person message from `from_uid` to
/// each subscriber, sent concurrently. `{"fail_uids": [...], "reason": [...]}` lists who
/// did not get it and why (in the order asked).
async fn send_batch(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: SendBatchReq = parse(&body)?;
    check_uid("from_uid", &req.from_uid)?;
    if req.subscribers.is_empty() {
        return Err(ApiError::bad("subscribers: required"));
    }
    if req.subscribers.len() > MAX_SEND_SUBSCRIBERS {
        return Err(ApiError::bad(format!("subscribers: at most {MAX_SEND_SUBSCRIBERS} uids")));
    }
    let payload = required_payload(&req.payload)?;
    let header = req.header.flags();
    let mut sends = tokio::task::JoinSet::new();
    let mut failed: Vec<(usize, String, String)> = Vec::new();
    for (i, uid) in req.subscribers.into_iter().enumerate() {
        if !is_valid_uid(&uid) {
            failed.push((i, uid, ID_RULE.to_owned()));
            continue;
        }
        let send = hongyan_core::AppSend {
            from_uid: req.from_uid.clone(),
            channel_id: uid.clone(),
            channel_type: PERSON,
            header,
            payload: payload.clone(),
            ..hongyan_core::AppSend::default()
        };
        let core = state.core.clone();
        sends.spawn(async move { (i, uid, core.send_as_app(send).await) });
    }
    while let Some(done) = sends.join_next().await {
        let (i, uid, result) = done.map_err(|e| ApiError::Internal(format!("send task failed: {e}")))?;
        if let Err(e) = result {
            failed.push((i, uid, e.reason_code().name().to_owned()));
        }
    }
    failed.sort_by_key(|f| f.0);
    let (fail_uids, reason): (Vec<String>, Vec<String>) = failed.into_iter().map(|(_, u, r)| (u, r)).unzip();
    Ok(Json(json!({"fail_uids": fail_uids, "reason": reason})))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(default)]
struct HeaderReq {
    no_persist: u8,
    red_dot: u8,
    sync_once: u8,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct MessageSendReq {
    #[serde(default)]
    header: HeaderReq,
    #[serde(default)]
    client_msg_no: String,
    #[serde(default)]
    from_uid: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    channel_type: u8,
    #[serde(default)]
    expire: u32,
    #[serde(default)]
    subscribers: Vec<String>,
    payload: String,
}

impl HeaderReq {
    /// The header flags a request asks for (1 = on).
    fn flags(&self) -> hongyan_proto::HeaderFlags {
        hongyan_proto::HeaderFlags {
            no_persist: self.no_persist == 1,
            red_dot: self.red_dot == 1,
            sync_once: self.sync_once == 1,
            dup: false,
        }
    }
}

/// A send's `payload`: base64, not empty.
fn required_payload(text: &str) -> Result<Bytes, ApiError> {
    let payload = decode_base64("payload", text)?;
    if payload.is_empty() {
        return Err(ApiError::bad("payload: required"));
    }
    Ok(payload)
}

fn decode_base64(field: &str, text: &str) -> Result<Bytes, ApiError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Bytes::from)
        .map_err(|_| ApiError::bad(format!("{field}: not valid base64")))
}

/// Most uids one send to a list of subscribers may name.
const MAX_SEND_SUBSCRIBERS: usize = 10_000;

/// A refused send as an HTTP answer: the reason's name, and its code as `status`
/// where WuKongIM uses one.
fn refused(e: hongyan_core::SendError) -> ApiError {
    let reason = match e {
        hongyan_core::SendError::Refused(reason) => reason,
        hongyan_core::SendError::Datasource(why) => return ApiError::Unavailable(why),
    };
    match reason {
        ReasonCode::SystemError => {
            ApiError::Storage(hongyan_store::StoreError::Engine("the message could not be stored".into()))
        }
        ReasonCode::NotAllowSend => ApiError::bad(format!("client_msg_no: {CLIENT_MSG_NO_RULE}")),
        ReasonCode::NotSupportChannelType => ApiError::bad("channel_type: unknown channel type"),
        ReasonCode::ChannelIdError => ApiError::bad(format!("channel_id: {ID_RULE}")),
        other => ApiError::bad(format!("message refused: {}", other.name())),
    }
}

/// `POST /message/send`: sends a message on the app server's behalf through the same
/// pipeline as SEND (stored, acknowledged once durable, delivered to online devices).
async fn message_send(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: MessageSendReq = parse(&body)?;
    let to_list = !req.subscribers.is_empty();
    if to_list {
        if !req.channel_id.is_empty() {
            return Err(ApiError::bad("subscribers: give either channel_id or subscribers, not both"));
        }
        if req.header.sync_once != 1 {
            return Err(ApiError::bad("subscribers: sending to a list of subscribers requires header.sync_once=1"));
        }
        if req.subscribers.len() > MAX_SEND_SUBSCRIBERS {
            return Err(ApiError::bad(format!("subscribers: at most {MAX_SEND_SUBSCRIBERS} uids")));
        }
        for (i, uid) in req.subscribers.iter().enumerate() {
            check_uid(&format!("subscribers[{i}]"), uid)?;
        }
    } else if req.channel_id.is_empty() {
        return Err(ApiError::bad("channel_id: required"));
    }
    if !is_valid_client_msg_no(&req.client_msg_no) {
        return Err(ApiError::bad(format!("client_msg_no: {CLIENT_MSG_NO_RULE}")));
    }
    if !req.from_uid.is_empty() {
        check_uid("from_uid", &req.from_uid)?;
    }
    if !to_list {
        check_channel(&req.channel_id, req.channel_type)?;
    }
    let payload = required_payload(&req.payload)?;
    let header = req.header.flags();
    let send = hongyan_core::AppSend {
        from_uid: req.from_uid,
        channel_id: req.channel_id,
        channel_type: req.channel_type,
        client_msg_no: req.client_msg_no,
        header,
        expire: req.expire,
        payload,
        subscribers: req.subscribers,
    };
    let sent = state.core.send_as_app(send).await.map_err(refused)?;
    if to_list {
        // WuKongIM answers a send to a list with the status alone.
        return Ok(Json(json!({"status": 200})));
    }
    Ok(Json(json!({
        "status": 200,
        "data": {
            "message_id": sent.message_id,
            "message_idstr": sent.message_id.to_string(),
            "client_msg_no": sent.client_msg_no,
            "message_seq": sent.seq,
        }
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct MessageSyncReq {
    #[serde(default)]
    login_uid: String,
    channel_id: String,
    channel_type: u8,
    // WuKongIM v2.
    #[serde(default)]
    start_message_seq: u64,
    #[serde(default)]
    end_message_seq: u64,
    #[serde(default)]
    pull_mode: u8,
    // LiMaoIM.
    min_message_seq: Option<u64>,
    max_message_seq: Option<u64>,
    reverse: Option<bool>,
    #[serde(default)]
    limit: usize,
}

/// Most messages one messagesync returns.
const SYNC_LIMIT_MAX: usize = 10_000;
/// Messages returned when no limit is given.
const SYNC_LIMIT_DEFAULT: usize = 100;

/// A stored message as the API shows it (`render::MessageOut`), as a JSON value.
pub(crate) fn message_json(m: &StoredMessage, channel: &ChannelKey, system_uid: &str) -> Value {
    MessageOut::new(m, channel, system_uid, &m.message.from_uid).to_value()
}

/// Like [`message_json`], with a person channel named as `viewer` sees it: by the
/// member that is not `viewer`.
pub(crate) fn message_json_for(m: &StoredMessage, channel: &ChannelKey, system_uid: &str, viewer: &str) -> Value {
    MessageOut::new(m, channel, system_uid, viewer).to_value()
}

/// `POST /channel/messagesync`: a page of a channel's history, oldest first.
///
/// WuKongIM v2 fields: `start_message_seq`, `end_message_seq`, `pull_mode` (0: down, the
/// newest `limit` in (end, start]; 1: up, the oldest `limit` in [start, end), end 0 =
/// no bound); start = end = 0 gives the newest `limit`. LiMaoIM fields:
/// `min_message_seq`, `max_message_seq`, `reverse` (true: the oldest `limit` in
/// [min, max); false: the newest; max 0 = no bound). The answer echoes the request's
/// dialect.
async fn message_sync(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: MessageSyncReq = parse(&body)?;
    check_channel(&req.channel_id, req.channel_type)?;
    let limit = match req.limit {
        0 => SYNC_LIMIT_DEFAULT,
        n if n > SYNC_LIMIT_MAX => return Err(ApiError::bad(format!("limit: must be at most {SYNC_LIMIT_MAX}"))),
        n => n,
    };
    let channel = if req.channel_type == PERSON {
        check_uid("login_uid", &req.login_uid)?;
        ChannelKey::new(hongyan_core::channel::person_channel_id(&req.login_uid, &req.channel_id), PERSON)
    } else {
        ChannelKey::new(req.channel_id.clone(), req.channel_type)
    };
    let limao = req.min_message_seq.is_some() || req.max_message_seq.is_some() || req.reverse.is_some();
    // [low, high) with high 0 = unbounded, and which end to take `limit` from.
    let (low, high, newest) = if limao {
        let (min, max) = (req.min_message_seq.unwrap_or(0), req.max_message_seq.unwrap_or(0));
        (min.max(1), max, !req.reverse.unwrap_or(false))
    } else {
        let (start, end) = (req.start_message_seq, req.end_message_seq);
        match (start, end, req.pull_mode) {
            (0, 0, _) => (1, 0, true),
            (_, _, 0) => (end.saturating_add(1), if start == 0 { 0 } else { start.saturating_add(1) }, true),
            (_, _, 1) => (start.max(1), end, false),
            (_, _, other) => return Err(ApiError::bad(format!("pull_mode: must be 0 or 1, not {other}"))),
        }
    };
    let key = channel.clone();
    let (mut messages, more) = state
        .on_core::<_, ApiError>(move |core| {
            let log = core.log();
            let order = if newest { Order::Descending } else { Order::Ascending };
            let mut page =
                if high != 0 && high <= low { Vec::new() } else { log.read(&key, low, high, limit + 1, order)? };
            let more = page.len() > limit;
            page.truncate(limit);
            // Expired messages are gone for readers; the page may come out shorter.
            let now = hongyan_core::now_ms();
            page.retain(|m| !hongyan_core::commands::is_expired(&m.message, now));
            Ok((page, more))
        })
        .await?;
    if newest {
        messages.reverse();
    }
    let system = &state.settings.system_uid;
    let messages = messages.iter().map(|m| MessageOut::new(m, &channel, system, &m.message.from_uid)).collect();
    let bounds = if limao {
        [("min_message_seq", req.min_message_seq.unwrap_or(0)), ("max_message_seq", req.max_message_seq.unwrap_or(0))]
    } else {
        [("start_message_seq", req.start_message_seq), ("end_message_seq", req.end_message_seq)]
    };
    Ok(render::json_response(&SyncPage { bounds, more, messages }))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CommandSyncReq {
    uid: String,
    /// Ignored, as by WuKongIM v2 (the cursors are the server's).
    #[serde(default)]
    #[allow(dead_code)]
    message_seq: u64,
    #[serde(default)]
    limit: usize,
}

/// Commands one `/message/sync` returns when no limit is given.
const COMMAND_SYNC_DEFAULT: usize = 200;

/// `POST /message/sync`: the user's command (SyncOnce) messages not yet consumed,
/// oldest first per channel. The next `/message/syncack` consumes them.
async fn command_sync(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: CommandSyncReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    let limit = match req.limit {
        0 => COMMAND_SYNC_DEFAULT,
        n if n > SYNC_LIMIT_MAX => return Err(ApiError::bad(format!("limit: must be at most {SYNC_LIMIT_MAX}"))),
        n => n,
    };
    let uid = req.uid.clone();
    let page = state.on_core(move |c| c.pending_commands(&uid, limit).map_err(ApiError::Storage)).await?;
    let system = &state.settings.system_uid;
    let messages: Vec<Value> = page
        .iter()
        .map(|(channel, m)| message_json_for(m, &hongyan_core::channel::base_channel(channel), system, &req.uid))
        .collect();
    Ok(Json(Value::Array(messages)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CommandSyncAckReq {
    uid: String,
    last_message_seq: u64,
}

/// `POST /message/syncack`: consumes what the user's last `/message/sync` returned.
/// `last_message_seq` must be non-zero (WuKongIM checks only that).
async fn command_sync_ack(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: CommandSyncAckReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    if req.last_message_seq == 0 {
        return Err(ApiError::bad("last_message_seq: must not be 0"));
    }
    let uid = req.uid.clone();
    state.on_core(move |c| c.ack_synced_commands(&uid).map_err(ApiError::Storage)).await?;
    Ok(ok())
}

fn conversation_error(e: hongyan_core::conversation::ConversationError) -> ApiError {
    match e {
        hongyan_core::conversation::ConversationError::Storage(e) => ApiError::Storage(e),
        hongyan_core::conversation::ConversationError::NotFound => {
            ApiError::bad("channel_id: the user has no conversation with this channel")
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ConversationSyncReq {
    uid: String,
    #[serde(default)]
    version: i64,
    #[serde(default)]
    last_msg_seqs: String,
    #[serde(default)]
    msg_count: usize,
    #[serde(default)]
    only_unread: u8,
    #[serde(default)]
    exclude_channel_types: Vec<u8>,
    #[serde(default)]
    page: usize,
    #[serde(default)]
    page_size: usize,
}

/// Most recent messages returned per conversation.
const RECENTS_MAX: usize = 100;
/// Most conversations per page.
const PAGE_SIZE_MAX: usize = 500;

/// `POST /conversation/sync`: the user's conversations with news, newest first, each
/// with its unread count and `msg_count` most recent messages (newest first).
///
/// `last_msg_seqs` (`"channel_id:channel_type:seq|…"`, the peer's uid for person chats)
/// leaves out conversations the client is already up to date with; `version` (the
/// `version` of a previous answer) leaves out those with nothing newer. Unlike WuKongIM,
/// `msg_count: 0` still lists the conversations, without recent messages.
async fn conversation_sync(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: ConversationSyncReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    if req.msg_count > RECENTS_MAX {
        return Err(ApiError::bad(format!("msg_count: must be at most {RECENTS_MAX}")));
    }
    if req.page_size > PAGE_SIZE_MAX {
        return Err(ApiError::bad(format!("page_size: must be at most {PAGE_SIZE_MAX}")));
    }
    let page_size = if req.page_size == 0 { 100 } else { req.page_size };
    let page = req.page.max(1);
    let mut known = HashMap::new();
    for entry in req.last_msg_seqs.split('|').filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split(':').collect();
        let [id, ty, seq] = parts.as_slice() else {
            return Err(ApiError::bad(format!("last_msg_seqs: `{entry}` is not channel_id:channel_type:seq")));
        };
        let (Ok(ty), Ok(seq)) = (ty.parse::<u8>(), seq.parse::<u64>()) else {
            return Err(ApiError::bad(format!("last_msg_seqs: `{entry}` is not channel_id:channel_type:seq")));
        };
        known.insert(state.core.channel_for(&req.uid, id, ty), seq);
    }
    // At most 256 distinct types, however long the list sent.
    let mut exclude_types = req.exclude_channel_types.clone();
    exclude_types.sort_unstable();
    exclude_types.dedup();
    let query = ConversationQuery {
        known,
        recents: req.msg_count,
        newer_than_ms: req.version,
        only_unread: req.only_unread != 0,
        exclude_types,
        offset: (page - 1).saturating_mul(page_size),
        limit: page_size,
    };
    let uid = req.uid.clone();
    let views = state.on_core(move |core| core.conversations(&uid, &query).map_err(ApiError::Storage)).await?;
    let system = &state.settings.system_uid;
    let items: Vec<ConversationOut<'_>> = views
        .iter()
        .map(|v| ConversationOut {
            channel_id: if v.channel.channel_type == PERSON {
                hongyan_core::channel::person_channel_members(&v.channel.channel_id)
                    .map(|(a, b)| if a == req.uid { b } else { a })
                    .unwrap_or_default()
            } else {
                &v.channel.channel_id
            },
            channel_type: v.channel.channel_type,
            unread: v.unread,
            timestamp: v.last_timestamp_ms / 1000,
            last_msg_seq: v.last_seq,
            last_client_msg_no: &v.last_client_msg_no,
            offset_msg_seq: 0,
            readed_to_msg_seq: v.state.read_to,
            version: v.last_timestamp_ms,
            recents: v.recents.iter().map(|m| MessageOut::new(m, &v.channel, system, &m.message.from_uid)).collect(),
        })
        .collect();
    Ok(render::json_response(&items))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ConversationReq {
    uid: String,
    channel_id: String,
    channel_type: u8,
    #[serde(default)]
    unread: u64,
    #[serde(default)]
    message_seq: u64,
}

fn conversation_target(state: &AppState, body: &Bytes) -> Result<(ConversationReq, ChannelKey), ApiError> {
    let req: ConversationReq = parse(body)?;
    check_uid("uid", &req.uid)?;
    check_channel(&req.channel_id, req.channel_type)?;
    let channel = state.core.channel_for(&req.uid, &req.channel_id, req.channel_type);
    Ok((req, channel))
}

/// `POST /conversations/setUnread`: leaves `unread` messages unread (the cursor only
/// moves forward, so this cannot raise the count).
async fn set_unread(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let (req, channel) = conversation_target(&state, &body)?;
    state.on_core(move |core| core.set_unread(&req.uid, &channel, req.unread).map_err(conversation_error)).await?;
    Ok(ok())
}

/// `POST /conversations/clearUnread`: everything read (up to `message_seq` when given).
async fn clear_unread(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let (req, channel) = conversation_target(&state, &body)?;
    state
        .on_core(move |core| core.clear_unread(&req.uid, &channel, req.message_seq).map_err(conversation_error))
        .await?;
    Ok(ok())
}

/// `POST /conversations/delete`: hides the conversation until a newer message arrives.
async fn delete_conversation(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let (req, channel) = conversation_target(&state, &body)?;
    state.on_core(move |core| core.delete_conversation(&req.uid, &channel).map_err(conversation_error)).await?;
    Ok(ok())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct UidsReq {
    #[serde(default)]
    uids: Vec<String>,
}

/// `GET /user/systemuids`: the system accounts.
async fn system_uids(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.core.system_accounts()))
}

/// `POST /user/systemuids_add` / `_remove` (also at LiMaoIM's `/systemuids_add`):
/// system accounts send without sender checks, and anyone may message them.
async fn set_system_uids(State(state): State<AppState>, body: Bytes, system: bool) -> Result<Json<Value>, ApiError> {
    let req: UidsReq = parse(&body)?;
    if req.uids.is_empty() {
        return Err(ApiError::bad("uids: required"));
    }
    for (i, uid) in req.uids.iter().enumerate() {
        check_uid(&format!("uids[{i}]"), uid)?;
    }
    state.on_core(move |core| core.set_system_accounts(&req.uids, system).map_err(ApiError::Storage)).await?;
    Ok(ok())
}
