//! The numbers a run produces, printed for people or as one JSON object.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Protocol;
use crate::load::ConnCounts;

pub struct Report {
    /// What was measured: the spawned binary or the URLs.
    pub server: String,
    /// What the clients spoke: raw broadcast or events in one room.
    pub protocol: Protocol,
    pub clients: usize,
    pub publishers: usize,
    pub rate: u64,
    pub window: u32,
    pub size: usize,
    pub duration: Duration,
    /// From the first connect to the last upgrade.
    pub connect_time: Duration,
    pub counts: ConnCounts,
    /// (server RSS with all clients connected and idle − before) / clients; needs the pid.
    pub rss_per_idle_conn_kib: Option<f64>,
    pub published: u64,
    /// Publishers still connected at the end; fewer than `publishers` means the server closed
    /// some, and with none left publishing stopped early.
    pub open_publishers: usize,
    /// Distinct messages received, each client's copy counted once.
    pub deliveries: u64,
    /// Messages a client received again right after itself; anything but 0 fails the run.
    pub duplicates: u64,
    /// Messages older than the last one their client had from the same publisher.
    pub out_of_order: u64,
    /// Received lines that were not this harness's messages; anything but 0 is suspect.
    pub malformed: u64,
    /// With `--room`, error replies the clients got (publishes refused); anything but 0 is
    /// suspect.
    pub error_replies: u64,
    /// From the first publish to the last delivery: the denominator of deliveries/s.
    pub delivery_time: Duration,
    pub latency: Option<Latency>,
    /// CPU time over publishing and draining of every process with a known pid: the servers',
    /// then the watched ones.
    pub processes: Vec<ProcessCpu>,
    /// Per URL, in `--url` order.
    pub targets: Vec<TargetReport>,
    /// The harness's own CPU time while publishing, against `publish_time`: near 100 % would mean
    /// the harness, not the server, set the pace.
    pub harness_cpu: Duration,
    pub publish_time: Duration,
}

/// One observed process's CPU time over publishing and draining.
pub struct ProcessCpu {
    /// `server`, or the `--watch-pid` name.
    pub name: String,
    pub pid: u32,
    /// Whether it is one of the hub's servers, whose CPU times add up to the server's.
    pub server: bool,
    /// `None` when it exited during the run: a server's clients' closes then say nothing about
    /// its speed.
    pub cpu_secs: Option<f64>,
}

/// How the clients of one URL fared.
pub struct TargetReport {
    pub url: String,
    /// Clients sent to this URL (publishers all go to the first).
    pub clients: usize,
    pub connected: usize,
    pub deliveries: u64,
    pub latency: Option<Latency>,
}

