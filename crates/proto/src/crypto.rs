//! Key agreement and message encryption, exactly as the WuKongIM SDKs do it.
//!
//! * Each side has an X25519 key pair; public keys travel as padded standard base64.
//! * `aes_key = hex(md5(base64(shared_secret)))[..16]`: sixteen ASCII characters used
//!   as the AES-128 key bytes.
//! * The server's 16-character alphanumeric salt is the IV, for the whole connection.
//! * Encrypting means `base64(AES-128-CBC-PKCS#7(key, iv, bytes))`; payloads travel as
//!   that base64 text.
//! * `msgKey = hex(md5(encrypt(verify_string)))`, where SEND and RECV each define the
//!   verify string as a plain concatenation of decimal numbers and strings.

use aes::Aes128;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use md5::{Digest, Md5};
use std::fmt;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::{CryptoError, Recv, Send};

/// Length of the salt the server sends and of the IV taken from it.
pub const SALT_LEN: usize = 16;

/// Padded standard base64 that also reads keys sent without padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type CbcEncryptor = cbc::Encryptor<Aes128>;
type CbcDecryptor = cbc::Decryptor<Aes128>;

/// Fills `buf` from the operating system's random source.
fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Random)
}

/// One side's X25519 key pair.
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair").field("public", &self.public_key_base64()).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A key pair whose private scalar is `secret` (clamped by X25519, as the JS SDK's
    /// `curve25519-js` does with its seed).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// A fresh random key pair.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut secret = [0; 32];
        random_bytes(&mut secret)?;
        Ok(Self::from_secret(secret))
    }

    /// The public key as the wire carries it: padded standard base64 of 32 bytes.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.public.as_bytes())
    }

    /// The X25519 shared secret with the peer whose public key is `peer_key_base64`.
    ///
    /// Like the Go server, only the first 32 decoded bytes are used. Keys that decode to
    /// fewer bytes, and low-order points (which would make the secret predictable), are
    /// refused.
    pub fn shared_secret(&self, peer_key_base64: &str) -> Result<[u8; 32], CryptoError> {
        if peer_key_base64.is_empty() {
            return Err(CryptoError::EmptyPeerKey);
        }
        let decoded = LENIENT_BASE64.decode(peer_key_base64).map_err(|_| CryptoError::InvalidPeerKey("not base64"))?;
        let peer: [u8; 32] = decoded
            .get(..32)
            .and_then(|b| b.try_into().ok())
            .ok_or(CryptoError::InvalidPeerKey("shorter than 32 bytes"))?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(peer));
        if !shared.was_contributory() {
            return Err(CryptoError::InvalidPeerKey("low-order point"));
        }
        Ok(shared.to_bytes())
    }

    /// The session cipher agreed with the peer, using the server's `salt` as IV.
    pub fn session(&self, peer_key_base64: &str, salt: &str) -> Result<SessionCipher, CryptoError> {
        SessionCipher::from_shared_secret(&self.shared_secret(peer_key_base64)?, salt)
    }
}

/// Sixteen random characters from `[0-9a-zA-Z]`, for a CONNACK's salt.
pub fn generate_salt() -> Result<String, CryptoError> {
    const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut salt = String::with_capacity(SALT_LEN);
    let mut pool = [0u8; 32];
    while salt.len() < SALT_LEN {
        random_bytes(&mut pool)?;
        // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
        for &b in pool.iter().filter(|&&b| b < 248) {
            if salt.len() == SALT_LEN {
                break;
            }
            salt.push(char::from(ALPHABET[usize::from(b % 62)]));
        }
    }
    Ok(salt)
}

/// The AES key and IV of one connection. 32 bytes; the key schedule is recomputed per
/// message, which costs less than keeping it for every idle connection.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionCipher {
    key: [u8; 16],
    iv: [u8; 16],
}

impl fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionCipher { .. }")
    }
}

