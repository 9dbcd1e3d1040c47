//! The OpenIM v2 admin dialect (seed 003): what an app server written against OpenIM's
//! admin API calls, mapped onto the same core as the WuKongIM dialect.
//!
//! * Envelope: HTTP 200 with `{"errCode": 0, "errMsg": ""}` plus the call's fields;
//!   failures carry v2's error numbers (700-range token errors, 801 no access,
//!   803 bad arguments, 802 storage).
//! * Auth: `auth/user_token` trades the configured secret for an admin token (JWT HS256
//!   with v2's claims `UID`, `Platform`, `exp`, `nbf`, `iat`) for a uid listed in
//!   `openim.admin_user_ids`; every other call needs it in the `token` header.
//! * Mapping: users are uids with a profile; groups are group channels whose
//!   subscribers are the members, with roles; friends are mutual person-channel
//!   whitelist entries; `add_blacklist` is the person-channel blacklist; messages go
//!   through the one send pipeline, as WuKongIM payloads. `docs/openim.md` has it all.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use axum::{Json, Router};
use hongyan_core::session::is_valid_uid;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::openapi::{self, Dialect, Endpoint, schema_of};
use crate::ratelimit::ClientIp;

mod groups;
mod messages;
mod users;

use groups::{CreateGroupReq, InviteReq, KickReq, create_group, invite_to_group, kick_from_group};
use messages::{SendMsgReq, send_msg};
use users::{
    BlacklistReq, DeleteUserReq, ImportFriendReq, UidListReq, UpdateUserReq, account_check, add_blacklist, all_users,
    delete_user, get_user_info, import_friend, online_status, update_user_info,
};

/// The dialect's settings.
#[derive(Clone, Debug)]
pub struct OpenImSettings {
    /// What `auth/user_token` must be given; also the token signing key.
    pub secret: String,
    /// Who may get an admin token.
    pub admin_user_ids: Vec<String>,
    /// How long an admin token is valid.
    pub token_ttl: Duration,
}

/// OpenIM v2's error numbers (`pkg/common/constant/error.go` of v2.3).
mod code {
    /// The `token` header is missing or does not parse.
    pub(super) const TOKEN_MISSING: i32 = 700;
    /// The token has expired.
    pub(super) const TOKEN_EXPIRED: i32 = 701;
    /// The signature does not verify.
    pub(super) const TOKEN_INVALID: i32 = 702;
    /// The token is not a JWT.
    pub(super) const TOKEN_MALFORMED: i32 = 703;
    /// The token is not valid yet.
    pub(super) const TOKEN_NOT_VALID_YET: i32 = 704;
    /// Wrong secret, or not an admin.
    pub(super) const NO_ACCESS: i32 = 801;
    /// Storage failed.
    pub(super) const DB: i32 = 802;
    /// Bad arguments.
    pub(super) const ARGS: i32 = 803;
}

/// Most uids `get_users_online_status` takes.
const ONLINE_STATUS_MAX: usize = 200;
/// Most uids `account_check` takes.
const ACCOUNT_CHECK_MAX: usize = 100;
/// Most uids any other list in a body may name.
const LIST_MAX: usize = 10_000;

/// A failure in v2's envelope.
#[derive(Debug)]
pub(crate) struct OpenImError {
    code: i32,
    msg: String,
}

impl OpenImError {
    fn args(msg: impl Into<String>) -> Self {
        Self { code: code::ARGS, msg: msg.into() }
    }
}

impl From<hongyan_store::StoreError> for OpenImError {
    fn from(e: hongyan_store::StoreError) -> Self {
        if let hongyan_store::StoreError::Datasource(why) = e {
            tracing::warn!(error = %why, "the datasource failed in an OpenIM call");
            return Self { code: code::DB, msg: format!("datasource: {why}") };
        }
        tracing::error!(error = %e, "storage failed in an OpenIM call");
        Self { code: code::DB, msg: "storage failed".into() }
    }
}

impl From<hongyan_core::directory::DirectoryError> for OpenImError {
    fn from(e: hongyan_core::directory::DirectoryError) -> Self {
        match e {
            hongyan_core::directory::DirectoryError::Storage(e) => e.into(),
            other => Self::args(other.to_string()),
        }
    }
}

