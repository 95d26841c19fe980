//! The coordinator ↔ worker conversation: JSON lines over the worker's stdin and
//! stdout (its stderr carries its logs).
//!
//! ```text
//! coordinator                         worker
//!   WorkerConfig  ──────────────────►   opens its connections, joins
//!                 ◄──────────────────   Ready {joined, failed, connect latency}
//!   Begin {from}  ──────────────────►   resets its counters for seqs ≥ from
//!                 ◄──────────────────   Began
//!   (events published)
//!   End {to}      ──────────────────►   waits until every connection has every
//!                                       expected seq < to (or the drain timeout)
//!                 ◄──────────────────   Phase (histogram, lost, duplicates…)
//!   Sample        ──────────────────►   (idle) reports how many are still open
//!   Drop / Resume ──────────────────►   (reconnect storm) close all; reconnect
//!                                       with cursors and report once caught up
//!   Churn         ──────────────────►   open+join+close at a rate; Churned
//!   stdin closed  ──────────────────►   closes everything and exits
//! ```
//!
//! A line protocol over pipes keeps workers plain child processes: no ports, and
//! a worker exits by itself when its coordinator dies (stdin reaches EOF).

use crate::scenarios::Plan;
use crate::targets::TargetKind;
use serde::{Deserialize, Serialize};

/// Everything a worker needs, sent as its first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Index of this worker (logs only).
    pub worker: usize,
    /// Which client protocol to speak.
    pub target: TargetKind,
    /// Base URLs of the target's nodes; connection `i` uses `endpoints[i % len]`.
    pub endpoints: Vec<String>,
    /// First global connection index this worker owns.
    pub first_conn: usize,
    /// How many connections this worker owns.
    pub conns: usize,
    /// Rooms and event schedule of the scenario.
    pub plan: Plan,
    /// HS256 secret to sign tokens with (Herald only).
    pub secret: Option<String>,
    /// Handshakes in flight at once in this worker.
    pub connect_concurrency: usize,
}

/// Coordinator → worker, after the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ToWorker {
    /// A measured phase starts with sequence `from`: reset counters.
    Begin {
        /// First sequence of the phase.
        from: u64,
    },
    /// The phase's events were `[from, to)`; report once all arrived or after
    /// `drain_ms`.
    End {
        /// One past the last sequence published.
        to: u64,
        /// How long to wait for stragglers.
        drain_ms: u64,
    },
    /// Report how many connections are still open.
    Sample,
    /// Close every connection (reconnect storm); answer `Dropped` when all are closed.
    Drop,
    /// Reconnect every connection from its saved cursor, then report the phase
    /// `[from, to)` once complete or after `timeout_ms`.
    Resume {
        /// First sequence published while the connections were away.
        from: u64,
        /// One past the last.
        to: u64,
        /// How long to wait for everything missed.
        timeout_ms: u64,
    },
    /// Open and close connections at `rate` per second for `duration_ms`.
    Churn {
        /// Connections per second from this worker.
        rate: f64,
        /// How long.
        duration_ms: u64,
        /// First connection (and user) id to use; ids are never reused.
        first_id: usize,
    },
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromWorker {
    /// Every connection attempt finished.
    Ready {
        /// Connections joined to all their rooms.
        joined: usize,
        /// Connections that failed to connect or join.
        failed: usize,
        /// The first few failure messages.
        errors: Vec<String>,
        /// Connect-to-joined latency histogram, microseconds, as (value, count).
        connect_us: Vec<(u64, u64)>,
    },
    /// Counters reset for the phase.
    Began,
    /// Results of one phase.
    Phase(PhaseReport),
    /// Answer to [`ToWorker::Sample`].
    Open {
        /// Connections still open.
        open: usize,
    },
    /// Every connection is closed.
    Dropped,
    /// Results of [`ToWorker::Churn`].
    Churned {
        /// Connections that joined (then closed).
        ok: usize,
        /// Connections that failed.
        failed: usize,
        /// The first few failures.
        errors: Vec<String>,
        /// Connect-to-joined latency, microseconds, as (value, count).
        connect_us: Vec<(u64, u64)>,
    },
}

/// One worker's results for one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Events received with a sequence in the phase (duplicates included).
    pub deliveries: u64,
    /// Deliveries the schedule called for.
    pub expected: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries of a sequence the connection already had.
    pub duplicates: u64,
    /// Deliveries of a sequence the connection should not get (wrong room).
    pub unexpected: u64,
    /// Connections closed by the server or the network during the run.
    pub disconnected: usize,
    /// Receive time of the first and last delivery (ns since the epoch).
    pub first_recv_ns: u64,
    /// See `first_recv_ns`.
    pub last_recv_ns: u64,
    /// End-to-end latency, microseconds, as (value, count).
    pub latency_us: Vec<(u64, u64)>,
    /// Reconnections that failed (reconnect storm).
    pub failed: usize,
    /// The first few of their errors.
    pub errors: Vec<String>,
}
