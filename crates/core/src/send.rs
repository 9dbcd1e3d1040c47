//! The send pipeline: admission of a SEND (from a connection or the app server) in
//! WuKongIM's order, the append enqueued on the log under the channel's claim, and the
//! SENDACK once it is durable. Delivery is `fanout.rs`'s.

use std::sync::Arc;

use bytes::Bytes;
use hongyan_proto::{HeaderFlags, Packet, ReasonCode, Send, Sendack};
use hongyan_store::ChannelInfo;
use hongyan_store::{
    Appended, ChannelKey, Conversation, Fence, MemberList, NewMessage, OnCommit, PendingAppend, StoreError, Write,
};
use tracing::{error, warn};

use crate::channel::{CUSTOMER_SERVICE, INFO, MAX_TYPE, PERSON, base_channel, command_channel, person_channel_id};
use crate::channels::{ChannelState, ListChange};
use crate::session::{Conn, is_valid_client_msg_no, is_valid_uid};
use crate::{Core, Delivery, cluster, commands, fanout, now_ms, owners};

/// A message the app server sends over HTTP.
#[derive(Clone, Debug, Default)]
pub struct AppSend {
    /// The sender; empty for the system uid.
    pub from_uid: String,
    /// The channel (for person chat: the recipient's uid).
    pub channel_id: String,
    /// The channel type.
    pub channel_type: u8,
    /// Deduplication key; resends with the same one return the original.
    pub client_msg_no: String,
    /// NoPersist, RedDot, SyncOnce.
    pub header: HeaderFlags,
    /// Seconds until expiry, 0 = never.
    pub expire: u32,
    /// The payload (plaintext; encrypted per connection on delivery).
    pub payload: Bytes,
    /// Send to just these uids (requires SyncOnce) instead of `channel_id`.
    pub subscribers: Vec<String>,
}

/// What [`Core::send_as_app`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSent {
    /// The message id (the original's for a resend).
    pub message_id: i64,
    /// The seq in its channel (0 for NoPersist).
    pub seq: u64,
    /// The client_msg_no, given or made up.
    pub client_msg_no: String,
}

/// What [`Core::submit`] did.
pub(crate) enum Submitted {
    /// Queued for storage; await for the ids.
    Stored(PendingAppend),
    /// NoPersist: delivered, not stored.
    OnlineOnly,
}

/// Where a SEND's SENDACK goes and what it echoes; answering records how long the
/// client waited (`hongyan_core_sendack_seconds`, from the SEND's arrival).
#[derive(Clone)]
pub(crate) struct Answer {
    pub(crate) conn: Arc<Conn>,
    pub(crate) flags: HeaderFlags,
    pub(crate) client_seq: u32,
    pub(crate) arrived: std::time::Instant,
}

impl Answer {
    pub(crate) fn new(conn: &Arc<Conn>, send: &Send) -> Self {
        Self { conn: conn.clone(), flags: send.flags, client_seq: send.client_seq, arrived: std::time::Instant::now() }
    }

    /// Queues the SENDACK.
    pub(crate) fn send(&self, message_id: i64, message_seq: u64, reason_code: ReasonCode) {
        metrics::histogram!("hongyan_core_sendack_seconds").record(self.arrived.elapsed().as_secs_f64());
        let ack = Sendack {
            flags: self.flags,
            message_id,
            client_seq: self.client_seq,
            message_seq: message_seq as u32,
            reason_code,
        };
        let _ = self.conn.send(&Packet::Sendack(ack));
    }
}

/// Who gets the SENDACK of a stored message.
pub(crate) struct AckTo {
    pub(crate) answer: Answer,
    /// The connection's in-flight slot, given back once the SENDACK is queued.
    pub(crate) _slot: SendSlot,
    /// The id given at admission (a resend is answered with the original's).
    pub(crate) message_id: i64,
}

