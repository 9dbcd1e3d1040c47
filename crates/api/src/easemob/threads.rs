//! Threads: create, rename, delete, and the lists of a group's, a user's and all
//! threads.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hongyan_core::session::is_valid_uid;
use hongyan_store::Thread;
use serde::Deserialize;
use serde_json::{Value, json};

use super::paging::{PageParams, PageQuery, page, page_limit};
use super::{Call, EmError, NAME_MAX, parse};
use crate::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateReq {
    pub(super) group_id: String,
    pub(super) name: String,
    pub(super) msg_id: String,
    pub(super) owner: String,
}

pub(super) fn check_name(name: &str) -> Result<(), EmError> {
    if name.is_empty() {
        return Err(EmError::bad_body("name must be provided."));
    }
    if name.chars().count() > NAME_MAX {
        return Err(EmError::group(StatusCode::BAD_REQUEST, "thread name limit reached."));
    }
    Ok(())
}

/// `POST /{org}/{app}/thread`: a thread on a message of the group, owned by a member.
pub(super) async fn create_thread(
    State(state): State<AppState>,
    call: Call,
    body: Bytes,
) -> Result<Json<Value>, EmError> {
    let req: CreateReq = parse(&body)?;
    check_name(&req.name)?;
    for (field, id) in [("group_id", &req.group_id), ("owner", &req.owner)] {
        if !is_valid_uid(id) {
            return Err(EmError::bad_body(format!("{field}: {}", hongyan_core::session::ID_RULE)));
        }
    }
    let message_id: i64 = req.msg_id.parse().map_err(|_| EmError::group(StatusCode::NOT_FOUND, "msg not exist."))?;
    let tenant = call.tenant();
    let id = state
        .on_core::<_, EmError>(move |core| {
            let group = hongyan_store::ChannelKey::new(req.group_id.clone(), hongyan_core::channel::GROUP);
            let members = core.channel_state(&group)?;
            if members.subscribers.is_empty() {
                return Err(EmError::group(StatusCode::NOT_FOUND, "group not found."));
            }
            if !members.subscribers.contains(&req.owner) {
                return Err(EmError::group(StatusCode::NOT_FOUND, "user not in group."));
            }
            if core.thread(&req.group_id)?.is_some() {
                return Err(EmError::group(StatusCode::BAD_REQUEST, "thread not nested."));
            }
            match core.log().by_message_id(message_id)? {
                None => return Err(EmError::group(StatusCode::NOT_FOUND, "msg not exist.")),
                Some((channel, _)) if channel != group => {
                    return Err(EmError::group(StatusCode::BAD_REQUEST, "msg not belong to group ."));
                }
                Some(_) => {}
            }
            if core.group_threads(&req.group_id)?.iter().any(|t| t.message_id == req.msg_id) {
                return Err(EmError::group(StatusCode::FORBIDDEN, "msg already create thread.not allow to create."));
            }
            let id = format!("{}", core.next_id());
            let thread = Thread {
                id: id.clone(),
                group_id: req.group_id,
                name: req.name,
                owner: req.owner,
                message_id: req.msg_id,
                created_ms: hongyan_core::now_ms(),
                tenant,
            };
            core.create_thread(thread)?;
            Ok(id)
        })
        .await?;
    Ok(call.answer(json!({"data": {"thread_id": id}})))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RenameReq {
    pub(super) name: String,
}

/// `PUT /{org}/{app}/thread/{id}`.
pub(super) async fn rename_thread(
    State(state): State<AppState>,
    call: Call,
    Path((_, _, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, EmError> {
    let req: RenameReq = parse(&body)?;
    check_name(&req.name)?;
    let scope = call.clone();
    let name = state
        .on_core::<_, EmError>(move |core| {
            scope.check_thread(core, &id)?;
            Ok(core.rename_thread(&id, &req.name)?.name)
        })
        .await?;
    Ok(call.answer(json!({"data": {"name": name}})))
}

/// `DELETE /{org}/{app}/thread/{id}`.
pub(super) async fn delete_thread(
    State(state): State<AppState>,
    call: Call,
    Path((_, _, id)): Path<(String, String, String)>,
) -> Result<Json<Value>, EmError> {
    let scope = call.clone();
    state
        .on_core::<_, EmError>(move |core| {
            scope.check_thread(core, &id)?;
            Ok(core.delete_thread(&id)?)
        })
        .await?;
    Ok(call.answer(json!({"data": {"status": "ok"}})))
}

/// Threads as Easemob lists them.
pub(super) fn thread_json(t: &Thread) -> Value {
    json!({"id": t.id, "name": t.name, "owner": t.owner, "msgId": t.message_id, "groupId": t.group_id, "created": t.created_ms})
}

/// Creation-time sort key (zero-padded, so strings order as numbers), then id.
pub(super) fn created_key(t: &Thread) -> String {
    format!("{:020}#{}", t.created_ms.max(0), t.id)
}

/// `GET /{org}/{app}/thread?limit=&cursor=&sort=`: every thread, newest first by default.
pub(super) async fn list_threads(
    State(state): State<AppState>,
    call: Call,
    PageParams(q): PageParams,
) -> Result<Json<Value>, EmError> {
    page_limit(&q)?;
    let mut threads = state.on_core::<_, EmError>(|core| Ok(core.all_threads()?)).await?;
    threads.retain(|t| call.sees(t));
    let sort = Some(q.sort.clone().unwrap_or_else(|| "desc".into()));
    let (threads, cursor) = page(threads, created_key, &PageQuery { sort, ..q })?;
    let entities: Vec<Value> = threads.iter().map(|t| json!({"id": t.id})).collect();
    Ok(call.answer(json!({"entities": entities, "properties": {"cursor": cursor.unwrap_or_default()}})))
}

pub(super) async fn joined_threads(
    state: &AppState,
    call: &Call,
    username: String,
    group: Option<String>,
    q: PageQuery,
) -> Result<Json<Value>, EmError> {
    page_limit(&q)?;
    if !is_valid_uid(&username) {
        return Err(EmError::new(
            StatusCode::NOT_FOUND,
            "service_resource_not_found",
            "ResourceNotFoundException",
            "Service resource not found",
        ));
    }
    let mut joined = state.on_core::<_, EmError>(move |core| Ok(core.threads_of(&username, group.as_deref())?)).await?;
    joined.retain(|(t, _)| call.sees(t));
    let sort = Some(q.sort.clone().unwrap_or_else(|| "desc".into()));
    let key = |(t, at): &(Thread, i64)| format!("{:020}#{}", (*at).max(0), t.id);
    let (joined, cursor) = page(joined, key, &PageQuery { sort, ..q })?;
    let entities: Vec<Value> = joined.iter().map(|(t, _)| thread_json(t)).collect();
    Ok(call.answer(json!({"entities": entities, "properties": {"cursor": cursor.unwrap_or_default()}})))
}

/// `GET /{org}/{app}/threads/user/{username}`: the threads a user joined, by join time.
pub(super) async fn user_threads(
    State(state): State<AppState>,
    call: Call,
    Path((_, _, username)): Path<(String, String, String)>,
    PageParams(q): PageParams,
) -> Result<Json<Value>, EmError> {
    joined_threads(&state, &call, username, None, q).await
}

/// `GET /{org}/{app}/threads/chatgroups/{group}/user/{username}`.
pub(super) async fn user_group_threads(
    State(state): State<AppState>,
    call: Call,
    Path((_, _, group, username)): Path<(String, String, String, String)>,
    PageParams(q): PageParams,
) -> Result<Json<Value>, EmError> {
    joined_threads(&state, &call, username, Some(group), q).await
}
