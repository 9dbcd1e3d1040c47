//! Messages delivered to other nodes' connections over NATS: the core's [`Deliverer`]
//! for a cluster, and the subscription that hands what other nodes send to this one's
//! core.
//!
//! `hy.<cluster>.deliver.<node_id>`: one publish per message per node that has
//! recipients (the core picks the nodes from [`Presence`](hongyan_core::cluster::Presence)).
//! Core NATS delivers at most once, in order from one publisher to one subscriber; a
//! lost delivery shows as a gap in the `prev_seq` chain and the receiving core reads it
//! back from storage.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hongyan_core::Core;
use hongyan_core::cluster::{DeliverFuture, Deliverer, Origin, RemoteDelivery};
use hongyan_store::{ChannelKey, NewMessage};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::wire::{get_bytes, get_str, put_bytes, put_str};

/// This node's side of deliveries between nodes.
#[derive(Clone, Debug)]
pub struct Deliveries {
    bus: Bus,
}

impl Deliveries {
    /// Starts handing the messages other nodes deliver to this one to `core`, until
    /// `stop`. One delivery at a time, in arrival order, so each channel's messages
    /// reach the core's fan-out in the order they were sent.
    pub async fn start(bus: Bus, node_id: u64, core: Arc<Core>, stop: CancellationToken) -> Result<Self, String> {
        let subject = bus.subject(&format!("deliver.{node_id}"));
        let mut incoming = bus.client().subscribe(subject).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => break,
                    next = incoming.next() => match next { Some(m) => m, None => break },
                };
                match decode(message.payload) {
                    Some(delivery) => core.deliver_remote(delivery).await,
                    None => tracing::debug!("an unreadable delivery from another node was ignored"),
                }
            }
        });
        Ok(Self { bus })
    }
}

impl Deliverer for Deliveries {
    fn deliver(&self, node: u64, delivery: &RemoteDelivery) -> DeliverFuture {
        let client = self.bus.client().clone();
        let subject = self.bus.subject(&format!("deliver.{node}"));
        let payload = encode(delivery);
        Box::pin(async move {
            let Some(payload) = payload else {
                tracing::debug!("a delivery to node {node} does not encode (a field is too long)");
                return;
            };
            // Waits while the client's buffer is full; fails only when the client is
            // closed or the payload is over NATS's limit: the receiver's gap check and
            // clients' sync cover the loss.
            if let Err(e) = client.publish(subject, payload).await {
                tracing::debug!("a delivery to node {node} was not sent: {e}");
            }
        })
    }
}

/// Version 1: type, header, setting, flags (topic, list), expire, seq, previous seq,
/// origin (node, connection), message id, timestamp, then the channel id, sender,
/// client_msg_no and topic, the list (count, then uids), and the payload.
fn encode(d: &RemoteDelivery) -> Option<Bytes> {
    let m = &d.message;
    let listed = d.only_to.as_ref().map_or(0, |l| l.iter().map(|u| u.len() + 4).sum::<usize>() + 4);
    let mut out = BytesMut::with_capacity(128 + m.payload.len() + listed + d.channel.channel_id.len());
    out.put_u8(1);
    out.put_u8(d.channel.channel_type);
    out.put_u8(m.header);
    out.put_u8(m.setting);
    out.put_u8(u8::from(m.topic.is_some()) | if d.only_to.is_some() { 2 } else { 0 });
    out.put_u32(m.expire);
    out.put_u64(d.seq);
    out.put_u64(d.prev_seq);
    out.put_u64(d.origin.node);
    out.put_u64(d.origin.conn);
    out.put_i64(m.message_id);
    out.put_i64(m.timestamp_ms);
    put_str(&mut out, &d.channel.channel_id)?;
    put_str(&mut out, &m.from_uid)?;
    put_str(&mut out, &m.client_msg_no)?;
    put_str(&mut out, m.topic.as_deref().unwrap_or(""))?;
    if let Some(uids) = &d.only_to {
        out.put_u32(u32::try_from(uids.len()).ok()?);
        for uid in uids {
            put_str(&mut out, uid)?;
        }
    }
    put_bytes(&mut out, &m.payload)?;
    Some(out.freeze())
}

/// The fixed-size part of an encoded delivery, in bytes.
const FIXED: usize = 57;

fn decode(mut input: Bytes) -> Option<RemoteDelivery> {
    if input.remaining() < FIXED || input.get_u8() != 1 {
        return None;
    }
    let (channel_type, header, setting, flags) = (input.get_u8(), input.get_u8(), input.get_u8(), input.get_u8());
    let expire = input.get_u32();
    let (seq, prev_seq) = (input.get_u64(), input.get_u64());
    let origin = Origin { node: input.get_u64(), conn: input.get_u64() };
    let (message_id, timestamp_ms) = (input.get_i64(), input.get_i64());
    let channel_id = get_str(&mut input)?;
    let from_uid = get_str(&mut input)?;
    let client_msg_no = get_str(&mut input)?;
    let topic = get_str(&mut input)?;
    let only_to = if flags & 2 != 0 {
        if input.remaining() < 4 {
            return None;
        }
        let count = input.get_u32() as usize;
        // Each uid takes at least its 4-byte length: a count the input cannot hold is
        // refused before anything is allocated for it.
        if count > input.remaining() / 4 {
            return None;
        }
        Some((0..count).map(|_| get_str(&mut input)).collect::<Option<Vec<_>>>()?)
    } else {
        None
    };
    let payload = get_bytes(&mut input)?;
    Some(RemoteDelivery {
        channel: ChannelKey::new(channel_id, channel_type),
        seq,
        prev_seq,
        origin,
        only_to,
        message: NewMessage {
            message_id,
            timestamp_ms,
            from_uid,
            client_msg_no,
            header,
            setting,
            expire,
            topic: (flags & 1 != 0).then_some(topic),
            payload,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_round_trip_and_a_cut_one_is_refused() {
        let d = RemoteDelivery {
            channel: ChannelKey::new("g1", 2),
            seq: 12,
            prev_seq: 9,
            origin: Origin { node: 2, conn: 77 },
            only_to: None,
            message: NewMessage {
                message_id: 1234,
                timestamp_ms: 1_700_000_000_123,
                from_uid: "alice".into(),
                client_msg_no: "c-1".into(),
                header: 0b10,
                setting: 0x10,
                expire: 30,
                topic: Some("news".into()),
                payload: Bytes::from_static(b"{\"type\":1}"),
            },
        };
        assert_eq!(decode(encode(&d).unwrap()), Some(d.clone()));
        let listed = RemoteDelivery {
            seq: 0,
            only_to: Some(vec!["u1".into(), "u2".into()]),
            message: NewMessage { topic: None, ..d.message.clone() },
            ..d
        };
        let whole = encode(&listed).unwrap();
        assert_eq!(decode(whole.clone()), Some(listed));
        for cut in 0..whole.len() {
            assert_eq!(decode(whole.slice(..cut)), None, "cut at {cut}");
        }
        // A list count the input cannot hold is refused.
        let mut forged = BytesMut::from(&whole[..]);
        // After the fixed part and the four strings ("g1", "alice", "c-1", no topic).
        let at = FIXED + (4 + 2) + (4 + 5) + (4 + 3) + 4;
        forged[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(forged.freeze()), None);
    }
}
