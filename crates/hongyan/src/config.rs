//! The server's configuration: defaults, then a TOML file, then `HONGYAN_*` environment
//! variables (`HONGYAN_GATEWAY__TCP_ADDR` sets `gateway.tcp_addr`), then flags. Unknown
//! keys and invalid values stop start-up with a message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use hongyan_gateway::{GatewayConfig, parse_listen_addr};
use serde::{Deserialize, Serialize};

/// The whole configuration. `docs/config.md` has one row per key.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id (1–1023): the snowflake node of message ids and CONNACK's node id.
    pub node_id: u64,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// When set, HTTP calls must send it in the `token` header, and the manager uid may
    /// log in over the binary protocol with it.
    pub manager_token: String,
    /// The uid that logs in with the manager token.
    pub manager_uid: String,
    /// The uid HTTP sends use by default; it cannot register a token.
    pub system_uid: String,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Client listeners and connection handling.
    pub gateway: GatewayConfig,
    /// Metrics and operator endpoints.
    pub manager: ManagerConfig,
    /// The demo chat.
    pub demo: DemoConfig,
    /// How logins are checked.
    pub auth: AuthConfig,
    /// What `/route` tells clients.
    pub external: ExternalConfig,
    /// Delivery to devices.
    pub delivery: DeliveryConfig,
    /// How stored messages are made durable.
    pub storage: StorageConfig,
    /// The OpenIM v2 admin dialect.
    pub openim: OpenImConfig,
    /// The Easemob / Agora Chat thread dialect.
    pub easemob: EasemobConfig,
    /// Events to the app server.
    pub webhook: WebhookConfig,
    /// Channels the server has no record of, from the app server.
    pub datasource: DatasourceConfig,
    /// Several nodes on one database (`docs/cluster.md`).
    pub cluster: ClusterConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[demo]`: the demo chat at `http://<addr>/chatdemo` (`crates/hongyan/src/demo.rs`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Listen address. Unset: `127.0.0.1:5172` on a single node with a WebSocket
    /// listener, off otherwise (a cluster member, no `gateway.ws_addr`); empty: off.
    /// Loopback only: the demo gives a token to whoever asks.
    pub addr: Option<String>,
}

/// `[cluster]`: on when `nats_url` is set (storage must be PostgreSQL then).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS server(s) of the cluster, comma-separated `nats://host:port` URLs.
    /// Empty: this node is not in a cluster.
    pub nats_url: String,
    /// A node whose heartbeat is older than this is no longer a member (heartbeats are
    /// written four times per lease).
    pub lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { nats_url: String::new(), lease_ms: 4000 }
    }
}

/// `[webhook]`: on when `url` is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where events are posted (`?event=<name>` is appended). Empty: no webhooks.
    pub url: String,
    /// Which events: `user.onlinestatus`, `msg.offline`, `msg.notify`. Empty: all.
    pub events: Vec<String>,
    /// Who gets `msg.offline`.
    pub offline_rule: OfflineRuleConfig,
    /// Most messages (or presence entries) in one `msg.notify` (`user.onlinestatus`) post.
    pub batch_max: usize,
    /// Longest a batch waits to fill.
    pub batch_interval_ms: u64,
    /// Most uids in one `msg.offline` post (more are split over several posts).
    pub offline_max_uids: usize,
    /// `msg.offline` posts in flight at once (one per channel at a time).
    pub offline_lanes: u8,
    /// One post's time limit.
    pub timeout_ms: u64,
    /// First retry delay (doubled per failure up to `retry_max_ms`).
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Events still failing after this long are dropped (counted and logged).
    pub max_age_secs: u64,
    /// Most bytes of events waiting in the durable queue; past it new events are
    /// dropped (counted, logged once a minute) until the receiver catches up.
    pub max_queue_bytes: u64,
    /// Signs each post: `X-Hongyan-Signature: v1=<HMAC-SHA256 of "ts.event.id.body">`.
    pub secret: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: Vec::new(),
            offline_rule: OfflineRuleConfig::NoMasterOnline,
            batch_max: 100,
            batch_interval_ms: 500,
            offline_max_uids: 1000,
            offline_lanes: 4,
            timeout_ms: 5_000,
            retry_initial_ms: 500,
            retry_max_ms: 60_000,
            max_age_secs: 86_400,
            max_queue_bytes: 256 * 1024 * 1024,
            secret: String::new(),
        }
    }
}

/// `webhook.offline_rule`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OfflineRuleConfig {
    /// No master device online (WuKongIM's rule).
    NoMasterOnline,
    /// No device online at all.
    NoDeviceOnline,
}

/// The events WuKongIM's receivers know.
pub const WEBHOOK_EVENTS: [&str; 3] = ["user.onlinestatus", "msg.offline", "msg.notify"];

