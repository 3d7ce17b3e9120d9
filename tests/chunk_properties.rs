//! Property tests: random messages survive encode → decode at random chunk
//! sizes and random read splits; arbitrary bytes never panic and never make
//! the decoder hand out more than the limits allow.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tributary::protocol::chunk::{encode_message, ChunkDecoder, ChunkEncoder, ControlMessage};
use tributary::protocol::server::{ServerConfig, ServerSession};
use tributary::protocol::{Limits, MessageType, RawMessage};

fn message() -> impl Strategy<Value = RawMessage> {
    (
        prop_oneof![2u32..10, 60u32..70, 300u32..330, 65_000u32..65_600],
        any::<u32>(),
        prop_oneof![Just(8u8), Just(9u8), Just(18u8), Just(20u8), Just(22u8)],
        0u32..4,
        prop::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_map(
            |(csid, timestamp, type_id, stream_id, payload)| RawMessage {
                csid,
                timestamp,
                type_id: MessageType(type_id),
                stream_id,
                payload: Bytes::from(payload),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_survive_encode_decode(
        messages in prop::collection::vec(message(), 1..40),
        chunk_size in prop_oneof![Just(1u32), 1u32..300, Just(128u32), Just(4096u32), 4000u32..65_536],
        compressed in any::<bool>(),
        splits in prop::collection::vec(1usize..5000, 1..50),
    ) {
        let mut wire = BytesMut::new();
        let mut enc = ChunkEncoder::new();
        let set = ControlMessage::SetChunkSize(chunk_size).to_message();
        enc.write(&mut wire, &set);
        enc.set_chunk_size(chunk_size);
        for m in &messages {
            if compressed {
                enc.write(&mut wire, m);
            } else {
                enc.forget(m.csid);
                encode_message(&mut wire, chunk_size, m);
            }
        }
        // Random chunk stream ids: more of them than a real client uses.
        let mut dec = ChunkDecoder::new(Limits { max_chunk_streams: 64, ..Limits::default() });
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = splits[i % splits.len()].min(rest.len());
            i += 1;
            let mut part = &rest[..n];
            rest = &rest[n..];
            while let Some(m) = dec.decode(&mut part).unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(&got[0], &set);
        prop_assert_eq!(&got[1..], &messages[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_exceed_limits(
        data in prop::collection::vec(any::<u8>(), 0..20_000),
        cut in any::<usize>(),
    ) {
        let limits = Limits { max_message_len: 2048, max_chunk_size: 512, max_chunk_streams: 4, ..Limits::default() };
        let mut dec = ChunkDecoder::new(limits);
        let cut = cut % (data.len() + 1);
        'outer: for part in [&data[..cut], &data[cut..]] {
            let mut input = part;
            loop {
                match dec.decode(&mut input) {
                    Ok(Some(m)) => prop_assert!(m.payload.len() <= 2048),
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_handshake_never_panic_a_server(
        data in prop::collection::vec(any::<u8>(), 0..8000),
    ) {
        let mut server = ServerSession::new(ServerConfig::default(), 0, 1);
        let mut input = vec![3u8];
        input.extend_from_slice(&[0u8; 1536 * 2]);
        input.extend_from_slice(&data);
        let mut rest = &input[..];
        while !rest.is_empty() {
            match server.handle_input(rest) {
                Ok(n) => {
                    rest = &rest[n..];
                    let mut progressed = n > 0;
                    while let Some(_e) = server.poll_event() {
                        progressed = true;
                    }
                    if server.has_pending_request() {
                        server.accept_connect();
                        progressed = true;
                    }
                    if !progressed {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let mut out = BytesMut::new();
        server.poll_transmit(&mut out);
    }
}
