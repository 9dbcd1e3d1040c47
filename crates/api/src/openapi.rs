//! One OpenAPI 3.1 document for the three dialects on the API listener: WuKongIM at
//! the root, OpenIM under `/openim`, Easemob under `/easemob`.
//!
//! Each dialect lists its endpoints once ([`Endpoint`]); its router and its part of
//! the document are both built from that list, so the document names exactly what is
//! served, with each request's schema (from the serde-facing derives) and each
//! answer's status codes and body shapes. `/openapi.json` builds the document for the
//! running configuration: a dialect that is off is absent, and Easemob's `{org}` and
//! `{app}` list the configured apps.

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::{ApiSettings, AppState};

/// Which dialect an endpoint speaks: how its answers look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"msg", "status"}` errors with real HTTP statuses, a bare 401.
    WuKong,
    /// HTTP 200 with `{"errCode", "errMsg"}` for success and failure alike.
    OpenIm,
    /// Easemob's success envelope and `{"error", "exception", …}` failures.
    Easemob,
    /// Easemob's token endpoint: a bare `{access_token, expires_in, application}`.
    EasemobToken,
}

/// One endpoint: what it is for, what it takes, and its handler.
pub(crate) struct Endpoint {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    summary: &'static str,
    pub(crate) handler: MethodRouter<AppState>,
    dialect: Dialect,
    /// JSON schema of the request body.
    body: Option<fn() -> Value>,
    /// Whether the body may be left out (Easemob's member removal).
    body_optional: bool,
    /// JSON schema (an object) of the query string.
    query: Option<fn() -> Value>,
    /// Whether the dialect's credential is needed.
    secured: bool,
}

/// An endpoint of `dialect` that needs the dialect's credential.
pub(crate) fn endpoint(
    dialect: Dialect,
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    handler: MethodRouter<AppState>,
) -> Endpoint {
    Endpoint { method, path, summary, handler, dialect, body: None, body_optional: false, query: None, secured: true }
}

impl Endpoint {
    pub(crate) fn body(mut self, schema: fn() -> Value) -> Self {
        self.body = Some(schema);
        self
    }

    pub(crate) fn optional_body(mut self, schema: fn() -> Value) -> Self {
        self.body = Some(schema);
        self.body_optional = true;
        self
    }

    pub(crate) fn query(mut self, schema: fn() -> Value) -> Self {
        self.query = Some(schema);
        self
    }

    /// Called without a credential (the endpoints that hand one out).
    pub(crate) fn open(mut self) -> Self {
        self.secured = false;
        self
    }

    /// Whether the dialect's credential is needed.
    pub(crate) fn secured(&self) -> bool {
        self.secured
    }
}

/// The JSON schema of `T`, from its serde-facing derive, with the schemas of the
/// types it names written in place (the document needs no shared components).
pub(crate) fn schema_of<T: utoipa::ToSchema>() -> Value {
    let mut named = Vec::new();
    T::schemas(&mut named);
    let named: Map<String, Value> =
        named.into_iter().map(|(name, schema)| (name, serde_json::to_value(schema).unwrap_or(Value::Null))).collect();
    let mut schema = serde_json::to_value(T::schema()).unwrap_or(Value::Null);
    inline(&mut schema, &named, 0);
    schema
}

/// Replaces `{"$ref": "#/components/schemas/X"}` in `schema` by X from `named`.
fn inline(schema: &mut Value, named: &Map<String, Value>, depth: usize) {
    const MAX_DEPTH: usize = 16;
    match schema {
        Value::Object(fields) => {
            let target =
                fields.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/"));
            if let Some(found) = target.and_then(|name| named.get(name)).filter(|_| depth < MAX_DEPTH) {
                *schema = found.clone();
                inline(schema, named, depth + 1);
                return;
            }
            fields.values_mut().for_each(|v| inline(v, named, depth));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| inline(v, named, depth)),
        _ => {}
    }
}

/// The routes of `endpoints` (several methods of one path merge into one route).
pub(crate) fn routes(endpoints: Vec<Endpoint>) -> Router<AppState> {
    endpoints.into_iter().fold(Router::new(), |router, e| router.route(e.path, e.handler))
}