/// How an admitted SEND is stored: under which id and claim, answered to whom,
/// delivered to all but which connection.
pub(crate) struct Submission {
    /// The id given at arrival.
    pub(crate) message_id: i64,
    /// The sending connection on this node, which gets the SENDACK.
    pub(crate) ack_to: Option<AckTo>,
    /// The ownership claim the append is made under (in a cluster).
    pub(crate) fence: Option<Fence>,
    /// The sending connection, wherever it is.
    pub(crate) origin: cluster::Origin,
}

/// One of a connection's SENDs in flight (admitted, SENDACK not yet queued). The
/// session reads no further packet while all of them are taken, so a client faster
/// than the server is slowed by TCP instead of buffered.
pub(crate) struct SendSlot(Arc<Conn>);

impl SendSlot {
    pub(crate) async fn take(conn: &Arc<Conn>) -> Option<Self> {
        conn.sends_in_flight.acquire().await.ok()?.forget();
        Some(Self(conn.clone()))
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        self.0.sends_in_flight.add_permits(1);
    }
}

pub(crate) fn storage(e: StoreError) -> ReasonCode {
    match e {
        StoreError::Datasource(_) => warn!(error = %e, "the datasource failed while handling a message"),
        StoreError::Busy(_) | StoreError::TooLong { .. } => tracing::debug!(error = %e, "message refused"),
        _ => error!(error = %e, "storage failed while handling a message"),
    }
    ReasonCode::SystemError
}

/// Why [`Core::send_as_app`] did not send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Refused with this reason code (SystemError: storage failed).
    #[error("message refused: {}", .0.name())]
    Refused(ReasonCode),
    /// The channel is not stored here and the datasource did not describe it.
    #[error("{0}")]
    Datasource(String),
}

impl From<ReasonCode> for SendError {
    fn from(reason: ReasonCode) -> Self {
        Self::Refused(reason)
    }
}

impl SendError {
    pub(crate) fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::Datasource(why) => Self::Datasource(why),
            other => Self::Refused(storage(other)),
        }
    }

    /// The reason code a binary client would get (SystemError for a datasource failure).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::Refused(reason) => *reason,
            Self::Datasource(_) => ReasonCode::SystemError,
        }
    }
}

impl Core {
    /// The channels whose state admission reads: the sender's own person channel (ban,
    /// mute) and the target: a group, or the peer's person channel (its blacklist).
    pub(crate) fn admission_keys(sender: &str, send: &Send) -> (ChannelKey, Option<ChannelKey>) {
        let valid = send.channel_type != 0 && send.channel_type <= MAX_TYPE && is_valid_uid(&send.channel_id);
        (ChannelKey::new(sender, PERSON), valid.then(|| ChannelKey::new(send.channel_id.clone(), send.channel_type)))
    }

