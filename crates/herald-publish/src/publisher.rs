//! [`Publisher`]: durable and volatile events, fire-and-forget variants, and the
//! control operations of `P.ctl.user.<enc>`.

use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use herald_protocol::{Room, Subjects, UserId, headers};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Default number of fire-and-forget publishes in flight at once.
pub const DEFAULT_MAX_DETACHED: usize = 1024;
/// Default number of attempts of an acknowledged publish (same message id each time).
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// Options of one publish: idempotency key and exclusions.
#[derive(Debug, Clone, Default)]
pub struct EmitOptions {
    msg_id: Option<String>,
    exclude_conn: Option<String>,
    exclude_user: Option<UserId>,
}

impl EmitOptions {
    /// No options: a generated message id, nobody excluded.
    pub fn new() -> Self {
        Self::default()
    }

    /// The idempotency key (`Nats-Msg-Id`): JetStream stores a repeated id only once
    /// within its duplicate window (2 min by default). Use a key derived from your
    /// data (e.g. `"message-8812-created"`) so a retry of your whole operation is
    /// de-duplicated too. Without it, each call generates a fresh id, reused only by
    /// the publisher's own retries. Ignored by volatile publishes.
    pub fn msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = Some(id.into());
        self
    }

    /// Skip this connection (its id from `welcome`, `Herald-Conn` or [`RpcContext`](crate::RpcContext)).
    pub fn exclude_conn(mut self, conn: impl Into<String>) -> Self {
        self.exclude_conn = Some(conn.into());
        self
    }

    /// Skip every connection of this user.
    pub fn exclude_user(mut self, user: &UserId) -> Self {
        self.exclude_user = Some(user.clone());
        self
    }
}

/// JetStream's acknowledgement of a durable event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The stream sequence: the `seq` clients see.
    pub seq: u64,
    /// `true` when the message id was already stored: the event was not stored (nor
    /// delivered) again, and `seq` is the original's.
    pub duplicate: bool,
    /// The message id used.
    pub msg_id: String,
}

/// Counters of the fire-and-forget publishes (see [`Publisher::detached_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetachedStats {
    /// Acknowledged (durable) or sent (volatile) successfully.
    pub ok: u64,
    /// Failed after all attempts (logged at `warn`).
    pub failed: u64,
    /// Dropped without trying: too many in flight, no Tokio runtime, or the payload
    /// did not serialize (logged at `warn`).
    pub dropped: u64,
}

/// What a service asks edges to do with a user's connections (contract §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Join the room, without patterns or authorizer (the service decided).
    Join {
        /// The room.
        #[serde(serialize_with = "ser_room")]
        room: Room,
        /// Only this connection; all of the user's when `None`.
        #[serde(skip_serializing_if = "Option::is_none")]
        conn: Option<String>,
    },
    /// Leave the room.
    Leave {
        /// The room.
        #[serde(serialize_with = "ser_room")]
        room: Room,
        /// Only this connection; all of the user's when `None`.
        #[serde(skip_serializing_if = "Option::is_none")]
        conn: Option<String>,
    },
    /// Close the connections.
    Disconnect {
        /// Close code: 1000, 1012, 1013 or 4000–4999; edges use 4003 when `None`.
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        /// Reason shown to the client.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Whether the client should reconnect; edges choose from the code when `None`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect: Option<bool>,
        /// Only this connection; all of the user's when `None`.
        #[serde(skip_serializing_if = "Option::is_none")]
        conn: Option<String>,
    },
}

fn ser_room<S: serde::Serializer>(room: &Room, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(room.as_str())
}

/// Configures a [`Publisher`].
#[derive(Debug, Clone)]
pub struct PublisherBuilder {
    prefix: String,
    max_detached: usize,
    attempts: u32,
    ack_timeout: Option<Duration>,
}

impl Default for PublisherBuilder {
    fn default() -> Self {
        Self {
            prefix: herald_protocol::subject::DEFAULT_PREFIX.to_owned(),
            max_detached: DEFAULT_MAX_DETACHED,
            attempts: DEFAULT_ATTEMPTS,
            ack_timeout: None,
        }
    }
}

