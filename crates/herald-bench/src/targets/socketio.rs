//! Socket.IO 4.8 on Node: one server, or two joined by `@socket.io/redis-adapter`
//! through a Redis (Debian's `redis-server`) — the architecture Herald replaces.
//!
//! The server is `bench/peers/socketio/server.js` (its npm dependencies come from
//! `scripts/bench-peers-setup.sh`), started with `PORT` and, for two nodes,
//! `REDIS_URL`. The bench's client speaks Engine.IO v4 / Socket.IO v5 over a
//! plain WebSocket, no polling:
//!
//! ```text
//! ws://127.0.0.1:PORT/socket.io/?EIO=4&transport=websocket
//!   ← 0{"sid":…}                     Engine.IO open
//!   → 40{"rooms":["r1","r2"]}        Socket.IO CONNECT with the rooms as auth
//!   ← 40{"sid":…}                    connected
//!   ← 42["ready"]                    rooms joined: the client counts as joined
//!   ← 2   → 3                        Engine.IO heartbeat
//!   ← 42["e","<payload string>"]     an event
//! ```
//!
//! The publisher is a client with no rooms that sends
//! `42["publish","<room>","<payload>"]`; the server does
//! `io.to(room).emit("e", payload)`. With two nodes, subscribers alternate
//! between them and the publisher uses node 1, so half the deliveries cross Redis.

use super::{Decoder, Running, StartOpts, Ws, next_text, send_text};
use crate::children::{ChildGuard, free_port, wait_for_port};
use anyhow::{Context as _, Result, bail};
use futures::stream::SplitSink;
use futures::{SinkExt as _, StreamExt as _};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// Starts `nodes` Socket.IO servers (with Redis when more than one).
pub async fn start(opts: &StartOpts, nodes: usize) -> Result<Running> {
    if !opts.socketio_server.exists() {
        bail!(
            "{} not found: the Socket.IO peer server is missing (run scripts/bench-peers-setup.sh, or pass --socketio-server)",
            opts.socketio_server.display()
        );
    }
    let mut children = Vec::new();
    let mut redis_url = None;
    if nodes > 1 {
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let mut redis = ChildGuard::spawn("redis", cmd, Some(&opts.log_dir.join("redis.log")))?;
        wait_for_port(&mut redis, port, Duration::from_secs(10)).await?;
        children.push(redis);
        redis_url = Some(format!("redis://127.0.0.1:{port}"));
    }
    let mut endpoints = Vec::new();
    for n in 1..=nodes {
        let port = free_port()?;
        let mut cmd = Command::new("node");
        cmd.arg(&opts.socketio_server).env("PORT", port.to_string());
        if let Some(url) = &redis_url {
            cmd.env("REDIS_URL", url);
        }
        let name = format!("node-{n}");
        let mut node = ChildGuard::spawn(
            &name,
            cmd,
            Some(&opts.log_dir.join(format!("socketio-{name}.log"))),
        )?;
        // The server prints `READY <port>` once listening; accepting TCP on
        // that port is the same signal and needs no pipe.
        wait_for_port(&mut node, port, Duration::from_secs(30)).await?;
        children.push(node);
        endpoints.push(format!("ws://127.0.0.1:{port}"));
    }
    Ok(Running {
        kind: if nodes > 1 {
            super::TargetKind::SocketioRedis
        } else {
            super::TargetKind::Socketio
        },
        children,
        publish_url: endpoints[0].clone(),
        endpoints,
        secret: None,
        scratch: None,
    })
}

/// Opens the Engine.IO WebSocket and joins `rooms`; returns after `ready`.
pub async fn connect(endpoint: &str, rooms: &[String]) -> Result<(Ws, Decoder)> {
    let url = format!("{endpoint}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = super::ws_connect(url).await.context("WebSocket connect")?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with("0{") {
        bail!("expected the Engine.IO open packet, got {open}");
    }
    let auth = serde_json::json!({ "rooms": rooms });
    send_text(&mut ws, format!("40{auth}")).await?;
    let (mut connected, mut ready) = (false, false);
    while !ready {
        let p = next_text(&mut ws).await?;
        if p == "2" {
            send_text(&mut ws, "3".into()).await?;
        } else if p.starts_with("40") {
            connected = true;
        } else if p.starts_with("44") {
            bail!("Socket.IO connect refused: {p}");
        } else if p.starts_with("42") && connected && p.contains(r#""ready""#) {
            ready = true;
        }
    }
    Ok((ws, Decoder::SocketIo))
}

/// Handles one packet of a subscriber.
pub fn decode(msg: &Message, replies: &mut Vec<Message>, event: &mut dyn FnMut(u64, u64)) {
    let Message::Text(t) = msg else { return };
    let t = t.as_str();
    if t == "2" {
        replies.push(Message::text("3"));
    } else if let Some(json) = t.strip_prefix("42") {
        // ["e","<payload as a JSON string>"]: decoding the string is part of
        // what any Socket.IO client must do.
        if let Ok((name, payload)) = serde_json::from_str::<(&str, String)>(json)
            && name == "e"
            && let Some((s, ts)) = crate::payload::find(payload.as_bytes())
        {
            event(s, ts);
        }
    }
}

type Sink = Arc<Mutex<SplitSink<Ws, Message>>>;

/// A Socket.IO client in no room that asks the server to broadcast.
pub struct Publisher {
    sink: Sink,
    reader: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Connects as a client with no rooms; a task answers the heartbeat.
    pub async fn connect(endpoint: &str) -> Result<Self> {
        let (ws, _) = connect(endpoint, &[])
            .await
            .context("connecting the Socket.IO publisher")?;
        let (sink, mut stream) = ws.split();
        let sink: Sink = Arc::new(Mutex::new(sink));
        let reader = {
            let sink = sink.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(&m, Message::Text(t) if t.as_str() == "2")
                        && sink.lock().await.send(Message::text("3")).await.is_err()
                    {
                        break;
                    }
                }
            })
        };
        Ok(Self { sink, reader })
    }

    /// Queues one `publish` event (written at the next flush).
    pub async fn publish(&mut self, room: &str, payload: String) -> Result<()> {
        let packet =
            serde_json::to_string(&("publish", room, payload)).context("encoding a publish")?;
        self.sink
            .lock()
            .await
            .feed(Message::text(format!("42{packet}")))
            .await
            .context("publishing to Socket.IO")
    }

    /// Writes what was queued.
    pub async fn flush(&mut self) -> Result<()> {
        self.sink
            .lock()
            .await
            .flush()
            .await
            .context("flushing to Socket.IO")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
