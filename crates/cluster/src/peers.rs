//! Questions one node asks another about its connections (`/connz` of another node,
//! a uid's devices anywhere): the core's [`Peers`] for a cluster, over NATS
//! request/reply on `hy.<cluster>.conns.<node_id>`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hongyan_core::Core;
use hongyan_core::conns::{ConnFilter, ConnOrder, ConnPage, ConnSummary, MOST_PER_PAGE, Peers, PeersFuture};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::wire::{get_str, put_str};

/// How long another node may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most uids one question may name (as `/user/onlinestatus` allows).
const MOST_UIDS: usize = 10_000;

/// This node's side of the questions about connections.
#[derive(Clone, Debug)]
pub struct Connections {
    bus: Bus,
}

impl Connections {
    /// Starts answering the other nodes' questions about this node's connections,
    /// until `stop`.
    pub async fn start(bus: Bus, node_id: u64, core: Arc<Core>, stop: CancellationToken) -> Result<Self, String> {
        let client = bus.client().clone();
        let mut asked = client.subscribe(bus.subject(&format!("conns.{node_id}"))).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    () = stop.cancelled() => break,
                    next = asked.next() => match next { Some(r) => r, None => break },
                };
                let Some(reply) = request.reply else { continue };
                let answer = match decode_question(request.payload) {
                    Some(Question::Uids(uids)) => {
                        let found = core.local_connections_of(&uids);
                        encode_page(&ConnPage { total: found.len() as u64, connections: found })
                    }
                    Some(Question::Page { offset, limit, order, filter }) => {
                        encode_page(&core.local_page(offset, limit, order, &filter))
                    }
                    None => continue,
                };
                if let Err(e) = client.publish(reply, answer).await {
                    tracing::debug!("an answer about connections was not sent: {e}");
                }
            }
        });
        Ok(Self { bus })
    }

    fn ask(&self, node: u64, question: Bytes) -> PeersFuture<ConnPage> {
        let client = self.bus.client().clone();
        let subject = self.bus.subject(&format!("conns.{node}"));
        Box::pin(async move {
            let answer = tokio::time::timeout(ANSWER_TIMEOUT, client.request(subject, question))
                .await
                .map_err(|_| format!("node {node} did not answer within {ANSWER_TIMEOUT:?}"))?
                .map_err(|e| format!("node {node}: {e}"))?;
            decode_page(answer.payload).ok_or_else(|| format!("node {node} answered something unreadable"))
        })
    }
}

impl Peers for Connections {
    fn connections_of(&self, node: u64, uids: Vec<String>) -> PeersFuture<Vec<ConnSummary>> {
        let asked = encode_question(&Question::Uids(uids)).map(|q| self.ask(node, q));
        Box::pin(async move {
            match asked {
                Some(asked) => Ok(asked.await?.connections),
                None => Err("too many or too long uids".into()),
            }
        })
    }

