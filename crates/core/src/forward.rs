//! Sends in a cluster: which node stores a message, forwarding to it, and admitting
//! what other nodes forwarded (`docs/cluster.md`, "Channel ownership and seqs").
//!
//! A message is stored by the owner of its conversation's channel ([`Owners`]): the
//! group, or a person chat's pair channel. A SEND that arrives elsewhere is opened
//! with its connection's keys, handed to the owner ([`Forwarder`]) and acknowledged
//! with the owner's answer, which comes after the owner's commit. On a single node
//! every channel is local and none of this costs more than a branch.

use std::sync::Arc;
use std::time::Duration;

use crate::session::{Conn, is_valid_uid};
use hongyan_proto::{HeaderFlags, ReasonCode, Send, Setting};
use hongyan_store::{ChannelKey, Fence};

use crate::channel::{MAX_TYPE, PERSON, TEMP, person_channel_id};
use crate::cluster::{ChangeNotifier, Changed, ForwardError, ForwardOutcome, ForwardedSend, Forwarder, Topology};
use crate::owners::{Owners, Placement};
use crate::send::Answer;
use crate::{AppSend, AppSent, Core, SendError};

/// How often a forward that reached no owner is tried again (with the membership read
/// again in between) before the sender is refused.
const FORWARD_ATTEMPTS: usize = 3;
/// The pause between those tries.
const FORWARD_PAUSE: Duration = Duration::from_millis(250);
/// How often a forward waiting for its answer checks that the owner is still live.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);

impl Core {
    /// Makes this core a cluster member: channels are owned among `topology`'s live
    /// nodes, sends to channels owned elsewhere go through `forwarder`, and changes to
    /// cached state are told to the other nodes through `notifier`. Call once, before
    /// serving.
    pub fn join_cluster(
        &self,
        topology: Arc<dyn Topology>,
        forwarder: Arc<dyn Forwarder>,
        notifier: Arc<dyn ChangeNotifier>,
    ) {
        let _ = self.owners.set(Arc::new(Owners::new(self.store().backend().clone(), topology, true)));
        let _ = self.forwarder.set(forwarder);
        let _ = self.notifier.set(notifier);
    }

    /// Channels this node holds an ownership claim on (0 on a single node).
    pub fn owned_channels(&self) -> usize {
        self.owners.get().map_or(0, |o| o.owned())
    }

    /// Forgets the cached state `what` describes: another node changed it.
    pub fn heard_of_change(&self, what: &Changed) {
        match what {
            Changed::Channel(key) => self.channels.changed(key),
            Changed::SystemAccounts => {
                if let Err(e) = self.refresh_system_accounts() {
                    tracing::warn!(error = %e, "system accounts not reloaded after another node changed them");
                }
            }
            Changed::Login { uid, device_flag, device_id, level, at_ms } => {
                self.displace_for_login(uid, *device_flag, device_id, *level, *at_ms);
            }
            Changed::Kick { uid, device_flag, reason, text, delay_ms } => {
                self.kick_here(uid, *device_flag, *reason, text, Duration::from_millis(*delay_ms));
            }
            Changed::CloseConnection { node, conn_id, uid, kick } => {
                if *node == self.settings.node_id {
                    self.close_connection_here(uid, *conn_id, *kick);
                }
            }
        }
    }

    /// Forgets every cached channel: changes may have been missed (the bus was down).
    pub fn forget_cached_channels(&self) {
        self.channels.clear();
    }

    /// A channel's cached state is stale: forget it here and tell the other nodes.
    pub(crate) fn channel_changed(&self, key: &ChannelKey) {
        self.channels.changed(key);
        self.tell_others(Changed::Channel(key.clone()));
    }

    pub(crate) fn tell_others(&self, what: Changed) {
        if let Some(notifier) = self.notifier.get() {
            notifier.changed(what);
        }
    }

    /// The channel whose owner stores messages sent by `sender` to a target: a person
    /// chat's pair channel, or the channel itself. `None` for a target no node would
    /// store (those are refused by admission wherever they arrive) and for temporary
    /// channels (each belongs to the node that made it).
    pub(crate) fn owned_channel(sender: &str, channel_id: &str, channel_type: u8) -> Option<ChannelKey> {
        if channel_type == 0 || channel_type > MAX_TYPE || channel_type == TEMP || !is_valid_uid(channel_id) {
            return None;
        }
        Some(if channel_type == PERSON {
            ChannelKey::new(person_channel_id(sender, channel_id), PERSON)
        } else {
            ChannelKey::new(channel_id, channel_type)
        })
    }

