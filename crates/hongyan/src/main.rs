//! `hongyan`: the instant-messaging server. `hongyan serve` (the default) runs it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use hongyan::config::{Config, LogFormat, Overrides, StorageBackend};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Hongyan: an instant-messaging server that speaks the WuKongIM protocol.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
}

/// Flags override the environment, which overrides the config file.
#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// TOML configuration file (see config/hongyan.example.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:5001, or 0.0.0.0:5001 with a manager token].
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<String>,
    /// Binary protocol over TCP [default: 0.0.0.0:5100; "" disables].
    #[arg(long, value_name = "ADDR")]
    tcp_addr: Option<String>,
    /// Binary protocol over WebSocket [default: 0.0.0.0:5200; "" disables].
    #[arg(long, value_name = "ADDR")]
    ws_addr: Option<String>,
    /// WebSocket over TLS, with gateway.tls_cert/tls_key [default: off].
    #[arg(long, value_name = "ADDR")]
    wss_addr: Option<String>,
    /// Metrics address [default: 127.0.0.1:5300, or 0.0.0.0:5300 with a manager token].
    #[arg(long, value_name = "ADDR")]
    manager_addr: Option<String>,
    /// Demo chat (`/chatdemo`), loopback only [default: 127.0.0.1:5172 on a single node
    /// with a WebSocket listener; "" disables].
    #[arg(long, value_name = "ADDR")]
    demo_addr: Option<String>,
    /// Node id, 1–1023 [default: 1001].
    #[arg(long, value_name = "ID")]
    node_id: Option<u64>,
    /// Token the app server sends in the `token` header.
    #[arg(long, value_name = "TOKEN")]
    manager_token: Option<String>,
}

impl ServeArgs {
    fn overrides(self) -> (Option<PathBuf>, Overrides) {
        let flags = Overrides {
            data_dir: self.data_dir,
            node_id: self.node_id,
            manager_token: self.manager_token,
            http_addr: self.http_addr,
            tcp_addr: self.tcp_addr,
            ws_addr: self.ws_addr,
            wss_addr: self.wss_addr,
            manager_addr: self.manager_addr,
            demo_addr: self.demo_addr,
        };
        (self.config, flags)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let (file, flags) = args.overrides();
    let config = Config::load(file.as_deref(), Config::env(), flags)?;

    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log.filter))?;
    match config.log.format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let banner = (config.node_id, storage_of(&config), config.log.format);
    // The handlers go in before anything starts: a cluster node is visible to its peers
    // (and to whoever supervises it) while it is still starting, and a SIGTERM then
    // must stop it cleanly instead of killing it by the signal's default action.
    let mut stop = Box::pin(wait_for_signal()?);
    let server = tokio::select! {
        server = hongyan::start(config) => server?,
        signal = &mut stop => {
            signal?;
            tracing::info!("asked to stop while starting");
            return Ok(());
        }
    };
    announce(&server, banner);
    let failure = tokio::select! {
        signal = &mut stop => { signal?; None }
        failure = server.fail_stopped() => Some(failure),
    };
    tracing::info!("shutting down: closing listeners and connections");
    server.shutdown();
    if let Some(failure) = failure {
        // Storage cannot be trusted: close connections, but do not wait long for a
        // writer that may be stuck on a broken disk.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server.wait()).await;
        tracing::error!(reason = %failure.reason, code = hongyan::FAIL_STOP_EXIT_CODE, "exiting after a storage failure");
        std::process::exit(hongyan::FAIL_STOP_EXIT_CODE);
    }
    server.wait().await;
    tracing::info!("stopped");
    Ok(())
}

fn storage_of(config: &Config) -> String {
    match config.storage.backend {
        StorageBackend::Fjall => format!("embedded, in {}", config.data_dir.display()),
        StorageBackend::Postgres => format!(
            "PostgreSQL at {}, schema {}",
            hongyan_store_postgres::redact(&config.storage.postgres_url),
            config.storage.postgres_schema
        ),
    }
}

/// The start-up banner: every address to open or point a client at. In text mode a
/// short block for people; in JSON mode one record with the addresses as fields.
fn announce(server: &hongyan::Server, (node_id, storage, format): (u64, String, LogFormat)) {
    let addresses = server.addresses();
    match format {
        LogFormat::Text => {
            let mut banner =
                format!("Hongyan {} is running (node {node_id}, storage {storage})\n", env!("CARGO_PKG_VERSION"));
            for (what, at) in &addresses {
                banner.push_str(&format!("  {what:<18} {at}\n"));
            }
            print!("{banner}");
        }
        LogFormat::Json => {
            // One field per address (empty when that listener is off).
            let at = |what: &str| addresses.iter().find(|(w, _)| *w == what).map_or("", |(_, at)| at.as_str());
            tracing::info!(
                node_id,
                storage,
                api = at("HTTP API"),
                openapi = at("OpenAPI"),
                tcp = at("TCP clients"),
                ws = at("WebSocket clients"),
                wss = at("WSS clients"),
                openim = at("OpenIM API"),
                easemob = at("Easemob API"),
                demo = at("Demo chat"),
                console = at("Console"),
                metrics = at("Metrics"),
                health = at("Health"),
                cluster = at("Cluster nodes"),
                "hongyan is running"
            );
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that ends at the
/// first of them.
fn wait_for_signal() -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        Ok(())
    })
}
