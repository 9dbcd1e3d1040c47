//! Reading a channel's records: `/channel/info` (its attributes), `/channel/search`
//! (channels with attributes, by id prefix) and its subscriber, black- and whitelist a
//! page at a time.

use axum::Json;
use axum::extract::State;
use hongyan_store::{ChannelInfo, MemberList};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiQuery, check_channel};
use crate::{ApiError, AppState};

/// Most entries one page of a list may hold (and what a page holds unless asked).
const MOST_PER_PAGE: usize = 10_000;
/// Most channels one search returns.
const MOST_FOUND: usize = 1_000;
/// Channels a search returns unless asked.
const FOUND_BY_DEFAULT: usize = 50;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ChannelQuery {
    channel_id: String,
    channel_type: u8,
}

/// `GET /channel/info`: the channel's attributes as 0/1, all 0 for a channel with no
/// record (as it behaves).
pub(super) async fn channel_info(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ChannelQuery>,
) -> Result<Json<Value>, ApiError> {
    check_channel(&q.channel_id, q.channel_type)?;
    let (id, ty) = (q.channel_id.clone(), q.channel_type);
    let info = state.on_core(move |c| c.store().channel_info(&id, ty).map_err(ApiError::Storage)).await?;
    Ok(Json(attributes(&q.channel_id, q.channel_type, info.unwrap_or_default())))
}

fn attributes(channel_id: &str, channel_type: u8, info: ChannelInfo) -> Value {
    json!({
        "channel_id": channel_id,
        "channel_type": channel_type,
        "ban": u8::from(info.ban),
        "disband": u8::from(info.disband),
        "send_ban": u8::from(info.send_ban),
        "large": u8::from(info.large),
        "allow_stranger": u8::from(info.allow_stranger),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct SearchQuery {
    channel_type: u8,
    /// The start of the ids to find (every channel of the type when empty).
    #[serde(default)]
    prefix: String,
    /// The last id of the previous page.
    #[serde(default)]
    after: String,
    /// At most this many (default 50, at most 1,000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /channel/search`: `[{channel_id, channel_type, ban, …}]`, the channels of a
/// type whose attributes were set (created by `/channel` or `/channel/info`) and whose
/// id starts with `prefix`, in id order, after `after`.
pub(super) async fn search(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    // A prefix or a cursor is a piece of an id: capped as ids are.
    for (field, value) in [("prefix", &q.prefix), ("after", &q.after)] {
        if !value.is_empty() {
            check_channel(value, q.channel_type).map_err(|_| ApiError::bad(format!("{field}: not part of an id")))?;
        }
    }
    if q.channel_type == 0 || q.channel_type > super::MAX_CHANNEL_TYPE {
        return Err(ApiError::bad(format!("channel_type: unknown channel type {}", q.channel_type)));
    }
    let limit = page_size(q.limit, FOUND_BY_DEFAULT, MOST_FOUND)?;
    let ty = q.channel_type;
    let found = state
        .on_core(move |c| c.store().channels_by_prefix(ty, &q.prefix, &q.after, limit).map_err(ApiError::Storage))
        .await?;
    Ok(Json(Value::Array(found.into_iter().map(|(id, info)| attributes(&id, ty, info)).collect())))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ListQuery {
    channel_id: String,
    channel_type: u8,
    /// The last uid of the previous page.
    #[serde(default)]
    after: String,
    /// At most this many (default and most: 10,000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /channel/subscribers`: a page of the channel's subscribers.
pub(super) async fn subscribers(state: State<AppState>, q: ApiQuery<ListQuery>) -> Result<Json<Value>, ApiError> {
    list(state, q, MemberList::Subscribers).await
}

/// `GET /channel/blacklist`: a page of the channel's blacklist.
pub(super) async fn blacklist(state: State<AppState>, q: ApiQuery<ListQuery>) -> Result<Json<Value>, ApiError> {
    list(state, q, MemberList::Blacklist).await
}

/// `GET /channel/whitelist`: a page of the channel's whitelist (WuKongIM's endpoint).
pub(super) async fn whitelist(state: State<AppState>, q: ApiQuery<ListQuery>) -> Result<Json<Value>, ApiError> {
    list(state, q, MemberList::Whitelist).await
}

/// `[{id, uid, created_at, updated_at}]` in uid order (times in seconds; `id` numbers
/// the entries of the page), after `after`.
async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
    which: MemberList,
) -> Result<Json<Value>, ApiError> {
    check_channel(&q.channel_id, q.channel_type)?;
    if !q.after.is_empty() {
        super::check_uid("after", &q.after)?;
    }
    let limit = page_size(q.limit, MOST_PER_PAGE, MOST_PER_PAGE)?;
    let entries = state
        .on_core(move |c| {
            c.store().member_page(which, &q.channel_id, q.channel_type, &q.after, limit).map_err(ApiError::Storage)
        })
        .await?;
    let list: Vec<Value> = entries
        .iter()
        .enumerate()
        .map(|(i, (uid, at_ms))| json!({"id": i + 1, "uid": uid, "created_at": at_ms / 1000, "updated_at": at_ms / 1000}))
        .collect();
    Ok(Json(Value::Array(list)))
}

fn page_size(asked: Option<usize>, default: usize, most: usize) -> Result<usize, ApiError> {
    match asked {
        None => Ok(default),
        Some(0) => Err(ApiError::bad("limit: at least 1")),
        Some(n) if n > most => Err(ApiError::bad(format!("limit: at most {most}"))),
        Some(n) => Ok(n),
    }
}