/// Delivery latency percentiles, in milliseconds.
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Report {
    /// Every published message should reach every client, the publishers included.
    fn expected(&self) -> u64 {
        self.published * self.clients as u64
    }

    fn delivery_ratio(&self) -> Option<f64> {
        ratio(self.deliveries, self.expected())
    }

    /// The servers' CPU time together; `None` without a server pid or if one exited.
    fn server_cpu_secs(&self) -> Option<f64> {
        let mut servers = self.processes.iter().filter(|process| process.server);
        let first = servers.next()?.cpu_secs?;
        servers.try_fold(first, |total, process| Some(total + process.cpu_secs?))
    }

    fn server_exited(&self) -> bool {
        self.processes
            .iter()
            .any(|process| process.server && process.cpu_secs.is_none())
    }

    /// CPU time per delivery, in microseconds: what one delivery costs, comparable between runs
    /// of different sizes and between one instance and several.
    fn us_per_delivery(&self, cpu_secs: f64) -> Option<f64> {
        (self.deliveries > 0).then(|| cpu_secs * 1e6 / self.deliveries as f64)
    }

    fn deliveries_per_sec(&self) -> f64 {
        if self.delivery_time.is_zero() {
            0.0
        } else {
            self.deliveries as f64 / self.delivery_time.as_secs_f64()
        }
    }

    fn harness_cpu_share(&self) -> Option<f64> {
        (!self.publish_time.is_zero())
            .then(|| self.harness_cpu.as_secs_f64() / self.publish_time.as_secs_f64())
    }

    pub fn print_text(&self) {
        let rate = match self.rate {
            _ if self.publishers == 0 || self.duration.is_zero() => "no publishing".to_owned(),
            0 => format!("saturation (window {})", self.window),
            rate => format!("{rate} msg/s"),
        };
        println!("fanout against {}", self.server);
        let mode = match &self.protocol {
            Protocol::Raw => "raw (every message broadcast to every client)".to_owned(),
            Protocol::Events { room } => {
                format!("events, every client in room {room:?} (messages as room events)")
            }
        };
        println!("  mode         {mode}");
        println!(
            "  load         {} clients, {} publishers, {rate}, {} B messages, {:.1} s",
            self.clients,
            self.publishers,
            self.size,
            self.duration.as_secs_f64()
        );
        println!(
            "  connect      {} connected in {:.2} s, {} failed{}",
            self.counts.connected,
            self.connect_time.as_secs_f64(),
            self.counts.connect_failed,
            self.counts
                .first_error
                .as_ref()
                .map(|err| format!(" (first error: {err})"))
                .unwrap_or_default()
        );
        if let Some(kib) = self.rss_per_idle_conn_kib {
            println!("  memory       {kib:.2} KiB server RSS per idle connection");
        }
        if self.publish_time.is_zero() {
            return;
        }
        println!(
            "  delivered    {} of {} ({}) from {} published by {} publishers, {} still connected",
            self.deliveries,
            self.expected(),
            percent(self.delivery_ratio()),
            self.published,
            self.publishers,
            self.open_publishers
        );
        println!(
            "  throughput   {:.3} M deliveries/s, {:.1} MB/s of messages",
            self.deliveries_per_sec() / 1e6,
            self.deliveries_per_sec() * self.size as f64 / 1e6
        );
        if self.targets.len() > 1 {
            for (index, target) in self.targets.iter().enumerate() {
                let expected = self.published * target.clients as u64;
                let latency = target
                    .latency
                    .as_ref()
                    .map(|latency| {
                        format!(", p50 {:.2} ms, p99 {:.2} ms", latency.p50, latency.p99)
                    })
                    .unwrap_or_default();
                println!(
                    "  instance {:<4}{}: {} clients ({} connected), {} of {} delivered ({}){latency}",
                    index + 1,
                    target.url,
                    target.clients,
                    target.connected,
                    target.deliveries,
                    expected,
                    percent(ratio(target.deliveries, expected))
                );
            }
        }
        println!(
            "  closed       {} clients closed by the server, {} protocol errors, {} malformed lines",
            self.counts.closed_by_server, self.counts.protocol_errors, self.malformed
        );
        if let Protocol::Events { .. } = self.protocol {
            println!(
                "  refused      {} error replies from the server",
                self.error_replies
            );
        }
        println!(
            "  order        {} duplicates, {} out of order",
            self.duplicates, self.out_of_order
        );
        if let Some(latency) = &self.latency {
            println!(
                "  latency      p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                latency.p50, latency.p90, latency.p99, latency.max
            );
        }
        for process in &self.processes {
            match process.cpu_secs {
                Some(cpu) => println!(
                    "  {:<13}{}",
                    format!("{} cpu", process.name),
                    self.cpu_text(cpu, &format!("pid {}", process.pid))
                ),
                None => println!(
                    "  {:<13}EXITED during the run (pid {})",
                    process.name, process.pid
                ),
            }
        }
        let servers = self
            .processes
            .iter()
            .filter(|process| process.server)
            .count();
        if let Some(cpu) = self.server_cpu_secs().filter(|_| servers > 1) {
            println!(
                "  servers cpu  {}",
                self.cpu_text(cpu, &format!("{servers} processes"))
            );
        }
        println!(
            "  harness cpu  {:.2} s over {:.2} s of publishing ({:.0} % of its core)",
            self.harness_cpu.as_secs_f64(),
            self.publish_time.as_secs_f64(),
            self.harness_cpu_share().unwrap_or(0.0) * 100.0
        );
    }

    fn cpu_text(&self, cpu_secs: f64, whose: &str) -> String {
        match self.us_per_delivery(cpu_secs) {
            Some(us) => format!("{cpu_secs:.2} s, {us:.3} µs per delivery ({whose})"),
            None => format!("{cpu_secs:.2} s ({whose})"),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "server": self.server,
            "protocol": self.protocol.server_flag(),
            "room": match &self.protocol {
                Protocol::Raw => None,
                Protocol::Events { room } => Some(room),
            },
            "clients": self.clients,
            "publishers": self.publishers,
            "rate": self.rate,
            "window": self.window,
            "size": self.size,
            "duration_secs": self.duration.as_secs_f64(),
            "connect_secs": self.connect_time.as_secs_f64(),
            "connected": self.counts.connected,
            "connect_failed": self.counts.connect_failed,
            "first_error": self.counts.first_error,
            "rss_per_idle_conn_kib": self.rss_per_idle_conn_kib,
            "published": self.published,
            "open_publishers": self.open_publishers,
            "deliveries": self.deliveries,
            "expected_deliveries": self.expected(),
            "delivery_ratio": self.delivery_ratio(),
            "deliveries_per_sec": self.deliveries_per_sec(),
            "delivered_bytes_per_sec": self.deliveries_per_sec() * self.size as f64,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "targets": self.targets.iter().map(|target| json!({
                "url": target.url,
                "clients": target.clients,
                "connected": target.connected,
                "deliveries": target.deliveries,
                "expected_deliveries": self.published * target.clients as u64,
                "latency_ms": target.latency.as_ref().map(Latency::to_json),
            })).collect::<Vec<_>>(),
            "closed_by_server": self.counts.closed_by_server,
            "protocol_errors": self.counts.protocol_errors,
            "malformed_lines": self.malformed,
            "error_replies": self.error_replies,
            "latency_ms": self.latency.as_ref().map(Latency::to_json),
            "server_cpu_secs": self.server_cpu_secs(),
            "server_cpu_us_per_delivery":
                self.server_cpu_secs().and_then(|cpu| self.us_per_delivery(cpu)),
            "server_exited": self.server_exited(),
            "processes": self.processes.iter().map(|process| json!({
                "name": process.name,
                "pid": process.pid,
                "role": if process.server { "server" } else { "watched" },
                "cpu_secs": process.cpu_secs,
                "cpu_us_per_delivery":
                    process.cpu_secs.and_then(|cpu| self.us_per_delivery(cpu)),
                "exited": process.cpu_secs.is_none(),
            })).collect::<Vec<_>>(),
            "harness_cpu_secs": self.harness_cpu.as_secs_f64(),
            "publish_wall_secs": self.publish_time.as_secs_f64(),
            "harness_cpu_share": self.harness_cpu_share(),
        })
    }
}

impl Latency {
    fn to_json(&self) -> Value {
        json!({
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.max,
        })
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn percent(ratio: Option<f64>) -> String {
    ratio
        .map(|ratio| format!("{:.2} %", ratio * 100.0))
        .unwrap_or_else(|| "-".into())
}
