//! The demo chat (`demo.addr`, `/chatdemo`): a page built from `web/demo/` and embedded
//! here, which signs a visitor in as any uid, connects with the official WuKongIM JS
//! SDK, reads conversations and history, and reacts to and revokes messages.
//!
//! The listener has two endpoints of its own, both existing only while the demo is on:
//! `POST /chatdemo/login` registers a fresh token for the uid through `POST /user/token`
//! (as a web device), and `POST /chatdemo/api/<path>` passes a few user-level calls on
//! to the API with the signed-in uid put in the body, for a caller that presents the
//! uid's web token (checked against storage, so a page stays signed in across a server
//! restart). Both go through the API's own router (in process), so
//! every rule the app server's calls meet applies here too; there is no second path into
//! the core. Anyone who reaches the listener can be anyone, so it only listens on
//! loopback (`Config::validate`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::console::{asset, in_process};

const INDEX: &str = include_str!("../web/demo/index.html");
const STYLE: &str = include_str!("../web/demo/style.css");
const SCRIPT: &str = include_str!("../web/demo/app.js");

/// Most tokens the demo remembers for handing out again (a second tab of the same uid
/// gets the first one's); past it the oldest is forgotten and its uid gets a new token
/// at its next sign-in.
const MAX_SESSIONS: usize = 10_000;

/// The device flag of the demo's logins (web).
const WEB: u8 = hongyan_proto::device_flag::WEB;

/// Largest request body the demo's own endpoints take.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The API calls a demo page may make, and the body field that names the caller.
const PASSED_ON: [(&str, &str); 7] = [
    ("conversation/sync", "uid"),
    ("conversations/clearUnread", "uid"),
    ("channel/messagesync", "login_uid"),
    ("channel", ""),
    ("message/extras", "login_uid"),
    ("message/reaction", "uid"),
    ("message/revoke", "from_uid"),
];

/// What the demo listener needs.
#[derive(Clone)]
pub(crate) struct Demo {
    /// The API's router, called in process.
    pub(crate) api: Router,
    /// Checks the tokens pages present.
    pub(crate) core: Arc<hongyan_core::Core>,
    /// Where the page's SDK connects (`ws://host:port`).
    pub(crate) ws_addr: String,
    /// Sent as the `token` header to the API when set.
    pub(crate) manager_token: String,
}

#[derive(Clone)]
struct Shared {
    demo: Demo,
    sessions: Arc<Mutex<Sessions>>,
}

/// uid → the token the demo registered for it, oldest first.
#[derive(Default)]
struct Sessions {
    tokens: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Sessions {
    fn token_of(&self, uid: &str) -> Option<&String> {
        self.tokens.get(uid)
    }

    fn insert(&mut self, uid: String, token: String) {
        if self.tokens.insert(uid.clone(), token).is_none() {
            self.order.push_back(uid);
        }
        while self.order.len() > MAX_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.tokens.remove(&old);
            }
        }
    }
}

/// The demo listener's routes.
pub(crate) fn router(demo: Demo) -> Router {
    let shared = Shared { demo, sessions: Arc::default() };
    Router::new()
        .route("/", get(|| async { Redirect::to("/chatdemo") }))
        .route("/chatdemo", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/chatdemo/", get(|| async { Redirect::to("/chatdemo") }))
        .route("/chatdemo/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/chatdemo/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/chatdemo/login", post(login))
        .route("/chatdemo/api/{*path}", post(pass_on))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

fn refuse(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({"status": status.as_u16(), "msg": msg}))).into_response()
}

/// Calls the API in process with a JSON body.
async fn call_api(demo: &Demo, path: &str, body: &Value) -> Response {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if !demo.manager_token.is_empty()
        && let Ok(token) = HeaderValue::from_str(&demo.manager_token)
    {
        request = request.header("token", token);
    }
    let Ok(request) = request.body(Body::from(body.to_string())) else {
        return refuse(StatusCode::BAD_REQUEST, "path: not a valid request path");
    };
    in_process(demo.api.clone(), request).await
}

fn new_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `POST /chatdemo/login {"uid"}`: a token for the uid (the one already given, or a
/// new one registered as a web slave device), and where to connect.
async fn login(State(shared): State<Shared>, body: Bytes) -> Response {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "body: must be a JSON object with uid");
    };
    let Some(uid) = req.get("uid").and_then(Value::as_str).map(str::to_owned) else {
        return refuse(StatusCode::BAD_REQUEST, "uid: required");
    };
    let known = shared.sessions.lock().unwrap_or_else(PoisonError::into_inner).token_of(&uid).cloned();
    let token = match known {
        Some(token) => token,
        None => {
            let Some(token) = new_token() else {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "no random source");
            };
            // A web slave device: the user's other devices stay connected.
            let answer = call_api(
                &shared.demo,
                "/user/token",
                &json!({"uid": uid, "token": token, "device_flag": WEB, "device_level": 0}),
            )
            .await;
            if answer.status() != StatusCode::OK {
                return answer;
            }
            shared.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(uid.clone(), token.clone());
            token
        }
    };
    axum::Json(json!({"uid": uid, "token": token, "ws_addr": shared.demo.ws_addr})).into_response()
}

/// `POST /chatdemo/api/<path>`: one of [`PASSED_ON`] for the signed-in uid
/// (`x-demo-uid` and `x-demo-token`), with that uid put in the body.
async fn pass_on(State(shared): State<Shared>, Path(path): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(&(_, uid_field)) = PASSED_ON.iter().find(|(p, _)| *p == path) else {
        return refuse(StatusCode::NOT_FOUND, "not a call the demo passes on");
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (uid, token) = (header("x-demo-uid"), header("x-demo-token"));
    let (core, who) = (shared.demo.core.clone(), uid.clone());
    let signed_in = tokio::task::spawn_blocking(move || {
        hongyan_core::session::is_valid_uid(&who) && core.token_matches(&who, WEB, &token).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    if !signed_in {
        return refuse(StatusCode::UNAUTHORIZED, "sign in again");
    }
    let uid = uid.as_str();
    let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "body: must be a JSON object");
    };
    if uid_field.is_empty() {
        // Creating a group: only with the caller as a member.
        let member =
            req.get("subscribers").and_then(Value::as_array).is_some_and(|s| s.iter().any(|m| m.as_str() == Some(uid)));
        if req.get("channel_type").and_then(Value::as_u64) != Some(2) || !member {
            return refuse(StatusCode::BAD_REQUEST, "the demo creates groups (channel_type 2) that include you");
        }
    } else {
        req.insert(uid_field.to_owned(), Value::String(uid.to_owned()));
    }
    call_api(&shared.demo, &format!("/{path}"), &Value::Object(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_capped_and_forget_the_oldest() {
        let mut sessions = Sessions::default();
        for i in 0..=MAX_SESSIONS {
            sessions.insert(format!("u{i}"), "t".into());
        }
        sessions.insert("u5".into(), "t2".into());
        assert_eq!(sessions.tokens.len(), MAX_SESSIONS);
        assert!(sessions.token_of("u0").is_none());
        assert_eq!(sessions.token_of("u5").map(String::as_str), Some("t2"));
        assert_eq!(sessions.order.len(), MAX_SESSIONS);
    }

    #[test]
    fn the_embedded_page_loads_its_own_assets() {
        assert!(INDEX.contains("/chatdemo/app.js") && INDEX.contains("/chatdemo/style.css"));
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"), "offline: no external resources");
    }
}
