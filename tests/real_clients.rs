//! The protocol core against real clients nobody here wrote: ffmpeg
//! publishes; ffmpeg, rtmpdump and GStreamer play; ffprobe judges what
//! arrived. The harness is deliberately plain (a thread per connection,
//! blocking sockets on 127.0.0.1:0, a mutex-guarded hub): it tests the
//! sessions' bytes, not a server architecture.

use std::collections::HashMap;
use std::io::{Read, Write};

mod common;
use common::{check_recording, ffmpeg_player, publish, temp_file, wait_live, Proc};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use tributary::protocol::media::{classify_audio, classify_video, PacketKind};
use tributary::protocol::server::{
    encode_for_player, ServerConfig, ServerEvent, ServerSession, PLAYER_DATA_CSID,
};
use tributary::protocol::{MessageType, RawMessage};

type Sink = Arc<Mutex<TcpStream>>;

#[derive(Default)]
struct Stream {
    publisher: u64,
    metadata: Option<RawMessage>,
    video_header: Option<RawMessage>,
    audio_header: Option<RawMessage>,
    gop: Vec<RawMessage>,
    /// (sink, stream id the player's createStream returned, chunk size)
    players: Vec<(Sink, u32, u32)>,
}

#[derive(Default)]
struct Hub {
    streams: HashMap<String, Stream>,
}

fn send_to(sink: &Sink, stream_id: u32, chunk_size: u32, msg: &RawMessage) {
    let mut out = BytesMut::new();
    encode_for_player(&mut out, chunk_size, stream_id, msg);
    // A player that went away is simply not written to any more.
    let _ = sink.lock().unwrap().write_all(&out);
}

fn flush(session: &mut ServerSession, sink: &Sink) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    if session.poll_transmit(&mut out) > 0 {
        sink.lock().unwrap().write_all(&out)?;
    }
    Ok(())
}

