//! Counters for `/metrics`, rendered in the Prometheus text format (SPEC §7).
//!
//! Plain integers owned by the loop: no atomics, no registry. Gauges that the loop can read off
//! its own state (connections, rooms, users) are passed in at render time instead of tracked.

use std::fmt::Write;

/// Why an HTTP request on the WebSocket path (or a connection before its upgrade) failed; the
/// `reason` label of `wshub_handshake_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    Malformed,
    HeaderTooLarge,
    UpgradeRequired,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    /// The client's address holds `--max-connections-per-ip` WebSocket connections (429).
    AddressLimit,
    AtCapacity,
    Timeout,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::Malformed,
        HandshakeFailure::HeaderTooLarge,
        HandshakeFailure::UpgradeRequired,
        HandshakeFailure::MethodNotAllowed,
        HandshakeFailure::Unauthorized,
        HandshakeFailure::Forbidden,
        HandshakeFailure::AddressLimit,
        HandshakeFailure::AtCapacity,
        HandshakeFailure::Timeout,
    ];

    /// The failure an error status on the WebSocket path stands for.
    pub fn from_status(status: u16) -> HandshakeFailure {
        match status {
            401 => HandshakeFailure::Unauthorized,
            403 => HandshakeFailure::Forbidden,
            405 => HandshakeFailure::MethodNotAllowed,
            426 => HandshakeFailure::UpgradeRequired,
            429 => HandshakeFailure::AddressLimit,
            431 => HandshakeFailure::HeaderTooLarge,
            503 => HandshakeFailure::AtCapacity,
            _ => HandshakeFailure::Malformed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Malformed => "malformed",
            HandshakeFailure::HeaderTooLarge => "header_too_large",
            HandshakeFailure::UpgradeRequired => "upgrade_required",
            HandshakeFailure::MethodNotAllowed => "method_not_allowed",
            HandshakeFailure::Unauthorized => "unauthorized",
            HandshakeFailure::Forbidden => "forbidden",
            HandshakeFailure::AddressLimit => "address_limit",
            HandshakeFailure::AtCapacity => "at_capacity",
            HandshakeFailure::Timeout => "timeout",
        }
    }
}

/// Values read off the loop's state when `/metrics` is rendered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub connections: usize,
    pub rooms: usize,
    pub users: usize,
    /// Bytes queued for all connections together (bounded by `--max-output-memory`).
    pub output_bytes: usize,
    /// What room history holds in this process (0 with `--redis`, where Redis holds it).
    pub history_bytes: usize,
    /// With `--redis`: whether Redis is usable, and its counters.
    pub redis: Option<(bool, crate::redis::Stats)>,
}

/// Monotonic counters since start-up.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// WebSocket upgrades accepted.
    pub connections_total: u64,
    /// Failed handshakes, indexed like [`HandshakeFailure::ALL`].
    handshake_failures: [u64; HandshakeFailure::ALL.len()],
    /// Text and binary messages read from clients (control frames excluded).
    pub messages_received: u64,
    /// Messages queued to recipients: one per recipient of each fan-out.
    pub messages_delivered: u64,
    /// Bytes read from client sockets.
    pub bytes_received: u64,
    /// Bytes written to client sockets.
    pub bytes_sent: u64,
    /// Connections closed for exceeding `--max-buffered`.
    pub slow_consumer_disconnects: u64,
}