    /// Checks a SEND in WuKongIM's order against the channels' states and returns the
    /// stored channel (the command channel for SyncOnce), the plaintext payload and the
    /// rows the channel's first message must bring, or the SENDACK reason code.
    pub(crate) fn admit(
        &self,
        sender: &str,
        send: &Send,
        open: impl FnOnce() -> Result<Bytes, ReasonCode>,
        sender_state: &ChannelState,
        target: Option<&ChannelState>,
    ) -> Result<(ChannelKey, Bytes, Vec<Write>), ReasonCode> {
        if sender_state.info.send_ban {
            return Err(ReasonCode::SendBan);
        }
        let plain = open()?;
        let channel_type = send.channel_type;
        if channel_type == 0 || channel_type > MAX_TYPE {
            return Err(ReasonCode::NotSupportChannelType);
        }
        if channel_type == crate::channel::TEMP {
            // Temporary channels exist for the app server's sends to a list of uids.
            return Err(ReasonCode::NotSupportChannelType);
        }
        let Some(target) = target.filter(|_| is_valid_uid(&send.channel_id)) else {
            return Err(ReasonCode::ChannelIdError);
        };
        let sync_once = send.flags.sync_once;
        if channel_type == PERSON {
            let peer = &send.channel_id;
            if *peer == self.settings.system_uid {
                return Err(ReasonCode::ChannelIdError);
            }
            // Anyone may message a system account; a system account may message anyone.
            let privileged = self.is_system_account(peer) || self.is_system_account(sender);
            if !privileged && target.blacklist.contains(sender) {
                return Err(ReasonCode::InBlacklist);
            }
            let whitelisted = target.whitelist.is_empty() || target.whitelist.contains(sender);
            if self.settings.person_whitelist && !privileged && !whitelisted {
                return Err(ReasonCode::NotInWhitelist);
            }
            let key = self.stored_channel(ChannelKey::new(person_channel_id(sender, peer), PERSON), sync_once);
            let rows = self.person_rows(&key, [sender, peer]);
            return Ok((key, plain, rows));
        }
        let id = &send.channel_id;
        Self::check_open(target.info)?;
        let key = self.stored_channel(ChannelKey::new(id.clone(), channel_type), sync_once);
        if matches!(channel_type, CUSTOMER_SERVICE | INFO) || self.is_system_account(sender) {
            return Ok((key, plain, Vec::new()));
        }
        if target.blacklist.contains(sender) {
            return Err(ReasonCode::InBlacklist);
        }
        if !target.subscribers.contains(sender) {
            return Err(ReasonCode::SubscriberNotExist);
        }
        if !target.whitelist.is_empty() && !target.whitelist.contains(sender) {
            return Err(ReasonCode::NotInWhitelist);
        }
        Ok((key, plain, Vec::new()))
    }

    /// A banned or disbanded channel takes no messages, from anyone.
    pub(crate) fn check_open(info: ChannelInfo) -> Result<(), ReasonCode> {
        if info.ban {
            return Err(ReasonCode::Ban);
        }
        if info.disband {
            return Err(ReasonCode::Disband);
        }
        Ok(())
    }

    /// Where a message to `channel` is stored: SyncOnce messages go to its command channel.
    pub(crate) fn stored_channel(&self, channel: ChannelKey, sync_once: bool) -> ChannelKey {
        if sync_once { command_channel(&channel) } else { channel }
    }

    /// The conversation rows of a person chat (cursor 0; own messages never count as
    /// unread anyway). The log writes them with the channel's first message only, in
    /// the same atomic batch, so an acknowledged message always has its conversations.
    pub(crate) fn person_rows(&self, channel: &ChannelKey, uids: [&str; 2]) -> Vec<Write> {
        let mut rows = Vec::with_capacity(2);
        for (i, uid) in uids.iter().enumerate() {
            if *uid != self.settings.system_uid && (i == 0 || uids[0] != uids[1]) {
                rows.push(self.store.conversation_write(uid, channel, Conversation::default()));
            }
        }
        rows
    }

    /// The states of `keys` from the cache, loading the missing ones off the async
    /// workers.
    pub(crate) async fn channel_states(
        self: &Arc<Self>,
        keys: Vec<ChannelKey>,
    ) -> Result<Vec<Arc<ChannelState>>, StoreError> {
        let cached: Option<Vec<_>> = keys.iter().map(|k| self.channels.cached(k)).collect();
        if let Some(states) = cached {
            return Ok(states);
        }
        let core = self.clone();
        tokio::task::spawn_blocking(move || keys.iter().map(|k| core.channel_state(k)).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|e| StoreError::Engine(format!("channel load task failed: {e}")))?
    }

