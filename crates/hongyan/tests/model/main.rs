//! A seeded random workload against a simple in-memory oracle, over the real server:
//! users with several devices, groups whose membership and blacklists change, person
//! chats with blacklists, sends and resends of the same client_msg_no, disconnects and
//! reconnects, and changes to stored messages (revoke, edit, read, reactions) by their
//! senders, other users and the app server. After every send the oracle's SENDACK code
//! and seq must match, and every online device of every recipient must get the message;
//! after every change the answer and the extra version must match, and every online
//! device the change concerns must get its notice; at the end every device must have
//! received exactly what the oracle expects, in order, and message sync (with each
//! message's extra), unread counts and every user's view of every channel's extras
//! must equal the oracle's.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

#[path = "../common/mod.rs"]
mod common;
mod oracle;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TestServer, b64};
use hongyan_proto::{Packet, ReasonCode, Send, device_flag};
use hongyan_testkit::{Client, ClientError};
use oracle::{ChangeKind, Extra, Oracle, named, oracle_fields, person_key};
use serde_json::{Value, json};

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
            let (channel_id, text) = notice(&recv, &text).unwrap_or((recv.channel_id, text));
            device.received.push((channel_id, recv.message_seq, text));
            Ok(())
        }
        other => panic!("{} got {other:?}", device.uid),
    }
}

