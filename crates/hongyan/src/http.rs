//! How every HTTP listener serves: bounded connections, a deadline for a request's
//! headers and for the whole request, a bounded number of requests handled at once, a
//! request id on every request and in its log lines, and graceful shutdown.
//!
//! axum's `serve` has no header timeout, so a client that sends its headers one byte a
//! minute (slowloris) would hold a connection for ever; this loop uses hyper's own
//! connection builder, which has one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{Instrument as _, debug, warn};

/// The bounds every HTTP listener serves within (`[api]` settings).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpLimits {
    /// Time a client has to send a request's headers.
    pub(crate) header_timeout: Duration,
    /// Time for a whole request: reading its body and answering it.
    pub(crate) request_timeout: Duration,
    /// Open connections; more are closed at accept.
    pub(crate) max_connections: usize,
    /// Requests handled at once; more wait their turn.
    pub(crate) max_concurrent_requests: usize,
}

/// The request id header, set on every request that lacks one and echoed in the answer.
const REQUEST_ID: &str = "x-request-id";

/// Adds the bounds that apply per request: the whole-request deadline, the limit on
/// requests handled at once, and the request id (with a span that carries it, so every
/// log line a handler writes names its request).
pub(crate) fn bounded(router: Router, limits: HttpLimits, node_id: u64) -> Router {
    let permits = Arc::new(Semaphore::new(limits.max_concurrent_requests));
    let next_id = Arc::new(AtomicU64::new(1));
    router
        .layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let permits = permits.clone();
            async move {
                // Requests queue here rather than all run at once; the queue is bounded
                // by the connection limit (one request at a time per HTTP/1 connection,
                // a few streams per HTTP/2 one).
                let Ok(_permit) = permits.acquire_owned().await else {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                };
                next.run(req).await
            }
        }))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
        .layer(axum::middleware::from_fn(move |mut req: Request, next: Next| {
            let id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 64)
                .map_or_else(|| format!("{node_id}-{}", next_id.fetch_add(1, Ordering::Relaxed)), str::to_owned);
            let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
            req.headers_mut().insert(REQUEST_ID, value.clone());
            let span = tracing::info_span!("http", request_id = %id, method = %req.method(), path = %req.uri().path());
            async move {
                let mut response = next.run(req).await;
                debug!(status = response.status().as_u16(), "answered");
                response.headers_mut().insert(REQUEST_ID, value);
                response
            }
            .instrument(span)
        }))
}

/// Serves `router` on `listener` until `stop`, then lets requests in flight finish
/// (for at most 10 s).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    key: &'static str,
    stop: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(16);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(error = %e, "{key}: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("hongyan_http_connections_refused_total", "listener" => key).increment(1);
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        // Handlers that limit per client address read it from the request; recording it
        // wraps the shared router, it does not rebuild it per connection.
        let router = router.clone();
        let service = TowerToHyperService::new(tower::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        }));
        let connection =
            graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        warn!("{key}: HTTP requests still running 10 s after shutdown; leaving them");
    }
}
