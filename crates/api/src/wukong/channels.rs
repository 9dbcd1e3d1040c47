//! Channels: attributes (`/channel`, `/channel/info`), the subscriber, blacklist and
//! whitelist changes, and disbanding (`/channel/delete`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use hongyan_core::channels::ListChange;
use hongyan_proto::ReasonCode;
use hongyan_store::{ChannelInfo, ChannelKey, MemberList};
use serde::Deserialize;
use serde_json::Value;

use super::{PERSON, check_channel, check_uid, ok, parse};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
pub(super) struct ChannelInfoReq {
    channel_id: String,
    channel_type: u8,
    #[serde(flatten)]
    flags: HashMap<String, Value>,
}

/// Reads a 0/1 attribute; absent means 0.
pub(super) fn flag(flags: &HashMap<String, Value>, name: &str) -> Result<bool, ApiError> {
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
pub(super) async fn channel_info(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
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
pub(super) fn channel_attributes(flags: &HashMap<String, Value>) -> Result<ChannelInfo, ApiError> {
    Ok(ChannelInfo {
        ban: flag(flags, "ban")?,
        disband: flag(flags, "disband")?,
        send_ban: flag(flags, "send_ban")?,
        large: flag(flags, "large")?,
        allow_stranger: flag(flags, "allow_stranger")?,
    })
}

/// Reads an optional list of uids from a body, checking each.
pub(super) fn uid_list(flags: &HashMap<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
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
pub(super) async fn channel_create(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
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
pub(super) enum Change {
    Add,
    Set,
    Remove,
    /// Empty the list; the body names only the channel.
    RemoveAll,
}

/// The subscriber, blacklist and whitelist endpoints. Subscriber bodies name the uids
/// `subscribers`, list bodies `uids`; `subscriber_add` also honours `reset`.
pub(super) async fn members(
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
pub(super) const MAX_LIST_CHANGE: usize = 100_000;

/// `POST /channel/delete`: disbands the channel, empties its lists and deletes its
/// history (but the newest message, which keeps the seq counter). Person channels
/// cannot be deleted.
pub(super) async fn channel_delete(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: ChannelInfoReq = parse(&body)?;
    check_channel(&req.channel_id, req.channel_type)?;
    if req.channel_type == PERSON {
        return Err(ApiError::bad("channel_type: person channels cannot be deleted"));
    }
    let key = ChannelKey::new(req.channel_id, req.channel_type);
    state.on_core(move |c| c.delete_channel(&key).map_err(ApiError::Storage)).await?;
    Ok(ok())
}