impl WebhookConfig {
    /// Whether `event` is to be sent.
    pub fn sends(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// `[datasource]`: on when `url` is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DatasourceConfig {
    /// Where `{"cmd": ..., "data": ...}` requests go. Empty: no datasource.
    pub url: String,
    /// How long an answer is used before asking again.
    pub cache_ttl_secs: u64,
    /// One request's time limit.
    pub timeout_ms: u64,
    /// Signs requests as webhook posts are signed (`X-Hongyan-Signature`); empty: none.
    pub secret: String,
}

impl Default for DatasourceConfig {
    fn default() -> Self {
        Self { url: String::new(), cache_ttl_secs: 60, timeout_ms: 3_000, secret: String::new() }
    }
}

/// Shortest secret that signs tokens (OpenIM's secret, Easemob client secrets).
const MIN_SECRET_LEN: usize = 16;

/// `[easemob]`: on when at least one app is configured.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EasemobConfig {
    /// Its own listener at Easemob's paths (`/{org}/{app}/…`). Empty: none.
    pub addr: String,
    /// The apps, each with its client credentials.
    pub apps: Vec<EasemobAppConfig>,
    /// Calls per second per app and API (429 beyond).
    pub calls_per_sec: u32,
    /// Calls per second per app to the token endpoint.
    pub token_calls_per_sec: u32,
    /// Lifetime of a token when the request gives no `ttl`.
    pub token_ttl_secs: u64,
    /// The longest lifetime a token request may ask for; longer asks get this.
    pub max_token_ttl_secs: u64,
    /// Honour `ttl: 0` (a token that never expires). Off: it gets the maximum.
    pub allow_unexpiring_tokens: bool,
}

impl Default for EasemobConfig {
    fn default() -> Self {
        Self {
            addr: String::new(),
            apps: Vec::new(),
            calls_per_sec: 100,
            token_calls_per_sec: 300,
            token_ttl_secs: 604_800,
            max_token_ttl_secs: 2_592_000,
            allow_unexpiring_tokens: false,
        }
    }
}

/// One `[[easemob.apps]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EasemobAppConfig {
    /// Organisation name in paths.
    pub org: String,
    /// App name in paths.
    pub app: String,
    /// Client id of the token endpoint.
    pub client_id: String,
    /// Client secret of the token endpoint; also signs the app's tokens.
    pub client_secret: String,
}

/// `[openim]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OpenImConfig {
    /// Serve the dialect (under `/openim` on the API port, and on `addr`).
    pub enabled: bool,
    /// The dialect's own listener, at the seed's paths. Empty: none.
    pub addr: String,
    /// What `auth/user_token` must be given, and the token signing key. Required when
    /// enabled; there is no default that works.
    pub secret: String,
    /// The uids that may get an admin token.
    pub admin_user_ids: Vec<String>,
    /// How long an admin token is valid.
    pub token_expire_days: u32,
}

impl Default for OpenImConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            addr: "0.0.0.0:10000".into(),
            secret: String::new(),
            admin_user_ids: Vec::new(),
            token_expire_days: 7,
        }
    }
}

/// `[api]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address. Empty: `127.0.0.1:5001` without a manager token (so an
    /// unauthenticated API is not exposed), `0.0.0.0:5001` with one.
    pub addr: String,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// `/user/onlinestatus` answers: `uids` (LiMaoIM: the uids online) or `devices`
    /// (WuKongIM v2: one entry per online connection).
    pub onlinestatus_format: hongyan_api::OnlineStatusFormat,
    /// Time a client has to send a request's headers (on every HTTP listener).
    pub header_timeout_ms: u64,
    /// Time for a whole request, body and answer; longer gets 408.
    pub request_timeout_ms: u64,
    /// Open HTTP connections per listener; more are closed at accept.
    pub max_connections: usize,
    /// Requests handled at once per listener; more wait their turn.
    pub max_concurrent_requests: usize,
    /// Requests per second from one address to the endpoints that trade a secret for a
    /// token (OpenIM `auth/user_token`, Easemob `token`); bursts of twice that.
    pub token_requests_per_sec_per_ip: u32,
}

/// `[manager]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Listen address of `/metrics`. Empty: `127.0.0.1:5300` without a manager token,
    /// `0.0.0.0:5300` with one.
    pub addr: String,
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Check CONNECT tokens against `/user/token` registrations. Turn off only for
    /// local demos: anyone can then log in as anyone.
    pub token_auth: bool,
    /// Person chats follow the receiver's whitelist: when it is not empty, only the
    /// uids on it (e.g. OpenIM friends) may message them (SENDACK 13). WuKongIM's
    /// `whitelistOffOfPerson: false`; off by default, as there.
    pub person_whitelist: bool,
}

/// `[external]`: addresses as clients reach them (behind NAT or a proxy they differ
/// from the listen addresses). Empty values are derived from the listeners.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalConfig {
    /// `host:port` for TCP.
    pub tcp_addr: String,
    /// `ws://host:port`.
    pub ws_addr: String,
    /// `wss://host:port`.
    pub wss_addr: String,
    /// TCP address for `/route?intranet=1`.
    pub intranet_tcp_addr: String,
    /// The HTTP API as the app server and the other nodes reach it (`/cluster/nodes`).
    pub api_addr: String,
}

