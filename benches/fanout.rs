//! Fan-out benchmark: N WebSocket clients, P of them publishing, every message broadcast by the
//! server to every client. Measures deliveries/s, delivery ratio, latency, server CPU time and
//! memory per idle connection. See BENCHMARKS.md for the scenarios. Several `--url`s measure
//! several instances of one hub (SPEC §10): publishers on the first, receivers spread over all.
//! The clients speak the `raw` protocol, or with `--room` the `events` protocol, all in one room
//! (SPEC §5), where room history (SPEC §11) numbers and keeps every message.
//!
//! # Layout
//!
//! - `config`: the command line.
//! - `server`: starting wshub on a free port, pinned to its own core, and stopping it.
//! - `load`: the client event loop and its phases: connect, publish, drain.
//! - `conn`: one client connection; the only code that touches a client socket.
//! - `handshake`, `frame`: the WebSocket upgrade response and server frames, parsed without I/O.
//! - `events`: with `--room`, the join request, the message envelope and finding the stamped
//!   payload in a received event, without I/O and without a JSON parse.
//! - `wire`: the upgrade request and masked client frames, shared with the tests
//!   (`tests/common/wire.rs`).
//! - `message`: the stamped payload (send time and publisher in ASCII).
//! - `tally`: deliveries (per URL too), their order, latency histogram, publishers' windows.
//! - `os`: open-file limit, CPU affinity, another process's CPU time and RSS.
//! - `report`: the numbers, as text or JSON.
//!
//! **Architecture invariant:** the harness is one thread on its own core, and the server runs on
//! the other (with several instances, `benches/cluster.sh` places them). Its CPU time is reported
//! against wall time so that a reader can see it was not the bottleneck.

// A bench target is a crate root in benches/, so its modules are found in benches/fanout/ by path.
#[path = "fanout/config.rs"]
mod config;
#[path = "fanout/conn.rs"]
mod conn;
#[path = "fanout/events.rs"]
mod events;
#[path = "fanout/frame.rs"]
mod frame;
#[path = "fanout/handshake.rs"]
mod handshake;
#[path = "fanout/load.rs"]
mod load;
#[path = "fanout/message.rs"]
mod message;
#[path = "fanout/os.rs"]
mod os;
#[path = "fanout/report.rs"]
mod report;
#[path = "fanout/server.rs"]
mod server;
#[path = "fanout/tally.rs"]
mod tally;
#[path = "../tests/common/wire.rs"]
mod wire;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use config::{Config, Target, WsUrl};
use hdrhistogram::Histogram;
use load::Load;
use os::ProcessProbe;
use report::{Latency, ProcessCpu, Report, TargetReport};
use server::ServerProcess;

