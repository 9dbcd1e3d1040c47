//! The Hongyan server: configuration, wiring and lifecycle. The logic lives in the
//! library crates; this crate puts them together.

#![warn(missing_docs)]

pub mod config;
mod console;
mod demo;
mod http;
mod tasks;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use hongyan_api::{ApiSettings, AppParts, AppState};
use hongyan_cluster::{ClusterSettings, Membership};
use hongyan_core::cluster::{NodeAddrs, SingleNode, Topology};
use hongyan_core::session::Registry;
use hongyan_core::{Core, CoreSettings, Sessions};
use hongyan_gateway::Gateway;
use hongyan_store::{Durability, FjallBackend, KvBackend, MessageLog, Store};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use config::Config;
use tasks::{spawn_retention, spawn_system_account_refresh, spawn_temp_channel_expiry};

/// The process-wide Prometheus recorder. Installed once; later servers in the same
/// process (tests) share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// The HTTP API's bound address.
    pub api_addr: SocketAddr,
    /// The manager's bound address (`/metrics`).
    pub manager_addr: SocketAddr,
    /// The OpenIM dialect's own listener, when enabled with an address.
    pub openim_addr: Option<SocketAddr>,
    /// The Easemob dialect's own listener, when configured.
    pub easemob_addr: Option<SocketAddr>,
    /// The demo chat's bound address, when it is on.
    pub demo_addr: Option<SocketAddr>,
    /// The client gateway and its bound addresses.
    pub gateway: Gateway,
    /// Who is online.
    pub registry: Arc<Registry>,
    /// The message log.
    pub log: Arc<MessageLog>,
    /// The messaging core.
    pub core: Arc<Core>,
    /// The webhooks, when `webhook.url` is set.
    pub webhooks: Option<Arc<hongyan_api::webhook::Webhooks>>,
    /// This node's cluster membership, when `cluster.nats_url` is set.
    pub membership: Option<Membership>,
    shutdown: CancellationToken,
    http: TaskTracker,
    fail_stop_grace: Duration,
}

/// The process exit status after a fail-stop (EX_SOFTWARE): a supervisor should
/// restart the node.
pub const FAIL_STOP_EXIT_CODE: i32 = 70;

/// This node's addresses as clients and the app server reach it: `[external]`, or
/// derived from the bound listeners.
fn node_addrs(config: &Config, gateway: &Gateway, api: SocketAddr) -> NodeAddrs {
    let shown = |configured: &str, bound: Option<SocketAddr>, scheme: &str| {
        if !configured.is_empty() {
            return configured.to_owned();
        }
        bound.map_or_else(String::new, |a| {
            // A wildcard listen address is no address to give a client.
            let host = if a.ip().is_unspecified() { "127.0.0.1".to_owned() } else { a.ip().to_string() };
            format!("{scheme}{host}:{}", a.port())
        })
    };
    let e = &config.external;
    let tcp = shown(&e.tcp_addr, gateway.tcp_addr, "");
    NodeAddrs {
        intranet_tcp_addr: if e.intranet_tcp_addr.is_empty() { tcp.clone() } else { e.intranet_tcp_addr.clone() },
        tcp_addr: tcp,
        ws_addr: shown(&e.ws_addr, gateway.ws_addr, "ws://"),
        wss_addr: shown(&e.wss_addr, gateway.wss_addr, "wss://"),
        api_addr: shown(&e.api_addr, Some(api), "http://"),
    }
}

/// Joins the cluster when `cluster.nats_url` is set: claims this node's id (refused
/// while another live process holds it) before anything listens.
async fn join_cluster(
    config: &Config,
    registry: &Arc<Registry>,
    backend: &Arc<dyn KvBackend>,
) -> anyhow::Result<Option<Membership>> {
    if !config.clustered() {
        return Ok(None);
    }
    let settings = ClusterSettings {
        node_id: config.node_id,
        postgres: config.storage.postgres(),
        nats_url: config.cluster.nats_url.clone(),
        lease: Duration::from_millis(config.cluster.lease_ms),
    };
    let counted = registry.clone();
    let health = backend.health().clone();
    let membership = Membership::join(
        &settings,
        Box::new(move || counted.len() as u64),
        // Another process holds this node's id now: stop as after a storage failure.
        Box::new(move |reason| {
            health.fail(reason);
        }),
    )
    .await
    .context("cannot start")?;
    Ok(Some(membership))
}

