//! A WebSocket client that speaks the contract's frames as JSON values.

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long [`WsClient::recv`] waits by default.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A test WebSocket client.
///
/// Presence pushes (`presence_join`, `presence_leave`) arrive asynchronously,
/// interleaved with everything else; [`recv`](Self::recv) and friends set them
/// aside, and [`recv_presence`](Self::recv_presence) reads them, so tests of
/// events and tests of presence each see only their own frames, in order.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The close frame, once received.
    pub closed: Option<Option<CloseFrame>>,
    frames: std::collections::VecDeque<Value>,
    presence: std::collections::VecDeque<Value>,
}

fn is_presence(v: &Value) -> bool {
    matches!(v["type"].as_str(), Some("presence_join" | "presence_leave"))
}

impl WsClient {
    fn over(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self {
            ws,
            closed: None,
            frames: Default::default(),
            presence: Default::default(),
        }
    }

    /// Connects with extra request headers.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes())?,
                v.parse()?,
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .context("WebSocket handshake")?;
        Ok(Self::over(ws))
    }

    /// Connects with `?token=` over a socket whose kernel receive buffer is
    /// `recv_buffer` bytes, so a client that stops reading backs up into the
    /// edge quickly (a slow reader).
    pub async fn connect_small_buffer(url: &str, token: &str, recv_buffer: u32) -> Result<Self> {
        let req = format!("{url}?token={token}").into_client_request()?;
        let host = req.uri().host().context("no host")?.to_owned();
        let port = req.uri().port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .context("no address")?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_recv_buffer_size(recv_buffer)?;
        let stream = socket.connect(addr).await?;
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .context("WebSocket handshake")?;
        Ok(Self::over(ws))
    }

    /// The close code received, if the edge closed the connection.
    pub fn close_code(&self) -> Option<u16> {
        self.closed.clone().flatten().map(|f| u16::from(f.code))
    }

    /// Connects with `?token=`.
    pub async fn connect(url: &str, token: &str) -> Result<Self> {
        Self::connect_with(&format!("{url}?token={token}"), &[]).await
    }

    /// Connects with a token and reads the `welcome` frame.
    pub async fn connect_welcomed(url: &str, token: &str) -> Result<(Self, Value)> {
        let mut c = Self::connect(url, token).await?;
        let w = c.expect("welcome").await?;
        Ok((c, w))
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, v: Value) -> Result<()> {
        self.ws.send(Message::Text(v.to_string().into())).await?;
        Ok(())
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, s: &str) -> Result<()> {
        self.ws.send(Message::Text(s.to_owned().into())).await?;
        Ok(())
    }

    /// Sends a raw message.
    pub async fn send_raw(&mut self, m: Message) -> Result<()> {
        self.ws.send(m).await?;
        Ok(())
    }

    /// The next JSON frame other than a presence push (pings and pongs
    /// skipped); `Err` on close or timeout.
    pub async fn recv_within(&mut self, t: Duration) -> Result<Value> {
        if let Some(v) = self.frames.pop_front() {
            return Ok(v);
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let v = self.read_socket(deadline, t).await?;
            if is_presence(&v) {
                self.presence.push_back(v);
            } else {
                return Ok(v);
            }
        }
    }

    /// The next presence push (`presence_join` / `presence_leave`) within `t`;
    /// other frames read meanwhile stay queued for [`recv`](Self::recv).
    pub async fn recv_presence(&mut self, t: Duration) -> Result<Value> {
        if let Some(v) = self.presence.pop_front() {
            return Ok(v);
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let v = self.read_socket(deadline, t).await?;
            if is_presence(&v) {
                return Ok(v);
            }
            self.frames.push_back(v);
        }
    }

    /// Whether no presence push arrives within `t`.
    pub async fn no_presence_for(&mut self, t: Duration) -> Result<()> {
        match self.recv_presence(t).await {
            Ok(v) => bail!("expected no presence push, got {v}"),
            Err(e) if e.to_string().starts_with("no frame") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read_socket(&mut self, deadline: tokio::time::Instant, t: Duration) -> Result<Value> {
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {t:?}"))?;
            match m {
                Some(Ok(Message::Text(s))) => return Ok(serde_json::from_str(&s)?),
                Some(Ok(Message::Close(f))) => {
                    self.closed = Some(f.clone());
                    bail!("closed: {f:?}");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => bail!("unexpected message {other:?}"),
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            }
        }
    }

    /// The next JSON frame within [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<Value> {
        self.recv_within(RECV_TIMEOUT).await
    }

    /// The next frame, which must have `type` = `ty`.
    pub async fn expect(&mut self, ty: &str) -> Result<Value> {
        let v = self.recv().await?;
        if v["type"] != ty {
            bail!("expected a `{ty}` frame, got {v}");
        }
        Ok(v)
    }

    /// Whether nothing arrives for `t`.
    pub async fn silent_for(&mut self, t: Duration) -> Result<()> {
        match self.recv_within(t).await {
            Ok(v) => bail!("expected silence, got {v}"),
            Err(e) if e.to_string().starts_with("no frame") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads frames until the close frame; returns `(disconnect frame if any, close code)`.
    pub async fn expect_close(&mut self) -> Result<(Option<Value>, u16)> {
        let mut disconnect = None;
        loop {
            let r = self.recv().await;
            if std::env::var_os("HERALD_TEST_LOGS").is_some() {
                eprintln!("[client] {:?} {r:?}", std::time::SystemTime::now());
            }
            match r {
                Ok(v) if v["type"] == "disconnect" => disconnect = Some(v),
                Ok(_) => continue,
                Err(e) => {
                    let code = self
                        .closed
                        .clone()
                        .flatten()
                        .map(|f| u16::from(f.code))
                        .with_context(|| format!("connection ended without a close frame: {e}"))?;
                    return Ok((disconnect, code));
                }
            }
        }
    }

    /// Sends a join and returns the `joined` frame.
    pub async fn join(&mut self, id: i64, room: &str) -> Result<Value> {
        self.send(json!({"type":"join","id":id,"room":room}))
            .await?;
        self.expect("joined").await
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
