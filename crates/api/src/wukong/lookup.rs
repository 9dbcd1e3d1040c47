//! Reading messages and conversations one by one: a channel's last message and seq,
//! messages by seq, id or client_msg_no, and per-channel catch-up for a user.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use hongyan_store::{ChannelKey, Order, StoredMessage};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiQuery, PERSON, SYNC_LIMIT_MAX, check_channel, check_uid, message_json, parse};
use crate::{ApiError, AppState};

/// The stored channel a request names: for person chats `channel_id` is the peer and
/// `login_uid` the caller.
pub(super) fn stored_channel(login_uid: &str, channel_id: &str, channel_type: u8) -> Result<ChannelKey, ApiError> {
    check_channel(channel_id, channel_type)?;
    if channel_type == PERSON {
        check_uid("login_uid", login_uid)?;
        Ok(ChannelKey::new(hongyan_core::channel::person_channel_id(login_uid, channel_id), PERSON))
    } else {
        Ok(ChannelKey::new(channel_id, channel_type))
    }
}

fn not_found() -> Json<Value> {
    Json(json!({"status": 404}))
}

fn live(m: &StoredMessage) -> bool {
    !hongyan_core::commands::is_expired(&m.message, hongyan_core::now_ms())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ChannelQuery {
    channel_id: String,
    channel_type: u8,
    #[serde(default)]
    login_uid: String,
}

/// `GET /channel/max_message_seq`: `{"message_seq": n}`, 0 for an empty channel.
pub(super) async fn max_message_seq(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ChannelQuery>,
) -> Result<Json<Value>, ApiError> {
    let channel = stored_channel(&q.login_uid, &q.channel_id, q.channel_type)?;
    let seq = state.on_core(move |c| c.log().last_seq(&channel).map_err(ApiError::Storage)).await?;
    Ok(Json(json!({"message_seq": seq})))
}

/// `GET /channel/last_message`: the newest message, or `{"status":404}`.
pub(super) async fn last_message(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ChannelQuery>,
) -> Result<Json<Value>, ApiError> {
    let channel = stored_channel(&q.login_uid, &q.channel_id, q.channel_type)?;
    let key = channel.clone();
    let newest =
        state.on_core(move |c| c.log().read(&key, 1, 0, 1, Order::Descending).map_err(ApiError::Storage)).await?;
    Ok(match newest.first().filter(|m| live(m)) {
        Some(m) => Json(message_json(m, &channel, &state.settings.system_uid)),
        None => not_found(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct MessagesReq {
    #[serde(default)]
    login_uid: String,
    channel_id: String,
    channel_type: u8,
    #[serde(default)]
    message_seqs: Vec<u64>,
    #[serde(default)]
    message_ids: Vec<i64>,
    #[serde(default)]
    client_msg_nos: Vec<String>,
}

/// `POST /messages`: the channel's messages with the given seqs, ids or client_msg_nos
/// (any mix), in seq order, each once. Unknown ones are left out.
pub(super) async fn messages(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: MessagesReq = parse(&body)?;
    let channel = stored_channel(&req.login_uid, &req.channel_id, req.channel_type)?;
    let asked = req.message_seqs.len() + req.message_ids.len() + req.client_msg_nos.len();
    if asked > SYNC_LIMIT_MAX {
        return Err(ApiError::bad(format!("message_seqs: at most {SYNC_LIMIT_MAX} messages in all")));
    }
    let key = channel.clone();
    let found = state
        .on_core(move |c| {
            let log = c.log();
            let mut found = std::collections::BTreeMap::new();
            for seq in req.message_seqs {
                if let Some(m) = log.read(&key, seq, seq.saturating_add(1), 1, Order::Ascending)?.into_iter().next() {
                    found.insert(m.seq, m);
                }
            }
            for id in req.message_ids {
                if let Some((at, m)) = log.by_message_id(id)?
                    && at == key
                {
                    found.insert(m.seq, m);
                }
            }
            for cmn in req.client_msg_nos {
                for m in log.read_by_client_msg_no(&key, &cmn)? {
                    found.insert(m.seq, m);
                }
            }
            Ok::<_, ApiError>(found.into_values().collect::<Vec<_>>())
        })
        .await?;
    let system = &state.settings.system_uid;
    let messages: Vec<Value> = found.iter().filter(|m| live(m)).map(|m| message_json(m, &channel, system)).collect();
    Ok(Json(json!({"start_message_seq": 0, "end_message_seq": 0, "more": 0, "messages": messages})))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct MessageReq {
    #[serde(default)]
    login_uid: String,
    channel_id: String,
    channel_type: u8,
    #[serde(default)]
    message_id: i64,
    #[serde(default)]
    client_msg_no: String,
}

/// `POST /message`: one message of a channel by `message_id` or `client_msg_no`, or
/// `{"status":404}`.
pub(super) async fn message(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: MessageReq = parse(&body)?;
    let channel = stored_channel(&req.login_uid, &req.channel_id, req.channel_type)?;
    if req.message_id == 0 && req.client_msg_no.is_empty() {
        return Err(ApiError::bad("message_id: give message_id or client_msg_no"));
    }
    let key = channel.clone();
    let found = state
        .on_core(move |c| {
            if req.message_id != 0 {
                return Ok(c.log().by_message_id(req.message_id)?.filter(|(at, _)| *at == key).map(|(_, m)| m));
            }
            Ok::<_, ApiError>(c.log().read_by_client_msg_no(&key, &req.client_msg_no)?.into_iter().next())
        })
        .await?;
    Ok(match found.filter(live) {
        Some(m) => Json(message_json(&m, &channel, &state.settings.system_uid)),
        None => not_found(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ByClientMsgNoQuery {
    channel_id: String,
    channel_type: u8,
    client_msg_no: String,
}

/// `GET /message/byclientmsgno`: as WuKongIM, person channels are named by their
/// stored id (`a@b`).
pub(super) async fn by_client_msg_no(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ByClientMsgNoQuery>,
) -> Result<Json<Value>, ApiError> {
    if q.channel_type == PERSON {
        let valid = hongyan_core::channel::person_channel_members(&q.channel_id)
            .is_some_and(|(a, b)| hongyan_core::session::is_valid_uid(a) && hongyan_core::session::is_valid_uid(b));
        if !valid {
            return Err(ApiError::bad("channel_id: person channels are named `a@b` here"));
        }
    } else {
        check_channel(&q.channel_id, q.channel_type)?;
    }
    let channel = ChannelKey::new(q.channel_id.clone(), q.channel_type);
    let key = channel.clone();
    let found = state
        .on_core(move |c| {
            c.log()
                .read_by_client_msg_no(&key, &q.client_msg_no)
                .map(|v| v.into_iter().next())
                .map_err(ApiError::Storage)
        })
        .await?;
    Ok(match found.filter(live) {
        Some(m) => Json(message_json(&m, &channel, &state.settings.system_uid)),
        None => not_found(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UidReq {
    uid: String,
}

/// `POST /conversation/channels`: the user's conversations as stored channels (person
/// chats as `a@b`), commands left out.
pub(super) async fn conversation_channels(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: UidReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    let rows = state.on_core(move |c| c.store().conversations(&req.uid).map_err(ApiError::Storage)).await?;
    let channels: Vec<Value> = rows
        .iter()
        .filter(|(ch, _)| !hongyan_core::channel::is_command(ch))
        .map(|(ch, _)| json!({"channel_id": ch.channel_id, "channel_type": ch.channel_type}))
        .collect();
    Ok(Json(Value::Array(channels)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ChannelSeq {
    channel_id: String,
    channel_type: u8,
    #[serde(default)]
    last_msg_seq: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct SyncMessagesReq {
    uid: String,
    channels: Vec<ChannelSeq>,
    #[serde(default)]
    msg_count: usize,
}

/// Most channels one `/conversation/syncMessages` may name.
const SYNC_CHANNELS_MAX: usize = 1_000;

/// `POST /conversation/syncMessages`: per channel, up to `msg_count` (15) messages
/// after the client's `last_msg_seq`, oldest first, and the user's own newest seq there.
pub(super) async fn sync_messages(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: SyncMessagesReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    if req.channels.len() > SYNC_CHANNELS_MAX {
        return Err(ApiError::bad(format!("channels: at most {SYNC_CHANNELS_MAX}")));
    }
    let count = match req.msg_count {
        0 => 15,
        n if n > SYNC_LIMIT_MAX => return Err(ApiError::bad(format!("msg_count: at most {SYNC_LIMIT_MAX}"))),
        n => n,
    };
    let mut wanted = Vec::with_capacity(req.channels.len());
    for (i, c) in req.channels.iter().enumerate() {
        check_channel(&c.channel_id, c.channel_type).map_err(|e| ApiError::bad(format!("channels[{i}].{e}")))?;
        wanted.push((stored_channel(&req.uid, &c.channel_id, c.channel_type)?, c));
    }
    let uid = req.uid.clone();
    let keys: Vec<(ChannelKey, u64)> = wanted.iter().map(|(k, c)| (k.clone(), c.last_msg_seq)).collect();
    let pages = state
        .on_core(move |c| {
            let log = c.log();
            let mut pages = Vec::new();
            for (key, after) in keys {
                let messages = log.read(&key, after.saturating_add(1), 0, count, Order::Ascending)?;
                // The user's own newest message in the channel, within the recent window.
                let own = log
                    .read(&key, 1, 0, 1_000, Order::Descending)?
                    .into_iter()
                    .find(|m| m.message.from_uid == uid)
                    .map_or(0, |m| m.seq);
                pages.push((messages, own));
            }
            Ok::<_, ApiError>(pages)
        })
        .await?;
    let system = &state.settings.system_uid;
    let out: Vec<Value> = wanted
        .iter()
        .zip(pages)
        .map(|((key, c), (messages, own))| {
            json!({
                "channel_id": c.channel_id,
                "channel_type": c.channel_type,
                "messages": messages.iter().filter(|m| live(m)).map(|m| message_json(m, key, system)).collect::<Vec<_>>(),
                "user_last_msg_seq": own,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}
