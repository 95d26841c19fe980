//! The client requests of contract §3: one method per frame type.
//!
//! Joins, leaves and refreshes run in order on the connection's task (their
//! order matters); `emit` waits for a service, so it runs concurrently, bounded
//! by `limits.max_inflight_requests`.

use super::Conn;
use super::handle::{Disconnect, Outbound};
use crate::edge::Edge;
use async_nats::HeaderMap;
use herald_protocol::claims::JoinDecision;
use herald_protocol::frame::{ClientFrame, ServerFrame, Since, decode_client_frame, reply_frame};
use herald_protocol::headers;
use herald_protocol::subject::LifecycleEvent;
use herald_protocol::{CloseCode, ErrorCode, Room};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// A request's failure: becomes an `error` frame.
pub(crate) struct Failure(pub ErrorCode, pub String);

impl Failure {
    fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self(code, msg.into())
    }
}

fn error_frame(edge: &Edge, id: Option<i64>, f: &Failure) -> String {
    edge.metrics.error(f.0.as_str());
    ServerFrame::Error {
        id,
        code: f.0,
        message: &f.1,
    }
    .encode()
}

/// Outcome of deciding how a `join` with `since` resumes.
struct Resume {
    recovered: bool,
    /// Shared with every other resume of the same range.
    frames: Vec<axum::extract::ws::Utf8Bytes>,
    last: u64,
}

