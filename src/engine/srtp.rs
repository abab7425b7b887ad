//! SRTP for the fan-out, outside the stack's per-packet pipeline.
//!
//! Through `rtc`, every forwarded packet walks eight protocol handlers per subscriber: it is
//! moved through each one's queue, marshalled into a fresh buffer and encrypted into another.
//! That was half of the worker's time. Here a packet is marshalled once into a reused buffer and
//! protected in place (RFC 3711 for AES-CM/HMAC-SHA1, RFC 7714 for AES-GCM), with the ciphers of
//! `rtc`'s own crypto provider, and goes straight to the socket queue.
//!
//! The keys are the ones the stack derived from the DTLS handshake. `rtc` 0.21 does not hand
//! them out, but it takes a crypto provider per peer connection (a documented extension point),
//! and SRTP key derivation is the only single-block AES it performs: [`KeyTap`] passes every
//! operation through to the real provider and notes the inputs of those, from which the master
//! key and salt follow (RFC 3711 §4.3.1). Nothing is guessed into use: a candidate key is taken
//! only once it authenticates a packet the stack itself protected for that peer connection
//! ([`KeyTap::prove`]); until then, and if that never happens, packets go through the stack.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher,
    StreamCipherAlgorithm,
};

/// Key-derivation blocks noted per peer connection: a handshake derives 2 contexts × 4 to 5
/// keys of 1 to 2 blocks; anything past this is not a handshake's and is not kept.
const MAX_TAPPED_BLOCKS: usize = 32;
/// The key derivation labels of RFC 3711 §4.3.2, the SRTP encryption key's first: it is the
/// first block derived from each master key, so the right candidate is usually tried first.
const LABELS: [u8; 6] = [0x00, 0x02, 0x03, 0x05, 0x01, 0x04];
/// Bytes of an RTP header before the CSRC list.
const FIXED_HEADER: usize = 12;
/// The stack's RTP packets on a connection tried as proof before its keys are given up on
/// (the first one does it, unless the key exchange was not the handshake's).
const MAX_PROOF_TRIES: u32 = 8;

/// Who protects the media a subscriber connection forwards.
pub enum Writer {
    /// The stack's pipeline: publisher connections, `--srtp-writer stack`, or keys unproven.
    Stack,
    /// Keys tapped, not proven yet: the stack sends until one of its packets proves them.
    Proving { tap: Arc<KeyTap>, tries: u32 },
    /// The worker, to the address the stack last sent media or reports to: ICE's selected
    /// pair, followed within a second of a change (the next sender report goes through the
    /// stack).
    Worker { sender: SrtpSender, to: SocketAddr },
}

/// What a datagram of the stack's told a [`Writer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    Nothing,
    /// Keys proven: the worker protects this connection's media from now on.
    Proven,
    /// No key proven after [`MAX_PROOF_TRIES`] packets: the stack keeps doing it.
    GaveUp,
}

impl Writer {
    /// Looks at a datagram the stack sends on this connection to `to`.
    pub fn observe(&mut self, datagram: &[u8], to: SocketAddr) -> Observed {
        match self {
            Writer::Stack => Observed::Nothing,
            Writer::Proving { tap, tries } => {
                if ssrc_and_seq(datagram).is_none() {
                    return Observed::Nothing;
                }
                if let Some(sender) = tap.prove(datagram) {
                    tap.forget();
                    *self = Writer::Worker { sender, to };
                    return Observed::Proven;
                }
                *tries += 1;
                if *tries < MAX_PROOF_TRIES {
                    return Observed::Nothing;
                }
                tap.forget();
                *self = Writer::Stack;
                Observed::GaveUp
            }
            Writer::Worker {
                sender,
                to: selected,
            } => {
                if ssrc_and_seq(datagram).is_some() {
                    // Sent by the stack in the same batch as the proof: its numbering counts.
                    sender.observe(datagram);
                    *selected = to;
                } else if is_rtcp(datagram) {
                    *selected = to;
                }
                Observed::Nothing
            }
        }
    }

