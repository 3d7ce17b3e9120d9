//! The server side of one RTMP connection, sans-IO.
//!
//! Bytes in ([`ServerSession::handle_input`]), events out
//! ([`ServerSession::poll_event`]), bytes to send into a buffer the caller
//! owns ([`ServerSession::poll_transmit`]). Connect, publish and play are
//! raised as requests; the caller answers with `accept_*` or `reject_*`, and
//! the session writes the replies ffmpeg, OBS, rtmpdump and GStreamer expect.
//! It never decides policy, never reads a clock and never touches a socket:
//! the one time value it needs, the handshake epoch, is passed in, and
//! timeouts belong to whoever owns the socket.
//!
//! Media to players is not written here per player: the caller encodes each
//! message once with [`encode_message`] on [`PLAYER_AUDIO_CSID`] /
//! [`PLAYER_VIDEO_CSID`] / [`PLAYER_DATA_CSID`] at [`ServerSession::chunk_size`]
//! and writes the same bytes to every player whose stream id matches.
//!
//! One state machine, the server side of an RTMP session; split, its states would have to share their fields across files.
//! Its tests are `tests/session_pair.rs`.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::protocol::amf0::Amf0Value;
use crate::protocol::chunk::{
    encode_message, ChunkDecoder, ChunkEncoder, ChunkError, ControlMessage, UserControlEvent,
};
use crate::protocol::command::{
    self, check_len, command_message, data_message, on_status, Command, CommandError, Connect,
    DataMessage, COMMAND_CSID, STREAM_CSID,
};
use crate::protocol::handshake::{HandshakeError, HandshakeKind, ServerHandshake};
use crate::protocol::limits::Limits;
use crate::protocol::message::{split_aggregate, AggregateParts, MessageType, RawMessage};

/// Chunk streams for media and data to players. The session's own replies
/// use 2, 3 and 5, so shared pre-encoded media never disturbs the header
/// compression of what the session writes.
pub const PLAYER_AUDIO_CSID: u32 = 4;
pub const PLAYER_VIDEO_CSID: u32 = 6;
pub const PLAYER_DATA_CSID: u32 = 8;

/// Encodes `m` for a player that plays on message stream `stream_id`: on
/// the player chunk stream of its type, with a type-0 header, so the same
/// bytes serve every player with that stream id and chunk size.
pub fn encode_for_player(out: &mut BytesMut, chunk_size: u32, stream_id: u32, m: &RawMessage) {
    let csid = match m.type_id {
        MessageType::AUDIO => PLAYER_AUDIO_CSID,
        MessageType::VIDEO => PLAYER_VIDEO_CSID,
        _ => PLAYER_DATA_CSID,
    };
    let m = RawMessage {
        csid,
        stream_id,
        timestamp: m.timestamp,
        type_id: m.type_id,
        payload: m.payload.clone(),
    };
    encode_message(out, chunk_size, &m);
}

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    pub limits: Limits,
    /// Chunk size we send with (announced after connect). Every connection
    /// of a node should use the same, so media encoded once fits all.
    pub chunk_size: u32,
    /// Window Acknowledgement Size and Set Peer Bandwidth we announce.
    pub window_ack_size: u32,
    /// Streams one connection may create with createStream.
    pub max_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            max_streams: 8,
        }
    }
}