    /// Where messages to `channel` are stored. Claiming a channel reads and writes
    /// storage, off the async workers; a channel already claimed costs a map lookup.
    pub(crate) async fn placement(&self, channel: Option<&ChannelKey>) -> Result<Placement, ReasonCode> {
        let (Some(owners), Some(channel)) = (self.owners.get(), channel) else {
            return Ok(Placement::Local(None));
        };
        if let Some(placed) = owners.placed(channel) {
            return Ok(placed);
        }
        let (owners, channel) = (owners.clone(), channel.clone());
        tokio::task::spawn_blocking(move || owners.place(&channel))
            .await
            .map_err(|_| ReasonCode::SystemError)?
            .map_err(crate::storage)
    }

    /// Hands `send` to the owner, `node`, reading the membership again and retrying
    /// when it reached no owner. Never retries a forward that may have been stored.
    async fn forward(&self, mut node: u64, channel: &ChannelKey, send: ForwardedSend) -> ForwardOutcome {
        let Some(forwarder) = self.forwarder.get() else { return ForwardOutcome::Refused(ReasonCode::SystemError) };
        for attempt in 1..=FORWARD_ATTEMPTS {
            let answer = forwarder.forward(node, send.clone());
            let answer = tokio::select! {
                answer = answer => answer,
                () = self.left_the_cluster(node) => {
                    Err(ForwardError::NoAnswer("the owner left the cluster before answering".into()))
                }
            };
            let why = match answer {
                Ok(ForwardOutcome::NotOwner) => "not the owner".to_owned(),
                Ok(outcome) => {
                    metrics::counter!("hongyan_cluster_forwarded_sends_total", "result" => "answered").increment(1);
                    return outcome;
                }
                Err(ForwardError::NotDelivered(why)) => why,
                Err(ForwardError::NoAnswer(why)) => {
                    metrics::counter!("hongyan_cluster_forwarded_sends_total", "result" => "no_answer").increment(1);
                    tracing::warn!(node, "a forwarded send got no answer: {why}");
                    return ForwardOutcome::Refused(ReasonCode::SystemError);
                }
            };
            tracing::debug!(node, attempt, "a forwarded send reached no owner: {why}");
            if attempt == FORWARD_ATTEMPTS {
                break;
            }
            tokio::time::sleep(FORWARD_PAUSE).await;
            match self.placement(Some(channel)).await {
                Ok(Placement::Remote(owner)) => node = owner,
                // The channel is this node's now: the sender resends, and the resend
                // is stored here.
                Ok(Placement::Local(_)) | Err(_) => break,
            }
        }
        metrics::counter!("hongyan_cluster_forwarded_sends_total", "result" => "undelivered").increment(1);
        ForwardOutcome::Refused(ReasonCode::SystemError)
    }

    /// Resolves once node `node` is no longer live by this node's membership (its lease
    /// ran out): a forward it has not answered by then may be stored or not, and the
    /// sender's resend, stored once, settles it without waiting out the forward timeout.
    async fn left_the_cluster(&self, node: u64) {
        let Some(owners) = self.owners.get() else { return std::future::pending().await };
        let mut tick = tokio::time::interval(LIVENESS_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !owners.is_live(node) {
                return;
            }
        }
    }

    /// A client's SEND to a channel another node owns: opened here, stored there, and
    /// acknowledged with the owner's answer.
    pub(crate) async fn forward_client_send(
        &self,
        conn: &Arc<Conn>,
        send: Send,
        message_id: i64,
        node: u64,
        answer: &Answer,
    ) {
        let ack = |message_id: i64, seq: u64, reason_code: ReasonCode| answer.send(message_id, seq, reason_code);
        let Some(channel) = Self::owned_channel(&conn.uid, &send.channel_id, send.channel_type) else {
            return ack(message_id, 0, ReasonCode::ChannelIdError);
        };
        let payload = match &conn.cipher {
            Some(cipher) => match cipher.open_send(&send) {
                Ok(plain) => bytes::Bytes::from(plain),
                Err(e) => return ack(message_id, 0, e.reason_code()),
            },
            None => send.payload.clone(),
        };
        let forwarded = ForwardedSend {
            from_uid: conn.uid.to_string(),
            from_app: false,
            channel_id: send.channel_id.clone(),
            channel_type: send.channel_type,
            message_id,
            header: send.flags.bits() & !HeaderFlags::DUP,
            setting: send.setting.0,
            client_msg_no: send.client_msg_no.clone(),
            expire: send.expire,
            topic: send.topic.clone(),
            payload,
            origin: self.here(conn.id),
        };
        match self.forward(node, &channel, forwarded).await {
            ForwardOutcome::Stored { message_id, seq } => ack(message_id, seq, ReasonCode::Success),
            ForwardOutcome::Refused(reason) => ack(message_id, 0, reason),
            ForwardOutcome::NotOwner => ack(message_id, 0, ReasonCode::SystemError),
        }
    }

