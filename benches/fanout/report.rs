//! The numbers a run produces, printed for people or as one JSON object.

use std::time::Duration;

use serde_json::{Value, json};

use crate::load::ConnCounts;

pub struct Report {
    /// What was measured: the spawned binary or the URL.
    pub server: String,
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
    pub deliveries: u64,
    /// Received lines that were not this harness's messages; anything but 0 is suspect.
    pub malformed: u64,
    /// From the first publish to the last delivery: the denominator of deliveries/s.
    pub delivery_time: Duration,
    pub latency: Option<Latency>,
    /// Server CPU time over publishing and draining; needs the pid.
    pub server_cpu_secs: Option<f64>,
    /// The server died during the run: its clients' closes say nothing about its speed.
    pub server_exited: bool,
    /// The harness's own CPU time while publishing, against `publish_time`: near 100 % would mean
    /// the harness, not the server, set the pace.
    pub harness_cpu: Duration,
    pub publish_time: Duration,
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
        (self.expected() > 0).then(|| self.deliveries as f64 / self.expected() as f64)
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
            self.delivery_ratio()
                .map(|ratio| format!("{:.2} %", ratio * 100.0))
                .unwrap_or_else(|| "-".into()),
            self.published,
            self.publishers,
            self.open_publishers
        );
        println!(
            "  throughput   {:.3} M deliveries/s, {:.1} MB/s of messages",
            self.deliveries_per_sec() / 1e6,
            self.deliveries_per_sec() * self.size as f64 / 1e6
        );
        println!(
            "  closed       {} clients closed by the server, {} protocol errors, {} malformed lines",
            self.counts.closed_by_server, self.counts.protocol_errors, self.malformed
        );
        if let Some(latency) = &self.latency {
            println!(
                "  latency      p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                latency.p50, latency.p90, latency.p99, latency.max
            );
        }
        if let Some(cpu) = self.server_cpu_secs {
            println!("  server cpu   {cpu:.2} s");
        }
        if self.server_exited {
            println!("  server       EXITED during the run");
        }
        println!(
            "  harness cpu  {:.2} s over {:.2} s of publishing ({:.0} % of its core)",
            self.harness_cpu.as_secs_f64(),
            self.publish_time.as_secs_f64(),
            self.harness_cpu_share().unwrap_or(0.0) * 100.0
        );
    }

    pub fn to_json(&self) -> Value {
        json!({
            "server": self.server,
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
            "closed_by_server": self.counts.closed_by_server,
            "protocol_errors": self.counts.protocol_errors,
            "malformed_lines": self.malformed,
            "latency_ms": self.latency.as_ref().map(|latency| json!({
                "p50": latency.p50,
                "p90": latency.p90,
                "p99": latency.p99,
                "max": latency.max,
            })),
            "server_cpu_secs": self.server_cpu_secs,
            "server_exited": self.server_exited,
            "harness_cpu_secs": self.harness_cpu.as_secs_f64(),
            "publish_wall_secs": self.publish_time.as_secs_f64(),
            "harness_cpu_share": self.harness_cpu_share(),
        })
    }
}
