//! A real server on ephemeral loopback ports, with helpers to call its API.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; helpers panic on purpose

pub(crate) mod pg_proxy;

use std::time::Duration;

use hongyan::{Config, Server};
use hongyan_proto::{Connect, HeaderFlags, KeyPair, Packet, Send, Sendack};
use hongyan_testkit::{Client, Target};
use serde_json::Value;

pub(crate) struct TestServer {
    pub(crate) server: Server,
    pub(crate) config: Config,
    pub(crate) dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// The test database (scripts/test.sh starts PostgreSQL and creates one per run).
pub(crate) use hongyan_store_postgres::testing::url as postgres_url;

/// Points `config` at a fresh schema of the test database.
pub(crate) fn use_postgres(config: &mut Config) {
    config.storage.backend = hongyan::config::StorageBackend::Postgres;
    config.storage.postgres_url = postgres_url();
    config.storage.postgres_schema = hongyan_store_postgres::testing::fresh_schema();
}

/// Whether this run puts the servers it starts on PostgreSQL (`TEST_STORAGE=postgres`:
/// scripts/test.sh runs the storage-touching tests a second time that way).
pub(crate) fn on_postgres() -> bool {
    std::env::var("TEST_STORAGE").is_ok_and(|s| s == "postgres")
}

/// A configuration that binds everything to 127.0.0.1:0 in a fresh data directory
/// (and a fresh PostgreSQL schema when the run is on PostgreSQL).
pub(crate) fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    if on_postgres() {
        use_postgres(&mut config);
    }
    config.api.addr = "127.0.0.1:0".into();
    config.manager.addr = "127.0.0.1:0".into();
    config.gateway.tcp_addr = "127.0.0.1:0".into();
    config.gateway.ws_addr = "127.0.0.1:0".into();
    config.gateway.kick_close_delay_ms = 300;
    config.demo.addr = Some(String::new());
    config
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        config.validate().unwrap();
        let server = hongyan::start(config.clone()).await.unwrap();
        Self { server, config, dir, http: reqwest::Client::new() }
    }

    /// Like [`Self::start_with`], over a storage backend the test made from the data
    /// directory it is given.
    pub(crate) async fn start_on(
        backend: impl FnOnce(&std::path::Path) -> std::sync::Arc<dyn hongyan_store::KvBackend>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        config.validate().unwrap();
        let server = hongyan::start_on(config.clone(), backend(dir.path())).await.unwrap();
        Self { server, config, dir, http: reqwest::Client::new() }
    }

    pub(crate) fn tcp(&self) -> Target {
        Target::Tcp(self.server.gateway.tcp_addr.unwrap())
    }

    pub(crate) fn ws(&self) -> Target {
        Target::Ws(format!("ws://{}/any/path?x=1", self.server.gateway.ws_addr.unwrap()))
    }

    pub(crate) fn wss(&self) -> Target {
        Target::Ws(format!("wss://{}/", self.server.gateway.wss_addr.unwrap()))
    }

    pub(crate) fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.api_addr)
    }

    /// POSTs `body` and returns the status and the JSON answer (Null when empty).
    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(self.http.post(self.api(path)).json(&body)).await
    }

    /// GETs `path` (with its query) and returns the status and the JSON answer.
    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.call(self.http.get(self.api(path))).await
    }

    async fn call(&self, mut req: reqwest::RequestBuilder) -> (u16, Value) {
        if !self.config.manager_token.is_empty() {
            req = req.header("token", &self.config.manager_token);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
    }

    /// Registers `token` for (uid, device_flag) at `level` (0 slave, 1 master).
    pub(crate) async fn register(&self, uid: &str, token: &str, device_flag: u8, level: u8) {
        let body = serde_json::json!({"uid": uid, "token": token, "device_flag": device_flag, "device_level": level});
        let (status, answer) = self.post("/user/token", body).await;
        assert_eq!((status, answer), (200, serde_json::json!({"status": 200})));
    }

    pub(crate) async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.server.manager_addr);
        let mut req = self.http.get(url);
        if !self.config.manager_token.is_empty() {
            req = req.bearer_auth(&self.config.manager_token);
        }
        req.send().await.unwrap().text().await.unwrap()
    }

    /// Stops the server and waits until every connection is closed.
    pub(crate) async fn stop(self) {
        self.server.shutdown();
        tokio::time::timeout(Duration::from_secs(10), self.server.wait()).await.expect("shutdown took over 10 s");
    }

    /// Stops the server and starts it again on the same data and configuration.
    #[allow(dead_code)] // not every test binary restarts
    pub(crate) async fn restart(self) -> Self {
        let Self { server, config, dir, http } = self;
        server.shutdown();
        tokio::time::timeout(Duration::from_secs(10), server.wait()).await.expect("shutdown took over 10 s");
        drop(server);
        let server = start_again(&config).await;
        Self { server, config, dir, http }
    }
}

