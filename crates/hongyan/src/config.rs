//! The server's configuration: defaults, then a TOML file, then `HONGYAN_*` environment
//! variables (`HONGYAN_GATEWAY__TCP_ADDR` sets `gateway.tcp_addr`), then flags. Unknown
//! keys and invalid values stop start-up with a message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use hongyan_gateway::{GatewayConfig, parse_listen_addr};
use serde::{Deserialize, Serialize};

mod sections;
mod validate;

use sections::MIN_SECRET_LEN;
pub use sections::{
    ApiConfig, AuthConfig, ClusterConfig, DatasourceConfig, DeliveryConfig, DemoConfig, DurabilityMode,
    EasemobAppConfig, EasemobConfig, ExternalConfig, LogConfig, LogFormat, ManagerConfig, OfflineRuleConfig,
    OpenImConfig, StorageBackend, StorageConfig, WEBHOOK_EVENTS, WebhookConfig,
};

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
mod tests;