    fn page(
        &self,
        node: u64,
        offset: usize,
        limit: usize,
        order: ConnOrder,
        filter: ConnFilter,
    ) -> PeersFuture<ConnPage> {
        match encode_question(&Question::Page { offset, limit, order, filter }) {
            Some(question) => self.ask(node, question),
            None => Box::pin(async { Err("offset, limit or filter out of range".into()) }),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Question {
    Uids(Vec<String>),
    Page { offset: usize, limit: usize, order: ConnOrder, filter: ConnFilter },
}

/// No device flag in a filter.
const ANY_FLAG: u8 = u8::MAX;

/// `[0][count][uids]` or `[1][offset][limit][order][flag][device id][ip]`.
fn encode_question(q: &Question) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match q {
        Question::Uids(uids) => {
            if uids.len() > MOST_UIDS {
                return None;
            }
            out.put_u8(0);
            out.put_u32(uids.len() as u32);
            for uid in uids {
                put_str(&mut out, uid)?;
            }
        }
        Question::Page { offset, limit, order, filter } => {
            out.put_u8(1);
            out.put_u32(u32::try_from(*offset).ok()?);
            out.put_u32(u32::try_from(*limit).ok()?);
            out.put_u8(u8::from(*order == ConnOrder::Uptime));
            out.put_u8(filter.device_flag.unwrap_or(ANY_FLAG));
            put_str(&mut out, &filter.device_id)?;
            put_str(&mut out, &filter.ip)?;
        }
    }
    Some(out.freeze())
}

fn decode_question(mut input: Bytes) -> Option<Question> {
    match input.first()? {
        0 if input.remaining() >= 5 => {
            input.advance(1);
            let n = input.get_u32() as usize;
            if n > MOST_UIDS || n > input.remaining() / 4 {
                return None;
            }
            Some(Question::Uids((0..n).map(|_| get_str(&mut input)).collect::<Option<_>>()?))
        }
        1 if input.remaining() >= 11 => {
            input.advance(1);
            let (offset, limit) = (input.get_u32() as usize, (input.get_u32() as usize).min(MOST_PER_PAGE));
            let order = if input.get_u8() == 1 { ConnOrder::Uptime } else { ConnOrder::Id };
            let device_flag = Some(input.get_u8()).filter(|f| *f != ANY_FLAG);
            let filter = ConnFilter { device_flag, device_id: get_str(&mut input)?, ip: get_str(&mut input)? };
            input.is_empty().then_some(Question::Page { offset, limit, order, filter })
        }
        _ => None,
    }
}

/// `[total][count]`, then per connection: node, id, connected at, pending frames,
/// port, flag, level, version, then uid, ip, transport and device id.
fn encode_page(page: &ConnPage) -> Bytes {
    let mut out = BytesMut::with_capacity(12 + page.connections.len() * 96);
    out.put_u64(page.total);
    out.put_u32(page.connections.len() as u32);
    for c in &page.connections {
        out.put_u64(c.node);
        out.put_u64(c.id);
        out.put_i64(c.connected_at_ms);
        out.put_u32(c.pending_frames);
        out.put_u16(c.port);
        out.put_u8(c.device_flag);
        out.put_u8(c.device_level);
        out.put_u8(c.version);
        // Every string here is an id or an address the server itself checked.
        for s in [&c.uid, &c.ip, &c.transport, &c.device_id] {
            let _ = put_str(&mut out, s);
        }
    }
    out.freeze()
}

/// The fixed part of one connection in a page, in bytes.
const FIXED_PER_CONN: usize = 8 + 8 + 8 + 4 + 2 + 3 + 4 * 4;

fn decode_page(mut input: Bytes) -> Option<ConnPage> {
    if input.remaining() < 12 {
        return None;
    }
    let total = input.get_u64();
    let n = input.get_u32() as usize;
    if n > input.remaining() / FIXED_PER_CONN {
        return None;
    }
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        if input.remaining() < FIXED_PER_CONN - 16 {
            return None;
        }
        let (node, id, connected_at_ms) = (input.get_u64(), input.get_u64(), input.get_i64());
        let (pending_frames, port) = (input.get_u32(), input.get_u16());
        let (device_flag, device_level, version) = (input.get_u8(), input.get_u8(), input.get_u8());
        connections.push(ConnSummary {
            node,
            id,
            uid: get_str(&mut input)?,
            ip: get_str(&mut input)?,
            port,
            transport: get_str(&mut input)?,
            device_flag,
            device_level,
            device_id: get_str(&mut input)?,
            version,
            connected_at_ms,
            pending_frames,
        });
    }
    Some(ConnPage { total, connections })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_and_pages_round_trip_and_cut_ones_are_refused() {
        for q in [
            Question::Uids(vec!["ann".into(), "bob".into()]),
            Question::Page { offset: 40, limit: 20, order: ConnOrder::Uptime, filter: ConnFilter::default() },
            Question::Page {
                offset: 0,
                limit: 1,
                order: ConnOrder::Id,
                filter: ConnFilter { device_flag: Some(1), device_id: "web-1".into(), ip: "10.0.0.9".into() },
            },
        ] {
            let bytes = encode_question(&q).unwrap();
            assert_eq!(decode_question(bytes.clone()), Some(q));
            for cut in 1..bytes.len() {
                assert_eq!(decode_question(bytes.slice(..cut)), None, "cut at {cut}");
            }
        }
        let page = ConnPage {
            total: 7,
            connections: vec![ConnSummary {
                node: 2,
                id: 11,
                uid: "ann".into(),
                ip: "10.0.0.9".into(),
                port: 41_000,
                transport: "ws".into(),
                device_flag: 1,
                device_level: 1,
                device_id: "web-1".into(),
                version: 4,
                connected_at_ms: 1_700_000_000_000,
                pending_frames: 3,
            }],
        };
        let bytes = encode_page(&page);
        assert_eq!(decode_page(bytes.clone()), Some(page));
        for cut in 0..bytes.len() {
            assert_eq!(decode_page(bytes.slice(..cut)), None, "cut at {cut}");
        }
        let mut forged = BytesMut::new();
        forged.put_u64(1);
        forged.put_u32(u32::MAX);
        assert_eq!(decode_page(forged.freeze()), None, "a count the input cannot hold");
    }
}
