//! Sending (`/message/send`, `/message/sendbatch`), a channel's history
//! (`/channel/messagesync`) and a user's command messages (`/message/sync`, `/message/syncack`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use hongyan_core::session::{CLIENT_MSG_NO_RULE, ID_RULE, is_valid_client_msg_no, is_valid_uid};
use hongyan_proto::ReasonCode;
use hongyan_store::{ChannelKey, Order, StoredMessage};
use serde::Deserialize;
use serde_json::{Value, json};

use super::render::{MessageOut, SyncPage};
use super::{PERSON, check_channel, check_uid, ok, parse, render};
use crate::{ApiError, AppState};

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct SendBatchReq {
    #[serde(default)]
    header: HeaderReq,
    from_uid: String,
    subscribers: Vec<String>,
    payload: String,
}

/// `POST /message/sendbatch`: the same payload as a person message from `from_uid` to
/// each subscriber, sent concurrently. `{"fail_uids": [...], "reason": [...]}` lists who
/// did not get it and why (in the order asked).
pub(super) async fn send_batch(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
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
pub(super) struct HeaderReq {
    no_persist: u8,
    red_dot: u8,
    sync_once: u8,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct MessageSendReq {
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
pub(super) fn required_payload(text: &str) -> Result<Bytes, ApiError> {
    let payload = decode_base64("payload", text)?;
    if payload.is_empty() {
        return Err(ApiError::bad("payload: required"));
    }
    Ok(payload)
}

pub(super) fn decode_base64(field: &str, text: &str) -> Result<Bytes, ApiError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Bytes::from)
        .map_err(|_| ApiError::bad(format!("{field}: not valid base64")))
}

/// Most uids one send to a list of subscribers may name.
pub(super) const MAX_SEND_SUBSCRIBERS: usize = 10_000;

/// A refused send as an HTTP answer: the reason's name, and its code as `status`
/// where WuKongIM uses one.
pub(super) fn refused(e: hongyan_core::SendError) -> ApiError {
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
pub(super) async fn message_send(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
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
pub(super) struct MessageSyncReq {
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
pub(super) const SYNC_LIMIT_MAX: usize = 10_000;
/// Messages returned when no limit is given.
pub(super) const SYNC_LIMIT_DEFAULT: usize = 100;

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
pub(super) async fn message_sync(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
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
    let (mut messages, more, extras) = state
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
            // What happened to them since (revoked, edited…), in one range read.
            let seqs = page.iter().map(|m| m.seq);
            let extras = match (seqs.clone().min(), seqs.max()) {
                (Some(first), Some(last)) => core.store().extras_between(&key, first, last)?,
                _ => Vec::new(),
            };
            Ok((page, more, extras))
        })
        .await?;
    if newest {
        messages.reverse();
    }
    let system = &state.settings.system_uid;
    let mut extras: HashMap<u64, Value> =
        extras.iter().map(|e| (e.seq, super::extras::extra_json(e, &req.channel_id, req.channel_type))).collect();
    let messages = messages
        .iter()
        .map(|m| MessageOut::new(m, &channel, system, &m.message.from_uid).with_extra(extras.remove(&m.seq)))
        .collect();
    let bounds = if limao {
        [("min_message_seq", req.min_message_seq.unwrap_or(0)), ("max_message_seq", req.max_message_seq.unwrap_or(0))]
    } else {
        [("start_message_seq", req.start_message_seq), ("end_message_seq", req.end_message_seq)]
    };
    Ok(render::json_response(&SyncPage { bounds, more, messages }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CommandSyncReq {
    uid: String,
    /// Ignored, as by WuKongIM v2 (the cursors are the server's).
    #[serde(default)]
    #[allow(dead_code)]
    message_seq: u64,
    #[serde(default)]
    limit: usize,
}

/// Commands one `/message/sync` returns when no limit is given.
pub(super) const COMMAND_SYNC_DEFAULT: usize = 200;

/// `POST /message/sync`: the user's command (SyncOnce) messages not yet consumed,
/// oldest first per channel. The next `/message/syncack` consumes them.
pub(super) async fn command_sync(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
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
pub(super) struct CommandSyncAckReq {
    uid: String,
    last_message_seq: u64,
}

/// `POST /message/syncack`: consumes what the user's last `/message/sync` returned.
/// `last_message_seq` must be non-zero (WuKongIM checks only that).
pub(super) async fn command_sync_ack(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: CommandSyncAckReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    if req.last_message_seq == 0 {
        return Err(ApiError::bad("last_message_seq: must not be 0"));
    }
    let uid = req.uid.clone();
    state.on_core(move |c| c.ack_synced_commands(&uid).map_err(ApiError::Storage)).await?;
    Ok(ok())
}
