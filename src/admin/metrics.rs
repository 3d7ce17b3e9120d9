//! `/metrics`: the Prometheus families of the node, registered once and
//! filled from the shards' atomics, the gate, the LL-HLS windows and the
//! cluster's counters at each scrape (never on the media path).

use std::sync::atomic::Ordering;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::cluster::ClusterStats;
use crate::node::{ShardStats, ERROR_KINDS, HTTP_REFUSALS, QUEUE_KINDS, REFUSED_KINDS};

use super::AdminState;

/// Reads one counter of a shard.
type Read = fn(&ShardStats) -> u64;

/// Prometheus families, filled from the shards' atomics at scrape time.
pub(super) struct Metrics {
    registry: Registry,
    gauges: Vec<(IntGaugeVec, Read)>,
    counters: Vec<(IntCounterVec, Read)>,
    dropped: IntCounterVec,
    errors: IntCounterVec,
    overflow: IntCounterVec,
    refused: IntCounterVec,
    http_refused: IntCounterVec,
    viewers: IntGaugeVec,
    /// Per stream of this node (published here or relayed here), filled
    /// at each scrape from the directory: as many series as live streams.
    stream_bitrate: IntGaugeVec,
    stream_viewers: IntGaugeVec,
    hls_bytes: prometheus::IntGauge,
    ready: prometheus::IntGauge,
    rtmpt_sessions: prometheus::IntGauge,
    srt_listener: IntCounterVec,
    limited: IntCounterVec,
    cluster_gauges: Vec<(prometheus::IntGauge, ClusterRead)>,
    cluster_counters: Vec<(prometheus::IntCounter, ClusterRead)>,
    /// The exec thread's: processes running now, then its counters.
    exec_running: prometheus::IntGauge,
    exec: [prometheus::IntCounter; 4],
    /// Recording: gauges (active recordings, bytes on disk), counters, and
    /// errors by kind.
    record_gauges: [prometheus::IntGauge; 2],
    record: [prometheus::IntCounter; 7],
    record_errors: IntCounterVec,
    /// Admin connections closed at accept: `MAX_CONNECTIONS` were open.
    pub(super) admin_refused: prometheus::IntCounter,
}

/// Reads one cluster counter.
type ClusterRead = fn(&ClusterStats) -> u64;

