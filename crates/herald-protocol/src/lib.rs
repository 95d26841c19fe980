//! Herald's outside surface as pure code, with no I/O.
//!
//! Everything that browsers, microservices and edges must agree on lives here so
//! that there is exactly one implementation of it: what a room name may look like
//! ([`room`]), how a user id becomes a subject token ([`user`]), which NATS subject
//! carries what ([`subject`]), the header names ([`headers`]), the token claims
//! ([`claims`]), the presence bucket's layout ([`presence`]), the WebSocket frames ([`frame`]) and the error and close codes
//! ([`codes`]). The edge, the producer SDK and the tests all build on it; nothing
//! here may depend on a runtime.
#![deny(missing_docs)]

pub mod claims;
pub mod codes;
pub mod frame;
pub mod headers;
pub mod presence;
pub mod room;
pub mod subject;
pub mod user;

pub use claims::{Claims, RoomPattern};
pub use codes::{CloseCode, ErrorCode};
pub use room::{Room, RoomError};
pub use subject::Subjects;
pub use user::{UserId, UserIdError};
