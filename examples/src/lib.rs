//! Example services for Herald, built on `herald-publish`. Each is a library
//! function (so the tests can run it against real processes) and a small binary in
//! `src/bin/` that runs it against `herald dev`:
//!
//! - [`chat`]: answers `emit("message:send")`, stores the message and broadcasts it.
//! - [`membership`]: an authorizer backed by an in-memory membership table that
//!   publishes on every change of the table (and steers connections).
//! - [`tasks`]: a tasks service that publishes a typed, idempotent event on every
//!   create, update and delete.
#![deny(missing_docs)]

pub mod chat;
pub mod membership;
pub mod tasks;

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

/// The TypeScript module for the examples' event catalogs: an `export type` per
/// payload, and `ServerEvents`, the event map for `new Herald<ServerEvents>(…)`.
/// `examples/ts/events.d.ts` holds its output (checked by a test).
pub fn catalog_ts() -> String {
    use herald_publish::ts::TsCatalog;
    TsCatalog::new("ServerEvents")
        .event::<chat::MessageNew>()
        .event::<membership::MemberAdded>()
        .event::<membership::MemberRemoved>()
        .event::<tasks::TaskCreated>()
        .event::<tasks::TaskUpdated>()
        .event::<tasks::TaskDeleted>()
        .event::<tasks::TaskAssigned>()
        .render()
}
