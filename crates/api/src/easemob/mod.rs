//! The Easemob / Agora Chat thread dialect (seed 002): app tokens, threads and thread
//! members, in Easemob's envelope, errors and rate limits, over the core's threads
//! (sub-channels of a group whose members stay a subset of the group's).
//!
//! * Apps are configured (`[[easemob.apps]]`); `POST /{org}/{app}/token` trades the
//!   client credentials for an app token: an HS256 JWT signed with the client secret,
//!   so tokens survive restarts. Every other call needs `Authorization: Bearer …`.
//! * Success is HTTP 200 with `action`, `application`, `applicationName`,
//!   `organization`, `uri`, `path`, `timestamp`, `duration` and the call's
//!   `data`/`entities`/`properties`; failures carry the real HTTP status and
//!   `{error, exception, timestamp, duration, error_description}`.
//! * Each app has per-API call budgets per second (429 beyond them).
//! * One namespace: threads, groups and users are the core's, whichever app names them.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, MatchedPath, OriginalUri, Path, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use hongyan_store::Thread;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use md5::Digest as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::openapi::{self, Dialect, Endpoint, schema_of};
use crate::ratelimit::ClientIp;

mod members;
mod paging;
mod threads;

use members::{UsernamesReq, add_members, list_members, remove_members};
use paging::PageQuery;
use threads::{
    CreateReq, RenameReq, create_thread, delete_thread, list_threads, rename_thread, user_group_threads, user_threads,
};

/// One configured app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EasemobApp {
    /// The organisation name in paths.
    pub org: String,
    /// The app name in paths.
    pub app: String,
    /// The client id the token endpoint checks.
    pub client_id: String,
    /// The client secret it checks; also signs the app's tokens.
    pub client_secret: String,
}

/// The dialect's settings and its rate-limit counters.
#[derive(Debug)]
pub struct Easemob {
    apps: Vec<EasemobApp>,
    /// Calls per second per app and API.
    calls_per_sec: u32,
    /// Calls per second per app to the token endpoint.
    token_calls_per_sec: u32,
    /// Token lifetime when the request gives no `ttl`.
    ttl: TokenTtl,
    windows: Mutex<HashMap<(usize, String), Window>>,
}

/// Calls of one API by one app in the current second: when the second began, how many.
type Window = (Instant, u32);

impl Easemob {
    /// The dialect over `apps`.
    pub fn new(apps: Vec<EasemobApp>, calls_per_sec: u32, token_calls_per_sec: u32, ttl: TokenTtl) -> Self {
        Self { apps, calls_per_sec, token_calls_per_sec, ttl, windows: Mutex::new(HashMap::new()) }
    }

    /// The configured (org, app) names.
    pub(crate) fn names(&self) -> Vec<(String, String)> {
        self.apps.iter().map(|a| (a.org.clone(), a.app.clone())).collect()
    }

    fn app(&self, org: &str, app: &str) -> Option<(usize, &EasemobApp)> {
        self.apps.iter().enumerate().find(|(_, a)| a.org == org && a.app == app)
    }

    /// Counts a call of `api` by app `index`; a 429 once the second's `budget` is spent.
    fn admit(&self, index: usize, api: &str, budget: u32) -> Result<(), EmError> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let window = windows.entry((index, api.to_owned())).or_insert((now, 0));
        if now.duration_since(window.0) >= Duration::from_secs(1) {
            *window = (now, 0);
        }
        window.1 += 1;
        if window.1 > budget {
            return Err(EmError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resource_limited",
                "ServiceUnavailableException",
                format!("This request has reached api limit of {budget} calls per second"),
            ));
        }
        Ok(())
    }
}