/// Starts a server on the data of one that was just stopped, once the tasks that held
/// its store have let go of it.
#[allow(dead_code)] // not every test binary restarts
pub(crate) async fn start_again(config: &hongyan::Config) -> hongyan::Server {
    let started = std::time::Instant::now();
    loop {
        match hongyan::start(config.clone()).await {
            Ok(server) => return server,
            Err(e) if started.elapsed() < Duration::from_secs(10) && format!("{e:#}").contains("Locked") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot start again: {e:#}"),
        }
    }
}

/// A CONNECT with a fresh client key, for tests that speak raw bytes.
pub(crate) fn connect_packet(uid: &str, token: &str, device_flag: u8, device_id: &str, version: u8) -> Connect {
    Connect {
        version,
        device_flag,
        device_id: device_id.into(),
        uid: uid.into(),
        token: token.into(),
        client_timestamp: 1,
        client_key: KeyPair::generate().unwrap().public_key_base64(),
    }
}

/// Seals a SEND with `flags` and waits for its SENDACK, skipping RECVs that arrive
/// meanwhile.
pub(crate) async fn send_text(
    client: &mut Client,
    (to, channel_type): (&str, u8),
    client_seq: u32,
    client_msg_no: &str,
    text: &str,
    flags: HeaderFlags,
) -> Sendack {
    let mut packet = Send {
        flags,
        client_seq,
        client_msg_no: client_msg_no.into(),
        channel_id: to.into(),
        channel_type,
        ..Send::default()
    };
    client.cipher.as_ref().unwrap().seal_send(&mut packet, text.as_bytes());
    client.send(&Packet::Send(packet)).await.unwrap();
    loop {
        match client.recv().await.unwrap() {
            Packet::Sendack(ack) if ack.client_seq == client_seq => return ack,
            Packet::Recv(_) => continue,
            other => panic!("expected SENDACK, got {other:?}"),
        }
    }
}

/// How long a test waits to be sure nothing more arrives.
pub(crate) const QUIET: Duration = Duration::from_millis(400);

/// The next RECV, verified and decrypted as the SDKs do, with its text.
pub(crate) async fn receive(client: &mut Client) -> (hongyan_proto::Recv, String) {
    match client.recv().await.unwrap() {
        Packet::Recv(recv) => {
            let plain = client.cipher.as_ref().unwrap().open_recv(&recv).expect("msgKey and payload verify");
            (recv, String::from_utf8(plain).unwrap())
        }
        other => panic!("expected RECV, got {other:?}"),
    }
}

/// Asserts that nothing arrives for [`QUIET`].
pub(crate) async fn nothing_more(client: &mut Client) {
    match client.recv_within(QUIET).await {
        Err(hongyan_testkit::ClientError::Timeout) => {}
        other => panic!("expected silence, got {other:?}"),
    }
}

/// `text` in base64, as HTTP payloads travel.
pub(crate) fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The text of a message object from the HTTP API.
pub(crate) fn text_of(message: &Value) -> String {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(message["payload"].as_str().unwrap()).unwrap();
    String::from_utf8(raw).unwrap()
}

/// What a [`Hooked`] backend does with a write: `write` performs it on the real engine.
pub(crate) type WriteHook = Box<
    dyn Fn(&dyn Fn() -> hongyan_store::Result<()>, &[hongyan_store::Write], bool) -> hongyan_store::Result<()>
        + std::marker::Send
        + Sync,
>;

/// The embedded engine with a hook around every write, for tests that hold, fail or
/// watch storage: the hook decides whether and when the real write happens.
pub(crate) struct Hooked {
    inner: hongyan_store::FjallBackend,
    hook: WriteHook,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").finish_non_exhaustive()
    }
}

impl Hooked {
    pub(crate) fn open(dir: &std::path::Path, hook: WriteHook) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { inner: hongyan_store::FjallBackend::open(dir).unwrap(), hook })
    }
}

impl hongyan_store::KvBackend for Hooked {
    fn health(&self) -> &std::sync::Arc<hongyan_store::Health> {
        self.inner.health()
    }
    fn enforces_inserts(&self) -> bool {
        self.inner.enforces_inserts()
    }
    fn get(&self, t: hongyan_store::Table, k: &[u8]) -> hongyan_store::Result<Option<Vec<u8>>> {
        self.inner.get(t, k)
    }
    fn scan_prefix(
        &self,
        t: hongyan_store::Table,
        p: &[u8],
        l: usize,
    ) -> hongyan_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_prefix(t, p, l)
    }
    fn scan_range(
        &self,
        t: hongyan_store::Table,
        s: &[u8],
        e: &[u8],
        l: usize,
        o: hongyan_store::Order,
    ) -> hongyan_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_range(t, s, e, l, o)
    }
    fn write(&self, w: Vec<hongyan_store::Write>, durable: bool) -> hongyan_store::Result<()> {
        let batch = w.clone();
        (self.hook)(&|| self.inner.write(batch.clone(), durable), &w, durable)
    }
    fn sync(&self) -> hongyan_store::Result<()> {
        self.inner.sync()
    }
}

