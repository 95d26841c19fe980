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
//! - [`Presence`]: who is online, per room and per user (`is_online`,
//!   `online_bulk`, `members`, `count`, `rooms_of`).
//!
//! Subjects and user ids are never written by hand: they come from
//! [`herald_protocol::Subjects`], [`Room`] and
//! [`UserId`]. See `docs/SUBJECTS.md` for the contract.
#![deny(missing_docs)]

pub mod error;
pub mod event;
pub mod presence;
pub mod publisher;
pub mod service;

pub use error::{Error, ErrorKind, Result};
pub use event::{Event, valid_event_name};
pub use herald_protocol::{ErrorCode, Room, UserId};
pub use presence::Presence;
pub use publisher::{Ack, Control, DetachedStats, EmitOptions, Publisher, PublisherBuilder};
pub use service::{
    JoinRequest, RpcContext, ServiceError, ServiceHandle, Verdict, authorizer, rpc_handler,
};