    pub(crate) async fn on_send(self: &Arc<Self>, conn: &Arc<Conn>, send: Send) {
        // Wait for one of the connection's in-flight slots first: while they are all
        // taken, the session reads nothing more from this client.
        let Some(slot) = SendSlot::take(conn).await else { return };
        let message_id = self.ids.next_id();
        let answer = Answer::new(conn, &send);
        let ack = |message_id: i64, message_seq: u64, reason_code: ReasonCode| {
            answer.send(message_id, message_seq, reason_code);
        };
        // In a cluster, a message is stored by its channel's owner; online-only ones are
        // delivered from where they arrive.
        let owned = if send.flags.no_persist {
            None
        } else {
            Self::owned_channel(&conn.uid, &send.channel_id, send.channel_type)
        };
        let fence = match self.placement(owned.as_ref()).await {
            Ok(owners::Placement::Local(fence)) => fence,
            Ok(owners::Placement::Remote(node)) => {
                self.forward_client_send(conn, send.clone(), message_id, node, &answer).await;
                drop(slot);
                return;
            }
            Err(reason) => return ack(message_id, 0, reason),
        };
        // The SENDACK goes out from the log's commit callback, once the append is
        // durable, without holding up the connection's next packet.
        let ack_to = AckTo { answer: answer.clone(), _slot: slot, message_id };
        let open = || match &conn.cipher {
            Some(cipher) => cipher.open_send(&send).map(Bytes::from).map_err(|e| e.reason_code()),
            None => Ok(send.payload.clone()),
        };
        let how = Submission { message_id, ack_to: Some(ack_to), fence, origin: self.here(conn.id) };
        match self.admit_and_submit(&conn.uid, &send, open, how).await {
            Ok(Submitted::Stored(_)) => {}
            Ok(Submitted::OnlineOnly) => ack(message_id, 0, ReasonCode::Success),
            Err(reason) => ack(message_id, 0, reason),
        }
    }

    /// Admits a SEND from `sender` (in WuKongIM's order of checks; `open` gives the
    /// plaintext payload) and submits it. A refusal is counted here and returned.
    pub(crate) async fn admit_and_submit(
        self: &Arc<Self>,
        sender: &str,
        send: &Send,
        open: impl FnOnce() -> Result<Bytes, ReasonCode>,
        how: Submission,
    ) -> Result<Submitted, ReasonCode> {
        let Submission { message_id, ack_to, fence, origin } = how;
        let (sender_key, target_key) = Self::admission_keys(sender, send);
        let has_target = target_key.is_some();
        let admitted = match self.channel_states([sender_key].into_iter().chain(target_key).collect()).await {
            Ok(states) => {
                let target = if has_target { states.get(1).map(|s| &**s) } else { None };
                self.admit(sender, send, open, &states[0], target)
            }
            Err(e) => Err(storage(e)),
        };
        let (channel, payload, rows) = admitted.inspect_err(|reason| {
            metrics::counter!("hongyan_core_sends_total", "result" => reason.name()).increment(1);
        })?;
        let message = NewMessage {
            message_id,
            timestamp_ms: now_ms(),
            from_uid: sender.to_owned(),
            client_msg_no: send.client_msg_no.clone(),
            header: send.flags.bits() & !HeaderFlags::DUP,
            setting: send.setting.0,
            expire: send.expire,
            topic: send.topic.clone(),
            payload,
        };
        self.submit(channel, message, ack_to, rows, fence, origin).await
    }

