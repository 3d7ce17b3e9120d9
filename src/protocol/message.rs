//! RTMP messages as the chunk layer delivers them: a header and one shared
//! payload. Owns the message type numbers; parsing of payloads lives with the
//! kind of payload (`command`, `media`, control in `chunk::control`).

use bytes::Bytes;

/// An RTMP message type id (the byte in a type-0/1 chunk header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType(pub u8);

impl MessageType {
    pub const SET_CHUNK_SIZE: Self = Self(1);
    pub const ABORT: Self = Self(2);
    pub const ACKNOWLEDGEMENT: Self = Self(3);
    pub const USER_CONTROL: Self = Self(4);
    pub const WINDOW_ACK_SIZE: Self = Self(5);
    pub const SET_PEER_BANDWIDTH: Self = Self(6);
    pub const AUDIO: Self = Self(8);
    pub const VIDEO: Self = Self(9);
    pub const DATA_AMF3: Self = Self(15);
    pub const SHARED_OBJECT_AMF3: Self = Self(16);
    pub const COMMAND_AMF3: Self = Self(17);
    pub const DATA_AMF0: Self = Self(18);
    pub const SHARED_OBJECT_AMF0: Self = Self(19);
    pub const COMMAND_AMF0: Self = Self(20);
    pub const AGGREGATE: Self = Self(22);

    /// Protocol control messages (1-6) travel on chunk stream 2, stream 0.
    pub fn is_protocol_control(self) -> bool {
        (1..=6).contains(&self.0)
    }

    pub fn is_media(self) -> bool {
        self == Self::AUDIO || self == Self::VIDEO
    }
}

/// One reassembled message. The payload is shared: cloning a `RawMessage`
/// never copies media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Chunk stream it arrived on (or will leave on).
    pub csid: u32,
    /// Absolute timestamp in milliseconds (wraps at 2^32).
    pub timestamp: u32,
    pub type_id: MessageType,
    /// Message stream id (0 for control and connection-level commands).
    pub stream_id: u32,
    pub payload: Bytes,
}

/// An aggregate message (type 22) is FLV tags back to back: tag header (11
/// bytes), payload, previous-tag-size (4). Yields each as a message sharing
/// the aggregate's payload. The first tag's timestamp maps to the aggregate
/// message's own; the others keep their offsets from it.
pub fn split_aggregate(aggregate: RawMessage) -> AggregateParts {
    AggregateParts {
        aggregate,
        pos: 0,
        first_timestamp: None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError {
    #[error("aggregate message truncated at byte {0}")]
    Truncated(usize),
}

#[derive(Debug)]
pub struct AggregateParts {
    aggregate: RawMessage,
    pos: usize,
    first_timestamp: Option<u32>,
}

impl Iterator for AggregateParts {
    type Item = Result<RawMessage, AggregateError>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = &self.aggregate.payload;
        if self.pos >= data.len() {
            return None;
        }
        let Some(h) = data.get(self.pos..self.pos + 11) else {
            self.pos = data.len();
            return Some(Err(AggregateError::Truncated(data.len())));
        };
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let start = self.pos + 11;
        let end = start + size;
        if end > data.len() {
            self.pos = data.len();
            return Some(Err(AggregateError::Truncated(data.len())));
        }
        // The back pointer after each tag is optional at the very end.
        self.pos = (end + 4).min(data.len());
        let first = *self.first_timestamp.get_or_insert(ts);
        Some(Ok(RawMessage {
            csid: self.aggregate.csid,
            timestamp: self
                .aggregate
                .timestamp
                .wrapping_add(ts.wrapping_sub(first)),
            type_id: MessageType(h[0] & 0x1F),
            stream_id: self.aggregate.stream_id,
            payload: data.slice(start..end),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_splits_into_shared_parts() {
        let mut p = Vec::new();
        for (ty, ts, body) in [(9u8, 1000u32, &b"vid"[..]), (8, 1023, &b"aud!"[..])] {
            p.push(ty);
            p.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            p.extend_from_slice(&ts.to_be_bytes()[1..]);
            p.push((ts >> 24) as u8);
            p.extend_from_slice(&[0, 0, 0]);
            p.extend_from_slice(body);
            p.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
        }
        let agg = RawMessage {
            csid: 6,
            timestamp: 5000,
            type_id: MessageType::AGGREGATE,
            stream_id: 1,
            payload: Bytes::from(p),
        };
        let parts: Vec<_> = split_aggregate(agg.clone())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].type_id, parts[0].timestamp, &parts[0].payload[..]),
            (MessageType::VIDEO, 5000, &b"vid"[..])
        );
        assert_eq!(
            (parts[1].type_id, parts[1].timestamp, &parts[1].payload[..]),
            (MessageType::AUDIO, 5023, &b"aud!"[..])
        );
        let mut short = agg.clone();
        short.payload = agg.payload.slice(..20);
        assert!(split_aggregate(short).nth(1).unwrap().is_err());
    }
}