/// `[delivery]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// A stored message written to a connection and not acknowledged within this time
    /// is written again, byte for byte.
    pub retry_interval_ms: u64,
    /// Retries before giving up (the client catches up through sync).
    pub retry_max: u32,
    /// Most unacknowledged messages remembered per connection.
    pub retry_max_per_connection: usize,
    /// Bytes of messages admitted and not yet delivered (each counts 1 KiB more than
    /// its payload); past it senders wait instead of memory growing.
    pub pipeline_bytes: usize,
    /// Temporary channels of sends to a list of uids are removed this long after the
    /// send (checked every `storage.retention_sweep_interval_secs`).
    pub temp_channel_ttl_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_interval_ms: 60_000,
            retry_max: 5,
            retry_max_per_connection: 1024,
            pipeline_bytes: 64 * 1024 * 1024,
            temp_channel_ttl_secs: 604_800,
        }
    }
}

/// `[storage]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where everything is stored: `fjall` (embedded, in `data_dir`; the default) or
    /// `postgres` (the database at `postgres_url`).
    pub backend: StorageBackend,
    /// libpq-style URL of the database (`postgres://user:password@host:5432/db`), for
    /// `backend = "postgres"`.
    pub postgres_url: String,
    /// The schema Hongyan's tables live in (created if missing).
    pub postgres_schema: String,
    /// Most database connections open at once.
    pub postgres_pool_size: usize,
    /// Longest a statement may run, and longest a call waits for a free connection.
    pub postgres_statement_timeout_ms: u64,
    /// Longest opening a connection may take.
    pub postgres_connect_timeout_ms: u64,
    /// `fsync`: a message is acknowledged only after an fsync (one per batch), so it
    /// survives a power loss. `interval`: acknowledged once written, surviving a crash
    /// of the process; fsync at most every `sync_interval_ms`, so a power loss can lose
    /// that long's messages. Trades durability for latency.
    pub durability: DurabilityMode,
    /// How often `interval` mode fsyncs.
    pub sync_interval_ms: u64,
    /// Retention by age: channel type ("1" person, "2" group, …) → days messages are
    /// kept. Types not listed keep messages forever.
    pub retention_days: std::collections::BTreeMap<String, u32>,
    /// How often the retention sweep runs.
    pub retention_sweep_interval_secs: u64,
    /// Fail-stop: after a storage failure the node refuses work at once, and the
    /// process exits (status 70) this many seconds later so that a supervisor restarts
    /// it; 0 exits at once.
    pub fail_stop_grace_secs: u64,
}

/// `storage.backend`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded, in `data_dir`.
    #[default]
    Fjall,
    /// A PostgreSQL database (`storage.postgres_url`).
    Postgres,
}

/// `storage.durability`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// fsync before every acknowledgement.
    Fsync,
    /// fsync on a timer.
    Interval,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Fjall,
            postgres_url: String::new(),
            postgres_schema: "hongyan".into(),
            postgres_pool_size: 16,
            postgres_statement_timeout_ms: 5_000,
            postgres_connect_timeout_ms: 5_000,
            durability: DurabilityMode::Fsync,
            sync_interval_ms: 100,
            retention_days: std::collections::BTreeMap::new(),
            retention_sweep_interval_secs: 3600,
            fail_stop_grace_secs: 10,
        }
    }
}

impl StorageConfig {
    /// Retention as (channel type, maximum age), checked by [`Config::validate`].
    pub fn retention(&self) -> Vec<(u8, std::time::Duration)> {
        self.retention_days
            .iter()
            .filter_map(|(ty, days)| {
                let ty = ty.parse::<u8>().ok()?;
                Some((ty, std::time::Duration::from_secs(u64::from(*days) * 86_400)))
            })
            .collect()
    }

    /// How to reach PostgreSQL, for `backend = "postgres"`.
    pub fn postgres(&self) -> hongyan_store_postgres::PostgresConfig {
        hongyan_store_postgres::PostgresConfig {
            url: self.postgres_url.clone(),
            schema: self.postgres_schema.clone(),
            pool_size: self.postgres_pool_size,
            statement_timeout: std::time::Duration::from_millis(self.postgres_statement_timeout_ms),
            connect_timeout: std::time::Duration::from_millis(self.postgres_connect_timeout_ms),
        }
    }

