//! Both ends of the CONNECT/CONNACK exchange, without IO or clocks: callers pass the
//! time, the key pair and the salt in.

use crate::{Connack, Connect, CryptoError, KeyPair, ProtocolVersion, ReasonCode, SessionCipher};

/// The server's view of a CONNECT: what the connection will speak and how to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHandshake {
    client_version: u8,
    version: ProtocolVersion,
    time_diff: i64,
    node_id: u64,
}

impl ServerHandshake {
    /// Starts answering `connect` at `server_now_ms` on node `node_id`.
    pub fn new(connect: &Connect, server_now_ms: i64, node_id: u64) -> Self {
        Self {
            client_version: connect.version,
            version: ProtocolVersion::negotiate(connect.version),
            time_diff: server_now_ms.wrapping_sub(connect.client_timestamp),
            node_id,
        }
    }

    /// The version the connection speaks from the CONNACK on.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    fn connack(&self, reason_code: ReasonCode, server_key: String, salt: String) -> Connack {
        Connack {
            server_version: ProtocolVersion::connack_has_server_version(self.client_version)
                .then(|| self.version.get()),
            time_diff: self.time_diff,
            reason_code,
            server_key,
            salt,
            // Only v4+ carries it; keeping the struct equal to what the wire says.
            node_id: if self.version.has_node_id() { self.node_id } else { 0 },
        }
    }

    /// A successful CONNACK and the connection's cipher, agreed with the client key.
    /// Fails with the reason to [`refuse`](Self::refuse) with when the key is unusable.
    pub fn accept(
        &self,
        client_key: &str,
        keys: &KeyPair,
        salt: String,
    ) -> Result<(Connack, SessionCipher), CryptoError> {
        let cipher = keys.session(client_key, &salt)?;
        Ok((self.connack(ReasonCode::Success, keys.public_key_base64(), salt), cipher))
    }

    /// A successful CONNACK for a server running without encryption (empty key and salt).
    pub fn accept_unencrypted(&self) -> Connack {
        self.connack(ReasonCode::Success, String::new(), String::new())
    }

    /// A CONNACK refusing the login with `reason`. The official SDKs stop reconnecting
    /// on any refusal, so always send one rather than closing silently.
    pub fn refuse(&self, reason: ReasonCode) -> Connack {
        self.connack(reason, String::new(), String::new())
    }
}

/// Why a client's handshake did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The server refused the login.
    #[error("the server refused the connection: {0}")]
    Refused(ReasonCode),
    /// The server's key or salt is unusable.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The client's side: builds CONNECT and turns the CONNACK into a cipher.
///
/// Decode the CONNACK with a codec set to the version the client announced: whether
/// the node id is present depends on it, not on the newest version.
#[derive(Debug)]
pub struct ClientHandshake {
    keys: KeyPair,
    version: u8,
}

impl ClientHandshake {
    /// A client speaking `version` with key pair `keys`.
    pub fn new(keys: KeyPair, version: u8) -> Self {
        Self { keys, version }
    }

    /// The CONNECT packet offering this client's public key.
    pub fn connect(&self, uid: &str, token: &str, device_flag: u8, device_id: &str, now_ms: i64) -> Connect {
        Connect {
            version: self.version,
            device_flag,
            device_id: device_id.to_owned(),
            uid: uid.to_owned(),
            token: token.to_owned(),
            client_timestamp: now_ms,
            client_key: self.keys.public_key_base64(),
        }
    }

    /// The version to speak and the cipher, from the server's CONNACK. Servers send
    /// their version only to clients above v3; without it the client keeps its own.
    pub fn finish(&self, connack: &Connack) -> Result<(ProtocolVersion, SessionCipher), HandshakeError> {
        if connack.reason_code != ReasonCode::Success {
            return Err(HandshakeError::Refused(connack.reason_code));
        }
        let announced = connack.server_version.unwrap_or(self.version).min(self.version);
        let cipher = self.keys.session(&connack.server_key, &connack.salt)?;
        Ok((ProtocolVersion::negotiate(announced), cipher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate_salt;

    fn connect(version: u8) -> (ClientHandshake, Connect) {
        let client = ClientHandshake::new(KeyPair::generate().unwrap(), version);
        let c = client.connect("u1", "t1", 1, "d1", 1_000);
        (client, c)
    }

    #[test]
    fn every_version_agrees_on_cipher_and_version() {
        let server_keys = KeyPair::generate().unwrap();
        for version in 1..=7 {
            let (client, c) = connect(version);
            let server = ServerHandshake::new(&c, 1_015, 42);
            let (connack, server_cipher) =
                server.accept(&c.client_key, &server_keys, generate_salt().unwrap()).unwrap();
            assert_eq!(connack.time_diff, 15);
            assert_eq!(connack.server_version.is_some(), version > 3, "version {version}");
            let (negotiated, client_cipher) = client.finish(&connack).unwrap();
            assert_eq!(negotiated, server.version());
            assert_eq!(negotiated.get(), version.min(5));
            assert_eq!(client_cipher, server_cipher);
        }
    }

    #[test]
    fn refusal_carries_the_reason_and_no_keys() {
        let (client, c) = connect(5);
        let connack = ServerHandshake::new(&c, 0, 1).refuse(ReasonCode::Ban);
        assert_eq!(connack.reason_code, ReasonCode::Ban);
        assert!(connack.server_key.is_empty() && connack.salt.is_empty());
        assert_eq!(client.finish(&connack).unwrap_err(), HandshakeError::Refused(ReasonCode::Ban));
    }

    #[test]
    fn bad_client_key_gives_the_reason_to_refuse_with() {
        let (_, mut c) = connect(2);
        c.client_key.clear();
        let server = ServerHandshake::new(&c, 0, 1);
        let err = server.accept(&c.client_key, &KeyPair::generate().unwrap(), generate_salt().unwrap()).unwrap_err();
        assert_eq!(server.refuse(err.reason_code()).reason_code, ReasonCode::ClientKeyIsEmpty);
    }
}
