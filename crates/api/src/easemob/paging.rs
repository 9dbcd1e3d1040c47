//! Easemob's paging: `limit` and an opaque `cursor` (the base64 of the last key
//! returned).

use axum::extract::{FromRequestParts, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine as _;
use serde::Deserialize;

use super::{EmError, PAGE_MAX};
use crate::AppState;

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(super) struct PageQuery {
    pub(super) limit: Option<String>,
    pub(super) cursor: Option<String>,
    pub(super) sort: Option<String>,
}

/// The page query of a listing; a malformed one is a 400 in Easemob's shape.
pub(super) struct PageParams(pub(super) PageQuery);

impl FromRequestParts<AppState> for PageParams {
    type Rejection = EmError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, EmError> {
        Query::<PageQuery>::try_from_uri(&parts.uri)
            .map(|Query(q)| Self(q))
            .map_err(|e| EmError::bad_body(format!("query: {}", e.body_text())))
    }
}

/// `limit` (1–50, default 50) of a page query.
pub(super) fn page_limit(q: &PageQuery) -> Result<usize, EmError> {
    match q.limit.as_deref() {
        None | Some("") => Ok(PAGE_MAX),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
            _ => Err(EmError::group(StatusCode::BAD_REQUEST, "query param reaches limit.")),
        },
    }
}

/// Cursors are the last item's sort key, base64url: stable while items are added.
pub(super) fn encode_cursor(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

pub(super) fn decode_cursor(q: &PageQuery) -> Result<Option<String>, EmError> {
    match q.cursor.as_deref() {
        None | Some("") => Ok(None),
        Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(|| EmError::bad_body("cursor: not a cursor this server gave")),
    }
}

/// A page of `items` sorted by `key` after the cursor; the cursor of the next page is
/// present whenever the page is not empty (an empty page means done).
pub(super) fn page<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    q: &PageQuery,
) -> Result<(Vec<T>, Option<String>), EmError> {
    let limit = page_limit(q)?;
    let after = decode_cursor(q)?;
    let descending = q.sort.as_deref() == Some("desc");
    items.sort_by_key(&key);
    if descending {
        items.reverse();
    }
    let items: Vec<T> = items
        .into_iter()
        .filter(|i| match &after {
            None => true,
            Some(a) if descending => key(i) < *a,
            Some(a) => key(i) > *a,
        })
        .take(limit)
        .collect();
    let cursor = items.last().map(|i| encode_cursor(&key(i)));
    Ok((items, cursor))
}