/// Opens the store (`storage.backend`), binds every listener and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    config.validate()?;
    let backend: Arc<dyn KvBackend> = match config.storage.backend {
        config::StorageBackend::Fjall => Arc::new(
            FjallBackend::open(&config.data_dir)
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
        ),
        config::StorageBackend::Postgres => {
            let postgres = config.storage.postgres();
            // Connecting blocks (the backend waits for its own runtime).
            let backend =
                tokio::task::spawn_blocking(move || hongyan_store_postgres::PostgresBackend::connect(&postgres))
                    .await
                    .context("connecting to PostgreSQL")??;
            info!(schema = backend.schema(), "storage: PostgreSQL");
            Arc::new(backend)
        }
    };
    start_on(config, backend).await
}

/// Like [`start`], over a storage backend the caller opened (`config.data_dir` is not
/// used for storage then).
pub async fn start_on(config: Config, backend: Arc<dyn KvBackend>) -> anyhow::Result<Server> {
    // Before anything listens: among other things, no API beyond loopback without a token.
    config.validate()?;
    for ignored in config.ignored_settings() {
        warn!("{ignored}");
    }
    let metrics = metrics_handle();
    let store = Store::new(backend.clone());
    // Stored messages reach the webhooks through the log's journal, which costs a row
    // per message: only when a message event is wanted.
    let webhooks_on = !config.webhook.url.is_empty();
    let journal_wanted = webhooks_on
        && (config.webhook.sends(hongyan_api::webhook::MSG_NOTIFY)
            || config.webhook.sends(hongyan_api::webhook::MSG_OFFLINE));
    let feed = hongyan_api::webhook::JournalFeed::new();
    let (log, backlog) = if journal_wanted {
        MessageLog::open_journaled(backend.clone(), config.storage.durability(), feed.sink())
    } else {
        MessageLog::open(backend.clone(), config.storage.durability()).map(|log| (log, Vec::new()))
    }
    .context("starting the message log")?;
    let log = Arc::new(log);
    if matches!(config.storage.durability(), Durability::Interval(_)) {
        warn!("storage.durability is interval: a power loss can lose recently acknowledged messages");
    }
    let registry = Arc::new(Registry::with_held_budget(config.gateway.held_budget()));
    let membership = Box::pin(join_cluster(&config, &registry, &backend)).await?;
    let shutdown = CancellationToken::new();

    let core = Core::start(
        store.clone(),
        log.clone(),
        registry.clone(),
        CoreSettings {
            token_auth: config.auth.token_auth,
            person_whitelist: config.auth.person_whitelist,
            manager_uid: config.manager_uid.clone(),
            manager_token: config.manager_token.clone(),
            system_uid: config.system_uid.clone(),
            node_id: config.node_id,
            retry: hongyan_core::retry::RetrySettings {
                interval: Duration::from_millis(config.delivery.retry_interval_ms),
                max_retries: config.delivery.retry_max,
                max_per_connection: config.delivery.retry_max_per_connection,
            },
            pipeline_bytes: config.delivery.pipeline_bytes,
            kick_close_delay: Duration::from_millis(config.gateway.kick_close_delay_ms),
        },
    )
    .context("loading system accounts")?;
    if !config.datasource.url.is_empty() {
        let source = hongyan_api::datasource::HttpDatasource::new(
            config.datasource.url.clone(),
            Duration::from_secs(config.datasource.cache_ttl_secs),
            Duration::from_millis(config.datasource.timeout_ms),
            config.datasource.secret.clone(),
        )?;
        core.set_datasource(Arc::new(source));
        spawn_system_account_refresh(&core, Duration::from_secs(config.datasource.cache_ttl_secs.max(1)), &shutdown);
    }
    if let Some(membership) = &membership {
        // Sends to channels other nodes own go to them; changes to cached state are
        // told to them.
        let forwarding = hongyan_cluster::forward::Forwarding::start(
            membership.bus().clone(),
            config.node_id,
            core.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start: cluster forwarding: {e}"))?;
        let forwarding = Arc::new(forwarding);
        core.join_cluster(Arc::new(membership.clone()), forwarding.clone(), forwarding);
        // Messages go once to each node where a recipient is connected.
        let bus = membership.bus().clone();
        let boot = membership.boot_id().to_owned();
        let presence =
            hongyan_cluster::presence::PresenceBook::start(bus.clone(), config.node_id, boot, shutdown.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot start: cluster presence: {e}"))?;
        let deliveries =
            hongyan_cluster::deliver::Deliveries::start(bus, config.node_id, core.clone(), shutdown.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cannot start: cluster deliveries: {e}"))?;
        core.join_delivery(Arc::new(presence), Arc::new(deliveries));
        let connections = hongyan_cluster::peers::Connections::start(
            membership.bus().clone(),
            config.node_id,
            core.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start: cluster connection listing: {e}"))?;
        core.join_peers(Arc::new(connections));
        let counted = Arc::downgrade(&core);
        membership.count_owned(Box::new(move || counted.upgrade().map_or(0, |c| c.owned_channels() as u64)));
    }
    let webhooks = if webhooks_on {
        let settings = webhook_settings(&config);
        let webhooks = hongyan_api::webhook::Webhooks::start(settings, core.clone(), backend.clone(), feed, backlog)
            .context("starting the webhooks")?;
        core.set_observer(webhooks.clone());
        Some(webhooks)
    } else {
        None
    };
    if !config.auth.token_auth {
        warn!("auth.token_auth is off: anyone can log in as anyone");
    }
    spawn_retention(&core, &config, &shutdown);
    spawn_temp_channel_expiry(&core, &config, &shutdown);
    let gateway = Gateway::start(
        config.gateway.clone(),
        registry.clone(),
        Arc::new(Sessions(core.clone())),
        config.node_id,
        shutdown.clone(),
    )
    .await?;

    // The API is bound first: its address is part of this node's row.
    let api_addr = config.api_addr()?;
    let mut api_listener =
        Some(TcpListener::bind(api_addr).await.with_context(|| format!("cannot listen on {api_addr} (api.addr)"))?);
    let api_bound = api_listener.as_ref().map(TcpListener::local_addr).transpose()?.unwrap_or(api_addr);
    let manager_addr = config.manager_addr()?;
    let settings = ApiSettings {
        manager_token: config.manager_token.clone(),
        system_uid: config.system_uid.clone(),
        max_body_bytes: config.api.max_body_bytes,
        token_kick_close_delay: Duration::from_secs(10),
        kick_close_delay: Duration::from_millis(config.gateway.kick_close_delay_ms),
        online_status_format: config.api.onlinestatus_format,
        node_id: config.node_id,
        started_at_ms: hongyan_core::now_ms(),
        easemob: (!config.easemob.apps.is_empty()).then(|| {
            let apps = config
                .easemob
                .apps
                .iter()
                .map(|a| hongyan_api::easemob::EasemobApp {
                    org: a.org.clone(),
                    app: a.app.clone(),
                    client_id: a.client_id.clone(),
                    client_secret: a.client_secret.clone(),
                })
                .collect();
            Arc::new(hongyan_api::easemob::Easemob::new(
                apps,
                config.easemob.calls_per_sec,
                config.easemob.token_calls_per_sec,
                hongyan_api::easemob::TokenTtl {
                    default: Duration::from_secs(config.easemob.token_ttl_secs),
                    max: Duration::from_secs(config.easemob.max_token_ttl_secs),
                    allow_unexpiring: config.easemob.allow_unexpiring_tokens,
                },
            ))
        }),
        token_limit: Arc::new(hongyan_api::ratelimit::PerAddress::new(config.api.token_requests_per_sec_per_ip)),
        openim: config.openim.enabled.then(|| hongyan_api::openim::OpenImSettings {
            secret: config.openim.secret.clone(),
            admin_user_ids: config.openim.admin_user_ids.clone(),
            token_ttl: Duration::from_secs(u64::from(config.openim.token_expire_days) * 86_400),
        }),
    };
    let addrs = node_addrs(&config, &gateway, api_bound);
    let topology: Arc<dyn Topology> = match &membership {
        Some(m) => Arc::new(m.clone()),
        None => {
            let counted = registry.clone();
            Arc::new(SingleNode::new(config.node_id, addrs.clone(), Box::new(move || counted.len() as u64)))
        }
    };
    let state = AppState::new(AppParts {
        core: core.clone(),
        registry: registry.clone(),
        topology: topology.clone(),
        settings: Arc::new(settings),
        webhooks: webhooks.clone(),
    });
    // Fail-stop: once storage fails, every listener refuses work with 503 and the reason.
    let fail_stop = axum::middleware::from_fn_with_state(core.clone(), hongyan_api::fail_stop);
    let mut api = hongyan_api::wukong::router(state.clone());
    let mut easemob = None;
    if !config.easemob.apps.is_empty() {
        api = api.nest("/easemob", hongyan_api::easemob::router(state.clone()));
        if !config.easemob.addr.is_empty() {
            let addr: SocketAddr = config.easemob.addr.parse().context("easemob.addr")?;
            let router = hongyan_api::easemob::router(state.clone())
                .layer(fail_stop.clone())
                .layer(axum::middleware::from_fn(hongyan_api::require_json));
            easemob = Some((addr, router));
        }
    }
    let mut openim = None;
    if config.openim.enabled {
        api = api.nest("/openim", hongyan_api::openim::router(state.clone()));
        if !config.openim.addr.is_empty() {
            let addr: SocketAddr = config.openim.addr.parse().context("openim.addr")?;
            let router = hongyan_api::openim::router(state)
                .layer(fail_stop.clone())
                .layer(axum::middleware::from_fn(hongyan_api::require_json));
            openim = Some((addr, router));
        }
    }
    let api = api.layer(fail_stop).layer(axum::middleware::from_fn(hongyan_api::require_json));
    let health_core = core.clone();
    // With a manager token, /metrics needs it too; without one the manager listener is
    // on loopback (Config::validate), open to local scrapers only.
    let metrics_token = (!config.manager_token.is_empty()).then(|| config.manager_token.clone());
    let manager = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let allowed = metrics_token.as_deref().is_none_or(|t| hongyan_api::presents_token(&headers, t));
                std::future::ready(if allowed {
                    axum::response::IntoResponse::into_response(metrics.render())
                } else {
                    axum::response::IntoResponse::into_response(axum::http::StatusCode::UNAUTHORIZED)
                })
            }),
        )
        .route("/health", axum::routing::get(move || std::future::ready(hongyan_api::health_response(&health_core))))
        .merge(console::router(api.clone(), config.manager_token.clone()));

    let http = TaskTracker::new();
    let mut bound = Vec::new();
    let mut listeners_bound = Vec::new();
    let mut listeners = vec![("api.addr", api_addr, api), ("manager.addr", manager_addr, manager)];
    if let Some((addr, router)) = openim {
        listeners.push(("openim.addr", addr, router));
    }
    if let Some((addr, router)) = easemob {
        listeners.push(("easemob.addr", addr, router));
    }
    if let (Some(addr), Some(ws)) = (config.demo_addr()?, gateway.ws_addr) {
        let host = if ws.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { ws.ip() };
        let demo = demo::Demo {
            api: listeners[0].2.clone(),
            core: core.clone(),
            ws_addr: format!("ws://{}", SocketAddr::new(host, ws.port())),
            manager_token: config.manager_token.clone(),
        };
        listeners.push(("demo.addr", addr, demo::router(demo)));
    }
    let limits = http::HttpLimits {
        header_timeout: Duration::from_millis(config.api.header_timeout_ms),
        request_timeout: Duration::from_millis(config.api.request_timeout_ms),
        max_connections: config.api.max_connections,
        max_concurrent_requests: config.api.max_concurrent_requests,
    };
    for (key, addr, router) in listeners {
        let listener = match api_listener.take().filter(|_| key == "api.addr") {
            Some(listener) => listener,
            None => TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({key})"))?,
        };
        let local = listener.local_addr()?;
        debug!(%local, "{key} listening");
        bound.push(local);
        listeners_bound.push((key, local));
        let router = http::bounded(router, limits, config.node_id);
        http.spawn(http::serve(listener, router, limits, key, shutdown.clone()));
    }
    http.close();
    if let Some(membership) = &membership {
        // Routable from now on.
        if let Err(e) = membership.publish(&addrs).await {
            shutdown.cancel();
            membership.leave().await;
            return Err(anyhow::Error::new(e).context("cannot start"));
        }
    }
    let addr_of = |key: &str| listeners_bound.iter().find(|(k, _)| *k == key).map(|(_, a)| *a);
    let (openim_addr, easemob_addr, demo_addr) =
        (addr_of("openim.addr"), addr_of("easemob.addr"), addr_of("demo.addr"));
    Ok(Server {
        api_addr: bound[0],
        manager_addr: bound[1],
        openim_addr,
        easemob_addr,
        demo_addr,
        gateway,
        registry,
        log,
        core,
        webhooks,
        membership,
        shutdown,
        http,
        fail_stop_grace: Duration::from_secs(config.storage.fail_stop_grace_secs),
    })
}

fn webhook_settings(config: &Config) -> hongyan_api::webhook::WebhookSettings {
    use hongyan_api::webhook::{MSG_NOTIFY, MSG_OFFLINE, ONLINE_STATUS};
    let w = &config.webhook;
    hongyan_api::webhook::WebhookSettings {
        url: w.url.clone(),
        online_status: w.sends(ONLINE_STATUS),
        offline: w.sends(MSG_OFFLINE),
        notify: w.sends(MSG_NOTIFY),
        offline_rule: match w.offline_rule {
            config::OfflineRuleConfig::NoMasterOnline => hongyan_core::hooks::OfflineRule::NoMasterOnline,
            config::OfflineRuleConfig::NoDeviceOnline => hongyan_core::hooks::OfflineRule::NoDeviceOnline,
        },
        batch_max: w.batch_max,
        batch_interval: Duration::from_millis(w.batch_interval_ms),
        offline_max_uids: w.offline_max_uids,
        offline_lanes: w.offline_lanes,
        timeout: Duration::from_millis(w.timeout_ms),
        retry_initial: Duration::from_millis(w.retry_initial_ms),
        retry_max: Duration::from_millis(w.retry_max_ms),
        max_age: Duration::from_secs(w.max_age_secs),
        max_queue_bytes: w.max_queue_bytes,
        secret: w.secret.clone(),
        node_id: config.node_id,
        system_uid: config.system_uid.clone(),
    }
}

/// `addr` as a person would type it: a wildcard address shown as localhost.
fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("localhost:{} (all interfaces)", addr.port()) } else { addr.to_string() }
}