    /// The message log's durability.
    pub fn durability(&self) -> hongyan_store::Durability {
        match self.durability {
            DurabilityMode::Fsync => hongyan_store::Durability::Fsync,
            DurabilityMode::Interval => {
                hongyan_store::Durability::Interval(std::time::Duration::from_millis(self.sync_interval_ms))
            }
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `hongyan_gateway=debug,info`. `RUST_LOG` wins.
    /// The default keeps Hongyan's own news at `info` and dependencies at `warn`.
    pub filter: String,
    /// `text` (for people) or `json` (one object per line, for log collectors).
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, and a start-up banner with every address.
    #[default]
    Text,
    /// One JSON object per line; the banner is a log record too.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1001,
            data_dir: PathBuf::from("./data"),
            manager_token: String::new(),
            manager_uid: "____manager".into(),
            system_uid: "____system".into(),
            api: ApiConfig::default(),
            gateway: GatewayConfig::default(),
            manager: ManagerConfig::default(),
            demo: DemoConfig::default(),
            auth: AuthConfig::default(),
            external: ExternalConfig::default(),
            delivery: DeliveryConfig::default(),
            storage: StorageConfig::default(),
            openim: OpenImConfig::default(),
            easemob: EasemobConfig::default(),
            webhook: WebhookConfig::default(),
            datasource: DatasourceConfig::default(),
            cluster: ClusterConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            addr: String::new(),
            max_body_bytes: 1024 * 1024,
            onlinestatus_format: hongyan_api::OnlineStatusFormat::Uids,
            header_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 4_096,
            max_concurrent_requests: 256,
            token_requests_per_sec_per_ip: 5,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { token_auth: true, person_whitelist: false }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "warn,hongyan=info".into(), format: LogFormat::Text }
    }
}

/// Values given as command-line flags; `None` leaves the lower layers alone.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--node-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// `--manager-token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_token: Option<String>,
    /// `--http-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    /// `--tcp-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_addr: Option<String>,
    /// `--ws-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_addr: Option<String>,
    /// `--wss-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wss_addr: Option<String>,
    /// `--manager-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_addr: Option<String>,
    /// `--demo-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo_addr: Option<String>,
}

impl Overrides {
    /// The flags as a partial configuration tree.
    fn into_figment(self) -> Figment {
        let mut f = Figment::new();
        let mut set = |key: &str, value: Option<figment::value::Value>| {
            if let Some(v) = value {
                f = std::mem::take(&mut f).merge(Serialized::default(key, v));
            }
        };
        set("data_dir", self.data_dir.map(|p| p.display().to_string().into()));
        set("node_id", self.node_id.map(Into::into));
        set("manager_token", self.manager_token.map(Into::into));
        set("api.addr", self.http_addr.map(Into::into));
        set("gateway.tcp_addr", self.tcp_addr.map(Into::into));
        set("gateway.ws_addr", self.ws_addr.map(Into::into));
        set("gateway.wss_addr", self.wss_addr.map(Into::into));
        set("manager.addr", self.manager_addr.map(Into::into));
        set("demo.addr", self.demo_addr.map(Into::into));
        f
    }
}

/// Why the configuration was refused. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown or a value has the wrong type.
    #[error("configuration: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("configuration: {key}: {problem}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