impl Conn {
    /// `Herald-User` and `Herald-Conn`, for requests to services.
    fn identity_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(headers::USER, self.session.user.encoded().as_str());
        h.insert(headers::CONN, &**self.handle.id());
        h
    }

    async fn fail(&self, id: Option<i64>, f: Failure) {
        self.send(error_frame(&self.edge, id, &f)).await;
    }

    pub(crate) async fn on_binary(&mut self) -> Option<Disconnect> {
        if !self.limiter.take() {
            return self.rate_limited(None).await;
        }
        self.fail(
            None,
            Failure::new(
                ErrorCode::BadRequest,
                "binary frames are not supported: send JSON text frames",
            ),
        )
        .await;
        None
    }

    /// Answers a request refused by the rate limit; `Some` when refusals in a
    /// row have reached the point where the connection is closed.
    async fn rate_limited(&mut self, id: Option<i64>) -> Option<Disconnect> {
        let limits = &self.edge.cfg.limits;
        if self.limiter.refused_in_a_row >= limits.rate_limit_close_after {
            return Some(Disconnect::new(
                CloseCode::RATE_LIMITED,
                "rate limited: too many requests",
            ));
        }
        let msg = format!(
            "rate limited: at most {} requests per second (burst {})",
            limits.requests_per_sec, limits.request_burst
        );
        self.fail(id, Failure::new(ErrorCode::RateLimited, msg))
            .await;
        None
    }

    pub(crate) async fn on_text(&mut self, text: &str) -> Option<Disconnect> {
        if !self.limiter.take() {
            // Only the id is wanted here: a refused frame must not cost a full
            // decode (a flood of big frames would otherwise be parsed anyway).
            let id = herald_protocol::frame::request_id(text);
            return self.rate_limited(id).await;
        }
        let frame = match decode_client_frame(text) {
            Ok(f) => f,
            Err(e) => {
                self.fail(e.id, Failure(e.code, e.message)).await;
                return None;
            }
        };
        self.edge.metrics.request(frame.kind());
        match frame {
            ClientFrame::Auth { .. } => {
                self.fail(
                    None,
                    Failure::new(
                        ErrorCode::BadRequest,
                        "already authenticated: use `refresh` to replace the token",
                    ),
                )
                .await
            }
            ClientFrame::Join { id, room, since } => self.join(room, since, id, true).await,
            ClientFrame::Leave { id, room } => self.leave(room, id).await,
            ClientFrame::Emit { id, event, data } => self.emit(id, event, data).await,
            ClientFrame::Publish {
                id,
                room,
                event,
                data,
            } => self.publish(id, room, event, data).await,
            ClientFrame::Presence { id, room } => self.presence(id, room).await,
            ClientFrame::History { id, room, limit } => self.history(id, room, limit).await,
            ClientFrame::Refresh { id, token } => self.refresh(id, token).await,
            ClientFrame::Ping { id } => self.send(ServerFrame::Pong { id }.encode()).await,
        }
        None
    }

    /// Decides whether the user may join: the token's claims, else the authorizer.
    async fn authorize(&self, room: &Room) -> Result<(), Failure> {
        match self.session.claims.may_join(&self.session.user, room) {
            JoinDecision::Allow => Ok(()),
            JoinDecision::Deny => Err(Failure::new(
                ErrorCode::Forbidden,
                "another user's private room",
            )),
            JoinDecision::Undecided if !self.edge.cfg.authz.enabled => Err(Failure::new(
                ErrorCode::Forbidden,
                "the token's `rooms` claim does not allow this room",
            )),
            JoinDecision::Undecided => self.ask_authorizer(room).await,
        }
    }

    async fn ask_authorizer(&self, room: &Room) -> Result<(), Failure> {
        let edge = &self.edge;
        let body = serde_json::json!({
            "user": self.session.user.as_str(),
            "room": room.as_str(),
            "conn": &**self.handle.id(),
            "edge": edge.id,
            "info": self.session.claims.info,
        });
        let h = self.identity_headers();
        let req = edge.client.request_with_headers(
            edge.subjects.authz_join(),
            h,
            body.to_string().into(),
        );
        let reply = match tokio::time::timeout(edge.cfg.authz_timeout(), req).await {
            Err(_) => {
                return Err(Failure::new(
                    ErrorCode::Unavailable,
                    "the join authorizer did not answer in time",
                ));
            }
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => Failure::new(
                        ErrorCode::Forbidden,
                        format!(
                            "not allowed by the token, and no authorizer listens on {}",
                            edge.subjects.authz_join()
                        ),
                    ),
                    async_nats::RequestErrorKind::TimedOut => Failure::new(
                        ErrorCode::Unavailable,
                        "the join authorizer did not answer in time",
                    ),
                    _ => Failure::new(ErrorCode::Unavailable, "the join authorizer is unreachable"),
                });
            }
            Ok(Ok(m)) => m,
        };
        authz_verdict(&reply.payload)
    }

    /// Joins a room: authorization (when `check`), subscription, catch-up, then
    /// live events. Replies `joined` (with `id` when the client asked).
    pub(crate) async fn join(
        &mut self,
        room: Room,
        since: Option<Since>,
        id: Option<i64>,
        check: bool,
    ) {
        let epoch = self.edge.epoch();
        if room.user().is_some_and(|u| u != self.session.user) {
            // Not even the token's `join` claim or a service may put a
            // connection into another user's private room.
            return self
                .fail(
                    id,
                    Failure::new(ErrorCode::Forbidden, "another user's private room"),
                )
                .await;
        }
        if let Some(&joined_at) = self.rooms.get(&room) {
            // Already a member: live events have flowed since `joined_at`, so a
            // cursor at or past it has missed nothing.
            let recovered = since.is_some_and(|s| s.epoch == epoch && s.seq >= joined_at);
            let frame = ServerFrame::Joined {
                id,
                room: room.as_str(),
                epoch: &epoch,
                seq: self.edge.router.last_seq(&room).unwrap_or(joined_at),
                recovered,
                missed: 0,
            };
            self.send(frame.encode()).await;
            return;
        }
        if self.rooms.len() >= self.edge.cfg.limits.max_rooms_per_conn {
            let msg = format!(
                "room limit reached ({} per connection)",
                self.edge.cfg.limits.max_rooms_per_conn
            );
            return self
                .fail(id, Failure::new(ErrorCode::RateLimited, msg))
                .await;
        }
        if check && let Err(f) = self.authorize(&room).await {
            return self.fail(id, f).await;
        }
        let ticket = match self.edge.router.join(&self.handle, &room).await {
            Ok(t) => t,
            Err(e) => {
                return self
                    .fail(id, Failure::new(ErrorCode::Unavailable, e.to_string()))
                    .await;
            }
        };
        let resume = match self
            .resume(&room, since.as_ref(), &epoch, ticket.last_seq)
            .await
        {
            Ok(r) => r,
            Err(f) => {
                self.edge.router.leave(self.handle.id(), &room);
                return self.fail(id, f).await;
            }
        };
        self.rooms.insert(room.clone(), ticket.last_seq);
        let joined = ServerFrame::Joined {
            id,
            room: room.as_str(),
            epoch: &epoch,
            seq: ticket.last_seq.max(resume.last),
            recovered: resume.recovered,
            missed: resume.frames.len() as u64,
        }
        .encode();
        self.send(joined).await;
        self.edge
            .metrics
            .catchup_events
            .fetch_add(resume.frames.len() as u64, Relaxed);
        for f in resume.frames {
            self.send(f).await;
        }
        self.edge
            .router
            .activate(&room, self.handle.id(), resume.last.max(ticket.last_seq));
        self.edge
            .presence
            .enter(&room, &self.session.user, self.session.claims.info.as_ref());
        self.lifecycle(LifecycleEvent::RoomJoin, Some(&room)).await;
    }

    /// Reads what a `since` cursor missed, up to `upto` (the room's sequence
    /// at join time).
    async fn resume(
        &self,
        room: &Room,
        since: Option<&Since>,
        epoch: &str,
        upto: u64,
    ) -> Result<Resume, Failure> {
        let none = |recovered| Resume {
            recovered,
            frames: Vec::new(),
            last: upto,
        };
        let Some(since) = since else {
            return Ok(none(false));
        };
        if since.epoch != epoch {
            return Ok(none(false));
        }
        let reader = &self.edge.reader;
        let subject = self.edge.router.stored_subject(room);
        if since.seq > upto {
            // The cursor is ahead of what this edge has delivered in the room
            // (it came from an edge that was further along). If the stream
            // holds it, the client has missed nothing: live events resume after
            // its cursor. A cursor beyond the stream is not one we gave out.
            let stored = reader.last_seq(&subject).await.map_err(|e| {
                Failure::new(
                    ErrorCode::Unavailable,
                    format!("reading the room's last event: {e}"),
                )
            })?;
            if since.seq > stored {
                return Ok(none(false));
            }
            return Ok(Resume {
                recovered: true,
                frames: Vec::new(),
                last: since.seq,
            });
        }
        if since.seq == upto {
            return Ok(none(true));
        }
        let unavailable = |e: String| {
            Failure::new(
                ErrorCode::Unavailable,
                format!("reading missed events: {e}"),
            )
        };
        // Events on one subject are removed oldest first (age and per-room
        // limits), so if the cursor's own event is still stored, everything
        // after it is too. A cursor of 0 (an empty room) is anchored when the
        // stream never dropped anything from its head.
        let anchored = self
            .edge
            .reads
            .anchored(&subject, since.seq)
            .await
            .map_err(unavailable)?;
        if !anchored {
            return Ok(none(false));
        }
        let max = self.edge.cfg.catchup.max_events;
        let shared = self
            .edge
            .reads
            .range(&subject, since.seq, upto, max)
            .await
            .map_err(unavailable)?;
        let (events, truncated) = (&shared.0, shared.1);
        let per_room_limit = self.edge.cfg.stream.max_msgs_per_subject;
        if truncated
            || (since.seq == 0 && per_room_limit > 0 && events.len() as i64 >= per_room_limit)
        {
            return Ok(none(false));
        }
        let me = &self.session.user;
        let mut frames = Vec::with_capacity(events.len());
        for e in events {
            let Some(frame) = e.shared_frame(room) else {
                continue;
            };
            let excluded = e
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::EXCLUDE_USER))
                .is_some_and(|v| v.as_str() == me.as_str() || v.as_str() == me.encoded());
            if !excluded {
                frames.push(frame);
            }
        }
        Ok(Resume {
            recovered: true,
            frames,
            last: events.last().map_or(upto, |e| e.seq),
        })
    }

    /// The last events of a room, authorized as a join would be.
    async fn history(&mut self, id: Option<i64>, room: Room, limit: Option<u64>) {
        if !self.rooms.contains_key(&room)
            && let Err(f) = self.authorize(&room).await
        {
            return self.fail(id, f).await;
        }
        let c = &self.edge.cfg.catchup;
        let n = limit
            .map_or(c.history_default, |l| {
                usize::try_from(l).unwrap_or(usize::MAX)
            })
            .min(c.history_max);
        let subject = self.edge.router.stored_subject(&room);
        let events = match self.edge.reader.last_n(&subject, n).await {
            Ok(e) => e,
            Err(e) => {
                return self
                    .fail(
                        id,
                        Failure::new(ErrorCode::Unavailable, format!("reading history: {e}")),
                    )
                    .await;
            }
        };
        let frames: Vec<String> = events.iter().filter_map(|e| e.frame(&room)).collect();
        let raw: Vec<Box<RawValue>> = frames
            .into_iter()
            .filter_map(|f| RawValue::from_string(f).ok())
            .collect();
        let frame = ServerFrame::History {
            id,
            room: room.as_str(),
            events: raw.iter().map(|r| r.as_ref()).collect(),
        };
        self.send(frame.encode()).await;
    }

    /// Who is in a room, across the cluster, authorized as a join would be.
    async fn presence(&mut self, id: Option<i64>, room: Room) {
        let tracker = &self.edge.presence;
        if !tracker.enabled() {
            return self
                .fail(
                    id,
                    Failure::new(
                        ErrorCode::Unavailable,
                        "presence is turned off on this edge (presence.enabled)",
                    ),
                )
                .await;
        }
        if !tracker.tracks(&room) {
            let msg = format!(
                "presence is off for rooms of kind `{}` (presence.disabled_kinds)",
                room.kind()
            );
            return self.fail(id, Failure::new(ErrorCode::NotFound, msg)).await;
        }
        if !self.rooms.contains_key(&room)
            && let Err(f) = self.authorize(&room).await
        {
            return self.fail(id, f).await;
        }
        match tracker
            .members(&room, self.edge.cfg.presence.query_max)
            .await
        {
            Ok((users, total)) => {
                let frame = ServerFrame::Presence {
                    id,
                    room: room.as_str(),
                    users: &users,
                    total,
                };
                self.send(frame.encode()).await;
            }
            Err(e) => {
                self.fail(
                    id,
                    Failure::new(ErrorCode::Unavailable, format!("reading presence: {e}")),
                )
                .await
            }
        }
    }

    pub(crate) async fn leave(&mut self, room: Room, id: Option<i64>) {
        if self.rooms.remove(&room).is_none() {
            if id.is_some() {
                self.fail(id, Failure::new(ErrorCode::NotFound, "not in this room"))
                    .await;
            }
            return;
        }
        self.edge.router.leave(self.handle.id(), &room);
        self.edge.presence.exit(&room, &self.session.user);
        self.lifecycle(LifecycleEvent::RoomLeave, Some(&room)).await;
        self.send(
            ServerFrame::Left {
                id,
                room: room.as_str(),
            }
            .encode(),
        )
        .await;
    }

    fn payload_bytes(&self, data: &Option<Box<RawValue>>) -> Result<bytes::Bytes, Failure> {
        let raw = data.as_ref().map_or("null", |d| d.get());
        let max = self.edge.cfg.limits.max_payload_bytes;
        if raw.len() > max {
            return Err(Failure::new(
                ErrorCode::TooLarge,
                format!("`data` is larger than {max} bytes"),
            ));
        }
        Ok(bytes::Bytes::copy_from_slice(raw.as_bytes()))
    }

    async fn emit(&mut self, id: Option<i64>, event: String, data: Option<Box<RawValue>>) {
        let payload = match self.payload_bytes(&data) {
            Ok(p) => p,
            Err(f) => return self.fail(id, f).await,
        };
        if self.inflight.len() >= self.edge.cfg.limits.max_inflight_requests {
            let msg = format!(
                "too many requests waiting for services ({} at most)",
                self.edge.cfg.limits.max_inflight_requests
            );
            return self
                .fail(id, Failure::new(ErrorCode::RateLimited, msg))
                .await;
        }
        let edge = self.edge.clone();
        let handle = self.handle.clone();
        let h = self.identity_headers();
        self.inflight.spawn(async move {
            let frame = rpc(&edge, &event, h, payload, id).await;
            if !handle
                .push(Outbound::Frame(frame.into()), edge.cfg.reply_enqueue())
                .await
            {
                handle.kill(Disconnect::new(
                    CloseCode::SLOW_CONSUMER,
                    "slow consumer: reconnect and resume",
                ));
            }
        });
    }

    async fn publish(
        &mut self,
        id: Option<i64>,
        room: Room,
        event: String,
        data: Option<Box<RawValue>>,
    ) {
        if !self.session.claims.may_publish(&self.session.user, &room) {
            return self
                .fail(
                    id,
                    Failure::new(
                        ErrorCode::Forbidden,
                        "the token's `publish` claim does not allow this room",
                    ),
                )
                .await;
        }
        let payload = match self.payload_bytes(&data) {
            Ok(p) => p,
            Err(f) => return self.fail(id, f).await,
        };
        let mut h = HeaderMap::new();
        h.insert(headers::EVENT, event.as_str());
        h.insert(headers::EXCLUDE_CONN, &**self.handle.id());
        let subject = self.edge.subjects.live(&room);
        match self
            .edge
            .client
            .publish_with_headers(subject, h, payload)
            .await
        {
            Ok(()) => {
                self.send(ServerFrame::Reply { id, data: None }.encode())
                    .await
            }
            Err(e) => {
                self.fail(
                    id,
                    Failure::new(ErrorCode::Unavailable, format!("publish failed: {e}")),
                )
                .await
            }
        }
    }

    async fn refresh(&mut self, id: Option<i64>, token: String) {
        if self.edge.cfg.auth.connect_hook && !self.edge.verifier.has_keys() {
            return self
                .fail(
                    id,
                    Failure::new(
                        ErrorCode::BadRequest,
                        "this edge authenticates through the connect hook: reconnect instead",
                    ),
                )
                .await;
        }
        match self.edge.verifier.verify(&token).await {
            Ok(s) if s.user == self.session.user => {
                self.expires = super::expiry_instant(s.exp());
                self.session = s;
                self.send(ServerFrame::Reply { id, data: None }.encode())
                    .await;
            }
            Ok(_) => {
                self.fail(
                    id,
                    Failure::new(ErrorCode::Forbidden, "the new token is for another user"),
                )
                .await
            }
            Err(e) => {
                self.edge.metrics.auth_failure("refresh");
                self.fail(
                    id,
                    Failure::new(ErrorCode::Forbidden, format!("token refused: {e}")),
                )
                .await
            }
        }
    }
}