/// The started server's core; the harness takes another one (`--harness-core`, default 1).
const SERVER_CORE: usize = 0;
/// File descriptors needed besides the clients: std streams, epoll, /proc reads.
const RESERVED_FDS: u64 = 32;
/// Pause between the last upgrade and reading the server's memory, for any per-connection work
/// the server does after the handshake.
const SETTLE_TIME: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fanout: {err}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(report) => {
            if config.json {
                println!("{}", report.to_json());
            } else {
                report.print_text();
            }
            if report.duplicates > 0 {
                eprintln!(
                    "fanout: {} duplicate deliveries: a message reached a client twice",
                    report.duplicates
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fanout: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<Report, String> {
    let fd_limit = os::raise_nofile_limit()
        .map_err(|err| format!("could not raise the open-file limit: {err}"))?;
    if config.clients as u64 + RESERVED_FDS > fd_limit {
        return Err(format!(
            "{} clients need {} open files; the hard limit is {fd_limit}",
            config.clients,
            config.clients as u64 + RESERVED_FDS
        ));
    }
    let pin = std::thread::available_parallelism().is_ok_and(|cores| cores.get() > 1);
    if !pin {
        eprintln!("fanout: one core only: harness and server share it");
    }
    let server = ServerUnderTest::new(config, pin)?;
    if pin {
        let core = config.harness_core;
        os::pin_to_core(core)
            .map_err(|err| format!("could not pin the harness to core {core}: {err}"))?;
    }
    measure(config, &server)
}

/// The server (one or several instances of a hub) being measured and how to observe it.
struct ServerUnderTest {
    /// Set when the harness started the server; dropping it stops the process.
    _process: Option<ServerProcess>,
    /// Where clients connect; never empty.
    urls: Vec<WsUrl>,
    /// The processes whose CPU time is reported: the servers' (those with known pids), then the
    /// watched ones.
    probes: Vec<Probe>,
    /// What the report calls the server.
    description: String,
}

/// One observed process.
struct Probe {
    /// Label in the report: `server`, or the `--watch-pid` name.
    name: String,
    /// A server's memory and CPU count as the hub's; a watched process's only as its own.
    server: bool,
    process: ProcessProbe,
}

impl ServerUnderTest {
    fn new(config: &Config, pin: bool) -> Result<Self, String> {
        let server_probe = |pid| Probe {
            name: "server".to_owned(),
            server: true,
            process: ProcessProbe::new(pid),
        };
        let mut server = match &config.target {
            Target::Spawn { bin, args } => {
                let process = ServerProcess::spawn(
                    bin,
                    config.protocol.server_flag(),
                    config.clients,
                    args,
                    pin.then_some(SERVER_CORE),
                )?;
                Self {
                    urls: vec![WsUrl {
                        address: process.address(),
                        host: process.address().to_string(),
                        path: server::WS_PATH.to_owned(),
                    }],
                    probes: vec![server_probe(process.pid())],
                    description: format!("{} (pid {})", bin.display(), process.pid()),
                    _process: Some(process),
                }
            }
            Target::Urls { urls, server_pids } => Self {
                _process: None,
                urls: urls.clone(),
                probes: server_pids.iter().copied().map(server_probe).collect(),
                description: urls
                    .iter()
                    .map(|url| format!("ws://{}{}", url.host, url.path))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        };
        server
            .probes
            .extend(config.watched.iter().map(|watched| Probe {
                name: watched.name.clone(),
                server: false,
                process: ProcessProbe::new(watched.pid),
            }));
        // A mistyped pid fails now, not after the clients have connected.
        for probe in &server.probes {
            probe_cpu(&probe.process)?;
        }
        Ok(server)
    }

    fn server_probes(&self) -> impl Iterator<Item = &ProcessProbe> {
        self.probes
            .iter()
            .filter(|probe| probe.server)
            .map(|probe| &probe.process)
    }

    /// The servers' resident memory together; `None` without a server pid.
    fn rss_kib(&self) -> Result<Option<u64>, String> {
        let mut total = None;
        for probe in self.server_probes() {
            *total.get_or_insert(0) += probe_rss(probe)?;
        }
        Ok(total)
    }

    /// Every observed process's CPU time, in `probes` order.
    fn cpu_seconds(&self) -> Result<Vec<f64>, String> {
        self.probes
            .iter()
            .map(|probe| probe_cpu(&probe.process))
            .collect()
    }
}

/// Runs the phases against `server`: connect, measure idle memory, publish, drain.
fn measure(config: &Config, server: &ServerUnderTest) -> Result<Report, String> {
    let io_error = |err: std::io::Error| format!("client event loop: {err}");
    let mut load = Load::new(config, &server.urls, Instant::now()).map_err(io_error)?;

    let rss_before = server.rss_kib()?;
    let connect_start = Instant::now();
    load.connect_all(config.clients).map_err(io_error)?;
    let connect_time = connect_start.elapsed();
    let connected = load.counts().connected;
    if connected == 0 {
        let why = load
            .counts()
            .first_error
            .as_deref()
            .unwrap_or("no reason given");
        return Err(format!(
            "no client could connect to {}: {why}",
            server.description
        ));
    }
    load.idle(SETTLE_TIME).map_err(io_error)?;
    let rss_per_idle_conn_kib = match (rss_before, server.rss_kib()?) {
        (Some(before), Some(after)) => Some((after as f64 - before as f64) / connected as f64),
        _ => None,
    };

    let cpu_before = server.cpu_seconds()?;
    let harness_cpu_before = os::own_cpu_time();
    let publish_start = Instant::now();
    let publish_start_ns = load.now_ns();
    let mut harness_cpu = Duration::ZERO;
    let mut publish_time = Duration::ZERO;
    if !config.duration.is_zero() {
        load.publish(config.duration, config.rate, config.window)
            .map_err(io_error)?;
        publish_time = publish_start.elapsed();
        harness_cpu = os::own_cpu_time() - harness_cpu_before;
        load.drain().map_err(io_error)?;
    }
    let mut processes = Vec::with_capacity(server.probes.len());
    for (probe, before) in server.probes.iter().zip(cpu_before) {
        let cpu_secs = if probe.process.exited() {
            None
        } else {
            Some(probe_cpu(&probe.process)? - before)
        };
        processes.push(ProcessCpu {
            name: probe.name.clone(),
            pid: probe.process.pid(),
            server: probe.server,
            cpu_secs,
        });
    }

    let tally = load.tally();
    let targets = server
        .urls
        .iter()
        .zip(&load.counts().targets)
        .zip(tally.target_latency_us())
        .map(|((url, counts), histogram)| TargetReport {
            url: format!("ws://{}{}", url.host, url.path),
            clients: counts.clients,
            connected: counts.connected,
            deliveries: histogram.len(),
            latency: latency(histogram),
        })
        .collect();
    Ok(Report {
        server: server.description.clone(),
        protocol: config.protocol.clone(),
        clients: config.clients,
        publishers: config.publishers,
        rate: config.rate,
        window: config.window,
        size: config.size,
        duration: config.duration,
        connect_time,
        rss_per_idle_conn_kib,
        published: load.published(),
        open_publishers: load.open_publishers(),
        deliveries: tally.deliveries(),
        duplicates: tally.duplicates(),
        out_of_order: tally.out_of_order(),
        malformed: tally.malformed(),
        error_replies: tally.error_replies(),
        delivery_time: Duration::from_nanos(
            tally.last_delivery_ns().saturating_sub(publish_start_ns),
        ),
        latency: latency(&tally.latency_us()),
        processes,
        harness_cpu,
        publish_time,
        targets,
        counts: load.into_counts(),
    })
}

/// Percentiles of `histogram` (microseconds), `None` when it is empty.
fn latency(histogram: &Histogram<u64>) -> Option<Latency> {
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1_000.0;
    (!histogram.is_empty()).then(|| Latency {
        p50: ms(0.50),
        p90: ms(0.90),
        p99: ms(0.99),
        max: histogram.max() as f64 / 1_000.0,
    })
}

fn probe_rss(probe: &ProcessProbe) -> Result<u64, String> {
    probe
        .rss_kib()
        .map_err(|err| format!("could not read the memory of pid {}: {err}", probe.pid()))
}

fn probe_cpu(probe: &ProcessProbe) -> Result<f64, String> {
    probe
        .cpu_seconds()
        .map_err(|err| format!("could not read the CPU time of pid {}: {err}", probe.pid()))
}
