//! Commands (message types 20 and 17) and data messages (18 and 15): AMF
//! values ↔ typed requests, and the replies a server or client writes.
//! Never decides anything: a `publish` is parsed here and judged elsewhere.

use bytes::{Bytes, BytesMut};

use crate::protocol::amf0::{self, Amf0Reader, Amf0Value, AmfError};
use crate::protocol::message::{MessageType, RawMessage};

/// Chunk stream for commands (ffmpeg, OBS and nginx-rtmp use 3).
pub const COMMAND_CSID: u32 = 3;
/// Chunk stream for commands and data on a media stream (onStatus, metadata).
pub const STREAM_CSID: u32 = 5;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("AMF: {0}")]
    Amf(#[from] AmfError),
    #[error("command name is not a string")]
    NoName,
    #[error("`{command}` lacks its {what}")]
    Missing {
        command: &'static str,
        what: &'static str,
    },
    #[error("message type {0} is not a command or data message")]
    NotCommand(u8),
    #[error("{len}-byte command exceeds the limit of {limit}")]
    TooLong { len: usize, limit: u32 },
}

/// The `connect` command's fields a server acts on; the whole command object
/// is kept for anything else.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub transaction: f64,
    pub app: String,
    pub tc_url: Option<String>,
    pub flash_ver: Option<String>,
    pub object_encoding: f64,
    /// Enhanced RTMP: codecs the client can send or play (`"*"` = any).
    pub fourcc_list: Option<Vec<String>>,
    /// Enhanced RTMP v2 capability flags.
    pub caps_ex: Option<f64>,
    pub properties: Amf0Value,
}

/// A command message, typed where a server or client acts on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Connect(Box<Connect>),
    CreateStream {
        transaction: f64,
    },
    ReleaseStream {
        transaction: f64,
        name: String,
    },
    FcPublish {
        transaction: f64,
        name: String,
    },
    FcUnpublish {
        transaction: f64,
        name: String,
    },
    Publish {
        transaction: f64,
        name: String,
        kind: String,
    },
    Play {
        transaction: f64,
        name: String,
        start: f64,
        duration: f64,
        reset: bool,
    },
    DeleteStream {
        transaction: f64,
        stream_id: f64,
    },
    CloseStream {
        transaction: f64,
    },
    GetStreamLength {
        transaction: f64,
        name: String,
    },
    FcSubscribe {
        transaction: f64,
        name: String,
    },
    ReceiveAudio {
        enable: bool,
    },
    ReceiveVideo {
        enable: bool,
    },
    Pause {
        pause: bool,
        millis: f64,
    },
    /// `_result`: the values after the transaction id.
    Result {
        transaction: f64,
        values: Vec<Amf0Value>,
    },
    /// `_error`: the values after the transaction id.
    Error {
        transaction: f64,
        values: Vec<Amf0Value>,
    },
    OnStatus {
        info: Amf0Value,
    },
    /// Anything else (`_checkbw`, `onBWDone`, custom calls): kept, not acted on.
    Other {
        name: String,
        transaction: f64,
        args: Vec<Amf0Value>,
    },
}

/// The AMF0 body of a command or data message: type 17 and 15 bodies start
/// with a format byte (0) and then hold AMF0 values that may switch to AMF3.
fn amf0_body(type_id: MessageType, payload: &[u8]) -> Result<&[u8], CommandError> {
    match type_id {
        MessageType::COMMAND_AMF0 | MessageType::DATA_AMF0 => Ok(payload),
        MessageType::COMMAND_AMF3 | MessageType::DATA_AMF3 => match payload.split_first() {
            Some((0, rest)) => Ok(rest),
            // Some clients omit the format byte; the body is then AMF0 as is.
            _ => Ok(payload),
        },
        other => Err(CommandError::NotCommand(other.0)),
    }
}

fn read_all(body: &[u8], max_depth: usize) -> Result<Vec<Amf0Value>, CommandError> {
    let mut reader = Amf0Reader::new(body, max_depth);
    let mut values = Vec::new();
    while !reader.is_empty() {
        values.push(reader.read_value()?);
    }
    Ok(values)
}

