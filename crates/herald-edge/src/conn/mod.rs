//! One WebSocket connection, from upgrade to close.
//!
//! [`run`] authenticates, registers the connection, spawns its writer
//! ([`writer`]), joins the user's own room and the token's `join` rooms, and then
//! loops over client frames, service commands, timers and shutdown. Each request
//! type is handled in [`requests`]. Whatever ends the loop, the connection leaves
//! every room and unregisters before the task ends.

pub mod handle;
pub mod handshake;
pub mod limiter;
pub mod requests;
pub mod writer;

use crate::auth::{Session, TokenSource};
use crate::edge::Edge;
use axum::extract::ws::{Message, WebSocket};
use futures::StreamExt as _;
use handle::{Command, ConnHandle, Disconnect, Outbound};
use herald_protocol::frame::ServerFrame;
use herald_protocol::subject::LifecycleEvent;
use herald_protocol::{CloseCode, Room};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the upgrade request told us before the socket existed.
#[derive(Debug)]
pub struct Upgrade {
    /// Whether the `Origin` passed the allow-list.
    pub origin_ok: bool,
    /// The token found in the request, if any.
    pub token: Option<(String, TokenSource)>,
}

/// A live, authenticated connection's state, owned by its task.
pub struct Conn {
    pub(crate) edge: Arc<Edge>,
    pub(crate) handle: ConnHandle,
    pub(crate) session: Session,
    /// Rooms joined, with the room's last sequence at the time of joining.
    pub(crate) rooms: HashMap<Room, u64>,
    pub(crate) inflight: JoinSet<()>,
    pub(crate) limiter: limiter::TokenBucket,
    pub(crate) expires: Option<Instant>,
}

fn expiry_instant(exp: Option<u64>) -> Option<Instant> {
    let exp = exp?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Some(Instant::now() + Duration::from_secs(exp.saturating_sub(now)))
}

fn is_invalid_utf8(e: &axum::Error) -> bool {
    e.to_string().contains("UTF-8")
}

fn is_too_large(e: &axum::Error) -> bool {
    let s = e.to_string();
    s.contains("Message too long")
        || s.contains("Space limit exceeded")
        || s.contains("frame too long")
}

/// After our close frame, reads (and drops) what the client still sends until
/// its close reply, so that the TCP connection is not torn down under frames
/// the client has yet to read (a reset would discard them, our close included).
async fn linger(stream: &mut futures::stream::SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
}

/// Decides whether a new socket becomes a connection: Origin, credentials,
/// the edge's and the user's connection limits. Registers it when admitted.
async fn admit(
    edge: &Edge,
    stream: &mut futures::stream::SplitStream<WebSocket>,
    up: Upgrade,
) -> Result<(Session, ConnHandle, handle::OutboundRx), Disconnect> {
    if !up.origin_ok {
        edge.metrics.auth_failure("origin");
        return Err(Disconnect::new(CloseCode::POLICY, "origin not allowed"));
    }
    let session = handshake::authenticate(edge, stream, up.token).await?;
    if edge.metrics.connections.load(Relaxed) as usize >= edge.cfg.limits.max_connections {
        edge.metrics.auth_failure("edge_full");
        return Err(Disconnect::new(
            CloseCode::TRY_AGAIN_LATER,
            "edge is full: try again later",
        ));
    }
    let (handle, outbound) = ConnHandle::new(
        edge.new_conn_id(),
        session.user.clone(),
        edge.cfg.limits.outbound_queue,
    );
    if edge
        .registry
        .register(&handle, edge.cfg.limits.max_conns_per_user)
        .is_none()
    {
        edge.metrics.auth_failure("too_many_connections");
        let limit = edge.cfg.limits.max_conns_per_user;
        return Err(Disconnect::new(
            CloseCode::RATE_LIMITED,
            format!("too many connections for this user (limit {limit})"),
        ));
    }
    Ok((session, handle, outbound))
}

