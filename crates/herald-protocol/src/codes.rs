//! Error codes carried in `error` frames and WebSocket close codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `code` of an `{"type":"error"}` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, lacks a field, or has an unknown type.
    BadRequest,
    /// The room name is not a valid room.
    InvalidRoom,
    /// The token or the authorizer does not allow it.
    Forbidden,
    /// The target does not exist (e.g. leaving a room one is not in).
    NotFound,
    /// No service listens for this `emit` event.
    NoHandler,
    /// A service did not answer in time.
    Timeout,
    /// Too many requests, rooms or connections.
    RateLimited,
    /// A payload is over the configured size.
    TooLarge,
    /// A dependency (NATS, the authorizer) is unavailable.
    Unavailable,
}

impl ErrorCode {
    /// All codes, in contract order.
    pub const ALL: [ErrorCode; 9] = [
        Self::BadRequest,
        Self::InvalidRoom,
        Self::Forbidden,
        Self::NotFound,
        Self::NoHandler,
        Self::Timeout,
        Self::RateLimited,
        Self::TooLarge,
        Self::Unavailable,
    ];

    /// The code's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidRoom => "invalid_room",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::NoHandler => "no_handler",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
        }
    }

    /// Parses a wire name (as a service puts it in `Herald-Error`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes used by Herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// Going away (idle timeout, server closing).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// A text frame that is not UTF-8 (RFC 6455 §8.1 requires failing the
    /// connection). Reconnecting is fine; resending the same bytes is not.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// Policy violation: the Origin is not allowed.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// A frame is over the size limit.
    pub const TOO_LARGE: CloseCode = CloseCode(1009);
    /// The edge is draining or restarting: reconnect elsewhere and resume.
    pub const RESTART: CloseCode = CloseCode(1012);
    /// Try again later: a dependency (such as the connect hook) did not answer.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// Unauthorized: do not retry with the same token.
    pub const UNAUTHORIZED: CloseCode = CloseCode(4001);
    /// The token expired: refresh it and reconnect.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4002);
    /// Forbidden: e.g. a service disconnected (banned) this user.
    pub const FORBIDDEN: CloseCode = CloseCode(4003);
    /// The client could not keep up: reconnect and resume.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4008);
    /// Rate limited: too many requests or connections.
    pub const RATE_LIMITED: CloseCode = CloseCode(4029);

    /// Whether a client should reconnect after this close.
    pub fn should_reconnect(self) -> bool {
        !matches!(self.0, 4001 | 4003 | 1008)
    }
}
