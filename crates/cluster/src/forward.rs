//! Sends forwarded to their channel's owner, and notices of changes to cached state,
//! over NATS: the core's [`Forwarder`] and [`ChangeNotifier`] for a cluster.
//!
//! * `hy.<cluster>.send.<node_id>`: request/reply. The request is a [`ForwardedSend`],
//!   the reply a [`ForwardOutcome`] sent after the owner's commit. A request nobody
//!   listens to is answered "no responders" by NATS at once: nothing was stored and
//!   the core tries the (re-read) owner again; one with no answer in time may have
//!   been stored, and the sender's resend settles it (resends are stored once).
//! * `hy.<cluster>.changed`: a channel's attributes or lists, or the system accounts,
//!   changed on some node; every other node forgets its cached copy. A notice lost
//!   while the bus is down is covered by forgetting every cached channel whenever the
//!   bus reconnects.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hongyan_core::Core;
use hongyan_core::cluster::{
    ChangeNotifier, Changed, ForwardError, ForwardFuture, ForwardOutcome, ForwardedSend, Forwarder, Origin,
};
use hongyan_proto::ReasonCode;
use hongyan_store::ChannelKey;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::wire::{get_bytes, get_str, put_str};

/// How long a forwarded send may take, the owner's commit included.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Forwarded sends one node admits at once; past it, it reads no more requests (NATS
/// holds them, and drops them past its own limit: their senders get no answer and
/// resend).
const MAX_ADMITTING: usize = 4096;

/// This node's side of forwarding and change notices.
#[derive(Clone, Debug)]
pub struct Forwarding {
    bus: Bus,
    node_id: u64,
}

impl Forwarding {
    /// Starts answering the sends other nodes forward to this one, and hearing their
    /// change notices, until `stop`.
    pub async fn start(bus: Bus, node_id: u64, core: Arc<Core>, stop: CancellationToken) -> Result<Self, String> {
        let client = bus.client().clone();
        let mut sends = client.subscribe(bus.subject(&format!("send.{node_id}"))).await.map_err(|e| e.to_string())?;
        let mut changes = client.subscribe(bus.subject("changed")).await.map_err(|e| e.to_string())?;
        let admitting = Arc::new(Semaphore::new(MAX_ADMITTING));
        let (serving, stopping) = (core.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    () = stopping.cancelled() => break,
                    next = sends.next() => match next { Some(r) => r, None => break },
                };
                let Some(reply) = request.reply.clone() else { continue };
                let Ok(permit) = admitting.clone().acquire_owned().await else { break };
                let (core, client) = (serving.clone(), client.clone());
                tokio::spawn(async move {
                    let outcome = match decode_send(request.payload) {
                        Some(send) => core.admit_forwarded(send).await,
                        None => ForwardOutcome::Refused(ReasonCode::SystemError),
                    };
                    if let Err(e) = client.publish(reply, encode_outcome(outcome)).await {
                        tracing::debug!("the answer to a forwarded send was not sent: {e}");
                    }
                    drop(permit);
                });
            }
        });
        let watched = bus.clone();
        tokio::spawn(async move {
            let mut was_connected = true;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    next = changes.next() => match next {
                        Some(notice) => match decode_change(notice.payload) {
                            Some((from, what)) if from != node_id => core.heard_of_change(&what),
                            Some(_) => {}
                            None => tracing::debug!("an unreadable change notice was ignored"),
                        },
                        None => break,
                    },
                    _ = tick.tick() => {
                        // Notices sent while this node was cut off are lost: forget
                        // every cached channel once the bus is back.
                        let connected = watched.connected();
                        if connected && !was_connected {
                            core.forget_cached_channels();
                            if let Err(e) = core.refresh_system_accounts() {
                                tracing::warn!(error = %e, "system accounts not reloaded after the bus came back");
                            }
                        }
                        was_connected = connected;
                    }
                }
            }
        });
        Ok(Self { bus, node_id })
    }
}

impl Forwarder for Forwarding {
    fn forward(&self, node: u64, send: ForwardedSend) -> ForwardFuture {
        let client = self.bus.client().clone();
        let subject = self.bus.subject(&format!("send.{node}"));
        Box::pin(async move {
            let payload = encode_send(&send).ok_or_else(|| ForwardError::NotDelivered("a field is too long".into()))?;
            let answer = tokio::time::timeout(FORWARD_TIMEOUT, client.request(subject, payload))
                .await
                .map_err(|_| ForwardError::NoAnswer(format!("no answer within {FORWARD_TIMEOUT:?}")))?;
            match answer {
                Ok(message) => {
                    decode_outcome(message.payload).ok_or_else(|| ForwardError::NoAnswer("an unreadable answer".into()))
                }
                Err(e) => match e.kind() {
                    async_nats::RequestErrorKind::NoResponders
                    | async_nats::RequestErrorKind::InvalidSubject
                    | async_nats::RequestErrorKind::MaxPayloadExceeded => {
                        Err(ForwardError::NotDelivered(e.to_string()))
                    }
                    _ => Err(ForwardError::NoAnswer(e.to_string())),
                },
            }
        })
    }
}

