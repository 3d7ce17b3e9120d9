//! Server CPU and memory from `/proc/PID` (Linux): CPU time (user and system
//! apart, all threads) from `stat`, resident memory from `status`. Sampled once a
//! second by the run's timeline; read-only, any PID the user names.

use std::time::Instant;

use serde::Serialize;

pub struct ServerProbe {
    pub pid: u32,
    ticks_per_second: f64,
    first_ticks: Option<Ticks>,
    last_ticks: Option<Ticks>,
    last_at: Instant,
    started: Instant,
    peak_rss_kb: u64,
    last_rss_kb: u64,
    rss_sum_kb: u64,
    samples: u64,
    gone: bool,
}

/// One sample: CPU use since the previous one (100 = one core) and RSS.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerSample {
    pub cpu_percent: f64,
    pub rss_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    pub pid: u32,
    /// CPU seconds (user + system) the server used during the run.
    pub cpu_seconds: f64,
    /// Of those, in the process's own code (user) and in the kernel on its
    /// behalf (system).
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// Average CPU use over the run, 100 = one core.
    pub cpu_percent: f64,
    pub rss_mb_peak: f64,
    pub rss_mb_mean: f64,
    pub rss_mb_end: f64,
    /// The process was gone before the run ended.
    pub exited: bool,
}

/// CPU time in clock ticks: (user, system).
#[derive(Debug, Clone, Copy)]
struct Ticks {
    user: u64,
    system: u64,
}

impl Ticks {
    fn total(self) -> u64 {
        self.user + self.system
    }
}

/// utime and stime, in clock ticks, from `/proc/PID/stat`.
fn read_cpu_ticks(pid: u32) -> Option<Ticks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime and stime are fields 14 and 15 (1-based), the
    // 12th and 13th after the state field.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Ticks {
        user: utime,
        system: stime,
    })
}

fn read_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl ServerProbe {
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        let ticks = read_cpu_ticks(pid)
            .ok_or_else(|| anyhow::anyhow!("--server-pid {pid}: no readable /proc/{pid}/stat"))?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let now = Instant::now();
        let rss = read_rss_kb(pid).unwrap_or(0);
        Ok(Self {
            pid,
            ticks_per_second: if hz > 0 { hz as f64 } else { 100.0 },
            first_ticks: Some(ticks),
            last_ticks: Some(ticks),
            last_at: now,
            started: now,
            peak_rss_kb: rss,
            last_rss_kb: rss,
            rss_sum_kb: rss,
            samples: 1,
            gone: false,
        })
    }

    pub fn sample(&mut self) -> Option<ServerSample> {
        let (Some(ticks), Some(rss)) = (read_cpu_ticks(self.pid), read_rss_kb(self.pid)) else {
            self.gone = true;
            return None;
        };
        let now = Instant::now();
        let dt = (now - self.last_at).as_secs_f64();
        let used = ticks
            .total()
            .saturating_sub(self.last_ticks.unwrap_or(ticks).total()) as f64
            / self.ticks_per_second;
        self.last_ticks = Some(ticks);
        self.last_at = now;
        self.peak_rss_kb = self.peak_rss_kb.max(rss);
        self.last_rss_kb = rss;
        self.rss_sum_kb += rss;
        self.samples += 1;
        Some(ServerSample {
            cpu_percent: if dt > 0.0 { used / dt * 100.0 } else { 0.0 },
            rss_mb: rss as f64 / 1024.0,
        })
    }

    pub fn summary(&self) -> ServerSummary {
        let (user_seconds, system_seconds) = match (self.first_ticks, self.last_ticks) {
            (Some(a), Some(b)) => (
                b.user.saturating_sub(a.user) as f64 / self.ticks_per_second,
                b.system.saturating_sub(a.system) as f64 / self.ticks_per_second,
            ),
            _ => (0.0, 0.0),
        };
        let cpu_seconds = user_seconds + system_seconds;
        let wall = (self.last_at - self.started).as_secs_f64();
        ServerSummary {
            pid: self.pid,
            cpu_seconds,
            user_seconds,
            system_seconds,
            cpu_percent: if wall > 0.0 {
                cpu_seconds / wall * 100.0
            } else {
                0.0
            },
            rss_mb_peak: self.peak_rss_kb as f64 / 1024.0,
            rss_mb_mean: self.rss_sum_kb as f64 / self.samples.max(1) as f64 / 1024.0,
            rss_mb_end: self.last_rss_kb as f64 / 1024.0,
            exited: self.gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_can_be_probed() {
        let mut p = ServerProbe::new(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let s = p.sample().unwrap();
        assert!(s.rss_mb > 0.0);
        let sum = p.summary();
        assert!(!sum.exited);
        assert!(sum.user_seconds >= 0.0 && sum.system_seconds >= 0.0);
        assert!((sum.cpu_seconds - sum.user_seconds - sum.system_seconds).abs() < 1e-9);
        assert!(ServerProbe::new(u32::MAX - 1).is_err());
    }
}
