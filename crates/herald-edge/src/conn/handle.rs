//! The handle through which the rest of the edge reaches one connection: its
//! bounded outbound queue, its command channel, and its kill switch.
//!
//! The fan-out only ever calls [`ConnHandle::try_push`], which never waits: a
//! full queue means the client is not keeping up, and the caller kills the
//! connection with 4008 instead of buffering without bound or blocking the room.

use axum::extract::ws::Utf8Bytes;
use herald_protocol::{CloseCode, Room, UserId};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A connection id, unique per edge process.
pub type ConnId = Arc<str>;

/// Something for the writer to put on the socket.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame (shared bytes: the same event frame goes to every recipient).
    Frame(Utf8Bytes),
    /// Send `disconnect`, then a close frame, then stop.
    Close(Disconnect),
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

struct Inner {
    id: ConnId,
    user: UserId,
    tx: mpsc::Sender<Outbound>,
    commands: mpsc::Sender<Command>,
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

/// The receiving ends, owned by the connection's tasks.
#[derive(Debug)]
pub struct ConnQueues {
    /// Frames for the writer.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Commands for the connection task.
    pub commands: mpsc::Receiver<Command>,
}

impl ConnHandle {
    /// Creates a handle with an outbound queue of `capacity` frames.
    pub fn new(id: ConnId, user: UserId, capacity: usize) -> (Self, ConnQueues) {
        let (tx, outbound) = mpsc::channel(capacity);
        // Commands are rare (service-driven); 64 pending ones per connection is
        // plenty, and a full channel drops the command with a warning.
        let (ctx, commands) = mpsc::channel(64);
        let h = Self(Arc::new(Inner {
            id,
            user,
            tx,
            commands: ctx,
            kill: CancellationToken::new(),
            killed: OnceLock::new(),
        }));
        (h, ConnQueues { outbound, commands })
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
        self.0.killed.get().is_none() && self.0.tx.try_send(Outbound::Frame(frame)).is_ok()
    }

    /// Queues a frame, waiting at most `wait` for room (for answers to the
    /// connection's own requests, never for fan-out).
    pub async fn push(&self, out: Outbound, wait: std::time::Duration) -> bool {
        matches!(self.0.tx.send_timeout(out, wait).await, Ok(()))
    }

    /// Passes a command to the connection task (dropped if 64 are pending).
    pub fn command(&self, c: Command) -> bool {
        self.0.commands.try_send(c).is_ok()
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