/// The dialects' error bodies, for `$ref`s from the operations.
fn components() -> Value {
    json!({
        "securitySchemes": {
            "managerToken": {"type": "apiKey", "in": "header", "name": "token",
                "description": "The manager token, when one is configured"},
            "openImToken": {"type": "apiKey", "in": "header", "name": "token",
                "description": "An admin token from /openim/auth/user_token"},
            "easemobToken": {"type": "http", "scheme": "bearer",
                "description": "An app token from /easemob/{org}/{app}/token"}
        },
        "schemas": {
            "WuKongError": {
                "type": "object",
                "required": ["msg", "status"],
                "properties": {"msg": {"type": "string"}, "status": {"type": "integer"}}
            },
            "OpenImAnswer": {
                "type": "object",
                "required": ["errCode", "errMsg"],
                "properties": {"errCode": {"type": "integer"}, "errMsg": {"type": "string"}}
            },
            "EasemobAnswer": {
                "type": "object",
                "required": ["action", "application", "applicationName", "organization", "uri", "path",
                    "timestamp", "duration"],
                "properties": {
                    "action": {"type": "string"}, "application": {"type": "string"},
                    "applicationName": {"type": "string"}, "organization": {"type": "string"},
                    "uri": {"type": "string"}, "path": {"type": "string"},
                    "timestamp": {"type": "integer"}, "duration": {"type": "integer"},
                    "data": {"type": "object"}, "entities": {"type": "array"}, "properties": {"type": "object"}
                }
            },
            "EasemobToken": {
                "type": "object",
                "required": ["access_token", "expires_in", "application"],
                "properties": {
                    "access_token": {"type": "string"}, "expires_in": {"type": "integer"},
                    "application": {"type": "string"}
                }
            },
            "EasemobError": {
                "type": "object",
                "required": ["error", "exception", "timestamp", "duration", "error_description"],
                "properties": {
                    "error": {"type": "string"}, "exception": {"type": "string"},
                    "timestamp": {"type": "integer"}, "duration": {"type": "integer"},
                    "error_description": {"type": "string"}
                }
            },
            "Unavailable": {
                "type": "object",
                "description": "Storage has failed (fail-stop) or the datasource did not answer; the body says why"
            }
        }
    })
}

fn json_answer(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The answers an endpoint of `dialect` can give, with their bodies.
fn responses(dialect: Dialect) -> Value {
    // What the listener itself may answer, whatever the dialect.
    let mut out = json!({
        "408": {"description": "The request took longer than api.request_timeout_ms"},
        "415": json_answer("A body that is not JSON", reference("WuKongError")),
        "503": {"description": "Storage has failed (fail-stop), the datasource did not answer, or the listener is at api.max_concurrent_requests",
            "content": {"application/json": {"schema": reference("Unavailable")}}}
    });
    let own = match dialect {
        Dialect::WuKong => json!({
            "200": json_answer("Success, in WuKongIM's shape (see docs/api.md)", json!({})),
            "400": json_answer("Bad input; `msg` names the field", reference("WuKongError")),
            "401": {"description": "Missing or wrong `token` header (when a manager token is set)"},
            "413": json_answer("The body is larger than api.max_body_bytes", reference("WuKongError")),
            "500": json_answer("A server bug", reference("WuKongError"))
        }),
        Dialect::OpenIm => json!({
            "200": json_answer("Success (errCode 0) or failure (700-range token errors, 801 no access, 802 storage, 803 bad arguments)",
                reference("OpenImAnswer")),
            "413": json_answer("The body is larger than api.max_body_bytes", reference("OpenImAnswer"))
        }),
        Dialect::Easemob | Dialect::EasemobToken => {
            let success = if dialect == Dialect::Easemob { "EasemobAnswer" } else { "EasemobToken" };
            let error = || reference("EasemobError");
            json!({
                "200": json_answer("Success", reference(success)),
                "400": json_answer("Bad input", error()),
                "401": json_answer("Missing, expired or foreign token", error()),
                "403": json_answer("Refused (for example a thread id that exists)", error()),
                "404": json_answer("No such app, thread, group or member", error()),
                "413": json_answer("The body is larger than api.max_body_bytes", error()),
                "429": json_answer("The app's calls per second for this API are spent", error()),
                "500": json_answer("A server bug", error())
            })
        }
    };
    if let (Some(out), Value::Object(own)) = (out.as_object_mut(), own) {
        out.extend(own);
    }
    out
}

/// Where a dialect's routes sit on the API listener.
fn prefix(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::WuKong => "",
        Dialect::OpenIm => "/openim",
        Dialect::Easemob | Dialect::EasemobToken => "/easemob",
    }
}

