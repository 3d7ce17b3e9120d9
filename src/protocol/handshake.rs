//! The RTMP handshake, server and client side, as sans-IO state machines.
//!
//! Owns C0/C1/C2 and S0/S1/S2: reading them in any fragmentation, telling a
//! simple client from a digest ("complex", Flash-era) one under either offset
//! scheme, and building the answer each peer expects. It must never read a
//! clock, ask the OS for randomness, grow a buffer with input, or consume a
//! byte past the end of the handshake: time and a seed are passed in, output
//! is appended to a buffer the caller owns, and whatever follows C2 (or S2)
//! belongs to the chunk stream.
//!
//! Call order for either side: `handle_input` with whatever bytes arrived,
//! then `poll_transmit` to collect what must be sent, until `is_done`. An
//! error means the peer cannot be served; drop the connection.
//!
//! The simple and the digest handshake in both roles, and their tests
//! inline.

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The version byte (C0/S0) of plain RTMP.
pub const RTMP_VERSION: u8 = 3;

/// The version byte of RTMPE (encrypted), which the server accepts once
/// allowed ([`ServerHandshake::allow_rtmpe`]).
pub const RTMPE_VERSION: u8 = 6;

/// Size of C1, C2, S1 and S2.
pub const HANDSHAKE_SIZE: usize = 1536;

/// Length of a handshake digest or signature (HMAC-SHA256).
const DIGEST_LEN: usize = 32;

/// The 32 bytes Adobe appended to both public key phrases.
const KEY_TAIL: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
    0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];

/// Flash Player key: "Genuine Adobe Flash Player 001" + 32 fixed bytes.
pub const FP_KEY: [u8; 62] = join(b"Genuine Adobe Flash Player 001", &KEY_TAIL);

/// Flash Media Server key: "Genuine Adobe Flash Media Server 001" + the
/// same 32 bytes as [`FP_KEY`].
pub const FMS_KEY: [u8; 68] = join(b"Genuine Adobe Flash Media Server 001", &KEY_TAIL);

/// C1 digests are keyed with only the text part of the player key.
const FP_KEY_TEXT_LEN: usize = 30;

/// S1 digests are keyed with only the text part of the server key.
const FMS_KEY_TEXT_LEN: usize = 36;

/// What S1[4..8] says to a digest client. ffmpeg validates the S1 digest only
/// when the first byte is at least 3, so this must stay >= 3.
const SERVER_VERSION: [u8; 4] = [5, 0, 3, 1];

/// What C1[4..8] says in digest mode: the Flash Player version ffmpeg sends.
const CLIENT_VERSION: [u8; 4] = [9, 0, 124, 2];

/// A digest-mode C2/S2 carries its signature in the last 32 bytes.
const SIGNATURE_AT: usize = HANDSHAKE_SIZE - DIGEST_LEN;

/// Everything one side sends in its life: C0+C1+C2 or S0+S1+S2.
const MAX_OUTPUT: usize = 1 + 2 * HANDSHAKE_SIZE;

const _: () = assert!(FP_KEY.len() == FP_KEY_TEXT_LEN + KEY_TAIL.len());
const _: () = assert!(FMS_KEY.len() == FMS_KEY_TEXT_LEN + KEY_TAIL.len());

const fn join<const N: usize>(head: &[u8], tail: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < head.len() {
        out[i] = head[i];
        i += 1;
    }
    let mut j = 0;
    while j < tail.len() {
        out[head.len() + j] = tail[j];
        j += 1;
    }
    out
}

/// Which handshake a connection used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    /// Plain RTMP 1.0: random bytes echoed back, nothing verified.
    Simple,
    /// The Flash-era digest handshake. `scheme` is 0 (digest offset read
    /// from bytes 8..12) or 1 (offset read from bytes 772..776).
    Digest {
        /// 0 or 1.
        scheme: u8,
    },
}

/// Why a handshake cannot go on. The connection should be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// C0 or S0 was not 3 (or 6, RTMPE, where allowed).
    #[error("peer asked for RTMP version {0}; 3 is supported, and 6 (RTMPE) where allowed")]
    UnsupportedVersion(u8),
    /// An RTMPE C1 without a valid digest, or with an unusable key.
    #[error("RTMPE: {0}")]
    Rtmpe(&'static str),
    /// S1 announced a server version (`S1[4] >= 3`) but its digest matches
    /// neither scheme.
    #[error("server S1 announces a version but carries no valid digest")]
    BadServerDigest,
    /// S2 is not signed with the digest of our C1.
    #[error("server S2 is not signed with our C1 digest")]
    BadServerSignature,
}

/// Server side of the handshake: reads C0, C1, C2; writes S0, S1, S2.
///
/// S0+S1+S2 are queued together as soon as C1 is complete, because ffmpeg
/// reads all three before it sends C2.
pub struct ServerHandshake {
    epoch_ms: u32,
    rng: SplitMix64,
    stage: Stage,
    /// C1 as it arrives; fixed size so a peer cannot make it grow.
    c1: Box<[u8; HANDSHAKE_SIZE]>,
    kind: Option<HandshakeKind>,
    outbox: Outbox,
    /// RTMPE: the server's key pair while allowed, then the key pairs the
    /// exchange agreed on.
    rtmpe: Rtmpe,
    /// C0 asked for RTMPE.
    encrypted: bool,
}

enum Rtmpe {
    Refused,
    /// The random bytes of the private key (made only if C0 asks).
    Allowed(Box<[u8; 32]>),
    Agreed(Box<super::rtmpe::Candidates>),
    Taken,
}

impl ServerHandshake {
    /// `epoch_ms` goes in S1's time field. `seed` drives the random bytes of
    /// S1 and S2; they need no cryptographic strength, but two connections
    /// should not share a seed.
    pub fn new(epoch_ms: u32, seed: u64) -> Self {
        Self {
            epoch_ms,
            rng: SplitMix64(seed),
            stage: Stage::Version,
            c1: Box::new([0; HANDSHAKE_SIZE]),
            kind: None,
            outbox: Outbox::new(),
            rtmpe: Rtmpe::Refused,
            encrypted: false,
        }
    }

    /// Accepts RTMPE (C0 = 6) too, with a Diffie-Hellman private key from
    /// `random` (32 bytes from the caller's random source).
    pub fn allow_rtmpe(&mut self, random: &[u8; 32]) {
        self.rtmpe = Rtmpe::Allowed(Box::new(*random));
    }