impl PublisherBuilder {
    /// The subject prefix (`subject_prefix` of the edges), `herald` by default.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many fire-and-forget publishes may be in flight; more are dropped and
    /// counted (never queued, so the caller never waits). At least 1.
    pub fn max_detached(mut self, n: usize) -> Self {
        self.max_detached = n.max(1);
        self
    }

    /// How many times an acknowledged publish is tried on a transient failure
    /// (timeout, broken connection), always with the same message id. At least 1.
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// How long to wait for each JetStream ack (async-nats' default otherwise).
    pub fn ack_timeout(mut self, t: Duration) -> Self {
        self.ack_timeout = Some(t);
        self
    }

    /// A publisher on an existing client.
    pub fn build(self, client: async_nats::Client) -> Result<Publisher> {
        let subjects = Subjects::new(&self.prefix).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidPrefix,
                format!("prefix `{}`", self.prefix),
                e,
            )
        })?;
        let mut js = async_nats::jetstream::ContextBuilder::new();
        if let Some(t) = self.ack_timeout {
            js = js.timeout(t);
        }
        let js = js.build(client.clone());
        Ok(Publisher {
            inner: Arc::new(Inner {
                client,
                js,
                subjects,
                attempts: self.attempts,
                detached: Arc::new(Semaphore::new(self.max_detached)),
                max_detached: self.max_detached,
                nonce: rand::random(),
                counter: AtomicU64::new(0),
                ok: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        })
    }

    /// Connects to NATS at `url` and builds the publisher.
    pub async fn connect(self, url: &str) -> Result<Publisher> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Connect, format!("NATS at {url}"), e))?;
        self.build(client)
    }
}

struct Inner {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    attempts: u32,
    detached: Arc<Semaphore>,
    max_detached: usize,
    nonce: u64,
    counter: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Publishes events to Herald rooms and steers users' connections. Cheap to clone;
/// clones share the connection and the counters.
///
/// Two modes, chosen by name:
///
/// - **acknowledged** ([`emit`](Self::emit), [`send`](Self::send), …) waits for
///   JetStream to store the event and returns its sequence. Use it when the caller
///   must know the event is stored.
/// - **detached** ([`emit_detached`](Self::emit_detached), …) returns at once; the
///   publish runs on a spawned task, failures are logged and counted
///   ([`detached_stats`](Self::detached_stats)). Use it on a request path that must
///   not wait for Herald (what `emitToProgram` did).
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("prefix", &self.inner.subjects.prefix())
            .field("stats", &self.detached_stats())
            .finish_non_exhaustive()
    }
}

fn header_value(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.contains(['\r', '\n']) {
        return Err(Error::new(
            ErrorKind::InvalidHeader,
            format!("{what} must be non-empty and hold no line break"),
        ));
    }
    Ok(())
}

fn check_event(event: &str) -> Result<()> {
    if headers::valid_event_name(event) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidEvent,
            format!("event `{event}` must be 1..=64 characters of [A-Za-z0-9_:.-]"),
        ))
    }
}

fn to_json<T: Serialize + ?Sized>(payload: &T) -> Result<Bytes> {
    serde_json::to_vec(payload)
        .map(Bytes::from)
        .map_err(|e| Error::with_source(ErrorKind::Serialize, "payload to JSON", e))
}

fn event_headers(event: &str, opts: &EmitOptions) -> Result<HeaderMap> {
    check_event(event)?;
    let mut h = HeaderMap::new();
    h.insert(headers::EVENT, event);
    if let Some(c) = &opts.exclude_conn {
        header_value("exclude_conn", c)?;
        h.insert(headers::EXCLUDE_CONN, c.as_str());
    }
    if let Some(u) = &opts.exclude_user {
        h.insert(headers::EXCLUDE_USER, u.encoded().as_str());
    }
    Ok(h)
}

fn map_publish_error(e: async_nats::jetstream::context::PublishError, room: &Room) -> Error {
    let (kind, what) = match e.kind() {
        PublishErrorKind::StreamNotFound => (
            ErrorKind::NoStream,
            "no stream stores this room: run `herald setup`",
        ),
        PublishErrorKind::TimedOut => (ErrorKind::Timeout, "no JetStream ack in time"),
        PublishErrorKind::MaxPayloadExceeded => (ErrorKind::TooLarge, "message too large"),
        _ => (ErrorKind::Publish, "JetStream publish failed"),
    };
    Error::with_source(kind, format!("{what} (room {room})"), e)
}

