//! One bounded run: resolves the targets, starts publishers then players at
//! the ramp rate, samples counters and servers once a second (the timeline
//! and the progress line), stops publishers at the duration, lets players
//! drain, and gathers the outcomes into a report. Every task is joined or
//! aborted by a hard deadline, so a run always ends.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::hls_player::run_hls_player;
use crate::http_player::run_flv_player;
use crate::plan::{LoadPlan, SourcePlan};
use crate::player::{run_player, PlayerOutcome, PlayerSpec};
use crate::publisher::{run_publisher, PublisherOutcome, PublisherSpec};
use crate::report::{self, Report, RunResults, TimelinePoint};
use crate::server_probe::ServerProbe;
use crate::source::MediaSource;
use crate::stats::{LiveCounters, RunStats};
use crate::target::{resolve, Target};

/// Past the drain, how long tasks get to finish before they are aborted.
const JOIN_GRACE: Duration = Duration::from_secs(5);
/// How long players wait for the first publisher to be live.
const FIRST_PUBLISHER_WAIT: Duration = Duration::from_secs(10);
/// After the last connection started, how long before a late frame means
/// a player does not hold: joining players' cache bursts are part of the
/// ramp, not of the steady state.
const SETTLE: Duration = Duration::from_secs(2);
/// Progress line period when stderr is not a terminal.
const PROGRESS_EVERY_NON_TTY: u64 = 5;

pub fn load_source(plan: &LoadPlan) -> anyhow::Result<MediaSource> {
    match &plan.source {
        SourcePlan::File(path) => MediaSource::from_flv(path),
        SourcePlan::Synthetic {
            bitrate_bps,
            fps,
            gop_frames,
        } => MediaSource::synthetic(*bitrate_bps, *fps, *gop_frames),
    }
}

pub async fn execute(plan: LoadPlan) -> anyhow::Result<Report> {
    let source = Arc::new(load_source(&plan)?);
    let targets = resolve(&plan.urls)?;
    let publish_targets = resolve(&plan.publish_urls)?;
    let mut probes = plan
        .server_pids
        .iter()
        .map(|&pid| ServerProbe::new(pid))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut own = ServerProbe::new(std::process::id())?;
    let stats = Arc::new(RunStats::default());
    let started = Instant::now();
    let stop_at = started + plan.duration;
    let drain_until = stop_at + plan.drain;
    let ramp_step = Duration::from_secs_f64(1.0 / plan.ramp_per_s);
    let ramp_time = ramp_step.mul_f64((plan.publishers + plan.players) as f64);
    if ramp_time >= plan.duration && !plan.quiet {
        eprintln!(
            "warning: the ramp ({:.1} s) is not shorter than --duration: late connections hardly run",
            ramp_time.as_secs_f64()
        );
    }

    let starter = tokio::spawn(start_connections(
        plan.clone(),
        source.clone(),
        targets.clone(),
        publish_targets,
        stats.clone(),
        started,
        stop_at,
        drain_until,
    ));

    // Timeline and progress, once a second, until the drain ends.
    let tty = std::io::stderr().is_terminal();
    let mut timeline = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_in, mut last_out, mut last_frames) = (0u64, 0u64, 0u64);
    let mut last_t = started;
    let mut seconds = 0u64;
    while Instant::now() < drain_until && !starter.is_finished() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(drain_until) => break,
        }
        seconds += 1;
        let now = Instant::now();
        let dt = (now - last_t).as_secs_f64().max(1e-3);
        last_t = now;
        let live = &stats.live;
        let (bin, bout, fin) = (
            LiveCounters::get(&live.bytes_in),
            LiveCounters::get(&live.bytes_out),
            LiveCounters::get(&live.frames_in),
        );
        let (p50, p99, _) = stats.take_interval_latency();
        let samples: Vec<_> = probes.iter_mut().map(ServerProbe::sample).collect();
        let point = TimelinePoint {
            t_s: (now - started).as_secs_f64(),
            publishers_live: LiveCounters::get(&live.publishers_live),
            players_live: LiveCounters::get(&live.players_live),
            in_gbit_per_s: (bin - last_in) as f64 * 8.0 / 1e9 / dt,
            out_gbit_per_s: (bout - last_out) as f64 * 8.0 / 1e9 / dt,
            frames_in_per_s: (fin - last_frames) as f64 / dt,
            frames_lost: LiveCounters::get(&live.frames_lost),
            latency_p50_ms: p50 as f64 / 1000.0,
            latency_p99_ms: p99 as f64 / 1000.0,
            server_cpu_percent: samples
                .iter()
                .map(|s| s.map_or(0.0, |s| s.cpu_percent))
                .collect(),
            server_rss_mb: samples
                .iter()
                .map(|s| s.map_or(0.0, |s| s.rss_mb))
                .collect(),
        };
        (last_in, last_out, last_frames) = (bin, bout, fin);
        if !plan.quiet && (tty || seconds.is_multiple_of(PROGRESS_EVERY_NON_TTY)) {
            progress(&point, &stats, tty);
        }
        timeline.push(point);
    }
    if tty && !plan.quiet {
        eprintln!();
    }
    let (publishers, players) = starter.await.context("connection starter panicked")?;
    let duration_s = (Instant::now() - started).as_secs_f64();
    for p in &mut probes {
        p.sample();
    }
    own.sample();
    let latency_us = stats
        .latency_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .total
        .clone();
    let first_frame_us = stats
        .first_frame_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(report::build(RunResults {
        duration_s,
        source: source.description.clone(),
        targets: targets
            .iter()
            .map(|t| format!("{} ({})", t.tc_url, t.addr))
            .collect(),
        publishers,
        players,
        latency_us,
        first_frame_us,
        servers: probes.iter().map(ServerProbe::summary).collect(),
        load_generator: own.summary(),
        hold_latency_ms: plan.hold_latency_ms,
        timeline,
    }))
}

