//! The producer side of Herald for Rust services.
//!
//! - [`Publisher`]: durable events to rooms and users, acknowledged by JetStream
//!   with an idempotency key ([`emit`](Publisher::emit)) or fire-and-forget
//!   ([`emit_detached`](Publisher::emit_detached)); volatile events; the control
//!   operations (join, leave, disconnect a user's connections).
//! - [`Event`] and [`herald_events!`]: typed event catalogs, so a wrong payload
//!   type does not compile ([`Publisher::send`]).
//! - [`rpc_handler`] and [`authorizer`]: answer clients' `emit` and join requests
//!   as NATS queue groups.
//! - `ts` (feature `ts`): TypeScript declarations of a catalog for the browser
//!   client's typed event map.
//! - [`Presence`]: who is online, per room and per user (`is_online`,
//!   `online_bulk`, `members`, `count`, `rooms_of`).
//!
//! Subjects and user ids are never written by hand: they come from
//! [`herald_protocol::Subjects`], [`Room`] and
//! [`UserId`]. See `docs/SUBJECTS.md` for the contract.
#![deny(missing_docs)]

pub mod direct;
pub mod error;
pub mod event;
pub mod presence;
pub mod publisher;
pub mod service;
#[cfg(feature = "ts")]
pub mod ts;

pub use error::{Error, ErrorKind, Result};
pub use event::{Event, valid_event_name};
pub use herald_protocol::{ErrorCode, Room, UserId};
pub use presence::Presence;

/// Waits until the NATS server has processed everything this client sent
/// before the call (subscriptions included): publishes to a fresh inbox this
/// client subscribes to and waits for the message to come back. Unlike
/// `Client::flush`, which returns once the bytes are written to the socket,
/// this guarantees that a subscription just made is visible to other clients.
pub async fn round_trip(client: &async_nats::Client) -> Result<()> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| Error::new(ErrorKind::Subscribe, format!("round trip: {e}")))?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| Error::new(ErrorKind::Publish, format!("round trip: {e}")))?;
    match tokio::time::timeout(std::time::Duration::from_secs(10), sub.next()).await {
        Ok(Some(_)) => Ok(()),
        _ => Err(Error::new(
            ErrorKind::Timeout,
            "the NATS server did not echo a round trip within 10 s",
        )),
    }
}
pub use publisher::{Ack, Control, DetachedStats, EmitOptions, Publisher, PublisherBuilder};
pub use service::{
    JoinRequest, RpcContext, ServiceError, ServiceHandle, Verdict, authorizer, rpc_handler,
};
