//! The per-channel message log, written through one group-commit writer.
//!
//! Every append from every connection goes to one writer thread. It takes whatever has
//! queued up, gives each new message the next dense seq of its channel, recognises
//! resends by `(channel, from_uid, client_msg_no)`, writes everything in one atomic batch
//! and (in `fsync` mode) makes it durable with one fsync. Only then are the callers
//! answered: an acknowledged message is on disk, and one fsync serves a whole batch.
//!
//! Because the writer alone assigns seqs, they are dense and increasing per channel
//! without locks; after a restart each channel continues from its last stored seq.
//!
//! Storage errors are fail-stop: the batch's callers get the error, and the writer
//! refuses everything after it, so nothing is acknowledged that is not stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::backend::{KvBackend, Table, Write};
use crate::codec::{ValueReader, push_str16};
use crate::{Result, StoreError};

mod reads;
mod retention;
mod writer;

use reads::{last_seq, newest_of};

pub use retention::Pruned;
use writer::Writer;

const FORMAT_V1: u8 = 1;
/// Most appends one commit takes; more wait for the next.
const MAX_BATCH: usize = 4096;
/// Most appends queued for the writer at once. The core's pipeline budget keeps the
/// queue far below this; the cap makes the log bounded on its own too: past it an
/// append is refused ([`StoreError::Busy`]), never buffered.
pub const MAX_QUEUED: usize = 1 << 18;

/// A channel as stored: its type and its stored id (for person channels, the
/// `a@b` id shared by both sides).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    /// The channel type (1 person, 2 group, …).
    pub channel_type: u8,
    /// The stored channel id.
    pub channel_id: String,
}

impl ChannelKey {
    /// The key of a channel.
    pub fn new(channel_id: impl Into<String>, channel_type: u8) -> Self {
        Self { channel_type, channel_id: channel_id.into() }
    }

    /// The channel's key in tables keyed by channel alone (its seq floor, its owner).
    pub fn encoded(&self) -> Vec<u8> {
        self.prefix()
    }

    /// `[type][len][id]`: the prefix of every key of this channel in the log.
    fn prefix(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(3 + self.channel_id.len() + 8);
        key.push(self.channel_type);
        push_str16(&mut key, &self.channel_id);
        key
    }

    pub(crate) fn message_key(&self, seq: u64) -> Vec<u8> {
        let mut key = self.prefix();
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    /// `[channel][len][client_msg_no][from_uid]`: client_msg_no first, so one prefix
    /// finds a client_msg_no whoever sent it.
    fn client_msg_no_key(&self, from_uid: &str, client_msg_no: &str) -> Vec<u8> {
        let mut key = self.client_msg_no_prefix(client_msg_no);
        key.extend_from_slice(from_uid.as_bytes());
        key
    }

    fn client_msg_no_prefix(&self, client_msg_no: &str) -> Vec<u8> {
        let mut key = self.prefix();
        push_str16(&mut key, client_msg_no);
        key
    }
}

/// A message to append. The caller chooses the id; the log chooses the seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Globally unique id (snowflake).
    pub message_id: i64,
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The sender; empty for the system.
    pub from_uid: String,
    /// The sender's id for the message; resends with the same one are recognised.
    /// Empty: no deduplication.
    pub client_msg_no: String,
    /// Header flag bits as on the wire (RedDot, SyncOnce; NoPersist messages are never
    /// appended).
    pub header: u8,
    /// The setting byte.
    pub setting: u8,
    /// Seconds until expiry, 0 = never.
    pub expire: u32,
    /// Optional topic.
    pub topic: Option<String>,
    /// The plaintext payload.
    pub payload: Bytes,
}

/// A message read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its dense position in the channel, from 1.
    pub seq: u64,
    /// Everything else, as appended.
    pub message: NewMessage,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored now, at `seq`.
    New {
        /// The message id.
        message_id: i64,
        /// The seq it got.
        seq: u64,
    },
    /// A resend of a stored message: nothing was written; these are the original's.
    Duplicate {
        /// The original's message id.
        message_id: i64,
        /// The original's seq.
        seq: u64,
    },
}