fn serve(id: u64, mut socket: TcpStream, hub: Arc<Mutex<Hub>>) {
    let sink: Sink = Arc::new(Mutex::new(socket.try_clone().unwrap()));
    let mut session = ServerSession::new(ServerConfig::default(), 0, id);
    let mut buf = vec![0u8; 64 * 1024];
    let mut publishing: Option<String> = None;
    loop {
        let n = match socket.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let used = match session.handle_input(rest) {
                Ok(used) => used,
                Err(e) => {
                    eprintln!("connection {id}: {e}");
                    let _ = flush(&mut session, &sink);
                    return;
                }
            };
            rest = &rest[used..];
            while let Some(event) = session.poll_event() {
                on_event(id, event, &mut session, &sink, &hub, &mut publishing);
            }
            if flush(&mut session, &sink).is_err() {
                return;
            }
        }
    }
    if let Some(name) = publishing {
        if let Some(stream) = hub.lock().unwrap().streams.remove(&name) {
            // Players learn the end from their own connections closing here.
            for (sink, ..) in stream.players {
                let _ = sink.lock().unwrap().shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn on_event(
    id: u64,
    event: ServerEvent,
    session: &mut ServerSession,
    sink: &Sink,
    hub: &Mutex<Hub>,
    publishing: &mut Option<String>,
) {
    let mut hub = hub.lock().unwrap();
    match event {
        ServerEvent::ConnectRequest(_) => session.accept_connect(),
        ServerEvent::PublishRequest {
            stream_id, name, ..
        } => {
            if hub.streams.contains_key(&name) {
                session.reject_publish(stream_id, "NetStream.Publish.BadName", "in use");
            } else {
                hub.streams.insert(
                    name.clone(),
                    Stream {
                        publisher: id,
                        ..Stream::default()
                    },
                );
                *publishing = Some(name);
                session.accept_publish(stream_id);
            }
        }
        ServerEvent::PlayRequest {
            stream_id, name, ..
        } => {
            let Some(stream) = hub.streams.get_mut(&name) else {
                session.reject_play(stream_id, "NetStream.Play.StreamNotFound", "no such stream");
                return;
            };
            session.accept_play(stream_id);
            // Replies first, then what a late joiner needs, then live media.
            let _ = flush(session, sink);
            let chunk_size = session.chunk_size();
            let cached = stream
                .metadata
                .iter()
                .chain(&stream.video_header)
                .chain(&stream.audio_header)
                .chain(&stream.gop);
            for m in cached {
                send_to(sink, stream_id, chunk_size, m);
            }
            stream.players.push((sink.clone(), stream_id, chunk_size));
        }
        ServerEvent::Metadata {
            payload, timestamp, ..
        } => {
            let Some(stream) = publishing.as_ref().and_then(|n| hub.streams.get_mut(n)) else {
                return;
            };
            let m = RawMessage {
                csid: PLAYER_DATA_CSID,
                timestamp,
                type_id: MessageType::DATA_AMF0,
                stream_id: 0,
                payload,
            };
            for (sink, sid, cs) in &stream.players {
                send_to(sink, *sid, *cs, &m);
            }
            stream.metadata = Some(m);
        }
        ServerEvent::Media { message, .. } => {
            let Some(stream) = publishing.as_ref().and_then(|n| hub.streams.get_mut(n)) else {
                return;
            };
            assert_eq!(stream.publisher, id);
            if message.type_id == MessageType::VIDEO {
                let info = classify_video(&message.payload).expect("ffmpeg sends valid video tags");
                if info.kind == PacketKind::SequenceHeader {
                    stream.video_header = Some(message.clone());
                } else if info.keyframe {
                    stream.gop.clear();
                    stream.gop.push(message.clone());
                } else if !stream.gop.is_empty() {
                    stream.gop.push(message.clone());
                }
            } else {
                let info = classify_audio(&message.payload).expect("ffmpeg sends valid audio tags");
                if info.kind == PacketKind::SequenceHeader {
                    stream.audio_header = Some(message.clone());
                } else if !stream.gop.is_empty() {
                    stream.gop.push(message.clone());
                }
            }
            for (sink, sid, cs) in &stream.players {
                send_to(sink, *sid, *cs, &message);
            }
        }
        ServerEvent::PublishEnded { .. } => {
            if let Some(stream) = publishing.take().and_then(|n| hub.streams.remove(&n)) {
                for (sink, ..) in stream.players {
                    let _ = sink.lock().unwrap().shutdown(std::net::Shutdown::Both);
                }
            }
        }
        _ => {}
    }
}

fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = Arc::new(Mutex::new(Hub::default()));
    thread::spawn(move || {
        for (id, socket) in listener.incoming().enumerate() {
            let Ok(socket) = socket else { continue };
            let hub = hub.clone();
            thread::spawn(move || serve(id as u64 + 1, socket, hub));
        }
    });
    addr
}

#[test]
fn ffmpeg_publishes_and_ffmpeg_plays_mid_stream() {
    let addr = start_server();
    let url = format!("rtmp://{addr}/live/ffmpeg-key");
    let publisher = publish(&url, 8);
    wait_live(&url);
    let file = temp_file("ffmpeg.flv");
    let player = ffmpeg_player(&url, &file, Some(3));
    player.wait(Duration::from_secs(30)).unwrap();
    check_recording(&file, 50);
    publisher.wait(Duration::from_secs(30)).unwrap();
}

#[test]
fn rtmpdump_plays() {
    let addr = start_server();
    let url = format!("rtmp://{addr}/live/rtmpdump-key");
    let publisher = publish(&url, 8);
    wait_live(&url);
    let file = temp_file("rtmpdump.flv");
    // rtmpdump has no duration flag for live; -B sets its buffer, --stop
    // ends after N seconds of media.
    let player = Proc::spawn(
        "rtmpdump",
        Command::new("rtmpdump")
            .args(["-q", "--live", "-r", &url, "--stop", "3", "-o"])
            .arg(&file),
    );
    // rtmpdump exits 0 (complete) or 2 (incomplete: stopped before the end
    // of a live stream, which is what --stop does).
    if let Err(e) = player.wait(Duration::from_secs(30)) {
        assert!(e.contains("exit status: 2"), "{e}");
    }
    check_recording(&file, 50);
    publisher.wait(Duration::from_secs(30)).unwrap();
}

#[test]
fn gstreamer_plays() {
    let addr = start_server();
    let url = format!("rtmp://{addr}/live/gst-key");
    let publisher = publish(&url, 8);
    wait_live(&url);
    let file = temp_file("gst.flv");
    // rtmp2src → flvdemux → flvmux → file: what GStreamer received, remuxed.
    let player = Proc::spawn(
        "gst-launch-1.0",
        Command::new("gst-launch-1.0").args(["-q", "-e"]).args(
            format!(
                "rtmp2src location={url} timeout=5 ! flvdemux name=d \
                 d.video ! queue ! h264parse ! mux. \
                 d.audio ! queue ! aacparse ! mux. \
                 flvmux name=mux streamable=true ! filesink location={}",
                file.display()
            )
            .split_whitespace(),
        ),
    );
    // The publisher ends after 8 s; GStreamer then sees end of stream.
    publisher.wait(Duration::from_secs(30)).unwrap();
    player.wait(Duration::from_secs(30)).unwrap();
    check_recording(&file, 50);
}

#[test]
fn second_ffmpeg_publisher_of_a_live_key_is_refused() {
    let addr = start_server();
    let url = format!("rtmp://{addr}/live/dup-key");
    let first = publish(&url, 6);
    wait_live(&url);
    let second = publish(&url, 2);
    let err = second.wait(Duration::from_secs(20)).unwrap_err();
    assert!(err.contains("failed"), "{err}");
    first.wait(Duration::from_secs(30)).unwrap();
}

#[test]
fn ffmpeg_playing_an_unknown_stream_fails_cleanly() {
    let addr = start_server();
    let url = format!("rtmp://{addr}/live/nobody");
    let file = temp_file("none.flv");
    let player = ffmpeg_player(&url, &file, Some(1));
    let err = player.wait(Duration::from_secs(20)).unwrap_err();
    assert!(err.contains("failed"), "{err}");
}