/// What a connection asks of the application, or hands it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// `connect`: answer with [`ServerSession::accept_connect`] or
    /// [`ServerSession::reject_connect`]. No more input is read until then.
    ConnectRequest(Box<Connect>),
    /// `publish`: answer with `accept_publish` or `reject_publish`.
    PublishRequest {
        stream_id: u32,
        name: String,
        kind: String,
    },
    /// `play`: answer with `accept_play` or `reject_play`.
    PlayRequest {
        stream_id: u32,
        name: String,
        start: f64,
        reset: bool,
    },
    /// Stream metadata from a publisher. `payload` is the AMF0 body to send
    /// to players (`onMetaData` + object), sharing the received bytes.
    Metadata {
        stream_id: u32,
        timestamp: u32,
        payload: Bytes,
        properties: Amf0Value,
    },
    /// An audio or video message from a publisher (aggregates arrive split).
    Media {
        stream_id: u32,
        message: RawMessage,
    },
    /// Another data message from a publisher (`onTextData`, `onCuePoint`).
    Data {
        stream_id: u32,
        name: String,
        message: RawMessage,
    },
    /// The publisher on this stream stopped (deleteStream or closeStream).
    PublishEnded {
        stream_id: u32,
    },
    /// The player on this stream stopped.
    PlayEnded {
        stream_id: u32,
    },
    /// A player paused (true) or resumed (false).
    Pause {
        stream_id: u32,
        paused: bool,
    },
    /// A player asked to (not) receive audio or video.
    ReceiveAudio {
        stream_id: u32,
        enable: bool,
    },
    ReceiveVideo {
        stream_id: u32,
        enable: bool,
    },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("command: {0}")]
    Command(#[from] CommandError),
    #[error("`{0}` before connect")]
    NotConnected(&'static str),
    #[error("second connect on one connection")]
    AlreadyConnected,
    #[error("the connection was rejected or closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    AwaitConnect,
    ConnectPending,
    Connected,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamRole {
    Idle,
    PublishPending,
    Publishing,
    PlayPending,
    Playing,
}

#[derive(Debug)]
struct NetStream {
    id: u32,
    role: StreamRole,
    name: String,
    reset: bool,
}

impl Encrypted {
    fn new(candidates: crate::protocol::rtmpe::Candidates) -> Self {
        let mut e = Self {
            candidates: Some(Box::new(candidates)),
            probe: Vec::new(),
            inbound: None,
            outbound: None,
            plain: BytesMut::new(),
        };
        e.take(&[]);
        e
    }

    /// Takes encrypted bytes: decrypted into `plain`, or, while the key
    /// pair is undecided, held until the client's first bytes decide it
    /// (then decrypted with the rest).
    fn take(&mut self, input: &[u8]) {
        if let Some(c) = &mut self.inbound {
            let at = self.plain.len();
            self.plain.extend_from_slice(input);
            c.apply(&mut self.plain[at..]);
            return;
        }
        self.probe.extend_from_slice(input);
        let ready = self.candidates.as_ref().is_some_and(|c| {
            c.is_certain() || self.probe.len() >= crate::protocol::rtmpe::PROBE_LEN
        });
        if let Some(candidates) = self.candidates.take_if(|_| ready) {
            let mut ciphers = candidates.choose(&self.probe);
            self.plain.extend_from_slice(&self.probe);
            self.probe = Vec::new();
            ciphers.inbound.apply(&mut self.plain);
            self.inbound = Some(ciphers.inbound);
            self.outbound = Some(ciphers.outbound);
        }
    }
}

/// Most media events [`ServerSession::handle_input`] queues before it
/// returns: enough for a receive buffer of audio and video, few enough that
/// the queue stays small.
const MEDIA_BATCH: usize = 64;

/// One RTMP connection, server side.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    phase: Phase,
    handshake: ServerHandshake,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    connect: Option<Box<Connect>>,
    streams: Vec<NetStream>,
    events: VecDeque<ServerEvent>,
    aggregate: Option<(u32, AggregateParts)>,
    out: BytesMut,
    /// RTMPE, after the handshake.
    rtmpe: Option<Box<Encrypted>>,
}

/// An RTMPE session's input side: decrypted bytes the chunk stream has
/// not taken yet, and the stream they were decrypted with.
struct Encrypted {
    /// Until the key pair is decided: the candidates, and the client's
    /// first bytes held to decide them (at most
    /// [`PROBE_LEN`](crate::protocol::rtmpe::PROBE_LEN)).
    candidates: Option<Box<crate::protocol::rtmpe::Candidates>>,
    probe: Vec<u8>,
    inbound: Option<crate::protocol::rtmpe::Cipher>,
    /// The cipher for what this side sends, until the caller takes it.
    outbound: Option<crate::protocol::rtmpe::Cipher>,
    /// Plaintext waiting for the chunk stream (at most one input's worth:
    /// the caller hands in more only once this is taken).
    plain: BytesMut,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encrypted {{ plain: {} }}", self.plain.len())
    }
}

impl ServerSession {
    /// `epoch_ms` goes in the handshake's time field, `seed` makes its random
    /// bytes: the session reads no clock and no entropy source itself.
    pub fn new(config: ServerConfig, epoch_ms: u32, seed: u64) -> Self {
        Self {
            config,
            phase: Phase::Handshake,
            handshake: ServerHandshake::new(epoch_ms, seed),
            decoder: ChunkDecoder::new(config.limits),
            encoder: ChunkEncoder::new(),
            connect: None,
            streams: Vec::new(),
            events: VecDeque::new(),
            aggregate: None,
            out: BytesMut::new(),
            rtmpe: None,
        }
    }

