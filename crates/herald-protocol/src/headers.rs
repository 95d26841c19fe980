//! NATS header names Herald reads and writes, in one place.

/// The event name on a producer's message (required, `[A-Za-z0-9_:.-]{1,64}`).
pub const EVENT: &str = "Herald-Event";
/// Skip this connection id when fanning out (the sender's own connection).
pub const EXCLUDE_CONN: &str = "Herald-Exclude-Conn";
/// Skip every connection of this user: the encoded id (see [`crate::user`]);
/// edges also accept a raw id that needs no encoding.
pub const EXCLUDE_USER: &str = "Herald-Exclude-User";
/// On RPC and authz requests: the requesting user, encoded (see
/// [`crate::user`]; a plain id like `6` is unchanged).
pub const USER: &str = "Herald-User";
/// On RPC and authz requests: the requesting connection id.
pub const CONN: &str = "Herald-Conn";
/// On RPC replies: an error code from the contract's list instead of a result.
pub const ERROR: &str = "Herald-Error";
/// JetStream de-duplication key.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Added by RePublish: the stream sequence of the message.
pub const NATS_SEQUENCE: &str = "Nats-Sequence";
/// Added by RePublish: the previous sequence stored on the same subject.
pub const NATS_LAST_SEQUENCE: &str = "Nats-Last-Sequence";
/// Added by RePublish and Direct Get: the subject the message was stored on.
pub const NATS_SUBJECT: &str = "Nats-Subject";
/// Added by Direct Get: the time the message was stored (RFC 3339).
pub const NATS_TIME_STAMP: &str = "Nats-Time-Stamp";
/// Added by batched Direct Get: how many matching messages remain.
pub const NATS_NUM_PENDING: &str = "Nats-Num-Pending";

/// Whether `name` is a valid event name: `[A-Za-z0-9_:.-]{1,64}`, and, because it
/// becomes part of the `P.rpc.<event>` subject, no empty dot-separated part.
///
/// ```
/// use herald_protocol::headers::valid_event_name;
/// assert!(valid_event_name("message:send"));
/// assert!(valid_event_name("orders.created"));
/// assert!(!valid_event_name("a..b"));
/// assert!(!valid_event_name("a*"));
/// ```
pub fn valid_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
        && name.split('.').all(|part| !part.is_empty())
}
