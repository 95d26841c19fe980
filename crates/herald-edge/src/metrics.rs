//! Prometheus metrics, rendered as text at `/metrics`.
//!
//! Hot counters are plain relaxed atomics, bumped once per NATS message (never
//! once per recipient: the fan-out adds its recipient count in one go). Labelled
//! counters that change rarely (auth failures by reason, errors by code) sit
//! behind a mutex.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the RPC latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// All of the edge's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open, authenticated WebSocket connections.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Rooms with at least one local member.
    pub rooms: AtomicI64,
    /// Live NATS subscriptions held for rooms.
    pub nats_subscriptions: AtomicI64,
    /// Durable events received from NATS.
    pub events_in_durable: AtomicU64,
    /// Volatile events received from NATS.
    pub events_in_volatile: AtomicU64,
    /// Durable events dropped as already delivered (duplicates).
    pub events_duplicate: AtomicU64,
    /// Event frames queued to clients (one per recipient).
    pub events_out: AtomicU64,
    /// Gaps that could not be filled (events lost to retention).
    pub gaps_unfillable: AtomicU64,
    /// Presence entry writes (creates, updates, removals) to KV.
    pub presence_writes: AtomicU64,
    /// Presence heartbeat writes to KV.
    pub presence_heartbeats: AtomicU64,
    /// Presence writes retried because another edge wrote the key first.
    pub presence_conflicts: AtomicU64,
    /// Presence writes that failed (NATS away); they are retried.
    pub presence_errors: AtomicU64,
    /// `presence_join`/`presence_leave` announcements published.
    pub presence_announcements: AtomicU64,
    /// Presence entries cleaned of edges that stopped heartbeating.
    pub presence_swept: AtomicU64,
    /// Range reads actually sent to the stream for resumes (shared reads count once).
    pub catchup_reads: AtomicU64,
    /// Events read back from the stream for resumes.
    pub catchup_events: AtomicU64,
    /// Connections closed with 4008.
    pub slow_consumer_disconnects: AtomicU64,
    /// NATS slow-consumer notices (messages dropped in the client).
    pub nats_slow_consumer: AtomicU64,
    /// 1 while NATS is connected.
    pub nats_connected: AtomicI64,
    /// `emit` round trips.
    pub rpc_latency: Histogram,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    requests: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    closes: Mutex<BTreeMap<u16, u64>>,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    if let Ok(mut m) = m.lock() {
        *m.entry(k).or_default() += 1;
    }
}

impl Metrics {
    /// Counts a refused authentication by reason.
    pub fn auth_failure(&self, reason: &'static str) {
        bump(&self.auth_failures, reason);
    }
    /// Counts a client request by frame type.
    pub fn request(&self, kind: &'static str) {
        bump(&self.requests, kind);
    }
    /// Counts an error frame by code.
    pub fn error(&self, code: &'static str) {
        bump(&self.errors, code);
    }
    /// Counts a close by code.
    pub fn close(&self, code: u16) {
        bump(&self.closes, code);
    }

