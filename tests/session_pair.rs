//! Client and server sessions against each other in memory: publish, play,
//! a player that joins mid-stream, and the error answers. The "application"
//! here is a minimal hub (duplicate keys refused, unknown streams not found,
//! metadata + sequence headers + last GOP for late joiners) so the sessions
//! are exercised the way the node drives them.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use bytes::BytesMut;
use tributary::protocol::amf0::Amf0Value;
use tributary::protocol::client::{ClientConfig, ClientEvent, ClientSession, Role};
use tributary::protocol::handshake::ClientMode;
use tributary::protocol::media::{classify_video, PacketKind};
use tributary::protocol::server::{
    encode_for_player, ServerConfig, ServerEvent, ServerSession, PLAYER_DATA_CSID,
};
use tributary::protocol::{MessageType, RawMessage};
use tributary::synthetic::{self, StreamShape};

struct Conn {
    client: ClientSession,
    server: ServerSession,
    /// Bytes on the wire toward the client: session replies, then shared media.
    to_client: BytesMut,
    events: Vec<ClientEvent>,
    closed: bool,
}

#[derive(Default)]
struct Stream {
    publisher: usize,
    metadata: Option<RawMessage>,
    video_header: Option<RawMessage>,
    audio_header: Option<RawMessage>,
    gop: Vec<RawMessage>,
}

#[derive(Default)]
struct Hub {
    streams: HashMap<String, Stream>,
    /// (connection, stream id, stream name)
    players: Vec<(usize, u32, String)>,
    reject_connect: bool,
}

impl Hub {
    /// Encodes once per message and appends the same bytes to every player.
    fn fan_out(&self, conns: &mut [Conn], name: &str, msg: &RawMessage) {
        for (conn, stream_id, _) in self.players.iter().filter(|p| p.2 == name) {
            let mut out = BytesMut::new();
            let chunk_size = conns[*conn].server.chunk_size();
            encode_for_player(&mut out, chunk_size, *stream_id, msg);
            conns[*conn].to_client.extend_from_slice(&out);
        }
    }

    fn on_event(&mut self, conns: &mut [Conn], i: usize, ev: ServerEvent) {
        match ev {
            ServerEvent::ConnectRequest(c) => {
                assert_eq!(c.app, "live");
                if self.reject_connect {
                    conns[i].server.reject_connect("no entry");
                } else {
                    conns[i].server.accept_connect();
                }
            }
            ServerEvent::PublishRequest {
                stream_id, name, ..
            } => match self.streams.entry(name) {
                Entry::Occupied(_) => conns[i].server.reject_publish(
                    stream_id,
                    "NetStream.Publish.BadName",
                    "stream key in use",
                ),
                Entry::Vacant(v) => {
                    v.insert(Stream {
                        publisher: i,
                        ..Stream::default()
                    });
                    conns[i].server.accept_publish(stream_id);
                }
            },
            ServerEvent::PlayRequest {
                stream_id, name, ..
            } => {
                let Some(s) = self.streams.get(&name) else {
                    conns[i].server.reject_play(
                        stream_id,
                        "NetStream.Play.StreamNotFound",
                        "no such stream",
                    );
                    return;
                };
                conns[i].server.accept_play(stream_id);
                let cached: Vec<RawMessage> = s
                    .metadata
                    .iter()
                    .chain(&s.video_header)
                    .chain(&s.audio_header)
                    .chain(&s.gop)
                    .cloned()
                    .collect();
                // Replies (Play.Start...) go first on the wire.
                conns[i].server.poll_transmit(&mut conns[i].to_client);
                self.players.push((i, stream_id, name.clone()));
                let me = vec![(i, stream_id, name.clone())];
                let hub = Hub {
                    players: me,
                    ..Hub::default()
                };
                for m in &cached {
                    hub.fan_out(conns, &name, m);
                }
            }
            ServerEvent::Metadata {
                timestamp, payload, ..
            } => {
                let name = self.name_of(i);
                let msg = RawMessage {
                    csid: PLAYER_DATA_CSID,
                    timestamp,
                    type_id: MessageType::DATA_AMF0,
                    stream_id: 0,
                    payload,
                };
                self.streams.get_mut(&name).unwrap().metadata = Some(msg.clone());
                self.fan_out(conns, &name, &msg);
            }
            ServerEvent::Media { message, .. } => {
                let name = self.name_of(i);
                let s = self.streams.get_mut(&name).unwrap();
                if message.type_id == MessageType::VIDEO {
                    let info = classify_video(&message.payload).unwrap();
                    if info.kind == PacketKind::SequenceHeader {
                        s.video_header = Some(message.clone());
                    } else if info.keyframe {
                        s.gop.clear();
                        s.gop.push(message.clone());
                    } else if !s.gop.is_empty() {
                        s.gop.push(message.clone());
                    }
                } else if message.payload.get(1) == Some(&0) {
                    s.audio_header = Some(message.clone());
                } else if !s.gop.is_empty() {
                    s.gop.push(message.clone());
                }
                self.fan_out(conns, &name, &message);
            }
            ServerEvent::PublishEnded { .. } => {
                let name = self.name_of(i);
                self.streams.remove(&name);
                for (conn, stream_id, _) in self.players.iter().filter(|p| p.2 == name) {
                    conns[*conn].server.notify_unpublish(*stream_id);
                }
            }
            ServerEvent::PlayEnded { .. } => self.players.retain(|p| p.0 != i),
            _ => {}
        }
    }