impl Appended {
    /// The message id and seq, new or original.
    pub fn ids(self) -> (i64, u64) {
        match self {
            Self::New { message_id, seq } | Self::Duplicate { message_id, seq } => (message_id, seq),
        }
    }
}

/// When appended messages are made to survive a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync every batch before answering (the default). An acknowledged message
    /// survives a power loss.
    Fsync,
    /// fsync at most this often; answer as soon as the batch is written. An
    /// acknowledged message survives a crash of the process, but a power loss can lose
    /// the last interval's messages.
    Interval(Duration),
}

/// Called by the writer thread once the append's batch is decided, in commit order:
/// with what the append did, or `None` when it was not stored (a storage failure). It
/// must not block: hand work to another thread or task.
pub type OnCommit = Box<dyn FnOnce(Option<Appended>) + Send>;

/// A stored message as the journal's reader sees it: what was stored, where, and the
/// journal row to delete once the reader has durably taken it in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journaled {
    /// The journal row's id (increasing in commit order).
    pub id: u64,
    /// The channel it is stored in.
    pub channel: ChannelKey,
    /// Its seq there.
    pub seq: u64,
    /// The message.
    pub message: NewMessage,
}

/// Hears of every newly stored message, on the writer thread, right after its batch is
/// committed and in commit order. It must not block.
pub type JournalSink = Box<dyn Fn(Journaled) + Send>;

/// The journal: a row per stored message, written in the message's own batch, so a
/// consumer that deletes a row only after acting on it never misses a message, even
/// across a crash.
struct Journal {
    next_id: u64,
    sink: JournalSink,
}

/// What a cluster node's append carries: its claim on the channel, as stored in
/// [`Table::ChanOwner`] under `key`. The append's batch expects that row to still hold
/// `value` ([`Write::Expect`]); when another node has claimed the channel since, the
/// append is refused with [`StoreError::Conflict`] and nothing of it is stored. The
/// writer also reloads a channel's seq counter whenever the claim it appends under
/// changes, since the previous owner may have stored messages in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The claim's row key (the owned channel's [`ChannelKey::encoded`]).
    pub key: Vec<u8>,
    /// The claim as this node wrote it.
    pub value: Vec<u8>,
}

struct Job {
    channel: ChannelKey,
    fence: Option<Fence>,
    message: NewMessage,
    /// Written in the same atomic batch as the message, only if it is the channel's
    /// first (seq 1).
    with_first: Vec<Write>,
    on_commit: Option<OnCommit>,
    reply: oneshot::Sender<Result<Appended>>,
}

/// An append that has been queued; await it for the outcome.
#[derive(Debug)]
pub struct PendingAppend(oneshot::Receiver<Result<Appended>>);

impl std::future::Future for PendingAppend {
    type Output = Result<Appended>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(StoreError::Engine("the log writer stopped before answering".into()))))
    }
}

