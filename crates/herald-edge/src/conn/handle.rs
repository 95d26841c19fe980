//! The handle through which the rest of the edge reaches one connection: its
//! bounded outbound queue, its command channel, and its kill switch.
//!
//! The fan-out only ever calls [`ConnHandle::try_push`], which never waits: a
//! full queue means the client is not keeping up, and the caller kills the
//! connection with 4008 instead of buffering without bound or blocking the room.

use axum::extract::ws::Utf8Bytes;
use herald_protocol::{CloseCode, Room, UserId};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A connection id, unique per edge process.
pub type ConnId = Arc<str>;

/// Something for the writer to put on the socket.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame (shared bytes: the same event frame goes to every recipient).
    Frame(Utf8Bytes),
    /// Send `disconnect`, then a close frame, then stop. Boxed so that a queue
    /// slot is the size of a frame (32 bytes, not 40): a backlog of frames
    /// costs a fifth less.
    Close(Box<Disconnect>),
}

/// Why and how a connection is being closed.
#[derive(Debug, Clone)]
pub struct Disconnect {
    /// The close code.
    pub code: CloseCode,
    /// Human-readable reason (also the close frame's reason, truncated).
    pub reason: String,
    /// Whether the client should reconnect.
    pub reconnect: bool,
}

impl Disconnect {
    /// A disconnect whose `reconnect` follows the code's meaning.
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            reconnect: code.should_reconnect(),
        }
    }
}

/// A request to the connection's own task, from services (`P.ctl.user.…`).
#[derive(Debug, Clone)]
pub enum Command {
    /// Join a room (no authorization: the service decided).
    Join(Room),
    /// Leave a room.
    Leave(Room),
    /// Close the connection.
    Disconnect(Disconnect),
}

/// Commands pending for one connection before more are dropped.
const MAX_PENDING_COMMANDS: usize = 64;

/// A connection's bounded outbound queue, shared by the senders (the handle)
/// and the writer ([`OutboundRx`]).
///
/// Not a tokio mpsc channel: that allocates a block of 32 slots and ~0.5 KiB
/// of channel state for every connection up front, about 1.5 KiB per idle
/// connection. This one allocates when frames are queued, and gives a large
/// backlog's memory back once it is drained.
struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    /// Wakes the writer when a frame is queued.
    readable: Notify,
    /// Wakes senders waiting for room ([`ConnHandle::push`]).
    writable: Notify,
}

struct QueueState {
    items: VecDeque<Outbound>,
    /// The writer is gone: every push fails.
    closed: bool,
}

/// Slots a drained queue may keep for the next frames; a bigger buffer (left
/// by a burst) is released when the queue empties.
const KEEP_SLOTS: usize = 64;

impl Queue {
    /// Queues `out` if there is room; `Err` gives it back when full or closed.
    fn try_push(&self, out: Outbound) -> Result<(), Option<Outbound>> {
        let Ok(mut st) = self.state.lock() else {
            return Err(None);
        };
        if st.closed {
            return Err(None);
        }
        if st.items.len() >= self.capacity {
            return Err(Some(out));
        }
        st.items.push_back(out);
        drop(st);
        self.readable.notify_one();
        Ok(())
    }
}

/// The writer's end of a connection's outbound queue. Dropping it closes the
/// queue: pushes fail from then on, as with a dropped channel receiver.
pub struct OutboundRx(Arc<Inner>);

impl std::fmt::Debug for OutboundRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutboundRx({})", self.0.id)
    }
}

impl OutboundRx {
    /// Resolves when a frame may be waiting (see [`OutboundRx::try_recv`]).
    pub async fn readable(&self) {
        self.0.queue.readable.notified().await;
    }

    /// Takes the oldest queued item, if any.
    pub fn try_recv(&self) -> Option<Outbound> {
        let q = &self.0.queue;
        let mut st = q.state.lock().ok()?;
        // Senders wait only on a full queue (and register before they look),
        // so only the first pop from a full queue needs to wake them; waking
        // on every pop would take the Notify's lock once per frame.
        let was_full = st.items.len() >= q.capacity;
        let out = st.items.pop_front();
        if out.is_some() {
            if st.items.is_empty() && st.items.capacity() > KEEP_SLOTS {
                st.items = VecDeque::new();
            }
            drop(st);
            if was_full {
                q.writable.notify_waiters();
            }
        }
        out
    }

    /// Makes the next [`OutboundRx::readable`] resolve at once.
    pub fn notify_self(&self) {
        self.0.queue.readable.notify_one();
    }