    /// Accepts RTMPE handshakes too (see [`crate::protocol::rtmpe`]), with
    /// 32 bytes from the caller's random source for the key.
    pub fn allow_rtmpe(&mut self, random: &[u8; 32]) {
        self.handshake.allow_rtmpe(random);
    }

    /// The client asked for RTMPE.
    pub fn is_encrypted(&self) -> bool {
        self.handshake.is_encrypted()
    }

    /// RTMPE: the cipher for everything this side sends after the
    /// handshake, once known; taken once. Before installing it, send what
    /// [`poll_transmit`](Self::poll_transmit) holds (the handshake, in
    /// clear): [`handle_input`](Self::handle_input) returns as soon as it
    /// is known, before it writes anything that must be encrypted.
    pub fn take_outbound_cipher(&mut self) -> Option<crate::protocol::rtmpe::Cipher> {
        self.rtmpe.as_mut()?.outbound.take()
    }

    /// Decrypted input (RTMPE) is waiting for the chunk stream: call
    /// [`handle_input`](Self::handle_input) again, with no more bytes if
    /// there are none, after acting on its events.
    pub fn has_pending_input(&self) -> bool {
        self.rtmpe.as_ref().is_some_and(|e| !e.plain.is_empty())
    }

    // ----- getters

    /// Chunk size of what we send, once connected: encode media for this
    /// connection's players with it.
    pub fn chunk_size(&self) -> u32 {
        self.encoder.chunk_size()
    }

    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.handshake.kind()
    }

    /// The accepted (or pending) `connect`, with app and tcUrl.
    pub fn connect_info(&self) -> Option<&Connect> {
        self.connect.as_deref()
    }

    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// True while a connect/publish/play request awaits the caller's answer;
    /// `handle_input` reads nothing meanwhile.
    pub fn has_pending_request(&self) -> bool {
        self.phase == Phase::ConnectPending
            || self
                .streams
                .iter()
                .any(|s| matches!(s.role, StreamRole::PublishPending | StreamRole::PlayPending))
    }

    pub fn bytes_received(&self) -> u64 {
        self.decoder.bytes_received()
    }

    // ----- input

    /// Consumes bytes from the peer; returns how many were taken. It stops
    /// early, to let the caller act, after a message that raised an event
    /// other than media, after [`MEDIA_BATCH`] media events, and while a
    /// request is pending: call [`poll_event`](Self::poll_event) until
    /// `None`, answer any request, then hand in the rest. So a publisher's
    /// receive buffer is usually taken in one call, its media in one batch.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize, SessionError> {
        let mut rest = input;
        if self.phase == Phase::Handshake {
            let n = self.handshake.handle_input(rest)?;
            rest = &rest[n..];
            self.handshake.poll_transmit(&mut self.out);
            if !self.handshake.is_done() {
                return Ok(input.len() - rest.len());
            }
            self.phase = Phase::AwaitConnect;
            if let Some(candidates) = self.handshake.take_rtmpe() {
                self.rtmpe = Some(Box::new(Encrypted::new(candidates)));
                // The caller installs the outbound cipher (if known) after
                // sending the handshake in clear.
                return Ok(n);
            }
        }
        if let Some(e) = &mut self.rtmpe {
            let decided = e.inbound.is_some();
            e.take(rest);
            let consumed = input.len();
            if !decided && e.inbound.is_some() {
                // Just decided: the caller installs the outbound cipher
                // before anything is written under it.
                return Ok(consumed);
            }
            let mut plain = std::mem::take(&mut e.plain);
            let mut slice = &plain[..];
            let result = self.decode_from(&mut slice);
            let used = plain.len() - slice.len();
            let _ = plain.split_to(used);
            if let Some(e) = &mut self.rtmpe {
                e.plain = plain;
            }
            result?;
            return Ok(consumed);
        }
        self.decode_from(&mut rest)?;
        Ok(input.len() - rest.len())
    }

    /// Decodes chunks from `rest` as far as the caller lets it go on.
    fn decode_from(&mut self, rest: &mut &[u8]) -> Result<(), SessionError> {
        while !rest.is_empty()
            && !self.must_yield()
            && self.aggregate.is_none()
            && !self.has_pending_request()
        {
            if self.phase == Phase::Closed {
                return Err(SessionError::Closed);
            }
            let message = self.decoder.decode(rest)?;
            if let Some(seq) = self.decoder.poll_ack() {
                self.send(&ControlMessage::Acknowledgement { sequence: seq }.to_message());
            }
            if let Some(message) = message {
                self.on_message(message)?;
            }
        }
        Ok(())
    }

    /// The caller must act before more input: an event other than media
    /// is queued (a command changes what later messages mean), or a full
    /// batch of media is.
    fn must_yield(&self) -> bool {
        self.events.len() >= MEDIA_BATCH
            || self
                .events
                .back()
                .is_some_and(|e| !matches!(e, ServerEvent::Media { .. }))
    }

    fn on_message(&mut self, m: RawMessage) -> Result<(), SessionError> {
        match m.type_id {
            t if t.is_protocol_control() => {
                // Chunk size, abort and window were applied by the decoder.
                if let Ok(ControlMessage::UserControl(UserControlEvent::PingRequest {
                    timestamp,
                })) = ControlMessage::parse(t, &m.payload)
                {
                    self.send(
                        &ControlMessage::UserControl(UserControlEvent::PingResponse { timestamp })
                            .to_message(),
                    );
                }
            }
            MessageType::COMMAND_AMF0 | MessageType::COMMAND_AMF3 => {
                check_len(&m.payload, self.config.limits.max_command_len)?;
                let cmd = Command::parse(m.type_id, &m.payload, self.config.limits.max_amf_depth)?;
                self.on_command(m.stream_id, cmd)?;
            }
            MessageType::DATA_AMF0 | MessageType::DATA_AMF3 if self.publishing(m.stream_id) => {
                check_len(&m.payload, self.config.limits.max_command_len)?;
                let limit = self.config.limits.max_amf_depth;
                match DataMessage::parse(m.type_id, &m.payload, limit)? {
                    DataMessage::Metadata {
                        payload,
                        properties,
                    } => self.events.push_back(ServerEvent::Metadata {
                        stream_id: m.stream_id,
                        timestamp: m.timestamp,
                        payload,
                        properties,
                    }),
                    DataMessage::Other { name, .. } => self.events.push_back(ServerEvent::Data {
                        stream_id: m.stream_id,
                        name,
                        message: m,
                    }),
                }
            }
            MessageType::AUDIO | MessageType::VIDEO if self.publishing(m.stream_id) => {
                self.events.push_back(ServerEvent::Media {
                    stream_id: m.stream_id,
                    message: m,
                });
            }
            MessageType::AGGREGATE if self.publishing(m.stream_id) => {
                self.aggregate = Some((m.stream_id, split_aggregate(m)));
            }
            // Media and data for streams that are not publishing, shared
            // objects, unknown types: nothing a live server needs.
            _ => {}
        }
        Ok(())
    }

    fn publishing(&self, stream_id: u32) -> bool {
        self.stream(stream_id)
            .is_some_and(|s| s.role == StreamRole::Publishing)
    }

    fn stream(&self, id: u32) -> Option<&NetStream> {
        self.streams.iter().find(|s| s.id == id)
    }

    fn stream_mut(&mut self, id: u32) -> Option<&mut NetStream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    fn on_command(&mut self, stream_id: u32, cmd: Command) -> Result<(), SessionError> {
        if let Command::Connect(connect) = cmd {
            if self.phase != Phase::AwaitConnect {
                return Err(SessionError::AlreadyConnected);
            }
            self.phase = Phase::ConnectPending;
            self.connect = Some(connect.clone());
            self.events.push_back(ServerEvent::ConnectRequest(connect));
            return Ok(());
        }
        if self.phase != Phase::Connected {
            return Err(SessionError::NotConnected(command_name(&cmd)));
        }
        match cmd {
            Command::Connect(_) => unreachable!("handled above"),
            Command::CreateStream { transaction } => {
                if self.streams.len() as u32 >= self.config.max_streams {
                    let info = command::status_info(
                        "error",
                        "NetConnection.Call.Failed",
                        "too many streams on one connection",
                    );
                    self.send(&command_message(
                        COMMAND_CSID,
                        0,
                        "_error",
                        transaction,
                        &[Amf0Value::Null, info],
                    ));
                } else {
                    let id = self.free_stream_id();
                    self.streams.push(NetStream {
                        id,
                        role: StreamRole::Idle,
                        name: String::new(),
                        reset: true,
                    });
                    self.send(&command_message(
                        COMMAND_CSID,
                        0,
                        "_result",
                        transaction,
                        &[Amf0Value::Null, Amf0Value::Number(f64::from(id))],
                    ));
                }
            }
            Command::ReleaseStream { transaction, .. }
            | Command::FcPublish { transaction, .. }
            | Command::FcUnpublish { transaction, .. } => {
                // ffmpeg and OBS track these transactions; answering keeps
                // their tables clean. What matters is publish/deleteStream.
                if transaction != 0.0 {
                    self.send(&command_message(
                        COMMAND_CSID,
                        0,
                        "_result",
                        transaction,
                        &[Amf0Value::Null, Amf0Value::Undefined],
                    ));
                }
            }
            Command::GetStreamLength { transaction, .. } => {
                self.send(&command_message(
                    COMMAND_CSID,
                    0,
                    "_result",
                    transaction,
                    &[Amf0Value::Null, Amf0Value::Number(0.0)],
                ));
            }
            Command::Publish { name, kind, .. } => {
                if !self.begin(stream_id, StreamRole::PublishPending, &name, true) {
                    self.send(&on_status(
                        stream_id,
                        "error",
                        "NetStream.Publish.BadName",
                        "publish on a stream that is busy or was never created",
                    ));
                    return Ok(());
                }
                self.events.push_back(ServerEvent::PublishRequest {
                    stream_id,
                    name,
                    kind,
                });
            }
            Command::Play {
                name, start, reset, ..
            } => {
                if !self.begin(stream_id, StreamRole::PlayPending, &name, reset) {
                    self.send(&on_status(
                        stream_id,
                        "error",
                        "NetStream.Play.Failed",
                        "play on a stream that is busy or was never created",
                    ));
                    return Ok(());
                }
                self.events.push_back(ServerEvent::PlayRequest {
                    stream_id,
                    name,
                    start,
                    reset,
                });
            }
            Command::DeleteStream { stream_id: id, .. } => {
                // The id is in the arguments; the message itself comes on 0.
                let id = if id >= 1.0 && id <= f64::from(u32::MAX) {
                    id as u32
                } else {
                    stream_id
                };
                self.end_stream(id);
                self.streams.retain(|s| s.id != id);
            }
            Command::CloseStream { .. } => self.end_stream(stream_id),
            Command::Pause { pause, .. } => {
                if self
                    .stream(stream_id)
                    .is_some_and(|s| s.role == StreamRole::Playing)
                {
                    self.events.push_back(ServerEvent::Pause {
                        stream_id,
                        paused: pause,
                    });
                    let (code, desc) = if pause {
                        ("NetStream.Pause.Notify", "paused")
                    } else {
                        ("NetStream.Unpause.Notify", "resumed")
                    };
                    self.send(&on_status(stream_id, "status", code, desc));
                }
            }
            Command::ReceiveAudio { enable } => self
                .events
                .push_back(ServerEvent::ReceiveAudio { stream_id, enable }),
            Command::ReceiveVideo { enable } => self
                .events
                .push_back(ServerEvent::ReceiveVideo { stream_id, enable }),
            // FCSubscribe needs no answer (nginx-rtmp sends none); results,
            // errors, statuses and unknown calls are a client's business.
            Command::FcSubscribe { .. }
            | Command::Result { .. }
            | Command::Error { .. }
            | Command::OnStatus { .. }
            | Command::Other { .. } => {}
        }
        Ok(())
    }

    /// The lowest stream id not in use (ids stay within 1..=max_streams).
    fn free_stream_id(&self) -> u32 {
        (1..).find(|id| self.stream(*id).is_none()).unwrap_or(1)
    }

    /// Moves an idle stream into a pending role. Old clients publish or play
    /// on stream 1 without createStream: create it for them if allowed.
    fn begin(&mut self, stream_id: u32, role: StreamRole, name: &str, reset: bool) -> bool {
        if stream_id == 0 || stream_id > self.config.max_streams {
            return false;
        }
        if self.stream(stream_id).is_none() {
            if self.streams.len() as u32 >= self.config.max_streams {
                return false;
            }
            self.streams.push(NetStream {
                id: stream_id,
                role: StreamRole::Idle,
                name: String::new(),
                reset: true,
            });
        }
        match self.stream_mut(stream_id) {
            Some(s) if s.role == StreamRole::Idle => {
                s.role = role;
                s.name = name.to_owned();
                s.reset = reset;
                true
            }
            _ => false,
        }
    }

    fn end_stream(&mut self, stream_id: u32) {
        let Some(s) = self.stream_mut(stream_id) else {
            return;
        };
        let was = std::mem::replace(&mut s.role, StreamRole::Idle);
        match was {
            StreamRole::Publishing => self
                .events
                .push_back(ServerEvent::PublishEnded { stream_id }),
            StreamRole::Playing => self.events.push_back(ServerEvent::PlayEnded { stream_id }),
            _ => {}
        }
    }

    /// The transport closed without deleteStream (how encoders usually
    /// leave): raises PublishEnded / PlayEnded for every active stream.
    pub fn handle_close(&mut self) {
        let ids: Vec<u32> = self.streams.iter().map(|s| s.id).collect();
        for id in ids {
            self.end_stream(id);
        }
        self.phase = Phase::Closed;
    }

    // ----- answers to requests

    /// Accepts the pending connect: window, bandwidth, chunk size, then
    /// `_result` with NetConnection.Connect.Success.
    pub fn accept_connect(&mut self) {
        let Some(connect) = self
            .connect
            .clone()
            .filter(|_| self.phase == Phase::ConnectPending)
        else {
            return;
        };
        let window = self.config.window_ack_size;
        self.send(&ControlMessage::WindowAckSize(window).to_message());
        self.send(
            &ControlMessage::SetPeerBandwidth {
                size: window,
                limit_type: 2,
            }
            .to_message(),
        );
        if !self.is_encrypted() {
            // Not over RTMPE: ffmpeg's RTMPE publisher echoes a Set Chunk
            // Size it is sent, encrypting the packet in place, and then
            // reads its new chunk sizes from the encrypted bytes (garbage:
            // it stops splitting its messages, or fails at once). RTMPE
            // connections keep the default 128-byte chunks from us.
            self.send(&ControlMessage::SetChunkSize(self.config.chunk_size).to_message());
            self.encoder.set_chunk_size(self.config.chunk_size);
        }
        self.send(&command::connect_result(&connect));
        self.phase = Phase::Connected;
    }

    /// Rejects the pending connect with `_error` (NetConnection.Connect.Rejected);
    /// flush the output, then close the connection.
    pub fn reject_connect(&mut self, description: &str) {
        let Some(connect) = self
            .connect
            .as_ref()
            .filter(|_| self.phase == Phase::ConnectPending)
        else {
            return;
        };
        let info = command::status_info("error", "NetConnection.Connect.Rejected", description);
        let msg = command_message(
            COMMAND_CSID,
            0,
            "_error",
            connect.transaction,
            &[Amf0Value::Null, info],
        );
        self.send(&msg);
        self.phase = Phase::Closed;
    }

    fn settle(
        &mut self,
        stream_id: u32,
        from: StreamRole,
        to: StreamRole,
    ) -> Option<(String, bool)> {
        let s = self.stream_mut(stream_id).filter(|s| s.role == from)?;
        s.role = to;
        Some((s.name.clone(), s.reset))
    }

    /// Accepts a pending publish: StreamBegin, onStatus NetStream.Publish.Start.
    pub fn accept_publish(&mut self, stream_id: u32) {
        if let Some((name, _)) = self.settle(
            stream_id,
            StreamRole::PublishPending,
            StreamRole::Publishing,
        ) {
            self.send(
                &ControlMessage::UserControl(UserControlEvent::StreamBegin { stream_id })
                    .to_message(),
            );
            self.send(&on_status(
                stream_id,
                "status",
                "NetStream.Publish.Start",
                &format!("{} is now published.", redact(&name)),
            ));
        }
    }

    /// Rejects a pending publish with an error onStatus: `code` is usually
    /// `NetStream.Publish.BadName` (key in use) or
    /// `NetStream.Publish.Unauthorized`.
    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        if self
            .settle(stream_id, StreamRole::PublishPending, StreamRole::Idle)
            .is_some()
        {
            self.send(&on_status(stream_id, "error", code, description));
        }
    }

    /// Accepts a pending play: StreamBegin, Play.Reset, Play.Start,
    /// `|RtmpSampleAccess`, Data.Start. Metadata, sequence headers and media
    /// follow from the caller.
    pub fn accept_play(&mut self, stream_id: u32) {
        let Some((name, reset)) =
            self.settle(stream_id, StreamRole::PlayPending, StreamRole::Playing)
        else {
            return;
        };
        let name = redact(&name);
        self.send(
            &ControlMessage::UserControl(UserControlEvent::StreamBegin { stream_id }).to_message(),
        );
        if reset {
            self.send(&on_status(
                stream_id,
                "status",
                "NetStream.Play.Reset",
                &format!("Playing and resetting {name}."),
            ));
        }
        self.send(&on_status(
            stream_id,
            "status",
            "NetStream.Play.Start",
            &format!("Started playing {name}."),
        ));
        self.send(&data_message(
            STREAM_CSID,
            stream_id,
            "|RtmpSampleAccess",
            &[Amf0Value::Boolean(true), Amf0Value::Boolean(true)],
        ));
        self.send(&data_message(
            STREAM_CSID,
            stream_id,
            "onStatus",
            &[Amf0Value::object([(
                "code",
                Amf0Value::String("NetStream.Data.Start".into()),
            )])],
        ));
    }

    /// Rejects a pending play, usually with `NetStream.Play.StreamNotFound`.
    pub fn reject_play(&mut self, stream_id: u32, code: &str, description: &str) {
        if self
            .settle(stream_id, StreamRole::PlayPending, StreamRole::Idle)
            .is_some()
        {
            self.send(&on_status(stream_id, "error", code, description));
        }
    }

    // ----- notices to players

    /// The publisher left: onStatus NetStream.Play.UnpublishNotify and
    /// StreamEOF. ffmpeg takes it as the end of the stream. The stream stays
    /// playing, so a later [`notify_publish`](Self::notify_publish) resumes it.
    pub fn notify_unpublish(&mut self, stream_id: u32) {
        if self
            .stream(stream_id)
            .is_some_and(|s| s.role == StreamRole::Playing)
        {
            self.send(&on_status(
                stream_id,
                "status",
                "NetStream.Play.UnpublishNotify",
                "The stream was unpublished.",
            ));
            self.send(
                &ControlMessage::UserControl(UserControlEvent::StreamEof { stream_id })
                    .to_message(),
            );
        }
    }

    /// A publisher came (back): StreamBegin and NetStream.Play.PublishNotify;
    /// the caller then sends fresh metadata and sequence headers.
    pub fn notify_publish(&mut self, stream_id: u32) {
        if self
            .stream(stream_id)
            .is_some_and(|s| s.role == StreamRole::Playing)
        {
            self.send(
                &ControlMessage::UserControl(UserControlEvent::StreamBegin { stream_id })
                    .to_message(),
            );
            self.send(&on_status(
                stream_id,
                "status",
                "NetStream.Play.PublishNotify",
                "The stream was published.",
            ));
        }
    }

    /// Any onStatus on a stream (e.g. NetStream.Play.Stop at shutdown).
    /// Whether a stream of this connection is publishing.
    pub fn is_publishing(&self) -> bool {
        self.streams
            .iter()
            .any(|s| s.role == StreamRole::Publishing)
    }

    /// Enhanced RTMP v2: asks a client that advertised the capability
    /// (`capsEx` Reconnect) to reconnect, to `tc_url` or to where it came
    /// from. Returns whether it was sent.
    pub fn request_reconnect(&mut self, tc_url: Option<&str>, description: &str) -> bool {
        let capable = self
            .connect
            .as_deref()
            .is_some_and(crate::protocol::command::supports_reconnect);
        if capable {
            self.send(&crate::protocol::command::reconnect_request(
                tc_url,
                description,
            ));
        }
        capable
    }

    pub fn send_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        self.send(&on_status(stream_id, level, code, description));
    }

    /// Writes one media or data message to this peer with a type-0 header
    /// (see the module docs for the shared, encode-once path). Use the
    /// `PLAYER_*_CSID` chunk streams: 2, 3 and 5 carry the session's own
    /// header-compressed replies, and a message there would corrupt them.
    pub fn send_media(&mut self, message: &RawMessage) {
        encode_message(&mut self.out, self.encoder.chunk_size(), message);
    }

    fn send(&mut self, message: &RawMessage) {
        self.encoder.write(&mut self.out, message);
    }

    // ----- output

    /// The next event, if any. Call until `None` after each `handle_input`.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        let (stream_id, parts) = self.aggregate.as_mut()?;
        let stream_id = *stream_id;
        loop {
            match parts.next() {
                Some(Ok(message)) if message.type_id.is_media() => {
                    return Some(ServerEvent::Media { stream_id, message });
                }
                // Data tags inside aggregates are rare; skip them. A torn
                // aggregate ends here: what came before it was whole.
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    self.aggregate = None;
                    return None;
                }
            }
        }
    }

    /// Appends everything there is to send to `out`; returns the count.
    pub fn poll_transmit(&mut self, out: &mut BytesMut) -> usize {
        let n = self.out.len();
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.extend_from_slice(&self.out);
            self.out.clear();
        }
        n
    }
}

