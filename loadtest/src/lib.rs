//! `tributary-load`: a load generator for any RTMP server.
//!
//! - [`plan`] turns the command line and an optional scenario file into a
//!   bounded [`plan::LoadPlan`]: how many connections, where, how long.
//! - [`target`] parses `rtmp://` (and `rtmpt://`, [`rtmpt`]; `srt://`,
//!   [`srt`]) URLs; a host name stands for all of its A
//!   records, used round-robin, as clients behind DNS meet them.
//! - [`source`] is what publishers send: a synthetic H.264/AAC stream (valid)
//!   or a real FLV file, looped with timestamps continued.
//! - [`clock_sei`] is the latency carrier: an H.264 SEI NAL unit in every
//!   video frame with its sequence number and send time.
//! - [`publisher`] and [`player`] are the connections (tokio tasks driving
//!   the sans-IO `tributary::protocol::client::ClientSession`);
//!   [`player_check`] is what a player verifies, free of I/O.
//! - [`run`] starts them with a ramp, stops them at the deadline and gathers
//!   a [`report::Report`]; [`server_probe`] samples server CPU and RSS from
//!   `/proc`; [`chart`] draws the run.

pub mod chart;
pub mod clock_sei;
pub mod connection;
pub mod hls_player;
pub mod http_player;
pub mod plan;
pub mod player;
pub mod player_check;
pub mod publisher;
pub mod report;
pub mod rtmpt;
pub mod run;
pub mod server_probe;
pub mod source;
pub mod srt;
pub mod stats;
pub mod target;