    /// Whether items are queued.
    pub fn has_pending(&self) -> bool {
        self.0
            .queue
            .state
            .lock()
            .map(|st| !st.items.is_empty())
            .unwrap_or(false)
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let q = &self.0.queue;
        if let Ok(mut st) = q.state.lock() {
            st.closed = true;
            st.items = VecDeque::new();
        }
        q.writable.notify_waiters();
    }
}

struct Inner {
    id: ConnId,
    user: UserId,
    queue: Queue,
    /// Pending commands. Commands are rare, so this is a plain queue that
    /// allocates only when one arrives, not a channel: a tokio mpsc channel
    /// allocates its first block of 32 slots (plus ~0.5 KiB of channel state)
    /// up front, about 1.8 KiB for every idle connection.
    commands: Mutex<VecDeque<Command>>,
    command_ready: Notify,
    kill: CancellationToken,
    killed: OnceLock<Disconnect>,
}

/// A cheap, clonable handle to one connection.
#[derive(Clone)]
pub struct ConnHandle(Arc<Inner>);

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({})", self.0.id)
    }
}

impl ConnHandle {
    /// Creates a handle with an outbound queue of `capacity` frames; the
    /// receiving end is the writer's.
    pub fn new(id: ConnId, user: UserId, capacity: usize) -> (Self, OutboundRx) {
        let h = Self(Arc::new(Inner {
            id,
            user,
            queue: Queue {
                state: Mutex::new(QueueState {
                    items: VecDeque::new(),
                    closed: false,
                }),
                capacity: capacity.max(1),
                readable: Notify::new(),
                writable: Notify::new(),
            },
            commands: Mutex::new(VecDeque::new()),
            command_ready: Notify::new(),
            kill: CancellationToken::new(),
            killed: OnceLock::new(),
        }));
        let rx = OutboundRx(h.0.clone());
        (h, rx)
    }

    /// The connection id.
    pub fn id(&self) -> &ConnId {
        &self.0.id
    }

    /// The user.
    pub fn user(&self) -> &UserId {
        &self.0.user
    }

    /// Queues a frame without waiting. `false` when the queue is full (or the
    /// connection is gone): the caller decides to kill it.
    pub fn try_push(&self, frame: Utf8Bytes) -> bool {
        // Nothing is queued behind a kill: the writer would drop it anyway.
        // (`killed` is set before the token is cancelled, and reading it is
        // one atomic load; the token's own check takes a lock.)
        self.0.killed.get().is_none() && self.0.queue.try_push(Outbound::Frame(frame)).is_ok()
    }

    /// Queues a frame, waiting at most `wait` for room (for answers to the
    /// connection's own requests, never for fan-out).
    pub async fn push(&self, out: Outbound, wait: std::time::Duration) -> bool {
        let q = &self.0.queue;
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = out;
        loop {
            // Registered before trying, so a drain in between is not missed.
            let room = q.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match q.try_push(out) {
                Ok(()) => return true,
                Err(None) => return false,
                Err(Some(back)) => out = back,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return false;
            }
        }
    }

    /// Passes a command to the connection task (dropped if 64 are pending).
    /// Commands are rare (service-driven); 64 pending ones per connection is
    /// plenty, and the caller warns when one is dropped.
    pub fn command(&self, c: Command) -> bool {
        let Ok(mut q) = self.0.commands.lock() else {
            return false;
        };
        if q.len() >= MAX_PENDING_COMMANDS {
            return false;
        }
        q.push_back(c);
        drop(q);
        // Stores a permit if the connection task is not waiting right now.
        self.0.command_ready.notify_one();
        true
    }

    /// Resolves when a command may be waiting (see [`ConnHandle::next_command`]).
    pub(crate) async fn command_ready(&self) {
        self.0.command_ready.notified().await;
    }

    /// Takes the oldest pending command, releasing the queue's memory once it
    /// is empty.
    pub(crate) fn next_command(&self) -> Option<Command> {
        let mut q = self.0.commands.lock().ok()?;
        let c = q.pop_front();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
        c
    }

    /// Closes the connection at once, skipping whatever is queued. The first
    /// reason given wins.
    pub fn kill(&self, d: Disconnect) {
        let _ = self.0.killed.set(d);
        self.0.kill.cancel();
        // The writer waits on its queue, and looks at `killed` when it wakes.
        self.0.queue.readable.notify_one();
    }

    /// Why the connection was killed, if it was.
    pub fn killed(&self) -> Option<&Disconnect> {
        self.0.killed.get()
    }

    /// Resolves when the connection is killed.
    pub fn kill_token(&self) -> &CancellationToken {
        &self.0.kill
    }
}
