//! The run's report: totals over every connection's outcome, latency and
//! time-to-first-frame percentiles, server CPU and RSS, and the timeline.
//! Printed as a table for people and written as JSON for scripts; the JSON
//! field names are an interface (scripts/compare-nginx and the tests read
//! them).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::player::PlayerOutcome;
use crate::publisher::PublisherOutcome;
use crate::server_probe::ServerSummary;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub duration_s: f64,
    pub source: String,
    pub targets: Vec<String>,
    pub publishers: PublisherTotals,
    pub players: PlayerTotals,
    pub latency_ms: Percentiles,
    pub first_frame_ms: Percentiles,
    pub servers: Vec<ServerReport>,
    /// This tool's own CPU and RSS: near 100% × --threads, the tool (not
    /// the server) may be the bottleneck.
    pub load_generator: ServerSummary,
    pub streams: Vec<StreamReport>,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublisherTotals {
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    pub bytes: u64,
    pub frames: u64,
    pub video_frames: u64,
    pub gbit_per_s: f64,
    /// Worst lateness of any publisher against its stream's clock.
    pub max_lag_ms: u64,
    pub failures: BTreeMap<String, u64>,
    /// With --reconnect-ms: every time a stream's publisher was away.
    pub absences: Vec<Absence>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Absence {
    pub key: String,
    /// From the lost connection to publishing again (or to the run's end).
    pub ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PlayerTotals {
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    /// Connected to the end with every check clean, every frame its
    /// publisher sent from its first keyframe on delivered, and none later
    /// than `hold_latency_ms`.
    pub holding: u64,
    pub hold_latency_ms: f64,
    pub bytes: u64,
    /// Audio and video frames received (sequence headers not counted).
    pub frames: u64,
    /// Coded video frames from each player's first keyframe on.
    pub video_frames: u64,
    /// For players of streams this run published: frames the publisher sent
    /// from the player's first keyframe to its end...
    pub video_frames_expected: u64,
    /// ...and how many of those never arrived (lost, or not delivered by the
    /// end of the drain).
    pub video_frames_missing: u64,
    /// With --player-reconnect-ms: frames due while a player was away
    /// (part of `video_frames_missing`), frames a server replayed to a
    /// player that had them, and every time a player was away.
    pub video_frames_missed_reconnecting: u64,
    pub video_frames_replayed: u64,
    pub absences: Vec<Absence>,
    /// Jumps in the sequence numbers (each one or more lost frames).
    pub gaps: u64,
    pub frames_lost: u64,
    pub out_of_order: u64,
    pub timestamp_regressions: u64,
    pub bad_messages: u64,
    pub first_video_not_key: u64,
    pub video_before_first_key: u64,
    pub unstamped_video: u64,
    /// Players that saw their publisher's end (UnpublishNotify/StreamEOF).
    pub saw_end: u64,
    /// LL-HLS viewers: blocking playlist reloads, parts fetched, stalls
    /// (the media fetched fell behind real time).
    pub hls_reloads: u64,
    pub hls_parts: u64,
    pub stalls: u64,
    pub gbit_per_s: f64,
    pub failures: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram in µs, to ms.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            samples: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    #[serde(flatten)]
    pub summary: ServerSummary,
    /// CPU seconds per Gbit the players received (fan-out cost).
    pub cpu_s_per_gbit_out: Option<f64>,
    /// CPU seconds per Gbit the publishers sent (ingest cost).
    pub cpu_s_per_gbit_in: Option<f64>,
    /// The same two, user CPU only (the server's own code).
    pub user_cpu_s_per_gbit_out: Option<f64>,
    pub user_cpu_s_per_gbit_in: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub key: String,
    pub video_frames_sent: u64,
    pub players: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TimelinePoint {
    pub t_s: f64,
    pub publishers_live: u64,
    pub players_live: u64,
    /// Players' receive rate.
    pub in_gbit_per_s: f64,
    /// Publishers' send rate.
    pub out_gbit_per_s: f64,
    pub frames_in_per_s: f64,
    pub frames_lost: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub server_cpu_percent: Vec<f64>,
    pub server_rss_mb: Vec<f64>,
}

/// Everything a finished run hands to [`build`].
pub struct RunResults {
    pub duration_s: f64,
    pub source: String,
    pub targets: Vec<String>,
    pub publishers: Vec<PublisherOutcome>,
    pub players: Vec<PlayerOutcome>,
    pub latency_us: Histogram<u64>,
    pub first_frame_us: Histogram<u64>,
    pub servers: Vec<ServerSummary>,
    pub load_generator: ServerSummary,
    pub timeline: Vec<TimelinePoint>,
    /// A player whose live frames come later than this does not hold.
    pub hold_latency_ms: f64,
}

fn gbit(bytes: u64) -> f64 {
    bytes as f64 * 8.0 / 1e9
}

pub fn build(r: RunResults) -> Report {
    let mut pubs = PublisherTotals {
        requested: r.publishers.len() as u64,
        ..Default::default()
    };
    let mut sent_by_key: HashMap<&str, u64> = HashMap::new();
    for p in &r.publishers {
        pubs.connected += u64::from(p.connected);
        pubs.bytes += p.bytes_sent;
        pubs.frames += p.frames_sent;
        pubs.video_frames += p.video_frames_sent;
        pubs.max_lag_ms = pubs.max_lag_ms.max(p.max_lag_ms);
        if let Some(f) = &p.failure {
            pubs.failed += 1;
            *pubs.failures.entry(f.clone()).or_default() += 1;
        }
        if p.connected {
            sent_by_key.insert(&p.key, p.video_frames_sent);
        }
        for (ms, reason) in &p.absences {
            pubs.absences.push(Absence {
                key: p.key.clone(),
                ms: *ms,
                reason: reason.clone(),
            });
        }
    }
    let mut players = PlayerTotals {
        requested: r.players.len() as u64,
        ..Default::default()
    };
    let mut players_by_key: BTreeMap<&str, u64> = BTreeMap::new();
    let max_latency_us = (r.hold_latency_ms * 1000.0) as u64;
    for p in &r.players {
        *players_by_key.entry(&p.key).or_default() += 1;
        let c = &p.check;
        players.connected += u64::from(p.connected);
        players.bytes += p.bytes;
        players.frames += c.audio_frames + c.video_frames + c.video_frames_before_key;
        players.video_frames += c.video_frames;
        players.video_frames_missed_reconnecting += c.missed_reconnecting;
        players.video_frames_replayed += c.replayed;
        for (ms, reason) in &p.absences {
            players.absences.push(Absence {
                key: p.key.clone(),
                ms: *ms,
                reason: reason.clone(),
            });
        }
        players.gaps += c.gaps;
        players.frames_lost += c.frames_lost;
        players.out_of_order += c.out_of_order;
        players.timestamp_regressions += c.timestamp_regressions;
        players.bad_messages += c.bad_messages;
        players.first_video_not_key += u64::from(c.first_video_not_key);
        players.video_before_first_key += c.video_frames_before_key;
        players.unstamped_video += c.unstamped_video;
        players.saw_end += u64::from(p.saw_end);
        players.hls_reloads += p.hls_reloads;
        players.hls_parts += p.hls_parts;
        players.stalls += p.stalls;
        if let Some(f) = &p.failure {
            players.failed += 1;
            *players.failures.entry(f.clone()).or_default() += 1;
        }
        let mut missing = 0;
        if let (Some(first), Some(&sent)) = (c.first_key_sequence, sent_by_key.get(p.key.as_str()))
        {
            let expected = sent.saturating_sub(first);
            missing = expected.saturating_sub(c.video_frames);
            players.video_frames_expected += expected;
            players.video_frames_missing += missing;
        }
        players.holding += u64::from(p.holding(max_latency_us) && missing == 0);
    }
    players.hold_latency_ms = r.hold_latency_ms;
    let secs = r.duration_s.max(1e-9);
    pubs.gbit_per_s = gbit(pubs.bytes) / secs;
    players.gbit_per_s = gbit(players.bytes) / secs;
    let servers = r
        .servers
        .into_iter()
        .map(|summary| {
            // CPU seconds per Gbit moved, when any was.
            let per = |secs: f64, bytes: u64| (bytes > 0).then(|| secs / gbit(bytes));
            ServerReport {
                cpu_s_per_gbit_out: per(summary.cpu_seconds, players.bytes),
                cpu_s_per_gbit_in: per(summary.cpu_seconds, pubs.bytes),
                user_cpu_s_per_gbit_out: per(summary.user_seconds, players.bytes),
                user_cpu_s_per_gbit_in: per(summary.user_seconds, pubs.bytes),
                summary,
            }
        })
        .collect();
    let mut streams: Vec<StreamReport> = r
        .publishers
        .iter()
        .map(|p| StreamReport {
            key: p.key.clone(),
            video_frames_sent: p.video_frames_sent,
            players: players_by_key.get(p.key.as_str()).copied().unwrap_or(0),
        })
        .collect();
    streams.sort_by(|a, b| a.key.cmp(&b.key));
    Report {
        duration_s: r.duration_s,
        source: r.source,
        targets: r.targets,
        publishers: pubs,
        players,
        latency_ms: Percentiles::from_micros(&r.latency_us),
        first_frame_ms: Percentiles::from_micros(&r.first_frame_us),
        servers,
        load_generator: r.load_generator,
        streams,
        timeline: r.timeline,
    }
}

fn failures(out: &mut String, f: &BTreeMap<String, u64>) {
    for (reason, n) in f {
        let _ = writeln!(out, "    {n:>8}  {reason}");
    }
}

/// "publishers away: 3 times (reconnected), ..." for `who`, if any was.
fn absences(out: &mut String, who: &str, list: &[Absence]) {
    if list.is_empty() {
        return;
    }
    let mut ms: Vec<u64> = list.iter().map(|a| a.ms).collect();
    ms.sort_unstable();
    let never = list
        .iter()
        .filter(|a| a.reason.ends_with("never back"))
        .count();
    let _ = writeln!(
        out,
        "{who} away: {} times (reconnected), {} ms median, {} ms longest; {} never back",
        ms.len(),
        ms[ms.len() / 2],
        ms[ms.len() - 1],
        never
    );
}

/// The human table.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let p = &r.publishers;
    let m = &r.players;
    let _ = writeln!(s, "tributary-load: {:.1} s, {}", r.duration_s, r.source);
    let _ = writeln!(s, "targets: {}", r.targets.join(" "));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<12} {:>9} {:>9} {:>7} {:>9} {:>12} {:>11} {:>10}",
        "", "requested", "connected", "failed", "holding", "bytes", "frames", "Gbit/s"
    );
    let _ = writeln!(
        s,
        "{:<12} {:>9} {:>9} {:>7} {:>9} {:>12} {:>11} {:>10.3}",
        "publishers", p.requested, p.connected, p.failed, "-", p.bytes, p.frames, p.gbit_per_s
    );
    let _ = writeln!(
        s,
        "{:<12} {:>9} {:>9} {:>7} {:>9} {:>12} {:>11} {:>10.3}",
        "players", m.requested, m.connected, m.failed, m.holding, m.bytes, m.frames, m.gbit_per_s
    );
    failures(&mut s, &p.failures);
    failures(&mut s, &m.failures);
    absences(&mut s, "publishers", &p.absences);
    absences(&mut s, "players", &m.absences);
    if !m.absences.is_empty() {
        let _ = writeln!(
            s,
            "players across reconnects: {} video frames missed (due while away), {} replayed (not counted again)",
            m.video_frames_missed_reconnecting, m.video_frames_replayed
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "video frames: sent {}, received {} (expected {}, missing {}); gaps {} ({} frames lost), out of order {}",
        p.video_frames, m.video_frames, m.video_frames_expected, m.video_frames_missing, m.gaps, m.frames_lost, m.out_of_order
    );
    let _ = writeln!(
        s,
        "checks: timestamp regressions {}, bad messages {}, first video not a keyframe {}, unstamped video {}; publisher max lag {} ms",
        m.timestamp_regressions, m.bad_messages, m.first_video_not_key, m.unstamped_video, p.max_lag_ms
    );
    if m.hls_parts > 0 {
        let _ = writeln!(
            s,
            "LL-HLS: {} parts fetched after {} blocking reloads; {} stalls",
            m.hls_parts, m.hls_reloads, m.stalls
        );
    }
    let pct = |name: &str, q: &Percentiles| {
        format!(
            "{name:<18} p50 {:>9.1}  p90 {:>9.1}  p99 {:>9.1}  max {:>9.1}  ({} samples)",
            q.p50, q.p90, q.p99, q.max, q.samples
        )
    };
    let _ = writeln!(s, "{}", pct("latency ms", &r.latency_ms));
    let _ = writeln!(s, "{}", pct("first frame ms", &r.first_frame_ms));
    for srv in &r.servers {
        let x = &srv.summary;
        let per = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "server pid {}: cpu {:.2} s (user {:.2}, system {:.2}; {:.0}% of a core), RSS peak {:.1} MB mean {:.1} MB; cpu s per Gbit out {} / in {}, user only {} / {}{}",
            x.pid,
            x.cpu_seconds,
            x.user_seconds,
            x.system_seconds,
            x.cpu_percent,
            x.rss_mb_peak,
            x.rss_mb_mean,
            per(srv.cpu_s_per_gbit_out),
            per(srv.cpu_s_per_gbit_in),
            per(srv.user_cpu_s_per_gbit_out),
            per(srv.user_cpu_s_per_gbit_in),
            if x.exited { " (exited during the run)" } else { "" }
        );
    }
    let lg = &r.load_generator;
    let _ = writeln!(
        s,
        "load generator: cpu {:.2} s (user {:.2}, system {:.2}; {:.0}% of a core), RSS peak {:.1} MB",
        lg.cpu_seconds, lg.user_seconds, lg.system_seconds, lg.cpu_percent, lg.rss_mb_peak
    );
    s
}