/// The operation object of one endpoint. `apps` are the configured Easemob
/// (org, app) names, listed as the only values of those path parameters.
fn operation(e: &Endpoint, apps: &[(String, String)]) -> Value {
    let mut operation = json!({"summary": e.summary, "responses": responses(e.dialect)});
    let mut parameters: Vec<Value> = Vec::new();
    for name in e.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
        let values: Vec<&String> = match name {
            "org" => apps.iter().map(|(org, _)| org).collect(),
            "app" => apps.iter().map(|(_, app)| app).collect(),
            _ => Vec::new(),
        };
        let schema =
            if values.is_empty() { json!({"type": "string"}) } else { json!({"type": "string", "enum": values}) };
        parameters.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
    }
    if let Some(query) = e.query {
        let schema = query();
        let required: Vec<&str> =
            schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if let Some(props) = schema["properties"].as_object() {
            for (name, s) in props {
                let required = required.contains(&name.as_str());
                parameters.push(json!({"name": name, "in": "query", "required": required, "schema": s}));
            }
        }
    }
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    if let Some(body) = e.body {
        operation["requestBody"] =
            json!({"required": !e.body_optional, "content": {"application/json": {"schema": body()}}});
    }
    let security = match (e.secured, e.dialect) {
        (false, _) | (_, Dialect::EasemobToken) => json!([]),
        (true, Dialect::WuKong) => json!([{"managerToken": []}]),
        (true, Dialect::OpenIm) => json!([{"openImToken": []}]),
        (true, Dialect::Easemob) => json!([{"easemobToken": []}]),
    };
    operation["security"] = security;
    operation
}

/// The document of every dialect `settings` turns on.
pub fn document(settings: &ApiSettings) -> Value {
    let mut endpoints = crate::wukong::endpoints();
    if settings.openim.is_some() {
        endpoints.extend(crate::openim::endpoints());
    }
    let apps = settings.easemob.as_ref().map(|em| em.names()).unwrap_or_default();
    if !apps.is_empty() {
        endpoints.extend(crate::easemob::endpoints());
    }
    let mut paths = Map::new();
    for e in &endpoints {
        let item = paths.entry(format!("{}{}", prefix(e.dialect), e.path)).or_insert_with(|| json!({}));
        item[e.method] = operation(e, &apps);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Hongyan HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The WuKongIM / LiMaoIM dialect at the root, the OpenIM v2 admin dialect under /openim and the Easemob thread dialect under /easemob (each only when configured). Bodies are described in docs/api.md, docs/openim.md and docs/easemob.md."
        },
        "components": components(),
        "paths": paths,
    })
}

