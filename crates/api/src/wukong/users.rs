//! Users: login tokens (`/user/token`), their devices and logging a device out, and
//! the system accounts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use hongyan_proto::{DeviceLevel, ReasonCode};
use hongyan_store::Device;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiQuery, check_uid, ok, parse};
use crate::{ApiError, AppState};

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UidQuery {
    uid: String,
}

/// `GET /user/devices?uid=`: `[{device_flag, device_level}]` for each device flag a
/// token is registered for. Tokens are stored as digests and never shown.
pub(super) async fn user_devices(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<UidQuery>,
) -> Result<Json<Value>, ApiError> {
    check_uid("uid", &q.uid)?;
    let devices = state
        .on_core(move |c| {
            let mut found = Vec::new();
            for flag in 0..=2u8 {
                if let Some(device) = c.store().device(&q.uid, flag).map_err(ApiError::Storage)? {
                    found.push(json!({"device_flag": flag, "device_level": device.level as u8}));
                }
            }
            Ok::<_, ApiError>(found)
        })
        .await?;
    Ok(Json(Value::Array(devices)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UserTokenReq {
    uid: String,
    token: String,
    #[serde(default)]
    device_flag: u8,
    #[serde(default)]
    device_level: u8,
}

pub(super) fn check_device_flag(flag: u8) -> Result<(), ApiError> {
    if flag <= 2 { Ok(()) } else { Err(ApiError::bad("device_flag: must be 0 (app), 1 (web) or 2 (pc)")) }
}

/// `POST /user/token`: registers the token a (uid, device_flag) must present. A master
/// registration kicks the current logins of that flag.
pub(super) async fn user_token(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: UserTokenReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    if req.uid == state.settings.system_uid {
        return Err(ApiError::bad("uid: the system uid cannot log in"));
    }
    if req.token.is_empty() {
        return Err(ApiError::bad("token: must not be empty"));
    }
    check_device_flag(req.device_flag)?;
    let level = DeviceLevel::from_u8(req.device_level)
        .ok_or_else(|| ApiError::bad("device_level: must be 0 (slave) or 1 (master)"))?;

    let uid = req.uid.clone();
    let banned = state.on_core(move |c| c.is_user_banned(&uid).map_err(ApiError::Storage)).await?;
    if banned {
        return Ok(Json(json!({"status": ReasonCode::Ban.as_u8()})));
    }
    let (uid, flag) = (req.uid.clone(), req.device_flag);
    let device = Device::new(&req.token, level);
    state.on_core(move |c| c.store().put_device(&uid, flag, &device).map_err(ApiError::Storage)).await?;
    if level == DeviceLevel::Master {
        let delay = state.settings.token_kick_close_delay;
        state.core.kick(&req.uid, Some(flag), ReasonCode::ConnectKick, "login in other device", delay);
    }
    Ok(ok())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct DeviceQuitReq {
    uid: String,
    #[serde(default = "all_devices")]
    device_flag: i16,
}

pub(super) fn all_devices() -> i16 {
    -1
}

/// `POST /user/device_quit`: forgets the token of one device flag (-1: all) and kicks
/// its connections, so that device must log in again.
pub(super) async fn device_quit(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: DeviceQuitReq = parse(&body)?;
    check_uid("uid", &req.uid)?;
    let flags: Vec<u8> = match req.device_flag {
        -1 => vec![0, 1, 2],
        f @ 0..=2 => vec![f as u8],
        _ => return Err(ApiError::bad("device_flag: must be -1 (all), 0 (app), 1 (web) or 2 (pc)")),
    };
    let uid = req.uid.clone();
    let removed = flags.clone();
    state
        .on_core(move |c| c.store().apply(c.store().device_removal_writes(&uid, &removed)).map_err(ApiError::Storage))
        .await?;
    for flag in flags {
        state.core.kick(&req.uid, Some(flag), ReasonCode::ConnectKick, "device quit", state.settings.kick_close_delay);
    }
    Ok(ok())
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UidsReq {
    #[serde(default)]
    uids: Vec<String>,
}

/// `GET /user/systemuids`: the system accounts.
pub(super) async fn system_uids(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.core.system_accounts()))
}

/// `POST /user/systemuids_add` / `_remove` (also at LiMaoIM's `/systemuids_add`):
/// system accounts send without sender checks, and anyone may message them.
pub(super) async fn set_system_uids(
    State(state): State<AppState>,
    body: Bytes,
    system: bool,
) -> Result<Json<Value>, ApiError> {
    let req: UidsReq = parse(&body)?;
    if req.uids.is_empty() {
        return Err(ApiError::bad("uids: required"));
    }
    for (i, uid) in req.uids.iter().enumerate() {
        check_uid(&format!("uids[{i}]"), uid)?;
    }
    state.on_core(move |core| core.set_system_accounts(&req.uids, system).map_err(ApiError::Storage)).await?;
    Ok(ok())
}
