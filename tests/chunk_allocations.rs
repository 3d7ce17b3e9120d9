//! Proves the chunk decoder's steady state allocates nothing per chunk and at
//! most once per completed message, with a counting global allocator.
//!
//! The counter counts only on the thread that switched it on, so the test
//! harness's own threads do not disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;

use bytes::BytesMut;
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

/// A publisher's byte stream: Set Chunk Size, then the synthetic stream with
/// header compression, as ffmpeg or OBS would send it.
fn wire(chunk_size: u32, duration_ms: u32) -> (BytesMut, usize) {
    let messages = synthetic::stream(StreamShape::default(), 1, duration_ms);
    let mut enc = ChunkEncoder::new();
    let mut out = BytesMut::new();
    enc.write(&mut out, &ControlMessage::SetChunkSize(chunk_size).to_message());
    enc.set_chunk_size(chunk_size);
    for m in &messages {
        enc.write(&mut out, m);
    }
    (out, messages.len())
}

struct Tally {
    messages: u64,
    partial_calls: u64,
    alloc_in_partial_calls: u64,
    alloc_in_message_calls: u64,
    worst_message_call: u64,
}

/// Decodes `input` in pieces of `piece` bytes (smaller than a chunk, so
/// every chunk is split across calls), keeping the last `keep` messages
/// alive the way a player queue or GOP cache would.
fn run(dec: &mut ChunkDecoder, input: &[u8], piece: usize, keep: usize) -> Tally {
    let mut held: VecDeque<RawMessage> = VecDeque::with_capacity(keep + 1);
    let mut t = Tally {
        messages: 0,
        partial_calls: 0,
        alloc_in_partial_calls: 0,
        alloc_in_message_calls: 0,
        worst_message_call: 0,
    };
    for mut rest in input.chunks(piece) {
        loop {
            let (result, allocs) = counted(|| dec.decode(&mut rest));
            match result.expect("decode") {
                Some(m) => {
                    t.messages += 1;
                    t.alloc_in_message_calls += allocs;
                    t.worst_message_call = t.worst_message_call.max(allocs);
                    if keep > 0 {
                        if held.len() == keep {
                            held.pop_front();
                        }
                        held.push_back(m);
                    }
                }
                None => {
                    t.partial_calls += 1;
                    t.alloc_in_partial_calls += allocs;
                    break;
                }
            }
        }
    }
    t
}

fn check(chunk_size: u32) {
    // 10 s of warm-up, then 150 s: about 4,500 video and 6,500 audio messages.
    let (warm, _) = wire(chunk_size, 10_000);
    let (steady, sent) = wire(chunk_size, 150_000);
    assert!(sent >= 10_000, "{sent} messages");

    let mut dec = ChunkDecoder::new(Limits::default());
    let t = run(&mut dec, &warm, 1000, 0);
    assert!(t.messages > 400);
    // The same connection goes on: the measured part starts after warm-up,
    // with a fresh Set Chunk Size at the head of `steady` as a no-op.
    let t = run(&mut dec, &steady, 1000, 0);
    assert_eq!(t.messages as usize, sent + 1);
    eprintln!(
        "chunk size {chunk_size}: {} messages, {} partial decode calls with {} allocations, {} allocations in message-completing calls (worst {})",
        t.messages, t.partial_calls, t.alloc_in_partial_calls, t.alloc_in_message_calls, t.worst_message_call
    );
    assert_eq!(t.alloc_in_partial_calls, 0, "a chunk allocated");
    assert!(t.worst_message_call <= 1, "a message took {} allocations", t.worst_message_call);

    // Consumers holding on to messages (a GOP's worth) force fresh arenas:
    // still at most one allocation per message on average, none per chunk.
    let mut dec = ChunkDecoder::new(Limits::default());
    run(&mut dec, &warm, 1000, 120);
    let t = run(&mut dec, &steady, 1000, 120);
    eprintln!(
        "chunk size {chunk_size}, holding 120 messages: {} messages, {} allocations in partial calls, {} in message calls",
        t.messages, t.alloc_in_partial_calls, t.alloc_in_message_calls
    );
    assert_eq!(t.alloc_in_partial_calls, 0, "a chunk allocated");
    assert!(t.worst_message_call <= 1, "a message took {} allocations", t.worst_message_call);
    assert!(
        t.alloc_in_message_calls <= t.messages,
        "{} allocations for {} messages",
        t.alloc_in_message_calls,
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
