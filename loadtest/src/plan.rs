//! The command line and scenario files, merged into one bounded
//! [`LoadPlan`]. A scenario (`loadtest/scenarios/*.toml`) holds the same
//! keys as the long options; options given on the command line win.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

/// Most connections one run may open (publishers + players).
pub const MAX_CONNECTIONS: usize = 100_000;
/// Longest run.
pub const MAX_DURATION_S: f64 = 24.0 * 3600.0;

#[derive(Debug, Parser, Default)]
#[command(
    name = "tributary-load",
    version,
    about = "RTMP load generator: publishers and players at scale, end-to-end latency, a bounded run",
    after_help = "Stream keys: with K streams, publisher i publishes KEY-i (KEY alone when K = 1); \
player j plays stream j mod K. KEY is --key, else the key part of the first URL, else \"load\". \
Connections take the resolved URLs round-robin; a host name counts once per A record."
)]
pub struct Cli {
    /// rtmp://host[:port]/app[/key] (rtmpt:// for RTMP tunnelled in HTTP,
    /// to a node's media listener); repeatable. Publishers and players
    /// take them round-robin (a name: each of its A records). An http://
    /// URL makes players HTTP-FLV viewers (publishers then need
    /// --publish-url).
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Where publishers go, when not the --url list (repeatable).
    #[arg(long = "publish-url", value_name = "URL")]
    pub publish_urls: Vec<String>,
    /// What players of http:// URLs are: "flv" (HTTP-FLV, the default) or
    /// "hls" (LL-HLS: blocking reloads, parts).
    #[arg(long, value_name = "flv|hls")]
    pub http_viewers: Option<String>,
    /// A scenario file (TOML, same keys as the long options).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    #[arg(long)]
    pub publishers: Option<usize>,
    #[arg(long)]
    pub players: Option<usize>,
    /// Distinct stream keys (default: one per publisher, or 1).
    #[arg(long)]
    pub streams: Option<usize>,
    /// Stream key base name.
    #[arg(long)]
    pub key: Option<String>,
    /// Publish this FLV file (looped, timestamps continued) instead of the
    /// synthetic stream.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Synthetic video bitrate: bits/s, or with k/M suffix (2.5M).
    #[arg(long)]
    pub bitrate: Option<String>,
    /// Synthetic frame rate.
    #[arg(long)]
    pub fps: Option<u32>,
    /// Synthetic GOP length in frames (a keyframe every GOP frames).
    #[arg(long)]
    pub gop: Option<u32>,
    /// Seconds from the start until publishers stop (the ramp is inside it).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Connections started per second.
    #[arg(long)]
    pub ramp: Option<f64>,
    /// Seconds players keep reading after publishers stop.
    #[arg(long)]
    pub drain: Option<f64>,
    /// Seconds a connection may take to connect and start publish/play.
    #[arg(long)]
    pub setup_timeout: Option<f64>,
    /// Seconds a player may wait for its first keyframe.
    #[arg(long)]
    pub first_frame_timeout: Option<f64>,
    /// A player holds only if, once the ramp is over (plus 2 s), none of its
    /// frames came later than this (ms; default 1000).
    #[arg(long)]
    pub hold_latency_ms: Option<f64>,
    /// RTMP publishers that lose their connection (or are ended by the
    /// server) connect again after this many ms and go on with their stream,
    /// as an encoder's reconnect loop does; what fell due while away is not
    /// sent (they resume at the next keyframe), so players count it missing.
    /// The report gives each absence. Default: no reconnect.
    #[arg(long, value_name = "MS")]
    pub reconnect_ms: Option<u64>,
    /// RTMP players whose connection is lost, or whose stream ends before
    /// the run's end, play again after this many ms, as a web player's
    /// reconnect loop does. The report gives each absence and the frames
    /// the publisher sent meanwhile (missed across reconnects); frames a
    /// server replays from its cache are not counted twice. Default: no
    /// reconnect.
    #[arg(long, value_name = "MS")]
    pub player_reconnect_ms: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput and latency over time here (SVG).
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Sample this server process's CPU and RSS (repeatable).
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Exit with status 3 unless every connection succeeded and every
    /// player held (all frames, all checks clean): for capacity searches.
    #[arg(long)]
    pub require_all_holding: bool,
    /// Print earlier JSON reports side by side and exit (repeatable; each
    /// column is named after its file).
    #[arg(long, value_name = "JSON")]
    pub compare: Vec<PathBuf>,
}