impl Metrics {
    pub(super) fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["shard"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauges: Vec<(IntGaugeVec, Read)> = vec![
            (
                gauge("tributary_connections", "Open RTMP connections")?,
                |s| ShardStats::get(&s.connections),
            ),
            (
                gauge("tributary_publishers", "Streams being published")?,
                |s| ShardStats::get(&s.publishers),
            ),
            (
                gauge("tributary_players", "Players attached to a stream")?,
                |s| ShardStats::get(&s.players),
            ),
            (
                gauge(
                    "tributary_hls_streams",
                    "Streams packaged for LL-HLS (each is one player among tributary_players)",
                )?,
                |s| ShardStats::get(&s.hls_windows),
            ),
            (
                gauge(
                    "tributary_push_live",
                    "Push targets publishing now (each is one player among tributary_players)",
                )?,
                |s| ShardStats::get(&s.push_live),
            ),
            (
                gauge(
                    "tributary_srt_sessions",
                    "SRT connections open (publishers and players)",
                )?,
                |s| ShardStats::get(&s.srt_sessions),
            ),
        ];
        let counters: Vec<(IntCounterVec, Read)> = vec![
            (
                counter(
                    "tributary_bytes_in_total",
                    "Bytes read from RTMP peers",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.bytes_in),
            ),
            (
                counter(
                    "tributary_bytes_out_total",
                    "Bytes written to RTMP peers",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.bytes_out),
            ),
            (
                counter(
                    "tributary_connections_total",
                    "RTMP connections accepted",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.connections_total),
            ),
            (
                counter("tributary_publishes_total", "Publishes started", &["shard"])?,
                |s| ShardStats::get(&s.publishes_total),
            ),
            (
                counter("tributary_plays_total", "Plays started", &["shard"])?,
                |s| ShardStats::get(&s.plays_total),
            ),
            (
                counter(
                    "tributary_push_connects_total",
                    "Connections opened to push targets",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.push_connects),
            ),
            (
                counter(
                    "tributary_push_failures_total",
                    "Push tries that failed (each is followed by a backoff)",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.push_failures),
            ),
            (
                counter(
                    "tributary_push_bytes_total",
                    "Bytes written to push targets, counted as each connection ends",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.push_bytes),
            ),
            (
                counter(
                    "tributary_messages_in_total",
                    "Audio and video messages received from publishers",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.messages_in),
            ),
            (
                counter(
                    "tributary_messages_out_total",
                    "Audio, video and data messages queued to players",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.messages_out),
            ),
            (
                counter(
                    "tributary_slow_players_disconnected_total",
                    "Players cut for staying behind past players.max_lag_ms",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.disconnected_slow),
            ),
            (
                counter(
                    "tributary_http_requests_total",
                    "HTTP media requests taken (each answered or refused)",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.http_requests),
            ),
            (
                counter(
                    "tributary_http_bytes_out_total",
                    "Bytes written to HTTP media peers (among tributary_bytes_out_total)",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.http_bytes_out),
            ),
            (
                counter(
                    "tributary_hls_parts_total",
                    "LL-HLS partial segments built",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.hls_parts),
            ),
            (
                counter(
                    "tributary_hls_segments_total",
                    "LL-HLS segments completed",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.hls_segments),
            ),
            (
                counter(
                    "tributary_recv_no_buffers_total",
                    "Receives that found the shard's buffer ring empty (ENOBUFS) and were re-armed",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.recv_no_buffers),
            ),
            (
                counter(
                    "tributary_rtmpe_sessions_total",
                    "RTMPE and RTMPTE connections whose encrypted handshake completed",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.rtmpe_sessions),
            ),
            (
                counter(
                    "tributary_srt_packets_lost_total",
                    "SRT packets lost: found missing from publishers, or reported missing by players",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.srt_lost),
            ),
            (
                counter(
                    "tributary_srt_packets_retransmitted_total",
                    "SRT packets retransmitted: received again from publishers, or sent again to players",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.srt_retransmitted),
            ),
            (
                counter(
                    "tributary_srt_packets_dropped_total",
                    "SRT packets dropped as too late (losses not repaired within the latency)",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.srt_dropped),
            ),
            (
                counter(
                    "tributary_srt_dropped_bytes_total",
                    "SRT TS bytes dropped because the shard's session did not take them",
                    &["shard"],
                )?,
                |s| ShardStats::get(&s.srt_dropped_bytes),
            ),
        ];
        let dropped = counter(
            "tributary_dropped_frames_total",
            "Frames not delivered, by reason",
            &["shard", "reason"],
        )?;
        let errors = counter(
            "tributary_protocol_errors_total",
            "Connections closed for a protocol error, by kind",
            &["shard", "kind"],
        )?;
        let overflow = counter(
            "tributary_queue_overflow_total",
            "Items dropped because a bounded queue was full, by queue",
            &["shard", "queue"],
        )?;
        let refused = counter(
            "tributary_auth_refused_total",
            "Publishes and plays refused by the auth rules, by reason",
            &["shard", "reason"],
        )?;
        let http_refused = counter(
            "tributary_http_refused_total",
            "HTTP media requests refused, by reason",
            &["shard", "reason"],
        )?;
        let viewers = IntGaugeVec::new(
            Opts::new(
                "tributary_viewers",
                "Players by protocol: rtmp, http-flv, ll-hls (viewers' sessions, counted on the shard that admitted them) and srt",
            ),
            &["shard", "protocol"],
        )?;
        registry.register(Box::new(viewers.clone()))?;
        let stream_bitrate = IntGaugeVec::new(
            Opts::new(
                "tributary_stream_bitrate_kbps",
                "Bitrate of each stream on this node (origin: published here, or relayed from another node)",
            ),
            &["app", "stream", "origin"],
        )?;
        registry.register(Box::new(stream_bitrate.clone()))?;
        let stream_viewers = IntGaugeVec::new(
            Opts::new(
                "tributary_stream_viewers",
                "Players of each stream on this node, by protocol (times the stream's bitrate: its egress here)",
            ),
            &["app", "stream", "protocol"],
        )?;
        registry.register(Box::new(stream_viewers.clone()))?;
        let hls_bytes = prometheus::IntGauge::new(
            "tributary_hls_window_bytes",
            "Bytes of LL-HLS parts and segments held in memory, all streams",
        )?;
        registry.register(Box::new(hls_bytes.clone()))?;
        let ready = prometheus::IntGauge::new(
            "tributary_ready",
            "1 while /readyz answers 200: not draining, and connected to NATS in a cluster",
        )?;
        registry.register(Box::new(ready.clone()))?;
        let rtmpt_sessions = prometheus::IntGauge::new(
            "tributary_rtmpt_sessions",
            "RTMPT and RTMPTS sessions open (RTMP tunnelled in HTTP)",
        )?;
        registry.register(Box::new(rtmpt_sessions.clone()))?;
        let srt_listener = counter(
            "tributary_srt_callers_total",
            "SRT callers at the listener: accepted, or refused in the handshake by reason (stream_id, auth, limit)",
            &["result"],
        )?;
        let limited = counter(
            "tributary_limit_refused_total",
            "Connections, publishes and plays refused by a limit, by limit",
            &["limit"],
        )?;
        let mut cluster_gauges = Vec::new();
        for (name, help, read) in [
            (
                "tributary_nats_connected",
                "1 while connected to a NATS server",
                (|c| ClusterStats::get(&c.connected)) as ClusterRead,
            ),
            (
                "tributary_relayed_streams",
                "Streams relayed here from other nodes",
                |c| ClusterStats::get(&c.relayed_streams),
            ),
            (
                "tributary_exported_streams",
                "Streams of this node that other nodes relay",
                |c| ClusterStats::get(&c.exported_streams),
            ),
            (
                "tributary_snapshot_max_microseconds",
                "Longest snapshot fetch from another node",
                |c| ClusterStats::get(&c.snapshot_max_micros),
            ),
        ] {
            let g = prometheus::IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            cluster_gauges.push((g, read));
        }
        let exec_running = prometheus::IntGauge::new(
            "tributary_exec_running",
            "Exec pipelines and hooks running now",
        )?;
        registry.register(Box::new(exec_running.clone()))?;
        let exec_counter = |name: &str, help: &str| -> prometheus::Result<prometheus::IntCounter> {
            let c = prometheus::IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let exec = [
            exec_counter("tributary_exec_starts_total", "Exec processes started")?,
            exec_counter("tributary_exec_exits_total", "Exec processes that ended")?,
            exec_counter(
                "tributary_exec_refused_total",
                "Exec processes not started: exec.max_processes were running",
            )?,
            exec_counter(
                "tributary_exec_dropped_total",
                "Stream publishes the exec thread never heard of: its queue was full",
            )?,
        ];
        let record_gauges = [
            prometheus::IntGauge::new(
                "tributary_record_active",
                "Streams being recorded on this node now",
            )?,
            prometheus::IntGauge::new(
                "tributary_record_disk_bytes",
                "Bytes of this node's recordings on disk",
            )?,
        ];
        for g in &record_gauges {
            registry.register(Box::new(g.clone()))?;
        }
        let record = [
            exec_counter(
                "tributary_record_bytes_total",
                "Bytes written to recordings",
            )?,
            exec_counter(
                "tributary_record_segments_total",
                "Recording files finished",
            )?,
            exec_counter(
                "tributary_record_gaps_total",
                "Gaps in recordings: the disk was behind by record.queue_max_bytes",
            )?,
            exec_counter(
                "tributary_record_writes_total",
                "Recording writes (one per fragment)",
            )?,
            exec_counter(
                "tributary_record_write_microseconds_total",
                "Time recording writes took, summed (divide by the writes)",
            )?,
            exec_counter(
                "tributary_record_deleted_total",
                "Recording files deleted by the retention rules",
            )?,
            exec_counter(
                "tributary_record_repaired_total",
                "Recording files cut short by a crash, truncated at start-up",
            )?,
        ];
        let record_errors = counter(
            "tributary_record_errors_total",
            "Recordings stopped by a write error, by kind",
            &["kind"],
        )?;
        let mut cluster_counters = Vec::new();
        for (name, help, read) in [
            (
                "tributary_nats_connects_total",
                "Connections made to a NATS server",
                (|c| ClusterStats::get(&c.reconnects)) as ClusterRead,
            ),
            (
                "tributary_nats_bytes_out_total",
                "Media bytes published to NATS",
                |c| ClusterStats::get(&c.nats_bytes_out),
            ),
            (
                "tributary_nats_messages_out_total",
                "Media frames published to NATS",
                |c| ClusterStats::get(&c.nats_messages_out),
            ),
            (
                "tributary_nats_bytes_in_total",
                "Media bytes received from NATS",
                |c| ClusterStats::get(&c.nats_bytes_in),
            ),
            (
                "tributary_nats_messages_in_total",
                "Media frames received from NATS",
                |c| ClusterStats::get(&c.nats_messages_in),
            ),
            (
                "tributary_relay_gaps_total",
                "Gaps in relayed streams (resumed at the next keyframe)",
                |c| ClusterStats::get(&c.relay_gaps),
            ),
            (
                "tributary_export_drops_total",
                "Messages not exported: the control queue was full",
                |c| ClusterStats::get(&c.export_drops),
            ),
            (
                "tributary_record_store_uploads_total",
                "Recording files copied to the NATS object store",
                |c| ClusterStats::get(&c.store_uploads),
            ),
            (
                "tributary_record_store_upload_bytes_total",
                "Bytes of recording files copied to the NATS object store",
                |c| ClusterStats::get(&c.store_upload_bytes),
            ),
            (
                "tributary_record_store_downloads_total",
                "Recording files fetched from the NATS object store for playback",
                |c| ClusterStats::get(&c.store_downloads),
            ),
            (
                "tributary_record_store_errors_total",
                "NATS object store operations that failed",
                |c| ClusterStats::get(&c.store_errors),
            ),
            (
                "tributary_registry_operations_total",
                "Registry (JetStream KV) operations",
                |c| ClusterStats::get(&c.registry_ops),
            ),
            (
                "tributary_registry_errors_total",
                "Registry operations that failed",
                |c| ClusterStats::get(&c.registry_errors),
            ),
            (
                "tributary_registry_conflicts_total",
                "Publishes refused, taken over or fenced for another node's entry",
                |c| ClusterStats::get(&c.registry_conflicts),
            ),
            (
                "tributary_snapshots_total",
                "Snapshots fetched from other nodes",
                |c| ClusterStats::get(&c.snapshots),
            ),
            (
                "tributary_snapshot_microseconds_total",
                "Time spent fetching snapshots",
                |c| ClusterStats::get(&c.snapshot_micros),
            ),
        ] {
            let c = prometheus::IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            cluster_counters.push((c, read));
        }
        let admin_refused = prometheus::IntCounter::new(
            "tributary_admin_connections_refused_total",
            "HTTP admin connections closed at accept because 256 were already open",
        )?;
        registry.register(Box::new(admin_refused.clone()))?;
        Ok(Self {
            admin_refused,
            registry,
            gauges,
            counters,
            dropped,
            errors,
            overflow,
            refused,
            http_refused,
            viewers,
            stream_bitrate,
            stream_viewers,
            hls_bytes,
            ready,
            rtmpt_sessions,
            srt_listener,
            limited,
            cluster_gauges,
            exec_running,
            exec,
            record_gauges,
            record,
            record_errors,
            cluster_counters,
        })
    }

    pub(super) fn render(&self, state: &AdminState) -> Vec<u8> {
        for (i, s) in state.shards.iter().enumerate() {
            let shard = i.to_string();
            for (g, read) in &self.gauges {
                g.with_label_values(&[&shard]).set(read(s) as i64);
            }
            let set = |c: &IntCounterVec, labels: &[&str], v: u64| {
                let c = c.with_label_values(labels);
                c.reset();
                c.inc_by(v);
            };
            for (c, read) in &self.counters {
                set(c, &[&shard], read(s));
            }
            set(
                &self.dropped,
                &[&shard, "slow_player"],
                ShardStats::get(&s.dropped_frames_slow),
            );
            set(
                &self.dropped,
                &[&shard, "shard_queue_full"],
                ShardStats::get(&s.dropped_frames_shard),
            );
            for (k, kind) in crate::auth::REFUSAL_KINDS.iter().enumerate() {
                set(
                    &self.refused,
                    &[&shard, kind],
                    ShardStats::get(&s.auth_refused[k]),
                );
            }
            for (k, kind) in ERROR_KINDS.iter().enumerate() {
                set(
                    &self.errors,
                    &[&shard, kind],
                    ShardStats::get(&s.protocol_errors[k]),
                );
            }
            for (k, reason) in HTTP_REFUSALS.iter().enumerate() {
                set(
                    &self.http_refused,
                    &[&shard, reason],
                    ShardStats::get(&s.http_refused[k]),
                );
            }
            let flv = ShardStats::get(&s.flv_viewers);
            let srt = ShardStats::get(&s.srt_viewers);
            let rtmp = ShardStats::get(&s.players)
                .saturating_sub(flv)
                .saturating_sub(srt)
                .saturating_sub(ShardStats::get(&s.hls_windows));
            let hls = ShardStats::get(&s.hls_viewers);
            for (protocol, n) in [
                ("rtmp", rtmp),
                ("http-flv", flv),
                ("ll-hls", hls),
                ("srt", srt),
            ] {
                self.viewers
                    .with_label_values(&[&shard, protocol])
                    .set(n as i64);
            }
            for (k, queue) in QUEUE_KINDS.iter().enumerate() {
                set(
                    &self.overflow,
                    &[&shard, queue],
                    ShardStats::get(&s.queue_overflow[k]),
                );
            }
        }
        for (i, kind) in REFUSED_KINDS.iter().enumerate() {
            let c = self.limited.with_label_values(&[kind]);
            c.reset();
            c.inc_by(state.gate.refused[i].load(Ordering::Relaxed));
        }
        if let Some(cluster) = &state.cluster {
            for (g, read) in &self.cluster_gauges {
                g.set(read(&cluster.stats) as i64);
            }
            for (c, read) in &self.cluster_counters {
                c.reset();
                c.inc_by(read(&cluster.stats));
            }
        }
        if let Some(exec) = &state.exec {
            let s = &exec.stats;
            self.exec_running
                .set(s.running.load(Ordering::Relaxed) as i64);
            for (c, v) in self
                .exec
                .iter()
                .zip([&s.starts, &s.exits, &s.refused, &s.dropped])
            {
                c.reset();
                c.inc_by(v.load(Ordering::Relaxed));
            }
        }
        if let Some(lib) = &state.recordings {
            let s = &lib.stats;
            self.record_gauges[0].set(s.active.load(Ordering::Relaxed) as i64);
            self.record_gauges[1].set(lib.usage() as i64);
            for (c, v) in self.record.iter().zip([
                &s.bytes_written,
                &s.segments,
                &s.gaps,
                &s.writes,
                &s.write_micros,
                &s.deleted,
                &s.repaired,
            ]) {
                c.reset();
                c.inc_by(v.load(Ordering::Relaxed));
            }
            for (kind, v) in crate::node::RECORD_ERROR_KINDS.iter().zip(&s.errors) {
                let c = self.record_errors.with_label_values(&[kind]);
                c.reset();
                c.inc_by(v.load(Ordering::Relaxed));
            }
        }
        self.hls_bytes.set(state.hls.usage().1 as i64);
        self.ready.set(i64::from(super::readiness(state).is_ok()));
        self.rtmpt_sessions.set(state.gate.tunnels() as i64);
        if let Some(c) = &state.srt {
            for (result, v) in [
                ("accepted", &c.accepted),
                ("stream_id", &c.refused_stream_id),
                ("auth", &c.refused_auth),
                ("limit", &c.refused_limit),
            ] {
                let counter = self.srt_listener.with_label_values(&[result]);
                counter.reset();
                counter.inc_by(v.load(Ordering::Relaxed));
            }
        }
        // Streams that ended since the last scrape leave with their series.
        self.stream_bitrate.reset();
        self.stream_viewers.reset();
        let audience = state.gate.audience();
        for l in state.directory.snapshot() {
            let (app, name) = (l.key.app(), l.key.name());
            let origin = if l.relayed { "relayed" } else { "local" };
            self.stream_bitrate
                .with_label_values(&[app, name, origin])
                .set(i64::try_from(l.report.bitrate_kbps).unwrap_or(i64::MAX));
            let v = audience.of(&l.key);
            for (protocol, n) in [
                ("rtmp", v.rtmp),
                ("http-flv", v.http_flv),
                ("ll-hls", v.ll_hls),
                ("srt", v.srt),
            ] {
                self.stream_viewers
                    .with_label_values(&[app, name, protocol])
                    .set(i64::from(n));
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
