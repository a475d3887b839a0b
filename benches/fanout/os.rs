//! What the bench reads from and sets in the operating system: the open-file limit, CPU
//! affinity, and another process's CPU time and resident memory from `/proc`.

use std::fs;
use std::io;
use std::time::Duration;

/// Raises the soft open-file limit to the hard one and returns it: every client is a socket.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill in and read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Restricts the calling thread to one core. Only makes a system call, so it is also safe to run
/// between `fork` and `exec`.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; the kernel reads
    // exactly `size_of::<cpu_set_t>()` bytes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// User plus system CPU time this process has used.
pub fn own_cpu_time() -> Duration {
    // SAFETY: a zeroed rusage is valid for getrusage to overwrite.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(time: libc::timeval) -> Duration {
    Duration::new(time.tv_sec as u64, time.tv_usec as u32 * 1_000)
}

/// Indexes into `/proc/PID/stat` fields counted from field 3 (state): utime is field 14, stime 15.
const STAT_STATE: usize = 0;
const STAT_UTIME: usize = 11;
const STAT_STIME: usize = 12;

/// Reads another process's CPU time and memory (the server under test).
pub struct ProcessProbe {
    pid: u32,
    /// Kernel clock ticks per second, the unit of `/proc/PID/stat` times.
    ticks_per_second: f64,
}

impl ProcessProbe {
    pub fn new(pid: u32) -> Self {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            pid,
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// utime + stime of all the process's threads, in seconds.
    pub fn cpu_seconds(&self) -> io::Result<f64> {
        let ticks = |field: &str| -> io::Result<f64> {
            field
                .parse::<u64>()
                .map(|ticks| ticks as f64)
                .map_err(|_| invalid(format!("unexpected /proc/{}/stat", self.pid)))
        };
        let fields = self.stat_fields()?;
        Ok((ticks(&fields[STAT_UTIME])? + ticks(&fields[STAT_STIME])?) / self.ticks_per_second)
    }

    /// Whether the process has exited (or was never there): a server that dies mid-run closes
    /// every client, which must not pass for a slow server.
    pub fn exited(&self) -> bool {
        self.stat_fields().map_or(true, |fields| {
            matches!(fields[STAT_STATE].as_str(), "Z" | "X")
        })
    }

    /// `/proc/PID/stat` from field 3 on. The command name (field 2) may hold spaces and
    /// parentheses, so the split starts after its last ')'.
    fn stat_fields(&self) -> io::Result<Vec<String>> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let fields: Vec<String> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if fields.len() <= STAT_STIME {
            return Err(invalid(format!(
                "unexpected /proc/{}/stat: {stat}",
                self.pid
            )));
        }
        Ok(fields)
    }

    /// Resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> io::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| invalid(format!("no VmRSS in /proc/{}/status", self.pid)))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
