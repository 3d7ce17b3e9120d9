//! What the socket ring needs from the kernel, checked once at start. A
//! missing feature stops the node with a message that names it and the
//! Linux version that has it.

use io_uring::{opcode, IoUring, Probe};

/// The oldest kernel the data plane runs on: multishot recv with a
/// provided-buffer ring and SINGLE_ISSUER are Linux 6.0, DEFER_TASKRUN 6.1
/// (Debian 12's kernel).
pub const MIN_KERNEL: (u32, u32) = (6, 1);

/// From this kernel on, each fixed file has its own reference count, so a
/// socket taken out of the table is released as soon as its own requests
/// are done. Before it, removed files were released in order, only once
/// every request issued before the removal had completed: one long-lived
/// multishot receive would keep every socket closed after it open. The
/// socket ring uses its fixed-file table only from this version on.
pub const PER_FILE_FIXED_FILES: (u32, u32) = (6, 13);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "io_uring is not available ({0}): it may be off (sysctl kernel.io_uring_disabled) or blocked by a \
         seccomp profile (Docker 25 and newer block it by default: run with a profile that allows io_uring_setup, \
         io_uring_enter and io_uring_register)"
    )]
    Unavailable(std::io::Error),
    #[error("this kernel is Linux {found}; Tributary needs {feature}, which Linux {}.{} and newer have", MIN_KERNEL.0, MIN_KERNEL.1)]
    TooOld {
        found: String,
        feature: &'static str,
    },
    #[error("io_uring here lacks {feature} (Linux {since} and newer): {err}")]
    Missing {
        feature: &'static str,
        since: &'static str,
        err: std::io::Error,
    },
}

/// The running kernel's release string and (major, minor).
pub fn kernel_version() -> (String, (u32, u32)) {
    // SAFETY: uname fills the struct we pass; every field is a
    // NUL-terminated array.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return (String::from("unknown"), (0, 0));
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    (release.clone(), parse_version(&release))
}

fn parse_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Builds the shard's ring with the flags the data plane relies on, and
/// checks the operations it submits.
///
/// `defer_taskrun` adds DEFER_TASKRUN: completions (a receive's copy among
/// them) run only when the shard enters the ring to reap, never as an
/// interruption, and arrivals while the shard is busy do not wake it again.
/// That saves kernel work per byte, but its first arrival on a quiet ring
/// signals the ring's eventfd from an RCU callback (seen on Linux 6.18 with
/// `perf record -e io_uring:io_uring_task_add`: 5 to 20 ms after the
/// data came), so a quiet shard's input waits that long. Without it the
/// completion is task work that wakes the shard's thread at once.
pub fn build_ring(entries: u32, defer_taskrun: bool) -> Result<IoUring, ProbeError> {
    let (release, version) = kernel_version();
    if version < MIN_KERNEL {
        return Err(ProbeError::TooOld {
            found: release,
            feature: "multishot recv into provided-buffer rings",
        });
    }
    // COOP_TASKRUN: completions' task work does not interrupt the shard
    // while it runs (it waits for the next entry into the kernel). A sleeping
    // shard is still woken. TASKRUN_FLAG tells us when to enter.
    // SINGLE_ISSUER: only this shard's thread submits.
    let mut builder = IoUring::builder();
    builder
        .setup_cqsize(entries * 4)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer();
    if defer_taskrun {
        builder.setup_defer_taskrun();
    }
    let ring = builder.build(entries).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => ProbeError::Missing {
            feature: "IORING_SETUP_DEFER_TASKRUN / SINGLE_ISSUER / COOP_TASKRUN",
            since: "6.1",
            err: e,
        },
        _ => ProbeError::Unavailable(e),
    })?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| ProbeError::Missing {
            feature: "IORING_REGISTER_PROBE",
            since: "5.6",
            err: e,
        })?;
    for (code, feature, since) in [
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT", "5.5"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV", "5.6"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG", "5.3"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
    ] {
        if !probe.is_supported(code) {
            return Err(ProbeError::Missing {
                feature,
                since,
                err: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            });
        }
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_release_strings() {
        assert_eq!(parse_version("6.1.0-27-amd64"), (6, 1));
        assert_eq!(parse_version("6.18.44-fc-v1045"), (6, 18));
        assert_eq!(parse_version("5.15.0"), (5, 15));
        assert_eq!(parse_version("garbage"), (0, 0));
    }

    #[test]
    fn this_machine_builds_the_ring() {
        // The test machines run a kernel the node supports.
        build_ring(64, false).expect("the socket ring's kernel features");
        build_ring(64, true).expect("the socket ring's kernel features, DEFER_TASKRUN");
    }
}
