//! Herald: a `nats-server -js` on a free port, `herald setup`, then one
//! `herald serve` from the release build, configured through `HERALD_*`
//! variables (docs/CONFIG.md) with an HS256 secret made up for the run.
//!
//! Clients connect to `/ws?token=<JWT>` (one user per connection, signed here),
//! wait for `welcome`, and `join` each room; their `user:` room is joined by the
//! edge itself. The publisher is a JetStream publish to `herald.room.<kind>.<id>`
//! with the `Herald-Event` header, exactly what a producer service does; acks are
//! pipelined (up to [`MAX_INFLIGHT`] outstanding) so the publisher is never what
//! is measured.

use super::{Cursor, Decoder, Joined, Running, StartOpts, next_text, send_text};
use crate::children::{ChildGuard, free_port, http_ok, nats_server_bin, wait_for_port};
use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use std::future::IntoFuture as _;
use std::process::Command;
use std::time::{Duration, Instant};

/// Outstanding JetStream acks before the publisher waits for one.
pub const MAX_INFLIGHT: usize = 4096;

/// Starts NATS and one edge.
pub async fn start(opts: &StartOpts) -> Result<Running> {
    let dir = tempfile::Builder::new().prefix("herald-bench-").tempdir()?;
    let nats_port = free_port()?;
    let mut nats_cmd = Command::new(nats_server_bin());
    nats_cmd
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-sd",
        ])
        .arg(dir.path().join("nats"));
    let mut nats = ChildGuard::spawn(
        "nats-server",
        nats_cmd,
        Some(&opts.log_dir.join("herald-nats.log")),
    )?;
    wait_for_port(&mut nats, nats_port, Duration::from_secs(15)).await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");

    let secret = make_secret();
    let edge_port = free_port()?;
    let env = |cmd: &mut Command| {
        cmd.env("HERALD_NATS__URL", &nats_url)
            .env("HERALD_AUTH__HS256_SECRET", &secret)
            .env("HERALD_LISTEN", format!("127.0.0.1:{edge_port}"))
            .env("HERALD_LOG__LEVEL", "warn")
            // The bench's rooms are big: presence is tracked but joins and
            // leaves are not pushed to every member (docs/CONFIG.md's advice
            // for big rooms; the peers have no presence at all). Without it,
            // N joins into an N-member room cost N² frames while connecting.
            .env("HERALD_PRESENCE__QUIET_KINDS", "bench");
        for (k, v) in &opts.herald_env {
            cmd.env(k, v);
        }
    };
    let mut setup = Command::new(&opts.herald_bin);
    setup.arg("setup");
    env(&mut setup);
    let out = setup.output().with_context(|| {
        format!(
            "running {} setup (build it with `cargo build --release -p herald`)",
            opts.herald_bin.display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "herald setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut serve = Command::new(&opts.herald_bin);
    serve.arg("serve");
    env(&mut serve);
    let mut edge = ChildGuard::spawn("herald", serve, Some(&opts.log_dir.join("herald-edge.log")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_ok(edge_port, "/readyz").await {
        edge.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "herald serve was not ready within 30 s (see {})",
                opts.log_dir.join("herald-edge.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Running {
        kind: super::TargetKind::Herald,
        // Dropped from the end: the edge is stopped before its NATS.
        children: vec![nats, edge],
        endpoints: vec![format!("ws://127.0.0.1:{edge_port}")],
        secret: Some(secret),
        publish_url: nats_url,
        scratch: Some(dir),
    })
}

/// A per-run secret; not a security boundary (the edge listens on loopback for
/// the length of a run), only different every run.
fn make_secret() -> String {
    format!(
        "herald-bench-{:x}-{:x}",
        crate::payload::now_ns(),
        std::process::id()
    )
}

/// The token of connection `conn`: user `u<conn>`, may join every `bench:` room.
pub fn token(secret: &str, conn: usize) -> Result<String> {
    let exp = crate::payload::now_ns() / 1_000_000_000 + 24 * 3600;
    let claims = serde_json::json!({"sub": crate::scenarios::user_of(conn), "exp": exp, "rooms": ["bench:*"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing a token")
}

/// Connects, waits for `welcome`, joins every room but the private `user:` room
/// (the first one from `since` when given, which must then be `recovered`).
pub async fn connect(
    endpoint: &str,
    conn: usize,
    rooms: &[String],
    secret: &str,
    since: Option<&Cursor>,
) -> Result<Joined> {
    let url = format!("{endpoint}/ws?token={}", token(secret, conn)?);
    let (mut ws, _) = super::ws_connect(url).await.context("WebSocket connect")?;
    let first = next_text(&mut ws).await?;
    if !first.contains(r#""type":"welcome""#) {
        bail!("expected welcome, got {first}");
    }
    let joins: Vec<&String> = rooms.iter().filter(|r| !r.starts_with("user:")).collect();
    for (id, room) in joins.iter().enumerate() {
        let mut frame = serde_json::json!({"type": "join", "id": id + 1, "room": room});
        if let (0, Some(c)) = (id, since) {
            frame["since"] = serde_json::json!({"epoch": c.epoch, "seq": c.seq});
        }
        send_text(&mut ws, frame.to_string()).await?;
    }
    let (mut joined, mut cursor) = (0, None);
    while joined < joins.len() {
        let f = next_text(&mut ws).await?;
        if f.contains(r#""type":"joined""#) {
            let v: serde_json::Value = serde_json::from_str(&f).context("bad joined frame")?;
            // The edge announces the private `user:` room with a `joined` of
            // its own, without an id: only answers to our joins count.
            let Some(id) = v["id"].as_u64() else { continue };
            if id == 1 {
                if since.is_some() && v["recovered"] != true {
                    bail!("resume not recovered: {f}");
                }
                cursor = Some(Cursor {
                    epoch: v["epoch"].as_str().unwrap_or_default().to_string(),
                    seq: v["seq"].as_u64().unwrap_or(0),
                });
            }
            joined += 1;
        } else if f.contains(r#""type":"error""#) {
            bail!("join refused: {f}");
        }
    }
    Ok(Joined {
        ws,
        decoder: Decoder::Herald,
        cursor,
    })
}

/// `bench:r0` → `herald.room.bench.r0` (bench room ids are `[A-Za-z0-9]`, so the
/// user-id encoding of docs/SUBJECTS.md leaves them as they are).
pub fn subject(room: &str) -> String {
    format!("herald.room.{}", room.replacen(':', ".", 1))
}

type AckFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    async_nats::jetstream::publish::PublishAck,
                    async_nats::jetstream::context::PublishError,
                >,
            > + Send,
    >,
>;

/// JetStream publisher with pipelined acks.
pub struct Publisher {
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
    inflight: FuturesUnordered<AckFuture>,
    failed: u64,
}

impl Publisher {
    /// Connects to NATS.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self {
            js: async_nats::jetstream::new(client.clone()),
            client,
            inflight: FuturesUnordered::new(),
            failed: 0,
        })
    }

    /// Sends one durable event; waits for the oldest acks only when
    /// [`MAX_INFLIGHT`] are outstanding.
    pub async fn publish(&mut self, room: &str, payload: String) -> Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Herald-Event", "b");
        let ack = self
            .js
            .publish_with_headers(subject(room), headers, payload.into())
            .await
            .context("JetStream publish")?;
        self.inflight.push(Box::pin(ack.into_future()));
        while self.inflight.len() >= MAX_INFLIGHT {
            self.reap_one().await;
        }
        Ok(())
    }

    async fn reap_one(&mut self) {
        if let Some(Err(e)) = self.inflight.next().await {
            self.failed += 1;
            if self.failed <= 5 {
                tracing::warn!(error = %e, "JetStream publish not acknowledged");
            }
        }
    }

    /// Flushes the NATS connection.
    pub async fn flush(&mut self) -> Result<()> {
        self.client.flush().await.context("flushing NATS")
    }

    /// Waits for every outstanding ack.
    pub async fn settle(&mut self) -> Result<u64> {
        self.flush().await?;
        while !self.inflight.is_empty() {
            self.reap_one().await;
        }
        Ok(std::mem::take(&mut self.failed))
    }
}