    /// Whether the client asked for RTMPE (known once C0 is in).
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// RTMPE, once done: the key pairs agreed on, taken once. Everything
    /// after C2, both ways, goes through them.
    pub fn take_rtmpe(&mut self) -> Option<super::rtmpe::Candidates> {
        if !self.is_done() || !matches!(self.rtmpe, Rtmpe::Agreed(_)) {
            return None;
        }
        match std::mem::replace(&mut self.rtmpe, Rtmpe::Taken) {
            Rtmpe::Agreed(c) => Some(*c),
            _ => None,
        }
    }

    /// True once C2 is in. S0+S1+S2 may still be waiting in
    /// [`poll_transmit`](Self::poll_transmit) if the caller never polled;
    /// poll before handing the connection to the chunk stream.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// The client's kind of handshake, known once C1 is in.
    pub fn kind(&self) -> Option<HandshakeKind> {
        self.kind
    }

    /// Takes bytes of C0, C1 and C2 in any fragmentation and returns how many
    /// of `input` it consumed. It never consumes past the end of C2: the rest
    /// of `input` belongs to the chunk stream. Once done it consumes nothing.
    /// After an error every later call returns the same error.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match &mut self.stage {
                Stage::Failed(e) => return Err(e.clone()),
                Stage::Done => return Ok(used),
                _ if rest.is_empty() => return Ok(used),
                Stage::Version => {
                    used += 1;
                    let version = rest.first().copied().unwrap_or_default();
                    let rtmpe = version == RTMPE_VERSION && matches!(self.rtmpe, Rtmpe::Allowed(_));
                    if version != RTMP_VERSION && !rtmpe {
                        let e = HandshakeError::UnsupportedVersion(version);
                        self.stage = Stage::Failed(e.clone());
                        return Err(e);
                    }
                    self.encrypted = rtmpe;
                    self.stage = Stage::First { filled: 0 };
                }
                Stage::First { filled } => {
                    used += fill(&mut self.c1[..], filled, rest);
                    if *filled == HANDSHAKE_SIZE {
                        let answered = if self.encrypted {
                            self.answer_rtmpe_c1()
                        } else {
                            self.answer_c1();
                            Ok(())
                        };
                        if let Err(e) = answered {
                            self.stage = Stage::Failed(e.clone());
                            return Err(e);
                        }
                        self.stage = Stage::Second { filled: 0 };
                    }
                }
                Stage::Second { filled } => {
                    // C2 is consumed, never judged: Flash players, librtmp
                    // and ffmpeg disagree about what it should hold.
                    let n = (HANDSHAKE_SIZE - *filled).min(rest.len());
                    *filled += n;
                    used += n;
                    if *filled == HANDSHAKE_SIZE {
                        self.stage = Stage::Done;
                    }
                }
            }
        }
    }

    /// Appends pending output (S0+S1+S2, all at once) to `out` and returns
    /// how many bytes it appended; 0 when nothing is pending.
    pub fn poll_transmit(&mut self, out: &mut BytesMut) -> usize {
        self.outbox.drain_into(out)
    }

    fn answer_c1(&mut self) {
        // A zero version means a simple client (OBS); otherwise look for a
        // digest, scheme 1 first as nginx-rtmp does. A version without a
        // valid digest is still answered simply rather than refused.
        let asks_for_digest = self.c1[4..8] != [0; 4];
        let client_digest = [1u8, 0]
            .into_iter()
            .filter(|_| asks_for_digest)
            .find_map(|scheme| {
                find_digest(&self.c1, scheme, &FP_KEY[..FP_KEY_TEXT_LEN]).map(|d| (scheme, d))
            });

        let mut s1 = [0u8; HANDSHAKE_SIZE];
        self.rng.fill(&mut s1[8..]);
        s1[..4].copy_from_slice(&self.epoch_ms.to_be_bytes());
        self.outbox.push(&[RTMP_VERSION]);
        match client_digest {
            None => {
                // S1[4..8] stays zero: ffmpeg would otherwise look for an S1
                // digest and fail with "Server response validating failed".
                self.kind = Some(HandshakeKind::Simple);
                self.outbox.push(&s1);
                self.outbox.push(&self.c1[..]);
            }
            Some((scheme, client_digest)) => {
                self.kind = Some(HandshakeKind::Digest { scheme });
                s1[4..8].copy_from_slice(&SERVER_VERSION);
                imprint_digest(&mut s1, scheme, &FMS_KEY[..FMS_KEY_TEXT_LEN]);
                let mut s2 = [0u8; HANDSHAKE_SIZE];
                self.rng.fill(&mut s2);
                sign(&mut s2, &FMS_KEY, &client_digest);
                self.outbox.push(&s1);
                self.outbox.push(&s2);
            }
        }
    }
}

impl ServerHandshake {
    /// Answers an RTMPE C1: its digest must be valid (scheme 1 first, as
    /// both clients put it there); its public key is read where that
    /// scheme puts it. S1 carries our digest and public key under scheme
    /// 0, which ffmpeg's publisher assumes and its player and librtmp
    /// find; S2 is signed as in the digest handshake. C2 is not judged
    /// (ffmpeg's publisher echoes S1).
    fn answer_rtmpe_c1(&mut self) -> Result<(), HandshakeError> {
        let Rtmpe::Allowed(random) = std::mem::replace(&mut self.rtmpe, Rtmpe::Refused) else {
            return Err(HandshakeError::Rtmpe("not allowed"));
        };
        let dh = super::rtmpe::DhKey::new(&random);
        let (scheme, client_digest) = [1u8, 0]
            .into_iter()
            .find_map(|scheme| {
                find_digest(&self.c1, scheme, &FP_KEY[..FP_KEY_TEXT_LEN]).map(|d| (scheme, d))
            })
            .ok_or(HandshakeError::Rtmpe("C1 carries no valid digest"))?;
        let at = dh_offset(&self.c1, scheme);
        let client_pub = &self.c1[at..at + super::rtmpe::KEY_LEN];
        let secret = dh
            .shared(client_pub)
            .map_err(|_| HandshakeError::Rtmpe("the client's public key is not usable"))?;

        let mut s1 = [0u8; HANDSHAKE_SIZE];
        self.rng.fill(&mut s1[8..]);
        s1[..4].copy_from_slice(&self.epoch_ms.to_be_bytes());
        s1[4..8].copy_from_slice(&SERVER_VERSION);
        let ours = dh_offset(&s1, 0);
        s1[ours..ours + super::rtmpe::KEY_LEN].copy_from_slice(dh.public());
        // The digest covers the key (their places never overlap).
        imprint_digest(&mut s1, 0, &FMS_KEY[..FMS_KEY_TEXT_LEN]);
        let mut s2 = [0u8; HANDSHAKE_SIZE];
        self.rng.fill(&mut s2);
        sign(&mut s2, &FMS_KEY, &client_digest);
        self.outbox.push(&[RTMPE_VERSION]);
        self.outbox.push(&s1);
        self.outbox.push(&s2);
        self.kind = Some(HandshakeKind::Digest { scheme });
        let candidates = super::rtmpe::Candidates::new(&secret, dh.public(), client_pub);
        self.rtmpe = Rtmpe::Agreed(Box::new(candidates));
        Ok(())
    }
}

