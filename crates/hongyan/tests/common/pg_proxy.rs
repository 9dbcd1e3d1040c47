//! A TCP proxy in front of PostgreSQL that tests use to take the database away from
//! running servers and give it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A TCP proxy in front of PostgreSQL that can drop every connection and refuse new
/// ones until it is opened again.
pub(crate) struct Proxy {
    pub(crate) addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    /// Cut a connection right after forwarding a `COMMIT` to the database, so that the
    /// server cannot know whether it committed.
    pub(crate) cut_on_commit: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<JoinSet<()>>>,
}

/// Copies `from` to `to`; with `watch` set, stops right after forwarding a COMMIT.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    watch: Option<Arc<AtomicBool>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else { return };
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let commit = buf[..n].windows(6).any(|w| w == b"COMMIT");
        if commit && watch.as_ref().is_some_and(|w| w.load(Ordering::SeqCst)) {
            return;
        }
    }
}

impl Proxy {
    pub(crate) async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let cut_on_commit = Arc::new(AtomicBool::new(false));
        let links = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (accepting, watch, tasks) = (open.clone(), cut_on_commit.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let (upstream, watch) = (upstream.clone(), watch.clone());
                tasks.lock().unwrap().spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let ((client_in, client_out), (server_in, server_out)) = (client.into_split(), server.into_split());
                    // Whichever direction ends first ends the link (both halves drop).
                    tokio::select! {
                        () = forward(client_in, server_out, Some(watch)) => {}
                        () = forward(server_in, client_out, None) => {}
                    }
                });
            }
        });
        Self { addr, open, cut_on_commit, links }
    }

    /// Drops every open connection and refuses new ones. Returns once every link is
    /// gone: an aborted task only stops at its next poll, and a link that still forwarded
    /// a statement or two after this returned would let a write reach its COMMIT.
    pub(crate) async fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut links = std::mem::take(&mut *self.links.lock().unwrap());
        links.abort_all();
        while links.join_next().await.is_some() {}
    }

    pub(crate) fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by `addr`.
pub(crate) fn through(url: &str, addr: std::net::SocketAddr) -> (String, String) {
    let after_at = url.rfind('@').map_or(url.find("://").unwrap() + 3, |i| i + 1);
    let end = url[after_at..].find('/').map_or(url.len(), |i| after_at + i);
    let upstream = url[after_at..end].to_owned();
    (format!("{}{addr}{}", &url[..after_at], &url[end..]), upstream)
}
