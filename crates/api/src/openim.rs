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

use hongyan_core::SendError;
use std::collections::HashSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use axum::{Json, Router};
use hongyan_core::channels::ListChange;
use hongyan_core::directory::ProfileUpdate;
use hongyan_core::session::is_valid_uid;
use hongyan_proto::ReasonCode;
use hongyan_store::{ChannelInfo, ChannelKey, GroupProfile, MemberList, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::openapi::{self, Dialect, Endpoint, schema_of};
use crate::ratelimit::ClientIp;

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

#[derive(Deserialize, utoipa::ToSchema)]
struct Member {
    #[serde(rename = "userID")]
    user_id: String,
    #[serde(rename = "roleLevel", default = "ordinary")]
    role_level: i32,
}

fn ordinary() -> i32 {
    1
}

/// v2 role levels: 1 ordinary, 2 owner, 3 admin.
fn role_of_level(level: i32) -> Option<Role> {
    Some(match level {
        1 => Role::Member,
        2 => Role::Owner,
        3 => Role::Admin,
        _ => return None,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreateGroupReq {
    #[serde(rename = "ownerUserID")]
    owner_user_id: String,
    #[serde(rename = "groupID", default)]
    group_id: String,
    #[serde(default)]
    group_type: i32,
    #[serde(default)]
    group_name: String,
    #[serde(default)]
    notification: String,
    #[serde(default)]
    introduction: String,
    #[serde(rename = "faceURL", default)]
    face_url: String,
    #[serde(default)]
    ex: String,
    #[serde(default)]
    member_list: Vec<Member>,
}

/// `group/create_group`: a group channel with the owner and members as subscribers
/// and their roles, plus its profile.
async fn create_group(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Answer {
    let req: CreateGroupReq = parse(&body)?;
    check_uid("ownerUserID", &req.owner_user_id)?;
    if !matches!(req.group_type, 0 | 2) {
        return Err(OpenImError::args("groupType: 0 (normal) or 2 (work group)"));
    }
    if req.member_list.len() > LIST_MAX {
        return Err(OpenImError::args(format!("memberList: at most {LIST_MAX}")));
    }
    let mut members = vec![(req.owner_user_id.clone(), Role::Owner)];
    for (i, m) in req.member_list.iter().enumerate() {
        check_uid(&format!("memberList[{i}].userID"), &m.user_id)?;
        let role = role_of_level(m.role_level)
            .ok_or_else(|| OpenImError::args(format!("memberList[{i}].roleLevel: 1 ordinary, 2 owner, 3 admin")))?;
        if role == Role::Owner && m.user_id != req.owner_user_id {
            return Err(OpenImError::args(format!("memberList[{i}].roleLevel: only ownerUserID owns the group")));
        }
        if m.user_id != req.owner_user_id {
            members.push((m.user_id.clone(), role));
        }
    }
    let group_id = if req.group_id.is_empty() { format!("{:032x}", state.core.next_id()) } else { req.group_id };
    check_uid("groupID", &group_id)?;
    let creator = admin_of(&state, &headers);
    let profile = GroupProfile {
        name: req.group_name.clone(),
        notification: req.notification,
        introduction: req.introduction,
        face_url: req.face_url,
        ex: req.ex,
        creator: creator.clone(),
        created_ms: hongyan_core::now_ms(),
    };
    let (id, owner) = (group_id.clone(), req.owner_user_id.clone());
    let count = state
        .on_core::<_, OpenImError>(move |core| {
            let key = ChannelKey::new(id.clone(), hongyan_core::channel::GROUP);
            if core.store().group_profile(&id)?.is_some() || !core.channel_state(&key)?.subscribers.is_empty() {
                return Err(OpenImError::args(format!("groupID: {id} already exists")));
            }
            let uids: Vec<String> = members.iter().map(|(u, _)| u.clone()).collect();
            core.put_channel(&key, ChannelInfo::default(), &uids, false)?;
            for (uid, role) in &members {
                if *role != Role::Member {
                    core.set_role(&id, uid, *role)?;
                }
            }
            core.store().apply(vec![core.store().group_profile_write(&id, &profile)?])?;
            Ok(uids.len())
        })
        .await?;
    Ok(success(json!({"data": {
        "creatorUserID": creator,
        "groupID": group_id,
        "groupName": req.group_name,
        "memberCount": count,
        "ownerUserID": owner,
    }})))
}

/// A group that exists: it has a profile or members.
fn existing_group(core: &hongyan_core::Core, id: &str) -> Result<ChannelKey, OpenImError> {
    let key = ChannelKey::new(id, hongyan_core::channel::GROUP);
    if core.store().group_profile(id)?.is_none() && core.channel_state(&key)?.subscribers.is_empty() {
        return Err(OpenImError::args(format!("groupID: no group {id}")));
    }
    Ok(key)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InviteReq {
    #[serde(rename = "groupID")]
    group_id: String,
    #[serde(rename = "invitedUserIDList")]
    invited: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    reason: String,
}

/// Per-uid results: 0 done, -1 not.
fn results(outcomes: &[(String, bool)]) -> Value {
    json!(outcomes.iter().map(|(u, ok)| json!({"userID": u, "result": if *ok { 0 } else { -1 }})).collect::<Vec<_>>())
}

/// `group/invite_user_to_group`: adds members directly; -1 for ids that are not valid.
async fn invite_to_group(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: InviteReq = parse(&body)?;
    check_uid("groupID", &req.group_id)?;
    check_list("invitedUserIDList", &req.invited, LIST_MAX)?;
    let outcomes = state
        .on_core::<_, OpenImError>(move |core| {
            let key = existing_group(core, &req.group_id)?;
            let valid: Vec<String> = req.invited.iter().filter(|u| is_valid_uid(u)).cloned().collect();
            core.change_members(MemberList::Subscribers, &key, &valid, ListChange::Add)?;
            Ok(req.invited.into_iter().map(|u| (u.clone(), is_valid_uid(&u))).collect::<Vec<_>>())
        })
        .await?;
    Ok(success(json!({"data": results(&outcomes)})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct KickReq {
    #[serde(rename = "groupID")]
    group_id: String,
    #[serde(rename = "kickedUserIDList")]
    kicked: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    reason: String,
}

/// `group/kick_group`: removes members; -1 for non-members and the owner.
async fn kick_from_group(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: KickReq = parse(&body)?;
    check_uid("groupID", &req.group_id)?;
    check_list("kickedUserIDList", &req.kicked, LIST_MAX)?;
    let outcomes = state
        .on_core::<_, OpenImError>(move |core| {
            let key = existing_group(core, &req.group_id)?;
            let members = core.channel_state(&key)?;
            let owners: HashSet<String> =
                core.roles(&req.group_id)?.into_iter().filter(|(_, r)| *r == Role::Owner).map(|(u, _)| u).collect();
            let outcomes: Vec<(String, bool)> = req
                .kicked
                .iter()
                .map(|u| (u.clone(), members.subscribers.contains(u) && !owners.contains(u)))
                .collect();
            let gone: Vec<String> = outcomes.iter().filter(|(_, ok)| *ok).map(|(u, _)| u.clone()).collect();
            core.change_members(MemberList::Subscribers, &key, &gone, ListChange::Remove)?;
            Ok(outcomes)
        })
        .await?;
    Ok(success(json!({"data": results(&outcomes)})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ImportFriendReq {
    #[serde(rename = "fromUserID")]
    from: String,
    #[serde(rename = "friendUserIDList")]
    friends: Vec<String>,
}

/// `friend/import_friend`: mutual friendships, kept as person-channel whitelist
/// entries both ways; -1 for invalid ids and for oneself.
async fn import_friend(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: ImportFriendReq = parse(&body)?;
    check_uid("fromUserID", &req.from)?;
    check_list("friendUserIDList", &req.friends, LIST_MAX)?;
    let outcomes = state
        .on_core::<_, OpenImError>(move |core| {
            let person = |uid: &str| ChannelKey::new(uid, hongyan_core::channel::PERSON);
            let mut outcomes = Vec::with_capacity(req.friends.len());
            let mut added = Vec::new();
            for friend in req.friends {
                let ok = is_valid_uid(&friend) && friend != req.from;
                if ok {
                    core.change_members(
                        MemberList::Whitelist,
                        &person(&friend),
                        std::slice::from_ref(&req.from),
                        ListChange::Add,
                    )?;
                    added.push(friend.clone());
                }
                outcomes.push((friend, ok));
            }
            core.change_members(MemberList::Whitelist, &person(&req.from), &added, ListChange::Add)?;
            Ok(outcomes)
        })
        .await?;
    Ok(success(json!({"data": results(&outcomes)})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct BlacklistReq {
    #[serde(rename = "fromUserID")]
    from: String,
    #[serde(rename = "ToUserID", alias = "toUserID", alias = "uid")]
    to: String,
}

/// `friend/add_blacklist`: `ToUserID` may no longer message `fromUserID` (SENDACK 4).
async fn add_blacklist(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: BlacklistReq = parse(&body)?;
    check_uid("fromUserID", &req.from)?;
    check_uid("ToUserID", &req.to)?;
    state
        .on_core::<_, OpenImError>(move |core| {
            let owner = ChannelKey::new(req.from, hongyan_core::channel::PERSON);
            core.change_members(MemberList::Blacklist, &owner, &[req.to], ListChange::Add)?;
            Ok(())
        })
        .await?;
    Ok(success(json!({})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct UpdateUserReq {
    uid: String,
    name: Option<String>,
    icon: Option<String>,
    gender: Option<i32>,
    mobile: Option<String>,
    birth: Option<Value>,
    email: Option<String>,
    ex: Option<String>,
}

/// `user/update_user_info`: changes the fields given (and registers the user).
async fn update_user_info(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: UpdateUserReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    // v2 sends birth as a string; numbers are taken as their text.
    let birth = match req.birth {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(OpenImError::args("birth: a string")),
    };
    let update = ProfileUpdate {
        name: req.name,
        avatar: req.icon,
        gender: req.gender,
        mobile: req.mobile,
        birth,
        email: req.email,
        ex: req.ex,
    };
    let uid = req.uid;
    state.on_core::<_, OpenImError>(move |core| Ok(core.update_profile(&uid, update)?)).await?;
    Ok(success(json!({})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct UidListReq {
    #[serde(rename = "uidList", alias = "userIDList")]
    uids: Vec<String>,
}

/// `user/get_user_info`: the profiles of the registered users among `uidList`.
async fn get_user_info(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: UidListReq = parse(&body)?;
    check_list("uidList", &req.uids, LIST_MAX)?;
    let users = state
        .on_core::<_, OpenImError>(move |core| {
            let mut out = Vec::new();
            for uid in req.uids.iter().filter(|u| is_valid_uid(u)) {
                if !core.is_registered(uid)? {
                    continue;
                }
                let p = core.profile(uid)?.unwrap_or_default();
                out.push(json!({
                    "uid": uid, "name": p.name, "icon": p.avatar, "gender": p.gender,
                    "mobile": p.mobile, "birth": p.birth, "email": p.email, "ex": p.ex,
                }));
            }
            Ok(out)
        })
        .await?;
    Ok(success(json!({"data": users})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct DeleteUserReq {
    #[serde(rename = "deleteUidList")]
    uids: Vec<String>,
}

/// `manager/delete_user`: tokens and profile gone, live connections kicked;
/// `failedUidList` names the ids that were not registered.
async fn delete_user(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: DeleteUserReq = parse(&body)?;
    check_list("deleteUidList", &req.uids, LIST_MAX)?;
    let uids = req.uids;
    let deleted = state
        .on_core::<_, OpenImError>(move |core| {
            let mut outcome = Vec::with_capacity(uids.len());
            for uid in uids {
                let done = is_valid_uid(&uid) && core.unregister(&uid)?;
                outcome.push((uid, done));
            }
            Ok(outcome)
        })
        .await?;
    let mut failed = Vec::new();
    for (uid, done) in deleted {
        if done {
            state.core.kick(&uid, None, ReasonCode::ConnectKick, "account deleted", state.settings.kick_close_delay);
        } else {
            failed.push(uid);
        }
    }
    Ok(success(json!({"failedUidList": failed})))
}

/// The OpenIM platform name reported for a WuKongIM device flag. A WuKongIM login
/// names only the device class, so each class reports its lowest-numbered platform:
/// app → `IOS` (1), web → `Web` (5), pc → `Windows` (3).
fn platform_of_flag(device_flag: u8) -> &'static str {
    match device_flag {
        hongyan_proto::device_flag::APP => "IOS",
        hongyan_proto::device_flag::WEB => "Web",
        _ => "Windows",
    }
}

/// `manager/get_users_online_status` (at most 200 ids), from live connections.
async fn online_status(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: UidListReq = parse(&body)?;
    check_list("userIDList", &req.uids, ONLINE_STATUS_MAX)?;
    let data: Vec<Value> = req
        .uids
        .iter()
        .map(|uid| {
            let conns = if is_valid_uid(uid) { state.registry.connections(uid) } else { Vec::new() };
            let mut platforms: Vec<&str> = conns.iter().map(|c| platform_of_flag(c.device_flag)).collect();
            platforms.sort_unstable();
            platforms.dedup();
            if conns.is_empty() {
                // As the seed shows: offline users carry no platform list.
                return json!({"userID": uid, "status": "offline"});
            }
            let detail: Vec<Value> = platforms.iter().map(|p| json!({"platform": p, "status": "online"})).collect();
            json!({"userID": uid, "status": "online", "detailPlatformStatus": detail})
        })
        .collect();
    Ok(success(json!({"successResult": data})))
}

/// `manager/get_all_users_uid`: every registered uid.
async fn all_users(State(state): State<AppState>) -> Answer {
    let uids = state.on_core::<_, OpenImError>(|core| Ok(core.store().registered_uids(1_000_000)?)).await?;
    Ok(success(json!({"uidList": uids})))
}

/// `manager/account_check` (at most 100 ids).
async fn account_check(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: UidListReq = parse(&body)?;
    check_list("userIDList", &req.uids, ACCOUNT_CHECK_MAX)?;
    let data = state
        .on_core::<_, OpenImError>(move |core| {
            let mut out = Vec::with_capacity(req.uids.len());
            for uid in req.uids {
                let registered = is_valid_uid(&uid) && core.is_registered(&uid)?;
                out.push(
                    json!({"userID": uid, "accountStatus": if registered { "registered" } else { "unregistered" }}),
                );
            }
            Ok(out)
        })
        .await?;
    Ok(success(json!({"result": data})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SendMsgReq {
    #[serde(rename = "sendID")]
    send_id: String,
    #[serde(rename = "recvID", default)]
    recv_id: String,
    #[serde(rename = "groupID", default)]
    group_id: String,
    content_type: i32,
    session_type: i32,
    content: Value,
    #[serde(default)]
    is_online_only: bool,
    #[serde(default)]
    #[allow(dead_code)]
    force_list: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    sender_nick_name: String,
    #[serde(rename = "senderFaceURL", default)]
    #[allow(dead_code)]
    sender_face_url: String,
    #[serde(rename = "senderPlatformID", default)]
    #[allow(dead_code)]
    sender_platform_id: i32,
    #[serde(default)]
    #[allow(dead_code)]
    offline_push_info: Value,
}

/// The WuKongIM payload of an OpenIM message: `{"type": n, ...}` with the type the
/// WuKongIM SDKs render (text 1, image 2, voice 4, video 5, location 6, card 7,
/// file 8); other content types keep their OpenIM number. Validates the content.
pub(crate) fn wukong_payload(content_type: i32, content: &Value) -> Result<Value, OpenImError> {
    let Value::Object(fields) = content else {
        return Err(OpenImError::args("content: an object"));
    };
    let text = |key: &str| -> Result<String, OpenImError> {
        match fields.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(OpenImError::args(format!("content.{key}: a non-empty string for contentType {content_type}"))),
        }
    };
    let wukong_type = match content_type {
        101 => return Ok(json!({"type": 1, "content": text("text")?})),
        106 => {
            let mut out = json!({"type": 1, "content": text("text")?});
            if let Some(at) = fields.get("atUserList") {
                out["mention"] = json!({"uids": at});
            }
            return Ok(out);
        }
        102 => 2,
        103 => 4,
        104 => 5,
        105 => 8,
        108 => 7,
        109 => 6,
        107 | 110..=114 => content_type,
        _ => return Err(OpenImError::args("contentType: 101 to 114")),
    };
    let required: &[&str] = match content_type {
        102 => &["sourcePicture"],
        103 => &["sourceUrl"],
        104 => &["videoUrl"],
        105 => &["sourceUrl"],
        109 => &["latitude", "longitude"],
        110 => &["data"],
        111 | 114 => &["text"],
        _ => &[],
    };
    if let Some(missing) = required.iter().find(|k| !fields.contains_key(**k)) {
        return Err(OpenImError::args(format!("content.{missing}: required for contentType {content_type}")));
    }
    let mut out = Value::Object(fields.clone());
    out["type"] = json!(wukong_type);
    Ok(out)
}

/// `manager/send_msg`: sessionType 1 (to `recvID`) or 2 (to `groupID`) through the one
/// send pipeline; `isOnlineOnly` is not stored. `sendTime` in nanoseconds.
async fn send_msg(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: SendMsgReq = parse(&body)?;
    check_uid("sendID", &req.send_id)?;
    let (channel_id, channel_type) = match req.session_type {
        1 => {
            check_uid("recvID", &req.recv_id)?;
            (req.recv_id.clone(), hongyan_core::channel::PERSON)
        }
        // Seed 003: "recvID: the receiver; for a group chat, the group's id". v2 servers
        // also take `groupID`; when both are given they must agree.
        2 => {
            let group = match (req.recv_id.is_empty(), req.group_id.is_empty()) {
                (false, false) if req.recv_id != req.group_id => {
                    return Err(OpenImError::args("recvID: for a group chat, the group id (groupID differs)"));
                }
                (false, _) => ("recvID", &req.recv_id),
                (true, _) => ("groupID", &req.group_id),
            };
            check_uid(group.0, group.1)?;
            (group.1.clone(), hongyan_core::channel::GROUP)
        }
        _ => return Err(OpenImError::args("sessionType: 1 (single) or 2 (group)")),
    };
    let payload = wukong_payload(req.content_type, &req.content)?;
    let send = hongyan_core::AppSend {
        from_uid: req.send_id,
        channel_id,
        channel_type,
        header: hongyan_proto::HeaderFlags { no_persist: req.is_online_only, red_dot: true, ..Default::default() },
        payload: Bytes::from(payload.to_string()),
        ..hongyan_core::AppSend::default()
    };
    let sent = state.core.send_as_app(send).await.map_err(|e| match e {
        SendError::Refused(ReasonCode::SystemError) => {
            OpenImError { code: code::DB, msg: "the message could not be stored".into() }
        }
        SendError::Datasource(why) => hongyan_store::StoreError::Datasource(why).into(),
        SendError::Refused(other) => OpenImError::args(format!("message refused: {}", other.name())),
    })?;
    let send_time_ns = hongyan_core::now_ms() * 1_000_000;
    Ok(success(json!({"sendTime": send_time_ns, "msgID": sent.message_id.to_string()})))
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
