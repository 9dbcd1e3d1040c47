//! Message operations after sending: `/message/revoke`, `/message/edit`,
//! `/message/readed`, `/message/readers`, `/message/reaction`, `/message/reactions` and
//! `/message/extra/sync`. Who may do what is the core's rule (`hongyan_core::extras`);
//! this only reads the request and writes the answer.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use hongyan_core::extras::{Change, ChangeError, ExtraView, MAX_EXTRA_SYNC, MAX_READ_BATCH, Operator};
use hongyan_store::{ChannelKey, MessageExtra};
use serde::Deserialize;
use serde_json::{Value, json};

use super::lookup::stored_channel;
use super::{check_uid, parse, required_payload};
use crate::{ApiError, AppState, TaskFailed};

/// A message id as a JSON number or, for JavaScript clients whose numbers cannot hold
/// every 64-bit id, as a string (the `message_idstr` the API returns).
#[derive(Clone, Copy, Debug, Default, utoipa::ToSchema)]
#[schema(value_type = i64)]
pub(super) struct MessageId(i64);

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(i64),
            Text(String),
        }
        match Either::deserialize(de)? {
            Either::Number(id) => Ok(Self(id)),
            Either::Text(text) => text.parse().map(Self).map_err(|_| serde::de::Error::custom("not a message id")),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ChangeReq {
    /// For person chats: the user whose conversation with `channel_id` holds the
    /// message (defaults to `from_uid`).
    #[serde(default)]
    login_uid: String,
    /// Who makes the change, whose rights are checked; empty: the app server itself.
    #[serde(default)]
    from_uid: String,
    channel_id: String,
    channel_type: u8,
    message_id: MessageId,
    /// `/message/edit` only: the new content, base64.
    #[serde(default)]
    payload: String,
}

impl ChangeReq {
    fn target(&self) -> Result<(ChannelKey, Operator), ApiError> {
        let operator = if self.from_uid.is_empty() {
            Operator::App
        } else {
            check_uid("from_uid", &self.from_uid)?;
            Operator::User(self.from_uid.clone())
        };
        let login = if self.login_uid.is_empty() { &self.from_uid } else { &self.login_uid };
        if self.message_id.0 == 0 {
            return Err(ApiError::bad("message_id: required"));
        }
        Ok((stored_channel(login, &self.channel_id, self.channel_type)?, operator))
    }
}

/// A stored extra as the WuKongIM SDKs' message extras read it, with the channel named
/// as the request named it.
pub(super) fn extra_json(e: &MessageExtra, channel_id: &str, channel_type: u8) -> Value {
    use base64::Engine as _;
    let reactions: Vec<Value> =
        e.reactions.iter().map(|(kind, count)| json!({"emoji": kind, "count": count})).collect();
    json!({
        "readed_count": e.readed_count,
        "reactions": reactions,
        "message_id": e.message_id,
        "message_id_str": e.message_id.to_string(),
        "message_seq": e.seq,
        "channel_id": channel_id,
        "channel_type": channel_type,
        "revoke": u8::from(e.revoked),
        "revoker": e.revoker,
        "content_edit": e.edited_payload.as_ref().map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
        "edited_at": e.edited_at_ms / 1000,
        "is_edit": u8::from(e.edited_payload.is_some()),
        "extra_version": e.version,
    })
}

/// A page size: 100 when not given, at most [`MAX_EXTRA_SYNC`].
fn page_limit(limit: usize) -> Result<usize, ApiError> {
    match limit {
        0 => Ok(100),
        n if n > MAX_EXTRA_SYNC => Err(ApiError::bad(format!("limit: at most {MAX_EXTRA_SYNC}"))),
        n => Ok(n),
    }
}

/// A paging cursor's uid: empty (from the first) or a valid uid.
fn check_after(after_uid: &str) -> Result<(), ApiError> {
    if after_uid.is_empty() { Ok(()) } else { check_uid("after_uid", after_uid) }
}

fn refused(e: ChangeError) -> ApiError {
    match e {
        ChangeError::Storage(e) => ApiError::Storage(e),
        other => ApiError::bad(other.to_string()),
    }
}

async fn change_as(state: AppState, req: &ChangeReq, change: Change) -> Result<Json<Value>, ApiError> {
    let (channel, operator) = req.target()?;
    let (core, message_id) = (state.core.clone(), req.message_id.0);
    let extra = tokio::task::spawn_blocking(move || core.change_message(&channel, message_id, &operator, &change))
        .await
        .map_err(|e| ApiError::from(TaskFailed(e.to_string())))?
        .map_err(refused)?;
    Ok(Json(extra_json(&extra, &req.channel_id, req.channel_type)))
}

/// `POST /message/revoke`: revokes a message; the answer is its extra.
pub(super) async fn revoke(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ChangeReq = parse(&body)?;
    change_as(state, &req, Change::Revoke).await
}

/// `POST /message/edit`: replaces a message's content; the answer is its extra.
pub(super) async fn edit(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ChangeReq = parse(&body)?;
    let payload = required_payload(&req.payload)?;
    change_as(state, &req, Change::Edit(payload)).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ExtraSyncReq {
    /// The user asking: for person chats the conversation is theirs with `channel_id`;
    /// in any channel, `readed` says whether they read each message.
    #[serde(default)]
    login_uid: String,
    channel_id: String,
    channel_type: u8,
    /// The highest extra version the client has seen (0: none).
    #[serde(default)]
    extra_version: u64,
    /// At most this many (default 100, at most 1,000).
    #[serde(default)]
    limit: usize,
}

/// An extra as the user who synced sees it: whether (and when) they read the message,
/// and how many others have not.
fn view_json(v: &ExtraView, channel_id: &str, channel_type: u8) -> Value {
    let mut out = extra_json(&v.extra, channel_id, channel_type);
    out["readed"] = json!(u8::from(v.readed_at_ms.is_some()));
    out["readed_at"] = json!(v.readed_at_ms.map_or(0, |ms| ms / 1000));
    out["unread_count"] = json!(v.unread_count);
    out["my_reactions"] = json!(v.my_reactions);
    out
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ReadReq {
    /// The reader.
    uid: String,
    /// For person chats: the peer.
    channel_id: String,
    channel_type: u8,
    /// 1 to 100 messages of the channel.
    message_ids: Vec<MessageId>,
}

/// `POST /message/readed`: `uid` read these messages (read receipts). Each is counted
/// once per reader; the reader's own are left as they are. The answer is their extras.
pub(super) async fn readed(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ReadReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    if req.message_ids.is_empty() || req.message_ids.len() > MAX_READ_BATCH {
        return Err(ApiError::bad(format!("message_ids: 1 to {MAX_READ_BATCH}")));
    }
    let channel = stored_channel(&req.uid, &req.channel_id, req.channel_type)?;
    let core = state.core.clone();
    let (reader, ids) = (req.uid.clone(), req.message_ids.iter().map(|id| id.0).collect::<Vec<_>>());
    let extras = tokio::task::spawn_blocking(move || core.mark_read(&channel, &reader, &ids))
        .await
        .map_err(|e| ApiError::from(TaskFailed(e.to_string())))?
        .map_err(refused)?;
    Ok(Json(Value::Array(extras.iter().map(|e| extra_json(e, &req.channel_id, req.channel_type)).collect())))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ReadersReq {
    /// For person chats: the user whose conversation with `channel_id` it is.
    #[serde(default)]
    login_uid: String,
    channel_id: String,
    channel_type: u8,
    message_id: MessageId,
    /// Readers after this uid (paging; empty: from the first).
    #[serde(default)]
    after_uid: String,
    /// At most this many (default 100, at most 1,000).
    #[serde(default)]
    limit: usize,
}

/// `POST /message/readers`: who marked a message read, in uid order, with when.
pub(super) async fn readers(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ReadersReq = parse(&body)?;
    let channel = stored_channel(&req.login_uid, &req.channel_id, req.channel_type)?;
    check_after(&req.after_uid)?;
    let limit = page_limit(req.limit)?;
    let (id, after) = (req.message_id.0, req.after_uid);
    let readers = state.on_core(move |c| c.message_readers(&channel, id, &after, limit).map_err(refused)).await?;
    let rows = readers.iter().map(|(uid, at)| json!({"uid": uid, "readed_at": at / 1000})).collect();
    Ok(Json(Value::Array(rows)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ReactionReq {
    /// Who reacts.
    uid: String,
    /// For person chats: the peer.
    channel_id: String,
    channel_type: u8,
    message_id: MessageId,
    /// The reaction: an emoji or a short name (1 to 64 bytes).
    emoji: String,
    /// `add` (the default) or `remove`.
    #[serde(default)]
    action: String,
}

/// `POST /message/reaction`: `uid` gives a message a reaction, or takes it back. The
/// answer is the message's extra, with every kind's count.
pub(super) async fn reaction(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ReactionReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    let add = match req.action.as_str() {
        "" | "add" => true,
        "remove" => false,
        _ => return Err(ApiError::bad("action: add or remove")),
    };
    let change = ChangeReq {
        login_uid: req.uid.clone(),
        from_uid: req.uid,
        channel_id: req.channel_id,
        channel_type: req.channel_type,
        message_id: req.message_id,
        payload: String::new(),
    };
    change_as(state, &change, Change::React { kind: req.emoji, add }).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ReactionsReq {
    /// For person chats: the user whose conversation with `channel_id` it is.
    #[serde(default)]
    login_uid: String,
    channel_id: String,
    channel_type: u8,
    message_id: MessageId,
    /// Paging: the `uid` and `emoji` of the last reaction of the previous page.
    #[serde(default)]
    after_uid: String,
    #[serde(default)]
    after_emoji: String,
    /// At most this many (default 100, at most 1,000).
    #[serde(default)]
    limit: usize,
}

/// `POST /message/reactions`: who gave a message which reaction, and when.
pub(super) async fn reactions(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ReactionsReq = parse(&body)?;
    let channel = stored_channel(&req.login_uid, &req.channel_id, req.channel_type)?;
    check_after(&req.after_uid)?;
    if req.after_emoji.len() > hongyan_core::extras::MAX_REACTION_BYTES {
        return Err(ApiError::bad("after_emoji: at most 64 bytes"));
    }
    let limit = page_limit(req.limit)?;
    let (id, after_uid, after_emoji) = (req.message_id.0, req.after_uid, req.after_emoji);
    let found = state
        .on_core(move |c| {
            let after = (!after_uid.is_empty()).then_some((after_uid.as_str(), after_emoji.as_str()));
            c.message_reactions(&channel, id, after, limit).map_err(refused)
        })
        .await?;
    let rows = found.iter().map(|r| json!({"uid": r.uid, "emoji": r.kind, "created_at": r.at_ms / 1000})).collect();
    Ok(Json(Value::Array(rows)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ExtrasReq {
    /// The user asking (for person chats, whose conversation with `channel_id` it is).
    #[serde(default)]
    login_uid: String,
    channel_id: String,
    channel_type: u8,
    /// Up to 1,000 seqs of the channel's messages.
    message_seqs: Vec<u64>,
}

/// `POST /message/extras`: the extras of these messages, for those that have one (as
/// `/message/extra/sync` shows them), in seq order: for a page of history at hand.
pub(super) async fn extras(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ExtrasReq = parse(&body)?;
    let channel = stored_channel(&req.login_uid, &req.channel_id, req.channel_type)?;
    if req.message_seqs.len() > MAX_EXTRA_SYNC {
        return Err(ApiError::bad(format!("message_seqs: at most {MAX_EXTRA_SYNC}")));
    }
    let mut seqs = req.message_seqs;
    seqs.sort_unstable();
    seqs.dedup();
    let viewer = (!req.login_uid.is_empty()).then(|| req.login_uid.clone());
    let views = state
        .on_core(move |c| c.message_extras_at(&channel, &seqs, viewer.as_deref()).map_err(ApiError::Storage))
        .await?;
    Ok(Json(Value::Array(views.iter().map(|v| view_json(v, &req.channel_id, req.channel_type)).collect())))
}

/// `POST /message/extra/sync`: what changed in a channel's messages after
/// `extra_version`, oldest change first, each message once in its latest state.
pub(super) async fn sync(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ExtraSyncReq = parse(&body)?;
    let channel = stored_channel(&req.login_uid, &req.channel_id, req.channel_type)?;
    let limit = page_limit(req.limit)?;
    let version = req.extra_version;
    let viewer = (!req.login_uid.is_empty()).then(|| req.login_uid.clone());
    let extras = state
        .on_core(move |c| {
            c.message_extras_since(&channel, version, limit, viewer.as_deref()).map_err(ApiError::Storage)
        })
        .await?;
    Ok(Json(Value::Array(extras.iter().map(|v| view_json(v, &req.channel_id, req.channel_type)).collect())))
}
