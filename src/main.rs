//! The `wshub` daemon: read the configuration, raise the open-file limit, bind, run.

use std::process::ExitCode;

use log::{info, warn};
use wshub::{Config, Server};

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            // One line that says what is wrong; `--help` has the rest.
            let text = error.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "wshub: {} (see wshub --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_level.as_deref());
    raise_open_file_limit(config.max_connections);
    map_large_buffers_apart();
    let (protocol, ws_path) = (config.protocol, config.ws_path.clone());
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("wshub: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = server.handle_signals() {
        eprintln!("wshub: could not install signal handlers: {error}");
        return ExitCode::FAILURE;
    }
    info!(
        "listening on http://{} (WebSocket path {ws_path}, protocol {protocol:?})",
        server.local_addr()
    );
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wshub: event loop failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--log-level` wins, then `RUST_LOG`, then `info`. tungstenite's own per-frame debug lines
/// are left out unless asked for by name.
fn init_logging(level: Option<&str>) {
    let mut filters = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    if !filters.contains("tungstenite") {
        filters.push_str(",tungstenite=info");
    }
    env_logger::Builder::new()
        .parse_filters(&filters)
        .format_target(false)
        .init();
}

/// SPEC §6 wants the memory of a burst back once it drains. glibc serves a buffer of 128 KiB or
/// more from a mapping of its own, unmapped when freed, but raises that threshold each time such
/// a buffer is freed (up to 32 MiB); from then on a burst's queues land in the heap, between live
/// allocations, and stay resident. Fixing the threshold keeps every large queue in its own
/// mapping; `server::memory` trims the heap for the smaller ones.
fn map_large_buffers_apart() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only changes the allocator's tuning; it takes no pointer.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } == 0 {
            warn!(
                "could not fix the allocator's mmap threshold: memory may return late after bursts"
            );
        }
    }
}

/// SPEC §2: raise the soft open-file limit to the hard limit, and warn when even that cannot
/// hold `--max-connections` sockets.
fn raise_open_file_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed by pointer.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return warn!(
                "could not read the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
    };
    if !raised {
        warn!(
            "could not raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
    }
    // A few descriptors go to the listener, the poll and the signal pipes.
    let usable = (limit.rlim_cur as usize).saturating_sub(16);
    if usable < max_connections {
        warn!(
            "the open-file limit ({}) is below --max-connections ({max_connections}): at most about {usable} clients can connect",
            limit.rlim_cur
        );
    }
}
