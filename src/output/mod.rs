//! Stream outputs, sans-IO: what a node does with a stream besides serving
//! its players, as cores with time passed in and no socket, so that each is
//! tested on its own (the node runs them on the stream's shard:
//! `node::push`). Nothing here imports from `node`.
//!
//! - [`push`]: push targets: URL templates and their expansion, the
//!   target's address and app/key split, and the lifecycle of one target
//!   (connecting, live, backing off, failed) with its backoff.
//! - [`pipeline`]: exec pipelines and hooks: commands with placeholders,
//!   the rendition a pipeline publishes, the internal credential.

pub mod pipeline;
pub mod push;