impl Publisher {
    /// A builder, to set the prefix and limits.
    pub fn builder() -> PublisherBuilder {
        PublisherBuilder::default()
    }

    /// Connects to NATS at `url` with the default prefix `herald`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder().connect(url).await
    }

    /// A publisher on an existing client, with the default prefix `herald`.
    pub fn from_client(client: async_nats::Client) -> Self {
        Self::builder()
            .build(client)
            .unwrap_or_else(|_| unreachable!("the default prefix is valid"))
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The subjects in use (from the prefix).
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    fn new_msg_id(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        format!("hp-{:016x}-{n}", self.inner.nonce)
    }

    // ---- acknowledged -------------------------------------------------------

    /// Publishes a durable event to `room` and waits for JetStream to store it;
    /// returns its sequence. A generated message id makes the publisher's own retries
    /// safe; pass [`EmitOptions::msg_id`] through [`emit_with`](Self::emit_with) to
    /// make your retries safe too.
    pub async fn emit<T: Serialize + ?Sized>(
        &self,
        room: &Room,
        event: &str,
        payload: &T,
    ) -> Result<u64> {
        Ok(self
            .emit_with(room, event, payload, &EmitOptions::default())
            .await?
            .seq)
    }

    /// [`emit`](Self::emit) with options; returns the whole [`Ack`].
    pub async fn emit_with<T: Serialize + ?Sized>(
        &self,
        room: &Room,
        event: &str,
        payload: &T,
        opts: &EmitOptions,
    ) -> Result<Ack> {
        let body = to_json(payload)?;
        self.emit_raw(room, event, body, opts).await
    }

    /// Publishes a durable event to the private room of `user` (`user:<enc>`):
    /// every connection of that user gets it.
    pub async fn emit_to_user<T: Serialize + ?Sized>(
        &self,
        user: &UserId,
        event: &str,
        payload: &T,
    ) -> Result<u64> {
        self.emit(&Room::for_user(user), event, payload).await
    }

    /// [`emit_to_user`](Self::emit_to_user) with options.
    pub async fn emit_to_user_with<T: Serialize + ?Sized>(
        &self,
        user: &UserId,
        event: &str,
        payload: &T,
        opts: &EmitOptions,
    ) -> Result<Ack> {
        self.emit_with(&Room::for_user(user), event, payload, opts)
            .await
    }

    /// Publishes an already-serialized JSON payload (not checked).
    pub async fn emit_raw(
        &self,
        room: &Room,
        event: &str,
        json: Bytes,
        opts: &EmitOptions,
    ) -> Result<Ack> {
        let mut h = event_headers(event, opts)?;
        let msg_id = match &opts.msg_id {
            Some(id) => {
                header_value("msg_id", id)?;
                id.clone()
            }
            None => self.new_msg_id(),
        };
        h.insert(headers::MSG_ID, msg_id.as_str());
        let subject = self.inner.subjects.room(room);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = async {
                self.inner
                    .js
                    .publish_with_headers(subject.clone(), h.clone(), json.clone())
                    .await
                    .map_err(|e| map_publish_error(e, room))?
                    .await
                    .map_err(|e| map_publish_error(e, room))
            }
            .await;
            match res {
                Ok(ack) => {
                    return Ok(Ack {
                        seq: ack.sequence,
                        duplicate: ack.duplicate,
                        msg_id,
                    });
                }
                Err(e) if e.kind().is_transient() && attempt < self.inner.attempts => {
                    tracing::debug!(%room, event, attempt, error = %e, "retrying publish");
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes a **volatile** event: delivered to the room's current members,
    /// without `seq`, never stored or replayed. Returns once handed to the client
    /// (there is no ack).
    pub async fn volatile<T: Serialize + ?Sized>(
        &self,
        room: &Room,
        event: &str,
        payload: &T,
    ) -> Result<()> {
        self.volatile_with(room, event, payload, &EmitOptions::default())
            .await
    }

    /// [`volatile`](Self::volatile) with exclusions (the message id is ignored).
    pub async fn volatile_with<T: Serialize + ?Sized>(
        &self,
        room: &Room,
        event: &str,
        payload: &T,
        opts: &EmitOptions,
    ) -> Result<()> {
        let body = to_json(payload)?;
        let h = event_headers(event, opts)?;
        self.inner
            .client
            .publish_with_headers(self.inner.subjects.live(room), h, body)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Publish, format!("volatile to {room}"), e))
    }

    // ---- typed --------------------------------------------------------------

    /// [`emit`](Self::emit) for a declared [`Event`]: the payload type is checked.
    pub async fn send<E: Event>(&self, room: &Room, payload: &E::Payload) -> Result<u64> {
        self.emit(room, E::NAME, payload).await
    }

    /// [`emit_with`](Self::emit_with) for a declared [`Event`].
    pub async fn send_with<E: Event>(
        &self,
        room: &Room,
        payload: &E::Payload,
        opts: &EmitOptions,
    ) -> Result<Ack> {
        self.emit_with(room, E::NAME, payload, opts).await
    }

    /// [`emit_to_user`](Self::emit_to_user) for a declared [`Event`].
    pub async fn send_to_user<E: Event>(&self, user: &UserId, payload: &E::Payload) -> Result<u64> {
        self.emit_to_user(user, E::NAME, payload).await
    }

    /// [`volatile`](Self::volatile) for a declared [`Event`].
    pub async fn send_volatile<E: Event>(&self, room: &Room, payload: &E::Payload) -> Result<()> {
        self.volatile(room, E::NAME, payload).await
    }

    /// [`emit_detached`](Self::emit_detached) for a declared [`Event`].
    pub fn send_detached<E: Event>(&self, room: &Room, payload: &E::Payload) {
        self.emit_detached(room, E::NAME, payload);
    }

    // ---- detached -----------------------------------------------------------

    /// Fire-and-forget [`emit`](Self::emit): returns at once, never blocks. The
    /// publish (with its retries) runs on a spawned Tokio task; failures are logged
    /// and counted in [`detached_stats`](Self::detached_stats). When
    /// [`max_detached`](PublisherBuilder::max_detached) publishes are already in
    /// flight, this one is dropped (and counted), not queued.
    pub fn emit_detached<T: Serialize + ?Sized>(&self, room: &Room, event: &str, payload: &T) {
        self.emit_detached_with(room, event, payload, EmitOptions::default());
    }

    /// [`emit_detached`](Self::emit_detached) with options.
    pub fn emit_detached_with<T: Serialize + ?Sized>(
        &self,
        room: &Room,
        event: &str,
        payload: &T,
        opts: EmitOptions,
    ) {
        self.detached(room, event, payload, opts, false);
    }

    /// Fire-and-forget [`emit_to_user`](Self::emit_to_user).
    pub fn emit_to_user_detached<T: Serialize + ?Sized>(
        &self,
        user: &UserId,
        event: &str,
        payload: &T,
    ) {
        self.emit_detached(&Room::for_user(user), event, payload);
    }

    /// Fire-and-forget [`volatile`](Self::volatile).
    pub fn volatile_detached<T: Serialize + ?Sized>(&self, room: &Room, event: &str, payload: &T) {
        self.detached(room, event, payload, EmitOptions::default(), true);
    }

    fn detached<T: Serialize + ?Sized>(
        &self,
        room: &Room,
        event: &str,
        payload: &T,
        opts: EmitOptions,
        volatile: bool,
    ) {
        let drop_it = |why: &dyn std::fmt::Display| {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%room, event, reason = %why, "detached publish dropped");
        };
        let body = match to_json(payload) {
            Ok(b) => b,
            Err(e) => return drop_it(&e),
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return drop_it(&"no Tokio runtime");
        };
        let Ok(permit) = self.inner.detached.clone().try_acquire_owned() else {
            return drop_it(&"too many detached publishes in flight");
        };
        let this = self.clone();
        let room = room.clone();
        let event = event.to_owned();
        rt.spawn(async move {
            let res = if volatile {
                let h = event_headers(&event, &opts);
                match h {
                    Ok(h) => this
                        .inner
                        .client
                        .publish_with_headers(this.inner.subjects.live(&room), h, body)
                        .await
                        .map_err(|e| Error::with_source(ErrorKind::Publish, "volatile", e)),
                    Err(e) => Err(e),
                }
            } else {
                this.emit_raw(&room, &event, body, &opts).await.map(|_| ())
            };
            match res {
                Ok(()) => {
                    this.inner.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    this.inner.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%room, event, kind = %e.kind(), error = %e, "detached publish failed");
                }
            }
            drop(permit);
        });
    }

    /// Counters of the detached publishes so far.
    pub fn detached_stats(&self) -> DetachedStats {
        DetachedStats {
            ok: self.inner.ok.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
        }
    }

    /// Waits until no detached publish is in flight (e.g. before shutting down).
    pub async fn drain_detached(&self) {
        let n = u32::try_from(self.inner.max_detached).unwrap_or(u32::MAX);
        if let Ok(all) = self.inner.detached.acquire_many(n).await {
            drop(all);
        }
    }

    // ---- control ------------------------------------------------------------

    /// Sends a control command to every edge holding a connection of `user`, and
    /// flushes. Core NATS: no ack, and users without connections ignore it.
    pub async fn control(&self, user: &UserId, cmd: &Control) -> Result<()> {
        let body = to_json(cmd)?;
        let subject = self.inner.subjects.ctl_user(user);
        self.inner
            .client
            .publish(subject, body)
            .await
            .map_err(|e| {
                Error::with_source(ErrorKind::Publish, format!("control for {user}"), e)
            })?;
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Publish, "flush", e))
    }

    /// Makes every connection of `user` join `room` (no patterns, no authorizer;
    /// another user's private room is refused by the edge).
    pub async fn join_user_to(&self, user: &UserId, room: &Room) -> Result<()> {
        let cmd = Control::Join {
            room: room.clone(),
            conn: None,
        };
        self.control(user, &cmd).await
    }

    /// Makes every connection of `user` leave `room`.
    pub async fn remove_user_from(&self, user: &UserId, room: &Room) -> Result<()> {
        let cmd = Control::Leave {
            room: room.clone(),
            conn: None,
        };
        self.control(user, &cmd).await
    }

    /// Closes every connection of `user` with code 4003 (no automatic reconnect) and
    /// `reason`.
    pub async fn disconnect_user(&self, user: &UserId, reason: &str) -> Result<()> {
        let cmd = Control::Disconnect {
            code: None,
            reason: Some(reason.to_owned()),
            reconnect: None,
            conn: None,
        };
        self.control(user, &cmd).await
    }

    /// Flushes what the client buffered (volatile publishes are buffered).
    pub async fn flush(&self) -> Result<()> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Publish, "flush", e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn control_bodies_match_the_contract() {
        let room = Room::parse("channel:42").unwrap();
        let j = serde_json::to_string(&Control::Join {
            room: room.clone(),
            conn: None,
        })
        .unwrap();
        assert_eq!(j, r#"{"op":"join","room":"channel:42"}"#);
        let l = serde_json::to_string(&Control::Leave {
            room,
            conn: Some("c-1".into()),
        })
        .unwrap();
        assert_eq!(l, r#"{"op":"leave","room":"channel:42","conn":"c-1"}"#);
        let d = serde_json::to_string(&Control::Disconnect {
            code: Some(4003),
            reason: Some("banned".into()),
            reconnect: Some(false),
            conn: None,
        })
        .unwrap();
        assert_eq!(
            d,
            r#"{"op":"disconnect","code":4003,"reason":"banned","reconnect":false}"#
        );
    }

    #[test]
    fn headers_are_validated() {
        assert_eq!(
            event_headers("bad event", &EmitOptions::new())
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidEvent
        );
        assert_eq!(
            event_headers("ok", &EmitOptions::new().exclude_conn("a\r\nb"))
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidHeader
        );
        let u = UserId::new("a@b.io").unwrap();
        let h = event_headers("ok", &EmitOptions::new().exclude_user(&u)).unwrap();
        assert_eq!(h.get(headers::EXCLUDE_USER).unwrap().as_str(), "=YUBiLmlv");
    }

    #[test]
    fn a_bad_prefix_is_refused() {
        // Building needs no server: the client connects lazily.
        let e = PublisherBuilder::default().prefix("a..b").prefix.clone();
        assert!(Subjects::new(&e).is_err());
    }
}
