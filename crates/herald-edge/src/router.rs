//! Interest-based routing and the fan-out.
//!
//! The router holds one entry per room that at least one local connection is in.
//! Creating the entry subscribes to the room's `P.live.room.<kind>.<id>` subject
//! and starts the room's task; removing the last member cancels the task, which
//! drops the subscription. So an edge only ever receives traffic for rooms it
//! serves.
//!
//! Each room's task turns one NATS message into one frame (encoded once, shared
//! by reference count) and hands it to every member with a non-blocking push; a
//! member whose queue is full is killed with 4008 and never slows the others.
//!
//! Durable events are delivered in stream order and exactly once per room: the
//! task remembers the last sequence it delivered, drops anything at or below it,
//! and when a message's `Nats-Last-Sequence` shows that something on the room's
//! subject was missed (a NATS reconnect, a client-side drop), reads the gap from
//! the stream and delivers it first.
//!
//! A joining member starts *pending*: events are buffered for it (bounded) while
//! its own task sends the `joined` frame and any catch-up, then
//! [`Router::activate`] flushes the buffer past the catch-up's last sequence.
//! That makes the seam between stored and live events gapless and duplicate-free.

use crate::conn::handle::{ConnHandle, ConnId, Disconnect};
use crate::metrics::Metrics;
use crate::nats::NatsSignal;
use crate::stream::StreamReader;
use async_nats::{Client, HeaderMap};
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt as _;
use herald_protocol::frame::{event_frame, presence_join_frame, presence_leave_frame};
use herald_protocol::headers::{self, valid_event_name};
use herald_protocol::{CloseCode, Room, Subjects, UserId, presence};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a join could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// NATS could not be reached for the room's subscription or its last sequence.
    #[error("the event stream is unavailable: {0}")]
    Unavailable(String),
}

enum MemberState {
    Live,
    /// Events that arrived while the member's catch-up was in flight:
    /// `(sequence, frame)`, sequence `None` for volatile events.
    Pending(Vec<(Option<u64>, Utf8Bytes)>),
}

struct Member {
    handle: ConnHandle,
    state: MemberState,
    /// Durable events up to this sequence are not sent to this member: it
    /// already has them (a resume whose cursor, from another edge, is ahead of
    /// what this edge has delivered in the room so far).
    floor: u64,
}

struct Members {
    map: HashMap<ConnId, Member>,
    /// The last durable sequence delivered to this room's members.
    last_seq: u64,
}

struct RoomState {
    room: Room,
    live_subject: String,
    stored_subject: String,
    members: Mutex<Members>,
    ready: watch::Receiver<Option<Result<(), String>>>,
    cancel: CancellationToken,
}

/// What a successful join tells the joining connection.
#[derive(Debug, Clone, Copy)]
pub struct JoinTicket {
    /// Every durable event after this sequence reaches the member through the
    /// router; everything up to it must come from the stream (catch-up).
    pub last_seq: u64,
}

/// The router's tunables, from config.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// The stream epoch, shared with the edge (for gap notices).
    pub epoch: Arc<std::sync::RwLock<String>>,
    /// Events buffered for a member whose catch-up is in flight before it is a
    /// slow consumer (the outbound queue size).
    pub pending_cap: usize,
    /// How often each room checks the stream for a missed last event.
    pub check_every: Option<std::time::Duration>,
    /// Events read from the stream at a time when filling a gap.
    pub fill_chunk: usize,
}

/// Routes NATS room traffic to local connections.
pub struct Router {
    rooms: Mutex<HashMap<Room, Arc<RoomState>>>,
    client: Client,
    subjects: Subjects,
    reader: StreamReader,
    metrics: Arc<Metrics>,
    pending_cap: usize,
    check_every: Option<std::time::Duration>,
    fill_chunk: usize,
    epoch: Arc<std::sync::RwLock<String>>,
    tracker: TaskTracker,
    signals: broadcast::Sender<NatsSignal>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

/// Who a message asks to skip.
struct Exclusions {
    conn: Option<String>,
    users: Vec<UserId>,
}

impl Exclusions {
    fn from(h: Option<&HeaderMap>) -> Self {
        let conn = h
            .and_then(|h| h.get(headers::EXCLUDE_CONN))
            .map(|v| v.as_str().to_owned());
        let mut users = Vec::new();
        if let Some(v) = h.and_then(|h| h.get(headers::EXCLUDE_USER)) {
            // Accept both the encoded form (what SDKs send) and a raw id.
            users.extend(UserId::decode(v.as_str()).ok());
            users.extend(UserId::new(v.as_str()).ok());
        }
        Self { conn, users }
    }

