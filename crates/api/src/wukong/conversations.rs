//! Conversations: `/conversation/sync` with unread counts, and setting unread, clearing
//! and deleting one.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use hongyan_core::conversation::ConversationQuery;
use hongyan_store::ChannelKey;
use serde::Deserialize;
use serde_json::Value;

use super::render::{ConversationOut, MessageOut};
use super::{PERSON, check_channel, check_uid, ok, parse, render};
use crate::{ApiError, AppState};

pub(super) fn conversation_error(e: hongyan_core::conversation::ConversationError) -> ApiError {
    match e {
        hongyan_core::conversation::ConversationError::Storage(e) => ApiError::Storage(e),
        hongyan_core::conversation::ConversationError::NotFound => {
            ApiError::bad("channel_id: the user has no conversation with this channel")
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ConversationSyncReq {
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
pub(super) const RECENTS_MAX: usize = 100;
/// Most conversations per page.
pub(super) const PAGE_SIZE_MAX: usize = 500;

/// `POST /conversation/sync`: the user's conversations with news, newest first, each
/// with its unread count and `msg_count` most recent messages (newest first).
///
/// `last_msg_seqs` (`"channel_id:channel_type:seq|…"`, the peer's uid for person chats)
/// leaves out conversations the client is already up to date with; `version` (the
/// `version` of a previous answer) leaves out those with nothing newer. Unlike WuKongIM,
/// `msg_count: 0` still lists the conversations, without recent messages.
pub(super) async fn conversation_sync(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
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
pub(super) struct ConversationReq {
    uid: String,
    channel_id: String,
    channel_type: u8,
    #[serde(default)]
    unread: u64,
    #[serde(default)]
    message_seq: u64,
}

pub(super) fn conversation_target(state: &AppState, body: &Bytes) -> Result<(ConversationReq, ChannelKey), ApiError> {
    let req: ConversationReq = parse(body)?;
    check_uid("uid", &req.uid)?;
    check_channel(&req.channel_id, req.channel_type)?;
    let channel = state.core.channel_for(&req.uid, &req.channel_id, req.channel_type);
    Ok((req, channel))
}

/// `POST /conversations/setUnread`: leaves `unread` messages unread (the cursor only
/// moves forward, so this cannot raise the count).
pub(super) async fn set_unread(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let (req, channel) = conversation_target(&state, &body)?;
    state.on_core(move |core| core.set_unread(&req.uid, &channel, req.unread).map_err(conversation_error)).await?;
    Ok(ok())
}

/// `POST /conversations/clearUnread`: everything read (up to `message_seq` when given).
pub(super) async fn clear_unread(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let (req, channel) = conversation_target(&state, &body)?;
    state
        .on_core(move |core| core.clear_unread(&req.uid, &channel, req.message_seq).map_err(conversation_error))
        .await?;
    Ok(ok())
}

/// `POST /conversations/delete`: hides the conversation until a newer message arrives.
pub(super) async fn delete_conversation(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let (req, channel) = conversation_target(&state, &body)?;
    state.on_core(move |core| core.delete_conversation(&req.uid, &channel).map_err(conversation_error)).await?;
    Ok(ok())
}
