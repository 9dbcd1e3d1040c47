//! A thread's members: listed a page at a time, added and removed.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hongyan_core::session::is_valid_uid;
use serde::Deserialize;
use serde_json::{Value, json};

use super::paging::{PageParams, PageQuery, page, page_limit};
use super::{Call, EmError, USERNAMES_MAX, parse};
use crate::AppState;

/// `GET /{org}/{app}/thread/{id}/users?limit=&cursor=`: members by uid.
pub(super) async fn list_members(
    State(state): State<AppState>,
    call: Call,
    Path((_, _, id)): Path<(String, String, String)>,
    PageParams(q): PageParams,
) -> Result<Json<Value>, EmError> {
    page_limit(&q)?;
    let scope = call.clone();
    let members = state
        .on_core::<_, EmError>(move |core| {
            scope.check_thread(core, &id)?;
            Ok(core.thread_members(&id)?)
        })
        .await?;
    let (members, cursor) = page(members, Clone::clone, &PageQuery { sort: None, ..q })?;
    Ok(call.answer(json!({"data": {"affiliations": members}, "properties": {"cursor": cursor.unwrap_or_default()}})))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UsernamesReq {
    pub(super) usernames: Vec<String>,
}

pub(super) fn check_usernames(req: &UsernamesReq) -> Result<(), EmError> {
    if req.usernames.is_empty() {
        return Err(EmError::bad_body("usernames must be provided."));
    }
    if req.usernames.len() > USERNAMES_MAX {
        return Err(EmError::group(StatusCode::BAD_REQUEST, "request body reaches limit."));
    }
    if let Some(bad) = req.usernames.iter().find(|u| !is_valid_uid(u)) {
        return Err(EmError::bad_body(format!("usernames: `{bad}`: {}", hongyan_core::session::ID_RULE)));
    }
    Ok(())
}

/// `POST /{org}/{app}/thread/{id}/users`: members of the group join (all or none).
pub(super) async fn add_members(
    State(state): State<AppState>,
    call: Call,
    Path((_, _, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, EmError> {
    let req: UsernamesReq = parse(&body)?;
    check_usernames(&req)?;
    let scope = call.clone();
    state
        .on_core::<_, EmError>(move |core| {
            scope.check_thread(core, &id)?;
            Ok(core.add_thread_members(&id, &req.usernames)?)
        })
        .await?;
    Ok(call.answer(json!({"data": {"status": "ok"}})))
}

/// `DELETE /{org}/{app}/thread/{id}/users` (and `/threads/…`) with a JSON body:
/// `entities: [{result, user}]`, false for those who were not members.
pub(super) async fn remove_members(
    State(state): State<AppState>,
    call: Call,
    Path((_, _, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, EmError> {
    // The seed's own example sends no body: nobody to remove.
    let req: UsernamesReq =
        if body.iter().all(u8::is_ascii_whitespace) { UsernamesReq { usernames: Vec::new() } } else { parse(&body)? };
    if !req.usernames.is_empty() {
        check_usernames(&req)?;
    }
    let scope = call.clone();
    let results = state
        .on_core::<_, EmError>(move |core| {
            scope.check_thread(core, &id)?;
            let members: std::collections::HashSet<String> = core.thread_members(&id)?.into_iter().collect();
            let present: Vec<String> = req.usernames.iter().filter(|u| members.contains(*u)).cloned().collect();
            core.remove_thread_members(&id, &present)?;
            Ok(req.usernames.into_iter().map(|u| (members.contains(&u), u)).collect::<Vec<_>>())
        })
        .await?;
    let entities: Vec<Value> = results.iter().map(|(ok, user)| json!({"result": ok, "user": user})).collect();
    Ok(call.answer(json!({"entities": entities})))
}
