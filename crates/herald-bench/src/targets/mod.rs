//! The systems under test. Each target module has three parts:
//!
//! - **server side** (`start`): starts the target's processes on free ports and
//!   says which pids to measure and which URLs clients connect to;
//! - **publisher**: how the coordinator gets an event into a room (JetStream for
//!   Herald, core NATS for NATS WebSocket, a WebSocket frame for the ceiling and
//!   Socket.IO);
//! - **client** (`connect` + a [`Decoder`]): the handshake and join of one
//!   subscriber, and how its frames are read.
//!
//! Every client is built on the same stack (tokio-tungstenite, one task per
//! connection, the same payload scanner) so the targets differ only in what the
//! server does and in the protocol it requires.

pub mod ceiling;
pub mod herald;
pub mod natsws;
pub mod socketio;

use crate::children::ChildGuard;
use crate::procstat::Proc;
use anyhow::{Context as _, Result, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A client's WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The targets `--target` / `--targets` accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// `herald serve` with its own `nats-server -js`.
    Herald,
    /// `herald-bench ceiling-server`: the minimal broadcaster.
    Ceiling,
    /// `nats-server`'s own WebSocket listener, clients speaking the NATS protocol.
    NatsWs,
    /// One Socket.IO 4.8 server on Node.
    Socketio,
    /// Two Socket.IO servers joined by `@socket.io/redis-adapter` and Redis.
    SocketioRedis,
}

impl TargetKind {
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Herald => "herald",
            TargetKind::Ceiling => "ceiling",
            TargetKind::NatsWs => "nats-ws",
            TargetKind::Socketio => "socketio",
            TargetKind::SocketioRedis => "socketio-redis",
        }
    }
}

/// What the coordinator needs to start targets (from the command line).
#[derive(Debug, Clone)]
pub struct StartOpts {
    /// The `herald` binary.
    pub herald_bin: PathBuf,
    /// Extra `HERALD_*` variables for `herald serve`.
    pub herald_env: Vec<(String, String)>,
    /// The Socket.IO server script.
    pub socketio_server: PathBuf,
    /// Where the servers' logs go.
    pub log_dir: PathBuf,
}

/// A started target: its processes (killed on drop) and how to reach it.
pub struct Running {
    /// Which target.
    pub kind: TargetKind,
    /// Server processes, measured and killed on drop.
    pub children: Vec<ChildGuard>,
    /// WebSocket base URLs, one per node.
    pub endpoints: Vec<String>,
    /// The HS256 secret clients sign tokens with (Herald).
    pub secret: Option<String>,
    /// Where the publisher connects (a NATS URL or a WebSocket URL).
    pub publish_url: String,
    /// Temporary files (NATS store, config), removed on drop after the
    /// processes are stopped.
    pub scratch: Option<tempfile::TempDir>,
}

impl Running {
    /// The processes to measure.
    pub fn procs(&self) -> Vec<Proc> {
        self.children
            .iter()
            .map(|c| Proc {
                name: c.name().to_string(),
                pid: c.pid(),
            })
            .collect()
    }

    /// Fails if any server process has died.
    pub fn check_alive(&mut self) -> Result<()> {
        self.children
            .iter_mut()
            .try_for_each(ChildGuard::check_alive)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Clients of the last node first, dependencies (NATS, Redis) last.
        while let Some(c) = self.children.pop() {
            drop(c);
        }
        // Only now that nothing writes to it.
        drop(self.scratch.take());
    }
}

/// Starts `kind`.
pub async fn start(kind: TargetKind, opts: &StartOpts) -> Result<Running> {
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    match kind {
        TargetKind::Herald => herald::start(opts).await,
        TargetKind::Ceiling => ceiling::start(opts).await,
        TargetKind::NatsWs => natsws::start(opts).await,
        TargetKind::Socketio => socketio::start(opts, 1).await,
        TargetKind::SocketioRedis => socketio::start(opts, 2).await,
    }
}

/// The coordinator's publisher for one target.
pub enum Publisher {
    /// JetStream publish with pipelined acks.
    Herald(herald::Publisher),
    /// WebSocket frames `<room>\n<payload>`.
    Ceiling(ceiling::Publisher),
    /// Core NATS publish.
    Nats(natsws::Publisher),
    /// Socket.IO `publish` events.
    SocketIo(socketio::Publisher),
}

impl Publisher {
    /// Connects the publisher of `running`.
    pub async fn connect(running: &Running) -> Result<Self> {
        Ok(match running.kind {
            TargetKind::Herald => {
                Publisher::Herald(herald::Publisher::connect(&running.publish_url).await?)
            }
            TargetKind::Ceiling => {
                Publisher::Ceiling(ceiling::Publisher::connect(&running.publish_url).await?)
            }
            TargetKind::NatsWs => {
                Publisher::Nats(natsws::Publisher::connect(&running.publish_url).await?)
            }
            TargetKind::Socketio | TargetKind::SocketioRedis => {
                Publisher::SocketIo(socketio::Publisher::connect(&running.publish_url).await?)
            }
        })
    }