    /// The worker's sender and destination, once keys are proven.
    pub fn direct(&mut self) -> Option<(&mut SrtpSender, SocketAddr)> {
        match self {
            Writer::Worker { sender, to } => Some((sender, *to)),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    #[error("not an RTP packet")]
    NotRtp,
    #[error("marshalling the packet: {0}")]
    Marshal(String),
    #[error("cipher: {0}")]
    Crypto(#[from] CryptoError),
}

/// The protection profiles the worker can apply itself (what `--srtp` may negotiate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Aes128Gcm,
    Aes256Gcm,
    Aes128CmHmacSha1_80,
}

impl Profile {
    const ALL: [Profile; 3] = [
        Profile::Aes128Gcm,
        Profile::Aes256Gcm,
        Profile::Aes128CmHmacSha1_80,
    ];

    fn key_len(self) -> usize {
        match self {
            Profile::Aes256Gcm => 32,
            Profile::Aes128Gcm | Profile::Aes128CmHmacSha1_80 => 16,
        }
    }

    fn salt_len(self) -> usize {
        match self {
            Profile::Aes128Gcm | Profile::Aes256Gcm => 12,
            Profile::Aes128CmHmacSha1_80 => 14,
        }
    }

    /// Bytes the protection adds to a packet.
    pub fn tag_len(self) -> usize {
        match self {
            Profile::Aes128Gcm | Profile::Aes256Gcm => 16,
            Profile::Aes128CmHmacSha1_80 => 10,
        }
    }

    fn block(self) -> BlockCipherAlgorithm {
        match self {
            Profile::Aes256Gcm => BlockCipherAlgorithm::Aes256,
            Profile::Aes128Gcm | Profile::Aes128CmHmacSha1_80 => BlockCipherAlgorithm::Aes128,
        }
    }
}

/// The AES-CM pseudo-random function of RFC 3711 §4.3.3 (key derivation rate 0, as DTLS-SRTP
/// has it): `out_len` bytes of session key material for `label`.
fn derive(
    crypto: &dyn RTCCrypto,
    algorithm: BlockCipherAlgorithm,
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out_len: usize,
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(out_len.div_ceil(16) * 16);
    for counter in 0..out_len.div_ceil(16) {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(counter as u16).to_be_bytes());
        crypto.block_encrypt(algorithm, master_key, &mut block)?;
        out.extend_from_slice(&block);
    }
    out.truncate(out_len);
    Ok(out)
}

enum Cipher {
    Gcm(Box<dyn AeadCipher>),
    CmHmac {
        stream: Box<dyn StreamCipher>,
        mac: Box<dyn Mac>,
    },
}

/// The sending half of one peer connection's SRTP session.
pub struct SrtpSender {
    profile: Profile,
    cipher: Cipher,
    session_salt: [u8; 14],
    /// Highest packet index (rollover counter << 16 | sequence number) sent per SSRC. A
    /// subscriber PC carries a few streams (one per forwarded track): a list beats a map.
    streams: Vec<(u32, u64)>,
}

impl SrtpSender {
    pub fn new(
        crypto: &dyn RTCCrypto,
        profile: Profile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<Self, CryptoError> {
        let block = profile.block();
        let session_key = derive(
            crypto,
            block,
            master_key,
            master_salt,
            0x00,
            master_key.len(),
        )?;
        let salt = derive(
            crypto,
            block,
            master_key,
            master_salt,
            0x02,
            master_salt.len(),
        )?;
        let cipher = match profile {
            Profile::Aes128Gcm | Profile::Aes256Gcm => {
                let algorithm = if profile == Profile::Aes128Gcm {
                    AeadAlgorithm::Aes128Gcm
                } else {
                    AeadAlgorithm::Aes256Gcm
                };
                Cipher::Gcm(crypto.new_aead(algorithm, &session_key)?)
            }
            Profile::Aes128CmHmacSha1_80 => {
                let auth = derive(crypto, block, master_key, master_salt, 0x01, 20)?;
                Cipher::CmHmac {
                    stream: crypto
                        .new_stream_cipher(StreamCipherAlgorithm::Aes128Ctr, &session_key)?,
                    mac: crypto.new_hmac(HmacAlgorithm::Sha1, &auth)?,
                }
            }
        };
        let mut session_salt = [0u8; 14];
        session_salt[..salt.len()].copy_from_slice(&salt);
        Ok(SrtpSender {
            profile,
            cipher,
            session_salt,
            streams: Vec::new(),
        })
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Marshals a packet (`header`, then `payload`) into `buf`, cleared first, and protects
    /// it there: for tests, whose packets are the `rtp` crate's.
    #[cfg(test)]
    fn protect_packet(
        &mut self,
        header: &rtp::header::Header,
        payload: &[u8],
        buf: &mut BytesMut,
    ) -> Result<(), SrtpError> {
        use rtc::shared::marshal::{Marshal, MarshalSize};
        let header_len = header.marshal_size();
        buf.clear();
        buf.resize(header_len, 0);
        header
            .marshal_to(&mut buf[..])
            .map_err(|e| SrtpError::Marshal(e.to_string()))?;
        buf.extend_from_slice(payload);
        self.protect(buf, header_len)
    }

    /// Protects the RTP packet in `buf` (header of `header_len` bytes, then payload) in place,
    /// appending the authentication tag.
    pub fn protect(&mut self, buf: &mut BytesMut, header_len: usize) -> Result<(), SrtpError> {
        let (ssrc, seq) = ssrc_and_seq(buf).ok_or(SrtpError::NotRtp)?;
        if header_len > buf.len() {
            return Err(SrtpError::NotRtp);
        }
        let index = self.index_for(ssrc, seq);
        let roc = (index >> 16) as u32;
        match &mut self.cipher {
            Cipher::Gcm(aead) => {
                let iv = gcm_iv(&self.session_salt, ssrc, roc, seq);
                let mut tag = [0u8; 16];
                let (aad, payload) = buf.split_at_mut(header_len);
                aead.seal_in_place(&iv, aad, payload, &mut tag)?;
                buf.extend_from_slice(&tag);
            }
            Cipher::CmHmac { stream, mac } => {
                let iv = cm_iv(&self.session_salt, ssrc, roc, seq);
                stream.apply_keystream(&iv, &mut buf[header_len..])?;
                let mut tag = [0u8; 20];
                mac.sign(&[&buf[..], &roc.to_be_bytes()], &mut tag)?;
                buf.extend_from_slice(&tag[..self.profile.tag_len()]);
            }
        }
        Ok(())
    }

    /// Notes a packet the stack protected on this session, so the rollover counters go on
    /// from where it left them.
    pub fn observe(&mut self, datagram: &[u8]) {
        if let Some((ssrc, seq)) = ssrc_and_seq(datagram) {
            self.index_for(ssrc, seq);
        }
    }

    /// True if `datagram` is an SRTP packet this session's keys protected (tag verified,
    /// nothing kept): the proof that tapped keys are the stack's.
    fn authenticates(&mut self, datagram: &[u8]) -> bool {
        let Some((ssrc, seq)) = ssrc_and_seq(datagram) else {
            return false;
        };
        let Some(header_len) = header_len(datagram) else {
            return false;
        };
        let tag_len = self.profile.tag_len();
        if datagram.len() < header_len + tag_len {
            return false;
        }
        // A fresh session: its first packets have rollover counter 0 (RFC 3711 §3.3.1).
        let roc = 0u32;
        let (body, tag) = datagram.split_at(datagram.len() - tag_len);
        match &mut self.cipher {
            Cipher::Gcm(aead) => {
                let iv = gcm_iv(&self.session_salt, ssrc, roc, seq);
                let mut scratch = body.to_vec();
                let (aad, payload) = scratch.split_at_mut(header_len);
                aead.open_in_place(&iv, aad, payload, tag).is_ok()
            }
            Cipher::CmHmac { mac, .. } => {
                let mut full = [0u8; 20];
                mac.sign(&[body, &roc.to_be_bytes()], &mut full).is_ok()
                    && rtc::crypto::constant_time_eq(&full[..tag_len], tag)
            }
        }
    }

    /// The packet index for `seq` on `ssrc` (RFC 3711 §3.3.1's estimate, which also places a
    /// retransmission of a packet from before the last wrap), remembering the highest.
    fn index_for(&mut self, ssrc: u32, seq: u16) -> u64 {
        let Some(slot) = self.streams.iter_mut().find(|(s, _)| *s == ssrc) else {
            self.streams.push((ssrc, u64::from(seq)));
            return u64::from(seq);
        };
        let highest = slot.1;
        let roc = highest >> 16;
        let s_l = highest as u16;
        let v = if s_l < 0x8000 {
            if seq > s_l && seq - s_l > 0x8000 {
                roc.saturating_sub(1)
            } else {
                roc
            }
        } else if seq < s_l - 0x8000 {
            roc + 1
        } else {
            roc
        };
        let index = (v << 16) | u64::from(seq);
        slot.1 = slot.1.max(index);
        index
    }
}

/// RFC 7714 §8.1: 00 00 | SSRC | ROC | SEQ, xored with the 12-byte session salt.
fn gcm_iv(salt: &[u8; 14], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

/// RFC 3711 §4.1.1: (salt << 16) xor (SSRC << 64) xor (index << 16).
fn cm_iv(salt: &[u8; 14], ssrc: u32, roc: u32, seq: u16) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&roc.to_be_bytes());
    iv[12..14].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

/// SSRC and sequence number of an RTP (not RTCP) datagram.
pub fn ssrc_and_seq(datagram: &[u8]) -> Option<(u32, u16)> {
    if datagram.len() < FIXED_HEADER || datagram[0] >> 6 != 2 {
        return None;
    }
    // RTCP packet types 192..=223 share the first two bytes' layout (RFC 5761 §4).
    if (192..=223).contains(&datagram[1]) {
        return None;
    }
    let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
    let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    Some((ssrc, seq))
}

/// True for an RTCP datagram (what the stack sends to the selected candidate pair).
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 8 && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1])
}