fn string_at(
    values: &[Amf0Value],
    i: usize,
    command: &'static str,
    what: &'static str,
) -> Result<String, CommandError> {
    values
        .get(i)
        .and_then(Amf0Value::as_str)
        .map(str::to_owned)
        .ok_or(CommandError::Missing { command, what })
}

fn number_at(values: &[Amf0Value], i: usize) -> Option<f64> {
    values.get(i).and_then(Amf0Value::as_number)
}

fn bool_at(values: &[Amf0Value], i: usize) -> Option<bool> {
    values
        .get(i)
        .and_then(|v| v.as_bool().or_else(|| v.as_number().map(|n| n != 0.0)))
}

impl Command {
    /// Parses a command message (type 20 or 17).
    pub fn parse(
        type_id: MessageType,
        payload: &[u8],
        max_depth: usize,
    ) -> Result<Self, CommandError> {
        if type_id != MessageType::COMMAND_AMF0 && type_id != MessageType::COMMAND_AMF3 {
            return Err(CommandError::NotCommand(type_id.0));
        }
        let mut values = read_all(amf0_body(type_id, payload)?, max_depth)?;
        let name = match values.first().and_then(Amf0Value::as_str) {
            Some(name) => name.to_owned(),
            None => return Err(CommandError::NoName),
        };
        let transaction = number_at(&values, 1).unwrap_or(0.0);
        // values: [name, transaction, command object, args...]
        Ok(match name.as_str() {
            "connect" => {
                let properties = values.get(2).cloned().unwrap_or(Amf0Value::Null);
                let get_str = |k: &str| {
                    properties
                        .property(k)
                        .and_then(Amf0Value::as_str)
                        .map(str::to_owned)
                };
                let app = get_str("app").ok_or(CommandError::Missing {
                    command: "connect",
                    what: "app",
                })?;
                let fourcc_list = match properties.property("fourCcList") {
                    Some(Amf0Value::StrictArray(items)) => Some(
                        items
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect(),
                    ),
                    _ => None,
                };
                Self::Connect(Box::new(Connect {
                    transaction,
                    tc_url: get_str("tcUrl"),
                    flash_ver: get_str("flashVer"),
                    object_encoding: properties
                        .property("objectEncoding")
                        .and_then(Amf0Value::as_number)
                        .unwrap_or(0.0),
                    caps_ex: properties.property("capsEx").and_then(Amf0Value::as_number),
                    fourcc_list,
                    app,
                    properties,
                }))
            }
            "createStream" => Self::CreateStream { transaction },
            "releaseStream" => Self::ReleaseStream {
                transaction,
                name: string_at(&values, 3, "releaseStream", "stream name")?,
            },
            "FCPublish" => Self::FcPublish {
                transaction,
                name: string_at(&values, 3, "FCPublish", "stream name")?,
            },
            "FCUnpublish" => Self::FcUnpublish {
                transaction,
                name: string_at(&values, 3, "FCUnpublish", "stream name").unwrap_or_default(),
            },
            "publish" => Self::Publish {
                transaction,
                name: string_at(&values, 3, "publish", "stream name")?,
                kind: values
                    .get(4)
                    .and_then(Amf0Value::as_str)
                    .unwrap_or("live")
                    .to_owned(),
            },
            "play" => Self::Play {
                transaction,
                name: string_at(&values, 3, "play", "stream name")?,
                start: number_at(&values, 4).unwrap_or(-2000.0),
                duration: number_at(&values, 5).unwrap_or(-1.0),
                reset: bool_at(&values, 6).unwrap_or(true),
            },
            "deleteStream" => Self::DeleteStream {
                transaction,
                stream_id: number_at(&values, 3).unwrap_or(0.0),
            },
            "closeStream" => Self::CloseStream { transaction },
            "getStreamLength" => Self::GetStreamLength {
                transaction,
                name: string_at(&values, 3, "getStreamLength", "stream name").unwrap_or_default(),
            },
            "FCSubscribe" => Self::FcSubscribe {
                transaction,
                name: string_at(&values, 3, "FCSubscribe", "stream name").unwrap_or_default(),
            },
            "receiveAudio" => Self::ReceiveAudio {
                enable: bool_at(&values, 3).unwrap_or(true),
            },
            "receiveVideo" => Self::ReceiveVideo {
                enable: bool_at(&values, 3).unwrap_or(true),
            },
            "pause" => Self::Pause {
                pause: bool_at(&values, 3).unwrap_or(true),
                millis: number_at(&values, 4).unwrap_or(0.0),
            },
            "_result" => Self::Result {
                transaction,
                values: values.split_off(2.min(values.len())),
            },
            "_error" => Self::Error {
                transaction,
                values: values.split_off(2.min(values.len())),
            },
            "onStatus" => Self::OnStatus {
                // onStatus(txn 0, null, info)
                info: values.get(3).cloned().unwrap_or(Amf0Value::Null),
            },
            _ => Self::Other {
                args: values.split_off(2.min(values.len())),
                name,
                transaction,
            },
        })
    }
}

