//! Errors as WuKongIM's API reports them: HTTP 400 `{"msg": …, "status": 400}` for bad
//! input, a bare 401 for a missing or wrong `token` header.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the text names the field.
    #[error("{0}")]
    BadRequest(String),
    /// The `token` header is missing or wrong.
    #[error("unauthorized")]
    Unauthorized,
    /// Storage failed; nothing was acknowledged (HTTP 503).
    #[error("storage failed: {0}")]
    Storage(#[from] hongyan_store::StoreError),
    /// The datasource did not describe a channel the request needs (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// Something that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming what is wrong.
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(msg) => {
                (StatusCode::BAD_REQUEST, Json(json!({"msg": msg, "status": 400}))).into_response()
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED.into_response(),
            Self::Unavailable(msg) | Self::Storage(hongyan_store::StoreError::Datasource(msg)) => {
                tracing::warn!(error = %msg, "the datasource failed while serving a request");
                let body = json!({"msg": format!("datasource: {msg}"), "status": 503});
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
            Self::Storage(hongyan_store::StoreError::TooLong { what }) => {
                (StatusCode::BAD_REQUEST, Json(json!({"msg": format!("{what}: too long"), "status": 400})))
                    .into_response()
            }
            Self::Storage(e) => {
                tracing::error!(error = %e, "storage failed while serving a request");
                let body = json!({"msg": "storage unavailable", "status": 503});
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
            Self::Internal(e) => {
                tracing::error!(error = %e, "internal error while serving a request");
                (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"msg": "internal error", "status": 500})))
                    .into_response()
            }
        }
    }
}