/// Reads the authorizer's answer. Only a JSON object whose `allow` is the
/// literal `true` lets the user in; anything else refuses. (A derived
/// `Deserialize` struct also accepts a JSON array, so `[true]` used to allow.)
fn authz_verdict(payload: &[u8]) -> Result<(), Failure> {
    let refused = || {
        Failure::new(
            ErrorCode::Forbidden,
            "the authorizer's answer was not {\"allow\":true}",
        )
    };
    let Ok(serde_json::Value::Object(answer)) = serde_json::from_slice(payload) else {
        return Err(refused());
    };
    if answer.get("allow") == Some(&serde_json::Value::Bool(true)) {
        return Ok(());
    }
    match answer.get("reason").and_then(|r| r.as_str()) {
        Some(reason) => Err(Failure::new(
            ErrorCode::Forbidden,
            reason.chars().take(200).collect::<String>(),
        )),
        None if answer.contains_key("allow") => Err(Failure::new(
            ErrorCode::Forbidden,
            "the authorizer refused this room",
        )),
        None => Err(refused()),
    }
}

/// Performs an `emit`: a request on `P.rpc.<event>`, the reply relayed.
async fn rpc(
    edge: &Arc<Edge>,
    event: &str,
    h: HeaderMap,
    payload: bytes::Bytes,
    id: Option<i64>,
) -> String {
    let started = Instant::now();
    let req = edge
        .client
        .request_with_headers(edge.subjects.rpc(event), h, payload);
    let fail = |code, msg: String| error_frame(edge, id, &Failure(code, msg));
    match tokio::time::timeout(edge.cfg.rpc_timeout(), req).await {
        Err(_) => fail(
            ErrorCode::Timeout,
            format!(
                "no reply for `{event}` within {} ms",
                edge.cfg.rpc.timeout_ms
            ),
        ),
        Ok(Err(e)) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => fail(
                ErrorCode::NoHandler,
                format!("no service handles `{event}`"),
            ),
            async_nats::RequestErrorKind::TimedOut => fail(
                ErrorCode::Timeout,
                format!("no reply for `{event}` in time"),
            ),
            async_nats::RequestErrorKind::MaxPayloadExceeded => {
                fail(ErrorCode::TooLarge, "request too large for NATS".into())
            }
            _ => fail(
                ErrorCode::Unavailable,
                "the message bus is unavailable".into(),
            ),
        },
        Ok(Ok(msg)) => {
            edge.metrics.rpc_latency.observe(started.elapsed());
            if let Some(code) = msg.headers.as_ref().and_then(|h| h.get(headers::ERROR)) {
                let code = ErrorCode::parse(code.as_str()).unwrap_or(ErrorCode::BadRequest);
                #[derive(serde::Deserialize)]
                struct Msg {
                    message: String,
                }
                let message = serde_json::from_slice::<Msg>(&msg.payload)
                    .map(|m| m.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&msg.payload).into_owned());
                return fail(code, message);
            }
            reply_frame(id, &msg.payload)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_literal_allow_true_object_allows() {
        assert!(authz_verdict(br#"{"allow":true}"#).is_ok());
        assert!(authz_verdict(br#"{"allow":true,"reason":"x"}"#).is_ok());
        for refused in [
            &br#"[true]"#[..],
            br#"[true,"x"]"#,
            br#"{"allow":"true"}"#,
            br#"{"allow":1}"#,
            br#"{"allow":false}"#,
            br#"{}"#,
            br#"true"#,
            b"null",
            b"",
            b"\xff",
        ] {
            let r = authz_verdict(refused);
            assert!(
                matches!(r, Err(Failure(ErrorCode::Forbidden, _))),
                "{:?}",
                String::from_utf8_lossy(refused)
            );
        }
        let Err(Failure(_, why)) = authz_verdict(br#"{"allow":false,"reason":"not a member"}"#)
        else {
            panic!()
        };
        assert_eq!(why, "not a member");
    }
}
