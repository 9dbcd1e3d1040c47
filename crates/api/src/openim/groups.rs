//! Groups: `create_group`, `invite_user_to_group`, `kick_group` — group channels whose
//! subscribers are the members, with roles.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use hongyan_core::channels::ListChange;
use hongyan_core::session::is_valid_uid;
use hongyan_store::{ChannelInfo, ChannelKey, GroupProfile, MemberList, Role};
use serde::Deserialize;
use serde_json::json;

use super::{Answer, LIST_MAX, OpenImError, admin_of, check_list, check_uid, parse, results, success};
use crate::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct Member {
    #[serde(rename = "userID")]
    pub(super) user_id: String,
    #[serde(rename = "roleLevel", default = "ordinary")]
    pub(super) role_level: i32,
}

pub(super) fn ordinary() -> i32 {
    1
}

/// v2 role levels: 1 ordinary, 2 owner, 3 admin.
pub(super) fn role_of_level(level: i32) -> Option<Role> {
    Some(match level {
        1 => Role::Member,
        2 => Role::Owner,
        3 => Role::Admin,
        _ => return None,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateGroupReq {
    #[serde(rename = "ownerUserID")]
    pub(super) owner_user_id: String,
    #[serde(rename = "groupID", default)]
    pub(super) group_id: String,
    #[serde(default)]
    pub(super) group_type: i32,
    #[serde(default)]
    pub(super) group_name: String,
    #[serde(default)]
    pub(super) notification: String,
    #[serde(default)]
    pub(super) introduction: String,
    #[serde(rename = "faceURL", default)]
    pub(super) face_url: String,
    #[serde(default)]
    pub(super) ex: String,
    #[serde(default)]
    pub(super) member_list: Vec<Member>,
}

/// `group/create_group`: a group channel with the owner and members as subscribers
/// and their roles, plus its profile.
pub(super) async fn create_group(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Answer {
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
pub(super) fn existing_group(core: &hongyan_core::Core, id: &str) -> Result<ChannelKey, OpenImError> {
    let key = ChannelKey::new(id, hongyan_core::channel::GROUP);
    if core.store().group_profile(id)?.is_none() && core.channel_state(&key)?.subscribers.is_empty() {
        return Err(OpenImError::args(format!("groupID: no group {id}")));
    }
    Ok(key)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct InviteReq {
    #[serde(rename = "groupID")]
    pub(super) group_id: String,
    #[serde(rename = "invitedUserIDList")]
    pub(super) invited: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) reason: String,
}

/// `group/invite_user_to_group`: adds members directly; -1 for ids that are not valid.
pub(super) async fn invite_to_group(State(state): State<AppState>, body: Bytes) -> Answer {
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
pub(super) struct KickReq {
    #[serde(rename = "groupID")]
    pub(super) group_id: String,
    #[serde(rename = "kickedUserIDList")]
    pub(super) kicked: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) reason: String,
}

/// `group/kick_group`: removes members; -1 for non-members and the owner.
pub(super) async fn kick_from_group(State(state): State<AppState>, body: Bytes) -> Answer {
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
