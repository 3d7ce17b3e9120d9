//! Proves the chunk decoder's steady state allocates nothing per chunk and at
//! most once per completed message, with a counting global allocator and
//! one chunk handed in per decode call.
//!
//! The counter counts only on the thread that switched it on, so the test
//! harness's own threads do not disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tributary::protocol::chunk::{ChunkDecoder, ChunkEncoder, ControlMessage};
use tributary::protocol::{Limits, RawMessage};
use tributary::synthetic::{self, StreamShape};

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // try_with: the allocator may run while thread-locals are torn down.
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call forwards to the system allocator unchanged; the counter
// only touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNT.with(|c| c.set(0));
    ON.with(|on| on.set(true));
    let out = f();
    ON.with(|on| on.set(false));
    (out, COUNT.with(|c| c.get()))
}

/// A publisher's byte stream cut into chunks: Set Chunk Size, then the
/// synthetic stream with header compression, as ffmpeg or OBS would send it.
/// Each element is one whole chunk (header and payload) and whether it is
/// the first chunk of its message.
fn chunks(chunk_size: u32, duration_ms: u32) -> (Vec<(Bytes, bool)>, usize) {
    let messages = synthetic::stream(StreamShape::default(), 1, duration_ms);
    let mut enc = ChunkEncoder::new();
    let mut out = Vec::new();
    let mut cut = |enc: &mut ChunkEncoder, m: &RawMessage| {
        let mut wire = BytesMut::new();
        enc.write(&mut wire, m);
        let wire = wire.freeze();
        let len = m.payload.len();
        let cs = chunk_size as usize;
        let n = len.div_ceil(cs).max(1);
        // Continuation chunks carry a 1-byte header here (csid < 64, no
        // extended timestamp), so the first header is what is left over.
        let header = wire.len() - len - (n - 1);
        let mut at = header + len.min(cs);
        out.push((wire.slice(..at), true));
        for _ in 1..n {
            let end = at + 1 + cs.min(wire.len() - at - 1);
            out.push((wire.slice(at..end), false));
            at = end;
        }
        assert_eq!(at, wire.len());
    };
    cut(
        &mut enc,
        &ControlMessage::SetChunkSize(chunk_size).to_message(),
    );
    enc.set_chunk_size(chunk_size);
    for m in &messages {
        cut(&mut enc, m);
    }
    (out, messages.len() + 1)
}

#[derive(Default)]
struct Tally {
    messages: u64,
    /// Chunks that neither start nor complete a message: must never allocate.
    middle_chunks: u64,
    alloc_middle: u64,
    /// Allocations in calls that start and/or complete a message.
    alloc_edges: u64,
}

/// Decodes one chunk per call, keeping the last `keep` messages alive the
/// way a player queue or GOP cache would.
fn run(dec: &mut ChunkDecoder, chunks: &[(Bytes, bool)], keep: usize) -> Tally {
    let mut held: VecDeque<RawMessage> = VecDeque::with_capacity(keep + 1);
    let mut t = Tally::default();
    for (chunk, first) in chunks {
        let mut input = &chunk[..];
        let (result, allocs) = counted(|| dec.decode(&mut input));
        assert!(input.is_empty(), "a chunk is consumed whole");
        let completed = result.expect("decode");
        if *first || completed.is_some() {
            t.alloc_edges += allocs;
        } else {
            t.middle_chunks += 1;
            t.alloc_middle += allocs;
        }
        if let Some(m) = completed {
            t.messages += 1;
            if keep > 0 {
                if held.len() == keep {
                    held.pop_front();
                }
                held.push_back(m);
            }
        }
    }
    t
}

fn check(chunk_size: u32) {
    // 10 s of warm-up, then 150 s: about 4,500 video and 6,500 audio messages.
    let (warm, _) = chunks(chunk_size, 10_000);
    let (steady, sent) = chunks(chunk_size, 150_000);
    assert!(sent >= 10_000, "{sent} messages");

    // Consumers that drop messages at once: the arenas are recycled and
    // nothing allocates at all.
    let mut dec = ChunkDecoder::new(Limits::default());
    run(&mut dec, &warm, 0);
    let t = run(&mut dec, &steady, 0);
    assert_eq!(t.messages as usize, sent);
    eprintln!(
        "chunk size {chunk_size}, messages dropped at once: {} messages, {} allocations; {} mid-message chunks, {} allocations",
        t.messages, t.alloc_edges, t.middle_chunks, t.alloc_middle
    );
    assert_eq!(t.alloc_edges + t.alloc_middle, 0, "steady state allocated");

    // Consumers that hold on to messages (a GOP's worth) keep arenas busy.
    // A new arena costs its buffer (at a message's first chunk) and its
    // shared header (when its first message is cut): at most one allocation
    // per message overall, and none in the middle of a message.
    let mut dec = ChunkDecoder::new(Limits::default());
    run(&mut dec, &warm, 120);
    let t = run(&mut dec, &steady, 120);
    eprintln!(
        "chunk size {chunk_size}, holding 120 messages: {} messages, {} allocations; {} mid-message chunks, {} allocations",
        t.messages, t.alloc_edges, t.middle_chunks, t.alloc_middle
    );
    assert_eq!(t.alloc_middle, 0, "a mid-message chunk allocated");
    assert!(
        t.alloc_edges <= t.messages,
        "{} allocations for {} messages",
        t.alloc_edges,
        t.messages
    );
}

#[test]
fn no_allocation_per_chunk_at_chunk_size_128() {
    check(128);
}

#[test]
fn no_allocation_per_chunk_at_chunk_size_4096() {
    check(4096);
}
