//! The client side of one RTMP connection, sans-IO: publishes or plays one
//! stream the way ffmpeg does (connect → releaseStream/FCPublish →
//! createStream → publish, or connect → createStream → play). Used by the
//! load generator and the tests. Bytes in, events and bytes out, like the
//! server session; it never reads a clock or touches a socket.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::protocol::amf0::{self, Amf0Value};
use crate::protocol::chunk::{
    ChunkDecoder, ChunkEncoder, ChunkError, ControlMessage, UserControlEvent,
};
use crate::protocol::command::{
    command_message, Command, CommandError, DataMessage, COMMAND_CSID, STREAM_CSID,
};
use crate::protocol::handshake::{ClientHandshake, ClientMode, HandshakeError};
use crate::protocol::limits::Limits;
use crate::protocol::message::{MessageType, RawMessage};

const TXN_CONNECT: f64 = 1.0;
const TXN_RELEASE: f64 = 2.0;
const TXN_FCPUBLISH: f64 = 3.0;
const TXN_CREATE: f64 = 4.0;
const TXN_START: f64 = 5.0;

/// Chunk streams a publishing client sends on (ffmpeg's choice).
pub const CLIENT_AUDIO_CSID: u32 = 4;
pub const CLIENT_VIDEO_CSID: u32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publish,
    Play,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub role: Role,
    /// The app part of the URL (`live` in rtmp://host/live/key).
    pub app: String,
    /// The whole tcUrl (`rtmp://host:port/live`).
    pub tc_url: String,
    /// Stream key, with any `?query`.
    pub stream_name: String,
    pub handshake: ClientMode,
    /// Chunk size we send with (OBS uses 4096; 128 keeps it unchanged).
    pub chunk_size: u32,
    /// Buffer length a player announces (SetBufferLength), in ms.
    pub buffer_ms: u32,
    /// Enhanced RTMP v2 `capsEx` sent in connect (None = not sent).
    pub caps_ex: Option<f64>,
    /// connect's `flashVer`: who we are to the server.
    pub flash_ver: String,
    pub limits: Limits,
}

impl ClientConfig {
    pub fn new(role: Role, tc_url: &str, app: &str, stream_name: &str) -> Self {
        Self {
            role,
            app: app.to_owned(),
            tc_url: tc_url.to_owned(),
            stream_name: stream_name.to_owned(),
            handshake: ClientMode::Digest,
            chunk_size: 4096,
            buffer_ms: 3000,
            caps_ex: None,
            flash_ver: "FMLE/3.0 (compatible; tributary)".into(),
            limits: Limits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// connect was answered with `_result`.
    Connected,
    /// connect was answered with `_error`; the server will close.
    ConnectRejected {
        description: String,
    },
    /// Every onStatus the server sends (also the ones below).
    Status {
        level: String,
        code: String,
        description: String,
    },
    /// NetStream.Publish.Start: media may flow.
    PublishStarted {
        stream_id: u32,
    },
    /// NetStream.Play.Start.
    PlayStarted {
        stream_id: u32,
    },
    /// An error-level onStatus for our stream (BadName, StreamNotFound...).
    StreamRejected {
        code: String,
        description: String,
    },
    Metadata {
        timestamp: u32,
        payload: Bytes,
    },
    Media(RawMessage),
    /// Other data messages (`|RtmpSampleAccess`, data-channel onStatus).
    Data {
        name: String,
        message: RawMessage,
    },
    StreamBegin {
        stream_id: u32,
    },
    StreamEof {
        stream_id: u32,
    },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("command: {0}")]
    Command(#[from] CommandError),
    #[error("createStream answered without a stream id")]
    NoStreamId,
    #[error("not publishing")]
    NotPublishing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Connecting,
    Creating,
    Starting,
    Started,
    Closed,
}

/// One RTMP connection, client side.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    phase: Phase,
    handshake: ClientHandshake,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    stream_id: u32,
    events: VecDeque<ClientEvent>,
    out: BytesMut,
}

impl ClientSession {
    /// C0+C1 are queued at once; `poll_transmit` hands them out.
    pub fn new(config: ClientConfig, epoch_ms: u32, seed: u64) -> Self {
        let mut out = BytesMut::with_capacity(4096);
        let mut handshake = ClientHandshake::new(config.handshake, epoch_ms, seed);
        handshake.poll_transmit(&mut out);
        Self {
            decoder: ChunkDecoder::new(config.limits),
            config,
            phase: Phase::Handshake,
            handshake,
            encoder: ChunkEncoder::new(),
            stream_id: 0,
            events: VecDeque::with_capacity(8),
            out,
        }
    }

    /// The message stream id createStream gave us (0 before).
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    pub fn is_started(&self) -> bool {
        self.phase == Phase::Started
    }

    pub fn bytes_received(&self) -> u64 {
        self.decoder.bytes_received()
    }

