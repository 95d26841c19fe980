//! Errors of the publisher and the service helpers.

use std::fmt;

/// What went wrong, for branching (see [`Error::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Connecting to NATS failed.
    Connect,
    /// The subject prefix is not dot-separated tokens of `[A-Za-z0-9_-]`.
    InvalidPrefix,
    /// The event name is not 1–64 characters of `[A-Za-z0-9_:.-]` without an empty
    /// dot-separated part.
    InvalidEvent,
    /// A header value (message id, connection id) is empty or holds a line break.
    InvalidHeader,
    /// The payload could not be serialized to JSON.
    Serialize,
    /// No stream stores the room's subject: run `herald setup`.
    NoStream,
    /// JetStream did not acknowledge in time (after all attempts).
    Timeout,
    /// The message is larger than the server accepts.
    TooLarge,
    /// Sending to NATS failed (connection closed, broken pipe, …).
    Publish,
    /// Subscribing (for a service helper) failed.
    Subscribe,
    /// A presence read failed (NATS unreachable, unexpected answer).
    Read,
    /// The presence bucket does not exist: run `herald setup`.
    NoBucket,
}

impl ErrorKind {
    /// A stable lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::InvalidPrefix => "invalid_prefix",
            Self::InvalidEvent => "invalid_event",
            Self::InvalidHeader => "invalid_header",
            Self::Serialize => "serialize",
            Self::NoStream => "no_stream",
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Read => "read",
            Self::NoBucket => "no_bucket",
        }
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Publish | Self::Connect | Self::Read
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of this crate: a [`ErrorKind`], a message, and the underlying cause if any.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (without the kind).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