/// Where an RTMPE public key sits under `scheme`: 128 bytes at an offset
/// four bytes sum to, in 8..640 (scheme 1: the sum of bytes 768..772) or
/// 772..1404 (scheme 0: the sum of bytes 1532..1536); either stays inside
/// the packet and clear of the digest's offset bytes.
fn dh_offset(packet: &[u8; HANDSHAKE_SIZE], scheme: u8) -> usize {
    let (base, at) = if scheme == 0 { (1532, 772) } else { (768, 8) };
    let sum: usize = packet[base..base + 4].iter().map(|&b| usize::from(b)).sum();
    at + sum % 632
}

/// Which handshake a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// Zero version in C1; S2 is not checked. What OBS (librtmp) does.
    Simple,
    /// Flash version and a scheme-0 digest in C1; the server's S1 digest and
    /// S2 signature are checked when S1 announces a version. What ffmpeg does.
    Digest,
}

/// Client side of the handshake: writes C0, C1, C2; reads S0, S1, S2.
pub struct ClientHandshake {
    mode: ClientMode,
    rng: SplitMix64,
    stage: Stage,
    /// S1, then S2, as they arrive; fixed size so a peer cannot make it grow.
    buf: Box<[u8; HANDSHAKE_SIZE]>,
    /// The digest we put in C1 (digest mode only); the server signs S2 with it.
    c1_digest: Option<[u8; DIGEST_LEN]>,
    /// Key S2's signature must verify with, set once S1's digest checked out.
    s2_key: Option<[u8; DIGEST_LEN]>,
    kind: Option<HandshakeKind>,
    outbox: Outbox,
}

impl ClientHandshake {
    /// Queues C0+C1 at once. `epoch_ms` goes in C1's time field; `seed`
    /// drives the random bytes of C1 and C2. In digest mode `C1[4..8]` holds
    /// 9.0.124.2 and a scheme-0 digest keyed with the text of [`FP_KEY`].
    pub fn new(mode: ClientMode, epoch_ms: u32, seed: u64) -> Self {
        let mut rng = SplitMix64(seed);
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        rng.fill(&mut c1[8..]);
        c1[..4].copy_from_slice(&epoch_ms.to_be_bytes());
        let c1_digest = match mode {
            ClientMode::Simple => None,
            ClientMode::Digest => {
                c1[4..8].copy_from_slice(&CLIENT_VERSION);
                Some(imprint_digest(&mut c1, 0, &FP_KEY[..FP_KEY_TEXT_LEN]))
            }
        };
        let mut outbox = Outbox::new();
        outbox.push(&[RTMP_VERSION]);
        outbox.push(&c1);
        Self {
            mode,
            rng,
            stage: Stage::Version,
            buf: Box::new([0; HANDSHAKE_SIZE]),
            c1_digest,
            s2_key: None,
            kind: None,
            outbox,
        }
    }

    /// True once S2 is in and checked. C2 may still be waiting in
    /// [`poll_transmit`](Self::poll_transmit); send it before any chunk.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// How the server answered, known once S1 is in: `Digest` only when its
    /// S1 digest was checked (digest mode and `S1[4] >= 3`).
    pub fn kind(&self) -> Option<HandshakeKind> {
        self.kind
    }

    /// Takes bytes of S0, S1 and S2 in any fragmentation and returns how many
    /// of `input` it consumed. It never consumes past the end of S2: the rest
    /// of `input` belongs to the chunk stream. Once done it consumes nothing.
    /// After an error every later call returns the same error.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match &mut self.stage {
                Stage::Failed(e) => return Err(e.clone()),
                Stage::Done => return Ok(used),
                _ if rest.is_empty() => return Ok(used),
                Stage::Version => {
                    used += 1;
                    let version = rest.first().copied().unwrap_or_default();
                    if version != RTMP_VERSION {
                        return Err(self.fail(HandshakeError::UnsupportedVersion(version)));
                    }
                    self.stage = Stage::First { filled: 0 };
                }
                Stage::First { filled } => {
                    used += fill(&mut self.buf[..], filled, rest);
                    if *filled == HANDSHAKE_SIZE {
                        if let Err(e) = self.answer_s1() {
                            return Err(self.fail(e));
                        }
                        self.stage = Stage::Second { filled: 0 };
                    }
                }
                Stage::Second { filled } => {
                    used += fill(&mut self.buf[..], filled, rest);
                    if *filled == HANDSHAKE_SIZE {
                        if let Some(key) = self.s2_key {
                            if !signature_matches(&self.buf, &key) {
                                return Err(self.fail(HandshakeError::BadServerSignature));
                            }
                        }
                        self.stage = Stage::Done;
                    }
                }
            }
        }
    }

    /// Appends pending output to `out` and returns how many bytes it
    /// appended; 0 when nothing is pending. C0+C1 are pending from the start,
    /// C2 once S1 is in.
    pub fn poll_transmit(&mut self, out: &mut BytesMut) -> usize {
        self.outbox.drain_into(out)
    }

    fn fail(&mut self, e: HandshakeError) -> HandshakeError {
        self.stage = Stage::Failed(e.clone());
        e
    }

    fn answer_s1(&mut self) -> Result<(), HandshakeError> {
        // Like ffmpeg: a server that announces no version (S1[4] < 3) is
        // answered simply, whatever we asked for, and nothing is checked.
        let checked = match (self.mode, self.c1_digest) {
            (ClientMode::Digest, Some(c1_digest)) if self.buf[4] >= 3 => Some(c1_digest),
            _ => None,
        };
        let Some(c1_digest) = checked else {
            self.kind = Some(HandshakeKind::Simple);
            self.outbox.push(&self.buf[..]);
            return Ok(());
        };
        let (scheme, server_digest) = [1u8, 0]
            .into_iter()
            .find_map(|scheme| {
                find_digest(&self.buf, scheme, &FMS_KEY[..FMS_KEY_TEXT_LEN]).map(|d| (scheme, d))
            })
            .ok_or(HandshakeError::BadServerDigest)?;
        self.kind = Some(HandshakeKind::Digest { scheme });
        self.s2_key = Some(hmac_sha256(&FMS_KEY, &[&c1_digest]));
        let mut c2 = [0u8; HANDSHAKE_SIZE];
        self.rng.fill(&mut c2);
        sign(&mut c2, &FP_KEY, &server_digest);
        self.outbox.push(&c2);
        Ok(())
    }
}

