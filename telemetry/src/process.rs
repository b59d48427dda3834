//! The process' own figures, with the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), read from `/proc/self`
//! at scrape time. Linux only; elsewhere (or if `/proc` is not mounted) they are left out.

use std::path::Path;

/// Linux reports CPU times in USER_HZ ticks, which its ABI fixes at 100 per second on every
/// architecture DeployLite builds for (`sysconf(_SC_CLK_TCK)` answers 100).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub threads: u64,
    /// Epoch seconds.
    pub start_time_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {0}")]
    Parse(&'static str),
}

/// Reads this process' figures. Blocking (a few small files): call it off the async runtime.
pub fn read_self() -> Result<ProcessStats, ProcessError> {
    read_from(Path::new("/proc"))
}

fn read(proc: &Path, path: &'static str) -> Result<String, ProcessError> {
    std::fs::read_to_string(proc.join(path)).map_err(|source| ProcessError::Read { path, source })
}

/// Reads the figures of `proc/self` (a parameter so that tests can read a fake `/proc`).
pub fn read_from(proc: &Path) -> Result<ProcessStats, ProcessError> {
    let stat = read(proc, "self/stat")?;
    let status = read(proc, "self/status")?;
    let boot = read(proc, "stat")?;
    let limits = read(proc, "self/limits").unwrap_or_default();
    let open_fds = std::fs::read_dir(proc.join("self/fd"))
        .map_err(|source| ProcessError::Read {
            path: "self/fd",
            source,
        })?
        .count();

    // Fields after the command name, which is in parentheses and may hold spaces: field 3
    // (state) is index 0 here.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(ProcessError::Parse("self/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, ProcessError> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or(ProcessError::Parse("self/stat"))
    };
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let boot_time: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(ProcessError::Parse("stat"))?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Ok(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
        resident_memory_bytes: kib("VmRSS:").unwrap_or(0) * 1024,
        virtual_memory_bytes: kib("VmSize:").unwrap_or(0) * 1024,
        open_fds: u64::try_from(open_fds).unwrap_or(u64::MAX),
        max_fds: limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|soft| soft.parse().ok()),
        threads: kib("Threads:").ok_or(ProcessError::Parse("self/status"))?,
        start_time_seconds: boot_time as f64 + start_ticks as f64 / TICKS_PER_SECOND,
    })
}

impl ProcessStats {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::gauge::Gauge;
        use std::sync::atomic::AtomicU64;
        let cpu = Counter::<f64, AtomicU64>::default();
        cpu.inc_by(self.cpu_seconds);
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            cpu,
        );
        let gauge = |value: f64| {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(value);
            g
        };
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            gauge(self.resident_memory_bytes as f64),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            gauge(self.virtual_memory_bytes as f64),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            gauge(self.open_fds as f64),
        );
        if let Some(max) = self.max_fds {
            registry.register(
                "process_max_fds",
                "The most file descriptors the process may open (soft limit)",
                gauge(max as f64),
            );
        }
        registry.register(
            "process_threads",
            "Operating system threads",
            gauge(self.threads as f64),
        );
        registry.register(
            "process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch",
            gauge(self.start_time_seconds),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let stats = read_self().unwrap();
        assert!(stats.resident_memory_bytes > 0);
        assert!(stats.open_fds >= 3, "{stats:?}");
        assert!(stats.threads >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            stats.start_time_seconds > now - 3600.0 && stats.start_time_seconds <= now + 1.0,
            "started {} vs now {now}",
            stats.start_time_seconds
        );
    }

    #[test]
    fn parses_a_command_name_with_spaces_and_parentheses() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc.path().join("self/fd")).unwrap();
        std::fs::write(proc.path().join("self/fd/0"), "").unwrap();
        // Fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime(14) stime(15) cutime cstime priority nice threads itreal starttime(22) ...
        std::fs::write(
            proc.path().join("self/stat"),
            "42 (a (b) c) S 1 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 3 0 1000 0 0",
        )
        .unwrap();
        std::fs::write(
            proc.path().join("self/status"),
            "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n",
        )
        .unwrap();
        std::fs::write(proc.path().join("stat"), "cpu 1 2 3\nbtime 1700000000\n").unwrap();
        std::fs::write(
            proc.path().join("self/limits"),
            "Limit Soft Limit Hard Limit Units\nMax open files            1024                 4096                 files\n",
        )
        .unwrap();
        let stats = read_from(proc.path()).unwrap();
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.resident_memory_bytes, 1024 * 1024);
        assert_eq!(stats.virtual_memory_bytes, 2048 * 1024);
        assert_eq!(stats.threads, 3);
        assert_eq!(stats.open_fds, 1);
        assert_eq!(stats.max_fds, Some(1024));
        assert_eq!(stats.start_time_seconds, 1_700_000_010.0);
    }
}