/// The message log. Appends go through the writer thread; reads go straight to storage.
#[derive(Debug)]
pub struct MessageLog {
    kv: Arc<dyn KvBackend>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Appends queued and not yet committed.
    queued: Arc<AtomicUsize>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn encode(m: &NewMessage) -> Vec<u8> {
    let topic_len = m.topic.as_ref().map_or(0, |t| 2 + t.len());
    let mut v = Vec::with_capacity(32 + m.from_uid.len() + m.client_msg_no.len() + topic_len + m.payload.len());
    v.push(FORMAT_V1);
    v.extend_from_slice(&m.message_id.to_be_bytes());
    v.extend_from_slice(&m.timestamp_ms.to_be_bytes());
    v.extend_from_slice(&[m.header, m.setting]);
    v.extend_from_slice(&m.expire.to_be_bytes());
    push_str16(&mut v, &m.from_uid);
    push_str16(&mut v, &m.client_msg_no);
    match &m.topic {
        Some(t) => {
            v.push(1);
            push_str16(&mut v, t);
        }
        None => v.push(0),
    }
    v.extend_from_slice(&m.payload);
    v
}

fn decode(value: &[u8]) -> Result<NewMessage> {
    let bad = || StoreError::Corrupt { table: Table::ChanSeqMessage.name(), what: "message" };
    let mut r = ValueReader { rest: value };
    if r.u8() != Some(FORMAT_V1) {
        return Err(bad());
    }
    let message_id = r.i64().ok_or_else(bad)?;
    let timestamp_ms = r.i64().ok_or_else(bad)?;
    let header = r.u8().ok_or_else(bad)?;
    let setting = r.u8().ok_or_else(bad)?;
    let expire = r.u32().ok_or_else(bad)?;
    let from_uid = r.str16().ok_or_else(bad)?.to_owned();
    let client_msg_no = r.str16().ok_or_else(bad)?.to_owned();
    let topic = match r.u8().ok_or_else(bad)? {
        0 => None,
        1 => Some(r.str16().ok_or_else(bad)?.to_owned()),
        _ => return Err(bad()),
    };
    let payload = Bytes::copy_from_slice(r.rest);
    Ok(NewMessage { message_id, timestamp_ms, from_uid, client_msg_no, header, setting, expire, topic, payload })
}

/// The channel of a `[type][len][id][seq]` log key.
fn channel_from_message_key(key: &[u8]) -> Result<ChannelKey> {
    let bad = || StoreError::Corrupt { table: Table::ChanSeqMessage.name(), what: "key" };
    let (&channel_type, rest) = key.split_first().ok_or_else(bad)?;
    let mut r = ValueReader { rest };
    let id = r.str16().ok_or_else(bad)?;
    if r.rest.len() != 8 {
        return Err(bad());
    }
    Ok(ChannelKey::new(id, channel_type))
}

fn seq_from_key(key: &[u8]) -> Result<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Corrupt { table: Table::ChanSeqMessage.name(), what: "key" })
}

impl MessageLog {
    /// Starts the writer over `kv`.
    pub fn open(kv: Arc<dyn KvBackend>, durability: Durability) -> Result<Self> {
        Self::start(kv, durability, None)
    }

