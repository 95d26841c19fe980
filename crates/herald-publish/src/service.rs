//! Service helpers: answer clients' `emit` on `P.rpc.<event>` and joins on
//! `P.authz.join`, as NATS queue groups so replicas share the load.

use crate::error::{Error, ErrorKind, Result};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt as _;
use herald_protocol::{ErrorCode, Room, Subjects, UserId, headers};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Who is calling: from the `Herald-User` and `Herald-Conn` headers the edge sets.
#[derive(Debug, Clone)]
pub struct RpcContext {
    /// The requesting user (decoded from `Herald-User`).
    pub user: UserId,
    /// The requesting connection id; use it with
    /// [`EmitOptions::exclude_conn`](crate::EmitOptions::exclude_conn) to skip the sender.
    pub conn: String,
    /// The event name (the part of the subject after `P.rpc.`).
    pub event: String,
}

/// A failure a handler reports to the client: one of the contract's codes and a
/// message, sent as `Herald-Error: <code>` with body `{"message":…}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// The code the client gets.
    pub code: ErrorCode,
    /// The message the client gets.
    pub message: String,
}

impl ServiceError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

/// A running service helper. Dropping the handle leaves it running; call
/// [`stop`](Self::stop) to end it.
#[derive(Debug)]
pub struct ServiceHandle {
    task: JoinHandle<()>,
}

impl ServiceHandle {
    /// Stops taking requests (requests already being handled finish).
    pub fn stop(self) {
        self.task.abort();
    }

    /// Waits until the subscription ends (the connection was closed).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

fn subjects(prefix: &str) -> Result<Subjects> {
    Subjects::new(prefix)
        .map_err(|e| Error::with_source(ErrorKind::InvalidPrefix, format!("prefix `{prefix}`"), e))
}

async fn queue_subscribe(
    client: &async_nats::Client,
    subject: String,
    queue_group: &str,
) -> Result<async_nats::Subscriber> {
    let sub = client
        .queue_subscribe(subject.clone(), queue_group.to_owned())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Subscribe, format!("subscribe {subject}"), e))?;
    // Make sure the server knows the subscription before the caller goes on
    // (`flush` only empties the socket buffer; a round trip proves the server
    // processed everything sent before it).
    crate::round_trip(client)
        .await
        .map_err(|e| Error::new(ErrorKind::Subscribe, format!("confirming {subject}: {e}")))?;
    Ok(sub)
}

async fn reply(client: &async_nats::Client, msg: &Message, headers: HeaderMap, body: Bytes) {
    let Some(to) = msg.reply.clone() else {
        tracing::debug!(subject = %msg.subject, "request without reply subject");
        return;
    };
    if let Err(e) = client.publish_with_headers(to, headers, body).await {
        tracing::warn!(subject = %msg.subject, error = %e, "reply failed");
    }
}

fn error_reply(e: &ServiceError) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(headers::ERROR, e.code.as_str());
    let body = serde_json::json!({ "message": e.message }).to_string();
    (h, Bytes::from(body))
}

fn context(msg: &Message, event: &str) -> std::result::Result<RpcContext, ServiceError> {
    let h = msg.headers.as_ref();
    let user = h
        .and_then(|h| h.get(headers::USER))
        .ok_or_else(|| ServiceError::bad_request("missing Herald-User header"))?;
    let user = UserId::decode(user.as_str())
        .map_err(|_| ServiceError::bad_request("invalid Herald-User header"))?;
    let conn = h
        .and_then(|h| h.get(headers::CONN))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    Ok(RpcContext {
        user,
        conn,
        event: event.to_owned(),
    })
}

/// Answers clients' `emit` of `event`: subscribes to `P.rpc.<event>` in
/// `queue_group`, and for each request decodes the client's `data` as `T` (an
/// undecodable one is answered `bad_request`), calls `handler`, and replies with the
/// JSON of its `Ok`, or with `Herald-Error` and the code of its `Err`.
///
/// Requests are handled concurrently, each on its own task. Returns once the
/// subscription is registered with the server.
///
/// ```no_run
/// # async fn f(client: async_nats::Client) -> herald_publish::Result<()> {
/// use herald_publish::{rpc_handler, RpcContext, ServiceError};
/// #[derive(serde::Deserialize)]
/// struct Send { text: String }
///
/// rpc_handler(client, "herald", "message:send", "messages", |ctx: RpcContext, req: Send| async move {
///     if req.text.is_empty() {
///         return Err(ServiceError::bad_request("empty message"));
///     }
///     Ok(serde_json::json!({ "from": ctx.user.as_str(), "stored": true }))
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn rpc_handler<T, R, F, Fut>(
    client: async_nats::Client,
    prefix: &str,
    event: &str,
    queue_group: &str,
    handler: F,
) -> Result<ServiceHandle>
where
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(RpcContext, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<R, ServiceError>> + Send + 'static,
{
    if !headers::valid_event_name(event) {
        return Err(Error::new(
            ErrorKind::InvalidEvent,
            format!("event `{event}` must be 1..=64 characters of [A-Za-z0-9_:.-]"),
        ));
    }
    let subject = subjects(prefix)?.rpc(event);
    let mut sub = queue_subscribe(&client, subject, queue_group).await?;
    let handler = Arc::new(handler);
    let event = event.to_owned();
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let client = client.clone();
            let handler = handler.clone();
            let event = event.clone();
            tokio::spawn(async move {
                let result = async {
                    let ctx = context(&msg, &event)?;
                    let data: T = serde_json::from_slice(if msg.payload.is_empty() {
                        b"null"
                    } else {
                        &msg.payload
                    })
                    .map_err(|e| ServiceError::bad_request(format!("invalid data: {e}")))?;
                    let out = handler(ctx, data).await?;
                    serde_json::to_vec(&out).map_err(|e| {
                        tracing::error!(event, error = %e, "reply did not serialize");
                        ServiceError::unavailable("the service could not encode its reply")
                    })
                }
                .await;
                let (h, body) = match result {
                    Ok(body) => (HeaderMap::new(), Bytes::from(body)),
                    Err(e) => {
                        tracing::debug!(event, code = %e.code, message = e.message, "rpc error");
                        error_reply(&e)
                    }
                };
                reply(&client, &msg, h, body).await;
            });
        }
    });
    Ok(ServiceHandle { task })
}