/// The app's UUID as Easemob shows it, derived from its org and name.
fn app_uuid(app: &EasemobApp) -> String {
    let d = md5::Md5::digest(format!("{}#{}", app.org, app.app).as_bytes());
    let h: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A failure in Easemob's shape.
#[derive(Debug)]
pub(crate) struct EmError {
    status: StatusCode,
    error: &'static str,
    exception: &'static str,
    description: String,
}

impl EmError {
    fn new(status: StatusCode, error: &'static str, exception: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, exception, description: description.into() }
    }

    fn group(status: StatusCode, description: &str) -> Self {
        let exception = match status {
            StatusCode::NOT_FOUND => "com.easemob.group.exception.GroupNotFoundException",
            StatusCode::FORBIDDEN => "com.easemob.group.exception.GroupForbiddenException",
            _ => "com.easemob.group.exception.GroupErrorException",
        };
        Self::new(status, "group_error", exception, description)
    }

    fn bad_body(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "param_illegal", "IllegalArgumentException", description)
    }

    fn unauthorized(description: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "EasemobSecurityException", description)
    }
}

impl From<hongyan_store::StoreError> for EmError {
    fn from(e: hongyan_store::StoreError) -> Self {
        if let hongyan_store::StoreError::Datasource(why) = e {
            tracing::warn!(error = %why, "the datasource failed in an Easemob call");
            let description = format!("datasource: {why}");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "DatasourceException",
                description,
            );
        }
        tracing::error!(error = %e, "storage failed in an Easemob call");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "StorageException", "storage failed")
    }
}

impl From<hongyan_core::directory::DirectoryError> for EmError {
    fn from(e: hongyan_core::directory::DirectoryError) -> Self {
        use hongyan_core::directory::DirectoryError as D;
        match e {
            D::Storage(e) => e.into(),
            D::NotMember { .. } => Self::group(StatusCode::NOT_FOUND, "user not in group."),
            D::NotFound(what) if what.starts_with("group") => Self::group(StatusCode::NOT_FOUND, "group not found."),
            D::NotFound(_) => Self::group(StatusCode::NOT_FOUND, "thread not found."),
            D::AlreadyExists(_) => Self::group(StatusCode::FORBIDDEN, "thread id already exists."),
            D::InvalidId(id) => Self::bad_body(format!("invalid id: {id}")),
        }
    }
}

impl From<crate::TaskFailed> for EmError {
    fn from(e: crate::TaskFailed) -> Self {
        tracing::error!(error = %e.0, "an Easemob call failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "InternalException", "internal error")
    }
}

impl IntoResponse for EmError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.error,
            "exception": self.exception,
            "timestamp": hongyan_core::now_ms(),
            "duration": 0,
            "error_description": self.description,
        });
        (self.status, Json(body)).into_response()
    }
}

/// What every thread call knows about its request, for the envelope.
#[derive(Clone)]
struct Call {
    app: EasemobApp,
    method: Method,
    uri: String,
    path: String,
    started: Instant,
}

impl Call {
    /// The app as a thread's tenant: `org/app`.
    fn tenant(&self) -> String {
        format!("{}/{}", self.app.org, self.app.app)
    }

    /// Whether this app may see `thread`: its own, or one that belongs to no app.
    fn sees(&self, thread: &Thread) -> bool {
        thread.tenant.is_empty() || thread.tenant == self.tenant()
    }

    /// Fails as a missing thread does unless `id` is a thread this app may see: app A's
    /// token can neither see nor change app B's threads, nor learn that they exist.
    fn check_thread(&self, core: &hongyan_core::Core, id: &str) -> Result<(), EmError> {
        match core.thread(id)? {
            Some(thread) if self.sees(&thread) => Ok(()),
            _ => Err(EmError::group(StatusCode::NOT_FOUND, "thread not found.")),
        }
    }

    /// The success envelope with `fields` (data, entities, properties) beside it.
    fn answer(&self, fields: Value) -> Json<Value> {
        let mut body = json!({
            "action": self.method.as_str().to_lowercase(),
            "application": app_uuid(&self.app),
            "applicationName": self.app.app,
            "organization": self.app.org,
            "uri": self.uri,
            "path": self.path,
            "timestamp": hongyan_core::now_ms(),
            "duration": self.started.elapsed().as_millis() as u64,
        });
        if let (Some(out), Value::Object(more)) = (body.as_object_mut(), fields) {
            out.extend(more);
        }
        Json(body)
    }
}