impl ChangeNotifier for Forwarding {
    fn changed(&self, what: Changed) {
        let Some(payload) = encode_change(self.node_id, &what) else { return };
        let (client, subject) = (self.bus.client().clone(), self.bus.subject("changed"));
        // Called after the change is stored, from blocking code as well as async code.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = client.publish(subject, payload).await {
                    tracing::debug!("a change notice was not sent: {e}");
                }
            });
        }
    }
}

/// Version 2: flags, type, header, setting, expire, message id, the origin (node,
/// connection), then the strings and the payload, each with a 4-byte length.
fn encode_send(s: &ForwardedSend) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(64 + s.payload.len() + s.from_uid.len() + s.channel_id.len());
    out.put_u8(2);
    out.put_u8(u8::from(s.from_app) | if s.topic.is_some() { 2 } else { 0 });
    out.put_u8(s.channel_type);
    out.put_u8(s.header);
    out.put_u8(s.setting);
    out.put_u32(s.expire);
    out.put_i64(s.message_id);
    out.put_u64(s.origin.node);
    out.put_u64(s.origin.conn);
    put_str(&mut out, &s.from_uid)?;
    put_str(&mut out, &s.channel_id)?;
    put_str(&mut out, &s.client_msg_no)?;
    put_str(&mut out, s.topic.as_deref().unwrap_or(""))?;
    out.put_u32(u32::try_from(s.payload.len()).ok()?);
    out.put_slice(&s.payload);
    Some(out.freeze())
}

fn decode_send(mut input: Bytes) -> Option<ForwardedSend> {
    if input.remaining() < 33 || input.get_u8() != 2 {
        return None;
    }
    let flags = input.get_u8();
    let (channel_type, header, setting) = (input.get_u8(), input.get_u8(), input.get_u8());
    let (expire, message_id) = (input.get_u32(), input.get_i64());
    let origin = Origin { node: input.get_u64(), conn: input.get_u64() };
    let from_uid = get_str(&mut input)?;
    let channel_id = get_str(&mut input)?;
    let client_msg_no = get_str(&mut input)?;
    let topic = get_str(&mut input)?;
    let payload = get_bytes(&mut input)?;
    Some(ForwardedSend {
        from_uid,
        from_app: flags & 1 != 0,
        channel_id,
        channel_type,
        message_id,
        header,
        setting,
        client_msg_no,
        expire,
        topic: (flags & 2 != 0).then_some(topic),
        payload,
        origin,
    })
}

/// `[0][message id][seq]` stored, `[1][reason]` refused, `[2]` not the owner.
fn encode_outcome(outcome: ForwardOutcome) -> Bytes {
    let mut out = BytesMut::with_capacity(17);
    match outcome {
        ForwardOutcome::Stored { message_id, seq } => {
            out.put_u8(0);
            out.put_i64(message_id);
            out.put_u64(seq);
        }
        ForwardOutcome::Refused(reason) => {
            out.put_u8(1);
            out.put_u8(reason as u8);
        }
        ForwardOutcome::NotOwner => out.put_u8(2),
    }
    out.freeze()
}

fn decode_outcome(mut input: Bytes) -> Option<ForwardOutcome> {
    match (input.remaining(), input.first()?) {
        (17, 0) => {
            input.advance(1);
            Some(ForwardOutcome::Stored { message_id: input.get_i64(), seq: input.get_u64() })
        }
        (2, 1) => ReasonCode::from_u8(input[1]).map(ForwardOutcome::Refused),
        (1, 2) => Some(ForwardOutcome::NotOwner),
        _ => None,
    }
}

