//! *churn*: while `--conns` connections are held in the broadcast room, workers
//! open more at `--churn-rate` per second in total for `--duration`, each with a
//! fresh user and JWT (Herald; the peers have no authentication), wait until it
//! has joined the room, and close it at once. Reports connects per second and
//! connect-to-joined latency: the cost of a deploy's or a flaky network's
//! reconnect wave, handshake and auth included.
//!
//! The scenario's rooms are the broadcast plan's; the driving is in
//! `coordinator::churn` and `worker::churn`.

/// Ids of churned connections start here, past any held connection, so every
/// churned connection is a user of its own (no per-user limit is hit).
pub const FIRST_ID: usize = 1_000_000_000;

/// Ids reserved per worker, so workers never reuse each other's ids.
pub const IDS_PER_WORKER: usize = 100_000_000;
