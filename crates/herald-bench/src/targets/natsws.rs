//! NATS's own WebSocket listener: what a user might run instead of an edge.
//!
//! The coordinator starts a second `nats-server` (core only, no JetStream) with a
//! `websocket { listen: …, no_tls: true }` block. Subscribers speak the NATS
//! client protocol over WebSocket (`CONNECT`, `SUB`, then `PING` and wait for
//! `PONG`, which proves the subscription is registered; parse `MSG`/`HMSG`;
//! answer `PING` with `PONG`). It is hand-rolled over tokio-tungstenite rather
//! than async-nats's `websocket` feature so that every target's subscribers run
//! the same client stack (BENCHMARKS.md says more). The publisher is a plain core
//! NATS publish over TCP (async-nats). Room `bench:r0` is subject `bench.r0`.

use super::{Decoder, Running, StartOpts, Ws, next_text};
use crate::children::{ChildGuard, free_port, nats_server_bin, wait_for_port};
use anyhow::{Context as _, Result, bail};
use bytes::{Buf as _, BytesMut};
use futures::SinkExt as _;
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Starts `nats-server` with a WebSocket listener.
pub async fn start(opts: &StartOpts) -> Result<Running> {
    let dir = tempfile::Builder::new()
        .prefix("herald-bench-natsws-")
        .tempdir()?;
    let (port, ws_port) = (free_port()?, free_port()?);
    let conf = format!(
        "listen: 127.0.0.1:{port}\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
    );
    let conf_path = dir.path().join("nats-ws.conf");
    std::fs::write(&conf_path, conf).context("writing the nats-server config")?;
    let mut cmd = Command::new(nats_server_bin());
    cmd.arg("-c").arg(&conf_path);
    let mut child = ChildGuard::spawn("nats-server", cmd, Some(&opts.log_dir.join("nats-ws.log")))?;
    wait_for_port(&mut child, port, Duration::from_secs(15)).await?;
    wait_for_port(&mut child, ws_port, Duration::from_secs(15)).await?;
    Ok(Running {
        kind: super::TargetKind::NatsWs,
        children: vec![child],
        endpoints: vec![format!("ws://127.0.0.1:{ws_port}")],
        secret: None,
        publish_url: format!("nats://127.0.0.1:{port}"),
        scratch: Some(dir),
    })
}

/// `bench:r0` → `bench.r0`.
pub fn subject(room: &str) -> String {
    room.replacen(':', ".", 1)
}

/// Connects, subscribes to every room and waits for the `PONG` that follows.
pub async fn connect(endpoint: &str, rooms: &[String]) -> Result<(Ws, Decoder)> {
    let (mut ws, _) = super::ws_connect(endpoint)
        .await
        .context("WebSocket connect")?;
    let info = next_text(&mut ws).await?;
    if !info.starts_with("INFO ") {
        bail!("expected INFO, got {info}");
    }
    let mut out = String::from(
        r#"CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":true,"no_responders":false,"name":"herald-bench"}"#,
    );
    out.push_str("\r\n");
    for (sid, room) in rooms.iter().enumerate() {
        out.push_str(&format!("SUB {} {}\r\n", subject(room), sid + 1));
    }
    out.push_str("PING\r\n");
    ws.send(Message::binary(out.into_bytes()))
        .await
        .context("sending CONNECT/SUB")?;
    let mut parser = Parser::default();
    let mut replies = Vec::new();
    while !parser.ponged {
        let msg = ws_next(&mut ws).await?;
        parser.feed(super::message_bytes(&msg), &mut replies, &mut |_, _| {})?;
        for r in replies.drain(..) {
            ws.send(r).await?;
        }
    }
    Ok((ws, Decoder::Nats(parser)))
}

async fn ws_next(ws: &mut Ws) -> Result<Message> {
    use futures::StreamExt as _;
    match ws.next().await {
        Some(Ok(Message::Close(c))) => bail!("closed during the handshake: {c:?}"),
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(e).context("reading during the handshake"),
        None => bail!("connection ended during the handshake"),
    }
}

/// Incremental parser of the server → client NATS protocol. WebSocket frames
/// need not align with protocol messages, so bytes are buffered until a whole
/// message is there.
#[derive(Default)]
pub struct Parser {
    buf: BytesMut,
    /// A `PONG` has been seen (the handshake's `PING` was answered).
    pub ponged: bool,
}

impl Parser {
    /// Appends `data` and handles every complete message in the buffer.
    pub fn feed(
        &mut self,
        data: &[u8],
        replies: &mut Vec<Message>,
        event: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        self.buf.extend_from_slice(data);
        loop {
            let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return Ok(());
            };
            let line = &self.buf[..eol];
            if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                // HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                let total: usize = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .context("bad MSG line")?;
                let need = eol + 2 + total + 2;
                if self.buf.len() < need {
                    return Ok(());
                }
                if let Some((s, t)) = crate::payload::find(&self.buf[eol + 2..eol + 2 + total]) {
                    event(s, t);
                }
                self.buf.advance(need);
                continue;
            }
            if line == b"PING" {
                replies.push(Message::binary(&b"PONG\r\n"[..]));
            } else if line == b"PONG" {
                self.ponged = true;
            } else if line.starts_with(b"-ERR") {
                bail!("nats-server: {}", String::from_utf8_lossy(line));
            }
            self.buf.advance(eol + 2);
        }
    }
}

/// Core NATS publisher over TCP.
pub struct Publisher {
    client: async_nats::Client,
}

impl Publisher {
    /// Connects to NATS.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { client })
    }

    /// Publishes one message (buffered by the client).
    pub async fn publish(&mut self, room: &str, payload: String) -> Result<()> {
        self.client
            .publish(subject(room), payload.into())
            .await
            .context("NATS publish")
    }

    /// Flushes the client's buffer.
    pub async fn flush(&mut self) -> Result<()> {
        self.client.flush().await.context("flushing NATS")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_reads_messages_split_across_frames_and_answers_ping() {
        let p = crate::payload::encode(5, 77, 60);
        let wire = format!(
            "INFO {{}}\r\nMSG bench.r0 1 {}\r\n{p}\r\nPING\r\nHMSG bench.r0 1 12 {}\r\nNATS/1.0\r\n\r\n{p}\r\n",
            p.len(),
            p.len() + 12
        );
        let (a, b) = wire.as_bytes().split_at(30);
        let mut parser = Parser::default();
        let (mut replies, mut got) = (Vec::new(), Vec::new());
        parser
            .feed(a, &mut replies, &mut |s, t| got.push((s, t)))
            .unwrap_or_default();
        parser
            .feed(b, &mut replies, &mut |s, t| got.push((s, t)))
            .unwrap_or_default();
        assert_eq!(got, vec![(5, 77), (5, 77)]);
        assert_eq!(replies.len(), 1);
    }
}