/// `[from node][0][type][id]` a channel, `[from node][1]` the system accounts,
/// `[from node][2][flag][level][at ms][uid][device id]` a login,
/// `[from node][3][flag or 255][reason][delay ms][uid][text]` a kick,
/// `[from node][4][node][conn id][kick][uid]` one connection closed.
fn encode_change(from: u64, what: &Changed) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(32);
    out.put_u64(from);
    match what {
        Changed::Channel(key) => {
            out.put_u8(0);
            out.put_u8(key.channel_type);
            put_str(&mut out, &key.channel_id)?;
        }
        Changed::SystemAccounts => out.put_u8(1),
        Changed::Login { uid, device_flag, device_id, level, at_ms } => {
            out.put_u8(2);
            out.put_u8(*device_flag);
            out.put_u8(*level as u8);
            out.put_i64(*at_ms);
            put_str(&mut out, uid)?;
            put_str(&mut out, device_id)?;
        }
        Changed::Kick { uid, device_flag, reason, text, delay_ms } => {
            out.put_u8(3);
            out.put_u8(device_flag.unwrap_or(u8::MAX));
            out.put_u8(*reason as u8);
            out.put_u64(*delay_ms);
            put_str(&mut out, uid)?;
            put_str(&mut out, text)?;
        }
        Changed::CloseConnection { node, conn_id, uid, kick } => {
            out.put_u8(4);
            out.put_u64(*node);
            out.put_u64(*conn_id);
            out.put_u8(u8::from(*kick));
            put_str(&mut out, uid)?;
        }
    }
    Some(out.freeze())
}

fn decode_change(mut input: Bytes) -> Option<(u64, Changed)> {
    if input.remaining() < 9 {
        return None;
    }
    let from = input.get_u64();
    match input.get_u8() {
        0 if input.remaining() >= 1 => {
            let channel_type = input.get_u8();
            Some((from, Changed::Channel(ChannelKey::new(get_str(&mut input)?, channel_type))))
        }
        1 => Some((from, Changed::SystemAccounts)),
        2 if input.remaining() >= 10 => {
            let (device_flag, level, at_ms) = (input.get_u8(), input.get_u8(), input.get_i64());
            let level = hongyan_proto::DeviceLevel::from_u8(level)?;
            let uid = get_str(&mut input)?;
            Some((from, Changed::Login { uid, device_flag, device_id: get_str(&mut input)?, level, at_ms }))
        }
        3 if input.remaining() >= 10 => {
            let flag = input.get_u8();
            let reason = ReasonCode::from_u8(input.get_u8())?;
            let delay_ms = input.get_u64();
            let uid = get_str(&mut input)?;
            let device_flag = (flag != u8::MAX).then_some(flag);
            Some((from, Changed::Kick { uid, device_flag, reason, text: get_str(&mut input)?, delay_ms }))
        }
        4 if input.remaining() >= 17 => {
            let (node, conn_id, kick) = (input.get_u64(), input.get_u64(), input.get_u8() != 0);
            Some((from, Changed::CloseConnection { node, conn_id, uid: get_str(&mut input)?, kick }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_sends_outcomes_and_notices_round_trip() {
        let send = ForwardedSend {
            from_uid: "alice".into(),
            from_app: false,
            channel_id: "g1".into(),
            channel_type: 2,
            message_id: -5,
            header: 0b110,
            setting: 0x10,
            client_msg_no: "cmn".into(),
            expire: 60,
            topic: Some(String::new()),
            payload: Bytes::from_static(b"\x00hello"),
            origin: Origin { node: 4, conn: 99 },
        };
        assert_eq!(decode_send(encode_send(&send).unwrap()), Some(send.clone()));
        let app = ForwardedSend { from_app: true, topic: None, ..send };
        assert_eq!(decode_send(encode_send(&app).unwrap()), Some(app.clone()));
        let whole = encode_send(&app).unwrap();
        for cut in 0..whole.len() {
            assert_eq!(decode_send(whole.slice(..cut)), None, "cut at {cut}");
        }
        for outcome in [
            ForwardOutcome::Stored { message_id: 9, seq: 77 },
            ForwardOutcome::Refused(ReasonCode::SubscriberNotExist),
            ForwardOutcome::NotOwner,
        ] {
            assert_eq!(decode_outcome(encode_outcome(outcome)), Some(outcome));
        }
        let login = Changed::Login {
            uid: "ann".into(),
            device_flag: 1,
            device_id: "phone".into(),
            level: hongyan_proto::DeviceLevel::Master,
            at_ms: 1_700_000_000_000,
        };
        let kick = |device_flag| Changed::Kick {
            uid: "bob".into(),
            device_flag,
            reason: ReasonCode::Ban,
            text: "banned".into(),
            delay_ms: 300,
        };
        let close = Changed::CloseConnection { node: 2, conn_id: 41, uid: "cy".into(), kick: true };
        for what in [
            Changed::Channel(ChannelKey::new("g", 2)),
            Changed::SystemAccounts,
            login,
            kick(Some(2)),
            kick(None),
            close,
        ] {
            assert_eq!(decode_change(encode_change(3, &what).unwrap()), Some((3, what)));
        }
    }
}