/// Whether a batch writes a message to the log.
pub(crate) fn writes_a_message(writes: &[hongyan_store::Write]) -> bool {
    use hongyan_store::{Table, Write};
    writes.iter().any(|w| matches!(w, Write::Put(Table::ChanSeqMessage, ..) | Write::Insert(Table::ChanSeqMessage, ..)))
}

/// A nats-server of the test's own on a free loopback port, stopped when dropped.
/// The binary is `NATS_SERVER_BIN`, else the one scripts/test.sh installs under
/// `target/nats`, else `nats-server` on the PATH.
pub(crate) struct NatsServer {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl NatsServer {
    pub(crate) fn start() -> Self {
        Self::start_on(None)
    }

    /// On `port` (a restart on the same address), or a free one.
    pub(crate) fn start_on(port: Option<u16>) -> Self {
        use std::io::BufRead as _;
        let binary = std::env::var_os("NATS_SERVER_BIN").map(std::path::PathBuf::from).unwrap_or_else(|| {
            let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/nats/bin/nats-server");
            if installed.exists() { installed } else { "nats-server".into() }
        });
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut child = std::process::Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port_arg])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {} ({e}): run scripts/test.sh, or set NATS_SERVER_BIN", binary.display())
            });
        let stderr = child.stderr.take().unwrap();
        let (found, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let marker = "Listening for client connections on ";
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find(marker) {
                    let port = line[at + marker.len()..].rsplit(':').next().and_then(|p| p.trim().parse::<u16>().ok());
                    let _ = found.send(port);
                }
            }
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10)).ok().flatten().expect("nats-server did not start");
        Self { child, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `config` node `node_id` of the cluster on PostgreSQL `schema` and `nats_url`,
/// with a short lease.
pub(crate) fn cluster_member(config: &mut Config, schema: &str, nats_url: &str, node_id: u64) {
    use_postgres(config);
    config.storage.postgres_schema = schema.to_owned();
    config.node_id = node_id;
    config.cluster.nats_url = nats_url.to_owned();
    config.cluster.lease_ms = 2000;
}

/// Polls `check` every 20 ms until it answers `Some`, or panics after `limit` with `what`.
pub(crate) async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A group id whose home among the live nodes `live` is `node`.
pub(crate) fn group_homed_on(node: u64, live: &[u64]) -> String {
    use hongyan_core::cluster::{NodeInfo, home_of};
    let live: Vec<NodeInfo> = live.iter().map(|&id| NodeInfo::placed_only(id)).collect();
    (0..256)
        .map(|i| format!("busy-{i}"))
        .find(|g| home_of(&hongyan_store::ChannelKey::new(g.as_str(), 2).encoded(), &live).unwrap().id == node)
        .unwrap()
}

/// Waits until every node in `servers` answers `/user/onlinestatus` for `asked` with
/// exactly `online` (presence travels between nodes over NATS).
pub(crate) async fn wait_for_presence(servers: &[&TestServer], asked: &[&str], online: &[&str]) {
    let wanted: std::collections::BTreeSet<String> = online.iter().map(|u| (*u).to_owned()).collect();
    for server in servers {
        eventually(
            Duration::from_secs(4),
            &format!("node {} sees {wanted:?} online", server.config.node_id),
            || async {
                let (status, answer) = server.post("/user/onlinestatus", serde_json::json!(asked)).await;
                assert_eq!(status, 200, "{answer}");
                let seen: std::collections::BTreeSet<String> =
                    answer.as_array()?.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect();
                (seen == wanted).then_some(())
            },
        )
        .await;
    }
}

/// The repository's root (for `tests/conformance/` and `docs/images/`).
pub(crate) fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a browser runner of `tests/conformance/` (`script`) with `scenario` as its one
/// argument, within `limit`, and returns the JSON it printed (`{"ok": true, …}` or
/// `{"error", …}`); its stderr goes to the test's. Needs Node.js and Chromium, which
/// scripts/test.sh installs.
pub(crate) async fn browser_scenario(script: &str, scenario: &Value, limit: Duration) -> Value {
    let output = tokio::time::timeout(
        limit,
        tokio::process::Command::new("node")
            .arg(repo_root().join("tests/conformance").join(script))
            .arg(scenario.to_string())
            .stderr(std::process::Stdio::inherit())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} finishes within {limit:?}"))
    .expect("node runs (scripts/test.sh installs Node.js and Chromium)");
    let said = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(said.trim()).unwrap_or_else(|_| panic!("{script} said: {said}"))
}