fn command_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::Connect(_) => "connect",
        Command::CreateStream { .. } => "createStream",
        Command::ReleaseStream { .. } => "releaseStream",
        Command::FcPublish { .. } => "FCPublish",
        Command::FcUnpublish { .. } => "FCUnpublish",
        Command::Publish { .. } => "publish",
        Command::Play { .. } => "play",
        Command::DeleteStream { .. } => "deleteStream",
        Command::CloseStream { .. } => "closeStream",
        Command::GetStreamLength { .. } => "getStreamLength",
        Command::FcSubscribe { .. } => "FCSubscribe",
        Command::ReceiveAudio { .. } => "receiveAudio",
        Command::ReceiveVideo { .. } => "receiveVideo",
        Command::Pause { .. } => "pause",
        Command::Result { .. } => "_result",
        Command::Error { .. } => "_error",
        Command::OnStatus { .. } => "onStatus",
        Command::Other { .. } => "a command",
    }
}

/// A stream key is a secret: status descriptions show its first characters only.
pub fn redact(name: &str) -> String {
    let key = name.split('?').next().unwrap_or("");
    // At most three characters, and never more than half of a short key.
    let len = key.chars().count();
    let shown: String = key.chars().take(3.min(len / 2)).collect();
    if len > shown.chars().count() {
        format!("{shown}…")
    } else {
        shown
    }
}

