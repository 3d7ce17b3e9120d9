//! How fast one core takes in what a player receives: a `ClientSession`
//! (chunk reassembly, event dispatch) plus the player's checks
//! (`PlayerCheck`: classify, SEI stamp, gaps, timestamps, latency), fed from
//! memory in 64 KiB reads as from a socket. The input is 20 s of the
//! synthetic 2.5 Mbit/s stream, every frame stamped, chunked as a server
//! sends it to a player (a type-0 header on each message's first chunk), at
//! chunk sizes 4096 (nginx-rtmp's and Tributary's) and 128.
//!
//! The acceptance bar is 5 Gbit/s = 625 MB/s on one core.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tributary::protocol::chunk::{encode_message, ControlMessage};
use tributary::protocol::client::{ClientConfig, ClientEvent, ClientSession, Role};
use tributary::protocol::server::{encode_for_player, ServerConfig, ServerEvent, ServerSession};
use tributary::protocol::{MessageType, RawMessage};
use tributary::synthetic::{self, StreamShape};
use tributary_load::clock_sei;
use tributary_load::player_check::PlayerCheck;

const READ: usize = 64 * 1024;

/// A client in play state.
fn playing_client() -> ClientSession {
    let config = ClientConfig::new(Role::Play, "rtmp://127.0.0.1/live", "live", "bench");
    let mut client = ClientSession::new(config, 0, 1);
    let mut server = ServerSession::new(ServerConfig::default(), 0, 2);
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    for _ in 0..50 {
        client.poll_transmit(&mut to_server);
        let mut input = &to_server[..];
        while !input.is_empty() {
            let n = server.handle_input(input).expect("server input");
            input = &input[n..];
            while let Some(ev) = server.poll_event() {
                match ev {
                    ServerEvent::ConnectRequest(_) => server.accept_connect(),
                    ServerEvent::PlayRequest { stream_id, .. } => server.accept_play(stream_id),
                    _ => {}
                }
            }
            if n == 0 {
                break;
            }
        }
        to_server.clear();
        server.poll_transmit(&mut to_client);
        let mut input = &to_client[..];
        while !input.is_empty() {
            let n = client.handle_input(input).expect("client input");
            input = &input[n..];
            while client.poll_event().is_some() {}
        }
        to_client.clear();
        if client.is_started() {
            return client;
        }
    }
    panic!("the in-memory play never started");
}

fn wire(chunk_size: u32, stream_id: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    // Small enough to be one chunk at any size: every pass (re)sets it.
    let m = ControlMessage::SetChunkSize(chunk_size).to_message();
    encode_message(&mut out, 128, &m);
    let mut arena = BytesMut::new();
    let mut seq = 0u64;
    for m in synthetic::stream(StreamShape::default(), stream_id, 20_000) {
        let payload = if m.type_id == MessageType::VIDEO {
            match clock_sei::stamp(&mut arena, &m.payload, seq, 1) {
                Some(p) => {
                    seq += 1;
                    p
                }
                None => m.payload,
            }
        } else {
            m.payload
        };
        let stream_id = m.stream_id;
        let msg = RawMessage { payload, ..m };
        encode_for_player(&mut out, chunk_size, stream_id, &msg);
    }
    out.to_vec()
}

fn take_in(client: &mut ClientSession, check: &mut PlayerCheck, input: &[u8]) -> u64 {
    let mut frames = 0;
    for read in input.chunks(READ) {
        let mut rest = read;
        while !rest.is_empty() {
            let n = client.handle_input(rest).expect("valid input");
            rest = &rest[n..];
            while let Some(ev) = client.poll_event() {
                if let ClientEvent::Media(m) = ev {
                    frames += 1;
                    check.on_media(&m, 2);
                    if check.latency_batch_full() {
                        std::hint::black_box(check.take_latencies());
                    }
                }
            }
        }
    }
    frames
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("player_take_in");
    for chunk_size in [4096u32, 128] {
        let mut client = playing_client();
        let input = wire(chunk_size, client.stream_id());
        let mut check = PlayerCheck::new(0);
        // The first pass applies Set Chunk Size and warms the arenas.
        take_in(&mut client, &mut check, &input);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(format!("chunk_{chunk_size}"), |b| {
            b.iter(|| take_in(&mut client, &mut check, &input))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