// Hand-written so a session that embeds a handshake can derive Debug without
// printing kilobytes of buffer.
impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("stage", &self.stage)
            .field("kind", &self.kind)
            .field("pending", &self.outbox.len)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("mode", &self.mode)
            .field("stage", &self.stage)
            .field("kind", &self.kind)
            .field("pending", &self.outbox.len)
            .finish_non_exhaustive()
    }
}

/// Where a side is in reading its peer: version byte, first 1536-byte
/// packet (C1/S1), second (C2/S2).
#[derive(Debug)]
enum Stage {
    Version,
    First { filled: usize },
    Second { filled: usize },
    Done,
    Failed(HandshakeError),
}

/// Copies as much of `input` as fits into `buf[*filled..]`; returns how much.
fn fill(buf: &mut [u8], filled: &mut usize, input: &[u8]) -> usize {
    let space = buf.get_mut(*filled..).unwrap_or_default();
    let n = space.len().min(input.len());
    space[..n].copy_from_slice(&input[..n]);
    *filled += n;
    n
}

/// Output waiting for `poll_transmit`. Fixed size: each side queues at most
/// [`MAX_OUTPUT`] bytes in its whole life, so a push always fits.
struct Outbox {
    buf: Box<[u8; MAX_OUTPUT]>,
    len: usize,
}

