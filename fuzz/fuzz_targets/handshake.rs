//! Arbitrary bytes, cut at arbitrary points, into a ServerHandshake and a
//! ClientHandshake: neither may panic, consume more than it was given or more
//! than a whole handshake, consume anything once done, queue more than one
//! side's whole output, or recover from an error.
//!
//! Input: byte 0 picks the client mode, whether the server allows RTMPE,
//! and whether the bytes are fed raw or XORed over a real exchange (so mutations reach the digest and signature
//! checks, which random bytes never pass); bytes 1..9 seed the cut points;
//! the rest is the data.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tributary::protocol::handshake::*;

/// C0+C1+C2 or S0+S1+S2: the most either side reads or writes.
const WHOLE: usize = 1 + 2 * HANDSHAKE_SIZE;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let Some((seed, payload)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let mut cuts = Cuts::new(u64::from_le_bytes(*seed));
    let mode = if ctl & 1 == 0 {
        ClientMode::Simple
    } else {
        ClientMode::Digest
    };

    let (to_server, to_client) = if ctl & 2 == 0 {
        (payload.to_vec(), payload.to_vec())
    } else {
        let (c, s) = real_exchange(mode);
        (xor_over(&c, payload), xor_over(&s, payload))
    };

    let mut server = ServerHandshake::new(7, 1);
    if ctl & 4 != 0 {
        // RTMPE allowed: a C0 of 6 reaches the digest and key checks.
        server.allow_rtmpe(&[ctl; 32]);
    }
    feed(&mut server, &to_server, &mut cuts);
    let sent = server.poll_transmit(&mut BytesMut::new());
    assert!(sent == 0 || sent == WHOLE);
    assert!(!server.is_done() || server.kind().is_some());

    let mut client = ClientHandshake::new(mode, 7, 2);
    feed(&mut client, &to_client, &mut cuts);
    assert!(client.poll_transmit(&mut BytesMut::new()) <= WHOLE);
});

/// What `feed` needs from either side.
trait Side {
    fn handle(&mut self, input: &[u8]) -> Result<usize, HandshakeError>;
    fn done(&self) -> bool;
}

impl Side for ServerHandshake {
    fn handle(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        self.handle_input(input)
    }
    fn done(&self) -> bool {
        self.is_done()
    }
}

impl Side for ClientHandshake {
    fn handle(&mut self, input: &[u8]) -> Result<usize, HandshakeError> {
        self.handle_input(input)
    }
    fn done(&self) -> bool {
        self.is_done()
    }
}

/// Feeds `bytes` in pieces and checks the consumption rules.
fn feed(side: &mut impl Side, bytes: &[u8], cuts: &mut Cuts) {
    let mut at = 0;
    let mut total = 0;
    while at < bytes.len() {
        let end = at + cuts.next_len().min(bytes.len() - at);
        let piece = &bytes[at..end];
        let was_done = side.done();
        match side.handle(piece) {
            Ok(n) => {
                assert!(n <= piece.len());
                assert!(!was_done || n == 0);
                total += n;
                assert!(total <= WHOLE);
            }
            Err(e) => {
                // A failed handshake stays failed.
                assert_eq!(side.handle(piece).err(), Some(e));
                return;
            }
        }
        at = end;
    }
}

/// The client's C0+C1+C2 and the server's S0+S1+S2 of a real handshake.
fn real_exchange(mode: ClientMode) -> (Vec<u8>, Vec<u8>) {
    let mut server = ServerHandshake::new(3, 4);
    let mut client = ClientHandshake::new(mode, 5, 6);
    let (mut c, mut s) = (BytesMut::new(), BytesMut::new());
    client.poll_transmit(&mut c);
    assert_eq!(server.handle_input(&c), Ok(c.len()));
    server.poll_transmit(&mut s);
    assert_eq!(client.handle_input(&s), Ok(s.len()));
    client.poll_transmit(&mut c);
    assert_eq!(
        server.handle_input(&c[1 + HANDSHAKE_SIZE..]),
        Ok(HANDSHAKE_SIZE)
    );
    assert!(server.is_done() && client.is_done());
    (c.to_vec(), s.to_vec())
}

/// `base` with `mask` XORed over its start; any extra mask bytes are
/// appended, standing in for the chunk stream that follows.
fn xor_over(base: &[u8], mask: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (i, &m) in mask.iter().enumerate() {
        match out.get_mut(i) {
            Some(b) => *b ^= m,
            None => out.push(m),
        }
    }
    out
}

/// Piece lengths from a small generator: mostly short, sometimes whole.
struct Cuts(u64);

impl Cuts {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_len(&mut self) -> usize {
        // xorshift64; a zero state would stay zero, so nudge it.
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        let max = [1, 8, 64, 1537, 4096][(x >> 60) as usize % 5];
        1 + (x as usize >> 3) % max
    }
}
