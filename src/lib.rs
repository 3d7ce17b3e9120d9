//! Tributary: an RTMP ingest cluster node. The whole story, written from
//! the code, is `docs/architecture.md`; the modules:
//!
//! - [`protocol`]: sans-IO RTMP: handshake, chunk stream, AMF, typed
//!   messages, server and client sessions, FLV and codec parsing. Bytes and
//!   `now` in, events and bytes out; no sockets, no clocks, no runtime.
//! - [`node`]: the data plane. One glommio executor per core (a shard), each
//!   with its own io_uring socket ring, its hub (a deterministic core: the
//!   streams, players and fan-out of that shard) and its end of the bounded
//!   channel mesh between shards; RTMP and HTTP media (HTTP-FLV, LL-HLS)
//!   are served by the same shards over the same send path. Media is
//!   `bytes::Bytes`, shared by reference count, never copied per player,
//!   never behind a lock. Its files are in layers (`tests/layers.rs`).
//! - [`container`]: sans-IO media containers: fMP4, the LL-HLS packager and
//!   its window and playlists.
//! - [`output`]: sans-IO stream outputs: push targets (URL templates, the
//!   target's app/key split, the connect/live/backoff lifecycle).
//! - [`stream`]: what the node and the cluster both speak: the stream name
//!   ([`stream::StreamKey`], one rule for RTMP, HTTP, the API and NATS),
//!   and the commands a shard takes from outside it.
//! - [`cluster`]: with NATS configured, one control thread (tokio) keeps the
//!   cluster-wide stream registry and relays media between nodes; shards
//!   reach it through bounded channels only.
//! - [`admin`]: the HTTP admin plane (hyper): metrics, probes, the API, the
//!   console.
//! - [`auth`]: stream keys and signed tokens; [`webhook`]: the auth service
//!   asked over HTTP; [`tls`]: RTMPS certificates (SNI, reload).
//! - [`srt`]: SRT through libsrt (loaded at run time): one thread with the
//!   listener and libsrt's epoll, feeding each shard's SRT sessions over a
//!   bounded channel.
//! - [`config`]: the TOML configuration and the command line.
//! - [`control_thread`]: the threads that run a tokio runtime beside the
//!   shards; [`exec`]: the one that runs exec pipelines and hooks.
//! - [`synthetic`]: the synthetic stream the tests and the load tool publish.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod container;
pub mod control_thread;
pub mod exec;
pub mod node;
pub mod output;
pub mod protocol;
pub mod srt;
pub mod stream;
pub mod synthetic;
pub mod tls;
pub mod webhook;
