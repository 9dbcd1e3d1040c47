//! Stored messages as the WuKongIM API shows them, serialized straight from the stored
//! form: the pages of `/channel/messagesync` and `/conversation/sync` hold up to
//! thousands of messages, and building a `serde_json::Value` tree for each (a map, a
//! string per field, a base64 copy of the payload) cost more than reading them.

use base64::display::Base64Display;
use hongyan_store::{ChannelKey, StoredMessage};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use crate::wukong::PERSON;

/// One message; its fields in the order WuKongIM writes them.
#[derive(Serialize)]
pub(crate) struct MessageOut<'a> {
    header: HeaderOut,
    setting: u8,
    message_id: i64,
    /// The id as a string: ids pass 2^53, beyond what a JavaScript number holds.
    #[serde(serialize_with = "as_string")]
    message_idstr: i64,
    client_msg_no: &'a str,
    message_seq: u64,
    from_uid: &'a str,
    channel_id: &'a str,
    channel_type: u8,
    expire: u32,
    timestamp: i64,
    #[serde(serialize_with = "as_base64")]
    payload: &'a [u8],
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    /// What happened to it after it was stored (revoked, edited, read, reactions), in
    /// `/message/extras`' shape; only where something did.
    #[serde(skip_serializing_if = "Option::is_none")]
    message_extra: Option<Value>,
}

#[derive(Serialize)]
struct HeaderOut {
    no_persist: u8,
    red_dot: u8,
    sync_once: u8,
}

fn as_string<S: Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn as_base64<S: Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Base64Display::new(bytes, &base64::engine::general_purpose::STANDARD))
}

impl<'a> MessageOut<'a> {
    /// `m` of `channel` as `viewer` sees it: a person channel is named by the member
    /// that is not `viewer`, and the system uid shows as "".
    pub(crate) fn new(m: &'a StoredMessage, channel: &'a ChannelKey, system_uid: &str, viewer: &str) -> Self {
        let header = hongyan_proto::HeaderFlags::from_bits(m.message.header);
        let from = m.message.from_uid.as_str();
        let channel_id = if channel.channel_type == PERSON {
            hongyan_core::channel::person_channel_members(&channel.channel_id)
                .map(|(a, b)| if a == viewer { b } else { a })
                .unwrap_or_default()
        } else {
            channel.channel_id.as_str()
        };
        Self {
            header: HeaderOut {
                no_persist: u8::from(header.no_persist),
                red_dot: u8::from(header.red_dot),
                sync_once: u8::from(header.sync_once),
            },
            setting: m.message.setting,
            message_id: m.message.message_id,
            message_idstr: m.message.message_id,
            client_msg_no: &m.message.client_msg_no,
            message_seq: m.seq,
            from_uid: if from == system_uid { "" } else { from },
            channel_id,
            channel_type: channel.channel_type,
            expire: m.message.expire,
            timestamp: m.message.timestamp_ms / 1000,
            payload: &m.message.payload,
            topic: m.message.topic.as_deref(),
            message_extra: None,
        }
    }

    /// With what happened to it after it was stored.
    pub(crate) fn with_extra(self, message_extra: Option<Value>) -> Self {
        Self { message_extra, ..self }
    }

    /// As a JSON value, for answers that embed it in one.
    pub(crate) fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A `/channel/messagesync` page: the request's bounds echoed under its dialect's
/// names, whether there is more, and the messages.
pub(crate) struct SyncPage<'a> {
    pub(crate) bounds: [(&'static str, u64); 2],
    pub(crate) more: bool,
    pub(crate) messages: Vec<MessageOut<'a>>,
}

impl Serialize for SyncPage<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(4))?;
        for (name, value) in &self.bounds {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("more", &u8::from(self.more))?;
        map.serialize_entry("messages", &self.messages)?;
        map.end()
    }
}

/// One conversation of `/conversation/sync`.
#[derive(Serialize)]
pub(crate) struct ConversationOut<'a> {
    pub(crate) channel_id: &'a str,
    pub(crate) channel_type: u8,
    pub(crate) unread: u64,
    pub(crate) timestamp: i64,
    pub(crate) last_msg_seq: u64,
    pub(crate) last_client_msg_no: &'a str,
    pub(crate) offset_msg_seq: u64,
    pub(crate) readed_to_msg_seq: u64,
    pub(crate) version: i64,
    pub(crate) recents: Vec<MessageOut<'a>>,
}

/// `value` as a JSON response body.
pub(crate) fn json_response(value: &impl Serialize) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match serde_json::to_vec(value) {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => crate::ApiError::bad(format!("answer could not be written: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hongyan_store::NewMessage;
    use serde_json::json;

    #[test]
    fn a_message_renders_as_the_value_it_replaced() {
        let m = StoredMessage {
            seq: 7,
            message: NewMessage {
                message_id: 9_007_199_254_740_993,
                timestamp_ms: 1_700_000_000_123,
                from_uid: "sys".into(),
                client_msg_no: "c1".into(),
                header: hongyan_proto::HeaderFlags { red_dot: true, ..Default::default() }.bits(),
                setting: 2,
                expire: 60,
                topic: Some("t".into()),
                payload: axum::body::Bytes::from_static(&[0xff, 0, 1]),
            },
        };
        let person = ChannelKey::new(hongyan_core::channel::person_channel_id("ann", "bob"), PERSON);
        let out = MessageOut::new(&m, &person, "sys", "ann").to_value();
        assert_eq!(
            out,
            json!({"header": {"no_persist": 0, "red_dot": 1, "sync_once": 0}, "setting": 2,
                "message_id": 9_007_199_254_740_993_i64, "message_idstr": "9007199254740993", "client_msg_no": "c1",
                "message_seq": 7, "from_uid": "", "channel_id": "bob", "channel_type": 1, "expire": 60,
                "timestamp": 1_700_000_000, "payload": "/wAB", "topic": "t"})
        );
        let page =
            SyncPage { bounds: [("start_message_seq", 0), ("end_message_seq", 9)], more: true, messages: vec![] };
        assert_eq!(
            serde_json::to_value(&page).unwrap(),
            json!({"start_message_seq": 0, "end_message_seq": 9, "more": 1, "messages": []})
        );
    }
}
