//! Media containers, sans-IO: what turns RTMP/FLV messages into files a
//! player reads, with no socket, no clock and no lock of its own, so that
//! each is tested (and fuzzed) on bytes alone. The node runs them on its
//! shards (`node::hls`); nothing here imports from `node`.
//!
//! - [`fmp4`]: fragmented-MP4 (CMAF) boxes: init segments and fragments.
//! - [`packager`]: one stream's LL-HLS packager, messages in, parts and
//!   segments out, into its [`window::Window`].
//! - [`window`]: the window those parts live in, its playlists and its
//!   viewers' sessions.
//! - [`record`]: recordings: the packager's output as segment files, read
//!   back, cut to a time range, and expired.
//! - [`ts`]: MPEG-TS in (what SRT carries), into the stream's messages.
//! - [`ts_out`]: MPEG-TS out, the stream's messages for an SRT player.

pub mod fmp4;
pub mod packager;
pub mod record;
pub mod ts;
pub mod ts_out;
pub mod window;
