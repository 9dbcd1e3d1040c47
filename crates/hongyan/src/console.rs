//! The operators' console (`/web` on the manager listener): a page built from
//! `web/console/` and embedded here. It reads `/metrics` beside it and does everything
//! else through `/web/api/<path>`, which hands the request — method, query, body and
//! the `token` header as the page sent them — to the HTTP API's own router in process:
//! the console can do exactly what an app server holding the manager token can, no
//! more, and the API checks the token as for any caller.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use serde_json::json;
use tower::ServiceExt as _;

const INDEX: &str = include_str!("../web/console/index.html");
const STYLE: &str = include_str!("../web/console/style.css");
const SCRIPT: &str = include_str!("../web/console/app.js");
const CHART_STYLE: &str = include_str!("../web/console/app.css");

/// The console's routes, for the manager listener. `api` is the HTTP API's router;
/// `manager_token` the token the page must present when one is set.
pub(crate) fn router(api: Router, manager_token: String) -> Router {
    Router::new()
        .route("/web", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/web/", get(|| async { Redirect::to("/web") }))
        .route("/web/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/web/app.css", get(|| async { asset("text/css; charset=utf-8", CHART_STYLE) }))
        .route("/web/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route(
            "/web/session",
            get(move |headers: HeaderMap| {
                let required = !manager_token.is_empty();
                let signed_in = !required || hongyan_api::presents_token(&headers, &manager_token);
                std::future::ready(axum::Json(json!({"signed_in": signed_in, "token_required": required})))
            }),
        )
        .route(
            "/web/api/{*path}",
            any(move |Path(path): Path<String>, request: Request| pass_on(api.clone(), path, request)),
        )
}

/// A static asset, revalidated on every load (the binary may have been replaced).
pub(crate) fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Calls the API's router in process.
pub(crate) async fn in_process(api: Router, request: axum::http::Request<Body>) -> Response {
    match api.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// `/web/api/<path>?<query>` → `/<path>?<query>` on the API, same method, headers and body.
async fn pass_on(api: Router, path: String, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let Ok(uri) = format!("/{path}{query}").parse() else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"status": 400, "msg": "not a valid path"})))
            .into_response();
    };
    parts.uri = uri;
    in_process(api, axum::http::Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_console_loads_its_own_assets_only() {
        for asset in ["/web/app.js", "/web/app.css", "/web/style.css"] {
            assert!(INDEX.contains(asset), "{asset}");
        }
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"), "offline: no external resources");
    }
}
