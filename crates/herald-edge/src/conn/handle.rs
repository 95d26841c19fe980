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
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// A connection id, unique per edge process.
pub type ConnId = Arc<str>;

/// Something for the writer to put on the socket.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame (shared bytes: the same event frame goes to every recipient).
    Frame(Utf8Bytes),
    /// Send `disconnect`, then a close frame, then stop. Boxed so that a queue
    /// slot is the size of a frame (32 bytes, not 40): tokio's channel
    /// allocates 32 slots per connection up front.
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

struct Inner {
    id: ConnId,
    user: UserId,
    tx: mpsc::Sender<Outbound>,
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
    pub fn new(id: ConnId, user: UserId, capacity: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, outbound) = mpsc::channel(capacity);
        let h = Self(Arc::new(Inner {
            id,
            user,
            tx,
            commands: Mutex::new(VecDeque::new()),
            command_ready: Notify::new(),
            kill: CancellationToken::new(),
            killed: OnceLock::new(),
        }));
        (h, outbound)
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
        self.0.tx.try_send(Outbound::Frame(frame)).is_ok()
    }

    /// Queues a frame, waiting at most `wait` for room (for answers to the
    /// connection's own requests, never for fan-out).
    pub async fn push(&self, out: Outbound, wait: std::time::Duration) -> bool {
        matches!(self.0.tx.send_timeout(out, wait).await, Ok(()))
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
