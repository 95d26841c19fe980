//! WebSocket frames: decoding what clients send, encoding what edges send.
//!
//! Client frames are decoded in one pass into a typed [`ClientFrame`]; a frame that
//! fails still yields its `id` where one can be read, so the error can be matched
//! to the request. Room names are validated here, so the rest of the edge only
//! ever sees [`Room`]s.
//!
//! Server frames are small serde structs, except the hot `event` frame, which
//! [`event_frame`] writes by hand around the producer's payload bytes: it is
//! encoded once per NATS message and shared by every recipient.

use crate::codes::ErrorCode;
use crate::headers::valid_event_name;
use crate::room::Room;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A resume cursor: the stream epoch and the last sequence the client saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    /// The stream epoch the sequence belongs to.
    pub epoch: String,
    /// The last sequence seen in the room.
    pub seq: u64,
}

/// A decoded client → edge frame.
#[derive(Debug, Clone)]
pub enum ClientFrame {
    /// `{"type":"auth","token":…}`: first-frame authentication.
    Auth {
        /// The token.
        token: String,
    },
    /// Join a room, optionally resuming from a cursor.
    Join {
        /// Request id.
        id: Option<i64>,
        /// The room.
        room: Room,
        /// Resume cursor.
        since: Option<Since>,
    },
    /// Leave a room.
    Leave {
        /// Request id.
        id: Option<i64>,
        /// The room.
        room: Room,
    },
    /// Call a service: a request on `P.rpc.<event>`.
    Emit {
        /// Request id.
        id: Option<i64>,
        /// Event name.
        event: String,
        /// Payload, passed through as JSON text.
        data: Option<Box<RawValue>>,
    },
    /// Send a volatile event to a room.
    Publish {
        /// Request id.
        id: Option<i64>,
        /// The room.
        room: Room,
        /// Event name.
        event: String,
        /// Payload.
        data: Option<Box<RawValue>>,
    },
    /// Who is in a room.
    Presence {
        /// Request id.
        id: Option<i64>,
        /// The room.
        room: Room,
    },
    /// The last events of a room.
    History {
        /// Request id.
        id: Option<i64>,
        /// The room.
        room: Room,
        /// How many events (capped by config).
        limit: Option<u64>,
    },
    /// Replace the session's token.
    Refresh {
        /// Request id.
        id: Option<i64>,
        /// The new token.
        token: String,
    },
    /// Application-level ping.
    Ping {
        /// Request id.
        id: Option<i64>,
    },
}

impl ClientFrame {
    /// The request id, if any.
    pub fn id(&self) -> Option<i64> {
        match self {
            Self::Auth { .. } => None,
            Self::Join { id, .. }
            | Self::Leave { id, .. }
            | Self::Emit { id, .. }
            | Self::Publish { id, .. }
            | Self::Presence { id, .. }
            | Self::History { id, .. }
            | Self::Refresh { id, .. }
            | Self::Ping { id } => *id,
        }
    }

    /// The frame's `type`, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Emit { .. } => "emit",
            Self::Publish { .. } => "publish",
            Self::Presence { .. } => "presence",
            Self::History { .. } => "history",
            Self::Refresh { .. } => "refresh",
            Self::Ping { .. } => "ping",
        }
    }
}

/// Why a client frame was refused; becomes an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The request id, when it could be read.
    pub id: Option<i64>,
    /// The contract's error code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl FrameError {
    fn new(id: Option<i64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}

/// How deeply a request's `data` may nest. Services decode it again, often with
/// recursive decoders; refusing absurd nesting at the edge protects them.
pub const MAX_DATA_DEPTH: usize = 64;

/// The longest `message` of an error for a refused frame, in bytes. Messages
/// are sent back and may be logged; they never echo a client's input at length.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 256;

/// The maximum nesting depth of a JSON text (brackets inside strings ignored).
fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Cuts a message to at most [`MAX_ERROR_MESSAGE_BYTES`] (serde's messages
/// quote the offending value, which may be a 64 KiB string).
fn bounded(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut end = MAX_ERROR_MESSAGE_BYTES - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<i64>,
}

/// The request `id` of a frame, without decoding the rest: for answering
/// frames that are refused before decoding (rate limiting), at the cost of one
/// scan that allocates nothing for the other fields.
pub fn request_id(text: &str) -> Option<i64> {
    serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id)
}

