//! RTMPE, Adobe's "encrypted" RTMP, server side: the Diffie-Hellman
//! exchange carried in the handshake and the RC4 streams that follow it.
//!
//! This is obfuscation, not security: the handshake is unauthenticated
//! and RC4 is broken. RTMPS is the secure choice. RTMPE exists because
//! some encoders and players still speak it (ffmpeg with gmp, gcrypt,
//! OpenSSL or mbedtls; librtmp and rtmpdump).
//!
//! - The group is the 1024-bit MODP group of RFC 2409 (Oakley group 2),
//!   generator 2; public keys are 128 bytes, big-endian, left-padded.
//! - A peer's public key must be in 2..p-2. Whether it is in the order-q
//!   subgroup (y^q = 1 mod p, which ffmpeg checks of ours) is not
//!   checked: the server's key is new for every connection, so a key
//!   outside it could learn a bit of a key that is never used again, and
//!   the check (an exponent of 1023 bits) was three quarters of an RTMPE
//!   handshake's cost (1 ms of the shard's time; `cargo bench --bench
//!   protocol -- handshake`).
//! - From the 128-byte shared secret S: the key of what the server
//!   receives is HMAC-SHA256(S, server's public key)[..16], the key of
//!   what it sends HMAC-SHA256(S, client's public key)[..16]; both RC4
//!   keystreams start 1536 bytes in.
//! - Some ffmpeg builds (gmp, gcrypt) write a secret with a leading zero
//!   byte left-aligned (its significant bytes first, zeros after) where
//!   librtmp and mbedtls right-align it. Such a secret gives two candidate
//!   key pairs; [`Candidates::choose`] picks the one under which the
//!   client's first bytes read as an RTMP chunk.
//!
//! Sans-IO like the handshake: the private key comes from the caller's
//! random bytes.

use num_bigint::BigUint;
use rc4::consts::U16;
use rc4::{KeyInit, Rc4, StreamCipher};

use super::handshake::hmac_sha256;

/// Size of a public key or a shared secret.
pub const KEY_LEN: usize = 128;

/// RFC 2409's 1024-bit MODP prime.
const P1024: [u8; KEY_LEN] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC9, 0x0F, 0xDA, 0xA2, 0x21, 0x68, 0xC2, 0x34,
    0xC4, 0xC6, 0x62, 0x8B, 0x80, 0xDC, 0x1C, 0xD1, 0x29, 0x02, 0x4E, 0x08, 0x8A, 0x67, 0xCC, 0x74,
    0x02, 0x0B, 0xBE, 0xA6, 0x3B, 0x13, 0x9B, 0x22, 0x51, 0x4A, 0x08, 0x79, 0x8E, 0x34, 0x04, 0xDD,
    0xEF, 0x95, 0x19, 0xB3, 0xCD, 0x3A, 0x43, 0x1B, 0x30, 0x2B, 0x0A, 0x6D, 0xF2, 0x5F, 0x14, 0x37,
    0x4F, 0xE1, 0x35, 0x6D, 0x6D, 0x51, 0xC2, 0x45, 0xE4, 0x85, 0xB5, 0x76, 0x62, 0x5E, 0x7E, 0xC6,
    0xF4, 0x4C, 0x42, 0xE9, 0xA6, 0x37, 0xED, 0x6B, 0x0B, 0xFF, 0x5C, 0xB6, 0xF4, 0x06, 0xB7, 0xED,
    0xEE, 0x38, 0x6B, 0xFB, 0x5A, 0x89, 0x9F, 0xA5, 0xAE, 0x9F, 0x24, 0x11, 0x7C, 0x4B, 0x1F, 0xE6,
    0x49, 0x28, 0x66, 0x51, 0xEC, 0xE6, 0x53, 0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
];

/// Bytes of each keystream thrown away before the first byte used.
const DISCARD: usize = 1536;

/// Bytes of the client's first message [`Candidates::choose`] reads.
pub const PROBE_LEN: usize = 12;

/// Why a peer's key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtmpeError {
    #[error("the client's Diffie-Hellman public key is out of range or not in the group")]
    BadPublicKey,
}

fn prime() -> BigUint {
    BigUint::from_bytes_be(&P1024)
}

/// `n` as 128 big-endian bytes, zero-padded on the left.
fn to_key_bytes(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    // n < p < 2^1024: at most 128 bytes.
    let at = KEY_LEN.saturating_sub(bytes.len());
    out[at..].copy_from_slice(&bytes[bytes.len().saturating_sub(KEY_LEN)..]);
    out
}

