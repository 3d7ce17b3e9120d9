//! Hot paths of the protocol core, each next to a physical baseline:
//! chunk decoding against a plain memcpy of the same bytes (what any reader
//! must at least do), encoding, AMF0 and the handshake.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tributary::protocol::amf0::{self, Amf0Reader, Amf0Value};
use tributary::protocol::chunk::{encode_message, ChunkDecoder, ChunkEncoder, ControlMessage};
use tributary::protocol::handshake::{ClientHandshake, ClientMode, ServerHandshake};
use tributary::protocol::{Limits, RawMessage};
use tributary::synthetic::{self, StreamShape};

/// Socket reads hand the decoder this much at a time.
const READ: usize = 64 * 1024;

/// 20 s of a 2.5 Mbit/s stream as a publisher sends it at `chunk_size`.
fn wire(chunk_size: u32) -> Bytes {
    let mut enc = ChunkEncoder::new();
    let mut out = BytesMut::new();
    enc.write(
        &mut out,
        &ControlMessage::SetChunkSize(chunk_size).to_message(),
    );
    enc.set_chunk_size(chunk_size);
    for m in synthetic::stream(StreamShape::default(), 1, 20_000) {
        enc.write(&mut out, &m);
    }
    out.freeze()
}

fn chunk_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_decode");
    for size in [128u32, 4096] {
        let bytes = wire(size);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            let mut dec = ChunkDecoder::new(Limits::default());
            // Warm the arenas once, as a live connection would be.
            let mut warm = &bytes[..];
            while dec.decode(&mut warm).unwrap().is_some() {}
            // The wire opens with Set Chunk Size and a type-0 header on each
            // chunk stream, so the same decoder can read it again and again.
            b.iter(|| {
                let mut n = 0usize;
                for read in bytes.chunks(READ) {
                    let mut input = read;
                    while let Some(m) = dec.decode(&mut input).unwrap() {
                        n += m.payload.len();
                    }
                }
                black_box(n)
            });
        });
        g.bench_with_input(BenchmarkId::new("memcpy", size), &bytes, |b, bytes| {
            let mut dst = vec![0u8; READ];
            b.iter(|| {
                for read in bytes.chunks(READ) {
                    dst[..read.len()].copy_from_slice(read);
                    black_box(&dst);
                }
            });
        });
    }
    g.finish();
}

fn chunk_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_encode");
    let messages: Vec<RawMessage> = synthetic::stream(StreamShape::default(), 1, 20_000);
    let total: usize = messages.iter().map(|m| m.payload.len()).sum();
    g.throughput(Throughput::Bytes(total as u64));
    for size in [128u32, 4096] {
        g.bench_function(BenchmarkId::new("shared", size), |b| {
            let mut out = BytesMut::with_capacity(total * 2);
            b.iter(|| {
                out.clear();
                for m in &messages {
                    encode_message(&mut out, size, m);
                }
                black_box(out.len());
            });
        });
        g.bench_function(BenchmarkId::new("compressed", size), |b| {
            let mut out = BytesMut::with_capacity(total * 2);
            b.iter(|| {
                out.clear();
                let mut enc = ChunkEncoder::new();
                enc.set_chunk_size(size);
                for m in &messages {
                    enc.write(&mut out, m);
                }
                black_box(out.len());
            });
        });
    }
    g.finish();
}

fn amf0_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("amf0");
    let connect = [
        Amf0Value::String("connect".into()),
        Amf0Value::Number(1.0),
        Amf0Value::object([
            ("app", Amf0Value::String("live".into())),
            ("type", Amf0Value::String("nonprivate".into())),
            (
                "flashVer",
                Amf0Value::String("FMLE/3.0 (compatible; FMSc/1.0)".into()),
            ),
            (
                "tcUrl",
                Amf0Value::String("rtmp://localhost:1935/live".into()),
            ),
        ]),
    ];
    let mut body = BytesMut::new();
    for v in &connect {
        amf0::write_value(&mut body, v);
    }
    let body = body.freeze();
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("decode_connect", |b| {
        b.iter(|| {
            let mut r = Amf0Reader::new(&body, 32);
            while !r.is_empty() {
                black_box(r.read_value().unwrap());
            }
        })
    });
    g.bench_function("encode_connect", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            for v in &connect {
                amf0::write_value(&mut out, v);
            }
            black_box(out.len());
        })
    });
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    for (name, mode) in [
        ("simple", ClientMode::Simple),
        ("digest", ClientMode::Digest),
    ] {
        let mut client = ClientHandshake::new(mode, 0, 1);
        let mut c0c1 = BytesMut::new();
        client.poll_transmit(&mut c0c1);
        g.bench_function(BenchmarkId::new("server", name), |b| {
            let mut out = BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                let mut server = ServerHandshake::new(0, 2);
                server.handle_input(&c0c1).unwrap();
                server.poll_transmit(&mut out);
                black_box(out.len());
            })
        });
    }
    // RTMPE's added work per handshake: the server's key pair and the
    // shared secret, what an attacker's flood of RTMPE handshakes costs.
    let client = tributary::protocol::rtmpe::DhKey::new(&[7; 32]);
    g.bench_function(BenchmarkId::new("server", "rtmpe-dh"), |b| {
        b.iter(|| {
            let server = tributary::protocol::rtmpe::DhKey::new(black_box(&[9; 32]));
            black_box(server.shared(client.public()).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, chunk_decode, chunk_encode, amf0_bench, handshake);
criterion_main!(benches);