/// Decodes one client text frame.
///
/// ```
/// use herald_protocol::frame::{decode_client_frame, ClientFrame};
/// let f = decode_client_frame(r#"{"type":"join","id":1,"room":"channel:42"}"#).unwrap();
/// assert!(matches!(f, ClientFrame::Join { id: Some(1), .. }));
/// let e = decode_client_frame(r#"{"type":"join","id":2,"room":"channel.*"}"#).unwrap_err();
/// assert_eq!((e.id, e.code.as_str()), (Some(2), "invalid_room"));
/// ```
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        let id = request_id(text);
        FrameError::new(
            id,
            ErrorCode::BadRequest,
            bounded(format!("frame is not a valid request: {e}")),
        )
    })?;
    let id = env.id;
    if let Some(data) = &env.data
        && json_depth(data.get()) > MAX_DATA_DEPTH
    {
        return Err(FrameError::new(
            id,
            ErrorCode::BadRequest,
            format!("`data` is nested deeper than {MAX_DATA_DEPTH} levels"),
        ));
    }
    // The envelope parse only checks `data`'s grammar. What a strict decoder
    // in a service would refuse is refused here: numbers out of range
    // (1e999999, or 1 followed by 400 zeros) and lone UTF-16 surrogates
    // ("\ud800"). Always parsed again: a cheaper pre-check missed cases.
    if let Some(data) = &env.data
        && let Err(e) = serde_json::from_str::<serde_json::Value>(data.get())
    {
        return Err(FrameError::new(
            id,
            ErrorCode::BadRequest,
            bounded(format!(
                "`data` is not JSON that every service can read: {e}"
            )),
        ));
    }
    let room = |r: Option<String>| -> Result<Room, FrameError> {
        let r = r.ok_or_else(|| {
            FrameError::new(
                id,
                ErrorCode::BadRequest,
                format!("`{}` needs a `room`", env.ty),
            )
        })?;
        Room::parse(&r).map_err(|e| FrameError::new(id, ErrorCode::InvalidRoom, e.to_string()))
    };
    let event = |e: Option<String>| -> Result<String, FrameError> {
        let e = e.ok_or_else(|| {
            FrameError::new(
                id,
                ErrorCode::BadRequest,
                format!("`{}` needs an `event`", env.ty),
            )
        })?;
        if valid_event_name(&e) {
            Ok(e)
        } else {
            Err(FrameError::new(
                id,
                ErrorCode::BadRequest,
                "event names are 1..=64 characters of [A-Za-z0-9_:.-] with no empty dot-separated part",
            ))
        }
    };
    let token = |t: Option<String>| -> Result<String, FrameError> {
        t.filter(|t| !t.is_empty()).ok_or_else(|| {
            FrameError::new(
                id,
                ErrorCode::BadRequest,
                format!("`{}` needs a `token`", env.ty),
            )
        })
    };
    Ok(match env.ty.as_str() {
        "auth" => ClientFrame::Auth {
            token: token(env.token)?,
        },
        "join" => ClientFrame::Join {
            id,
            room: room(env.room)?,
            since: env.since,
        },
        "leave" => ClientFrame::Leave {
            id,
            room: room(env.room)?,
        },
        "emit" => ClientFrame::Emit {
            id,
            event: event(env.event)?,
            data: env.data,
        },
        "publish" => ClientFrame::Publish {
            id,
            room: room(env.room)?,
            event: event(env.event)?,
            data: env.data,
        },
        "presence" => ClientFrame::Presence {
            id,
            room: room(env.room)?,
        },
        "history" => ClientFrame::History {
            id,
            room: room(env.room)?,
            limit: env.limit,
        },
        "refresh" => ClientFrame::Refresh {
            id,
            token: token(env.token)?,
        },
        "ping" => ClientFrame::Ping { id },
        other => {
            return Err(FrameError::new(
                id,
                ErrorCode::BadRequest,
                format!(
                    "unknown frame type `{}`",
                    other.chars().take(32).collect::<String>()
                ),
            ));
        }
    })
}

