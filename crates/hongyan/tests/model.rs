//! A seeded random workload against a simple in-memory oracle, over the real server:
//! users with several devices, groups whose membership and blacklists change, person
//! chats with blacklists, sends and resends of the same client_msg_no, disconnects and
//! reconnects. After every send the oracle's SENDACK code and seq must match, and every
//! online device of every recipient must get the message; at the end every device must
//! have received exactly what the oracle expects, in order, and message sync and unread
//! counts must equal the oracle's.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::TestServer;
use hongyan_proto::{Packet, ReasonCode, Send, device_flag};
use hongyan_testkit::{Client, ClientError};
use serde_json::json;

/// xorshift64*: deterministic, and enough for choosing operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const USERS: [&str; 4] = ["ana", "ben", "cai", "dov"];
const GROUPS: [&str; 2] = ["g0", "g1"];
const DEVICES: usize = 2;

/// A stored message as the oracle knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    seq: u64,
    from: String,
    client_msg_no: String,
    text: String,
}

/// What the oracle believes.
#[derive(Default)]
struct Oracle {
    members: BTreeMap<&'static str, BTreeSet<&'static str>>,
    group_blacklist: BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// owner → uids it blocks.
    person_blacklist: BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// channel key (as the server stores it) → messages.
    log: BTreeMap<String, Vec<Stored>>,
    /// (channel, from, client_msg_no) → seq.
    sent: HashMap<(String, String, String), u64>,
    /// (uid, channel) → read cursor, for rows that exist.
    cursors: BTreeMap<(String, String), u64>,
}

fn person_key(a: &str, b: &str) -> String {
    hongyan_core::channel::person_channel_id(a, b)
}

impl Oracle {
    /// The SENDACK reason and, on success, the seq (the original's for a resend) and
    /// whether it is new.
    fn send(
        &mut self,
        from: &'static str,
        to: &'static str,
        group: bool,
        cmn: &str,
        text: &str,
    ) -> (ReasonCode, u64, bool) {
        let key = if group { to.to_owned() } else { person_key(from, to) };
        if group {
            if self.group_blacklist.get(to).is_some_and(|b| b.contains(from)) {
                return (ReasonCode::InBlacklist, 0, false);
            }
            if !self.members.get(to).is_some_and(|m| m.contains(from)) {
                return (ReasonCode::SubscriberNotExist, 0, false);
            }
        } else if self.person_blacklist.get(to).is_some_and(|b| b.contains(from)) {
            return (ReasonCode::InBlacklist, 0, false);
        }
        if let Some(seq) = self.sent.get(&(key.clone(), from.to_owned(), cmn.to_owned())) {
            return (ReasonCode::Success, *seq, false);
        }
        let log = self.log.entry(key.clone()).or_default();
        let seq = log.len() as u64 + 1;
        log.push(Stored { seq, from: from.to_owned(), client_msg_no: cmn.to_owned(), text: text.to_owned() });
        self.sent.insert((key.clone(), from.to_owned(), cmn.to_owned()), seq);
        if !group {
            for uid in [from, to] {
                self.cursors.entry((uid.to_owned(), key.clone())).or_insert(0);
            }
        }
        (ReasonCode::Success, seq, true)
    }

    fn recipients(&self, from: &'static str, to: &'static str, group: bool) -> Vec<&'static str> {
        if group {
            self.members.get(to).map(|m| m.iter().copied().collect()).unwrap_or_default()
        } else {
            vec![from, to]
        }
    }

    fn join(&mut self, group: &'static str, uid: &'static str) {
        self.members.entry(group).or_default().insert(uid);
        let last = self.log.get(group).map_or(0, |l| l.len() as u64);
        self.cursors.entry((uid.to_owned(), group.to_owned())).or_insert(last);
    }

    /// Unread per the cursor model: others' messages after the cursor and after the
    /// user's own latest message.
    fn unread(&self, uid: &str, key: &str) -> u64 {
        let cursor = self.cursors.get(&(uid.to_owned(), key.to_owned())).copied().unwrap_or(0);
        let log = self.log.get(key).map(Vec::as_slice).unwrap_or_default();
        log.iter().rev().take_while(|m| m.seq > cursor && m.from != uid).count() as u64
    }
}

struct Device {
    uid: &'static str,
    client: Option<Client>,
    /// (channel id as received, seq, text), in arrival order.
    received: Vec<(String, u32, String)>,
    /// What it must have received, in order.
    expected: Vec<(String, u32, String)>,
    connects: usize,
}