    /// Consumes bytes from the server; returns how many were taken. Stops
    /// after a message that raised events: drain `poll_event`, then go on.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize, ClientError> {
        let mut rest = input;
        if self.phase == Phase::Handshake {
            let n = self.handshake.handle_input(rest)?;
            rest = &rest[n..];
            self.handshake.poll_transmit(&mut self.out);
            if !self.handshake.is_done() {
                return Ok(input.len() - rest.len());
            }
            self.phase = Phase::Connecting;
            self.send_connect();
        }
        while !rest.is_empty() && self.events.is_empty() {
            let message = self.decoder.decode(&mut rest)?;
            if let Some(seq) = self.decoder.poll_ack() {
                self.send(&ControlMessage::Acknowledgement { sequence: seq }.to_message());
            }
            if let Some(m) = message {
                self.on_message(m)?;
            }
        }
        Ok(input.len() - rest.len())
    }

    fn send_connect(&mut self) {
        if self.config.chunk_size != self.encoder.chunk_size() {
            self.send(&ControlMessage::SetChunkSize(self.config.chunk_size).to_message());
            self.encoder.set_chunk_size(self.config.chunk_size);
        }
        let c = &self.config;
        let mut props = vec![
            ("app", Amf0Value::String(c.app.clone())),
            ("type", Amf0Value::String("nonprivate".into())),
            ("flashVer", Amf0Value::String(c.flash_ver.clone())),
            ("tcUrl", Amf0Value::String(c.tc_url.clone())),
        ];
        if let Some(caps) = c.caps_ex {
            props.push(("capsEx", Amf0Value::Number(caps)));
        }
        if c.role == Role::Play {
            props.extend([
                ("fpad", Amf0Value::Boolean(false)),
                ("capabilities", Amf0Value::Number(15.0)),
                ("audioCodecs", Amf0Value::Number(4071.0)),
                ("videoCodecs", Amf0Value::Number(252.0)),
                ("videoFunction", Amf0Value::Number(1.0)),
            ]);
        }
        let msg = command_message(
            COMMAND_CSID,
            0,
            "connect",
            TXN_CONNECT,
            &[Amf0Value::object(props)],
        );
        self.send(&msg);
    }

    fn on_message(&mut self, m: RawMessage) -> Result<(), ClientError> {
        match m.type_id {
            t if t.is_protocol_control() => match ControlMessage::parse(t, &m.payload) {
                Ok(ControlMessage::UserControl(UserControlEvent::PingRequest { timestamp })) => {
                    let pong =
                        ControlMessage::UserControl(UserControlEvent::PingResponse { timestamp });
                    self.send(&pong.to_message());
                }
                Ok(ControlMessage::UserControl(UserControlEvent::StreamBegin { stream_id })) => {
                    self.events
                        .push_back(ClientEvent::StreamBegin { stream_id })
                }
                Ok(ControlMessage::UserControl(UserControlEvent::StreamEof { stream_id })) => {
                    self.events.push_back(ClientEvent::StreamEof { stream_id })
                }
                _ => {}
            },
            MessageType::COMMAND_AMF0 | MessageType::COMMAND_AMF3 => {
                let cmd = Command::parse(m.type_id, &m.payload, self.config.limits.max_amf_depth)?;
                self.on_command(cmd)?;
            }
            MessageType::DATA_AMF0 | MessageType::DATA_AMF3 => {
                match DataMessage::parse(m.type_id, &m.payload, self.config.limits.max_amf_depth)? {
                    DataMessage::Metadata { payload, .. } => {
                        self.events.push_back(ClientEvent::Metadata {
                            timestamp: m.timestamp,
                            payload,
                        })
                    }
                    DataMessage::Other { name, .. } => self
                        .events
                        .push_back(ClientEvent::Data { name, message: m }),
                }
            }
            MessageType::AUDIO | MessageType::VIDEO => self.events.push_back(ClientEvent::Media(m)),
            _ => {}
        }
        Ok(())
    }