impl SessionCipher {
    /// Derives the cipher: key from the shared secret, IV from the first 16 bytes of `salt`.
    pub fn from_shared_secret(shared: &[u8; 32], salt: &str) -> Result<Self, CryptoError> {
        let iv: [u8; 16] = salt
            .as_bytes()
            .get(..SALT_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(CryptoError::InvalidSalt(salt.len()))?;
        let digest = Md5::digest(STANDARD.encode(shared).as_bytes());
        let hex = hex32(&digest.into());
        let mut key = [0; 16];
        key.copy_from_slice(&hex[..16]);
        Ok(Self { key, iv })
    }

    /// The 16 ASCII characters used as the AES key.
    pub fn aes_key(&self) -> &[u8; 16] {
        &self.key
    }

    /// The 16 bytes used as the IV.
    pub fn iv(&self) -> &[u8; 16] {
        &self.iv
    }

    /// `base64(AES-CBC(plain))` as ASCII bytes.
    pub fn encrypt_base64(&self, plain: &[u8]) -> Vec<u8> {
        with_scratch(|scratch| {
            let cipher_text = self.encrypt_into(plain, &mut scratch.cipher_text);
            let mut out = vec![0; base64_len(cipher_text.len())];
            let written = STANDARD.encode_slice(cipher_text, &mut out).expect("invariant: sized for the text");
            out.truncate(written);
            out
        })
    }

    /// AES-CBC(plain) written into `buf` (grown as needed), returned.
    fn encrypt_into<'b>(&self, plain: &[u8], buf: &'b mut Vec<u8>) -> &'b [u8] {
        // PKCS#7 always adds 1 to 16 bytes.
        let padded = (plain.len() / 16 + 1) * 16;
        if buf.len() < padded {
            buf.resize(padded, 0);
        }
        CbcEncryptor::new(&self.key.into(), &self.iv.into())
            .encrypt_padded_b2b_mut::<Pkcs7>(plain, &mut buf[..padded])
            .expect("invariant: the buffer holds the padded text")
    }

    /// Reverses [`Self::encrypt_base64`].
    pub fn decrypt_base64(&self, encoded: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher_text = STANDARD.decode(encoded).map_err(|_| CryptoError::Decrypt("not base64"))?;
        CbcDecryptor::new(&self.key.into(), &self.iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&cipher_text)
            .map_err(|_| CryptoError::Decrypt("bad length or padding"))
    }

    /// `hex(md5(encrypt_base64(verify)))`: 32 lowercase hex characters.
    pub fn msg_key(&self, verify: &[u8]) -> String {
        with_scratch(|scratch| self.msg_key_with(verify, &mut scratch.cipher_text))
    }

    /// [`Self::msg_key`] with `buf` for the cipher text: the base64 text is hashed as
    /// it is produced, a stack chunk at a time, never held whole.
    fn msg_key_with(&self, verify: &[u8], buf: &mut Vec<u8>) -> String {
        let cipher_text = self.encrypt_into(verify, buf);
        let mut md5 = Md5::new();
        // Whole groups of 3 bytes per chunk, so the chunks' base64 concatenates to the
        // whole's (padding only at the very end).
        let mut chunk = [0u8; 1024];
        for part in cipher_text.chunks(768) {
            let n = STANDARD.encode_slice(part, &mut chunk).expect("invariant: 768 bytes fit 1,024 base64");
            md5.update(&chunk[..n]);
        }
        String::from_utf8(hex32(&md5.finalize().into()).to_vec()).expect("invariant: hex digits are ASCII")
    }

    /// The msgKey of a SEND: over `client_seq ‖ client_msg_no ‖ channel_id ‖ channel_type ‖
    /// payload` (the payload as sent, i.e. still base64). Expire, topic and setting are
    /// not covered.
    pub fn send_msg_key(&self, send: &Send) -> String {
        let mut verify = Vec::with_capacity(32 + send.client_msg_no.len() + send.channel_id.len() + send.payload.len());
        push_decimal(&mut verify, send.client_seq);
        verify.extend_from_slice(send.client_msg_no.as_bytes());
        verify.extend_from_slice(send.channel_id.as_bytes());
        push_decimal(&mut verify, send.channel_type);
        verify.extend_from_slice(&send.payload);
        self.msg_key(&verify)
    }

    /// The msgKey of a RECV: over `message_id ‖ message_seq ‖ client_msg_no ‖ timestamp ‖
    /// from_uid ‖ channel_id ‖ channel_type ‖ payload`, with the values as written in
    /// the packet (the per-recipient channel id, the base64 payload).
    pub fn recv_msg_key(&self, recv: &Recv) -> String {
        with_scratch(|scratch| {
            let verify = &mut scratch.verify;
            verify.clear();
            push_decimal(verify, recv.message_id);
            push_decimal(verify, recv.message_seq);
            verify.extend_from_slice(recv.client_msg_no.as_bytes());
            push_decimal(verify, recv.timestamp);
            verify.extend_from_slice(recv.from_uid.as_bytes());
            verify.extend_from_slice(recv.channel_id.as_bytes());
            push_decimal(verify, recv.channel_type);
            verify.extend_from_slice(&recv.payload);
            self.msg_key_with(&scratch.verify, &mut scratch.cipher_text)
        })
    }

    /// Client side: encrypts `plain` into the SEND's payload and sets its msgKey.
    /// Every other field must be final, since the msgKey covers them.
    pub fn seal_send(&self, send: &mut Send, plain: &[u8]) {
        send.payload = self.encrypt_base64(plain).into();
        send.msg_key = self.send_msg_key(send);
    }

    /// Server side: checks the SEND's msgKey and returns the decrypted payload.
    pub fn open_send(&self, send: &Send) -> Result<Vec<u8>, CryptoError> {
        if !eq_constant_time(self.send_msg_key(send).as_bytes(), send.msg_key.as_bytes()) {
            return Err(CryptoError::MsgKeyMismatch);
        }
        self.decrypt_base64(&send.payload)
    }

    /// Server side: encrypts `plain` into the RECV's payload and sets its msgKey.
    /// Every other field must be final, since the msgKey covers them.
    pub fn seal_recv(&self, recv: &mut Recv, plain: &[u8]) {
        recv.payload = self.encrypt_base64(plain).into();
        recv.msg_key = self.recv_msg_key(recv);
    }

    /// Client side: checks the RECV's msgKey and returns the decrypted payload.
    pub fn open_recv(&self, recv: &Recv) -> Result<Vec<u8>, CryptoError> {
        if !eq_constant_time(self.recv_msg_key(recv).as_bytes(), recv.msg_key.as_bytes()) {
            return Err(CryptoError::MsgKeyMismatch);
        }
        self.decrypt_base64(&recv.payload)
    }
}