#[cfg(test)]
mod rtmpe_tests {
    use super::*;
    use crate::protocol::handshake::rtmpe_client::Client;
    use crate::protocol::handshake::HANDSHAKE_SIZE;

    fn connect_bytes() -> Vec<u8> {
        let connect = command_message(
            3,
            0,
            "connect",
            1.0,
            &[Amf0Value::Object(vec![
                ("app".into(), Amf0Value::String("live".into())),
                ("tcUrl".into(), Amf0Value::String("rtmpe://h/live".into())),
            ])],
        );
        let mut out = BytesMut::new();
        ChunkEncoder::new().write(&mut out, &connect);
        out.to_vec()
    }

    #[test]
    fn an_rtmpe_session_decrypts_its_input_and_encrypts_after_the_handshake_only() {
        let client = Client::new(21);
        let mut session = ServerSession::new(ServerConfig::default(), 0, 3);
        session.allow_rtmpe(&[5; 32]);
        assert_eq!(
            session.handle_input(&client.c0c1()).unwrap(),
            1 + HANDSHAKE_SIZE
        );
        let mut out = BytesMut::new();
        session.poll_transmit(&mut out);
        let (c2, mut ours) = client.finish(&out);
        // C2 and the encrypted connect in one read, fed in odd pieces.
        let mut connect = connect_bytes();
        ours.outbound.apply(&mut connect);
        let mut input = c2;
        input.extend_from_slice(&connect);
        let mut rest = &input[..];
        let mut cipher = None;
        let mut request = None;
        let mut rounds = 0;
        while !rest.is_empty() || session.has_pending_input() {
            rounds += 1;
            assert!(rounds < 100, "no progress");
            let piece = &rest[..rest.len().min(37)];
            let used = session.handle_input(piece).unwrap();
            rest = &rest[used..];
            if let Some(c) = session.take_outbound_cipher() {
                // Nothing is held to be sent under it yet.
                let mut held = BytesMut::new();
                session.poll_transmit(&mut held);
                assert!(held.is_empty());
                cipher = Some(c);
            }
            while let Some(e) = session.poll_event() {
                if let ServerEvent::ConnectRequest(c) = e {
                    request = Some(c);
                }
            }
        }
        assert!(session.is_encrypted());
        assert_eq!(request.expect("the connect came through").app, "live");
        let mut cipher = cipher.expect("the cipher was handed out");
        session.accept_connect();
        let mut reply = BytesMut::new();
        session.poll_transmit(&mut reply);
        // What the node's connection does with the cipher, then the client.
        cipher.apply(&mut reply);
        ours.inbound.apply(&mut reply);
        let mut decoder = ChunkDecoder::new(Limits::default());
        let mut wire = &reply[..];
        let mut types = Vec::new();
        while let Some(m) = decoder.decode(&mut wire).unwrap() {
            types.push(m.type_id);
        }
        // Window ack size, peer bandwidth, the _result; no Set Chunk Size
        // (ffmpeg's RTMPE publisher would misread it).
        assert_eq!(
            types,
            vec![
                MessageType::WINDOW_ACK_SIZE,
                MessageType::SET_PEER_BANDWIDTH,
                MessageType::COMMAND_AMF0
            ]
        );
        assert_eq!(session.chunk_size(), 128);
    }
}