/// Writes an AMF0 command body: name, transaction id, then `args` (the
/// command object, or null, first).
pub fn command_message(
    csid: u32,
    stream_id: u32,
    name: &str,
    transaction: f64,
    args: &[Amf0Value],
) -> RawMessage {
    let mut body = BytesMut::with_capacity(128);
    amf0::write_string(&mut body, name);
    amf0::write_number(&mut body, transaction);
    for a in args {
        amf0::write_value(&mut body, a);
    }
    RawMessage {
        csid,
        timestamp: 0,
        type_id: MessageType::COMMAND_AMF0,
        stream_id,
        payload: body.freeze(),
    }
}

/// An AMF0 data message (type 18): a handler name and values.
pub fn data_message(csid: u32, stream_id: u32, name: &str, args: &[Amf0Value]) -> RawMessage {
    let mut body = BytesMut::with_capacity(64);
    amf0::write_string(&mut body, name);
    for a in args {
        amf0::write_value(&mut body, a);
    }
    RawMessage {
        csid,
        timestamp: 0,
        type_id: MessageType::DATA_AMF0,
        stream_id,
        payload: body.freeze(),
    }
}

/// The info object of an `onStatus` call.
pub fn status_info(level: &str, code: &str, description: &str) -> Amf0Value {
    Amf0Value::object([
        ("level", Amf0Value::String(level.into())),
        ("code", Amf0Value::String(code.into())),
        ("description", Amf0Value::String(description.into())),
    ])
}

/// Enhanced RTMP v2 `capsEx` bit: the client handles
/// `NetConnection.Connect.ReconnectRequest`.
pub const CAPS_EX_RECONNECT: f64 = 1.0;

/// Whether a connect's `capsEx` has the Reconnect bit.
pub fn supports_reconnect(connect: &Connect) -> bool {
    connect
        .caps_ex
        .is_some_and(|c| c.is_finite() && c >= 0.0 && (c as u64) & 1 == 1)
}

/// Enhanced RTMP v2: `onStatus` on the NetConnection asking the client to
/// reconnect, to `tc_url` if given (else to the URL it used).
pub fn reconnect_request(tc_url: Option<&str>, description: &str) -> RawMessage {
    let mut info = vec![
        ("level", Amf0Value::String("status".into())),
        (
            "code",
            Amf0Value::String("NetConnection.Connect.ReconnectRequest".into()),
        ),
        ("description", Amf0Value::String(description.into())),
    ];
    if let Some(url) = tc_url {
        info.push(("tcUrl", Amf0Value::String(url.into())));
    }
    command_message(
        COMMAND_CSID,
        0,
        "onStatus",
        0.0,
        &[Amf0Value::Null, Amf0Value::object(info)],
    )
}