    fn on_command(&mut self, cmd: Command) -> Result<(), ClientError> {
        match cmd {
            Command::Result { transaction, .. } if transaction == TXN_CONNECT => {
                if self.phase != Phase::Connecting {
                    return Ok(());
                }
                self.events.push_back(ClientEvent::Connected);
                self.phase = Phase::Creating;
                let name = Amf0Value::String(self.config.stream_name.clone());
                if self.config.role == Role::Publish {
                    let release = command_message(
                        COMMAND_CSID,
                        0,
                        "releaseStream",
                        TXN_RELEASE,
                        &[Amf0Value::Null, name.clone()],
                    );
                    self.send(&release);
                    let fc = command_message(
                        COMMAND_CSID,
                        0,
                        "FCPublish",
                        TXN_FCPUBLISH,
                        &[Amf0Value::Null, name],
                    );
                    self.send(&fc);
                }
                self.send(&command_message(
                    COMMAND_CSID,
                    0,
                    "createStream",
                    TXN_CREATE,
                    &[Amf0Value::Null],
                ));
            }
            Command::Error {
                transaction,
                values,
            } if transaction == TXN_CONNECT => {
                let description = values
                    .iter()
                    .find_map(|v| v.property("description").and_then(Amf0Value::as_str))
                    .unwrap_or("")
                    .to_owned();
                self.phase = Phase::Closed;
                self.events
                    .push_back(ClientEvent::ConnectRejected { description });
            }
            Command::Result {
                transaction,
                values,
            } if transaction == TXN_CREATE => {
                if self.phase != Phase::Creating {
                    return Ok(());
                }
                let id = values
                    .iter()
                    .find_map(Amf0Value::as_number)
                    .filter(|n| *n >= 1.0 && *n <= f64::from(u32::MAX))
                    .ok_or(ClientError::NoStreamId)?;
                self.stream_id = id as u32;
                self.phase = Phase::Starting;
                let name = Amf0Value::String(self.config.stream_name.clone());
                let sid = self.stream_id;
                match self.config.role {
                    Role::Publish => {
                        let publish = command_message(
                            STREAM_CSID,
                            sid,
                            "publish",
                            TXN_START,
                            &[Amf0Value::Null, name, Amf0Value::String("live".into())],
                        );
                        self.send(&publish);
                    }
                    Role::Play => {
                        let play = command_message(
                            STREAM_CSID,
                            sid,
                            "play",
                            TXN_START,
                            &[Amf0Value::Null, name, Amf0Value::Number(-2000.0)],
                        );
                        self.send(&play);
                        let buffer = UserControlEvent::SetBufferLength {
                            stream_id: sid,
                            millis: self.config.buffer_ms,
                        };
                        self.send(&ControlMessage::UserControl(buffer).to_message());
                    }
                }
            }
            Command::OnStatus { info } => {
                let field = |k: &str| {
                    info.property(k)
                        .and_then(Amf0Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                let (level, code, description) =
                    (field("level"), field("code"), field("description"));
                if self.phase == Phase::Starting {
                    match code.as_str() {
                        "NetStream.Publish.Start" => {
                            self.phase = Phase::Started;
                            self.events.push_back(ClientEvent::PublishStarted {
                                stream_id: self.stream_id,
                            });
                        }
                        "NetStream.Play.Start" => {
                            self.phase = Phase::Started;
                            self.events.push_back(ClientEvent::PlayStarted {
                                stream_id: self.stream_id,
                            });
                        }
                        _ if level == "error" => {
                            self.events.push_back(ClientEvent::StreamRejected {
                                code: code.clone(),
                                description: description.clone(),
                            })
                        }
                        _ => {}
                    }
                }
                self.events.push_back(ClientEvent::Status {
                    level,
                    code,
                    description,
                });
            }
            // onBWDone, _checkbw results and anything else: nothing to do.
            _ => {}
        }
        Ok(())
    }

    // ----- publishing

    /// Sends `@setDataFrame onMetaData {properties}` on our stream.
    pub fn send_metadata(&mut self, properties: &Amf0Value) -> Result<(), ClientError> {
        if self.phase != Phase::Started || self.config.role != Role::Publish {
            return Err(ClientError::NotPublishing);
        }
        let mut body = BytesMut::with_capacity(256);
        amf0::write_string(&mut body, "@setDataFrame");
        amf0::write_string(&mut body, "onMetaData");
        amf0::write_value(&mut body, properties);
        let msg = RawMessage {
            csid: STREAM_CSID,
            timestamp: 0,
            type_id: MessageType::DATA_AMF0,
            stream_id: self.stream_id,
            payload: body.freeze(),
        };
        self.send(&msg);
        Ok(())
    }

    /// Sends an audio or video message (its csid and stream id are set here;
    /// the payload is shared, not copied).
    pub fn send_media(
        &mut self,
        type_id: MessageType,
        timestamp: u32,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        if self.phase != Phase::Started || self.config.role != Role::Publish {
            return Err(ClientError::NotPublishing);
        }
        let csid = if type_id == MessageType::AUDIO {
            CLIENT_AUDIO_CSID
        } else {
            CLIENT_VIDEO_CSID
        };
        let msg = RawMessage {
            csid,
            timestamp,
            type_id,
            stream_id: self.stream_id,
            payload,
        };
        self.send(&msg);
        Ok(())
    }

    /// Ends publishing or playing the way ffmpeg does: FCUnpublish (when
    /// publishing) and deleteStream. Close the connection after flushing.
    pub fn close_stream(&mut self) {
        if self.stream_id == 0 {
            return;
        }
        let name = Amf0Value::String(self.config.stream_name.clone());
        if self.config.role == Role::Publish {
            self.send(&command_message(
                COMMAND_CSID,
                0,
                "FCUnpublish",
                6.0,
                &[Amf0Value::Null, name],
            ));
        }
        let id = Amf0Value::Number(f64::from(self.stream_id));
        self.send(&command_message(
            COMMAND_CSID,
            0,
            "deleteStream",
            7.0,
            &[Amf0Value::Null, id],
        ));
        self.phase = Phase::Closed;
    }

    fn send(&mut self, message: &RawMessage) {
        self.encoder.write(&mut self.out, message);
    }

    // ----- output

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
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