    /// Stores (unless NoPersist) and delivers an admitted message; `ack_to` is the
    /// sending connection, which gets the SENDACK once the append is decided and not
    /// its own message back. Waits for the message's share of the pipeline budget,
    /// then enqueues without awaiting anything else, so calls from one connection are
    /// stored in the order they are made.
    pub(crate) async fn submit(
        &self,
        channel: ChannelKey,
        message: NewMessage,
        ack_to: Option<AckTo>,
        rows: Vec<Write>,
        fence: Option<Fence>,
        origin: cluster::Origin,
    ) -> Result<Submitted, ReasonCode> {
        if !is_valid_client_msg_no(&message.client_msg_no) {
            metrics::counter!("hongyan_core_sends_total", "result" => "bad_client_msg_no").increment(1);
            return Err(ReasonCode::NotAllowSend);
        }
        let budget = self.budget(&message).await;
        if self.health().has_failed() {
            metrics::counter!("hongyan_core_sends_total", "result" => "storage_failed").increment(1);
            return Err(ReasonCode::SystemError);
        }
        if HeaderFlags::from_bits(message.header).no_persist {
            // Online only: not stored, no seq, delivered at once.
            metrics::counter!("hongyan_core_sends_total", "result" => "no_persist").increment(1);
            if let Some(observer) = self.observer() {
                observer.unstored(&channel, &message, None);
            }
            let delivery = Delivery {
                channel,
                message,
                seq: 0,
                origin,
                only_to: None,
                arrival: fanout::Arrival::Here,
                _budget: budget,
            };
            let _ = self.shard(&delivery.channel).send(delivery).await;
            return Ok(Submitted::OnlineOnly);
        }
        // An append refused under a claim may mean the channel moved: forget the claim.
        let claim = fence.is_some().then(|| self.owners.get().cloned()).flatten().map(|o| (o, base_channel(&channel)));
        let on_commit: OnCommit = {
            let shard = self.shard(&channel).clone();
            let (channel, message) = (channel.clone(), message.clone());
            Box::new(move |appended| {
                if let (None, Some((owners, owned))) = (&appended, &claim) {
                    owners.release(owned);
                }
                let label = match appended {
                    Some(Appended::New { seq, .. }) => {
                        // On the writer thread: a full shard holds up the writer, which
                        // holds up senders through the pipeline budget.
                        let delivery = Delivery {
                            channel,
                            message,
                            seq,
                            origin,
                            only_to: None,
                            arrival: fanout::Arrival::Here,
                            _budget: budget,
                        };
                        let _ = shard.blocking_send(delivery);
                        "stored"
                    }
                    Some(Appended::Duplicate { .. }) => "duplicate",
                    None => "not_stored",
                };
                metrics::counter!("hongyan_core_sends_total", "result" => label).increment(1);
                if let Some(to) = ack_to {
                    let (message_id, seq, reason) = match appended {
                        Some(appended) => {
                            let (id, seq) = appended.ids();
                            (id, seq, ReasonCode::Success)
                        }
                        None => (to.message_id, 0, ReasonCode::SystemError),
                    };
                    to.answer.send(message_id, seq, reason);
                }
            })
        };
        let pending = self.log.enqueue_fenced(channel, message, rows, fence, Some(on_commit)).map_err(storage)?;
        Ok(Submitted::Stored(pending))
    }

    /// Sends a message on the app server's behalf (HTTP `/message/send`): no sender
    /// checks (it speaks for the system), but a banned or disbanded channel refuses it.
    /// An empty `from_uid` is the system uid; an empty `client_msg_no` gets one made up.
    /// With `subscribers` (and SyncOnce), the message goes to just those uids through a
    /// new temporary channel. Returns once the message is durable (a resend returns the
    /// original).
    pub async fn send_as_app(self: &Arc<Self>, request: AppSend) -> Result<AppSent, SendError> {
        self.send_as_app_placed(request, None, None).await
    }

