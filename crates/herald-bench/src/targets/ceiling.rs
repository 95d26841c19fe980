//! The ceiling: `herald-bench ceiling-server` (see `ceiling_server.rs`) started
//! as its own process, so its CPU and memory are measured like any target's.
//!
//! Subscribers connect to `/sub?room=R` (repeat `room=` for several) and count
//! as joined when the server sends `ok`; the publisher connects to `/pub` and
//! sends `<room>\n<payload>` text frames, batched per pacing tick.

use super::{Decoder, Running, StartOpts, Ws, next_text};
use crate::children::{ChildGuard, free_port, wait_for_port};
use anyhow::{Context as _, Result, bail};
use futures::SinkExt as _;
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Starts the ceiling server on a free port.
pub async fn start(opts: &StartOpts) -> Result<Running> {
    let port = free_port()?;
    let exe = std::env::current_exe().context("finding herald-bench's own path")?;
    let mut cmd = Command::new(exe);
    cmd.args(["ceiling-server", "--port", &port.to_string()]);
    let mut child = ChildGuard::spawn(
        "ceiling-server",
        cmd,
        Some(&opts.log_dir.join("ceiling.log")),
    )?;
    wait_for_port(&mut child, port, Duration::from_secs(10)).await?;
    let url = format!("ws://127.0.0.1:{port}");
    Ok(Running {
        kind: super::TargetKind::Ceiling,
        children: vec![child],
        endpoints: vec![url.clone()],
        secret: None,
        publish_url: format!("{url}/pub"),
        scratch: None,
    })
}

/// Subscribes to `rooms` and waits for the server's `ok`.
pub async fn connect(endpoint: &str, rooms: &[String]) -> Result<(Ws, Decoder)> {
    let query: Vec<String> = rooms.iter().map(|r| format!("room={r}")).collect();
    let url = format!("{endpoint}/sub?{}", query.join("&"));
    let (mut ws, _) = super::ws_connect(url).await.context("WebSocket connect")?;
    let first = next_text(&mut ws).await?;
    if first != "ok" {
        bail!("expected ok, got {first}");
    }
    Ok((ws, Decoder::Ceiling))
}

/// The publisher's WebSocket.
pub struct Publisher {
    ws: Ws,
}

impl Publisher {
    /// Connects to `/pub`.
    pub async fn connect(url: &str) -> Result<Self> {
        let (ws, _) = super::ws_connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { ws })
    }

    /// Queues one frame (written at the next flush, or when the buffer fills).
    pub async fn publish(&mut self, room: &str, payload: String) -> Result<()> {
        let frame = format!("{room}\n{payload}");
        self.ws
            .feed(Message::text(frame))
            .await
            .context("publishing to the ceiling server")
    }

    /// Writes what was queued.
    pub async fn flush(&mut self) -> Result<()> {
        self.ws
            .flush()
            .await
            .context("flushing to the ceiling server")
    }
}