/// A layer for a dialect's router: errors that axum's extractors answer in plain text
/// (a body over the limit, a path that does not decode) are rewritten into the
/// dialect's JSON shape, so every documented error has its documented body.
pub(crate) async fn json_errors(dialect: Dialect, response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    // Rejection texts are short; anything else is left alone.
    let body = match axum::body::to_bytes(response.into_body(), 4096).await {
        Ok(body) => body,
        Err(_) => Bytes::new(),
    };
    if body.is_empty() {
        return Response::builder().status(status).body(Body::empty()).unwrap_or_default();
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let code = status.as_u16();
    match dialect {
        Dialect::WuKong => (status, Json(json!({"msg": text, "status": code}))).into_response(),
        // OpenIM's own errors are HTTP 200; what the listener refuses before any handler
        // keeps its status, with the envelope and 803 (bad arguments).
        Dialect::OpenIm => (status, Json(json!({"errCode": 803, "errMsg": text}))).into_response(),
        Dialect::Easemob | Dialect::EasemobToken => {
            let (error, exception) = match status {
                StatusCode::PAYLOAD_TOO_LARGE => ("request_entity_too_large", "RequestEntityTooLargeException"),
                s if s.is_server_error() => ("internal_error", "InternalException"),
                _ => ("param_illegal", "IllegalArgumentException"),
            };
            let body = json!({"error": error, "exception": exception, "timestamp": hongyan_core::now_ms(),
                "duration": 0, "error_description": text});
            (status, Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_names_its_path_parameters_and_its_answers() {
        let apps = vec![("acme".to_owned(), "chat".to_owned())];
        for e in
            crate::wukong::endpoints().iter().chain(&crate::openim::endpoints()).chain(&crate::easemob::endpoints())
        {
            let op = operation(e, &apps);
            let named: Vec<&str> = op["parameters"]
                .as_array()
                .map(|p| p.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            let in_path = e.path.matches('{').count();
            assert_eq!(named.len(), in_path, "{} {}", e.method, e.path);
            assert!(op["responses"]["200"].is_object(), "{} {}", e.method, e.path);
            if e.method == "post" && e.body.is_none() {
                // Only the calls that take nothing may lack a body schema.
                assert!(
                    ["/health", "/manager/get_all_users_uid"].contains(&e.path),
                    "{} {} has no body schema",
                    e.method,
                    e.path
                );
            }
        }
    }

    #[test]
    fn no_operation_refers_to_a_schema_the_document_lacks() {
        let apps = vec![("acme".to_owned(), "chat".to_owned())];
        let known = components()["schemas"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        for e in
            crate::wukong::endpoints().iter().chain(&crate::openim::endpoints()).chain(&crate::easemob::endpoints())
        {
            let text = operation(e, &apps).to_string();
            for reference in text.split("#/components/schemas/").skip(1) {
                let name: String = reference.chars().take_while(|c| c.is_alphanumeric()).collect();
                assert!(known.contains(&name), "{} {} refers to {name}", e.method, e.path);
            }
        }
    }

    #[test]
    fn easemob_paths_list_the_configured_apps() {
        let e = crate::easemob::endpoints().into_iter().find(|e| e.path == "/{org}/{app}/thread").unwrap();
        let op = operation(&e, &[("acme".into(), "chat".into()), ("beta".into(), "talk".into())]);
        assert_eq!(op["parameters"][0]["schema"]["enum"], json!(["acme", "beta"]));
        assert_eq!(op["parameters"][1]["schema"]["enum"], json!(["chat", "talk"]));
    }

    async fn rewritten(dialect: Dialect, status: StatusCode, text: &'static str) -> (StatusCode, Value) {
        let plain = Response::builder().status(status).body(Body::from(text)).unwrap();
        let answer = json_errors(dialect, plain).await;
        let status = answer.status();
        let body = axum::body::to_bytes(answer.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn plain_text_rejections_become_each_dialects_json_error_with_their_status() {
        let too_large = StatusCode::PAYLOAD_TOO_LARGE;
        let (status, body) = rewritten(Dialect::WuKong, too_large, "length limit exceeded").await;
        assert_eq!((status, body), (too_large, json!({"msg": "length limit exceeded", "status": 413})));
        let (status, body) = rewritten(Dialect::OpenIm, too_large, "length limit exceeded").await;
        assert_eq!((status, body), (too_large, json!({"errCode": 803, "errMsg": "length limit exceeded"})));
        let (status, body) = rewritten(Dialect::Easemob, StatusCode::BAD_REQUEST, "bad path").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            (body["error"].as_str(), body["error_description"].as_str()),
            (Some("param_illegal"), Some("bad path"))
        );
        // JSON answers, successes and empty bodies pass unchanged.
        let json_error = (StatusCode::BAD_REQUEST, Json(json!({"msg": "x", "status": 400}))).into_response();
        let passed = json_errors(Dialect::WuKong, json_error).await;
        assert_eq!(passed.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(passed.into_body(), 1 << 16).await.unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"msg": "x", "status": 400}));
        let (status, body) = rewritten(Dialect::WuKong, StatusCode::UNAUTHORIZED, "").await;
        assert_eq!((status, body), (StatusCode::UNAUTHORIZED, Value::Null));
        let (status, _) = rewritten(Dialect::OpenIm, StatusCode::OK, "fine").await;
        assert_eq!(status, StatusCode::OK);
    }
}
