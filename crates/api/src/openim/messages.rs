//! `send_msg`: OpenIM's content types as WuKongIM payloads, through the one send
//! pipeline.

use axum::body::Bytes;
use axum::extract::State;
use hongyan_core::SendError;
use hongyan_proto::ReasonCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, OpenImError, check_uid, code, parse, success};
use crate::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SendMsgReq {
    #[serde(rename = "sendID")]
    pub(super) send_id: String,
    #[serde(rename = "recvID", default)]
    pub(super) recv_id: String,
    #[serde(rename = "groupID", default)]
    pub(super) group_id: String,
    pub(super) content_type: i32,
    pub(super) session_type: i32,
    pub(super) content: Value,
    #[serde(default)]
    pub(super) is_online_only: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) force_list: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) sender_nick_name: String,
    #[serde(rename = "senderFaceURL", default)]
    #[allow(dead_code)]
    pub(super) sender_face_url: String,
    #[serde(rename = "senderPlatformID", default)]
    #[allow(dead_code)]
    pub(super) sender_platform_id: i32,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) offline_push_info: Value,
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
pub(super) async fn send_msg(State(state): State<AppState>, body: Bytes) -> Answer {
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