/// A join the edge asks about on `P.authz.join`.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The user (the raw `sub`).
    pub user: UserId,
    /// The room to join.
    pub room: Room,
    /// The connection id.
    pub conn: String,
    /// The asking edge's id.
    pub edge: String,
    /// The token's `info` claim (`null` when absent).
    pub info: serde_json::Value,
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The join is allowed.
    Allow,
    /// The join is refused (`forbidden`); the reason becomes the error message.
    Deny(Option<String>),
}

impl Verdict {
    /// A refusal with a reason.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self::Deny(Some(reason.into()))
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Allow => serde_json::json!({"allow": true}),
            Self::Deny(None) => serde_json::json!({"allow": false}),
            Self::Deny(Some(r)) => serde_json::json!({"allow": false, "reason": r}),
        }
    }
}

impl From<bool> for Verdict {
    fn from(allow: bool) -> Self {
        if allow { Self::Allow } else { Self::Deny(None) }
    }
}

#[derive(serde::Deserialize)]
struct RawJoin {
    user: String,
    room: String,
    #[serde(default)]
    conn: String,
    #[serde(default)]
    edge: String,
    #[serde(default)]
    info: serde_json::Value,
}

fn parse_join(payload: &[u8]) -> std::result::Result<JoinRequest, String> {
    let raw: RawJoin = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    Ok(JoinRequest {
        user: UserId::new(raw.user).map_err(|e| e.to_string())?,
        room: Room::parse(&raw.room).map_err(|e| e.to_string())?,
        conn: raw.conn,
        edge: raw.edge,
        info: raw.info,
    })
}

/// Answers `P.authz.join` in `queue_group`: for each join the edge cannot decide
/// from the token, calls `decide` and replies `{"allow":…,"reason":…}`.
///
/// `decide` returns anything convertible to a [`Verdict`] (`bool` or `Verdict`). An
/// `Err` (e.g. the membership store is down) is answered as a refusal with the
/// error's message, never as an allow; a malformed request is refused too.
pub async fn authorizer<V, F, Fut>(
    client: async_nats::Client,
    prefix: &str,
    queue_group: &str,
    decide: F,
) -> Result<ServiceHandle>
where
    V: Into<Verdict> + Send + 'static,
    F: Fn(JoinRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<V, ServiceError>> + Send + 'static,
{
    let subject = subjects(prefix)?.authz_join();
    let mut sub = queue_subscribe(&client, subject, queue_group).await?;
    let decide = Arc::new(decide);
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let client = client.clone();
            let decide = decide.clone();
            tokio::spawn(async move {
                let verdict = match parse_join(&msg.payload) {
                    Ok(req) => {
                        let (user, room) = (req.user.clone(), req.room.clone());
                        match decide(req).await {
                            Ok(v) => v.into(),
                            Err(e) => {
                                tracing::warn!(%user, %room, error = %e, "authorizer failed; refusing");
                                Verdict::Deny(Some(e.message))
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = e, "malformed join request; refusing");
                        Verdict::deny("malformed join request")
                    }
                };
                let body = Bytes::from(verdict.to_json().to_string());
                reply(&client, &msg, HeaderMap::new(), body).await;
            });
        }
    });
    Ok(ServiceHandle { task })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn verdicts_serialize_as_the_contract_says() {
        assert_eq!(Verdict::Allow.to_json().to_string(), r#"{"allow":true}"#);
        assert_eq!(
            Verdict::from(false).to_json().to_string(),
            r#"{"allow":false}"#
        );
        assert_eq!(
            Verdict::deny("not a member").to_json().to_string(),
            r#"{"allow":false,"reason":"not a member"}"#
        );
    }

    #[test]
    fn join_requests_parse() {
        let r =
            parse_join(br#"{"user":"a@b.io","room":"dm:1","conn":"e-1","edge":"e","info":null}"#)
                .unwrap();
        assert_eq!(r.user.as_str(), "a@b.io");
        assert_eq!(r.room.as_str(), "dm:1");
        assert!(parse_join(br#"{"user":"6","room":"bad"}"#).is_err());
    }

    #[test]
    fn errors_carry_the_code_header() {
        let (h, body) = error_reply(&ServiceError::forbidden("no"));
        assert_eq!(h.get(headers::ERROR).unwrap().as_str(), "forbidden");
        assert_eq!(&body[..], br#"{"message":"no"}"#);
    }
}