/// The server's Diffie-Hellman key pair.
pub struct DhKey {
    private: BigUint,
    public: [u8; KEY_LEN],
}

impl DhKey {
    /// A key pair whose private exponent is `random` (256 bits, from the
    /// caller's random source: about twice the group's strength).
    pub fn new(random: &[u8; 32]) -> Self {
        let p = prime();
        // An exponent of 0 or 1 would make the public key 1 or 2.
        let private = BigUint::from_bytes_be(random) | BigUint::from(2u8);
        let public = to_key_bytes(&BigUint::from(2u8).modpow(&private, &p));
        Self { private, public }
    }

    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// The shared secret with a peer's public key, right-aligned.
    pub fn shared(&self, peer: &[u8]) -> Result<[u8; KEY_LEN], RtmpeError> {
        let p = prime();
        let y = BigUint::from_bytes_be(peer);
        let one = BigUint::from(1u8);
        if y <= one || y >= &p - &one {
            return Err(RtmpeError::BadPublicKey);
        }
        Ok(to_key_bytes(&y.modpow(&self.private, &p)))
    }
}

/// One direction's RC4 stream.
pub struct Cipher(Rc4<U16>);

impl Cipher {
    fn new(key: &[u8]) -> Self {
        let mut rc4 = Rc4::<U16>::new(rc4::Key::<U16>::from_slice(&key[..16]));
        let mut skip = [0u8; DISCARD];
        rc4.apply_keystream(&mut skip);
        Cipher(rc4)
    }

    /// Encrypts or decrypts `data` in place, advancing the keystream.
    pub fn apply(&mut self, data: &mut [u8]) {
        self.0.apply_keystream(data);
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher")
    }
}

/// A server's two streams: what it receives and what it sends.
#[derive(Debug)]
pub struct Ciphers {
    pub inbound: Cipher,
    pub outbound: Cipher,
}

impl Ciphers {
    /// The server's streams from the shared secret and both public keys.
    pub fn server(secret: &[u8; KEY_LEN], server_pub: &[u8], client_pub: &[u8]) -> Self {
        Self {
            inbound: Cipher::new(&hmac_sha256(secret, &[server_pub])),
            outbound: Cipher::new(&hmac_sha256(secret, &[client_pub])),
        }
    }

    /// The client's streams (tests, and a client of our own): the
    /// server's, crossed.
    pub fn client(secret: &[u8; KEY_LEN], server_pub: &[u8], client_pub: &[u8]) -> Self {
        let Ciphers { inbound, outbound } = Self::server(secret, server_pub, client_pub);
        Self {
            inbound: outbound,
            outbound: inbound,
        }
    }
}

/// The key pairs a handshake may have agreed on: one, or two when the
/// secret has leading zero bytes (see the module's notes).
pub struct Candidates {
    standard: [u8; KEY_LEN],
    left_aligned: Option<[u8; KEY_LEN]>,
    server_pub: [u8; KEY_LEN],
    client_pub: [u8; KEY_LEN],
}

impl Candidates {
    pub fn new(secret: &[u8; KEY_LEN], server_pub: &[u8], client_pub: &[u8]) -> Self {
        let zeros = secret.iter().take_while(|&&b| b == 0).count();
        let left_aligned = (zeros > 0).then(|| {
            let mut left = [0u8; KEY_LEN];
            left[..KEY_LEN - zeros].copy_from_slice(&secret[zeros..]);
            left
        });
        let key = |k: &[u8]| {
            let mut out = [0u8; KEY_LEN];
            let n = k.len().min(KEY_LEN);
            out[..n].copy_from_slice(&k[..n]);
            out
        };
        Self {
            standard: *secret,
            left_aligned,
            server_pub: key(server_pub),
            client_pub: key(client_pub),
        }
    }

    /// Whether the pair is known without reading the client's bytes.
    pub fn is_certain(&self) -> bool {
        self.left_aligned.is_none()
    }

    fn ciphers(&self, secret: &[u8; KEY_LEN]) -> Ciphers {
        Ciphers::server(secret, &self.server_pub, &self.client_pub)
    }