/// A scenario file: the long options, as TOML keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario is for (printed, not used).
    pub description: Option<String>,
    #[serde(default)]
    pub url: Vec<String>,
    #[serde(default)]
    pub publish_url: Vec<String>,
    pub publishers: Option<usize>,
    pub players: Option<usize>,
    pub http_viewers: Option<String>,
    pub streams: Option<usize>,
    pub key: Option<String>,
    pub file: Option<PathBuf>,
    pub bitrate: Option<toml::Value>,
    pub fps: Option<u32>,
    pub gop: Option<u32>,
    pub duration: Option<f64>,
    pub ramp: Option<f64>,
    pub drain: Option<f64>,
    pub setup_timeout: Option<f64>,
    pub first_frame_timeout: Option<f64>,
    pub hold_latency_ms: Option<f64>,
    pub reconnect_ms: Option<u64>,
    pub player_reconnect_ms: Option<u64>,
    pub threads: Option<usize>,
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}", path.display()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourcePlan {
    File(PathBuf),
    Synthetic {
        bitrate_bps: u32,
        fps: u32,
        gop_frames: u32,
    },
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub urls: Vec<String>,
    pub publish_urls: Vec<String>,
    pub publishers: usize,
    pub players: usize,
    /// Players of http:// URLs are LL-HLS viewers (else HTTP-FLV).
    pub http_hls: bool,
    pub stream_keys: Vec<String>,
    pub source: SourcePlan,
    pub duration: Duration,
    pub ramp_per_s: f64,
    pub drain: Duration,
    pub setup_timeout: Duration,
    pub first_frame_timeout: Duration,
    pub hold_latency_ms: f64,
    /// Publishers reconnect after this when their connection is lost.
    pub reconnect: Option<Duration>,
    /// RTMP players play again after this when their stream is lost.
    pub player_reconnect: Option<Duration>,
    pub threads: usize,
    pub json: Option<PathBuf>,
    pub chart: Option<PathBuf>,
    pub server_pids: Vec<u32>,
    pub quiet: bool,
    pub require_all_holding: bool,
}

/// "2500000", "2500k", "2.5M" → bits/s.
pub fn parse_bitrate(text: &str) -> anyhow::Result<u32> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("bad bitrate {text:?}"))?;
    let bps = v * mult;
    if !(1000.0..=1e9).contains(&bps) {
        bail!("bitrate {text:?} outside 1 kbit/s..1 Gbit/s");
    }
    Ok(bps as u32)
}