    /// Queues one event for logical `room`. May wait when the target pushes back.
    pub async fn publish(&mut self, room: &str, payload: String) -> Result<()> {
        match self {
            Publisher::Herald(p) => p.publish(room, payload).await,
            Publisher::Ceiling(p) => p.publish(room, payload).await,
            Publisher::Nats(p) => p.publish(room, payload).await,
            Publisher::SocketIo(p) => p.publish(room, payload).await,
        }
    }

    /// Pushes out what was queued (called once per pacing tick).
    pub async fn flush(&mut self) -> Result<()> {
        match self {
            Publisher::Herald(p) => p.flush().await,
            Publisher::Ceiling(p) => p.flush().await,
            Publisher::Nats(p) => p.flush().await,
            Publisher::SocketIo(p) => p.flush().await,
        }
    }

    /// Waits until everything published is accepted (JetStream acks); returns
    /// how many publishes failed.
    pub async fn settle(&mut self) -> Result<u64> {
        match self {
            Publisher::Herald(p) => p.settle().await,
            _ => {
                self.flush().await?;
                Ok(0)
            }
        }
    }
}

/// Reads one subscriber's frames: finds events, answers protocol pings.
pub enum Decoder {
    /// Herald JSON frames.
    Herald,
    /// Bare payloads.
    Ceiling,
    /// NATS protocol over WebSocket (a byte stream split across frames).
    Nats(natsws::Parser),
    /// Engine.IO / Socket.IO packets.
    SocketIo,
}

/// What one frame held.
pub enum Frame {
    /// Nothing of interest.
    None,
    /// The server closed the connection.
    Closed,
}

impl Decoder {
    /// Handles one message: calls `event(seq, t_ns)` per event found and pushes
    /// any protocol answer to `replies`.
    pub fn on_message(
        &mut self,
        msg: Message,
        replies: &mut Vec<Message>,
        event: &mut dyn FnMut(u64, u64),
    ) -> Result<Frame> {
        if let Message::Close(_) = msg {
            return Ok(Frame::Closed);
        }
        match self {
            Decoder::Herald | Decoder::Ceiling => {
                if let Some((s, t)) = crate::payload::find(message_bytes(&msg)) {
                    event(s, t);
                }
            }
            Decoder::Nats(p) => p.feed(message_bytes(&msg), replies, event)?,
            Decoder::SocketIo => socketio::decode(&msg, replies, event),
        }
        Ok(Frame::None)
    }
}

/// Where a Herald connection is in its room (the `since` of a resume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The stream's epoch.
    pub epoch: String,
    /// The room's sequence.
    pub seq: u64,
}

/// A subscriber that has joined its rooms.
pub struct Joined {
    /// Its socket.
    pub ws: Ws,
    /// How to read it.
    pub decoder: Decoder,
    /// Its cursor in its first room (Herald only).
    pub cursor: Option<Cursor>,
}

impl Joined {
    fn plain((ws, decoder): (Ws, Decoder)) -> Self {
        Self {
            ws,
            decoder,
            cursor: None,
        }
    }
}

/// Opens and joins one subscriber of `kind`: connection number `conn` (global)
/// to `endpoint`, in logical `rooms`, resuming from `since` (Herald only).
pub async fn connect(
    kind: TargetKind,
    endpoint: &str,
    conn: usize,
    rooms: &[String],
    secret: Option<&str>,
    since: Option<&Cursor>,
) -> Result<Joined> {
    let fut = async {
        match kind {
            TargetKind::Herald => {
                let secret = secret.context("herald needs a token secret")?;
                herald::connect(endpoint, conn, rooms, secret, since).await
            }
            TargetKind::Ceiling => ceiling::connect(endpoint, rooms).await.map(Joined::plain),
            TargetKind::NatsWs => natsws::connect(endpoint, rooms).await.map(Joined::plain),
            TargetKind::Socketio | TargetKind::SocketioRedis => {
                socketio::connect(endpoint, rooms).await.map(Joined::plain)
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .context("connect and join took over 60 s")?
}

/// Opens a client WebSocket with `TCP_NODELAY`, as browsers do, so Nagle's
/// algorithm (with delayed ACKs) adds no stall to a small frame; every target's
/// clients and WebSocket publishers go through here.
pub async fn ws_connect(
    url: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    tokio_tungstenite::connect_async_with_config(url, None, true).await
}

/// The bytes of a text or binary message (empty for control frames).
pub fn message_bytes(msg: &Message) -> &[u8] {
    match msg {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => &[],
    }
}

/// The next text or binary message during a handshake, as text.
pub async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Binary(b))) => return Ok(String::from_utf8_lossy(&b).into_owned()),
            Some(Ok(Message::Close(c))) => {
                bail!("closed by the server during the handshake: {c:?}")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("reading during the handshake"),
            None => bail!("connection ended during the handshake"),
        }
    }
}

/// Sends one text frame.
pub async fn send_text(ws: &mut Ws, text: String) -> Result<()> {
    ws.send(Message::text(text))
        .await
        .context("sending during the handshake")
}