    /// Renders the Prometheus text format.
    pub fn render(&self, edge: &str) -> String {
        let mut o = String::with_capacity(4096);
        let gauge = |o: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP herald_edge_info Edge identity.\n# TYPE herald_edge_info gauge\nherald_edge_info{{edge=\"{edge}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        gauge(
            &mut o,
            "herald_connections",
            "Open authenticated WebSocket connections.",
            self.connections.load(Relaxed),
        );
        counter(
            &mut o,
            "herald_connections_total",
            "Connections authenticated since start.",
            self.connections_total.load(Relaxed),
        );
        gauge(
            &mut o,
            "herald_rooms",
            "Rooms with at least one local member.",
            self.rooms.load(Relaxed),
        );
        gauge(
            &mut o,
            "herald_nats_subscriptions",
            "NATS subscriptions held for rooms.",
            self.nats_subscriptions.load(Relaxed),
        );
        gauge(
            &mut o,
            "herald_nats_connected",
            "1 while connected to NATS.",
            self.nats_connected.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP herald_events_in_total Events received from NATS.\n# TYPE herald_events_in_total counter"
        );
        let _ = writeln!(
            o,
            "herald_events_in_total{{kind=\"durable\"}} {}",
            self.events_in_durable.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "herald_events_in_total{{kind=\"volatile\"}} {}",
            self.events_in_volatile.load(Relaxed)
        );
        counter(
            &mut o,
            "herald_events_duplicate_total",
            "Durable events dropped as already delivered.",
            self.events_duplicate.load(Relaxed),
        );
        counter(
            &mut o,
            "herald_events_out_total",
            "Event frames queued to clients.",
            self.events_out.load(Relaxed),
        );
        counter(
            &mut o,
            "herald_catchup_events_total",
            "Events read back from the stream for resumes.",
            self.catchup_events.load(Relaxed),
        );
        counter(
            &mut o,
            "herald_gaps_unfillable_total",
            "Gaps that could not be filled: events lost to retention.",
            self.gaps_unfillable.load(Relaxed),
        );
        for (name, help, v) in [
            (
                "herald_presence_writes_total",
                "Presence entry writes to KV (joins and leaves only).",
                &self.presence_writes,
            ),
            (
                "herald_presence_heartbeats_total",
                "Presence heartbeat writes to KV (one per interval per edge).",
                &self.presence_heartbeats,
            ),
            (
                "herald_presence_conflicts_total",
                "Presence writes retried because another edge wrote the key first.",
                &self.presence_conflicts,
            ),
            (
                "herald_presence_errors_total",
                "Presence writes that failed and were retried.",
                &self.presence_errors,
            ),
            (
                "herald_presence_announcements_total",
                "presence_join and presence_leave announcements published by this edge.",
                &self.presence_announcements,
            ),
            (
                "herald_presence_swept_total",
                "Presence entries cleaned of edges that stopped heartbeating.",
                &self.presence_swept,
            ),
        ] {
            counter(&mut o, name, help, v.load(Relaxed));
        }
        counter(
            &mut o,
            "herald_catchup_reads_total",
            "Range reads sent to the stream for resumes (concurrent identical reads share one).",
            self.catchup_reads.load(Relaxed),
        );
        counter(
            &mut o,
            "herald_slow_consumer_disconnects_total",
            "Connections closed with 4008.",
            self.slow_consumer_disconnects.load(Relaxed),
        );
        counter(
            &mut o,
            "herald_nats_slow_consumer_total",
            "NATS client slow-consumer notices.",
            self.nats_slow_consumer.load(Relaxed),
        );
        let labelled = |o: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        m: &Mutex<BTreeMap<&'static str, u64>>| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Ok(m) = m.lock() {
                for (k, v) in m.iter() {
                    let _ = writeln!(o, "{name}{{{label}=\"{k}\"}} {v}");
                }
            }
        };
        labelled(
            &mut o,
            "herald_auth_failures_total",
            "Refused authentications by reason.",
            "reason",
            &self.auth_failures,
        );
        labelled(
            &mut o,
            "herald_requests_total",
            "Client requests by frame type.",
            "type",
            &self.requests,
        );
        labelled(
            &mut o,
            "herald_errors_total",
            "Error frames sent by code.",
            "code",
            &self.errors,
        );
        let _ = writeln!(
            o,
            "# HELP herald_closes_total Connections closed by the edge, by close code.\n# TYPE herald_closes_total counter"
        );
        if let Ok(m) = self.closes.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(o, "herald_closes_total{{code=\"{k}\"}} {v}");
            }
        }
        self.rpc_latency.render(
            &mut o,
            "herald_rpc_latency_seconds",
            "Time from an emit to the service's reply.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.connections.fetch_add(2, Relaxed);
        m.auth_failure("expired");
        m.rpc_latency.observe(Duration::from_millis(3));
        let t = m.render("e1");
        assert!(t.contains("herald_connections 2"));
        assert!(t.contains("herald_auth_failures_total{reason=\"expired\"} 1"));
        assert!(t.contains("herald_rpc_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(t.contains("herald_rpc_latency_seconds_count 1"));
        assert!(t.contains("herald_gaps_unfillable_total 0"));
        assert!(t.contains("herald_catchup_reads_total 0"));
    }
}