    fn skips(&self, h: &ConnHandle) -> bool {
        self.conn.as_deref().is_some_and(|c| c == &**h.id())
            || self.users.iter().any(|u| u == h.user())
    }
}

impl Router {
    /// A router for one edge.
    pub fn new(
        client: Client,
        subjects: Subjects,
        reader: StreamReader,
        metrics: Arc<Metrics>,
        settings: RouterSettings,
        tracker: TaskTracker,
        signals: broadcast::Sender<NatsSignal>,
    ) -> Arc<Self> {
        let RouterSettings {
            pending_cap,
            check_every,
            fill_chunk,
            epoch,
        } = settings;
        Arc::new(Self {
            rooms: Mutex::new(HashMap::new()),
            client,
            subjects,
            reader,
            metrics,
            pending_cap,
            check_every,
            fill_chunk: fill_chunk.max(1),
            epoch,
            tracker,
            signals,
        })
    }

    /// How many rooms have local members.
    pub fn room_count(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Adds `handle` to `room` as a pending member, subscribing if it is the
    /// room's first, and waits until the room knows its last sequence.
    pub async fn join(
        self: &Arc<Self>,
        handle: &ConnHandle,
        room: &Room,
    ) -> Result<JoinTicket, RouterError> {
        let state = {
            let mut rooms = self
                .rooms
                .lock()
                .map_err(|_| RouterError::Unavailable("router lock poisoned".into()))?;
            let state = match rooms.get(room) {
                Some(s) => s.clone(),
                None => {
                    let s = self.start_room(room);
                    rooms.insert(room.clone(), s.clone());
                    s
                }
            };
            if let Ok(mut m) = state.members.lock() {
                m.map.insert(
                    handle.id().clone(),
                    Member {
                        handle: handle.clone(),
                        state: MemberState::Pending(Vec::new()),
                        floor: 0,
                    },
                );
            }
            state
        };
        let mut ready = state.ready.clone();
        let outcome = ready
            .wait_for(Option::is_some)
            .await
            .map(|v| v.clone().unwrap_or(Ok(())))
            .unwrap_or_else(|_| Err("room task ended".into()));
        if let Err(e) = outcome {
            self.leave(handle.id(), room);
            return Err(RouterError::Unavailable(e));
        }
        let last_seq = state.members.lock().map(|m| m.last_seq).unwrap_or(0);
        Ok(JoinTicket { last_seq })
    }

    /// Makes a pending member live: delivers what was buffered for it after
    /// `delivered` (the last sequence its catch-up sent), then everything new.
    pub fn activate(&self, room: &Room, conn: &ConnId, delivered: u64) {
        let Some(state) = self.rooms.lock().ok().and_then(|r| r.get(room).cloned()) else {
            return;
        };
        let Ok(mut m) = state.members.lock() else {
            return;
        };
        let Some(member) = m.map.get_mut(conn) else {
            return;
        };
        member.floor = delivered;
        if let MemberState::Pending(buf) = std::mem::replace(&mut member.state, MemberState::Live) {
            for (seq, frame) in buf {
                if seq.is_some_and(|s| s <= delivered) {
                    continue;
                }
                if !member.handle.try_push(frame) {
                    self.slow(&member.handle);
                    break;
                }
                self.metrics.events_out.fetch_add(1, Relaxed);
            }
        }
    }

    /// Removes `conn` from `room`; the last member out drops the subscription.
    /// Returns whether it was a member.
    pub fn leave(&self, conn: &ConnId, room: &Room) -> bool {
        let Ok(mut rooms) = self.rooms.lock() else {
            return false;
        };
        let Some(state) = rooms.get(room).cloned() else {
            return false;
        };
        let (was, empty) = match state.members.lock() {
            Ok(mut m) => (m.map.remove(conn).is_some(), m.map.is_empty()),
            Err(_) => (false, false),
        };
        if empty {
            rooms.remove(room);
            state.cancel.cancel();
            self.metrics.rooms.fetch_sub(1, Relaxed);
        }
        was
    }

    /// The last durable sequence delivered in `room`, if it has local members.
    pub fn last_seq(&self, room: &Room) -> Option<u64> {
        let state = self.rooms.lock().ok()?.get(room).cloned()?;
        state.members.lock().ok().map(|m| m.last_seq)
    }

    /// Forgets every room's last sequence: the stream was recreated and its
    /// sequences start again from 1. Each room then catches up from the new
    /// stream's beginning.
    pub fn reset_sequences(&self) {
        let Ok(rooms) = self.rooms.lock() else { return };
        for state in rooms.values() {
            if let Ok(mut m) = state.members.lock() {
                m.last_seq = 0;
            }
        }
        let _ = self.signals.send(NatsSignal::Reconnected);
    }

    /// The stored-event subject of a room.
    pub fn stored_subject(&self, room: &Room) -> String {
        self.subjects.room(room)
    }

    fn slow(&self, h: &ConnHandle) {
        if h.killed().is_none() {
            self.metrics.slow_consumer_disconnects.fetch_add(1, Relaxed);
            tracing::info!(conn = %h.id(), user = %h.user(), "slow consumer: closing with 4008");
        }
        h.kill(Disconnect::new(
            CloseCode::SLOW_CONSUMER,
            "slow consumer: reconnect and resume",
        ));
    }

    fn start_room(self: &Arc<Self>, room: &Room) -> Arc<RoomState> {
        let (tx, rx) = watch::channel(None);
        let state = Arc::new(RoomState {
            room: room.clone(),
            live_subject: self.subjects.live(room),
            stored_subject: self.subjects.room(room),
            members: Mutex::new(Members {
                map: HashMap::new(),
                last_seq: 0,
            }),
            ready: rx,
            cancel: CancellationToken::new(),
        });
        self.metrics.rooms.fetch_add(1, Relaxed);
        let this = self.clone();
        let s = state.clone();
        self.tracker
            .spawn(async move { this.run_room(s, tx).await });
        state
    }

    async fn run_room(
        self: Arc<Self>,
        state: Arc<RoomState>,
        ready: watch::Sender<Option<Result<(), String>>>,
    ) {
        // This future lives as long as the room (for a user's own room, as long
        // as the user is connected), and its size is that of its largest
        // state: the rarely taken awaits (subscribe, the first read, catch-up,
        // gap fill) are boxed, which took it from 2.6 KiB to 1.1 KiB.
        let mut signals = self.signals.subscribe();
        // Subscribe first, then read the last stored sequence: anything stored
        // after that read arrives on the subscription.
        let mut sub = match Box::pin(self.client.subscribe(state.live_subject.clone())).await {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Some(Err(e.to_string())));
                return;
            }
        };
        self.metrics.nats_subscriptions.fetch_add(1, Relaxed);
        let init = tokio::select! {
            r = Box::pin(self.reader.last_seq_direct(&state.stored_subject)) => r,
            _ = state.cancel.cancelled() => Ok(0),
        };
        match init {
            Ok(last) => {
                if let Ok(mut m) = state.members.lock() {
                    m.last_seq = last;
                }
                let _ = ready.send(Some(Ok(())));
            }
            Err(e) => {
                tracing::warn!(room = %state.room, error = %e, "could not read the room's last sequence");
                let _ = ready.send(Some(Err(e.to_string())));
                self.metrics.nats_subscriptions.fetch_sub(1, Relaxed);
                return;
            }
        }
        // Periodic check, with a random phase so rooms do not all ask at once.
        let period = self
            .check_every
            .unwrap_or(std::time::Duration::from_secs(365 * 24 * 3600));
        let phase = period.mul_f64(rand::random::<f64>());
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        // A catch-up that failed (JetStream still electing a leader after a
        // node came back) is tried again, with backoff, until it succeeds.
        let mut retry: Option<(tokio::time::Instant, std::time::Duration)> = None;
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600);
        loop {
            let catch_up = tokio::select! {
                _ = state.cancel.cancelled() => break,
                _ = check.tick(), if self.check_every.is_some() => true,
                _ = tokio::time::sleep_until(retry.map_or(far, |(at, _)| at)), if retry.is_some() => true,
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    self.on_message(&state, msg).await;
                    false
                }
                sig = signals.recv() => {
                    // After a reconnect or a client-side drop, whatever the
                    // subscription missed is read back from the stream.
                    matches!(sig, Ok(_) | Err(broadcast::error::RecvError::Lagged(_)))
                }
            };
            if catch_up {
                retry = if Box::pin(self.catch_up_room(&state)).await {
                    None
                } else {
                    let wait = retry.map_or(std::time::Duration::from_millis(250), |(_, w)| {
                        (w * 2).min(std::time::Duration::from_secs(5))
                    });
                    Some((tokio::time::Instant::now() + wait, wait))
                };
            }
        }
        self.metrics.nats_subscriptions.fetch_sub(1, Relaxed);
    }

    /// Reads the room's last stored sequence and fills what was missed.
    /// Returns `false` if it must be tried again.
    async fn catch_up_room(&self, state: &RoomState) -> bool {
        let last = state.members.lock().map(|m| m.last_seq).unwrap_or(0);
        match self.reader.last_seq(&state.stored_subject).await {
            Ok(stored) if stored > last => self.fill(state, last, stored).await,
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(room = %state.room, error = %e, "could not check the room for missed events; retrying");
                false
            }
        }
    }

    /// Delivers the stored events in `(after, upto]`; `false` if the stream
    /// could not be read (nothing was delivered).
    async fn fill(&self, state: &RoomState, after: u64, upto: u64) -> bool {
        // Was anything in the gap trimmed by retention before we could read it?
        // Events of one subject are removed oldest first, so if the last event
        // delivered is still stored, nothing after it is gone.
        let anchored = match self.reader.anchored(&state.stored_subject, after).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(room = %state.room, after, upto, error = %e, "could not check a gap");
                return false;
            }
        };
        if !anchored {
            self.gap_notice(state, upto);
        }
        // Read and deliver in chunks of `fill_chunk` events, so a long gap (an
        // edge cut off from NATS for a while) never sits in memory whole.
        let (mut from, mut filled) = (after, 0usize);
        loop {
            let (events, truncated) = match self
                .reader
                .range(&state.stored_subject, from, upto, self.fill_chunk)
                .await
            {
                Ok(r) => r,
                Err(e) if filled == 0 => {
                    tracing::warn!(room = %state.room, after, upto, error = %e, "could not fill a gap");
                    return false;
                }
                Err(e) => {
                    // Part of the gap is delivered; the rest cannot be read now.
                    tracing::warn!(room = %state.room, from, upto, error = %e, "could not finish filling a gap");
                    break;
                }
            };
            filled += events.len();
            if let Some(last) = events.last() {
                from = last.seq;
            }
            for e in events {
                let Some(frame) = e.frame(&state.room) else {
                    continue;
                };
                let frame = Utf8Bytes::from(frame);
                self.deliver(
                    state,
                    Some(e.seq),
                    frame,
                    &Exclusions::from(e.headers.as_ref()),
                );
            }
            if !truncated || from >= upto {
                break;
            }
        }
        let complete = anchored && from == upto;
        tracing::info!(room = %state.room, after, upto, filled, complete, "filled a gap from the stream");
        if anchored && !complete {
            // The tail could not be read (a lagging replica or a failed read).
            self.gap_notice(state, upto);
        }
        if !complete && let Ok(mut m) = state.members.lock() {
            m.last_seq = m.last_seq.max(upto);
        }
        true
    }

    /// Tells every member that events of the room were lost to retention: an
    /// unsolicited `joined` frame with `recovered:false` (the same signal a
    /// resume past retention gives), so apps reload the room's state.
    fn gap_notice(&self, state: &RoomState, upto: u64) {
        self.metrics.gaps_unfillable.fetch_add(1, Relaxed);
        let epoch = self.epoch.read().map(|e| e.clone()).unwrap_or_default();
        let frame = herald_protocol::frame::ServerFrame::Joined {
            id: None,
            room: state.room.as_str(),
            epoch: &epoch,
            seq: upto,
            recovered: false,
            missed: 0,
        }
        .encode();
        tracing::warn!(room = %state.room, upto, "events were lost to retention before they could be delivered");
        let frame = Utf8Bytes::from(frame);
        let Ok(mut m) = state.members.lock() else {
            return;
        };
        for member in m.map.values_mut() {
            match &mut member.state {
                MemberState::Live => {
                    if !member.handle.try_push(frame.clone()) {
                        self.slow(&member.handle);
                    }
                }
                MemberState::Pending(buf) => buf.push((None, frame.clone())),
            }
        }
    }

    async fn on_message(&self, state: &RoomState, msg: async_nats::Message) {
        let h = msg.headers.as_ref();
        if let Some(kind) = h.and_then(|h| h.get(presence::HEADER)) {
            return self.on_presence(state, kind.as_str(), &msg);
        }
        let Some(event) = h
            .and_then(|h| h.get(headers::EVENT))
            .map(|v| v.as_str())
            .filter(|e| valid_event_name(e))
        else {
            tracing::warn!(subject = %msg.subject, "dropping a message without a valid Herald-Event header");
            return;
        };
        let seq = header_u64(h, headers::NATS_SEQUENCE);
        match seq {
            Some(seq) => {
                self.metrics.events_in_durable.fetch_add(1, Relaxed);
                let last = state.members.lock().map(|m| m.last_seq).unwrap_or(0);
                if seq <= last {
                    self.metrics.events_duplicate.fetch_add(1, Relaxed);
                    return;
                }
                let prev = header_u64(h, headers::NATS_LAST_SEQUENCE).unwrap_or(0);
                if prev > last && !Box::pin(self.fill(state, last, prev)).await {
                    // The gap could not be read now, and this event cannot wait:
                    // tell the members that events were skipped, as for a gap
                    // lost to retention, so apps reload.
                    self.gap_notice(state, prev);
                }
            }
            None => {
                self.metrics.events_in_volatile.fetch_add(1, Relaxed);
            }
        }
        let frame = Utf8Bytes::from(event_frame(state.room.as_str(), event, seq, &msg.payload));
        self.deliver(state, seq, frame, &Exclusions::from(h));
    }

    /// A `presence_join`/`presence_leave` announcement from the edge that made
    /// the transition: delivered like a volatile event.
    fn on_presence(&self, state: &RoomState, kind: &str, msg: &async_nats::Message) {
        let user = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::USER))
            .and_then(|v| UserId::decode(v.as_str()).ok());
        let Some(user) = user else {
            tracing::warn!(subject = %msg.subject, "dropping a presence announcement without a valid Herald-User");
            return;
        };
        let frame = match kind {
            "join" => {
                let info = serde_json::from_slice::<serde_json::Value>(&msg.payload).ok();
                presence_join_frame(state.room.as_str(), user.as_str(), info.as_ref())
            }
            "leave" => presence_leave_frame(state.room.as_str(), user.as_str()),
            other => {
                tracing::warn!(
                    kind = other,
                    "dropping a presence announcement of unknown kind"
                );
                return;
            }
        };
        let none = Exclusions {
            conn: None,
            users: Vec::new(),
        };
        self.deliver(state, None, Utf8Bytes::from(frame), &none);
    }

    /// Hands one frame to every member (buffering for pending ones).
    fn deliver(&self, state: &RoomState, seq: Option<u64>, frame: Utf8Bytes, ex: &Exclusions) {
        let Ok(mut m) = state.members.lock() else {
            return;
        };
        if let Some(seq) = seq {
            if seq <= m.last_seq {
                self.metrics.events_duplicate.fetch_add(1, Relaxed);
                return;
            }
            m.last_seq = seq;
        }
        let mut sent = 0u64;
        for member in m.map.values_mut() {
            if ex.skips(&member.handle) {
                continue;
            }
            match &mut member.state {
                MemberState::Live if seq.is_some_and(|s| s <= member.floor) => {}
                MemberState::Live => {
                    if member.handle.try_push(frame.clone()) {
                        sent += 1;
                    } else {
                        self.slow(&member.handle);
                    }
                }
                MemberState::Pending(buf) => {
                    if buf.len() < self.pending_cap {
                        buf.push((seq, frame.clone()));
                    } else {
                        self.slow(&member.handle);
                    }
                }
            }
        }
        self.metrics.events_out.fetch_add(sent, Relaxed);
    }
}
