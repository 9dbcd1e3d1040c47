//! Hongyan's HTTP APIs.
//!
//! [`wukong`] is the WuKongIM / LiMaoIM dialect that app servers call; [`openim`] and
//! [`easemob`] sit beside it over the same state, and [`openapi`] documents all three
//! from the same endpoint lists their routers are built from. Only this crate defines
//! HTTP bodies: domain types are converted by hand at the edge.

#![warn(missing_docs)]

pub mod datasource;
pub mod easemob;
mod error;
pub mod openapi;
pub mod openim;
pub mod ratelimit;
pub mod webhook;
pub mod wukong;

use std::sync::Arc;
use std::time::Duration;

use hongyan_core::session::Registry;

pub use error::ApiError;

/// How `/user/onlinestatus` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnlineStatusFormat {
    /// LiMaoIM: the array of uids online.
    #[default]
    Uids,
    /// WuKongIM v2: one `{uid, device_flag, online}` per online connection.
    Devices,
}

/// Settings the API needs from the server's configuration.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// When non-empty, every request must carry it in the `token` header.
    pub manager_token: String,
    /// The uid HTTP sends use when no `from_uid` is given; it cannot get a token.
    pub system_uid: String,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Delay between DISCONNECT and close for kicks caused by token updates.
    pub token_kick_close_delay: Duration,
    /// Delay between DISCONNECT and close for `device_quit` and bans.
    pub kick_close_delay: Duration,
    /// How `/user/onlinestatus` answers.
    pub online_status_format: OnlineStatusFormat,
    /// This node's id (`/varz`, `/connz`).
    pub node_id: u64,
    /// When the server started, milliseconds since the epoch.
    pub started_at_ms: i64,
    /// The OpenIM dialect's settings; `None` when it is off.
    pub openim: Option<openim::OpenImSettings>,
    /// The Easemob dialect (its apps and rate-limit counters); `None` when it is off.
    pub easemob: Option<Arc<easemob::Easemob>>,
    /// Requests per client address to the endpoints that trade a secret for a token.
    pub token_limit: Arc<ratelimit::PerAddress>,
}

/// `/health`: 200 `{"status":"ok"}` while storage can be trusted and reached; 503 with
/// the reason once it has failed (`unhealthy`, fail-stop) or while it cannot be reached
/// (`unavailable`, a database that is down; ok again when it is back), so a load
/// balancer takes the node out at once.
pub fn health_response(core: &hongyan_core::Core) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let health = core.health();
    let (status, problem) = match (health.failure(), health.unreachable()) {
        (Some(failure), _) => ("unhealthy", failure.clone()),
        (None, Some(outage)) => ("unavailable", outage),
        (None, None) => return axum::Json(serde_json::json!({"status": "ok"})).into_response(),
    };
    let body = serde_json::json!({"status": status, "reason": problem.reason, "since_ms": problem.at_ms});
    (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Routes that still answer after a storage failure: they report it.
const REPORTING_ROUTES: [&str; 3] = ["/health", "/varz", "/metrics"];

/// A layer for every HTTP listener: once storage has failed, every request but the
/// reports above is refused with 503 and the reason, before any handler runs. The node
/// is stopping (fail-stop); nothing is accepted that could not be kept.
pub async fn fail_stop(
    axum::extract::State(core): axum::extract::State<Arc<hongyan_core::Core>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let Some(failure) = core.health().failure() else { return next.run(request).await };
    if REPORTING_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let msg = format!("storage failed ({}); this node refuses work until it is restarted", failure.reason);
    let body = serde_json::json!({"msg": msg, "status": 503});
    (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Whether `headers` carry `token` as the manager token: the `token` header (WuKongIM's)
/// or `Authorization: Bearer` (what Prometheus scrapers send), compared in constant time.
pub fn presents_token(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let presented = header("token").or_else(|| header("authorization").and_then(|v| v.strip_prefix("Bearer ")));
    presented.is_some_and(|p| hongyan_core::eq_constant_time(p, token))
}

/// A layer for every HTTP listener: a request with a body must say it is JSON
/// (`application/json`, or a `+json` type). Browsers send cross-site form posts
/// (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`) without
/// asking first; requiring JSON means a web page cannot drive an API on loopback.
pub async fn require_json(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let headers = request.headers();
    let has_body = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map_or(headers.contains_key(axum::http::header::TRANSFER_ENCODING), |len| len.trim() != "0");
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let is_json = content_type.is_some_and(|t| {
        let essence = t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
    });
    if (has_body || content_type.is_some()) && !is_json {
        let body = serde_json::json!({"msg": "content-type: must be application/json", "status": 415});
        return (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, axum::Json(body)).into_response();
    }
    next.run(request).await
}

/// What every handler can reach: one `Arc`, since the router clones the state for
/// every request (five reference counts touched per request showed in the S5 profile).
#[derive(Clone, Debug)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// The state of these parts.
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct AppParts {
    /// The messaging core (its tables, the message log, sending).
    pub core: Arc<hongyan_core::Core>,
    /// Who is online on this node.
    pub registry: Arc<Registry>,
    /// The nodes: this one alone, or the cluster's members (`/route`, `/cluster/nodes`).
    pub topology: Arc<dyn hongyan_core::cluster::Topology>,
    /// Settings.
    pub settings: Arc<ApiSettings>,
    /// The webhooks, when `webhook.url` is set (`/webhook/status`, `/webhook/retry`).
    pub webhooks: Option<Arc<webhook::Webhooks>>,
}

/// A blocking task that panicked; each dialect reports it as its own server error.
#[derive(Debug)]
pub(crate) struct TaskFailed(pub(crate) String);

impl From<TaskFailed> for ApiError {
    fn from(e: TaskFailed) -> Self {
        Self::Internal(e.0)
    }
}

impl AppState {
    /// Runs a blocking call on the core (storage reads and writes) off the async
    /// worker threads, with the caller's error type.
    pub(crate) async fn on_core<T, E>(
        &self,
        f: impl FnOnce(&hongyan_core::Core) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<TaskFailed> + Send + 'static,
    {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || f(&core))
            .await
            .map_err(|e| E::from(TaskFailed(format!("blocking task failed: {e}"))))?
    }
}