fn seconds(name: &str, v: f64, max: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v >= 0.0 && v <= max) {
        bail!("--{name} {v}: must be 0..={max} seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

impl LoadPlan {
    pub fn from_cli(cli: Cli) -> anyhow::Result<Self> {
        let sc = match &cli.scenario {
            Some(p) => Scenario::load(p)?,
            None => Scenario::default(),
        };
        let urls = if cli.urls.is_empty() {
            sc.url
        } else {
            cli.urls
        };
        if urls.is_empty() {
            bail!("no --url given (nor url in the scenario)");
        }
        let publish_urls = if !cli.publish_urls.is_empty() {
            cli.publish_urls
        } else if !sc.publish_url.is_empty() {
            sc.publish_url
        } else {
            urls.clone()
        };
        for u in &publish_urls {
            if crate::target::RtmpUrl::parse(u)?.http {
                bail!("{u}: publishers need an rtmp:// or rtmpt:// URL (--publish-url)");
            }
        }
        let player_reconnect = match cli.player_reconnect_ms.or(sc.player_reconnect_ms) {
            Some(ms) if !(50..=60_000).contains(&ms) => {
                bail!("--player-reconnect-ms {ms}: 50..=60000")
            }
            Some(ms) => Some(Duration::from_millis(ms)),
            None => None,
        };
        if player_reconnect.is_some() {
            for u in &urls {
                let url = crate::target::RtmpUrl::parse(u)?;
                if url.http || url.srt {
                    bail!("{u}: --player-reconnect-ms is for RTMP players (rtmp://, rtmpt://)");
                }
            }
        }
        let http_hls = match cli.http_viewers.or(sc.http_viewers).as_deref() {
            None | Some("flv") => false,
            Some("hls") => true,
            Some(other) => bail!("--http-viewers {other:?}: flv or hls"),
        };
        let publishers = cli.publishers.or(sc.publishers).unwrap_or(1);
        let players = cli.players.or(sc.players).unwrap_or(0);
        if publishers + players == 0 {
            bail!("nothing to do: --publishers and --players are both 0");
        }
        if publishers + players > MAX_CONNECTIONS {
            bail!(
                "{} connections asked, over the {MAX_CONNECTIONS} limit",
                publishers + players
            );
        }
        let streams = cli.streams.or(sc.streams).unwrap_or(publishers.max(1));
        if streams == 0 || (publishers > 0 && streams > publishers) {
            bail!("--streams must be 1..=publishers (each stream needs a publisher)");
        }
        let first_url_key = crate::target::RtmpUrl::parse(&urls[0])?.key;
        let key = cli
            .key
            .or(sc.key)
            .or(first_url_key)
            .unwrap_or_else(|| "load".into());
        let stream_keys = if streams == 1 {
            vec![key]
        } else {
            (0..streams).map(|i| format!("{key}-{i}")).collect()
        };
        let file = cli.file.or(sc.file);
        let bitrate = match (cli.bitrate, sc.bitrate) {
            (Some(b), _) => Some(parse_bitrate(&b)?),
            (None, Some(toml::Value::String(s))) => Some(parse_bitrate(&s)?),
            (None, Some(toml::Value::Integer(i))) => Some(parse_bitrate(&i.to_string())?),
            (None, Some(toml::Value::Float(f))) => Some(parse_bitrate(&f.to_string())?),
            (None, Some(other)) => bail!("bitrate = {other:?}: a number or a string like \"2.5M\""),
            (None, None) => None,
        };
        let fps = cli.fps.or(sc.fps);
        let gop = cli.gop.or(sc.gop);
        let source = match file {
            Some(f) => {
                if bitrate.is_some() || fps.is_some() || gop.is_some() {
                    bail!("--file and --bitrate/--fps/--gop exclude each other");
                }
                SourcePlan::File(f)
            }
            None => SourcePlan::Synthetic {
                bitrate_bps: bitrate.unwrap_or(2_500_000),
                fps: fps.unwrap_or(30),
                gop_frames: gop.unwrap_or(60),
            },
        };
        let ramp_per_s = cli.ramp.or(sc.ramp).unwrap_or(200.0);
        if !(ramp_per_s.is_finite() && ramp_per_s > 0.0) {
            bail!("--ramp must be above 0 connections per second");
        }
        let threads = cli
            .threads
            .or(sc.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if !(1..=256).contains(&threads) {
            bail!("--threads must be 1..=256");
        }
        Ok(Self {
            urls,
            publish_urls,
            publishers,
            players,
            http_hls,
            stream_keys,
            source,
            duration: seconds(
                "duration",
                cli.duration.or(sc.duration).unwrap_or(10.0),
                MAX_DURATION_S,
            )?,
            ramp_per_s,
            drain: seconds("drain", cli.drain.or(sc.drain).unwrap_or(3.0), 600.0)?,
            setup_timeout: seconds(
                "setup-timeout",
                cli.setup_timeout.or(sc.setup_timeout).unwrap_or(10.0),
                600.0,
            )?,
            first_frame_timeout: seconds(
                "first-frame-timeout",
                cli.first_frame_timeout
                    .or(sc.first_frame_timeout)
                    .unwrap_or(10.0),
                600.0,
            )?,
            hold_latency_ms: seconds(
                "hold-latency-ms",
                cli.hold_latency_ms.or(sc.hold_latency_ms).unwrap_or(1000.0) / 1000.0,
                600.0,
            )?
            .as_secs_f64()
                * 1000.0,
            reconnect: match cli.reconnect_ms.or(sc.reconnect_ms) {
                Some(ms) if !(50..=60_000).contains(&ms) => {
                    bail!("--reconnect-ms {ms}: 50..=60000")
                }
                Some(ms) => Some(Duration::from_millis(ms)),
                None => None,
            },
            player_reconnect,
            threads,
            json: cli.json,
            chart: cli.chart,
            server_pids: cli.server_pids,
            quiet: cli.quiet,
            require_all_holding: cli.require_all_holding,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrates_take_suffixes() {
        assert_eq!(parse_bitrate("2.5M").unwrap(), 2_500_000);
        assert_eq!(parse_bitrate("800k").unwrap(), 800_000);
        assert_eq!(parse_bitrate("3000000").unwrap(), 3_000_000);
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("5").is_err());
    }

    #[test]
    fn the_command_line_wins_over_the_scenario_and_keys_follow_the_url() {
        let dir = std::env::temp_dir().join(format!("tl-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.toml");
        std::fs::write(
            &path,
            "url = [\"rtmp://127.0.0.1:1/live/cam\"]\npublishers = 3\nplayers = 9\nbitrate = \"1M\"\nduration = 5\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["x", "--scenario", path.to_str().unwrap(), "--players", "4"]);
        let plan = LoadPlan::from_cli(cli).unwrap();
        assert_eq!((plan.publishers, plan.players), (3, 4));
        assert_eq!(plan.stream_keys, ["cam-0", "cam-1", "cam-2"]);
        assert_eq!(
            plan.source,
            SourcePlan::Synthetic {
                bitrate_bps: 1_000_000,
                fps: 30,
                gop_frames: 60
            }
        );
        assert_eq!(plan.duration, Duration::from_secs(5));
        std::fs::write(&path, "urls = []\n").unwrap();
        let cli = Cli::parse_from(["x", "--scenario", path.to_str().unwrap()]);
        assert!(LoadPlan::from_cli(cli).is_err(), "unknown keys are refused");
    }

    #[test]
    fn player_reconnects_are_for_rtmp_players_and_bounded() {
        let plan = |args: &[&str]| LoadPlan::from_cli(Cli::parse_from(args));
        let rtmp = ["x", "--url", "rtmp://127.0.0.1:1/live", "--players", "1"];
        let ok = plan(&[&rtmp[..], &["--player-reconnect-ms", "500"]].concat()).unwrap();
        assert_eq!(ok.player_reconnect, Some(Duration::from_millis(500)));
        assert_eq!(ok.reconnect, None, "publishers are set apart");
        let long = plan(&[&rtmp[..], &["--player-reconnect-ms", "60001"]].concat());
        assert!(long.unwrap_err().to_string().contains("50..=60000"));
        let busy = plan(&[&rtmp[..], &["--player-reconnect-ms", "0"]].concat());
        assert!(busy.is_err(), "a reconnect loop without a pause");
        for url in ["http://127.0.0.1:1/live", "srt://127.0.0.1:1/live"] {
            let args = [
                "x",
                "--publish-url",
                "rtmp://127.0.0.1:1/live",
                "--url",
                url,
                "--player-reconnect-ms",
                "500",
            ];
            let err = plan(&args).unwrap_err().to_string();
            assert!(err.contains("for RTMP players"), "{url}: {err}");
        }
    }
}
