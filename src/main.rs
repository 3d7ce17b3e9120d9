//! The `tributary` binary: parse flags and config, start the node, stop on
//! SIGINT/SIGTERM. Everything else lives in the library.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use tributary::admin::{self, AdminState};
use tributary::config::{Cli, LogFormat};
use tributary::node::Node;

fn main() -> ExitCode {
    // A panic anywhere ends the process at once: unwinding a shard thread
    // would drop its glommio executor and socket ring with io_uring work in
    // flight, and the kernel would then write into freed memory. (Release
    // builds also set panic = "abort".)
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    // Usage errors exit with status 2, --help and --version with 0.
    let cli = Cli::parse();
    let config = match cli.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tributary: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file, a pipe or journald
    // gets plain text (and NO_COLOR, https://no-color.org, turns it off).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }

    // Block the stop signals before any thread starts, so every shard
    // inherits the mask and only `sigwait` below receives them.
    let signals = stop_signals();
    let http_listen = config.http.listen;
    let admin_token = config.http.admin_token.clone();
    let drain_delay = std::time::Duration::from_millis(config.node.drain_delay_ms);
    let players = config.players.clone();
    let node = match Node::start(config) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tributary: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(shards = node.shards, "rtmp listening on {}", node.rtmp_addr);
    if let Some(addr) = node.rtmps_addr {
        tracing::info!("rtmps listening on {addr}");
    }
    if let Some(addr) = node.media_addr {
        tracing::info!(
            "media listening on {addr} (HTTP-FLV: http://{addr}/APP/KEY.flv, RTMPT: rtmpt://{addr}/APP/KEY)"
        );
    }
    if let Some(addr) = node.media_tls_addr {
        tracing::info!("https listening on {addr} (HTTPS media)");
    }
    if let Some(addr) = node.srt_addr {
        let version = node.srt_version.as_deref().unwrap_or("?");
        tracing::info!(
            "srt listening on {addr} (libsrt {version}; streamid=#!::r=APP/KEY,m=publish)"
        );
    }
    let ready = Arc::new(AtomicBool::new(true));
    let admin = AdminState {
        node_id: node.node_id.clone(),
        rtmp_addr: node.rtmp_addr,
        shards: node.stats.clone(),
        directory: node.directory.clone(),
        ready: ready.clone(),
        started: Instant::now(),
        cluster: node.cluster.clone(),
        gate: node.gate.clone(),
        commands: node.commands.clone(),
        admin_token,
        hls: node.hls.clone(),
        media_addr: node.media_addr,
        auth: node.auth.clone(),
        exec: node.exec.clone(),
        recordings: node.recordings.clone(),
        players,
        srt: node.srt_counters.clone(),
    };
    match admin::spawn(http_listen, admin) {
        Ok(addr) => tracing::info!("http listening on {addr}"),
        Err(e) => {
            tracing::error!("cannot serve HTTP admin on {http_listen}: {e}");
            eprintln!("tributary: cannot serve HTTP admin on {http_listen}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // SIGHUP re-reads the keys file and certificates; SIGINT/SIGTERM stop.
    let signal = loop {
        match wait_for(&signals) {
            libc::SIGHUP => {
                tracing::info!("SIGHUP: reloading keys and certificates");
                node.reload();
            }
            other => break other,
        }
    };
    ready.store(false, Ordering::SeqCst);
    tracing::info!("signal {signal}: stopping");
    if !drain_delay.is_zero() {
        // Not ready, still serving: let traffic move away first.
        tracing::info!("not ready; serving {drain_delay:?} more before draining");
        std::thread::sleep(drain_delay);
    }
    let mut node = node;
    // Drain, then exit without tearing the executors down: tasks parked on
    // io_uring must not outlive their reactor in thread-local destructors.
    let drained = node.drain(std::time::Duration::from_secs(7));
    // Registry entries of the streams that just ended are deleted, and
    // relaying nodes told, before the process goes.
    if let Some(cluster) = &node.cluster {
        cluster.flush_blocking(std::time::Duration::from_secs(2));
    }
    if drained {
        tracing::info!("stopped");
        ExitCode::SUCCESS
    } else {
        tracing::error!("shards did not drain in time");
        ExitCode::FAILURE
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` was initialised by stop_signals; sigwait writes `sig`.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}