impl Outbox {
    fn new() -> Self {
        Self {
            buf: Box::new([0; MAX_OUTPUT]),
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn drain_into(&mut self, out: &mut BytesMut) -> usize {
        let n = self.len;
        out.extend_from_slice(&self.buf[..n]);
        self.len = 0;
        n
    }
}

/// Where the digest sits under `scheme` (0 or 1): four bytes at `base` sum to
/// an offset in 0..728 past them. The largest result, 1503, leaves room for
/// the 32 digest bytes, so no peer-chosen bytes can point outside the packet.
fn digest_offset(packet: &[u8; HANDSHAKE_SIZE], scheme: u8) -> usize {
    let base = if scheme == 0 { 8 } else { 772 };
    let sum: usize = packet[base..base + 4].iter().map(|&b| usize::from(b)).sum();
    base + 4 + sum % 728
}

/// HMAC-SHA256 of the packet without the 32 bytes at `at`.
fn digest_excluding(packet: &[u8; HANDSHAKE_SIZE], at: usize, key: &[u8]) -> [u8; DIGEST_LEN] {
    hmac_sha256(key, &[&packet[..at], &packet[at + DIGEST_LEN..]])
}

/// The packet's digest under `scheme`, if the one it carries is right.
fn find_digest(packet: &[u8; HANDSHAKE_SIZE], scheme: u8, key: &[u8]) -> Option<[u8; DIGEST_LEN]> {
    let at = digest_offset(packet, scheme);
    let digest = digest_excluding(packet, at, key);
    (packet[at..at + DIGEST_LEN] == digest).then_some(digest)
}

/// Writes the packet's digest at its `scheme` offset and returns it.
fn imprint_digest(packet: &mut [u8; HANDSHAKE_SIZE], scheme: u8, key: &[u8]) -> [u8; DIGEST_LEN] {
    let at = digest_offset(packet, scheme);
    let digest = digest_excluding(packet, at, key);
    packet[at..at + DIGEST_LEN].copy_from_slice(&digest);
    digest
}

/// Ends a digest-mode C2/S2 with HMAC(HMAC(key, peer digest), packet[..1504]).
fn sign(packet: &mut [u8; HANDSHAKE_SIZE], key: &[u8], peer_digest: &[u8; DIGEST_LEN]) {
    let signing_key = hmac_sha256(key, &[peer_digest]);
    let signature = hmac_sha256(&signing_key, &[&packet[..SIGNATURE_AT]]);
    packet[SIGNATURE_AT..].copy_from_slice(&signature);
}

fn signature_matches(packet: &[u8; HANDSHAKE_SIZE], signing_key: &[u8; DIGEST_LEN]) -> bool {
    hmac_sha256(signing_key, &[&packet[..SIGNATURE_AT]]) == packet[SIGNATURE_AT..]
}

/// HMAC-SHA256 over the concatenation of `parts`.
///
/// The key is first brought to one 64-byte block the way HMAC itself does
/// (hashed when longer, zero-padded otherwise), so the infallible
/// fixed-size constructor can be used instead of a `Result` to unwrap.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..DIGEST_LEN].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <Hmac<Sha256> as Mac>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// SplitMix64: handshake bytes only need to look random, not be secret.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// An RTMPE client for tests: what ffmpeg's publisher sends (digest and
/// public key under scheme 1, C2 an echo of S1).
#[cfg(test)]
pub(crate) mod rtmpe_client {
    use super::*;
    use crate::protocol::rtmpe::{Ciphers, DhKey, KEY_LEN};

    pub struct Client {
        dh: DhKey,
        c1: [u8; HANDSHAKE_SIZE],
    }

    impl Client {
        pub fn new(seed: u64) -> Self {
            let dh = DhKey::new(&[seed as u8 | 1; 32]);
            let mut c1 = [0u8; HANDSHAKE_SIZE];
            SplitMix64(seed).fill(&mut c1[8..]);
            c1[4..8].copy_from_slice(&[128, 0, 3, 2]);
            let at = dh_offset(&c1, 1);
            c1[at..at + KEY_LEN].copy_from_slice(dh.public());
            imprint_digest(&mut c1, 1, &FP_KEY[..FP_KEY_TEXT_LEN]);
            Self { dh, c1 }
        }

        pub fn c0c1(&self) -> Vec<u8> {
            let mut out = vec![RTMPE_VERSION];
            out.extend_from_slice(&self.c1);
            out
        }

        /// Checks S0+S1+S2 as ffmpeg's player and librtmp do (S0 = 6, the
        /// S1 digest under scheme 0, S2 signed with our digest); returns
        /// C2 and the client's streams.
        pub fn finish(&self, s: &[u8]) -> (Vec<u8>, Ciphers) {
            assert_eq!(s.len(), 1 + 2 * HANDSHAKE_SIZE);
            assert_eq!(s[0], RTMPE_VERSION);
            let s1: [u8; HANDSHAKE_SIZE] = s[1..1 + HANDSHAKE_SIZE].try_into().unwrap();
            let s2: [u8; HANDSHAKE_SIZE] = s[1 + HANDSHAKE_SIZE..].try_into().unwrap();
            assert!(find_digest(&s1, 0, &FMS_KEY[..FMS_KEY_TEXT_LEN]).is_some());
            let ours = find_digest(&self.c1, 1, &FP_KEY[..FP_KEY_TEXT_LEN]).unwrap();
            assert!(signature_matches(&s2, &hmac_sha256(&FMS_KEY, &[&ours])));
            let at = dh_offset(&s1, 0);
            let server_pub = &s1[at..at + KEY_LEN];
            let secret = self.dh.shared(server_pub).unwrap();
            let ciphers = Ciphers::client(&secret, server_pub, self.dh.public());
            (s1.to_vec(), ciphers)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use proptest::prelude::*;

    const C0C1_LEN: usize = 1 + HANDSHAKE_SIZE;

    /// Reference HMAC through the crate's ordinary constructor, so the tests
    /// do not lean on the block-key shortcut they are checking.
    fn reference_hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The digest offset formulas, written out independently.
    fn offset(packet: &[u8], scheme: u8) -> usize {
        match scheme {
            0 => {
                (packet[8] as usize
                    + packet[9] as usize
                    + packet[10] as usize
                    + packet[11] as usize)
                    % 728
                    + 12
            }
            _ => {
                (packet[772] as usize
                    + packet[773] as usize
                    + packet[774] as usize
                    + packet[775] as usize)
                    % 728
                    + 776
            }
        }
    }

    fn without(packet: &[u8], at: usize) -> Vec<u8> {
        let mut v = packet[..at].to_vec();
        v.extend_from_slice(&packet[at + 32..]);
        v
    }

    fn digest_ok(packet: &[u8], scheme: u8, key: &[u8]) -> bool {
        let at = offset(packet, scheme);
        reference_hmac(key, &without(packet, at)) == packet[at..at + 32]
    }

    fn signature_ok(packet: &[u8], key: &[u8], peer_digest: &[u8]) -> bool {
        let signing_key = reference_hmac(key, peer_digest);
        reference_hmac(&signing_key, &packet[..1504]) == packet[1504..]
    }

    /// Runs a client against a server, delivering each side's bytes in
    /// pieces of at most `piece`, and returns every byte each side sent.
    fn run_pair(
        mode: ClientMode,
        piece: usize,
    ) -> (ServerHandshake, ClientHandshake, Vec<u8>, Vec<u8>) {
        let mut server = ServerHandshake::new(1_000, 11);
        let mut client = ClientHandshake::new(mode, 2_000, 22);
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let (mut sent_by_client, mut sent_by_server) = (Vec::new(), Vec::new());
        for _ in 0..100_000 {
            let n = client.poll_transmit(&mut to_server);
            sent_by_client.extend_from_slice(&to_server[to_server.len() - n..]);
            let n = server.poll_transmit(&mut to_client);
            sent_by_server.extend_from_slice(&to_client[to_client.len() - n..]);
            if server.is_done() && client.is_done() && to_server.is_empty() && to_client.is_empty()
            {
                return (server, client, sent_by_client, sent_by_server);
            }
            let n = piece.min(to_server.len());
            assert_eq!(server.handle_input(&to_server[..n]), Ok(n));
            to_server.advance(n);
            let n = piece.min(to_client.len());
            assert_eq!(client.handle_input(&to_client[..n]), Ok(n));
            to_client.advance(n);
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn all_pairs_finish_in_any_fragmentation() {
        for (mode, kind) in [
            (ClientMode::Simple, HandshakeKind::Simple),
            (ClientMode::Digest, HandshakeKind::Digest { scheme: 0 }),
        ] {
            for piece in [1, 7, 1536, 1537, usize::MAX] {
                let (server, client, c, s) = run_pair(mode, piece);
                assert_eq!(server.kind(), Some(kind), "{mode:?} piece {piece}");
                assert_eq!(client.kind(), Some(kind), "{mode:?} piece {piece}");
                assert_eq!(c.len(), 1 + 2 * HANDSHAKE_SIZE);
                assert_eq!(s.len(), 1 + 2 * HANDSHAKE_SIZE);
                assert_eq!((c[0], s[0]), (RTMP_VERSION, RTMP_VERSION));
                assert_eq!(&c[1..5], &2_000u32.to_be_bytes());
                assert_eq!(&s[1..5], &1_000u32.to_be_bytes());
            }
        }
    }

    #[test]
    fn simple_answer_zeroes_version_and_echoes_c1() {
        let (_, _, c, s) = run_pair(ClientMode::Simple, usize::MAX);
        let (c1, c2) = (&c[1..C0C1_LEN], &c[C0C1_LEN..]);
        let (s1, s2) = (&s[1..C0C1_LEN], &s[C0C1_LEN..]);
        assert_eq!(&s1[4..8], &[0; 4]);
        assert_eq!(s2, c1);
        assert_eq!(c2, s1);
    }

    #[test]
    fn version_without_digest_is_answered_simply() {
        // nginx-rtmp and we treat a C1 that names a version but carries no
        // valid digest as simple; ffmpeg then needs S1[4..8] zero.
        let mut input = vec![RTMP_VERSION];
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        SplitMix64(5).fill(&mut c1);
        c1[4..8].copy_from_slice(&[10, 0, 45, 2]);
        input.extend_from_slice(&c1);
        let mut server = ServerHandshake::new(0, 1);
        assert_eq!(server.handle_input(&input), Ok(input.len()));
        assert_eq!(server.kind(), Some(HandshakeKind::Simple));
        let mut out = BytesMut::new();
        assert_eq!(server.poll_transmit(&mut out), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(&out[5..9], &[0; 4]);
        assert_eq!(&out[C0C1_LEN..], &c1[..]);
    }

    #[test]
    fn digest_client_gets_valid_s1_digest_and_s2_signature() {
        let (_, _, c, s) = run_pair(ClientMode::Digest, usize::MAX);
        let c1 = &c[1..C0C1_LEN];
        let (s1, s2) = (&s[1..C0C1_LEN], &s[C0C1_LEN..]);
        assert_eq!(&c1[4..8], &[9, 0, 124, 2]);
        assert!(digest_ok(c1, 0, &FP_KEY[..30]));
        assert!(s1[4] >= 3);
        assert!(digest_ok(s1, 0, &FMS_KEY[..36]));
        let at = offset(c1, 0);
        assert!(signature_ok(s2, &FMS_KEY, &c1[at..at + 32]));
        // And C2 is signed over the server digest with the full player key.
        let s_at = offset(s1, 0);
        assert!(signature_ok(&c[C0C1_LEN..], &FP_KEY, &s1[s_at..s_at + 32]));
    }

    #[test]
    fn scheme_one_c1_gets_scheme_one_s1() {
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        SplitMix64(77).fill(&mut c1);
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let at = offset(&c1, 1);
        let d = reference_hmac(&FP_KEY[..30], &without(&c1, at));
        c1[at..at + 32].copy_from_slice(&d);
        assert!(!digest_ok(&c1, 0, &FP_KEY[..30]));

        let mut server = ServerHandshake::new(9, 3);
        assert_eq!(server.handle_input(&[RTMP_VERSION]), Ok(1));
        assert_eq!(server.handle_input(&c1), Ok(HANDSHAKE_SIZE));
        assert_eq!(server.kind(), Some(HandshakeKind::Digest { scheme: 1 }));
        let mut out = BytesMut::new();
        server.poll_transmit(&mut out);
        let (s1, s2) = (&out[1..C0C1_LEN], &out[C0C1_LEN..]);
        assert!(digest_ok(s1, 1, &FMS_KEY[..36]));
        assert!(signature_ok(s2, &FMS_KEY, &d));
    }

    #[test]
    fn client_accepts_scheme_one_server() {
        let mut client = ClientHandshake::new(ClientMode::Digest, 0, 8);
        let mut out = BytesMut::new();
        client.poll_transmit(&mut out);
        let c1 = out[1..C0C1_LEN].to_vec();
        let c1_at = offset(&c1, 0);

        let mut s1 = [0u8; HANDSHAKE_SIZE];
        SplitMix64(9).fill(&mut s1);
        s1[4..8].copy_from_slice(&[3, 5, 1, 1]);
        let at = offset(&s1, 1);
        let d = reference_hmac(&FMS_KEY[..36], &without(&s1, at));
        s1[at..at + 32].copy_from_slice(&d);
        let mut s2 = [0u8; HANDSHAKE_SIZE];
        SplitMix64(10).fill(&mut s2);
        let key = reference_hmac(&FMS_KEY, &c1[c1_at..c1_at + 32]);
        let sig = reference_hmac(&key, &s2[..1504]);
        s2[1504..].copy_from_slice(&sig);

        let mut input = vec![RTMP_VERSION];
        input.extend_from_slice(&s1);
        input.extend_from_slice(&s2);
        assert_eq!(client.handle_input(&input), Ok(input.len()));
        assert!(client.is_done());
        assert_eq!(client.kind(), Some(HandshakeKind::Digest { scheme: 1 }));
        assert_eq!(client.poll_transmit(&mut out), HANDSHAKE_SIZE);
        assert!(signature_ok(&out[C0C1_LEN..], &FP_KEY, &d));
    }

    #[test]
    fn leftover_bytes_after_c2_and_s2_are_not_consumed() {
        for mode in [ClientMode::Simple, ClientMode::Digest] {
            let mut server = ServerHandshake::new(0, 1);
            let mut client = ClientHandshake::new(mode, 0, 2);
            let mut wire = BytesMut::new();
            client.poll_transmit(&mut wire);
            assert_eq!(server.handle_input(&wire), Ok(C0C1_LEN));
            wire.clear();
            server.poll_transmit(&mut wire);
            wire.extend_from_slice(b"chunk stream");
            assert_eq!(client.handle_input(&wire), Ok(1 + 2 * HANDSHAKE_SIZE));
            assert!(client.is_done());
            assert_eq!(client.handle_input(b"more"), Ok(0));
            wire.clear();
            client.poll_transmit(&mut wire);
            wire.extend_from_slice(b"connect");
            assert_eq!(server.handle_input(&wire), Ok(HANDSHAKE_SIZE));
            assert!(server.is_done());
            assert_eq!(server.handle_input(b"more"), Ok(0));
        }
    }

    #[test]
    fn whole_client_flight_in_one_buffer_stops_at_c2() {
        let mut server = ServerHandshake::new(0, 1);
        let mut input = vec![RTMP_VERSION];
        input.extend_from_slice(&[0; 2 * HANDSHAKE_SIZE]);
        input.extend_from_slice(&[0x02, 0, 0]);
        assert_eq!(server.handle_input(&input), Ok(1 + 2 * HANDSHAKE_SIZE));
        assert!(server.is_done());
    }

    #[test]
    fn bad_version_is_an_error_and_stays_one() {
        let mut server = ServerHandshake::new(0, 1);
        assert_eq!(
            server.handle_input(&[6, 0, 0]),
            Err(HandshakeError::UnsupportedVersion(6))
        );
        assert_eq!(
            server.handle_input(&[3]),
            Err(HandshakeError::UnsupportedVersion(6))
        );
        assert_eq!(server.poll_transmit(&mut BytesMut::new()), 0);

        let mut client = ClientHandshake::new(ClientMode::Simple, 0, 1);
        assert_eq!(
            client.handle_input(&[0x47]),
            Err(HandshakeError::UnsupportedVersion(0x47))
        );
        assert!(!client.is_done());
    }

    #[test]
    fn bad_c2_is_accepted() {
        let (mut server, mut client) = (
            ServerHandshake::new(0, 1),
            ClientHandshake::new(ClientMode::Digest, 0, 2),
        );
        let mut wire = BytesMut::new();
        client.poll_transmit(&mut wire);
        assert_eq!(server.handle_input(&wire), Ok(C0C1_LEN));
        assert!(matches!(server.kind(), Some(HandshakeKind::Digest { .. })));
        assert_eq!(
            server.handle_input(&[0xAB; HANDSHAKE_SIZE]),
            Ok(HANDSHAKE_SIZE)
        );
        assert!(server.is_done());
    }

    fn server_flight(s1: &[u8; HANDSHAKE_SIZE], s2: &[u8; HANDSHAKE_SIZE]) -> Vec<u8> {
        let mut v = vec![RTMP_VERSION];
        v.extend_from_slice(s1);
        v.extend_from_slice(s2);
        v
    }

    #[test]
    fn digest_client_answers_a_simple_server_with_an_echo() {
        let mut client = ClientHandshake::new(ClientMode::Digest, 0, 2);
        let mut s1 = [0x55u8; HANDSHAKE_SIZE];
        s1[4..8].copy_from_slice(&[0; 4]);
        let input = server_flight(&s1, &[0x66; HANDSHAKE_SIZE]);
        assert_eq!(client.handle_input(&input), Ok(input.len()));
        assert!(client.is_done());
        assert_eq!(client.kind(), Some(HandshakeKind::Simple));
        let mut out = BytesMut::new();
        client.poll_transmit(&mut out);
        assert_eq!(&out[C0C1_LEN..], &s1[..]);
    }

    #[test]
    fn digest_client_rejects_versioned_s1_without_digest() {
        let mut client = ClientHandshake::new(ClientMode::Digest, 0, 2);
        let mut s1 = [0x55u8; HANDSHAKE_SIZE];
        s1[4..8].copy_from_slice(&[13, 14, 10, 13]);
        let input = server_flight(&s1, &[0; HANDSHAKE_SIZE]);
        assert_eq!(
            client.handle_input(&input),
            Err(HandshakeError::BadServerDigest)
        );
        assert_eq!(
            client.handle_input(&[]),
            Err(HandshakeError::BadServerDigest)
        );
    }

    #[test]
    fn simple_client_does_not_check_a_versioned_s1() {
        let mut client = ClientHandshake::new(ClientMode::Simple, 0, 2);
        let mut s1 = [0x55u8; HANDSHAKE_SIZE];
        s1[4..8].copy_from_slice(&[13, 14, 10, 13]);
        let input = server_flight(&s1, &[0; HANDSHAKE_SIZE]);
        assert_eq!(client.handle_input(&input), Ok(input.len()));
        assert!(client.is_done());
    }

    #[test]
    fn digest_client_rejects_a_bad_s2_signature() {
        let mut server = ServerHandshake::new(0, 1);
        let mut client = ClientHandshake::new(ClientMode::Digest, 0, 2);
        let mut wire = BytesMut::new();
        client.poll_transmit(&mut wire);
        server.handle_input(&wire).expect("valid C0C1");
        wire.clear();
        server.poll_transmit(&mut wire);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(
            client.handle_input(&wire),
            Err(HandshakeError::BadServerSignature)
        );
    }

    #[test]
    fn known_c1_vector_verifies() {
        // C1 = four zero bytes, 9.0.124.2, then byte i = i mod 256; scheme 0
        // puts the digest at 12 + (8+9+10+11) % 728 = 50. The digest was
        // computed with Python's hmac module, outside this code.
        const DIGEST: [u8; 32] = [
            0x84, 0x7b, 0x0a, 0x67, 0xb0, 0x5f, 0xc6, 0x62, 0x26, 0x12, 0x7c, 0xd0, 0x92, 0x33,
            0x7f, 0x2f, 0x9d, 0x21, 0x50, 0x34, 0x0f, 0x81, 0xea, 0xfd, 0xe5, 0xb4, 0x09, 0x88,
            0xa4, 0x0a, 0x60, 0xb8,
        ];
        const S2_KEY: [u8; 32] = [
            0xfe, 0xc8, 0x45, 0xab, 0x2b, 0x31, 0x54, 0xa2, 0x13, 0x11, 0xbf, 0x4f, 0x54, 0xd8,
            0x05, 0x43, 0x57, 0x79, 0x43, 0x5b, 0xfa, 0x77, 0x8d, 0x23, 0xd7, 0xb4, 0x94, 0x5d,
            0x31, 0xca, 0x53, 0x2b,
        ];
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        for (i, b) in c1.iter_mut().enumerate() {
            *b = i as u8;
        }
        c1[..4].copy_from_slice(&[0; 4]);
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        assert_eq!(digest_offset(&c1, 0), 50);
        c1[50..82].copy_from_slice(&DIGEST);
        assert_eq!(find_digest(&c1, 0, &FP_KEY[..30]), Some(DIGEST));
        assert_eq!(hmac_sha256(&FMS_KEY, &[&DIGEST]), S2_KEY);

        let mut server = ServerHandshake::new(0, 1);
        let mut input = vec![RTMP_VERSION];
        input.extend_from_slice(&c1);
        assert_eq!(server.handle_input(&input), Ok(C0C1_LEN));
        assert_eq!(server.kind(), Some(HandshakeKind::Digest { scheme: 0 }));
        let mut out = BytesMut::new();
        server.poll_transmit(&mut out);
        let s2 = &out[C0C1_LEN..];
        assert_eq!(reference_hmac(&S2_KEY, &s2[..1504]), s2[1504..]);
    }

    #[test]
    fn debug_output_is_short() {
        let server = format!("{:?}", ServerHandshake::new(0, 1));
        let client = format!("{:?}", ClientHandshake::new(ClientMode::Digest, 0, 1));
        assert!(
            server.len() < 200 && client.len() < 200,
            "{server} {client}"
        );
        assert!(client.contains("pending: 1537"));
    }

    #[test]
    fn keys_are_the_published_ones() {
        assert_eq!(&FP_KEY[..30], b"Genuine Adobe Flash Player 001");
        assert_eq!(&FMS_KEY[..36], b"Genuine Adobe Flash Media Server 001");
        assert_eq!(FP_KEY[30..], FMS_KEY[36..]);
        assert_eq!(&FP_KEY[30..34], &[0xF0, 0xEE, 0xC2, 0x4A]);
        assert_eq!(FP_KEY[61], 0xAE);
    }

    #[test]
    fn block_key_hmac_matches_reference_for_every_key_length_used() {
        let data = b"handshake bytes";
        for key in [
            &FP_KEY[..30],
            &FMS_KEY[..36],
            &FP_KEY[..],
            &FMS_KEY[..],
            &[7u8; 32][..],
            &[9u8; 64][..],
            &[][..],
        ] {
            assert_eq!(hmac_sha256(key, &[data]), reference_hmac(key, data));
            assert_eq!(
                hmac_sha256(key, &[&data[..4], &data[4..]]),
                reference_hmac(key, data)
            );
        }
    }

    #[test]
    fn offsets_stay_inside_the_packet() {
        let mut p = [0xFFu8; HANDSHAKE_SIZE];
        assert_eq!(digest_offset(&p, 0), 12 + 1020 % 728);
        assert_eq!(digest_offset(&p, 1), 776 + 1020 % 728);
        for v in 0..=255u8 {
            p[8..12].fill(v);
            p[772..776].fill(v);
            for scheme in [0, 1] {
                assert!(digest_offset(&p, scheme) + DIGEST_LEN <= HANDSHAKE_SIZE);
            }
        }
    }

    proptest! {
        #[test]
        fn pairs_finish_under_random_fragmentation(
            digest in any::<bool>(),
            seed in any::<u64>(),
            pieces in proptest::collection::vec(1usize..2000, 1..40),
        ) {
            let mode = if digest { ClientMode::Digest } else { ClientMode::Simple };
            let mut server = ServerHandshake::new(seed as u32, seed);
            let mut client = ClientHandshake::new(mode, 5, seed.rotate_left(7));
            let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
            for &piece in pieces.iter().cycle().take(10_000) {
                client.poll_transmit(&mut to_server);
                server.poll_transmit(&mut to_client);
                if server.is_done() && client.is_done() {
                    break;
                }
                let n = piece.min(to_server.len());
                prop_assert_eq!(server.handle_input(&to_server[..n]), Ok(n));
                to_server.advance(n);
                let n = piece.min(to_client.len());
                prop_assert_eq!(client.handle_input(&to_client[..n]), Ok(n));
                to_client.advance(n);
            }
            prop_assert!(server.is_done() && client.is_done());
            prop_assert!(to_server.is_empty() && to_client.is_empty());
            prop_assert_eq!(server.kind(), client.kind());
        }

        #[test]
        fn garbage_never_panics_or_overreads(
            data in proptest::collection::vec(any::<u8>(), 0..4000),
            cut in any::<usize>(),
            digest in any::<bool>(),
        ) {
            let cut = cut % (data.len() + 1);
            let mode = if digest { ClientMode::Digest } else { ClientMode::Simple };
            let mut server = ServerHandshake::new(0, 1);
            let mut client = ClientHandshake::new(mode, 0, 2);
            let (mut s_used, mut c_used) = (0, 0);
            for part in [&data[..cut], &data[cut..]] {
                if let Ok(n) = server.handle_input(part) {
                    prop_assert!(n <= part.len());
                    s_used += n;
                }
                if let Ok(n) = client.handle_input(part) {
                    prop_assert!(n <= part.len());
                    c_used += n;
                }
            }
            prop_assert!(s_used <= 1 + 2 * HANDSHAKE_SIZE);
            prop_assert!(c_used <= 1 + 2 * HANDSHAKE_SIZE);
            prop_assert!(server.poll_transmit(&mut BytesMut::new()) <= MAX_OUTPUT);
            prop_assert!(client.poll_transmit(&mut BytesMut::new()) <= MAX_OUTPUT);
        }
    }

    #[test]
    fn rtmpe_is_refused_unless_allowed_and_types_8_and_9_always() {
        let client = rtmpe_client::Client::new(5);
        let mut server = ServerHandshake::new(0, 1);
        assert_eq!(
            server.handle_input(&client.c0c1()),
            Err(HandshakeError::UnsupportedVersion(6))
        );
        for version in [8u8, 9] {
            let mut server = ServerHandshake::new(0, 1);
            server.allow_rtmpe(&[3; 32]);
            assert_eq!(
                server.handle_input(&[version]),
                Err(HandshakeError::UnsupportedVersion(version))
            );
        }
    }

    #[test]
    fn an_rtmpe_client_gets_a_key_both_sides_share_in_any_fragmentation() {
        for split in [1usize, 7, 700, 1537] {
            let client = rtmpe_client::Client::new(11);
            let mut server = ServerHandshake::new(0, 2);
            server.allow_rtmpe(&[9; 32]);
            let c0c1 = client.c0c1();
            for piece in c0c1.chunks(split) {
                assert_eq!(server.handle_input(piece), Ok(piece.len()));
            }
            assert!(server.is_encrypted());
            assert_eq!(server.kind(), Some(HandshakeKind::Digest { scheme: 1 }));
            let mut out = BytesMut::new();
            server.poll_transmit(&mut out);
            let (c2, mut ours) = client.finish(&out);
            assert!(server.take_rtmpe().is_none(), "not before C2");
            // C2 and the first encrypted bytes in one read: C2 is taken,
            // the rest is not.
            let mut hello = *b"\x03 twelve bytes or more";
            ours.outbound.apply(&mut hello);
            let mut flight = c2.clone();
            flight.extend_from_slice(&hello);
            assert_eq!(server.handle_input(&flight), Ok(HANDSHAKE_SIZE));
            let mut theirs = server.take_rtmpe().unwrap().choose(&hello);
            assert!(server.take_rtmpe().is_none(), "taken once");
            theirs.inbound.apply(&mut hello);
            assert_eq!(&hello, b"\x03 twelve bytes or more");
            let mut reply = *b"_result";
            theirs.outbound.apply(&mut reply);
            ours.inbound.apply(&mut reply);
            assert_eq!(&reply, b"_result");
        }
    }

    #[test]
    fn an_rtmpe_c1_without_a_digest_or_with_a_bad_key_is_refused() {
        let mut c0c1 = rtmpe_client::Client::new(4).c0c1();
        c0c1[900] ^= 1;
        let mut server = ServerHandshake::new(0, 1);
        server.allow_rtmpe(&[1; 32]);
        assert_eq!(
            server.handle_input(&c0c1),
            Err(HandshakeError::Rtmpe("C1 carries no valid digest"))
        );
        // A valid digest over a public key of 1.
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        c1[4..8].copy_from_slice(&[128, 0, 3, 2]);
        let at = dh_offset(&c1, 1);
        c1[at + 127] = 1;
        imprint_digest(&mut c1, 1, &FP_KEY[..FP_KEY_TEXT_LEN]);
        let mut server = ServerHandshake::new(0, 1);
        server.allow_rtmpe(&[1; 32]);
        assert_eq!(server.handle_input(&[6]), Ok(1));
        assert!(matches!(
            server.handle_input(&c1),
            Err(HandshakeError::Rtmpe(_))
        ));
        assert!(server.handle_input(&[0]).is_err(), "it stays failed");
    }
}