/// An edge → client frame (all but `event`, which [`event_frame`] encodes).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// Sent once after authentication.
    Welcome {
        /// Connection id.
        conn: &'a str,
        /// User id.
        user: &'a str,
        /// Edge id.
        edge: &'a str,
        /// Keepalive interval.
        ping_ms: u64,
    },
    /// A room was joined.
    Joined {
        /// Request id (absent for joins made by the edge or a service).
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        /// The room.
        room: &'a str,
        /// The stream epoch.
        epoch: &'a str,
        /// The room's last sequence.
        seq: u64,
        /// Whether every missed event is delivered after this frame.
        recovered: bool,
        /// How many `event` frames follow before live events.
        missed: u64,
    },
    /// A room was left.
    Left {
        /// Request id (absent for leaves made by a service).
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        /// The room.
        room: &'a str,
    },
    /// The answer to `emit`, `publish` and `refresh`.
    Reply {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        /// The service's reply, for `emit`.
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
    },
    /// A failed request.
    Error {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        /// Error code.
        code: ErrorCode,
        /// Explanation.
        message: &'a str,
    },
    /// The answer to `ping`.
    Pong {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
    },
    /// The answer to `history`.
    History {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        /// The room.
        room: &'a str,
        /// The events, oldest first, each as an `event` frame object.
        events: Vec<&'a RawValue>,
    },
    /// The answer to `presence`.
    Presence {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        /// The room.
        room: &'a str,
        /// The users present, sorted by id (at most `presence.query_max`).
        users: &'a [crate::presence::Member],
        /// How many users are present in all (more than `users` holds when
        /// the list was cut at `presence.query_max`).
        total: usize,
    },
    /// Sent just before the edge closes the connection.
    Disconnect {
        /// The close code that follows.
        code: u16,
        /// Why.
        reason: &'a str,
        /// Whether the client should reconnect.
        reconnect: bool,
    },
}

impl ServerFrame<'_> {
    /// Encodes the frame as JSON text.
    pub fn encode(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys,
        // no failing Serialize impls.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Writes the payload as JSON: valid JSON is passed through byte for byte, an
/// empty payload becomes `null`, anything else becomes a JSON string (lossy UTF-8),
/// so a bad producer can never make a frame invalid.
fn push_payload(out: &mut String, data: &[u8]) {
    if data.iter().all(u8::is_ascii_whitespace) {
        out.push_str("null");
        return;
    }
    match std::str::from_utf8(data) {
        Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            out.push_str(text.trim())
        }
        _ => {
            let lossy = String::from_utf8_lossy(data);
            out.push_str(&serde_json::Value::String(lossy.into_owned()).to_string());
        }
    }
}