/// A message change's notice as the devices' lists hold it: the channel it names and
/// `extras <version>`, after checking that it is the command the SDKs expect and is
/// not stored (one addressed to some users only comes through a temporary channel).
fn notice(recv: &hongyan_proto::Recv, text: &str) -> Option<(String, String)> {
    let cmd = serde_json::from_str::<serde_json::Value>(text).ok()?;
    assert!(recv.flags.no_persist, "a notice is not stored: {text}");
    assert_eq!((cmd["type"].as_u64(), cmd["cmd"].as_str()), (Some(99), Some("syncMessageExtra")), "{text}");
    Some((cmd["param"]["channel_id"].as_str()?.to_owned(), format!("extras {}", cmd["param"]["extra_version"])))
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
        match rng.below(12) {
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
            // A change to a stored message, by its sender, another user or the app server.
            10 | 11 => {
                let keys: Vec<String> = oracle.log.keys().cloned().collect();
                if keys.is_empty() {
                    continue;
                }
                let key = keys[rng.below(keys.len())].clone();
                let message = oracle.log[&key][rng.below(oracle.log[&key].len())].clone();
                let change = match rng.below(5) {
                    0 => ChangeKind::Revoke,
                    1 => ChangeKind::Edit,
                    2 => ChangeKind::Read,
                    n => ChangeKind::React { kind: ["+1", "ok"][rng.below(2)], add: n == 3 },
                };
                let operator = match rng.below(6) {
                    0 if matches!(change, ChangeKind::Revoke | ChangeKind::Edit) => None,
                    1 | 2 => Some(message.from.clone()),
                    _ => Some(USERS[rng.below(4)].to_owned()),
                };
                let viewer = operator.clone().unwrap_or_else(|| message.from.clone());
                let (channel_id, channel_type) = named(&key, &viewer);
                let text = format!("edit {op}");
                let id = message.message_id;
                let (path, body) = match change {
                    ChangeKind::Revoke | ChangeKind::Edit => (
                        if matches!(change, ChangeKind::Revoke) { "/message/revoke" } else { "/message/edit" },
                        json!({"login_uid": viewer, "from_uid": operator.clone().unwrap_or_default(),
                               "channel_id": channel_id, "channel_type": channel_type, "message_id": id,
                               "payload": b64(&text)}),
                    ),
                    ChangeKind::Read => (
                        "/message/readed",
                        json!({"uid": viewer, "channel_id": channel_id, "channel_type": channel_type,
                               "message_ids": [id]}),
                    ),
                    ChangeKind::React { kind, add } => (
                        "/message/reaction",
                        json!({"uid": viewer, "channel_id": channel_id, "channel_type": channel_type,
                               "message_id": id, "emoji": kind, "action": if add { "add" } else { "remove" }}),
                    ),
                };
                let (status, answer) = server.post(path, body).await;
                let what = format!("seed {seed} op {op}: {change:?} of {key}#{} by {operator:?}", message.seq);
                let Ok((extra, changed)) = oracle.change(&key, message.seq, operator.as_deref(), change, &text) else {
                    assert_eq!(status, 400, "{what}: {answer}");
                    continue;
                };
                assert_eq!(status, 200, "{what}: {answer}");
                let answer = if answer.is_array() { answer[0].clone() } else { answer };
                assert_eq!(extra_fields(&answer), oracle_fields(&extra), "{what}");
                if !changed {
                    continue;
                }
                // Who is told: for a read its sender, else every member (both sides of
                // a person chat), on every online device.
                let person = hongyan_core::channel::person_channel_members(&key);
                for device in devices.iter_mut().filter(|d| d.client.is_some()) {
                    let told = match (change, person) {
                        (ChangeKind::Read, _) => device.uid == message.from,
                        (_, Some((a, b))) => device.uid == a || device.uid == b,
                        (_, None) => oracle.members.get(key.as_str()).is_some_and(|m| m.contains(device.uid)),
                    };
                    if !told {
                        continue;
                    }
                    device.expected.push((named(&key, device.uid).0, 0, format!("extras {}", extra.version)));
                    while device.received.len() < device.expected.len() {
                        take_recv(device, Duration::from_secs(5))
                            .await
                            .unwrap_or_else(|e| panic!("{what}: {} waited for the notice: {e}", device.uid));
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
                let key = if group { to.to_owned() } else { person_key(from, to) };
                oracle.log.get_mut(&key).unwrap()[seq as usize - 1].message_id = ack.message_id;
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
        // Each message with what happened to it, where something did.
        let got: Vec<(u64, String, String, Value)> = answer["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["message_seq"].as_u64().unwrap(),
                    m["from_uid"].as_str().unwrap().to_owned(),
                    m["client_msg_no"].as_str().unwrap().to_owned(),
                    m.get("message_extra").map_or(Value::Null, extra_fields),
                )
            })
            .collect();
        let extras = oracle.extras.get(key);
        let want: Vec<(u64, String, String, Value)> = log
            .iter()
            .map(|m| {
                let extra = extras.and_then(|e| e.get(&m.seq)).map_or(Value::Null, oracle_fields);
                (m.seq, m.from.clone(), m.client_msg_no.clone(), extra)
            })
            .collect();
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
    // Every user's view of every channel's extras equals the oracle's: each changed
    // message once, oldest change first, with what the viewer read and gave.
    for (key, extras) in &oracle.extras {
        let person = hongyan_core::channel::person_channel_members(key);
        let mut want: Vec<(u64, &Extra)> = extras.iter().map(|(seq, e)| (*seq, e)).collect();
        want.sort_by_key(|(_, e)| e.version);
        for viewer in USERS.into_iter().filter(|u| person.is_none_or(|(a, b)| a == *u || b == *u)) {
            let (channel_id, channel_type) = named(key, viewer);
            let after = want.len() as u64 / 2;
            let body = json!({"login_uid": viewer, "channel_id": channel_id, "channel_type": channel_type,
                              "extra_version": want.get(after as usize).map_or(0, |(_, e)| e.version - 1),
                              "limit": 1000});
            let (status, answer) = server.post("/message/extra/sync", body.clone()).await;
            assert_eq!(status, 200, "{answer}");
            let got: Vec<Value> = answer.as_array().unwrap().iter().map(view_fields).collect();
            let audience = match person {
                Some(_) => 1,
                None => oracle.members.get(key.as_str()).map_or(0, |m| m.len() as u64).saturating_sub(1),
            };
            let expected: Vec<Value> = want[after as usize..]
                .iter()
                .map(|(seq, e)| {
                    let message = &oracle.log[key][*seq as usize - 1];
                    let mut v = oracle_fields(e);
                    v["message_id"] = json!(message.message_id);
                    v["message_seq"] = json!(seq);
                    v["readed"] = json!(u8::from(e.readers.contains(viewer)));
                    v["unread_count"] = json!(audience.saturating_sub(e.readers.len() as u64));
                    v["my_reactions"] = json!(
                        e.reactions.iter().filter(|(_, g)| g.contains(viewer)).map(|(k, _)| k).collect::<Vec<_>>()
                    );
                    v
                })
                .collect();
            assert_eq!(got, expected, "seed {seed}: extras of {key} as {viewer} sees them ({body})");
        }
    }
    server.stop().await;
}

/// What an answer says of a message's extra that the oracle knows.
fn extra_fields(e: &Value) -> Value {
    json!({
        "extra_version": e["extra_version"], "revoke": e["revoke"], "revoker": e["revoker"],
        "content_edit": e["content_edit"], "readed_count": e["readed_count"], "reactions": e["reactions"],
    })
}

/// [`extra_fields`] with what a sync adds: which message, and the viewer's part.
fn view_fields(e: &Value) -> Value {
    let mut v = extra_fields(e);
    for field in ["message_id", "message_seq", "readed", "unread_count", "my_reactions"] {
        v[field] = e[field].clone();
    }
    v
}