    /// [`Self::send_as_app`], with the id a forwarding node gave the message and, when
    /// placed already (by the owner admitting a forward), the claim to store under.
    pub(crate) async fn send_as_app_placed(
        self: &Arc<Self>,
        request: AppSend,
        message_id: Option<i64>,
        placed: Option<Option<Fence>>,
    ) -> Result<AppSent, SendError> {
        let from_uid =
            if request.from_uid.is_empty() { self.settings.system_uid.clone() } else { request.from_uid.clone() };
        if !is_valid_uid(&from_uid) {
            return Err(ReasonCode::ChannelIdError.into());
        }
        let message_id = message_id.unwrap_or_else(|| self.ids.next_id());
        let to_channel = request.subscribers.is_empty() && !request.header.no_persist;
        let owned =
            if to_channel { Self::owned_channel(&from_uid, &request.channel_id, request.channel_type) } else { None };
        let fence = match placed {
            Some(fence) => fence,
            None => match self.placement(owned.as_ref()).await? {
                owners::Placement::Local(fence) => fence,
                owners::Placement::Remote(node) => {
                    let client_msg_no = if request.client_msg_no.is_empty() {
                        format!("{message_id:x}0")
                    } else {
                        request.client_msg_no.clone()
                    };
                    let forwarded = cluster::ForwardedSend {
                        from_uid: request.from_uid,
                        from_app: true,
                        channel_id: request.channel_id,
                        channel_type: request.channel_type,
                        message_id,
                        header: request.header.bits() & !HeaderFlags::DUP,
                        setting: 0,
                        client_msg_no,
                        expire: request.expire,
                        topic: None,
                        payload: request.payload,
                        origin: cluster::Origin::default(),
                    };
                    let owned = owned.expect("invariant: only a stored channel is placed remotely");
                    return self.forward_app_send(node, &owned, forwarded).await;
                }
            },
        };
        let sync_once = request.header.sync_once;
        let mut only_to = None;
        let (channel, rows) = if request.subscribers.is_empty() {
            let channel_type = request.channel_type;
            if channel_type == 0 || channel_type > MAX_TYPE {
                return Err(ReasonCode::NotSupportChannelType.into());
            }
            if !is_valid_uid(&request.channel_id) {
                return Err(ReasonCode::ChannelIdError.into());
            }
            if channel_type == PERSON {
                let key = ChannelKey::new(person_channel_id(&from_uid, &request.channel_id), PERSON);
                let key = self.stored_channel(key, sync_once);
                let rows = self.person_rows(&key, [&from_uid, &request.channel_id]);
                (key, rows)
            } else {
                let key = ChannelKey::new(request.channel_id, channel_type);
                let state = self.channel_states(vec![key.clone()]).await.map_err(SendError::from_store)?;
                Self::check_open(state[0].info)?;
                (self.stored_channel(key, sync_once), Vec::new())
            }
        } else {
            if !sync_once {
                return Err(ReasonCode::NotSupportHeader.into());
            }
            let mut uids = request.subscribers;
            if uids.iter().any(|u| !is_valid_uid(u)) {
                return Err(ReasonCode::ChannelIdError.into());
            }
            uids.sort_unstable();
            uids.dedup();
            let temp = ChannelKey::new(commands::temp_channel_id(message_id), crate::channel::TEMP);
            if request.header.no_persist {
                // Online only: nothing is stored, not even the temporary channel.
                only_to = Some(uids);
            } else {
                let (core, k) = (self.clone(), temp.clone());
                tokio::task::spawn_blocking(move || {
                    core.change_members(MemberList::Subscribers, &k, &uids, ListChange::Add)
                })
                .await
                .map_err(|_| ReasonCode::SystemError)?
                .map_err(SendError::from_store)?;
            }
            (self.stored_channel(temp, true), Vec::new())
        };
        let client_msg_no =
            if request.client_msg_no.is_empty() { format!("{message_id:x}0") } else { request.client_msg_no };
        let message = NewMessage {
            message_id,
            timestamp_ms: now_ms(),
            from_uid,
            client_msg_no: client_msg_no.clone(),
            header: request.header.bits() & !HeaderFlags::DUP,
            setting: 0,
            expire: request.expire,
            topic: None,
            payload: request.payload,
        };
        if let Some(uids) = only_to {
            if let Some(observer) = self.observer() {
                observer.unstored(&channel, &message, Some(&uids));
            }
            let budget = self.budget(&message).await;
            let delivery = Delivery {
                channel,
                message,
                seq: 0,
                origin: cluster::Origin::default(),
                only_to: Some(uids),
                arrival: fanout::Arrival::Here,
                _budget: budget,
            };
            let _ = self.shard(&delivery.channel).send(delivery).await;
            return Ok(AppSent { message_id, seq: 0, client_msg_no });
        }
        let origin = cluster::Origin::default();
        let (message_id, seq) = match self.submit(channel, message, None, rows, fence, origin).await? {
            Submitted::OnlineOnly => (message_id, 0),
            Submitted::Stored(pending) => pending.await.map(Appended::ids).map_err(SendError::from_store)?,
        };
        Ok(AppSent { message_id, seq, client_msg_no })
    }
}