/// Per-thread buffers for the texts a RECV's encryption passes through (a RECV is
/// sealed once per recipient connection, so these would otherwise be allocated and
/// freed for every delivery).
#[derive(Default)]
struct Scratch {
    cipher_text: Vec<u8>,
    verify: Vec<u8>,
}

/// A buffer grown past this by a large payload is given back after use.
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let out = f(&mut scratch);
            let Scratch { cipher_text, verify } = &mut *scratch;
            for buf in [cipher_text, verify] {
                if buf.capacity() > SCRATCH_KEEP {
                    *buf = Vec::new();
                }
            }
            out
        }
        // Not reentered by this module; fresh buffers if it ever were.
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The length of padded base64 for `n` bytes.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn push_decimal(out: &mut Vec<u8>, value: impl fmt::Display) {
    use std::io::Write as _;
    write!(out, "{value}").expect("invariant: writing to a Vec cannot fail");
}

fn hex32(digest: &[u8; 16]) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// Compares without an early exit, so timing does not reveal how much of a msgKey matched.
fn eq_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_keys_of_long_texts_hash_the_whole_base64_and_big_buffers_are_given_back() {
        let cipher = SessionCipher::from_shared_secret(&[7; 32], "abcdefghijklmnop").unwrap();
        // Across the 768-byte hashing chunks and past what the thread keeps.
        for len in [0, 1, 15, 16, 767, 768, 769, 2_000, 100_000] {
            let verify: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let whole = Md5::digest(cipher.encrypt_base64(&verify));
            assert_eq!(cipher.msg_key(&verify).as_bytes(), hex32(&whole.into()), "{len} bytes");
            let back = cipher.decrypt_base64(&cipher.encrypt_base64(&verify)).unwrap();
            assert_eq!(back, verify, "{len} bytes round trip");
        }
        SCRATCH.with(|s| {
            let s = s.borrow();
            assert!(s.cipher_text.capacity() <= SCRATCH_KEEP && s.verify.capacity() <= SCRATCH_KEEP);
        });
    }

    #[test]
    fn salt_is_sixteen_alphanumerics_and_varies() {
        let a = generate_salt().unwrap();
        let b = generate_salt().unwrap();
        assert_eq!(a.len(), SALT_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn peer_key_problems_map_to_connack_codes() {
        let keys = KeyPair::generate().unwrap();
        let empty = keys.shared_secret("").unwrap_err();
        assert_eq!(empty.reason_code(), crate::ReasonCode::ClientKeyIsEmpty);
        let short = keys.shared_secret("AAAA").unwrap_err();
        assert_eq!(short, CryptoError::InvalidPeerKey("shorter than 32 bytes"));
        assert_eq!(short.reason_code(), crate::ReasonCode::AuthFail);
        assert_eq!(keys.shared_secret("!!").unwrap_err(), CryptoError::InvalidPeerKey("not base64"));
        let zero = STANDARD.encode([0u8; 32]);
        assert_eq!(keys.shared_secret(&zero).unwrap_err(), CryptoError::InvalidPeerKey("low-order point"));
    }

    #[test]
    fn both_sides_agree_and_tampering_is_caught() {
        let client = KeyPair::generate().unwrap();
        let server = KeyPair::generate().unwrap();
        let salt = generate_salt().unwrap();
        let c = client.session(&server.public_key_base64(), &salt).unwrap();
        let s = server.session(&client.public_key_base64(), &salt).unwrap();
        assert_eq!(c, s);

        let mut send = Send {
            client_seq: 9,
            client_msg_no: "n".into(),
            channel_id: "g1".into(),
            channel_type: 2,
            ..Send::default()
        };
        c.seal_send(&mut send, b"hello");
        assert_eq!(s.open_send(&send).unwrap(), b"hello");

        let mut changed = send.clone();
        changed.channel_id = "g2".into();
        assert_eq!(s.open_send(&changed).unwrap_err(), CryptoError::MsgKeyMismatch);
        assert_eq!(s.open_send(&changed).unwrap_err().reason_code(), crate::ReasonCode::PayloadDecodeError);
    }

    #[test]
    fn short_salt_is_refused() {
        assert_eq!(SessionCipher::from_shared_secret(&[1; 32], "short").unwrap_err(), CryptoError::InvalidSalt(5));
    }

    #[test]
    fn garbage_ciphertext_is_an_error_not_a_panic() {
        let c = SessionCipher::from_shared_secret(&[7; 32], "abcdefghijklmnop").unwrap();
        assert!(c.decrypt_base64(b"not base64!").is_err());
        assert!(c.decrypt_base64(b"AAAA").is_err()); // 3 bytes: not a whole block
        assert!(c.decrypt_base64(&STANDARD.encode([0u8; 16]).into_bytes()).is_err());
    }
}
