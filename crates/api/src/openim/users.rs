//! Users: profiles (`update_user_info`, `get_users_info`, `delete_user`), friends
//! (`import_friend`), the blacklist, online status and account checks.

use axum::body::Bytes;
use axum::extract::State;
use hongyan_core::channels::ListChange;
use hongyan_core::directory::ProfileUpdate;
use hongyan_core::session::is_valid_uid;
use hongyan_proto::ReasonCode;
use hongyan_store::{ChannelKey, MemberList};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ACCOUNT_CHECK_MAX, Answer, LIST_MAX, ONLINE_STATUS_MAX, OpenImError, check_list, check_uid, parse, results, success,
};
use crate::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ImportFriendReq {
    #[serde(rename = "fromUserID")]
    pub(super) from: String,
    #[serde(rename = "friendUserIDList")]
    pub(super) friends: Vec<String>,
}

/// `friend/import_friend`: mutual friendships, kept as person-channel whitelist
/// entries both ways; -1 for invalid ids and for oneself.
pub(super) async fn import_friend(State(state): State<AppState>, body: Bytes) -> Answer {
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
pub(super) struct BlacklistReq {
    #[serde(rename = "fromUserID")]
    pub(super) from: String,
    #[serde(rename = "ToUserID", alias = "toUserID", alias = "uid")]
    pub(super) to: String,
}

/// `friend/add_blacklist`: `ToUserID` may no longer message `fromUserID` (SENDACK 4).
pub(super) async fn add_blacklist(State(state): State<AppState>, body: Bytes) -> Answer {
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
pub(super) struct UpdateUserReq {
    pub(super) uid: String,
    pub(super) name: Option<String>,
    pub(super) icon: Option<String>,
    pub(super) gender: Option<i32>,
    pub(super) mobile: Option<String>,
    pub(super) birth: Option<Value>,
    pub(super) email: Option<String>,
    pub(super) ex: Option<String>,
}

/// `user/update_user_info`: changes the fields given (and registers the user).
pub(super) async fn update_user_info(State(state): State<AppState>, body: Bytes) -> Answer {
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
pub(super) struct UidListReq {
    #[serde(rename = "uidList", alias = "userIDList")]
    pub(super) uids: Vec<String>,
}

/// `user/get_user_info`: the profiles of the registered users among `uidList`.
pub(super) async fn get_user_info(State(state): State<AppState>, body: Bytes) -> Answer {
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
pub(super) struct DeleteUserReq {
    #[serde(rename = "deleteUidList")]
    pub(super) uids: Vec<String>,
}

/// `manager/delete_user`: tokens and profile gone, live connections kicked;
/// `failedUidList` names the ids that were not registered.
pub(super) async fn delete_user(State(state): State<AppState>, body: Bytes) -> Answer {
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
pub(super) fn platform_of_flag(device_flag: u8) -> &'static str {
    match device_flag {
        hongyan_proto::device_flag::APP => "IOS",
        hongyan_proto::device_flag::WEB => "Web",
        _ => "Windows",
    }
}

/// `manager/get_users_online_status` (at most 200 ids), from live connections.
pub(super) async fn online_status(State(state): State<AppState>, body: Bytes) -> Answer {
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
pub(super) async fn all_users(State(state): State<AppState>) -> Answer {
    let uids = state.on_core::<_, OpenImError>(|core| Ok(core.store().registered_uids(1_000_000)?)).await?;
    Ok(success(json!({"uidList": uids})))
}

/// `manager/account_check` (at most 100 ids).
pub(super) async fn account_check(State(state): State<AppState>, body: Bytes) -> Answer {
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
