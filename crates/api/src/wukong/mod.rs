//! The WuKongIM v2 / LiMaoIM dialect: field names, response shapes and error bodies as
//! WuKongIM's server has them, so app servers switch by changing a base URL.
//!
//! This module holds the endpoint list (the router and the OpenAPI document are built
//! from it), the manager-token check and the helpers every handler shares; the
//! handlers are by subject: `nodes` (where clients connect), `users`, `channels` and
//! `lists` (their attributes and member lists), `messages` (send, history, command
//! sync), `lookup` (messages by seq, id or client_msg_no), `extras` (revoke, edit,
//! reads, reactions), `conversations`, `admin` (connections, statistics, webhooks);
//! `render` writes the large answers.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use hongyan_core::session::{ID_RULE, is_valid_uid};
use hongyan_store::MemberList;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::openapi::{self, Dialect, Endpoint, schema_of};
use crate::{ApiError, AppState};
use lists::ChannelQuery;

mod admin;
mod channels;
mod conversations;
mod extras;
mod lists;
mod lookup;
mod messages;
mod nodes;
mod render;
mod users;

use channels::{Change, channel_create, channel_delete, channel_info, members};
use conversations::{
    ConversationReq, ConversationSyncReq, clear_unread, conversation_sync, delete_conversation, set_unread,
};
pub(crate) use messages::message_json;
use messages::{
    CommandSyncAckReq, CommandSyncReq, MAX_SEND_SUBSCRIBERS, MessageSendReq, MessageSyncReq, SYNC_LIMIT_MAX,
    SendBatchReq, command_sync, command_sync_ack, message_send, message_sync, required_payload, send_batch,
};
use nodes::{RouteQuery, cluster_nodes, route, route_batch};
use users::{
    DeviceQuitReq, UidQuery, UidsReq, UserTokenReq, device_quit, set_system_uids, system_uids, user_devices, user_token,
};

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