impl From<crate::TaskFailed> for OpenImError {
    fn from(e: crate::TaskFailed) -> Self {
        tracing::error!(error = %e.0, "an OpenIM call failed");
        Self { code: code::DB, msg: "internal error".into() }
    }
}

impl IntoResponse for OpenImError {
    fn into_response(self) -> Response {
        Json(json!({"errCode": self.code, "errMsg": self.msg})).into_response()
    }
}

type Answer = Result<Json<Value>, OpenImError>;

/// Success: `{"errCode":0,"errMsg":""}` with `fields` beside.
fn success(fields: Value) -> Json<Value> {
    let mut body = json!({"errCode": 0, "errMsg": ""});
    if let (Some(out), Value::Object(more)) = (body.as_object_mut(), fields) {
        out.extend(more);
    }
    Json(body)
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, OpenImError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        OpenImError::args(if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) })
    })
}

fn check_uid(field: &str, uid: &str) -> Result<(), OpenImError> {
    if is_valid_uid(uid) {
        Ok(())
    } else {
        Err(OpenImError::args(format!("{field}: {}", hongyan_core::session::ID_RULE)))
    }
}

fn check_list(field: &str, uids: &[String], max: usize) -> Result<(), OpenImError> {
    if uids.len() > max {
        return Err(OpenImError::args(format!("{field}: at most {max} ids")));
    }
    Ok(())
}

fn settings(state: &AppState) -> Result<&OpenImSettings, OpenImError> {
    state.settings.openim.as_ref().ok_or_else(|| OpenImError { code: code::NO_ACCESS, msg: "dialect disabled".into() })
}

/// v2's JWT claims.
#[derive(Debug, Serialize, Deserialize)]
#[allow(non_snake_case)]
struct Claims {
    UID: String,
    Platform: String,
    exp: i64,
    nbf: i64,
    iat: i64,
}

/// Per-uid results: 0 done, -1 not.
fn results(outcomes: &[(String, bool)]) -> Value {
    json!(outcomes.iter().map(|(u, ok)| json!({"userID": u, "result": if *ok { 0 } else { -1 }})).collect::<Vec<_>>())
}

/// v2 platform names by id; 8 is the admin's on `auth/user_token`.
fn platform_name(id: i32) -> Option<&'static str> {
    Some(match id {
        1 => "IOS",
        2 => "Android",
        3 => "Windows",
        4 => "OSX",
        5 => "Web",
        6 => "MiniWeb",
        7 => "Linux",
        8 => "Admin",
        _ => return None,
    })
}

/// An endpoint of this dialect.
fn endpoint(path: &'static str, summary: &'static str, handler: MethodRouter<AppState>) -> Endpoint {
    openapi::endpoint(Dialect::OpenIm, "post", path, summary, handler)
}

/// Every endpoint of the dialect; the router and the OpenAPI document are both built
/// from this list.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        endpoint("/auth/user_token", "Trade the secret for an admin token", post(user_token))
            .body(schema_of::<UserTokenReq>)
            .open(),
        endpoint("/group/create_group", "Create a group with members and roles", post(create_group))
            .body(schema_of::<CreateGroupReq>),
        endpoint("/group/invite_user_to_group", "Add members to a group", post(invite_to_group))
            .body(schema_of::<InviteReq>),
        endpoint("/group/kick_group", "Remove members from a group", post(kick_from_group)).body(schema_of::<KickReq>),
        endpoint("/friend/import_friend", "Make users friends both ways", post(import_friend))
            .body(schema_of::<ImportFriendReq>),
        endpoint("/friend/add_blacklist", "Stop a user messaging another", post(add_blacklist))
            .body(schema_of::<BlacklistReq>),
        endpoint("/user/update_user_info", "Register a user or change a profile", post(update_user_info))
            .body(schema_of::<UpdateUserReq>),
        endpoint("/user/get_user_info", "Profiles of registered users", post(get_user_info))
            .body(schema_of::<UidListReq>),
        endpoint("/manager/delete_user", "Unregister users and kick them", post(delete_user))
            .body(schema_of::<DeleteUserReq>),
        endpoint("/manager/get_users_online_status", "Who is online, by platform", post(online_status))
            .body(schema_of::<UidListReq>),
        endpoint("/manager/get_all_users_uid", "Every registered uid", post(all_users)),
        endpoint("/manager/account_check", "Which uids are registered", post(account_check))
            .body(schema_of::<UidListReq>),
        endpoint("/manager/send_msg", "Send a message as a user", post(send_msg)).body(schema_of::<SendMsgReq>),
    ]
}

