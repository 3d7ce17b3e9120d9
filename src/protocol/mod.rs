//! Sans-IO RTMP.
//!
//! Owns the wire formats (handshake, chunk stream, AMF0/AMF3, FLV, codec
//! headers) and the session state machines that turn bytes into events and
//! replies. It must never open a socket, read a clock, spawn a task or pick a
//! policy: the only time values it uses (handshake epochs) are passed in,
//! timeouts belong to the caller, output goes into buffers the caller owns,
//! and publish/play requests are raised as events for the caller to accept
//! or reject.
#![forbid(unsafe_code)]

pub mod amf0;
pub mod amf3;
pub mod chunk;
pub mod client;
pub mod command;
pub mod flv;
pub mod handshake;
pub mod limits;
pub mod media;
pub mod message;
pub mod rtmpe;
pub mod server;

pub use limits::Limits;
pub use message::{MessageType, RawMessage};