async fn connect(server: &TestServer, uid: &str, device: usize, n: usize) -> Client {
    let target = if device.is_multiple_of(2) { server.tcp() } else { server.ws() };
    let version = [2, 3, 4, 5][(device + n) % 4];
    let (client, connack) =
        Client::connect(&target, uid, "t", device_flag::APP, &format!("{uid}-{device}-{n}"), version).await.unwrap();
    assert_eq!(connack.reason_code, ReasonCode::Success);
    client
}

/// Reads one RECV for `device`, decrypting it and acknowledging it like the SDKs do.
async fn take_recv(device: &mut Device, limit: Duration) -> Result<(), ClientError> {
    let client = device.client.as_mut().unwrap();
    match client.recv_within(limit).await? {
        Packet::Recv(recv) => {
            let text = String::from_utf8(client.cipher.as_ref().unwrap().open_recv(&recv).unwrap()).unwrap();
            let ack = hongyan_proto::Recvack {
                flags: recv.flags,
                message_id: recv.message_id,
                message_seq: recv.message_seq,
            };
            client.send(&Packet::Recvack(ack)).await?;
            device.received.push((recv.channel_id, recv.message_seq, text));
            Ok(())
        }
        other => panic!("{} got {other:?}", device.uid),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_matches_the_oracle() {
    for seed in [0x9e37_79b9_7f4a_7c15_u64, 42, 2026] {
        run(seed, 250).await;
    }
}

async fn run(seed: u64, operations: usize) {
    let server = TestServer::start().await;
    let mut rng = Rng(seed);
    let mut oracle = Oracle::default();
    for uid in USERS {
        server.register(uid, "t", device_flag::APP, 0).await;
    }
    let mut devices = Vec::new();
    for uid in USERS {
        for d in 0..DEVICES {
            devices.push(Device {
                uid,
                client: Some(connect(&server, uid, d, 0).await),
                received: vec![],
                expected: vec![],
                connects: 1,
            });
        }
    }
    let mut client_seq = 0u32;
    let mut sends = 0;
    for op in 0..operations {
        match rng.below(10) {
            // Membership change.
            0 => {
                let (group, uid) = (GROUPS[rng.below(2)], USERS[rng.below(4)]);
                let joining = !oracle.members.get(group).is_some_and(|m| m.contains(uid));
                let path = if joining { "/channel/subscriber_add" } else { "/channel/subscriber_remove" };
                let (status, _) =
                    server.post(path, json!({"channel_id": group, "channel_type": 2, "subscribers": [uid]})).await;
                assert_eq!(status, 200);
                if joining {
                    oracle.join(group, uid);
                } else {
                    oracle.members.get_mut(group).unwrap().remove(uid);
                }
            }
            // Blacklist change, in a group or of a user.
            1 => {
                let uid = USERS[rng.below(4)];
                let (list, channel_id, channel_type): (&mut BTreeSet<&str>, &str, u8) = if rng.below(2) == 0 {
                    let g = GROUPS[rng.below(2)];
                    (oracle.group_blacklist.entry(g).or_default(), g, 2)
                } else {
                    let owner = USERS[rng.below(4)];
                    (oracle.person_blacklist.entry(owner).or_default(), owner, 1)
                };
                let adding = !list.contains(uid);
                let path = if adding { "/channel/blacklist_add" } else { "/channel/blacklist_remove" };
                let (status, _) = server
                    .post(path, json!({"channel_id": channel_id, "channel_type": channel_type, "uids": [uid]}))
                    .await;
                assert_eq!(status, 200);
                if adding {
                    list.insert(uid);
                } else {
                    list.remove(uid);
                }
            }
            // A device drops off or comes back.
            2 => {
                let i = rng.below(devices.len());
                let device = &mut devices[i];
                if device.client.take().is_none() {
                    device.client = Some(connect(&server, device.uid, i % DEVICES, device.connects).await);
                    device.connects += 1;
                } else {
                    // Let the server notice the close before anything else happens.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    let uid = device.uid;
                    let online = devices.iter().filter(|d| d.uid == uid && d.client.is_some()).count();
                    while server.server.registry.connections(uid).len() != online {
                        assert!(tokio::time::Instant::now() < deadline, "close of {uid} not noticed");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            // A send (sometimes a resend of an earlier client_msg_no).
            _ => {
                let i = rng.below(devices.len());
                if devices[i].client.is_none() {
                    continue;
                }
                let from = devices[i].uid;
                let group = rng.below(2) == 0;
                let to = if group { GROUPS[rng.below(2)] } else { USERS[rng.below(4)] };
                if !group && to == from {
                    continue;
                }
                let cmn = if sends > 0 && rng.below(5) == 0 {
                    format!("{from}-{}", rng.below(sends))
                } else {
                    format!("{from}-{sends}")
                };
                sends += 1;
                let text = format!("op {op}");
                client_seq += 1;
                let (reason, seq, new) = oracle.send(from, to, group, &cmn, &text);
                let stored_text = oracle
                    .log
                    .get(&if group { to.to_owned() } else { person_key(from, to) })
                    .and_then(|l| l.iter().find(|m| m.seq == seq))
                    .map(|m| m.text.clone());
                let client = devices[i].client.as_mut().unwrap();
                let mut packet = Send {
                    client_seq,
                    client_msg_no: cmn.clone(),
                    channel_id: to.into(),
                    channel_type: if group { 2 } else { 1 },
                    ..Send::default()
                };
                client.cipher.as_ref().unwrap().seal_send(&mut packet, text.as_bytes());
                client.send(&Packet::Send(packet)).await.unwrap();
                // Wait for the SENDACK; RECVs may come first.
                let ack = loop {
                    match devices[i].client.as_mut().unwrap().recv().await.unwrap() {
                        Packet::Sendack(a) => break a,
                        Packet::Recv(recv) => {
                            let client = devices[i].client.as_mut().unwrap();
                            let t =
                                String::from_utf8(client.cipher.as_ref().unwrap().open_recv(&recv).unwrap()).unwrap();
                            let ack = hongyan_proto::Recvack {
                                flags: recv.flags,
                                message_id: recv.message_id,
                                message_seq: recv.message_seq,
                            };
                            client.send(&Packet::Recvack(ack)).await.unwrap();
                            devices[i].received.push((recv.channel_id, recv.message_seq, t));
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                };
                assert_eq!(
                    (ack.client_seq, ack.reason_code),
                    (client_seq, reason),
                    "seed {seed} op {op}: {from} → {to} ({cmn})"
                );
                assert_eq!(u64::from(ack.message_seq), seq, "seed {seed} op {op}: seq");
                if !new {
                    continue;
                }
                // Every online device of every recipient gets it once, except the sender's.
                let recipients = oracle.recipients(from, to, group);
                for (j, device) in devices.iter_mut().enumerate() {
                    if j == i || device.client.is_none() || !recipients.contains(&device.uid) {
                        continue;
                    }
                    let channel_id = match (group, device.uid == from) {
                        (true, _) => to.to_owned(),
                        (false, true) => to.to_owned(),
                        (false, false) => from.to_owned(),
                    };
                    device.expected.push((channel_id, seq as u32, stored_text.clone().unwrap()));
                    while device.received.len() < device.expected.len() {
                        take_recv(device, Duration::from_secs(5))
                            .await
                            .unwrap_or_else(|e| panic!("seed {seed} op {op}: {} waited: {e}", device.uid));
                    }
                }
            }
        }
    }

    // Nothing extra arrived anywhere, and everything arrived in order, once.
    for device in &mut devices {
        if device.client.is_some() {
            while take_recv(device, Duration::from_millis(150)).await.is_ok() {}
        }
        assert_eq!(device.received, device.expected, "seed {seed}: deliveries to {}", device.uid);
    }

    // History through the API equals the oracle's log.
    for (key, log) in &oracle.log {
        let (login, channel_id, channel_type) = match hongyan_core::channel::person_channel_members(key) {
            Some((a, b)) => (a.to_owned(), b.to_owned(), 1),
            None => (USERS[0].to_owned(), key.clone(), 2),
        };
        let body = json!({"login_uid": login, "channel_id": channel_id, "channel_type": channel_type, "pull_mode": 1, "start_message_seq": 1, "limit": 10_000});
        let (status, answer) = server.post("/channel/messagesync", body).await;
        assert_eq!(status, 200);
        let got: Vec<(u64, String, String)> = answer["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["message_seq"].as_u64().unwrap(),
                    m["from_uid"].as_str().unwrap().to_owned(),
                    m["client_msg_no"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want: Vec<(u64, String, String)> =
            log.iter().map(|m| (m.seq, m.from.clone(), m.client_msg_no.clone())).collect();
        assert_eq!(got, want, "seed {seed}: history of {key}");
    }

    // Unread counts equal the oracle's.
    for uid in USERS {
        let (_, answer) = server.post("/conversation/sync", json!({"uid": uid, "msg_count": 0})).await;
        let got: BTreeMap<String, u64> = answer
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let id = c["channel_id"].as_str().unwrap();
                let key = if c["channel_type"] == 1 { person_key(uid, id) } else { id.to_owned() };
                (key, c["unread"].as_u64().unwrap())
            })
            .collect();
        let want: BTreeMap<String, u64> = oracle
            .cursors
            .keys()
            .filter(|(u, key)| u == uid && oracle.log.get(key).is_some_and(|l| !l.is_empty()))
            .map(|(_, key)| (key.clone(), oracle.unread(uid, key)))
            .collect();
        assert_eq!(got, want, "seed {seed}: unread counts of {uid}");
    }
    server.stop().await;
}