    /// Like [`Self::open`], also writing a journal row with every stored message and
    /// handing the message to `sink` once committed. Returns the backlog too: messages
    /// journaled before this start whose rows were not deleted yet, oldest first (rows
    /// of messages that retention has removed since are deleted here).
    pub fn open_journaled(
        kv: Arc<dyn KvBackend>,
        durability: Durability,
        sink: JournalSink,
    ) -> Result<(Self, Vec<Journaled>)> {
        let mut backlog = Vec::new();
        let mut gone = Vec::new();
        let mut next_id = 1;
        for (key, log_key) in kv.scan_prefix(Table::Journal, &[], usize::MAX)? {
            let id = key
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { table: Table::Journal.name(), what: "id" })?;
            next_id = id + 1;
            match kv.get(Table::ChanSeqMessage, &log_key)? {
                Some(value) => backlog.push(Journaled {
                    id,
                    channel: channel_from_message_key(&log_key)?,
                    seq: seq_from_key(&log_key)?,
                    message: decode(&value)?,
                }),
                None => gone.push(Write::Delete(Table::Journal, key)),
            }
        }
        if !gone.is_empty() {
            kv.write(gone, false)?;
        }
        let log = Self::start(kv, durability, Some(Journal { next_id, sink }))?;
        Ok((log, backlog))
    }

    fn start(kv: Arc<dyn KvBackend>, durability: Durability, journal: Option<Journal>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            kv: kv.clone(),
            durability,
            next_seq: HashMap::new(),
            counted_under: HashMap::new(),
            journal,
            queued: queued.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("hongyan-log-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| StoreError::Engine(format!("cannot start the log writer: {e}")))?;
        Ok(Self { kv, jobs: Mutex::new(Some(tx)), queued, writer: Mutex::new(Some(handle)) })
    }

    /// Appends `message` to `channel`, returning once it is stored (and, in `fsync`
    /// mode, durable), or the original's ids when it is a resend.
    pub async fn append(&self, channel: ChannelKey, message: NewMessage) -> Result<Appended> {
        self.enqueue(channel, message, None)?.await
    }

    /// Queues an append now, so appends are committed in the order they are enqueued.
    /// `on_commit` runs on the writer thread after the commit, in commit order.
    pub fn enqueue(
        &self,
        channel: ChannelKey,
        message: NewMessage,
        on_commit: Option<OnCommit>,
    ) -> Result<PendingAppend> {
        self.enqueue_with_first(channel, message, Vec::new(), on_commit)
    }

    /// Like [`Self::enqueue`], also writing `with_first` in the same atomic batch when
    /// the message is the channel's first (seq 1): records that must exist once the
    /// channel has messages, e.g. a person chat's conversations. Callers pass them with
    /// every append, without reading storage to see whether they are needed.
    pub fn enqueue_with_first(
        &self,
        channel: ChannelKey,
        message: NewMessage,
        with_first: Vec<Write>,
        on_commit: Option<OnCommit>,
    ) -> Result<PendingAppend> {
        self.enqueue_fenced(channel, message, with_first, None, on_commit)
    }

    /// Like [`Self::enqueue_with_first`], under a cluster owner's claim: see [`Fence`].
    pub fn enqueue_fenced(
        &self,
        channel: ChannelKey,
        message: NewMessage,
        with_first: Vec<Write>,
        fence: Option<Fence>,
        on_commit: Option<OnCommit>,
    ) -> Result<PendingAppend> {
        // Refuse here, not in the writer thread: strings are stored with 2-byte lengths,
        // and no key the writer builds may exceed what the engine takes. (Ids are capped
        // far lower at the edge; this keeps the log safe whatever its caller checked.)
        let longest = [&message.from_uid, &message.client_msg_no, &channel.channel_id]
            .into_iter()
            .chain(message.topic.as_ref())
            .map(String::len)
            .max()
            .unwrap_or(0);
        if longest > usize::from(u16::MAX) {
            return Err(StoreError::TooLong { what: "message id field" });
        }
        // The resend index key is the longest: [type][len][channel][len][client_msg_no][from_uid].
        let index_key_len = 5 + channel.channel_id.len() + message.client_msg_no.len() + message.from_uid.len();
        if index_key_len > self.kv.max_key_len() {
            return Err(StoreError::TooLong { what: "message key (channel id, client_msg_no and sender together)" });
        }
        crate::backend::check_writes(&with_first, self.kv.max_key_len())?;
        if let Some(f) = &fence {
            crate::backend::check_writes(
                &[Write::Expect(Table::ChanOwner, f.key.clone(), f.value.clone())],
                self.kv.max_key_len(),
            )?;
        }
        let (reply, answer) = oneshot::channel();
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = jobs.as_ref().ok_or_else(|| StoreError::Engine("the message log is closed".into()))?;
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Busy("the message log's queue is full"));
        }
        if sender.send(Job { channel, fence, message, with_first, on_commit, reply }).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Engine("the log writer has stopped".into()));
        }
        Ok(PendingAppend(answer))
    }

    /// Appends queued and not yet committed.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether a storage error has stopped the writer (or any other write to its store).
    pub fn has_failed(&self) -> bool {
        self.kv.health().has_failed()
    }

    /// The store's health record, shared with every other user of the backend.
    pub fn health(&self) -> &Arc<crate::Health> {
        self.kv.health()
    }

    /// Stops accepting appends, lets the writer finish what it has, and waits for it.
    pub fn close(&self) {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = handle.join();
        }
    }
}

impl Drop for MessageLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn lookup_client_msg_no(
    kv: &dyn KvBackend,
    channel: &ChannelKey,
    from_uid: &str,
    client_msg_no: &str,
) -> Result<Option<(i64, u64)>> {
    kv.get(Table::ChanClientMsgNo, &channel.client_msg_no_key(from_uid, client_msg_no))?
        .map(|value| decode_ids(&value))
        .transpose()
}

/// The (message_id, seq) of a resend-index row.
fn decode_ids(value: &[u8]) -> Result<(i64, u64)> {
    let mut r = ValueReader { rest: value };
    let bad = || StoreError::Corrupt { table: Table::ChanClientMsgNo.name(), what: "ids" };
    if r.u8() != Some(FORMAT_V1) {
        return Err(bad());
    }
    Ok((r.i64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?))
}

#[cfg(test)]
mod tests;