    /// The app server's send to a channel another node owns.
    pub(crate) async fn forward_app_send(
        &self,
        node: u64,
        channel: &ChannelKey,
        send: ForwardedSend,
    ) -> Result<AppSent, SendError> {
        let client_msg_no = send.client_msg_no.clone();
        match self.forward(node, channel, send).await {
            ForwardOutcome::Stored { message_id, seq } => Ok(AppSent { message_id, seq, client_msg_no }),
            ForwardOutcome::Refused(reason) => Err(SendError::Refused(reason)),
            ForwardOutcome::NotOwner => Err(SendError::Refused(ReasonCode::SystemError)),
        }
    }

    /// Admits and stores a SEND another node forwarded, as if it had arrived here, and
    /// answers once it is stored. Refuses it (`NotOwner`) when this node does not own
    /// the channel by its own view of the membership: the sender's node tries again.
    pub async fn admit_forwarded(self: &Arc<Self>, f: ForwardedSend) -> ForwardOutcome {
        let sender = if f.from_uid.is_empty() { self.system_uid().to_owned() } else { f.from_uid.clone() };
        let channel = Self::owned_channel(&sender, &f.channel_id, f.channel_type);
        let fence = match self.placement(channel.as_ref()).await {
            Ok(Placement::Local(fence)) => fence,
            Ok(Placement::Remote(_)) => return ForwardOutcome::NotOwner,
            Err(reason) => return ForwardOutcome::Refused(reason),
        };
        metrics::counter!("hongyan_cluster_admitted_forwards_total").increment(1);
        if f.from_app {
            let request = AppSend {
                from_uid: f.from_uid,
                channel_id: f.channel_id,
                channel_type: f.channel_type,
                header: HeaderFlags::from_bits(f.header),
                client_msg_no: f.client_msg_no,
                expire: f.expire,
                payload: f.payload,
                subscribers: Vec::new(),
            };
            return match self.send_as_app_placed(request, Some(f.message_id), Some(fence)).await {
                Ok(sent) => ForwardOutcome::Stored { message_id: sent.message_id, seq: sent.seq },
                Err(e) => ForwardOutcome::Refused(e.reason_code()),
            };
        }
        let send = Send {
            flags: HeaderFlags::from_bits(f.header),
            setting: Setting(f.setting),
            client_seq: 0,
            client_msg_no: f.client_msg_no,
            stream_no: None,
            channel_id: f.channel_id,
            channel_type: f.channel_type,
            expire: f.expire,
            msg_key: String::new(),
            topic: f.topic,
            payload: f.payload,
        };
        self.store_forwarded(sender, send, f.message_id, fence, f.origin).await
    }

    /// A forwarded client SEND: the same admission and storage as one that arrived
    /// here, with the payload already open.
    async fn store_forwarded(
        self: &Arc<Self>,
        sender: String,
        send: Send,
        message_id: i64,
        fence: Option<Fence>,
        origin: crate::cluster::Origin,
    ) -> ForwardOutcome {
        let plain = send.payload.clone();
        let how = crate::Submission { message_id, ack_to: None, fence, origin };
        match self.admit_and_submit(&sender, &send, || Ok(plain), how).await {
            Ok(crate::Submitted::Stored(pending)) => match pending.await {
                Ok(appended) => {
                    let (message_id, seq) = appended.ids();
                    ForwardOutcome::Stored { message_id, seq }
                }
                Err(e) => ForwardOutcome::Refused(crate::storage(e)),
            },
            Ok(crate::Submitted::OnlineOnly) => ForwardOutcome::Stored { message_id, seq: 0 },
            Err(reason) => ForwardOutcome::Refused(reason),
        }
    }
}
