//! Protocol control messages (types 1-6) and user control events: parsing
//! and writing their fixed-size payloads. Never interprets them: the chunk
//! decoder and sessions decide what a Set Chunk Size or a ping means.

use bytes::{Buf, BufMut, Bytes};

use crate::protocol::message::{MessageType, RawMessage};

use super::CONTROL_CSID;

/// A protocol control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage {
    SetChunkSize(u32),
    Abort { csid: u32 },
    Acknowledgement { sequence: u32 },
    UserControl(UserControlEvent),
    WindowAckSize(u32),
    SetPeerBandwidth { size: u32, limit_type: u8 },
}

/// A user control event (message type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserControlEvent {
    StreamBegin {
        stream_id: u32,
    },
    StreamEof {
        stream_id: u32,
    },
    StreamDry {
        stream_id: u32,
    },
    SetBufferLength {
        stream_id: u32,
        millis: u32,
    },
    StreamIsRecorded {
        stream_id: u32,
    },
    PingRequest {
        timestamp: u32,
    },
    PingResponse {
        timestamp: u32,
    },
    /// An event type we do not act on (e.g. 31/32, buffer empty/ready, that
    /// some Flash-era servers send); kept so it can be ignored, not rejected.
    Other {
        event_type: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("control message type {type_id} has {len} bytes, needs {need}")]
    Truncated {
        type_id: u8,
        len: usize,
        need: usize,
    },
    #[error("message type {0} is not a protocol control message")]
    NotControl(u8),
}

impl ControlMessage {
    /// Parses the payload of a message of type 1-6.
    pub fn parse(type_id: MessageType, payload: &[u8]) -> Result<Self, ControlError> {
        let need = |n: usize| {
            if payload.len() < n {
                Err(ControlError::Truncated {
                    type_id: type_id.0,
                    len: payload.len(),
                    need: n,
                })
            } else {
                Ok(())
            }
        };
        let mut p = payload;
        Ok(match type_id {
            MessageType::SET_CHUNK_SIZE => {
                need(4)?;
                Self::SetChunkSize(p.get_u32())
            }
            MessageType::ABORT => {
                need(4)?;
                Self::Abort { csid: p.get_u32() }
            }
            MessageType::ACKNOWLEDGEMENT => {
                need(4)?;
                Self::Acknowledgement {
                    sequence: p.get_u32(),
                }
            }
            MessageType::WINDOW_ACK_SIZE => {
                need(4)?;
                Self::WindowAckSize(p.get_u32())
            }
            MessageType::SET_PEER_BANDWIDTH => {
                need(5)?;
                Self::SetPeerBandwidth {
                    size: p.get_u32(),
                    limit_type: p.get_u8(),
                }
            }
            MessageType::USER_CONTROL => {
                need(2)?;
                let event_type = p.get_u16();
                let event = match event_type {
                    0..=4 | 6 | 7 => {
                        need(6)?;
                        let v = p.get_u32();
                        match event_type {
                            0 => UserControlEvent::StreamBegin { stream_id: v },
                            1 => UserControlEvent::StreamEof { stream_id: v },
                            2 => UserControlEvent::StreamDry { stream_id: v },
                            3 => {
                                need(10)?;
                                UserControlEvent::SetBufferLength {
                                    stream_id: v,
                                    millis: p.get_u32(),
                                }
                            }
                            4 => UserControlEvent::StreamIsRecorded { stream_id: v },
                            6 => UserControlEvent::PingRequest { timestamp: v },
                            _ => UserControlEvent::PingResponse { timestamp: v },
                        }
                    }
                    other => UserControlEvent::Other { event_type: other },
                };
                Self::UserControl(event)
            }
            other => return Err(ControlError::NotControl(other.0)),
        })
    }

    pub fn type_id(&self) -> MessageType {
        match self {
            Self::SetChunkSize(_) => MessageType::SET_CHUNK_SIZE,
            Self::Abort { .. } => MessageType::ABORT,
            Self::Acknowledgement { .. } => MessageType::ACKNOWLEDGEMENT,
            Self::UserControl(_) => MessageType::USER_CONTROL,
            Self::WindowAckSize(_) => MessageType::WINDOW_ACK_SIZE,
            Self::SetPeerBandwidth { .. } => MessageType::SET_PEER_BANDWIDTH,
        }
    }