fn parse_error(e: figment::Error) -> ConfigError {
    ConfigError::Parse(e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
}

impl Config {
    /// Loads defaults ← `file` ← environment (`HONGYAN_*`) ← `flags`, then validates.
    pub fn load(file: Option<&Path>, env: Env, flags: Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Parse(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Self = figment.merge(env).merge(flags.into_figment()).extract().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    /// The environment provider for `HONGYAN_<SECTION>__<KEY>` variables.
    pub fn env() -> Env {
        Env::prefixed("HONGYAN_").split("__")
    }

    /// Parses TOML text alone (no environment, no flags), for examples and tests.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = Figment::new().merge(Toml::string(text)).extract().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Settings that are set but do nothing, for start-up warnings.
    pub fn ignored_settings(&self) -> Vec<String> {
        let mut ignored = Vec::new();
        let default = OpenImConfig::default();
        if !self.openim.enabled {
            let set = [
                ("openim.secret", self.openim.secret != default.secret),
                ("openim.admin_user_ids", self.openim.admin_user_ids != default.admin_user_ids),
                ("openim.addr", self.openim.addr != default.addr),
                ("openim.token_expire_days", self.openim.token_expire_days != default.token_expire_days),
            ];
            ignored.extend(
                set.iter()
                    .filter(|(_, changed)| *changed)
                    .map(|(key, _)| format!("{key} is set but openim.enabled is false: the OpenIM dialect is off")),
            );
        }
        ignored
    }

    /// Whether this node is a cluster member (`cluster.nats_url` set).
    pub fn clustered(&self) -> bool {
        !self.cluster.nats_url.is_empty()
    }

    /// Checks ranges and combinations the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| ConfigError::Invalid { key: key.into(), problem: problem.into() };
        if !(1..=1023).contains(&self.node_id) {
            return Err(invalid("node_id", "must be between 1 and 1023"));
        }
        if self.manager_token.is_empty() {
            // An API others can reach, with no token, is a server anyone controls.
            for (key, addr) in [("api.addr", self.api_addr()?), ("manager.addr", self.manager_addr()?)] {
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        key,
                        "listens beyond this machine, but no manager_token is set (anyone who could reach it would \
                         control the server): set manager_token, or listen on 127.0.0.1",
                    ));
                }
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        self.gateway
            .validate()
            .map_err(|e| ConfigError::Invalid { key: format!("gateway.{}", e.key), problem: e.problem })?;
        self.api_addr()?;
        self.manager_addr()?;
        self.demo_addr()?;
        if self.storage.sync_interval_ms == 0 {
            return Err(invalid("storage.sync_interval_ms", "must be greater than 0"));
        }
        if self.storage.backend == StorageBackend::Postgres {
            if self.storage.postgres_url.is_empty() {
                return Err(invalid("storage.postgres_url", "required when storage.backend is postgres"));
            }
            for (key, value) in [
                ("storage.postgres_pool_size", self.storage.postgres_pool_size as u64),
                ("storage.postgres_statement_timeout_ms", self.storage.postgres_statement_timeout_ms),
                ("storage.postgres_connect_timeout_ms", self.storage.postgres_connect_timeout_ms),
            ] {
                if value == 0 {
                    return Err(invalid(key, "must be greater than 0"));
                }
            }
        }
        if self.clustered() {
            if self.storage.backend != StorageBackend::Postgres {
                return Err(invalid(
                    "cluster.nats_url",
                    "a cluster shares its data in PostgreSQL: set storage.backend = \"postgres\" too",
                ));
            }
            if !(1000..=60_000).contains(&self.cluster.lease_ms) {
                return Err(invalid("cluster.lease_ms", "must be between 1000 and 60000"));
            }
        }
        for (ty, days) in &self.storage.retention_days {
            let key = format!("storage.retention_days.{ty}");
            if !ty.parse::<u8>().is_ok_and(|t| (1..=12).contains(&t)) {
                return Err(invalid(&key, "channel types are 1 to 12"));
            }
            if *days == 0 {
                return Err(invalid(&key, "must be at least 1 day (leave the type out to keep messages forever)"));
            }
        }
        if self.openim.enabled {
            if self.openim.secret.is_empty() {
                return Err(invalid("openim.secret", "must be set when openim.enabled is true"));
            }
            if self.openim.secret.len() < MIN_SECRET_LEN {
                return Err(invalid("openim.secret", "must be at least 16 bytes (it signs the admin tokens)"));
            }
            if self.openim.admin_user_ids.is_empty() {
                return Err(invalid(
                    "openim.admin_user_ids",
                    "must name at least one admin when openim.enabled is true",
                ));
            }
            if let Some(bad) = self.openim.admin_user_ids.iter().find(|u| !hongyan_core::session::is_valid_uid(u)) {
                return Err(invalid("openim.admin_user_ids", &format!("`{bad}`: {}", hongyan_core::session::ID_RULE)));
            }
            if self.openim.token_expire_days == 0 {
                return Err(invalid("openim.token_expire_days", "must be at least 1"));
            }
            if !self.openim.addr.is_empty() {
                self.openim.addr.parse::<SocketAddr>().map_err(|_| invalid("openim.addr", "not an ip:port"))?;
            }
        }
        let mut apps = std::collections::HashSet::new();
        for (i, a) in self.easemob.apps.iter().enumerate() {
            let key = format!("easemob.apps[{i}]");
            let path_safe =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !path_safe(&a.org) || !path_safe(&a.app) {
                return Err(invalid(&key, "org and app must be non-empty letters, digits, '-', '_' or '.'"));
            }
            if a.client_id.is_empty() || a.client_secret.is_empty() {
                return Err(invalid(&key, "client_id and client_secret must be set"));
            }
            if a.client_secret.len() < MIN_SECRET_LEN {
                return Err(invalid(&key, "client_secret must be at least 16 bytes (it signs the app's tokens)"));
            }
            if !apps.insert((&a.org, &a.app)) {
                return Err(invalid(&key, "the same org and app twice"));
            }
        }
        if self.easemob.max_token_ttl_secs == 0 || self.easemob.token_ttl_secs > self.easemob.max_token_ttl_secs {
            return Err(invalid(
                "easemob.max_token_ttl_secs",
                "must be at least 1 and at least easemob.token_ttl_secs",
            ));
        }
        if self.easemob.calls_per_sec == 0 || self.easemob.token_calls_per_sec == 0 {
            return Err(invalid("easemob.calls_per_sec", "rate limits must be greater than 0"));
        }
        if !self.easemob.addr.is_empty() {
            self.easemob.addr.parse::<SocketAddr>().map_err(|_| invalid("easemob.addr", "not an ip:port"))?;
        }
        let url = |key: &str, value: &str| {
            if value.is_empty() || value.starts_with("http://") || value.starts_with("https://") {
                Ok(())
            } else {
                Err(invalid(key, "must be an http:// or https:// URL"))
            }
        };
        url("webhook.url", &self.webhook.url)?;
        url("datasource.url", &self.datasource.url)?;
        if let Some(bad) = self.webhook.events.iter().find(|e| !WEBHOOK_EVENTS.contains(&e.as_str())) {
            return Err(invalid("webhook.events", &format!("`{bad}` is not one of {}", WEBHOOK_EVENTS.join(", "))));
        }
        let w = &self.webhook;
        for (key, value) in [
            ("webhook.batch_max", w.batch_max as u64),
            ("webhook.max_queue_bytes", w.max_queue_bytes),
            ("webhook.batch_interval_ms", w.batch_interval_ms),
            ("webhook.offline_max_uids", w.offline_max_uids as u64),
            ("webhook.offline_lanes", u64::from(w.offline_lanes)),
            ("webhook.timeout_ms", w.timeout_ms),
            ("webhook.retry_initial_ms", w.retry_initial_ms),
            ("webhook.max_age_secs", w.max_age_secs),
            ("datasource.timeout_ms", self.datasource.timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if w.retry_max_ms < w.retry_initial_ms {
            return Err(invalid("webhook.retry_max_ms", "must be at least webhook.retry_initial_ms"));
        }
        if w.offline_lanes > 64 {
            return Err(invalid("webhook.offline_lanes", "at most 64"));
        }
        if self.storage.retention_sweep_interval_secs == 0 {
            return Err(invalid("storage.retention_sweep_interval_secs", "must be greater than 0"));
        }
        if self.delivery.retry_interval_ms == 0 {
            return Err(invalid("delivery.retry_interval_ms", "must be greater than 0"));
        }
        if self.delivery.pipeline_bytes < 1024 * 1024 || self.delivery.pipeline_bytes > u32::MAX as usize {
            return Err(invalid("delivery.pipeline_bytes", "must be from 1 MiB to 4 GiB"));
        }
        if self.delivery.retry_max_per_connection == 0 {
            return Err(invalid("delivery.retry_max_per_connection", "must be greater than 0"));
        }
        for (key, value) in [
            ("api.header_timeout_ms", self.api.header_timeout_ms),
            ("api.request_timeout_ms", self.api.request_timeout_ms),
            ("api.max_connections", self.api.max_connections as u64),
            ("api.max_concurrent_requests", self.api.max_concurrent_requests as u64),
            ("api.token_requests_per_sec_per_ip", u64::from(self.api.token_requests_per_sec_per_ip)),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.api.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be greater than 0"));
        }
        for (key, uid) in [("manager_uid", &self.manager_uid), ("system_uid", &self.system_uid)] {
            if !hongyan_core::session::is_valid_uid(uid) {
                return Err(invalid(key, hongyan_core::session::ID_RULE));
            }
        }
        Ok(())
    }

    fn defaulted_addr(&self, key: &'static str, value: &str, port: u16) -> Result<SocketAddr, ConfigError> {
        if value.is_empty() {
            let host = if self.manager_token.is_empty() { [127, 0, 0, 1] } else { [0, 0, 0, 0] };
            return Ok(SocketAddr::from((host, port)));
        }
        parse_listen_addr(key, value)
            .map_err(|e| ConfigError::Invalid { key: key.into(), problem: e.problem })?
            .ok_or_else(|| ConfigError::Invalid { key: key.into(), problem: "must not be empty".into() })
    }

    /// The API listen address, with the loopback default when no manager token is set.
    pub fn api_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.defaulted_addr("api.addr", &self.api.addr, 5001)
    }

    /// The manager listen address, with the same rule.
    pub fn manager_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.defaulted_addr("manager.addr", &self.manager.addr, 5300)
    }

    /// The demo chat's listen address, `None` when it is off (see [`DemoConfig::addr`]).
    pub fn demo_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let invalid = |problem: &str| ConfigError::Invalid { key: "demo.addr".into(), problem: problem.into() };
        let Some(value) = &self.demo.addr else {
            let single_with_ws = self.cluster.nats_url.is_empty() && !self.gateway.ws_addr.is_empty();
            return Ok(single_with_ws.then(|| SocketAddr::from(([127, 0, 0, 1], 5172))));
        };
        let Some(addr) = parse_listen_addr("demo.addr", value)
            .map_err(|e| ConfigError::Invalid { key: "demo.addr".into(), problem: e.problem })?
        else {
            return Ok(None);
        };
        if !addr.ip().is_loopback() {
            return Err(invalid(
                "must be a loopback address: the demo signs anyone in as any user (leave it empty to turn it off)",
            ));
        }
        if self.gateway.ws_addr.is_empty() {
            return Err(invalid("needs gateway.ws_addr: the demo page connects over WebSocket"));
        }
        Ok(Some(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_env() -> Env {
        Env::prefixed("HONGYAN_TEST_UNSET_PREFIX_").split("__")
    }

    #[test]
    fn defaults_follow_wukongim() {
        let c = Config::load(None, empty_env(), Overrides::default()).unwrap();
        assert_eq!(c.api_addr().unwrap().to_string(), "127.0.0.1:5001");
        assert_eq!(c.manager_addr().unwrap().to_string(), "127.0.0.1:5300");
        assert_eq!(c.gateway.tcp_addr, "0.0.0.0:5100");
        assert_eq!(c.gateway.ws_addr, "0.0.0.0:5200");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.auth.token_auth);
    }

    #[test]
    fn a_manager_token_opens_the_api_to_the_network() {
        let c = Config::from_toml("manager_token = \"s3cret\"").unwrap();
        assert_eq!(c.api_addr().unwrap().to_string(), "0.0.0.0:5001");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::from_toml("[gateway]\ntcp_adr = \"0.0.0.0:1\"").unwrap_err().to_string();
        assert!(e.contains("tcp_adr"), "{e}");
        let e = Config::from_toml("node_id = \"one\"").unwrap_err().to_string();
        assert!(e.contains("node_id"), "{e}");
        let e = Config::from_toml("node_id = 5000").unwrap_err().to_string();
        assert_eq!(e, "configuration: node_id: must be between 1 and 1023");
        let e = Config::from_toml("[gateway]\nidle_timeout_secs = 0").unwrap_err().to_string();
        assert_eq!(e, "configuration: gateway.idle_timeout_secs: must be greater than 0");
        let e = Config::from_toml("[storage]\ndurability = \"sometimes\"").unwrap_err().to_string();
        assert!(e.contains("durability") && e.contains("sometimes"), "{e}");
        let e = Config::from_toml("[api]\naddr = \"localhost\"").unwrap_err().to_string();
        assert!(e.starts_with("configuration: api.addr:"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn flags_beat_environment_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hongyan.toml");
        std::fs::write(&file, "node_id = 7\n[gateway]\ntcp_addr = \"127.0.0.1:7000\"\nws_addr = \"127.0.0.1:7001\"\n")
            .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("HONGYAN_GATEWAY__TCP_ADDR", "127.0.0.1:8000");
            jail.set_env("HONGYAN_NODE_ID", "8");
            let flags = Overrides { tcp_addr: Some("127.0.0.1:9000".into()), ..Overrides::default() };
            let c = Config::load(Some(&file), Config::env(), flags).unwrap();
            assert_eq!(c.gateway.tcp_addr, "127.0.0.1:9000", "flag wins");
            assert_eq!(c.node_id, 8, "environment beats file");
            assert_eq!(c.gateway.ws_addr, "127.0.0.1:7001", "file beats default");
            jail.set_env("HONGYAN_GATEWAY__NOPE", "1");
            let e = Config::load(Some(&file), Config::env(), Overrides::default()).unwrap_err().to_string();
            assert!(e.contains("nope"), "{e}");
            Ok(())
        });
    }

    /// Every key of the example file has its row in docs/config.md, and every row's key
    /// exists in the example file.
    #[test]
    fn config_doc_and_example_list_the_same_keys() {
        let example: toml_keys::Keys = toml_keys::keys(include_str!("../../../config/hongyan.example.toml"));
        let doc = include_str!("../../../docs/config.md");
        let documented: std::collections::BTreeSet<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(key, _)| key.to_owned()))
            .collect();
        assert_eq!(example, documented);
    }

    mod toml_keys {
        pub(super) type Keys = std::collections::BTreeSet<String>;

        /// Dotted keys of a flat TOML file with sections, commented-out keys included.
        pub(super) fn keys(text: &str) -> Keys {
            let mut section = String::new();
            let mut out = Keys::new();
            for line in text.lines().map(str::trim) {
                let line = line.strip_prefix("# ").filter(|l| l.contains(" = ")).unwrap_or(line);
                if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    section = format!("{name}.");
                } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) {
                    out.insert(format!("{section}{}", key.trim()));
                }
            }
            out
        }
    }

    #[test]
    fn openim_needs_a_secret_and_an_admin() {
        let e = Config::from_toml("[openim]\nenabled = true").unwrap_err().to_string();
        assert!(e.contains("openim.secret"), "{e}");
        let e = Config::from_toml("[openim]\nenabled = true\nsecret = \"short\"").unwrap_err().to_string();
        assert!(e.contains("openim.secret: must be at least 16 bytes"), "{e}");
        let secret = "secret = \"sixteen-byte-secret\"";
        let e = Config::from_toml(&format!("[openim]\nenabled = true\n{secret}")).unwrap_err().to_string();
        assert!(e.contains("openim.admin_user_ids"), "{e}");
        let c = Config::from_toml(&format!("[openim]\nenabled = true\n{secret}\nadmin_user_ids = [\"boss\"]")).unwrap();
        assert_eq!(c.openim.addr, "0.0.0.0:10000");
        assert!(c.ignored_settings().is_empty());
        // Configured while the dialect is off: it loads, with a warning to show.
        let off = Config::from_toml(&format!("[openim]\n{secret}")).unwrap();
        assert_eq!(
            off.ignored_settings(),
            ["openim.secret is set but openim.enabled is false: the OpenIM dialect is off"]
        );
    }

    #[test]
    fn easemob_secrets_must_be_long_and_token_lifetimes_bounded() {
        let app = |secret: &str| {
            format!(
                "[easemob]\napps = [{{ org = \"o\", app = \"a\", client_id = \"id\", client_secret = \"{secret}\" }}]"
            )
        };
        let e = Config::from_toml(&app("fifteen-bytes!!")).unwrap_err().to_string();
        assert!(e.contains("client_secret must be at least 16 bytes"), "{e}");
        Config::from_toml(&app("sixteen-bytes!!!")).unwrap();
        let long = format!("{}\ntoken_ttl_secs = 100\nmax_token_ttl_secs = 50", app("sixteen-bytes!!!"));
        let e = Config::from_toml(&long).unwrap_err().to_string();
        assert!(e.contains("easemob.max_token_ttl_secs"), "{e}");
    }

    #[test]
    fn webhook_and_datasource_settings_are_checked() {
        let c = Config::from_toml("[webhook]\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"msg.offline\"]").unwrap();
        assert!(c.webhook.sends("msg.offline") && !c.webhook.sends("msg.notify"));
        assert!(Config::default().webhook.sends("msg.notify"), "empty means all");
        for (bad, key) in [
            ("[webhook]\nurl = \"ftp://x\"", "webhook.url"),
            ("[webhook]\nevents = [\"msg.sent\"]", "webhook.events"),
            ("[webhook]\noffline_rule = \"never\"", "webhook.offline_rule"),
            ("[webhook]\nbatch_max = 0", "webhook.batch_max"),
            ("[webhook]\nretry_max_ms = 1", "webhook.retry_max_ms"),
            ("[datasource]\nurl = \"localhost:9\"", "datasource.url"),
        ] {
            let e = Config::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn retention_is_per_channel_type() {
        let c = Config::from_toml("[storage.retention_days]\n1 = 365\n2 = 30").unwrap();
        c.validate().unwrap();
        let day = 86_400;
        assert_eq!(
            c.storage.retention(),
            [(1, std::time::Duration::from_secs(365 * day)), (2, std::time::Duration::from_secs(30 * day))]
        );
        for bad in
            ["[storage.retention_days]\n13 = 1", "[storage.retention_days]\nx = 1", "[storage.retention_days]\n2 = 0"]
        {
            let e = Config::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains("storage.retention_days."), "{e}");
        }
    }

    #[test]
    fn the_demo_is_on_by_default_on_loopback_only() {
        let c = Config::load(None, empty_env(), Overrides::default()).unwrap();
        assert_eq!(c.demo_addr().unwrap(), Some("127.0.0.1:5172".parse().unwrap()));
        let off = Config::from_toml("[demo]\naddr = \"\"").unwrap();
        assert_eq!(off.demo_addr().unwrap(), None);
        let no_ws = Config::from_toml("[gateway]\nws_addr = \"\"").unwrap();
        assert_eq!(no_ws.demo_addr().unwrap(), None, "no WebSocket listener, no default demo");
        let e = Config::from_toml("[demo]\naddr = \"0.0.0.0:5172\"").unwrap_err().to_string();
        assert!(e.contains("demo.addr") && e.contains("loopback"), "{e}");
        let e = Config::from_toml("[demo]\naddr = \"127.0.0.1:5172\"\n[gateway]\nws_addr = \"\"").unwrap_err();
        assert!(e.to_string().contains("gateway.ws_addr"), "{e}");
        let clustered = "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://h@127.0.0.1/h\"\n\
                         [cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n";
        assert_eq!(Config::from_toml(clustered).unwrap().demo_addr().unwrap(), None, "off on a cluster member");
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../config/hongyan.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.node_id, 1001);
        assert_eq!(c.gateway.idle_timeout_secs, 180);
    }

    #[test]
    fn a_cluster_needs_postgres_and_a_sane_lease() {
        let e = Config::from_toml("[cluster]\nnats_url = \"nats://127.0.0.1:4222\"").unwrap_err().to_string();
        assert!(e.contains("cluster.nats_url") && e.contains("postgres"), "{e}");
        let on_postgres = "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://h@127.0.0.1/h\"\n\
                           [cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n";
        let c = Config::from_toml(on_postgres).unwrap();
        assert!(c.clustered());
        assert_eq!(c.cluster.lease_ms, 4000);
        let e = Config::from_toml(&format!("{on_postgres}lease_ms = 100")).unwrap_err().to_string();
        assert_eq!(e, "configuration: cluster.lease_ms: must be between 1000 and 60000");
        assert!(!Config::default().clustered());
    }
}