/// Serves one upgraded socket until it closes.
///
/// This future is every connection's resident state, and its size is that of
/// its largest state: everything awaited other than the main loop's branches
/// (authentication, requests, commands, the close sequence) is boxed, so it
/// costs memory only while it runs. That took the future from 4.3 KiB to 2.8
/// KiB (docs/PERFORMANCE-NOTES.md).
pub async fn run(edge: Arc<Edge>, socket: WebSocket, up: Upgrade) {
    let _tracked = edge.tracker.token();
    let (mut sink, mut stream) = socket.split();
    let (session, handle, outbound) = match Box::pin(admit(&edge, &mut stream, up)).await {
        Ok(admitted) => admitted,
        Err(d) => {
            tracing::info!(code = d.code.0, reason = %d.reason, "connection refused");
            edge.metrics.close(d.code.0);
            Box::pin(writer::close_with(&mut sink, &d)).await;
            Box::pin(linger(&mut stream)).await;
            return;
        }
    };
    edge.metrics.connections.fetch_add(1, Relaxed);
    edge.metrics.connections_total.fetch_add(1, Relaxed);
    let done = CancellationToken::new();
    let mut writer_task = tokio::spawn(writer::run(
        sink,
        outbound,
        handle.clone(),
        edge.cfg.ping(),
        done.clone(),
    ));
    let mut conn = Conn {
        limiter: limiter::TokenBucket::new(
            edge.cfg.limits.requests_per_sec,
            edge.cfg.limits.request_burst,
        ),
        expires: expiry_instant(session.exp()),
        edge: edge.clone(),
        handle: handle.clone(),
        session,
        rooms: HashMap::new(),
        inflight: JoinSet::new(),
    };
    tracing::debug!(conn = %handle.id(), user = %handle.user(), "connected");
    Box::pin(conn.lifecycle(LifecycleEvent::ConnOpen, None)).await;
    let welcome = ServerFrame::Welcome {
        conn: handle.id(),
        user: conn.session.user.as_str(),
        edge: &edge.id,
        ping_ms: edge.cfg.timeouts.ping_ms,
    }
    .encode();
    Box::pin(conn.send(welcome)).await;
    Box::pin(conn.auto_join()).await;

    let idle = edge.cfg.idle_timeout();
    let mut idle_at = Instant::now() + idle;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let closing: Option<Disconnect> = loop {
        let expires = conn.expires.unwrap_or(far);
        tokio::select! {
            biased;
            _ = handle.kill_token().cancelled() => break None,
            _ = done.cancelled() => break None,
            _ = edge.shutdown.cancelled() => {
                break Some(Disconnect::new(CloseCode::RESTART, "server is restarting: reconnect and resume"));
            }
            _ = tokio::time::sleep_until(expires) => {
                edge.metrics.auth_failure("expired_in_session");
                break Some(Disconnect::new(CloseCode::TOKEN_EXPIRED, "token expired: refresh it and reconnect"));
            }
            _ = tokio::time::sleep_until(idle_at) => {
                break Some(Disconnect::new(CloseCode::GOING_AWAY, "idle timeout: nothing received from the client"));
            }
            _ = handle.command_ready() => {
                let mut stop = None;
                while let Some(cmd) = handle.next_command() {
                    stop = Box::pin(conn.on_command(cmd)).await;
                    if stop.is_some() {
                        break;
                    }
                }
                if stop.is_some() {
                    break stop;
                }
            }
            Some(_) = conn.inflight.join_next(), if !conn.inflight.is_empty() => {}
            msg = stream.next() => {
                idle_at = Instant::now() + idle;
                match msg {
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) if is_too_large(&e) => {
                        break Some(Disconnect::new(
                            CloseCode::TOO_LARGE,
                            format!("frame too large (limit {} bytes)", edge.cfg.limits.max_frame_bytes),
                        ));
                    }
                    Some(Err(e)) if is_invalid_utf8(&e) => {
                        break Some(Disconnect::new(
                            CloseCode::INVALID_PAYLOAD,
                            "a text frame was not valid UTF-8",
                        ));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(conn = %handle.id(), error = %e, "socket error");
                        break None;
                    }
                    Some(Ok(Message::Text(t))) => {
                        if let Some(d) = Box::pin(conn.on_text(t.as_str())).await {
                            break Some(d);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if let Some(d) = Box::pin(conn.on_binary()).await {
                            break Some(d);
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
        }
    };
    if closing.is_none() && handle.killed().is_none() {
        // The client closed (or the socket failed): nothing more to send but
        // tungstenite's reply to the close, which the writer flushes as it
        // stops. Without this the writer idled until the drain timeout, holding
        // the socket and task 10 s after every polite close.
        done.cancel();
    }
    if let Some(d) = &closing {
        edge.metrics.close(d.code.0);
        tracing::debug!(conn = %handle.id(), code = d.code.0, reason = %d.reason, "closing");
        // Queued frames go out first, then the disconnect and close frames.
        if !Box::pin(handle.push(
            Outbound::Close(Box::new(d.clone())),
            edge.cfg.reply_enqueue(),
        ))
        .await
        {
            handle.kill(d.clone());
        }
    } else if let Some(d) = handle.killed() {
        edge.metrics.close(d.code.0);
    }
    conn.inflight.abort_all();
    for room in conn.rooms.keys() {
        edge.router.leave(handle.id(), room);
        edge.presence.exit(room, handle.user());
        Box::pin(conn.lifecycle(LifecycleEvent::RoomLeave, Some(room))).await;
    }
    edge.registry.unregister(&handle);
    edge.metrics.connections.fetch_sub(1, Relaxed);
    Box::pin(conn.lifecycle(LifecycleEvent::ConnClose, None)).await;
    if tokio::time::timeout(edge.cfg.drain_timeout(), &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
    if closing.is_some() || handle.killed().is_some() {
        Box::pin(linger(&mut stream)).await;
    }
    done.cancel();
}

impl Conn {
    /// Queues a frame for this connection, waiting for room if needed.
    pub(crate) async fn send(&self, frame: impl Into<axum::extract::ws::Utf8Bytes>) {
        if !self
            .handle
            .push(Outbound::Frame(frame.into()), self.edge.cfg.reply_enqueue())
            .await
        {
            self.handle.kill(Disconnect::new(
                CloseCode::SLOW_CONSUMER,
                "slow consumer: reconnect and resume",
            ));
        }
    }

    async fn auto_join(&mut self) {
        let own = Room::for_user(&self.session.user);
        self.join(own, None, None, false).await;
        let extra: Vec<String> = self.session.claims.join.clone();
        for r in extra {
            match Room::parse(&r) {
                // Rooms in the signed `join` claim were granted by the token's issuer.
                Ok(room) => self.join(room, None, None, false).await,
                Err(e) => {
                    tracing::warn!(room = %r, error = %e, "ignoring an invalid room in the token's `join` claim")
                }
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) -> Option<Disconnect> {
        match cmd {
            Command::Join(room) => {
                self.join(room, None, None, false).await;
                None
            }
            Command::Leave(room) => {
                self.leave(room, None).await;
                None
            }
            Command::Disconnect(d) => Some(d),
        }
    }

    /// Publishes a lifecycle event for services. Core NATS, best effort: the
    /// call only queues into the client's buffer, in order.
    pub(crate) async fn lifecycle(&self, what: LifecycleEvent, room: Option<&Room>) {
        let mut body = serde_json::json!({
            "user": self.session.user.as_str(),
            "conn": &**self.handle.id(),
            "edge": self.edge.id,
            "ts": SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
        });
        if let Some(r) = room {
            body["room"] = r.as_str().into();
        }
        let subject = self.edge.subjects.lifecycle(what);
        if let Err(e) = self
            .edge
            .client
            .publish(subject, body.to_string().into())
            .await
        {
            tracing::debug!(error = %e, "lifecycle event not published");
        }
    }
}