/// Length of the RTP header: fixed part, CSRCs, extension.
fn header_len(datagram: &[u8]) -> Option<usize> {
    let csrcs = usize::from(datagram.first()? & 0x0f);
    let mut len = FIXED_HEADER + 4 * csrcs;
    if datagram[0] & 0x10 != 0 {
        let words = datagram.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (len <= datagram.len()).then_some(len)
}

/// One block the stack encrypted with a key during SRTP key derivation.
struct Tapped {
    algorithm: BlockCipherAlgorithm,
    key: Vec<u8>,
    block: [u8; 16],
}

/// A crypto provider that is the real one, except that it notes the inputs of SRTP key
/// derivation (see the module's documentation). One per subscriber peer connection.
pub struct KeyTap {
    inner: Arc<dyn RTCCryptoProvider>,
    tapped: Mutex<Vec<Tapped>>,
}

impl KeyTap {
    pub fn new(inner: Arc<dyn RTCCryptoProvider>) -> Self {
        KeyTap {
            inner,
            tapped: Mutex::new(Vec::new()),
        }
    }

    /// The sender for this peer connection's SRTP session, if `datagram` (an SRTP packet the
    /// stack sent on it, among its first) authenticates under keys the handshake derived.
    pub fn prove(&self, datagram: &[u8]) -> Option<SrtpSender> {
        let tapped = self.tapped.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tried: Vec<(&[u8], [u8; 14])> = Vec::new();
        let crypto = self.inner.crypto();
        for t in tapped.iter() {
            // A derivation's first block (counter 0) is the master salt xor the label.
            if t.block[14..] != [0, 0] {
                continue;
            }
            for profile in Profile::ALL {
                if profile.block() != t.algorithm || profile.key_len() != t.key.len() {
                    continue;
                }
                // Beyond the salt the block is zero: a 12-byte salt leaves bytes 12 and 13.
                if t.block[profile.salt_len()..14].iter().any(|&b| b != 0) {
                    continue;
                }
                for label in LABELS {
                    let mut salt = [0u8; 14];
                    salt.copy_from_slice(&t.block[..14]);
                    salt[7] ^= label;
                    if tried.contains(&(&t.key[..], salt)) {
                        continue;
                    }
                    tried.push((&t.key[..], salt));
                    let Ok(mut sender) =
                        SrtpSender::new(crypto, profile, &t.key, &salt[..profile.salt_len()])
                    else {
                        continue;
                    };
                    if sender.authenticates(datagram) {
                        sender.observe(datagram);
                        return Some(sender);
                    }
                }
            }
        }
        None
    }

    /// The keys are in use (or never will be): forget them.
    pub fn forget(&self) {
        let mut tapped = self.tapped.lock().unwrap_or_else(PoisonError::into_inner);
        *tapped = Vec::new();
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self
    }

    fn random(&self) -> &dyn RTCRandom {
        self.inner.random()
    }
}

impl RTCCrypto for KeyTap {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        if let Ok(input) = <[u8; 16]>::try_from(&*block) {
            let mut tapped = self.tapped.lock().unwrap_or_else(PoisonError::into_inner);
            if tapped.len() < MAX_TAPPED_BLOCKS {
                tapped.push(Tapped {
                    algorithm,
                    key: key.to_vec(),
                    block: input,
                });
            }
        }
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc::shared::marshal::{Marshal, MarshalSize};
    use rtc::srtp::context::Context;
    use rtc::srtp::protection_profile::ProtectionProfile;

    fn provider() -> Arc<dyn RTCCryptoProvider> {
        rtc::crypto::default_provider().unwrap()
    }

    fn stack_profile(p: Profile) -> ProtectionProfile {
        match p {
            Profile::Aes128Gcm => ProtectionProfile::AeadAes128Gcm,
            Profile::Aes256Gcm => ProtectionProfile::AeadAes256Gcm,
            Profile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        }
    }

    fn keys(p: Profile) -> (Vec<u8>, Vec<u8>) {
        let key: Vec<u8> = (0..p.key_len() as u8)
            .map(|i| i.wrapping_mul(7) ^ 0x5a)
            .collect();
        let salt: Vec<u8> = (0..p.salt_len() as u8)
            .map(|i| i.wrapping_mul(13) ^ 0xa5)
            .collect();
        (key, salt)
    }

    /// The stack's context for the same keys; `tap` lets a test see what it derives.
    fn stack_context(p: Profile, crypto: &dyn RTCCrypto) -> Context {
        let (key, salt) = keys(p);
        Context::new(&key, &salt, stack_profile(p), None, None, crypto).unwrap()
    }

    fn packet(ssrc: u32, seq: u16, len: usize, with_extension: bool) -> rtp::Packet {
        let mut header = rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq).wrapping_mul(3000),
            ssrc,
            marker: seq.is_multiple_of(5),
            ..Default::default()
        };
        if with_extension {
            header.set_extension(1, Bytes::from_static(b"mid")).unwrap();
        }
        let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seq as u8)).collect();
        rtp::Packet {
            header,
            payload: Bytes::from(payload),
        }
    }

    #[test]
    fn what_we_protect_the_stack_decrypts_across_two_wraps() {
        let provider = provider();
        for profile in Profile::ALL {
            let (key, salt) = keys(profile);
            let mut ours = SrtpSender::new(provider.crypto(), profile, &key, &salt).unwrap();
            let mut theirs = stack_context(profile, provider.crypto());
            let mut buf = BytesMut::new();
            // Starts near the top so the stream wraps twice; every 50th packet is followed by a
            // retransmission of one from 300 packets back (across the wrap at times).
            let mut sent = Vec::new();
            for i in 0..140_000u32 {
                let seq = 65_000u16.wrapping_add(i as u16);
                let p = packet(0x1234_5678, seq, 200 + (i as usize % 900), i % 3 == 0);
                ours.protect_packet(&p.header, &p.payload, &mut buf)
                    .unwrap();
                let clear = theirs.decrypt_rtp(&buf).unwrap_or_else(|e| {
                    panic!("{profile:?}: packet {i} (seq {seq}) does not decrypt: {e}")
                });
                let mut plain = BytesMut::new();
                plain.resize(p.marshal_size(), 0);
                p.marshal_to(&mut plain).unwrap();
                assert_eq!(&clear[..], &plain[..], "{profile:?}: packet {i}");
                sent.push(seq);
                if i % 50 == 49 && i > 300 {
                    let old = packet(0x1234_5678, sent[i as usize - 300], 100, false);
                    ours.protect_packet(&old.header, &old.payload, &mut buf)
                        .unwrap();
                    // The stack's replay window is off by default: it must decrypt.
                    let again = theirs.decrypt_rtp(&buf);
                    assert!(again.is_ok(), "{profile:?}: retransmission at {i}");
                }
            }
        }
    }

    #[test]
    fn a_second_stream_keeps_its_own_rollover() {
        let provider = provider();
        let profile = Profile::Aes128Gcm;
        let (key, salt) = keys(profile);
        let mut ours = SrtpSender::new(provider.crypto(), profile, &key, &salt).unwrap();
        let mut theirs = stack_context(profile, provider.crypto());
        let mut buf = BytesMut::new();
        for i in 0..70_000u32 {
            let a = packet(1, i as u16, 50, false);
            ours.protect_packet(&a.header, &a.payload, &mut buf)
                .unwrap();
            theirs.decrypt_rtp(&buf).unwrap();
            if i % 10 == 0 {
                // Starts late: its first packet is rollover 0 whatever the other's is.
                let b = packet(2, 40_000u16.wrapping_add((i / 10) as u16), 50, true);
                ours.protect_packet(&b.header, &b.payload, &mut buf)
                    .unwrap();
                theirs.decrypt_rtp(&buf).unwrap();
            }
        }
    }

    #[test]
    fn keys_tapped_from_the_stacks_derivation_are_proven_on_its_own_packet() {
        for profile in Profile::ALL {
            let tap = KeyTap::new(provider());
            // The stack derives a local and a remote context, as a DTLS handshake does.
            let mut local = stack_context(profile, &tap);
            let (rk, rs) = keys(profile);
            let remote_key: Vec<u8> = rk.iter().map(|b| b ^ 0xff).collect();
            let _remote =
                Context::new(&remote_key, &rs, stack_profile(profile), None, None, &tap).unwrap();
            let first = packet(99, 4321, 300, true);
            let mut plain = BytesMut::new();
            plain.resize(first.marshal_size(), 0);
            first.marshal_to(&mut plain).unwrap();
            let protected = local.encrypt_rtp(&plain).unwrap();

            let mut sender = tap.prove(&protected).expect("the local keys are found");
            assert_eq!(sender.profile(), profile);
            // It goes on where the stack left off: the stack's own receiver side agrees.
            let mut receiver = stack_context(profile, provider().crypto());
            receiver.decrypt_rtp(&protected).unwrap();
            let mut buf = BytesMut::new();
            let next = packet(99, 4322, 10, false);
            sender
                .protect_packet(&next.header, &next.payload, &mut buf)
                .unwrap();
            receiver.decrypt_rtp(&buf).unwrap();

            // A packet under keys the handshake did not derive (or none) proves nothing.
            let stranger_key: Vec<u8> = rk.iter().map(|b| b ^ 0x3c).collect();
            let mut stranger = Context::new(
                &stranger_key,
                &rs,
                stack_profile(profile),
                None,
                None,
                provider().crypto(),
            )
            .unwrap();
            let foreign = stranger.encrypt_rtp(&plain).unwrap();
            assert!(tap.prove(&foreign).is_none(), "{profile:?}");
            assert!(tap.prove(&plain).is_none(), "{profile:?}");
            assert!(tap.prove(&protected[..10]).is_none(), "{profile:?}");
            tap.forget();
            assert!(tap.prove(&protected).is_none(), "{profile:?}");
        }
    }

    #[test]
    fn a_writer_switches_to_the_worker_on_proof_and_follows_the_selected_pair() {
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:6000".parse().unwrap();
        let profile = Profile::Aes128Gcm;
        let tap = Arc::new(KeyTap::new(provider()));
        let mut local = stack_context(profile, &*tap);
        let mut writer = Writer::Proving {
            tap: tap.clone(),
            tries: 0,
        };
        // DTLS and RTCP prove nothing and cost no try.
        assert_eq!(
            writer.observe(&[0x16, 0xfe, 0xfd, 0, 0], a),
            Observed::Nothing
        );
        let first = packet(5, 100, 50, false);
        let mut plain = BytesMut::new();
        plain.resize(first.marshal_size(), 0);
        first.marshal_to(&mut plain).unwrap();
        let protected = local.encrypt_rtp(&plain).unwrap();
        assert_eq!(writer.observe(&protected, a), Observed::Proven);
        assert_eq!(writer.direct().map(|(_, to)| to), Some(a));
        // A report the stack sends on another pair: the worker follows.
        let report = [0x80, 200, 0, 6, 0, 0, 0, 5];
        assert_eq!(writer.observe(&report, b), Observed::Nothing);
        assert_eq!(writer.direct().map(|(_, to)| to), Some(b));

        // Keys that never authenticate: after a few packets, the stack keeps the job.
        let mut unproven = Writer::Proving {
            tap: Arc::new(KeyTap::new(provider())),
            tries: 0,
        };
        for _ in 1..MAX_PROOF_TRIES {
            assert_eq!(unproven.observe(&protected, a), Observed::Nothing);
        }
        assert_eq!(unproven.observe(&protected, a), Observed::GaveUp);
        assert!(matches!(unproven, Writer::Stack));
        assert!(unproven.direct().is_none());
    }

    #[test]
    fn rtcp_and_junk_are_not_rtp() {
        assert_eq!(
            ssrc_and_seq(&[0x80, 200, 0, 6, 0, 0, 0, 0, 0, 0, 0, 1]),
            None
        );
        assert!(is_rtcp(&[0x80, 200, 0, 6, 0, 0, 0, 1]));
        assert_eq!(ssrc_and_seq(&[0x16, 0xfe, 0xfd]), None);
        assert_eq!(
            ssrc_and_seq(&[0x80, 96, 1, 2, 0, 0, 0, 0, 0, 0, 0, 7]),
            Some((7, 0x0102))
        );
        // An extension that claims more than there is.
        assert_eq!(
            header_len(&[0x90, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0, 9]),
            None
        );
    }
}