/// The dialect's routes at the seed's paths (the server also nests them under
/// `/openim` on the API port).
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    let (open, secured): (Vec<Endpoint>, Vec<Endpoint>) = endpoints().into_iter().partition(|e| !e.secured());
    openapi::routes(secured)
        .layer(middleware::from_fn_with_state(state.clone(), require_admin_token))
        .merge(openapi::routes(open))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::map_response(|r: Response| openapi::json_errors(Dialect::OpenIm, r)))
        .with_state(state)
}

/// Every call but `auth/user_token` needs a valid admin token in the `token` header.
async fn require_admin_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match check_token(&state, &headers) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), OpenImError> {
    let settings = settings(state)?;
    let token = headers
        .get("token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or(OpenImError { code: code::TOKEN_MISSING, msg: "token: required in the header".into() })?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf"]);
    let claims =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(settings.secret.as_bytes()), &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let code = match e.kind() {
                    ErrorKind::ExpiredSignature => code::TOKEN_EXPIRED,
                    ErrorKind::ImmatureSignature => code::TOKEN_NOT_VALID_YET,
                    ErrorKind::InvalidSignature => code::TOKEN_INVALID,
                    _ => code::TOKEN_MALFORMED,
                };
                OpenImError { code, msg: format!("token: {e}") }
            })?
            .claims;
    if !settings.admin_user_ids.contains(&claims.UID) {
        return Err(OpenImError { code: code::NO_ACCESS, msg: "token: not an app manager's".into() });
    }
    Ok(())
}

/// The admin uid a request's token names (already verified by the middleware).
fn admin_of(state: &AppState, headers: &HeaderMap) -> String {
    let token = headers.get("token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Ok(settings) = settings(state) else { return String::new() };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(settings.secret.as_bytes()), &validation)
        .map(|d| d.claims.UID)
        .unwrap_or_default()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UserTokenReq {
    secret: String,
    platform: i32,
    #[serde(rename = "userID")]
    user_id: String,
    #[serde(rename = "operationID", default)]
    #[allow(dead_code)]
    operation_id: String,
}

/// `auth/user_token`: an admin token for a configured admin uid.
async fn user_token(State(state): State<AppState>, ClientIp(ip): ClientIp, body: Bytes) -> Answer {
    // Per address: the secret cannot be guessed at the speed of the network.
    if ip.is_some_and(|ip| !state.settings.token_limit.allow(ip)) {
        return Err(OpenImError { code: code::NO_ACCESS, msg: "too many token requests from this address".into() });
    }
    let req: UserTokenReq = parse(&body)?;
    let settings = settings(&state)?;
    let platform = platform_name(req.platform).ok_or_else(|| OpenImError::args("platform: 1 to 8 (8: admin)"))?;
    if !hongyan_core::eq_constant_time(&req.secret, &settings.secret) {
        return Err(OpenImError { code: code::NO_ACCESS, msg: "secret: wrong".into() });
    }
    if !settings.admin_user_ids.contains(&req.user_id) {
        return Err(OpenImError { code: code::NO_ACCESS, msg: "userID: not an app manager".into() });
    }
    let now = hongyan_core::now_ms() / 1000;
    let expires = now + settings.token_ttl.as_secs() as i64;
    let claims = Claims { UID: req.user_id.clone(), Platform: platform.into(), exp: expires, nbf: now, iat: now };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(settings.secret.as_bytes()),
    )
    .map_err(|e| OpenImError { code: code::DB, msg: format!("token: {e}") })?;
    Ok(success(json!({"data": {"userID": req.user_id, "token": token, "expiredTime": expires}})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datasource_failure_names_the_datasource_and_a_storage_failure_does_not_leak() {
        let e = OpenImError::from(hongyan_store::StoreError::Datasource("getSubscribers: HTTP 500".into()));
        assert_eq!((e.code, e.msg.as_str()), (code::DB, "datasource: getSubscribers: HTTP 500"));
        let e = OpenImError::from(hongyan_store::StoreError::Engine("disk on fire".into()));
        assert_eq!((e.code, e.msg.as_str()), (code::DB, "storage failed"));
    }
}
