//! Example services for Herald, built on `herald-publish`. Each is a library
//! function (so the tests can run it against real processes) and a small binary in
//! `src/bin/` that runs it against `herald dev`:
//!
//! - [`chat`]: answers `emit("message:send")`, stores the message and broadcasts it.
//! - [`membership`]: an authorizer backed by an in-memory membership table that
//!   publishes on every change of the table (and steers connections).
#![deny(missing_docs)]

pub mod chat;
pub mod membership;

/// The NATS URL from `NATS_URL`, or `nats://127.0.0.1:4222` (what `herald dev` starts).
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The subject prefix from `HERALD_SUBJECT_PREFIX`, or `herald`.
pub fn prefix() -> String {
    std::env::var("HERALD_SUBJECT_PREFIX").unwrap_or_else(|_| "herald".into())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