/// `onStatus(0, null, {level, code, description})` on a media stream.
pub fn on_status(stream_id: u32, level: &str, code: &str, description: &str) -> RawMessage {
    command_message(
        STREAM_CSID,
        stream_id,
        "onStatus",
        0.0,
        &[Amf0Value::Null, status_info(level, code, description)],
    )
}

/// What a data message (type 18 or 15) carries.
#[derive(Debug, Clone, PartialEq)]
pub enum DataMessage {
    /// Stream metadata, from `@setDataFrame onMetaData {..}` (publishers) or
    /// a bare `onMetaData {..}`. `payload` is the AMF0 body players expect,
    /// `onMetaData` and the object, sharing the received bytes.
    Metadata {
        payload: Bytes,
        properties: Amf0Value,
    },
    /// `|RtmpSampleAccess`, `onTextData`, `onCuePoint` and the like.
    Other { name: String, payload: Bytes },
}

impl DataMessage {
    pub fn parse(
        type_id: MessageType,
        payload: &Bytes,
        max_depth: usize,
    ) -> Result<Self, CommandError> {
        if type_id != MessageType::DATA_AMF0 && type_id != MessageType::DATA_AMF3 {
            return Err(CommandError::NotCommand(type_id.0));
        }
        let body = amf0_body(type_id, payload)?;
        let body = payload.slice_ref(body);
        let mut reader = Amf0Reader::new(&body, max_depth);
        let name = match reader.read_value()? {
            Amf0Value::String(s) | Amf0Value::LongString(s) => s,
            _ => return Err(CommandError::NoName),
        };
        let (name, start) = if name == "@setDataFrame" {
            let start = reader.position();
            match reader.read_value()? {
                Amf0Value::String(s) | Amf0Value::LongString(s) => (s, start),
                _ => return Err(CommandError::NoName),
            }
        } else {
            (name, 0)
        };
        if name == "onMetaData" {
            let properties = if reader.is_empty() {
                Amf0Value::Null
            } else {
                reader.read_value()?
            };
            let end = reader.position();
            Ok(Self::Metadata {
                payload: body.slice(start..end),
                properties,
            })
        } else {
            Ok(Self::Other {
                name,
                payload: body.slice(start..),
            })
        }
    }
}

/// Writes the connect `_result` properties and info (what ffmpeg, OBS,
/// rtmpdump and GStreamer expect), echoing Enhanced RTMP fields.
pub fn connect_result(connect: &Connect) -> RawMessage {
    let mut props = vec![
        ("fmsVer", Amf0Value::String("FMS/3,0,1,123".into())),
        ("capabilities", Amf0Value::Number(31.0)),
    ];
    if let Some(list) = &connect.fourcc_list {
        // We relay whatever codec a publisher sends: accept the client's list.
        props.push((
            "fourCcList",
            Amf0Value::StrictArray(list.iter().map(|s| Amf0Value::String(s.clone())).collect()),
        ));
    }
    let mut info = vec![
        ("level", Amf0Value::String("status".into())),
        (
            "code",
            Amf0Value::String("NetConnection.Connect.Success".into()),
        ),
        (
            "description",
            Amf0Value::String("Connection succeeded.".into()),
        ),
        ("objectEncoding", Amf0Value::Number(connect.object_encoding)),
    ];
    if connect.caps_ex.is_some() {
        // Reconnect requests (sent when a node drains); Multitrack and ModEx
        // pass through untouched.
        info.push(("capsEx", Amf0Value::Number(CAPS_EX_RECONNECT + 2.0 + 4.0)));
    }
    command_message(
        COMMAND_CSID,
        0,
        "_result",
        connect.transaction,
        &[Amf0Value::object(props), Amf0Value::object(info)],
    )
}

/// Checks a command/data payload against the configured limit before parsing.
pub fn check_len(payload: &[u8], limit: u32) -> Result<(), CommandError> {
    if payload.len() > limit as usize {
        Err(CommandError::TooLong {
            len: payload.len(),
            limit,
        })
    } else {
        Ok(())
    }
}