    /// Writes the payload (not the chunk header).
    pub fn write_payload<B: BufMut>(&self, out: &mut B) {
        match *self {
            Self::SetChunkSize(v) | Self::WindowAckSize(v) => out.put_u32(v),
            Self::Abort { csid } => out.put_u32(csid),
            Self::Acknowledgement { sequence } => out.put_u32(sequence),
            Self::SetPeerBandwidth { size, limit_type } => {
                out.put_u32(size);
                out.put_u8(limit_type);
            }
            Self::UserControl(event) => {
                let (kind, a, b) = match event {
                    UserControlEvent::StreamBegin { stream_id } => (0, stream_id, None),
                    UserControlEvent::StreamEof { stream_id } => (1, stream_id, None),
                    UserControlEvent::StreamDry { stream_id } => (2, stream_id, None),
                    UserControlEvent::SetBufferLength { stream_id, millis } => {
                        (3, stream_id, Some(millis))
                    }
                    UserControlEvent::StreamIsRecorded { stream_id } => (4, stream_id, None),
                    UserControlEvent::PingRequest { timestamp } => (6, timestamp, None),
                    UserControlEvent::PingResponse { timestamp } => (7, timestamp, None),
                    UserControlEvent::Other { event_type } => (event_type, 0, None),
                };
                out.put_u16(kind);
                out.put_u32(a);
                if let Some(b) = b {
                    out.put_u32(b);
                }
            }
        }
    }

    /// The whole message, ready for an encoder: chunk stream 2, stream 0.
    pub fn to_message(&self) -> RawMessage {
        let mut payload = Vec::with_capacity(10);
        self.write_payload(&mut payload);
        RawMessage {
            csid: CONTROL_CSID,
            timestamp: 0,
            type_id: self.type_id(),
            stream_id: 0,
            payload: Bytes::from(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_message_round_trips() {
        let all = [
            ControlMessage::SetChunkSize(4096),
            ControlMessage::Abort { csid: 6 },
            ControlMessage::Acknowledgement {
                sequence: 2_500_000,
            },
            ControlMessage::WindowAckSize(2_500_000),
            ControlMessage::SetPeerBandwidth {
                size: 2_500_000,
                limit_type: 2,
            },
            ControlMessage::UserControl(UserControlEvent::StreamBegin { stream_id: 1 }),
            ControlMessage::UserControl(UserControlEvent::StreamEof { stream_id: 1 }),
            ControlMessage::UserControl(UserControlEvent::StreamDry { stream_id: 1 }),
            ControlMessage::UserControl(UserControlEvent::SetBufferLength {
                stream_id: 1,
                millis: 3000,
            }),
            ControlMessage::UserControl(UserControlEvent::StreamIsRecorded { stream_id: 1 }),
            ControlMessage::UserControl(UserControlEvent::PingRequest { timestamp: 77 }),
            ControlMessage::UserControl(UserControlEvent::PingResponse { timestamp: 77 }),
        ];
        for m in all {
            let raw = m.to_message();
            assert_eq!(ControlMessage::parse(raw.type_id, &raw.payload), Ok(m));
        }
    }

    #[test]
    fn spec_bytes() {
        let m = ControlMessage::SetPeerBandwidth {
            size: 0x0026_25A0,
            limit_type: 2,
        };
        assert_eq!(&m.to_message().payload[..], &[0x00, 0x26, 0x25, 0xA0, 0x02]);
        let ping = ControlMessage::UserControl(UserControlEvent::SetBufferLength {
            stream_id: 1,
            millis: 3000,
        });
        assert_eq!(
            &ping.to_message().payload[..],
            &[0, 3, 0, 0, 0, 1, 0, 0, 0x0B, 0xB8]
        );
    }

    #[test]
    fn truncated_is_an_error() {
        assert!(ControlMessage::parse(MessageType::SET_CHUNK_SIZE, &[0, 0, 1]).is_err());
        assert!(ControlMessage::parse(MessageType::USER_CONTROL, &[0, 3, 0, 0, 0, 1]).is_err());
        assert!(ControlMessage::parse(MessageType::SET_PEER_BANDWIDTH, &[0; 4]).is_err());
        assert_eq!(
            ControlMessage::parse(MessageType::USER_CONTROL, &[0, 31, 0, 0, 0, 1]),
            Ok(ControlMessage::UserControl(UserControlEvent::Other {
                event_type: 31
            }))
        );
    }
}
