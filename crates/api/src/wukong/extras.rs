//! Message operations after sending: `/message/revoke`, `/message/edit` and
//! `/message/extra/sync`. Who may do what is the core's rule (`hongyan_core::extras`);
//! this only reads the request and writes the answer.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use hongyan_core::extras::{Change, ChangeError, MAX_EXTRA_SYNC, Operator};
use hongyan_store::{ChannelKey, MessageExtra};
use serde::Deserialize;
use serde_json::{Value, json};

use super::lookup::stored_channel;
use super::{check_uid, parse, required_payload};
use crate::{ApiError, AppState, TaskFailed};

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
    message_id: i64,
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
        if self.message_id == 0 {
            return Err(ApiError::bad("message_id: required"));
        }
        Ok((stored_channel(login, &self.channel_id, self.channel_type)?, operator))
    }
}

/// A stored extra as the WuKongIM SDKs' message extras read it, with the channel named
/// as the request named it.
fn extra_json(e: &MessageExtra, channel_id: &str, channel_type: u8) -> Value {
    use base64::Engine as _;
    json!({
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

fn refused(e: ChangeError) -> ApiError {
    match e {
        ChangeError::Storage(e) => ApiError::Storage(e),
        other => ApiError::bad(other.to_string()),
    }
}

async fn change(state: AppState, req: &ChangeReq, change: Change) -> Result<Json<Value>, ApiError> {
    let (channel, operator) = req.target()?;
    let (core, message_id) = (state.core.clone(), req.message_id);
    let extra = tokio::task::spawn_blocking(move || core.change_message(&channel, message_id, &operator, &change))
        .await
        .map_err(|e| ApiError::from(TaskFailed(e.to_string())))?
        .map_err(refused)?;
    Ok(Json(extra_json(&extra, &req.channel_id, req.channel_type)))
}

/// `POST /message/revoke`: revokes a message; the answer is its extra.
pub(super) async fn revoke(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ChangeReq = parse(&body)?;
    change(state, &req, Change::Revoke).await
}

/// `POST /message/edit`: replaces a message's content; the answer is its extra.
pub(super) async fn edit(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ChangeReq = parse(&body)?;
    let payload = required_payload(&req.payload)?;
    change(state, &req, Change::Edit(payload)).await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ExtraSyncReq {
    /// For person chats: the user asking (the conversation is theirs with `channel_id`).
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

/// `POST /message/extra/sync`: what changed in a channel's messages after
/// `extra_version`, oldest change first, each message once in its latest state.
pub(super) async fn sync(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ExtraSyncReq = parse(&body)?;
    let channel = stored_channel(&req.login_uid, &req.channel_id, req.channel_type)?;
    if req.limit > MAX_EXTRA_SYNC {
        return Err(ApiError::bad(format!("limit: at most {MAX_EXTRA_SYNC}")));
    }
    let limit = if req.limit == 0 { 100 } else { req.limit };
    let version = req.extra_version;
    let extras =
        state.on_core(move |c| c.message_extras_since(&channel, version, limit).map_err(ApiError::Storage)).await?;
    Ok(Json(Value::Array(extras.iter().map(|e| extra_json(e, &req.channel_id, req.channel_type)).collect())))
}
