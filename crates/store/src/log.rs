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
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::backend::{KvBackend, Order, Table, Write};
use crate::codec::{ValueReader, push_str16};
use crate::health::panic_message;
use crate::{Result, StoreError};

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

/// What a retention sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Channels that lost messages.
    pub channels: usize,
    /// Messages removed.
    pub messages: usize,
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

/// The channel's highest seq: its newest stored message's, or, when messages up to the
/// newest were deleted (retention, channel deletion), the floor kept for it.
fn last_seq(kv: &dyn KvBackend, channel: &ChannelKey) -> Result<u64> {
    let start = channel.prefix();
    let mut end = start.clone();
    end.extend_from_slice(&[0xff; 9]);
    let stored = match kv.scan_range(Table::ChanSeqMessage, &start, &end, 1, Order::Descending)?.first() {
        Some((key, _)) => seq_from_key(key)?,
        None => 0,
    };
    Ok(stored.max(seq_floor(kv, channel)?))
}

/// For each channel: its last seq (the larger of its newest stored message's and its
/// floor) and that newest stored message, in two reads for all of them.
fn newest_of(kv: &dyn KvBackend, channels: &[&ChannelKey]) -> Result<Vec<(u64, Option<StoredMessage>)>> {
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = channels
        .iter()
        .map(|c| {
            let start = c.prefix();
            let mut end = start.clone();
            end.extend_from_slice(&[0xff; 9]);
            (start, end)
        })
        .collect();
    let lasts = kv.last_in_ranges(Table::ChanSeqMessage, &ranges)?;
    let prefixes: Vec<Vec<u8>> = ranges.into_iter().map(|(start, _)| start).collect();
    let floors = kv.get_many(Table::ChanSeqFloor, &prefixes)?;
    lasts
        .into_iter()
        .zip(floors)
        .map(|(last, floor)| {
            let newest = last
                .map(|(key, value)| {
                    Ok::<_, StoreError>(StoredMessage { seq: seq_from_key(&key)?, message: decode(&value)? })
                })
                .transpose()?;
            let floor = floor
                .map(|v| {
                    v.as_slice()
                        .try_into()
                        .map(u64::from_be_bytes)
                        .map_err(|_| StoreError::Corrupt { table: Table::ChanSeqFloor.name(), what: "seq" })
                })
                .transpose()?
                .unwrap_or(0);
            Ok((newest.as_ref().map_or(0, |m| m.seq).max(floor), newest))
        })
        .collect()
}