    /// The pair under which `probe` (the client's first encrypted bytes,
    /// at least [`PROBE_LEN`] of them when uncertain) reads as the start
    /// of an RTMP chunk stream; the standard pair when both or neither do.
    pub fn choose(self, probe: &[u8]) -> Ciphers {
        let Some(left) = self.left_aligned else {
            return self.ciphers(&self.standard);
        };
        let reads = |secret: &[u8; KEY_LEN]| {
            let mut head = [0u8; PROBE_LEN];
            let n = probe.len().min(PROBE_LEN);
            head[..n].copy_from_slice(&probe[..n]);
            self.ciphers(secret).inbound.apply(&mut head);
            looks_like_first_chunk(&head)
        };
        if !reads(&self.standard) && reads(&left) {
            self.ciphers(&left)
        } else {
            self.ciphers(&self.standard)
        }
    }
}

/// A client's first chunk: a type-0 header on a chunk stream of its own
/// (2..=63), a message type a client starts with (Set Chunk Size, Window
/// Acknowledgement Size, an AMF0 or AMF3 command), message stream 0.
fn looks_like_first_chunk(h: &[u8; PROBE_LEN]) -> bool {
    h[0] >> 6 == 0
        && (2..=63).contains(&(h[0] & 0x3f))
        && matches!(h[7], 1 | 5 | 0x11 | 0x14)
        && h[8..12] == [0; 4]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_key(seed: u8) -> DhKey {
        DhKey::new(&[seed; 32])
    }

    #[test]
    fn both_sides_agree_on_the_secret_and_their_streams_cross() {
        let server = client_key(7);
        let client = client_key(9);
        let s1 = server.shared(client.public()).unwrap();
        let s2 = client.shared(server.public()).unwrap();
        assert_eq!(s1, s2);
        let mut srv = Ciphers::server(&s1, server.public(), client.public());
        let mut cli = Ciphers::client(&s2, server.public(), client.public());
        let mut msg = *b"connect to the server";
        cli.outbound.apply(&mut msg);
        assert_ne!(&msg, b"connect to the server");
        srv.inbound.apply(&mut msg);
        assert_eq!(&msg, b"connect to the server");
        let mut back = *b"_result";
        srv.outbound.apply(&mut back);
        cli.inbound.apply(&mut back);
        assert_eq!(&back, b"_result");
    }

    #[test]
    fn a_public_key_out_of_range_is_refused() {
        let server = client_key(1);
        let p = prime();
        let one = BigUint::from(1u8);
        for bad in [BigUint::from(0u8), one.clone(), &p - &one] {
            assert_eq!(
                server.shared(&to_key_bytes(&bad)),
                Err(RtmpeError::BadPublicKey)
            );
        }
        // p itself, and anything past it in 128 bytes.
        assert_eq!(server.shared(&P1024), Err(RtmpeError::BadPublicKey));
        assert_eq!(
            server.shared(&[0xFF; KEY_LEN]),
            Err(RtmpeError::BadPublicKey)
        );
        assert!(server.shared(client_key(2).public()).is_ok());
    }

    #[test]
    fn each_keystream_starts_1536_bytes_in() {
        let key: Vec<u8> = (1..=16).collect();
        let mut c = Cipher::new(&key);
        let mut out = [0u8; 16];
        c.apply(&mut out);
        let mut reference = Rc4::<U16>::new(rc4::Key::<U16>::from_slice(&key));
        let mut stream = vec![0u8; DISCARD + 16];
        reference.apply_keystream(&mut stream);
        assert_eq!(out, stream[DISCARD..]);
        assert_ne!(out, stream[..16]);
    }

    #[test]
    fn a_secret_with_a_leading_zero_is_read_either_way_by_the_first_chunk() {
        let mut secret = [0x5Au8; KEY_LEN];
        secret[0] = 0;
        let (spub, cpub) = ([3u8; KEY_LEN], [4u8; KEY_LEN]);
        // A connect chunk's first twelve bytes.
        let connect = [0x03, 0, 0, 0, 0, 0, 0x8a, 0x14, 0, 0, 0, 0];
        let mut left = [0u8; KEY_LEN];
        left[..KEY_LEN - 1].copy_from_slice(&secret[1..]);
        for (client_secret, standard) in [(secret, true), (left, false)] {
            let mut client = Ciphers::client(&client_secret, &spub, &cpub);
            let mut sent = connect;
            client.outbound.apply(&mut sent);
            let candidates = Candidates::new(&secret, &spub, &cpub);
            assert!(!candidates.is_certain());
            let mut chosen = candidates.choose(&sent);
            chosen.inbound.apply(&mut sent);
            assert_eq!(sent, connect, "standard alignment: {standard}");
        }
        assert!(Candidates::new(&[1u8; KEY_LEN], &spub, &cpub).is_certain());
    }
}