/// Encodes an `event` frame around a producer's payload.
///
/// `room` and `event` are validated names (no characters that need escaping), but
/// they are escaped anyway so that the function is safe on any input.
///
/// ```
/// use herald_protocol::frame::event_frame;
/// assert_eq!(
///     event_frame("channel:42", "msg", Some(7), br#"{"a":1}"#),
///     r#"{"type":"event","room":"channel:42","event":"msg","seq":7,"data":{"a":1}}"#
/// );
/// ```
pub fn event_frame(room: &str, event: &str, seq: Option<u64>, data: &[u8]) -> String {
    let mut out = String::with_capacity(64 + room.len() + event.len() + data.len());
    out.push_str(r#"{"type":"event","room":"#);
    push_json_str(&mut out, room);
    out.push_str(r#","event":"#);
    push_json_str(&mut out, event);
    if let Some(seq) = seq {
        out.push_str(r#","seq":"#);
        out.push_str(&seq.to_string());
    }
    out.push_str(r#","data":"#);
    push_payload(&mut out, data);
    out.push('}');
    out
}

/// Encodes a `reply` frame around a service's reply bytes (passed through when
/// they are JSON, see [`event_frame`] for the rules).
///
/// ```
/// use herald_protocol::frame::reply_frame;
/// assert_eq!(reply_frame(Some(3), br#"{"ok":true}"#), r#"{"type":"reply","id":3,"data":{"ok":true}}"#);
/// ```
pub fn reply_frame(id: Option<i64>, data: &[u8]) -> String {
    let mut out = String::with_capacity(40 + data.len());
    out.push_str(r#"{"type":"reply""#);
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        out.push_str(&id.to_string());
    }
    out.push_str(r#","data":"#);
    push_payload(&mut out, data);
    out.push('}');
    out
}

/// Encodes a `presence_join` push.
pub fn presence_join_frame(room: &str, user: &str, info: Option<&serde_json::Value>) -> String {
    let mut v = serde_json::json!({"type": "presence_join", "room": room, "user": user});
    if let Some(info) = info {
        v["info"] = info.clone();
    }
    v.to_string()
}

/// Encodes a `presence_leave` push.
pub fn presence_leave_frame(room: &str, user: &str) -> String {
    serde_json::json!({"type": "presence_leave", "room": room, "user": user}).to_string()
}

fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_every_request() {
        let cases = [
            r#"{"type":"auth","token":"t"}"#,
            r#"{"type":"join","id":1,"room":"channel:42","since":{"epoch":"e","seq":120}}"#,
            r#"{"type":"leave","id":2,"room":"channel:42"}"#,
            r#"{"type":"emit","id":3,"event":"message:send","data":{"x":1}}"#,
            r#"{"type":"publish","id":4,"room":"channel:42","event":"typing","data":{}}"#,
            r#"{"type":"presence","id":5,"room":"channel:42"}"#,
            r#"{"type":"history","id":6,"room":"channel:42","limit":50}"#,
            r#"{"type":"refresh","id":7,"token":"t"}"#,
            r#"{"type":"ping"}"#,
        ];
        let kinds: Vec<_> = cases
            .iter()
            .map(|c| decode_client_frame(c).unwrap().kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "auth", "join", "leave", "emit", "publish", "presence", "history", "refresh",
                "ping"
            ]
        );
    }

    #[test]
    fn errors_keep_the_id_when_they_can() {
        let e = decode_client_frame(r#"{"type":"nope","id":9}"#).unwrap_err();
        assert_eq!((e.id, e.code), (Some(9), ErrorCode::BadRequest));
        let e = decode_client_frame(r#"{"type":"join","id":9,"room":5}"#).unwrap_err();
        assert_eq!((e.id, e.code), (Some(9), ErrorCode::BadRequest));
        let e = decode_client_frame(r#"{"type":"emit","id":9,"event":"a*"}"#).unwrap_err();
        assert_eq!((e.id, e.code), (Some(9), ErrorCode::BadRequest));
        let e = decode_client_frame("not json").unwrap_err();
        assert_eq!((e.id, e.code), (None, ErrorCode::BadRequest));
        let e = decode_client_frame(r#"{"type":"join","id":99999999999999999999999}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        // Out of range without an exponent.
        let e = decode_client_frame(&format!(
            r#"{{"type":"emit","id":1,"event":"x","data":[1{}]}}"#,
            "0".repeat(400)
        ))
        .unwrap_err();
        assert_eq!((e.id, e.code), (Some(1), ErrorCode::BadRequest));
        assert!(
            decode_client_frame(&format!(
                r#"{{"type":"emit","id":1,"event":"x","data":[0.{}1]}}"#,
                "0".repeat(400)
            ))
            .is_ok()
        );
        // A lone surrogate, which strict decoders refuse.
        let e = decode_client_frame(r#"{"type":"emit","id":1,"event":"x","data":{"s":"\ud800"}}"#)
            .unwrap_err();
        assert_eq!((e.id, e.code), (Some(1), ErrorCode::BadRequest));
        // A huge value in a field is not echoed back at length.
        let e = decode_client_frame(&format!(r#"{{"type":"join","id":"{}"}}"#, "A".repeat(5000)))
            .unwrap_err();
        assert!(e.message.len() <= MAX_ERROR_MESSAGE_BYTES, "{}", e.message);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let r = decode_client_frame(&format!(
            r#"{{"type":"emit","id":1,"event":"x","data":{deep}}}"#
        ));
        assert!(matches!(
            r,
            Err(FrameError {
                id: Some(1),
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        let ok = format!(
            r#"{{"type":"emit","id":1,"event":"x","data":{{"s":"{}"}}}}"#,
            "[".repeat(80)
        );
        assert!(decode_client_frame(&ok).is_ok());
    }

    #[test]
    fn event_frames_are_valid_json_whatever_the_payload() {
        for payload in [
            &b""[..],
            b"  ",
            b"{\"a\":1}",
            b"not json",
            b"\xff\xfe",
            b"[1,2",
            b"\"s\"",
        ] {
            let f = event_frame("c:1", "e", Some(1), payload);
            let v: serde_json::Value = serde_json::from_str(&f).unwrap();
            assert_eq!(v["type"], "event");
        }
        let f = event_frame("c:1", "e", None, b"1");
        assert!(!f.contains("seq"));
    }

    #[test]
    fn server_frames_encode_as_documented() {
        let f = ServerFrame::Joined {
            id: Some(1),
            room: "channel:42",
            epoch: "e",
            seq: 3,
            recovered: true,
            missed: 2,
        }
        .encode();
        assert_eq!(
            f,
            r#"{"type":"joined","id":1,"room":"channel:42","epoch":"e","seq":3,"recovered":true,"missed":2}"#
        );
        assert_eq!(
            ServerFrame::Pong { id: None }.encode(),
            r#"{"type":"pong"}"#
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(s in "\\PC{0,200}") {
            let _ = decode_client_frame(&s);
        }

        #[test]
        fn event_frame_is_always_json(room in "\\PC{0,20}", ev in "\\PC{0,20}", data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let f = event_frame(&room, &ev, Some(1), &data);
            prop_assert!(serde_json::from_str::<serde_json::Value>(&f).is_ok());
        }
    }
}