fn easemob(state: &AppState) -> Result<&Easemob, EmError> {
    state.settings.easemob.as_deref().ok_or_else(not_found_app)
}

fn not_found_app() -> EmError {
    EmError::new(
        StatusCode::NOT_FOUND,
        "organization_application_not_found",
        "ApplicationNotFoundException",
        "Could not find application for the org and app name",
    )
}

/// App token claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    org: String,
    app: String,
    exp: i64,
    iat: i64,
}

/// Every thread call starts here: the app named by the path's first two segments, one
/// call spent from the budget of this API (method and route), and its bearer token.
impl FromRequestParts<AppState> for Call {
    type Rejection = EmError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, EmError> {
        let em = easemob(state)?;
        // Configured org and app names are path-safe, so the raw segments are the names.
        let mut segments = parts.uri.path().trim_start_matches('/').split('/');
        let (org, app) = (segments.next().unwrap_or_default(), segments.next().unwrap_or_default());
        let (index, found) = em.app(org, app).ok_or_else(not_found_app)?;
        // The token is checked before the call is counted: a caller without a valid
        // token cannot spend the app's budget and lock its real servers out.
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| EmError::unauthorized("Unable to authenticate (OAuth)"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let key = DecodingKey::from_secret(found.client_secret.as_bytes());
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    EmError::unauthorized("Unable to authenticate due to expired access token")
                }
                _ => EmError::unauthorized("Unable to authenticate due to corrupt access token"),
            })?
            .claims;
        if claims.org != found.org || claims.app != found.app {
            return Err(EmError::unauthorized("Unable to authenticate due to corrupt access token"));
        }
        let route = parts.extensions.get::<MatchedPath>().map_or("", MatchedPath::as_str);
        em.admit(index, &format!("{} {route}", parts.method), em.calls_per_sec)?;
        let uri = parts.extensions.get::<OriginalUri>().map_or_else(|| parts.uri.clone(), |u| u.0.clone());
        Ok(Call {
            app: found.clone(),
            method: parts.method.clone(),
            uri: uri.to_string(),
            path: uri.path().to_owned(),
            started: Instant::now(),
        })
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, EmError> {
    serde_json::from_slice(body).map_err(|e| EmError::bad_body(format!("Failed to read HTTP message: {e}")))
}

/// An endpoint of this dialect.
fn endpoint(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    handler: MethodRouter<AppState>,
) -> Endpoint {
    openapi::endpoint(Dialect::Easemob, method, path, summary, handler)
}

/// Every endpoint of the dialect; the router and the OpenAPI document are both built
/// from this list.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    use axum::routing::{delete, put};
    let page = schema_of::<PageQuery>;
    let users = "/{org}/{app}/thread/{id}/users";
    vec![
        openapi::endpoint(Dialect::EasemobToken, "post", "/{org}/{app}/token", "An app token", post(token))
            .body(schema_of::<TokenReq>)
            .open(),
        endpoint("post", "/{org}/{app}/thread", "Create a thread on a group message", post(create_thread))
            .body(schema_of::<CreateReq>),
        endpoint("get", "/{org}/{app}/thread", "Every thread of the app", get(list_threads)).query(page),
        endpoint("put", "/{org}/{app}/thread/{id}", "Rename a thread", put(rename_thread)).body(schema_of::<RenameReq>),
        endpoint("delete", "/{org}/{app}/thread/{id}", "Delete a thread", delete(delete_thread)),
        endpoint("get", users, "A thread's members", get(list_members)).query(page),
        endpoint("post", users, "Members of the group join a thread", post(add_members))
            .body(schema_of::<UsernamesReq>),
        endpoint("delete", users, "Members leave a thread", delete(remove_members))
            .optional_body(schema_of::<UsernamesReq>),
        endpoint("delete", "/{org}/{app}/threads/{id}/users", "Members leave a thread", delete(remove_members))
            .optional_body(schema_of::<UsernamesReq>),
        endpoint("get", "/{org}/{app}/threads/user/{username}", "The threads a user joined", get(user_threads))
            .query(page),
        endpoint(
            "get",
            "/{org}/{app}/threads/chatgroups/{group}/user/{username}",
            "The threads a user joined in one group",
            get(user_group_threads),
        )
        .query(page),
    ]
}