    fn name_of(&self, publisher: usize) -> String {
        self.streams
            .iter()
            .find(|(_, s)| s.publisher == publisher)
            .map(|(k, _)| k.clone())
            .expect("publisher has a stream")
    }
}

struct World {
    conns: Vec<Conn>,
    hub: Hub,
}

impl World {
    fn new() -> Self {
        Self {
            conns: Vec::new(),
            hub: Hub::default(),
        }
    }

    fn connect(&mut self, role: Role, key: &str, mode: ClientMode) -> usize {
        let mut config = ClientConfig::new(role, "rtmp://127.0.0.1/live", "live", key);
        config.handshake = mode;
        let n = self.conns.len() as u64;
        self.conns.push(Conn {
            client: ClientSession::new(config, 1000, 7 + n),
            server: ServerSession::new(ServerConfig::default(), 2000, 99 + n),
            to_client: BytesMut::new(),
            events: Vec::new(),
            closed: false,
        });
        self.conns.len() - 1
    }

    /// Moves bytes both ways, in pieces of `piece` bytes, until nothing moves.
    fn settle(&mut self, piece: usize) {
        loop {
            let mut moved = false;
            for i in 0..self.conns.len() {
                if self.conns[i].closed {
                    continue;
                }
                let mut wire = BytesMut::new();
                self.conns[i].client.poll_transmit(&mut wire);
                for part in wire.chunks(piece) {
                    let mut rest: &[u8] = part;
                    while !rest.is_empty() {
                        moved = true;
                        let n = match self.conns[i].server.handle_input(rest) {
                            Ok(n) => n,
                            Err(e) => panic!("server {i}: {e}"),
                        };
                        rest = &rest[n..];
                        while let Some(ev) = self.conns[i].server.poll_event() {
                            self.hub.on_event(&mut self.conns, i, ev);
                        }
                    }
                }
                let conn = &mut self.conns[i];
                conn.server.poll_transmit(&mut conn.to_client);
            }
            for conn in self.conns.iter_mut().filter(|c| !c.closed) {
                let wire = conn.to_client.split();
                for part in wire.chunks(piece) {
                    let mut rest: &[u8] = part;
                    while !rest.is_empty() {
                        moved = true;
                        let n = conn.client.handle_input(rest).expect("client input");
                        rest = &rest[n..];
                        while let Some(ev) = conn.client.poll_event() {
                            conn.events.push(ev);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn publish(&mut self, i: usize, messages: &[RawMessage]) {
        for m in messages {
            let c = &mut self.conns[i].client;
            c.send_media(m.type_id, m.timestamp, m.payload.clone())
                .unwrap();
            self.settle(4096);
        }
    }
}

fn started(events: &[ClientEvent]) -> bool {
    events.iter().any(|e| {
        matches!(
            e,
            ClientEvent::PublishStarted { .. } | ClientEvent::PlayStarted { .. }
        )
    })
}

fn media(events: &[ClientEvent]) -> Vec<&RawMessage> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Media(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn metadata() -> Amf0Value {
    Amf0Value::EcmaArray(vec![
        ("width".into(), Amf0Value::Number(1280.0)),
        ("height".into(), Amf0Value::Number(720.0)),
        ("videocodecid".into(), Amf0Value::Number(7.0)),
    ])
}

#[test]
fn publish_then_play_from_the_start_both_handshakes() {
    for (mode, piece) in [
        (ClientMode::Simple, 1),
        (ClientMode::Digest, 7),
        (ClientMode::Digest, 100_000),
    ] {
        let mut w = World::new();
        let publisher = w.connect(Role::Publish, "cam1", mode);
        w.settle(piece);
        assert!(
            started(&w.conns[publisher].events),
            "{:?}",
            w.conns[publisher].events
        );
        w.conns[publisher]
            .client
            .send_metadata(&metadata())
            .unwrap();
        let stream = synthetic::stream(StreamShape::default(), 1, 500);
        w.publish(publisher, &stream[..2]);

        let player = w.connect(Role::Play, "cam1", mode);
        w.settle(piece);
        assert!(started(&w.conns[player].events));
        w.publish(publisher, &stream[2..]);

        let ev = &w.conns[player].events;
        let codes: Vec<&str> = ev
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Status { code, .. } => Some(code.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(codes, ["NetStream.Play.Reset", "NetStream.Play.Start"]);
        assert!(ev.iter().any(|e| matches!(e, ClientEvent::Metadata { .. })));
        let got = media(ev);
        assert_eq!(got.len(), stream.len(), "every message arrives");
        for (a, b) in got.iter().zip(&stream) {
            assert_eq!(
                (a.type_id, a.timestamp, &a.payload),
                (b.type_id, b.timestamp, &b.payload)
            );
            assert_eq!(a.stream_id, w.conns[player].client.stream_id());
        }
    }
}

#[test]
fn player_joining_mid_stream_starts_on_a_keyframe_with_headers() {
    let mut w = World::new();
    let publisher = w.connect(Role::Publish, "cam2?token=abc", ClientMode::Digest);
    w.settle(4096);
    w.conns[publisher]
        .client
        .send_metadata(&metadata())
        .unwrap();
    // 3 s of stream: keyframes at 0 and 2 s; join at 3 s.
    let stream = synthetic::stream(StreamShape::default(), 1, 5_000);
    let split = stream.iter().position(|m| m.timestamp >= 3_000).unwrap();
    w.publish(publisher, &stream[..split]);

    let player = w.connect(Role::Play, "cam2?token=abc", ClientMode::Simple);
    w.settle(4096);
    w.publish(publisher, &stream[split..]);

    let ev = &w.conns[player].events;
    let first_media = ev
        .iter()
        .position(|e| matches!(e, ClientEvent::Media(_)))
        .unwrap();
    let meta = ev
        .iter()
        .position(|e| matches!(e, ClientEvent::Metadata { .. }))
        .unwrap();
    assert!(meta < first_media, "metadata before media");
    let got = media(ev);
    let video: Vec<_> = got
        .iter()
        .filter(|m| m.type_id == MessageType::VIDEO)
        .collect();
    assert_eq!(
        classify_video(&video[0].payload).unwrap().kind,
        PacketKind::SequenceHeader
    );
    assert!(
        classify_video(&video[1].payload).unwrap().keyframe,
        "first frame is a keyframe"
    );
    assert_eq!(video[1].timestamp, 2_000, "starts at the last GOP");
    assert_eq!(
        got[1].payload[..2],
        [0xAF, 0x00],
        "audio sequence header second"
    );
    let frames: Vec<_> = got.iter().skip(2).collect();
    assert!(
        frames.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
        "monotonic timestamps"
    );
    assert_eq!(
        frames.last().unwrap().timestamp,
        stream.last().unwrap().timestamp
    );
}

#[test]
fn duplicate_publish_gets_bad_name_and_unknown_play_not_found() {
    let mut w = World::new();
    let first = w.connect(Role::Publish, "dup", ClientMode::Digest);
    w.settle(4096);
    assert!(started(&w.conns[first].events));
    let second = w.connect(Role::Publish, "dup", ClientMode::Digest);
    w.settle(4096);
    assert!(w.conns[second].events.iter().any(|e| matches!(
        e,
        ClientEvent::StreamRejected { code, .. } if code == "NetStream.Publish.BadName"
    )));
    let player = w.connect(Role::Play, "nope", ClientMode::Digest);
    w.settle(4096);
    assert!(w.conns[player].events.iter().any(|e| matches!(
        e,
        ClientEvent::StreamRejected { code, .. } if code == "NetStream.Play.StreamNotFound"
    )));
}

#[test]
fn unpublish_notifies_players() {
    let mut w = World::new();
    let publisher = w.connect(Role::Publish, "gone", ClientMode::Digest);
    w.settle(4096);
    let player = w.connect(Role::Play, "gone", ClientMode::Digest);
    w.settle(4096);
    w.conns[publisher].client.close_stream();
    w.settle(4096);
    let ev = &w.conns[player].events;
    assert!(ev.iter().any(|e| matches!(e, ClientEvent::Status { code, .. } if code == "NetStream.Play.UnpublishNotify")));
    assert!(ev
        .iter()
        .any(|e| matches!(e, ClientEvent::StreamEof { .. })));
}

#[test]
fn rejected_connect_gets_an_error_result() {
    let mut w = World::new();
    w.hub.reject_connect = true;
    let c = w.connect(Role::Publish, "x", ClientMode::Simple);
    w.settle(4096);
    assert!(w.conns[c].events.iter().any(
        |e| matches!(e, ClientEvent::ConnectRejected { description } if description == "no entry")
    ));
    w.conns[c].closed = true;
}

#[test]
fn dropped_transport_ends_the_publish() {
    let mut w = World::new();
    let publisher = w.connect(Role::Publish, "drop", ClientMode::Digest);
    w.settle(4096);
    assert!(started(&w.conns[publisher].events));
    // TCP went away without deleteStream: the driver tells the session.
    let server = &mut w.conns[publisher].server;
    server.handle_close();
    let mut ended = Vec::new();
    while let Some(e) = server.poll_event() {
        ended.push(e);
    }
    assert_eq!(ended, vec![ServerEvent::PublishEnded { stream_id: 1 }]);
}

#[test]
fn stream_ids_stay_small_and_unique() {
    use tributary::protocol::amf0::Amf0Value;
    use tributary::protocol::chunk::{ChunkDecoder, ChunkEncoder};
    use tributary::protocol::command::{command_message, Command};

    let mut server = ServerSession::new(ServerConfig::default(), 0, 1);
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&[3]);
    wire.extend_from_slice(&[0; 1536 * 2]);
    let mut enc = ChunkEncoder::new();
    let connect = Amf0Value::object([("app", Amf0Value::String("live".into()))]);
    enc.write(
        &mut wire,
        &command_message(3, 0, "connect", 1.0, &[connect]),
    );
    // A hostile publish on the largest stream id, then createStream twice.
    let name = Amf0Value::String("k".into());
    let publish = command_message(
        3,
        u32::MAX,
        "publish",
        2.0,
        &[Amf0Value::Null, name, Amf0Value::String("live".into())],
    );
    enc.write(&mut wire, &publish);
    enc.write(
        &mut wire,
        &command_message(3, 0, "createStream", 3.0, &[Amf0Value::Null]),
    );
    enc.write(
        &mut wire,
        &command_message(3, 0, "createStream", 4.0, &[Amf0Value::Null]),
    );
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let n = server.handle_input(rest).unwrap();
        rest = &rest[n..];
        while let Some(e) = server.poll_event() {
            match e {
                ServerEvent::ConnectRequest(_) => server.accept_connect(),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let mut out = BytesMut::new();
    server.poll_transmit(&mut out);
    let mut dec = ChunkDecoder::new(Default::default());
    let mut input = &out[1 + 1536 * 2..];
    let mut ids = Vec::new();
    let mut refused = false;
    while let Some(m) = dec.decode(&mut input).unwrap() {
        match Command::parse(m.type_id, &m.payload, 8) {
            Ok(Command::Result {
                transaction,
                values,
            }) if transaction >= 3.0 => ids.extend(values.iter().filter_map(Amf0Value::as_number)),
            Ok(Command::OnStatus { info }) => {
                refused |= info.property("level").and_then(Amf0Value::as_str) == Some("error");
            }
            _ => {}
        }
    }
    assert!(refused, "publish on stream id 2^32-1 is refused");
    assert_eq!(ids, vec![1.0, 2.0]);
}