impl Server {
    /// Everything a person can open or point a client at, for the start-up banner:
    /// (what, where), in a stable order.
    pub fn addresses(&self) -> Vec<(&'static str, String)> {
        let http = |addr: SocketAddr, path: &str| {
            let shown = reachable(addr);
            match shown.split_once(' ') {
                Some((host, note)) => format!("http://{host}{path} {note}"),
                None => format!("http://{shown}{path}"),
            }
        };
        let mut out = vec![("HTTP API", http(self.api_addr, "")), ("OpenAPI", http(self.api_addr, "/openapi.json"))];
        if let Some(addr) = self.gateway.tcp_addr {
            out.push(("TCP clients", reachable(addr)));
        }
        if let Some(addr) = self.gateway.ws_addr {
            out.push(("WebSocket clients", format!("ws://{}", reachable(addr))));
        }
        if let Some(addr) = self.gateway.wss_addr {
            out.push(("WSS clients", format!("wss://{}", reachable(addr))));
        }
        if let Some(addr) = self.openim_addr {
            out.push(("OpenIM API", http(addr, "")));
        }
        if let Some(addr) = self.easemob_addr {
            out.push(("Easemob API", http(addr, "")));
        }
        if self.membership.is_some() {
            out.push(("Cluster nodes", http(self.api_addr, "/cluster/nodes")));
        }
        if let Some(addr) = self.demo_addr {
            out.push(("Demo chat", http(addr, "/chatdemo")));
        }
        out.push(("Console", http(self.manager_addr, "/web")));
        out.push(("Metrics", http(self.manager_addr, "/metrics")));
        out.push(("Health", http(self.manager_addr, "/health")));
        out
    }

    /// Resolves `storage.fail_stop_grace_secs` after storage has failed, with the
    /// failure: the moment the binary stops the process. Meanwhile the node already
    /// refuses logins, sends and HTTP work and reports itself unhealthy, so clients and
    /// load balancers move on before it exits.
    pub async fn fail_stopped(&self) -> hongyan_store::Failure {
        let failure = self.core.health().wait_failed().await;
        tokio::time::sleep(self.fail_stop_grace).await;
        failure
    }

    /// Asks everything to stop: listeners stop accepting and connections close.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every connection and HTTP server has finished, then lets the log
    /// writer finish what it has queued.
    pub async fn wait(&self) {
        // Out of every route first, while connections drain.
        if let Some(membership) = &self.membership {
            membership.leave().await;
        }
        self.gateway.wait_closed().await;
        self.http.wait().await;
        let log = self.log.clone();
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
        if let Some(webhooks) = self.webhooks.clone() {
            let hooks = webhooks.clone();
            let _ = tokio::task::spawn_blocking(move || hooks.stop()).await;
            webhooks.wait().await;
        }
    }
}