impl Metrics {
    pub fn handshake_failed(&mut self, failure: HandshakeFailure) {
        if let Some(index) = HandshakeFailure::ALL.iter().position(|f| *f == failure) {
            self.handshake_failures[index] += 1;
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let mut series = |name: &str, kind: &str, help: &str, value: u64| {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        series(
            "wshub_connections",
            "gauge",
            "Open WebSocket connections.",
            gauges.connections as u64,
        );
        series(
            "wshub_connections_total",
            "counter",
            "WebSocket upgrades accepted.",
            self.connections_total,
        );
        series(
            "wshub_messages_received_total",
            "counter",
            "Messages received from clients.",
            self.messages_received,
        );
        series(
            "wshub_messages_delivered_total",
            "counter",
            "Messages queued to recipients.",
            self.messages_delivered,
        );
        series(
            "wshub_bytes_received_total",
            "counter",
            "Bytes read from client sockets.",
            self.bytes_received,
        );
        series(
            "wshub_bytes_sent_total",
            "counter",
            "Bytes written to client sockets.",
            self.bytes_sent,
        );
        series(
            "wshub_slow_consumer_disconnects_total",
            "counter",
            "Connections closed for exceeding --max-buffered.",
            self.slow_consumer_disconnects,
        );
        series(
            "wshub_rooms",
            "gauge",
            "Rooms with at least one member.",
            gauges.rooms as u64,
        );
        series(
            "wshub_users",
            "gauge",
            "Distinct users online.",
            gauges.users as u64,
        );
        series(
            "wshub_output_buffered_bytes",
            "gauge",
            "Bytes queued for all connections together.",
            gauges.output_bytes as u64,
        );
        series(
            "wshub_history_bytes",
            "gauge",
            "Bytes room history holds in this process: kept messages and their rooms.",
            gauges.history_bytes as u64,
        );
        if let Some((up, redis)) = gauges.redis {
            series(
                "wshub_redis_up",
                "gauge",
                "1 while Redis is usable, 0 while this instance serves only its own clients.",
                u64::from(up),
            );
            series(
                "wshub_redis_published_total",
                "counter",
                "Events published to Redis.",
                redis.published,
            );
            series(
                "wshub_redis_received_total",
                "counter",
                "Events received from Redis subscriptions.",
                redis.received,
            );
            series(
                "wshub_redis_reconnects_total",
                "counter",
                "Times Redis became usable again after a failure.",
                redis.reconnects,
            );
            series(
                "wshub_redis_errors_total",
                "counter",
                "Redis failures: lost connections, errors, unreadable replies, timeouts.",
                redis.errors,
            );
            series(
                "wshub_redis_local_only_total",
                "counter",
                "Events delivered only to this instance's clients because Redis was unusable.",
                redis.local_only,
            );
        }
        out.push_str(
            "# HELP wshub_handshake_failures_total Failed WebSocket handshakes by reason.\n",
        );
        out.push_str("# TYPE wshub_handshake_failures_total counter\n");
        for (failure, count) in HandshakeFailure::ALL.iter().zip(self.handshake_failures) {
            let _ = writeln!(
                out,
                "wshub_handshake_failures_total{{reason=\"{}\"}} {count}",
                failure.label()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_spec_series_with_values() {
        let mut metrics = Metrics {
            connections_total: 3,
            messages_delivered: 12,
            ..Metrics::default()
        };
        metrics.handshake_failed(HandshakeFailure::from_status(403));
        metrics.handshake_failed(HandshakeFailure::from_status(400));
        let text = metrics.render(Gauges {
            connections: 2,
            rooms: 1,
            users: 2,
            output_bytes: 640,
            history_bytes: 4096,
            redis: Some((
                true,
                crate::redis::Stats {
                    published: 5,
                    ..crate::redis::Stats::default()
                },
            )),
        });
        for line in [
            "wshub_connections 2",
            "wshub_connections_total 3",
            "wshub_messages_delivered_total 12",
            "wshub_rooms 1",
            "wshub_users 2",
            "wshub_output_buffered_bytes 640",
            "wshub_history_bytes 4096",
            "wshub_handshake_failures_total{reason=\"forbidden\"} 1",
            "wshub_handshake_failures_total{reason=\"malformed\"} 1",
            "wshub_slow_consumer_disconnects_total 0",
            "wshub_bytes_sent_total 0",
            "wshub_bytes_received_total 0",
            "wshub_messages_received_total 0",
            "wshub_redis_up 1",
            "wshub_redis_published_total 5",
            "wshub_redis_local_only_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