fn progress(p: &TimelinePoint, stats: &RunStats, tty: bool) {
    let live = &stats.live;
    let line = format!(
        "[{:>6.1}s] publishers {} live {} failed | players {} live {} failed | in {:.3} Gbit/s out {:.3} Gbit/s | {:.0} frames/s | lost {} | latency p50 {:.1} p99 {:.1} ms",
        p.t_s,
        p.publishers_live,
        LiveCounters::get(&live.publishers_failed),
        p.players_live,
        LiveCounters::get(&live.players_failed),
        p.in_gbit_per_s,
        p.out_gbit_per_s,
        p.frames_in_per_s,
        p.frames_lost,
        p.latency_p50_ms,
        p.latency_p99_ms,
    );
    let mut err = std::io::stderr().lock();
    let _ = if tty {
        write!(err, "\r{line}\x1b[K")
    } else {
        writeln!(err, "{line}")
    };
    let _ = err.flush();
}

#[allow(clippy::too_many_arguments)]
async fn start_connections(
    plan: LoadPlan,
    source: Arc<MediaSource>,
    targets: Vec<Target>,
    publish_targets: Vec<Target>,
    stats: Arc<RunStats>,
    started: Instant,
    stop_at: Instant,
    drain_until: Instant,
) -> (Vec<PublisherOutcome>, Vec<PlayerOutcome>) {
    let step = Duration::from_secs_f64(1.0 / plan.ramp_per_s);
    let ramp = step.mul_f64((plan.publishers + plan.players) as f64) + SETTLE;
    let steady_after_us = crate::publisher::wall_clock_us() + ramp.as_micros() as u64;
    let mut slot = 0u32;
    let mut publishers: Vec<JoinHandle<PublisherOutcome>> = Vec::with_capacity(plan.publishers);
    for i in 0..plan.publishers {
        sleep_until(started + step * slot).await;
        slot += 1;
        let now = Instant::now();
        let spec = PublisherSpec {
            index: i,
            target: publish_targets[i % publish_targets.len()].clone(),
            key: plan.stream_keys[i % plan.stream_keys.len()].clone(),
            source: source.clone(),
            setup_deadline: (now + plan.setup_timeout).min(stop_at),
            stop_at,
            stats: stats.clone(),
            reconnect: plan.reconnect,
            setup_timeout: plan.setup_timeout,
        };
        publishers.push(if spec.target.url.srt {
            tokio::spawn(crate::srt::run_srt_publisher(spec))
        } else {
            tokio::spawn(run_publisher(spec))
        });
    }
    if plan.publishers > 0 && plan.players > 0 {
        // Players of a stream not yet published would be refused.
        let wait_until = (Instant::now() + FIRST_PUBLISHER_WAIT).min(stop_at);
        while Instant::now() < wait_until
            && LiveCounters::get(&stats.live.publishers_live)
                + LiveCounters::get(&stats.live.publishers_failed)
                < plan.publishers as u64
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut players: Vec<JoinHandle<PlayerOutcome>> = Vec::with_capacity(plan.players);
    for j in 0..plan.players {
        sleep_until(started + step * slot).await;
        slot += 1;
        let now = Instant::now();
        let target = targets[j % targets.len()].clone();
        let (http, srt) = (target.url.http, target.url.srt);
        let hls = plan.http_hls;
        let spec = PlayerSpec {
            index: j,
            target,
            key: plan.stream_keys[j % plan.stream_keys.len()].clone(),
            setup_deadline: (now + plan.setup_timeout).min(drain_until),
            first_frame_timeout: plan.first_frame_timeout,
            stop_at,
            drain_until,
            steady_after_us,
            stats: stats.clone(),
            reconnect: plan.player_reconnect,
            setup_timeout: plan.setup_timeout,
        };
        players.push(tokio::spawn(async move {
            if srt {
                crate::srt::run_srt_player(spec).await
            } else if http && hls {
                run_hls_player(spec).await
            } else if http {
                run_flv_player(spec).await
            } else {
                run_player(spec).await
            }
        }));
    }
    let hard = drain_until + JOIN_GRACE;
    let mut pub_out = Vec::with_capacity(publishers.len());
    for (i, h) in publishers.into_iter().enumerate() {
        pub_out.push(
            join_or_abort(h, hard)
                .await
                .unwrap_or_else(|reason| PublisherOutcome {
                    key: plan.stream_keys[i % plan.stream_keys.len()].clone(),
                    failure: Some(reason),
                    ..Default::default()
                }),
        );
    }
    let mut play_out = Vec::with_capacity(players.len());
    for (j, h) in players.into_iter().enumerate() {
        play_out.push(
            join_or_abort(h, hard)
                .await
                .unwrap_or_else(|reason| PlayerOutcome {
                    key: plan.stream_keys[j % plan.stream_keys.len()].clone(),
                    failure: Some(reason),
                    ..Default::default()
                }),
        );
    }
    (pub_out, play_out)
}

async fn join_or_abort<T>(mut h: JoinHandle<T>, deadline: Instant) -> Result<T, String> {
    tokio::select! {
        r = &mut h => r.map_err(|e| format!("task failed: {e}")),
        _ = sleep_until(deadline) => {
            h.abort();
            Err("did not finish by the drain deadline".into())
        }
    }
}