/// The dialect's routes at Easemob's paths (`/{org}/{app}/…`).
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    openapi::routes(endpoints())
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(|r: Response| openapi::json_errors(Dialect::Easemob, r)))
        .with_state(state)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct TokenReq {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
    ttl: Option<u64>,
}

/// `POST /{org}/{app}/token` with `client_credentials`: `{access_token, expires_in,
/// application}`, not enveloped. `ttl` 0 means the token never expires.
async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path((org, app)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let answer = (|| {
        let em = easemob(&state)?;
        let (index, found) = em.app(&org, &app).ok_or_else(not_found_app)?;
        // Per address first: guessing a client secret from one place is slow, and does
        // not spend the app's budget that its real servers need.
        if ip.is_some_and(|ip| !state.settings.token_limit.allow(ip)) {
            return Err(EmError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resource_limited",
                "ServiceUnavailableException",
                "This address has made too many token requests; slow down",
            ));
        }
        em.admit(index, "token", em.token_calls_per_sec)?;
        let req: TokenReq = parse(&body)?;
        let illegal =
            |d: &str| EmError::new(StatusCode::BAD_REQUEST, "illegal_argument", "IllegalArgumentException", d);
        let invalid = |d: &str| EmError::new(StatusCode::BAD_REQUEST, "invalid_grant", "InvalidGrantException", d);
        if req.grant_type != "client_credentials" {
            return Err(illegal("grant_type must be client_credentials."));
        }
        if req.client_id.is_empty() {
            return Err(illegal("client_id must be provided."));
        }
        if req.client_secret.is_empty() {
            return Err(illegal("client_secret must be provided"));
        }
        if req.client_id != found.client_id {
            return Err(invalid("client_id does not match"));
        }
        if !hongyan_core::eq_constant_time(&req.client_secret, &found.client_secret) {
            return Err(invalid("client_secret does not match"));
        }
        let ttl = em.ttl.granted(req.ttl);
        let now = hongyan_core::now_ms() / 1000;
        // ttl 0: never expires (as far as a JWT can say).
        let exp = if ttl.is_zero() { 253_402_300_799 } else { now.saturating_add(ttl.as_secs() as i64) };
        let claims = Claims { org: found.org.clone(), app: found.app.clone(), exp, iat: now };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(found.client_secret.as_bytes()),
        )
        .map_err(|e| {
            EmError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "TokenException", e.to_string())
        })?;
        Ok(json!({"access_token": token, "expires_in": ttl.as_secs(), "application": app_uuid(found)}))
    })();
    match answer {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// How long app tokens live.
#[derive(Clone, Copy, Debug)]
pub struct TokenTtl {
    /// When the request names no ttl.
    pub default: Duration,
    /// The longest a request may ask for; longer asks get this.
    pub max: Duration,
    /// Whether `ttl: 0` (never expires, in Easemob's API) is honoured; otherwise it
    /// gets `max`.
    pub allow_unexpiring: bool,
}

impl TokenTtl {
    /// The ttl a token request gets: 0 means never expires.
    fn granted(self, asked: Option<u64>) -> Duration {
        match asked {
            None => self.default.min(self.max),
            Some(0) if self.allow_unexpiring => Duration::ZERO,
            Some(0) => self.max,
            Some(secs) => Duration::from_secs(secs).min(self.max),
        }
    }
}

/// Longest thread name, in characters.
const NAME_MAX: usize = 64;
/// Most usernames per member call.
const USERNAMES_MAX: usize = 10;
/// Most items per page.
const PAGE_MAX: usize = 50;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datasource_failure_is_a_503_naming_the_datasource() {
        let e = EmError::from(hongyan_store::StoreError::Datasource("getChannelInfo: HTTP 502".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.description, "datasource: getChannelInfo: HTTP 502");
        let e = EmError::from(hongyan_store::StoreError::Engine("disk on fire".into()));
        assert_eq!((e.status, e.description.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "storage failed"));
    }
}
