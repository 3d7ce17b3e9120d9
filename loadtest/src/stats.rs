//! Live counters shared by every connection of a run: byte and frame
//! counts (atomics, added once per socket read or write batch, not per
//! message) and the latency and time-to-first-frame histograms (behind a
//! mutex, fed in batches). The progress line and the timeline read them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Highest value a histogram keeps exactly enough: 10 minutes in µs.
/// Larger samples are clamped to it (and still counted).
pub const HISTOGRAM_MAX_US: u64 = 600_000_000;

#[derive(Debug, Default)]
pub struct LiveCounters {
    pub publishers_live: AtomicU64,
    pub publishers_failed: AtomicU64,
    pub players_live: AtomicU64,
    pub players_failed: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_lost: AtomicU64,
}

impl LiveCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn histogram() -> Histogram<u64> {
    // Two significant digits: 1% resolution, a few KiB per histogram.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 2).expect("static histogram bounds are valid")
}

/// Latency in µs: the whole run, and the interval since the timeline last
/// took it (for latency over time).
#[derive(Debug)]
pub struct LatencyHistograms {
    pub total: Histogram<u64>,
    pub interval: Histogram<u64>,
}

#[derive(Debug)]
pub struct RunStats {
    pub live: LiveCounters,
    pub latency_us: Mutex<LatencyHistograms>,
    pub first_frame_us: Mutex<Histogram<u64>>,
}

impl Default for RunStats {
    fn default() -> Self {
        Self {
            live: LiveCounters::default(),
            latency_us: Mutex::new(LatencyHistograms {
                total: histogram(),
                interval: histogram(),
            }),
            first_frame_us: Mutex::new(histogram()),
        }
    }
}

impl RunStats {
    /// Adds a batch of latency samples (µs).
    pub fn record_latencies(&self, samples: &[u64]) {
        if samples.is_empty() {
            return;
        }
        let mut h = self.latency_us.lock().unwrap_or_else(|p| p.into_inner());
        for &s in samples {
            let s = s.clamp(1, HISTOGRAM_MAX_US);
            h.total.saturating_record(s);
            h.interval.saturating_record(s);
        }
    }

    pub fn record_first_frame(&self, micros: u64) {
        let mut h = self
            .first_frame_us
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        h.saturating_record(micros.clamp(1, HISTOGRAM_MAX_US));
    }

    /// Takes the interval histogram's (p50, p99, count) in µs and resets it.
    pub fn take_interval_latency(&self) -> (u64, u64, u64) {
        let mut h = self.latency_us.lock().unwrap_or_else(|p| p.into_inner());
        let r = (
            h.interval.value_at_quantile(0.5),
            h.interval.value_at_quantile(0.99),
            h.interval.len(),
        );
        h.interval.reset();
        r
    }
}
