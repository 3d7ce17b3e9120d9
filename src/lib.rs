//! Tributary: an RTMP ingest cluster node.
//!
//! Architecture in ten lines (the whole story is in `DESIGN.md`):
//! - [`protocol`] is sans-IO RTMP: handshake, chunk stream, AMF, typed messages,
//!   server and client sessions, FLV and codec parsing. Bytes and `now` in,
//!   events and bytes out; no sockets, no clocks, no runtime.
//! - The node (data plane) runs one glommio executor per core; each shard
//!   accepts on its own `SO_REUSEPORT` listener and keeps every connection it
//!   accepted for that connection's whole life.
//! - A stream is owned by its publisher's shard; other shards subscribe once
//!   per stream and fan out locally. Media is `bytes::Bytes`, shared by
//!   reference count, never copied per player, never behind a lock.
//! - [`cluster`]: with NATS configured, one control thread (tokio) keeps the
//!   cluster-wide stream registry and relays media between nodes; shards
//!   reach it through bounded channels only. HTTP admin is [`admin`].

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod control_thread;
pub mod node;
pub mod protocol;
pub mod stream;
pub mod synthetic;
pub mod tls;
pub mod webhook;