fn seq_floor(kv: &dyn KvBackend, channel: &ChannelKey) -> Result<u64> {
    match kv.get(Table::ChanSeqFloor, &channel.prefix())? {
        Some(value) => value
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt { table: Table::ChanSeqFloor.name(), what: "seq" }),
        None => Ok(0),
    }
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

    /// The highest seq stored in `channel` (0 when empty). Blocking.
    pub fn last_seq(&self, channel: &ChannelKey) -> Result<u64> {
        last_seq(&*self.kv, channel)
    }

    /// For each channel, its last seq (as [`Self::last_seq`]) and its newest stored
    /// message, for all of them in two reads (a user's conversation list). Blocking.
    pub fn newest(&self, channels: &[&ChannelKey]) -> Result<Vec<(u64, Option<StoredMessage>)>> {
        newest_of(&*self.kv, channels)
    }

    /// Up to `limit` messages with `from <= seq < to` (`to == 0`: no upper bound), in
    /// `order`. Blocking.
    pub fn read(
        &self,
        channel: &ChannelKey,
        from: u64,
        to: u64,
        limit: usize,
        order: Order,
    ) -> Result<Vec<StoredMessage>> {
        let start = channel.message_key(from);
        let end = if to == 0 {
            let mut end = channel.prefix();
            end.extend_from_slice(&[0xff; 9]);
            end
        } else {
            channel.message_key(to)
        };
        self.kv
            .scan_range(Table::ChanSeqMessage, &start, &end, limit, order)?
            .into_iter()
            .map(|(key, value)| Ok(StoredMessage { seq: seq_from_key(&key)?, message: decode(&value)? }))
            .collect()
    }

    /// For each `(channel, from, to)`, up to `limit` messages with `from <= seq < to`
    /// (`to == 0`: no upper bound) in `order`: all of them in one read. Blocking.
    pub fn read_many(
        &self,
        ranges: &[(&ChannelKey, u64, u64)],
        limit: usize,
        order: Order,
    ) -> Result<Vec<Vec<StoredMessage>>> {
        let bounds: Vec<(Vec<u8>, Vec<u8>)> = ranges
            .iter()
            .map(|(channel, from, to)| {
                let end = if *to == 0 {
                    let mut end = channel.prefix();
                    end.extend_from_slice(&[0xff; 9]);
                    end
                } else {
                    channel.message_key(*to)
                };
                (channel.message_key(*from), end)
            })
            .collect();
        self.kv
            .scan_ranges(Table::ChanSeqMessage, &bounds, limit, order)?
            .into_iter()
            .map(|page| {
                page.into_iter()
                    .map(|(key, value)| Ok(StoredMessage { seq: seq_from_key(&key)?, message: decode(&value)? }))
                    .collect()
            })
            .collect()
    }

    /// The message with `message_id` and its channel, if stored. Blocking.
    pub fn by_message_id(&self, message_id: i64) -> Result<Option<(ChannelKey, StoredMessage)>> {
        let Some(key) = self.kv.get(Table::MsgIdChanSeq, &message_id.to_be_bytes())? else { return Ok(None) };
        let channel = channel_from_message_key(&key)?;
        let seq = seq_from_key(&key)?;
        Ok(self.read(&channel, seq, seq + 1, 1, Order::Ascending)?.into_iter().next().map(|m| (channel, m)))
    }

    /// The messages stored under `client_msg_no` in `channel`, by any sender, in seq
    /// order. Blocking.
    pub fn read_by_client_msg_no(&self, channel: &ChannelKey, client_msg_no: &str) -> Result<Vec<StoredMessage>> {
        if client_msg_no.is_empty() || client_msg_no.len() > usize::from(u16::MAX) {
            return Ok(Vec::new());
        }
        let prefix = channel.client_msg_no_prefix(client_msg_no);
        let mut found = Vec::new();
        for (_, value) in self.kv.scan_prefix(Table::ChanClientMsgNo, &prefix, 64)? {
            let mut r = ValueReader { rest: &value };
            let bad = || StoreError::Corrupt { table: Table::ChanClientMsgNo.name(), what: "ids" };
            if r.u8() != Some(FORMAT_V1) {
                return Err(bad());
            }
            let (_, seq) = (r.i64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
            found.extend(self.read(channel, seq, seq + 1, 1, Order::Ascending)?);
        }
        found.sort_by_key(|m| m.seq);
        Ok(found)
    }

    /// The message a sender stored under `client_msg_no`, if any. Blocking.
    pub fn by_client_msg_no(
        &self,
        channel: &ChannelKey,
        from_uid: &str,
        client_msg_no: &str,
    ) -> Result<Option<StoredMessage>> {
        let Some((_, seq)) = lookup_client_msg_no(&*self.kv, channel, from_uid, client_msg_no)? else {
            return Ok(None);
        };
        Ok(self.read(channel, seq, seq + 1, 1, Order::Ascending)?.into_iter().next())
    }

    /// Retention: removes the messages of every channel of the stored type
    /// `channel_type` stored before `cutoff_ms`, oldest first, the newest included; the
    /// channel's seq counter is kept apart (`chan_seqfloor`), so seqs never restart.
    /// Their resend index entries go with them. Appends may run meanwhile: they only add
    /// newer seqs. Blocking; works in batches of at most 1,536 deletions.
    pub fn prune_older_than(&self, channel_type: u8, cutoff_ms: i64) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        let mut from = vec![channel_type];
        let end = vec![channel_type.saturating_add(1)];
        loop {
            let first = self.kv.scan_range(Table::ChanSeqMessage, &from, &end, 1, Order::Ascending)?;
            let Some((key, _)) = first.into_iter().next() else { break };
            let channel = channel_from_message_key(&key)?;
            let removed_here = self.prune_channel(&channel, seq_from_key(&key)?, cutoff_ms)?;
            if removed_here > 0 {
                pruned.channels += 1;
                pruned.messages += removed_here;
            }
            from = channel.prefix();
            from.extend_from_slice(&[0xff; 9]);
        }
        Ok(pruned)
    }

    /// Removes `channel`'s messages stored before `cutoff_ms` from seq `first` on, oldest
    /// first. Deleting the newest writes its seq as the channel's floor in the same
    /// batch. Returns how many went. Blocking.
    fn prune_channel(&self, channel: &ChannelKey, first: u64, cutoff_ms: i64) -> Result<usize> {
        const PAGE: usize = 512;
        let last = last_seq(&*self.kv, channel)?;
        let mut next = first;
        let mut removed_here = 0;
        while next <= last {
            let page = self.kv.scan_range(
                Table::ChanSeqMessage,
                &channel.message_key(next),
                &channel.message_key(last + 1),
                PAGE,
                Order::Ascending,
            )?;
            if page.is_empty() {
                break;
            }
            let mut writes = Vec::with_capacity(4 * page.len() + 1);
            let mut stop = false;
            for (key, value) in &page {
                let message = decode(value)?;
                if message.timestamp_ms >= cutoff_ms {
                    stop = true;
                    break;
                }
                let seq = seq_from_key(key)?;
                // Expected as well as deleted: a message change racing this batch
                // (`Store::change_extra`, which expects the message) commits before it or
                // not at all.
                writes.push(Write::Expect(Table::ChanSeqMessage, key.clone(), value.clone()));
                writes.push(Write::Delete(Table::ChanSeqMessage, key.clone()));
                writes.push(Write::Delete(Table::MsgIdChanSeq, message.message_id.to_be_bytes().to_vec()));
                if !message.client_msg_no.is_empty() {
                    let index = channel.client_msg_no_key(&message.from_uid, &message.client_msg_no);
                    writes.push(Write::Delete(Table::ChanClientMsgNo, index));
                }
                if seq == last {
                    // The counter outlives the newest message.
                    writes.push(Write::Put(Table::ChanSeqFloor, channel.prefix(), last.to_be_bytes().to_vec()));
                }
                next = seq + 1;
            }
            let count = writes.iter().filter(|w| matches!(w, Write::Delete(Table::ChanSeqMessage, _))).count();
            if count > 0 {
                self.kv.write(writes, true)?;
                // Then what happened to them (revoked, edited, read, reactions): every
                // change that could still commit has, since a change commits only while
                // its message is stored. The first page sweeps from seq 0, for what a
                // crash between the two steps may have left of earlier messages.
                let from = if removed_here == 0 { 0 } else { seq_from_key(&page[0].0)? };
                crate::marks::remove_marks(&*self.kv, channel, from, next - 1)?;
                let extras = crate::extras::removal_writes(&*self.kv, channel, from, next - 1)?;
                if !extras.is_empty() {
                    self.kv.write(extras, true)?;
                }
                removed_here += count;
            }
            if stop || page.len() < PAGE {
                break;
            }
        }
        Ok(removed_here)
    }

    /// Deletes `channel`'s whole history; its seq counter stays, so a channel created
    /// again under the same id continues its seqs. Blocking.
    pub fn clear_channel(&self, channel: &ChannelKey) -> Result<usize> {
        self.prune_channel(channel, 1, i64::MAX)
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

/// Most channel counters the writer keeps in memory (about 80 bytes each).
#[cfg(not(test))]
const MAX_CACHED_COUNTERS: usize = 262_144;
/// Small in tests, so that they go through the emptying.
#[cfg(test)]
const MAX_CACHED_COUNTERS: usize = 8;

/// The writer thread's state: it alone assigns seqs.
struct Writer {
    kv: Arc<dyn KvBackend>,
    durability: Durability,
    queued: Arc<AtomicUsize>,
    /// Next seq per channel touched lately, loaded from storage on first use; emptied
    /// when it reaches [`MAX_CACHED_COUNTERS`] (every counter is in storage too).
    next_seq: HashMap<ChannelKey, u64>,
    /// The claim each fenced channel's counter was loaded under: a counter loaded under
    /// another claim is reloaded, since another owner may have appended in between.
    counted_under: HashMap<ChannelKey, Vec<u8>>,
    journal: Option<Journal>,
}

impl Writer {
    fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        loop {
            let first = match self.durability {
                Durability::Fsync => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Durability::Interval(every) => jobs.recv_timeout(every.saturating_sub(last_sync.elapsed())),
            };
            let first = match first {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Job> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let (taken, started) = (batch.len(), Instant::now());
                metrics::histogram!("hongyan_log_batch_messages").record(taken as f64);
                // A panic anywhere in a commit (a callback, the journal sink) must not end
                // the writer silently: it becomes the store's failure, and every later
                // append is refused with an error instead of waiting forever.
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.commit(batch))) {
                    self.kv.health().fail(format!("the log writer panicked: {}", panic_message(&*panic)));
                }
                metrics::histogram!("hongyan_log_commit_seconds").record(started.elapsed().as_secs_f64());
                let left = self.queued.fetch_sub(taken, Ordering::Relaxed) - taken;
                metrics::gauge!("hongyan_log_queue_depth").set(left as f64);
                unsynced = true;
            }
            if let Durability::Interval(every) = self.durability
                && unsynced
                && last_sync.elapsed() >= every
            {
                if let Err(e) = self.kv.sync() {
                    self.fail(&e);
                }
                last_sync = Instant::now();
                unsynced = false;
            }
        }
        if unsynced && !self.kv.health().has_failed() {
            let _ = self.kv.sync();
        }
    }

    fn fail(&self, e: &StoreError) {
        self.kv.health().fail(format!("message log write failed: {e}"));
    }

    fn commit(&mut self, batch: Vec<Job>) {
        if self.kv.health().has_failed() {
            for job in batch {
                if let Some(on_commit) = job.on_commit {
                    on_commit(None);
                }
                let _ = job.reply.send(Err(StoreError::Engine("the message log stopped after a storage error".into())));
            }
            return;
        }
        let durable = self.durability == Durability::Fsync;
        // Planning reads storage and the write runs the engine: either may fail, and
        // neither may take the writer thread down with a panic.
        let planned = catch_unwind(AssertUnwindSafe(|| {
            let (writes, results, journal_ids) = self.plan(&batch)?;
            self.kv.write(writes, durable)?;
            Ok((results, journal_ids))
        }))
        .unwrap_or_else(|panic| {
            Err(StoreError::Engine(format!("the log writer panicked: {}", panic_message(&*panic))))
        });
        match planned {
            Err(StoreError::Conflict(why)) if batch.iter().any(|j| j.fence.is_some()) => {
                self.commit_without_lost_claims(batch, &why);
            }
            Ok((results, journal_ids)) => {
                for ((job, result), journal_id) in batch.into_iter().zip(results).zip(journal_ids) {
                    // The message is stored whatever its listeners do; a panic in one of
                    // them is a bug that stops the node (fail-stop), but this caller is
                    // still told the truth.
                    let heard = catch_unwind(AssertUnwindSafe(|| {
                        if let (Some(journal), Some(id), Appended::New { seq, .. }) =
                            (&self.journal, journal_id, result)
                        {
                            let journaled =
                                Journaled { id, channel: job.channel.clone(), seq, message: job.message.clone() };
                            (journal.sink)(journaled);
                        }
                        if let Some(on_commit) = job.on_commit {
                            on_commit(Some(result));
                        }
                    }));
                    if let Err(panic) = heard {
                        self.kv.health().fail(format!("a commit listener panicked: {}", panic_message(&*panic)));
                    }
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(e) => self.fail_batch(batch, &e),
        }
    }

    /// A fenced batch met a conflict: the appends whose claim moved are refused (their
    /// channel has another owner now); if that leaves the rest, it is committed again,
    /// so one channel's ownership change does not refuse other channels' messages.
    fn commit_without_lost_claims(&mut self, batch: Vec<Job>, why: &str) {
        let keys: Vec<Vec<u8>> = batch.iter().filter_map(|j| j.fence.as_ref().map(|f| f.key.clone())).collect();
        let stored = match self.kv.get_many(Table::ChanOwner, &keys) {
            Ok(stored) => keys.into_iter().zip(stored).collect::<HashMap<_, _>>(),
            Err(e) => return self.fail_batch(batch, &e),
        };
        let (lost, kept): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| {
            j.fence.as_ref().is_some_and(|f| stored.get(&f.key).is_none_or(|v| v.as_deref() != Some(&f.value[..])))
        });
        if lost.is_empty() || kept.is_empty() {
            let all = if lost.is_empty() { kept } else { lost };
            return self.fail_batch(all, &StoreError::Conflict(why.to_owned()));
        }
        metrics::counter!("hongyan_log_fenced_appends_total").increment(lost.len() as u64);
        self.fail_batch(lost, &StoreError::Conflict("the channel's owner changed".into()));
        self.commit(kept);
    }

    fn fail_batch(&mut self, batch: Vec<Job>, e: &StoreError) {
        // An engine that could not be reached applied nothing, and neither did a batch
        // that met another writer's rows: the batch is refused and the log goes on (with
        // each channel's counter reloaded). Anything else (an error, or a commit whose
        // outcome is unknown) is the store's failure: fail-stop.
        let unreachable = matches!(e, StoreError::Unavailable(_) | StoreError::Conflict(_));
        if !unreachable {
            self.fail(e);
        }
        // Seqs handed out for this batch were not stored; forget them so the next
        // append reloads each channel's counter from storage.
        self.next_seq.clear();
        for job in batch {
            if let Some(on_commit) = job.on_commit {
                on_commit(None);
            }
            let error = if let StoreError::Conflict(why) = e {
                StoreError::Conflict(format!("message not stored: {why}"))
            } else if unreachable {
                StoreError::Unavailable(format!("message not stored: {e}"))
            } else {
                StoreError::Engine(format!("message not stored: {e}"))
            };
            let _ = job.reply.send(Err(error));
        }
    }

    /// Seqs, dedupe, journal ids and the writes for one batch.
    #[allow(clippy::type_complexity)]
    fn plan(&mut self, batch: &[Job]) -> Result<(Vec<Write>, Vec<Appended>, Vec<Option<u64>>)> {
        self.load_counters(batch)?;
        let mut writes = Vec::with_capacity(batch.len() * 2);
        let mut fences: Vec<&Fence> = batch.iter().filter_map(|j| j.fence.as_ref()).collect();
        fences.sort_unstable_by(|a, b| (&a.key, &a.value).cmp(&(&b.key, &b.value)));
        fences.dedup();
        for f in fences {
            writes.push(Write::Expect(Table::ChanOwner, f.key.clone(), f.value.clone()));
        }
        let mut results = Vec::with_capacity(batch.len());
        let mut journal_ids = Vec::with_capacity(batch.len());
        // Every resend-index row the batch could meet, read at once; rows the batch
        // itself writes are added as it goes. `slots` says where each message's key is.
        let mut wanted: Vec<Vec<u8>> = Vec::new();
        let slots: Vec<Option<usize>> = batch
            .iter()
            .map(|job| {
                let m = &job.message;
                (!m.client_msg_no.is_empty()).then(|| {
                    wanted.push(job.channel.client_msg_no_key(&m.from_uid, &m.client_msg_no));
                    wanted.len() - 1
                })
            })
            .collect();
        let mut known: HashMap<Vec<u8>, (i64, u64)> = HashMap::new();
        for (key, value) in wanted.iter().zip(self.kv.get_many(Table::ChanClientMsgNo, &wanted)?) {
            if let Some(value) = value {
                known.insert(key.clone(), decode_ids(&value)?);
            }
        }
        for (job, slot) in batch.iter().zip(slots) {
            let m = &job.message;
            if let Some((message_id, seq)) = slot.and_then(|i| known.get(&wanted[i]).copied()) {
                results.push(Appended::Duplicate { message_id, seq });
                journal_ids.push(None);
                continue;
            }
            let seq = self.take_seq(&job.channel)?;
            let key = job.channel.message_key(seq);
            // The message and its resend index are inserts: a row already there means
            // another writer stored this seq (or this resend), and the batch fails as a
            // conflict. (Message ids are unique by construction: their index is a put.)
            writes.push(Write::Put(Table::MsgIdChanSeq, m.message_id.to_be_bytes().to_vec(), key.clone()));
            let journal_id = self.journal.as_mut().map(|journal| {
                let id = journal.next_id;
                journal.next_id += 1;
                writes.push(Write::Put(Table::Journal, id.to_be_bytes().to_vec(), key.clone()));
                id
            });
            journal_ids.push(journal_id);
            writes.push(Write::Insert(Table::ChanSeqMessage, key, encode(m)));
            if seq == 1 {
                writes.extend(job.with_first.iter().cloned());
            }
            if let Some(i) = slot {
                let key = std::mem::take(&mut wanted[i]);
                let mut ids = Vec::with_capacity(17);
                ids.push(FORMAT_V1);
                ids.extend_from_slice(&m.message_id.to_be_bytes());
                ids.extend_from_slice(&seq.to_be_bytes());
                writes.push(Write::Insert(Table::ChanClientMsgNo, key.clone(), ids));
                known.insert(key, (m.message_id, seq));
            }
            results.push(Appended::New { message_id: m.message_id, seq });
        }
        Ok((writes, results, journal_ids))
    }

    /// Loads the seq counter of every channel in `batch` not seen yet, all at once.
    fn load_counters(&mut self, batch: &[Job]) -> Result<()> {
        // Bounded: a node that has seen millions of channels does not keep a counter
        // for each. Every earlier batch is committed, so storage has them all.
        if self.next_seq.len() >= MAX_CACHED_COUNTERS {
            self.next_seq.clear();
            self.counted_under.clear();
        }
        for job in batch {
            if let Some(fence) = &job.fence
                && self.counted_under.get(&job.channel) != Some(&fence.value)
            {
                self.next_seq.remove(&job.channel);
                self.counted_under.insert(job.channel.clone(), fence.value.clone());
            }
        }
        let mut new: Vec<&ChannelKey> =
            batch.iter().map(|j| &j.channel).filter(|c| !self.next_seq.contains_key(*c)).collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return Ok(());
        }
        for (channel, (last, _)) in new.iter().zip(newest_of(&*self.kv, &new)?) {
            self.next_seq.insert((*channel).clone(), last + 1);
        }
        Ok(())
    }

    fn take_seq(&mut self, channel: &ChannelKey) -> Result<u64> {
        let next = match self.next_seq.get_mut(channel) {
            Some(next) => next,
            None => {
                let last = last_seq(&*self.kv, channel)?;
                self.next_seq.entry(channel.clone()).or_insert(last + 1)
            }
        };
        let seq = *next;
        *next += 1;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FjallBackend, MemoryBackend};
    use std::collections::BTreeMap;

    fn msg(id: i64, from: &str, cmn: &str, body: &str) -> NewMessage {
        NewMessage {
            message_id: id,
            timestamp_ms: 1_700_000_000_000 + id,
            from_uid: from.into(),
            client_msg_no: cmn.into(),
            header: 0x02,
            setting: 0,
            expire: 0,
            topic: (id % 3 == 0).then(|| "t".to_owned()),
            payload: Bytes::from(body.to_owned()),
        }
    }

    fn memory_log() -> Arc<MessageLog> {
        Arc::new(MessageLog::open(Arc::new(MemoryBackend::new()), Durability::Fsync).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_keeps_its_contract_on_memory_and_fjall() {
        let memory: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        crate::testing::log_contract(memory.clone(), move || memory).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        crate::testing::log_contract(Arc::new(FjallBackend::open(&path).unwrap()), move || {
            Arc::new(FjallBackend::open(&path).unwrap())
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_under_a_lost_claim_store_nothing() {
        let memory: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        crate::testing::fenced_owners(memory.clone(), memory).await;
    }

    #[tokio::test]
    async fn counters_reload_from_storage_once_the_cache_is_emptied() {
        let log = memory_log();
        for round in 1..=3u64 {
            for c in 0..20i64 {
                let id = round as i64 * 100 + c;
                let got = log.append(ChannelKey::new(format!("c{c}"), 2), msg(id, "s", "", "m")).await.unwrap();
                assert_eq!(got.ids(), (id, round), "channel c{c}, round {round}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_dense_seqs_per_channel() {
        let log = memory_log();
        let channels = [ChannelKey::new("g1", 2), ChannelKey::new("g2", 2), ChannelKey::new("u1@u2", 1)];
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..8i64 {
            let (log, channels) = (log.clone(), channels.clone());
            tasks.spawn(async move {
                for i in 0..300i64 {
                    let id = t * 1000 + i;
                    let channel = channels[(id % 3) as usize].clone();
                    log.append(channel, msg(id, "s", &format!("c{id}"), &format!("m{id}"))).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let mut total = 0;
        for channel in &channels {
            let stored = log.read(channel, 1, 0, usize::MAX, Order::Ascending).unwrap();
            let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>(), "dense from 1");
            for m in &stored {
                assert_eq!(m.message.payload, Bytes::from(format!("m{}", m.message.message_id)));
            }
            assert_eq!(log.last_seq(channel).unwrap(), stored.len() as u64);
            total += stored.len();
        }
        assert_eq!(total, 2400);
    }

    #[tokio::test]
    async fn resends_return_the_original_and_store_nothing() {
        let log = memory_log();
        let g = ChannelKey::new("g", 2);
        let first = log.append(g.clone(), msg(10, "alice", "cmn-1", "hello")).await.unwrap();
        assert_eq!(first, Appended::New { message_id: 10, seq: 1 });
        let again = log.append(g.clone(), msg(11, "alice", "cmn-1", "hello")).await.unwrap();
        assert_eq!(again, Appended::Duplicate { message_id: 10, seq: 1 });
        // Another sender may use the same client_msg_no; so may the same sender elsewhere.
        assert_eq!(log.append(g.clone(), msg(12, "bob", "cmn-1", "x")).await.unwrap().ids(), (12, 2));
        assert_eq!(log.append(ChannelKey::new("h", 2), msg(13, "alice", "cmn-1", "x")).await.unwrap().ids(), (13, 1));
        // Empty client_msg_no never deduplicates.
        assert_eq!(log.append(g.clone(), msg(14, "alice", "", "a")).await.unwrap().ids(), (14, 3));
        assert_eq!(log.append(g.clone(), msg(15, "alice", "", "a")).await.unwrap().ids(), (15, 4));
        assert_eq!(log.last_seq(&g).unwrap(), 4);
        let found = log.by_client_msg_no(&g, "alice", "cmn-1").unwrap().unwrap();
        assert_eq!((found.seq, found.message.message_id), (1, 10));
        assert!(log.by_client_msg_no(&g, "alice", "nope").unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resends_racing_in_one_batch_store_once() {
        let log = memory_log();
        let g = ChannelKey::new("g", 2);
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..50 {
            let log = log.clone();
            let g = g.clone();
            tasks.spawn(async move { log.append(g, msg(id, "alice", "same", "once")).await.unwrap() });
        }
        let mut results = Vec::new();
        while let Some(r) = tasks.join_next().await {
            results.push(r.unwrap());
        }
        assert_eq!(results.iter().filter(|r| matches!(r, Appended::New { .. })).count(), 1);
        let ids: std::collections::HashSet<_> = results.iter().map(|r| r.ids()).collect();
        assert_eq!(ids.len(), 1, "every resend got the original's ids");
        assert_eq!(log.last_seq(&g).unwrap(), 1);
    }

    #[tokio::test]
    async fn first_message_writes_land_with_seq_1_only() {
        let kv = Arc::new(MemoryBackend::new());
        let log = MessageLog::open(kv.clone(), Durability::Fsync).unwrap();
        let g = ChannelKey::new("g", 2);
        let side = |v: u8| vec![Write::Put(Table::ChanWhitelist, b"side".to_vec(), vec![v])];
        log.enqueue_with_first(g.clone(), msg(1, "s", "c1", "m"), side(1), None).unwrap().await.unwrap();
        assert_eq!(kv.get(Table::ChanWhitelist, b"side").unwrap(), Some(vec![1]));
        // A resend of the first message writes nothing, its side writes included.
        let dup = log.enqueue_with_first(g.clone(), msg(2, "s", "c1", "m"), side(2), None).unwrap().await.unwrap();
        assert!(matches!(dup, Appended::Duplicate { .. }));
        // Nor does a later message.
        let second = log.enqueue_with_first(g, msg(3, "s", "c3", "m"), side(3), None).unwrap().await.unwrap();
        assert_eq!(second.ids(), (3, 2));
        assert_eq!(kv.get(Table::ChanWhitelist, b"side").unwrap(), Some(vec![1]));
    }

    #[tokio::test]
    async fn retention_removes_old_messages_the_newest_too_but_keeps_the_counter() {
        let kv = Arc::new(MemoryBackend::new());
        let log = MessageLog::open(kv.clone(), Durability::Fsync).unwrap();
        let (g, cmd, h, p) =
            (ChannelKey::new("g", 2), ChannelKey::new("g", 0x82), ChannelKey::new("h", 2), ChannelKey::new("a@b", 1));
        // msg(id) is stamped 1_700_000_000_000 + id.
        for id in 1..=5 {
            log.append(g.clone(), msg(id, "s", &format!("c{id}"), "m")).await.unwrap();
        }
        log.append(h.clone(), msg(1, "s", "", "m")).await.unwrap();
        log.append(h.clone(), msg(2, "s", "", "m")).await.unwrap();
        log.append(cmd.clone(), msg(1, "s", "", "m")).await.unwrap();
        log.append(p.clone(), msg(1, "s", "", "m")).await.unwrap();
        log.append(p.clone(), msg(2, "s", "", "m")).await.unwrap();

        let cutoff = 1_700_000_000_000 + 4; // ids 1..=3 are older
        let pruned = log.prune_older_than(2, cutoff).unwrap();
        assert_eq!(pruned, Pruned { channels: 2, messages: 5 });
        let seqs = |c: &ChannelKey| {
            log.read(c, 1, 0, 100, Order::Ascending).unwrap().iter().map(|m| m.seq).collect::<Vec<_>>()
        };
        assert_eq!(seqs(&g), [4, 5]);
        assert_eq!(seqs(&h), Vec::<u64>::new(), "the newest goes too when it is old");
        assert_eq!(log.last_seq(&h).unwrap(), 2, "but the counter stays");
        assert_eq!(seqs(&cmd), [1], "command channels are their own channels");
        assert_eq!(seqs(&p), [1, 2], "other types are untouched");
        assert!(log.by_client_msg_no(&g, "s", "c1").unwrap().is_none(), "the resend index went too");
        assert!(log.by_message_id(3).unwrap().is_none(), "and the id index");
        assert_eq!(log.by_message_id(5).unwrap().map(|(c, m)| (c, m.seq)), Some((g.clone(), 5)));
        assert_eq!(log.by_client_msg_no(&g, "s", "c4").unwrap().map(|m| m.seq), Some(4));
        assert_eq!(log.read_by_client_msg_no(&g, "c4").unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [4]);
        assert!(log.read_by_client_msg_no(&g, "c").unwrap().is_empty(), "a prefix of a client_msg_no is not it");
        drop(log);
        // Seqs continue after a restart, from the counter of an emptied channel too.
        let log = MessageLog::open(kv, Durability::Fsync).unwrap();
        assert_eq!(log.append(h.clone(), msg(9, "s", "", "m")).await.unwrap().ids(), (9, 3));
        assert_eq!(log.prune_older_than(2, cutoff).unwrap(), Pruned::default(), "nothing old is left");
        // Clearing a channel deletes everything; its seqs carry on.
        assert_eq!(log.clear_channel(&g).unwrap(), 2);
        assert!(log.read(&g, 1, 0, 10, Order::Ascending).unwrap().is_empty());
        assert!(log.by_message_id(5).unwrap().is_none());
        assert_eq!(log.append(g.clone(), msg(10, "s", "c1", "m")).await.unwrap().ids(), (10, 6), "c1 is free again");
    }

    #[tokio::test]
    async fn retention_removes_extras_after_their_messages_and_what_a_crash_left_between() {
        let kv: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        let log = MessageLog::open(kv.clone(), Durability::Fsync).unwrap();
        let store = crate::Store::new(kv.clone());
        let g = ChannelKey::new("g", 2);
        for id in 1..=4 {
            log.append(g.clone(), msg(id, "s", "", "m")).await.unwrap();
        }
        let revoke = |e: &mut crate::MessageExtra| {
            e.revoked = true;
            Ok::<_, StoreError>(crate::ExtraChange::Changed(vec![store.read_mark_write(&g, e.seq, "r", 1)]))
        };
        for seq in 1..=4 {
            assert!(store.change_extra(&g, seq, seq as i64, revoke).unwrap().is_some());
        }
        // A crash between retention's two steps: message 1 gone, its extra and mark left.
        kv.write(vec![Write::Delete(Table::ChanSeqMessage, g.message_key(1))], true).unwrap();
        let cutoff = 1_700_000_000_000 + 3; // message 2 is older (1 is gone already)
        assert_eq!(log.prune_older_than(2, cutoff).unwrap(), Pruned { channels: 1, messages: 1 });
        let left: Vec<u64> = store.extras_since(&g, 0, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(left, [3, 4], "message 1's extra went with the next retention, 2's with its message");
        assert!(store.read_marks(&g, &[1, 2], "r").unwrap().iter().all(Option::is_none));
        assert_eq!(store.change_extra(&g, 2, 2, revoke).unwrap(), None, "no change after its message");
    }

    #[tokio::test]
    async fn oversized_strings_are_refused_and_the_writer_lives_on() {
        let log = memory_log();
        let g = ChannelKey::new("g", 2);
        let huge = msg(1, "s", &"n".repeat(70_000), "m");
        assert!(matches!(log.append(g.clone(), huge).await, Err(StoreError::TooLong { .. })));
        assert_eq!(log.append(g, msg(2, "s", "ok", "m")).await.unwrap().ids(), (2, 1));
        assert!(!log.has_failed());
    }

    #[tokio::test]
    async fn commit_callbacks_run_in_commit_order() {
        let log = memory_log();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut pending = Vec::new();
        for id in 1..=100 {
            let seen = seen.clone();
            let on_commit: OnCommit = Box::new(move |a| seen.lock().unwrap().push(a.unwrap().ids()));
            pending.push(log.enqueue(ChannelKey::new("g", 2), msg(id, "s", "", "m"), Some(on_commit)).unwrap());
        }
        for p in pending {
            p.await.unwrap();
        }
        let expected: Vec<(i64, u64)> = (1..=100).map(|i| (i, i as u64)).collect();
        assert_eq!(*seen.lock().unwrap(), expected);
    }

    #[tokio::test]
    async fn reads_by_range_limit_and_order() {
        let log = memory_log();
        let g = ChannelKey::new("g", 2);
        for id in 1..=10 {
            log.append(g.clone(), msg(id, "s", "", "m")).await.unwrap();
        }
        let seqs = |v: Vec<StoredMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.read(&g, 3, 6, 100, Order::Ascending).unwrap()), [3, 4, 5]);
        assert_eq!(seqs(log.read(&g, 3, 0, 2, Order::Ascending).unwrap()), [3, 4]);
        assert_eq!(seqs(log.read(&g, 1, 0, 3, Order::Descending).unwrap()), [10, 9, 8]);
        assert_eq!(seqs(log.read(&g, 11, 0, 3, Order::Ascending).unwrap()), Vec::<u64>::new());
        assert!(
            log.read(&ChannelKey::new("g", 3), 1, 0, 10, Order::Ascending).unwrap().is_empty(),
            "type is part of the key"
        );
        let m = &log.read(&g, 3, 4, 1, Order::Ascending).unwrap()[0];
        assert_eq!(m.message, msg(3, "s", "", "m"), "every field round-trips");
        assert_eq!(log.by_message_id(4).unwrap().map(|(c, m)| (c, m.seq)), Some((g.clone(), 4)));
        assert!(log.by_message_id(99).unwrap().is_none());
    }

    #[tokio::test]
    async fn seqs_and_dedupe_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let g = ChannelKey::new("g", 2);
        {
            let log = MessageLog::open(Arc::new(FjallBackend::open(dir.path()).unwrap()), Durability::Fsync).unwrap();
            for id in 1..=5 {
                log.append(g.clone(), msg(id, "s", &format!("c{id}"), "m")).await.unwrap();
            }
        }
        let log = MessageLog::open(
            Arc::new(FjallBackend::open(dir.path()).unwrap()),
            Durability::Interval(Duration::from_millis(20)),
        )
        .unwrap();
        assert_eq!(
            log.append(g.clone(), msg(3, "s", "c3", "m")).await.unwrap(),
            Appended::Duplicate { message_id: 3, seq: 3 }
        );
        assert_eq!(
            log.append(g.clone(), msg(6, "s", "c6", "m")).await.unwrap(),
            Appended::New { message_id: 6, seq: 6 }
        );
        assert_eq!(log.read(&g, 1, 0, 100, Order::Ascending).unwrap().len(), 6);
    }

    /// Memory storage whose writes go through `hook` (which may fail, panic or pass
    /// them on to the memory backend it is given).
    struct Hooked {
        inner: MemoryBackend,
        hook: Box<WriteHook>,
    }

    type WriteHook = dyn Fn(&MemoryBackend, Vec<Write>, bool) -> Result<()> + Send + Sync;

    impl std::fmt::Debug for Hooked {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Hooked").finish_non_exhaustive()
        }
    }

    impl KvBackend for Hooked {
        fn health(&self) -> &Arc<crate::Health> {
            self.inner.health()
        }
        fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>> {
            self.inner.get(t, k)
        }
        fn scan_prefix(&self, t: Table, p: &[u8], l: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.inner.scan_prefix(t, p, l)
        }
        fn scan_range(&self, t: Table, s: &[u8], e: &[u8], l: usize, o: Order) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.inner.scan_range(t, s, e, l, o)
        }
        fn write(&self, w: Vec<Write>, d: bool) -> Result<()> {
            (self.hook)(&self.inner, w, d)
        }
        fn sync(&self) -> Result<()> {
            Ok(())
        }
    }

    fn hooked(hook: impl Fn(&MemoryBackend, Vec<Write>, bool) -> Result<()> + Send + Sync + 'static) -> Arc<Hooked> {
        Arc::new(Hooked { inner: MemoryBackend::new(), hook: Box::new(hook) })
    }

    #[tokio::test]
    async fn a_failed_write_acknowledges_nothing_from_then_on() {
        // Writes fail after the first, as on a disk that filled up.
        let ok = std::sync::atomic::AtomicUsize::new(1);
        let kv = hooked(move |inner, w, d| {
            if ok.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                return Err(StoreError::Engine("disk full".into()));
            }
            inner.write(w, d)
        });
        let log = MessageLog::open(kv, Durability::Fsync).unwrap();
        let g = ChannelKey::new("g", 2);
        assert!(log.append(g.clone(), msg(1, "s", "", "m")).await.is_ok());
        let outcome = Arc::new(Mutex::new(Vec::new()));
        let seen = outcome.clone();
        let on_commit: OnCommit = Box::new(move |a| seen.lock().unwrap().push(a));
        assert!(log.enqueue(g.clone(), msg(2, "s", "", "m"), Some(on_commit)).unwrap().await.is_err());
        assert_eq!(*outcome.lock().unwrap(), [None], "the callback hears of the failure too");
        assert!(log.has_failed());
        assert!(log.health().failure().is_some_and(|f| f.reason.contains("disk full")), "the reason is kept");
        assert!(log.append(g.clone(), msg(3, "s", "", "m")).await.is_err(), "fail-stop");
        assert_eq!(log.last_seq(&g).unwrap(), 1);
    }

    #[tokio::test]
    async fn a_panic_in_the_engine_fails_the_batch_and_stops_the_log_without_killing_the_writer() {
        // Writes panic, as an engine does on input it cannot take.
        let log = MessageLog::open(hooked(|_, _, _| panic!("the engine gave up")), Durability::Fsync).unwrap();
        let g = ChannelKey::new("g", 2);
        let outcome = Arc::new(Mutex::new(Vec::new()));
        let seen = outcome.clone();
        let on_commit: OnCommit = Box::new(move |a| seen.lock().unwrap().push(a));
        let first = log.enqueue(g.clone(), msg(1, "s", "c1", "m"), Some(on_commit)).unwrap().await;
        assert!(matches!(first, Err(StoreError::Engine(ref m)) if m.contains("the engine gave up")), "{first:?}");
        assert_eq!(*outcome.lock().unwrap(), [None], "the sender hears that nothing was stored");
        assert!(log.health().failure().is_some_and(|f| f.reason.contains("panicked")));
        // The writer is alive and answers at once: refused, not left waiting.
        let later = tokio::time::timeout(Duration::from_secs(5), log.append(g, msg(2, "s", "c2", "m"))).await;
        assert!(matches!(later, Ok(Err(StoreError::Engine(_)))), "{later:?}");
    }

    #[tokio::test]
    async fn a_panicking_commit_callback_becomes_a_failure_not_a_silent_stop() {
        let log = memory_log();
        let g = ChannelKey::new("g", 2);
        let on_commit: OnCommit = Box::new(|_| panic!("callback bug"));
        let stored = log.enqueue(g.clone(), msg(1, "s", "", "m"), Some(on_commit)).unwrap().await;
        assert_eq!(stored.unwrap().ids(), (1, 1), "the message was stored, and its sender is told so");
        assert!(log.health().failure().is_some_and(|f| f.reason.contains("callback bug")));
        let later = tokio::time::timeout(Duration::from_secs(5), log.append(g, msg(2, "s", "", "m"))).await;
        assert!(matches!(later, Ok(Err(_))), "refused at once: {later:?}");
    }

    /// The one-packet outage: a client_msg_no at the protocol's string limit made the
    /// resend-index key longer than the embedded engine takes, and the engine panicked
    /// in the writer thread. On the real engine it is now refused, and the log lives on.
    #[tokio::test]
    async fn a_key_too_long_for_the_engine_is_refused_on_fjall_and_the_log_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = MessageLog::open(Arc::new(FjallBackend::open(dir.path()).unwrap()), Durability::Fsync).unwrap();
        let g = ChannelKey::new("g", 2);
        for cmn_len in [usize::from(u16::MAX), usize::from(u16::MAX) - 10] {
            let huge = msg(1, "sender", &"n".repeat(cmn_len), "m");
            assert!(matches!(log.append(g.clone(), huge).await, Err(StoreError::TooLong { .. })), "{cmn_len}");
        }
        assert_eq!(log.append(g.clone(), msg(2, "s", "ok", "m")).await.unwrap().ids(), (2, 1));
        assert!(!log.has_failed());
        // The first-message rows are checked too.
        let bad_row = vec![Write::Put(Table::UidChanConversation, vec![b'k'; crate::MAX_KEY_LEN + 1], vec![1])];
        let h = ChannelKey::new("h", 2);
        assert!(matches!(
            log.enqueue_with_first(h.clone(), msg(3, "s", "", "m"), bad_row, None),
            Err(StoreError::TooLong { .. })
        ));
        assert_eq!(log.append(h, msg(4, "s", "", "m")).await.unwrap().ids(), (4, 1));
        assert!(!log.has_failed());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Against a model: each channel holds exactly the first copy of every
        /// (sender, client_msg_no), in append order, at seqs 1..=n.
        #[test]
        fn log_matches_a_model(ops in proptest::collection::vec((0u8..3, 0u8..3, 0u8..6), 1..80)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let log = memory_log();
                let mut model: BTreeMap<u8, Vec<(i64, String, String)>> = BTreeMap::new();
                for (i, (channel, sender, cmn)) in ops.into_iter().enumerate() {
                    let key = ChannelKey::new(format!("c{channel}"), 2);
                    let (from, cmn) = (format!("u{sender}"), if cmn == 0 { String::new() } else { format!("n{cmn}") });
                    let got = log.append(key, msg(i as i64, &from, &cmn, "p")).await.unwrap();
                    let entries = model.entry(channel).or_default();
                    let earlier = entries.iter().position(|(_, f, c)| !cmn.is_empty() && *f == from && *c == cmn);
                    match earlier {
                        Some(pos) => assert_eq!(got, Appended::Duplicate { message_id: entries[pos].0, seq: pos as u64 + 1 }),
                        None => {
                            entries.push((i as i64, from, cmn));
                            assert_eq!(got, Appended::New { message_id: i as i64, seq: entries.len() as u64 });
                        }
                    }
                }
                for (channel, entries) in model {
                    let stored = log.read(&ChannelKey::new(format!("c{channel}"), 2), 1, 0, usize::MAX, Order::Ascending).unwrap();
                    let ids: Vec<i64> = stored.iter().map(|m| m.message.message_id).collect();
                    assert_eq!(ids, entries.iter().map(|e| e.0).collect::<Vec<_>>());
                }
            });
        }
    }

    #[tokio::test]
    async fn the_journal_hands_over_new_messages_and_keeps_the_rest_across_restarts() {
        let kv: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink =
            |heard: Arc<Mutex<Vec<Journaled>>>| -> JournalSink { Box::new(move |j| heard.lock().unwrap().push(j)) };
        let (log, backlog) = MessageLog::open_journaled(kv.clone(), Durability::Fsync, sink(heard.clone())).unwrap();
        assert!(backlog.is_empty());
        let g = ChannelKey::new("g1", 2);
        for i in 1..=3 {
            log.append(g.clone(), msg(i, "u1", &format!("c{i}"), "hi")).await.unwrap();
        }
        // A resend stores nothing and journals nothing.
        log.append(g.clone(), msg(9, "u1", "c2", "again")).await.unwrap();
        log.close();
        let heard_ids: Vec<(u64, u64)> = heard.lock().unwrap().iter().map(|j| (j.id, j.seq)).collect();
        assert_eq!(heard_ids, vec![(1, 1), (2, 2), (3, 3)]);

        // The consumer took in the first; the other two come back as the backlog.
        kv.write(vec![Write::Delete(Table::Journal, 1u64.to_be_bytes().to_vec())], true).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (log, backlog) = MessageLog::open_journaled(kv.clone(), Durability::Fsync, sink(heard.clone())).unwrap();
        assert_eq!(backlog.iter().map(|j| (j.id, j.seq)).collect::<Vec<_>>(), vec![(2, 2), (3, 3)]);
        assert_eq!(backlog[0].message.client_msg_no, "c2");
        assert_eq!(backlog[0].channel, g);
        log.append(g.clone(), msg(4, "u1", "c4", "new")).await.unwrap();
        log.close();
        // Ids continue after the last row; seqs after the last message.
        assert_eq!(heard.lock().unwrap().iter().map(|j| (j.id, j.seq)).collect::<Vec<_>>(), vec![(4, 4)]);
    }
}