impl Report {
    /// Every connection succeeded and every player held its stream.
    pub fn all_holding(&self) -> bool {
        self.publishers.failed == 0
            && self.players.failed == 0
            && self.players.holding == self.players.requested
            && self.players.video_frames_missing == 0
    }
}

/// Earlier JSON reports side by side: (column name, report as JSON).
pub fn compare_table(reports: &[(String, serde_json::Value)]) -> String {
    let get = |v: &serde_json::Value, path: &str| -> String {
        let mut cur = v;
        for part in path.split('.') {
            cur = match part.parse::<usize>() {
                Ok(i) => &cur[i],
                Err(_) => &cur[part],
            };
        }
        match cur {
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() != 0.0 => format!("{f:.3}"),
                _ => n.to_string(),
            },
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        }
    };
    let rows = [
        ("players requested", "players.requested"),
        ("players connected", "players.connected"),
        ("players holding", "players.holding"),
        ("players failed", "players.failed"),
        ("video frames missing", "players.video_frames_missing"),
        ("gaps", "players.gaps"),
        ("LL-HLS stalls", "players.stalls"),
        ("publishers connected", "publishers.connected"),
        ("publishers failed", "publishers.failed"),
        ("Gbit/s to players", "players.gbit_per_s"),
        ("Gbit/s from publishers", "publishers.gbit_per_s"),
        ("server CPU s", "servers.0.cpu_seconds"),
        ("server CPU % of a core", "servers.0.cpu_percent"),
        ("server CPU s per Gbit out", "servers.0.cpu_s_per_gbit_out"),
        ("server CPU s per Gbit in", "servers.0.cpu_s_per_gbit_in"),
        (
            "  user CPU s per Gbit out",
            "servers.0.user_cpu_s_per_gbit_out",
        ),
        (
            "  user CPU s per Gbit in",
            "servers.0.user_cpu_s_per_gbit_in",
        ),
        ("server user CPU s", "servers.0.user_seconds"),
        ("server system CPU s", "servers.0.system_seconds"),
        ("server RSS peak MB", "servers.0.rss_mb_peak"),
        ("load generator CPU %", "load_generator.cpu_percent"),
        ("latency p50 ms", "latency_ms.p50"),
        ("latency p90 ms", "latency_ms.p90"),
        ("latency p99 ms", "latency_ms.p99"),
        ("latency max ms", "latency_ms.max"),
        ("first frame p50 ms", "first_frame_ms.p50"),
        ("first frame p99 ms", "first_frame_ms.p99"),
        ("run s", "duration_s"),
    ];
    let mut s = format!("{:<28}", "");
    for (name, _) in reports {
        let _ = write!(s, " {name:>16}");
    }
    s.push('\n');
    for (label, path) in rows {
        let _ = write!(s, "{label:<28}");
        for (_, v) in reports {
            let _ = write!(s, " {:>16}", get(v, path));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::player_check::PlayerCheck;
    use crate::server_probe::ServerProbe;

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 1_000_000, 2).unwrap()
    }

    fn player(key: &str, first: u64, frames: u64, max_latency_ms: u64) -> PlayerOutcome {
        let mut check = PlayerCheck::new(0);
        check.first_key_sequence = Some(first);
        check.video_frames = frames;
        check.max_latency_us = max_latency_ms * 1000;
        PlayerOutcome {
            key: key.into(),
            connected: true,
            check,
            ..Default::default()
        }
    }

    #[test]
    fn holding_needs_every_frame_and_a_bounded_latency() {
        let publisher = PublisherOutcome {
            key: "a".into(),
            connected: true,
            video_frames_sent: 100,
            bytes_sent: 1_000_000,
            ..Default::default()
        };
        let failed = PlayerOutcome {
            key: "a".into(),
            failure: Some("connect: ConnectionRefused".into()),
            ..Default::default()
        };
        let report = build(RunResults {
            duration_s: 2.0,
            source: "test".into(),
            targets: vec![],
            publishers: vec![publisher],
            players: vec![
                player("a", 40, 60, 10),   // every frame from its keyframe on
                player("a", 40, 59, 10),   // one missing at the end
                player("a", 40, 60, 1500), // late once the ramp had settled
                failed,
            ],
            latency_us: histogram(),
            first_frame_us: histogram(),
            servers: vec![],
            load_generator: ServerProbe::new(std::process::id()).unwrap().summary(),
            timeline: vec![],
            hold_latency_ms: 1000.0,
        });
        let p = &report.players;
        assert_eq!(
            (p.requested, p.connected, p.failed, p.holding),
            (4, 3, 1, 1)
        );
        assert_eq!(p.video_frames_expected, 180);
        assert_eq!(p.video_frames_missing, 1);
        assert_eq!(p.failures["connect: ConnectionRefused"], 1);
        assert_eq!(report.streams[0].players, 4);
        assert!(!report.all_holding());
        assert!(table(&report).contains("connect: ConnectionRefused"));
    }
}
